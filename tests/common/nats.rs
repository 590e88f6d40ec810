//! A real `nats-server -js` for the cluster tests: on a port it picks
//! itself (told through its ports file, so no port is guessed or raced
//! for), its JetStream store in a temp dir, killed on drop. It can be
//! stopped and started again on the same port and store (an outage).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::temp_dir;

pub struct Nats {
    child: Option<Child>,
    /// `nats://127.0.0.1:PORT`
    pub url: String,
    data: PathBuf,
}

fn spawn(data: &Path, port: &str) -> Child {
    Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", port, "-sd"])
        .arg(data.join("jetstream"))
        .arg("--ports_file_dir")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server is installed (tests/run installs it)")
}

impl Nats {
    /// Starts `nats-server` with JetStream and waits until it accepts connections.
    pub fn start() -> Nats {
        let data = temp_dir("nats");
        let mut child = spawn(&data, "-1");
        let ports_file = data.join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = loop {
            if let Some(url) = std::fs::read_to_string(&ports_file)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|ports| ports["nats"][0].as_str().map(String::from))
            {
                break url;
            }
            assert!(Instant::now() < deadline, "nats-server wrote no ports file");
            assert!(
                child.try_wait().unwrap().is_none(),
                "nats-server exited at start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let nats = Nats {
            child: Some(child),
            url,
            data,
        };
        nats.wait_until_accepting();
        nats
    }

    /// Kills the server (SIGKILL): an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn start_again(&mut self) {
        self.kill();
        let port = self.url.rsplit(':').next().unwrap().to_string();
        self.child = Some(spawn(&self.data, &port));
        self.wait_until_accepting();
    }

    fn wait_until_accepting(&self) {
        let addr = self.url.trim_start_matches("nats://");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server does not accept connections at {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Three (or more) `nats-server -js` on loopback, routed into one NATS
/// cluster (each its own client port, cluster port and store), for the
/// tests of a cluster losing a server. Ready when JetStream has elected
/// its meta leader with every server a peer.
pub struct NatsCluster {
    servers: Vec<Option<Child>>,
    /// `nats://127.0.0.1:PORT` of each server.
    pub client_urls: Vec<String>,
    data: PathBuf,
}

/// A loopback port free right now (bound, then released): cluster ports
/// must be known before the servers start, to name them in the routes.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsCluster {
    pub fn start(size: usize) -> NatsCluster {
        let data = temp_dir("nats-cluster");
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("nats-route://127.0.0.1:{cluster}"))
            .collect();
        let mut servers = Vec::new();
        for (n, (client, cluster, monitor)) in ports.iter().enumerate() {
            let dir = data.join(format!("s{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            let child = Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-n", &format!("s{n}")])
                .args(["-p", &client.to_string(), "-m", &monitor.to_string()])
                .args(["--cluster_name", "sbtest"])
                .args(["--cluster", &format!("nats://127.0.0.1:{cluster}")])
                .args(["--routes", &routes.join(",")])
                .arg("-sd")
                .arg(dir.join("jetstream"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server is installed (tests/run installs it)");
            servers.push(Some(child));
        }
        let cluster = NatsCluster {
            servers,
            client_urls: ports
                .iter()
                .map(|(client, _, _)| format!("nats://127.0.0.1:{client}"))
                .collect(),
            data,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_, _, monitor) in &ports {
            loop {
                let jsz = http_get(*monitor, "/jsz").unwrap_or_default();
                let ready = jsz.contains("\"leader\"")
                    && jsz.contains(&format!("\"cluster_size\": {size}"));
                if ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the NATS cluster never became ready: {jsz}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    /// The first server's URL: nodes connect there and learn the others
    /// from it (as NATS clients do), so killing it forces a failover.
    pub fn first_url(&self) -> String {
        self.client_urls[0].clone()
    }

    /// Kills server `n` (SIGKILL).
    pub fn kill(&mut self, n: usize) {
        if let Some(mut child) = self.servers[n].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in 0..self.servers.len() {
            self.kill(n);
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// A plain HTTP GET on loopback (the servers' monitoring port).
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}
