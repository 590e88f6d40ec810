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
use tracing::error;

use super::ui::ProjectUi;
use crate::auth::{Throttle, User, Users};
use crate::project::Project;
use crate::protocol::Reply;
use crate::session::Session;
use crate::store::{Store, Table, Write};

pub struct Runtime {
    pub(super) projects: RwLock<HashMap<String, Arc<Project>>>,
    pub sessions: crate::session::Sessions,
    pub(super) store: Store,
    pub(super) ui: DashMap<String, ProjectUi>,
    /// In-memory variables by `project\u{0}name`; names ending in `!` are
    /// also written to the store.
    pub(super) vars: DashMap<String, Dynamic>,
    /// Commands and submissions being run, by answer key.
    pub(super) in_flight: InFlight,
    /// Form submissions of a project run one at a time, so that their
    /// read-modify-write of shared variables cannot interleave.
    pub(super) form_locks: DashMap<String, Arc<std::sync::Mutex<()>>>,
    /// Open authentication challenges by id.
    pub(super) challenges: DashMap<String, PendingChallenge>,
    pub(super) shutdown: watch::Sender<bool>,
    /// The users file's contents, re-read at each login attempt.
    pub(super) users: RwLock<Users>,
    pub(super) users_path: PathBuf,
    pub throttle: Throttle,
    pub(super) projects_dir: PathBuf,
    /// Dev mode (`--dev`): compile errors and silent mistakes are pushed to
    /// the browsers. Never on by default: the messages name files.
    pub(super) dev_mode: std::sync::atomic::AtomicBool,
    pub(super) myself: Weak<Runtime>,
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
    ServerStop,
}

impl ShutdownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownReason::IdleTimeout => "IdleTimeout",
            ShutdownReason::Logout => "Logout",
            ShutdownReason::Terminated => "Terminated",
            ShutdownReason::ProjectRemoved => "ProjectRemoved",
            ShutdownReason::ServerStop => "ServerStop",
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
        self.vars
            .get(&Self::var_key(project, name))
            .map(|v| v.clone())
            .unwrap_or(Dynamic::UNIT)
    }

    /// Sets a variable; names ending in `!` are persisted (HSYCO's rule).
    pub fn var_set(&self, project: &str, name: &str, value: Dynamic) -> Result<(), String> {
        let key = Self::var_key(project, name);
        if name.ends_with('!') && !self.defer_var(&key) {
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
        if value.is_unit() {
            self.vars.remove(&key);
        } else {
            self.vars.insert(key, value);
        }
        Ok(())
    }

    pub(super) fn ui(&self, project: &str) -> dashmap::mapref::one::RefMut<'_, String, ProjectUi> {
        self.ui.entry(project.to_string()).or_default()
    }
}
