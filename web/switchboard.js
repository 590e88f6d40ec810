/**
 * Switchboard browser runtime.
 *
 * Turns taps and edits on server-rendered objects (`data-sb-object="…"`)
 * into commands for the project's handlers, and the actions of their replies
 * into what the user sees. One ES module, no dependencies, no build step.
 * The HTML contract it reads is docs/objects.md; the wire contract is
 * docs/protocol.md.
 *
 * The one rule that keeps handlers from injecting markup: everything that
 * comes from a reply reaches the DOM as text (textContent). Only the
 * server-rendered page fragments (GET /<project>/api/page/<name>) are
 * inserted as HTML.
 *
 * Internals are prefixed with `_`; the public surface is `window.Switchboard`.
 */

// ================================================================ configuration

/**
 * Every tunable in one place. A project may override any of them by setting
 * `window.SwitchboardConfig = { TOAST_DURATION_MS: 6000, … }` in a classic
 * script of the layout's head block, e.g.
 * `<script src="/<project>/static/config.js"></script>`: module scripts run
 * after classic ones, and the server's Content-Security-Policy refuses
 * inline scripts.
 */
const CONFIG = Object.freeze({
  /** First reconnect delay; doubles after each failed attempt… */
  RECONNECT_BASE_DELAY_MS: 500,
  /** …up to this. */
  RECONNECT_MAX_DELAY_MS: 15_000,
  /** ± this fraction of the delay, so panels restarted together do not reconnect in lockstep. */
  RECONNECT_JITTER: 0.3,
  /** How long a toast stays when the answer gives no duration. */
  TOAST_DURATION_MS: 4000,
  /** Most toasts on screen at once; more wait until one leaves. */
  TOAST_LIMIT: 5,
  /** How long an error tooltip stays if the user does nothing. */
  TOOLTIP_DURATION_MS: 4000,
  /** A held repeat button sends `repeat` this often (HSYCO: every second). */
  REPEAT_INTERVAL_MS: 1000,
  /** Pause between two barcode detection attempts on the camera picture. */
  CODESCAN_INTERVAL_MS: 300,
  /** How long a downloaded file's object URL is kept before it is revoked. */
  OBJECT_URL_LIFETIME_MS: 60_000,

  TEXT_ERROR: 'Error',
  TEXT_INVALID: 'Invalid value',
  TEXT_OK: 'OK',
  TEXT_CLOSE: 'Close',
  TEXT_CANCEL: 'Cancel',
  TEXT_CONNECTING: 'Connecting…',
  TEXT_CONNECTED: 'Connected',
  TEXT_RECONNECTING: 'Reconnecting…',
  TEXT_REJECTED: 'The server refused the command: {reason}',
  TEXT_PAGE_FAILED: 'Could not open the page {page}: {reason}',
  TEXT_DOWNLOAD_FAILED: 'Download failed: {reason}',
  TEXT_COPY_FAILED: 'Could not copy to the clipboard.',
  TEXT_LINK_COPIED: 'Link copied to the clipboard.',
  TEXT_NO_CODESCAN: "This device can't scan codes.",
  TEXT_NO_CAMERA: 'The camera is not available.',
  TEXT_SCAN_TITLE: 'Scan a code',
  TEXT_NO_SPEECH: "This device can't recognise speech.",
  TEXT_SPEECH_FAILED: 'No speech was recognised.',
  TEXT_LISTENING: 'Listening…',
  TEXT_NO_APP: "This device can't run app:{command}.",
  TEXT_SESSION_ENDED: 'Your session has ended. Reload the page to start a new one.',
  TEXT_RELOAD: 'Reload',
  TEXT_PENDING: '{count} waiting to be sent',
  TEXT_CHALLENGE_TITLE: 'Confirm your identity',
  TEXT_CHALLENGE_USER: 'User',
  TEXT_CHALLENGE_PASSWORD: 'Password',
  TEXT_CHALLENGE_SUBMIT: 'Confirm',
  TEXT_DEV_ERROR_TITLE: 'The project has errors (still serving the last good version)',
  TEXT_DEV_NOTICE_TITLE: 'Dev mode: something the handler did had no effect',
  /** First retry delay of a queued form submission; doubles up to the next. */
  SUBMIT_RETRY_BASE_MS: 1000,
  SUBMIT_RETRY_MAX_MS: 30_000,
  /**
   * A submission whose handler failed (status `failed`: nothing of that run
   * was kept) is delivered again, as a retry, up to this many runs in all;
   * then the user sees the failure and it leaves the queue.
   */
  SUBMIT_MAX_FAILED_RUNS: 5,

  ..._pageTexts(),
  ...window.SwitchboardConfig,
});

/**
 * The runtime's texts in the viewer's language, as the server rendered them
 * into the page (`<script type="application/json" id="sb-texts">`, from the
 * project's i18n/*.ftl files over the built-in ones).
 */
function _pageTexts() {
  try {
    return JSON.parse(document.getElementById('sb-texts')?.textContent || '{}');
  } catch {
    return {};
  }
}

// ================================================================ DOM helpers

const _FIELD = '[data-sb-object="field"]';
const _CONTAINER = '[data-sb-object="container"]';
const _SUBMIT = '[data-sb-object="submit"]';
const _REPEAT_BUTTON = '[data-sb-object="button"][data-sb-repeat]';
const _FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), ' +
  'select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

let _lastId = 0;

/** Random hex, from the OS generator (crypto.randomUUID needs a secure origin). */
function _randomHex(bytes = 16) {
  return [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * This browser tab, kept across reloads (sessionStorage): the server runs
 * `pageStartup` for tabs it has not seen. Command ids use a per-document
 * value instead, so that a reload never reuses an answered id.
 */
const _TAB = (() => {
  try {
    const id = sessionStorage.getItem('sb-tab') ?? _randomHex(8);
    sessionStorage.setItem('sb-tab', id);
    return id;
  } catch {
    return _randomHex(8);
  }
})();
const _DOCUMENT = _randomHex(8);

/** A new element with attributes (null ones skipped) and text; never parses HTML. */
function _el(tag, attributes = {}, text = null) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value != null) element.setAttribute(name, value);
  }
  if (text != null) element.textContent = text;
  return element;
}

/** A document-unique id for elements the runtime creates. */
function _newId(prefix) {
  _lastId += 1;
  return `sb-${prefix}-${_lastId}`;
}

/** Fills `{name}` placeholders of a CONFIG text. */
function _format(template, values) {
  return template.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ''));
}

function _clamp(value, min, max) {
  return Math.max(min, Math.min(value, max));
}

function _isShown(element) {
  return Boolean(element?.isConnected && element.getClientRects().length > 0);
}

function _addToken(element, attribute, token) {
  const tokens = new Set((element.getAttribute(attribute) ?? '').split(/\s+/).filter(Boolean));
  tokens.add(token);
  element.setAttribute(attribute, [...tokens].join(' '));
}

function _removeToken(element, attribute, token) {
  const tokens = (element.getAttribute(attribute) ?? '').split(/\s+/).filter((t) => t && t !== token);
  if (tokens.length) element.setAttribute(attribute, tokens.join(' '));
  else element.removeAttribute(attribute);
}

function _sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ================================================================ page context

function _project() {
  return document.body.dataset.sbProject;
}

function _api(path) {
  return `/${encodeURIComponent(_project())}/api/${path}`;
}

function _pageUrl(page) {
  return `/${encodeURIComponent(_project())}/${encodeURIComponent(page)}`;
}

function _pageRoot() {
  return document.getElementById('sb-page');
}

function _currentPage() {
  return document.body.dataset.sbPage;
}

/** The page an object is on: the popup it sits in, else the current page. */
function _pageOf(element) {
  return element?.closest('[data-sb-page-name]')?.dataset.sbPageName ?? _currentPage();
}

/** The name an object's commands carry: `data-sb-name`, else its id. */
function _nameOf(element) {
  return element.dataset.sbName || element.id;
}

async function _reasonOf(response) {
  const body = await response.json().catch(() => null);
  return body?.reason ?? `${response.status} ${response.statusText}`.trim();
}

// ================================================================ idle tracking

// Work in flight: commands awaiting replies, replies whose actions still
// run, page loads. `Switchboard.whenIdle()` waits for it to drain, so tests
// (and page scripts) can wait for "the tap has had its effect".
let _work = 0;
const _idleWaiters = [];

async function _track(promise) {
  _work += 1;
  try {
    return await promise;
  } finally {
    _work -= 1;
    if (_work === 0) for (const resolve of _idleWaiters.splice(0)) resolve();
  }
}

function whenIdle() {
  return _work === 0 ? Promise.resolve() : new Promise((resolve) => _idleWaiters.push(resolve));
}

