//! Cluster mode (issue 17, first slice): Switchboard nodes sharing
//! sessions and `!` variables through a real `nats-server -js`, and
//! `/healthz` with and without it. See docs/cluster.md.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::nats::Nats;
use common::{Client, Server, toast_of};
use serde_json::{Value, json};

/// A node of a cluster on `nats`, named `node`.
fn node(nats: &Nats, node: &str) -> Server {
    Server::start_with(
        &common::test_projects(),
        &["--cluster", &nats.url, "--node", node],
    )
}

/// The same session (cookie) as `client`, talking to another node.
fn on(server: &Server, client: &Client, project: &str) -> Client {
    Client {
        http: client.http.clone(),
        base: server.url(&format!("/{project}")),
        ws_base: server.ws_url(&format!("/{project}")),
        session: client.session.clone(),
        set_cookie: client.set_cookie.clone(),
    }
}

async fn healthz(server: &Server) -> (u16, Value) {
    let response = reqwest::get(server.url("/healthz")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn setpoint(value: &str) -> Value {
    json!({"type":"command","seq":1,"object":"thermostat","name":"setpoint","param":value})
}

/// The rollback value a refused setpoint gets.
async fn rollback_after_refusal(client: &Client) -> Value {
    let (status, reply) = client.post(&setpoint("99")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "error", "{reply}");
    reply["actions"][1]["value"].clone()
}

#[tokio::test]
async fn a_session_created_on_one_node_continues_on_another() {
    let nats = Nats::start();
    let (a, b) = (node(&nats, "a"), node(&nats, "b"));

    // Session properties (sessionSet) made on A are there on B.
    let on_a = a.client("events").await;
    assert_eq!(on_a.command("set", "kitchen").await["status"], "ok");
    let on_b = on(&b, &on_a, "events");
    assert_eq!(
        toast_of(&on_b.command("get", "").await),
        "room=kitchen",
        "B knows the session A created, with its properties"
    );
    b.wait_for_log("session resumed from the shared store");

    // Rollback memory: the last valid value set on A is B's rollback, and
    // the one set on B is A's (A's own copy is stale by then: re-read).
    let on_a = a.client("testbed").await;
    assert_eq!(on_a.post(&setpoint("21")).await.1["status"], "ok");
    let on_b = on(&b, &on_a, "testbed");
    assert_eq!(rollback_after_refusal(&on_b).await, "21");
    assert_eq!(on_b.post(&setpoint("25")).await.1["status"], "ok");
    assert_eq!(rollback_after_refusal(&on_a).await, "25");

    // A session nobody created is refused by every node, as before.
    let status = reqwest::Client::new()
        .post(b.url("/testbed/api/command"))
        .header("cookie", "sb_session=0123456789abcdef0123456789abcdef")
        .header("content-type", "application/json")
        .body(setpoint("20").to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "an unknown session id is refused");
}

#[tokio::test]
async fn a_socket_on_another_node_resumes_the_session() {
    let nats = Nats::start();
    let (a, b) = (node(&nats, "a"), node(&nats, "b"));
    let on_a = a.client("events").await;
    let mut socket = on_a.socket_tab("t", "home").await;
    let reply = common::command(&mut socket, 1, "set", "hall").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    drop(socket);
    // The panel's socket lands on B (A restarted, or a load balancer).
    let mut socket = on(&b, &on_a, "events").socket_tab("t", "home").await;
    let reply = common::command(&mut socket, 2, "get", "").await;
    assert_eq!(toast_of(&reply), "room=hall", "{reply}");
}

#[tokio::test]
async fn a_persisted_variable_set_on_one_node_is_read_on_another() {
    let nats = Nats::start();
    let (a, b) = (node(&nats, "a"), node(&nats, "b"));
    let on_a = a.client("reliable").await;
    let on_b = b.client("reliable").await;
    assert_eq!(toast_of(&on_a.command("count", "").await), "count=1");
    assert_eq!(toast_of(&on_a.command("count", "").await), "count=2");
    assert_eq!(toast_of(&on_b.command("peek", "").await), "count=2");
    assert_eq!(toast_of(&on_b.command("count", "").await), "count=3");
    assert_eq!(toast_of(&on_a.command("peek", "").await), "count=3");
}

#[tokio::test]
async fn healthz_tells_the_node_and_its_store() {
    let alone = Server::start(&common::test_projects());
    let (status, body) = healthz(&alone).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["store"], "embedded");
    assert_eq!(body["nats"], Value::Null);

    let nats = Nats::start();
    let (a, b) = (node(&nats, "a"), node(&nats, "b"));
    for (server, name) in [(&a, "a"), (&b, "b")] {
        let (status, body) = healthz(server).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"ok": true, "node": name, "store": "nats", "nats": "connected", "stopping": false})
        );
    }

    // NATS goes away: the node says it cannot serve, without hanging.
    let mut nats = nats;
    let on_a = a.client("events").await;
    assert_eq!(on_a.command("set", "attic").await["status"], "ok");
    nats.kill();
    wait_for_health(&a, 503).await;
    a.wait_for_log("lost the NATS connection");
    // Meanwhile the node serves the sessions it holds from memory.
    assert_eq!(toast_of(&on_a.command("get", "").await), "room=attic");

    // It comes back (same port, same store): healthy again, nothing lost.
    nats.start_again();
    wait_for_health(&a, 200).await;
    wait_for_health(&b, 200).await;
    let on_b = on(&b, &on_a, "events");
    assert_eq!(toast_of(&on_b.command("get", "").await), "room=attic");
}

/// Polls `/healthz` until it answers `status` (the node notices a lost or
/// restored connection by itself, on its own schedule).
async fn wait_for_health(server: &Server, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (now, body) = healthz(server).await;
        if now == status {
            assert_eq!(body["ok"], status == 200, "{body}");
            let nats = if status == 200 {
                "connected"
            } else {
                "disconnected"
            };
            assert_eq!(body["nats"], nats, "{body}");
            return;
        }
        assert!(Instant::now() < deadline, "never {status}: {now} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_node_whose_nats_does_not_answer_refuses_to_start() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = common::temp_dir("nowhere");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--projects")
        .arg(common::test_projects())
        .args(["--bind", "127.0.0.1:0", "--cluster"])
        .arg(format!("nats://127.0.0.1:{port}"))
        .arg("--database")
        .arg(data.join("switchboard.redb"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node neither started nor gave up");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "switchboard: cannot reach NATS at nats://127.0.0.1:{port}"
        )),
        "stderr: {stderr}"
    );
    assert!(!stdout.contains("listening"), "it never served: {stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(data);
}
