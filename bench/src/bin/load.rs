//! The load client of Switchboard's benchmark suite. Each subcommand runs
//! one measurement against a server on 127.0.0.1, prints a summary on
//! stderr and one JSON record on stdout (`bench/run` collects them).
//!
//! ```text
//! load ws|http  --addr A [--sessions N] [--seconds S] [--warmup W] [--command ping]
//!               [--plain | --no-id | --same-param] [--rate OPS_PER_S]
//!               [--pid PID --sample-every S]
//! load sessions --addr A [--connections C] [--seconds S] [--warmup W] [--pid PID]
//! load fsync    --dir DIR [--seconds S]        (write + fdatasync latency there)
//! load spin     --addr A [--sessions 8] [--seconds S] [--warmup W]
//! load idle     --addr A --pid PID [--sessions K]
//! load broadcast --addr A --pid PID [--sessions K] [--rounds R]
//! load crossnode --addr A --from B [--rounds R]   (uiSet on node B → socket on node A)
//! load quiet    [--max-wait S] [--threshold CORES]  (waits for an idle machine)
//! load run      --date D --commit C                 (the record dating a run)
//! load micro    --criterion DIR            (criterion estimates → records)
//! load report   --results FILE [--soak FILE] --out FILE --date D --commit C
//! ```
//!
//! Commands are sent the way the browser runtime sends them unless told
//! otherwise: every command carries an `id` (`<tab>-<seq>`, unique per
//! command, so the server runs it exactly once and keeps its answer) and a
//! new param each time (a slider, a setpoint), so the session's rollback
//! memory changes with every command. `--plain` sends neither (the path
//! the first figures measured); `--no-id` and `--same-param` drop one.
//!
//! Common flags: `--project bench`, `--server NAME`, `--id ID` and
//! `--label TEXT` (labels of the record); `--exec-at-start CMD` and
//! `--exec-at-end CMD` run a shell command when the measured window opens
//! and closes (e.g. `callgrind_control -i on PID`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use switchboard_bench::client::{
    self, Command, Error, HttpConnection, Outcome, Socket, StoreCounters, Target,
};
use switchboard_bench::stats::{self, Record};
use switchboard_bench::{report, system};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// `--exec-at-start CMD` / `--exec-at-end CMD`: shell commands run when a
/// closed-loop measurement window opens and closes (for profilers, e.g.
/// `callgrind_control -i on PID`).
static HOOKS: std::sync::OnceLock<(Option<String>, Option<String>)> = std::sync::OnceLock::new();

async fn run_hook(at: Instant, command: Option<&String>) {
    let Some(command) = command.cloned() else {
        return;
    };
    tokio::time::sleep_until(at.into()).await;
    let _ = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .status()
    })
    .await;
}

/// Longest wait for any one reply before the command counts as an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Hard cap on sessions and sockets one run may open.
const MAX_SESSIONS: usize = 16_000;

/// Hard cap on the length of one measurement (the soak included).
const MAX_SECONDS: f64 = 3600.0;

/// HTTP connections used in parallel to create many sessions.
const SESSION_CREATORS: usize = 16;

/// Hard cap on the sessions one `load sessions` run creates (it is bounded
/// in time too; this bounds the server's memory).
const MAX_CREATED_SESSIONS: u64 = 400_000;

/// WebSocket handshakes in flight at once when opening many sockets (well
/// under the server's listen backlog).
const CONNECTS_IN_FLIGHT: usize = 128;

struct Args {
    command: String,
    flags: HashMap<String, String>,
}

impl Args {
    fn parse() -> Result<Args, Error> {
        let mut raw = std::env::args().skip(1);
        let command = raw
            .next()
            .ok_or("usage: load <ws|http|sessions|fsync|spin|idle|broadcast|quiet|run|micro|report> [--flag value]…")?;
        let mut flags = HashMap::new();
        let rest: Vec<String> = raw.collect();
        let mut i = 0;
        while i < rest.len() {
            let name = rest[i]
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {}", rest[i]))?;
            match rest.get(i + 1) {
                Some(value) if !value.starts_with("--") => {
                    flags.insert(name.to_string(), value.clone());
                    i += 2;
                }
                _ => {
                    flags.insert(name.to_string(), "true".into());
                    i += 1;
                }
            }
        }
        Ok(Args { command, flags })
    }

