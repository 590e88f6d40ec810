//! The running server's state and the life of its sessions: projects (and
//! replacing them on hot reload), the session table and its persistence,
//! session events, server push, messages and variables.
//!
//! `transport` calls in here; this module calls `script` to run handlers and
//! `answer` to decode what they return. Scripts reach back only through the
//! functions [`host`] registers.

mod challenge;
mod commands;
mod delivery;
mod dev;
mod events;
mod forms;
mod host;
mod push;
mod schedule;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use rhai::Dynamic;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::auth::{AuthError, Throttle, User, Users};
use crate::project::{self, LoadError, Project};
use crate::protocol::Push;
use crate::script;
use crate::session::{Session, SessionRecord, Sessions};
use crate::store::{Store, StoreError, Table};

pub use challenge::ChallengeAnswer;
pub use commands::resolve_inside;
pub use commands::{Download, DownloadError, run_download, run_frame};
pub use events::ShutdownReason;
pub use push::ProjectUi;

/// Meta key set while the server runs: found set at start-up, the last run
/// ended in a crash.
const RUNNING_KEY: &str = "running";

/// How often idle sessions are looked for.
const IDLE_SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Expired answers are deleted every this many sweeps (about a minute).
const PRUNE_EVERY_SWEEPS: u64 = 120;

pub struct Runtime {
    projects: RwLock<HashMap<String, Arc<Project>>>,
    pub sessions: Sessions,
    store: Store,
    ui: DashMap<String, ProjectUi>,
    /// In-memory variables by `project\u{0}name`; names ending in `!` are
    /// also written to the store.
    vars: DashMap<String, Dynamic>,
    /// Commands and submissions being run, by answer key.
    in_flight: delivery::InFlight,
    /// Form submissions of a project run one at a time, so that their
    /// read-modify-write of shared variables cannot interleave.
    form_locks: DashMap<String, Arc<std::sync::Mutex<()>>>,
    /// Open authentication challenges by id.
    challenges: DashMap<String, challenge::Pending>,
    shutdown: watch::Sender<bool>,
    /// The users file's contents, re-read at each login attempt.
    users: RwLock<Users>,
    users_path: PathBuf,
    pub throttle: Throttle,
    projects_dir: PathBuf,
    /// Dev mode (`--dev`): compile errors and silent mistakes are pushed to
    /// the browsers. Never on by default: the messages name files.
    dev_mode: std::sync::atomic::AtomicBool,
    myself: Weak<Runtime>,
}

impl Runtime {
    /// Opens the store, loads the projects under `projects_dir` and the
    /// sessions of the last run. Broken projects are logged and skipped.
    pub fn start(
        projects_dir: &Path,
        database: &Path,
        users_path: &Path,
    ) -> Result<Arc<Runtime>, StartupError> {
        let users = Users::load(users_path)?;
        let store = Store::open(database)?;
        let crashed = store.get(Table::Meta, RUNNING_KEY)?.is_some();
        store.put(Table::Meta, RUNNING_KEY, b"1")?;
        let runtime = Arc::new_cyclic(|myself| Runtime {
            projects: RwLock::default(),
            sessions: Sessions::default(),
            store,
            ui: DashMap::new(),
            vars: DashMap::new(),
            in_flight: DashMap::new(),
            form_locks: DashMap::new(),
            challenges: DashMap::new(),
            shutdown: watch::channel(false).0,
            users: RwLock::new(users),
            users_path: users_path.to_path_buf(),
            throttle: Throttle::default(),
            projects_dir: projects_dir.to_path_buf(),
            dev_mode: std::sync::atomic::AtomicBool::new(false),
            myself: myself.clone(),
        });
        let loaded = project::load_all(projects_dir, &runtime.host_registration())?;
        for (dir, error) in &loaded.failed {
            error!(
                "project {} is not served, it has errors:\n{error}",
                dir.display()
            );
        }
        for project in loaded.projects {
            runtime.load_vars(&project.name);
            // Before anyone can open it: the first page sees its state.
            project_startup(&project);
            runtime.insert_project(project);
        }
        runtime.restore_sessions(if crashed { "failure" } else { "persisted" });
        Ok(runtime)
    }

