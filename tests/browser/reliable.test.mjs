// Reliable forms offline: submissions wait in IndexedDB while the device is
// offline and reach formSubmission exactly once when it is back.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join, resolve } from 'node:path';
import { launchBrowser, openPage, startServer, tap } from './server.mjs';

let server;
let browser;

before(async () => {
  server = await startServer({ projects: join(resolve(import.meta.dirname, '..'), 'projects') });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.stop();
});

const pending = (page) => page.evaluate(() => window.Switchboard.pendingSubmissions);

test('two submissions made offline are delivered once each when back online', async () => {
  const context = await browser.newContext();
  const page = await openPage(context, `${server.url}/reliable/visit`);
  await context.setOffline(true);
  for (const [id, email] of [['visit-a', 'a@example.com'], ['visit-b', 'b@example.com']]) {
    await page.fill('#id', id);
    await page.fill('#email', email);
    await tap(page, '#visitSubmit');
  }
  assert.equal(await pending(page), 2, 'both wait in the browser');
  const badge = page.locator('.sb-pending');
  assert.equal(await badge.getAttribute('data-count'), '2');
  assert.ok(await badge.isVisible(), 'the user sees them pending');

  await context.setOffline(false);
  await page.waitForFunction(() => window.Switchboard.pendingSubmissions === 0, null, { timeout: 20_000 });
  assert.equal(await badge.isVisible(), false);
  // The first was tried while offline, so its delivery is a retry; the
  // second waited behind it (the queue keeps order) and was never tried.
  await page.locator('.sb-toast', { hasText: 'stored visit-a (retry=true' }).waitFor();
  await page.locator('.sb-toast', { hasText: 'stored visit-b (retry=false' }).waitFor();
  // Each ran exactly once.
  const reply = await page.evaluate(() => window.Switchboard.send('audit'));
  assert.equal(reply.actions[0].message, 'submissions=2 distinct=2 repeated=0');
  const runs = server.log().match(/form="visit" id="[0-9a-f]+" retry=(true|false) \[OK\]/g) ?? [];
  assert.equal(runs.length, 2, server.log());
  await context.close();
});

test('a submission made online is delivered at once, not as a retry', async () => {
  const context = await browser.newContext();
  const page = await openPage(context, `${server.url}/reliable/visit`);
  await page.fill('#id', 'visit-c');
  await page.fill('#email', 'c@example.com');
  await tap(page, '#visitSubmit');
  await page.locator('.sb-toast', { hasText: 'stored visit-c (retry=false' }).waitFor();
  assert.equal(await pending(page), 0);
  await context.close();
});
