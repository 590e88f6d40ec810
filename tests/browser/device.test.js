// Actions that reach beyond the page: new windows, the clipboard, sharing,
// downloads, and app commands (HSYCO app bridge, code scanning, speech).

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { idle, openPage, toast, useSuite } from './harness.js';

const suite = useSuite();

const CLIPBOARD = ['clipboard-read', 'clipboard-write'];

test('url with target _blank opens a new window, without an opener', async (t) => {
  const { page, context } = await openPage(suite, t);
  const [opened] = await Promise.all([context.waitForEvent('page'), page.click('#url-blank')]);
  await opened.locator('#second-title').waitFor();
  assert.ok(opened.url().endsWith('/ui/second'), opened.url());
  assert.equal(await opened.evaluate(() => window.opener), null);
  assert.ok(page.url().endsWith('/ui/'), 'the panel stays where it was');
});

test('copy puts the text on the clipboard', async (t) => {
  const { page } = await openPage(suite, t, { permissions: CLIPBOARD });
  await page.click('#copy');
  await idle(page);
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), 'copied text 42');
});

test('copy falls back to a selection where there is no Clipboard API', async (t) => {
  const { page, context } = await openPage(suite, t, {
    permissions: CLIPBOARD,
    // Only the panel loses the API; the index page below reads the clipboard.
    initScript: () => {
      if (location.pathname.startsWith('/ui/')) delete Navigator.prototype.clipboard;
    },
  });
  assert.equal(await page.evaluate(() => navigator.clipboard), undefined);
  await page.click('#copy');
  await idle(page);
  const reader = await context.newPage();
  await reader.goto(`${suite.server.origin}/`);
  assert.equal(await reader.evaluate(() => navigator.clipboard.readText()), 'copied text 42');
});

test('share uses the Web Share API where there is one', async (t) => {
  const { page } = await openPage(suite, t, {
    initScript: () => {
      navigator.share = async (data) => {
        window.__shared = data;
      };
    },
  });
  await page.click('#share');
  await idle(page);
  assert.deepEqual(await page.evaluate(() => window.__shared), { url: 'https://example.com/shared' });
  assert.equal(await page.locator('.sb-toast').count(), 0);
});

test('share without the Web Share API copies the link and says so', async (t) => {
  const { page } = await openPage(suite, t, {
    permissions: CLIPBOARD,
    initScript: () => {
      delete Navigator.prototype.share;
    },
  });
  await page.click('#share');
  await idle(page);
  await toast(page, 'Link copied to the clipboard.').waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), 'https://example.com/shared');
});

test('download saves the file under the server-given name', async (t) => {
  const { page } = await openPage(suite, t);
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
  assert.equal(download.suggestedFilename(), 'temperatures-2024.csv');
  assert.equal(await readFile(await download.path(), 'utf8'), 'room,temp\nkitchen,21.5\n');
});

test('a failed download shows the server reason', async (t) => {
  const { page } = await openPage(suite, t);
  await page.click('#download-missing');
  await idle(page);
  const failed = toast(page, 'Download failed: no handler provides this download');
  assert.equal(await failed.getAttribute('data-sb-level'), 'error');
});

test('app commands in a plain browser without the features say what cannot be done', async (t) => {
  const { page } = await openPage(suite, t, {
    initScript: () => {
      delete window.BarcodeDetector;
      delete window.SpeechRecognition;
      delete window.webkitSpeechRecognition;
    },
  });
  await page.click('#app-codescan');
  await page.click('#app-speech');
  await page.click('#app-wallet');
  await idle(page);
  assert.equal(await toast(page, "This device can't scan codes.").getAttribute('data-sb-level'), 'warning');
  assert.equal(await toast(page, "This device can't recognise speech.").getAttribute('data-sb-level'), 'warning');
  assert.equal(await toast(page, "This device can't run app:wallet.").getAttribute('data-sb-level'), 'warning');
});

test('inside the HSYCO app, app commands go to its bridge', async (t) => {
  const { page } = await openPage(suite, t, {
    initScript: () => {
      window.__bridge = [];
      window.hsyco = { postMessage: (message) => window.__bridge.push(message) };
    },
  });
  await page.click('#app-codescan');
  await page.click('#app-wallet');
  await idle(page);
  assert.deepEqual(await page.evaluate(() => window.__bridge), ['app:codescan', 'app:wallet']);
  assert.equal(await page.locator('.sb-toast').count(), 0);
});

// A camera that shows a grey picture and a detector that reads a code once
// the test says so.
function fakeScanner() {
  window.BarcodeDetector = class {
    async detect() {
      return window.__codeInView ? [{ rawValue: 'ABC-123' }] : [];
    }
  };
  navigator.mediaDevices.getUserMedia = async () => {
    const canvas = document.createElement('canvas');
    canvas.getContext('2d').fillRect(0, 0, canvas.width, canvas.height);
    window.__stream = canvas.captureStream();
    return window.__stream;
  };
}

test('codescan opens the camera and sends the code read to fn barcode', async (t) => {
  const { page, frames } = await openPage(suite, t, { initScript: fakeScanner });
  await page.click('#app-codescan');
  const scanner = page.locator('.sb-modal[data-sb-modal="codescan"]');
  await scanner.locator('video').waitFor();
  assert.equal(await scanner.locator('.sb-dialog-title').textContent(), 'Scan a code');
  await page.evaluate(() => {
    window.__codeInView = true;
  });
  await scanner.waitFor({ state: 'detached' });
  await toast(page, 'barcode ABC-123 from camera').waitFor();
  const [scanned] = frames.filter((frame) => frame.type === 'device');
  assert.equal(scanned.event, 'barcode');
  assert.equal(scanned.context.object, 'app-codescan', 'the scan names the object that asked for it');
  assert.equal(await page.evaluate(() => window.__stream.getTracks()[0].readyState), 'ended', 'camera released');
});

test('codescan can be cancelled, releasing the camera', async (t) => {
  const { page, frames } = await openPage(suite, t, { initScript: fakeScanner });
  await page.click('#app-codescan');
  await page.getByRole('button', { name: 'Cancel' }).click();
  await page.locator('.sb-modal').waitFor({ state: 'detached' });
  assert.equal(await page.evaluate(() => window.__stream.getTracks()[0].readyState), 'ended');
  assert.equal(frames.filter((frame) => frame.type === 'device').length, 0);
});

test('speech sends what was recognised as command speech', async (t) => {
  const { page } = await openPage(suite, t, {
    initScript: () => {
      window.SpeechRecognition = class extends EventTarget {
        start() {
          setTimeout(() => {
            const result = new Event('result');
            result.results = [[{ transcript: 'lights on' }]];
            this.dispatchEvent(result);
            this.dispatchEvent(new Event('end'));
          }, 50);
        }
      };
    },
  });
  await page.click('#app-speech');
  await toast(page, 'speech=lights on').waitFor();
  await toast(page, 'Listening…').waitFor({ state: 'detached' });
});
