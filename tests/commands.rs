//! The command pipeline end to end: every Command API form through the real
//! server, over HTTP and over WebSocket.

mod common;

use common::{Server, command, receive, send};
use serde_json::{Value, json};

fn testbed() -> Server {
    Server::start(&common::test_projects())
}

/// Asserts the reply's status and actions, printing what was sent and got.
fn assert_reply(sent: &str, reply: &Value, status: &str, actions: Value) {
    assert_eq!(reply["status"], status, "sent {sent}, got {reply}");
    assert_eq!(reply["actions"], actions, "sent {sent}, got {reply}");
}

#[tokio::test]
async fn every_string_form_over_http() {
    let server = testbed();
    let client = server.client("testbed").await;
    let cases: Vec<(&str, &str, Value)> = vec![
        ("page:home", "ok", json!([{"type":"page","page":"home"}])),
        ("page:back", "ok", json!([{"type":"page","page":"back"}])),
        (
            "page:forward",
            "ok",
            json!([{"type":"page","page":"forward"}]),
        ),
        ("page:close", "ok", json!([{"type":"page","page":"close"}])),
        (
            "page:close-all",
            "ok",
            json!([{"type":"page","page":"close-all"}]),
        ),
        (
            "copy:Wi-Fi: hunter2",
            "ok",
            json!([{"type":"copy","text":"Wi-Fi: hunter2"}]),
        ),
        (
            "app:speech",
            "ok",
            json!([{"type":"app","command":"speech"}]),
        ),
        (
            "app:codescan",
            "ok",
            json!([{"type":"app","command":"codescan"}]),
        ),
        (
            "error",
            "error",
            json!([{"type":"error","message":null,"display":"tooltip","object":"say"}]),
        ),
        ("!", "ok", json!([])),
        ("!page:home", "ok", json!([{"type":"page","page":"home"}])),
        ("anything else", "ok", json!([])),
        (
            r#"{"toast":"from JSON text"}"#,
            "ok",
            json!([{"type":"toast","message":"from JSON text","duration":null,"level":null,"duplicate":false,"close":false}]),
        ),
    ];
    for (answer, status, actions) in cases {
        let reply = client.command("say", answer).await;
        assert_reply(answer, &reply, status, actions);
    }
}

#[tokio::test]
async fn every_map_form_over_websocket() {
    let server = testbed();
    let client = server.client("testbed").await;
    let mut socket = client.socket().await;
    let toast = |message: &str, duration: Value, level: Value, duplicate: bool, close: bool| json!({"type":"toast","message":message,"duration":duration,"level":level,"duplicate":duplicate,"close":close});
    let cases: Vec<(&str, &str, &str, Value)> = vec![
        (
            "toast_map",
            "hello",
            "ok",
            json!([toast("hello", Value::Null, Value::Null, false, false)]),
        ),
        (
            "toast_full",
            "saved",
            "ok",
            json!([toast("saved", json!(1500), json!("success"), true, false)]),
        ),
        (
            "toast_close",
            "bye",
            "ok",
            json!([toast("bye", Value::Null, Value::Null, false, true)]),
        ),
        (
            "toasts",
            "",
            "ok",
            json!([
                toast("one", Value::Null, Value::Null, false, false),
                toast("two", Value::Null, json!("warning"), false, false)
            ]),
        ),
        (
            "popup_text",
            "Door open",
            "ok",
            json!([{"type":"popup","title":null,"message":"Door open","level":null}]),
        ),
        (
            "popup_map",
            "Door open",
            "ok",
            json!([{"type":"popup","title":"Title","message":"Door open","level":"warning"}]),
        ),
        (
            "pages",
            "",
            "ok",
            json!([{"type":"page","page":"close-all"},{"type":"page","page":"popup2"}]),
        ),
        (
            "url",
            "https://example.com/a?b=1",
            "ok",
            json!([{"type":"url","url":"https://example.com/a?b=1","target":"_blank"}]),
        ),
        (
            "url",
            "../other",
            "ok",
            json!([{"type":"url","url":"../other","target":"_blank"}]),
        ),
        (
            "url_self",
            "mailto:ops@example.com",
            "ok",
            json!([{"type":"url","url":"mailto:ops@example.com","target":null}]),
        ),
        (
            "share",
            "https://example.com/room/1",
            "ok",
            json!([{"type":"share","text":"https://example.com/room/1"}]),
        ),
        (
            "download_map",
            "q3",
            "ok",
            json!([{"type":"download","name":"report","parameter":"q3"}]),
        ),
        (
            "error_popup",
            "Not allowed",
            "error",
            json!([{"type":"error","message":"Not allowed","display":"popup","object":"error_popup"}]),
        ),
        (
            "submit",
            "{}",
            "error",
            json!([
                {"type":"field_error","field":"email","message":"Invalid email","display":"tooltip"},
                {"type":"field_error","field":"name","message":null,"display":"tooltip"},
                {"type":"field_error","field":"phone","message":"Too short","display":"popup"},
            ]),
        ),
        (
            "combo",
            "",
            "ok",
            json!([toast("saved", Value::Null, Value::Null, false, false), {"type":"copy","text":"c"}, {"type":"page","page":"home"}]),
        ),
    ];
    for (seq, (name, param, status, actions)) in cases.into_iter().enumerate() {
        let reply = command(&mut socket, seq as u64, name, param).await;
        assert_reply(&format!("{name}({param})"), &reply, status, actions);
    }
}