// ================================================================ transport

const _transport = {
  socket: null,
  /** 'connecting' (first attempt), 'connected', or 'reconnecting'. */
  state: 'connecting',
  /** Failed attempts since the last successful open; drives the backoff. */
  failures: 0,
  retryTimer: 0,
  /** Set while the document is being unloaded: no reconnecting then. */
  stopped: false,
  nextSeq: 1,
  /** seq → { frame, resolve } of every frame still waiting for its reply. */
  pending: new Map(),
  /** seqs written to the current socket and not yet answered, oldest first. */
  onSocket: [],
  /** Frames that could not reach the server; sent again once it is back. */
  outbox: [],
  /** The POST /api/session in flight, shared by everyone who needs one. */
  renewing: null,
};

/**
 * Sends a frame and resolves with its reply. Frames are never dropped: when
 * the socket is down they go over HTTP, and when the server cannot be
 * reached at all they wait in the outbox until it can.
 */
function _request(frame) {
  return new Promise((resolve) => {
    const seq = _transport.nextSeq++;
    // An id makes a command run once however often it is re-sent (after a
    // dropped socket, over HTTP): the server answers repeats from its record.
    const id = frame.type === 'command' ? `${_DOCUMENT}-${seq}` : undefined;
    const entry = { frame: { ...frame, seq, ...(id && { id }) }, resolve };
    _transport.pending.set(seq, entry);
    _dispatch(entry);
  });
}

function _dispatch(entry) {
  const socket = _transport.socket;
  if (socket?.readyState === WebSocket.OPEN) {
    const text = JSON.stringify(entry.frame);
    entry.size = text.length;
    socket.send(text);
    _transport.onSocket.push(entry.frame.seq);
  } else {
    _postFrame(entry);
  }
}

async function _postFrame(entry, renewed = false) {
  let response;
  try {
    response = await fetch(_api('command'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(entry.frame),
    });
  } catch {
    _transport.outbox.push(entry);
    return;
  }
  // The server may have restarted and forgotten the session.
  if (response.status === 401 && !renewed && (await _renewSession())) {
    await _postFrame(entry, true);
    return;
  }
  const reply = await response.json().catch(() => null);
  // Not a JSON reply (a proxy's error page): the server was not reached.
  if (reply?.status) _settle(entry.frame.seq, reply);
  else _transport.outbox.push(entry);
}

function _settle(seq, reply) {
  const entry = _transport.pending.get(seq);
  if (!entry) return;
  _transport.pending.delete(seq);
  entry.resolve(reply);
}

function _flushOutbox() {
  for (const entry of _transport.outbox.splice(0)) _dispatch(entry);
}

/** Makes sure the cookie names a live session; resolves false when the server is unreachable. */
function _renewSession() {
  _transport.renewing ??= fetch(_api('session'), { method: 'POST' })
    .then((response) => response.ok, () => false)
    .finally(() => {
      _transport.renewing = null;
    });
  return _transport.renewing;
}

