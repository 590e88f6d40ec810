// Authentication challenges in the browser (tests/projects/secure, whose
// challenges time out after 2 s): the dialog, each way it can end, and a
// tab that keeps working whatever the user does with it.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PASSWORD, idle, logIn, openPage, toast, usersFile, useSuite } from './harness.js';

const users = usersFile([
  ['ann', 'supervisor,operator'],
  ['otto', 'operator'],
]);
const suite = useSuite({ args: ['--users', users] });

/** Otto's panel, with the vault's challenge dialog open. */
async function challenged(t) {
  const opened = await openPage(suite, t, { project: 'secure', setup: logIn(suite, 'secure', 'otto') });
  const { page } = opened;
  // The command's own send() resolves once the dialog is open: the dialog
  // does not hold the reply queue while it waits for the user.
  const reply = await page.evaluate(() => window.Switchboard.send('openVault', '', { object: 'openVault' }));
  assert.equal(reply.actions[0].type, 'challenge');
  const dialog = page.locator('[data-sb-modal=challenge] [role=dialog]');
  await dialog.waitFor();
  return { ...opened, dialog };
}

/** The tab still runs commands and shows their answers. */
async function assertTabWorks(page) {
  await page.click('#status');
  await idle(page);
  await toast(page, 'status  done by otto').waitFor();
}

test('the right credentials reach authChallenge as a success, and the tab goes on', async (t) => {
  const { page, dialog } = await challenged(t);
  // While the dialog is open, other answers still show.
  await page.evaluate(() => window.Switchboard.send('status'));
  await toast(page, 'status  done by otto').waitFor();
  await dialog.getByLabel('User').fill('ann');
  await dialog.getByLabel('Password').fill(PASSWORD);
  await dialog.getByRole('button', { name: 'Confirm' }).click();
  await toast(page, 'success ann ["supervisor", "operator"] door=vault asked_by=otto').waitFor();
  assert.equal(await dialog.count(), 0, 'the dialog closed');
  await idle(page);
  await assertTabWorks(page);
});

test('a wrong password reaches authChallenge as a generic error', async (t) => {
  const { page, dialog } = await challenged(t);
  await dialog.getByLabel('User').fill('ann');
  await dialog.getByLabel('Password').fill('not the password');
  await page.keyboard.press('Enter');
  await toast(page, 'generic Wrong user name or password.').waitFor();
  await idle(page);
  await assertTabWorks(page);
});

test('Escape or the close button cancels', async (t) => {
  const { page, dialog } = await challenged(t);
  await page.keyboard.press('Escape');
  await toast(page, 'cancelled').waitFor();
  assert.equal(await dialog.count(), 0);
  await idle(page);
  await page.locator('.sb-toast-close').click();

  await page.evaluate(() => window.Switchboard.send('openVault'));
  await dialog.waitFor();
  await dialog.getByRole('button', { name: 'Close' }).click();
  await toast(page, 'cancelled').waitFor();
  await idle(page);
  await assertTabWorks(page);
});

test('an unanswered challenge times out: the dialog closes and authChallenge hears of it', async (t) => {
  const { page, dialog } = await challenged(t);
  await toast(page, 'timeout 1').waitFor({ timeout: 10_000 });
  await dialog.waitFor({ state: 'detached' });
  assert.equal(await page.locator('.sb-modal').count(), 0, 'no dialog left open');
  await assertTabWorks(page);
});
