// Click → visible toast in a real browser (docs/performance.md): headless
// Chromium opens the demo panel of a running server, and a button that
// answers with a toast ("Lobby on" / "Lobby off") is clicked again and
// again. Each latency is taken inside the page: from the click event (a
// capturing listener on window, which runs before the runtime's own) to the
// MutationObserver callback that sees the toast's element added — no
// polling. Playwright only drives the clicks; its own overhead is outside
// the measured interval. Chromium coarsens performance.now() to 0.1 ms in a
// page that is not cross-origin isolated, which is the figure's resolution.
//
// Two figures name what is not the runtime's (docs/performance.md):
// - `bare_*`: a plain button added to the same page, no runtime on it: its
//   click listener sends the same command on a WebSocket of the page's own
//   and inserts a toast element when the reply comes — Chromium's click
//   handling plus the server, nothing of web/switchboard.js. Its clicks
//   alternate with the runtime's, so both see the same load.
// - `undeferred_*`: the runtime's clicks again in a Chromium started with
//   --disable-features=DeferRendererTasksAfterInput. After a click that
//   needs a new frame (the button's :active style is enough) Chromium holds
//   back every task of the page, the WebSocket's message events included,
//   until that frame is produced, and headless Chromium produces frames on
//   a 60 Hz clock: the reply waits for the next tick, 0–16.7 ms.
//
//   node bench/browser/click.mjs --url http://127.0.0.1:PORT/demo/ [--clicks 200] [--warmup 20]
//
// Prints a summary on stderr and one JSON record on stdout (id `click`), as
// the load client does. Chromium is launched by the browser tests' harness
// (tests/browser/harness.js: the same flags, CHROMIUM_PATH), with the
// playwright-core installed there (`npm ci` in tests/browser/).
import { launchBrowser } from '../../tests/browser/harness.js';

/** How long one click may take to show its toast before it counts as an error. */
const TOAST_TIMEOUT_MS = 5000;

/** The two buttons clicked in turn and the toast each one's answer shows. */
const BUTTONS = [
  { selector: '#lobbyOn', toast: 'Light lobby on' },
  { selector: '#lobbyOff', toast: 'Light lobby off' },
];

/** The bare buttons (installBareButtons) that send the same commands without the runtime. */
const BARE_BUTTONS = [
  { selector: '#benchBareOn', toast: 'Light lobby on' },
  { selector: '#benchBareOff', toast: 'Light lobby off' },
];

/** The Chromium flag that turns off its deferral of a page's tasks after input. */
const NO_INPUT_DEFERRAL = '--disable-features=DeferRendererTasksAfterInput';

function option(name, fallback) {
  const index = process.argv.indexOf(`--${name}`);
  return index > 0 && process.argv[index + 1] ? process.argv[index + 1] : fallback;
}

function loopbackUrl(text) {
  const url = new URL(text);
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) {
    throw new Error(`${text} is not a loopback address; the suite only loads this machine`);
  }
  return url;
}

/** Installed in the page: arms a measurement and resolves it when the toast appears. */
function installProbe(timeoutMs) {
  const probe = { clickedAt: 0, expected: null, settle: null, pending: null };
  window.addEventListener('click', () => { probe.clickedAt = performance.now(); }, true);
  new MutationObserver((records) => {
    const now = performance.now();
    if (!probe.settle) return;
    for (const record of records) {
      for (const node of record.addedNodes) {
        if (node.nodeType !== Node.ELEMENT_NODE || !node.classList.contains('sb-toast')) continue;
        if (node.querySelector('.sb-toast-message')?.textContent !== probe.expected) continue;
        const settle = probe.settle;
        probe.settle = null;
        settle({ ms: now - probe.clickedAt, visible: node.checkVisibility() });
        return;
      }
    }
  }).observe(document.body, { childList: true, subtree: true });
  window.__sbClickProbe = {
    /** Closes every toast (so the next one is a new element), then waits for `expected`. */
    arm(expected) {
      for (const close of document.querySelectorAll('.sb-toast-close')) close.click();
      for (const bare of document.querySelectorAll('[data-bench-bare]')) bare.remove();
      probe.expected = expected;
      probe.pending = new Promise((resolvePromise) => {
        probe.settle = resolvePromise;
        setTimeout(() => {
          if (probe.settle === resolvePromise) {
            probe.settle = null;
            resolvePromise({ ms: null, visible: false });
          }
        }, timeoutMs);
      });
    },
    result() {
      return probe.pending;
    },
  };
}