#[tokio::test]
async fn bad_shapes_apply_the_rest_and_warn() {
    let server = testbed();
    let client = server.client("testbed").await;
    let reply = client.command("bad", "").await;
    assert_reply(
        "bad",
        &reply,
        "ok",
        json!([{"type":"popup","title":null,"message":"still here","level":null}]),
    );
    let log = server.wait_for_log("bogus");
    assert!(
        log.contains("toast"),
        "the log names the bad toast key:\n{log}"
    );
    assert!(log.contains("url"), "the log names the refused url:\n{log}");
}

#[tokio::test]
async fn unhandled_and_plugin_order() {
    let server = testbed();
    let client = server.client("testbed").await;
    assert_reply(
        "nobody",
        &client.command("nobody", "x").await,
        "unhandled",
        json!([]),
    );
    server.wait_for_log(r#"name="nobody" param="x" [UNHANDLED]"#);
    // 10-main.rhai returns () for `fallback`, so 20-fallback.rhai answers.
    assert_reply(
        "fallback",
        &client.command("fallback", "").await,
        "ok",
        json!([]),
    );
    // Both scripts answer `say`: the first in file-name order wins.
    assert_reply(
        "say",
        &client.command("say", "copy:first").await,
        "ok",
        json!([{"type":"copy","text":"first"}]),
    );
}

#[tokio::test]
async fn handler_sees_session_and_anonymous_user() {
    let server = testbed();
    let client = server.client("testbed").await;
    let reply = client.command("say", "x").await;
    assert_eq!(reply["status"], "ok");
    let reply = client.command("who", "").await;
    // `who` answers "<userid>|<session id length>": anonymous is "", ids are 32 hex digits.
    assert_eq!(reply["status"], "ok", "{reply}");
    server.wait_for_log(r#"user=- object=- name="who""#);
}

#[tokio::test]
async fn quiet_answers_keep_the_param_out_of_the_log() {
    let server = testbed();
    let client = server.client("testbed").await;
    client.command("say", "!").await;
    client.command("say", "!copy:TOPSECRET").await;
    client.command("say", "visible-param").await;
    let log = server.wait_for_log("visible-param");
    assert!(
        !log.contains("TOPSECRET"),
        "a `!` answer leaked its param:\n{log}"
    );
    assert!(
        log.contains(r#"name="say" [OK]"#),
        "quiet commands are still logged, without param:\n{log}"
    );
}

#[tokio::test]
async fn a_failing_handler_answers_failed_with_a_generic_error() {
    let server = testbed();
    let client = server.client("testbed").await;
    let reply = client.command("throw", "").await;
    assert_eq!(reply["status"], "failed", "{reply}");
    assert_eq!(reply["actions"][0]["type"], "error");
    assert_eq!(reply["actions"][0]["display"], "toast");
    let message = reply["actions"][0]["message"].as_str().unwrap();
    assert!(
        !message.contains("boom"),
        "the client must not see the script's error text: {message}"
    );
    let log = server.wait_for_log("[FAILED]");
    assert!(
        log.contains("events/10-main.rhai:"),
        "the log names the script position:\n{log}"
    );
    assert!(
        log.contains("boom from the handler"),
        "the log has the reason:\n{log}"
    );
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_while_other_sessions_still_answer() {
    let server = testbed();
    let looping = server.client("testbed").await;
    let other = server.client("testbed").await;
    let mut loop_socket = looping.socket().await;
    let mut other_socket = other.socket().await;
    let started = std::time::Instant::now();
    send(
        &mut loop_socket,
        &json!({"type":"command","seq":1,"name":"spin","param":""}),
    )
    .await;
    // While the loop runs, the other session is answered promptly, several times.
    for seq in 0..5 {
        let reply = command(&mut other_socket, seq, "toast_map", "still here").await;
        assert_eq!(reply["status"], "ok");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_millis(450),
        "other session was held up: {:?}",
        started.elapsed()
    );
    let reply = receive(&mut loop_socket).await;
    let elapsed = started.elapsed();
    assert_eq!(reply["status"], "failed", "{reply}");
    assert_eq!(reply["seq"], 1);
    // The testbed's limit is 500 ms.
    assert!(
        elapsed >= std::time::Duration::from_millis(450)
            && elapsed < std::time::Duration::from_secs(3),
        "stopped after {elapsed:?}"
    );
    let log = server.wait_for_log("wall-clock");
    assert!(log.contains("events/10-main.rhai:"), "{log}");
    // The looping session still works afterwards.
    assert_eq!(
        command(&mut loop_socket, 2, "toast_map", "again").await["status"],
        "ok"
    );
}

#[tokio::test]
async fn a_non_string_answer_is_ok_with_a_warning() {
    let server = testbed();
    let client = server.client("testbed").await;
    assert_reply(
        "number",
        &client.command("number", "").await,
        "ok",
        json!([]),
    );
    server.wait_for_log("ignored part of the answer");
}

#[tokio::test]
async fn rollback_restores_the_last_valid_value() {
    let server = testbed();
    let client = server.client("testbed").await;
    let mut socket = client.socket().await;
    let set = |seq: u64, value: &str| json!({"type":"command","seq":seq,"object":"thermostat","name":"setpoint","param":value});
    send(&mut socket, &set(1, "21")).await;
    assert_eq!(receive(&mut socket).await["status"], "ok");
    send(&mut socket, &set(2, "35")).await;
    let reply = receive(&mut socket).await;
    assert_reply(
        "setpoint 35",
        &reply,
        "error",
        json!([
            {"type":"error","message":"35 is above the limit of 28","display":"tooltip","object":"thermostat"},
            {"type":"rollback","object":"thermostat","value":"21"},
        ]),
    );
    // A refused value never becomes the valid one.
    send(&mut socket, &set(3, "40")).await;
    assert_eq!(
        receive(&mut socket).await["actions"][1],
        json!({"type":"rollback","object":"thermostat","value":"21"})
    );
    send(&mut socket, &set(4, "25")).await;
    assert_eq!(receive(&mut socket).await["status"], "ok");
    send(&mut socket, &set(5, "30")).await;
    assert_eq!(receive(&mut socket).await["actions"][1]["value"], "25");
}

#[tokio::test]
async fn rollback_without_a_previous_value_is_null() {
    let server = testbed();
    let client = server.client("testbed").await;
    let (_, reply) = client
        .post(&json!({"type":"command","seq":1,"object":"t2","name":"setpoint","param":"99"}))
        .await;
    assert_eq!(
        reply["actions"][1],
        json!({"type":"rollback","object":"t2","value":null})
    );
}

#[tokio::test]
async fn closing_a_page_opened_by_a_command_calls_close() {
    let server = testbed();
    let client = server.client("testbed").await;
    let mut socket = client.socket().await;
    send(
        &mut socket,
        &json!({"type":"command","seq":1,"object":"alarmButton","name":"open","param":"zone4"}),
    )
    .await;
    assert_reply(
        "open",
        &receive(&mut socket).await,
        "ok",
        json!([{"type":"page","page":"popup2"}]),
    );
    send(
        &mut socket,
        &json!({"type":"page_closed","seq":2,"page":"popup2"}),
    )
    .await;
    let reply = receive(&mut socket).await;
    assert_eq!(reply["seq"], 2);
    assert_reply(
        "page_closed",
        &reply,
        "ok",
        json!([{"type":"toast","message":"closed zone4/close","duration":null,"level":null,"duplicate":false,"close":false}]),
    );
    server.wait_for_log(r#"name="open" param="zone4/close" [OK]"#);
    // Closed once: a second report has nothing to call.
    send(
        &mut socket,
        &json!({"type":"page_closed","seq":3,"page":"popup2"}),
    )
    .await;
    assert_reply(
        "second page_closed",
        &receive(&mut socket).await,
        "ok",
        json!([]),
    );
}

#[tokio::test]
async fn commands_need_a_session() {
    let server = testbed();
    let http = reqwest::Client::new();
    let response = http
        .post(server.url("/testbed/api/command"))
        .body(r#"{"type":"command","name":"say","param":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "rejected");
    let response = http
        .post(server.url("/nosuch/api/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn session_cookie_flags() {
    let server = testbed();
    let client = server.client("testbed").await;
    let cookie = client.set_cookie.to_ascii_lowercase();
    assert!(cookie.contains("httponly"), "{cookie}");
    assert!(cookie.contains("samesite=strict"), "{cookie}");
    assert!(cookie.contains("path=/testbed"), "{cookie}");
    assert_eq!(client.session.len(), 32);
    // Loading a page without a cookie starts a session too.
    let response = reqwest::get(server.url("/testbed/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("set-cookie").is_some());
    assert!(response.text().await.unwrap().contains("Testbed home"));
}

#[tokio::test]
async fn malformed_http_bodies_get_a_json_4xx() {
    let server = testbed();
    let client = server.client("testbed").await;
    for body in [
        "not json",
        r#"{"type":"command"}"#,
        r#"{"type":"explode","seq":3}"#,
        "[]",
        "",
    ] {
        let (status, reply) = client.post_raw(body.to_string()).await;
        assert_eq!(status, 400, "sent {body}, got {reply}");
        assert_eq!(reply["status"], "rejected", "sent {body}, got {reply}");
        assert!(
            reply["reason"]
                .as_str()
                .unwrap()
                .starts_with("malformed frame"),
            "{reply}"
        );
    }
    let huge =
        json!({"type":"command","seq":9,"name":"say","param":"x".repeat(70 * 1024)}).to_string();
    let (status, reply) = client.post_raw(huge).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["status"], "rejected");
    // The session still works.
    assert_eq!(client.command("say", "!").await["status"], "ok");
}

#[tokio::test]
async fn malformed_frames_are_rejected_and_the_socket_stays_usable() {
    let server = testbed();
    let client = server.client("testbed").await;
    let mut socket = client.socket().await;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    for (frame, seq) in [
        ("garbage", Value::Null),
        (r#"{"type":"command","seq":4}"#, json!(4)),
        (r#"{"seq":5,"type":"fly"}"#, json!(5)),
    ] {
        socket.send(Message::text(frame)).await.unwrap();
        let reply = receive(&mut socket).await;
        assert_eq!(reply["status"], "rejected", "sent {frame}, got {reply}");
        assert_eq!(reply["seq"], seq, "sent {frame}, got {reply}");
    }
    socket.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(receive(&mut socket).await["status"], "rejected");
    // Bigger than the project's 64 KiB limit but under the hard limit: rejected, connection kept.
    send(
        &mut socket,
        &json!({"type":"command","seq":6,"name":"say","param":"x".repeat(100 * 1024)}),
    )
    .await;
    let reply = receive(&mut socket).await;
    assert_eq!(reply["status"], "rejected", "{reply}");
    assert_eq!(reply["seq"], 6, "{reply}");
    assert!(
        reply["reason"].as_str().unwrap().contains("exceeds"),
        "{reply}"
    );
    assert_eq!(
        command(&mut socket, 7, "say", "page:home").await["actions"][0]["page"],
        "home"
    );
}

#[tokio::test]
async fn cross_origin_websocket_is_refused() {
    let server = testbed();
    let client = server.client("testbed").await;
    let error = client
        .socket_with_origin(Some("http://evil.example"))
        .await
        .expect_err("must be refused");
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 403),
        other => panic!("expected an HTTP 403, got {other:?}"),
    }
    let own = format!("http://{}", server.addr);
    assert!(
        client.socket_with_origin(Some(&own)).await.is_ok(),
        "same-origin sockets work"
    );
}

#[tokio::test]
async fn commands_on_one_socket_are_answered_in_order() {
    let server = testbed();
    let client = server.client("testbed").await;
    let mut socket = client.socket().await;
    send(
        &mut socket,
        &json!({"type":"command","seq":1,"name":"slow","param":""}),
    )
    .await;
    send(
        &mut socket,
        &json!({"type":"command","seq":2,"name":"say","param":"!"}),
    )
    .await;
    assert_eq!(receive(&mut socket).await["seq"], 1);
    assert_eq!(receive(&mut socket).await["seq"], 2);
}

#[tokio::test]
async fn metrics_count_commands_sessions_and_sockets() {
    let server = testbed();
    let client = server.client("testbed").await;
    client.command("say", "!").await;
    client.command("nobody", "").await;
    client.command("throw", "").await;
    let mut socket = client.socket().await;
    // The connection counts once it is open; its first frame (the
    // configuration) is written after that.
    common::receive_push(&mut socket, "config").await;
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "switchboard_commands_total{status=\"ok\"} 1",
        "switchboard_commands_total{status=\"unhandled\"} 1",
        "switchboard_commands_total{status=\"failed\"} 1",
        "switchboard_handler_seconds_count 3",
        "switchboard_sessions 1",
        "switchboard_websocket_connections 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}
