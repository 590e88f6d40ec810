//! Cluster mode: the connection of this node to NATS with JetStream, and
//! the key-value buckets the nodes of a cluster share (`--cluster`).
//!
//! This module owns talking to NATS: connecting, creating the buckets,
//! encoding keys, applying writes in order, and telling whether NATS is
//! reachable, and carrying pushes between the nodes (`bus`). It does not
//! know what is stored or pushed: tables and the interface the
//! runtime sees are `crate::store`'s; which state is shared, and when it is
//! read back, is the runtime's. See docs/cluster.md for what this slice
//! shares and what it does not yet.

mod bus;
mod claims;
mod kv;
mod lease;

pub use bus::{Bus, Deliver};
pub use claims::{Claimed, Held, LEASE};
pub use kv::{Change, SharedKv};
pub use lease::{Acquired, DEFAULT_LEASE, LEASE_BUCKET, Leases};

/// Why the shared store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No NATS server answered at the address (at start-up).
    #[error("cannot reach NATS at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// NATS answered but its JetStream key-value buckets cannot be used.
    #[error(
        "NATS at {url}: cannot open the bucket {bucket} (is JetStream enabled? start nats-server with -js): {reason}"
    )]
    Bucket {
        url: String,
        bucket: String,
        reason: String,
    },
    /// A read or write of a bucket failed (NATS down, timed out, refused).
    #[error("NATS: {0}")]
    Request(String),
}
