// The connection: the indicator, the HTTP fallback while the WebSocket is
// down, reconnecting, and surviving a server restart.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { box, openPage, startServer, toast, until, useSuite } from './harness.js';

const suite = useSuite();

const state = (page) => page.locator('.sb-connection').getAttribute('data-state');

/** Posts of one API path, recorded from now on. */
function recordPosts(page, path) {
  const posts = [];
  page.on('request', (request) => {
    if (request.method() === 'POST' && request.url().endsWith(path)) posts.push(request);
  });
  return posts;
}

test('the indicator is there and quiet while connected', async (t) => {
  const { page } = await openPage(suite, t);
  const indicator = page.locator('.sb-connection');
  assert.equal(await indicator.getAttribute('data-state'), 'connected');
  assert.equal(await indicator.getAttribute('role'), 'status');
  assert.equal(await indicator.locator('.sb-connection-text').textContent(), 'Connected');
  assert.equal(await page.evaluate(() => window.Switchboard.connected), true);
  assert.equal(await indicator.evaluate((element) => getComputedStyle(element).opacity), '0');
});

test('with the socket down, commands go over HTTP, the indicator shows it, and the socket comes back', async (t) => {
  let socketAllowed = true;
  let socket = null;
  const { page } = await openPage(suite, t, {
    setup: (context) =>
      context.routeWebSocket(/\/api\/ws/, (route) => {
        if (!socketAllowed) {
          route.close();
          return;
        }
        socket = route;
        route.connectToServer();
      }),
  });
  const sessionPosts = recordPosts(page, '/api/session');
  const commandPosts = recordPosts(page, '/api/command');

  socketAllowed = false;
  await socket.close(); // the page's side drops
  await until(async () => (await state(page)) === 'reconnecting', { message: 'reconnecting' });
  const indicator = page.locator('.sb-connection');
  assert.equal(await indicator.locator('.sb-connection-text').textContent(), 'Reconnecting…');
  await until(async () => (await indicator.evaluate((element) => getComputedStyle(element).opacity)) === '1', {
    message: 'the indicator to show',
  });
  assert.ok((await box(indicator)).y >= 0, 'on screen');

  await page.click('#toast-hello');
  await toast(page, 'Hello').waitFor();
  assert.equal(commandPosts.length, 1, 'the command went over HTTP');
  assert.equal(JSON.parse(commandPosts[0].postData()).name, 'toast');

  await until(() => sessionPosts.length > 0, { message: 'POST /api/session before reconnecting' });
  socketAllowed = true;
  await until(async () => (await state(page)) === 'connected', { timeout: 10_000, message: 'reconnected' });
  await page.click('#toast-world');
  await toast(page, 'World').waitFor();
  assert.equal(commandPosts.length, 1, 'back on the socket');
});

test('after a server restart that lost the session, the runtime gets a new one and reconnects', async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const { page } = await openPage(suite, t, { origin: server.origin });
  const sessionPosts = recordPosts(page, '/api/session');
  await server.stop();
  await until(async () => (await state(page)) === 'reconnecting', { message: 'reconnecting' });

  // Same address, fresh database: the page's session cookie is unknown now,
  // and the WebSocket handshake refuses it until the runtime gets a new one.
  const restarted = await startServer({ bind: server.bind });
  t.after(() => restarted.stop());
  await until(async () => (await state(page)) === 'connected', { timeout: 20_000, message: 'reconnected' });
  assert.ok(sessionPosts.length > 0, 'POST /api/session before reconnecting');
  const commandPosts = recordPosts(page, '/api/command');
  await page.click('#toast-world');
  await toast(page, 'World').waitFor();
  assert.equal(commandPosts.length, 0, 'over the socket');
});

test('a tap made while the server is down is delivered once it is back', async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const { page } = await openPage(suite, t, { origin: server.origin });
  await server.stop();
  await until(async () => (await state(page)) === 'reconnecting', { message: 'reconnecting' });

  // Its POST fails (nobody listens): the tap now waits in the outbox.
  const refused = page.waitForEvent('requestfailed', (request) => request.url().endsWith('/api/command'));
  await page.click('#toast-hello');
  await refused;
  assert.equal(await toast(page, 'Hello').count(), 0, 'nobody to answer yet');
  assert.equal(await page.locator('#toast-hello').getAttribute('aria-busy'), 'true', 'waiting, not dropped');

  // Same database: the session survives the restart.
  const restarted = await startServer({ bind: server.bind, dir: server.dir });
  t.after(() => restarted.stop());
  await toast(page, 'Hello').waitFor({ timeout: 20_000 });
  assert.equal(await page.locator('#toast-hello').getAttribute('aria-busy'), null);
  await until(async () => (await state(page)) === 'connected', { timeout: 20_000, message: 'reconnected' });
});
