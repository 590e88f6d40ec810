//! Cluster mode, once per cluster (issue 17): timers, `projectStartup`,
//! `pointChange` and idle expiry run on the node holding the project's
//! lease, and another node takes over when it dies. Real `nats-server -js`
//! and Mosquitto, nodes as processes. See docs/cluster.md.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::mosquitto::Broker;
use common::nats::Nats;
use common::{Client, Server, toast_of};

/// The lease time the nodes run with: short, so takeovers are quick.
const LEASE_MS: u64 = 2_000;

/// The test project's timer period.
const PERIOD_MS: u64 = 300;

/// Room for a loaded test machine (two cores shared with builds) on top of
/// what the design promises: scheduling delays, not a design margin.
const SLACK_MS: u64 = 1_500;

const PROJECT_TOML: &str = r#"title = "Once"
start = "home"
idle_timeout_secs = 3

[[timers]]
name = "beat"
every_ms = 300

[[connections]]
name = "site"
kind = "mqtt"
url_env = "LEASE_TEST_MQTT"
keep_alive_secs = 5
qos = 1

[[points]]
name = "hall.temp"
type = "number"
connection = "site"
state = "lease/hall/temp"

[[points]]
name = "hall.mode"
type = "text"
initial = "auto"
"#;

/// Every callback that must run once per cluster prints a line the test
/// counts in the nodes' logs.
const SCRIPT: &str = r#"
fn projectStartup() { print(`STARTUP@${now()}#`); }
fn timer(name) { print(`TICK@${now()}#`); }
fn pointChange(name, value, old) { print(`CHANGE ${name}=${value}#`); }
fn sessionShutdown(session, reason) { print(`SHUTDOWN ${session} ${reason}#`); }
fn userCommand(session, userid, name, param) {
    switch name {
        "mode" => #{ toast: `${pointSet("hall.mode", param)}` },
        "temp" => #{ toast: `${pointGet("hall.temp")}` },
        "ping" => #{ toast: "pong" },
        _ => ()
    }
}
"#;

/// A projects folder holding the test project `once`.
fn projects() -> PathBuf {
    let root = common::temp_dir("lease-projects");
    common::write_project(
        &root,
        "once",
        &[
            ("project.toml", PROJECT_TOML),
            ("events/once.rhai", SCRIPT),
            ("pages/home.html", common::HOME_PAGE),
        ],
    );
    root
}

/// A node named `name` of the cluster on `nats`.
fn node(projects: &Path, nats: &Nats, name: &str, env: &[(&str, &str)]) -> Server {
    let lease = LEASE_MS.to_string();
    Server::start_with_env(
        projects,
        &common::temp_dir("lease-data"),
        &["--cluster", &nats.url, "--node", name, "--lease-ms", &lease],
        env,
    )
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The numbers printed as `MARK@<n>#` in a log.
fn marks(log: &str, mark: &str) -> Vec<u64> {
    let needle = format!("{mark}@");
    log.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &log[at + needle.len()..];
            rest[..rest.find('#')?].parse().ok()
        })
        .collect()
}

/// How many times `line` appears in a log.
fn count(log: &str, line: &str) -> usize {
    log.matches(line).count()
}

/// Polls until `done` holds, or fails with `what` after a deadline.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all(nodes: &[Server]) -> Vec<&Server> {
    nodes.iter().collect()
}

/// Tick times of every node, each with the node's index, in time order.
fn ticks(nodes: &[&Server]) -> Vec<(u64, usize)> {
    let mut all: Vec<(u64, usize)> = nodes
        .iter()
        .enumerate()
        .flat_map(|(index, node)| {
            marks(&node.log(), "TICK")
                .into_iter()
                .map(move |t| (t, index))
        })
        .collect();
    all.sort();
    all
}