function _connect() {
  const url = new URL(_api('ws'), location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('tab', _TAB);
  url.searchParams.set('page', _currentPage());
  const socket = new WebSocket(url);
  _transport.socket = socket;
  socket.addEventListener('open', _onSocketOpen);
  socket.addEventListener('message', _onSocketMessage);
  socket.addEventListener('close', () => _onSocketClose(socket));
}

function _onSocketOpen() {
  _transport.failures = 0;
  _setConnectionState('connected');
  _flushOutbox();
  _deliverSubmissions();
}

function _onSocketMessage(event) {
  let reply;
  try {
    reply = JSON.parse(event.data);
  } catch {
    return;
  }
  // Frames with a type are the server's own initiative, not replies.
  if (reply.type) {
    _onPush(reply);
    return;
  }
  const seq = reply.seq ?? _largestOnSocket();
  _transport.onSocket = _transport.onSocket.filter((sent) => sent !== seq);
  _settle(seq, reply);
}

/**
 * The server echoes the seq of every frame it can read; our frames are
 * always valid JSON, so a rejection without one is for a frame too large to
 * read: the largest still unanswered.
 */
function _largestOnSocket() {
  const size = (seq) => _transport.pending.get(seq)?.size ?? 0;
  return _transport.onSocket.reduce((largest, seq) => (size(seq) > size(largest) ? seq : largest), _transport.onSocket[0]);
}

function _onSocketClose(socket) {
  if (socket !== _transport.socket) return;
  _transport.socket = null;
  // Frames the socket took but never answered may or may not have run.
  // Sending them again over HTTP (at least once) beats losing a tap.
  const unanswered = _transport.onSocket.splice(0);
  for (const seq of unanswered) {
    const entry = _transport.pending.get(seq);
    if (entry) _dispatch(entry);
  }
  if (_transport.stopped) return;
  _setConnectionState('reconnecting');
  _scheduleReconnect();
}

function _scheduleReconnect() {
  clearTimeout(_transport.retryTimer);
  _transport.retryTimer = setTimeout(_reconnect, _backoff(_transport.failures));
  _transport.failures += 1;
}

function _backoff(failures) {
  const delay = Math.min(CONFIG.RECONNECT_MAX_DELAY_MS, CONFIG.RECONNECT_BASE_DELAY_MS * 2 ** failures);
  const jitter = 1 + CONFIG.RECONNECT_JITTER * (2 * Math.random() - 1);
  return Math.round(delay * jitter);
}

async function _reconnect() {
  if (_transport.socket || _transport.stopped) return;
  // The WebSocket handshake needs a live session; after a server restart
  // the cookie names a forgotten one, and POST /api/session replaces it.
  // Its success also proves the server is back, so the outbox can go.
  if (!(await _renewSession())) {
    _scheduleReconnect();
    return;
  }
  if (_transport.socket || _transport.stopped) return;
  _flushOutbox();
  _connect();
}

/** Skips the backoff wait: the network or the tab just came back. */
function _reconnectNow() {
  if (_transport.socket || _transport.stopped) return;
  clearTimeout(_transport.retryTimer);
  _reconnect();
}

function _setConnectionState(state) {
  _transport.state = state;
  const indicator = _connectionIndicator();
  indicator.dataset.state = state;
  indicator.querySelector('.sb-connection-text').textContent = CONFIG[`TEXT_${state.toUpperCase()}`];
}

function _connectionIndicator() {
  let indicator = document.querySelector('.sb-connection');
  if (!indicator) {
    indicator = _el('div', { class: 'sb-connection', role: 'status' });
    indicator.append(
      _el('span', { class: 'sb-connection-dot', 'aria-hidden': 'true' }),
      _el('span', { class: 'sb-connection-text' }),
    );
    document.body.append(indicator);
  }
  return indicator;
}

// ================================================================ commands

const _busyCounts = new WeakMap();

/**
 * Sends a command on behalf of `element` (which shows busy meanwhile) and
 * runs the actions of the reply. Resolves with the reply once they ran.
 */
function _command(name, param, { element = null, object = element?.id || null, container = null } = {}) {
  const frame = { type: 'command', object, name, param: String(param ?? ''), page: _pageOf(element) };
  _setBusy(element, 1);
  const done = _request(frame).then(async (reply) => {
    _setBusy(element, -1);
    // The value sent, not the field's current one: the user may have typed on.
    if ((reply.status === 'ok' || reply.status === 'unhandled') && element?.matches(_FIELD)) _validValues.set(element, frame.param);
    await _applyReply(reply, { element, container });
    return reply;
  });
  return _track(done);
}

function _setBusy(element, delta) {
  if (!element) return;
  const count = (_busyCounts.get(element) ?? 0) + delta;
  _busyCounts.set(element, count);
  element.classList.toggle('sb-busy', count > 0);
  if (count > 0) element.setAttribute('aria-busy', 'true');
  else element.removeAttribute('aria-busy');
}

function _isBusy(element) {
  return (_busyCounts.get(element) ?? 0) > 0;
}

/** Tells the server a page or popup closed, so it can run the opener's `/close`. */
function _reportClosed(page) {
  const done = _request({ type: 'page_closed', page }).then((reply) => _applyReply(reply, {}));
  _track(done);
}

// Replies apply one after the other, in the order they arrived, even when an
// action (a page load, a download) takes a while.
let _replyQueue = Promise.resolve();

function _applyReply(reply, origin) {
  return _enqueue(() => _runReply(reply, origin));
}

/**
 * Runs `task` after everything already queued. A task (an action) must
 * never await `_enqueue`/`_applyReply` itself: it would wait behind itself.
 */
function _enqueue(task) {
  const run = _replyQueue.then(task);
  _replyQueue = run.catch(() => {});
  return run;
}

async function _runReply(reply, origin) {
  if (reply.status === 'rejected') {
    _showToast({ message: _format(CONFIG.TEXT_REJECTED, { reason: reply.reason }), level: 'error' });
    return;
  }
  if (reply.status === 'ok' && origin.container) _clearFieldErrors(origin.container);
  for (const action of reply.actions ?? []) await _runAction(action, origin);
}

async function _runAction(action, origin) {
  const execute = _actions[action.type];
  if (!execute) {
    console.warn(`Switchboard: unknown action type ${action.type}`);
    return;
  }
  try {
    await execute(action, origin);
  } catch (error) {
    // One broken action must not stop the ones after it.
    console.error(`Switchboard: the ${action.type} action failed`, error);
  }
}

// ================================================================ actions

/** One executor per action type: (action, origin = { element, container }) → maybe a promise. */
const _actions = {
  page: _pageAction,
  url: _openUrl,
  copy: _copyAction,
  app: _appAction,
  share: _shareAction,
  download: _downloadAction,
  toast: _toastAction,
  popup: ({ title, message, level }) => _showPopup({ title, message, level }),
  error: _errorAction,
  rollback: _rollbackAction,
  field_error: _fieldErrorAction,
  challenge: _challengeAction,
};

function _pageAction({ page }) {
  const step = _pageSteps[page];
  return step ? step() : _open(page);
}

const _pageSteps = {
  back: () => history.back(),
  forward: () => history.forward(),
  close: () => _closePopupPages(1),
  'close-all': () => _closePopupPages(Infinity),
};

function _toastAction(action) {
  if (action.close) _closeToasts(action.message);
  else _showToast(action);
}

function _errorAction({ message, display, object }, origin) {
  const anchor = (object && document.getElementById(object)) || origin.element;
  _showError(display, message ?? CONFIG.TEXT_ERROR, anchor);
}

function _rollbackAction({ object, value }) {
  const element = document.getElementById(object);
  // The server knows the last accepted or pushed value; before either, the
  // page still knows what it showed (the template's value).
  const valid = value ?? (element && _validValues.get(element));
  if (valid == null || !element) return;
  if (element.type === 'checkbox') element.checked = valid === 'true';
  else if ('value' in element) element.value = valid;
  _validValues.set(element, valid);
}

/**
 * field → the last value the page showed as valid: rendered by the
 * template, pushed (`value` of uiSet/uiSessionSet), or sent and accepted.
 * What rollback restores when the server has nothing newer. Anything else
 * that sets a field's value for the user to see (a live point value) calls
 * `_rememberValid` too.
 */
const _validValues = new WeakMap();

function _rememberValid(field) {
  if (field?.matches?.(_FIELD)) _validValues.set(field, _valueOf(field));
}

function _fieldErrorAction({ field, message, display, title = null }) {
  const text = message ?? CONFIG.TEXT_INVALID;
  const element = document.getElementById(field);
  if (element) _markField(element, text, title);
  // The mark under the field is the tooltip form; popup and toast come on
  // top of it, and a field that is not on screen still gets its message out.
  if (display !== 'tooltip') _showError(display, text, element);
  else if (!element) _showError('toast', text, null);
}

/** An error message in the form the answer asked for; a tooltip needs a visible anchor. */
function _showError(display, message, anchor) {
  if (display === 'popup') _showPopup({ title: CONFIG.TEXT_ERROR, message, level: 'error' });
  else if (display === 'tooltip' && _isShown(anchor)) _showTooltip(anchor, message);
  else _showToast({ message, level: 'error' });
}

// ================================================================ pages and history

// Bumped on every page load, so that a slow fragment cannot replace a newer one.
let _navigation = 0;

async function _open(name, { push = true } = {}) {
  const ticket = ++_navigation;
  let fragment;
  try {
    fragment = await _fetchFragment(name);
  } catch (error) {
    _showToast({ message: _format(CONFIG.TEXT_PAGE_FAILED, { page: name, reason: error.message }), level: 'error' });
    return;
  }
  if (fragment.kind === 'popup') _openPopupPage(fragment);
  else if (ticket === _navigation) _showPage(fragment, push);
}

async function _fetchFragment(name, renewed = false) {
  const response = await fetch(_api(`page/${encodeURIComponent(name)}`), {
    headers: { Accept: 'application/json' },
  });
  if (response.status === 401 && !renewed && (await _renewSession())) return _fetchFragment(name, true);
  if (!response.ok) throw new Error(await _reasonOf(response));
  return response.json();
}

function _showPage(fragment, push) {
  const left = _currentPage();
  // Popups belong to the page they were opened on.
  _closePopupPages(Infinity);
  _dismissTooltip();
  const root = _pageRoot();
  // Server-rendered template output: the one place HTML is inserted.
  root.innerHTML = fragment.html;
  root.dataset.sbPageName = fragment.name;
  document.body.dataset.sbPage = fragment.name;
  if (fragment.title) document.title = fragment.title;
  if (push) {
    const method = left === fragment.name ? 'replaceState' : 'pushState';
    history[method]({ sbPage: fragment.name }, '', _pageUrl(fragment.name));
  }
  _enhance(root);
  window.scrollTo(0, 0);
  if (left && left !== fragment.name) {
    _reportClosed(left);
    _track(_request({ type: 'page_shown', page: fragment.name }));
  }
}

function _onPopState(event) {
  // Entries without our state are the page's own (#anchors): not a page change.
  const page = event.state?.sbPage;
  if (page) _track(_open(page, { push: false }));
}

// ================================================================ modals (popup pages, message popups, scanner)

const _modals = []; // open modals, bottom first

/** An empty modal dialog on top of the stack; callers fill it and move focus in. */
function _openModal({ kind, level = null, page = null, opener = document.activeElement, onClose = null }) {
  const root = _el('div', { class: 'sb-modal', 'data-sb-modal': kind, 'data-sb-popup': page });
  const backdrop = _el('div', { class: 'sb-modal-backdrop' });
  const dialog = _el('div', {
    class: 'sb-dialog',
    role: 'dialog',
    'aria-modal': 'true',
    tabindex: '-1',
    'data-sb-level': level,
  });
  root.append(backdrop, dialog);
  const modal = { root, dialog, kind, page, opener, onClose };
  backdrop.addEventListener('click', () => _closeModal(modal));
  document.body.append(root);
  _modals.push(modal);
  _updateInert();
  return modal;
}

function _addDialogHeader(modal, title) {
  const heading = _el('h2', { class: 'sb-dialog-title', id: _newId('title') }, title);
  const close = _el('button', { type: 'button', class: 'sb-dialog-close', 'aria-label': CONFIG.TEXT_CLOSE }, '×');
  close.addEventListener('click', () => _closeModal(modal));
  const header = _el('header', { class: 'sb-dialog-header' });
  header.append(heading, close);
  modal.dialog.append(header);
  modal.dialog.setAttribute('aria-labelledby', heading.id);
}

function _addDialogButton(modal, label) {
  const button = _el('button', { type: 'button', class: 'sb-dialog-button' }, label);
  button.addEventListener('click', () => _closeModal(modal));
  const footer = _el('footer', { class: 'sb-dialog-actions' });
  footer.append(button);
  modal.dialog.append(footer);
  return button;
}

function _closeModal(modal, { report = true, restoreFocus = true } = {}) {
  const index = _modals.indexOf(modal);
  if (index < 0) return;
  _modals.splice(index, 1);
  modal.root.remove();
  _updateInert();
  modal.onClose?.();
  if (restoreFocus && modal.opener?.isConnected && !modal.opener.closest('[inert]')) {
    modal.opener.focus({ preventScroll: true });
  }
  if (report && modal.page) _reportClosed(modal.page);
}

/** Only the top modal takes input; the page and lower modals are inert. */
function _updateInert() {
  const top = _modals.at(-1);
  _pageRoot().inert = Boolean(top);
  for (const modal of _modals) modal.root.inert = modal !== top;
}

function _focusables(root) {
  return [...root.querySelectorAll(_FOCUSABLE)].filter(_isShown);
}

/** Keeps Tab and Shift+Tab cycling inside the top modal. */
function _trapTab(event) {
  const { dialog } = _modals.at(-1);
  const items = _focusables(dialog);
  const active = document.activeElement;
  if (items.length === 0) {
    event.preventDefault();
    dialog.focus();
  } else if (event.shiftKey && (active === items[0] || active === dialog || !dialog.contains(active))) {
    event.preventDefault();
    items.at(-1).focus();
  } else if (!event.shiftKey && (active === items.at(-1) || !dialog.contains(active))) {
    event.preventDefault();
    items[0].focus();
  }
}

function _openPopupPage(fragment) {
  // Opening a popup that is already open shows it afresh on top.
  const previous = _modals.find((modal) => modal.page === fragment.name);
  if (previous) _closeModal(previous, { report: false, restoreFocus: false });
  const modal = _openModal({ kind: 'page', page: fragment.name, opener: previous?.opener });
  _addDialogHeader(modal, fragment.title);
  const body = _el('div', { class: 'sb-dialog-body sb-popup-page', 'data-sb-page-name': fragment.name });
  // Server-rendered template output, like a page.
  body.innerHTML = fragment.html;
  modal.dialog.append(body);
  _enhance(body);
  modal.dialog.focus();
}

function _closePopupPages(count) {
  const pages = _modals.filter((modal) => modal.kind === 'page');
  for (const modal of pages.slice(-count).reverse()) _closeModal(modal);
}

function _showPopup({ title = null, message, level = null }) {
  const modal = _openModal({ kind: 'message', level: level ?? 'info' });
  if (title) _addDialogHeader(modal, title);
  const text = _el('p', { class: 'sb-dialog-message', id: _newId('message') }, message);
  modal.dialog.append(text);
  modal.dialog.setAttribute('aria-describedby', text.id);
  if (!title) modal.dialog.setAttribute('aria-labelledby', text.id);
  _addDialogButton(modal, CONFIG.TEXT_OK).focus();
}

// ================================================================ toasts

const _TOAST_POSITIONS = ['top-right', 'top-left', 'top-center', 'bottom-right', 'bottom-left', 'bottom-center'];
/** The longest delay setTimeout keeps (2³¹ − 1 ms); a longer one fires at once. */
const _LONGEST_TIMER_MS = 2 ** 31 - 1;
const _toasts = []; // on screen: { element, message, timer }, oldest first
const _waitingToasts = []; // beyond TOAST_LIMIT: shown as on-screen ones leave, in order

/**
 * Shows a toast, or refreshes the one with the same message unless
 * `duplicate`. When TOAST_LIMIT toasts are on screen it waits for a free
 * place: an answer with more toasts than fit loses none of them.
 */
function _showToast(spec) {
  const { message, duplicate = false } = spec;
  const existing = duplicate ? null : _toasts.find((toast) => toast.message === message);
  if (existing) {
    _fillToast(existing, spec);
    return existing;
  }
  const waiting = duplicate ? null : _waitingToasts.find((toast) => toast.message === message);
  if (waiting) {
    waiting.spec = spec;
    return waiting;
  }
  if (_toasts.length >= CONFIG.TOAST_LIMIT) {
    const queued = { message, spec, element: null };
    _waitingToasts.push(queued);
    return queued;
  }
  const toast = _createToast(message);
  _fillToast(toast, spec);
  return toast;
}

/** Level, title and lifetime; a refresh starts the lifetime again. */
function _fillToast(toast, { duration = null, level = null, title = null }) {
  toast.element.dataset.sbLevel = level ?? 'info';
  toast.title.textContent = title ?? '';
  toast.title.hidden = !title;
  clearTimeout(toast.timer);
  // A duration of 0 keeps the toast until it is closed.
  const lifetime = Math.min(duration ?? CONFIG.TOAST_DURATION_MS, _LONGEST_TIMER_MS);
  toast.timer = lifetime > 0 ? setTimeout(() => _removeToast(toast), lifetime) : 0;
}

function _createToast(message) {
  const element = _el('div', { class: 'sb-toast', role: 'status' });
  const close = _el('button', { type: 'button', class: 'sb-toast-close', 'aria-label': CONFIG.TEXT_CLOSE }, '×');
  const text = _el('div', { class: 'sb-toast-text' });
  const title = _el('p', { class: 'sb-toast-title' });
  text.append(title, _el('p', { class: 'sb-toast-message' }, message));
  element.append(text, close);
  const toast = { element, message, title, timer: 0 };
  close.addEventListener('click', () => _removeToast(toast));
  _toastStack().append(element);
  _toasts.push(toast);
  return toast;
}

function _removeToast(toast) {
  const waiting = _waitingToasts.indexOf(toast);
  if (waiting >= 0) {
    _waitingToasts.splice(waiting, 1);
    return;
  }
  const index = _toasts.indexOf(toast);
  if (index < 0) return;
  _toasts.splice(index, 1);
  clearTimeout(toast.timer);
  toast.element.remove();
  _showWaitingToasts();
}

function _showWaitingToasts() {
  while (_waitingToasts.length > 0 && _toasts.length < CONFIG.TOAST_LIMIT) {
    const { message, spec } = _waitingToasts.shift();
    _fillToast(_createToast(message), spec);
  }
}

function _closeToasts(message) {
  for (const toast of [..._waitingToasts, ..._toasts].filter((t) => t.message === message)) _removeToast(toast);
}

function _toastStack() {
  const wanted = document.body.dataset.sbToastPosition;
  const position = _TOAST_POSITIONS.includes(wanted) ? wanted : 'top-right';
  let stack = document.querySelector(`.sb-toasts[data-position="${position}"]`);
  if (!stack) {
    stack = _el('div', { class: 'sb-toasts', 'data-position': position });
    document.body.append(stack);
  }
  return stack;
}

function _warn(message) {
  _showToast({ message, level: 'warning' });
}

// ================================================================ tooltips and field errors

let _tooltip = null; // { element, timer }: one at a time

function _showTooltip(anchor, message) {
  _dismissTooltip();
  const element = _el('div', { class: 'sb-tooltip', role: 'alert', 'data-sb-level': 'error', 'data-sb-for': anchor.id || null }, message);
  document.body.append(element);
  _placeTooltip(element, anchor);
  _tooltip = { element, timer: setTimeout(_dismissTooltip, CONFIG.TOOLTIP_DURATION_MS) };
}

/** Under the anchor, centred on it and kept inside the viewport; above it only when there is no room below. */
function _placeTooltip(tip, anchor) {
  const GAP = 8;
  const box = anchor.getBoundingClientRect();
  const viewWidth = document.documentElement.clientWidth;
  const { offsetWidth: width, offsetHeight: height } = tip;
  const left = _clamp(box.left + box.width / 2 - width / 2, GAP, viewWidth - width - GAP);
  const fitsBelow = box.bottom + GAP + height <= window.innerHeight - GAP || box.top - GAP - height < GAP;
  tip.style.left = `${left}px`;
  tip.style.top = `${fitsBelow ? box.bottom + GAP : box.top - GAP - height}px`;
  tip.dataset.placement = fitsBelow ? 'below' : 'above';
  tip.style.setProperty('--sb-arrow-x', `${_clamp(box.left + box.width / 2 - left, 12, width - 12)}px`);
}

function _dismissTooltip() {
  if (!_tooltip) return;
  clearTimeout(_tooltip.timer);
  _tooltip.element.remove();
  _tooltip = null;
}

function _fieldErrorId(field) {
  return `${field.id}-sb-error`;
}

function _markField(field, message, title = null) {
  _clearFieldError(field);
  const note = _el('p', { class: 'sb-field-error', id: _fieldErrorId(field), 'data-sb-for': field.id });
  // Form results may give both (the seed's `{ title, message }`): both shown.
  if (title) note.append(_el('span', { class: 'sb-field-error-title' }, title), ' ');
  note.append(message);
  // A field wrapped in its <label> gets the message under the label.
  (field.closest('label') ?? field).after(note);
  field.classList.add('sb-invalid');
  field.setAttribute('aria-invalid', 'true');
  _addToken(field, 'aria-describedby', note.id);
}

function _clearFieldError(field) {
  if (!field.classList.contains('sb-invalid')) return;
  field.classList.remove('sb-invalid');
  field.removeAttribute('aria-invalid');
  document.getElementById(_fieldErrorId(field))?.remove();
  _removeToken(field, 'aria-describedby', _fieldErrorId(field));
}

function _clearFieldErrors(container) {
  for (const field of container.querySelectorAll(`${_FIELD}.sb-invalid`)) _clearFieldError(field);
}

// ================================================================ browser features: url, clipboard, share, download

const _SAFE_SCHEMES = new Set(['http:', 'https:', 'mailto:', 'tel:']);

function _openUrl({ url, target }) {
  // `//host` is an absolute URL on another host, not a relative one (so are
  // backslashed forms, and tabs or newlines inside, as browsers read them):
  // the server refuses it, and so does this second lock.
  const cleaned = url.replace(/[\t\n\r]/g, '').replace(/^[\x00-\x20]+/, '');
  if (/^[/\\]{2}/.test(cleaned)) {
    console.warn('Switchboard: refused to open a scheme-relative url');
    return;
  }
  const resolved = new URL(url, location.href);
  // The server already refuses other schemes; this is a second lock.
  if (!_SAFE_SCHEMES.has(resolved.protocol)) {
    console.warn(`Switchboard: refused to open a ${resolved.protocol} url`);
    return;
  }
  const name = target || '_self';
  if (name === '_self') location.assign(resolved);
  else if (name === '_blank') window.open(resolved, '_blank', 'noopener');
  else window.open(resolved, name);
}

async function _copyAction({ text }) {
  if (!(await _copyText(text))) _warn(CONFIG.TEXT_COPY_FAILED);
}

async function _copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No Clipboard API (plain-http origins) or no permission.
    return _copyWithSelection(text);
  }
}

