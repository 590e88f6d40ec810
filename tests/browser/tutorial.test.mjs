// docs/tutorial.md in a real browser: the project its file blocks make,
// then the browser test the tutorial gives (its `test=room.test.mjs`
// block), run as a reader would run it. Also: a page load asks for no
// missing file (the favicon, issue 16 item 13).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { launchBrowser, openPage, startServer } from './server.mjs';

const ROOT = resolve(import.meta.dirname, '../..');
const BINARY = process.env.SWITCHBOARD_BIN ?? join(ROOT, 'target/debug/switchboard');

/** The tutorial's fenced blocks tagged `file=…` or `test=…`. */
function tutorialBlocks() {
  const text = readFileSync(join(ROOT, 'docs/tutorial.md'), 'utf8');
  const blocks = [];
  for (const match of text.matchAll(/^```\S*\s+(file|test)=(\S+)\n([\s\S]*?)^```$/gm)) {
    blocks.push({ kind: match[1], path: match[2], body: match[3] });
  }
  return blocks;
}

let projects;
let server;
let browser;

before(async () => {
  projects = mkdtempSync(join(tmpdir(), 'sb-tutorial-'));
  execFileSync(BINARY, ['new', join(projects, 'room')]);
  for (const block of tutorialBlocks().filter((b) => b.kind === 'file')) {
    writeFileSync(join(projects, 'room', block.path), block.body);
  }
  server = await startServer({ projects, args: ['--dev'] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.stop();
  rmSync(projects, { recursive: true, force: true });
});

test('a page load requests nothing that is missing', async () => {
  const context = await browser.newContext();
  const missing = [];
  context.on('response', (response) => {
    if (response.status() >= 400) missing.push(`${response.status()} ${response.url()}`);
  });
  const page = await openPage(context, `${server.url}/room/`);
  // Chromium asks for /favicon.ico when a page names no icon, after load.
  const icon = await page.evaluate(async () => (await fetch('/favicon.ico')).status);
  assert.equal(icon, 200);
  assert.deepEqual(missing, []);
  assert.deepEqual(page.errors, []);
  await context.close();
});

test("the tutorial's own browser test passes", async () => {
  const [block] = tutorialBlocks().filter((b) => b.kind === 'test');
  assert.equal(block.path, 'room.test.mjs');
  // Next to node_modules, so that `playwright-core` resolves as in a
  // reader's folder.
  const file = join(import.meta.dirname, `.tutorial-${process.pid}.test.mjs`);
  writeFileSync(file, block.body);
  try {
    // A test run of its own, as a reader's: without NODE_TEST_CONTEXT,
    // which makes a nested `node --test` skip its files.
    const { NODE_TEST_CONTEXT: _, ...env } = process.env;
    const child = spawn(process.execPath, ['--test', file], {
      env: { ...env, PANEL_URL: `${server.url}/room/` },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    const code = await new Promise((done) => child.on('exit', done));
    assert.equal(code, 0, `room.test.mjs failed:\n${output}\n--- server log ---\n${server.log()}`);
    assert.match(output, /^# pass 1$/m, output);
  } finally {
    rmSync(file, { force: true });
  }
});
