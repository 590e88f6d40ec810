//! The JetStream key-value buckets of a cluster, seen as plain blocking
//! calls: `get`, `scan`, and ordered writes with a completion signal.
//!
//! NATS is async and the store's callers are not (script threads, request
//! handlers that already block on the embedded database), so this node's
//! NATS client lives on a small tokio runtime of its own, and a call waits
//! for its answer on a channel. One writer task applies every write batch
//! in the order it was queued, so a later write of a key never overtakes
//! an earlier one.
//!
//! Keys are hex-encoded: store keys hold `\u{0}` separators and ids a
//! client chose, and NATS KV keys allow only `[-/_=.a-zA-Z0-9]`. Hex keeps
//! the byte order and the prefix of every key, which `scan` relies on.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::ClusterError;

/// How long one NATS request may take before it counts as failed: short,
/// so that a node whose NATS went away says so instead of holding requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting to NATS may take at start-up.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a caller waits for any one call, whatever happens inside it
/// (a request and its retries): the answer never hangs a thread for good.
pub(super) const CALL_LIMIT: Duration = Duration::from_secs(10);

/// How long a request nobody answered is sent again (see
/// [`until_answered`]): a NATS server's failover elects new stream leaders
/// within a few seconds; under the call limit.
const UNANSWERED_RETRY: Duration = Duration::from_secs(7);

/// Sends a JetStream request again while no server answers it at all ("no
/// stream found": while its stream has no leader, during a NATS server's
/// failover). Such a request was certainly not applied, so sending it again
/// cannot apply it twice — unlike one that timed out, which is never
/// repeated here.
pub(super) async fn until_answered<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    mut request: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + UNANSWERED_RETRY;
    loop {
        match request().await {
            Err(e)
                if e.to_string().contains("no stream found")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            outcome => return outcome,
        }
    }
}

/// One change in a write batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put {
        bucket: &'static str,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        bucket: &'static str,
        key: String,
    },
}

/// Who waits for a batch to be written.
pub type Done = oneshot::Sender<Result<(), String>>;

type Buckets = HashMap<&'static str, kv::Store>;

/// This node's NATS connection and the shared buckets.
pub struct SharedKv {
    runtime: Background,
    pub(super) client: async_nats::Client,
    /// This node's name, in the claims it holds.
    pub(super) node: String,
    /// Copies of each bucket this node creates (`--cluster-replicas`).
    pub(super) replicas: usize,
    buckets: Buckets,
    writes: mpsc::UnboundedSender<(Vec<Change>, Option<Done>)>,
}

