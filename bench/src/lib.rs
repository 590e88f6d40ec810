//! Switchboard's benchmark suite, load side: the client that drives a
//! server with real sessions ([`client`], used by the `load` binary), the
//! bare actix baselines it is compared with ([`baseline`]), and turning the
//! measurements into docs/performance.md ([`report`]).
//!
//! Everything here talks to 127.0.0.1 only, and every load it makes is
//! bounded in connections and in time.

pub mod baseline;
pub mod client;
pub mod report;
pub mod stats;
pub mod system;
