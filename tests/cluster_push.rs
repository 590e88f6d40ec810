//! Cluster mode, pushes (issue 17): what a handler on one node pushes
//! reaches the panels on the other nodes, through a real `nats-server -js`
//! and two Switchboard nodes. See docs/cluster.md.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::nats::Nats;
use common::{Client, Server, Socket, receive_any, toast_of};
use serde_json::Value;

const SCRIPT: &str = r#"
fn userCommand(session, userid, name, param) {
    switch name {
        "uiSet" => { uiSet("clock", "text", param); "!" }
        // "<session or scope>:<text>"
        "uiTo" => { let p = param.split(":"); uiSessionSet(p[0], "clock", "text", p[1]); "!" }
        "signTo" => { uiSessionSet(param, "sign", "text", "for the lobby"); "!" }
        "subscribe" => { sessionSubscribe(session, param); "!" }
        "actionsTo" => #{ toast: `found ${sendActions(param, #{ toast: "pushed from afar" })}` },
        "messageTo" => #{ toast: `here ${sendMessage("site", "news", #{ text: "hello" }, param)}` },
        "terminate" => #{ toast: `terminated ${terminateSession(param)}` },
        _ => ()
    }
}

fn message(session, handler, payload) {
    print(`EVENT message ${session} ${handler} ${payload.text}`);
    #{ toast: `${handler}: ${payload.text}` }
}

fn sessionRestored(session, type, pages) {
    print(`EVENT sessionRestored ${session} ${type}`);
}
"#;

/// A projects folder with the project `site`, whose handlers push.
fn projects() -> PathBuf {
    let root = common::temp_dir("cluster-push");
    common::write_project(
        &root,
        "site",
        &[
            (
                "project.toml",
                "title = \"Cluster push\"\nstart = \"home\"\n",
            ),
            ("pages/home.html", common::HOME_PAGE),
            ("events/main.rhai", SCRIPT),
        ],
    );
    root
}

fn node(nats: &Nats, projects: &Path, name: &str) -> Server {
    Server::start_with(projects, &["--cluster", &nats.url, "--node", name])
}

/// The same session as `client`, talking to another node.
fn on(server: &Server, client: &Client) -> Client {
    Client {
        http: client.http.clone(),
        base: server.url("/site"),
        ws_base: server.ws_url("/site"),
        session: client.session.clone(),
        set_cookie: client.set_cookie.clone(),
    }
}

/// A panel: a session of `site` on `server` with its socket open.
async fn panel(server: &Server) -> (Client, Socket) {
    let client = server.client("site").await;
    let socket = client.socket_tab("t", "home").await;
    (client, socket)
}

/// The values of `<id>.text` in a `ui` frame.
fn texts(frame: &Value, id: &str) -> Vec<String> {
    if frame["type"] != "ui" {
        return Vec::new();
    }
    frame["set"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["id"] == id && v["attr"] == "text")
        .filter_map(|v| v["value"].as_str().map(String::from))
        .collect()
}

/// Reads frames until `clock.text` is `text`; returns every clock text
/// seen up to and including it.
async fn until_clock(socket: &mut Socket, text: &str) -> Vec<String> {
    until_text(socket, "clock", text).await
}

/// Reads frames until `<id>.text` is `text`; returns every text of the
/// object seen up to and including it.
async fn until_text(socket: &mut Socket, id: &str, text: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let texts = texts(&receive_any(socket).await, id);
        let done = texts.iter().any(|t| t == text);
        seen.extend(texts);
        if done {
            return seen;
        }
    }
}

