//! Fault tests for exactly-once delivery: dropped sockets, repeats, and a
//! server killed with SIGKILL under a stream of form submissions.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{Client, Server, Socket, receive, send, toast_of};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

fn counted(id: &str, seq: u64, name: &str) -> Value {
    json!({"type":"command","seq":seq,"id":id,"name":name,"param":""})
}

/// Replies that arrive within `wait`, beyond the ones already read.
async fn extra_replies(socket: &mut Socket, wait: Duration) -> Vec<Value> {
    let mut extra = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout(wait, socket.next()).await {
        if let Ok(value) = serde_json::from_str::<Value>(message.to_text().unwrap_or_default())
            && value.get("type").is_none()
        {
            extra.push(value);
        }
    }
    extra
}

/// Lets the handler waiting in `slowCount` finish.
async fn open_gate(client: &common::Client) {
    let (_, reply) = client
        .post(&json!({"type":"command","seq":99,"id":"gate","name":"openGate"}))
        .await;
    assert_eq!(toast_of(&reply), "gate open", "{reply}");
}

#[tokio::test]
async fn a_command_resent_after_a_dropped_socket_runs_once() {
    let server = Server::start(&common::test_projects());
    let client = server.client("reliable").await;
    let mut socket = client.socket_tab("t", "home").await;
    // Sent, then the connection dies while the handler waits for the gate.
    send(&mut socket, &counted("t-1", 1, "slowCount")).await;
    server.wait_for_log("GATE waiting");
    drop(socket);
    open_gate(&client).await;
    server.wait_for_log(r#"name="slowCount" param="" [OK]"#);
    let mut socket = client.socket_tab("t", "home").await;
    send(&mut socket, &counted("t-1", 1, "slowCount")).await;
    let reply = receive(&mut socket).await;
    assert_eq!(toast_of(&reply), "count=1", "the answer of the first run");
    assert_eq!(reply["seq"], 1);
    server.wait_for_log(r#"id="t-1" [REPEAT]"#);
    assert!(
        extra_replies(&mut socket, Duration::from_millis(300))
            .await
            .is_empty(),
        "answered once"
    );
    send(
        &mut socket,
        &json!({"type":"command","seq":2,"name":"peek"}),
    )
    .await;
    assert_eq!(
        toast_of(&receive(&mut socket).await),
        "count=1",
        "the handler ran once"
    );
}

#[tokio::test]
async fn a_repeat_that_arrives_while_the_first_run_is_going_waits_for_it() {
    let server = Server::start(&common::test_projects());
    let client = server.client("reliable").await;
    let mut socket = client.socket_tab("t", "home").await;
    send(&mut socket, &counted("t-7", 1, "slowCount")).await;
    server.wait_for_log("GATE waiting");
    drop(socket);
    // The handler is still running (held at the gate) when the client comes back.
    let mut socket = client.socket_tab("t", "home").await;
    send(&mut socket, &counted("t-7", 1, "slowCount")).await;
    open_gate(&client).await;
    assert_eq!(toast_of(&receive(&mut socket).await), "count=1");
    send(
        &mut socket,
        &json!({"type":"command","seq":2,"name":"peek"}),
    )
    .await;
    assert_eq!(toast_of(&receive(&mut socket).await), "count=1");
    // Over HTTP too.
    let (_, reply) = client.post(&counted("t-7", 3, "slowCount")).await;
    assert_eq!(toast_of(&reply), "count=1");
    assert_eq!(reply["seq"], 3, "a repeat is answered with its own seq");
}

/// An HTTP client that gives up while its command runs (the request is
/// dropped with its connection): the re-send gets the one run's answer,
/// neither a second run nor a wait for a claim nobody releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_http_client_gave_up_is_answered_when_resent() {
    let server = Server::start(&common::test_projects());
    let client = server.client("reliable").await;
    let request = client
        .http
        .post(format!("{}/api/command", client.base))
        .header("content-type", "application/json")
        .body(counted("h-1", 1, "slowCount").to_string())
        .send();
    let impatient = tokio::spawn(request);
    server.wait_for_log("GATE waiting");
    impatient.abort();
    assert!(impatient.await.is_err(), "the first request was dropped");
    open_gate(&client).await;
    let resent = tokio::time::timeout(
        Duration::from_secs(10),
        client.post(&counted("h-1", 2, "slowCount")),
    )
    .await
    .expect("the re-send is answered");
    assert_eq!(toast_of(&resent.1), "count=1", "{}", resent.1);
    let (_, peek) = client
        .post(&json!({"type":"command","seq":3,"name":"peek"}))
        .await;
    assert_eq!(toast_of(&peek), "count=1", "the handler ran once");
}

#[tokio::test]
async fn answered_commands_stay_answered_after_a_crash() {
    let mut server = Server::start(&common::test_projects());
    let mut client = server.client("reliable").await;
    assert_eq!(
        toast_of(&client.post(&counted("c-1", 1, "count")).await.1),
        "count=1"
    );
    server.kill9();
    let restarted = server.restart();
    client.base = restarted.url("/reliable");
    assert_eq!(
        toast_of(&client.post(&counted("c-1", 1, "count")).await.1),
        "count=1"
    );
    assert_eq!(
        toast_of(&client.post(&counted("c-2", 2, "count")).await.1),
        "count=2"
    );
}

fn submission(id: &str, seq: u64, retry: bool, email: &str) -> Value {
    json!({"type":"form","seq":seq,"id":id,"name":"visit","data":{"id":id,"email":email},
           "context":{"form":"visit"},"session_context":{"device":"test"},"retry":retry})
}

#[tokio::test]
async fn a_repeated_submission_gets_the_stored_result() {
    let server = Server::start(&common::test_projects());
    let client = server.client("reliable").await;
    let mut socket = client.socket_tab("t", "home").await;
    send(&mut socket, &submission("s-1", 1, false, "a@b.c")).await;
    let first = receive(&mut socket).await;
    assert_eq!(first["status"], "ok");
    assert_eq!(first["actions"][0]["level"], "success");
    let message = toast_of(&first);
    assert!(
        message.starts_with("stored s-1 (retry=false, user="),
        "{message}"
    );
    send(&mut socket, &submission("s-1", 2, true, "a@b.c")).await;
    let again = receive(&mut socket).await;
    assert_eq!(again["seq"], 2);
    assert_eq!(
        toast_of(&again),
        message,
        "the stored result, not a new run"
    );
    // The seed's failure vocabulary becomes field errors and an error toast.
    send(&mut socket, &submission("s-2", 3, false, "bad")).await;
    let failed = receive(&mut socket).await;
    assert_eq!(failed["status"], "error");
    assert_eq!(
        failed["actions"][0],
        json!({"type":"field_error","field":"email","message":"Enter a real e-mail","display":"tooltip","title":"Invalid"})
    );
    assert_eq!(failed["actions"][1]["level"], "error");
    assert_eq!(failed["actions"][1]["title"], "Check the form");
    send(
        &mut socket,
        &json!({"type":"command","seq":4,"name":"audit"}),
    )
    .await;
    assert_eq!(
        toast_of(&receive(&mut socket).await),
        "submissions=2 distinct=2 repeated=0"
    );
}

/// One client of the crash test: sends its submissions one after the
/// other, and after any connection failure reconnects to the current
/// server and re-sends every submission not yet acknowledged.
async fn submit_all(
    mut client: Client,
    name: String,
    count: usize,
    servers: watch::Receiver<String>,
    acked: Arc<Mutex<BTreeSet<String>>>,
) -> Client {
    let ids: Vec<String> = (0..count).map(|n| format!("{name}-{n}")).collect();
    let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
    let mut seq = 0;
    let mut connections = 0;
    'connect: loop {
        let addr = servers.borrow().clone();
        client.ws_base = format!("ws://{addr}/reliable");
        client.base = format!("http://{addr}/reliable");
        let Ok(mut socket) =
            tokio::time::timeout(Duration::from_secs(2), client.try_socket_tab(&name, "home"))
                .await
                .unwrap_or(Err(()))
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        connections += 1;
        // After a reconnect, deliver the last acknowledged submission again,
        // as a client whose acknowledgement was lost would: it must be
        // answered from the record, not run again.
        let last_acked = ids
            .iter()
            .rev()
            .find(|id| acked.try_lock().is_ok_and(|a| a.contains(*id)))
            .cloned();
        if connections > 1
            && let Some(id) = last_acked
        {
            seq += 1;
            send(&mut socket, &submission(&id, seq, true, "a@b.c")).await;
            assert_eq!(receive(&mut socket).await["status"], "ok", "repeat of {id}");
        }
        for id in &ids {
            if acked.lock().await.contains(id) {
                continue;
            }
            seq += 1;
            let tries = attempts.entry(id.clone()).or_default();
            *tries += 1;
            let frame = submission(id, seq, *tries > 1, "a@b.c");
            if futures_util::SinkExt::send(
                &mut socket,
                tokio_tungstenite::tungstenite::Message::text(frame.to_string()),
            )
            .await
            .is_err()
            {
                continue 'connect;
            }
            let reply = loop {
                match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
                    Ok(Some(Ok(message))) if message.is_text() => {
                        let value: Value =
                            serde_json::from_str(message.to_text().unwrap()).unwrap();
                        if value.get("type").is_none() {
                            break Some(value);
                        }
                    }
                    Ok(Some(Ok(_))) => continue,
                    _ => break None,
                }
            };
            match reply {
                Some(reply) if reply["status"] == "ok" => {
                    acked.lock().await.insert(id.clone());
                }
                Some(reply) => panic!("{id} got {reply}"),
                None => continue 'connect,
            }
        }
        return client;
    }
}

