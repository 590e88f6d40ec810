// The one fixture every browser test uses: the real switchboard binary on an
// ephemeral port, serving tests/projects (or the example projects/), and a
// headless Chromium driven by playwright-core. Plus small helpers to see what
// the user sees, what the runtime sent and what the server logged.
//
// Environment:
//   SWITCHBOARD_BIN   the server binary (default: $CARGO_TARGET_DIR/debug/switchboard,
//                     else target/debug/switchboard of this checkout)
//   CHROMIUM_PATH     the Chromium executable (default: /usr/bin/chromium)
//   SWITCHBOARD_LOG   the server's log filter (default: info; tests read the log)

import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));

const ROOT = path.resolve(HERE, '../..');
export const SERVER_BIN = process.env.SWITCHBOARD_BIN
  ? path.resolve(process.env.SWITCHBOARD_BIN)
  : path.join(process.env.CARGO_TARGET_DIR ? path.resolve(process.env.CARGO_TARGET_DIR) : path.join(ROOT, 'target'), 'debug/switchboard');
/** The test projects (tests/projects): the default. */
export const TEST_PROJECTS = path.join(ROOT, 'tests/projects');
/** The example projects shipped with Switchboard (projects/: the demo). */
export const EXAMPLE_PROJECTS = path.join(ROOT, 'projects');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const STARTUP_TIMEOUT_MS = 15_000;

/** The project a page opens on unless a test names another. */
const DEFAULT_PROJECT = 'ui';

/** A scratch folder for a server's database, removed when the test process ends. */
function scratchDir() {
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-ui-'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Starts the server and resolves once it listens. `bind` defaults to an
 * ephemeral port; pass the same address and `dir` again to restart it with
 * the same database (sessions survive a restart). `projects` is the folder
 * served (default TEST_PROJECTS); `args` are extra command-line flags,
 * `env` extra environment variables (a broker's URL).
 */
export async function startServer({ bind = '127.0.0.1:0', dir = scratchDir(), projects = TEST_PROJECTS, args = [], env = {} } = {}) {
  // Run in the scratch folder: the database and any other relative default
  // land there, never in the checkout.
  const child = spawn(SERVER_BIN, ['--projects', projects, '--bind', bind, '--database', path.join(dir, 'db.redb'), ...args], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, SWITCHBOARD_LOG: process.env.SWITCHBOARD_LOG ?? 'info', ...env },
  });
  let log = '';
  child.stderr.setEncoding('utf8').on('data', (chunk) => {
    log += chunk;
  });
  const origin = await listeningOrigin(child, () => log);
  return {
    origin,
    bind: new URL(origin).host,
    dir,
    pid: child.pid,
    /** Everything the server logged so far. */
    log: () => log,
    /** Waits until the log contains `needle` (a string or a RegExp); fails with the log. */
    async waitForLog(needle, { timeout = 10_000 } = {}) {
      const found = () => (typeof needle === 'string' ? log.includes(needle) : needle.test(log));
      await until(found, { timeout, message: String(needle) }).catch((error) => {
        throw new Error(`${error.message}; the server log:\n${log}`);
      });
    },
    /** Stops it the way a service manager does (SIGTERM) and waits. */
    stop: () => stopProcess(child, 'SIGTERM'),
    /** Kills it with no chance to clean up (SIGKILL), as a crash would. */
    kill: () => stopProcess(child, 'SIGKILL'),
  };
}

function listeningOrigin(child, log) {
  return new Promise((resolve, reject) => {
    let stdout = '';
    const finish = (error, origin) => {
      clearTimeout(timer);
      child.off('exit', onExit);
      child.off('error', finish);
      if (error) {
        child.kill('SIGKILL');
        reject(new Error(`${error.message}\n${log()}`));
      } else {
        resolve(origin);
      }
    };
    const onExit = (code) => finish(new Error(`${SERVER_BIN} exited with ${code} before listening`));
    const timer = setTimeout(() => finish(new Error('the server did not start in time')), STARTUP_TIMEOUT_MS);
    child.once('exit', onExit);
    child.once('error', finish);
    child.stdout.setEncoding('utf8').on('data', (chunk) => {
      stdout += chunk;
      const match = /listening on (http:\/\/[^\s/]+)/.exec(stdout);
      if (match) finish(null, match[1]);
    });
  });
}