/** The frame the "Lobby on" button sends (the runtime adds seq and id). */
const DEMO_FRAME = { type: 'command', object: 'lobbyOn', name: 'light', param: 'lobby on', page: 'home' };
const DEMO_OFF_FRAME = { ...DEMO_FRAME, object: 'lobbyOff', param: 'lobby off' };

/**
 * Run in the page: two plain buttons next to the demo's (no `data-sb-object`,
 * so the runtime ignores them) that send `frames[i]` with an id over a
 * WebSocket of their own and, when its reply comes, insert a toast element
 * with the reply's message — what a click costs without web/switchboard.js.
 */
async function installBareButtons({ frames, ids }) {
  const url = `${location.origin.replace(/^http/, 'ws')}${location.pathname.replace(/[^/]*$/, '')}api/ws`;
  const socket = new WebSocket(url);
  await new Promise((resolve, reject) => {
    socket.addEventListener('open', resolve);
    socket.addEventListener('error', reject);
  });
  let seq = 0;
  const waiting = new Map();
  socket.addEventListener('message', (event) => {
    const reply = JSON.parse(event.data);
    const show = waiting.get(reply.seq);
    if (!show) return;
    waiting.delete(reply.seq);
    show(reply);
  });
  const anchor = document.querySelector('#lobbyOff');
  frames.forEach((frame, index) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.id = ids[index];
    button.textContent = frame.param;
    anchor.after(button);
    button.addEventListener('click', () => {
      seq += 1;
      waiting.set(seq, (reply) => {
        const toast = document.createElement('div');
        toast.className = 'sb-toast';
        toast.dataset.benchBare = '';
        const message = document.createElement('p');
        message.className = 'sb-toast-message';
        message.textContent = reply.actions?.find((action) => action.type === 'toast')?.message ?? '';
        toast.append(message);
        document.body.append(toast);
      });
      socket.send(JSON.stringify({ ...frame, seq, id: `bench-bare-${seq}` }));
    });
  });
}

/**
 * Run in the page: the server's share, without a click or the runtime —
 * the same frame with an id over a WebSocket of the page's own, `count`
 * times one after the other; the round trips in ms, sorted.
 */
async function socketRoundTrips({ count, frame }) {
  const url = `${location.origin.replace(/^http/, 'ws')}${location.pathname.replace(/[^/]*$/, '')}api/ws`;
  const socket = new WebSocket(url);
  await new Promise((resolve, reject) => {
    socket.addEventListener('open', resolve);
    socket.addEventListener('error', reject);
  });
  const times = [];
  for (let seq = 1; seq <= count; seq++) {
    const started = performance.now();
    await new Promise((resolve) => {
      const onMessage = (event) => {
        if (JSON.parse(event.data).seq !== seq) return;
        socket.removeEventListener('message', onMessage);
        resolve();
      };
      socket.addEventListener('message', onMessage);
      socket.send(JSON.stringify({ ...frame, seq, id: `bench-socket-${seq}` }));
    });
    times.push(performance.now() - started);
  }
  socket.close();
  return times.sort((a, b) => a - b);
}

function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

const micros = (ms) => (ms === null ? null : Math.round(ms * 10000) / 10);

/**
 * One browser (Chromium's flags plus `extraArgs`) on the demo: `clicks`
 * measured clicks of the runtime's buttons after `warmup`, and as many of
 * the bare buttons, alternating in pairs (each click flips the light, so
 * every command changes the point). Latencies in ms, sorted.
 */
