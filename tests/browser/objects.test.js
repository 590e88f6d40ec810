// The objects of docs/objects.md: repeat buttons, fields, containers and
// submit, field errors and rollback.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { box, idle, openPage, toast, useSuite } from './harness.js';

const suite = useSuite();

const params = (frames, name) => frames.commands(name).map((frame) => frame.param);

/**
 * Presses the mouse on `selector`, lets `holdMs` pass on the page's clock
 * (installed by the caller: the test decides when time passes, not the
 * machine's load), optionally moving away first, and releases.
 */
async function hold(page, selector, holdMs, { releaseAt = null } = {}) {
  const where = await box(page.locator(selector));
  await page.mouse.move(where.x + where.width / 2, where.y + where.height / 2);
  await page.mouse.down();
  if (releaseAt) await page.mouse.move(...releaseAt, { steps: 5 });
  await page.clock.runFor(holdMs);
  await page.mouse.up();
  await idle(page);
}

test('repeat button: a short press sends down then up', async (t) => {
  const { page, frames } = await openPage(suite, t);
  await page.clock.install();
  await hold(page, '#volume', 300);
  assert.deepEqual(params(frames, 'volume'), ['down', 'up']);
  assert.equal(frames.commands('volume')[0].object, 'volume');
  await toast(page, 'volume down').waitFor();
  await toast(page, 'volume up').waitFor();
});

test('repeat button: held, it sends repeat every second, then stop', async (t) => {
  const { page, frames } = await openPage(suite, t);
  await page.clock.install();
  await hold(page, '#volume', 2600);
  assert.deepEqual(params(frames, 'volume'), ['down', 'repeat', 'repeat', 'stop']);
  await toast(page, 'volume stop').waitFor();
  assert.ok((await toast(page, 'volume repeat').count()) >= 1);
});

test('repeat button: releasing outside the button still ends the press', async (t) => {
  const { page, frames } = await openPage(suite, t);
  await page.clock.install();
  await hold(page, '#volume', 1500, { releaseAt: [5, 790] });
  assert.deepEqual(params(frames, 'volume'), ['down', 'repeat', 'stop']);
});

test('repeat button: Space held and released', async (t) => {
  const { page, frames } = await openPage(suite, t);
  await page.clock.install();
  await page.focus('#volume');
  await page.keyboard.down(' ');
  await page.clock.runFor(300);
  await page.keyboard.up(' ');
  await idle(page);
  assert.deepEqual(params(frames, 'volume'), ['down', 'up']);
});

test('fields outside a submitting container send on commit, not on every keystroke', async (t) => {
  const { page, frames } = await openPage(suite, t, { path: 'form' });
  await page.click('#nickname');
  await page.keyboard.type('Bob');
  await page.keyboard.press('Tab');
  await idle(page);
  // One frame, with the whole text: typing alone sent nothing.
  assert.deepEqual(params(frames, 'nickname'), ['Bob']);
  assert.equal(frames.commands('nickname')[0].object, 'nickname');
  assert.equal(frames.commands('nickname')[0].page, 'form');
  await toast(page, 'nickname=Bob').waitFor();

  // A slider sends once, when it is released.
  const slider = await box(page.locator('#dimmer'));
  const y = slider.y + slider.height / 2;
  await page.mouse.move(slider.x + slider.width / 2, y);
  await page.mouse.down();
  await page.mouse.move(slider.x + 4, y, { steps: 8 });
  await page.mouse.up();
  await idle(page);
  // One frame, with the final value: dragging alone sent nothing.
  assert.deepEqual(params(frames, 'dimmer'), ['0']);
  await toast(page, 'set to 0').waitFor();

  // A container without a submit does not hold its fields back.
  await page.check('#lamp');
  await idle(page);
  assert.deepEqual(params(frames, 'lamp'), ['true']);
});

test('Enter in a <form> container without a submit sends the field and never reloads', async (t) => {
  const { page, frames } = await openPage(suite, t, { path: 'form' });
  await page.evaluate(() => {
    window.__sameDocument = true;
  });
  await page.fill('#query', 'lamps');
  await page.press('#query', 'Enter');
  await idle(page);
  assert.deepEqual(params(frames, 'query'), ['lamps']);
  await toast(page, 'query=lamps').waitFor();
  assert.ok(page.url().endsWith('/ui/form'), page.url());
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no native submit');
});

test('submit sends every field of its container, nested ones included, as JSON', async (t) => {
  const { page, frames } = await openPage(suite, t, { path: 'form' });
  await page.evaluate(() => {
    window.__sameDocument = true;
  });
  await page.fill('#name', 'Ada');
  await page.fill('#email', 'ada@example.com');
  await page.fill('#password', 's3cret');
  await page.check('#newsletter');
  await page.fill('#age', '36');
  await page.selectOption('#colour', 'blue');
  await page.fill('#notes', 'line one\nline two');
  await page.fill('#day', '2024-05-01');
  await page.fill('#at', '07:30');
  await page.fill('#level', '8');
  await page.click('#form-title'); // commit the last field
  await idle(page);
  assert.equal(frames.filter((frame) => frame.type === 'command').length, 0, 'fields under a submit wait for it');

  await page.click('#save');
  await idle(page);
  const [save] = frames.commands('save');
  assert.equal(save.object, 'save');
  assert.deepEqual(JSON.parse(save.param), {
    name: 'Ada',
    email: 'ada@example.com',
    password: 's3cret',
    newsletter: 'true',
    age: '36',
    colour: 'blue',
    notes: 'line one\nline two',
    day: '2024-05-01',
    at: '07:30',
    level: '8',
  });
  const saved = toast(page, 'saved {');
  assert.equal(await saved.getAttribute('data-sb-level'), 'success');

  // Enter in a field submits its container, without a native form submit.
  await page.focus('#email');
  await page.keyboard.press('Enter');
  await idle(page);
  assert.equal(frames.commands('save').length, 2);
  assert.ok(page.url().endsWith('/ui/form'), page.url());
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload');
});

