// Starts the real switchboard binary for a browser test and launches
// Debian's Chromium through playwright-core.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const ROOT = resolve(import.meta.dirname, '../..');
const BINARY = process.env.SWITCHBOARD_BIN ?? join(ROOT, 'target/debug/switchboard');

/** Starts the server on a free port; resolves with { url, log(), stop() }. */
export function startServer({ projects = join(ROOT, 'projects'), args = [], env = {} } = {}) {
  const data = mkdtempSync(join(tmpdir(), 'sb-browser-'));
  const child = spawn(BINARY, ['--projects', projects, '--bind', '127.0.0.1:0', '--database', join(data, 'db.redb'), ...args], {
    env: { ...process.env, SWITCHBOARD_LOG: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (chunk) => {
    log += chunk;
  });
  return new Promise((resolvePromise, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), 20_000);
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const match = out.match(/listening on (http:\/\/[^/\s]+)\//);
      if (match) {
        clearTimeout(timer);
        resolvePromise({
          url: match[1],
          log: () => log,
          /** Waits until the log contains `needle`. */
          async waitForLog(needle, timeout = 10_000) {
            const deadline = Date.now() + timeout;
            while (!log.includes(needle)) {
              if (Date.now() > deadline) throw new Error(`log never contained ${needle}:\n${log}`);
              await new Promise((r) => setTimeout(r, 50));
            }
          },
          stop() {
            child.kill('SIGKILL');
            rmSync(data, { recursive: true, force: true });
          },
        });
      }
    });
    child.on('error', (error) => reject(new Error(`cannot start ${BINARY}: ${error.message}`)));
    child.on('exit', (code) => reject(new Error(`server exited (${code}):\n${log}`)));
  });
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** Opens a project page and waits until its WebSocket is connected. */
export async function openPage(context, url) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  page.errors = errors;
  await page.goto(url);
  await page.waitForFunction(() => window.Switchboard?.connected);
  return page;
}

/** Clicks and waits until the command's reply has had its effect. */
export async function tap(page, selector) {
  await page.click(selector);
  await page.evaluate(() => window.Switchboard.whenIdle());
}
