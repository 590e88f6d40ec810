//! The threads that run script callbacks.
//!
//! One queue, served by one thread per core that takes job after job
//! without parking while work is waiting: under load a command costs no
//! thread wake-up on the way in (tokio's `spawn_blocking` woke a parked
//! thread per call, 1.6–2 context switches per command; see
//! docs/performance.md).
//!
//! A handler that loops until its limit must not slow everybody else down,
//! and a handler blocked in a host function must not hold a core's share of
//! the pool. So a thread whose job runs long is *retired*: replaced by a
//! fresh thread, it ends when its job does. The progress hook retires a
//! script that keeps running Rhai operations past [`DEMOTE_RUNNING_AFTER`]
//! and also lowers its thread to `SCHED_IDLE`, so the loop only gets CPU
//! time nobody else wants (a thread cannot raise its priority back without
//! a privilege, hence a fresh thread). A watchdog retires a job busy for
//! [`RETIRE_BLOCKED_AFTER`] without lowering its priority: it is blocked in
//! a host function (the disk, another command), or doing work for everyone
//! there, like a `uiSet` to thousands of sessions, which must not starve.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing::{debug, error};

/// Stack of the threads that run callbacks: deep (but limited) recursion in
/// a script must hit the call-depth limit, never the end of the stack.
const SCRIPT_THREAD_STACK: usize = 16 << 20;

/// Most callbacks running at once; more wait their turn. Each runaway
/// handler holds one until its wall-clock limit.
const MAX_SCRIPT_THREADS: usize = 256;

/// Rhai time after which a callback counts as a runaway. Typical handlers
/// take 1–20 µs; 200 µs keeps the burst a looping handler runs at normal
/// priority short (docs/performance.md, "looping handler").
pub const DEMOTE_RUNNING_AFTER: Duration = Duration::from_micros(200);

/// Time after which a job busy outside Rhai (a host function waiting on the
/// disk or on another command) is replaced by a fresh thread.
const RETIRE_BLOCKED_AFTER: Duration = Duration::from_millis(1);

/// Spare threads beyond one per core end after this long without work.
const SPARE_THREAD_IDLE: Duration = Duration::from_secs(10);

/// Why a job did not return a value.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the handler panicked: {0}")]
    Panicked(String),
    #[error("the script pool dropped the job")]
    Dropped,
}

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    /// Threads alive, retired ones included.
    threads: AtomicUsize,
    /// Threads waiting on `ready`.
    idle: AtomicUsize,
    /// Threads retired and still finishing their job.
    retired: AtomicUsize,
    /// Jobs running; the watchdog sleeps longer when there are none.
    busy: AtomicUsize,
    states: Mutex<Vec<Arc<ThreadState>>>,
    epoch: Instant,
    cores: usize,
}

#[derive(Default)]
struct ThreadState {
    tid: AtomicI32,
    /// Nanoseconds after the pool's epoch the running job started; 0: idle.
    busy_since: AtomicU64,
    retired: AtomicBool,
    /// Lowered to `SCHED_IDLE` (retired too).
    demoted: AtomicBool,
}

