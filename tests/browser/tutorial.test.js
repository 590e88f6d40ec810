// docs/tutorial.md in a real browser: the project its file blocks make,
// then the browser test the tutorial gives (its `test=room.test.mjs`
// block), run as a reader would run it. Also: a page load asks for no
// missing file (the favicon, issue 16 item 13).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { SERVER_BIN, openPage, useSuite } from './harness.js';

const ROOT = path.resolve(import.meta.dirname, '../..');

/** The tutorial's fenced blocks tagged `file=…` or `test=…`. */
function tutorialBlocks() {
  const text = readFileSync(path.join(ROOT, 'docs/tutorial.md'), 'utf8');
  const blocks = [];
  for (const match of text.matchAll(/^```\S*\s+(file|test)=(\S+)\n([\s\S]*?)^```$/gm)) {
    blocks.push({ kind: match[1], path: match[2], body: match[3] });
  }
  return blocks;
}

/** Step 1 (`switchboard new`), then every file as the tutorial gives it. */
function tutorialProject() {
  const projects = mkdtempSync(path.join(tmpdir(), 'sb-tutorial-'));
  process.once('exit', () => rmSync(projects, { recursive: true, force: true }));
  execFileSync(SERVER_BIN, ['new', path.join(projects, 'room')]);
  for (const block of tutorialBlocks().filter((b) => b.kind === 'file')) {
    writeFileSync(path.join(projects, 'room', block.path), block.body);
  }
  return projects;
}

const suite = useSuite({ projects: tutorialProject(), args: ['--dev'] });

test('a page load requests nothing that is missing', async (t) => {
  const missing = [];
  const { page } = await openPage(suite, t, {
    project: 'room',
    setup: (context) =>
      context.on('response', (response) => {
        if (response.status() >= 400) missing.push(`${response.status()} ${response.url()}`);
      }),
  });
  // Chromium asks for /favicon.ico when a page names no icon.
  assert.equal(await page.evaluate(async () => (await fetch('/favicon.ico')).status), 200);
  assert.deepEqual(missing, []);
});

test("the tutorial's own browser test passes", async () => {
  const [block] = tutorialBlocks().filter((b) => b.kind === 'test');
  assert.equal(block.path, 'room.test.mjs');
  // Next to node_modules, so that `playwright-core` resolves as in a
  // reader's folder.
  const file = path.join(import.meta.dirname, `.tutorial-${process.pid}.test.mjs`);
  writeFileSync(file, block.body);
  try {
    // A test run of its own, as a reader's: without NODE_TEST_CONTEXT,
    // which makes a nested `node --test` skip its files.
    const { NODE_TEST_CONTEXT: _, ...env } = process.env;
    const child = spawn(process.execPath, ['--test', file], {
      env: {
        ...env,
        PANEL_URL: `${suite.server.origin}/room/`,
        ...(env.CHROMIUM_PATH ? { CHROMIUM: env.CHROMIUM_PATH } : {}),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    const [code] = await Promise.all([new Promise((done) => child.on('exit', done))]);
    assert.equal(code, 0, `room.test.mjs failed:\n${output}\n--- server log ---\n${suite.server.log()}`);
    assert.match(output, /^# pass 1$/m, output);
  } finally {
    rmSync(file, { force: true });
  }
});
