//! The points benchmark (docs/performance.md, "Live points over MQTT"):
//! a real Mosquitto on a free loopback port, the release server serving a
//! generated project of POINTS number points on PAGES pages of PER_PAGE
//! points each, SESSIONS sessions each showing one page over a WebSocket,
//! and a publisher sending RATE changes a second for SECONDS seconds to
//! random points. Measures the time from publish to the browser socket
//! (each value is the publish's sequence number, so a receiver knows when
//! it was sent), checks that every session ends at the last value of each
//! point it shows, reports the server's RSS, and, in the same run, a plain
//! MQTT subscriber's receive rate and latency: the bare broker baseline.
//!
//! Usage: `points [SERVER_BIN]` (default target/release/switchboard);
//! SESSIONS, POINTS, PER_PAGE, RATE, SECONDS from the environment. Every
//! connection goes to 127.0.0.1; the run is bounded in time.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use switchboard_bench::{stats, system};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// When each sequence number was published, in microseconds since start
/// (histograms hold microseconds here).
struct Clock {
    start: Instant,
    sent: Vec<AtomicU64>,
}

impl Clock {
    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// A pushed frame, read without copying its strings: the client decodes
/// millions of items on the server's machine, and its CPU is taken from
/// the server's.
#[derive(Deserialize)]
struct Push<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    set: Vec<Item<'a>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    value: Option<f64>,
}

