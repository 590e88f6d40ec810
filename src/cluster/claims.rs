//! Exactly-once claims shared by the nodes of a cluster: who runs a command
//! `id` or a form submission, and a lock per project for form submissions.
//!
//! A claim is a key in the `switchboard_claims` bucket, taken with a KV
//! `create` (which fails when the key exists) and holding the node, a token
//! and a state: `running` while the handler runs, `committing` from the
//! moment its effects start being written (the first write that cannot be
//! taken back), `abandoned` once another node found it `committing` and
//! dead. While its node lives, the claim is renewed every third of a
//! [`LEASE`] (an `update` on the revision it holds). Another node that
//! wants the same key reads the answer record and the claim until either
//! the record appears (the repeat is answered from it) or the claim's
//! revision stays unchanged for a whole lease, measured on its own clock —
//! no decision depends on two nodes' clocks agreeing. Then it takes the
//! claim over with an `update` on that revision (one taker wins):
//!
//! - a `running` claim whose node died never wrote anything: the taker
//!   runs the command, once;
//! - a `committing` or `abandoned` one may have written part of its
//!   effects (NATS KV has no multi-key transaction): the taker never runs
//!   it again and records an "outcome unknown" answer instead.
//!
//! This module knows keys, revisions and leases; what a record means and
//! what is answered is `crate::runtime`'s (delivery).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::ClusterError;
use super::kv::{SharedKv, encode_key, until_answered};

/// The bucket of claims and locks.
pub const CLAIMS_BUCKET: &str = "switchboard_claims";

/// How long a claim stands without being renewed before another node may
/// take it over: long enough that a busy node's renewal (every third of
/// it) is never late by a whole lease, short enough that a repeat after a
/// node died is answered within seconds.
pub const LEASE: Duration = Duration::from_secs(4);

/// How long a claim stays in the bucket at most (its stream's `max_age`):
/// a live claim is renewed far more often; one left `committing` by a dead
/// node keeps repeats from running for as long as commands' answers are
/// kept (an hour).
pub const CLAIM_MAX_AGE: Duration = Duration::from_secs(3600);

/// How often a node waiting for another's claim looks again.
const POLL: Duration = Duration::from_millis(25);

/// What a claim says about its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The handler runs; nothing was written.
    Running,
    /// The run's effects are being written.
    Committing,
    /// Taken over from a node that died while committing.
    Abandoned,
}

/// The value of a claim key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClaimValue {
    node: String,
    /// Tells this attempt's own claim from any other (a `create` whose
    /// acknowledgement was lost may have stored it).
    token: String,
    stage: Stage,
    /// Unix milliseconds until which the holder promises a renewal; for
    /// people reading the bucket, not used to decide anything.
    deadline_ms: u64,
}

/// The outcome of claiming a key.
pub enum Claimed {
    /// This node holds the claim: run, [`Held::commit`] before writing
    /// anything, then [`Held::release`] once the record is stored.
    Mine(Held),
    /// The key's record exists (stored by whoever ran it).
    Answered(Vec<u8>),
    /// This node took over a claim whose node died while committing: do
    /// not run; record an "outcome unknown" answer, then release.
    Abandoned(Held),
}

/// A claim this node holds, renewed in the background until released or
/// dropped. Dropping without [`Held::release`] leaves the claim in the
/// bucket to lapse: what a failed commit must do.
pub struct Held {
    inner: Arc<HeldInner>,
}

struct HeldInner {
    store: kv::Store,
    /// The encoded key in the claims bucket.
    key: String,
    value: Mutex<(ClaimValue, u64)>,
    /// Another node took the claim over (this node was silent too long).
    lost: AtomicBool,
    /// One update of the claim at a time (renewal, stage change, release):
    /// each uses the revision the one before produced.
    serial: tokio::sync::Mutex<()>,
    shared: SharedHandle,
}

/// What a claim needs of the connection to run its requests.
#[derive(Clone)]
struct SharedHandle {
    runtime: tokio::runtime::Handle,
    client: async_nats::Client,
}