test('field errors: marked under the field, cleared on edit and by a successful submit', async (t) => {
  const { page } = await openPage(suite, t, { path: 'form' });
  await page.fill('#email', 'not an address');
  await page.click('#save'); // name empty, email bad
  await idle(page);
  const email = page.locator('#email');
  const emailError = page.locator('#email-sb-error');
  assert.equal(await email.getAttribute('aria-invalid'), 'true');
  assert.ok(await email.evaluate((field) => field.classList.contains('sb-invalid')));
  assert.equal(await emailError.textContent(), 'Enter a valid email address');
  assert.ok(await emailError.evaluate((note) => note.classList.contains('sb-field-error')));
  assert.match(await email.getAttribute('aria-describedby'), /email-sb-error/);
  const fieldBox = await box(email);
  const noteBox = await box(emailError);
  assert.ok(noteBox.y >= fieldBox.y + fieldBox.height, 'message under the field');
  // The name's error asked for a toast, on top of the mark.
  assert.equal(await page.locator('#name').getAttribute('aria-invalid'), 'true');
  assert.equal(await toast(page, 'Name is required').getAttribute('data-sb-level'), 'error');

  await page.fill('#email', 'ada@example.com');
  assert.equal(await email.getAttribute('aria-invalid'), null, 'the edit clears the error');
  assert.equal(await emailError.count(), 0);
  assert.equal(await page.locator('#name').getAttribute('aria-invalid'), 'true', 'other fields keep theirs');

  await page.click('#save'); // the handler only checks the name along with a bad email
  await idle(page);
  assert.equal(await page.locator('#name').getAttribute('aria-invalid'), null, 'a successful submit clears the rest');
  assert.equal(await page.locator('.sb-field-error').count(), 0);
});

test('a field error can ask for a popup', async (t) => {
  const { page } = await openPage(suite, t, { path: 'form' });
  await page.click('#nick-taken');
  await idle(page);
  assert.equal(await page.getByRole('dialog').locator('.sb-dialog-message').textContent(), 'Nickname taken');
  assert.equal(await page.locator('#nickname').getAttribute('aria-invalid'), 'true');
});

test('rollback puts the last valid value back into fields, sliders and checkboxes', async (t) => {
  const { page } = await openPage(suite, t, { path: 'form' });
  const commit = async (selector, value) => {
    await page.fill(selector, value);
    await page.click('#form-title');
    await idle(page);
  };
  await commit('#setpoint', '22');
  await toast(page, 'set to 22').waitFor();
  await commit('#setpoint', '35');
  assert.equal(await page.inputValue('#setpoint'), '22');
  assert.equal(await page.locator('.sb-tooltip').textContent(), '35 is above the limit of 28');
  const field = await box(page.locator('#setpoint'));
  const tip = await box(page.locator('.sb-tooltip'));
  assert.ok(tip.y >= field.y + field.height, 'the tooltip sits under the field');

  await commit('#dimmer', '24');
  await commit('#dimmer', '33');
  assert.equal(await page.inputValue('#dimmer'), '24');

  await page.check('#lamp');
  await idle(page);
  await page.locator('#lamp').click(); // off: refused
  await idle(page);
  assert.equal(await page.isChecked('#lamp'), true);
});

test('rollback with no accepted value yet restores what the page showed: rendered, then pushed', async (t) => {
  const { page } = await openPage(suite, t, { path: 'form' });
  const commit = async (value) => {
    await page.fill('#limit', value);
    await page.click('#form-title');
    await idle(page);
  };
  // Fresh panel: the first value sent is refused; the template's 20 comes back.
  await commit('50');
  assert.equal(await page.locator('.sb-tooltip').textContent(), '50 is above the limit of 28');
  assert.equal(await page.inputValue('#limit'), '20', 'the rendered value');

  // The session's own value (uiSessionSet) is what the page shows now.
  await page.evaluate(() => window.Switchboard.send('limit_mine', '21'));
  await page.waitForFunction(() => document.getElementById('limit').value === '21');
  await commit('51');
  assert.equal(await page.inputValue('#limit'), '21', 'the uiSessionSet value');

  // A later project-wide uiSet reaches this session too (no freeze)…
  await page.evaluate(() => window.Switchboard.send('limit_all', '23'));
  await page.waitForFunction(() => document.getElementById('limit').value === '23');
  await commit('52');
  assert.equal(await page.inputValue('#limit'), '23', 'the uiSet value');

  // …and an accepted value is the valid one until the next push.
  await commit('25');
  await commit('53');
  assert.equal(await page.inputValue('#limit'), '25', 'the accepted value');
  await page.evaluate(() => window.Switchboard.send('limit_all', '24'));
  await page.waitForFunction(() => document.getElementById('limit').value === '24');
  await commit('54');
  assert.equal(await page.inputValue('#limit'), '24', 'the newer uiSet value');

  // A new session sees the project-wide value and rolls back to it.
  const other = await openPage(suite, t, { path: 'form' });
  await other.page.waitForFunction(() => document.getElementById('limit').value === '24');
  await other.page.fill('#limit', '55');
  await other.page.click('#form-title');
  await idle(other.page);
  assert.equal(await other.page.inputValue('#limit'), '24');
});