/// The index of a point named by [`point_name`].
fn point_index(name: &str) -> Option<usize> {
    name.strip_prefix('p')?.parse().ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn point_name(index: usize) -> String {
    format!("p{index:03}")
}

/// Writes the project: points p000…, pages page00… binding PER_PAGE each.
fn write_project(root: &std::path::Path, url: &str, points: usize, per_page: usize) -> usize {
    let dir = root.join("bench-points");
    std::fs::create_dir_all(dir.join("pages")).unwrap();
    let mut toml = format!(
        "title = \"Points benchmark\"\nstart = \"page00\"\n\n[[connections]]\nname = \"broker\"\nkind = \"mqtt\"\nurl = \"{url}\"\n"
    );
    for index in 0..points {
        let name = point_name(index);
        toml.push_str(&format!(
            "\n[[points]]\nname = \"{name}\"\ntype = \"number\"\nconnection = \"broker\"\nstate = \"bench/{name}\"\n"
        ));
    }
    std::fs::write(dir.join("project.toml"), toml).unwrap();
    let pages = points.div_ceil(per_page);
    for page in 0..pages {
        let spans: String = (page * per_page..((page + 1) * per_page).min(points))
            .map(|i| format!("<span data-sb-point=\"{}\"></span>\n", point_name(i)))
            .collect();
        std::fs::write(
            dir.join(format!("pages/page{page:02}.html")),
            format!(
                "{{% extends \"sb/layout.html\" %}}{{% block content %}}\n{spans}{{% endblock %}}\n"
            ),
        )
        .unwrap();
    }
    pages
}

fn start_broker(dir: &std::path::Path) -> (Child, u16) {
    let port = free_port();
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (Debian package mosquitto)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

fn start_server(
    binary: &str,
    projects: &std::path::Path,
    data: &std::path::Path,
) -> (Child, String) {
    let mut child = Command::new(binary)
        .arg("--projects")
        .arg(projects)
        .args(["--bind", "127.0.0.1:0", "--database"])
        .arg(data.join("db.redb"))
        .env("SWITCHBOARD_LOG", "warn")
        // A thousand sessions from one address: no per-address budget.
        .env("SWITCHBOARD_NEW_SESSIONS_PER_MINUTE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the switchboard binary starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        if let Some(addr) = line.trim().strip_prefix("Switchboard listening on http://") {
            let addr = addr.trim_end_matches('/').to_string();
            std::thread::spawn(move || for _ in stdout.lines() {});
            return (child, addr);
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not start");
}

async fn mqtt(port: u16, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_request_channel_capacity(10_000);
    options.set_inflight(1000);
    AsyncClient::new(options, 10_000)
}

/// What the sessions found, added up.
#[derive(Default)]
struct Tally {
    latencies: Mutex<Option<Histogram<u64>>>,
    /// The last value each session saw of each point, by `page/point`.
    last: Mutex<HashMap<String, f64>>,
    received: AtomicU64,
}

/// One session: creates it, renders its page, then reads its socket.
async fn session(
    addr: String,
    page: usize,
    clock: Arc<Clock>,
    tally: Arc<Tally>,
    ready: tokio::sync::mpsc::Sender<()>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let id = new_session(&addr).await;
    let page_name = format!("page{page:02}");
    get(&addr, &format!("/bench-points/{page_name}"), &id).await;
    let mut request = format!("ws://{addr}/bench-points/api/ws?tab=t&page={page_name}")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", format!("sb_session={id}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("socket");
    let _ = ready.send(()).await;
    // The last value of each point seen, by index (NaN: none yet).
    let mut mine: Vec<f64> = Vec::new();
    let mut local = stats::histogram();
    let mut stop = stop;
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            _ = stop.changed() => break,
        };
        let Some(Ok(Message::Text(text))) = message else {
            if matches!(message, Some(Ok(_))) {
                continue;
            }
            break;
        };
        let Ok(push) = serde_json::from_str::<Push>(&text) else {
            continue;
        };
        if push.kind != "points" {
            continue;
        }
        let now = clock.now();
        let mut counted = 0;
        for item in push.set {
            let Some(value) = item.value else { continue };
            let sent = clock
                .sent
                .get(value as usize)
                .map_or(0, |s| s.load(Relaxed));
            if sent > 0 && now >= sent {
                local.saturating_record((now - sent).max(1));
            }
            counted += 1;
            let index = point_index(&item.name).expect("a point of the generated project");
            if mine.len() <= index {
                mine.resize(index + 1, f64::NAN);
            }
            mine[index] = value;
        }
        tally.received.fetch_add(counted, Relaxed);
    }
    tally
        .latencies
        .lock()
        .unwrap()
        .get_or_insert_with(stats::histogram)
        .add(&local)
        .unwrap();
    let mut last = tally.last.lock().unwrap();
    for (index, value) in mine.into_iter().enumerate() {
        if !value.is_nan() {
            last.insert(format!("{page}/{}", point_name(index)), value);
        }
    }
}

/// Creates a session over HTTP; returns its id.
async fn new_session(addr: &str) -> String {
    let response = raw_http(addr, "POST", "/bench-points/api/session", "").await;
    let start = response.find("sb_session=").expect("a session cookie") + "sb_session=".len();
    response[start..].split(';').next().unwrap().to_string()
}

async fn get(addr: &str, path: &str, session: &str) {
    let response = raw_http(
        addr,
        "GET",
        path,
        &format!("Cookie: sb_session={session}\r\n"),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{path}: {}",
        response.lines().next().unwrap_or("")
    );
}

/// A minimal HTTP/1.1 request (the bench crate has no HTTP client).
async fn raw_http(addr: &str, method: &str, path: &str, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

fn main() {
    system::raise_open_files_limit();
    let binary = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/switchboard".into());
    let sessions = env("SESSIONS", 1000) as usize;
    let points = env("POINTS", 200) as usize;
    let per_page = env("PER_PAGE", 10) as usize;
    let rate = env("RATE", 2000);
    let seconds = env("SECONDS", 60);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(binary, sessions, points, per_page, rate, seconds));
}

async fn run(
    binary: String,
    sessions: usize,
    points: usize,
    per_page: usize,
    rate: u64,
    seconds: u64,
) {
    let work = std::env::temp_dir().join(format!("sb-points-bench-{}", std::process::id()));
    let projects = work.join("projects");
    std::fs::create_dir_all(&projects).unwrap();
    let (mut broker, port) = start_broker(&work);
    let pages = write_project(
        &projects,
        &format!("mqtt://127.0.0.1:{port}"),
        points,
        per_page,
    );
    let (mut server, addr) = start_server(&binary, &projects, &work);
    let server_pid = server.id();
    let total = (rate * seconds) as usize + 1;
    let clock = Arc::new(Clock {
        start: Instant::now(),
        sent: (0..total).map(|_| AtomicU64::new(0)).collect(),
    });

    // The bare-broker baseline: a plain subscriber to every point topic.
    let baseline = stats::histogram();
    let baseline = Arc::new(Mutex::new(baseline));
    let baseline_count = Arc::new(AtomicU64::new(0));
    {
        let (client, mut events) = mqtt(port, "bench-baseline").await;
        client.subscribe("bench/#", QoS::AtMostOnce).await.unwrap();
        let (clock, baseline, count) = (clock.clone(), baseline.clone(), baseline_count.clone());
        tokio::spawn(async move {
            let _client = client;
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Packet::Publish(publish)) = event {
                    let now = clock.now();
                    let value: usize = std::str::from_utf8(&publish.payload)
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    let sent = clock.sent.get(value).map_or(0, |s| s.load(Relaxed));
                    if sent > 0 {
                        baseline
                            .lock()
                            .unwrap()
                            .saturating_record(now.saturating_sub(sent).max(1));
                    }
                    count.fetch_add(1, Relaxed);
                }
            }
        });
    }

    eprintln!("[points] {sessions} sessions on {pages} pages of {per_page} of {points} points");
    let tally = Arc::new(Tally::default());
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(sessions);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for index in 0..sessions {
        tasks.push(tokio::spawn(session(
            addr.clone(),
            index % pages,
            clock.clone(),
            tally.clone(),
            ready_tx.clone(),
            stop.clone(),
        )));
        if index % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for _ in 0..sessions {
        ready.recv().await;
    }
    let rss_before = system::rss_kib(server_pid).unwrap_or(0);
    eprintln!(
        "[points] all sessions connected; server RSS {} MiB",
        rss_before / 1024
    );

    // The publisher: RATE a second, paced every millisecond.
    let (publisher, mut events) = mqtt(port, "bench-publisher").await;
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let mut expected: HashMap<String, u64> = HashMap::new();
    let cpu_before = system::CpuSnapshot::take(server_pid);
    let started = Instant::now();
    let mut sequence: u64 = 1;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut peak_rss = rss_before;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
        while sequence < due && (sequence as usize) < total {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let name = point_name((rng % points as u64) as usize);
            clock.sent[sequence as usize].store(clock.now(), Relaxed);
            publisher
                .publish(
                    format!("bench/{name}"),
                    QoS::AtMostOnce,
                    false,
                    sequence.to_string(),
                )
                .await
                .unwrap();
            expected.insert(name, sequence);
            sequence += 1;
        }
        if sequence % 20_000 < 3 {
            peak_rss = peak_rss.max(system::rss_kib(server_pid).unwrap_or(0));
        }
    }
    let published = sequence - 1;
    let publish_seconds = started.elapsed().as_secs_f64();
    // The broker is another process: "others" includes it.
    let (server_cores, client_cores, other_cores) =
        system::CpuSnapshot::take(server_pid).cores_since(&cpu_before, publish_seconds);
    peak_rss = peak_rss.max(system::rss_kib(server_pid).unwrap_or(0));
    // Let the last values arrive (a lagging panel is caught up within
    // a quarter second), then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = system::rss_kib(server_pid).unwrap_or(0);
    stop_tx.send_replace(true);
    for task in tasks {
        let _ = task.await;
    }

    // Every session of a page ends at the last value of its points.
    let last = tally.last.lock().unwrap();
    let mut wrong = 0;
    let mut checked = 0;
    for page in 0..pages {
        for index in page * per_page..((page + 1) * per_page).min(points) {
            let name = point_name(index);
            if let Some(&value) = expected.get(&name) {
                checked += 1;
                if last.get(&format!("{page}/{name}")).copied() != Some(value as f64) {
                    wrong += 1;
                }
            }
        }
    }
    let latencies = tally
        .latencies
        .lock()
        .unwrap()
        .take()
        .unwrap_or_else(stats::histogram);
    let baseline = baseline.lock().unwrap();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let result = serde_json::json!({
        "id": "points",
        "sessions": sessions,
        "points": points,
        "per_page": per_page,
        "rate_target": rate,
        "published": published,
        "publish_rate": published as f64 / publish_seconds,
        "pushed_items": tally.received.load(Relaxed),
        "p50_ms": ms(&latencies, 0.5),
        "p99_ms": ms(&latencies, 0.99),
        "max_ms": latencies.max() as f64 / 1000.0,
        "final_values_checked": checked,
        "final_values_wrong": wrong,
        "rss_mib_connected": rss_before as f64 / 1024.0,
        "rss_mib_peak": peak_rss as f64 / 1024.0,
        "rss_mib_after": rss_after as f64 / 1024.0,
        "server_cores": server_cores,
        "client_cores": client_cores,
        "other_cores": other_cores,
        "baseline_received": baseline_count.load(Relaxed),
        "baseline_rate": baseline_count.load(Relaxed) as f64 / publish_seconds,
        "baseline_p50_ms": ms(&baseline, 0.5),
        "baseline_p99_ms": ms(&baseline, 0.99),
        "machine": system::machine(),
    });
    println!("{result}");
    let _ = server.kill();
    let _ = server.wait();
    let _ = broker.kill();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&work);
}
