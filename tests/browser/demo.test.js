// The demo panel in a real headless Chromium: every object of the demo,
// asserting what the user sees.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { EXAMPLE_PROJECTS, openPage, tap, useSuite } from './harness.js';

const suite = useSuite({ projects: EXAMPLE_PROJECTS });

/** A fresh session on a page of the demo project; closed when the test ends. */
function demo(t, path = '', options = {}) {
  return openPage(suite, t, { project: 'demo', path, ...options });
}

async function lastToast(page) {
  const toast = page.locator('.sb-toast').last();
  await toast.waitFor();
  return { text: await toast.textContent(), level: await toast.getAttribute('data-sb-level') };
}

describe('demo panel', () => {
  test('a light button shows a success toast', async (t) => {
    const { page } = await demo(t);
    await tap(page, '#lobbyOn');
    const toast = await lastToast(page);
    assert.match(toast.text, /Light lobby on/);
    assert.equal(toast.level, 'success');
  });

  test('about opens a popup; Escape closes it and gives focus back', async (t) => {
    const { page } = await demo(t);
    await page.focus('#about');
    await page.keyboard.press('Enter');
    await page.evaluate(() => window.Switchboard.whenIdle());
    const dialog = page.locator('.sb-modal [role=dialog]');
    await dialog.waitFor();
    assert.match(await dialog.textContent(), /Harbour House/);
    assert.match(await dialog.textContent(), /A Switchboard demo panel\./);
    await page.keyboard.press('Escape');
    assert.equal(await page.locator('.sb-modal').count(), 0);
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'about');
  });

  test('a setpoint above the limit shows a tooltip under the field and rolls back', async (t) => {
    const { page } = await demo(t);
    await page.fill('#setpoint', '22');
    await page.locator('#setpoint').dispatchEvent('change');
    await page.evaluate(() => window.Switchboard.whenIdle());
    await page.fill('#setpoint', '35');
    await page.locator('#setpoint').dispatchEvent('change');
    await page.evaluate(() => window.Switchboard.whenIdle());
    const tooltip = page.locator('.sb-tooltip');
    await tooltip.waitFor();
    assert.match(await tooltip.textContent(), /above the 28/);
    const field = await page.locator('#setpoint').boundingBox();
    const tip = await tooltip.boundingBox();
    assert.ok(tip.y >= field.y + field.height - 2, `tooltip (${tip.y}) under the field (${field.y + field.height})`);
    assert.ok(Math.abs(tip.x - field.x) < field.width, 'anchored to the field horizontally');
    assert.equal(await page.inputValue('#setpoint'), '22', 'rolled back to the last valid value');
  });

  test('the maintenance form marks each field and clears marks on edit and success', async (t) => {
    const { page } = await demo(t, 'maintenance');
    await tap(page, '#maintenanceSubmit');
    for (const field of ['room', 'description', 'email']) {
      assert.equal(await page.getAttribute(`#${field}`, 'aria-invalid'), 'true', `${field} is marked`);
    }
    assert.match(await page.locator('.sb-field-error').allTextContents().then((t) => t.join('|')), /Enter an e-mail address/);
    await page.fill('#email', 'ops@example.com');
    assert.equal(await page.getAttribute('#email', 'aria-invalid'), null, 'an edit clears the mark');
    await page.selectOption('#room', 'kitchen');
    await page.fill('#description', 'The tap in the kitchen drips.');
    await tap(page, '#maintenanceSubmit');
    const toast = await lastToast(page);
    assert.match(toast.text, /Request sent/);
    assert.equal(toast.level, 'success');
    assert.equal(await page.locator('[aria-invalid=true]').count(), 0, 'success clears every mark');
  });

  test('links navigate without a reload and back returns', async (t) => {
    const { page } = await demo(t);
    await page.evaluate(() => {
      window.__sameDocument = true;
    });
    await tap(page, 'a[data-sb-link=lighting]');
    await page.locator('#dimmer').waitFor();
    assert.ok(page.url().endsWith('/demo/lighting'));
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no page reload');
    await page.goBack();
    await page.locator('#lobbyOn').waitFor();
    assert.ok(page.url().endsWith('/demo/'));
    // The handler's page:back does the same.
    await tap(page, 'a[data-sb-link=climate]');
    await page.locator('#hvacMode').waitFor();
    await tap(page, '#backButton');
    await page.locator('#lobbyOn').waitFor();
  });

  test('closing the alarm popup opened by a command calls its /close', async (t) => {
    const { page } = await demo(t);
    await tap(page, '#alarmButton');
    const popup = page.locator('[data-sb-popup=alarm]');
    await popup.waitFor();
    assert.match(await popup.textContent(), /Door 4 is open/);
    await page.keyboard.press('Escape');
    await page.evaluate(() => window.Switchboard.whenIdle());
    assert.equal(await popup.count(), 0);
    const toast = await lastToast(page);
    assert.match(toast.text, /Alarm acknowledged/);
    await suite.server.waitForLog('name="alarm" param="door4/close" [OK]');
  });

  test('the energy report downloads with its name and bytes', async (t) => {
    const { page } = await demo(t);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#report')]);
    assert.equal(download.suggestedFilename(), 'energy-2026-11.csv');
    const text = await readFile(await download.path(), 'utf8');
    assert.ok(text.startsWith('month,room,kwh\n2026-11,Lobby,185\n'), text);
  });

  test('copy Wi-Fi password puts it on the clipboard', async (t) => {
    const { page } = await demo(t, '', { permissions: ['clipboard-read', 'clipboard-write'] });
    await tap(page, '#wifi');
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), 'HarbourGuest-2026');
  });

  test('share without the Web Share API copies the link and says so', async (t) => {
    const { page } = await demo(t, '', { permissions: ['clipboard-read', 'clipboard-write'] });
    await page.evaluate(() => {
      delete Navigator.prototype.share;
    });
    await tap(page, '#shareLink');
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), 'https://example.com/harbour-house');
    assert.match((await lastToast(page)).text, /copied/i);
  });

  test('the building website opens in a new page', async (t) => {
    const { context, page } = await demo(t);
    // The machine has no internet: the site is answered locally.
    await context.route('https://example.com/**', (route) => route.fulfill({ contentType: 'text/html', body: '<h1>Example</h1>' }));
    const [opened] = await Promise.all([context.waitForEvent('page'), page.click('#website')]);
    await opened.waitForLoadState();
    assert.equal(await opened.locator('h1').textContent(), 'Example');
    assert.equal(opened.url(), 'https://example.com/');
  });

  test('scanning without a camera API says the device cannot', async (t) => {
    const { page } = await demo(t, '', {
      initScript: () => {
        delete window.BarcodeDetector;
      },
    });
    await tap(page, '#scanAsset');
    const toast = await lastToast(page);
    assert.match(toast.text, /can't scan codes/);
    assert.equal(toast.level, 'warning');
  });

  test('repeat buttons send down, repeat and stop when held; down and up when tapped', async (t) => {
    const { page } = await demo(t, 'lighting');
    await page.clock.install(); // the test decides how long the press lasts
    const box = await page.locator('#dimUp').boundingBox();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await page.mouse.down();
    await page.clock.runFor(1300);
    await page.mouse.up();
    await page.evaluate(() => window.Switchboard.whenIdle());
    for (const param of ['down', 'repeat', 'stop']) await suite.server.waitForLog(`name="dimUp" param="${param}" [OK]`);
    await page.mouse.down();
    await page.mouse.up();
    await page.evaluate(() => window.Switchboard.whenIdle());
    await suite.server.waitForLog('name="dimUp" param="up" [OK]');
    assert.match((await lastToast(page)).text, /One step brighter/);
  });

  test('the clock and occupancy are pushed to every panel', async (t) => {
    const { page } = await demo(t);
    const first = await page.locator('#clock').textContent();
    await page.waitForFunction((before) => document.getElementById('clock').textContent !== before, first, { timeout: 5000 });
    assert.match(await page.locator('#clock').textContent(), /^\d\d:\d\d:\d\d CES?T$/);
    assert.match(await page.locator('#occupancy').textContent(), /panels? online/);
    assert.equal(await page.getAttribute('.sb-connection', 'data-state'), 'connected');
  });

  test('an operator broadcast reaches the other panels', async (t) => {
    const { page: operator } = await demo(t, 'operator');
    const { page: panel } = await demo(t, '');
    await operator.fill('#broadcastText', 'Lobby closes at 18:00');
    await tap(operator, '#broadcastSend');
    await operator.locator('.sb-toast', { hasText: /Sent to \d+ panel/ }).waitFor();
    await panel.locator('.sb-toast', { hasText: 'Operator: Lobby closes at 18:00' }).waitFor();
  });

  test('a barcode scanner typing an asset tag is recognised', async (t) => {
    const { page } = await demo(t, 'operator');
    await page.locator('body').click({ position: { x: 5, y: 5 } });
    await page.keyboard.type('123456789012@', { delay: 5 });
    await page.locator('.sb-toast', { hasText: 'Asset 123456789012 checked in' }).waitFor();
  });

  test('on a phone-sized screen nothing overflows and buttons work', async (t) => {
    const { page } = await demo(t, '', { viewport: { width: 390, height: 844 }, hasTouch: true, isMobile: true });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `horizontal overflow of ${overflow}px`);
    await page.tap('#lobbyOff');
    await page.evaluate(() => window.Switchboard.whenIdle());
    assert.match((await lastToast(page)).text, /Light lobby off/);
    const box = await page.locator('#lobbyOff').boundingBox();
    assert.ok(box.height >= 40, `touch target of ${box.height}px`);
  });
});
