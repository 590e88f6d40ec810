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

async function main() {
  const url = loopbackUrl(option('url', ''));
  const clicks = Number(option('clicks', 200));
  const warmup = Number(option('warmup', 20));
  if (!(clicks >= 1 && clicks <= 10_000 && warmup >= 0 && warmup <= 1000)) {
    throw new Error('--clicks must be 1..=10000 and --warmup 0..=1000');
  }
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    await page.goto(url.href);
    await page.waitForFunction(() => window.Switchboard?.connected);
    await page.evaluate(installProbe, TOAST_TIMEOUT_MS);
    const latencies = [];
    let errors = 0;
    let hidden = 0;
    for (let i = 0; i < warmup + clicks; i++) {
      const button = BUTTONS[i % BUTTONS.length];
      await page.evaluate((expected) => window.__sbClickProbe.arm(expected), button.toast);
      await page.click(button.selector);
      const { ms, visible } = await page.evaluate(() => window.__sbClickProbe.result());
      if (i < warmup) continue;
      if (ms === null) errors += 1;
      else {
        latencies.push(ms);
        if (!visible) hidden += 1;
      }
    }
    latencies.sort((a, b) => a - b);
    const socket = await page.evaluate(socketRoundTrips, { count: 100, frame: DEMO_FRAME });
    const record = {
      id: 'click',
      server: 'switchboard',
      label: `demo panel, "Lobby on" / "Lobby off" buttons (${url.pathname})`,
      clicks: latencies.length,
      warmup_clicks: warmup,
      p50_us: micros(quantile(latencies, 0.5)),
      p90_us: micros(quantile(latencies, 0.9)),
      p99_us: micros(quantile(latencies, 0.99)),
      max_us: micros(latencies.at(-1) ?? null),
      not_visible: hidden,
      socket_p50_us: micros(quantile(socket, 0.5)),
      socket_p99_us: micros(quantile(socket, 0.99)),
      errors: errors + hidden + pageErrors.length,
    };
    if (pageErrors.length > 0) record.first_error = pageErrors[0];
    process.stderr.write(
      `         click switchboard       ${record.clicks} clicks: p50 ${record.p50_us} µs  p90 ${record.p90_us} µs  p99 ${record.p99_us} µs  max ${record.max_us} µs  errors ${record.errors}; the same frame on the page's own socket: p50 ${record.socket_p50_us} µs  p99 ${record.socket_p99_us} µs\n`,
    );
    process.stdout.write(`${JSON.stringify(record)}\n`);
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  process.stderr.write(`click: ${error.stack ?? error}\n`);
  process.exit(1);
});
