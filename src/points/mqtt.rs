//! The MQTT driver: one task per connection running rumqttc's event loop
//! (the shape of rumqttc's examples). It subscribes to the points' state
//! topics and the connection's `subscribe` filters at every (re)connect, so
//! subscriptions survive a broker restart and retained state is read at
//! start; decodes payloads into [`Update`]s; publishes writes; and reports
//! the connection's state, logging only when it changes.
//!
//! It knows nothing of sessions, pages or scripts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, Transport, v5};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::config::{ConnectionConfig, Endpoint};
use super::{DriverLink, Outgoing, PointDef, Update, decode_payload, encode_payload};

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Requests queued between the client handle and the event loop.
const REQUEST_CAPACITY: usize = 1024;

/// Starts the driver task.
pub fn spawn(
    config: ConnectionConfig,
    url: String,
    points: Vec<Arc<PointDef>>,
    link: DriverLink,
    writes: mpsc::Receiver<Outgoing>,
) {
    tokio::spawn(async move {
        let connect = match Connect::new(&config, &url, &link.project, link.node.as_deref()) {
            Ok(connect) => connect,
            Err(message) => {
                warn!(project = %link.project, connection = %config.name, "connection not started: {message}");
                link.status.set_error(&message);
                return;
            }
        };
        let driver = Driver::new(config, points, link);
        if driver.config.protocol == 5 {
            driver.run_v5(connect, writes).await;
        } else {
            driver.run_v4(connect, writes).await;
        }
    });
}

/// How to reach the broker, for either protocol level.
struct Connect {
    client_id: String,
    host: String,
    port: u16,
    keep_alive: Duration,
    credentials: Option<(String, String)>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Connect {
    fn new(
        config: &ConnectionConfig,
        url: &str,
        project: &str,
        node: Option<&str>,
    ) -> Result<Connect, String> {
        let endpoint = Endpoint::parse(url, &["mqtt", "mqtts"])?;
        let mut client_id = if config.client_id.is_empty() {
            format!("switchboard-{project}-{}", config.name)
        } else {
            config.client_id.clone()
        };
        if let Some(node) = node {
            client_id.push('-');
            client_id.push_str(node);
        }
        let credentials = if config.username.is_empty() && config.password_env.is_empty() {
            None
        } else if config.password_env.is_empty() {
            Some((config.username.clone(), String::new()))
        } else {
            let password = std::env::var(&config.password_env).map_err(|_| {
                format!("the password variable `{}` is not set", config.password_env)
            })?;
            Some((config.username.clone(), password))
        };
        let tls = if endpoint.scheme == "mqtts" {
            Some(tls_config(&config.ca_file)?)
        } else {
            None
        };
        Ok(Connect {
            client_id,
            host: endpoint.host,
            port: endpoint.port,
            keep_alive: Duration::from_secs(config.keep_alive_secs.max(5)),
            credentials,
            tls,
        })
    }

    fn transport(&self) -> Option<Transport> {
        self.tls
            .clone()
            .map(|tls| Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)))
    }

    /// MQTT 3.1.1 options: a clean session, subscriptions renewed at every
    /// connection.
    fn v4(&self) -> MqttOptions {
        let mut options = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        options.set_keep_alive(self.keep_alive);
        options.set_clean_session(true);
        options.set_request_channel_capacity(REQUEST_CAPACITY);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        if let Some(transport) = self.transport() {
            options.set_transport(transport);
        }
        options
    }

    /// MQTT 5 options, the same way.
    fn v5(&self) -> v5::MqttOptions {
        let mut options =
            v5::MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        options.set_keep_alive(self.keep_alive);
        options.set_clean_start(true);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        if let Some(transport) = self.transport() {
            options.set_transport(transport);
        }
        options
    }
}

