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
