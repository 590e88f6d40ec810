// Objects bound to points in a real headless Chromium, against a real
// Mosquitto (Debian package; tests/run installs it) started by the test on
// a free loopback port: a broker publish turns a toggle on in every open
// panel, a lost broker greys the values.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { launchBrowser, openPage, startServer, tap } from './harness.js';

const PROJECTS = resolve(import.meta.dirname, '../points');

let broker;
/** One server (on the test's broker) and one browser for the file. */
const suite = { server: null, browser: null };

/** A free loopback port, released for the broker. */
function freePort() {
  return new Promise((resolvePort) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolvePort(port));
    });
  });
}

/** Resolves once something accepts connections on the port. */
async function listening(port) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise((done) => {
      const socket = connect(port, '127.0.0.1', () => {
        socket.destroy();
        done(true);
      });
      socket.on('error', () => done(false));
    });
    if (up) return;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${port}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Mosquitto on a free port with a generated config; stop() and start() again on the same port. */
async function startBroker() {
  const dir = mkdtempSync(join(tmpdir(), 'sb-mosquitto-'));
  const port = await freePort();
  const config = join(dir, 'mosquitto.conf');
  writeFileSync(config, `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\n`);
  const broker = {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    child: null,
    async start() {
      this.child = spawn('/usr/sbin/mosquitto', ['-c', config], { stdio: 'ignore' });
      await listening(port);
    },
    async stop() {
      const exited = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGKILL');
      await exited;
    },
    remove() {
      this.child?.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await broker.start();
  return broker;
}

/** An MQTT string: two length bytes, then UTF-8. */
function mqttString(text) {
  const bytes = Buffer.from(text, 'utf8');
  return Buffer.concat([Buffer.from([bytes.length >> 8, bytes.length & 0xff]), bytes]);
}

function packet(type, body) {
  // Remaining length, variable-length encoded.
  const length = [];
  let n = body.length;
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    length.push(byte);
  } while (n > 0);
  return Buffer.concat([Buffer.from([type, ...length]), body]);
}

/**
 * Publishes one message (MQTT 3.1.1, QoS 0) the way a device would: connect,
 * wait for CONNACK, publish, disconnect.
 */
function publish(topic, payload, { retain = false } = {}) {
  return new Promise((done, fail) => {
    const socket = connect(broker.port, '127.0.0.1', () => {
      const connectBody = Buffer.concat([
        mqttString('MQTT'),
        Buffer.from([4, 0x02, 0, 30]), // level 4, clean session, keep-alive 30 s
        mqttString(`browser-test-${process.pid}`),
      ]);
      socket.write(packet(0x10, connectBody));
    });
    socket.once('data', (data) => {
      if (data[0] !== 0x20 || data[3] !== 0) return fail(new Error('CONNACK refused'));
      socket.write(packet(retain ? 0x31 : 0x30, Buffer.concat([mqttString(topic), Buffer.from(payload, 'utf8')])));
      socket.end(Buffer.from([0xe0, 0]), done);
    });
    socket.on('error', fail);
  });
}

before(async () => {
  broker = await startBroker();
  suite.server = await startServer({
    projects: PROJECTS,
    env: { POINTS_TEST_MQTT: broker.url, POINTS_TEST_MQTT_PASSWORD: 'any' },
  });
  await suite.server.waitForLog('connected to the MQTT broker');
  suite.browser = await launchBrowser();
});

after(async () => {
  await suite.browser?.close();
  await suite.server?.stop();
  broker?.remove();
});

/** A fresh session on the building's home page; closed when the test ends. */
function panel(t) {
  return openPage(suite, t, { project: 'building', path: 'home' });
}

describe('points', () => {
  test('a toggle bound to a point changes on a second page when the broker publishes', async (t) => {
    const first = await panel(t);
    const second = await panel(t);
    for (const { page } of [first, second]) {
      assert.equal(await page.getAttribute('#light', 'aria-pressed'), 'false');
    }
    await publish('building/lobby/light/state', 'ON');
    for (const { page } of [first, second]) {
      await page.locator('#light[aria-pressed="true"][data-sb-quality="good"]').waitFor();
      assert.equal(await page.getAttribute('#light', 'data-sb-param'), 'false', 'a tap now turns it off');
    }
    await publish('building/lobby/temp', '22.5');
    await second.page.locator('#temp', { hasText: '22.5 °C' }).waitFor();

    // A tap writes the opposite through the command path; the device's
    // answer (published back on the state topic) turns both panels off.
    await tap(first.page, '#light');
    await suite.server.waitForLog('name="point:lobby.light" param="false" [OK]');
    await publish('building/lobby/light/state', 'OFF');
    await second.page.locator('#light[aria-pressed="false"]').waitFor();
  });

  test('a stale point looks stale', async (t) => {
    const { page } = await panel(t);
    await publish('building/lobby/temp', '19');
    await page.locator('#temp', { hasText: '19 °C' }).waitFor();
    const opacity = () => page.$eval('#temp', (element) => getComputedStyle(element).opacity);
    assert.equal(await opacity(), '1', 'a good value is shown plainly');
    await broker.stop();
    await page.locator('#temp[data-sb-quality="stale"]').waitFor();
    assert.ok(Number(await opacity()) < 1, 'a stale value is faded');
    assert.equal(await page.textContent('#temp'), '19 °C', 'it keeps its last value');
    await broker.start();
    // Retained: the server reads it when it has reconnected and subscribed again.
    await publish('building/lobby/temp', '20', { retain: true });
    // The server reconnects with backoff: give it longer than a tap.
    await page.locator('#temp[data-sb-quality="good"]', { hasText: '20 °C' }).waitFor({ timeout: 15_000 });
  });
});