    fn text(&self, name: &str, default: &str) -> String {
        self.flags
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.into())
    }

    fn required(&self, name: &str) -> Result<String, Error> {
        self.flags
            .get(name)
            .cloned()
            .ok_or_else(|| format!("--{name} is required").into())
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Error> {
        match self.flags.get(name) {
            Some(value) => value
                .parse()
                .map_err(|_| format!("--{name} {value}: not a number").into()),
            None => Ok(default),
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.contains_key(name)
    }

    fn target(&self) -> Result<Target, Error> {
        let addr: SocketAddr = self.required("addr")?.parse()?;
        Target::new(addr, &self.text("project", "bench"))
    }

    fn sessions(&self, default: usize) -> Result<usize, Error> {
        let sessions = self.number("sessions", default)?;
        if sessions == 0 || sessions > MAX_SESSIONS {
            return Err(format!("--sessions must be 1..={MAX_SESSIONS}").into());
        }
        Ok(sessions)
    }

    fn seconds(&self, name: &str, default: f64) -> Result<Duration, Error> {
        let seconds: f64 = self.number(name, default)?;
        if !(0.0..=MAX_SECONDS).contains(&seconds) {
            return Err(format!("--{name} must be 0..={MAX_SECONDS}").into());
        }
        Ok(Duration::from_secs_f64(seconds))
    }

    fn pid(&self) -> Result<Option<u32>, Error> {
        self.flags
            .get("pid")
            .map(|p| p.parse().map_err(|_| "--pid: not a process id".into()))
            .transpose()
    }

    fn record(&self, default_id: &str) -> Record {
        let mut record = Record::new(
            &self.text("id", default_id),
            &self.text("server", "switchboard"),
        );
        if let Some(label) = self.flags.get("label") {
            record.set("label", label.as_str());
        }
        record
    }
}

fn main() {
    let limit = system::raise_open_files_limit();
    let args = match Args::parse() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("load: {error}");
            std::process::exit(2);
        }
    };
    let _ = HOOKS.set((
        args.flags.get("exec-at-start").cloned(),
        args.flags.get("exec-at-end").cloned(),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(run(&args, limit)) {
        Ok(Some(record)) => println!("{}", record.to_line()),
        Ok(None) => {}
        Err(error) => {
            eprintln!("load {}: {error}", args.command);
            std::process::exit(1);
        }
    }
    // Held sockets are dropped with the runtime, not closed one by one.
    runtime.shutdown_timeout(Duration::from_millis(100));
}

async fn run(args: &Args, open_files: u64) -> Result<Option<Record>, Error> {
    match args.command.as_str() {
        "ws" => closed_loop(args, Transport::WebSocket).await.map(Some),
        "http" => closed_loop(args, Transport::Http).await.map(Some),
        "sessions" => session_creation(args).await.map(Some),
        "fsync" => fsync(args).await.map(Some),
        "spin" => spin(args).await.map(Some),
        "idle" => idle(args, open_files).await.map(Some),
        "broadcast" => broadcast(args, open_files).await.map(Some),
        "crossnode" => crossnode(args).await.map(Some),
        "run" => {
            // The record that dates a run and names the machine and commit.
            let mut record = Record::new("run", "");
            record
                .set("date", args.text("date", "?"))
                .set("commit", args.text("commit", "?"))
                .set("machine", system::machine());
            Ok(Some(record))
        }
        "quiet" => {
            wait_for_quiet(
                args.seconds("max-wait", 60.0)?,
                args.number("threshold", 0.25)?,
            )
            .await;
            Ok(None)
        }
        "micro" => {
            for record in
                report::criterion_records(std::path::Path::new(&args.required("criterion")?))
            {
                println!("{}", record.to_line());
            }
            Ok(None)
        }
        "report" => {
            report::write(
                std::path::Path::new(&args.required("results")?),
                args.flags.get("soak").map(std::path::Path::new),
                args.flags.get("points").map(std::path::Path::new),
                std::path::Path::new(&args.required("out")?),
                &args.text("date", "?"),
                &args.text("commit", "?"),
            )?;
            Ok(None)
        }
        other => Err(format!("unknown subcommand {other}").into()),
    }
}

/// Waits (up to `max_wait`) until other processes use less than
/// `threshold` cores over one second.
async fn wait_for_quiet(max_wait: Duration, threshold: f64) {
    let deadline = Instant::now() + max_wait;
    loop {
        let first = system::CpuSnapshot::take(0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, _, others) = system::CpuSnapshot::take(0).cores_since(&first, 1.0);
        if others < threshold {
            eprintln!("load quiet: other processes use {others:.2} cores");
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("load quiet: other processes still use {others:.2} cores; going on");
            return;
        }
    }
}

// ------------------------------------------------------------ sessions

/// Creates `count` sessions over a few keep-alive connections.
async fn create_sessions(target: &Target, count: usize) -> Result<Vec<String>, Error> {
    let creators = SESSION_CREATORS.min(count);
    let mut tasks = Vec::new();
    for creator in 0..creators {
        let target = target.clone();
        let share = count / creators + usize::from(creator < count % creators);
        tasks.push(tokio::spawn(async move {
            let mut connection = HttpConnection::open(target.addr).await?;
            let mut ids = Vec::with_capacity(share);
            for _ in 0..share {
                // actix drops a keep-alive connection after a while; open
                // another one and go on.
                let id = match client::new_session(&mut connection, &target).await {
                    Ok(id) => id,
                    Err(_) => {
                        connection = HttpConnection::open(target.addr).await?;
                        client::new_session(&mut connection, &target).await?
                    }
                };
                ids.push(id);
            }
            Ok::<_, Error>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        ids.extend(task.await??);
    }
    Ok(ids)
}

async fn connect_all(target: &Target, sessions: &[String]) -> Result<Vec<Socket>, Error> {
    let results: Vec<Result<Socket, Error>> = futures_util::stream::iter(sessions.iter())
        .map(|session| client::connect(target, session))
        .buffered(CONNECTS_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}

// ------------------------------------------------------------ closed loop

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Http,
}

/// One worker's share of a closed-loop run.
struct Tally {
    histogram: Histogram<u64>,
    ops: u64,
    not_ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// How commands are sent: as the browser runtime does (both `true`) or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    /// Every command carries a unique `id`.
    with_id: bool,
    /// Every command carries a new param.
    vary_param: bool,
}

impl Shape {
    const PLAIN: Shape = Shape {
        with_id: false,
        vary_param: false,
    };

    fn from_flags(args: &Args) -> Shape {
        if args.flag("plain") {
            return Shape::PLAIN;
        }
        Shape {
            with_id: !args.flag("no-id"),
            vary_param: !args.flag("same-param"),
        }
    }

    fn describe(self) -> &'static str {
        match (self.with_id, self.vary_param) {
            (true, true) => "browser",
            (false, false) => "plain",
            (true, false) => "id, same param",
            (false, true) => "no id, new param",
        }
    }
}

struct Plan {
    /// Latencies are recorded for commands sent from `measure_from` on…
    measure_from: Instant,
    /// …and the run stops sending at `end`.
    end: Instant,
    command: String,
    shape: Shape,
    /// Seconds between two commands of one session; `None`: closed loop.
    pace: Option<Duration>,
}

enum Link {
    Socket(Box<Socket>),
    Http(Box<HttpConnection>, String),
}

async fn open_link(target: &Target, transport: Transport, session: &str) -> Result<Link, Error> {
    Ok(match transport {
        Transport::WebSocket => Link::Socket(Box::new(client::connect(target, session).await?)),
        Transport::Http => Link::Http(
            Box::new(HttpConnection::open(target.addr).await?),
            session.to_string(),
        ),
    })
}

async fn worker(mut link: Link, path: String, plan: Arc<Plan>, session_index: usize) -> Tally {
    let mut tally = Tally {
        histogram: stats::histogram(),
        ops: 0,
        not_ok: 0,
        errors: 0,
        first_error: None,
    };
    let mut pacer = plan.pace.map(|pace| {
        // Spread the sessions' sends over one period.
        let offset = pace.mul_f64((session_index % 97) as f64 / 97.0);
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + offset, pace);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    // Like the browser runtime's `<document>-<seq>`: unique per command.
    let tab = format!("{:x}{session_index:x}", std::process::id());
    let mut seq = 0u64;
    loop {
        if let Some(pacer) = pacer.as_mut() {
            pacer.tick().await;
        }
        let sent = Instant::now();
        if sent >= plan.end {
            break;
        }
        seq += 1;
        let param = if plan.shape.vary_param {
            seq.to_string()
        } else {
            String::new()
        };
        let id = plan.shape.with_id.then(|| format!("{tab}-{seq}"));
        let command = Command {
            seq,
            id: id.as_deref(),
            name: &plan.command,
            param: &param,
        };
        let result = match &mut link {
            Link::Socket(socket) => client::ws_command(socket, command, REPLY_TIMEOUT).await,
            Link::Http(connection, session) => tokio::time::timeout(
                REPLY_TIMEOUT,
                client::http_command(connection, &path, session, command),
            )
            .await
            .unwrap_or_else(|_| Err("no HTTP reply within the timeout".into())),
        };
        let done = Instant::now();
        match result {
            Ok(outcome) => {
                if sent >= plan.measure_from && done <= plan.end {
                    stats::record(&mut tally.histogram, done - sent);
                    tally.ops += 1;
                    if outcome == Outcome::NotOk {
                        tally.not_ok += 1;
                    }
                }
            }
            Err(error) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| error.to_string());
                break;
            }
        }
    }
    tally
}

/// `--spinner`: one more session that keeps a handler looping until its
/// limit (`spin`), with a `ping` after each so that the server's
/// `max_limit_stops` never ends the session. Returns spins and their mean.
async fn spinner(target: Target, end: Instant) -> Result<(u64, Duration), Error> {
    let session = create_sessions(&target, 1).await?.remove(0);
    let mut socket = client::connect(&target, &session).await?;
    let (mut spins, mut spinning) = (0u64, Duration::ZERO);
    let mut seq = 0;
    while Instant::now() < end {
        seq += 1;
        let started = Instant::now();
        client::ws_command(&mut socket, Command::plain(seq, "spin", ""), REPLY_TIMEOUT).await?;
        spinning += started.elapsed();
        spins += 1;
        seq += 1;
        client::ws_command(&mut socket, Command::plain(seq, "ping", ""), REPLY_TIMEOUT).await?;
    }
    Ok((
        spins,
        spinning / u32::try_from(spins.max(1)).unwrap_or(u32::MAX),
    ))
}

struct RunResult {
    histogram: Histogram<u64>,
    ops: u64,
    not_ok: u64,
    errors: u64,
    first_error: Option<String>,
    window: Duration,
    rss: Vec<(f64, u64)>,
    spins: Option<(u64, Duration)>,
    /// Cores used during the measured window: server, load client, others.
    cpu: Option<(f64, f64, f64)>,
    /// The server's group commits during the measured window.
    store: Option<StoreCounters>,
}

#[allow(clippy::too_many_arguments)]
async fn run_load(
    target: &Target,
    transport: Transport,
    sessions: usize,
    warmup: Duration,
    seconds: Duration,
    command: &str,
    shape: Shape,
    rate: Option<f64>,
    with_spinner: bool,
    sample: Option<(u32, Duration)>,
) -> Result<RunResult, Error> {
    let ids = create_sessions(target, sessions).await?;
    let mut links = Vec::with_capacity(sessions);
    for id in &ids {
        links.push(open_link(target, transport, id).await?);
    }
    let start = Instant::now();
    let plan = Arc::new(Plan {
        measure_from: start + warmup,
        end: start + warmup + seconds,
        command: command.to_string(),
        shape,
        pace: rate.map(|rate| Duration::from_secs_f64(sessions as f64 / rate)),
    });
    let path = format!("/{}/api/command", target.project);
    let spinner_task = with_spinner.then(|| tokio::spawn(spinner(target.clone(), plan.end)));
    let sampler = sample.map(|(pid, every)| tokio::spawn(sample_rss(pid, every, start, plan.end)));
    let cpu = sample.map(|(pid, _)| tokio::spawn(measure_cpu(pid, plan.measure_from, plan.end)));
    let store = tokio::spawn(measure_store(target.addr, plan.measure_from, plan.end));
    let hooks = HOOKS.get().cloned().unwrap_or_default();
    let hooks = tokio::spawn({
        let (from, end) = (plan.measure_from, plan.end);
        async move {
            run_hook(from, hooks.0.as_ref()).await;
            run_hook(end, hooks.1.as_ref()).await;
        }
    });
    let workers: Vec<_> = links
        .into_iter()
        .enumerate()
        .map(|(i, link)| tokio::spawn(worker(link, path.clone(), plan.clone(), i)))
        .collect();
    let mut result = RunResult {
        histogram: stats::histogram(),
        ops: 0,
        not_ok: 0,
        errors: 0,
        first_error: None,
        window: seconds,
        rss: Vec::new(),
        spins: None,
        cpu: None,
        store: None,
    };
    for worker in workers {
        let tally = worker.await?;
        result.histogram.add(&tally.histogram)?;
        result.ops += tally.ops;
        result.not_ok += tally.not_ok;
        result.errors += tally.errors;
        if result.first_error.is_none() {
            result.first_error = tally.first_error;
        }
    }
    if let Some(task) = spinner_task {
        result.spins = Some(task.await??);
    }
    if let Some(task) = sampler {
        result.rss = task.await?;
    }
    if let Some(task) = cpu {
        result.cpu = Some(task.await?);
    }
    hooks.await?;
    result.store = store.await?;
    Ok(result)
}

async fn measure_cpu(pid: u32, from: Instant, to: Instant) -> (f64, f64, f64) {
    tokio::time::sleep_until(from.into()).await;
    let first = system::CpuSnapshot::take(pid);
    tokio::time::sleep_until(to.into()).await;
    system::CpuSnapshot::take(pid).cores_since(&first, (to - from).as_secs_f64())
}

/// The server's store counters over the window (`None` for a server
/// without them).
async fn measure_store(addr: SocketAddr, from: Instant, to: Instant) -> Option<StoreCounters> {
    tokio::time::sleep_until(from.into()).await;
    let first = client::store_counters(addr).await?;
    tokio::time::sleep_until(to.into()).await;
    let last = client::store_counters(addr).await?;
    Some(StoreCounters {
        commits: last.commits - first.commits,
        batches: last.batches - first.batches,
        commit_seconds: last
            .commit_seconds
            .zip(first.commit_seconds)
            .map(|(l, f)| l - f),
    })
}

async fn sample_rss(pid: u32, every: Duration, start: Instant, end: Instant) -> Vec<(f64, u64)> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if let Some(rss) = system::rss_kib(pid) {
            samples.push(((now - start).as_secs_f64(), rss));
        }
        if now >= end {
            return samples;
        }
    }
}

