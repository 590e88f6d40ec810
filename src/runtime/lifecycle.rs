//! The life of projects and sessions: starting the runtime (store, users,
//! projects, the sessions of the last run), loading and hot-reloading
//! projects, starting and ending sessions with their events, the idle
//! sweep, logging in, and the clean stop.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::state::{Runtime, ShutdownReason};
use super::{events, handlers, lease, schedule};
use crate::auth::{AuthError, Throttle, Users};
use crate::project::{self, LoadError, Project};
use crate::protocol::Push;
use crate::script;
use crate::session::{Session, SessionRecord, Sessions};
use crate::store::{Store, StoreError, Table, Write};

/// Meta key set while the server runs: found set at start-up, the last run
/// ended in a crash.
const RUNNING_KEY: &str = "running";

/// How often idle sessions are looked for.
const IDLE_SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Expired answers are deleted every this many sweeps (about a minute).
const PRUNE_EVERY_SWEEPS: u64 = 120;

/// Where the runtime keeps what it persists, chosen once at start.
#[derive(Debug, Clone, Copy)]
pub enum StoreChoice<'a> {
    /// This node's own database file (the default).
    Embedded(&'a Path),
    /// The NATS JetStream buckets of a cluster (`--cluster`), as node
    /// `node`, with leases of `lease` for the once-per-cluster work.
    Cluster {
        url: &'a str,
        node: &'a str,
        lease: Duration,
        /// Copies of each bucket, when this node creates it.
        replicas: usize,
    },
}

