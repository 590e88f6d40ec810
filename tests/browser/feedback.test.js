// Toasts, message popups, error tooltips and the busy state: what a handler's
// answer looks like on screen.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { box, idle, openPage, replyGate, toast, until, useSuite } from './harness.js';

const suite = useSuite();

test('a toast shows the message, its level, top right', async (t) => {
  const { page } = await openPage(suite, t);
  await page.click('#toast-success');
  await page.click('#toast-hello');
  await idle(page);
  const success = toast(page, 'level success');
  assert.equal(await success.getAttribute('data-sb-level'), 'success');
  assert.equal(await success.getAttribute('role'), 'status');
  assert.equal(await toast(page, 'Hello').getAttribute('data-sb-level'), 'info', 'no level means info');
  const where = await box(success);
  assert.ok(where.x + where.width > 1280 - 40, `right edge at ${where.x + where.width}`);
  assert.ok(where.y < 200, `top at ${where.y}`);
  await page.click('#toast-error');
  await page.click('#toast-warning');
  await idle(page);
  assert.equal(await toast(page, 'level error').getAttribute('data-sb-level'), 'error');
  assert.equal(await toast(page, 'level warning').getAttribute('data-sb-level'), 'warning');
});

test('toasts stack; the same message refreshes, duplicate adds, close removes', async (t) => {
  const { page } = await openPage(suite, t);
  await page.click('#toast-hello');
  await page.click('#toast-world');
  await idle(page);
  const hello = await box(toast(page, 'Hello'));
  const world = await box(toast(page, 'World'));
  assert.ok(hello.y + hello.height <= world.y || world.y + world.height <= hello.y, 'toasts do not overlap');

  await page.click('#toast-hello');
  await idle(page);
  assert.equal(await toast(page, 'Hello').count(), 1, 'the same message refreshes its toast');

  await page.click('#toast-dup');
  await idle(page);
  await page.click('#toast-dup');
  await idle(page);
  assert.equal(await toast(page, 'Twice').count(), 2, 'duplicate: true adds another');

  await page.click('#toast-close');
  await idle(page);
  assert.equal(await toast(page, 'Hello').count(), 0, 'close: true removes it');
  assert.equal(await toast(page, 'World').count(), 1);
});

test('a toast leaves after its duration, counted again when refreshed', async (t) => {
  const { page } = await openPage(suite, t);
  await page.clock.install(); // the test moves time, so a busy machine cannot
  const shortLived = toast(page, 'Short lived'); // duration 1500 ms
  await page.click('#toast-short');
  await idle(page);
  await page.clock.runFor(1000);
  await page.click('#toast-short');
  await idle(page);
  await page.clock.runFor(1000); // 2 s after the first: gone unless refreshed
  assert.equal(await shortLived.count(), 1, 'refreshed toast still there');
  await page.clock.runFor(600);
  assert.equal(await shortLived.count(), 0, 'gone 1.5 s after the refresh');
});

test('a popup is a modal dialog: focus inside, Escape closes, focus restored', async (t) => {
  const { page } = await openPage(suite, t);
  await page.click('#popup');
  await idle(page);
  const dialog = page.getByRole('dialog');
  assert.equal(await dialog.getAttribute('aria-modal'), 'true');
  assert.equal(await dialog.getAttribute('data-sb-level'), 'warning');
  assert.equal(await dialog.locator('.sb-dialog-title').textContent(), 'Notice');
  assert.equal(await dialog.locator('.sb-dialog-message').textContent(), 'Check the filters');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'OK');
  for (let i = 0; i < 4; i++) {
    await page.keyboard.press(i % 2 ? 'Shift+Tab' : 'Tab');
    assert.ok(await page.evaluate(() => document.querySelector('.sb-dialog').contains(document.activeElement)), 'focus trapped');
  }
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'detached' });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'popup', 'focus back on the opener');

  await page.click('#popup');
  await idle(page);
  await page.getByRole('button', { name: 'OK' }).click();
  await dialog.waitFor({ state: 'detached' });
});

