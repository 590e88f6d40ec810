//! Once per cluster, as the runtime sees it: which node runs a project's
//! timers, `pointChange`, `mqttMessage`, `projectStartup` and the idle
//! expiry of its sessions. On one node, that node; in cluster mode, the
//! holder of the project's lease (`crate::cluster::Leases`, which owns the
//! lease itself). The places that decide to run such work ask
//! [`Runtime::acts_for_project`].
//!
//! Idle expiry in cluster mode: every node writes a session's last-seen
//! time into its shared record (on each write, and for sessions in use at
//! least every quarter of the idle timeout); the lease holder reads the
//! records and ends, with `sessionTerminating` and `sessionShutdown`
//! (`IdleTimeout`), the sessions idle past the timeout, wherever they were
//! last used.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use super::handlers;
use super::state::{Runtime, ShutdownReason};
use crate::cluster::{Acquired, Leases};
use crate::project::Project;
use crate::session::SessionRecord;
use crate::store::{Store, StoreError, Table, Write};

/// Sessions in use get their last-seen time written at least this often
/// (a quarter of the idle timeout), within these bounds: often enough that
/// an active session never looks idle, rarely enough that 15 000 connected
/// panels cost a few writes a second.
const REFRESH_BOUNDS: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

/// The holder looks for expired sessions every quarter of the idle
/// timeout, within these bounds: each look reads every session record.
const EXPIRY_SCAN_BOUNDS: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_secs(60));

/// Opens the leases in cluster mode (none with the embedded store).
pub(super) fn start_leases(
    store: &Store,
    node: &str,
    lease: Duration,
) -> Result<Option<Leases>, StoreError> {
    match store.shared() {
        Some(shared) => Ok(Some(Leases::start(shared, node, lease)?)),
        None => Ok(None),
    }
}

