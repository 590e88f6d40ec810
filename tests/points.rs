//! Points over MQTT against a real Mosquitto (tests/common/mosquitto.rs):
//! retained state at start, changes pushed to the sessions that show them,
//! `pointChange` once per change, server-side rendering of current values,
//! writes from pages (ACL, `pointWrite`), a broker that goes away and comes
//! back, unusable payloads, a wrong password, values kept across a restart.

mod common;

use std::path::{Path, PathBuf};

use common::mosquitto::{Broker, MqttClient};
use common::{Client, Server, Socket, command, receive_push, temp_dir};
use serde_json::Value;

fn projects() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/points")
}

const PASSWORD: &str = "s3cret-panel";

/// The test building served against `broker` (its password variable set
/// to `password`).
fn building(broker: &Broker, password: &str) -> Server {
    Server::start_with_env(
        &projects(),
        &temp_dir("data"),
        &[],
        &[
            ("POINTS_TEST_MQTT", &broker.url()),
            ("POINTS_TEST_MQTT_PASSWORD", password),
        ],
    )
}

/// The page's HTML as the server renders it for the client.
async fn page(client: &Client, page: &str) -> String {
    let response = client
        .http
        .get(format!("{}/{page}", client.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Renders the page until `check` holds (the server hears the broker on
/// its own time); fails with the last HTML after the timeout.
async fn page_until(client: &Client, name: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + common::REPLY_TIMEOUT;
    loop {
        let html = page(client, name).await;
        if check(&html) {
            return html;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page never matched:\n{html}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A client that opened `home` and has a socket for it.
async fn panel(server: &Server) -> (Client, Socket) {
    let client = server.client("building").await;
    page(&client, "home").await;
    let socket = client.socket_tab("t1", "home").await;
    (client, socket)
}

/// The next pushed item for `point`, skipping others.
async fn next_point(socket: &mut Socket, point: &str) -> Value {
    loop {
        let push = receive_push(socket, "points").await;
        if let Some(item) = push["set"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|item| item["name"] == point)
        {
            return item.clone();
        }
    }
}

/// Pushed items for `point` until one has `value` and `quality`.
async fn point_reaches(socket: &mut Socket, point: &str, value: Value, quality: &str) {
    loop {
        let item = next_point(socket, point).await;
        if item["value"] == value && item["quality"] == quality {
            return;
        }
    }
}

/// An element's opening tag in rendered HTML, by id.
fn tag<'a>(html: &'a str, id: &str) -> &'a str {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in:\n{html}"));
    let start = html[..at].rfind('<').unwrap();
    let end = at + html[at..].find('>').unwrap();
    &html[start..=end]
}

async fn admin(broker: &Broker) -> MqttClient {
    broker.client(Some(("panel", PASSWORD))).await
}

fn password_broker() -> Broker {
    Broker::start_with_password("panel", PASSWORD)
}

#[tokio::test]
async fn retained_state_is_read_at_start_and_rendered() {
    let broker = password_broker();
    let mut mqtt = admin(&broker).await;
    mqtt.publish("building/lobby/light/state", "ON", true).await;
    mqtt.publish("building/lobby/temp", "21.5", true).await;
    let server = building(&broker, PASSWORD);
    let client = server.client("building").await;
    let html = page_until(&client, "home", |html| html.contains("21.5 °C")).await;
    let light = tag(&html, "light");
    assert!(light.contains(r#"aria-pressed="true""#), "{light}");
    assert!(light.contains(r#"data-sb-quality="good""#), "{light}");
    assert!(
        light.contains(r#"data-sb-param="false""#),
        "a tap turns it off: {light}"
    );
    assert!(tag(&html, "temp").contains(r#"data-sb-quality="good""#));
    assert!(
        html.contains(">21.5 °C</span>"),
        "the label shows value and unit"
    );
    // Never heard of: rendered as unknown, not as a made-up value.
    assert!(tag(&html, "setpoint").contains(r#"data-sb-quality="unknown""#));
    assert!(
        html.contains(">day</span>"),
        "a memory point's initial value"
    );
}

#[tokio::test]
async fn a_change_reaches_every_panel_and_point_change_runs_once() {
    let broker = password_broker();
    let server = building(&broker, PASSWORD);
    let mut mqtt = admin(&broker).await;
    mqtt.subscribe("test/changes").await;
    let (_a, mut first) = panel(&server).await;
    let (_b, mut second) = panel(&server).await;
    server.wait_for_log("connected to the MQTT broker");

    mqtt.publish("building/lobby/light/state", "ON", false)
        .await;
    for socket in [&mut first, &mut second] {
        let item = loop {
            let item = next_point(socket, "lobby.light").await;
            if item["quality"] == "good" {
                break item;
            }
        };
        assert_eq!(item["value"], true, "{item}");
        assert_eq!(item["text"], "On");
    }
    // A second change marks the end: callbacks run in order, so a repeat of
    // the first would arrive before it.
    mqtt.publish("building/lobby/temp", "19", false).await;
    let mut seen = Vec::new();
    loop {
        let (_, payload) = mqtt.next_message().await;
        let done = payload == "lobby.temp=19";
        seen.push(payload);
        if done {
            break;
        }
    }
    assert_eq!(
        seen,
        ["lobby.light=true", "lobby.temp=19"],
        "pointChange once per change, not per session"
    );
}

#[tokio::test]
async fn a_session_gets_only_the_points_its_pages_show() {
    let broker = password_broker();
    let server = building(&broker, PASSWORD);
    let mut mqtt = admin(&broker).await;
    let kitchen = server.client("building").await;
    page(&kitchen, "kitchen").await;
    let mut kitchen_socket = kitchen.socket_tab("k", "kitchen").await;
    let (_lobby, mut lobby_socket) = panel(&server).await;
    server.wait_for_log("connected to the MQTT broker");

    mqtt.publish("building/lobby/temp", "23", false).await;
    mqtt.publish(
        "zigbee2mqtt/kitchen",
        r#"{"temperature": 18.5, "humidity": 40}"#,
        false,
    )
    .await;
    // The lobby panel hears the lobby; the kitchen panel's first push is the
    // kitchen sensor (read through its value_path), never the lobby.
    point_reaches(&mut lobby_socket, "lobby.temp", Value::from(23), "good").await;
    loop {
        let push = receive_push(&mut kitchen_socket, "points").await;
        let items = push["set"].as_array().unwrap();
        assert!(
            items.iter().all(|i| i["name"] == "kitchen.sensor"),
            "{push}"
        );
        if items.iter().any(|i| i["value"] == 18.5) {
            break;
        }
    }
}

#[tokio::test]
async fn a_page_write_is_published_and_refusals_are_honoured() {
    let broker = password_broker();
    let server = building(&broker, PASSWORD);
    let mut mqtt = admin(&broker).await;
    mqtt.subscribe("building/+/+/set").await;
    let (_client, mut socket) = panel(&server).await;
    server.wait_for_log("connected to the MQTT broker");

    let reply = command(&mut socket, 1, "point:lobby.light", "true").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(
        mqtt.next_message().await,
        ("building/lobby/light/set".into(), "ON".into())
    );

    // The ACL sees `point:<name>`: the vault is denied before any handler.
    let reply = command(&mut socket, 2, "point:vault.door", "true").await;
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(
        reply["actions"][0]["message"],
        "You are not allowed to do that."
    );

    // pointWrite refuses, with rollback to the point's value (unknown: "").
    let reply = command(&mut socket, 3, "point:lobby.setpoint", "30").await;
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["actions"][0]["message"], "Too high");
    assert_eq!(reply["actions"][1]["type"], "rollback", "{reply}");

    // Not a number: refused by the runtime.
    let reply = command(&mut socket, 4, "point:lobby.setpoint", "warm").await;
    assert_eq!(reply["status"], "error", "{reply}");

    // An accepted write is the next thing on the command topics: the
    // refused ones were never published.
    let reply = command(&mut socket, 5, "point:lobby.setpoint", "22.5").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(
        mqtt.next_message().await,
        ("building/lobby/setpoint/set".into(), "22.5".into())
    );
    server.wait_for_log(r#"name="point:lobby.setpoint" param="22.5" [OK]"#);

    // A read-only point cannot be written, a memory point is set at once.
    let reply = command(&mut socket, 6, "point:lobby.temp", "5").await;
    assert_eq!(reply["status"], "error", "{reply}");
    let reply = command(&mut socket, 7, "point:scene", "night").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    page_until(&_client, "home", |html| html.contains(">night</span>")).await;
}

#[tokio::test]
async fn a_command_id_writes_once() {
    let broker = password_broker();
    let server = building(&broker, PASSWORD);
    let mut mqtt = admin(&broker).await;
    mqtt.subscribe("building/lobby/light/set").await;
    let (_client, mut socket) = panel(&server).await;
    server.wait_for_log("connected to the MQTT broker");
    for seq in [1, 2] {
        common::send(
            &mut socket,
            &serde_json::json!({"type":"command","seq":seq,"id":"write-1","name":"point:lobby.light","param":"false"}),
        )
        .await;
        let reply = common::receive(&mut socket).await;
        assert_eq!(reply["status"], "ok", "{reply}");
    }
    let reply = command(&mut socket, 3, "point:lobby.light", "true").await;
    assert_eq!(reply["status"], "ok");
    assert_eq!(mqtt.next_message().await.1, "OFF");
    assert_eq!(
        mqtt.next_message().await.1,
        "ON",
        "the repeated id was not published again"
    );
}

#[tokio::test]
async fn a_broker_that_goes_away_makes_points_stale_until_it_is_back() {
    let mut broker = password_broker();
    let server = building(&broker, PASSWORD);
    let (client, mut socket) = panel(&server).await;
    server.wait_for_log("connected to the MQTT broker");
    admin(&broker)
        .await
        .publish("building/lobby/temp", "20", false)
        .await;
    point_reaches(&mut socket, "lobby.temp", Value::from(20), "good").await;

    broker.stop();
    point_reaches(&mut socket, "lobby.temp", Value::from(20), "stale").await;
    let html = page(&client, "home").await;
    assert!(
        tag(&html, "temp").contains(r#"data-sb-quality="stale""#),
        "rendered stale too"
    );
    let reply = command(&mut socket, 1, "point:lobby.light", "true").await;
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(reply["actions"][0]["message"], "The device is offline");
    assert_eq!(reply["actions"][1]["type"], "rollback");

    broker.resume();
    let deadline = std::time::Instant::now() + common::REPLY_TIMEOUT;
    while server.log().matches("connected to the MQTT broker").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The new value arrives only if the subscriptions were restored.
    let mut mqtt = admin(&broker).await;
    mqtt.publish("building/lobby/temp", "21", false).await;
    point_reaches(&mut socket, "lobby.temp", Value::from(21), "good").await;
    let log = server.log();
    assert_eq!(
        log.matches("lost the MQTT broker").count(),
        1,
        "said once:\n{log}"
    );
}

#[tokio::test]
async fn unusable_payloads_mark_the_point_bad_and_nothing_else() {
    let broker = password_broker();
    let server = building(&broker, PASSWORD);
    let (_client, mut socket) = panel(&server).await;
    server.wait_for_log("connected to the MQTT broker");
    let mut mqtt = admin(&broker).await;
    mqtt.publish("building/lobby/temp", "20", false).await;
    point_reaches(&mut socket, "lobby.temp", Value::from(20), "good").await;

    for junk in ["warm", "{\"t\":1}", "", "NaN"] {
        mqtt.publish("building/lobby/temp", junk, false).await;
    }
    point_reaches(&mut socket, "lobby.temp", Value::from(20), "bad").await;
    mqtt.publish("building/lobby/light/state", "maybe", false)
        .await;
    mqtt.publish("building/lobby/light/state", "on", false)
        .await;
    point_reaches(&mut socket, "lobby.light", Value::from(true), "good").await;
    mqtt.publish("building/lobby/temp", "20.5", false).await;
    point_reaches(&mut socket, "lobby.temp", Value::from(20.5), "good").await;
    // The server still answers (and its log line comes after the others).
    assert_eq!(
        command(&mut socket, 9, "get", "lobby.temp").await["actions"][0]["message"],
        "20.5"
    );
    let log = server.wait_for_log(r#"name="get""#);
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("unusable payload") && l.contains("lobby.temp"))
            .count(),
        1,
        "logged once a minute at most:\n{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("unusable payload") && l.contains("lobby.light"))
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_said_once_and_the_server_keeps_serving() {
    let broker = password_broker();
    let server = building(&broker, "not-the-password");
    let client = server.client("building").await;
    let log = server.wait_for_log("refused the connection");
    // It retries (with backoff), but says so once.
    let html = page(&client, "home").await;
    assert!(tag(&html, "light").contains(r#"data-sb-quality="unknown""#));
    let metrics = client
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"switchboard_connection_up{project="building",connection="site"} 0"#),
        "{metrics}"
    );
    assert_eq!(log.matches("refused the connection").count(), 1, "{log}");
    assert!(
        !log.contains(PASSWORD) && !log.contains("not-the-password"),
        "no password in the log"
    );

    let good = building(&broker, PASSWORD);
    good.wait_for_log("connected to the MQTT broker");
    let metrics = reqwest::get(good.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"switchboard_connection_up{project="building",connection="site"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn scripts_read_and_write_points_and_hear_subscribed_topics() {
    let broker = password_broker();
    let server = building(&broker, PASSWORD);
    let mut mqtt = admin(&broker).await;
    mqtt.subscribe("test/messages").await;
    mqtt.subscribe("building/lobby/light/set").await;
    let client = server.client("building").await;
    server.wait_for_log("connected to the MQTT broker");
    mqtt.publish("building/lobby/temp", "18", false).await;
    let info = loop {
        let reply = client.command("info", "lobby.temp").await;
        let text = reply["actions"][0]["message"].as_str().unwrap().to_string();
        if text.contains("good") {
            break text;
        }
    };
    assert_eq!(info, "18|good|true");
    let reply = client.command("set", "lobby.light=on").await;
    assert_eq!(reply["actions"][0]["message"], "true");
    assert_eq!(
        mqtt.next_message().await,
        ("building/lobby/light/set".into(), "ON".into())
    );
    mqtt.publish("events/doorbell", "ring", false).await;
    assert_eq!(
        mqtt.next_message().await,
        ("test/messages".into(), "events/doorbell:ring".into())
    );
}

#[tokio::test]
async fn last_values_survive_a_restart_as_stale() {
    let mut broker = password_broker();
    let data = temp_dir("points-restart");
    let env = [
        ("POINTS_TEST_MQTT", broker.url()),
        ("POINTS_TEST_MQTT_PASSWORD", PASSWORD.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut first = Server::start_with_env(&projects(), &data, &[], &env);
    let (_client, mut socket) = panel(&first).await;
    first.wait_for_log("connected to the MQTT broker");
    admin(&broker)
        .await
        .publish("building/lobby/temp", "24.5", false)
        .await;
    point_reaches(&mut socket, "lobby.temp", Value::from(24.5), "good").await;
    first.signal_and_wait("TERM");
    broker.stop();

    let second = Server::start_with_env(&projects(), &data, &[], &env);
    let client = second.client("building").await;
    let html = page(&client, "home").await;
    assert!(html.contains(">24.5 °C</span>"), "{html}");
    assert!(
        tag(&html, "temp").contains(r#"data-sb-quality="stale""#),
        "{html}"
    );
}

/// `switchboard check` names the file and line of every mistake in
/// `[[connections]]`, `[[points]]` and bindings.
#[test]
fn check_reports_point_mistakes_at_their_line() {
    let dir = temp_dir("points-check").join("broken");
    std::fs::create_dir_all(dir.join("pages")).unwrap();
    std::fs::write(
        dir.join("project.toml"),
        r#"title = "broken"

[[connections]]
name = "site"
kind = "mqtt"
url = "mqtt://127.0.0.1:1883"

[[points]]
name = "a"
type = "bool"
connection = "sit"

[[points]]
name = "b"
type = "number"
connection = "site"
state = "building/+/temp"

[[points]]
name = "c"
type = "text"
register = "holding:30001"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("pages/home.html"),
        "{% extends \"sb/layout.html\" %}{% block content %}\n<span data-sb-point=\"missing\"></span>{% endblock %}",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("check")
        .arg(&dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{report}");
    for expected in [
        "project.toml:8:1: point `a`: unknown connection `sit`",
        "project.toml:13:1: point `b`: `state` topic `building/+/temp` is not a valid MQTT topic",
        "project.toml:19:1: point `c`: a memory point",
        "pages/home.html:2:22: binds the point `missing`",
    ] {
        assert!(report.contains(expected), "no {expected:?} in:\n{report}");
    }
}

/// The same over MQTT 5 (`protocol = 5`): retained state read, a change
/// pushed, a write published.
#[tokio::test]
async fn mqtt5_reads_pushes_and_writes() {
    let broker = Broker::start();
    let mut mqtt = broker.client(None).await;
    mqtt.publish("v5/temp", "17.5", true).await;
    mqtt.subscribe("v5/light/set").await;
    let projects = temp_dir("points-v5");
    let dir = projects.join("five");
    std::fs::create_dir_all(dir.join("pages")).unwrap();
    std::fs::write(
        dir.join("project.toml"),
        format!(
            r#"[[connections]]
name = "site"
kind = "mqtt"
protocol = 5
url = "{}"

[[points]]
name = "temp"
type = "number"
connection = "site"
state = "v5/temp"

[[points]]
name = "light"
type = "bool"
connection = "site"
state = "v5/light/state"
command = "v5/light/set"
"#,
            broker.url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("pages/home.html"),
        "{% extends \"sb/layout.html\" %}{% block content %}{{ <sb.point id=\"temp\" point=\"temp\" /> }}{{ <sb.point_toggle id=\"light\" point=\"light\" label=\"Light\" /> }}{% endblock %}",
    )
    .unwrap();
    let server = Server::start(&projects);
    let client = server.client("five").await;
    page_until(&client, "home", |html| html.contains(">17.5</span>")).await;
    let mut socket = client.socket_tab("t", "home").await;
    mqtt.publish("v5/temp", "18", false).await;
    point_reaches(&mut socket, "temp", Value::from(18), "good").await;
    let reply = command(&mut socket, 1, "point:light", "true").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(
        mqtt.next_message().await,
        ("v5/light/set".into(), "ON".into())
    );
}
