// A phone-sized touch screen (390 × 844): nothing overflows sideways,
// targets are finger-sized and work by touch, overlays fit.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { box, idle, openPage, toast, useSuite } from './harness.js';

const suite = useSuite();

const PHONE = { viewport: { width: 390, height: 844 }, hasTouch: true, isMobile: true };
const MIN_TARGET = 44;

const horizontalOverflow = (page) =>
  page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);

for (const path of ['', 'form', 'second']) {
  test(`the ${path || 'home'} page fits the phone's width, with finger-sized targets`, async (t) => {
    const { page } = await openPage(suite, t, { ...PHONE, path });
    assert.equal(await horizontalOverflow(page), 0);
    const small = await page.evaluate((min) => {
      const targets = document.querySelectorAll('#sb-page button, #sb-page input:not([type=checkbox]), #sb-page select');
      return [...targets]
        .filter((target) => target.getBoundingClientRect().height < min)
        .map((target) => target.id);
    }, MIN_TARGET);
    assert.deepEqual(small, [], 'controls shorter than a finger');
  });
}

test('a tap works and its toast fits on screen', async (t) => {
  const { page } = await openPage(suite, t, PHONE);
  const button = page.locator('#toast-hello');
  const target = await box(button);
  assert.ok(target.height >= MIN_TARGET && target.width >= MIN_TARGET, JSON.stringify(target));
  await button.tap();
  await idle(page);
  const shown = await box(toast(page, 'Hello'));
  assert.ok(shown.x >= 0 && shown.x + shown.width <= 390, JSON.stringify(shown));
  assert.equal(await horizontalOverflow(page), 0);
});

test('a popup page fits the phone screen', async (t) => {
  const { page } = await openPage(suite, t, PHONE);
  await page.locator('#open-dialog').tap();
  await idle(page);
  const dialog = await box(page.getByRole('dialog'));
  assert.ok(dialog.x >= 0 && dialog.x + dialog.width <= 390, JSON.stringify(dialog));
  assert.ok(dialog.y >= 0 && dialog.y + dialog.height <= 844, JSON.stringify(dialog));
  await page.locator('#dialog-close').tap();
  await page.locator('.sb-modal').waitFor({ state: 'detached' });
});
