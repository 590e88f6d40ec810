//! The embedded store's writer thread and its checkpointer.
//!
//! The writer takes every batch queued at that moment, makes them durable
//! as one journal record (one `pwrite`, one `fdatasync`), lays them in the
//! overlay (so reads see them) and tells their waiters. redb is not
//! touched on that path: a checkpoint writes the overlay's frozen layer to
//! redb in one durable transaction on the checkpointer's thread, while the
//! writer goes on in the journal's other file (see `journal`).
//!
//! Why: a redb transaction per group cost more CPU than everything else a
//! command does (B-tree copy-on-write of every page it touches, checksums,
//! the allocator's state: a third of the server's CPU in a profile of
//! commands with ids); a checkpoint writes each key once however often it
//! changed (a session record rewritten by every command of its session),
//! in key order.

use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, warn};

use super::journal::{self, Journal};
use super::overlay::{Layer, Overlay, layer_of};
use super::tables::Tables;
use super::{StoreError, Write};

/// A checkpoint comes at the latest this long after the first record
/// written since the last one, when the writer has nothing else to do.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// Batches waiting for the writer thread.
#[derive(Default)]
pub(super) struct Queue {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Group commits so far, for tests and metrics.
    pub(super) commits: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Pending {
    batches: Vec<Batch>,
    closed: bool,
}

/// Who waits for a batch to be durable.
pub(super) enum Waiter {
    Async(oneshot::Sender<Result<(), String>>),
    Blocking(mpsc::Sender<Result<(), String>>),
}

impl Waiter {
    fn tell(self, outcome: Result<(), String>) {
        match self {
            Waiter::Async(sender) => {
                let _ = sender.send(outcome);
            }
            Waiter::Blocking(sender) => {
                let _ = sender.send(outcome);
            }
        }
    }
}

type Batch = (Vec<Write>, Option<Waiter>);

impl Queue {
    pub(super) fn push(&self, writes: Vec<Write>, waiter: Option<Waiter>) {
        let mut pending = lock(&self.pending);
        pending.batches.push((writes, waiter));
        drop(pending);
        self.wake.notify_one();
    }

    /// Lets the writer commit what is queued, then stop.
    pub(super) fn close(&self) {
        lock(&self.pending).closed = true;
        self.wake.notify_one();
    }