    /// The function that registers host functions bound to this runtime.
    pub fn host_registration(&self) -> impl Fn(&mut rhai::Engine, &str) + use<> {
        let myself = self.myself.clone();
        move |engine, project| host::register(engine, myself.clone(), project)
    }

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

    fn insert_project(&self, project: Project) -> Option<Arc<Project>> {
        let project = Arc::new(project);
        schedule::start_timers(self.myself.clone(), &project);
        self.projects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(project.name.clone(), project)
    }

    fn remove_project(&self, name: &str) -> Option<Arc<Project>> {
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
            session.push(&Push::DevNotice { message }.to_frame());
        }
    }

    pub fn projects_dir(&self) -> &Path {
        &self.projects_dir
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

    /// Receives `true` when the server stops.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    fn arc(&self) -> Option<Arc<Runtime>> {
        self.myself.upgrade()
    }

    // ------------------------------------------------------------ sessions

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

    /// Writes the session's persisted part to the store.
    pub fn persist(&self, session: &Session) {
        if session.has_ended() || self.defer_session(&session.id) {
            return;
        }
        let record = session.record();
        match serde_json::to_vec(&record) {
            Ok(bytes) => {
                if let Err(error) = self.store.put(Table::Sessions, &session.id, &bytes) {
                    error!(
                        session = session.log_id(),
                        "could not persist the session: {error}"
                    );
                }
            }
            Err(error) => error!(
                session = session.log_id(),
                "could not serialize the session: {error}"
            ),
        }
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
                Ok(_) | Err(_) => {
                    let _ = self.store.delete(Table::Sessions, &id);
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
        if let Some(project) = self.project(&session.project) {
            events::session_shutdown(self, &project, session, reason).await;
        }
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
        if let Err(error) = self.store.delete(Table::Sessions, &session.id) {
            error!(
                session = session.log_id(),
                "could not delete the stored session: {error}"
            );
        }
        self.forget_replies(&session.id);
        info!(project = %session.project, session = session.log_id(), reason = reason.as_str(), "session ended");
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
                if session.idle_for() >= timeout {
                    events::session_terminating(&self, &project, &session, "IdleTimeout").await;
                    self.end_session(&session, ShutdownReason::IdleTimeout)
                        .await;
                }
            }
        }
    }

    /// Clean stop: every session gets `sessionShutdown(…, ServerStop)` but
    /// stays stored (it comes back as `persisted`), browsers are told to close.
    pub async fn stop(&self) {
        self.shutdown.send_replace(true);
        for session in self.sessions.all() {
            if let Some(project) = self.project(&session.project) {
                events::session_shutdown(self, &project, &session, ShutdownReason::ServerStop)
                    .await;
            }
            self.persist(&session);
        }
        if let Err(error) = self.store.delete(Table::Meta, RUNNING_KEY) {
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
                let Some(project) = self.project(&name) else {
                    return;
                };
                let startup = project.clone();
                if let Err(error) = script::run_off_async(move || project_startup(&startup)).await {
                    error!(project = %name, "projectStartup ended abnormally: {error}");
                }
                let dev_mode = self.dev_mode();
                for session in self.sessions.of_project(&name) {
                    if dev_mode {
                        session.push(&Push::DevError { message: None }.to_frame());
                    }
                    session.push(&Push::Reload { pages: &pages }.to_frame());
                    events::session_restored(self, &project, &session, "newdoc").await;
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

    // ------------------------------------------------------------ variables

    fn var_key(project: &str, name: &str) -> String {
        format!("{project}\u{0}{name}")
    }

    fn load_vars(&self, project: &str) {
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

    /// Every variable of a project, as JSON (values that cannot be JSON
    /// are left out).
    pub fn vars_of(&self, project: &str) -> serde_json::Map<String, serde_json::Value> {
        let prefix = Self::var_key(project, "");
        self.vars
            .iter()
            .filter_map(|entry| {
                let name = entry.key().strip_prefix(&prefix)?;
                let value = rhai::serde::from_dynamic(entry.value()).ok()?;
                Some((name.to_string(), value))
            })
            .collect()
    }

    /// What templates see besides `page` and `project` when `session`
    /// views a page: `session` (its properties), `vars` (the project's
    /// variables) and `ui` (the UI values the session sees, by object id
    /// and attribute), so that a page renders its state without waiting
    /// for the first push.
    pub fn template_view(
        &self,
        project: &Project,
        session: &Session,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut ui = serde_json::Map::new();
        for value in self.ui_snapshot(session) {
            if let serde_json::Value::Object(attrs) = ui
                .entry(value.id)
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()))
            {
                attrs.insert(value.attr, value.value);
            }
        }
        let mut view = serde_json::Map::new();
        view.insert(
            "session".into(),
            serde_json::json!({ "properties": session.with_state(|state| state.properties.clone()) }),
        );
        view.insert("vars".into(), self.vars_of(&session.project).into());
        view.insert("ui".into(), ui.into());
        let language = self.language_of(project, session);
        // Embedded in a `<script type="application/json">`: `<` escaped so
        // that no text can close the element.
        let texts = serde_json::Value::Object(project.translations.browser_texts(&language))
            .to_string()
            .replace('<', "\\u003c");
        view.insert("sb_texts".into(), texts.into());
        view.insert("lang".into(), language.into());
        view
    }

    /// The language of a session's texts: the user's setting (the session
    /// property `language`), else the browser's, else the project's default.
    pub fn language_of(&self, project: &Project, session: &Session) -> String {
        let (chosen, accept) = session.with_state(|state| {
            (
                state
                    .properties
                    .get("language")
                    .and_then(|l| l.as_str())
                    .map(String::from),
                state.accept_language.clone(),
            )
        });
        project.translations.negotiate(chosen.as_deref(), &accept)
    }

    /// Remembers the `Accept-Language` of the browser showing a session.
    pub fn note_accept_language(&self, session: &Session, header: &str) {
        let changed = session.with_state(|state| {
            let changed = state.accept_language != header;
            if changed {
                state.accept_language = header.to_string();
            }
            changed
        });
        if changed {
            self.persist(session);
        }
    }

    fn ui(&self, project: &str) -> dashmap::mapref::one::RefMut<'_, String, ProjectUi> {
        self.ui.entry(project.to_string()).or_default()
    }
}

