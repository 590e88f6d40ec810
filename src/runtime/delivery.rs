//! Exactly-once delivery: a command with an `id` and a form submission are
//! run once, however many times they arrive (reconnects, retries, a server
//! restart); repeats get the stored answer.
//!
//! The handler's persistent effects (session state, `!` variables) and the
//! answer record are committed in one store transaction, so a crash leaves
//! either all of them or none: a command the server died in the middle of
//! runs again from scratch when the client re-sends it, once.
//!
//! In cluster mode the claim is also taken in the shared store (a KV
//! `create`, `crate::cluster` claims), so that no two nodes run the same
//! id; the batch is written in order, not atomically, after the claim is
//! marked `committing`: a repeat of a run whose node died from then on is
//! answered "outcome unknown", never run again (docs/cluster.md).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::mapref::entry::Entry;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, warn};

use rhai::Dynamic;

use super::state::Runtime;
use crate::answer::{Action, Display, Status};
use crate::cluster::{Claimed, Held};
use crate::protocol::Reply;
use crate::session::Session;
use crate::store::{Commit, Store, StoreError, Table, Write};

/// What a user sees when a command or submission that must run exactly
/// once cannot be claimed: NATS is unreachable, so this node cannot know
/// whether another node runs it. Nothing ran.
pub const UNAVAILABLE_MESSAGE: &str =
    "Not done: the server cannot reach the cluster right now. Please try again in a moment.";

/// What a user sees when a run's effects may have been written only in
/// part (its node lost NATS, or died, while writing them): it is never run
/// again, so the user must look.
pub const UNKNOWN_OUTCOME_MESSAGE: &str = "This may not have been saved completely: the server lost the cluster while saving it. It will not be done again; please check the result.";

/// How long answers to commands are kept for repeats: far longer than any
/// reconnect, short enough that the table stays small.
const REPLY_RETENTION: Duration = Duration::from_secs(3600);

/// Expired answers deleted per store write by a prune: what one holds.
const PRUNE_STEP: usize = 4096;

/// How often a repeat looks for the record of a run that ended without
/// releasing its claim.
const DEAD_CLAIM_POLL: Duration = Duration::from_millis(10);

thread_local! {
    // Store writes deferred until the running handler's transaction commits.
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

#[derive(Default)]
struct Batch {
    sessions: BTreeSet<String>,
    /// `!` variables to write at commit.
    vars: BTreeSet<String>,
    /// Each `!` variable's value as this run last wrote it (`()`: removed).
    /// The batch writes these, not the value in memory when it is built:
    /// that may already hold a later run's change, and a crash after this
    /// batch but before that run's would keep the later run's effect
    /// without its answer — and its repeat would apply it again.
    values: HashMap<String, Dynamic>,
    /// Every variable the run changed: its value before the run's first
    /// change, and the version of the run's last write.
    undo: HashMap<String, (Option<Dynamic>, u64)>,
    /// The run's claim in the shared store (cluster mode).
    claim: Option<Arc<Held>>,
    /// Cluster mode: whether a write the run made at once may or may not
    /// have been applied (a compare-and-set whose answer was lost).
    uncertain: bool,
    /// The run's place among the runs that changed `!` variables.
    ticket: Option<Ticket>,
}

/// Queues batches that change `!` variables in the order of their first
/// change. B's value may include A's change (B's `varUpdate` read A's
/// value). Were B's batch queued, and made durable, before A's, a crash
/// between the two would keep A's effect inside B's value while A's answer
/// was lost: A's repeat would run again and apply it twice. So B's batch
/// waits for A's to be queued (the writer keeps queue order). The other
/// half: A's batch writes A's own value, never B's (`Batch::values`).
#[derive(Default)]
pub(crate) struct VarOrder {
    state: std::sync::Mutex<OrderState>,
    turn: std::sync::Condvar,
}

#[derive(Default)]
struct OrderState {
    issued: u64,
    /// The lowest ticket whose batch has not been queued.
    next: u64,
    /// Tickets done ahead of their turn.
    done: BTreeSet<u64>,
    /// Threads waiting for their turn: nobody to wake is the usual case
    /// (runs rarely overlap), and a wake-up is a system call.
    waiting: usize,
}

/// A run's place in [`VarOrder`]; done when dropped (whatever happened to
/// the run: a failed or panicking one must not hold up the others).
struct Ticket {
    order: Arc<VarOrder>,
    number: u64,
}

impl VarOrder {
    fn lock(&self) -> std::sync::MutexGuard<'_, OrderState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn issue(&self) -> u64 {
        let mut state = self.lock();
        state.issued += 1;
        state.issued - 1
    }

    /// Waits until every earlier ticket is done.
    fn wait_turn(&self, number: u64) {
        let mut state = self.lock();
        while state.next < number {
            state.waiting += 1;
            state = self
                .turn
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.waiting -= 1;
        }
    }

    fn done(&self, number: u64) {
        let mut state = self.lock();
        if number != state.next {
            // An earlier ticket is still out: nobody's turn comes yet.
            state.done.insert(number);
            return;
        }
        state.next += 1;
        while let Some(next) = state.done.first().copied().filter(|&n| n == state.next) {
            state.done.remove(&next);
            state.next += 1;
        }
        let wake = state.waiting > 0;
        drop(state);
        if wake {
            self.turn.notify_all();
        }
    }
}