async function measure(url, { clicks, warmup, extraArgs = [], withSocket = false }) {
  const browser = await launchBrowser(extraArgs);
  try {
    const page = await browser.newPage();
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    await page.goto(url.href);
    await page.waitForFunction(() => window.Switchboard?.connected);
    await page.evaluate(installProbe, TOAST_TIMEOUT_MS);
    await page.evaluate(installBareButtons, {
      frames: [DEMO_FRAME, DEMO_OFF_FRAME],
      ids: BARE_BUTTONS.map((b) => b.selector.slice(1)),
    });
    const result = { runtime: [], bare: [], failed: 0, hidden: 0, pageErrors };
    for (let k = 0; k < 2 * (warmup + clicks); k++) {
      const bare = Math.floor(k / 2) % 2 === 1;
      const button = (bare ? BARE_BUTTONS : BUTTONS)[k % 2];
      await page.evaluate((expected) => window.__sbClickProbe.arm(expected), button.toast);
      await page.click(button.selector);
      const { ms, visible } = await page.evaluate(() => window.__sbClickProbe.result());
      if (k < 2 * warmup) continue;
      if (ms === null) result.failed += 1;
      else {
        (bare ? result.bare : result.runtime).push(ms);
        if (!visible) result.hidden += 1;
      }
    }
    result.runtime.sort((a, b) => a - b);
    result.bare.sort((a, b) => a - b);
    if (withSocket) result.socket = await page.evaluate(socketRoundTrips, { count: 100, frame: DEMO_FRAME });
    return result;
  } finally {
    await browser.close();
  }
}

/** `{prefix}p50_us` … of sorted latencies in ms. */
function quantiles(prefix, sorted, qs = [['p50', 0.5], ['p90', 0.9], ['p99', 0.99]]) {
  return Object.fromEntries(qs.map(([name, q]) => [`${prefix}${name}_us`, micros(quantile(sorted, q))]));
}

async function main() {
  const url = loopbackUrl(option('url', ''));
  const clicks = Number(option('clicks', 200));
  const warmup = Number(option('warmup', 20));
  if (!(clicks >= 1 && clicks <= 10_000 && warmup >= 0 && warmup <= 1000)) {
    throw new Error('--clicks must be 1..=10000 and --warmup 0..=1000');
  }
  const chromium = await measure(url, { clicks, warmup, withSocket: true });
  const undeferred = await measure(url, { clicks, warmup, extraArgs: [NO_INPUT_DEFERRAL] });
  const latencies = chromium.runtime;
  const pageErrors = [...chromium.pageErrors, ...undeferred.pageErrors];
  const record = {
    id: 'click',
    server: 'switchboard',
    label: `demo panel, "Lobby on" / "Lobby off" buttons (${url.pathname})`,
    clicks: latencies.length,
    warmup_clicks: warmup,
    ...quantiles('', latencies),
    max_us: micros(latencies.at(-1) ?? null),
    not_visible: chromium.hidden + undeferred.hidden,
    socket_p50_us: micros(quantile(chromium.socket, 0.5)),
    socket_p99_us: micros(quantile(chromium.socket, 0.99)),
    bare_clicks: chromium.bare.length,
    ...quantiles('bare_', chromium.bare),
    undeferred_clicks: undeferred.runtime.length,
    ...quantiles('undeferred_', undeferred.runtime),
    ...quantiles('undeferred_bare_', undeferred.bare, [['p50', 0.5], ['p99', 0.99]]),
    errors: chromium.failed + undeferred.failed + chromium.hidden + undeferred.hidden + pageErrors.length,
  };
  if (pageErrors.length > 0) record.first_error = pageErrors[0];
  const figure = (prefix) => `p50 ${record[`${prefix}p50_us`]} µs  p99 ${record[`${prefix}p99_us`]} µs`;
  process.stderr.write(
    `         click switchboard       ${record.clicks} clicks: p50 ${record.p50_us} µs  p90 ${record.p90_us} µs  p99 ${record.p99_us} µs  max ${record.max_us} µs  errors ${record.errors}; ` +
      `a bare button (no runtime): ${figure('bare_')}; Chromium's input deferral off: ${figure('undeferred_')} (bare ${figure('undeferred_bare_')}); ` +
      `the same frame on the page's own socket: p50 ${record.socket_p50_us} µs  p99 ${record.socket_p99_us} µs\n`,
  );
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

main().catch((error) => {
  process.stderr.write(`click: ${error.stack ?? error}\n`);
  process.exit(1);
});
