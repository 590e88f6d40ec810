// Cluster mode (issue 17): two nodes on one NATS, a panel on each; a tap on
// one panel updates the other, through the handler's uiSet on the node
// that ran it and the push subjects between the nodes.
import { test, before, after } from 'node:test';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { launchBrowser, openPage, startNats, startServer, tap } from './harness.js';

/** A project whose one button sets the shared text for every panel. */
function project() {
  const root = mkdtempSync(path.join(tmpdir(), 'sb-cluster-'));
  const dir = path.join(root, 'site');
  mkdirSync(path.join(dir, 'pages'), { recursive: true });
  mkdirSync(path.join(dir, 'events'));
  writeFileSync(path.join(dir, 'project.toml'), 'title = "Cluster"\nstart = "home"\n');
  writeFileSync(
    path.join(dir, 'pages/home.html'),
    `{% extends "sb/layout.html" %}
{% block content %}
<p id="shared" data-sb-object="label">nothing yet</p>
<button id="tap-a" data-sb-object="button" data-sb-name="shout" data-sb-param="tapped on A">A</button>
<button id="tap-b" data-sb-object="button" data-sb-name="shout" data-sb-param="tapped on B">B</button>
{% endblock %}
`,
  );
  writeFileSync(
    path.join(dir, 'events/main.rhai'),
    'fn userCommand(session, userid, name, param) { if name == "shout" { uiSet("shared", "text", param); "!" } }\n',
  );
  return root;
}

const suite = { server: null, browser: null };
const nodes = {};
let nats;

before(async () => {
  nats = await startNats();
  const projects = project();
  for (const name of ['a', 'b']) {
    nodes[name] = await startServer({ projects, args: ['--cluster', nats.url, '--node', name] });
  }
  suite.server = nodes.a;
  suite.browser = await launchBrowser();
});

after(async () => {
  await suite.browser?.close();
  for (const node of Object.values(nodes)) await node.stop();
  await nats?.stop();
});


test('a tap on a panel of one node updates the panel of the other', async (t) => {
  const a = await openPage(suite, t, { project: 'site', origin: nodes.a.origin });
  const b = await openPage(suite, t, { project: 'site', origin: nodes.b.origin });

  await tap(a.page, '#tap-a');
  await b.page.waitForFunction(() => document.getElementById('shared').textContent === 'tapped on A');
  await tap(b.page, '#tap-b');
  await a.page.waitForFunction(() => document.getElementById('shared').textContent === 'tapped on B');
  // The tapping panel shows its own push too (from its own node, once).
  await b.page.waitForFunction(() => document.getElementById('shared').textContent === 'tapped on B');
});
