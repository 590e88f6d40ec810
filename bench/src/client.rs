//! The client side of the protocol, as lean as it can be so that the load
//! client spends little of the machine it shares with the server: a
//! keep-alive HTTP/1.1 connection written by hand (session creation and the
//! command endpoint), WebSocket connections with small buffers, and frames
//! built and replies read without building JSON trees.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Socket = WebSocketStream<TcpStream>;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A load target: a server and one of its projects.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub project: String,
}

impl Target {
    /// Refuses anything but a loopback address: the suite loads this
    /// machine only.
    pub fn new(addr: SocketAddr, project: &str) -> Result<Target, Error> {
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{addr} is not a loopback address; the suite only loads this machine"
            )
            .into());
        }
        Ok(Target {
            addr,
            project: project.to_string(),
        })
    }
}

/// An HTTP response as far as the suite cares.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub session_cookie: Option<String>,
    pub body: Vec<u8>,
}

/// One keep-alive HTTP/1.1 connection. Bodies must come with
/// `Content-Length` (actix always sends one for these small answers).
pub struct HttpConnection {
    stream: TcpStream,
    buffer: Vec<u8>,
    host: String,
}

impl HttpConnection {
    pub async fn open(addr: SocketAddr) -> Result<HttpConnection, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConnection {
            stream,
            buffer: Vec::with_capacity(1024),
            host: addr.to_string(),
        })
    }

    /// Sends a GET and reads the whole response.
    pub async fn get(&mut self, path: &str) -> Result<Response, Error> {
        let request = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", self.host);
        self.stream.write_all(request.as_bytes()).await?;
        self.read_response().await
    }

    /// Sends a POST and reads the whole response.
    pub async fn post(
        &mut self,
        path: &str,
        cookie: Option<&str>,
        body: &str,
    ) -> Result<Response, Error> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            self.host,
            body.len()
        );
        if let Some(cookie) = cookie {
            request.push_str("cookie: sb_session=");
            request.push_str(cookie);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        request.push_str(body);
        self.stream.write_all(request.as_bytes()).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<Response, Error> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = parsed.parse(&self.buffer)? {
                let status = parsed.code.unwrap_or(0);
                let mut length = None;
                let mut session_cookie = None;
                for header in parsed.headers.iter() {
                    if header.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(header.value)?
                            .trim()
                            .parse::<usize>()
                            .ok();
                    } else if header.name.eq_ignore_ascii_case("set-cookie") {
                        let value = std::str::from_utf8(header.value)?;
                        if let Some(rest) = value.strip_prefix("sb_session=") {
                            session_cookie =
                                Some(rest.split(';').next().unwrap_or_default().to_string());
                        }
                    } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err("chunked responses are not supported by the load client".into());
                    }
                }
                let length = length.ok_or("a response without content-length")?;
                while self.buffer.len() < head_len + length {
                    self.fill().await?;
                }
                let body = self.buffer[head_len..head_len + length].to_vec();
                self.buffer.drain(..head_len + length);
                return Ok(Response {
                    status,
                    session_cookie,
                    body,
                });
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), Error> {
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk).await?;
        if read == 0 {
            return Err("the server closed the connection".into());
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }
}

/// `POST /<project>/api/session` without a cookie: a new session's id.
pub async fn new_session(
    connection: &mut HttpConnection,
    target: &Target,
) -> Result<String, Error> {
    let response = connection
        .post(&format!("/{}/api/session", target.project), None, "")
        .await?;
    if response.status != 200 {
        return Err(format!(
            "session creation answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )
        .into());
    }
    response
        .session_cookie
        .ok_or_else(|| "no sb_session cookie in the answer".into())
}

/// Small buffers: the idle figure holds 15 000 sockets in this process.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens the project's WebSocket with the session cookie.
pub async fn connect(target: &Target, session: &str) -> Result<Socket, Error> {
    let url = format!("ws://{}/{}/api/ws", target.addr, target.project);
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "cookie",
        HeaderValue::from_str(&format!("sb_session={session}"))?,
    );
    let stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let (socket, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(socket_config())).await?;
    Ok(socket)
}

/// One command as the load client sends it.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    pub seq: u64,
    /// The command's id, as the browser runtime gives every command
    /// (`<tab>-<seq>`): the server runs it exactly once and keeps its answer.
    pub id: Option<&'a str>,
    pub name: &'a str,
    pub param: &'a str,
}

