// Handler text is shown as text, never parsed as HTML: XSS payloads in
// toasts, popups, error tooltips and field errors stay inert strings.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { idle, openPage, useSuite } from './harness.js';

const PAYLOAD = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>';

const suite = useSuite();

async function send(page, name, param, object = null) {
  await page.evaluate(([n, p, o]) => window.Switchboard.send(n, p, { object: o }), [name, param, object]);
  await idle(page);
}

async function assertInert(page, locator) {
  await locator.first().waitFor();
  assert.ok((await locator.first().textContent()).includes(PAYLOAD), 'the payload is shown as literal text');
  assert.equal(await locator.first().locator('img, script, b').count(), 0, 'no element was created from it');
  assert.equal(await page.evaluate(() => window.__xss), undefined, 'no script ran');
}

test('toast, popup, tooltip and field error messages are text', async (t) => {
  const { page } = await openPage(suite, t, { path: 'form' });
  await send(page, 'toast', PAYLOAD);
  await assertInert(page, page.locator('.sb-toast'));
  await send(page, 'popup', PAYLOAD);
  await assertInert(page, page.locator('.sb-modal [role=dialog]'));
  await page.keyboard.press('Escape');
  await send(page, 'error_tooltip', PAYLOAD, 'email');
  await assertInert(page, page.locator('.sb-tooltip'));
  await send(page, 'xss_field', PAYLOAD, 'save');
  await assertInert(page, page.locator('.sb-field-error'));
});
