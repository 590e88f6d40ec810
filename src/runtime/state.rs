//! The running server's state: the projects served, the session table, the
//! store, pushed UI values, variables, claims being run, open challenges
//! and the users file; with the plain accessors every other part of the
//! runtime shares. Behaviour lives in the sibling modules (each adds its
//! methods to [`Runtime`]); this file only holds the data and the small
//! operations on it that need no callback.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rhai::Dynamic;
use tokio::sync::watch;
use tracing::{debug, error};

use super::ui::ProjectUi;
use crate::auth::{Throttle, User, Users};
use crate::project::Project;
use crate::protocol::Reply;
use crate::session::Session;
use crate::store::{Store, Table, Write};

pub struct Runtime {
    pub(super) projects: RwLock<HashMap<String, Arc<Project>>>,
    pub sessions: Arc<crate::session::Sessions>,
    pub(super) store: Arc<Store>,
    /// Live values from devices, per project (`crate::points`).
    pub points: Arc<crate::points::Points>,
    pub(super) ui: DashMap<String, ProjectUi>,
    /// In-memory variables by `project\u{0}name`; names ending in `!` are
    /// also written to the store.
    pub(super) vars: DashMap<String, Dynamic>,
    /// Which write each variable's value came from: a failed run undoes its
    /// change only if nobody wrote the variable since.
    pub(super) var_versions: DashMap<String, u64>,
    /// `varUpdate` calls run one at a time, so that no two interleave.
    pub(super) var_updates: std::sync::Mutex<()>,
    /// Runs that changed `!` variables queue their batches in the order of
    /// their first change (see `delivery::VarOrder`).
    pub(super) var_order: Arc<super::delivery::VarOrder>,
    /// Commands and submissions being run, by answer key.
    pub(super) in_flight: InFlight,
    /// Cluster mode: sessions whose record could not be written while NATS
    /// was unreachable, written again when it returns (`outage`).
    pub(super) unsaved_sessions: DashMap<String, ()>,
    /// Form submissions of a project run one at a time, so that their
    /// read-modify-write of shared variables cannot interleave.
    pub(super) form_locks: DashMap<String, Arc<std::sync::Mutex<()>>>,
    /// Open authentication challenges by id.
    pub(super) challenges: DashMap<String, PendingChallenge>,
    pub(super) shutdown: watch::Sender<bool>,
    /// The users file's contents, re-read at each login attempt.
    pub(super) users: RwLock<Users>,
    pub(super) users_path: PathBuf,
    /// When the users file was last read (its modification time): the idle
    /// sweep re-reads it when that changes.
    pub(super) users_modified: std::sync::Mutex<Option<std::time::SystemTime>>,
    /// Projects whose files exist but failed to load at start: their stored
    /// sessions wait, to be ended once the project loads.
    pub(super) unrunnable: DashMap<String, ()>,
    pub throttle: Throttle,
    pub(super) projects_dir: PathBuf,
    /// Dev mode (`--dev`): compile errors and silent mistakes are pushed to
    /// the browsers. Never on by default: the messages name files.
    pub(super) dev_mode: std::sync::atomic::AtomicBool,
    /// Cluster mode: the projects' leases, which decide where the
    /// once-per-cluster work runs (`lease.rs`); `None` on one node.
    pub(super) leases: Option<crate::cluster::Leases>,
    pub(super) myself: Weak<Runtime>,
    /// Cluster mode: the pushes to and from the other nodes (`fanout`).
    pub(super) bus: std::sync::OnceLock<crate::cluster::Bus>,
}

/// Why `varUpdate` changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum VarUpdateError<E> {
    /// The update function itself called `varUpdate`.
    #[error("varUpdate cannot be called inside a varUpdate function")]
    Nested,
    /// The update function failed.
    #[error("the varUpdate function failed")]
    Update(E),
    /// The new value cannot be stored.
    #[error("{0}")]
    Store(String),
}

/// Claims being run, by answer key: anyone repeating one waits for its answer.
pub type InFlight = DashMap<String, watch::Receiver<Option<Reply>>>;

/// An authentication challenge waiting for the user.
pub struct PendingChallenge {
    pub session: String,
    pub project: String,
    pub payload: serde_json::Value,
    pub opened: Instant,
    pub timeout: Duration,
}