/// No period ran twice: each node's runs form one unbroken stretch (two
/// nodes running the timer would interleave), and there are no more runs
/// than periods in the time they span (the schedule delays a late run, it
/// never adds one). None was skipped: no gap is longer than `longest`.
fn assert_once_per_period(ticks: &[(u64, usize)], longest: u64) {
    let mut stretches: Vec<usize> = ticks.iter().map(|&(_, node)| node).collect();
    stretches.dedup();
    let mut distinct = stretches.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        stretches.len(),
        distinct.len(),
        "runs of two nodes interleave: a period ran twice; {ticks:?}"
    );
    let (first, last) = (ticks[0].0, ticks[ticks.len() - 1].0);
    // Half a period of room: each run prints its time a little after its
    // due time, by however long it waited for a script thread.
    let periods = (last - first + PERIOD_MS / 2) / PERIOD_MS + 1;
    assert!(
        ticks.len() as u64 <= periods,
        "{} runs in {periods} periods: a period ran twice; {ticks:?}",
        ticks.len()
    );
    for pair in ticks.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap <= longest,
            "{gap} ms without a run (after node {}): periods were skipped; {ticks:?}",
            pair[0].1
        );
    }
}

/// Two nodes `a` and `b` on `nats` (with `env`), and the indexes of the
/// one holding the lease and of the other.
fn two_nodes(projects: &Path, nats: &Nats, env: &[(&str, &str)]) -> ([Server; 2], usize, usize) {
    let nodes = [
        node(projects, nats, "a", env),
        node(projects, nats, "b", env),
    ];
    let refs = [&nodes[0], &nodes[1]];
    wait_until("a node holds the lease", || {
        refs.iter()
            .any(|n| n.log().contains("this node holds the lease"))
    });
    let holder = only_node_with(&refs, "this node holds the lease");
    (nodes, holder, 1 - holder)
}

/// The index of the one node that logged `needle`; fails if several did.
fn only_node_with(nodes: &[&Server], needle: &str) -> usize {
    let with: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].log().contains(needle))
        .collect();
    assert_eq!(with.len(), 1, "nodes logging {needle:?}: {with:?}");
    with[0]
}

#[test]
fn a_timer_runs_once_per_period_on_three_nodes_and_survives_its_node_being_killed() {
    let nats = Nats::start();
    let projects = projects();
    let mut nodes = vec![
        node(&projects, &nats, "a", &[]),
        node(&projects, &nats, "b", &[]),
        node(&projects, &nats, "c", &[]),
    ];
    wait_until("ten timer runs", || ticks(&all(&nodes)).len() >= 10);
    let before = ticks(&all(&nodes));
    let holder = before[0].1;
    assert!(
        before.iter().all(|&(_, node)| node == holder),
        "one node runs the timer: {before:?}"
    );
    assert_once_per_period(&before, PERIOD_MS + SLACK_MS);

    // The holder dies without a word: another node takes over within the
    // lease time and the timer goes on, still once per period.
    let killed_at = now_ms();
    nodes[holder].kill9();
    let ran_after_kill = |nodes: &[Server]| {
        ticks(&all(nodes))
            .into_iter()
            .filter(|&(t, node)| t > killed_at && node != holder)
            .count()
    };
    wait_until("ten runs on another node after the kill", || {
        ran_after_kill(&nodes) >= 10
    });
    let after = ticks(&all(&nodes));
    let new_holders: Vec<usize> = after
        .iter()
        .filter(|&&(t, node)| t > killed_at && node != holder)
        .map(|&(_, node)| node)
        .collect();
    assert!(
        new_holders.iter().all(|&node| node == new_holders[0]),
        "one node took over: {after:?}"
    );
    // The longest silence: the lease time at most (the holder may have
    // renewed just before it died), one period to the next due time.
    assert_once_per_period(&after, LEASE_MS + PERIOD_MS + SLACK_MS);
    let longest = after.windows(2).map(|p| p[1].0 - p[0].0).max().unwrap();
    eprintln!("longest gap across the takeover: {longest} ms (lease {LEASE_MS} ms)");
    only_node_with(&[&nodes[0], &nodes[1], &nodes[2]], "did not renew it for");
}