impl SharedKv {
    /// Connects to NATS at `url` (several servers of one NATS cluster:
    /// comma-separated) and opens (creating them if needed, with
    /// `replicas` copies each) the buckets named and the claims bucket.
    /// Fails at once when nobody answers: a node that cannot reach its
    /// cluster's state must not start serving alone.
    pub fn connect(
        url: &str,
        node: &str,
        names: &[&'static str],
        replicas: usize,
    ) -> Result<SharedKv, ClusterError> {
        let unreachable = |reason: String| ClusterError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let runtime = Background::start("cluster").map_err(|e| unreachable(e.to_string()))?;
        let handle = runtime.handle()?;
        let opened = wait(
            &handle,
            open(url.to_string(), node.to_string(), names.to_vec(), replicas),
        )
        .map_err(|e| unreachable(e.to_string()))??;
        let (client, buckets) = opened;
        let (writes, queue) = mpsc::unbounded_channel();
        handle.spawn(apply_forever(client.clone(), buckets.clone(), queue));
        Ok(SharedKv {
            runtime,
            client,
            node: node.to_string(),
            replicas,
            buckets,
            writes,
        })
    }

    /// Whether the NATS connection is up right now.
    pub fn is_connected(&self) -> bool {
        is_up(&self.client)
    }

    /// Queues a batch; `done` hears when every change of it is stored (or
    /// the first that failed).
    pub fn write(&self, changes: Vec<Change>, done: Option<Done>) {
        if let Err(refused) = self.writes.send((changes, done))
            && let (_, Some(done)) = refused.0
        {
            let _ = done.send(Err("the shared store's writer stopped".into()));
        }
    }

    /// Writes a batch and waits until every change of it is stored.
    pub fn write_and_wait(&self, changes: Vec<Change>) -> Result<(), ClusterError> {
        let (done, outcome) = oneshot::channel();
        self.write(changes, Some(done));
        self.call(async move {
            outcome
                .await
                .unwrap_or_else(|_| Err("the shared store's writer stopped".into()))
        })
    }

    /// The stored value of `key`, if any.
    pub fn get(&self, bucket: &'static str, key: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        let store = self.bucket(bucket)?;
        let key = encode_key(key);
        self.call(async move {
            store
                .get(key)
                .await
                .map(|value| value.map(|bytes| bytes.to_vec()))
                .map_err(|e| e.to_string())
        })
    }

    /// The stored value of `key` and its revision (the revision of its
    /// delete marker, or 0, when there is none), for a compare-and-set.
    pub fn entry(
        &self,
        bucket: &'static str,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, u64), ClusterError> {
        let store = self.bucket(bucket)?;
        let key = encode_key(key);
        self.call(async move {
            match store.entry(key).await.map_err(|e| e.to_string())? {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    Ok((Some(entry.value.to_vec()), entry.revision))
                }
                Some(entry) => Ok((None, entry.revision)),
                None => Ok((None, 0)),
            }
        })
    }

    /// Stores `value` if `key` is still at `revision` (0: does not exist);
    /// `Ok(false)` when another write came first.
    pub fn update(
        &self,
        bucket: &'static str,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<bool, ClusterError> {
        let store = self.bucket(bucket)?;
        let key = encode_key(key);
        self.call(async move {
            let value = bytes::Bytes::from(value);
            let outcome = if revision == 0 {
                until_answered(|| store.create(&key, value.clone()))
                    .await
                    .map_err(|e| {
                        (
                            e.kind() == kv::CreateErrorKind::AlreadyExists,
                            e.to_string(),
                        )
                    })
            } else {
                until_answered(|| store.update(&key, value.clone(), revision))
                    .await
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    })
            };
            match outcome {
                Ok(_) => Ok(true),
                Err((true, _)) => Ok(false),
                Err((false, error)) => Err(error),
            }
        })
    }

    /// The first `limit` records with `from <= key < to` (`to: None` is no
    /// end), in key order: every key of the bucket is listed, but values
    /// are read for those `limit` only.
    pub fn range(
        &self,
        bucket: &'static str,
        from: &str,
        to: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, ClusterError> {
        let store = self.bucket(bucket)?;
        let (from, to) = (from.to_string(), to.map(str::to_string));
        self.call(async move {
            let mut keys = store.keys().await.map_err(|e| e.to_string())?;
            let mut wanted = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.map_err(|e| e.to_string())?;
                if let Some(decoded) = decode_key(&key)
                    && decoded >= from
                    && to.as_ref().is_none_or(|to| &decoded < to)
                {
                    wanted.push((decoded, key));
                }
            }
            wanted.sort_unstable();
            let mut found = Vec::new();
            for (decoded, key) in wanted {
                if found.len() == limit {
                    break;
                }
                if let Some(value) = store.get(&key).await.map_err(|e| e.to_string())? {
                    found.push((decoded, value.to_vec()));
                }
            }
            Ok(found)
        })
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan(
        &self,
        bucket: &'static str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, ClusterError> {
        let store = self.bucket(bucket)?;
        let prefix = encode_key(prefix);
        self.call(async move {
            let mut keys = store.keys().await.map_err(|e| e.to_string())?;
            let mut found = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.map_err(|e| e.to_string())?;
                if !key.starts_with(&prefix) {
                    continue;
                }
                let Some(decoded) = decode_key(&key) else {
                    continue;
                };
                if let Some(value) = store.get(&key).await.map_err(|e| e.to_string())? {
                    found.push((decoded, value.to_vec()));
                }
            }
            found.sort();
            Ok(found)
        })
    }

    /// The cluster runtime, for the lease keeper's task.
    pub(super) fn runtime(&self) -> Result<tokio::runtime::Handle, ClusterError> {
        self.runtime.handle()
    }

    pub(super) fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    pub(super) fn bucket(&self, name: &'static str) -> Result<kv::Store, ClusterError> {
        self.buckets
            .get(name)
            .cloned()
            .ok_or_else(|| ClusterError::Request(format!("no bucket {name}")))
    }

    pub(super) fn handle(&self) -> Result<tokio::runtime::Handle, ClusterError> {
        self.runtime.handle()
    }

    /// Runs a request and waits for it; fails at once while the connection
    /// is down rather than after a timeout per request.
    pub(super) fn call<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, ClusterError> {
        if !self.is_connected() {
            return Err(ClusterError::Request(NOT_CONNECTED.into()));
        }
        wait(&self.runtime.handle()?, work)?.map_err(ClusterError::Request)
    }
}

