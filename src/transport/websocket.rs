//! WebSockets, served off the HTTP dispatcher.
//!
//! actix-http's HTTP/1 dispatcher keeps two 8 KiB buffers for as long as its
//! connection lives, which for a WebSocket is the whole visit. So the server
//! gives it an upgrade service ([`Upgrades`]): a request with
//! `Upgrade: websocket` leaves the dispatcher with its socket, is checked
//! here exactly as the routes check an API call, answered `101`, and served
//! by tokio-tungstenite with small buffers on a task of its own (or refused
//! with the HTTP error and JSON body the routes would give). Only
//! `GET /<project>/api/ws` upgrades.

use std::future::{Future, ready};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_codec::{AsyncRead, AsyncWrite, Framed, FramedParts};
use actix_http::ws::HandshakeError;
use actix_http::{Method, Request, h1};
use actix_web::body::MessageBody;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as SocketError, Message};
use tracing::{debug, error, info};

use super::{
    HARD_FRAME_LIMIT, RequestError, State, WebConfig, address_of, authorized, authorized_by,
    bad_query,
};
use crate::metrics::METRICS;
use crate::project::Project;
use crate::protocol::{self, ClientFrame, Push, Rejection};
use crate::runtime::{self, Runtime};
use crate::session::{Frame, Session};

/// Ping this often, and drop a connection that has sent nothing (not even a
/// pong) for `IDLE_CUTOFF`.
const PING_INTERVAL: Duration = Duration::from_secs(20);
const IDLE_CUTOFF: Duration = Duration::from_secs(60);

/// A client that takes no data for this long (its socket buffers full) is
/// dropped: the connection cannot do anything else while it waits.
const SEND_TIMEOUT: Duration = IDLE_CUTOFF;

/// How long a closing connection waits for the client's close frame before
/// dropping the TCP connection.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Frames of one connection waiting for their turn; they run in order.
const PENDING_FRAMES: usize = 64;

/// Pushed frames (and replies) waiting to be written to one connection. A
/// browser that falls this far behind misses pushes (it gets current UI
/// state again on reconnect) rather than holding memory for everyone.
const PUSH_QUEUE: usize = 256;

/// Bytes read from the socket at a time, and the read buffer an idle
/// connection keeps. Frames are small JSON; a larger message grows the
/// buffer while it is read.
const READ_BUFFER: usize = 2048;

/// The codec settings of every connection.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Each message is written (and the buffer emptied) when sent.
        .write_buffer_size(0)
        .max_message_size(Some(HARD_FRAME_LIMIT))
        .max_frame_size(Some(HARD_FRAME_LIMIT))
}

#[derive(Debug, Deserialize)]
pub(super) struct SocketQuery {
    /// The browser tab's id (kept in its sessionStorage): a new one means a
    /// new tab or window, which gets `pageStartup`.
    tab: Option<String>,
    page: Option<String>,
}

/// The upgrade service: takes every request the HTTP/1 dispatcher sees
/// with `Upgrade: websocket`, together with its connection.
#[derive(Clone)]
pub struct Upgrades {
    runtime: Arc<Runtime>,
    config: web::Data<WebConfig>,
}

/// A handshake that passed every check.
struct Accepted {
    project: Arc<Project>,
    session: Arc<Session>,
    caller: runtime::Caller,
    page: Option<String>,
    /// `Sec-WebSocket-Accept`.
    accept: [u8; 28],
}

impl Upgrades {
    pub fn new(runtime: Arc<Runtime>, config: web::Data<WebConfig>) -> Upgrades {
        Upgrades { runtime, config }
    }

