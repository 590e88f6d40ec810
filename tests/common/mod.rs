//! The fixture every integration test uses: the real `switchboard` binary on
//! an ephemeral port, its log kept and printed when a test fails, stopped on
//! drop; plus small HTTP and WebSocket client helpers.
#![allow(dead_code)]

pub mod accounts;
pub mod mosquitto;
pub mod nats;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for any single reply before failing.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn test_projects() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/projects")
}

pub fn demo_projects() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("projects")
}

pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    log: Arc<Mutex<String>>,
    pub projects: PathBuf,
    /// The server's own database folder, removed on drop.
    pub data: PathBuf,
}

/// A fresh, empty folder under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sb-test-{label}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies a project tree (for tests that edit files or need their own copy).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

impl Server {
    /// Starts the server on the projects under `projects` and waits until it listens.
    pub fn start(projects: &Path) -> Server {
        Self::start_with(projects, &[])
    }

    pub fn start_with(projects: &Path, extra_args: &[&str]) -> Server {
        Self::start_in(projects, &temp_dir("data"), extra_args)
    }

    /// Starts on a given data folder: a restart test starts a second server
    /// on the first one's folder.
    pub fn start_in(projects: &Path, data: &Path, extra_args: &[&str]) -> Server {
        Self::start_with_env(projects, data, extra_args, &[])
    }