fn describe(result: &RunResult, record: &mut Record) {
    let throughput = result.ops as f64 / result.window.as_secs_f64();
    record
        .set("ops", result.ops)
        .set("seconds", result.window.as_secs_f64())
        .set("throughput", (throughput * 10.0).round() / 10.0)
        .set("not_ok", result.not_ok)
        .set("errors", result.errors)
        .latencies("", &result.histogram);
    if let Some(error) = &result.first_error {
        record.set("first_error", error.as_str());
    }
    if let Some(cpu) = result.cpu {
        cpu_of(cpu, result.ops, result.window, "", record);
    }
    if let Some(store) = result.store {
        store_of(store, result.window, record);
    }
}

/// `commits_per_s` and `batches_per_commit`: how the server's group commit
/// went (and `commit_ms`, the mean time one took, when the server says).
fn store_of(store: StoreCounters, window: Duration, record: &mut Record) {
    record.set(
        "commits_per_s",
        (store.commits / window.as_secs_f64()).round(),
    );
    if store.commits > 0.0 {
        record.set(
            "batches_per_commit",
            (store.batches / store.commits * 10.0).round() / 10.0,
        );
        if let Some(seconds) = store.commit_seconds {
            record.set("commit_ms", (seconds / store.commits * 1e5).round() / 100.0);
        }
    }
}