#[tokio::test]
async fn sigkill_under_a_stream_of_submissions_loses_nothing_and_runs_nothing_twice() {
    const CLIENTS: usize = 4;
    const EACH: usize = 40;
    let mut server = Server::start(&common::test_projects());
    let (publish, servers) = watch::channel(server.addr.clone());
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let client = server.client("reliable").await;
        tasks.push(tokio::spawn(submit_all(
            client,
            format!("c{n}"),
            EACH,
            servers.clone(),
            acked.clone(),
        )));
    }
    // Kill while the clients are mid-stream.
    while acked.lock().await.len() < CLIENTS * EACH / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    let acked_before_kill = acked.lock().await.clone();
    let restarted = server.restart();
    publish.send(restarted.addr.clone()).unwrap();
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("clients finish")
                .unwrap(),
        );
    }
    let acked = acked.lock().await.clone();
    assert_eq!(
        acked.len(),
        CLIENTS * EACH,
        "every submission was acknowledged in the end"
    );
    assert!(acked_before_kill.is_subset(&acked));
    let audit = toast_of(&clients[0].command("audit", "").await).to_string();
    assert_eq!(
        audit,
        format!("submissions={0} distinct={0} repeated=0", CLIENTS * EACH),
        "handler runs must equal distinct ids (acknowledged before the kill: {})",
        acked_before_kill.len()
    );
    restarted.wait_for_log("[REPEAT]");
}