/// A quarter of `timeout`, within `bounds`.
fn quarter_of(timeout: Duration, bounds: (Duration, Duration)) -> Duration {
    (timeout / 4).clamp(bounds.0, bounds.1)
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Runtime {
    /// Whether this node runs `project`'s once-per-cluster work now: always
    /// on one node; in a cluster, while it holds the project's lease.
    pub(super) fn acts_for_project(&self, project: &str) -> bool {
        self.leases
            .as_ref()
            .is_none_or(|leases| leases.holds(project))
    }

    /// At start, before the project is served: takes part in its lease and
    /// tells whether `projectStartup` is this node's to run — always on one
    /// node; in a cluster, only when the project starts in the cluster now
    /// (no node held its lease), not when a node joins a running cluster.
    pub(super) fn starts_project_here(&self, project: &str) -> bool {
        self.leases
            .as_ref()
            .is_none_or(|leases| leases.acquire(project) == Acquired::Created)
    }

    /// After a project (re)loaded: takes part in its lease, and tells
    /// whether this node runs its `projectStartup` (the holder does).
    pub(super) async fn acquires_project(&self, project: &str) -> bool {
        let (Some(runtime), Some(_)) = (self.arc(), self.leases.as_ref()) else {
            return true;
        };
        let name = project.to_string();
        let here = script_off_async(move || {
            runtime
                .leases
                .as_ref()
                .is_none_or(|leases| leases.acquire(&name) != Acquired::Elsewhere)
        })
        .await;
        if !here {
            info!(
                project,
                "projectStartup runs on the node holding the project's lease, not here"
            );
        }
        here
    }

    /// A clean stop: the leases go back at once, for another node to take.
    pub(super) async fn release_leases(&self) {
        let Some(runtime) = self.arc() else {
            return;
        };
        if self.leases.is_some() {
            script_off_async(move || {
                if let Some(leases) = &runtime.leases {
                    leases.release_all();
                }
                true
            })
            .await;
        }
    }

    /// Cluster mode, at each idle sweep (`sweep` counts them, every
    /// `sweep_every` apart): writes the last-seen time of the sessions used
    /// since the last refresh, and, on the lease holder, ends the sessions
    /// whose records are idle past their project's timeout.
    pub(super) async fn expire_shared_sessions(&self, sweep: u64, sweep_every: Duration) {
        if self.leases.is_none() {
            return;
        }
        let due = |every: Duration| {
            let sweeps = (every.as_millis() / sweep_every.as_millis().max(1)).max(1);
            sweep.is_multiple_of(u64::try_from(sweeps).unwrap_or(1))
        };
        self.refresh_last_seen(&due, sweep_every);
        let expiring: HashMap<String, Arc<Project>> = self
            .projects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|project| {
                let timeout = Duration::from_secs(project.settings.idle_timeout_secs);
                due(quarter_of(timeout, EXPIRY_SCAN_BOUNDS)) && self.acts_for_project(&project.name)
            })
            .map(|project| (project.name.clone(), project.clone()))
            .collect();
        if !expiring.is_empty() {
            self.end_expired_sessions(&expiring).await;
        }
    }

    /// Writes (behind, not waited for) the records of the sessions this
    /// node saw used within their project's refresh time: the last write
    /// after any use carries its time.
    fn refresh_last_seen(&self, due: &dyn Fn(Duration) -> bool, sweep_every: Duration) {
        let refreshing: HashMap<String, Duration> = self
            .projects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|project| {
                let timeout = Duration::from_secs(project.settings.idle_timeout_secs);
                (project.name.clone(), quarter_of(timeout, REFRESH_BOUNDS))
            })
            .filter(|(_, refresh)| due(*refresh))
            .collect();
        if refreshing.is_empty() {
            return;
        }
        let mut writes = Vec::new();
        for session in self.sessions.all() {
            let Some(refresh) = refreshing.get(&session.project) else {
                continue;
            };
            // Two sweeps of slack: a sweep running late still catches a
            // use made just after the previous refresh.
            if session.idle_for() > *refresh + sweep_every * 2 {
                continue;
            }
            if let Ok(bytes) = serde_json::to_vec(&session.record()) {
                writes.push(Write::Put(Table::Sessions, session.id.clone(), bytes));
            }
        }
        if !writes.is_empty() {
            drop(self.store.write_soon(writes));
        }
    }

    /// Reads every session record and ends those of `projects` idle past
    /// the timeout. Each is read again just before it ends: a node that used
    /// it meanwhile has written a newer last-seen time.
    async fn end_expired_sessions(&self, projects: &HashMap<String, Arc<Project>>) {
        let Some(runtime) = self.arc() else {
            return;
        };
        let scanned = {
            let runtime = runtime.clone();
            crate::script::run_off_async(move || runtime.store.scan(Table::Sessions, "")).await
        };
        let records = match scanned {
            Ok(Ok(records)) => records,
            Ok(Err(error)) => {
                error!("idle expiry: could not read the shared sessions: {error}");
                return;
            }
            Err(_) => return,
        };
        let now = now_millis();
        for (id, bytes) in records {
            let Some(project) = expired(&bytes, projects, now) else {
                continue;
            };
            let local = self.sessions.by_id(&id);
            if local.as_ref().is_some_and(|s| s.is_connected()) {
                continue;
            }
            let again = {
                let (runtime, id) = (runtime.clone(), id.clone());
                crate::script::run_off_async(move || runtime.store.get(Table::Sessions, &id)).await
            };
            let Ok(Ok(Some(bytes))) = again else {
                continue;
            };
            if expired(&bytes, projects, now_millis()).is_none() {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<SessionRecord>(&bytes) else {
                continue;
            };
            let session = local.unwrap_or_else(|| self.sessions.restore(record));
            info!(project = %project.name, session = session.log_id(), "session idle past the timeout in the cluster: this node, the lease holder, ends it");
            handlers::session_terminating(&runtime, project, &session, "IdleTimeout").await;
            self.end_session(&session, ShutdownReason::IdleTimeout)
                .await;
        }
    }
}

/// The project of a record idle past its timeout at `now`, if it is one of
/// `projects`.
fn expired<'a>(
    bytes: &[u8],
    projects: &'a HashMap<String, Arc<Project>>,
    now: u64,
) -> Option<&'a Arc<Project>> {
    let record = serde_json::from_slice::<SessionRecord>(bytes).ok()?;
    let project = projects.get(&record.project)?;
    let timeout_ms = project.settings.idle_timeout_secs.saturating_mul(1000);
    let idle = now.saturating_sub(record.last_seen?);
    (idle >= timeout_ms).then_some(project)
}

/// Runs blocking lease work on the script threads' pool, off the async
/// thread; `false` if the pool refused it.
async fn script_off_async(job: impl FnOnce() -> bool + Send + 'static) -> bool {
    crate::script::run_off_async(job).await.unwrap_or(false)
}
