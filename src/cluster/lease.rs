//! Once per cluster: a lease per project in a JetStream key-value bucket,
//! held by one node at a time. The holder runs the project's work that
//! must happen once however many nodes there are (timers, `pointChange`,
//! `projectStartup`, the idle expiry of sessions); the runtime asks
//! [`Leases::holds`] before running it. See docs/cluster.md, "Once per
//! cluster".
//!
//! The record under a project's key names its holder. The holder renews it
//! every fifth of the lease time with a compare-and-set on the revision it
//! wrote; another node, looking as often, that sees the same revision for
//! three fifths of a lease takes it over with a compare-and-set on that
//! revision, so two nodes can never both win one lapse, and a dead
//! holder's work resumes elsewhere within one lease time. A clean stop
//! releases the lease at once.
//!
//! Nobody compares clocks: the holder stops acting half a lease after it
//! *sent* its last successful renewal, and a taker waits three fifths of a
//! lease after it first *saw* that renewal. A holder cut off from NATS
//! therefore stops before anyone can take over (the margin is a tenth of
//! the lease, less any difference in the two machines' clock rates).
//!
//! This module does not know what a timer or a session is; it only answers
//! "does this node act for project P now?".

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use super::ClusterError;
use super::kv::{SharedKv, bucket_stream, encode_key, wait};

/// The bucket of leases and of the nodes' presence.
pub const LEASE_BUCKET: &str = "switchboard_leases";

/// Default lease time: how long a project's once-per-cluster work may stop
/// when its node dies; a node cut off from NATS keeps acting for half of
/// it at most.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);

/// Shortest lease accepted: below this a busy machine's scheduling delays
/// would make leases change hands while their holder is alive.
pub const MIN_LEASE: Duration = Duration::from_millis(500);

/// The holder renews every fifth of the lease time; the others look as
/// often.
const RENEW_PARTS: u32 = 5;

/// Presence keys start with this; lease keys with `project.`.
const NODE_PREFIX: &str = "node.";
const PROJECT_PREFIX: &str = "project.";

/// What a lease record says.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The node holding the lease; empty: released by a clean stop.
    holder: String,
}

/// How this node got (or did not get) a project's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// No lease existed: the project starts in the cluster now (the first
    /// node up, or every node was down longer than the bucket keeps a
    /// lapsed lease): `projectStartup` is this node's to run.
    Created,
    /// This node holds it (renewed, taken over, or released to it).
    Holding,
    /// Another node holds it.
    Elsewhere,
}

/// The leases of this node, kept by a task on the cluster runtime.
pub struct Leases {
    state: Arc<State>,
    runtime: tokio::runtime::Handle,
    stop: watch::Sender<bool>,
}

struct State {
    node: String,
    ttl: Duration,
    store: kv::Store,
    projects: Mutex<HashMap<String, Lease>>,
    /// One step (request and bookkeeping) at a time: the loop and a
    /// start-up acquisition must not race each other's revisions.
    stepping: tokio::sync::Mutex<()>,
}

/// This node's view of one project's lease.
#[derive(Default)]
struct Lease {
    held: Option<Held>,
    /// Not held: the revision last seen and when it was first seen.
    seen: Option<(u64, Instant)>,
}

struct Held {
    revision: u64,
    acts_until: Instant,
}

impl Leases {
    /// Opens the lease bucket and starts renewing and watching leases for
    /// the projects later [`Leases::acquire`]d.
    pub fn start(kv: &SharedKv, node: &str, ttl: Duration) -> Result<Leases, ClusterError> {
        let ttl = ttl.max(MIN_LEASE);
        let runtime = kv.runtime()?;
        let client = kv.client();
        let store = wait(&runtime, open_bucket(client, ttl, kv.replicas))??;
        let state = Arc::new(State {
            node: node.to_string(),
            ttl,
            store,
            projects: Mutex::default(),
            stepping: tokio::sync::Mutex::new(()),
        });
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(keep_forever(state.clone(), stopped));
        Ok(Leases {
            state,
            runtime,
            stop,
        })
    }

    /// The lease time.
    pub fn ttl(&self) -> Duration {
        self.state.ttl
    }

    /// Starts looking after `project`'s lease and tries to take it now;
    /// blocks for one NATS round trip (or fails after the call limit).
    pub fn acquire(&self, project: &str) -> Acquired {
        self.state
            .projects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(project.to_string())
            .or_default();
        let state = self.state.clone();
        let project = project.to_string();
        wait(&self.runtime, async move {
            let _one = state.stepping.lock().await;
            state.step(&project).await
        })
        .unwrap_or(Acquired::Elsewhere)
    }

    /// Whether this node acts for `project` now: it holds the lease and its
    /// last renewal is recent enough that nobody can have taken over.
    pub fn holds(&self, project: &str) -> bool {
        self.state.holds(project)
    }

