//! Session events over real WebSockets: lifecycle, push, messages,
//! keystrokes, device events, limits, restarts and hot reload.

mod common;

use std::time::Duration;

use common::{Client, Server, Socket, command, receive, receive_any, receive_push, send, toast_of};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn events_server() -> Server {
    Server::start(&common::test_projects())
}

/// The message of the next pushed toast.
async fn pushed_toast(socket: &mut Socket) -> String {
    let push = receive_push(socket, "actions").await;
    toast_of(&push).to_string()
}

/// The message of the next toast pushed by `event`'s handler; pushes of
/// other events (a late `sessionStartup` on a busy machine) are skipped.
async fn pushed_toast_from(socket: &mut Socket, event: &str) -> String {
    loop {
        let push = receive_push(socket, "actions").await;
        if push["event"] == event {
            return toast_of(&push).to_string();
        }
    }
}

async fn http_toast(client: &Client, name: &str, param: &str) -> String {
    toast_of(&client.command(name, param).await).to_string()
}

#[tokio::test]
async fn startup_and_page_startup_for_new_tabs_only() {
    let server = events_server();
    let client = server.client("events").await;
    server.wait_for_log(&format!("EVENT sessionStartup {}", client.session));
    let mut first = client.socket_tab("t1", "home").await;
    assert_eq!(
        pushed_toast(&mut first).await,
        "welcome",
        "the startup answer waited for the browser"
    );
    // Issue 13: a page object with the seed's id and path.
    server.wait_for_log(&format!(
        "EVENT pageStartup {} home id=t1 path=/events/home pageId=t1 named=true",
        client.session
    ));
    // Navigating inside the tab and reconnecting it (a reload) are not new tabs.
    send(
        &mut first,
        &json!({"type":"page_shown","seq":1,"page":"other"}),
    )
    .await;
    assert_eq!(receive(&mut first).await["status"], "ok");
    drop(first);
    let mut again = client.socket_tab("t1", "other").await;
    assert_eq!(command(&mut again, 2, "get", "").await["status"], "ok");
    // A second tab is.
    let _second = client.socket_tab("t2", "other").await;
    let log = server.wait_for_log(&format!("EVENT pageStartup {} other", client.session));
    assert_eq!(
        log.matches(&format!("EVENT pageStartup {}", client.session))
            .count(),
        2,
        "{log}"
    );
}

#[tokio::test]
async fn idle_timeout_waits_while_a_browser_is_connected() {
    let server = events_server();
    let client = server.client("events").await;
    let socket = client.socket_tab("t1", "home").await;
    // The project's idle timeout is 2 s; connected for 3 s, the session lives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !server
            .log()
            .contains(&format!("EVENT sessionShutdown {}", client.session))
    );
    drop(socket);
    let log = server.wait_for_log(&format!(
        "EVENT sessionShutdown {} IdleTimeout",
        client.session
    ));
    let terminating = log
        .find(&format!(
            "EVENT sessionTerminating {} IdleTimeout",
            client.session
        ))
        .expect("terminating first");
    assert!(
        terminating
            < log
                .find(&format!("EVENT sessionShutdown {}", client.session))
                .unwrap()
    );
    server.wait_for_log(&format!(
        r#"session ended project=events session="{}""#,
        &client.session[..8]
    ));
    let (status, _) = client.post(&json!({"type":"command","name":"get"})).await;
    assert_eq!(status, 401, "the session is gone");
}

#[tokio::test]
async fn a_script_can_terminate_a_session() {
    let server = events_server();
    let client = server.client("events").await;
    let mut socket = client.socket_tab("t1", "home").await;
    send(
        &mut socket,
        &json!({"type":"command","seq":1,"name":"terminate"}),
    )
    .await;
    let ended = receive_push(&mut socket, "session_ended").await;
    assert_eq!(ended["reason"], "Terminated");
    server.wait_for_log(&format!(
        "EVENT sessionShutdown {} Terminated",
        client.session
    ));
    // The connection closes.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the socket was not closed");
}