function _copyWithSelection(text) {
  const focused = document.activeElement;
  const area = _el('textarea', { readonly: '', class: 'sb-offscreen', 'aria-hidden': 'true' });
  area.value = text;
  document.body.append(area);
  area.select();
  try {
    return document.execCommand('copy');
  } catch {
    return false;
  } finally {
    area.remove();
    focused?.focus?.({ preventScroll: true });
  }
}

async function _shareAction({ text }) {
  if (navigator.share) {
    try {
      await navigator.share(_shareData(text));
      return;
    } catch (error) {
      if (error.name === 'AbortError') return; // the user closed the share sheet
    }
  }
  if (await _copyText(text)) _showToast({ message: CONFIG.TEXT_LINK_COPIED, level: 'success' });
  else _warn(CONFIG.TEXT_COPY_FAILED);
}

function _shareData(text) {
  return /^https?:\/\//i.test(text) ? { url: text } : { text };
}

async function _downloadAction({ name, parameter }) {
  const query = new URLSearchParams({ name, parameter });
  let response;
  try {
    response = await fetch(_api(`download?${query}`));
  } catch (error) {
    _showToast({ message: _format(CONFIG.TEXT_DOWNLOAD_FAILED, { reason: error.message }), level: 'error' });
    return;
  }
  if (!response.ok) {
    _showToast({ message: _format(CONFIG.TEXT_DOWNLOAD_FAILED, { reason: await _reasonOf(response) }), level: 'error' });
    return;
  }
  const filename = _filenameOf(response.headers.get('Content-Disposition')) ?? name;
  _saveBlob(await response.blob(), filename);
}