impl SharedKv {
    /// Claims `key` (`record`: where its answer is stored, read before and
    /// while waiting). Waits while another live node holds it. Fails only
    /// when NATS cannot be used: then nothing was claimed that will not
    /// lapse, and nothing may run.
    pub async fn claim(
        &self,
        key: &str,
        record: Option<(&'static str, &str)>,
    ) -> Result<Claimed, ClusterError> {
        if !self.is_connected() {
            return Err(ClusterError::Request(super::kv::NOT_CONNECTED.into()));
        }
        let store = self.bucket(CLAIMS_BUCKET)?;
        let record = match record {
            Some((bucket, key)) => Some((self.bucket(bucket)?, encode_key(key))),
            None => None,
        };
        let shared = SharedHandle {
            runtime: self.handle()?,
            client: self.client.clone(),
        };
        let work = take_claim(
            store,
            encode_key(key),
            record,
            self.node.clone(),
            shared.clone(),
        );
        // Not bounded by the call limit: waiting for a live holder lasts
        // as long as its handler runs. Every request inside is bounded.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        shared.runtime.spawn(async move {
            let _ = sender.send(work.await);
        });
        receiver
            .await
            .unwrap_or_else(|_| Err("the cluster connection is closed".into()))
            .map_err(ClusterError::Request)
    }
}