impl<'a> Command<'a> {
    /// A command without an id.
    pub fn plain(seq: u64, name: &'a str, param: &'a str) -> Command<'a> {
        Command {
            seq,
            id: None,
            name,
            param,
        }
    }

    /// The command's frame.
    pub fn frame(&self) -> String {
        let Command {
            seq,
            id,
            name,
            param,
        } = *self;
        // Ids, names and params the suite sends are plain ASCII without
        // quotes or backslashes, so no escaping is needed.
        debug_assert!(
            [name, param, id.unwrap_or_default()]
                .iter()
                .all(|text| !text.contains(['"', '\\']))
        );
        match id {
            Some(id) => format!(
                r#"{{"type":"command","seq":{seq},"id":"{id}","name":"{name}","param":"{param}"}}"#
            ),
            None => {
                format!(r#"{{"type":"command","seq":{seq},"name":"{name}","param":"{param}"}}"#)
            }
        }
    }
}

/// What the load client reads of a message: pushes have a `type`, replies
/// a `seq` and a `status`. Actions are skipped, not built.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Option<&'a str>,
    pub seq: Option<u64>,
    #[serde(borrow)]
    pub status: Option<&'a str>,
}

/// The outcome of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `status` was `ok`.
    Ok,
    /// Any other status (`failed`, `error`, `rejected`…).
    NotOk,
}

fn outcome_of(status: Option<&str>) -> Outcome {
    if status == Some("ok") {
        Outcome::Ok
    } else {
        Outcome::NotOk
    }
}

/// Sends one command on a socket and waits for its reply, skipping pushes
/// and pings. `Err` when the socket fails, closes or the reply does not
/// come within `timeout`.
pub async fn ws_command(
    socket: &mut Socket,
    command: Command<'_>,
    timeout: Duration,
) -> Result<Outcome, Error> {
    socket.send(Message::text(command.frame())).await?;
    ws_reply(socket, command.seq, timeout).await
}

/// Waits for the reply with `seq`, skipping pushes.
pub async fn ws_reply(socket: &mut Socket, seq: u64, timeout: Duration) -> Result<Outcome, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .map_err(|_| format!("no reply to seq {seq} within {timeout:?}"))?
            .ok_or("the server closed the socket")??;
        match message {
            Message::Text(text) => {
                let incoming: Incoming = serde_json::from_str(&text)?;
                if incoming.kind.is_some() {
                    continue;
                }
                if incoming.seq != Some(seq) {
                    return Err(format!("reply to seq {seq} has seq {:?}", incoming.seq).into());
                }
                return Ok(outcome_of(incoming.status));
            }
            Message::Close(frame) => return Err(format!("socket closed: {frame:?}").into()),
            _ => {}
        }
    }
}

/// Sends one command over `POST /<project>/api/command`.
pub async fn http_command(
    connection: &mut HttpConnection,
    path: &str,
    session: &str,
    command: Command<'_>,
) -> Result<Outcome, Error> {
    let response = connection
        .post(path, Some(session), &command.frame())
        .await?;
    if response.status != 200 {
        return Ok(Outcome::NotOk);
    }
    let incoming: Incoming = serde_json::from_slice(&response.body)?;
    Ok(outcome_of(incoming.status))
}

/// The store's group-commit counters from the server's `/metrics`
/// (`switchboard_store_commits_total`, `switchboard_store_batches_total`
/// and, when the server has it, the time spent committing); `None` when
/// the server has no such page (the baselines).
pub async fn store_counters(addr: SocketAddr) -> Option<StoreCounters> {
    let mut connection = HttpConnection::open(addr).await.ok()?;
    let response = connection.get("/metrics").await.ok()?;
    if response.status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&response.body);
    let counter = |name: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    };
    Some(StoreCounters {
        commits: counter("switchboard_store_commits_total")?,
        batches: counter("switchboard_store_batches_total")?,
        commit_seconds: counter("switchboard_store_commit_seconds_total"),
    })
}

/// See [`store_counters`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreCounters {
    pub commits: f64,
    pub batches: f64,
    pub commit_seconds: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_replies() {
        assert_eq!(
            Command::plain(3, "ping", "").frame(),
            r#"{"type":"command","seq":3,"name":"ping","param":""}"#
        );
        let browser = Command {
            seq: 4,
            id: Some("ab12-4"),
            name: "ping",
            param: "7",
        };
        assert_eq!(
            browser.frame(),
            r#"{"type":"command","seq":4,"id":"ab12-4","name":"ping","param":"7"}"#
        );
        let reply: Incoming =
            serde_json::from_str(r#"{"seq":3,"status":"ok","actions":[{"type":"toast"}]}"#)
                .unwrap();
        assert_eq!(
            (reply.kind, reply.seq, reply.status),
            (None, Some(3), Some("ok"))
        );
        let push: Incoming = serde_json::from_str(
            r#"{"type":"ui","set":[{"id":"clock","attr":"text","value":"1"}]}"#,
        )
        .unwrap();
        assert_eq!(push.kind, Some("ui"));
    }

    #[test]
    fn only_loopback_targets() {
        assert!(Target::new("127.0.0.1:80".parse().unwrap(), "p").is_ok());
        assert!(Target::new("10.0.0.1:80".parse().unwrap(), "p").is_err());
    }
}