async function stopProcess(child, signal) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill(signal);
  await exited;
}

/** The password `usersFile` gives every user. */
export const PASSWORD = 'correct horse battery';

/**
 * A users file made with `switchboard passwd`, as an operator would:
 * `usersFile([['ann', 'supervisor,operator']])`. Pass it to the server
 * with `args: ['--users', file]`.
 */
export function usersFile(users) {
  const file = path.join(scratchDir(), 'users.toml');
  for (const [user, roles] of users) {
    const result = spawnSync(SERVER_BIN, ['passwd', user, '--roles', roles, '--users', file], { input: `${PASSWORD}\n` });
    if (result.status !== 0) throw new Error(`switchboard passwd ${user} failed: ${result.stderr}`);
  }
  return file;
}

/** Signs `user` in through the login form, for openPage's `setup`. */
export function logIn(suite, project, user) {
  return async (context) => {
    const origin = suite.server.origin;
    const response = await context.request.post(`${origin}/${project}/login`, {
      form: { user, password: PASSWORD, next: `/${project}/` },
      headers: { Origin: origin },
      maxRedirects: 0,
    });
    assert.equal(response.status(), 303, `login of ${user}: ${await response.text()}`);
  };
}

/** Chromium with the suite's flags; `extraArgs` add to them (the click benchmark's A/B). */
export function launchBrowser(extraArgs = []) {
  return chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, ...extraArgs] });
}

/**
 * One server and one browser for the whole test file. Call at the top level
 * of the file; the returned object is filled in before the first test.
 * `options` go to startServer (e.g. `{ projects: EXAMPLE_PROJECTS }`).
 */
export function useSuite(options = {}) {
  const suite = { server: null, browser: null };
  before(async () => {
    suite.server = await startServer(options);
    suite.browser = await launchBrowser();
  });
  after(async () => {
    await suite.browser?.close();
    await suite.server?.stop();
  });
  return suite;
}

/**
 * A fresh browser context (so a fresh session) on a page of the ui project,
 * waiting until the runtime is connected. Closed when the test ends, which
 * also fails the test if the page threw an uncaught error.
 *
 * Options: project (default ui), path (page after /<project>/), viewport, hasTouch, isMobile,
 * permissions (granted for the server's origin), initScript (runs before
 * the page's own scripts), setup(context) before the page opens, origin
 * (another server).
 */
export async function openPage(suite, t, options = {}) {
  const origin = options.origin ?? suite.server.origin;
  const context = await suite.browser.newContext({
    viewport: options.viewport ?? { width: 1280, height: 800 },
    hasTouch: options.hasTouch ?? false,
    isMobile: options.isMobile ?? false,
    acceptDownloads: true,
  });
  if (options.permissions) await context.grantPermissions(options.permissions, { origin });
  if (options.initScript) await context.addInitScript(options.initScript);
  await options.setup?.(context);
  const page = await context.newPage();
  // Fail fast: nothing in these tests should take seconds to appear.
  page.setDefaultTimeout(5000);
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  const frames = recordFrames(page);
  t.after(async () => {
    await context.close();
    assert.deepEqual(errors.map(String), [], 'uncaught errors in the page');
  });
  await page.goto(`${origin}/${options.project ?? DEFAULT_PROJECT}/${options.path ?? ''}`);
  await page.waitForFunction(() => window.Switchboard?.connected);
  return { context, page, frames };
}

/**
 * Every frame the page sends, over the WebSocket or HTTP, in order. The
 * `commands(name)` helper filters the command frames of one name.
 */
