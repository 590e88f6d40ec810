// Reliable forms offline: submissions wait in IndexedDB while the device is
// offline and reach formSubmission exactly once when it is back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openPage, tap, useSuite } from './harness.js';

const suite = useSuite();

const pending = (page) => page.evaluate(() => window.Switchboard.pendingSubmissions);

test('two submissions made offline are delivered once each when back online', async (t) => {
  const { context, page } = await openPage(suite, t, { project: 'reliable', path: 'visit' });
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
  const runs = suite.server.log().match(/form="visit" id="[0-9a-f]+" retry=(true|false) \[OK\]/g) ?? [];
  assert.equal(runs.length, 2, suite.server.log());
});

test('a submission made online is delivered at once, not as a retry', async (t) => {
  const { page } = await openPage(suite, t, { project: 'reliable', path: 'visit' });
  await page.fill('#id', 'visit-c');
  await page.fill('#email', 'c@example.com');
  await tap(page, '#visitSubmit');
  await page.locator('.sb-toast', { hasText: 'stored visit-c (retry=false' }).waitFor();
  assert.equal(await pending(page), 0);
});

test('a submission whose handler fails is delivered again as a retry, and runs once', async (t) => {
  const { page } = await openPage(suite, t, { project: 'reliable', path: 'visit' });
  await page.fill('#id', 'visit-f');
  await page.fill('#email', 'flaky'); // the handler throws unless retry is true
  await page.click('#visitSubmit');
  await page.locator('.sb-toast', { hasText: 'stored visit-f (retry=true' }).waitFor({ timeout: 20_000 });
  assert.equal(await pending(page), 0);
  assert.equal(await page.locator('.sb-toast', { hasText: 'Sorry, that did not work' }).count(), 0, 'the failure was retried, not shown');
  await suite.server.waitForLog(/form="visit" id="[0-9a-f]+" retry=false \[FAILED\]/);
  await suite.server.waitForLog(/form="visit" id="[0-9a-f]+" retry=true \[OK\]/);
});