#[test]
fn a_holder_cut_off_from_nats_stops_acting_within_half_a_lease() {
    let mut nats = Nats::start();
    let projects = projects();
    let nodes = [
        node(&projects, &nats, "a", &[]),
        node(&projects, &nats, "b", &[]),
    ];
    wait_until("three timer runs", || ticks(&all(&nodes)).len() >= 3);

    // NATS goes away: nobody can renew or take over. The holder stops
    // running the timer half a lease after its last good renewal at the
    // latest, before any other node could have taken over (three fifths).
    let lost_at = now_ms();
    nats.kill();
    wait_until("the holder notices its lease lapsed", || {
        nodes
            .iter()
            .any(|n| n.log().contains("lease lapsed (NATS unreachable?)"))
    });
    let last_before = ticks(&all(&nodes)).last().unwrap().0;
    assert!(
        last_before <= lost_at + LEASE_MS / 2 + PERIOD_MS + SLACK_MS,
        "the timer ran {} ms after NATS went away (lease {LEASE_MS} ms)",
        last_before - lost_at
    );
    let stopped_for = Instant::now();
    // Two lease times without NATS: nothing runs anywhere.
    wait_until("two lease times pass", || {
        stopped_for.elapsed() >= Duration::from_millis(2 * LEASE_MS)
    });
    let during: Vec<(u64, usize)> = ticks(&all(&nodes))
        .into_iter()
        .filter(|&(t, _)| t > last_before)
        .collect();
    assert!(during.is_empty(), "ran without a lease: {during:?}");

    // NATS is back: one node holds the lease again and the timer resumes,
    // once per period.
    let back_at = now_ms();
    nats.start_again();
    wait_until("five runs after NATS came back", || {
        ticks(&all(&nodes))
            .iter()
            .filter(|&&(t, _)| t > back_at)
            .count()
            >= 5
    });
    let after: Vec<(u64, usize)> = ticks(&all(&nodes))
        .into_iter()
        .filter(|&(t, _)| t > back_at)
        .collect();
    assert_once_per_period(&after, PERIOD_MS + SLACK_MS);
}

#[test]
fn project_startup_runs_once_per_cluster_start() {
    let nats = Nats::start();
    let projects = projects();
    let mut first = [
        node(&projects, &nats, "a", &[]),
        node(&projects, &nats, "b", &[]),
        node(&projects, &nats, "c", &[]),
    ];
    // projectStartup runs before a node listens: by now every node has
    // decided.
    let startups: usize = first.iter().map(|n| marks(&n.log(), "STARTUP").len()).sum();
    assert_eq!(startups, 1, "once for the cluster's start, not per node");
    assert_eq!(
        marks(&first[0].log(), "STARTUP").len(),
        1,
        "the first node up"
    );

    // A clean stop hands the lease over at once, without a second start.
    first[0].signal_and_wait("TERM");
    first[0].wait_for_log("lease released for another node to take");
    wait_until("b or c takes the released lease", || {
        first[1..]
            .iter()
            .any(|n| n.log().contains("released by a clean stop"))
    });
    first[1].signal_and_wait("TERM");
    first[2].signal_and_wait("TERM");
    first[2].wait_for_log("lease deleted: the last node stops");
    let startups: usize = first.iter().map(|n| marks(&n.log(), "STARTUP").len()).sum();
    assert_eq!(startups, 1, "no node that took over ran it again");

    // The whole cluster starts again: projectStartup runs again, once.
    let second = [
        node(&projects, &nats, "b", &[]),
        node(&projects, &nats, "c", &[]),
    ];
    let startups: usize = second
        .iter()
        .map(|n| marks(&n.log(), "STARTUP").len())
        .sum();
    assert_eq!(startups, 1, "once for the second start");
}

#[test]
fn a_reload_runs_project_startup_on_the_lease_holder_only() {
    let nats = Nats::start();
    let projects = projects();
    let (nodes, holder, other) = two_nodes(&projects, &nats, &[]);
    assert_eq!(only_node_with(&[&nodes[0], &nodes[1]], "STARTUP@"), holder);
    // Every node serves the same files (here: the same folder) and reloads
    // them; projectStartup runs again once, on the holder.
    for node in &nodes {
        node.wait_for_log("for changes");
    }
    let script = projects.join("once/events/once.rhai");
    std::fs::write(&script, format!("{SCRIPT}\n// changed\n")).unwrap();
    nodes[other]
        .wait_for_log("projectStartup runs on the node holding the project's lease, not here");
    wait_until("projectStartup after the reload", || {
        marks(&nodes[holder].log(), "STARTUP").len() == 2
    });
    assert!(nodes[other].log().contains("project reloaded"));
    assert_eq!(marks(&nodes[other].log(), "STARTUP").len(), 0);
}