/// Drops this thread's batch when a run unwinds out of `atomically`.
struct ClearBatch;

impl Drop for ClearBatch {
    fn drop(&mut self) {
        drop(BATCH.take());
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.order.done(self.number);
    }
}

/// What the store keeps of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReply {
    pub status: Status,
    pub actions: Vec<Action>,
    /// Unix seconds when it was stored, for expiry.
    pub at: u64,
}

impl StoredReply {
    pub fn new(reply: &Reply) -> StoredReply {
        StoredReply {
            status: reply.status,
            actions: reply.actions.clone(),
            at: unix_now(),
        }
    }

    /// The reply to a repeat, carrying the repeat's `seq`.
    pub fn reply(self, seq: Option<u64>) -> Reply {
        Reply {
            seq,
            status: self.status,
            actions: self.actions,
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The writes that keep an answer for `keep` seconds: its entry in
/// `Table::Expiries`, `{due, 12 hex digits}\0{table}\0{key}`, which orders
/// every kept answer by when it is due, then its record — last, as every
/// answer's record is: in cluster mode the writes are applied one by one,
/// and a record present means the whole run was stored (docs/cluster.md).
/// An entry whose record never came is pruned in its time, deleting nothing.
pub fn answer_writes(table: Table, key: String, reply: &Reply, keep: u64) -> [Write; 2] {
    let stored = StoredReply::new(reply);
    let due = expiry_key(stored.at.saturating_add(keep), table, &key);
    let record = serde_json::to_vec(&stored).unwrap_or_default();
    [
        Write::Put(Table::Expiries, due, Vec::new()),
        Write::Put(table, key, record),
    ]
}

fn expiry_key(due: u64, table: Table, key: &str) -> String {
    let code = if table == Table::Submissions {
        's'
    } else {
        'r'
    };
    format!("{due:012x}\u{0}{code}\u{0}{key}")
}

/// The answer an expiry entry is for.
fn answer_of(entry: &str) -> Option<(Table, &str)> {
    let mut parts = entry.splitn(3, '\u{0}');
    let (_due, code, key) = (parts.next()?, parts.next()?, parts.next()?);
    match code {
        "r" => Some((Table::Replies, key)),
        "s" => Some((Table::Submissions, key)),
        _ => None,
    }
}

/// Deletes the answers due before `now`, walking `Table::Expiries` from
/// its start a bounded step at a time: a prune reads and holds only what is
/// due, however many answers are kept (it used to read every kept answer
/// each minute, hundreds of MiB at a time under a sustained load of
/// commands with ids). Returns how many entries it removed.
fn prune_due(store: &Store, now: u64) -> Result<usize, StoreError> {
    let due = format!("{now:012x}");
    in_steps(store, Table::Expiries, Some(&due), |entries| {
        let mut writes = Vec::with_capacity(entries.len() * 2);
        for (entry, _) in entries {
            if let Some((table, key)) = answer_of(entry) {
                writes.push(Write::Delete(table, key.to_string()));
            }
            writes.push(Write::Delete(Table::Expiries, entry.clone()));
        }
        writes
    })
}

/// Gives the answers stored before `Table::Expiries` existed their entries,
/// once per database (marked in `Table::Meta`).
fn index_older_answers(
    store: &Store,
    retention: impl Fn(Table, &str) -> u64,
) -> Result<(), StoreError> {
    const INDEXED: &str = "answers_indexed_for_expiry";
    if store.get(Table::Meta, INDEXED)?.is_some() {
        return Ok(());
    }
    for table in [Table::Replies, Table::Submissions] {
        in_steps(store, table, None, |records| {
            records
                .iter()
                .map(|(key, bytes)| {
                    // Unreadable records are due at once, as before.
                    let at = serde_json::from_slice::<StoredReply>(bytes).map_or(0, |r| r.at);
                    let due = at.saturating_add(retention(table, key));
                    Write::Put(Table::Expiries, expiry_key(due, table, key), Vec::new())
                })
                .collect()
        })?;
    }
    store.put(Table::Meta, INDEXED, b"1")
}

/// Walks `table` up to `to`, `PRUNE_STEP` records at a time, storing the
/// writes `step` makes of each before reading the next (so at most a step
/// is held); each step starts after the last key of the one before.
/// Returns how many records it walked.
fn in_steps(
    store: &Store,
    table: Table,
    to: Option<&str>,
    mut step: impl FnMut(&[(String, Vec<u8>)]) -> Vec<Write>,
) -> Result<usize, StoreError> {
    let (mut from, mut walked) = (String::new(), 0);
    loop {
        let records = store.range(table, &from, to, PRUNE_STEP)?;
        if records.is_empty() {
            return Ok(walked);
        }
        store.write(&step(&records))?;
        walked += records.len();
        match records.last() {
            // The least key after `key`.
            Some((key, _)) if records.len() == PRUNE_STEP => from = format!("{key}\u{0}"),
            _ => return Ok(walked),
        }
    }
}

/// Key of a command's answer.
pub fn reply_key(session: &str, id: &str) -> String {
    format!("{session}\u{0}{id}")
}

/// Key of a form submission's answer: bound to who submitted it (the user,
/// or the session for anonymous ones), so that an id reused by someone else
/// is a new submission and never gets another's stored answer. A user's
/// offline queue may deliver after a new login (a new session): still a
/// repeat. The project comes first: pruning reads it.
pub fn submission_key(project: &str, session: &Session, id: &str) -> String {
    let owner = if session.userid.is_empty() {
        format!("session:{}", session.id)
    } else {
        format!("user:{}", session.userid)
    };
    format!("{project}\u{0}{owner}\u{0}{id}")
}

/// The outcome of claiming an id: run it, or use the answer it already has.
pub enum Claim {
    /// Nobody ran it: run it, then [`Runtime::release`] the key.
    Run(Running),
    /// Already answered (now or after waiting for a concurrent run).
    Answered(StoredReply),
    /// Cluster mode, NATS unreachable: not run, answer
    /// [`UNAVAILABLE_MESSAGE`].
    Unavailable,
}

/// A claim this node holds: who waits for its answer here, and its claim
/// in the shared store (cluster mode).
pub struct Running {
    done: watch::Sender<Option<Reply>>,
    shared: Option<Arc<Held>>,
}

impl Running {
    /// The claim in the shared store, for the run's commit.
    pub fn shared(&self) -> Option<Arc<Held>> {
        self.shared.clone()
    }
}

/// Whether a write is an answer's record or its expiry.
fn is_answer(write: &Write) -> bool {
    matches!(
        write,
        Write::Put(Table::Replies | Table::Submissions | Table::Expiries, ..)
            | Write::Delete(Table::Replies | Table::Submissions | Table::Expiries, _)
    )
}

/// An error reply with a toast, for the answers delivery makes itself.
pub fn error_reply(seq: Option<u64>, message: &str) -> Reply {
    Reply {
        seq,
        status: Status::Error,
        actions: vec![Action::Error {
            message: Some(message.into()),
            display: Display::Toast,
            object: None,
        }],
    }
}

/// The reply to a run whose commit failed in cluster mode: nothing was
/// written if its claim never reached `committing`, else perhaps a part.
pub fn commit_failed_reply(seq: Option<u64>, claim: Option<&Held>) -> Reply {
    let message = match claim {
        Some(held) if held.is_committing() => UNKNOWN_OUTCOME_MESSAGE,
        _ => UNAVAILABLE_MESSAGE,
    };
    error_reply(seq, message)
}

impl Runtime {
    /// Defers this thread's store writes while `work` runs, then queues
    /// them with `extra` as one batch (one transaction) for the next group
    /// commit. The returned [`Commit`] is what the reply waits for: the
    /// batch when it holds what must not be lost once the user was
    /// answered (`!` variables, an answer's record); nothing when it holds
    /// only the session's own state (rollback values, openers, properties),
    /// which is written behind (see docs/reliability.md). In cluster mode
    /// the session's state is waited for too: the next request may land on
    /// another node, which reads it from the shared store. When `failed`
    /// says the run failed, its variable changes are undone instead of
    /// written: a user who taps again must not apply half an action twice.
    pub(super) fn atomically<R>(
        &self,
        claim: Option<Arc<Held>>,
        work: impl FnOnce() -> (R, Vec<Write>),
        failed: impl FnOnce(&R) -> bool,
    ) -> (R, Commit) {
        BATCH.set(Some(Batch {
            claim,
            ..Batch::default()
        }));
        // A run that panics leaves no batch (and no ticket) behind.
        let unwinding = ClearBatch;
        let (result, extra) = work();
        std::mem::forget(unwinding);
        let mut batch = BATCH.take().unwrap_or_default();
        let run_failed = failed(&result);
        if run_failed {
            self.undo_vars(std::mem::take(&mut batch.undo));
            batch.vars.clear();
        }
        if self.store.is_shared() {
            // A run that failed after writing what cannot be undone
            // (`varUpdate`) did some of its work: say so, never "try again".
            batch.uncertain |=
                run_failed && batch.claim.as_ref().is_some_and(|c| c.is_committing());
            let commit = self.commit_shared(batch, extra);
            return (result, commit);
        }
        let must_wait = !batch.vars.is_empty() || !extra.is_empty();
        let ticket = batch.ticket.take();
        if let Some(ticket) = &ticket {
            self.var_order.wait_turn(ticket.number);
        }
        let mut writes = self.batch_writes(batch);
        writes.extend(extra);
        let commit = self.store.write_soon(writes);
        drop(ticket);
        if must_wait {
            (result, commit)
        } else {
            drop(commit);
            (result, Commit::done())
        }
    }

    /// Cluster mode: marks the run's claim `committing`, then writes the
    /// batch in order (the answer's record last) and waits for it, here on
    /// the script thread. When either fails, the run's variable changes are
    /// undone in memory: a user who is told "not done" must not find them
    /// on this node. The session's own state stays in memory, and is
    /// written when NATS returns (`outage`): a batch with nothing else in
    /// it counts as stored.
    fn commit_shared(&self, mut batch: Batch, extra: Vec<Write>) -> Commit {
        let claim = batch.claim.take();
        let undo = std::mem::take(&mut batch.undo);
        let sessions: Vec<String> = batch.sessions.iter().cloned().collect();
        let shared_state = !batch.vars.is_empty() || !extra.is_empty();
        let uncertain = batch.uncertain;
        let mut writes = self.batch_writes(batch);
        writes.extend(extra);
        if uncertain {
            // No answer is recorded: the claim stays `committing` and
            // lapses, and whoever takes it over records "outcome unknown"
            // — the answer this run's reply gives too.
            writes.retain(|write| !is_answer(write));
        }
        if writes.is_empty() && !uncertain {
            return Commit::done();
        }
        let outcome = match &claim {
            Some(held) => held.commit().map_err(|e| e.to_string()),
            None => Ok(()),
        }
        .and_then(|()| self.store.write(&writes).map_err(|e| e.to_string()));
        match outcome {
            Ok(()) if uncertain => Commit::failed("the outcome of a write is unknown".into()),
            Ok(()) => Commit::done(),
            Err(error) => {
                for session in &sessions {
                    self.remember_unsaved(session);
                }
                if !shared_state {
                    // Only the session's own state: kept in memory, caught
                    // up when NATS returns; the answer stands.
                    return Commit::done();
                }
                warn!("a run's changes were not stored in the cluster: {error}");
                self.undo_vars(undo);
                Commit::failed(error)
            }
        }
    }

    /// Cluster mode: a write made at once by the running batch may or may
    /// not have been applied (its acknowledgement was lost).
    pub(super) fn mark_uncertain(&self) {
        BATCH.with_borrow_mut(|batch| {
            if let Some(batch) = batch.as_mut() {
                batch.uncertain = true;
            }
        });
    }

    /// Cluster mode: marks the running batch's claim `committing` before a
    /// write that cannot wait for the batch (`varUpdate`'s compare-and-set).
    pub(super) fn commit_claim_now(&self) -> Result<(), String> {
        let claim = BATCH.with_borrow(|batch| batch.as_ref().and_then(|b| b.claim.clone()));
        match claim {
            Some(held) => held.commit().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// Records a session write for the running batch; `false` when there is
    /// no batch on this thread (write at once).
    pub(super) fn defer_session(&self, id: &str) -> bool {
        BATCH.with_borrow_mut(|batch| {
            batch
                .as_mut()
                .map(|b| b.sessions.insert(id.to_string()))
                .is_some()
        })
    }

    /// Whether the running batch on this thread changed the persisted
    /// variable (its value is then the in-memory one until the batch is
    /// written).
    pub(super) fn var_is_deferred(&self, key: &str) -> bool {
        BATCH.with_borrow(|batch| batch.as_ref().is_some_and(|b| b.vars.contains(key)))
    }

    /// Called before a variable changes. In a batch, remembers its value
    /// before the run's first change (for an undo) and, for a `persisted`
    /// one, that it is written at commit. `false` when there is no batch on
    /// this thread (write at once).
    pub(super) fn defer_var(&self, key: &str, persisted: bool) -> bool {
        let before = || self.vars.get(key).map(|value| value.clone());
        BATCH.with_borrow_mut(|batch| {
            let Some(batch) = batch.as_mut() else {
                return false;
            };
            if persisted {
                batch.vars.insert(key.to_string());
                if batch.ticket.is_none() && !self.store.is_shared() {
                    batch.ticket = Some(Ticket {
                        order: self.var_order.clone(),
                        number: self.var_order.issue(),
                    });
                }
            }
            batch
                .undo
                .entry(key.to_string())
                .or_insert_with(|| (before(), 0));
            true
        })
    }

    /// Records the run's latest write of a variable: its version, and for
    /// a `!` one the value to store.
    pub(super) fn wrote_var(&self, key: &str, version: u64, value: &Dynamic) {
        BATCH.with_borrow_mut(|batch| {
            let Some(batch) = batch.as_mut() else {
                return;
            };
            if let Some((_, last)) = batch.undo.get_mut(key) {
                *last = version;
            }
            if batch.vars.contains(key) {
                batch.values.insert(key.to_string(), value.clone());
            }
        });
    }

    /// Puts back what a failed run changed, unless another run wrote the
    /// variable since (its newer value stands).
    fn undo_vars(&self, undo: HashMap<String, (Option<Dynamic>, u64)>) {
        for (key, (before, version)) in undo {
            let untouched = self.var_versions.get(&key).is_some_and(|v| *v == version);
            if untouched {
                self.write_var(&key, before.unwrap_or(Dynamic::UNIT));
            }
        }
    }

    /// The current values of everything the batch touched.
    fn batch_writes(&self, batch: Batch) -> Vec<Write> {
        let mut writes = Vec::new();
        for id in batch.sessions {
            if let Some(session) = self.sessions.by_id(&id)
                && !session.has_ended()
                && let Ok(bytes) = serde_json::to_vec(&session.record())
            {
                writes.push(Write::Put(Table::Sessions, id, bytes));
            }
        }
        for key in batch.vars {
            let value = match batch.values.get(&key) {
                Some(value) => (!value.is_unit()).then(|| value.clone()),
                None => self.vars.get(&key).map(|v| v.clone()),
            };
            match value.map(|v| rhai::serde::from_dynamic::<serde_json::Value>(&v)) {
                Some(Ok(json)) => writes.push(Write::Put(
                    Table::Vars,
                    key,
                    serde_json::to_vec(&json).unwrap_or_default(),
                )),
                Some(Err(error)) => error!(key, "variable cannot be stored: {error}"),
                None => writes.push(Write::Delete(Table::Vars, key)),
            }
        }
        writes
    }

    fn stored(&self, table: Table, key: &str) -> Option<StoredReply> {
        match self.store.get(table, key) {
            Ok(bytes) => bytes.and_then(|b| serde_json::from_slice(&b).ok()),
            Err(error) => {
                error!("could not read a stored answer: {error}");
                None
            }
        }
    }

    /// Claims `key` for running, unless it was answered already or is
    /// running now (then waits for that run's answer).
    ///
    /// The claim is taken before the store is read, so one read serves
    /// every command: a run releases its claim only after its record is
    /// durable, so once the claim is ours, a record that is not in the
    /// store is not coming.
    pub async fn claim(&self, table: Table, key: &str) -> Claim {
        loop {
            let mut running = match self.in_flight.entry(key.to_string()) {
                Entry::Occupied(entry) => entry.get().clone(),
                Entry::Vacant(entry) => {
                    let (done, running) = watch::channel(None);
                    entry.insert(running);
                    if let Some(shared) = self.store.claim(table, key).await {
                        return self.claimed_in_cluster(table, key, shared, done).await;
                    }
                    if let Some(stored) = self.stored(table, key) {
                        self.in_flight.remove(key);
                        return Claim::Answered(stored);
                    }
                    return Claim::Run(Running { done, shared: None });
                }
            };
            if let Ok(answer) = running.wait_for(Option::is_some).await
                && let Some(reply) = answer.clone()
            {
                return Claim::Answered(StoredReply::new(&reply));
            }
            // The run ended without handing over an answer: it found the
            // record already there, or its task was dropped or panicked
            // while its handler may still be finishing on a script thread.
            // Look for the record, never run the handler a second time, and
            // do not spin while the dead claim is still in place.
            if let Some(stored) = self.stored(table, key) {
                return Claim::Answered(stored);
            }
            if self.in_flight.contains_key(key) {
                tokio::time::sleep(DEAD_CLAIM_POLL).await;
            }
        }
    }

    /// What this node does with the outcome of its claim in the cluster.
    async fn claimed_in_cluster(
        &self,
        table: Table,
        key: &str,
        outcome: Result<Claimed, crate::store::StoreError>,
        done: watch::Sender<Option<Reply>>,
    ) -> Claim {
        let held = match outcome {
            Ok(Claimed::Mine(held)) => {
                return Claim::Run(Running {
                    done,
                    shared: Some(Arc::new(held)),
                });
            }
            Ok(Claimed::Answered(bytes)) => {
                self.in_flight.remove(key);
                return match serde_json::from_slice(&bytes) {
                    Ok(stored) => Claim::Answered(stored),
                    Err(error) => {
                        error!("a stored answer cannot be read: {error}");
                        Claim::Answered(StoredReply::new(&error_reply(
                            None,
                            UNKNOWN_OUTCOME_MESSAGE,
                        )))
                    }
                };
            }
            Ok(Claimed::Abandoned(held)) => held,
            Err(error) => {
                self.in_flight.remove(key);
                warn!("refused a command that must run once: no claim in the cluster: {error}");
                return Claim::Unavailable;
            }
        };
        // Its node died while writing its effects: record that the outcome
        // is unknown, so that every later repeat gets the same answer.
        warn!("a run whose node died while saving it is answered \"outcome unknown\"");
        let answer = StoredReply::new(&error_reply(None, UNKNOWN_OUTCOME_MESSAGE));
        let record = Write::Put(
            table,
            key.to_string(),
            serde_json::to_vec(&answer).unwrap_or_default(),
        );
        if self.store.write_soon(vec![record]).durable().await.is_ok() {
            held.release().await;
        }
        self.in_flight.remove(key);
        let _ = done.send(Some(answer.clone().reply(None)));
        Claim::Answered(answer)
    }

    /// Ends a claim, handing the answer to anyone who waited; in cluster
    /// mode, deletes the shared claim once the run's record is stored
    /// (`stored`), else leaves it to lapse: whoever takes it over then
    /// finds it `committing` and never runs it again.
    pub async fn release(&self, key: &str, running: Running, reply: &Reply, stored: bool) {
        self.in_flight.remove(key);
        let _ = running.done.send(Some(reply.clone()));
        if let Some(held) = running.shared
            && (stored || !held.is_committing())
        {
            held.release().await;
        }
    }

    /// Deletes the answers whose time is up (see [`prune_due`]), after
    /// indexing the ones stored before their expiry was.
    pub(super) fn prune_answers(&self) {
        let retention = |table, key: &str| self.retention(table, key);
        if let Err(error) = index_older_answers(&self.store, retention) {
            warn!("answers stored before this version could not be indexed for expiry: {error}");
        }
        if let Err(error) = prune_due(&self.store, unix_now()) {
            // Redone at the next prune.
            warn!("pruning expired answers: {error}");
        }
    }

    /// How long an answer of `table` under `key` is kept, in seconds.
    pub fn retention(&self, table: Table, key: &str) -> u64 {
        if table == Table::Submissions {
            let project = key.split('\u{0}').next().unwrap_or_default();
            self.project(project)
                .map_or(0, |p| p.settings.submission_retention_secs)
        } else {
            REPLY_RETENTION.as_secs()
        }
    }

    /// Forgets the answers of an ended session.
    pub(super) fn forget_replies(&self, session: &str) {
        let prefix = reply_key(session, "");
        if let Ok(records) = self.store.scan(Table::Replies, &prefix) {
            let writes: Vec<Write> = records
                .into_iter()
                .map(|(key, _)| Write::Delete(Table::Replies, key))
                .collect();
            drop(self.store.write_soon(writes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("sb-prune-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir.join("db.redb")).unwrap(), dir)
    }

    fn ok_reply(text: &str) -> Reply {
        Reply {
            seq: None,
            status: Status::Ok,
            actions: vec![Action::Error {
                message: Some(text.into()),
                display: Display::Toast,
                object: None,
            }],
        }
    }

    #[test]
    fn answers_are_pruned_once_due_in_bounded_steps() {
        let (store, dir) = temp_store("due");
        let count = 2 * PRUNE_STEP + 5;
        for n in 0..count {
            let keep = if n % 2 == 0 { 10 } else { 1000 };
            let writes = answer_writes(Table::Replies, format!("s\u{0}{n}"), &ok_reply("hi"), keep);
            store.write(&writes).unwrap();
        }
        let submission = answer_writes(
            Table::Submissions,
            "p\u{0}u\u{0}f".into(),
            &ok_reply("f"),
            10,
        );
        store.write(&submission).unwrap();
        let now = unix_now();
        assert_eq!(prune_due(&store, now).unwrap(), 0, "nothing is due yet");
        assert_eq!(store.scan(Table::Replies, "").unwrap().len(), count);
        // Past the short retention, before the long one.
        assert_eq!(prune_due(&store, now + 12).unwrap(), count.div_ceil(2) + 1);
        let kept = store.scan(Table::Replies, "").unwrap();
        assert_eq!(kept.len(), count / 2);
        assert!(
            kept.iter()
                .all(|(key, _)| key[2..].parse::<usize>().unwrap() % 2 == 1)
        );
        assert!(store.scan(Table::Submissions, "").unwrap().is_empty());
        assert_eq!(store.scan(Table::Expiries, "").unwrap().len(), count / 2);
        assert_eq!(prune_due(&store, now + 2000).unwrap(), count / 2);
        assert!(store.scan(Table::Replies, "").unwrap().is_empty());
        assert!(store.scan(Table::Expiries, "").unwrap().is_empty());
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn answers_stored_before_the_index_are_indexed_once_then_pruned() {
        let (store, dir) = temp_store("older");
        let old = |at: u64| {
            let mut stored = StoredReply::new(&ok_reply("old"));
            stored.at = at;
            serde_json::to_vec(&stored).unwrap()
        };
        let now = unix_now();
        let count = PRUNE_STEP + 3;
        for n in 0..count {
            store
                .put(Table::Replies, &format!("s\u{0}{n:05}"), &old(now - 100))
                .unwrap();
        }
        store.put(Table::Replies, "s\u{0}unreadable", b"{").unwrap();
        store
            .put(Table::Submissions, "p\u{0}u\u{0}f", &old(now))
            .unwrap();
        let retention = |table, _: &str| if table == Table::Replies { 50 } else { 500 };
        index_older_answers(&store, retention).unwrap();
        assert_eq!(store.scan(Table::Expiries, "").unwrap().len(), count + 2);
        // Marked: a record stored without an entry now is not looked for.
        store.put(Table::Replies, "s\u{0}later", &old(0)).unwrap();
        index_older_answers(&store, retention).unwrap();
        assert_eq!(store.scan(Table::Expiries, "").unwrap().len(), count + 2);
        assert_eq!(
            prune_due(&store, now).unwrap(),
            count + 1,
            "replies past 50 s, the unreadable one"
        );
        let left: Vec<String> = store
            .scan(Table::Replies, "")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, ["s\u{0}later"]);
        assert_eq!(
            store.scan(Table::Submissions, "").unwrap().len(),
            1,
            "kept 500 s"
        );
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_expiry_entry_names_its_answer() {
        let before = unix_now();
        let [
            Write::Put(Table::Expiries, entry, _),
            Write::Put(Table::Submissions, ..),
        ] = answer_writes(
            Table::Submissions,
            "p\u{0}user:a\u{0}id".into(),
            &ok_reply("x"),
            7,
        )
        else {
            panic!("an answer and its expiry");
        };
        let due = u64::from_str_radix(&entry[..12], 16).unwrap();
        assert!((before + 7..=unix_now() + 7).contains(&due), "{entry:?}");
        assert_eq!(
            answer_of(&entry),
            Some((Table::Submissions, "p\u{0}user:a\u{0}id"))
        );
        assert_eq!(answer_of("000000000001\u{0}x\u{0}k"), None);
        assert_eq!(answer_of("garbage"), None);
    }

    #[test]
    fn a_later_ticket_waits_until_every_earlier_one_is_done() {
        let order = Arc::new(VarOrder::default());
        let (first, second, third) = (order.issue(), order.issue(), order.issue());
        let queued = Arc::new(std::sync::Mutex::new(Vec::new()));
        let waiter = {
            let (order, queued) = (order.clone(), queued.clone());
            std::thread::spawn(move || {
                order.wait_turn(third);
                queued.lock().unwrap().push(third);
                order.done(third);
            })
        };
        // Done out of order: the third still waits for the first.
        order.done(second);
        queued.lock().unwrap().push(second);
        queued.lock().unwrap().push(first);
        drop(Ticket {
            order: order.clone(),
            number: first,
        });
        waiter.join().unwrap();
        assert_eq!(*queued.lock().unwrap(), [second, first, third]);
        order.wait_turn(third + 1);
    }
}
