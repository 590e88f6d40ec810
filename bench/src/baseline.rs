//! The baselines: the least an actix server must do to answer a Switchboard
//! command, so that each Switchboard figure can be given as a ratio.
//!
//! Both speak the client-visible part of the protocol the load client uses:
//! `POST /<project>/api/session` hands out an `sb_session` cookie (and keeps
//! nothing), then either `GET /<project>/api/ws` (a `config` push, then one
//! reply per command frame) or `POST /<project>/api/command` (the reply as
//! the body). A frame is parsed as JSON and answered with the reply
//! Switchboard gives `#{ toast: "ok" }`; no handler, no session, no log.
//!
//! The WebSocket baseline also answers a `broadcast` command the way the
//! bench project's handler does: a `ui` push of `param` to the `clock`
//! object of every connection, through one channel per connection as
//! Switchboard does. That is the floor of the broadcast figure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use actix_ws::AggregatedMessage;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Which transport a baseline serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WebSocket,
    Http,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    _kind: String,
    seq: Option<u64>,
    name: String,
    #[serde(default)]
    param: String,
}

#[derive(Serialize)]
struct Toast {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'static str,
    duration: Option<u64>,
    level: Option<&'static str>,
    duplicate: bool,
    close: bool,
}

#[derive(Serialize)]
struct Reply {
    seq: Option<u64>,
    status: &'static str,
    actions: [Toast; 1],
}

/// What Switchboard answers a frame whose handler returned `#{ toast: "ok" }`.
fn reply_to(text: &[u8]) -> String {
    let (seq, status) = match serde_json::from_slice::<Frame>(text) {
        Ok(frame) => {
            if frame.name == "broadcast" {
                broadcast(&frame.param);
            }
            (frame.seq, "ok")
        }
        Err(_) => (None, "rejected"),
    };
    let reply = Reply {
        seq,
        status,
        actions: [Toast {
            kind: "toast",
            message: "ok",
            duration: None,
            level: None,
            duplicate: false,
            close: false,
        }],
    };
    serde_json::to_string(&reply).expect("a reply serializes")
}

static SESSIONS: AtomicU64 = AtomicU64::new(0);

/// Pushes waiting to be written to one connection (Switchboard's size).
const PUSH_QUEUE: usize = 256;

type Pushes = mpsc::Sender<Arc<str>>;

/// The open connections' push channels.
static CONNECTIONS: Mutex<Vec<Pushes>> = Mutex::new(Vec::new());

/// One frame, shared by every connection, as Switchboard's `uiSet` does.
fn broadcast(value: &str) {
    let frame: Arc<str> = serde_json::json!({
        "type": "ui",
        "set": [{ "id": "clock", "attr": "text", "value": value }],
    })
    .to_string()
    .into();
    let mut connections = CONNECTIONS.lock().unwrap_or_else(|p| p.into_inner());
    connections.retain(|c| {
        !matches!(
            c.try_send(frame.clone()),
            Err(mpsc::error::TrySendError::Closed(_))
        )
    });
}

async fn session(project: web::Path<String>) -> HttpResponse {
    let id = SESSIONS.fetch_add(1, Ordering::Relaxed);
    HttpResponse::Ok()
        .insert_header((
            "set-cookie",
            format!("sb_session={id:032x}; HttpOnly; SameSite=Strict; Path=/{project}"),
        ))
        .json(serde_json::json!({ "status": "ok", "resumed": false }))
}

async fn command(body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(reply_to(&body))
}

async fn websocket(req: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
    let (response, mut ws, stream) = actix_ws::handle(&req, body)?;
    let mut stream = stream.aggregate_continuations();
    let (push_tx, mut pushes) = mpsc::channel::<Arc<str>>(PUSH_QUEUE);
    CONNECTIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(push_tx);
    actix_web::rt::spawn(async move {
        if ws
            .text(r#"{"type":"config","keystrokes":[]}"#)
            .await
            .is_err()
        {
            return;
        }
        loop {
            let sent = tokio::select! {
                message = stream.recv() => match message {
                    Some(Ok(AggregatedMessage::Text(text))) => ws.text(reply_to(text.as_bytes())).await,
                    Some(Ok(AggregatedMessage::Ping(bytes))) => ws.pong(&bytes).await,
                    Some(Ok(AggregatedMessage::Binary(_) | AggregatedMessage::Pong(_))) => Ok(()),
                    Some(Ok(AggregatedMessage::Close(_)) | Err(_)) | None => break,
                },
                Some(frame) = pushes.recv() => ws.text(frame.to_string()).await,
            };
            if sent.is_err() {
                return;
            }
        }
        let _ = ws.close(None).await;
    });
    Ok(response)
}

/// Serves one baseline on `bind` (port 0: any free port) until killed.
/// Prints `<name> listening on http://ADDR/` like Switchboard does.
pub fn serve(kind: Kind, bind: &str) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            let app = App::new().route("/{project}/api/session", web::post().to(session));
            match kind {
                Kind::WebSocket => app.route("/{project}/api/ws", web::get().to(websocket)),
                Kind::Http => app.route("/{project}/api/command", web::post().to(command)),
            }
        })
        .bind(bind)?;
        let name = match kind {
            Kind::WebSocket => "baseline-ws",
            Kind::Http => "baseline-http",
        };
        for addr in server.addrs() {
            println!("{name} listening on http://{addr}/");
        }
        server.run().await
    })
}

/// The address argument of a baseline binary: `--bind ADDR`, default
/// `127.0.0.1:0`.
pub fn bind_argument() -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--bind")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "127.0.0.1:0".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_echo_seq_like_switchboard() {
        let reply = reply_to(br#"{"type":"command","seq":7,"name":"ping","param":""}"#);
        assert_eq!(
            reply,
            r#"{"seq":7,"status":"ok","actions":[{"type":"toast","message":"ok","duration":null,"level":null,"duplicate":false,"close":false}]}"#
        );
        assert!(reply_to(b"nope").contains(r#""status":"rejected""#));
    }
}