impl Runtime {
    /// Opens the store, loads the projects under `projects_dir` and the
    /// sessions of the last run. Broken projects are logged and skipped.
    pub fn start(
        projects_dir: &Path,
        store: StoreChoice<'_>,
        users_path: &Path,
    ) -> Result<Arc<Runtime>, StartupError> {
        let users = Users::load(users_path)?;
        let mut private = vec![("users file", users_path)];
        let node = match store {
            StoreChoice::Cluster { node, .. } => Some(node.to_string()),
            StoreChoice::Embedded(_) => None,
        };
        let choice = store;
        let (store, leases) = match store {
            StoreChoice::Embedded(database) => {
                private.push(("database", database));
                (Store::open(database)?, None)
            }
            StoreChoice::Cluster {
                url,
                node,
                lease,
                replicas,
            } => {
                let store = Store::connect_shared(url, node, replicas)?;
                let leases = lease::start_leases(&store, node, lease)?;
                (store, leases)
            }
        };
        for (what, path) in private {
            if let Some(mode) = crate::auth::readable_by_others(path) {
                warn!(
                    "the {what} {} is readable by other users (mode {mode:o}); it holds secrets: chmod 600 it",
                    path.display()
                );
            }
        }
        // A node of a cluster neither restores every shared session at
        // start (they come back one by one when asked for: `session`) nor
        // keeps a crash marker in buckets other nodes share.
        let crashed = if store.is_shared() {
            None
        } else {
            let crashed = store.get(Table::Meta, RUNNING_KEY)?.is_some();
            store.put(Table::Meta, RUNNING_KEY, b"1")?;
            Some(crashed)
        };
        let sessions = Arc::new(Sessions::default());
        let store = Arc::new(store);
        let runtime = Arc::new_cyclic(|myself| Runtime {
            projects: RwLock::default(),
            points: Arc::new(crate::points::Points::new(
                sessions.clone(),
                store.clone(),
                node,
            )),
            sessions,
            store,
            ui: DashMap::new(),
            vars: DashMap::new(),
            var_versions: DashMap::new(),
            var_updates: std::sync::Mutex::new(()),
            var_order: Default::default(),
            in_flight: DashMap::new(),
            unsaved_sessions: DashMap::new(),
            form_locks: DashMap::new(),
            challenges: DashMap::new(),
            shutdown: watch::channel(false).0,
            users: RwLock::new(users),
            users_path: users_path.to_path_buf(),
            users_modified: std::sync::Mutex::new(
                std::fs::metadata(users_path)
                    .and_then(|meta| meta.modified())
                    .ok(),
            ),
            unrunnable: DashMap::new(),
            throttle: Throttle::default(),
            projects_dir: projects_dir.to_path_buf(),
            dev_mode: std::sync::atomic::AtomicBool::new(false),
            leases,
            myself: myself.clone(),
            bus: std::sync::OnceLock::new(),
        });
        if let StoreChoice::Cluster { url, node, .. } = choice {
            // Before the projects load their kept UI values: nothing pushed
            // in between is missed.
            runtime.join_pushes(url, node)?;
        }
        let loaded = project::load_all(projects_dir, &runtime.host_registration())?;
        for (dir, error) in &loaded.failed {
            error!(
                "project {} is not served, it has errors:\n{error}",
                dir.display()
            );
            if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
                runtime.unrunnable.insert(name.to_string(), ());
            }
        }
        for project in loaded.projects {
            runtime.load_vars(&project.name);
            runtime.load_kept_ui(&project.name);
            // Before anyone can open it: the first page sees its state. In
            // a cluster, once per cluster start (`lease.rs`).
            if runtime.starts_project_here(&project.name) {
                project_startup(&project);
            }
            runtime.insert_project(project);
        }
        if let Some(crashed) = crashed {
            runtime.restore_sessions(if crashed { "failure" } else { "persisted" });
        }
        Ok(runtime)
    }

    pub(super) fn insert_project(&self, project: Project) -> Option<Arc<Project>> {
        let project = Arc::new(project);
        schedule::start_timers(self.myself.clone(), &project);
        super::points::start(self.myself.clone(), &self.points, &project);
        self.projects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(project.name.clone(), project)
    }

    /// Starts a session and runs `sessionStartup` for it in the background.
    pub fn start_session(&self, project: &Arc<Project>, userid: &str) -> Arc<Session> {
        let session = self.sessions.create(&project.name, userid);
        self.persist(&session);
        info!(project = %project.name, session = session.log_id(), "session started");
        if let Some(runtime) = self.arc() {
            let (project, session) = (project.clone(), session.clone());
            tokio::spawn(
                async move { events::session_startup(&runtime, &project, &session).await },
            );
        }
        session
    }

    /// The live session `id` of `project` for a request. In cluster mode
    /// the shared record is the truth unless one of this node's sockets
    /// holds the session: a session another node created or changed is
    /// read (again) from the store, one that ended elsewhere is forgotten.
    /// NATS unreachable: the node serves what it has.
    pub fn session(&self, id: &str, project: &str) -> Option<Arc<Session>> {
        let local = self.sessions.get(id, project);
        if !self.store.is_shared() || local.as_ref().is_some_and(|s| s.is_connected()) {
            return local;
        }
        let bytes = match self.store.get(Table::Sessions, id) {
            Ok(bytes) => bytes,
            // The lost connection was logged once; this is every request.
            Err(error) => {
                debug!("shared session store unreachable, serving this node's copy: {error}");
                return local;
            }
        };
        let record = bytes.and_then(|b| serde_json::from_slice::<SessionRecord>(&b).ok());
        match (record, local) {
            (Some(record), _) if record.project != project => None,
            (Some(record), Some(session)) => {
                session.with_state(|state| *state = record.state);
                Some(session)
            }
            (Some(record), None) if self.project(&record.project).is_some() => {
                let session = self.sessions.restore(record);
                // Its panel gets a page served by this node: once, when
                // its socket opens here (docs/cluster.md).
                session.mark_restored("newdoc");
                info!(
                    project,
                    session = session.log_id(),
                    "session resumed from the shared store"
                );
                Some(session)
            }
            (Some(_), None) => None,
            (None, local) => {
                if let Some(session) = local {
                    self.forget_session(&session, "it ended on another node");
                }
                None
            }
        }
    }

    /// Drops this node's copy of a session without ending it (no event,
    /// nothing deleted): in cluster mode the shared record decides.
    fn forget_session(&self, session: &Arc<Session>, why: &str) {
        self.sessions.remove(&session.id);
        info!(project = %session.project, session = session.log_id(), "session forgotten by this node: {why}");
    }

    fn restore_sessions(&self, kind: &'static str) {
        let records = match self.store.scan(Table::Sessions, "") {
            Ok(records) => records,
            Err(error) => {
                error!("could not read stored sessions: {error}");
                return;
            }
        };
        let mut restored = 0;
        for (id, bytes) in records {
            match serde_json::from_slice::<SessionRecord>(&bytes) {
                Ok(record) if self.project(&record.project).is_some() => {
                    self.sessions.restore(record).mark_restored(kind);
                    restored += 1;
                }
                // Kept until the project loads: then they end, with its
                // sessionShutdown (see `end_waiting_sessions`).
                Ok(record) if self.unrunnable.contains_key(&record.project) => {}
                Ok(_) | Err(_) => {
                    drop(
                        self.store
                            .write_soon(vec![Write::Delete(Table::Sessions, id)]),
                    );
                }
            }
        }
        if restored > 0 {
            info!("restored {restored} sessions ({kind})");
        }
    }

    /// Ends a session: `sessionShutdown(session, reason)`, then it is gone
    /// from memory and the store, and its browsers are told.
    pub async fn end_session(&self, session: &Arc<Session>, reason: ShutdownReason) {
        if let (Some(project), Some(runtime)) = (self.project(&session.project), self.arc()) {
            events::session_shutdown(&runtime, &project, session, reason).await;
        }
        self.close_here(session, reason).await;
        drop(
            self.store
                .write_soon(vec![Write::Delete(Table::Sessions, session.id.clone())]),
        );
        self.publish(
            &session.project,
            &super::fanout::Remote::Ended {
                session: session.id.clone(),
                reason: reason.as_str().to_string(),
            },
        );
        self.forget_replies(&session.id);
        info!(project = %session.project, session = session.log_id(), reason = reason.as_str(), "session ended");
    }

    /// Tells the session's browsers on this node that it ended, closes
    /// their connections and drops the session from memory.
    pub(super) async fn close_here(&self, session: &Arc<Session>, reason: ShutdownReason) {
        session.push(
            &Push::SessionEnded {
                reason: reason.as_str(),
            }
            .to_frame(),
        );
        // Let the close notice reach connected browsers before their
        // connections are dropped.
        tokio::time::sleep(Duration::from_millis(20)).await;
        session.end();
        self.sessions.remove(&session.id);
    }

    /// Looks for sessions idle past their project's timeout, forever.
    pub async fn sweep_idle_sessions(self: Arc<Self>) {
        let mut tick = tokio::time::interval(IDLE_SWEEP_INTERVAL);
        let mut sweeps: u64 = 0;
        loop {
            tick.tick().await;
            sweeps += 1;
            if sweeps % PRUNE_EVERY_SWEEPS == 1 {
                let runtime = self.clone();
                let _ = script::run_off_async(move || runtime.prune_answers()).await;
            }
            self.end_unauthorized_sessions().await;
            self.expire_shared_sessions(sweeps, IDLE_SWEEP_INTERVAL)
                .await;
            self.catch_up_after_outage().await;
            for session in self.sessions.all() {
                // Connected sessions are the many; skip them before the
                // project lookup.
                if session.is_connected() {
                    continue;
                }
                let Some(project) = self.project(&session.project) else {
                    continue;
                };
                let timeout = Duration::from_secs(project.settings.idle_timeout_secs);
                if session.idle_for() >= timeout && self.store.is_shared() {
                    self.forget_session(&session, "idle here, kept in the shared store");
                } else if session.idle_for() >= timeout {
                    handlers::session_terminating(&self, &project, &session, "IdleTimeout").await;
                    self.end_session(&session, ShutdownReason::IdleTimeout)
                        .await;
                }
            }
        }
    }

    /// When the users file changed: ends the sessions whose user was
    /// removed or lost the role their project needs, with `sessionShutdown`
    /// (`AuthorizationLost`), instead of leaving them to get 403s.
    async fn end_unauthorized_sessions(&self) {
        if !self.reload_users_if_changed() {
            return;
        }
        for session in self.sessions.all() {
            let Some(project) = self.project(&session.project) else {
                continue;
            };
            if !self.still_authorized(&project, &session) {
                info!(session = session.log_id(), user = %session.userid, "the user lost access to the project");
                self.end_session(&session, ShutdownReason::AuthorizationLost)
                    .await;
            }
        }
    }

    /// A project that failed to load at start loads now: the sessions it
    /// had end, with its `sessionShutdown` (`ProjectUnavailable`).
    async fn end_waiting_sessions(&self, project: &str) {
        if self.unrunnable.remove(project).is_none() {
            return;
        }
        let Ok(records) = self.store.scan(Table::Sessions, "") else {
            return;
        };
        for (_, bytes) in records {
            if let Ok(record) = serde_json::from_slice::<SessionRecord>(&bytes)
                && record.project == project
                && self.sessions.by_id(&record.id).is_none()
            {
                let session = self.sessions.restore(record);
                self.end_session(&session, ShutdownReason::ProjectUnavailable)
                    .await;
            }
        }
    }

    /// Clean stop: every session gets `serverStopping(session)` and stays
    /// stored (it comes back as `persisted`), browsers are told to close.
    /// Not `sessionShutdown`: no session ends, and a script logging session
    /// ends (the Perspective seed's example) must not record false ones.
    pub async fn stop(&self) {
        self.shutdown.send_replace(true);
        self.release_leases().await;
        self.points.persist_all();
        for session in self.sessions.all() {
            if let (Some(project), Some(runtime)) = (self.project(&session.project), self.arc()) {
                events::server_stopping(&runtime, &project, &session).await;
            }
            self.persist(&session);
        }
        if !self.store.is_shared()
            && let Err(error) = self.store.delete(Table::Meta, RUNNING_KEY)
        {
            error!("could not record the clean stop: {error}");
        }
    }

    // ------------------------------------------------------------ hot reload

    /// Reloads one project after its files changed. A project that fails to
    /// compile keeps its last good version serving.
    pub async fn reload_project(&self, dir: &Path) {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(String::from) else {
            return;
        };
        if !dir.join("project.toml").is_file() {
            if self.project(&name).is_some() {
                info!(project = %name, "project removed");
                // Sessions end while the project is still known, so that its
                // sessionShutdown handler runs; then it stops being served.
                for session in self.sessions.of_project(&name) {
                    self.end_session(&session, ShutdownReason::ProjectRemoved)
                        .await;
                }
                self.remove_project(&name);
            }
            return;
        }
        if !project::is_valid_project_name(dir) {
            return;
        }
        match Project::load_with(dir, &self.host_registration()) {
            Ok(project) => {
                let pages: Vec<String> = project.pages.keys().cloned().collect();
                let was_served = self.insert_project(project).is_some();
                self.load_vars(&name);
                info!(project = %name, "project {}", if was_served { "reloaded" } else { "loaded" });
                self.end_waiting_sessions(&name).await;
                let (Some(project), Some(runtime)) = (self.project(&name), self.arc()) else {
                    return;
                };
                if runtime.acquires_project(&name).await {
                    handlers::run_for_project(&project, "projectStartup", Vec::new()).await;
                }
                let dev_mode = self.dev_mode();
                for session in self.sessions.of_project(&name) {
                    if dev_mode {
                        session.push(&Push::DevError { message: None }.to_frame());
                    }
                    session.push(&Push::Reload { pages: &pages }.to_frame());
                    // In a cluster every node reloads; the one holding the
                    // session's socket tells it, once.
                    if self.delivers_to(&session) {
                        events::session_restored(&runtime, &project, &session, "newdoc").await;
                    }
                }
            }
            Err(error) => self.report_compile_error(&name, dir, &error),
        }
    }

    /// Logs a failed reload; in dev mode also shows it in the project's
    /// browsers, with paths relative to the project (the server's own
    /// folders never reach a browser).
    fn report_compile_error(&self, name: &str, dir: &Path, error: &LoadError) {
        error!(project = %name, "project has errors, still serving the last good version:\n{error}");
        if !self.dev_mode() {
            return;
        }
        let message = error.relative_to(dir);
        let frame = Push::DevError {
            message: Some(&message),
        }
        .to_frame();
        for session in self.sessions.of_project(name) {
            session.push(&frame);
        }
    }

    /// Replaces a session by a new one with a new id (the old id may have
    /// been planted by someone else: session fixation) for `userid`. The old
    /// session ends with `Logout`.
    pub async fn log_in(
        &self,
        project: &Arc<Project>,
        old: Option<Arc<Session>>,
        userid: &str,
    ) -> Arc<Session> {
        if let Some(old) = old {
            self.end_session(&old, ShutdownReason::Logout).await;
        }
        self.start_session(project, userid)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The projects folder could not be read.
    #[error("cannot read the projects folder: {0}")]
    Projects(#[from] LoadError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The users file is unreadable or invalid.
    #[error("users file: {0}")]
    Users(#[from] AuthError),
}

/// `projectStartup()` at server start, before the project is served, so
/// that the first page sees the state it sets (`varSet`, `uiSet`); on this
/// thread, as nothing is served yet. A reload runs it through
/// [`handlers::run_for_project`] before the sessions are told.
fn project_startup(project: &Project) {
    match project.scripts.call_first("projectStartup", Vec::new()) {
        Ok(Some(answer)) if !answer.is_unit() => {
            tracing::warn!(target: "switchboard::script", project = %project.name, "projectStartup returned a {} that nobody receives", answer.type_name())
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(target: "switchboard::script", project = %project.name, "projectStartup failed: {error}")
        }
    }
}