    /// Stops renewing and gives every lease held back at once (a clean
    /// stop): another node takes over without waiting for a lapse. The last
    /// node to stop deletes the leases, so that the next start of the
    /// cluster is a start (`projectStartup` runs).
    pub fn release_all(&self) {
        self.stop.send_replace(true);
        let state = self.state.clone();
        let outcome = wait(&self.runtime, async move {
            let _one = state.stepping.lock().await;
            state.release_all().await
        })
        .map_err(|e| e.to_string())
        .and_then(|released| released);
        if let Err(error) = outcome {
            warn!("could not release the leases: {error}; other nodes take over when they lapse");
        }
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Opens (creating if needed) the lease bucket. Its stream drops a record
/// not written for three lease times: a lease whose every node died, and
/// the presence of a dead node.
async fn open_bucket(
    client: async_nats::Client,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    let jetstream = async_nats::jetstream::new(client);
    let bucket_error = |reason: String| {
        ClusterError::Request(format!("cannot open the bucket {LEASE_BUCKET}: {reason}"))
    };
    let config = async_nats::jetstream::stream::Config {
        max_age: ttl * 3,
        ..bucket_stream(LEASE_BUCKET, replicas)
    };
    jetstream
        .get_or_create_stream(config)
        .await
        .map_err(|e| bucket_error(e.to_string()))?;
    jetstream
        .get_key_value(LEASE_BUCKET)
        .await
        .map_err(|e| bucket_error(e.to_string()))
}

/// Renews and watches every fifth of a lease time until stopped.
async fn keep_forever(state: Arc<State>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.ttl / RENEW_PARTS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
        let _one = state.stepping.lock().await;
        state.say_present().await;
        let projects: Vec<String> = state.lock().keys().cloned().collect();
        for project in projects {
            state.step(&project).await;
        }
    }
}

fn lease_key(project: &str) -> String {
    format!("{PROJECT_PREFIX}{}", encode_key(project))
}

fn node_key(node: &str) -> String {
    format!("{NODE_PREFIX}{}", encode_key(node))
}

fn record(holder: &str) -> bytes::Bytes {
    serde_json::to_vec(&Record {
        holder: holder.to_string(),
    })
    .unwrap_or_default()
    .into()
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.projects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn holds(&self, project: &str) -> bool {
        self.lock()
            .get(project)
            .and_then(|lease| lease.held.as_ref())
            .is_some_and(|held| Instant::now() < held.acts_until)
    }

    /// How long after sending a renewal the holder may act on it: half a
    /// lease, a tenth less than the least a taker waits after the renewal
    /// was written ([`State::lapse_time`]).
    fn acting_time(&self) -> Duration {
        self.ttl / 2
    }

    /// How long a revision must stay unchanged before a taker takes over:
    /// with a look every fifth of a lease before and after it, a lease
    /// changes hands at most one lease time after its last renewal.
    fn lapse_time(&self) -> Duration {
        self.ttl * 3 / 5
    }

    /// One look at a project's lease: renew it if held, else take it if it
    /// is free, released, ours, or unchanged for a whole lease time.
    async fn step(&self, project: &str) -> Acquired {
        let key = lease_key(project);
        let sent = Instant::now();
        let held = self.lock().get(project).and_then(|lease| {
            let held = lease.held.as_ref()?;
            Some((held.revision, Instant::now() < held.acts_until))
        });
        match held {
            Some((revision, true)) => self.renew(project, &key, revision, sent).await,
            Some((_, false)) => {
                // Renewals failed for too long: no longer ours to act on.
                warn!(project, node = %self.node, "lease lapsed (NATS unreachable?): this node stops the once-per-cluster work until it holds it again");
                self.set(project, None, None);
                self.try_take(project, &key, sent).await
            }
            None => self.try_take(project, &key, sent).await,
        }
    }

    async fn renew(&self, project: &str, key: &str, revision: u64, sent: Instant) -> Acquired {
        match self.store.update(key, record(&self.node), revision).await {
            Ok(revision) => {
                self.set(project, Some(self.held(revision, sent)), None);
                Acquired::Holding
            }
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                warn!(project, node = %self.node, "lease taken by another node: this node stops the once-per-cluster work");
                self.set(project, None, None);
                Acquired::Elsewhere
            }
            // Kept until its time runs out: a blip must not hand the work
            // over, a lasting outage does (see `step`).
            Err(_) => Acquired::Holding,
        }
    }

