// For integrators (issue 16): dev mode's overlay shows compile errors and
// silent mistakes (items 4, 6), and only in dev mode; the runtime's own
// texts follow the viewer's language (item 10).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { launchBrowser, openPage, startServer } from './server.mjs';

const FILES = {
  'project.toml': '',
  'pages/home.html':
    '{% extends "sb/layout.html" %}\n{% block content %}{{ <sb.button id="save" name="save" label="Save" /> }}{% endblock %}\n',
  'events/10-main.rhai': 'fn userCommand(session, userid, name, param) {\n    #{ tost: "Saved" }\n}\n',
};

function project() {
  const root = mkdtempSync(join(tmpdir(), 'sb-integrator-'));
  for (const [path, text] of Object.entries(FILES)) {
    const file = join(root, 'site', path);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, text);
  }
  return root;
}

let browser;
const cleanup = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const step of cleanup) step();
});

async function serve({ dev }) {
  const root = project();
  const server = await startServer({ projects: root, args: dev ? ['--dev'] : [] });
  cleanup.push(() => {
    server.stop();
    rmSync(root, { recursive: true, force: true });
  });
  return { root, server };
}

test('dev mode shows mistakes and compile errors, with project paths', async () => {
  const { root, server } = await serve({ dev: true });
  const context = await browser.newContext();
  const page = await openPage(context, `${server.url}/site/home`);
  await page.click('#save');
  const notice = page.locator('.sb-dev-notice pre');
  await notice.first().waitFor();
  assert.match(await notice.first().textContent(), /^events\/10-main\.rhai:2:5: userCommand\("save", ""\): tost: unknown key/);

  writeFileSync(join(root, 'site/events/10-main.rhai'), 'fn userCommand(s, u, n, p) {\n  let = ;\n}\n');
  const error = page.locator('.sb-dev-error:not(.sb-dev-notice) pre');
  await error.waitFor();
  const text = await error.textContent();
  assert.match(text, /^events\/10-main\.rhai:2:/);
  assert.ok(!text.includes(root), 'no server path');
  await context.close();
});

test('without dev mode the browser shows neither', async () => {
  const { root, server } = await serve({ dev: false });
  const context = await browser.newContext();
  const page = await openPage(context, `${server.url}/site/home`);
  await page.click('#save');
  await page.evaluate(() => window.Switchboard.whenIdle());
  writeFileSync(join(root, 'site/events/10-main.rhai'), 'fn userCommand(s, u, n, p) {\n  let = ;\n}\n');
  await server.waitForLog('still serving the last good version');
  // A command after the failed reload: anything pushed before it has arrived.
  await page.click('#save');
  await page.evaluate(() => window.Switchboard.whenIdle());
  assert.equal(await page.locator('.sb-dev-error, .sb-dev-notice').count(), 0);
  assert.ok(!(await page.content()).includes('.rhai'));
  await context.close();
});

test("the runtime's texts are in the viewer's language", async () => {
  const { server } = await serve({ dev: false });
  for (const [locale, cancel, rejected] of [
    ['it-IT', 'Annulla', 'Il server ha rifiutato il comando: {reason}'],
    ['en-GB', 'Cancel', 'The server refused the command: {reason}'],
  ]) {
    const context = await browser.newContext({ locale });
    const page = await openPage(context, `${server.url}/site/home`);
    const config = await page.evaluate(() => window.Switchboard.config);
    assert.equal(config.TEXT_CANCEL, cancel, locale);
    assert.equal(config.TEXT_REJECTED, rejected, locale);
    assert.equal(await page.getAttribute('html', 'lang'), locale.slice(0, 2));
    await context.close();
  }
});