#[tokio::test]
async fn limit_stops_reach_session_terminating_and_end_a_stuck_session() {
    let server = events_server();
    let client = server.client("events").await;
    let mut socket = client.socket_tab("t1", "home").await;
    assert_eq!(
        command(&mut socket, 1, "spin", "").await["status"],
        "failed"
    );
    server.wait_for_log(&format!(
        "EVENT sessionTerminating {} ElementCountExceeded",
        client.session
    ));
    // max_limit_stops = 2: the second stop in a row ends the session.
    assert_eq!(
        command(&mut socket, 2, "spin", "").await["status"],
        "failed"
    );
    server.wait_for_log(&format!(
        "EVENT sessionTerminating {} TerminationTimeout",
        client.session
    ));
    server.wait_for_log(&format!(
        "EVENT sessionShutdown {} Terminated",
        client.session
    ));
}

#[tokio::test]
async fn the_wall_clock_limit_reports_element_timeout() {
    let server = events_server();
    let client = server.client("testbed").await;
    assert_eq!(client.command("spin", "").await["status"], "failed");
    server.wait_for_log(&format!(
        "EVENT sessionTerminating {} ElementTimeout",
        client.session
    ));
}

#[tokio::test]
async fn push_priority_is_newest_own_or_global_then_scope() {
    let server = events_server();
    let plain = server.client("events").await;
    let subscribed = server.client("events").await;
    let mut plain_socket = plain.socket_tab("a", "home").await;
    let mut scoped_socket = subscribed.socket_tab("b", "home").await;
    subscribed.command("subscribe", "lobby").await;

    subscribed.command("uiScope", "scope-1").await;
    let ui = receive_push(&mut scoped_socket, "ui").await;
    assert_eq!(
        ui["set"],
        json!([{"id":"clock","attr":"text","value":"scope-1"}])
    );

    plain.command("uiSet", "global-1").await;
    assert_eq!(
        receive_push(&mut plain_socket, "ui").await["set"][0]["value"],
        "global-1"
    );
    assert_eq!(
        receive_push(&mut scoped_socket, "ui").await["set"][0]["value"],
        "global-1",
        "global beats scope"
    );

    plain.command("uiMine", "mine-1").await;
    assert_eq!(
        receive_push(&mut plain_socket, "ui").await["set"][0]["value"],
        "mine-1"
    );
    // Issue 13: a session's own value must not hide later project-wide
    // values for ever; the newer uiSet replaces it.
    plain.command("uiSet", "global-2").await;
    assert_eq!(
        receive_push(&mut plain_socket, "ui").await["set"][0]["value"],
        "global-2",
        "a later uiSet replaces the session's own value"
    );
    assert_eq!(
        receive_push(&mut scoped_socket, "ui").await["set"][0]["value"],
        "global-2"
    );
    plain.command("uiMine", "mine-2").await;
    assert_eq!(
        receive_push(&mut plain_socket, "ui").await["set"][0]["value"],
        "mine-2",
        "a later own value beats the global one"
    );

    // A new session sees current values as soon as it connects.
    let late = server.client("events").await;
    let mut late_socket = late.socket_tab("c", "home").await;
    assert_eq!(
        receive_push(&mut late_socket, "ui").await["set"],
        json!([{"id":"clock","attr":"text","value":"global-2"}])
    );
    late.command("uiItems", "").await;
    let items = receive_push(&mut late_socket, "ui").await;
    assert_eq!(
        items["set"][0],
        json!({"id":"list","attr":"items","value":["a","b"]})
    );
    // Unknown attributes are a script error, not a push.
    assert_eq!(late.command("uiBad", "").await["status"], "failed");
    server.wait_for_log("unknown UI attribute `onclick`");
}

#[tokio::test]
async fn send_actions_pushes_decoded_actions() {
    let server = events_server();
    let client = server.client("events").await;
    let mut socket = client.socket_tab("t", "home").await;
    client.command("push", "").await;
    let push = loop {
        let push = receive_push(&mut socket, "actions").await;
        if push["event"] == "sendActions" {
            break push;
        }
    };
    assert_eq!(push["actions"][0]["message"], "pushed");
    assert_eq!(push["actions"][1]["type"], "popup");
}