/** The file name of a Content-Disposition header: RFC 5987 `filename*` first, then `filename`. */
function _filenameOf(disposition) {
  if (!disposition) return null;
  const extended = /filename\*\s*=\s*[^']*'[^']*'([^;]+)/i.exec(disposition);
  if (extended) {
    try {
      return decodeURIComponent(extended[1].trim());
    } catch {
      // Malformed percent-encoding: fall back to the plain parameter.
    }
  }
  const quoted = /filename\s*=\s*"((?:\\.|[^"\\])*)"/i.exec(disposition);
  if (quoted) return quoted[1].replace(/\\(.)/g, '$1');
  const bare = /filename\s*=\s*([^;\s]+)/i.exec(disposition);
  return bare ? bare[1] : null;
}

function _saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = _el('a', { href: url, download: filename, class: 'sb-offscreen' });
  document.body.append(link);
  link.click();
  link.remove();
  // Revoking at once can cancel the download in some browsers.
  setTimeout(() => URL.revokeObjectURL(url), CONFIG.OBJECT_URL_LIFETIME_MS);
}

// ================================================================ app commands: HSYCO app bridge, code scanning, speech

/**
 * The HSYCO app's bridge, when the page runs inside its webview; null in a
 * plain browser. Checked in this order:
 *   window.webkit.messageHandlers.hsyco.postMessage(…)  (iOS WKWebView)
 *   window.hsyco.postMessage(…)                          (Android JavaScript interface)
 *   window.HSYCO.command(…)                              (older app builds)
 */
function _appBridge() {
  const webkit = window.webkit?.messageHandlers?.hsyco;
  if (typeof webkit?.postMessage === 'function') return (message) => webkit.postMessage(message);
  if (typeof window.hsyco?.postMessage === 'function') return (message) => window.hsyco.postMessage(message);
  if (typeof window.HSYCO?.command === 'function') return (message) => window.HSYCO.command(message);
  return null;
}

/** What a plain browser can do itself, by app command. */
const _browserAppCommands = {
  codescan: _scanCode,
  speech: _recogniseSpeech,
};

function _appAction({ command }, origin) {
  const bridge = _appBridge();
  if (bridge) return bridge(`app:${command}`);
  const local = _browserAppCommands[command];
  if (local) return local(origin);
  _warn(_format(CONFIG.TEXT_NO_APP, { command }));
  return undefined;
}

/** Camera + BarcodeDetector; the first code read goes to `fn barcode` as a device event. */
async function _scanCode(origin) {
  if (!('BarcodeDetector' in window) || !navigator.mediaDevices?.getUserMedia) {
    _warn(CONFIG.TEXT_NO_CODESCAN);
    return;
  }
  const detector = new window.BarcodeDetector();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'environment' }, audio: false });
  } catch {
    _warn(CONFIG.TEXT_NO_CAMERA);
    return;
  }
  const modal = _openModal({ kind: 'codescan', onClose: () => stream.getTracks().forEach((track) => track.stop()) });
  _addDialogHeader(modal, CONFIG.TEXT_SCAN_TITLE);
  const video = _el('video', { class: 'sb-codescan-video', playsinline: '', muted: '' });
  video.muted = true;
  video.srcObject = stream;
  const body = _el('div', { class: 'sb-dialog-body' });
  body.append(video);
  modal.dialog.append(body);
  _addDialogButton(modal, CONFIG.TEXT_CANCEL).focus();
  await video.play().catch(() => {});
  // Not awaited: scanning takes as long as the user needs.
  _detectCodes(detector, video, modal, origin);
}

async function _detectCodes(detector, video, modal, origin) {
  while (_modals.includes(modal)) {
    const codes = await detector.detect(video).catch(() => []);
    if (codes.length > 0 && _modals.includes(modal)) {
      _closeModal(modal);
      const data = { text: codes[0].rawValue, barcodeType: codes[0].format, timestamp: Date.now() };
      _track(_deviceEvent('barcode', data, { source: 'camera', object: origin.element?.id ?? null }));
      return;
    }
    await _sleep(CONFIG.CODESCAN_INTERVAL_MS);
  }
}

/** Web Speech recognition; the transcript is sent as command `speech`. */
function _recogniseSpeech(origin) {
  const Recognition = window.SpeechRecognition ?? window.webkitSpeechRecognition;
  if (!Recognition) {
    _warn(CONFIG.TEXT_NO_SPEECH);
    return;
  }
  const recognition = new Recognition();
  recognition.lang = document.documentElement.lang || navigator.language;
  recognition.interimResults = false;
  recognition.maxAlternatives = 1;
  const listening = _showToast({ message: CONFIG.TEXT_LISTENING, duration: 0 });
  recognition.addEventListener('result', (event) => {
    const transcript = event.results[0]?.[0]?.transcript;
    if (transcript) _command('speech', transcript, { element: origin.element });
  });
  recognition.addEventListener('error', (event) => {
    if (event.error === 'no-speech' || event.error === 'nomatch') _warn(CONFIG.TEXT_SPEECH_FAILED);
    else if (event.error !== 'aborted') _warn(CONFIG.TEXT_NO_SPEECH);
  });
  recognition.addEventListener('end', () => _removeToast(listening));
  recognition.start();
}

// ================================================================ objects: buttons, repeat buttons, fields, submit, links

const _presses = new Map(); // repeat button → { timer, repeated }
const _PRESS_KEYS = new Set([' ', 'Enter']);

function _onClick(event) {
  const link = event.target.closest('a[data-sb-link]');
  if (link) {
    if (_isPlainClick(event, link)) {
      event.preventDefault();
      _track(_open(link.dataset.sbLink));
    }
    return;
  }
  const object = event.target.closest('[data-sb-object]');
  const kind = object?.dataset.sbObject;
  // Repeat buttons speak through pointer and key events only.
  if (kind === 'button' && !object.hasAttribute('data-sb-repeat')) _tap(object);
  if (kind === 'submit') {
    event.preventDefault();
    _submit(object);
  }
}

/** A click the browser would not open elsewhere (new tab, window, download). */
function _isPlainClick(event, link) {
  const ownTarget = !link.target || link.target === '_self';
  return event.button === 0 && ownTarget && !event.metaKey && !event.ctrlKey && !event.shiftKey && !event.altKey;
}

function _tap(button) {
  // No double run: a button waits for its answer before it sends again.
  if (_isBusy(button)) return;
  _command(_nameOf(button), button.dataset.sbParam ?? '', { element: button });
}