test('an error tooltip sits under the object that sent the command and goes on the next interaction', async (t) => {
  const { page } = await openPage(suite, t);
  await page.click('#error-tooltip');
  await idle(page);
  const tooltip = page.locator('.sb-tooltip');
  assert.equal(await tooltip.textContent(), 'Too hot');
  const button = await box(page.locator('#error-tooltip'));
  const tip = await box(tooltip);
  assert.ok(tip.y >= button.y + button.height, 'below the button');
  assert.ok(tip.y - (button.y + button.height) < 20, 'right under it');
  const centre = button.x + button.width / 2;
  assert.ok(tip.x < centre && centre < tip.x + tip.width, 'centred on it');
  await page.mouse.click(5, 790);
  await tooltip.waitFor({ state: 'detached', timeout: 1000 });
});

test('errors as popup and toast; a null message says Error; a failed handler says so', async (t) => {
  const { page } = await openPage(suite, t);
  await page.click('#error-popup');
  await idle(page);
  const dialog = page.getByRole('dialog');
  assert.equal(await dialog.getAttribute('data-sb-level'), 'error');
  assert.equal(await dialog.locator('.sb-dialog-message').textContent(), 'Door open');
  await page.keyboard.press('Escape');

  await page.click('#error-toast');
  await idle(page);
  assert.equal(await toast(page, 'Sensor offline').getAttribute('data-sb-level'), 'error');

  await page.click('#error-plain');
  await idle(page);
  assert.equal(await page.locator('.sb-tooltip').textContent(), 'Error');

  await page.click('#throw');
  await idle(page);
  const failed = toast(page, 'Sorry, that did not work. Please try again.');
  assert.equal(await failed.getAttribute('data-sb-level'), 'error');
});

test('markup in handler messages is shown as text and never runs', async (t) => {
  const { page } = await openPage(suite, t);
  const payload = '<img src=x onerror=window.__xss=1>';
  await page.click('#toast-xss');
  await idle(page);
  assert.equal(await page.locator('.sb-toast-message').first().textContent(), payload);

  await page.click('#error-xss');
  await idle(page);
  assert.equal(await page.locator('.sb-tooltip').textContent(), payload);

  await page.click('#popup-xss');
  await idle(page);
  assert.equal(await page.locator('.sb-dialog-message').textContent(), `<b>bold</b>${payload}`);
  await page.keyboard.press('Escape');

  await page.click('#link-form');
  await page.locator('#field-xss').click();
  await idle(page);
  assert.equal(await page.locator('.sb-field-error').textContent(), payload);

  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(await page.locator('.sb-toast img, .sb-tooltip img, .sb-dialog img, .sb-field-error img, .sb-dialog b').count(), 0);
});

test('a button waiting for its answer is busy and ignores more taps', async (t) => {
  // The answer is held until the test has tapped: no race with the handler.
  const gate = replyGate();
  const { page } = await openPage(suite, t, { setup: gate.install });
  gate.hold('slow');
  const slow = page.locator('#slow');
  await slow.click();
  await until(() => gate.held === 1, { message: 'the answer, held' });
  assert.equal(await slow.getAttribute('aria-busy'), 'true');
  assert.ok(await slow.evaluate((element) => element.classList.contains('sb-busy')));
  await slow.click();
  await slow.click();
  gate.release();
  await idle(page);
  assert.equal(gate.sent.filter((frame) => frame.name === 'slow').length, 1, 'one command for three taps');
  assert.equal(await slow.getAttribute('aria-busy'), null);
  await until(async () => (await toast(page, 'slow tap').count()) === 1, { message: 'the answer' });
});