/// `cpu_server`, `cpu_client`, `cpu_other` (in cores) and the server's CPU
/// time per command.
fn cpu_of(cpu: (f64, f64, f64), ops: u64, window: Duration, prefix: &str, record: &mut Record) {
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let (server, client, other) = cpu;
    record
        .set(&format!("{prefix}cpu_server"), round(server))
        .set(&format!("{prefix}cpu_client"), round(client))
        .set(&format!("{prefix}cpu_other"), round(other));
    if ops > 0 {
        let per_op = server * window.as_secs_f64() / ops as f64 * 1e6;
        record.set(&format!("{prefix}server_cpu_us_per_op"), round(per_op));
    }
}

async fn closed_loop(args: &Args, transport: Transport) -> Result<Record, Error> {
    let target = args.target()?;
    let sessions = args.sessions(64)?;
    let rate: Option<f64> = args.flags.get("rate").map(|r| r.parse()).transpose()?;
    let sample = match args.pid()? {
        Some(pid) => Some((pid, args.seconds("sample-every", 5.0)?)),
        None => None,
    };
    let default_id = match transport {
        Transport::WebSocket => format!("ws{sessions}"),
        Transport::Http => format!("http{sessions}"),
    };
    let warmup = args.seconds("warmup", 2.0)?;
    let seconds = args.seconds("seconds", 10.0)?;
    let shape = Shape::from_flags(args);
    let result = run_load(
        &target,
        transport,
        sessions,
        warmup,
        seconds,
        &args.text("command", "ping"),
        shape,
        rate,
        false,
        sample,
    )
    .await?;
    let mut record = args.record(&default_id);
    record
        .set(
            "transport",
            if transport == Transport::WebSocket {
                "ws"
            } else {
                "http"
            },
        )
        .set("sessions", sessions)
        .set("shape", shape.describe());
    if let Some(rate) = rate {
        record.set("target_rate", rate);
    }
    describe(&result, &mut record);
    if !result.rss.is_empty() {
        soak_memory(&result.rss, warmup, &mut record);
    }
    eprintln!(
        "{:>14} {:<16} {:>9.0}/s  p50 {:>7.1} µs  p99 {:>7.1} µs  p99.9 {:>7.1} µs  errors {}  CPU server {:.2} ({:.1} µs/cmd) client {:.2} others {:.2}  commits/s {} ({} batches each, {} ms)",
        record.id(),
        record.server(),
        record.get("throughput").unwrap_or(0.0),
        record.get("p50_us").unwrap_or(0.0),
        record.get("p99_us").unwrap_or(0.0),
        record.get("p999_us").unwrap_or(0.0),
        result.errors + result.not_ok,
        record.get("cpu_server").unwrap_or(0.0),
        record.get("server_cpu_us_per_op").unwrap_or(0.0),
        record.get("cpu_client").unwrap_or(0.0),
        record.get("cpu_other").unwrap_or(0.0),
        record.get("commits_per_s").unwrap_or(0.0),
        record.get("batches_per_commit").unwrap_or(0.0),
        record.get("commit_ms").unwrap_or(0.0),
    );
    Ok(record)
}