function _submit(button) {
  if (_isBusy(button)) return;
  const container = button.closest(_CONTAINER) ?? button.closest('[data-sb-page-name]');
  const values = {};
  for (const field of container.querySelectorAll(_FIELD)) {
    if (field.id) values[field.id] = _valueOf(field);
  }
  if (container.hasAttribute('data-sb-reliable')) _track(_queueSubmission(container, values));
  else _command(button.id, JSON.stringify(values), { element: button, container });
}

function _valueOf(field) {
  return field.type === 'checkbox' ? String(field.checked) : field.value;
}

/** HSYCO's rule: a field sends on its own unless a container around it holds a submit. */
function _autoSends(field) {
  for (let container = field.closest(_CONTAINER); container; container = container.parentElement?.closest(_CONTAINER)) {
    if (container.querySelector(_SUBMIT)) return false;
  }
  return true;
}

function _onChange(event) {
  const field = event.target;
  if (!field.matches?.(_FIELD)) return;
  _clearFieldError(field);
  if (_autoSends(field)) _command(field.id, _valueOf(field), { element: field });
}

function _onInput(event) {
  if (event.target.matches?.(_FIELD)) _clearFieldError(event.target);
}

function _onSubmitEvent(event) {
  const form = event.target;
  // Submitting is the runtime's job (see _submit): never a native navigation.
  if (form.matches(_CONTAINER) || form.querySelector('[data-sb-object]')) event.preventDefault();
}

function _onPointerDown(event) {
  const button = event.target.closest?.(_REPEAT_BUTTON);
  if (!button || event.button !== 0 || button.disabled) return;
  // Capture, so that a release outside the button still reaches it.
  try {
    button.setPointerCapture(event.pointerId);
  } catch {
    // Synthetic pointers cannot be captured; the release still ends the press.
  }
  const release = (other) => {
    if (other.pointerId !== event.pointerId) return;
    for (const type of ['pointerup', 'pointercancel', 'lostpointercapture']) button.removeEventListener(type, release);
    _pressEnd(button);
  };
  for (const type of ['pointerup', 'pointercancel', 'lostpointercapture']) button.addEventListener(type, release);
  _pressStart(button);
}

/** HSYCO repeat mode: `down` now, then `repeat` every interval while held. */
function _pressStart(button) {
  if (_presses.has(button)) return;
  const press = { repeated: false, timer: 0 };
  press.timer = setInterval(() => {
    // A button removed while held (page change) gets no release event.
    if (!button.isConnected) {
      _pressEnd(button);
      return;
    }
    press.repeated = true;
    _command(_nameOf(button), 'repeat', { element: button });
  }, CONFIG.REPEAT_INTERVAL_MS);
  _presses.set(button, press);
  button.classList.add('sb-pressed');
  _command(_nameOf(button), 'down', { element: button });
}

/** `up` for a short press, `stop` after at least one `repeat`. */
function _pressEnd(button) {
  const press = _presses.get(button);
  if (!press) return;
  clearInterval(press.timer);
  _presses.delete(button);
  button.classList.remove('sb-pressed');
  _command(_nameOf(button), press.repeated ? 'stop' : 'up', { element: button });
}

function _releaseAll() {
  for (const button of [..._presses.keys()]) _pressEnd(button);
}

function _onKeyDown(event) {
  _dismissTooltip();
  if (_modals.length > 0 && event.key === 'Escape') {
    event.preventDefault();
    _closeModal(_modals.at(-1));
    return;
  }
  if (_modals.length > 0 && event.key === 'Tab') {
    _trapTab(event);
    return;
  }
  const button = event.target.closest?.(_REPEAT_BUTTON);
  if (button && _PRESS_KEYS.has(event.key)) {
    event.preventDefault();
    if (!event.repeat) _pressStart(button);
  }
}

function _onKeyUp(event) {
  const button = event.target.closest?.(_REPEAT_BUTTON);
  if (button && _PRESS_KEYS.has(event.key)) {
    event.preventDefault();
    _pressEnd(button);
  }
}

function _onFocusOut(event) {
  const button = event.target.closest?.(_REPEAT_BUTTON);
  if (button) _pressEnd(button);
}

/**
 * `<button>` defaults to type=submit: inside a <form> container a command
 * button would also be "clicked" by Enter in a text field. Submit objects
 * keep the default, so that Enter in a field submits their container.
 */
function _enhance(root) {
  for (const button of root.querySelectorAll('button[data-sb-object="button"]:not([type])')) button.type = 'button';
  for (const field of root.querySelectorAll(_FIELD)) _rememberValid(field);
  // Pushed values outlive page changes: objects shown again get them again.
  _applyUiValues(root);
}


// ================================================================ server push

/** One handler per pushed frame type. */
const _pushes = {
  actions: ({ actions }) => _track(_applyReply({ status: 'ok', actions }, {})),
  ui: ({ set }) => {
    for (const value of set) _setUiValue(value);
  },
  reload: ({ pages }) => {
    if (pages.includes(_currentPage())) _track(_open(_currentPage(), { push: false }));
  },
  dev_error: ({ message }) => _showDevError(message),
  dev_notice: ({ message }) => _showDevNotice(message),
  session_ended: () => _sessionEnded(),
  config: ({ keystrokes }) => _installKeystrokes(keystrokes ?? []),
  // Queued: the dialog it closes may still be waiting in the queue.
  challenge_closed: (frame) => _track(_enqueue(() => _challengeClosed(frame))),
};

function _onPush(frame) {
  const handle = _pushes[frame.type];
  if (handle) handle(frame);
  else console.warn(`Switchboard: unknown push ${frame.type}`);
}

/** id → attr → value, as pushed; applied again to objects that appear later. */
const _uiValues = new Map();

function _setUiValue({ id, attr, value }) {
  if (!_uiValues.has(id)) _uiValues.set(id, new Map());
  _uiValues.get(id).set(attr, value);
  const element = document.getElementById(id);
  if (element) _applyUi(element, attr, value);
}

function _applyUiValues(root) {
  for (const [id, attrs] of _uiValues) {
    const element = root.querySelector?.(`#${CSS.escape(id)}`);
    if (element) for (const [attr, value] of attrs) _applyUi(element, attr, value);
  }
}

/** What each pushed attribute does to an object. Values land as text or properties, never as HTML. */
const _uiAttributes = {
  text: (element, value) => {
    element.textContent = value ?? '';
  },
  label: (element, value) => _uiAttributes.text(element, value),
  value: (element, value) => {
    if (element.type === 'checkbox') element.checked = value === true || value === 'true';
    else if ('value' in element && element.matches(_FIELD)) element.value = value ?? '';
    else element.textContent = value ?? '';
    _rememberValid(element);
  },
  visible: (element, value) => {
    element.hidden = value === false;
  },
  enabled: (element, value) => {
    element.disabled = value === false;
    element.toggleAttribute('aria-disabled', value === false);
  },
  class: (element, value) => {
    for (const token of (element.dataset.sbPushedClass ?? '').split(' ').filter(Boolean)) element.classList.remove(token);
    const tokens = String(value ?? '').split(/\s+/).filter(Boolean);
    element.classList.add(...tokens);
    element.dataset.sbPushedClass = tokens.join(' ');
  },
  style: (element, value) => {
    element.style.cssText = value ?? '';
  },
  items: (element, value) => {
    const items = Array.isArray(value) ? value : [];
    if (element.tagName === 'SELECT') {
      const selected = element.value;
      element.replaceChildren(
        ...items.map((item) => {
          const option = _el('option', {}, String(item?.label ?? item?.value ?? item));
          option.value = String(item?.value ?? item);
          return option;
        }),
      );
      element.value = selected;
    } else if (element.tagName === 'UL' || element.tagName === 'OL') {
      element.replaceChildren(...items.map((item) => _el('li', {}, String(item))));
    } else {
      element.textContent = items.join(', ');
    }
  },
};

function _applyUi(element, attr, value) {
  _uiAttributes[attr]?.(element, value);
}

/** For integrators: a dismissible overlay with the project's compile error (null clears it). */
function _showDevError(message) {
  document.querySelector('.sb-dev-error')?.remove();
  if (!message) return;
  const overlay = _el('div', { class: 'sb-dev-error', role: 'alert' });
  const close = _el('button', { type: 'button', class: 'sb-dialog-close', 'aria-label': CONFIG.TEXT_CLOSE }, '×');
  close.addEventListener('click', () => overlay.remove());
  overlay.append(_el('strong', {}, CONFIG.TEXT_DEV_ERROR_TITLE), close, _el('pre', {}, message));
  document.body.append(overlay);
}

/** Most dev-mode notices kept in the overlay; older ones drop off. */
const _DEV_NOTICE_LIMIT = 20;