/// Issue 13: a run that throws undoes the `!` variables it set before
/// throwing, in memory and in the store, so a user who taps again does not
/// apply half an action twice.
#[tokio::test]
async fn a_failed_run_rolls_back_its_persistent_variables() {
    let mut server = Server::start(&common::test_projects());
    let mut client = server.client("reliable").await;
    assert_eq!(client.command("lightOn", "").await["status"], "ok");
    let failed = client.command("halfThenThrow", "").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    server.wait_for_log("the second half failed");
    assert_eq!(
        toast_of(&client.command("light", "").await),
        "light=on dimmed="
    );
    server.kill9();
    let restarted = server.restart();
    client.base = restarted.url("/reliable");
    assert_eq!(
        toast_of(&client.command("light", "").await),
        "light=on dimmed=",
        "nothing of the failed run reached the store"
    );
}

/// Issue 13: `varUpdate` is atomic: concurrent read-modify-writes of one
/// variable from many sessions lose none.
#[tokio::test]
async fn var_update_loses_no_concurrent_increment() {
    const CLIENTS: usize = 4;
    const EACH: usize = 10;
    let server = Server::start(&common::test_projects());
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = server.client("reliable").await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                assert_eq!(client.command("bumpAtomic", "").await["status"], "ok");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let client = server.client("reliable").await;
    assert_eq!(
        toast_of(&client.command("peek", "").await),
        format!("count={}", CLIENTS * EACH)
    );
}

/// Issue 13: a submission whose handler fails is not recorded, and its
/// effects are undone: the browser's retry (`retry = true`) runs it again,
/// once, also across a SIGKILL of the server in between.
#[tokio::test]
async fn a_failed_submission_runs_again_on_retry_even_after_a_crash() {
    let mut server = Server::start(&common::test_projects());
    let mut client = server.client("reliable").await;
    let (_, failed) = client.post(&submission("f-1", 1, false, "flaky")).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    server.wait_for_log("the first delivery fails");
    server.kill9();
    let restarted = server.restart();
    client.base = restarted.url("/reliable");
    let (_, retried) = client.post(&submission("f-1", 2, true, "flaky")).await;
    assert_eq!(retried["status"], "ok", "{retried}");
    assert!(
        toast_of(&retried).starts_with("stored f-1 (retry=true"),
        "{retried}"
    );
    // Delivered again (its acknowledgement lost): the stored result.
    let (_, again) = client.post(&submission("f-1", 3, true, "flaky")).await;
    assert_eq!(toast_of(&again), toast_of(&retried));
    assert_eq!(
        toast_of(&client.command("audit", "").await),
        "submissions=1 distinct=1 repeated=0",
        "the failed run left nothing behind"
    );
}

/// The same without a crash: a throwing handler, then the retry.
#[tokio::test]
async fn a_failed_submission_runs_again_on_retry() {
    let server = Server::start(&common::test_projects());
    let client = server.client("reliable").await;
    let (_, failed) = client.post(&submission("f-2", 1, false, "flaky")).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let (_, retried) = client.post(&submission("f-2", 2, true, "flaky")).await;
    assert_eq!(retried["status"], "ok", "{retried}");
    assert_eq!(
        toast_of(&client.command("audit", "").await),
        "submissions=1 distinct=1 repeated=0"
    );
}