/// The soak's memory verdict: RSS when warm-up ended versus at the end.
fn soak_memory(samples: &[(f64, u64)], warmup: Duration, record: &mut Record) {
    let warm = samples
        .iter()
        .find(|(t, _)| *t >= warmup.as_secs_f64())
        .or(samples.last())
        .map_or(0, |s| s.1);
    let last = samples.last().map_or(0, |s| s.1);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    record
        .set("rss_warm_kib", warm)
        .set("rss_end_kib", last)
        .set("rss_peak_kib", peak)
        .set(
            "rss_growth_pct",
            ((last as f64 - warm as f64) / warm.max(1) as f64 * 1000.0).round() / 10.0,
        )
        .set(
            "rss_samples",
            serde_json::Value::Array(
                samples
                    .iter()
                    .map(|(t, kib)| serde_json::json!([(t * 10.0).round() / 10.0, kib]))
                    .collect(),
            ),
        );
}

// ------------------------------------------------------------ session creation

/// What one session creator did.
struct Created {
    histogram: Histogram<u64>,
    ops: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Creates sessions back to back on one keep-alive connection until `end`
/// (or until the run's cap is reached), recording those begun after
/// `measure_from`.
async fn create_until(
    target: Target,
    measure_from: Instant,
    end: Instant,
    created: Arc<AtomicU64>,
) -> Created {
    let mut tally = Created {
        histogram: stats::histogram(),
        ops: 0,
        errors: 0,
        first_error: None,
    };
    let mut connection = None;
    while Instant::now() < end && created.fetch_add(1, Ordering::Relaxed) < MAX_CREATED_SESSIONS {
        let sent = Instant::now();
        let result = async {
            if connection.is_none() {
                connection = Some(HttpConnection::open(target.addr).await?);
            }
            let open = connection.as_mut().ok_or("no connection")?;
            tokio::time::timeout(REPLY_TIMEOUT, client::new_session(open, &target))
                .await
                .unwrap_or_else(|_| Err("no answer within the timeout".into()))
        }
        .await;
        let done = Instant::now();
        match result {
            Ok(_) if sent >= measure_from && done <= end => {
                stats::record(&mut tally.histogram, done - sent);
                tally.ops += 1;
            }
            Ok(_) => {}
            Err(error) => {
                // A keep-alive connection the server dropped is reopened;
                // anything else counts.
                connection = None;
                if sent >= measure_from {
                    tally.errors += 1;
                    tally.first_error.get_or_insert_with(|| error.to_string());
                }
                if tally.errors > 100 {
                    break;
                }
            }
        }
    }
    tally
}

/// `POST /<project>/api/session` from C keep-alive connections at once,
/// each creating the next session when the last one is answered: how many
/// sessions a second the server starts (as when hundreds of panels come
/// back after a restart). The baselines answer the same request with a
/// cookie and keep nothing: the bare server's rate.
async fn session_creation(args: &Args) -> Result<Record, Error> {
    let target = args.target()?;
    let connections: usize = args.number("connections", SESSION_CREATORS)?;
    if connections == 0 || connections > 1024 {
        return Err("--connections must be 1..=1024".into());
    }
    let warmup = args.seconds("warmup", 2.0)?;
    let seconds = args.seconds("seconds", 10.0)?;
    let start = Instant::now();
    let (measure_from, end) = (start + warmup, start + warmup + seconds);
    let created = Arc::new(AtomicU64::new(0));
    let cpu = args
        .pid()?
        .map(|pid| tokio::spawn(measure_cpu(pid, measure_from, end)));
    let store = tokio::spawn(measure_store(target.addr, measure_from, end));
    let creators: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(create_until(
                target.clone(),
                measure_from,
                end,
                created.clone(),
            ))
        })
        .collect();
    let mut result = RunResult {
        histogram: stats::histogram(),
        ops: 0,
        not_ok: 0,
        errors: 0,
        first_error: None,
        window: seconds,
        rss: Vec::new(),
        spins: None,
        cpu: None,
        store: None,
    };
    for creator in creators {
        let tally = creator.await?;
        result.histogram.add(&tally.histogram)?;
        result.ops += tally.ops;
        result.errors += tally.errors;
        if result.first_error.is_none() {
            result.first_error = tally.first_error;
        }
    }
    if let Some(task) = cpu {
        result.cpu = Some(task.await?);
    }
    result.store = store.await?;
    let mut record = args.record("sessions");
    record
        .set("transport", "http")
        .set("sessions", connections)
        .set("connections", connections)
        .set(
            "created",
            created.load(Ordering::Relaxed).min(MAX_CREATED_SESSIONS),
        );
    describe(&result, &mut record);
    if created.load(Ordering::Relaxed) >= MAX_CREATED_SESSIONS {
        record.set("capped", true);
    }
    eprintln!(
        "{:>14} {:<16} {:>9.0} sessions/s  p50 {:>7.1} µs  p99 {:>7.1} µs  errors {}  CPU server {:.2} ({:.1} µs/session) client {:.2} others {:.2}",
        record.id(),
        record.server(),
        record.get("throughput").unwrap_or(0.0),
        record.get("p50_us").unwrap_or(0.0),
        record.get("p99_us").unwrap_or(0.0),
        result.errors,
        record.get("cpu_server").unwrap_or(0.0),
        record.get("server_cpu_us_per_op").unwrap_or(0.0),
        record.get("cpu_client").unwrap_or(0.0),
        record.get("cpu_other").unwrap_or(0.0),
    );
    Ok(record)
}

// ------------------------------------------------------------ fsync