#[tokio::test]
async fn messages_reach_the_sessions_in_scope() {
    let server = events_server();
    let a = server.client("events").await;
    let b = server.client("events").await;
    let mut a_socket = a.socket_tab("a", "home").await;
    let mut b_socket = b.socket_tab("b", "home").await;
    assert_eq!(pushed_toast(&mut a_socket).await, "welcome");
    assert_eq!(pushed_toast(&mut b_socket).await, "welcome");
    let http = reqwest::Client::new();
    let post = |body: Value, token: &'static str| {
        http.post(server.url("/events/api/message"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let response = post(
        json!({"handler":"news","payload":{"text":"to all"},"scope":"project"}),
        "test-token",
    )
    .await
    .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["delivered"], 2);
    assert_eq!(pushed_toast(&mut a_socket).await, "news: to all");
    assert_eq!(pushed_toast(&mut b_socket).await, "news: to all");

    let scope = format!("session:{}", b.session);
    let response = post(
        json!({"handler":"news","payload":{"text":"to b"},"scope":scope}),
        "test-token",
    )
    .await
    .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["delivered"], 1);
    assert_eq!(pushed_toast(&mut b_socket).await, "news: to b");

    let response = post(
        json!({"handler":"news","payload":{"text":"x"},"scope":"user:nobody"}),
        "test-token",
    )
    .await
    .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["delivered"], 0);
    let response = post(
        json!({"handler":"news","payload":{"text":"x"},"scope":"planet:mars"}),
        "test-token",
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let response = post(json!({"handler":"news","payload":{}}), "wrong-token")
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // From a script: sendMessage returns the count.
    assert_eq!(http_toast(&a, "broadcast", "hi").await, "sent to 2");
    assert_eq!(pushed_toast(&mut b_socket).await, "news: hi");

    // Issue 13: the seed's scope letters. "S" is every session; "G" the
    // gateway's handler, run once for the project (like "once").
    assert_eq!(http_toast(&a, "seedBroadcast", "seed").await, "sent to 2");
    assert_eq!(pushed_toast(&mut b_socket).await, "news: seed");
    assert_eq!(http_toast(&a, "gatewayOnly", "g").await, "sent to 1");
}

#[tokio::test]
async fn keystrokes_single_key_and_regex_with_capture_groups() {
    let server = events_server();
    let client = server.client("events").await;
    let mut socket = client.socket_tab("t", "home").await;
    let config = receive_push(&mut socket, "config").await;
    assert_eq!(config["keystrokes"][1]["regex"], "([0-9]{6})([0-9]{6})@$");
    assert_eq!(config["keystrokes"][0]["prevent_default"], true);

    send(
        &mut socket,
        &json!({"type":"keystroke","seq":1,"matcher":"save","page":"home",
        "event":{"key":"s","code":"KeyS","ctrlKey":true}}),
    )
    .await;
    let reply = receive(&mut socket).await;
    assert_eq!(toast_of(&reply), "save on home: [] ctrl=true");
    server.wait_for_log(&format!(
        "EVENT keystroke {} home save id=t path=/events/home",
        client.session
    ));

    // A HID scanner typing 12 digits and `@`, after some noise.
    send(
        &mut socket,
        &json!({"type":"keystroke","seq":2,"matcher":"scanner",
        "event":{"key":"@"},"buffer":"xx123456789012@"}),
    )
    .await;
    let reply = receive(&mut socket).await;
    assert_eq!(
        toast_of(&reply),
        r#"scanner on home: ["123456789012@", "123456", "789012"] ctrl=false"#
    );

    send(
        &mut socket,
        &json!({"type":"keystroke","seq":3,"matcher":"scanner","buffer":"12345@"}),
    )
    .await;
    let reply = receive(&mut socket).await;
    assert_eq!(reply["actions"], json!([]), "no match, no call");
    send(
        &mut socket,
        &json!({"type":"keystroke","seq":4,"matcher":"nope"}),
    )
    .await;
    assert_eq!(receive(&mut socket).await["status"], "rejected");
}

