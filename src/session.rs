//! Sessions: who each belongs to, what the server remembers for it (custom
//! properties, last valid values for rollback, which command opened each
//! page, pushed UI attributes, scopes, open tabs), and the browser
//! connections frames are pushed to.
//!
//! This module holds data and its invariants only; running handlers and
//! deciding when a session starts or ends is `runtime`'s business. A
//! session's persisted part round-trips through [`SessionRecord`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

/// Frames pushed while no browser is connected wait here, up to this many;
/// the oldest go first (a browser gone that long reloads current UI state
/// on reconnect anyway).
const MAX_PENDING_PUSHES: usize = 64;

/// Browser tabs a session remembers the page of. Closed tabs are never
/// reported, so the oldest-keyed one is forgotten past this (it gets
/// `pageStartup` again if it comes back); without a cap a client could grow
/// the session record, rewritten on every change, without bound.
pub const MAX_TABS: usize = 16;

/// A frame ready to send: text, serialized once however many sessions get
/// it, and cloned by sharing its bytes. Transports turn it into their own
/// message type without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(bytes::Bytes);

impl Frame {
    pub fn as_str(&self) -> &str {
        // Built only from `str`s: always valid.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn starts_with(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix.as_bytes())
    }

    /// The frame's UTF-8 bytes, shared.
    pub fn into_bytes(self) -> bytes::Bytes {
        self.0
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Frame {
        Frame(bytes::Bytes::from(text))
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Frame {
        Frame(bytes::Bytes::copy_from_slice(text.as_bytes()))
    }
}

/// All live sessions of all projects.
#[derive(Default)]
pub struct Sessions {
    by_id: DashMap<String, Arc<Session>>,
}

impl Sessions {
    /// Starts a session of `project` for `userid` (`""` when anonymous).
    pub fn create(&self, project: &str, userid: &str) -> Arc<Session> {
        let session = Arc::new(Session::new(
            new_session_id(),
            project,
            userid,
            SessionState::default(),
        ));
        self.by_id.insert(session.id.clone(), session.clone());
        session
    }

    /// Puts back a session read from the store.
    pub fn restore(&self, record: SessionRecord) -> Arc<Session> {
        let session = Arc::new(Session::new(
            record.id,
            &record.project,
            &record.userid,
            record.state,
        ));
        self.by_id.insert(session.id.clone(), session.clone());
        session
    }

    /// The session with this id, if it exists and belongs to `project`.
    pub fn get(&self, id: &str, project: &str) -> Option<Arc<Session>> {
        let session = self.by_id.get(id)?;
        (session.project == project).then(|| session.clone())
    }

    /// The session with this id, whatever its project.
    pub fn by_id(&self, id: &str) -> Option<Arc<Session>> {
        self.by_id.get(id).map(|s| s.clone())
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.by_id.remove(id).map(|(_, session)| session)
    }

    /// Every live session of `project`.
    pub fn of_project(&self, project: &str) -> Vec<Arc<Session>> {
        self.by_id
            .iter()
            .filter(|s| s.project == project)
            .map(|s| s.clone())
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.by_id.iter().map(|s| s.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// 122 random bits (UUID v4) from the OS generator: session ids are bearer
/// credentials, so they must not be guessable.
fn new_session_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The persisted part of a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionState {
    /// Custom properties, set by scripts, read by scripts and templates.
    pub properties: serde_json::Map<String, Value>,
    /// Object id → param of its last command that was not refused.
    pub last_valid: HashMap<String, String>,
    /// Page name → the command whose answer opened it.
    pub openers: HashMap<String, Opener>,
    /// Scopes this session receives `uiSessionSet(scope, …)` pushes of.
    pub scopes: BTreeSet<String>,
    /// UI attributes pushed to this session alone: object id → attr → value.
    pub ui: BTreeMap<String, BTreeMap<String, Value>>,
    /// Browser tab id → the page it shows.
    pub tabs: BTreeMap<String, String>,
    /// The `Accept-Language` of the browser that last loaded a page: what
    /// picks the language of texts when the user chose none.
    pub accept_language: String,
}

impl SessionState {
    /// Records that `tab` shows `page`; returns the page it showed before
    /// (`None`: a new tab). Keeps at most [`MAX_TABS`] tabs.
    pub fn show_in_tab(&mut self, tab: &str, page: &str) -> Option<String> {
        if !self.tabs.contains_key(tab)
            && self.tabs.len() >= MAX_TABS
            && let Some(forgotten) = self.tabs.keys().next().cloned()
        {
            self.tabs.remove(&forgotten);
        }
        self.tabs.insert(tab.to_string(), page.to_string())
    }

    /// The pages the session's tabs show, without repeats, in order.
    pub fn pages(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.tabs.values().collect();
        set.into_iter().cloned().collect()
    }
}

/// The command that opened a page, called again with `/close` when it closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opener {
    pub object: Option<String>,
    pub name: String,
    pub param: String,
}

/// How a session is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub project: String,
    pub userid: String,
    pub state: SessionState,
    /// When a browser or a request last used the session, in milliseconds
    /// since the epoch, as of the write: in cluster mode the lease holder
    /// ends sessions whose record says they are idle past the timeout.
    /// `None` in records written before it existed (never expired so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// One user's session of one project.
pub struct Session {
    pub id: String,
    pub project: String,
    pub userid: String,
    state: Mutex<SessionState>,
    live: Mutex<Live>,
}

/// What a session has only while the server runs.
struct Live {
    connections: Vec<Connection>,
    pending: VecDeque<Frame>,
    /// When the last browser left (or the session started); `None` while
    /// a browser is connected.
    idle_since: Option<Instant>,
    /// Handler runs stopped by a limit since the last one that completed.
    limit_stops: u32,
    /// Set for sessions read back from the store until `sessionRestored` ran.
    restored: Option<&'static str>,
    ended: bool,
}

struct Connection {
    id: u64,
    frames: mpsc::Sender<Frame>,
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// A lock poisoned by a panicking thread still guards plain data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Session {
    fn new(id: String, project: &str, userid: &str, state: SessionState) -> Session {
        Session {
            id,
            project: project.to_string(),
            userid: userid.to_string(),
            state: Mutex::new(state),
            live: Mutex::new(Live {
                connections: Vec::new(),
                pending: VecDeque::new(),
                idle_since: Some(Instant::now()),
                limit_stops: 0,
                restored: None,
                ended: false,
            }),
        }
    }

    /// The id as it appears in logs: a prefix, since the full id is a credential.
    pub fn log_id(&self) -> &str {
        &self.id[..8.min(self.id.len())]
    }

    /// Reads or changes the persisted state; returns what `change` returns.
    pub fn with_state<R>(&self, change: impl FnOnce(&mut SessionState) -> R) -> R {
        change(&mut lock(&self.state))
    }

    pub fn record(&self) -> SessionRecord {
        SessionRecord {
            id: self.id.clone(),
            project: self.project.clone(),
            userid: self.userid.clone(),
            state: lock(&self.state).clone(),
            last_seen: Some(self.last_seen_millis()),
        }
    }

    /// When the session was last used, in milliseconds since the epoch
    /// (now while a browser is connected).
    pub fn last_seen_millis(&self) -> u64 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(self.idle_for());
        u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
    }

    /// The last valid value of an object, as rollback would restore it.
    pub fn last_valid_value(&self, object: &str) -> Option<String> {
        lock(&self.state).last_valid.get(object).cloned()
    }

    /// Registers a browser connection; frames pushed while none was
    /// connected are sent to it first.
    pub fn connect(&self, frames: mpsc::Sender<Frame>) -> u64 {
        let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        let mut live = lock(&self.live);
        while let Some(frame) = live.pending.pop_front() {
            // UI values arrive in the snapshot sent on connect; a queued
            // copy would apply them twice.
            if !frame.starts_with(r#"{"type":"ui""#) {
                let _ = frames.try_send(frame);
            }
        }
        live.connections.push(Connection { id, frames });
        live.idle_since = None;
        id
    }

    pub fn disconnect(&self, connection: u64) {
        let mut live = lock(&self.live);
        live.connections.retain(|c| c.id != connection);
        if live.connections.is_empty() {
            live.idle_since = Some(Instant::now());
        }
    }

    /// Activity without a connection (an HTTP request) restarts the idle clock.
    pub fn touch(&self) {
        let mut live = lock(&self.live);
        if live.idle_since.is_some() {
            live.idle_since = Some(Instant::now());
        }
    }

    pub fn is_connected(&self) -> bool {
        !lock(&self.live).connections.is_empty()
    }

    /// How long no browser has been connected (zero while one is).
    pub fn idle_for(&self) -> Duration {
        lock(&self.live)
            .idle_since
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Sends a frame to every connected browser of the session, or keeps it
    /// for the next one. A browser too slow to take it misses it rather
    /// than slowing everyone else down.
    pub fn push(&self, frame: &Frame) {
        self.try_push(frame);
    }

    /// [`Session::push`], telling whether every connected browser took the
    /// frame: `false` when one's queue was full, for a caller that can send
    /// the current state again later (live point values).
    pub fn try_push(&self, frame: &Frame) -> bool {
        crate::metrics::METRICS.push();
        let mut live = lock(&self.live);
        if live.ended {
            return true;
        }
        if live.connections.is_empty() {
            if live.pending.len() == MAX_PENDING_PUSHES {
                live.pending.pop_front();
            }
            live.pending.push_back(frame.clone());
            return true;
        }
        let mut delivered = true;
        live.connections
            .retain(|c| match c.frames.try_send(frame.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    delivered = false;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        delivered
    }

    /// Counts a handler run stopped by a limit; returns the count so far.
    pub fn count_limit_stop(&self) -> u32 {
        let mut live = lock(&self.live);
        live.limit_stops += 1;
        live.limit_stops
    }

    /// A handler completed: the session is not stuck.
    pub fn clear_limit_stops(&self) {
        lock(&self.live).limit_stops = 0;
    }

    pub fn mark_restored(&self, kind: &'static str) {
        lock(&self.live).restored = Some(kind);
    }

    /// The restore type, the first time it is asked for after a restart.
    pub fn take_restored(&self) -> Option<&'static str> {
        lock(&self.live).restored.take()
    }

    /// Marks the session ended: no more pushes; its connections are told to
    /// close by dropping their frame senders. Returns `false` when it had
    /// already ended (so shutdown runs once).
    pub fn end(&self) -> bool {
        let mut live = lock(&self.live);
        if live.ended {
            return false;
        }
        live.ended = true;
        live.connections.clear();
        live.pending.clear();
        true
    }

    pub fn has_ended(&self) -> bool {
        lock(&self.live).ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: a client opening ever new tabs grew the session record
    /// (rewritten on every change) without bound.
    #[test]
    fn a_session_remembers_at_most_max_tabs() {
        let mut state = SessionState::default();
        for tab in 0..MAX_TABS * 3 {
            assert_eq!(state.show_in_tab(&format!("tab-{tab:03}"), "home"), None);
        }
        assert_eq!(state.tabs.len(), MAX_TABS);
        let newest = format!("tab-{:03}", MAX_TABS * 3 - 1);
        assert_eq!(state.show_in_tab(&newest, "other"), Some("home".into()));
        assert_eq!(state.tabs.len(), MAX_TABS, "a known tab takes no room");
    }

    #[test]
    fn session_ids_are_long_and_distinct() {
        let sessions = Sessions::default();
        let a = sessions.create("p", "");
        let b = sessions.create("p", "");
        assert_eq!(a.id.len(), 32);
        assert_ne!(a.id, b.id);
        assert!(sessions.get(&a.id, "p").is_some());
        assert!(
            sessions.get(&a.id, "other").is_none(),
            "a session belongs to one project"
        );
    }

    #[test]
    fn pushes_wait_for_a_connection_and_are_bounded() {
        let session = Sessions::default().create("p", "");
        for n in 0..(MAX_PENDING_PUSHES + 5) {
            session.push(&Frame::from(n.to_string()));
        }
        let (tx, mut rx) = mpsc::channel(1000);
        session.connect(tx);
        assert_eq!(
            rx.try_recv().unwrap().as_str(),
            "5",
            "the oldest were dropped"
        );
        session.push(&Frame::from("live"));
        let mut last = None;
        while let Ok(frame) = rx.try_recv() {
            last = Some(frame);
        }
        assert_eq!(last.as_ref().map(Frame::as_str), Some("live"));
    }

    #[test]
    fn idle_time_counts_only_without_connections() {
        let session = Sessions::default().create("p", "");
        let (tx, _rx) = mpsc::channel(1);
        let connection = session.connect(tx);
        assert_eq!(session.idle_for(), Duration::ZERO);
        session.disconnect(connection);
        assert!(!session.is_connected());
        std::thread::sleep(Duration::from_millis(5));
        assert!(session.idle_for() >= Duration::from_millis(5));
    }

    #[test]
    fn records_round_trip() {
        let sessions = Sessions::default();
        let session = sessions.create("p", "ann");
        session.with_state(|s| {
            s.properties.insert("room".into(), Value::from("lobby"));
            s.tabs.insert("t1".into(), "home".into());
            s.tabs.insert("t2".into(), "home".into());
        });
        let record = session.record();
        let json = serde_json::to_vec(&record).unwrap();
        let back: SessionRecord = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.state.pages(), ["home"]);
    }

    #[test]
    fn an_ended_session_takes_no_pushes() {
        let session = Sessions::default().create("p", "");
        assert!(session.end());
        assert!(!session.end(), "ends once");
        session.push(&Frame::from("x"));
        let (tx, mut rx) = mpsc::channel(4);
        session.connect(tx);
        assert!(rx.try_recv().is_err());
    }
}