    /// Takes the connection off the dispatcher at once (so that its state
    /// and buffers are freed) and serves it on a task of its own.
    pub fn accept<T>(
        self,
        req: Request,
        framed: Framed<T, h1::Codec>,
    ) -> impl Future<Output = Result<(), actix_http::Error>> + 'static
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        actix_web::rt::spawn(self.upgrade(req, framed.into_parts()));
        ready(Ok(()))
    }

    async fn upgrade<T>(self, req: Request, parts: FramedParts<T, h1::Codec>)
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let mut io = parts.io;
        // A client may send its first frame right behind the handshake.
        let early = parts.read_buf.to_vec();
        // Responses to requests pipelined before this one, not yet written.
        if !parts.write_buf.is_empty() && io.write_all(&parts.write_buf).await.is_err() {
            return;
        }
        drop((parts.read_buf, parts.write_buf, parts.codec));
        let accepted = match self.handshake(&req) {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(path = req.path(), "WebSocket handshake refused: {error}");
                refuse(io, &error).await;
                return;
            }
        };
        drop(req);
        let mut response = Vec::with_capacity(160);
        response.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: ",
        );
        response.extend_from_slice(&accepted.accept);
        response.extend_from_slice(b"\r\n\r\n");
        if io.write_all(&response).await.is_err() || io.flush().await.is_err() {
            return;
        }
        drop(response);
        let socket =
            WebSocketStream::from_partially_read(io, early, Role::Server, Some(socket_config()))
                .await;
        serve_connection(self.runtime, accepted, socket).await;
    }

    /// The checks of [`not_upgraded`], in the same order, then the
    /// handshake's own.
    fn handshake(&self, req: &Request) -> Result<Accepted, RequestError> {
        let name = req
            .path()
            .strip_prefix('/')
            .and_then(|path| path.strip_suffix("/api/ws"))
            .filter(|name| !name.is_empty() && !name.contains('/'))
            .ok_or(RequestError::NoWebSocket)?;
        if !self.config.allowed_hosts.allows(req.head().headers()) {
            return Err(RequestError::HostNotAllowed);
        }
        if req.method() != Method::GET {
            return Err(handshake_failed(HandshakeError::GetMethodRequired));
        }
        let query = web::Query::<SocketQuery>::from_query(req.uri().query().unwrap_or_default())
            .map_err(bad_query)?
            .into_inner();
        let headers = req.head().headers();
        // A page the user may not open is refused like the page itself;
        // an unknown one falls back to the start page.
        let page = query.page.as_deref().filter(|page| {
            self.runtime
                .project(name)
                .is_some_and(|p| p.pages.contains_key(*page))
        });
        let (project, session) = authorized_by(headers, &self.config, &self.runtime, name, page)?;
        actix_http::ws::verify_handshake(req.head()).map_err(handshake_failed)?;
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(handshake_failed(HandshakeError::BadWebsocketKey))?;
        Ok(Accepted {
            project,
            session,
            caller: runtime::Caller {
                tab: query.tab.filter(|t| !t.is_empty() && t.len() <= 64),
                address: address_of(req.peer_addr()),
            },
            page: query.page,
            accept: actix_http::ws::hash_key(key.as_bytes()),
        })
    }
}

fn handshake_failed(error: HandshakeError) -> RequestError {
    RequestError::Handshake(error.to_string())
}

/// Answers a refused handshake with the response the routes would give,
/// and closes the connection.
async fn refuse<T: AsyncWrite + Unpin>(mut io: T, error: &RequestError) {
    let (head, body) = error.error_response().into_parts();
    let body = body.try_into_bytes().unwrap_or_default();
    let status = head.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or_default()
    )
    .into_bytes();
    for (name, value) in head.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "x-content-type-options: nosniff\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    if io.write_all(&out).await.is_ok() {
        let _ = io.shutdown().await;
    }
}

/// `GET /<project>/api/ws` without `Upgrade: websocket` (a handshake never
/// gets here: the upgrade service takes it). Refused like a handshake that
/// fails, after the same checks.
pub(super) async fn not_upgraded(
    req: HttpRequest,
    state: State,
    name: web::Path<String>,
    _query: web::Query<SocketQuery>,
) -> Result<HttpResponse, RequestError> {
    authorized(&req, &state, &name, None)?;
    actix_http::ws::verify_handshake(req.head()).map_err(handshake_failed)?;
    // `Upgrade: websocket` with a chunked body stays with the dispatcher.
    Err(RequestError::Handshake(
        "a handshake request has no body".into(),
    ))
}