/// Why a session ended, as `sessionShutdown` receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    IdleTimeout,
    Logout,
    Terminated,
    ProjectRemoved,
    /// The user was removed from the users file, or lost the role the
    /// project needs (the Perspective seed's "the user losing authorization").
    AuthorizationLost,
    /// The project failed to load at start (the seed's "made unrunnable");
    /// reported once it loads again, so that its `sessionShutdown` can run.
    ProjectUnavailable,
}

impl ShutdownReason {
    /// The reason [`ShutdownReason::as_str`] names.
    pub fn named(name: &str) -> Option<ShutdownReason> {
        use ShutdownReason::*;
        [
            IdleTimeout,
            Logout,
            Terminated,
            ProjectRemoved,
            AuthorizationLost,
            ProjectUnavailable,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownReason::IdleTimeout => "IdleTimeout",
            ShutdownReason::Logout => "Logout",
            ShutdownReason::Terminated => "Terminated",
            ShutdownReason::ProjectRemoved => "ProjectRemoved",
            ShutdownReason::AuthorizationLost => "AuthorizationLost",
            ShutdownReason::ProjectUnavailable => "ProjectUnavailable",
        }
    }
}

/// Who sent a frame: the browser tab (when known) and the client address,
/// for the logs.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub tab: Option<String>,
    pub address: String,
}