/// One client of the command crash test: sends `bumpAtomic` commands (an
/// atomic increment of `count!`, so concurrent runs never share a value) with ids
/// over a WebSocket one after the other, and after any connection failure
/// reconnects to the current server, re-sends the last acknowledged one
/// (it must get the same answer) and every one not yet acknowledged.
/// Returns each id's answer.
async fn count_all(
    mut client: Client,
    name: String,
    count: usize,
    servers: watch::Receiver<String>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
) -> BTreeMap<String, String> {
    let ids: Vec<String> = (0..count).map(|n| format!("{name}-{n}")).collect();
    let mut answers: BTreeMap<String, String> = BTreeMap::new();
    let mut seq = 0;
    'connect: loop {
        let addr = servers.borrow().clone();
        client.ws_base = format!("ws://{addr}/reliable");
        let Ok(mut socket) =
            tokio::time::timeout(Duration::from_secs(2), client.try_socket_tab(&name, "home"))
                .await
                .unwrap_or(Err(()))
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let last = ids
            .iter()
            .rev()
            .find(|id| answers.contains_key(*id))
            .cloned();
        let resend = last
            .into_iter()
            .chain(ids.iter().filter(|id| !answers.contains_key(*id)).cloned());
        for id in resend.collect::<Vec<_>>() {
            seq += 1;
            let frame = counted(&id, seq, "bumpAtomic").to_string();
            let sent = futures_util::SinkExt::send(
                &mut socket,
                tokio_tungstenite::tungstenite::Message::text(frame),
            )
            .await;
            if sent.is_err() {
                continue 'connect;
            }
            let reply = loop {
                match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
                    Ok(Some(Ok(message))) if message.is_text() => {
                        let value: Value =
                            serde_json::from_str(message.to_text().unwrap()).unwrap();
                        if value.get("type").is_none() {
                            break Some(value);
                        }
                    }
                    Ok(Some(Ok(_))) => continue,
                    _ => break None,
                }
            };
            let Some(reply) = reply else {
                continue 'connect;
            };
            let toast = toast_of(&reply).to_string();
            if let Some(before) = answers.get(&id) {
                assert_eq!(&toast, before, "a repeat of {id} after a crash");
            }
            answers.insert(id.clone(), toast.clone());
            acked.lock().await.insert(id, toast);
        }
        return answers;
    }
}

/// The journal (docs/reliability.md): commands with an `id` are durable in
/// the store's journal before their reply and reach the database file only
/// later, so a SIGKILL leaves acknowledged answers and `!` variables in the
/// journal alone. Killed twice (the second time after a restart that
/// replayed the journal), every command still ran exactly once: the
/// answers are exactly 1..=N, and a repeat gets its first answer.
#[tokio::test]
async fn sigkill_twice_under_a_stream_of_commands_with_ids_loses_nothing_and_runs_nothing_twice() {
    const CLIENTS: usize = 4;
    const EACH: usize = 60;
    // Every server of the test is kept until the end: dropping one removes
    // the data folder they share.
    let mut held = vec![Server::start(&common::test_projects())];
    let server = &held[0];
    let (publish, servers) = watch::channel(server.addr.clone());
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let client = server.client("reliable").await;
        tasks.push(tokio::spawn(count_all(
            client,
            format!("k{n}"),
            EACH,
            servers.clone(),
            acked.clone(),
        )));
    }
    let mut acked_before_kills = Vec::new();
    for third in 1..=2 {
        while acked.lock().await.len() < CLIENTS * EACH * third / 3 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let server = held.last_mut().unwrap();
        server.kill9();
        acked_before_kills.push(acked.lock().await.clone());
        let restarted = server.restart();
        publish.send(restarted.addr.clone()).unwrap();
        held.push(restarted);
    }
    let mut answers = BTreeMap::new();
    for task in tasks {
        let of_client = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("clients finish")
            .unwrap();
        answers.extend(of_client);
    }
    for before in &acked_before_kills {
        for (id, toast) in before {
            assert_eq!(answers.get(id), Some(toast), "{id} kept its answer");
        }
    }
    let expected: BTreeSet<String> = (1..=CLIENTS * EACH).map(|n| format!("count={n}")).collect();
    let got: BTreeSet<String> = answers.values().cloned().collect();
    assert_eq!(answers.len(), CLIENTS * EACH);
    assert_eq!(got, expected, "every command ran exactly once");
    let client = held.last().unwrap().client("reliable").await;
    assert_eq!(
        toast_of(&client.command("peek", "").await),
        format!("count={}", CLIENTS * EACH)
    );
}
