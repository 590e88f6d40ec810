// Takes the README's screenshots of the demo: `node screenshots.js`
// (after `cargo build`). Writes docs/screenshots/*.png.
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { EXAMPLE_PROJECTS, launchBrowser, startServer, tap } from './harness.js';

const OUT = join(resolve(import.meta.dirname, '../..'), 'docs/screenshots');
await mkdir(OUT, { recursive: true });
const server = await startServer({ projects: EXAMPLE_PROJECTS });
const browser = await launchBrowser();
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  const page = await openDemo(context, `${server.origin}/demo/`);
  await page.waitForFunction(() => /CES?T/.test(document.getElementById('clock').textContent));
  await tap(page, '#lobbyOn');
  await page.screenshot({ path: join(OUT, 'demo-home.png') });
  await tap(page, '#alarmButton');
  await page.locator('[data-sb-popup=alarm]').waitFor();
  // Let the opening animation finish.
  await page.waitForTimeout(600);
  await page.screenshot({ path: join(OUT, 'demo-popup.png') });
  await page.keyboard.press('Escape');
  await page.waitForTimeout(300);
  await page.evaluate(() => {
    for (const close of document.querySelectorAll('.sb-toast button')) close.click();
  });
  await page.evaluate(() => window.Switchboard.navigate('maintenance'));
  await page.locator('#maintenanceSubmit').waitFor();
  await page.fill('#email', 'not-an-address');
  await tap(page, '#maintenanceSubmit');
  await page.screenshot({ path: join(OUT, 'demo-form-errors.png') });
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const small = await openDemo(phone, `${server.origin}/demo/lighting`);
  await small.screenshot({ path: join(OUT, 'demo-phone.png') });
  console.log(`screenshots written to ${OUT}`);
} finally {
  await browser.close();
  await server.stop();
}

async function openDemo(context, url) {
  const page = await context.newPage();
  await page.goto(url);
  await page.waitForFunction(() => window.Switchboard?.connected);
  return page;
}
