//! A real `nats-server -js` for the cluster tests: on a port it picks
//! itself (told through its ports file, so no port is guessed or raced
//! for), its JetStream store in a temp dir, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::temp_dir;

pub struct Nats {
    child: Child,
    /// `nats://127.0.0.1:PORT`
    pub url: String,
    data: PathBuf,
}

impl Nats {
    /// Starts `nats-server` with JetStream and waits until it accepts connections.
    pub fn start() -> Nats {
        let data = temp_dir("nats");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(data.join("jetstream"))
            .arg("--ports_file_dir")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (tests/run installs it)");
        let ports_file = data.join(format!("nats-server_{}.ports", child.id()));
        let mut nats = Nats {
            child,
            url: String::new(),
            data,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(url) = std::fs::read_to_string(&ports_file)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|ports| ports["nats"][0].as_str().map(String::from))
            {
                let addr = url.trim_start_matches("nats://").to_string();
                if std::net::TcpStream::connect(&addr).is_ok() {
                    nats.url = url;
                    return nats;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start accepting connections"
            );
            assert!(
                nats.child.try_wait().unwrap().is_none(),
                "nats-server exited at start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