impl Runtime {
    pub fn project(&self, name: &str) -> Option<Arc<Project>> {
        self.projects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn project_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .projects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    pub(super) fn remove_project(&self, name: &str) -> Option<Arc<Project>> {
        self.points.stop_project(name);
        self.projects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    /// Turns dev mode on or off (see [`Runtime::dev_mode`]).
    pub fn set_dev_mode(&self, on: bool) {
        self.dev_mode
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether errors and mistakes are shown in the browsers.
    pub fn dev_mode(&self) -> bool {
        self.dev_mode.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Shows a mistake in the dev overlay of a session's browsers (dev mode
    /// only). `message` must name files relative to the project.
    pub fn dev_notice(&self, session: &Session, message: &str) {
        if self.dev_mode() {
            session.push(&crate::protocol::Push::DevNotice { message }.to_frame());
        }
    }

    pub fn projects_dir(&self) -> &Path {
        &self.projects_dir
    }

    /// Whether `page` is a page of the project that the session's user may
    /// open. Every page name a client sends is checked here before anything
    /// runs or is stored.
    pub fn may_show_page(&self, project: &Project, session: &Session, page: &str) -> bool {
        project.pages.contains_key(page)
            && project.settings.access.allows_page(
                page,
                &session.userid,
                &self.roles_of(&session.userid),
            )
    }

    /// The roles of a user (none for anonymous or unknown users).
    pub fn roles_of(&self, user: &str) -> Vec<String> {
        if user.is_empty() {
            return Vec::new();
        }
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .roles_of(user)
            .to_vec()
    }

    /// Whether the session's user still exists and may use the project
    /// (anonymous sessions always may: `[access]` decides on each request).
    pub fn still_authorized(&self, project: &Project, session: &Session) -> bool {
        if session.userid.is_empty() {
            return true;
        }
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        users.get(&session.userid).is_some()
            && project
                .settings
                .access
                .allows_project(&session.userid, users.roles_of(&session.userid))
    }

    /// Re-reads the users file if it changed since it was last read;
    /// returns whether it did.
    pub(super) fn reload_users_if_changed(&self) -> bool {
        let modified = std::fs::metadata(&self.users_path)
            .and_then(|meta| meta.modified())
            .ok();
        let mut last = self
            .users_modified
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *last == modified {
            return false;
        }
        *last = modified;
        match Users::load(&self.users_path) {
            Ok(users) => {
                *self.users.write().unwrap_or_else(|p| p.into_inner()) = users;
                true
            }
            Err(error) => {
                error!("users file not re-read, using the last good one: {error}");
                false
            }
        }
    }

    /// Checks a password against the users file, re-read so that
    /// `switchboard passwd` takes effect without a restart. Blocking: hashing
    /// is deliberately slow.
    pub fn verify_password(&self, user: &str, password: &str) -> Option<User> {
        crate::metrics::METRICS.password_check();
        match Users::load(&self.users_path) {
            Ok(users) => *self.users.write().unwrap_or_else(|p| p.into_inner()) = users,
            Err(error) => error!("users file not re-read, using the last good one: {error}"),
        }
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .verify(user, password)
            .cloned()
    }

    /// The kind of store and whether it is reachable, for `/healthz`.
    pub fn store_health(&self) -> crate::store::Health {
        self.store.health()
    }

    /// Whether the server has begun to stop.
    pub fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Receives `true` when the server stops.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(super) fn arc(&self) -> Option<Arc<Runtime>> {
        self.myself.upgrade()
    }

    /// Writes the session's persisted part to the store (or to the running
    /// handler's transaction: see `delivery`). Written behind: the next
    /// group commit makes it durable, nobody waits for it.
    pub fn persist(&self, session: &Session) {
        if session.has_ended() || self.defer_session(&session.id) {
            return;
        }
        let record = session.record();
        match serde_json::to_vec(&record) {
            // In cluster mode the write is waited for: the session's next
            // request may go to another node.
            Ok(bytes) if self.store.is_shared() => {
                if let Err(error) = self.store.put(Table::Sessions, &session.id, &bytes) {
                    error!(
                        session = session.log_id(),
                        "could not write the session to the shared store: {error}"
                    );
                    self.remember_unsaved(&session.id);
                }
            }
            Ok(bytes) => {
                drop(self.store.write_soon(vec![Write::Put(
                    Table::Sessions,
                    session.id.clone(),
                    bytes,
                )]));
            }
            Err(error) => error!(
                session = session.log_id(),
                "could not serialize the session: {error}"
            ),
        }
    }

    // ------------------------------------------------------------ variables

    pub(super) fn var_key(project: &str, name: &str) -> String {
        format!("{project}\u{0}{name}")
    }

    pub(super) fn load_vars(&self, project: &str) {
        let prefix = Self::var_key(project, "");
        match self.store.scan(Table::Vars, &prefix) {
            Ok(vars) => {
                for (key, bytes) in vars {
                    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
                        && let Ok(value) = rhai::serde::to_dynamic(value)
                    {
                        self.vars.insert(key, value);
                    }
                }
            }
            Err(error) => error!(project, "could not read stored variables: {error}"),
        }
    }

    pub fn var_get(&self, project: &str, name: &str) -> Dynamic {
        let key = Self::var_key(project, name);
        if name.ends_with('!') && self.store.is_shared() && !self.var_is_deferred(&key) {
            self.refresh_shared_var(&key);
        }
        self.vars
            .get(&key)
            .map(|v| v.clone())
            .unwrap_or(Dynamic::UNIT)
    }

    /// Reads a persisted variable from the shared store into memory (another
    /// node may have set it). NATS unreachable: the last value seen stays.
    fn refresh_shared_var(&self, key: &str) {
        match self.store.get(Table::Vars, key) {
            Ok(Some(bytes)) => {
                if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
                    && let Ok(value) = rhai::serde::to_dynamic(value)
                {
                    self.write_var(key, value);
                }
            }
            Ok(None) => {
                self.write_var(key, Dynamic::UNIT);
            }
            // The lost connection was logged once; this is every read.
            Err(error) => debug!("variable read from memory, the shared store failed: {error}"),
        }
    }

    /// Sets a variable; names ending in `!` are persisted (HSYCO's rule).
    pub fn var_set(&self, project: &str, name: &str, value: Dynamic) -> Result<(), String> {
        let key = Self::var_key(project, name);
        if !value.is_unit() && name.ends_with('!') {
            // Refused before anything changes, in a batch too.
            rhai::serde::from_dynamic::<serde_json::Value>(&value)
                .map_err(|e| format!("variable `{name}` cannot be stored: {e}"))?;
        }
        let deferred = self.defer_var(&key, name.ends_with('!'));
        if name.ends_with('!') && !deferred {
            if value.is_unit() {
                self.store
                    .delete(Table::Vars, &key)
                    .map_err(|e| e.to_string())?;
            } else {
                let json: serde_json::Value = rhai::serde::from_dynamic(&value)
                    .map_err(|e| format!("variable `{name}` cannot be stored: {e}"))?;
                let bytes = serde_json::to_vec(&json).map_err(|e| e.to_string())?;
                self.store
                    .put(Table::Vars, &key, &bytes)
                    .map_err(|e| e.to_string())?;
            }
        }
        if deferred {
            let version = self.write_var(&key, value.clone());
            self.wrote_var(&key, version, &value);
        } else {
            self.write_var(&key, value);
        }
        Ok(())
    }

    /// Changes a variable in memory (`()` removes it); returns the write's
    /// version.
    pub(super) fn write_var(&self, key: &str, value: Dynamic) -> u64 {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let version = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if value.is_unit() {
            self.vars.remove(key);
        } else {
            self.vars.insert(key.to_string(), value);
        }
        self.var_versions.insert(key.to_string(), version);
        version
    }

    /// `varUpdate(name, f)`: sets the variable to `f(current value)` with no
    /// other `varUpdate` in between, so that concurrent read-modify-writes
    /// (a counter two panels bump at once) never lose one. Returns the new
    /// value. In cluster mode a `!` variable is updated by compare-and-set
    /// on its revision in the shared store, `f` called again on the newer
    /// value when another node wrote first.
    pub fn var_update<E>(
        &self,
        project: &str,
        name: &str,
        mut update: impl FnMut(Dynamic) -> Result<Dynamic, E>,
    ) -> Result<Dynamic, VarUpdateError<E>> {
        thread_local! {
            static UPDATING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        // `f` calling varUpdate again would wait for itself.
        if UPDATING.get() {
            return Err(VarUpdateError::Nested);
        }
        let _one_at_a_time = self
            .var_updates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut guarded = |current| {
            UPDATING.set(true);
            let next = update(current);
            UPDATING.set(false);
            next.map_err(VarUpdateError::Update)
        };
        if name.ends_with('!') && self.store.is_shared() {
            return self.var_update_shared(&Self::var_key(project, name), &mut guarded);
        }
        let next = guarded(self.var_get(project, name))?;
        self.var_set(project, name, next.clone())
            .map_err(VarUpdateError::Store)?;
        Ok(next)
    }

    /// `varUpdate` of a `!` variable in cluster mode: read with its
    /// revision, compute, store if nobody wrote since, else again. Written
    /// at once, not with the run's batch (a compare-and-set cannot wait for
    /// it), so the run's claim is marked `committing` first: from here on
    /// a repeat never runs the command again. Not undone if the run fails
    /// afterwards.
    fn var_update_shared<E>(
        &self,
        key: &str,
        update: &mut impl FnMut(Dynamic) -> Result<Dynamic, VarUpdateError<E>>,
    ) -> Result<Dynamic, VarUpdateError<E>> {
        /// Attempts before giving up: each lost one means another node
        /// stored a new value, so the variable is moving, not stuck.
        const ATTEMPTS: usize = 100;
        let failed = |e: crate::store::StoreError| VarUpdateError::Store(e.to_string());
        self.commit_claim_now().map_err(VarUpdateError::Store)?;
        for _ in 0..ATTEMPTS {
            let (bytes, revision) = self.store.get_versioned(Table::Vars, key).map_err(failed)?;
            let current = bytes
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|json| rhai::serde::to_dynamic(json).ok())
                .unwrap_or(Dynamic::UNIT);
            let next = update(current)?;
            let json: serde_json::Value = rhai::serde::from_dynamic(&next).map_err(|e| {
                VarUpdateError::Store(format!("the variable cannot be stored: {e}"))
            })?;
            let bytes =
                serde_json::to_vec(&json).map_err(|e| VarUpdateError::Store(e.to_string()))?;
            match self.store.put_at(Table::Vars, key, bytes, revision) {
                Ok(true) => {
                    self.write_var(key, next.clone());
                    return Ok(next);
                }
                Ok(false) => {}
                Err(error) => {
                    // Sent, unanswered: perhaps stored.
                    self.mark_uncertain();
                    return Err(failed(error));
                }
            }
        }
        Err(VarUpdateError::Store(format!(
            "varUpdate gave up after {ATTEMPTS} attempts: other nodes kept writing the variable"
        )))
    }

    pub(super) fn ui(&self, project: &str) -> dashmap::mapref::one::RefMut<'_, String, ProjectUi> {
        self.ui.entry(project.to_string()).or_default()
    }
}
