// For integrators (issue 16): dev mode's overlay shows compile errors and
// silent mistakes (items 4, 6), and only in dev mode; the runtime's own
// texts follow the viewer's language (item 10).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { idle, launchBrowser, openPage, startServer } from './harness.js';

const FILES = {
  'project.toml': '',
  'pages/home.html':
    '{% extends "sb/layout.html" %}\n{% block content %}{{ <sb.button id="save" name="save" label="Save" /> }}{% endblock %}\n',
  'events/10-main.rhai': 'fn userCommand(session, userid, name, param) {\n    #{ tost: "Saved" }\n}\n',
};
const BROKEN = 'fn userCommand(s, u, n, p) {\n  let = ;\n}\n';

let browser;
const servers = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const server of servers) await server.stop();
});

/** A server of its own on a fresh copy of the project: the tests break it. */
async function serve({ dev }) {
  const root = mkdtempSync(path.join(tmpdir(), 'sb-integrator-'));
  process.once('exit', () => rmSync(root, { recursive: true, force: true }));
  for (const [file, text] of Object.entries(FILES)) {
    mkdirSync(path.dirname(path.join(root, 'site', file)), { recursive: true });
    writeFileSync(path.join(root, 'site', file), text);
  }
  const server = await startServer({ projects: root, args: dev ? ['--dev'] : [] });
  servers.push(server);
  return { root, suite: { server, browser } };
}

test('dev mode shows mistakes and compile errors, with project paths', async (t) => {
  const { root, suite } = await serve({ dev: true });
  const { page } = await openPage(suite, t, { project: 'site', path: 'home' });
  await page.click('#save');
  const notice = page.locator('.sb-dev-notice pre');
  await notice.first().waitFor();
  assert.match(await notice.first().textContent(), /^events\/10-main\.rhai:2:5: userCommand\("save", ""\): tost: unknown key/);

  writeFileSync(path.join(root, 'site/events/10-main.rhai'), BROKEN);
  const error = page.locator('.sb-dev-error:not(.sb-dev-notice) pre');
  await error.waitFor({ timeout: 10_000 });
  const text = await error.textContent();
  assert.match(text, /^events\/10-main\.rhai:2:/);
  assert.ok(!text.includes(root), 'no server path');
});

test('without dev mode the browser shows neither', async (t) => {
  const { root, suite } = await serve({ dev: false });
  const { page } = await openPage(suite, t, { project: 'site', path: 'home' });
  await page.click('#save');
  await idle(page);
  writeFileSync(path.join(root, 'site/events/10-main.rhai'), BROKEN);
  await suite.server.waitForLog('still serving the last good version');
  // A command after the failed reload: anything pushed before it has arrived.
  await page.click('#save');
  await idle(page);
  assert.equal(await page.locator('.sb-dev-error, .sb-dev-notice').count(), 0);
  assert.ok(!(await page.content()).includes('.rhai'));
});

test("the runtime's texts are in the viewer's language", async (t) => {
  const { suite } = await serve({ dev: false });
  for (const [language, cancel, rejected] of [
    ['it-IT,it;q=0.9', 'Annulla', 'Il server ha rifiutato il comando: {reason}'],
    ['en-GB', 'Cancel', 'The server refused the command: {reason}'],
  ]) {
    const { page } = await openPage(suite, t, {
      project: 'site',
      path: 'home',
      setup: (context) => context.setExtraHTTPHeaders({ 'Accept-Language': language }),
    });
    const config = await page.evaluate(() => window.Switchboard.config);
    assert.equal(config.TEXT_CANCEL, cancel, language);
    assert.equal(config.TEXT_REJECTED, rejected, language);
    assert.equal(await page.getAttribute('html', 'lang'), language.slice(0, 2));
  }
});