/// How long this machine's disk takes to make a small write durable
/// (`write` of 4 KiB + `fdatasync`, one at a time, for `--seconds`) in
/// `--dir` — the folder the server's database lives in. A reply that must
/// wait for a durable commit cannot come sooner than this.
async fn fsync(args: &Args) -> Result<Record, Error> {
    let dir = std::path::PathBuf::from(args.required("dir")?);
    let seconds = args.seconds("seconds", 3.0)?;
    let histogram = tokio::task::spawn_blocking(move || -> Result<Histogram<u64>, Error> {
        use std::io::Write as _;
        let path = dir.join(format!("fsync-probe-{}", std::process::id()));
        let mut file = std::fs::File::create(&path)?;
        let block = [7u8; 4096];
        let mut histogram = stats::histogram();
        let end = Instant::now() + seconds;
        while Instant::now() < end {
            let started = Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            stats::record(&mut histogram, started.elapsed());
        }
        drop(file);
        std::fs::remove_file(&path)?;
        Ok(histogram)
    })
    .await??;
    let mut record = Record::new("fsync", "disk");
    record
        .set("ops", histogram.len())
        .set("seconds", seconds.as_secs_f64())
        .latencies("", &histogram);
    eprintln!(
        "{:>14} write + fdatasync of 4 KiB: {} in {:.0} s, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        record.id(),
        histogram.len(),
        seconds.as_secs_f64(),
        record.get("p50_us").unwrap_or(0.0),
        record.get("p99_us").unwrap_or(0.0),
        record.get("max_us").unwrap_or(0.0),
    );
    Ok(record)
}

// ------------------------------------------------------------ spin

/// Other sessions' latency while one session's handler loops until its
/// limit, against the same load without it.
async fn spin(args: &Args) -> Result<Record, Error> {
    let target = args.target()?;
    let sessions = args.sessions(8)?;
    let warmup = args.seconds("warmup", 2.0)?;
    let seconds = args.seconds("seconds", 10.0)?;
    let sample = args.pid()?.map(|pid| (pid, Duration::from_secs(5)));
    let mut phases = Vec::new();
    for with_spinner in [false, true] {
        phases.push(
            run_load(
                &target,
                Transport::WebSocket,
                sessions,
                warmup,
                seconds,
                "ping",
                Shape::PLAIN,
                None,
                with_spinner,
                sample,
            )
            .await?,
        );
    }
    let (quiet, loaded) = (&phases[0], &phases[1]);
    let mut record = args.record("spin");
    record
        .set("sessions", sessions)
        .set("seconds", seconds.as_secs_f64())
        .set(
            "throughput_without",
            (quiet.ops as f64 / seconds.as_secs_f64()).round(),
        )
        .set(
            "throughput_with",
            (loaded.ops as f64 / seconds.as_secs_f64()).round(),
        )
        .set(
            "errors",
            quiet.errors + loaded.errors + quiet.not_ok + loaded.not_ok,
        )
        .latencies("without_", &quiet.histogram)
        .latencies("with_", &loaded.histogram);
    for (phase, prefix) in [(quiet, "without_"), (loaded, "with_")] {
        if let Some(cpu) = phase.cpu {
            cpu_of(cpu, phase.ops, phase.window, prefix, &mut record);
        }
    }
    if let Some((spins, mean)) = loaded.spins {
        record
            .set("spins", spins)
            .set("spin_ms", (mean.as_secs_f64() * 1e4).round() / 10.0);
    }
    let ratio =
        record.get("with_p99_us").unwrap_or(0.0) / record.get("without_p99_us").unwrap_or(1.0);
    record.set("p99_ratio", (ratio * 100.0).round() / 100.0);
    eprintln!(
        "{:>14} {:<16} p99 without {:.1} µs, with a looping handler {:.1} µs (×{ratio:.2}); {} spins of {:.1} ms",
        record.id(),
        record.server(),
        record.get("without_p99_us").unwrap_or(0.0),
        record.get("with_p99_us").unwrap_or(0.0),
        record.get("spins").unwrap_or(0.0),
        record.get("spin_ms").unwrap_or(0.0),
    );
    Ok(record)
}

// ------------------------------------------------------------ many sockets

/// Where held sockets report `ui` pushes of the `clock` object: each
/// socket writes when it got the current round's value into its own slot.
struct Board {
    base: Instant,
    /// The round whose value sockets are waiting for (`b<round>-<nonce>`).
    round: AtomicU64,
    nonce: String,
    received: AtomicU64,
    /// Nanoseconds after `base` each socket got the current round's value.
    at: Vec<AtomicU64>,
}

impl Board {
    fn token(&self, round: u64) -> String {
        format!("b{round}-{}", self.nonce)
    }