thread_local! {
    /// The pool's bookkeeping for the current thread (none outside the pool).
    static CURRENT: RefCell<Option<Arc<ThreadState>>> = const { RefCell::new(None) };
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A job panicking never holds these locks (jobs run outside them).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    fn get() -> &'static Pool {
        static POOL: OnceLock<&'static Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            let pool: &'static Pool = Box::leak(Box::new(Pool {
                queue: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
                threads: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
                retired: AtomicUsize::new(0),
                busy: AtomicUsize::new(0),
                states: Mutex::new(Vec::new()),
                epoch: Instant::now(),
                cores,
            }));
            for _ in 0..cores {
                pool.add_thread();
            }
            let watchdog = std::thread::Builder::new()
                .name("script-watchdog".into())
                .spawn(move || pool.watch());
            if let Err(error) = watchdog {
                error!("the script watchdog did not start: {error}");
            }
            pool
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn add_thread(&'static self) {
        if self.threads.fetch_add(1, SeqCst) >= MAX_SCRIPT_THREADS {
            self.threads.fetch_sub(1, SeqCst);
            return;
        }
        let state = Arc::new(ThreadState::default());
        lock(&self.states).push(state.clone());
        let spawned = std::thread::Builder::new()
            .name("script".into())
            .stack_size(SCRIPT_THREAD_STACK)
            .spawn(move || self.work(state));
        if let Err(error) = spawned {
            error!("could not start a script thread: {error}");
            self.threads.fetch_sub(1, SeqCst);
        }
    }

    fn leave(&self, state: &Arc<ThreadState>) {
        if state.retired.load(SeqCst) {
            self.retired.fetch_sub(1, SeqCst);
        }
        self.threads.fetch_sub(1, SeqCst);
        lock(&self.states).retain(|s| !Arc::ptr_eq(s, state));
    }

    fn work(&'static self, state: Arc<ThreadState>) {
        state.tid.store(current_tid(), SeqCst);
        // Host functions start follow-up work with `tokio::spawn` (a
        // `sessionShutdown` after `terminateSession`, `message` callbacks).
        let _runtime = background().map(tokio::runtime::Handle::enter);
        CURRENT.with_borrow_mut(|current| *current = Some(state.clone()));
        let mut queue = lock(&self.queue);
        loop {
            if let Some(job) = queue.pop_front() {
                drop(queue);
                self.busy.fetch_add(1, SeqCst);
                state.busy_since.store(self.now(), SeqCst);
                job();
                state.busy_since.store(0, SeqCst);
                self.busy.fetch_sub(1, SeqCst);
                if state.retired.load(SeqCst) {
                    self.leave(&state);
                    return;
                }
                queue = lock(&self.queue);
                continue;
            }
            self.idle.fetch_add(1, SeqCst);
            let (guard, timeout) = self
                .ready
                .wait_timeout(queue, SPARE_THREAD_IDLE)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            queue = guard;
            self.idle.fetch_sub(1, SeqCst);
            if timeout.timed_out() && queue.is_empty() && self.active() > self.cores {
                drop(queue);
                self.leave(&state);
                return;
            }
        }
    }

    /// Threads not retired: the ones that take new jobs.
    fn active(&self) -> usize {
        self.threads
            .load(SeqCst)
            .saturating_sub(self.retired.load(SeqCst))
    }

    /// Marks a thread to end after its job and starts its replacement.
    fn retire(&'static self, state: &ThreadState) {
        if state.retired.swap(true, SeqCst) {
            return;
        }
        self.retired.fetch_add(1, SeqCst);
        if self.active() < self.cores {
            self.add_thread();
        }
    }

    fn watch(&'static self) {
        loop {
            // Nothing can be stuck while nothing runs: poll slowly then.
            let pause = if self.busy.load(SeqCst) == 0 {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(1)
            };
            std::thread::sleep(pause);
            let now = self.now();
            let limit = u64::try_from(RETIRE_BLOCKED_AFTER.as_nanos()).unwrap_or(u64::MAX);
            let stuck: Vec<Arc<ThreadState>> = lock(&self.states)
                .iter()
                .filter(|state| {
                    let since = state.busy_since.load(SeqCst);
                    !state.retired.load(SeqCst) && since != 0 && now.saturating_sub(since) > limit
                })
                .cloned()
                .collect();
            for state in stuck {
                self.retire(&state);
            }
            if self.active() < self.cores {
                self.add_thread();
            }
        }
    }

    fn submit(&self, job: Job) {
        lock(&self.queue).push_back(job);
        if self.idle.load(SeqCst) > 0 {
            self.ready.notify_one();
        }
    }
}

