//! The WebSocket transport at the byte level: what happens to upgrade
//! requests the server does not take, frames that arrive right behind the
//! handshake, and messages over the hard size limit.

mod common;

use std::time::Duration;

use common::{Server, command, receive};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

fn testbed() -> Server {
    Server::start(&common::test_projects())
}

/// A handshake request for `path`, with `extra` header lines.
fn handshake(server: &Server, method: &str, path: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n",
        server.addr
    )
}

/// Sends `request` on a new connection; returns the response head and
/// whatever followed it so far.
async fn exchange(server: &Server, request: &[u8]) -> (TcpStream, String, Vec<u8>) {
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(common::REPLY_TIMEOUT, stream.read(&mut buffer))
            .await
            .expect("a response within the timeout")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..n]);
    };
    let rest = received.split_off(end);
    (stream, String::from_utf8(received).unwrap(), rest)
}

/// Sends `request`, expects an HTTP error response and the connection
/// closed after it; returns the status line, the head and the JSON body.
async fn refused(server: &Server, request: &str) -> (String, String, Value) {
    let (mut stream, head, mut body) = exchange(server, request.as_bytes()).await;
    tokio::time::timeout(common::REPLY_TIMEOUT, stream.read_to_end(&mut body))
        .await
        .expect("the server closes the connection after refusing")
        .unwrap();
    let status = head.lines().next().unwrap().to_string();
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("connection: close"), "{head}");
    assert!(lower.contains("content-type: application/json"), "{head}");
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    (status, head, json)
}

/// A client text frame (masked, as RFC 6455 requires).
fn client_text_frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn an_upgrade_request_anywhere_else_gets_an_http_error_and_the_server_keeps_serving() {
    let server = testbed();
    let client = server.client("testbed").await;
    let cookie = format!("Cookie: sb_session={}\r\n", client.session);
    for (method, path, status) in [
        ("GET", "/testbed/", "404"),
        ("GET", "/", "404"),
        ("GET", "/testbed/api/ws/extra", "404"),
        ("POST", "/testbed/api/ws", "400"),
    ] {
        let (line, _, body) = refused(&server, &handshake(&server, method, path, &cookie)).await;
        assert!(
            line.starts_with(&format!("HTTP/1.1 {status} ")),
            "{method} {path}: {line}"
        );
        assert_eq!(body["status"], "rejected", "{method} {path}: {body}");
    }
    // Plain requests and real WebSockets still work.
    let page = reqwest::get(server.url("/testbed/")).await.unwrap();
    assert_eq!(page.status(), 200);
    let mut socket = client.socket().await;
    assert_eq!(command(&mut socket, 1, "say", "!").await["status"], "ok");
}

#[tokio::test]
async fn a_refused_handshake_gets_the_status_and_json_body_of_the_routes() {
    let server = testbed();
    let client = server.client("testbed").await;
    let cookie = format!("Cookie: sb_session={}\r\n", client.session);
    let ws = "/testbed/api/ws";
    let cases = [
        (
            handshake(&server, "GET", "/nowhere/api/ws", &cookie),
            "404",
            "no such project",
        ),
        (handshake(&server, "GET", ws, ""), "401", "no session"),
        (
            handshake(
                &server,
                "GET",
                ws,
                &format!("{cookie}Origin: http://evil.example\r\n"),
            ),
            "403",
            "cross-origin request refused",
        ),
        (
            handshake(&server, "GET", "/testbed/api/ws?tab=a&tab=b", &cookie),
            "400",
            "bad query",
        ),
        (
            handshake(&server, "GET", ws, &cookie).replace("Version: 13", "Version: 8"),
            "400",
            "WebSocket handshake failed: unsupported WebSocket version",
        ),
        (
            handshake(&server, "GET", ws, &cookie).replace("Connection: Upgrade", "Connection: x"),
            "400",
            "WebSocket handshake failed: connection upgrade is expected",
        ),
        (
            handshake(&server, "GET", ws, &cookie).replace("Sec-WebSocket-Key: ", "X-Key: "),
            "400",
            "WebSocket handshake failed: unknown WebSocket key",
        ),
    ];
    for (request, status, reason) in cases {
        let (line, _, body) = refused(&server, &request).await;
        assert!(
            line.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request}: {line}"
        );
        assert!(
            body["reason"].as_str().unwrap().starts_with(reason),
            "{request}: {body}"
        );
        assert_eq!(body["status"], "rejected", "{body}");
    }
    // Without `Upgrade: websocket` the request reaches the routes, which
    // answer the same way.
    let response = client
        .http
        .get(format!("{}/api/ws", client.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["reason"],
        "WebSocket handshake failed: WebSocket upgrade is expected"
    );
}

#[tokio::test]
async fn a_frame_sent_right_behind_the_handshake_is_answered() {
    let server = testbed();
    let client = server.client("testbed").await;
    let mut request = handshake(
        &server,
        "GET",
        "/testbed/api/ws?tab=t1&page=home",
        &format!("Cookie: sb_session={}\r\n", client.session),
    )
    .into_bytes();
    // One write: the frame follows the request in the same segment.
    request.extend(client_text_frame(
        &json!({"type":"command","seq":1,"name":"say","param":"!"}).to_string(),
    ));
    let (stream, head, rest) = exchange(&server, &request).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let mut socket = WebSocketStream::from_partially_read(
        MaybeTlsStream::Plain(stream),
        rest,
        Role::Client,
        None,
    )
    .await;
    let reply = receive(&mut socket).await;
    assert_eq!(reply["seq"], 1, "{reply}");
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(command(&mut socket, 2, "say", "!").await["status"], "ok");
}

#[tokio::test]
async fn a_message_over_the_hard_limit_closes_the_socket_with_1009() {
    let server = testbed();
    let client = server.client("testbed").await;
    let mut socket = client.socket().await;
    let huge = json!({"type":"command","seq":1,"name":"say","param":"x".repeat(1 << 20)});
    // The server may close before it has read everything.
    let _ = socket.send(Message::text(huge.to_string())).await;
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return Some(u16::from(frame.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the socket is closed");
    assert_eq!(code, Some(1009));
    // The server goes on.
    let mut socket = client.socket().await;
    assert_eq!(command(&mut socket, 1, "say", "!").await["status"], "ok");
}