    fn note(&self, index: usize, text: &str) {
        let Some(value) = clock_value(text) else {
            return;
        };
        let round = self.round.load(Ordering::Acquire);
        if value == self.token(round) {
            let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.at[index].store(nanos, Ordering::Relaxed);
            self.received.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Keeps a socket open and read (pings get their pongs); notes broadcast
/// values on `board`; sends the frames that come from `outgoing`.
fn hold(
    mut socket: Socket,
    index: usize,
    board: Option<Arc<Board>>,
    mut outgoing: Option<mpsc::Receiver<String>>,
    closed: Arc<AtomicU64>,
) {
    tokio::spawn(async move {
        loop {
            let next = match outgoing.as_mut() {
                Some(out) => tokio::select! {
                    message = socket.next() => Some(message),
                    frame = out.recv() => {
                        match frame {
                            Some(frame) => {
                                if socket.send(Message::text(frame)).await.is_err() {
                                    break;
                                }
                            }
                            None => outgoing = None,
                        }
                        None
                    }
                },
                None => Some(socket.next().await),
            };
            match next {
                None => {}
                Some(Some(Ok(Message::Text(text)))) => {
                    if let Some(board) = &board {
                        board.note(index, &text);
                    }
                }
                Some(Some(Ok(Message::Close(_)))) | Some(None) | Some(Some(Err(_))) => break,
                Some(Some(Ok(_))) => {}
            }
        }
        closed.fetch_add(1, Ordering::Relaxed);
    });
}

fn rss_of(pid: u32) -> Result<u64, Error> {
    system::rss_kib(pid).ok_or_else(|| format!("cannot read /proc/{pid}/status").into())
}

struct Crowd {
    /// Frames to send on the first socket.
    first: mpsc::Sender<String>,
    closed: Arc<AtomicU64>,
}

/// Creates `count` sessions and opens one socket each, measuring the
/// server's RSS before, after the sessions and after the sockets.
async fn crowd(
    args: &Args,
    count: usize,
    open_files: u64,
    board: Option<Arc<Board>>,
    record: &mut Record,
) -> Result<Crowd, Error> {
    let target = args.target()?;
    let pid = args
        .pid()?
        .ok_or("--pid (the server's process id) is required")?;
    if (open_files as usize) < count + 100 {
        return Err(format!(
            "{count} sockets need an open-files limit above {}; this process has {open_files} (ulimit -n)",
            count + 100
        )
        .into());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_of(pid)?;
    let client_before = rss_of(std::process::id())?;
    let started = Instant::now();
    let ids = create_sessions(&target, count).await?;
    let creating = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_sessions = rss_of(pid)?;
    let started = Instant::now();
    let sockets = connect_all(&target, &ids).await?;
    let connecting = started.elapsed();
    let closed = Arc::new(AtomicU64::new(0));
    let (first, first_rx) = mpsc::channel(4);
    let mut first_rx = Some(first_rx);
    for (index, socket) in sockets.into_iter().enumerate() {
        hold(
            socket,
            index,
            board.clone(),
            first_rx.take(),
            closed.clone(),
        );
    }
    // Let every connection's first pushes go out and the server settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_sockets = rss_of(pid)?;
    let client_after = rss_of(std::process::id())?;
    record.set(
        "client_kib_per_socket",
        ((client_after as f64 - client_before as f64) / count as f64 * 100.0).round() / 100.0,
    );
    let per_session = (with_sockets as f64 - before as f64) / count as f64;
    record
        .set("sessions", count)
        .set("rss_before_kib", before)
        .set("rss_sessions_kib", with_sessions)
        .set("rss_sockets_kib", with_sockets)
        .set("kib_per_session", (per_session * 100.0).round() / 100.0)
        .set(
            "kib_per_session_without_socket",
            ((with_sessions as f64 - before as f64) / count as f64 * 100.0).round() / 100.0,
        )
        .set(
            "kib_per_socket",
            ((with_sockets as f64 - with_sessions as f64) / count as f64 * 100.0).round() / 100.0,
        )
        .set(
            "sessions_per_s",
            (count as f64 / creating.as_secs_f64()).round(),
        )
        .set(
            "connects_per_s",
            (count as f64 / connecting.as_secs_f64()).round(),
        );
    Ok(Crowd { first, closed })
}

/// K idle sessions, one WebSocket each: the server's RSS per session.
async fn idle(args: &Args, open_files: u64) -> Result<Record, Error> {
    let count = args.sessions(15_000)?;
    let mut record = args.record("idle");
    let crowd = crowd(args, count, open_files, None, &mut record).await?;
    let hold_for = args.seconds("hold", 0.0)?;
    tokio::time::sleep(hold_for).await;
    let dropped = crowd.closed.load(Ordering::Relaxed);
    record
        .set("closed_by_server", dropped)
        .set("errors", dropped);
    eprintln!(
        "{:>14} {:<16} {count} sessions: {:.2} KiB each ({:.2} session + {:.2} socket); {} sessions/s, {} connects/s; RSS {} → {} KiB",
        record.id(),
        record.server(),
        record.get("kib_per_session").unwrap_or(0.0),
        record.get("kib_per_session_without_socket").unwrap_or(0.0),
        record.get("kib_per_socket").unwrap_or(0.0),
        record.get("sessions_per_s").unwrap_or(0.0),
        record.get("connects_per_s").unwrap_or(0.0),
        record.get("rss_before_kib").unwrap_or(0.0),
        record.get("rss_sockets_kib").unwrap_or(0.0),
    );
    Ok(record)
}

/// The value a `ui` push for the `clock` object carries, if `text` is one.
fn clock_value(text: &str) -> Option<&str> {
    if !text.contains(r#""type":"ui""#) || !text.contains(r#""id":"clock""#) {
        return None;
    }
    let rest = &text[text.find(r#""value":""#)? + 9..];
    Some(&rest[..rest.find('"')?])
}

/// `uiSet` from one session's handler, delivered to K connected sessions:
/// when does the last one get it?
async fn broadcast(args: &Args, open_files: u64) -> Result<Record, Error> {
    let count = args.sessions(10_000)?;
    let rounds: u64 = args.number("rounds", 5)?;
    let mut record = args.record("broadcast");
    let board = Arc::new(Board {
        base: Instant::now(),
        round: AtomicU64::new(0),
        nonce: std::process::id().to_string(),
        received: AtomicU64::new(0),
        at: (0..count).map(|_| AtomicU64::new(0)).collect(),
    });
    let crowd = crowd(args, count, open_files, Some(board.clone()), &mut record).await?;
    let pid = args.pid()?.unwrap_or(0);
    let mut lasts = Vec::new();
    let mut all = stats::histogram();
    let mut missing_total = 0;
    let mut cpu_ticks = system::CpuSnapshot::default();
    let mut busy = Duration::ZERO;
    let hooks = HOOKS.get().cloned().unwrap_or_default();
    run_hook(Instant::now(), hooks.0.as_ref()).await;
    for round in 1..=rounds {
        let before = system::CpuSnapshot::take(pid);
        let round_started = Instant::now();
        for slot in &board.at {
            slot.store(0, Ordering::Relaxed);
        }
        board.received.store(0, Ordering::Release);
        board.round.store(round, Ordering::Release);
        let frame = Command::plain(round, "broadcast", &board.token(round)).frame();
        let sent = board.base.elapsed();
        crowd
            .first
            .send(frame)
            .await
            .map_err(|_| "the first socket closed")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while board.received.load(Ordering::Acquire) < count as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut got = 0;
        let mut last = Duration::ZERO;
        for slot in &board.at {
            let at = slot.load(Ordering::Relaxed);
            if at > 0 {
                got += 1;
                let delay = Duration::from_nanos(at).saturating_sub(sent);
                last = last.max(delay);
                stats::record(&mut all, delay);
            }
        }
        // Let the last writes finish before the CPU is read.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after = system::CpuSnapshot::take(pid);
        cpu_ticks.server += after.server.saturating_sub(before.server);
        cpu_ticks.client += after.client.saturating_sub(before.client);
        cpu_ticks.machine_busy += after.machine_busy.saturating_sub(before.machine_busy);
        busy += round_started.elapsed();
        missing_total += count - got;
        lasts.push(last);
        eprintln!(
            "{:>14} round {round}: {got}/{count} delivered, last after {:.1} ms",
            record.id(),
            last.as_secs_f64() * 1e3
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    run_hook(Instant::now(), hooks.1.as_ref()).await;
    let mut sorted = lasts.clone();
    sorted.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    record
        .set("rounds", rounds)
        .set("last_ms_median", ms(sorted[sorted.len() / 2]))
        .set(
            "last_ms_worst",
            ms(*sorted.last().unwrap_or(&Duration::ZERO)),
        )
        .set(
            "last_ms_rounds",
            serde_json::Value::Array(lasts.iter().map(|d| ms(*d).into()).collect()),
        )
        .set("missing", missing_total)
        .set(
            "errors",
            missing_total as u64 + crowd.closed.load(Ordering::Relaxed),
        )
        .latencies("delivery_", &all);
    let (server, client, other) =
        cpu_ticks.cores_since(&system::CpuSnapshot::default(), busy.as_secs_f64());
    let deliveries = (rounds as usize * count).max(1) as f64;
    let per = |cores: f64| (cores * busy.as_secs_f64() / deliveries * 1e7).round() / 10.0;
    record
        .set("cpu_server", (server * 100.0).round() / 100.0)
        .set("cpu_client", (client * 100.0).round() / 100.0)
        .set("cpu_other", (other * 100.0).round() / 100.0)
        .set("server_cpu_us_per_delivery", per(server))
        .set("client_cpu_us_per_delivery", per(client));
    eprintln!(
        "{:>14} {:<16} CPU per delivery: server {:.1} µs, load client {:.1} µs; others used {:.2} cores",
        record.id(),
        record.server(),
        per(server),
        per(client),
        other
    );
    eprintln!(
        "{:>14} {:<16} {count} sockets: last delivery median {:.1} ms, worst {:.1} ms; {} KiB/session",
        record.id(),
        record.server(),
        record.get("last_ms_median").unwrap_or(0.0),
        record.get("last_ms_worst").unwrap_or(0.0),
        record.get("kib_per_session").unwrap_or(0.0),
    );
    Ok(record)
}

/// Cluster mode: `uiSet` from a handler on node B (`--from`), seen by a
/// socket on node A (`--addr`), one round after the other: the time from
/// sending the command on B to the push arriving on A.
async fn crossnode(args: &Args) -> Result<Record, Error> {
    const WARMUP_ROUNDS: u64 = 20;
    let rounds: u64 = args.number("rounds", 500)?;
    let on_a = args.target()?;
    let on_b = Target::new(
        args.required("from")?.parse()?,
        &args.text("project", "bench"),
    )?;
    let mut record = args.record("crossnode");
    let mut listener = client::connect(&on_a, &create_sessions(&on_a, 1).await?[0]).await?;
    let mut sender = client::connect(&on_b, &create_sessions(&on_b, 1).await?[0]).await?;
    let nonce = std::process::id();
    let mut delays = stats::histogram();
    let mut missing = 0u64;
    for round in 1..=WARMUP_ROUNDS + rounds {
        let token = format!("x{round}-{nonce}");
        let sent = Instant::now();
        sender
            .send(Message::text(
                Command::plain(round, "broadcast", &token).frame(),
            ))
            .await?;
        let seen = tokio::time::timeout(REPLY_TIMEOUT, async {
            while let Some(Ok(message)) = listener.next().await {
                if let Message::Text(text) = message
                    && clock_value(&text) == Some(token.as_str())
                {
                    return true;
                }
            }
            false
        })
        .await;
        let delay = sent.elapsed();
        client::ws_reply(&mut sender, round, REPLY_TIMEOUT).await?;
        match seen {
            Ok(true) if round > WARMUP_ROUNDS => stats::record(&mut delays, delay),
            Ok(true) => {}
            _ => missing += 1,
        }
    }
    record
        .set("rounds", rounds)
        .set("missing", missing)
        .latencies("delivery_", &delays);
    eprintln!(
        "{:>14} {:<16} uiSet on B → socket on A: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs over {rounds} rounds; {missing} missing",
        record.id(),
        record.server(),
        record.get("delivery_p50_us").unwrap_or(0.0),
        record.get("delivery_p99_us").unwrap_or(0.0),
        record.get("delivery_max_us").unwrap_or(0.0),
    );
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_clock_value() {
        let push = r#"{"type":"ui","set":[{"id":"clock","attr":"text","value":"b1-9"}]}"#;
        assert_eq!(clock_value(push), Some("b1-9"));
        assert_eq!(clock_value(r#"{"seq":1,"status":"ok","actions":[]}"#), None);
    }
}