/// The runtime that tasks spawned by host functions run on.
fn background() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("script-tasks")
                .enable_all()
                .build()
                .inspect_err(|error| error!("the script task runtime did not start: {error}"))
                .ok()
        })
        .as_ref()
        .map(tokio::runtime::Runtime::handle)
}

/// Called from the progress hook while a script runs Rhai operations:
/// once its job has run for [`DEMOTE_RUNNING_AFTER`], lowers the current
/// thread to `SCHED_IDLE` and retires it.
pub fn demote_if_running_long() {
    CURRENT.with_borrow(|current| {
        let Some(state) = current else { return };
        let pool = Pool::get();
        let since = state.busy_since.load(SeqCst);
        let limit = u64::try_from(DEMOTE_RUNNING_AFTER.as_nanos()).unwrap_or(u64::MAX);
        if since == 0
            || pool.now().saturating_sub(since) <= limit
            || state.demoted.swap(true, SeqCst)
        {
            return;
        }
        debug!("a script has run for over 200 µs: lowering its thread's priority");
        set_idle_priority(0);
        pool.retire(state);
    });
}

#[cfg(target_os = "linux")]
fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

#[cfg(not(target_os = "linux"))]
fn current_tid() -> i32 {
    0
}

/// `tid` 0 is the calling thread.
#[cfg(target_os = "linux")]
fn set_idle_priority(tid: i32) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system call on a thread of this process; a failure
    // (the thread just ended) leaves nothing to clean up.
    let result = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
    if result != 0 {
        debug!(
            "could not lower a script thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_idle_priority(_tid: i32) {}

/// Runs `job` on the script threads and waits for it without blocking the
/// caller's async worker. A panic in `job` comes back as an error.
pub async fn run<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PoolError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    Pool::get().submit(Box::new(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
            .map_err(|panic| PoolError::Panicked(panic_message(panic.as_ref())));
        let _ = tx.send(result);
    }));
    rx.await.unwrap_or(Err(PoolError::Dropped))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_returns_their_values() {
        let answers: Vec<usize> =
            futures_util::future::join_all((0..100).map(|n| run(move || n * 2)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        assert_eq!(answers, (0..100).map(|n| n * 2).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_the_pool_keeps_working() {
        let error = run(|| panic!("boom")).await.unwrap_err();
        assert!(error.to_string().contains("boom"), "{error}");
        assert_eq!(run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn blocked_jobs_do_not_starve_the_others() {
        // More jobs blocked at once than there are cores: the watchdog must
        // add threads, or the last job would wait for the blocked ones.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let blocked: Vec<_> = (0..cores + 2)
            .map(|_| {
                let rx = release_rx.clone();
                tokio::spawn(run(move || {
                    let _ = lock(&rx).recv_timeout(Duration::from_secs(10));
                }))
            })
            .collect();
        let quick = tokio::time::timeout(Duration::from_secs(5), run(|| 42))
            .await
            .expect("a quick job runs while others are blocked");
        assert_eq!(quick.unwrap(), 42);
        for _ in 0..cores + 2 {
            let _ = release_tx.send(());
        }
        for handle in blocked {
            handle.await.unwrap().unwrap();
        }
    }

    #[test]
    fn a_long_running_job_is_demoted_from_inside() {
        let demoted = futures_executor_block_on(run(|| {
            let start = Instant::now();
            while start.elapsed() < DEMOTE_RUNNING_AFTER * 3 {
                demote_if_running_long();
            }
            CURRENT.with_borrow(|c| c.as_ref().is_some_and(|s| s.demoted.load(SeqCst)))
        }));
        assert!(demoted.unwrap(), "the thread was marked demoted");
        let quick = futures_executor_block_on(run(|| {
            CURRENT.with_borrow(|c| c.as_ref().is_some_and(|s| s.demoted.load(SeqCst)))
        }));
        assert!(!quick.unwrap(), "a short job is not demoted");
    }

    fn futures_executor_block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }
}
