// Pages and popups: client-side navigation, history, popup pages as modals,
// and the page_closed report that lets the server answer with `/close`.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { idle, openPage, toast, useSuite } from './harness.js';

const suite = useSuite();

async function markDocument(page) {
  await page.evaluate(() => {
    window.__sameDocument = true;
  });
}

const sameDocument = (page) => page.evaluate(() => window.__sameDocument === true);

test('a page link swaps the page in place; back and forward re-render it', async (t) => {
  const { page } = await openPage(suite, t);
  await markDocument(page);
  await page.click('#link-second');
  await page.locator('#second-title').waitFor();
  assert.ok(page.url().endsWith('/ui/second'), page.url());
  assert.equal(await page.title(), 'UI test · Second');
  assert.equal(await page.locator('body').getAttribute('data-sb-page'), 'second');
  assert.equal(await page.locator('#home-title').count(), 0);

  await page.goBack();
  await page.locator('#home-title').waitFor();
  assert.ok(page.url().endsWith('/ui/'), page.url());
  assert.equal(await page.title(), 'UI test · Home');

  await page.goForward();
  await page.locator('#second-title').waitFor();
  assert.ok(await sameDocument(page), 'no reload on the way');
});

test('page actions from handlers: home, back and forward', async (t) => {
  const { page } = await openPage(suite, t);
  await markDocument(page);
  await page.click('#link-second');
  await page.click('#go-back');
  await page.locator('#home-title').waitFor();
  await page.evaluate(() => window.Switchboard.send('go', 'forward'));
  await page.locator('#second-title').waitFor();
  await page.click('#go-home');
  await page.locator('#home-title').waitFor();
  assert.ok(page.url().endsWith('/ui/home'), page.url());
  assert.ok(await sameDocument(page));
});

test('leaving a page a command opened reports page_closed; the /close answer shows', async (t) => {
  const { page, frames } = await openPage(suite, t);
  await page.click('#visit-second');
  await page.locator('#second-title').waitFor();
  await page.click('#link-home');
  await toast(page, 'left second/close').waitFor();
  assert.ok(frames.some((frame) => frame.type === 'page_closed' && frame.page === 'second'));
});

test('a popup page opens as a modal outside history; Escape closes it and the server hears of it', async (t) => {
  const { page, frames } = await openPage(suite, t);
  const historyLength = await page.evaluate(() => history.length);
  await page.click('#open-dialog');
  await idle(page);
  const modal = page.locator('.sb-modal[data-sb-popup="dialog"]');
  const dialog = modal.getByRole('dialog');
  assert.equal(await dialog.getAttribute('aria-modal'), 'true');
  assert.equal(await dialog.locator('.sb-dialog-title').textContent(), 'Dialog');
  await page.locator('#dialog-text').waitFor();
  assert.ok(page.url().endsWith('/ui/'), 'the URL stays');
  assert.equal(await page.evaluate(() => history.length), historyLength, 'no history entry');
  assert.equal(await page.locator('#sb-page').evaluate((main) => main.inert), true, 'the page behind is inert');

  // A field in the popup names the popup as its page.
  await page.fill('#dialog-code', '1234');
  await page.keyboard.press('Tab');
  await idle(page);
  assert.equal(frames.commands('dialog-code')[0].page, 'dialog');

  await page.keyboard.press('Escape');
  await modal.waitFor({ state: 'detached' });
  await toast(page, 'closed dialog/close').waitFor();
  assert.ok(frames.some((frame) => frame.type === 'page_closed' && frame.page === 'dialog'));
  assert.equal(await page.evaluate(() => document.activeElement.id), 'open-dialog', 'focus back on the opener');
  assert.equal(await page.locator('#sb-page').evaluate((main) => main.inert), false);
});

test('popups close by page:close, the close button and the backdrop, each reported', async (t) => {
  const { page, frames } = await openPage(suite, t);
  const modal = page.locator('.sb-modal[data-sb-popup="dialog"]');
  const closes = () => frames.filter((frame) => frame.type === 'page_closed' && frame.page === 'dialog').length;

  await page.click('#open-dialog');
  await page.click('#dialog-close');
  await modal.waitFor({ state: 'detached' });
  await idle(page);
  assert.equal(closes(), 1);

  await page.click('#open-dialog');
  await page.click('.sb-dialog-close');
  await modal.waitFor({ state: 'detached' });
  await idle(page);
  assert.equal(closes(), 2);

  await page.click('#open-dialog');
  await modal.waitFor();
  await page.mouse.click(5, 5); // the backdrop
  await modal.waitFor({ state: 'detached' });
  await idle(page);
  assert.equal(closes(), 3);

  await page.click('#open-dialog');
  await page.click('#dialog-save'); // a toast, then page:close
  await modal.waitFor({ state: 'detached' });
  await toast(page, 'Saved from the dialog').waitFor();
  await idle(page);
  assert.equal(closes(), 4);
});

test('popups stack; Escape closes the top one, close-all closes every one', async (t) => {
  const { page } = await openPage(suite, t);
  const dialog = page.locator('.sb-modal[data-sb-popup="dialog"]');
  const confirm = page.locator('.sb-modal[data-sb-popup="confirm"]');
  await page.click('#open-dialog');
  await page.click('#dialog-nested');
  await confirm.waitFor();
  assert.equal(await dialog.evaluate((modal) => modal.inert), true, 'the lower popup is inert');
  await page.keyboard.press('Escape');
  await confirm.waitFor({ state: 'detached' });
  assert.equal(await dialog.count(), 1, 'only the top popup closed');
  await toast(page, 'closed confirm/close').waitFor();

  await page.click('#dialog-nested');
  await page.click('#confirm-close-all');
  await dialog.waitFor({ state: 'detached' });
  assert.equal(await page.locator('.sb-modal').count(), 0);
  await toast(page, 'closed dialog/close').waitFor();
});

test('a link to a popup opens it as a modal; a missing page is an error toast', async (t) => {
  const { page } = await openPage(suite, t);
  await page.click('#link-dialog');
  await page.locator('.sb-modal[data-sb-popup="dialog"]').waitFor();
  assert.ok(page.url().endsWith('/ui/'));
  await page.keyboard.press('Escape');

  await page.click('#go-missing');
  await idle(page);
  const missing = toast(page, 'Could not open the page nowhere');
  assert.equal(await missing.getAttribute('data-sb-level'), 'error');
});