/// The servers of `--cluster`: one URL, or several servers of one NATS
/// cluster, comma-separated.
pub(super) fn servers(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).collect()
}

/// The cluster connection's own tokio runtime, shut down in the background
/// when dropped: the store may be dropped on an async thread, where a
/// runtime cannot be dropped the ordinary (blocking) way.
pub(super) struct Background(pub(super) Option<tokio::runtime::Runtime>);

impl Background {
    /// A runtime of one worker thread named `name`: multi-threaded so that
    /// work on it may block (delivering a push, a writer's wait).
    pub(super) fn start(name: &str) -> std::io::Result<Background> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Background(Some(runtime)))
    }

    pub(super) fn handle(&self) -> Result<tokio::runtime::Handle, ClusterError> {
        self.0
            .as_ref()
            .map(|runtime| runtime.handle().clone())
            .ok_or_else(|| ClusterError::Request("the cluster connection is closed".into()))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `work` on the cluster runtime and waits for it on this thread
/// (never a thread of that runtime: its callers are script threads and
/// request handlers).
pub(super) fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, ClusterError> {
    let (sender, receiver) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = sender.send(work.await);
    });
    receiver
        .recv_timeout(CALL_LIMIT)
        .map_err(|_| ClusterError::Request("no answer from NATS in time".into()))
}

async fn open(
    url: String,
    node: String,
    names: Vec<&'static str>,
    replicas: usize,
) -> Result<(async_nats::Client, Buckets), ClusterError> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("switchboard {node}"))
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .event_callback(|event| async move { log_event(&event) })
        .connect(servers(&url))
        .await
        .map_err(|e| ClusterError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let jetstream = async_nats::jetstream::new(client.clone());
    let mut buckets = HashMap::new();
    let claims = [super::claims::CLAIMS_BUCKET];
    for name in names.into_iter().chain(claims) {
        // Every node creates the buckets it needs (creating one that exists
        // with the same settings is allowed). The bucket's stream is made
        // here rather than by `create_key_value`, whose account query the
        // 2.9 servers Debian ships answer in a form this client refuses.
        let bucket_error = |reason: String| ClusterError::Bucket {
            url: url.clone(),
            bucket: name.to_string(),
            reason,
        };
        jetstream
            .get_or_create_stream(bucket_stream(name, replicas))
            .await
            .map_err(|e| bucket_error(e.to_string()))?;
        let store = jetstream
            .get_key_value(name)
            .await
            .map_err(|e| bucket_error(e.to_string()))?;
        buckets.insert(name, store);
    }
    Ok((client, buckets))
}