#[tokio::test]
async fn point_change_runs_once_per_change_across_two_nodes() {
    let nats = Nats::start();
    let broker = Broker::start();
    let projects = projects();
    let url = broker.url();
    let env = [("LEASE_TEST_MQTT", url.as_str())];
    let (nodes, holder, other) = two_nodes(&projects, &nats, &env);
    let clients = [nodes[0].client("once").await, nodes[1].client("once").await];

    // A device's changes reach both nodes (each holds the connection), and
    // pointChange runs once per change, on the holder.
    let mut device = broker.client(None).await;
    // A retained first value: once both nodes show it, both subscribed.
    device.publish("lease/hall/temp", "0.5", true).await;
    for client in &clients {
        temp_reaches(client, "0.5").await;
    }
    for value in 1..=5 {
        device
            .publish("lease/hall/temp", &format!("{value}.5"), false)
            .await;
    }
    nodes[holder].wait_for_log("CHANGE hall.temp=5.5#");
    for client in &clients {
        temp_reaches(client, "5.5").await;
    }
    let changes = |log: &str| {
        (1..=5)
            .map(|v| count(log, &format!("CHANGE hall.temp={v}.5#")))
            .collect::<Vec<_>>()
    };
    assert_eq!(changes(&nodes[holder].log()), [1, 1, 1, 1, 1]);
    assert_eq!(changes(&nodes[other].log()), [0, 0, 0, 0, 0]);
    assert_eq!(count(&nodes[other].log(), "CHANGE hall.temp"), 0);
    // Each node kept its one connection: their client ids differ (the
    // node's name is in it), so the broker never dropped one for the other.
    for node in &nodes {
        assert_eq!(count(&node.log(), "connected to the MQTT broker"), 1);
        assert_eq!(count(&node.log(), "lost the MQTT broker"), 0);
    }

    // A memory point changes on the node where it was written: that node
    // runs its pointChange, once, holder or not.
    assert_eq!(
        toast_of(&clients[other].command("mode", "eco").await),
        "true"
    );
    nodes[other].wait_for_log("CHANGE hall.mode=eco#");
    assert_eq!(count(&nodes[other].log(), "CHANGE hall.mode=eco#"), 1);
    assert_eq!(count(&nodes[holder].log(), "CHANGE hall.mode"), 0);
}

#[tokio::test]
async fn idle_sessions_end_once_on_the_lease_holder() {
    let nats = Nats::start();
    let projects = projects();
    let (nodes, holder, other) = two_nodes(&projects, &nats, &[]);

    // Two sessions on the node that does not hold the lease: one left
    // alone, one used every 300 ms (HTTP, so no socket keeps it alive).
    let idle = nodes[other].client("once").await;
    let busy = nodes[other].client("once").await;
    let ended = format!("SHUTDOWN {} IdleTimeout#", idle.session);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes[holder].log().contains(&ended) {
        assert!(Instant::now() < deadline, "the idle session never ended");
        assert_eq!(toast_of(&busy.command("ping", "").await), "pong");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Idle past the 3 s timeout by the record that node b wrote: ended
    // once, by the holder, wherever it was last used.
    assert_eq!(count(&nodes[holder].log(), &ended), 1);
    assert_eq!(count(&nodes[other].log(), "SHUTDOWN"), 0);
    // Gone for every node, once the holder has finished ending it.
    nodes[holder].wait_for_log(&format!(
        "session ended project=once session=\"{}\" reason=\"IdleTimeout\"",
        &idle.session[..8]
    ));
    for node in &nodes {
        let status = post_ping(node, &idle).await;
        assert_eq!(status, 401, "the ended session is refused");
    }
    // The session in use is kept, for a while more.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(toast_of(&busy.command("ping", "").await), "pong");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let busy_ended = format!("SHUTDOWN {}", busy.session);
    assert!(!nodes[holder].log().contains(&busy_ended));
    assert!(!nodes[other].log().contains(&busy_ended));
}

/// Waits until the node `client` talks to has `hall.temp` = `value`.
async fn temp_reaches(client: &Client, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while toast_of(&client.command("temp", "").await) != value {
        assert!(
            Instant::now() < deadline,
            "a node never saw the value {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of a `ping` sent with `client`'s cookie to `node`.
async fn post_ping(node: &Server, client: &Client) -> u16 {
    reqwest::Client::new()
        .post(node.url("/once/api/command"))
        .header("cookie", format!("sb_session={}", client.session))
        .header("content-type", "application/json")
        .body(r#"{"type":"command","seq":1,"name":"ping","param":""}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
