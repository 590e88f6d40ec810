// [[keystrokes]] matchers in the browser (tests/projects/ui/project.toml):
// a modifier the matcher does not name does not matter, unless `exact`.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { idle, openPage, toast, useSuite } from './harness.js';

const suite = useSuite();

/** Presses `keys` on the page's body and waits for what it caused. */
async function press(page, keys) {
  await page.keyboard.press(keys);
  await idle(page);
}

test('key = "A" fires for Shift+A, which is how an "A" is typed', async (t) => {
  const { page, frames } = await openPage(suite, t);
  await press(page, 'Shift+A');
  await toast(page, 'key capitalA shift=true').waitFor();
  await press(page, 'a');
  assert.equal(frames.filter((frame) => frame.type === 'keystroke' && frame.matcher === 'capitalA').length, 1, 'a lowercase a is another key');
});

test('key = "Enter" fires with or without Shift; exact = true refuses modifiers it does not name', async (t) => {
  const { page, frames } = await openPage(suite, t);
  await press(page, 'Enter');
  await toast(page, 'key enter shift=false').waitFor();
  await press(page, 'Shift+Enter');
  await toast(page, 'key enter shift=true').waitFor();

  await press(page, 'Shift+F2');
  await press(page, 'F2');
  await toast(page, 'key plainF2 shift=false').waitFor();
  const exact = frames.filter((frame) => frame.type === 'keystroke' && frame.matcher === 'plainF2');
  assert.equal(exact.length, 1, 'Shift+F2 did not fire the exact matcher');
});

test('a named modifier must be held: ctrl = true fires for Ctrl+S only', async (t) => {
  const { page, frames } = await openPage(suite, t);
  await press(page, 's');
  await press(page, 'Control+s');
  await toast(page, 'key save shift=false ctrl=true').waitFor();
  assert.equal(frames.filter((frame) => frame.type === 'keystroke' && frame.matcher === 'save').length, 1);
});
