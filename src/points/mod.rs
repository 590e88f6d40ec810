//! Live values from devices: the point table of each project, its quality,
//! the bindings of pages to points, and the drivers that feed it.
//!
//! A point is a named, typed value (`bool`, `number`, `text`, `json`) with a
//! quality (`good`, `stale`, `bad`, `unknown`). Drivers ([`mqtt`],
//! [`modbus`]) are tasks that talk to the table through one narrow
//! interface: they send [`Update`]s into the project's channel and take
//! [`Outgoing`] writes from theirs. One hub task per project applies the
//! updates in order, pushes what changed to the sessions whose open pages
//! bind the point, persists last values (so pages show them `stale` after a
//! restart) and queues `pointChange` / `mqttMessage` calls, which run one
//! at a time on the script pool.
//!
//! This module does not decide who may write a point (the command path does:
//! ACL, `pointWrite`) and holds no transport types.

pub mod binding;
pub mod config;
mod functions;
mod modbus;
mod mqtt;
pub mod value;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use rhai::Dynamic;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

pub use binding::bound_points;
pub use config::{ConnectionConfig, ConnectionKind, PointConfig, PointType};
pub use functions::register as register_functions;
pub use value::{coerce, decode_payload, display_text, encode_payload, param_text, parse_param};

use crate::project::{PageKind, Project};
use crate::session::{Frame, Session, Sessions};
use crate::store::{Store, Table, Write};

/// How often changed values are written to the store: one transaction for
/// all the changes of a second, not one per message (a busy broker sends
/// thousands a second and each durable commit costs milliseconds).
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// At most one log line per point this often for unusable payloads.
const BAD_PAYLOAD_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A page rendered for a session counts as open this long even before the
/// browser says it shows it (the fragment is fetched before `page_shown`):
/// a change in between still reaches it.
const RENDER_GRACE: Duration = Duration::from_secs(10);

/// Most updates the hub applies in one batch before it pushes.
const MAX_BATCH: usize = 4096;

/// How often sessions whose browser missed a points frame (its queue was
/// full) are sent the current values of what they show.
const LAGGING_RETRY: Duration = Duration::from_millis(250);

/// Writes waiting for a driver; past this a write is refused (`false`).
const WRITE_QUEUE: usize = 256;

/// How sure the table is of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// The device said so, over a live connection.
    Good,
    /// The last known value; the connection is lost (or the server restarted).
    Stale,
    /// The last payload could not be read as the point's type.
    Bad,
    /// Never heard of.
    Unknown,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Stale => "stale",
            Quality::Bad => "bad",
            Quality::Unknown => "unknown",
        }
    }
}

/// One point in the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointState {
    /// `null` until a value is known.
    pub value: Value,
    pub quality: Quality,
    /// When the value last changed, in milliseconds since the epoch.
    pub changed: u64,
    /// Counts the project's changes: a browser holding a value rendered at
    /// one count ignores a push from before it.
    #[serde(default, skip_serializing)]
    pub seq: u64,
}

/// What a driver tells the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A value read from the device, already of the point's type.
    Value { point: String, value: Value },
    /// The device sent something that does not fit the point's type.
    Unusable { point: String, reason: String },
    /// The connection is lost: its points keep their values, `stale`.
    Offline { connection: String },
    /// A message on a topic a connection subscribes to that is no point's.
    Message {
        connection: String,
        topic: String,
        payload: String,
    },
}

/// What a driver is asked to do.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// Write a point's value to its device.
    Point { point: Arc<PointDef>, value: Value },
    /// `mqttPublish(connection, topic, payload, retain)`.
    Publish {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    },
}

/// Why a write was not handed to a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// No point by that name.
    #[error("no point named `{0}`")]
    Unknown(String),
    /// The point has no command topic or writable register.
    #[error("point `{0}` is read-only")]
    ReadOnly(String),
    /// The value does not fit the point's type.
    #[error("{0}")]
    BadValue(String),
    /// Its connection is down (or its queue full).
    #[error("the device is offline")]
    Offline,
}

/// A point as the drivers and the table know it.
#[derive(Debug)]
pub struct PointDef {
    pub config: PointConfig,
    pub source: Source,
    pub writable: bool,
}

impl PointDef {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn kind(&self) -> PointType {
        self.config.kind
    }
}

/// Where a point's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No device: writes set it.
    Memory,
    /// The connection at this index of the project's connections.
    Device(usize),
}