#[tokio::test]
async fn device_events_over_the_socket_and_http() {
    let server = events_server();
    let client = server.client("events").await;
    let mut socket = client.socket_tab("t", "home").await;
    let cases = [
        (
            json!({"event":"barcode","data":{"text":"ASSET-42"},"context":{"where":"lobby"}}),
            "barcode ASSET-42 at lobby ts=true",
        ),
        (
            json!({"event":"nfc","data":[{"type":"T","typeNameFormat":1,"payload":"x","string":"door-7","bytes":[1]}],"context":{}}),
            "nfc door-7",
        ),
        (
            json!({"event":"accelerometer","data":{"values":{"data":[{"x":0.5,"y":0,"z":9.8},{"x":0.1,"y":0,"z":9.8}]}},"context":{}}),
            "accelerometer 2 samples, x=0.5",
        ),
        (
            json!({"event":"bluetooth","data":{"values":[{"rssi":-48,"timestamp":1570147485167_i64}]}}),
            "bluetooth rssi -48",
        ),
    ];
    for (seq, (event, expected)) in cases.iter().enumerate() {
        let mut frame = event.clone();
        frame["type"] = json!("device");
        frame["seq"] = json!(seq);
        send(&mut socket, &frame).await;
        assert_eq!(toast_of(&receive(&mut socket).await), *expected);
        // The same through the HTTP endpoint: the reply, and a push to the browser.
        let reply: Value = client
            .http
            .post(format!("{}/api/event", client.base))
            .json(event)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(toast_of(&reply), *expected, "{reply}");
        let callback = event["event"].as_str().unwrap();
        assert_eq!(pushed_toast_from(&mut socket, callback).await, *expected);
    }
    send(
        &mut socket,
        &json!({"type":"device","seq":9,"event":"barcode","data":{"no":"text"}}),
    )
    .await;
    let reply = receive(&mut socket).await;
    assert_eq!(reply["status"], "rejected");
    assert!(
        reply["reason"].as_str().unwrap().contains("text"),
        "{reply}"
    );
    // Gateways name the session and present the token.
    let response = reqwest::Client::new()
        .post(server.url("/events/api/event"))
        .bearer_auth("test-token")
        .json(&json!({"event":"barcode","data":{"text":"GW"},"context":{"where":"gate"},"session":client.session}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        toast_of(&response.json::<Value>().await.unwrap()),
        "barcode GW at gate ts=true"
    );
}

#[tokio::test]
async fn variables_and_properties_in_memory() {
    let server = events_server();
    let client = server.client("events").await;
    client.command("set", "kitchen").await;
    assert_eq!(http_toast(&client, "get", "").await, "room=kitchen");
    let page = client
        .http
        .get(format!("{}/home", client.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"<p id="room">kitchen</p>"#),
        "templates see session properties: {page}"
    );
    assert_eq!(http_toast(&client, "count", "").await, "count=1");
    let other = server.client("events").await;
    assert_eq!(
        http_toast(&other, "count", "").await,
        "count=2",
        "variables are shared by sessions"
    );
    // Polled, not slept on: a busy machine may run the 100 ms timer late.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ticks = http_toast(&client, "ticks", "").await;
        // `ticks=` (no value) until the timer first ran.
        let ticks: i64 = ticks.trim_start_matches("ticks=").parse().unwrap_or(0);
        if ticks >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the 100 ms timer ran only {ticks} times in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn restart_keeps_everything(clean: bool) {
    let mut server = events_server();
    let client = server.client("events").await;
    let mut socket = client.socket_tab("t1", "other").await;
    assert_eq!(
        command(&mut socket, 1, "set", "office").await["status"],
        "ok"
    );
    assert_eq!(
        toast_of(&command(&mut socket, 2, "count", "").await),
        "count=1"
    );
    drop(socket);
    if clean {
        server.signal_and_wait("TERM");
        // Issue 13: the session is paused, not ended: its own hook, and no
        // sessionShutdown (which would record a false end).
        server.wait_for_log(&format!("EVENT serverStopping {}", client.session));
        assert!(
            !server.log().contains("EVENT sessionShutdown"),
            "a clean stop ends no session"
        );
    } else {
        server.kill9();
    }
    let restarted = server.restart();
    let mut client = client;
    client.base = restarted.url("/events");
    client.ws_base = restarted.ws_url("/events");
    client.http = reqwest::Client::new();
    let mut socket = client.socket_tab("t1", "other").await;
    let kind = if clean { "persisted" } else { "failure" };
    assert_eq!(pushed_toast(&mut socket).await, format!("restored {kind}"));
    restarted.wait_for_log(&format!(
        r#"EVENT sessionRestored {} {kind} ["other"] name=events states=["other"]"#,
        client.session
    ));
    assert_eq!(
        toast_of(&command(&mut socket, 3, "get", "").await),
        "room=office"
    );
    assert_eq!(
        toast_of(&command(&mut socket, 4, "count", "").await),
        "count=2",
        "the `!` variable survived"
    );
    drop(server);
}

#[tokio::test]
async fn a_clean_restart_restores_sessions_as_persisted() {
    restart_keeps_everything(true).await;
}

#[tokio::test]
async fn a_crash_restores_sessions_as_failure() {
    restart_keeps_everything(false).await;
}

#[tokio::test]
async fn hot_reload_recompiles_and_keeps_the_last_good_version() {
    let projects = common::temp_dir("reload");
    common::copy_tree(
        &common::test_projects().join("events"),
        &projects.join("events"),
    );
    // Dev mode: the compile error is pushed to the browsers.
    let server = Server::start_with(&projects, &["--dev"]);
    let client = server.client("events").await;
    let mut socket = client.socket_tab("t1", "home").await;
    assert_eq!(pushed_toast(&mut socket).await, "welcome");
    let script = projects.join("events/events/10-events.rhai");
    let original = std::fs::read_to_string(&script).unwrap();
    std::fs::write(&script, original.replace("`room=${", "`new room=${")).unwrap();
    let reload = receive_push(&mut socket, "reload").await;
    assert!(
        reload["pages"].as_array().unwrap().contains(&json!("home")),
        "{reload}"
    );
    assert_eq!(pushed_toast(&mut socket).await, "restored newdoc");
    server.wait_for_log(&format!(
        r#"EVENT sessionRestored {} newdoc ["home"]"#,
        client.session
    ));
    assert_eq!(
        toast_of(&command(&mut socket, 1, "get", "").await),
        "new room="
    );

    std::fs::write(&script, "fn userCommand(s, u, n, p) {\n  let = ;\n}\n").unwrap();
    let error = receive_push(&mut socket, "dev_error").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("10-events.rhai:2:"),
        "{error}"
    );
    server.wait_for_log("still serving the last good version");
    assert_eq!(
        toast_of(&command(&mut socket, 2, "get", "").await),
        "new room=",
        "the old version still answers"
    );
    let _ = receive_any; // keep the helper linked for other test files
    std::fs::remove_dir_all(&projects).ok();
}

/// Issue 13 (the seed's "the project being made unrunnable"): a project
/// that fails to load at start does not lose its sessions silently; once it
/// loads again they end, and its `sessionShutdown` hears why.
#[tokio::test]
async fn sessions_of_a_project_that_fails_to_load_at_start_end_with_a_reason() {
    let projects = common::temp_dir("unrunnable");
    common::copy_tree(
        &common::test_projects().join("events"),
        &projects.join("events"),
    );
    let mut server = Server::start(&projects);
    let client = server.client("events").await;
    let mut socket = client.socket_tab("t1", "home").await;
    assert_eq!(pushed_toast(&mut socket).await, "welcome");
    drop(socket);
    server.signal_and_wait("TERM");
    let broken = projects.join("events/events/99-broken.rhai");
    std::fs::write(&broken, "fn broken( {").unwrap();
    let restarted = server.restart();
    restarted.wait_for_log("is not served, it has errors");
    // Fixed once the server watches for changes.
    restarted.wait_for_log("for changes");
    std::fs::remove_file(&broken).unwrap();
    restarted.wait_for_log(&format!(
        "EVENT sessionShutdown {} ProjectUnavailable",
        client.session
    ));
    let mut client = client;
    client.base = restarted.url("/events");
    // Gone just after its sessionShutdown ran: 401 from then on.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, reply) = client
            .post(&json!({"type":"command","seq":1,"name":"count","param":""}))
            .await;
        if status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session still answers {status}: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_dir_all(&projects).ok();
}

#[tokio::test]
async fn removing_a_project_ends_its_sessions() {
    let projects = common::temp_dir("removed");
    common::copy_tree(
        &common::test_projects().join("events"),
        &projects.join("events"),
    );
    let server = Server::start(&projects);
    let client = server.client("events").await;
    let mut socket = client.socket_tab("t1", "home").await;
    assert_eq!(pushed_toast(&mut socket).await, "welcome");
    std::fs::remove_dir_all(projects.join("events")).unwrap();
    let ended = receive_push(&mut socket, "session_ended").await;
    assert_eq!(ended["reason"], "ProjectRemoved");
    server.wait_for_log(&format!(
        "EVENT sessionShutdown {} ProjectRemoved",
        client.session
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reqwest::get(server.url("/events/")).await.unwrap().status() != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed project is still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_dir_all(&projects).ok();
}