    /// Every batch queued now; empty when the writer should checkpoint
    /// (idle since `since`, or closing).
    fn take(&self, since: Option<Instant>) -> Vec<Batch> {
        let mut pending = lock(&self.pending);
        while pending.batches.is_empty() && !pending.closed {
            let Some(since) = since else {
                pending = wait(&self.wake, pending);
                continue;
            };
            let left = CHECKPOINT_EVERY.saturating_sub(since.elapsed());
            if left.is_zero() {
                break;
            }
            pending = self
                .wake
                .wait_timeout(pending, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        std::mem::take(&mut pending.batches)
    }

    fn is_closed(&self) -> bool {
        let pending = lock(&self.pending);
        pending.closed && pending.batches.is_empty()
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    tables: Arc<Tables>,
    queue: Arc<Queue>,
    overlay: Arc<Overlay>,
    journal: Journal,
    checkpointer: Checkpointer,
    /// The generation the frozen layer's checkpoint stores, while one is
    /// pending.
    pending: Option<u64>,
}

impl Writer {
    pub(super) fn new(
        tables: Arc<Tables>,
        queue: Arc<Queue>,
        overlay: Arc<Overlay>,
        journal: Journal,
        checkpointer: Checkpointer,
    ) -> Writer {
        Writer {
            tables,
            queue,
            overlay,
            journal,
            checkpointer,
            pending: None,
        }
    }

    /// Commits groups until the store is dropped, then checkpoints a last
    /// time (so a clean stop leaves nothing to replay).
    pub(super) fn run(mut self) {
        let mut first_unchecked: Option<Instant> = None;
        loop {
            let batches = self.queue.take(first_unchecked);
            if batches.is_empty() {
                let closing = self.queue.is_closed();
                let outcome = if closing {
                    self.checkpoint_now()
                } else {
                    self.begin_checkpoint()
                };
                if let Err(error) = outcome {
                    error!("could not checkpoint the database: {error}");
                }
                first_unchecked = None;
                if closing {
                    return;
                }
                continue;
            }
            let started = Instant::now();
            let outcome = self.commit_group(&batches).map_err(|e| e.to_string());
            if let Err(message) = &outcome {
                error!(
                    "could not commit {} batch(es) to the database: {message}",
                    batches.len()
                );
            }
            first_unchecked = (self.journal.len() > 0).then(|| first_unchecked.unwrap_or(started));
            crate::metrics::METRICS.group_commit(batches.len(), started.elapsed());
            self.queue
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for (writes, waiter) in batches {
                if outcome.is_ok() {
                    self.overlay.apply(writes);
                }
                if let Some(waiter) = waiter {
                    waiter.tell(outcome.clone());
                }
            }
        }
    }

    /// Makes every batch durable in the journal, in queue order. A long
    /// journal hands its records to a checkpoint first, so the record
    /// starts the other file. If the journal cannot be written, the group
    /// is made durable by a checkpoint carrying it.
    fn commit_group(&mut self, batches: &[Batch]) -> Result<(), StoreError> {
        let writes: Vec<&Write> = batches.iter().flat_map(|(writes, _)| writes).collect();
        let long = self.journal.len() >= journal::CHECKPOINT_AFTER;
        // While a checkpoint runs, the journal may grow to twice its
        // length before the writer waits for it.
        let too_long = self.journal.len() >= 2 * journal::CHECKPOINT_AFTER;
        if long && (!self.checkpointer.busy() || too_long) {
            self.begin_checkpoint()?;
        }
        let logged = self
            .journal
            .append(&writes)
            .and_then(|()| self.journal.sync());
        if let Err(error) = logged {
            error!(
                "could not write the store's journal, committing to the database directly: {error}"
            );
            // Everything before the group, then the group, each durable in
            // redb; the group is laid in the overlay only once it is.
            self.checkpoint_now()?;
            let generation = self.journal.generation();
            return self.tables.checkpoint(&layer_of(writes), generation);
        }
        Ok(())
    }

    /// Freezes what the journal holds and hands it to the checkpointer.
    fn begin_checkpoint(&mut self) -> Result<(), StoreError> {
        self.finish_checkpoint()?;
        if self.journal.len() == 0 && self.overlay.is_idle() {
            return Ok(());
        }
        let (layer, generation) = self.freeze();
        self.checkpointer.start(layer, generation);
        Ok(())
    }

    /// Checkpoints everything now, on this thread.
    fn checkpoint_now(&mut self) -> Result<(), StoreError> {
        self.finish_checkpoint()?;
        if self.journal.len() > 0 || !self.overlay.is_idle() {
            self.freeze();
            self.finish_checkpoint()?;
        }
        Ok(())
    }

    /// The active layer becomes the frozen one; the journal goes on under
    /// the next generation, in its other file.
    fn freeze(&mut self) -> (Arc<Layer>, u64) {
        let generation = self.journal.generation() + 1;
        self.journal.restart(generation);
        self.pending = Some(generation);
        (self.overlay.freeze(), generation)
    }

    /// Waits for the pending checkpoint; one that failed (or was never
    /// started) is done here instead. Its journal file is reused only
    /// after this.
    fn finish_checkpoint(&mut self) -> Result<(), StoreError> {
        let Some(generation) = self.pending else {
            return Ok(());
        };
        match self.checkpointer.wait() {
            Some(Ok(())) => {}
            outcome => {
                if let Some(Err(error)) = outcome {
                    warn!("a checkpoint failed, trying again: {error}");
                }
                if let Some(layer) = self.overlay.frozen() {
                    self.tables.checkpoint(&layer, generation)?;
                }
                self.overlay.thaw();
            }
        }
        self.pending = None;
        Ok(())
    }
}

/// The thread that writes frozen layers to redb.
pub(super) struct Checkpointer {
    jobs: Option<mpsc::Sender<(Arc<Layer>, u64)>>,
    status: Arc<Status>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Whether a checkpoint is running, and how the last one ended.
#[derive(Default)]
pub(super) struct Status {
    state: Mutex<(bool, Option<Result<(), String>>)>,
    done: Condvar,
    /// Tests hold checkpoints back, to crash in the middle of one.
    #[cfg(test)]
    pub(super) held: Mutex<bool>,
    #[cfg(test)]
    pub(super) released: Condvar,
}

impl Status {
    /// Waits until no checkpoint is running.
    pub(super) fn settle(&self) {
        let mut state = lock(&self.state);
        while state.0 {
            state = wait(&self.done, state);
        }
    }
}

impl Checkpointer {
    pub(super) fn spawn(
        tables: Arc<Tables>,
        overlay: Arc<Overlay>,
    ) -> std::io::Result<Checkpointer> {
        let (jobs, received) = mpsc::channel::<(Arc<Layer>, u64)>();
        let status = Arc::new(Status::default());
        let reports = status.clone();
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                for (layer, generation) in received {
                    #[cfg(test)]
                    {
                        let mut held = lock(&reports.held);
                        while *held {
                            held = wait(&reports.released, held);
                        }
                    }
                    let outcome = tables
                        .checkpoint(&layer, generation)
                        .map_err(|e| e.to_string());
                    if outcome.is_ok() {
                        overlay.thaw();
                    }
                    *lock(&reports.state) = (false, Some(outcome));
                    reports.done.notify_all();
                }
            })?;
        Ok(Checkpointer {
            jobs: Some(jobs),
            status,
            thread: Some(thread),
        })
    }

    pub(super) fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    fn start(&self, layer: Arc<Layer>, generation: u64) {
        *lock(&self.status.state) = (true, None);
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send((layer, generation)).is_ok());
        if !sent {
            // No thread: `wait` finds no outcome, and the writer does it.
            *lock(&self.status.state) = (false, None);
        }
    }

    fn busy(&self) -> bool {
        lock(&self.status.state).0
    }

    /// Waits for the running checkpoint; how it ended (`None`: none ran).
    fn wait(&self) -> Option<Result<(), String>> {
        self.status.settle();
        lock(&self.status.state).1.take()
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A lock poisoned by a panicking thread still guards plain data.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn wait<'a, T>(
    condvar: &Condvar,
    guard: std::sync::MutexGuard<'a, T>,
) -> std::sync::MutexGuard<'a, T> {
    condvar
        .wait(guard)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
