//! A real Mosquitto broker for the point tests: started on a free loopback
//! port with a generated config in a temp dir, stopped (and restarted on
//! the same port) on demand, killed on drop; plus a small MQTT client to
//! publish and watch topics from the test.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use super::{REPLY_TIMEOUT, temp_dir};

/// Where Debian installs the broker (`tests/run` installs the package).
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Broker {
    /// A broker that lets anyone in.
    pub fn start() -> Broker {
        Self::start_with(None)
    }

    /// A broker that wants this user name and password.
    pub fn start_with_password(user: &str, password: &str) -> Broker {
        Self::start_with(Some((user, password)))
    }

    fn start_with(credentials: Option<(&str, &str)>) -> Broker {
        let dir = temp_dir("mosquitto");
        let port = free_port();
        let mut config = format!("listener {port} 127.0.0.1\npersistence false\nlog_dest stderr\n");
        match credentials {
            Some((user, password)) => {
                let file = dir.join("passwords");
                let status = Command::new("mosquitto_passwd")
                    .args(["-b", "-c"])
                    .arg(&file)
                    .args([user, password])
                    .status()
                    .expect("mosquitto_passwd runs (Debian package mosquitto)");
                assert!(status.success(), "mosquitto_passwd failed");
                config.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
            None => config.push_str("allow_anonymous true\n"),
        }
        std::fs::write(dir.join("mosquitto.conf"), config).unwrap();
        let mut broker = Broker {
            child: None,
            port,
            dir,
            log: Arc::default(),
        };
        broker.resume();
        broker
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGKILL: the building's broker vanished).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and waits until it listens.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto starts (Debian package mosquitto; tests/run installs it)");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {addr}; its log:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A test client, connected (and anonymous unless the broker wants a
    /// password: then give it).
    pub async fn client(&self, credentials: Option<(&str, &str)>) -> MqttClient {
        MqttClient::connect(self.port, credentials).await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- mosquitto log ----\n{}", self.log.lock().unwrap());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A free loopback port: bound, read, released for the broker.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test's own MQTT client: publishes with QoS 1 (acknowledged before
/// `publish` returns) and collects the messages of its subscriptions.
pub struct MqttClient {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<(String, String)>,
    acks: mpsc::UnboundedReceiver<()>,
}

static NEXT_CLIENT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl MqttClient {
    async fn connect(port: u16, credentials: Option<(&str, &str)>) -> MqttClient {
        let id = format!(
            "test-{}-{}",
            std::process::id(),
            NEXT_CLIENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        let (client, mut events) = AsyncClient::new(options, 64);
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let (connected_tx, mut connected) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = connected_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                        let _ = messages_tx.send((publish.topic, payload));
                    }
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::SubAck(_))) => {
                        let _ = acks_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(REPLY_TIMEOUT, connected.recv())
            .await
            .expect("the test client connects to mosquitto");
        MqttClient {
            client,
            messages,
            acks,
        }
    }

    /// Publishes and waits for the broker's acknowledgement.
    pub async fn publish(&mut self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
        self.wait_ack().await;
    }

    /// Subscribes and waits until the broker confirmed.
    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        self.wait_ack().await;
    }

    async fn wait_ack(&mut self) {
        tokio::time::timeout(REPLY_TIMEOUT, self.acks.recv())
            .await
            .expect("mosquitto acknowledges");
    }

    /// The next message on a subscribed topic.
    pub async fn next_message(&mut self) -> (String, String) {
        tokio::time::timeout(REPLY_TIMEOUT, self.messages.recv())
            .await
            .expect("a message within the timeout")
            .expect("the client is connected")
    }
}