/// TLS with the `ring` provider (as the server's own TLS) and the system's
/// roots, or the CA file the connection names.
fn tls_config(ca_file: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.is_empty() {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    } else {
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("{ca_file}: {e}"))? {
            roots
                .add(cert.map_err(|e| format!("{ca_file}: {e}"))?)
                .map_err(|e| format!("{ca_file}: {e}"))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

struct Driver {
    config: ConnectionConfig,
    /// State topic → the points it sets.
    by_topic: HashMap<String, Vec<Arc<PointDef>>>,
    link: DriverLink,
}

impl Driver {
    fn new(config: ConnectionConfig, points: Vec<Arc<PointDef>>, link: DriverLink) -> Driver {
        let mut by_topic: HashMap<String, Vec<Arc<PointDef>>> = HashMap::new();
        for point in points {
            if let Some(topic) = &point.config.state {
                by_topic.entry(topic.clone()).or_default().push(point);
            }
        }
        Driver {
            config,
            by_topic,
            link,
        }
    }

    async fn run_v4(mut self, connect: Connect, mut writes: mpsc::Receiver<Outgoing>) {
        let (client, mut events) = AsyncClient::new(connect.v4(), REQUEST_CAPACITY);
        let qos = if self.config.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            tokio::select! {
                event = events.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = FIRST_BACKOFF;
                        let filters = self.filters().map(|topic| rumqttc::SubscribeFilter::new(topic, qos)).collect::<Vec<_>>();
                        let subscribed = filters.is_empty() || client.try_subscribe_many(filters).is_ok();
                        self.connected(subscribed);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        self.link.status.count_in();
                        self.received(&publish.topic, &publish.payload);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        self.disconnected(&describe(&error));
                        if !self.wait(&mut backoff).await {
                            break;
                        }
                    }
                },
                write = writes.recv() => match write {
                    Some(write) => self.publish(write, |topic, retain, payload| {
                        client.try_publish(topic, qos, retain, payload).map_err(|e| e.to_string())
                    }),
                    None => break,
                },
                _ = self.link.stopped() => break,
            }
        }
        let _ = client.try_disconnect();
    }

    async fn run_v5(mut self, connect: Connect, mut writes: mpsc::Receiver<Outgoing>) {
        use v5::mqttbytes::QoS;
        use v5::mqttbytes::v5::{Filter, Packet};
        let (client, mut events) = v5::AsyncClient::new(connect.v5(), REQUEST_CAPACITY);
        let qos = if self.config.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            tokio::select! {
                event = events.poll() => match event {
                    Ok(v5::Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = FIRST_BACKOFF;
                        let filters = self.filters().map(|topic| Filter::new(topic, qos)).collect::<Vec<_>>();
                        let subscribed = filters.is_empty() || client.try_subscribe_many(filters).is_ok();
                        self.connected(subscribed);
                    }
                    Ok(v5::Event::Incoming(Packet::Publish(publish))) => {
                        self.link.status.count_in();
                        self.received(&String::from_utf8_lossy(&publish.topic), &publish.payload);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let message = match &error {
                            v5::ConnectionError::ConnectionRefused(code) => format!("the broker refused the connection ({code:?})"),
                            other => other.to_string(),
                        };
                        self.disconnected(&message);
                        if !self.wait(&mut backoff).await {
                            break;
                        }
                    }
                },
                write = writes.recv() => match write {
                    Some(write) => self.publish(write, |topic, retain, payload| {
                        client.try_publish(topic, qos, retain, payload).map_err(|e| e.to_string())
                    }),
                    None => break,
                },
                _ = self.link.stopped() => break,
            }
        }
        let _ = client.try_disconnect();
    }

    /// Waits before the next attempt (the event loop reconnects when
    /// polled again); `false` when the project stopped meanwhile.
    async fn wait(&mut self, backoff: &mut Duration) -> bool {
        let delay = *backoff;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.link.stopped() => false,
        }
    }

    /// Every topic filter the connection subscribes to.
    fn filters(&self) -> impl Iterator<Item = String> + '_ {
        self.by_topic
            .keys()
            .chain(self.config.subscribe.iter())
            .cloned()
    }

    /// Connected (and subscribed again: the session is clean): say so.
    fn connected(&self, subscribed: bool) {
        if !subscribed {
            warn!(project = %self.link.project, connection = %self.config.name, "could not subscribe: the client's queue is full");
        }
        self.link.status.clear_error();
        if self.link.status.set_connected(true) {
            info!(project = %self.link.project, connection = %self.config.name, "connected to the MQTT broker");
        }
    }

    fn disconnected(&self, message: &str) {
        let was_connected = self.link.status.set_connected(false);
        let new_error = self.link.status.set_error(message);
        if was_connected {
            warn!(project = %self.link.project, connection = %self.config.name, "lost the MQTT broker, retrying: {message}");
            self.link.send(Update::Offline {
                connection: self.config.name.clone(),
            });
        } else if new_error {
            warn!(project = %self.link.project, connection = %self.config.name, "cannot connect to the MQTT broker, retrying: {message}");
        }
    }

    /// A message: the points of its topic, else `mqttMessage` when one of
    /// the connection's filters matches.
    fn received(&self, topic: &str, payload: &[u8]) {
        if let Some(points) = self.by_topic.get(topic) {
            for point in points {
                let update =
                    match decode_payload(point.kind(), point.config.value_path.as_deref(), payload)
                    {
                        Ok(value) => Update::Value {
                            point: point.name().to_string(),
                            value,
                        },
                        Err(reason) => Update::Unusable {
                            point: point.name().to_string(),
                            reason,
                        },
                    };
                self.link.send(update);
            }
            return;
        }
        if self
            .config
            .subscribe
            .iter()
            .any(|filter| rumqttc::matches(topic, filter))
        {
            self.link.send(Update::Message {
                connection: self.config.name.clone(),
                topic: topic.to_string(),
                payload: String::from_utf8_lossy(payload).into_owned(),
            });
        }
    }

    fn publish(
        &self,
        write: Outgoing,
        send: impl FnOnce(String, bool, Vec<u8>) -> Result<(), String>,
    ) {
        let (topic, payload, retain, local) = match write {
            Outgoing::Point { point, value } => {
                let Some(topic) = point.config.command.clone() else {
                    return;
                };
                let payload = encode_payload(&point.config, &value);
                // A point without a state topic hears nothing back: the
                // value it was given is the best knowledge of it.
                let local = point.config.state.is_none().then(|| Update::Value {
                    point: point.name().to_string(),
                    value,
                });
                (topic, payload, point.config.retain, local)
            }
            Outgoing::Publish {
                topic,
                payload,
                retain,
            } => (topic, payload, retain, None),
        };
        match send(topic, retain, payload) {
            Ok(()) => {
                self.link.status.count_out();
                if let Some(update) = local {
                    self.link.send(update);
                }
            }
            Err(error) => {
                warn!(project = %self.link.project, connection = %self.config.name, "publish dropped: {error}")
            }
        }
    }
}

/// The error as the log shows it: a refused login named plainly.
fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection ({code:?})")
        }
        other => other.to_string(),
    }
}