function recordFrames(page) {
  const frames = [];
  page.on('websocket', (socket) => {
    socket.on('framesent', ({ payload }) => frames.push(JSON.parse(payload)));
  });
  page.on('request', (request) => {
    if (request.method() === 'POST' && request.url().endsWith('/api/command')) {
      frames.push(JSON.parse(request.postData()));
    }
  });
  frames.commands = (name) => frames.filter((frame) => frame.type === 'command' && frame.name === name);
  return frames;
}

/** Waits until no command is pending and the replies' actions ran. */
export function idle(page) {
  return page.evaluate(() => window.Switchboard.whenIdle());
}

/** Clicks and waits until the command's reply has had its effect. */
export async function tap(page, selector) {
  await page.click(selector);
  await idle(page);
}

export function toast(page, text) {
  return page.locator('.sb-toast', { hasText: text });
}

/** Polls `check` (sync or async, returning truthy) until it holds or the time is up. */
export async function until(check, { timeout = 5000, interval = 50, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${message}`);
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Where an element is on screen; fails when it is not rendered. */
export async function box(locator) {
  const found = await locator.boundingBox();
  assert.ok(found, 'the element has no box on screen');
  return found;
}

/**
 * Routes a context's WebSockets through the test, so that a test can hold
 * the replies to one command until it releases them: a handler that is
 * "still running" for exactly as long as the test wants, however busy the
 * machine. Pass `gate.install` as openPage's `setup`; pushes (frames with a
 * `type`) and other replies pass straight through.
 *
 *   const gate = replyGate();
 *   const { page } = await openPage(suite, t, { setup: gate.install });
 *   gate.hold('save');   // replies to `save` wait…
 *   gate.release();      // …until now
 */
export function replyGate() {
  const names = new Map(); // seq → command name, of the frames the page sent
  const held = [];
  let holding = null;
  const gate = {
    /** Every command frame the page sent through the gate, in order. */
    sent: [],
    install: (context) =>
      context.routeWebSocket(/\/api\/ws/, (page) => {
        const server = page.connectToServer();
        page.onMessage((message) => {
          const frame = JSON.parse(message);
          if (frame.type === 'command') {
            gate.sent.push(frame);
            names.set(frame.seq, frame.name);
          }
          server.send(message);
        });
        server.onMessage((message) => {
          const frame = JSON.parse(message);
          if (!frame.type && holding !== null && names.get(frame.seq) === holding) held.push(() => page.send(message));
          else page.send(message);
        });
      }),
    hold(name) {
      holding = name;
    },
    /** Delivers what was held and stops holding. */
    release() {
      holding = null;
      for (const deliver of held.splice(0)) deliver();
    },
    /** How many replies wait. */
    get held() {
      return held.length;
    },
  };
  return gate;
}

/**
 * A `nats-server -js` for the cluster tests (tests/run installs it): on a
 * port it picks itself (read from its ports file), its store in a scratch
 * folder, killed when the test process ends. Start nodes on it with
 * `startServer({ args: ['--cluster', nats.url, '--node', 'a'] })`.
 */
export async function startNats() {
  const dir = scratchDir();
  const child = spawn('nats-server', ['-js', '-a', '127.0.0.1', '-p', '-1', '-sd', path.join(dir, 'jetstream'), '--ports_file_dir', dir], {
    stdio: 'ignore',
  });
  process.once('exit', () => child.kill('SIGKILL'));
  const portsFile = path.join(dir, `nats-server_${child.pid}.ports`);
  const url = await until(() => {
    try {
      return JSON.parse(readFileSync(portsFile, 'utf8')).nats?.[0];
    } catch {
      return undefined;
    }
  }, { timeout: STARTUP_TIMEOUT_MS, message: 'nats-server to write its ports file' });
  return { url, stop: () => stopProcess(child, 'SIGTERM') };
}