async fn take_claim(
    store: kv::Store,
    key: String,
    record: Option<(kv::Store, String)>,
    node: String,
    shared: SharedHandle,
) -> Result<Claimed, String> {
    let mine = ClaimValue {
        node,
        token: uuid::Uuid::new_v4().simple().to_string(),
        stage: Stage::Running,
        deadline_ms: deadline_ms(),
    };
    let answered = |record: &Option<(kv::Store, String)>| {
        let record = record.clone();
        async move {
            match record {
                Some((bucket, key)) => bucket
                    .get(key)
                    .await
                    .map(|found| found.map(|bytes| bytes.to_vec()))
                    .map_err(|e| e.to_string()),
                None => Ok(None),
            }
        }
    };
    // The revision seen last, and since when (this node's clock).
    let mut silent: Option<(u64, Instant)> = None;
    loop {
        // Created first, the record read after: a new command (the common
        // case) costs one round trip less than reading first.
        let started = Instant::now();
        let mine_bytes = encode(&mine)?;
        let created = match until_answered(|| store.create(&key, mine_bytes.clone())).await {
            Ok(revision) => Some(revision),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
            Err(e) => return Err(e.to_string()),
        };
        let (stage, revision) = match created {
            Some(revision) => (Stage::Running, revision),
            None => {
                if let Some(bytes) = answered(&record).await? {
                    return Ok(Claimed::Answered(bytes));
                }
                let Some((theirs, revision)) = current(&store, &key).await? else {
                    continue; // released meanwhile: try again
                };
                if theirs.token == mine.token {
                    (Stage::Running, revision) // our create, its ack lost
                } else {
                    // Silence counts only while NATS answers promptly:
                    // while it does not, the holder cannot renew either.
                    if started.elapsed() > LEASE / 4 {
                        silent = None;
                    }
                    let since = match silent {
                        Some((seen, since)) if seen == revision => since,
                        _ => {
                            silent = Some((revision, Instant::now()));
                            Instant::now()
                        }
                    };
                    if since.elapsed() < LEASE {
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                    let stage = match theirs.stage {
                        Stage::Running => Stage::Running,
                        Stage::Committing | Stage::Abandoned => Stage::Abandoned,
                    };
                    let taken = ClaimValue {
                        stage,
                        deadline_ms: deadline_ms(),
                        ..mine.clone()
                    };
                    let taken = encode(&taken)?;
                    match until_answered(|| store.update(&key, taken.clone(), revision)).await {
                        Ok(revision) => {
                            warn!(
                                "took over the claim of node {} ({:?}), silent for {:?}",
                                theirs.node,
                                theirs.stage,
                                since.elapsed()
                            );
                            (stage, revision)
                        }
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
        };
        let value = ClaimValue {
            stage,
            ..mine.clone()
        };
        let held = Held::start(store.clone(), key.clone(), value, revision, shared.clone());
        // Answered already: run and released before our create, or stored
        // by the node whose claim we took over.
        if let Some(bytes) = answered(&record).await? {
            held.release().await;
            return Ok(Claimed::Answered(bytes));
        }
        return Ok(match stage {
            Stage::Running => Claimed::Mine(held),
            Stage::Committing | Stage::Abandoned if record.is_none() => Claimed::Mine(held),
            Stage::Committing | Stage::Abandoned => Claimed::Abandoned(held),
        });
    }
}

/// The claim stored at `key` and its revision; `None` when there is none
/// (never created, or released: a delete marker).
async fn current(store: &kv::Store, key: &str) -> Result<Option<(ClaimValue, u64)>, String> {
    let Some(entry) = store.entry(key).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let value = serde_json::from_slice(&entry.value).map_err(|e| format!("bad claim: {e}"))?;
    Ok(Some((value, entry.revision)))
}

fn encode(value: &ClaimValue) -> Result<bytes::Bytes, String> {
    serde_json::to_vec(value)
        .map(bytes::Bytes::from)
        .map_err(|e| e.to_string())
}

fn deadline_ms() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    u64::try_from(now).unwrap_or(u64::MAX) + u64::try_from(LEASE.as_millis()).unwrap_or(0)
}

impl Held {
    fn start(
        store: kv::Store,
        key: String,
        value: ClaimValue,
        revision: u64,
        shared: SharedHandle,
    ) -> Held {
        let inner = Arc::new(HeldInner {
            store,
            key,
            value: Mutex::new((value, revision)),
            lost: AtomicBool::new(false),
            serial: tokio::sync::Mutex::new(()),
            shared,
        });
        inner
            .shared
            .runtime
            .spawn(renew_while_held(Arc::downgrade(&inner)));
        Held { inner }
    }

    /// Marks the claim `committing`, before the run writes anything: from
    /// now on a node that finds it dead will not run it again. Blocking
    /// (a script thread commits). Fails when the claim was taken over
    /// (this node was silent too long) or NATS cannot confirm: then
    /// nothing may be written.
    pub fn commit(&self) -> Result<(), ClusterError> {
        let inner = self.inner.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        self.inner.shared.runtime.spawn(async move {
            let _ = sender.send(inner.set_stage(Stage::Committing).await);
        });
        receiver
            .recv_timeout(super::kv::CALL_LIMIT)
            .map_err(|_| ClusterError::Request("no answer from NATS in time".into()))?
            .map_err(ClusterError::Request)
    }

    /// Whether the claim is (already) marked `committing`.
    pub fn is_committing(&self) -> bool {
        lock(&self.inner.value).0.stage != Stage::Running
    }

    /// Ends the claim (deletes it on the revision held): call it once the
    /// answer's record is stored.
    pub async fn release(&self) {
        let inner = self.inner.clone();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.inner.shared.runtime.spawn(async move {
            let _serialized = inner.serial.lock().await;
            let revision = lock(&inner.value).1;
            let outcome = until_answered(|| {
                inner
                    .store
                    .delete_expect_revision(&inner.key, Some(revision))
            })
            .await;
            let _ = sender.send(outcome.map_err(|e| e.to_string()));
        });
        // A claim that could not be deleted lapses after a lease; its
        // record is stored, so whoever takes it over answers from it.
        if let Ok(Err(error)) = receiver.await {
            info!("a claim was left to lapse: {error}");
        }
    }
}

impl HeldInner {
    async fn set_stage(&self, stage: Stage) -> Result<(), String> {
        let _serialized = self.serial.lock().await;
        if self.lost.load(Ordering::Relaxed) {
            return Err("the claim was taken over by another node".into());
        }
        let (value, revision) = {
            let held = lock(&self.value);
            if held.0.stage == stage {
                return Ok(());
            }
            (
                ClaimValue {
                    stage,
                    ..held.0.clone()
                },
                held.1,
            )
        };
        self.update(value, revision).await
    }

    async fn renew(&self) -> Result<(), String> {
        let _serialized = self.serial.lock().await;
        let (value, revision) = {
            let held = lock(&self.value);
            let renewed = ClaimValue {
                deadline_ms: deadline_ms(),
                ..held.0.clone()
            };
            (renewed, held.1)
        };
        self.update(value, revision).await
    }

    /// Stores `value` if the claim is still at `revision` (ours).
    async fn update(&self, value: ClaimValue, revision: u64) -> Result<(), String> {
        let bytes = encode(&value)?;
        match until_answered(|| self.store.update(&self.key, bytes.clone(), revision)).await {
            Ok(next) => {
                *lock(&self.value) = (value, next);
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.lost.store(true, Ordering::Relaxed);
                Err("the claim was taken over by another node".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}
/// Renews the claim every third of a lease until it is released or
/// dropped, or another node took it over.
async fn renew_while_held(held: Weak<HeldInner>) {
    loop {
        tokio::time::sleep(LEASE / 3).await;
        let Some(held) = held.upgrade() else {
            return;
        };
        if held.shared.client.connection_state() != async_nats::connection::State::Connected {
            continue;
        }
        if let Err(error) = held.renew().await {
            warn!("could not renew a claim: {error}");
            if held.lost.load(Ordering::Relaxed) {
                return;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