/**
 * Dev mode: a mistake the server saw while running a handler (an unknown
 * answer key, an unhandled command). Notices collect in one dismissible
 * overlay, newest last.
 */
function _showDevNotice(message) {
  let overlay = document.querySelector('.sb-dev-notice');
  if (!overlay) {
    overlay = _el('div', { class: 'sb-dev-error sb-dev-notice', role: 'status' });
    const close = _el('button', { type: 'button', class: 'sb-dialog-close', 'aria-label': CONFIG.TEXT_CLOSE }, '×');
    close.addEventListener('click', () => overlay.remove());
    overlay.append(_el('strong', {}, CONFIG.TEXT_DEV_NOTICE_TITLE), close);
    document.body.append(overlay);
  }
  overlay.append(_el('pre', {}, message));
  const notices = overlay.querySelectorAll('pre');
  if (notices.length > _DEV_NOTICE_LIMIT) notices[0].remove();
}

/** The server ended the session (logout, termination): stop reconnecting with it. */
function _sessionEnded() {
  _transport.stopped = true;
  clearTimeout(_transport.retryTimer);
  _setConnectionState('reconnecting');
  const modal = _openModal({ kind: 'message', level: 'warning' });
  modal.dialog.append(_el('p', { class: 'sb-dialog-message' }, CONFIG.TEXT_SESSION_ENDED));
  const reload = _addDialogButton(modal, CONFIG.TEXT_RELOAD);
  reload.addEventListener('click', () => location.reload());
  reload.focus();
}

// ================================================================ keystrokes (project.toml [[keystrokes]])

let _keystrokeListeners = [];

/** Listens for the project's matchers; called again with new ones after a reload. */
function _installKeystrokes(matchers) {
  for (const [type, listener, capture] of _keystrokeListeners) document.removeEventListener(type, listener, capture);
  _keystrokeListeners = matchers.map((matcher) => (matcher.regex ? _regexListener(matcher) : _keyListener(matcher)));
  for (const [type, listener, capture] of _keystrokeListeners) document.addEventListener(type, listener, capture);
}

function _keyListener(matcher) {
  const listener = (event) => {
    if (matcher.key != null && event.key !== matcher.key) return;
    if (matcher.code != null && event.code !== matcher.code) return;
    const modifiers = [
      [matcher.alt, event.altKey],
      [matcher.ctrl, event.ctrlKey],
      [matcher.shift, event.shiftKey],
      [matcher.meta, event.metaKey],
    ];
    // A modifier the matcher does not name does not matter, unless `exact`.
    const mismatch = ([wanted, held]) => (wanted == null ? matcher.exact && held : wanted !== held);
    if (modifiers.some(mismatch)) return;
    if (matcher.prevent_default) event.preventDefault();
    if (matcher.stop_propagation) event.stopPropagation();
    _sendKeystroke(matcher, event, null);
  };
  return [matcher.event === 'keyup' ? 'keyup' : 'keydown', listener, Boolean(matcher.capture)];
}

/** Regex matchers look at the last `buffer` characters typed, on key release (HID scanners type fast). */
function _regexListener(matcher) {
  let typed = '';
  let pattern;
  try {
    pattern = new RegExp(matcher.regex);
  } catch {
    console.warn(`Switchboard: keystroke ${matcher.name}: the regex is not valid JavaScript`);
    return ['keyup', () => {}, false];
  }
  const listener = (event) => {
    if (event.key.length !== 1) return;
    typed = (typed + event.key).slice(-matcher.buffer);
    if (!pattern.test(typed)) return;
    const buffer = typed;
    typed = '';
    _sendKeystroke(matcher, event, buffer);
  };
  return ['keyup', listener, Boolean(matcher.capture)];
}

function _sendKeystroke(matcher, event, buffer) {
  const fields = ['key', 'code', 'altKey', 'ctrlKey', 'shiftKey', 'metaKey', 'isComposing', 'location', 'repeat'];
  const frame = {
    type: 'keystroke',
    matcher: matcher.name,
    page: _currentPage(),
    event: Object.fromEntries(fields.map((field) => [field, event[field]])),
    ...(buffer != null && { buffer }),
  };
  _track(_request(frame).then((reply) => _applyReply(reply, {})));
}

// ================================================================ device events

async function _deviceEvent(event, data, context) {
  const reply = await _request({ type: 'device', event, data, context });
  await _applyReply(reply, {});
  return reply;
}

// ================================================================ authentication challenges

/** Open challenge dialogs by id, so that the server can close one (timeout, answered elsewhere). */
const _challenges = new Map();

/**
 * Asks for credentials in a modal; the server checks them and runs
 * `authChallenge`. The action only opens the dialog and returns: it runs
 * inside the reply queue, and the user's answer (whose reply goes through
 * that same queue) may take minutes. Like every action, it must never wait
 * on the queue it runs in.
 */
function _challengeAction({ id }) {
  const modal = _openModal({ kind: 'challenge', onClose: () => _answerChallenge(id, { cancel: true }) });
  _challenges.set(id, modal);
  _addDialogHeader(modal, CONFIG.TEXT_CHALLENGE_TITLE);
  const form = _el('form', { class: 'sb-dialog-body sb-challenge' });
  const user = _el('input', { name: 'user', autocomplete: 'username', required: '' });
  const password = _el('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: '' });
  for (const [label, input] of [[CONFIG.TEXT_CHALLENGE_USER, user], [CONFIG.TEXT_CHALLENGE_PASSWORD, password]]) {
    const field = _el('label', { class: 'sb-field' });
    field.append(_el('span', { class: 'sb-field-label' }, label), input);
    form.append(field);
  }
  const submit = _el('button', { type: 'submit', class: 'sb-button sb-primary' }, CONFIG.TEXT_CHALLENGE_SUBMIT);
  form.append(submit);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    _answerChallenge(id, { user: user.value, password: password.value });
    _closeModal(modal);
  });
  modal.dialog.append(form);
  user.focus();
}

/** Sends the user's answer once (closing the dialog is a cancel unless it was answered). */
function _answerChallenge(id, body) {
  if (!_challenges.delete(id)) return;
  const done = fetch(_api('challenge'), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ id, ...body }),
  })
    .then(async (response) => (response.ok ? response.json() : { status: 'rejected', reason: await _reasonOf(response) }))
    .catch((error) => ({ status: 'rejected', reason: error.message }))
    .then((reply) => _applyReply(reply, {}));
  _track(done);
}

/** The server ended the challenge (timed out, or answered in another tab): close its dialog, no answer. */
function _challengeClosed({ id }) {
  const modal = _challenges.get(id);
  if (!modal) return;
  _challenges.delete(id);
  _closeModal(modal);
}

// ================================================================ reliable forms: offline queue (IndexedDB)

/**
 * A container with `data-sb-reliable` submits to `fn formSubmission`. Each
 * submission gets an id, is stored in IndexedDB first, and is delivered
 * until the server answers — across offline periods, server restarts and
 * reloads. The server runs an id once and answers repeats from its record.
 */
const _submissions = { count: 0, delivering: null, retryTimer: 0, failures: 0 };

function _openQueue() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open('switchboard', 1);
    request.onupgradeneeded = () => request.result.createObjectStore('submissions', { keyPath: 'id' });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function _queueOperation(mode, operate) {
  const db = await _openQueue();
  try {
    return await new Promise((resolve, reject) => {
      const transaction = db.transaction('submissions', mode);
      const result = operate(transaction.objectStore('submissions'));
      transaction.oncomplete = () => resolve(result?.result);
      transaction.onerror = () => reject(transaction.error);
    });
  } finally {
    db.close();
  }
}

async function _queuedSubmissions() {
  const all = (await _queueOperation('readonly', (store) => store.getAll())) ?? [];
  return all.filter((entry) => entry.project === _project()).sort((a, b) => a.created - b.created);
}

async function _queueSubmission(container, data) {
  const entry = {
    id: _randomHex(16),
    project: _project(),
    name: container.id,
    data,
    context: JSON.parse(container.dataset.sbContext || '{}'),
    session_context: { timestamp: Date.now(), device: navigator.userAgent, location: null },
    attempts: 0,
    created: Date.now(),
  };
  await _queueOperation('readwrite', (store) => store.put(entry));
  await _updatePendingCount();
  return _deliverSubmissions();
}

/** Sends every queued submission in order; one delivery run at a time. */
function _deliverSubmissions() {
  _submissions.delivering ??= _deliverQueued().finally(() => {
    _submissions.delivering = null;
  });
  return _submissions.delivering;
}

async function _deliverQueued() {
  for (const entry of await _queuedSubmissions()) {
    if (!(await _deliverOne(entry))) {
      _scheduleSubmissionRetry();
      return;
    }
  }
  _submissions.failures = 0;
}