    async fn try_take(&self, project: &str, key: &str, sent: Instant) -> Acquired {
        let entry = match self.store.entry(key).await {
            Ok(entry) => entry.filter(|e| e.operation == Operation::Put),
            Err(_) => return Acquired::Elsewhere,
        };
        let Some(entry) = entry else {
            return match self.store.create(key, record(&self.node)).await {
                Ok(revision) => {
                    self.took(
                        project,
                        revision,
                        sent,
                        "no lease existed: the project starts in the cluster",
                    );
                    Acquired::Created
                }
                Err(_) => Acquired::Elsewhere,
            };
        };
        let holder = serde_json::from_slice::<Record>(&entry.value)
            .map(|r| r.holder)
            .unwrap_or_default();
        let why = if holder.is_empty() {
            "released by a clean stop".to_string()
        } else if holder == self.node {
            "it named this node already (a restart)".to_string()
        } else if self.unchanged_for_a_lease(project, entry.revision) {
            format!(
                "{holder} did not renew it for {} ms",
                self.lapse_time().as_millis()
            )
        } else {
            return Acquired::Elsewhere;
        };
        match self
            .store
            .update(key, record(&self.node), entry.revision)
            .await
        {
            Ok(revision) => {
                self.took(project, revision, sent, &why);
                Acquired::Holding
            }
            Err(_) => Acquired::Elsewhere,
        }
    }

    /// Whether `revision` is the one this node has seen for a whole lease
    /// time; starts the wait when it is new.
    fn unchanged_for_a_lease(&self, project: &str, revision: u64) -> bool {
        let mut projects = self.lock();
        let lease = projects.entry(project.to_string()).or_default();
        match lease.seen {
            Some((seen, since)) if seen == revision => since.elapsed() >= self.lapse_time(),
            _ => {
                lease.seen = Some((revision, Instant::now()));
                false
            }
        }
    }

    fn took(&self, project: &str, revision: u64, sent: Instant, why: &str) {
        self.set(project, Some(self.held(revision, sent)), None);
        info!(project, node = %self.node, "this node holds the lease and runs the once-per-cluster work ({why})");
    }

    fn held(&self, revision: u64, sent: Instant) -> Held {
        Held {
            revision,
            acts_until: sent + self.acting_time(),
        }
    }

    fn set(&self, project: &str, held: Option<Held>, seen: Option<(u64, Instant)>) {
        if let Some(lease) = self.lock().get_mut(project) {
            lease.held = held;
            lease.seen = seen;
        }
    }

    /// Tells the other nodes this one is alive: a clean stop deletes the
    /// leases only when no other node is.
    async fn say_present(&self) {
        let _ = self
            .store
            .put(node_key(&self.node), self.node.clone().into())
            .await;
    }

    /// Other nodes that said they were present within two lease times
    /// (the server's clock on the records against this node's).
    async fn others_present(&self) -> Result<HashSet<String>, String> {
        let mut keys = self.store.keys().await.map_err(|e| e.to_string())?;
        let mine = node_key(&self.node);
        let mut present = HashSet::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let recent = i128::try_from(now.saturating_sub(self.ttl * 2).as_nanos()).unwrap_or(0);
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if !key.starts_with(NODE_PREFIX) || key == mine {
                continue;
            }
            if let Ok(Some(entry)) = self.store.entry(&key).await
                && entry.operation == Operation::Put
                && entry.created.unix_timestamp_nanos() >= recent
            {
                present.insert(String::from_utf8_lossy(&entry.value).into_owned());
            }
        }
        Ok(present)
    }

    /// Gives back every lease this node holds; when no other node is
    /// present, deletes the project's lease even if it is not ours but was
    /// released (a node that stopped before this one): the cluster stops.
    async fn release_all(&self) -> Result<(), String> {
        let _ = self.store.purge(node_key(&self.node)).await;
        let others = self.others_present().await?;
        let projects: Vec<String> = {
            let mut projects = self.lock();
            for lease in projects.values_mut() {
                lease.held = None;
            }
            projects.keys().cloned().collect()
        };
        for project in projects {
            let key = lease_key(&project);
            let Some(entry) = self
                .store
                .entry(key.as_str())
                .await
                .map_err(|e| e.to_string())?
                .filter(|e| e.operation == Operation::Put)
            else {
                continue;
            };
            let holder = serde_json::from_slice::<Record>(&entry.value)
                .map(|r| r.holder)
                .unwrap_or_default();
            let ours_or_free = holder == self.node || holder.is_empty();
            if ours_or_free && others.is_empty() {
                self.store
                    .purge_expect_revision(&key, Some(entry.revision))
                    .await
                    .map_err(|e| e.to_string())?;
                info!(project, node = %self.node, "lease deleted: the last node stops");
            } else if holder == self.node {
                self.store
                    .update(&key, record(""), entry.revision)
                    .await
                    .map_err(|e| e.to_string())?;
                info!(project, node = %self.node, "lease released for another node to take");
            }
        }
        Ok(())
    }
}