/// A counter of `/metrics`: name, help, and how to read it.
type Counter = (&'static str, &'static str, fn(&ConnectionStatus) -> u64);

/// A connection's state, for `/metrics`, the log and `pointSet`.
#[derive(Debug, Default)]
pub struct ConnectionStatus {
    connected: AtomicBool,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    last_error: Mutex<String>,
}

impl ConnectionStatus {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    pub fn count_in(&self) {
        self.messages_in.fetch_add(1, Relaxed);
    }

    pub fn count_out(&self) {
        self.messages_out.fetch_add(1, Relaxed);
    }

    /// Records the state; returns whether it changed (then the caller logs).
    pub fn set_connected(&self, connected: bool) -> bool {
        self.connected.swap(connected, Relaxed) != connected
    }

    /// Records an error; returns whether it differs from the last one, so a
    /// broker that keeps refusing is logged once, not at every retry.
    pub fn set_error(&self, error: &str) -> bool {
        let mut last = lock(&self.last_error);
        if *last == error {
            return false;
        }
        *last = error.to_string();
        true
    }

    pub fn clear_error(&self) {
        lock(&self.last_error).clear();
    }
}

/// A connection of a running project.
struct Connection {
    config: ConnectionConfig,
    status: Arc<ConnectionStatus>,
    /// `None` when the connection is off (`url_env` unset).
    writer: Option<mpsc::Sender<Outgoing>>,
}

/// Everything a driver gets: where to send updates, its status, and when
/// to stop.
pub struct DriverLink {
    pub updates: mpsc::UnboundedSender<Update>,
    pub status: Arc<ConnectionStatus>,
    pub stop: watch::Receiver<bool>,
    pub project: String,
    /// In cluster mode, this node's name: every node holds the project's
    /// connections, and a client id must differ between them (an MQTT
    /// broker drops the older of two connections with one id).
    pub node: Option<String>,
}

impl DriverLink {
    /// Sends an update; the hub is gone only when the project stopped.
    pub fn send(&self, update: Update) {
        let _ = self.updates.send(update);
    }