/** One delivery attempt; false when the server could not be reached or the run failed (try again later). */
async function _deliverOne(entry) {
  const frame = {
    type: 'form',
    id: entry.id,
    name: entry.name,
    data: entry.data,
    context: entry.context,
    session_context: entry.session_context,
    retry: entry.attempts > 0,
  };
  // Counted before sending: if this attempt dies on the way, the next one is a retry.
  entry.attempts += 1;
  await _queueOperation('readwrite', (store) => store.put(entry));
  let reply;
  try {
    const response = await fetch(_api('command'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(frame),
    });
    if (response.status === 401) await _renewSession();
    reply = await response.json();
  } catch {
    return false;
  }
  if (!reply?.status) return false;
  // The server kept nothing of a failed run: run it again, as the seed's `retry`.
  if (reply.status === 'failed' && entry.attempts < CONFIG.SUBMIT_MAX_FAILED_RUNS) return false;
  await _queueOperation('readwrite', (store) => store.delete(entry.id));
  await _updatePendingCount();
  const container = document.getElementById(entry.name);
  const element = container?.querySelector(_SUBMIT) ?? null;
  await _applyReply(reply, { element, container });
  return true;
}

function _scheduleSubmissionRetry() {
  clearTimeout(_submissions.retryTimer);
  const delay = Math.min(CONFIG.SUBMIT_RETRY_MAX_MS, CONFIG.SUBMIT_RETRY_BASE_MS * 2 ** _submissions.failures);
  _submissions.failures += 1;
  _submissions.retryTimer = setTimeout(() => _deliverSubmissions(), delay);
}

async function _updatePendingCount() {
  _submissions.count = (await _queuedSubmissions()).length;
  const indicator = _connectionIndicator();
  let pending = indicator.querySelector('.sb-pending');
  if (!pending) {
    pending = _el('span', { class: 'sb-pending' });
    indicator.append(pending);
  }
  pending.dataset.count = String(_submissions.count);
  pending.hidden = _submissions.count === 0;
  pending.textContent = _format(CONFIG.TEXT_PENDING, { count: _submissions.count });
}

// ================================================================ points: objects bound to live values (data-sb-point)

// A bound object (docs/points.md) carries `data-sb-point="<name>"` and shows
// the point's value: a label its text, a field its value, a button with
// `data-sb-toggle` its state (`aria-pressed`; a tap writes the opposite
// through the command `point:<name>`). `data-sb-quality` mirrors the
// quality, so the stylesheet can grey stale values. The server renders the
// current value; `points` pushes keep it current.

const _POINT = '[data-sb-point]';

/** name → the last pushed item, for objects that appear after it arrived. */
const _pointItems = new Map();

_pushes.points = ({ set }) => {
  for (const item of set) _showPoint(item);
};

function _showPoint(item) {
  _pointItems.set(item.name, item);
  for (const element of document.querySelectorAll(`[data-sb-point="${CSS.escape(item.name)}"]`)) {
    _applyPoint(element, item);
  }
}

function _applyPoint(element, { value, quality, text, seq }) {
  // A page rendered after this change already shows something newer.
  if (Number(element.dataset.sbSeq ?? -1) > seq) return;
  element.dataset.sbSeq = String(seq);
  element.dataset.sbQuality = quality;
  if (element.hasAttribute('data-sb-toggle')) {
    element.setAttribute('aria-pressed', String(value === true));
    element.dataset.sbParam = String(value !== true);
  } else if (element.matches(_FIELD)) {
    // Never overwrite what the user is typing or dragging.
    if (element.type === 'checkbox') element.checked = value === true;
    else if (element !== document.activeElement) element.value = value == null ? '' : String(value);
  } else {
    element.textContent = _pointText(element, value, text);
  }
}

/** A label's text: `data-sb-on` / `data-sb-off` override On/Off for bools. */
function _pointText(element, value, text) {
  if (value === true && element.dataset.sbOn) return element.dataset.sbOn;
  if (value === false && element.dataset.sbOff) return element.dataset.sbOff;
  return text;
}

/** A committed change of a bound field writes the point instead of sending the field's id. */
function _onPointChange(event) {
  const field = event.target;
  if (!field.matches?.(`${_FIELD}${_POINT}`)) return;
  event.stopPropagation();
  _clearFieldError(field);
  _command(`point:${field.dataset.sbPoint}`, _valueOf(field), { element: field });
}

/** Objects swapped in (pages, popups) get the pushes that arrived while their HTML was on its way. */
function _watchBoundObjects() {
  new MutationObserver((mutations) => {
    for (const mutation of mutations) {
      for (const node of mutation.addedNodes) {
        if (node.nodeType !== Node.ELEMENT_NODE) continue;
        const bound = node.matches(_POINT) ? [node] : [];
        for (const element of [...bound, ...node.querySelectorAll(_POINT)]) {
          const item = _pointItems.get(element.dataset.sbPoint);
          if (item) _applyPoint(element, item);
        }
      }
    }
  }).observe(document.body, { childList: true, subtree: true });
}

if (document.body?.dataset.sbProject) {
  // Capture: runs before the generic field handler, which would send the field's id.
  document.addEventListener('change', _onPointChange, true);
  _watchBoundObjects();
}

// ================================================================ public API and start-up

const Switchboard = Object.freeze({
  config: CONFIG,
  /**
   * Sends a command as if the element with id `object` had sent it (that
   * element shows busy and anchors error tooltips). Resolves with the reply
   * once its actions ran.
   */
  send(name, param = '', { object = null } = {}) {
    const element = object ? document.getElementById(object) : null;
    return _command(name, param, { element, object });
  },
  /** Opens a page (client-side) or a popup by name. */
  navigate(page) {
    return _track(_open(page));
  },
  /** Whether the WebSocket is open (commands go over HTTP while it is not). */
  get connected() {
    return _transport.state === 'connected';
  },
  /** 'connecting', 'connected' or 'reconnecting'; mirrored on `.sb-connection[data-state]`. */
  get connection() {
    return _transport.state;
  },
  /** Resolves when no command is pending and no reply's actions are still running. */
  whenIdle,
  /**
   * Feeds a device event to the project's `fn barcode/nfc/accelerometer/
   * bluetooth` (the HSYCO app bridge calls this). Resolves with the reply.
   */
  deviceEvent(event, data, context = {}) {
    return _track(_deviceEvent(event, data, context));
  },
  /** Reliable form submissions not yet acknowledged by the server. */
  get pendingSubmissions() {
    return _submissions.count;
  },
  /** Tries to send queued submissions now. */
  flushSubmissions() {
    return _track(_deliverSubmissions());
  },
});

function _installListeners() {
  document.addEventListener('click', _onClick);
  document.addEventListener('change', _onChange);
  document.addEventListener('input', _onInput);
  document.addEventListener('submit', _onSubmitEvent);
  document.addEventListener('pointerdown', _onPointerDown);
  document.addEventListener('keydown', _onKeyDown);
  document.addEventListener('keyup', _onKeyUp);
  document.addEventListener('focusout', _onFocusOut);
  // A long press on a repeat button must not open the context menu.
  document.addEventListener('contextmenu', (event) => {
    if (event.target.closest?.(_REPEAT_BUTTON)) event.preventDefault();
  });
  // The next interaction dismisses an error tooltip, and a scroll would leave it behind.
  document.addEventListener('pointerdown', _dismissTooltip, true);
  document.addEventListener('scroll', _dismissTooltip, { capture: true, passive: true });
  window.addEventListener('resize', _dismissTooltip);
  window.addEventListener('blur', _releaseAll);
  window.addEventListener('popstate', _onPopState);
  window.addEventListener('online', _reconnectNow);
  window.addEventListener('online', () => _track(_deliverSubmissions()));
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') _reconnectNow();
  });
  window.addEventListener('pagehide', () => {
    _transport.stopped = true;
    clearTimeout(_transport.retryTimer);
    _transport.socket?.close(1000);
  });
  window.addEventListener('pageshow', (event) => {
    // Back from the back/forward cache: the socket closed on the way out.
    if (!event.persisted) return;
    _transport.stopped = false;
    _reconnectNow();
  });
}

function _boot() {
  window.Switchboard = Switchboard;
  // A document without the layout (no project) has nothing to run.
  if (!document.body?.dataset.sbProject || !_pageRoot()) return;
  history.replaceState({ ...history.state, sbPage: _currentPage() }, '');
  _enhance(document);
  _installListeners();
  _setConnectionState('connecting');
  _connect();
  // Submissions queued by an earlier visit (offline, then the tab closed).
  _track(_updatePendingCount().then(_deliverSubmissions));
}

_boot();

export default Switchboard;