/// Registers the host functions bound to no runtime (each fails if called):
/// what `switchboard check` compiles against.
pub fn register_host_functions_unbound(engine: &mut rhai::Engine, project: &str) {
    host::register(engine, Weak::new(), project);
}

/// Who sent a frame: the browser tab (when known) and the client address,
/// for the logs.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub tab: Option<String>,
    pub address: String,
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

/// `projectStartup()`: once each time the project is loaded (server start
/// or reload), before its sessions are told; for state every session
/// shares (`varSet`, `uiSet`). No session receives its answer.
fn project_startup(project: &Project) {
    match project.scripts.call_first("projectStartup", Vec::new()) {
        Ok(Some(answer)) => warn_unused_answer("projectStartup", &answer),
        Ok(None) => {}
        Err(error) => {
            warn!(target: "switchboard::script", project = %project.name, "projectStartup failed: {error}")
        }
    }
}

/// Logs a warning for an answer that went nowhere (timers have no session).
fn warn_unused_answer(callback: &str, answer: &Dynamic) {
    if !answer.is_unit() {
        warn!(target: "switchboard::script", "{callback} returned a {} that nobody receives; use sendActions", answer.type_name());
    }
}

/// A browser tab connected: `pageStartup` when the tab is new to the
/// session, `sessionRestored` when the session came back from the store.
pub async fn connection_opened(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    tab: Option<&str>,
    page: Option<&str>,
) {
    if let Some(kind) = session.take_restored() {
        events::session_restored(runtime, project, session, kind).await;
    }
    let (Some(tab), Some(page)) = (tab, page) else {
        return;
    };
    let page = if project.pages.contains_key(page) {
        page
    } else {
        &project.settings.start
    };
    let new_tab = session.with_state(|state| {
        state
            .tabs
            .insert(tab.to_string(), page.to_string())
            .is_none()
    });
    runtime.persist(session);
    if new_tab {
        events::page_startup(runtime, project, session, page).await;
    }
}

impl Runtime {
    /// Checks a password against the users file, re-read so that
    /// `switchboard passwd` takes effect without a restart. Blocking: hashing
    /// is deliberately slow.
    pub fn verify_password(&self, user: &str, password: &str) -> Option<User> {
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