/// The stream behind a key-value bucket, as NATS clients define one: the
/// last value of each key, deletes as markers, reads served by any replica;
/// claims expire (see `claims`).
pub(super) fn bucket_stream(name: &str, replicas: usize) -> stream::Config {
    let max_age = if name == super::claims::CLAIMS_BUCKET {
        super::claims::CLAIM_MAX_AGE
    } else {
        Duration::ZERO
    };
    stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        max_age,
        ..Default::default()
    }
}

fn log_event(event: &async_nats::Event) {
    match event {
        async_nats::Event::Connected => info!("connected to NATS"),
        async_nats::Event::Disconnected => {
            warn!("lost the NATS connection: the shared store is unreachable until it comes back")
        }
        // Every failed reconnection attempt: the loss was said once above.
        async_nats::Event::ClientError(error) => debug!("NATS: {error}"),
        other => info!("NATS: {other}"),
    }
}

pub(super) const NOT_CONNECTED: &str = "not connected to NATS";

pub(super) fn is_up(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Applies the queued batches in order. While the connection is down a
/// batch fails at once: waiting a request timeout for each would stall
/// every batch queued behind it.
async fn apply_forever(
    client: async_nats::Client,
    buckets: Buckets,
    mut queue: mpsc::UnboundedReceiver<(Vec<Change>, Option<Done>)>,
) {
    while let Some((changes, done)) = queue.recv().await {
        let outcome = if is_up(&client) {
            apply(&buckets, changes).await
        } else {
            Err(NOT_CONNECTED.to_string())
        };
        if let Err(message) = &outcome {
            error!("could not write to the shared store: {message}");
        }
        if let Some(done) = done {
            let _ = done.send(outcome);
        }
    }
}

/// Applies the changes one after the other, stopping at the first failure.
/// NATS KV has no multi-key transaction: a batch is ordered, not atomic
/// (the runtime puts an answer's record last, see docs/cluster.md).
async fn apply(buckets: &Buckets, changes: Vec<Change>) -> Result<(), String> {
    for change in changes {
        let (bucket, key) = match &change {
            Change::Put { bucket, key, .. } | Change::Delete { bucket, key } => (*bucket, key),
        };
        let store = buckets
            .get(bucket)
            .ok_or_else(|| format!("no bucket {bucket}"))?;
        let key = encode_key(key);
        match change {
            Change::Put { value, .. } => {
                let value = bytes::Bytes::from(value);
                until_answered(|| store.put(&key, value.clone()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Change::Delete { .. } => until_answered(|| store.delete(&key))
                .await
                .map_err(|e| e.to_string())?,
        }
    }
    Ok(())
}

/// `k` and the key's bytes in hex: never empty, only characters NATS
/// allows, same order and prefixes as the key itself.
pub(super) fn encode_key(key: &str) -> String {
    let mut encoded = String::with_capacity(1 + key.len() * 2);
    encoded.push('k');
    for byte in key.bytes() {
        encoded.push_str(&format!("{byte:02x}"));
    }
    encoded
}

fn decode_key(encoded: &str) -> Option<String> {
    let hex = encoded.strip_prefix('k')?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = hex
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_keep_prefixes_and_order() {
        let keys = ["", "p\u{0}count!", "p\u{0}é ./*>", "q"];
        for key in keys {
            let encoded = encode_key(key);
            assert!(
                encoded
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-/_=".contains(c)),
                "{encoded}"
            );
            assert_eq!(decode_key(&encoded).as_deref(), Some(key));
        }
        assert!(encode_key("p\u{0}count!").starts_with(&encode_key("p\u{0}")));
        assert!(encode_key("p\u{0}a") < encode_key("p\u{0}b"));
        assert_eq!(decode_key("k0"), None, "odd length");
        assert_eq!(decode_key("kzz"), None, "not hex");
        assert_eq!(decode_key("ff"), None, "no marker");
    }
}