    /// Resolves when the project is replaced or removed.
    pub async fn stopped(&mut self) {
        while !*self.stop.borrow() {
            if self.stop.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The point tables of every served project.
pub struct Points {
    projects: DashMap<String, Arc<ProjectPoints>>,
    sessions: Arc<Sessions>,
    store: Arc<Store>,
    /// This node's name in cluster mode (see [`DriverLink::node`]).
    node: Option<String>,
}

/// One project's points, connections and bindings.
pub struct ProjectPoints {
    project: String,
    defs: HashMap<String, Arc<PointDef>>,
    /// Declaration order, for snapshots and templates.
    order: Vec<String>,
    table: RwLock<HashMap<String, PointState>>,
    connections: Vec<Connection>,
    watches: Mutex<Watches>,
    updates: mpsc::UnboundedSender<Update>,
    stop: watch::Sender<bool>,
    /// The last change's number (see [`PointState::seq`]).
    seq: AtomicU64,
}

/// Which sessions look at which points.
#[derive(Default)]
///
/// Looked up once or more per session for every change delivered, so the
/// maps hash with Fx rather than SipHash: their keys are session ids the
/// server made and point names from the project, nothing a client chooses.
struct Watches {
    by_session: FxHashMap<String, Watch>,
    /// Point → sessions with any page binding it (open or not: the open
    /// check happens at delivery, for these candidates only).
    by_point: FxHashMap<String, FxHashSet<String>>,
}

/// One session's bindings.
#[derive(Default)]
struct Watch {
    pages: HashMap<String, PageBinding>,
    /// Popups rendered and not reported closed.
    open_popups: HashSet<String>,
    /// Points a script asked to push (`pointWatch`).
    extra: HashSet<String>,
}

struct PageBinding {
    /// A set: every change delivered asks whether its point is here, for
    /// each session showing the page.
    points: FxHashSet<String>,
    rendered: Instant,
}

impl Watch {
    fn points(&self) -> impl Iterator<Item = &String> {
        self.pages
            .values()
            .flat_map(|p| p.points.iter())
            .chain(self.extra.iter())
    }

    /// Whether one of the pages the session shows binds `point`; `tabs`:
    /// browser tab → the page it shows.
    fn shows(&self, point: &str, tabs: &BTreeMap<String, String>) -> bool {
        self.shown_on(&self.open_pages(tabs), point)
    }

    /// The bindings of the pages open in `tabs`, open as a popup, or
    /// rendered so recently that their socket may not have said so yet:
    /// found once per session for a whole batch of changes.
    fn open_pages(&self, tabs: &BTreeMap<String, String>) -> Vec<&PageBinding> {
        self.pages
            .iter()
            .filter(|(page, binding)| {
                tabs.values().any(|shown| shown == *page)
                    || self.open_popups.contains(*page)
                    || binding.rendered.elapsed() < RENDER_GRACE
            })
            .map(|(_, binding)| binding)
            .collect()
    }

    /// Whether `point` is on one of the `open` pages or watched by a script.
    fn shown_on(&self, open: &[&PageBinding], point: &str) -> bool {
        self.extra.contains(point) || open.iter().any(|binding| binding.points.contains(point))
    }
}

/// A poisoned lock still guards plain data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn store_key(project: &str, point: &str) -> String {
    format!("{project}\u{0}{point}")
}

impl Points {
    /// `node`: this node's name in cluster mode, `None` on one node.
    pub fn new(sessions: Arc<Sessions>, store: Arc<Store>, node: Option<String>) -> Points {
        Points {
            projects: DashMap::new(),
            sessions,
            store,
            node,
        }
    }

    /// The points of a served project.
    pub fn of(&self, project: &str) -> Option<Arc<ProjectPoints>> {
        self.projects.get(project).map(|p| p.clone())
    }

    /// Starts (or restarts, after a reload) a project's points: the table
    /// from the store or the previous version, the hub and the drivers.
    /// Returns the project's [`PointEvent`]s, for the runtime to run their
    /// callbacks (`None`: the project has no points). Must run inside a
    /// Tokio runtime.
    pub fn start_project(
        &self,
        project: &Arc<Project>,
    ) -> Option<mpsc::UnboundedReceiver<PointEvent>> {
        let previous = self.projects.get(&project.name).map(|p| p.clone());
        if let Some(previous) = &previous {
            previous.stop.send_replace(true);
        }
        if project.settings.points.is_empty() && project.settings.connections.is_empty() {
            self.projects.remove(&project.name);
            return None;
        }
        let (updates, updates_rx) = mpsc::unbounded_channel();
        let (stop, _) = watch::channel(false);
        let (connections, configs) = project.settings.devices();
        let urls: Vec<Option<String>> = connections.iter().map(connection_url).collect();
        let mut defs = HashMap::new();
        let mut order = Vec::new();
        for point in &configs {
            let def = point_def(point, &connections, &urls);
            order.push(point.name.clone());
            defs.insert(point.name.clone(), Arc::new(def));
        }
        let table = self.initial_table(&project.name, &defs, previous.as_deref());
        let mut running = Vec::new();
        for (index, (config, url)) in connections.into_iter().zip(urls).enumerate() {
            let status = Arc::new(ConnectionStatus::default());
            let writer = url.map(|url| {
                let (writer, writes) = mpsc::channel(WRITE_QUEUE);
                let link = DriverLink {
                    updates: updates.clone(),
                    status: status.clone(),
                    stop: stop.subscribe(),
                    project: project.name.clone(),
                    node: self.node.clone(),
                };
                let points: Vec<Arc<PointDef>> = defs
                    .values()
                    .filter(|d| d.source == Source::Device(index))
                    .cloned()
                    .collect();
                match config.kind {
                    ConnectionKind::Mqtt => {
                        mqtt::spawn(config.clone(), url, points, link, writes);
                    }
                    ConnectionKind::ModbusTcp => {
                        modbus::spawn(config.clone(), url, points, link, writes);
                    }
                }
                writer
            });
            if writer.is_none() {
                info!(project = %project.name, connection = %config.name,
                    "connection off (`{}` is not set): its points work as memory points", config.url_env);
            }
            running.push(Connection {
                config,
                status,
                writer,
            });
        }
        let points = Arc::new(ProjectPoints {
            project: project.name.clone(),
            defs,
            order,
            table: RwLock::new(table),
            connections: running,
            watches: Mutex::new(previous.map(|p| p.take_watches()).unwrap_or_default()),
            updates,
            stop,
            seq: AtomicU64::new(0),
        });
        self.projects.insert(project.name.clone(), points.clone());
        let (events, events_rx) = mpsc::unbounded_channel();
        let hub = Hub {
            points,
            sessions: self.sessions.clone(),
            store: self.store.clone(),
            events,
            dirty: HashSet::new(),
            lagging: HashSet::new(),
        };
        tokio::spawn(hub.run(updates_rx));
        Some(events_rx)
    }

    /// Writes every project's current values (the server is stopping; the
    /// hubs persist only once a second). Blocking.
    pub fn persist_all(&self) {
        let mut writes = Vec::new();
        for entry in self.projects.iter() {
            let table = entry.table.read().unwrap_or_else(|p| p.into_inner());
            for (name, state) in table.iter().filter(|(_, s)| !s.value.is_null()) {
                if let Ok(bytes) = serde_json::to_vec(state) {
                    writes.push(Write::Put(
                        Table::Points,
                        store_key(&entry.project, name),
                        bytes,
                    ));
                }
            }
        }
        if let Err(error) = self.store.write(&writes) {
            error!("could not store point values: {error}");
        }
    }

    /// Stops a removed project's drivers.
    pub fn stop_project(&self, project: &str) {
        if let Some((_, points)) = self.projects.remove(project) {
            points.stop.send_replace(true);
        }
    }

    fn initial_table(
        &self,
        project: &str,
        defs: &HashMap<String, Arc<PointDef>>,
        previous: Option<&ProjectPoints>,
    ) -> HashMap<String, PointState> {
        let stored: HashMap<String, PointState> =
            match self.store.scan(Table::Points, &store_key(project, "")) {
                Ok(rows) => rows
                    .into_iter()
                    .filter_map(|(key, bytes)| {
                        let name = key.split_once('\u{0}')?.1.to_string();
                        Some((name, serde_json::from_slice(&bytes).ok()?))
                    })
                    .collect(),
                Err(error) => {
                    error!(project, "could not read stored point values: {error}");
                    HashMap::new()
                }
            };
        defs.values()
            .map(|def| {
                let carried = previous
                    .filter(|p| {
                        p.defs
                            .get(def.name())
                            .is_some_and(|d| d.kind() == def.kind())
                    })
                    .and_then(|p| p.state(def.name()));
                let state = carried.unwrap_or_else(|| initial_state(def, stored.get(def.name())));
                (def.name().to_string(), state)
            })
            .collect()
    }

    /// The `points` templates see, for a project (empty when it has none).
    pub fn template_context(&self, project: &str) -> Value {
        self.of(project).map_or_else(
            || Value::Object(Default::default()),
            |p| p.template_context(),
        )
    }

    /// Records the points a page rendered for a session binds (its
    /// `data-sb-point` attributes), so that their changes reach it.
    pub fn bind_rendered(&self, session: &Session, page: &str, kind: Option<PageKind>, html: &str) {
        if let Some(points) = self.of(&session.project) {
            points.bind(
                &session.id,
                page,
                kind == Some(PageKind::Popup),
                bound_points(html),
            );
        }
    }

    /// A popup was closed: its points stop reaching the session.
    pub fn page_closed(&self, session: &Session, page: &str) {
        if let Some(points) = self.of(&session.project) {
            let mut watches = lock(&points.watches);
            if let Some(watch) = watches.by_session.get_mut(&session.id) {
                watch.open_popups.remove(page);
            }
        }
    }

    /// Sends a newly connected browser the current values of what its
    /// session shows (it may have missed changes while away).
    pub fn send_snapshot(&self, session: &Session) {
        if let Some(points) = self.of(&session.project) {
            snapshot(&points, session);
        }
    }

    /// Prometheus lines for every connection.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP switchboard_connection_up Whether a device connection is up (1) or down (0).\n# TYPE switchboard_connection_up gauge\n");
        let mut rows = Vec::new();
        for entry in self.projects.iter() {
            for connection in &entry.connections {
                if connection.writer.is_some() {
                    rows.push((
                        entry.project.clone(),
                        connection.config.name.clone(),
                        connection.status.clone(),
                    ));
                }
            }
        }
        rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        for (project, name, status) in &rows {
            let _ = writeln!(
                out,
                "switchboard_connection_up{{project=\"{project}\",connection=\"{name}\"}} {}",
                u8::from(status.is_connected())
            );
        }
        let counters: [Counter; 2] = [
            (
                "switchboard_connection_messages_in_total",
                "Messages (MQTT) or reads (Modbus) received.",
                |s| s.messages_in.load(Relaxed),
            ),
            (
                "switchboard_connection_messages_out_total",
                "Messages published or registers written.",
                |s| s.messages_out.load(Relaxed),
            ),
        ];
        for (metric, help, read) in counters {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (project, name, status) in &rows {
                let _ = writeln!(
                    out,
                    "{metric}{{project=\"{project}\",connection=\"{name}\"}} {}",
                    read(status)
                );
            }
        }
        out
    }
}

/// Pushes the current values of every point the session shows; returns
/// whether its browsers took the frame.
fn snapshot(points: &ProjectPoints, session: &Session) -> bool {
    let names: Vec<String> = {
        let watches = lock(&points.watches);
        let Some(watch) = watches.by_session.get(&session.id) else {
            return true;
        };
        let mut names: Vec<String> = session.with_state(|state| {
            watch
                .points()
                .filter(|p| watch.shows(p, &state.tabs))
                .cloned()
                .collect()
        });
        names.sort();
        names.dedup();
        names
    };
    let items: Vec<Value> = names.iter().filter_map(|n| points.item(n)).collect();
    items.is_empty() || session.try_push(&points_frame(&items))
}

/// A connection's URL: `url`, or the value of `url_env` (`None`: off).
fn connection_url(config: &ConnectionConfig) -> Option<String> {
    if !config.url.is_empty() {
        return Some(config.url.clone());
    }
    std::env::var(&config.url_env)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

fn point_def(
    point: &PointConfig,
    connections: &[ConnectionConfig],
    urls: &[Option<String>],
) -> PointDef {
    let index = point
        .connection
        .as_ref()
        .and_then(|name| connections.iter().position(|c| &c.name == name))
        .filter(|index| urls[*index].is_some());
    let source = index.map_or(Source::Memory, Source::Device);
    let device_writable = match source {
        Source::Memory => true,
        Source::Device(_) => config::device_writable(point),
    };
    PointDef {
        config: point.clone(),
        source,
        writable: point.writable.unwrap_or(device_writable) && device_writable,
    }
}

/// A point's state at start: the stored value (`stale` for a device, since
/// nobody has confirmed it yet), else a memory point's initial value.
fn initial_state(def: &PointDef, stored: Option<&PointState>) -> PointState {
    let memory = def.source == Source::Memory;
    if let Some(stored) = stored
        && coerce(def.kind(), &stored.value).is_ok()
    {
        return PointState {
            value: stored.value.clone(),
            quality: if memory {
                Quality::Good
            } else {
                Quality::Stale
            },
            changed: stored.changed,
            seq: 0,
        };
    }
    match (memory, &def.config.initial) {
        (true, Some(initial)) => PointState {
            value: coerce(def.kind(), &config::toml_to_json(initial)).unwrap_or(Value::Null),
            quality: Quality::Good,
            changed: now_millis(),
            seq: 0,
        },
        _ => PointState {
            value: Value::Null,
            quality: Quality::Unknown,
            changed: 0,
            seq: 0,
        },
    }
}

impl ProjectPoints {
    pub fn def(&self, name: &str) -> Option<&Arc<PointDef>> {
        self.defs.get(name)
    }

    pub fn state(&self, name: &str) -> Option<PointState> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn take_watches(&self) -> Watches {
        std::mem::take(&mut *lock(&self.watches))
    }

    fn bind(&self, session: &str, page: &str, popup: bool, points: Vec<String>) {
        let points: FxHashSet<String> = points
            .into_iter()
            .filter(|p| self.defs.contains_key(p))
            .collect();
        let mut watches = lock(&self.watches);
        for point in &points {
            watches
                .by_point
                .entry(point.clone())
                .or_default()
                .insert(session.to_string());
        }
        let watch = watches.by_session.entry(session.to_string()).or_default();
        if popup {
            watch.open_popups.insert(page.to_string());
        }
        watch.pages.insert(
            page.to_string(),
            PageBinding {
                points,
                rendered: Instant::now(),
            },
        );
    }

    /// `pointWatch(session, name)`: changes of `point` reach the session
    /// whatever its pages show.
    pub fn watch(&self, session: &str, point: &str) -> bool {
        if !self.defs.contains_key(point) {
            return false;
        }
        let mut watches = lock(&self.watches);
        watches
            .by_point
            .entry(point.to_string())
            .or_default()
            .insert(session.to_string());
        watches
            .by_session
            .entry(session.to_string())
            .or_default()
            .extra
            .insert(point.to_string());
        true
    }

    /// One point as a pushed item: name, value, quality and display text.
    fn item(&self, name: &str) -> Option<Value> {
        let def = self.defs.get(name)?;
        let state = self.state(name)?;
        Some(push_item(def, &state))
    }

    /// `points` as templates see it: name → `{value, quality, changed,
    /// text, unit, type, writable, param}`.
    pub fn template_context(&self) -> Value {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let mut map = serde_json::Map::new();
        for name in &self.order {
            let (Some(def), Some(state)) = (self.defs.get(name), table.get(name)) else {
                continue;
            };
            map.insert(name.clone(), template_entry(def, state));
        }
        Value::Object(map)
    }

    /// Writes a point: a memory point is set, a device point handed to its
    /// driver. Never waits for the network. `by_script`: a script may set a
    /// memory point that pages may not (a simulated sensor).
    pub fn write(&self, name: &str, value: &Value, by_script: bool) -> Result<(), WriteError> {
        let def = self
            .defs
            .get(name)
            .ok_or_else(|| WriteError::Unknown(name.to_string()))?;
        let script_sets_memory = by_script && def.source == Source::Memory;
        if !(def.writable || script_sets_memory) {
            return Err(WriteError::ReadOnly(name.to_string()));
        }
        let value = coerce(def.kind(), value).map_err(WriteError::BadValue)?;
        match def.source {
            Source::Memory => {
                let _ = self.updates.send(Update::Value {
                    point: name.to_string(),
                    value,
                });
                Ok(())
            }
            Source::Device(index) => {
                let connection = &self.connections[index];
                let writer = connection.writer.as_ref().ok_or(WriteError::Offline)?;
                if !connection.status.is_connected() {
                    return Err(WriteError::Offline);
                }
                writer
                    .try_send(Outgoing::Point {
                        point: def.clone(),
                        value,
                    })
                    .map_err(|_| WriteError::Offline)
            }
        }
    }

    /// `mqttPublish`: `false` when the connection is unknown, not MQTT, or
    /// offline.
    pub fn publish(&self, connection: &str, topic: &str, payload: Vec<u8>, retain: bool) -> bool {
        let Some(connection) = self
            .connections
            .iter()
            .find(|c| c.config.name == connection && c.config.kind == ConnectionKind::Mqtt)
        else {
            return false;
        };
        let Some(writer) = &connection.writer else {
            return false;
        };
        connection.status.is_connected()
            && rumqttc::valid_topic(topic)
            && writer
                .try_send(Outgoing::Publish {
                    topic: topic.to_string(),
                    payload,
                    retain,
                })
                .is_ok()
    }

    /// A page's param for a point (what a field holds, what rollback
    /// restores): `true`/`false`, the number, the text, the JSON.
    pub fn param_of(&self, name: &str) -> Option<String> {
        let state = self.state(name)?;
        Some(param_text(&state.value))
    }

    /// Applies updates in order; returns what changed.
    fn apply(&self, updates: Vec<Update>, hub: &mut HubLog) -> (Vec<Change>, Vec<Update>) {
        let mut changes = Vec::new();
        let mut messages = Vec::new();
        let now = now_millis();
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        for update in updates {
            match update {
                Update::Value { point, value } => {
                    let Some(state) = table.get_mut(&point) else {
                        continue;
                    };
                    let value_changed = state.value != value;
                    if !value_changed && state.quality == Quality::Good {
                        continue;
                    }
                    let old = std::mem::replace(&mut state.value, value);
                    state.quality = Quality::Good;
                    if value_changed {
                        state.changed = now;
                    }
                    changes.push(Change {
                        point,
                        old,
                        state: state.clone(),
                        value_changed,
                    });
                }
                Update::Unusable { point, reason } => {
                    hub.bad_payload(&self.project, &point, &reason);
                    let Some(state) = table.get_mut(&point) else {
                        continue;
                    };
                    if state.quality != Quality::Bad {
                        state.quality = Quality::Bad;
                        changes.push(Change {
                            point,
                            old: state.value.clone(),
                            state: state.clone(),
                            value_changed: false,
                        });
                    }
                }
                Update::Offline { connection } => {
                    let Some(index) = self
                        .connections
                        .iter()
                        .position(|c| c.config.name == connection)
                    else {
                        continue;
                    };
                    for def in self
                        .defs
                        .values()
                        .filter(|d| d.source == Source::Device(index))
                    {
                        let Some(state) = table.get_mut(def.name()) else {
                            continue;
                        };
                        if matches!(state.quality, Quality::Good | Quality::Bad) {
                            state.quality = Quality::Stale;
                            changes.push(Change {
                                point: def.name().to_string(),
                                old: state.value.clone(),
                                state: state.clone(),
                                value_changed: false,
                            });
                        }
                    }
                }
                message @ Update::Message { .. } => messages.push(message),
            }
        }
        for change in &mut changes {
            change.state.seq = self.seq.fetch_add(1, Relaxed) + 1;
            if let Some(state) = table.get_mut(&change.point) {
                state.seq = change.state.seq;
            }
        }
        (changes, messages)
    }
}

/// One change of the table.
#[derive(Debug, Clone)]
struct Change {
    point: String,
    old: Value,
    state: PointState,
    /// `false` when only the quality changed (no `pointChange` then).
    value_changed: bool,
}

/// Rate limit of the bad payload log.
#[derive(Default)]
struct HubLog {
    last: HashMap<String, Instant>,
}

impl HubLog {
    fn bad_payload(&mut self, project: &str, point: &str, reason: &str) {
        let due = self
            .last
            .get(point)
            .is_none_or(|at| at.elapsed() >= BAD_PAYLOAD_LOG_INTERVAL);
        if due {
            self.last.insert(point.to_string(), Instant::now());
            warn!(
                project,
                point, "unusable payload, the point keeps its last value as `bad`: {reason}"
            );
        }
    }
}

/// The task that applies a project's updates.
struct Hub {
    points: Arc<ProjectPoints>,
    sessions: Arc<Sessions>,
    store: Arc<Store>,
    /// Where changes and messages go for their callbacks.
    events: mpsc::UnboundedSender<PointEvent>,
    dirty: HashSet<String>,
    /// Sessions that missed a frame: they get a snapshot at the next retry,
    /// so every panel ends at the last values however slow it is.
    lagging: HashSet<String>,
}

/// What a project's callbacks hear, in order: `pointChange(name, value,
/// old)` once per value change, `mqttMessage(connection, topic, payload)`
/// once per message on a `subscribe` topic that is no point's.
#[derive(Debug, Clone, PartialEq)]
pub enum PointEvent {
    Change {
        point: String,
        value: Value,
        old: Value,
    },
    Message {
        connection: String,
        topic: String,
        payload: String,
    },
}

impl PointEvent {
    /// The callback and its arguments.
    pub fn into_call(self) -> (&'static str, Vec<Dynamic>) {
        match self {
            PointEvent::Change { point, value, old } => (
                "pointChange",
                vec![Dynamic::from(point), to_dynamic(value), to_dynamic(old)],
            ),
            PointEvent::Message {
                connection,
                topic,
                payload,
            } => (
                "mqttMessage",
                vec![
                    Dynamic::from(connection),
                    Dynamic::from(topic),
                    Dynamic::from(payload),
                ],
            ),
        }
    }
}

impl Hub {
    async fn run(mut self, mut updates: mpsc::UnboundedReceiver<Update>) {
        let mut stop = self.points.stop.subscribe();
        let mut persist = tokio::time::interval(PERSIST_INTERVAL);
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(LAGGING_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut log = HubLog::default();
        loop {
            tokio::select! {
                first = updates.recv() => {
                    let Some(first) = first else { break };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match updates.try_recv() {
                            Ok(update) => batch.push(update),
                            Err(_) => break,
                        }
                    }
                    let (changes, messages) = self.points.apply(batch, &mut log);
                    self.deliver(&changes);
                    for change in changes {
                        if change.value_changed {
                            self.dirty.insert(change.point.clone());
                            let _ = self.events.send(PointEvent::Change { point: change.point, value: change.state.value, old: change.old });
                        }
                    }
                    for message in messages {
                        if let Update::Message { connection, topic, payload } = message {
                            let _ = self.events.send(PointEvent::Message { connection, topic, payload });
                        }
                    }
                }
                _ = persist.tick() => self.persist().await,
                _ = retry.tick(), if !self.lagging.is_empty() => self.catch_up(),
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
        }
        self.persist().await;
    }

    /// Pushes the changes to the sessions that show them: one frame per
    /// session with all of its changes of the batch.
    fn deliver(&mut self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let points = &self.points;
        // Each change is serialized once, and each distinct set of changes
        // once: the sessions showing the same page share one frame.
        let items: Vec<String> = changes
            .iter()
            .map(|c| {
                points
                    .defs
                    .get(&c.point)
                    .map(|def| push_item(def, &c.state).to_string())
                    .unwrap_or_default()
            })
            .collect();
        let mut frames: FxHashMap<Vec<usize>, Frame> = FxHashMap::default();
        let mut by_session: FxHashMap<&str, Vec<usize>> = FxHashMap::default();
        let watches = lock(&points.watches);
        for (index, change) in changes.iter().enumerate() {
            if let Some(sessions) = watches.by_point.get(&change.point) {
                for session in sessions {
                    by_session.entry(session.as_str()).or_default().push(index);
                }
            }
        }
        let mut gone = Vec::new();
        for (id, indices) in by_session {
            let Some(session) = self.sessions.get(id, &points.project) else {
                gone.push(id.to_string());
                continue;
            };
            if !session.is_connected() {
                // A browser that comes back gets a snapshot instead.
                continue;
            }
            let Some(watch) = watches.by_session.get(id) else {
                continue;
            };
            let shown: Vec<usize> = session.with_state(|state| {
                let open = watch.open_pages(&state.tabs);
                indices
                    .into_iter()
                    .filter(|&i| watch.shown_on(&open, &changes[i].point))
                    .collect()
            });
            if shown.is_empty() {
                continue;
            }
            let frame = frames
                .entry(shown)
                .or_insert_with_key(|shown| {
                    let set: Vec<&str> = shown.iter().map(|&i| items[i].as_str()).collect();
                    format!("{{\"type\":\"points\",\"set\":[{}]}}", set.join(",")).into()
                })
                .clone();
            if !session.try_push(&frame) {
                self.lagging.insert(id.to_string());
            }
        }
        drop(watches);
        if !gone.is_empty() {
            let mut watches = lock(&points.watches);
            for id in gone {
                watches.by_session.remove(&id);
                for sessions in watches.by_point.values_mut() {
                    sessions.remove(&id);
                }
            }
        }
    }

    /// Sends the sessions that missed a frame what they show now.
    fn catch_up(&mut self) {
        let points = self.points.clone();
        let sessions = self.sessions.clone();
        self.lagging.retain(|id| {
            sessions
                .get(id, &points.project)
                .is_some_and(|session| !snapshot(&points, &session))
        });
    }

    /// Writes the values changed since the last time, in one transaction.
    async fn persist(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let writes: Vec<Write> = self
            .dirty
            .drain()
            .filter_map(|name| {
                let state = self.points.state(&name)?;
                let bytes = serde_json::to_vec(&state).ok()?;
                Some(Write::Put(
                    Table::Points,
                    store_key(&self.points.project, &name),
                    bytes,
                ))
            })
            .collect();
        let store = self.store.clone();
        let project = self.points.project.clone();
        let written = tokio::task::spawn_blocking(move || store.write(&writes)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => error!(project, "could not store point values: {error}"),
            Err(error) => error!(project, "storing point values ended abnormally: {error}"),
        }
    }
}

/// A JSON value as a script value (`()` for null).
pub fn to_dynamic(value: Value) -> Dynamic {
    if value.is_null() {
        return Dynamic::UNIT;
    }
    rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT)
}

fn points_frame(items: &[Value]) -> Frame {
    serde_json::json!({ "type": "points", "set": items })
        .to_string()
        .into()
}

fn push_item(def: &PointDef, state: &PointState) -> Value {
    serde_json::json!({
        "name": def.name(),
        "value": state.value,
        "quality": state.quality,
        "text": display_text(def.kind(), &state.value, &def.config.unit),
        "seq": state.seq,
    })
}

fn template_entry(def: &PointDef, state: &PointState) -> Value {
    value::template_entry(
        def.kind(),
        &def.config.unit,
        def.writable,
        &state.value,
        state.quality.as_str(),
        state.changed,
        state.seq,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_shows_only_open_pages() {
        let mut watch = Watch::default();
        watch.pages.insert(
            "climate".into(),
            PageBinding {
                points: ["t".to_string()].into_iter().collect(),
                rendered: Instant::now() - RENDER_GRACE,
            },
        );
        let tab = |page: &str| BTreeMap::from([("tab".to_string(), page.to_string())]);
        assert!(!watch.shows("t", &tab("home")));
        assert!(watch.shows("t", &tab("climate")));
        watch.extra.insert("t".into());
        assert!(watch.shows("t", &BTreeMap::new()));
    }
}
