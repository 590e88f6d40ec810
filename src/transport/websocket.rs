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
use tokio_tungstenite::tungstenite::{Bytes, Error as SocketError, Message, Utf8Bytes};
use tracing::{debug, info};

use super::{
    HARD_FRAME_LIMIT, RequestError, State, WebConfig, address_of, authorized, authorized_by,
    bad_query,
};
use crate::project::Project;
use crate::protocol::Rejection;
use crate::runtime::{self, Connection, Incoming, Runtime};
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

/// Bytes read from the socket at a time, and the read buffer an idle
/// connection keeps. Frames are small JSON; a larger message grows the
/// buffer while it is read.
const READ_BUFFER: usize = 2048;

/// Frames queued for a connection are written together, in one write
/// (one syscall, one TCP segment when they fit) rather than one each: a
/// busy panel (live points, a burst of pushes) catches up at a fraction of
/// the cost. At most this many bytes are gathered before they go out.
const WRITE_BUFFER: usize = 8 * 1024;

/// At most this many queued frames go out behind the one that woke the
/// connection, so that reading the socket and the heartbeat get their turn.
const MAX_COALESCED: usize = 64;

/// The codec settings of every connection.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Frames gather up to this many bytes until flushed (see
        // `send_queued`); a lone frame is written at once.
        .write_buffer_size(WRITE_BUFFER)
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
/// ends or the server stops; writes replies and pushed frames. The
/// connection's life (what is sent first, the events, running frames in
/// order) is the runtime's [`Connection`]; this loop only moves messages
/// between it and the socket, answers pings and notices a close.
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
    let mut shutdown = runtime.shutdown_signal();
    let (connection, mut pushes) =
        Box::pin(Connection::open(runtime, project, session, caller, page)).await;
    let mut stopping = pin!(shutdown.wait_for(|stopping| *stopping));
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let mut last_heard = Instant::now();
    // A frame read while the connection's queue is full: reading stops
    // until it fits.
    let mut stalled: Option<Incoming> = None;
    let close = loop {
        tokio::select! {
            message = ws.next(), if stalled.is_none() => {
                last_heard = Instant::now();
                // Rejections queue behind earlier frames, so every answer
                // comes back in the order its frame was sent.
                let frame = match message {
                    Some(Ok(Message::Text(text))) => connection.parse(&text),
                    Some(Ok(Message::Binary(_))) => {
                        Box::new(Err(Rejection::new(None, "binary frames are not supported; send JSON text")))
                    }
                    // tungstenite answers pings itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(error)) => {
                        // Usually a tab that vanished without a close frame.
                        info!(session = connection.session().log_id(), "WebSocket ended: {error}");
                        break closing_for(&error);
                    }
                };
                match connection.frames().try_send(frame) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(frame)) => stalled = Some(frame),
                    Err(mpsc::error::TrySendError::Closed(_)) => break None,
                }
            }
            permit = connection.frames().reserve(), if stalled.is_some() => match (permit, stalled.take()) {
                (Ok(permit), Some(frame)) => {
                    permit.send(frame);
                    last_heard = Instant::now();
                }
                _ => break None,
            },
            pushed = pushes.recv() => match pushed {
                Some(frame) => {
                    if send_queued(&mut ws, frame, &mut pushes).await.is_err() {
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
    drop((connection, stalled, pushes));
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

/// Writes `first` and the frames already queued behind it (up to
/// [`MAX_COALESCED`]), in their order, with one flush: one write where
/// there were as many as frames. Gives up on a client that takes nothing
/// for [`SEND_TIMEOUT`]. A frame left in the queue is sent on the next turn;
/// a closed queue is noticed there too.
async fn send_queued<S>(
    ws: &mut WebSocketStream<S>,
    first: Frame,
    pushes: &mut mpsc::Receiver<Frame>,
) -> Result<(), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let write = async {
        let mut next = Some(first);
        let mut sent = 0;
        while let Some(frame) = next.take() {
            if let Ok(text) = Utf8Bytes::try_from(frame.into_bytes()) {
                ws.feed(Message::Text(text)).await?;
            }
            sent += 1;
            if sent < MAX_COALESCED {
                next = pushes.try_recv().ok();
            }
        }
        ws.flush().await
    };
    match tokio::time::timeout(SEND_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
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