test('a refused command says why, and the commands around it still get their own answers', async (t) => {
  const gate = replyGate();
  const { page } = await openPage(suite, t, { setup: gate.install });
  gate.hold('slow');
  await page.click('#slow');
  await until(() => gate.held === 1, { message: 'the answer to slow, held' });
  // Refused while slow's answer is still outstanding.
  const reply = await page.evaluate(() => window.Switchboard.send('toast', 'x'.repeat(70_000)));
  assert.equal(reply.status, 'rejected');
  const refused = toast(page, 'The server refused the command: frame of');
  assert.equal(await refused.getAttribute('data-sb-level'), 'error');
  gate.release();
  await idle(page);
  await toast(page, 'slow tap').waitFor();
});

test('more toasts than fit wait their turn: seven sent, seven shown', async (t) => {
  const { page } = await openPage(suite, t);
  await page.clock.install();
  await page.evaluate(() => window.Switchboard.send('toast_many'));
  const shown = () => page.locator('.sb-toast-message').allTextContents();
  assert.deepEqual(await shown(), ['many 1', 'many 2', 'many 3', 'many 4', 'many 5'], 'the first five, none dropped');
  await toast(page, 'many 1').locator('.sb-toast-close').click();
  assert.deepEqual(await shown(), ['many 2', 'many 3', 'many 4', 'many 5', 'many 6'], 'the sixth takes the freed place');
  await page.clock.runFor(1000);
  assert.deepEqual(await shown(), ['many 7'], 'the seventh after the others timed out');
  await page.clock.runFor(1000);
  assert.deepEqual(await shown(), []);
});

test('a duration beyond what a browser timer holds keeps the toast', async (t) => {
  const { page } = await openPage(suite, t);
  await page.evaluate(() => window.Switchboard.send('toast_forever'));
  // Another round trip later, it is still there (an overflowing timer fires at once).
  await page.click('#toast-hello');
  await toast(page, 'Hello').waitFor();
  assert.equal(await toast(page, 'Forever').count(), 1);
});

test('type and display are read in any letter case', async (t) => {
  const { page } = await openPage(suite, t);
  await page.evaluate(() => window.Switchboard.send('toast_case'));
  assert.equal(await toast(page, 'Careful').getAttribute('data-sb-level'), 'warning');
  await page.evaluate(() => window.Switchboard.send('error_case'));
  assert.equal(await page.getByRole('dialog').locator('.sb-dialog-message').textContent(), 'Boxed');
});

test('a form result shows its title and its message, for the form and for each field', async (t) => {
  const { page } = await openPage(suite, t, { path: 'form' });
  await page.evaluate(() => window.Switchboard.send('form_result'));
  const refused = toast(page, 'Email address is required.');
  assert.equal(await refused.locator('.sb-toast-title').textContent(), 'Missing Required Field');
  assert.equal(await refused.getAttribute('data-sb-level'), 'error');
  const note = page.locator('#email-sb-error');
  assert.equal(await note.locator('.sb-field-error-title').textContent(), 'Required');
  assert.match(await note.textContent(), /Required Please enter your email\./);
  await page.evaluate(() => window.Switchboard.send('form_ok'));
  const thanks = toast(page, 'Thank you for your submission!');
  assert.equal(await thanks.locator('.sb-toast-title').textContent(), 'Form Submitted');
});

test('a scheme-relative url (//host) is not opened', async (t) => {
  const { page, context } = await openPage(suite, t);
  const opened = [];
  await context.route('http://example.com/**', (route) => {
    opened.push(route.request().url());
    return route.fulfill({ contentType: 'text/html', body: '<h1>Elsewhere</h1>' });
  });
  await page.evaluate(() => {
    window.__sameDocument = true;
  });
  await page.evaluate(() => window.Switchboard.send('url_scheme_relative'));
  // A later answer still lands in this document: nothing navigated away.
  await page.click('#toast-hello');
  await toast(page, 'Hello').waitFor();
  assert.equal(await page.evaluate(() => window.__sameDocument), true);
  assert.deepEqual(opened, []);
  await suite.server.waitForLog('scheme-relative url');
});