/// Reads frames until the client leaves, the heartbeat lapses, the session
/// ends or the server stops; writes replies and pushed frames. Frames run
/// one after the other on a worker task so that a slow handler never stops
/// this loop from answering pings or noticing a close. This task alone owns
/// the socket: the worker's replies come through the push queue.
async fn serve_connection<S>(runtime: Arc<Runtime>, accepted: Accepted, mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Accepted {
        project,
        session,
        caller,
        page,
        ..
    } = accepted;
    let (push_tx, mut pushes) = mpsc::channel::<Frame>(PUSH_QUEUE);
    let _ = push_tx.try_send(
        Push::Config {
            keystrokes: &project.settings.keystrokes,
        }
        .to_frame(),
    );
    let snapshot = runtime.ui_snapshot(&session);
    if !snapshot.is_empty() {
        let _ = push_tx.try_send(Push::Ui { set: &snapshot }.to_frame());
    }
    drop(snapshot);
    // Replies share the queue through a weak sender: the queue still closes
    // when the session drops its sender (the session ended), once the
    // running frame's reply is in it.
    let replies = push_tx.downgrade();
    let connection = session.connect(push_tx);
    METRICS.websocket_opened();
    Box::pin(runtime::connection_opened(
        &runtime,
        &project,
        &session,
        caller.tab.as_deref(),
        page.as_deref(),
    ))
    .await;
    drop(page);

    let (frames, pending) = mpsc::channel::<Box<Result<ClientFrame, Rejection>>>(PENDING_FRAMES);
    let worker = actix_web::rt::spawn(run_frames(
        runtime.clone(),
        project.name.clone(),
        session.clone(),
        replies,
        pending,
        caller,
    ));
    let limit = project.settings.max_frame_bytes;
    drop(project);
    let mut shutdown = runtime.shutdown_signal();
    drop(runtime);
    let mut stopping = pin!(shutdown.wait_for(|stopping| *stopping));
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let mut last_heard = Instant::now();
    // A frame read while `PENDING_FRAMES` wait: reading stops until it fits.
    let mut stalled: Option<Box<Result<ClientFrame, Rejection>>> = None;
    let close = loop {
        tokio::select! {
            message = ws.next(), if stalled.is_none() => {
                last_heard = Instant::now();
                // Rejections queue behind earlier frames, so every answer
                // comes back in the order its frame was sent.
                let frame = match message {
                    Some(Ok(Message::Text(text))) => {
                        let parsed = protocol::parse_frame(&text, limit);
                        if let Err(rejection) = &parsed {
                            debug!(session = session.log_id(), "rejected frame: {}", rejection.reason);
                        }
                        parsed
                    }
                    Some(Ok(Message::Binary(_))) => {
                        Err(Rejection::new(None, "binary frames are not supported; send JSON text"))
                    }
                    // tungstenite answers pings itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(error)) => {
                        // Usually a tab that vanished without a close frame.
                        info!(session = session.log_id(), "WebSocket ended: {error}");
                        break closing_for(&error);
                    }
                };
                match frames.try_send(Box::new(frame)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(frame)) => stalled = Some(frame),
                    Err(mpsc::error::TrySendError::Closed(_)) => break None,
                }
            }
            permit = frames.reserve(), if stalled.is_some() => match (permit, stalled.take()) {
                (Ok(permit), Some(frame)) => {
                    permit.send(frame);
                    last_heard = Instant::now();
                }
                _ => break None,
            },
            pushed = pushes.recv() => match pushed {
                Some(frame) => {
                    if send(&mut ws, Message::Text(frame)).await.is_err() {
                        break None;
                    }
                }
                // The session ended and dropped its senders.
                None => break Some(closing(CloseCode::Normal, "session ended")),
            },
            _ = heartbeat.tick() => {
                if stalled.is_none() && last_heard.elapsed() > IDLE_CUTOFF {
                    break Some(closing(CloseCode::Away, "heartbeat lapsed"));
                }
                if send(&mut ws, Message::Ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
            _ = &mut stopping => break Some(closing(CloseCode::Away, "server stopping")),
        }
    };
    session.disconnect(connection);
    METRICS.websocket_closed();
    // Frames already received still run to the end (their replies have
    // nowhere to go): a command the user sent is never half-done, and a
    // re-send after reconnecting is answered from its record.
    drop((frames, stalled, pushes, worker, session));
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if ws.close(close).await.is_ok() {
            // The client answers with its own close frame and then closes
            // the TCP connection; wait for that (or for the grace period).
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

fn closing(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// The close frame for a connection that failed: `1009` for a message over
/// the size limit, `1002` for any other protocol error, none when the
/// connection itself is gone.
fn closing_for(error: &SocketError) -> Option<CloseFrame> {
    let code = match error {
        SocketError::Capacity(CapacityError::MessageTooLong { .. }) => CloseCode::Size,
        // The client vanished: nobody to tell.
        SocketError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return None,
        SocketError::Capacity(_) | SocketError::Protocol(_) | SocketError::Utf8(_) => {
            CloseCode::Protocol
        }
        _ => return None,
    };
    Some(CloseFrame {
        code,
        reason: error.to_string().into(),
    })
}

/// Sends one message, giving up on a client that takes nothing for
/// [`SEND_TIMEOUT`].
async fn send<S>(ws: &mut WebSocketStream<S>, message: Message) -> Result<(), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn run_frames(
    runtime: Arc<Runtime>,
    project: String,
    session: Arc<Session>,
    replies: mpsc::WeakSender<Frame>,
    mut pending: mpsc::Receiver<Box<Result<ClientFrame, Rejection>>>,
    caller: runtime::Caller,
) {
    while let Some(frame) = pending.recv().await {
        // Held while the frame runs, so that its reply gets out even when
        // the frame ends the session (the queue closes once it is sent).
        // None: the connection is closing, nobody would read the reply.
        let Some(replies) = replies.upgrade() else {
            break;
        };
        // Looked up per frame: a hot reload replaces the project meanwhile.
        let Some(project) = runtime.project(&project) else {
            break;
        };
        let answer = match *frame {
            Ok(frame) => {
                Box::pin(runtime::run_frame(
                    &runtime,
                    project,
                    session.clone(),
                    frame,
                    &caller,
                ))
                .await
            }
            Err(rejection) => Err(rejection),
        };
        let text = match answer {
            Ok(reply) => serde_json::to_string(&reply),
            Err(rejection) => serde_json::to_string(&rejection),
        };
        let text = match text {
            Ok(text) => text,
            Err(error) => {
                error!("could not serialize a reply: {error}");
                continue;
            }
        };
        // Waits for room in the queue: a reply is never dropped while the
        // connection lives.
        if replies.send(Frame::from(text)).await.is_err() {
            break;
        }
    }
}
