//! Pushes between the nodes of a cluster: every node publishes what its
//! scripts push (`uiSet`, `sendActions`, a session's end…) on a NATS subject
//! of the project, and hears what the other nodes publish. What a push
//! means is the runtime's (`runtime/fanout.rs`); here it is opaque bytes
//! for a project.
//!
//! One subscription per node, `switchboard.push.>`, rather than one per
//! session it holds: every node serves every project, a session's socket
//! moves between nodes at will, and a push for a scope or for everyone
//! concerns every node anyway. A push for one session therefore reaches
//! every node and is dropped in one map lookup by those that do not hold
//! the session, against a NATS subscription change per socket that opens
//! or closes (see docs/cluster.md for the figures).
//!
//! Subjects: `switchboard.push.<project>.<origin>`, where `origin` is this
//! process's random id: a node skips what it published itself (it applied
//! it before publishing), and a project name has no dots.
//!
//! Its own NATS connection, apart from the key-value store's: a push does
//! not queue behind a batch of writes.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::ClusterError;
use super::kv::{Background, CONNECT_TIMEOUT, is_up, servers, wait};

const PREFIX: &str = "switchboard.push";

/// What a node does with a push another node published: called with the
/// project and the payload, one push after the other in the order they
/// arrived, on a thread that may block.
pub type Deliver = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

/// This node's end of the push subjects.
pub struct Bus {
    /// Holds the tasks that publish and receive (dropped with the bus).
    _runtime: Background,
    outgoing: mpsc::UnboundedSender<(String, Bytes)>,
    origin: String,
}

impl Bus {
    /// Connects to NATS at `url`, subscribes, and waits until the server
    /// has the subscription: from then on nothing another node publishes
    /// is missed (what was set before is read from the kept values).
    pub fn connect(url: &str, node: &str, deliver: Deliver) -> Result<Bus, ClusterError> {
        let unreachable = |reason: String| ClusterError::Unreachable {
            url: url.to_string(),
            reason,
        };
        // Delivering may block: a worker of its own (see `Background`).
        let runtime = Background::start("cluster-push").map_err(|e| unreachable(e.to_string()))?;
        let handle = runtime.handle()?;
        let origin = uuid::Uuid::new_v4().simple().to_string();
        let (client, subscriber) =
            wait(&handle, subscribe(url.to_string(), node.to_string()))?.map_err(unreachable)?;
        handle.spawn(receive_forever(subscriber, origin.clone(), deliver));
        let (outgoing, queue) = mpsc::unbounded_channel();
        handle.spawn(publish_forever(client, queue));
        Ok(Bus {
            _runtime: runtime,
            outgoing,
            origin,
        })
    }

    /// Sends a push of `project` to the other nodes, after the pushes sent
    /// before it. Never waits.
    pub fn publish(&self, project: &str, payload: Vec<u8>) {
        let subject = format!("{PREFIX}.{project}.{}", self.origin);
        let _ = self.outgoing.send((subject, payload.into()));
    }
}

async fn subscribe(
    url: String,
    node: String,
) -> Result<(async_nats::Client, async_nats::Subscriber), String> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("switchboard {node} pushes"))
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(servers(&url))
        .await
        .map_err(|e| e.to_string())?;
    let subscriber = client
        .subscribe(format!("{PREFIX}.>"))
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    Ok((client, subscriber))
}

/// Publishes in queue order. While NATS is unreachable a push is dropped
/// (the other nodes miss it; see docs/cluster.md) rather than piling up.
async fn publish_forever(
    client: async_nats::Client,
    mut queue: mpsc::UnboundedReceiver<(String, Bytes)>,
) {
    while let Some((subject, payload)) = queue.recv().await {
        if !is_up(&client) {
            debug!("push not sent to the other nodes: not connected to NATS");
            continue;
        }
        if let Err(error) = client.publish(subject, payload).await {
            warn!("push not sent to the other nodes: {error}");
        }
    }
}

/// Hands every push of another node to `deliver`, in arrival order.
async fn receive_forever(mut subscriber: async_nats::Subscriber, origin: String, deliver: Deliver) {
    while let Some(message) = subscriber.next().await {
        let Some((project, from)) = split_subject(message.subject.as_str()) else {
            continue;
        };
        // This node applied its own pushes before publishing them.
        if from == origin {
            continue;
        }
        tokio::task::block_in_place(|| deliver(project, &message.payload));
    }
}

/// `switchboard.push.<project>.<origin>` → (project, origin).
fn split_subject(subject: &str) -> Option<(&str, &str)> {
    subject
        .strip_prefix(PREFIX)?
        .strip_prefix('.')?
        .rsplit_once('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_the_project_and_the_origin() {
        assert_eq!(
            split_subject("switchboard.push.my-project.abc123"),
            Some(("my-project", "abc123"))
        );
        assert_eq!(split_subject("switchboard.push.abc123"), None);
        assert_eq!(split_subject("other.push.p.o"), None);
    }
}