/// The next toast pushed outside a reply.
async fn pushed_toast(socket: &mut Socket) -> String {
    loop {
        let frame = receive_any(socket).await;
        if frame["type"] == "actions" {
            return frame["actions"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
    }
}

/// The next `session_ended` push, then the socket closing.
async fn ended_and_closed(socket: &mut Socket) -> String {
    use futures_util::StreamExt;
    let reason = loop {
        let frame = receive_any(socket).await;
        if frame["type"] == "session_ended" {
            break frame["reason"].as_str().unwrap_or_default().to_string();
        }
    };
    let closed = tokio::time::timeout(common::REPLY_TIMEOUT, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(message)) if message.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the socket closes after sessionEnded");
    reason
}

#[tokio::test]
async fn ui_set_on_one_node_reaches_the_panels_of_both_once() {
    let (nats, projects) = (Nats::start(), projects());
    let (a, b) = (node(&nats, &projects, "a"), node(&nats, &projects, "b"));
    let (_, mut panel_a) = panel(&a).await;
    let (_, mut panel_b) = panel(&b).await;
    let on_a = a.client("site").await;
    let on_b = b.client("site").await;

    // A handler on B pushes; the panel on A shows it.
    let started = Instant::now();
    on_b.command("uiSet", "from-b").await;
    assert_eq!(until_clock(&mut panel_a, "from-b").await, ["from-b"]);
    println!("uiSet on B → socket on A: {:?}", started.elapsed());
    assert_eq!(until_clock(&mut panel_b, "from-b").await, ["from-b"]);

    // Pushes from both nodes, in turn: every panel gets each value once
    // (a node does not apply its own push again when NATS echoes it).
    for (on, value) in [(&on_a, "from-a"), (&on_b, "again-b"), (&on_a, "last")] {
        on.command("uiSet", value).await;
        for socket in [&mut panel_a, &mut panel_b] {
            assert_eq!(until_clock(socket, value).await, [value], "once");
        }
    }
}

#[tokio::test]
async fn ui_session_set_reaches_a_session_held_on_the_other_node() {
    let (nats, projects) = (Nats::start(), projects());
    let (a, b) = (node(&nats, &projects, "a"), node(&nats, &projects, "b"));
    let (client, mut panel_a) = panel(&a).await;
    let (_, mut bystander_b) = panel(&b).await;
    let on_b = b.client("site").await;

    // To the session itself, from a handler on B.
    on_b.command("uiTo", &format!("{}:mine", client.session))
        .await;
    assert_eq!(until_clock(&mut panel_a, "mine").await, ["mine"]);

    // The session's own value is in its record: it follows the panel to B.
    drop(panel_a);
    let mut moved = on(&b, &client).socket_tab("t", "home").await;
    assert_eq!(until_clock(&mut moved, "mine").await, ["mine"]);

    // To a scope a panel on A subscribed to.
    let (_, mut subscriber_a) = panel(&a).await;
    let reply = common::command(&mut subscriber_a, 1, "subscribe", "lobby").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    on_b.command("uiTo", "lobby:scoped").await;
    assert_eq!(until_clock(&mut subscriber_a, "scoped").await, ["scoped"]);

    // Neither reached the panel that is not the session nor subscribed.
    on_b.command("uiSet", "marker").await;
    assert_eq!(until_clock(&mut bystander_b, "marker").await, ["marker"]);
}

#[tokio::test]
async fn a_session_resuming_on_another_node_is_restored_once_as_newdoc() {
    let (nats, projects) = (Nats::start(), projects());
    let (a, b) = (node(&nats, &projects, "a"), node(&nats, &projects, "b"));
    let (client, panel_a) = panel(&a).await;
    drop(panel_a);
    let restored = format!("EVENT sessionRestored {} newdoc", client.session);
    let on_b = on(&b, &client);
    let mut socket = on_b.socket_tab("t", "home").await;
    b.wait_for_log(&restored);
    // Reconnecting to the node that holds it is no resume.
    drop(socket);
    socket = on_b.socket_tab("t", "home").await;
    common::command(&mut socket, 1, "none", "").await;
    assert_eq!(b.log().matches(&restored).count(), 1, "once");
    assert!(
        !a.log().contains(&restored),
        "A created it: no restore there"
    );
}

#[tokio::test]
async fn messages_and_actions_reach_a_session_on_the_other_node() {
    let (nats, projects) = (Nats::start(), projects());
    let (a, b) = (node(&nats, &projects, "a"), node(&nats, &projects, "b"));
    let (client, mut panel_a) = panel(&a).await;
    let on_b = b.client("site").await;

    let reply = on_b
        .command("messageTo", &format!("session:{}", client.session))
        .await;
    assert_eq!(toast_of(&reply), "here 0", "B holds no socket of it");
    assert_eq!(pushed_toast(&mut panel_a).await, "news: hello");
    let ran = format!("EVENT message {} news hello", client.session);
    a.wait_for_log(&ran);
    assert_eq!(a.log().matches(&ran).count(), 1, "ran once, on A");
    assert!(!b.log().contains(&ran), "not on B");

    let reply = on_b.command("actionsTo", &client.session).await;
    assert_eq!(toast_of(&reply), "found true");
    assert_eq!(pushed_toast(&mut panel_a).await, "pushed from afar");

    // A message to every session runs where each panel is.
    let (other, mut panel_b) = panel(&b).await;
    on_b.command("messageTo", "project").await;
    assert_eq!(pushed_toast(&mut panel_a).await, "news: hello");
    assert_eq!(pushed_toast(&mut panel_b).await, "news: hello");
    let on_b_ran = format!("EVENT message {} news hello", other.session);
    assert!(!a.log().contains(&on_b_ran), "B's panel's handler ran on B");
}

#[tokio::test]
async fn ending_a_session_on_one_node_closes_its_panel_on_the_other() {
    let (nats, projects) = (Nats::start(), projects());
    let (a, b) = (node(&nats, &projects, "a"), node(&nats, &projects, "b"));

    // terminateSession in a handler on B, for a panel on A.
    let (client, mut panel_a) = panel(&a).await;
    let on_b = b.client("site").await;
    let reply = on_b.command("terminate", &client.session).await;
    assert_eq!(toast_of(&reply), "terminated true");
    assert_eq!(ended_and_closed(&mut panel_a).await, "Terminated");

    // Logging out through B (the load balancer sent the request there).
    let (client, mut panel_a) = panel(&a).await;
    let response = on(&b, &client)
        .http
        .post(b.url("/site/logout"))
        .header("cookie", format!("sb_session={}", client.session))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_redirection() || response.status().is_success());
    assert_eq!(ended_and_closed(&mut panel_a).await, "Logout");
    // Ended everywhere: A refuses it too, once B's delete of the record
    // (written behind) is stored.
    let deadline = Instant::now() + common::REPLY_TIMEOUT;
    while client.socket_with_origin(None).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the ended session is refused on A"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_node_started_later_shows_the_project_ui_values() {
    let (nats, projects) = (Nats::start(), projects());
    let a = node(&nats, &projects, "a");
    let on_a = a.client("site").await;
    on_a.command("uiSet", "early").await;
    on_a.command("signTo", "lobby").await;

    // B starts after both were pushed: it has them from the kept values.
    let b = node(&nats, &projects, "b");
    let (_, mut panel_b) = panel(&b).await;
    assert_eq!(until_clock(&mut panel_b, "early").await, ["early"]);
    // Subscribing pushes the scope's values (before the reply: read them
    // as they come rather than skipping to the reply).
    let subscribe =
        serde_json::json!({"type":"command","seq":1,"name":"subscribe","param":"lobby"});
    common::send(&mut panel_b, &subscribe).await;
    assert_eq!(
        until_text(&mut panel_b, "sign", "for the lobby").await,
        ["for the lobby"]
    );
}