    /// Starts with extra environment variables (a broker's URL, a password).
    pub fn start_with_env(
        projects: &Path,
        data: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .envs(env.iter().copied())
            .arg("--projects")
            .arg(projects)
            .args(["--bind", "127.0.0.1:0"])
            .arg("--database")
            .arg(data.join("switchboard.redb"))
            .args(extra_args)
            .env("SWITCHBOARD_LOG", "info")
            // Dev mode only where a test asks for it (`--dev`).
            .env_remove("SWITCHBOARD_DEV")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the switchboard binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        relay(child.stderr.take().unwrap(), log.clone());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut addr = None;
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            let announced = line.trim().strip_prefix("Switchboard listening on http://");
            let announced = announced.or_else(|| {
                line.trim()
                    .strip_prefix("Switchboard listening on https://")
            });
            if let Some(rest) = announced {
                addr = Some(rest.trim_end_matches('/').to_string());
                break;
            }
            line.clear();
        }
        relay(stdout.into_inner(), log.clone());
        let Some(addr) = addr else {
            let _ = child.kill();
            std::thread::sleep(Duration::from_millis(200));
            panic!("server did not start; its log:\n{}", log.lock().unwrap());
        };
        Server {
            child,
            addr,
            log,
            projects: projects.to_path_buf(),
            data: data.to_path_buf(),
        }
    }

    /// Kills the process with SIGKILL (no clean stop) and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new server on the same projects and data folder.
    pub fn restart(&self) -> Server {
        Server::start_in(&self.projects, &self.data, &[])
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` (log lines are written after replies).
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal and waits for the process to exit; returns how long it took.
    pub fn signal_and_wait(&mut self, signal: &str) -> Duration {
        let started = Instant::now();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client holding a fresh session of `project` (cookie included).
    pub async fn client(&self, project: &str) -> Client {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            // No idle connections kept: the server closes them after its
            // keep-alive, and a test that waits longer would hit a closed one.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let response = http
            .post(self.url(&format!("/{project}/api/session")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "session creation failed: {:?}",
            response.text().await
        );
        let cookie = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("sb_session="))
            .expect("a session cookie")
            .to_string();
        let session = cookie
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("sb_session=")
            .to_string();
        Client {
            http,
            base: self.url(&format!("/{project}")),
            ws_base: self.ws_url(&format!("/{project}")),
            session,
            set_cookie: cookie,
        }
    }
}

fn relay(stream: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let reader = BufReader::new(stream);
        for line in reader.lines().map_while(Result::ok) {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() && self.data.starts_with(std::env::temp_dir()) {
            let _ = std::fs::remove_dir_all(&self.data);
        }
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(50));
            eprintln!("---- server log ----\n{}\n--------------------", self.log());
        }
    }
}

/// One session of one project, over HTTP or WebSocket.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub ws_base: String,
    pub session: String,
    /// The whole `Set-Cookie` header the server sent.
    pub set_cookie: String,
}

impl Client {
    /// POSTs a frame to the command endpoint; returns status and JSON body.
    pub async fn post(&self, frame: &Value) -> (u16, Value) {
        self.post_raw(frame.to_string()).await
    }

    pub async fn post_raw(&self, body: String) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/command", self.base))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("sent {body}, got non-JSON {status}: {text}"));
        (status, json)
    }

    /// Sends a command over HTTP and returns the reply.
    pub async fn command(&self, name: &str, param: &str) -> Value {
        let (status, reply) = self
            .post(&serde_json::json!({"type":"command","seq":1,"name":name,"param":param}))
            .await;
        assert_eq!(status, 200, "{name}({param}) got {status}: {reply}");
        reply
    }

    pub async fn socket(&self) -> Socket {
        self.socket_with_origin(None)
            .await
            .expect("WebSocket connects")
    }

    pub async fn socket_with_origin(
        &self,
        origin: Option<&str>,
    ) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
        self.connect(format!("{}/api/ws", self.ws_base), origin)
            .await
    }

    /// Like [`Client::socket_tab`], for a server that may be down.
    pub async fn try_socket_tab(&self, tab: &str, page: &str) -> Result<Socket, ()> {
        let url = format!("{}/api/ws?tab={tab}&page={page}", self.ws_base);
        self.connect(url, None).await.map_err(|_| ())
    }

    /// A socket for a browser tab showing `page` (a new `tab` id = a new tab).
    pub async fn socket_tab(&self, tab: &str, page: &str) -> Socket {
        let url = format!("{}/api/ws?tab={tab}&page={page}", self.ws_base);
        self.connect(url, None).await.expect("WebSocket connects")
    }

    async fn connect(
        &self,
        url: String,
        origin: Option<&str>,
    ) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert(
            "cookie",
            HeaderValue::from_str(&format!("sb_session={}", self.session)).unwrap(),
        );
        if let Some(origin) = origin {
            headers.insert("origin", HeaderValue::from_str(origin).unwrap());
        }
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(socket, _)| socket)
    }
}

/// Sends a JSON frame on a socket.
pub async fn send(socket: &mut Socket, frame: &Value) {
    socket
        .send(Message::text(frame.to_string()))
        .await
        .expect("frame sent");
}

/// The next reply (or rejection), skipping pushed frames (those with a
/// `type`) and pings; fails after [`REPLY_TIMEOUT`].
pub async fn receive(socket: &mut Socket) -> Value {
    loop {
        let message = receive_any(socket).await;
        if message.get("type").is_none() {
            return message;
        }
    }
}

/// The next pushed frame of `kind` (`actions`, `ui`, `reload`…), skipping
/// everything else.
pub async fn receive_push(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let message = receive_any(socket).await;
        if message["type"] == kind {
            return message;
        }
    }
}

/// The next JSON text message of any kind, skipping pings.
pub async fn receive_any(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(REPLY_TIMEOUT, socket.next())
            .await
            .expect("a reply within the timeout")
            .expect("socket still open")
            .expect("no socket error");
        match message {
            Message::Text(text) => {
                return serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("reply is not JSON: {text}"));
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text reply, got {other:?}"),
        }
    }
}

/// Sends a command frame and returns its reply.
pub async fn command(socket: &mut Socket, seq: u64, name: &str, param: &str) -> Value {
    send(
        socket,
        &serde_json::json!({"type":"command","seq":seq,"name":name,"param":param}),
    )
    .await;
    let reply = receive(socket).await;
    assert_eq!(
        reply["seq"], seq,
        "reply to {name}({param}) has the wrong seq: {reply}"
    );
    reply
}

/// The message of a reply's first action (a toast, usually).
pub fn toast_of(reply: &Value) -> &str {
    reply["actions"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no toast in {reply}"))
}

/// Writes a project folder `root/name` from `(path inside it, contents)` pairs.
pub fn write_project(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = root.join(name);
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    dir
}

/// What `switchboard check <dir>` printed: exit code, stdout, stderr.
pub fn run_check(dir: &Path) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("check")
        .arg(dir)
        .output()
        .expect("switchboard check runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A minimal page extending the built-in layout.
pub const HOME_PAGE: &str =
    "{% extends \"sb/layout.html\" %}\n{% block content %}<p>home</p>{% endblock %}\n";
