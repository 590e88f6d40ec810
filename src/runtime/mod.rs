//! The running server's state and behaviour: projects (and replacing them
//! on hot reload), the session table and its persistence, session events,
//! forms, server push, messages, variables and exactly-once delivery.
//! `transport` calls in here; this module calls `script` to run handlers
//! and `answer` to decode what they return. Scripts reach back only through
//! the functions [`host`] registers.
//!
//! # How a command flows
//!
//! 1. **Socket** — `transport/websocket.rs` accepts the upgrade (after the
//!    same checks as every route) and opens a [`Connection`]
//!    (`connection.rs`): it queues the client's configuration and UI
//!    snapshot, runs `sessionRestored`/`pageStartup`, and starts a worker
//!    that runs the connection's frames in order. The transport reads a
//!    text message and hands it to [`Connection::parse`] and
//!    [`Connection::frames`]; over HTTP, `transport/mod.rs` `http_command`
//!    parses the body and calls [`run_frame`] directly.
//! 2. **Dispatch** — `commands.rs` [`run_frame`]: a command goes through the
//!    project's ACL, then (with an `id`) claims its id in `delivery.rs`
//!    (a repeat is answered from the record); forms go to `forms.rs`,
//!    keystrokes and device data to `events.rs`.
//! 3. **Handler** — `handlers.rs`, the one path every callback takes: run
//!    `userCommand` on a script thread (`script/pool.rs`) under the
//!    project's limits, decode its answer (`crate::answer`), log what was
//!    ignored, file authentication challenges (`challenge.rs`), and report
//!    a failure (`[FAILED]`, limit stops to `sessionTerminating`).
//! 4. **Memory and record** — `memory.rs` updates the session's rollback
//!    values and page openers; `delivery.rs` commits the handler's
//!    persistent effects and the answer's record in one transaction.
//! 5. **Back** — the reply goes into the connection's outgoing queue behind
//!    the pushes queued before it (`connection.rs`), and the transport
//!    writes it. Pushes from scripts (`uiSet`, `sendActions`: `push.rs`,
//!    values in `ui.rs`) take the same queue; in cluster mode `fanout.rs`
//!    also sends them to the other nodes, which apply them the same way.
//!
//! # Where new things go
//!
//! - **A new answer action**: `crate::answer` (decoder and its table
//!   tests) and one executor in `web/switchboard.js`; nothing here.
//! - **A new session event**: a function in `events.rs` that builds a
//!   [`handlers::Call`] and fires it; call it from where the moment
//!   happens (`lifecycle.rs` for a session's life).
//! - **A new transport** (Server-Sent Events, …): a file in `transport/`
//!   that opens a [`Connection`], feeds it what it reads and writes what
//!   [`Outgoing`] yields.
//! - **A new device bridge or gateway**: build an [`ExternalEvent`] and call
//!   [`Runtime::external_event`] (`external.rs`); a callback of the project
//!   as a whole runs through [`handlers::run_for_project`].
//! - **Work a project needs once, not once per node** (a timer-like job, a
//!   callback of device data): let every node keep it ready and run it only
//!   where `Runtime::acts_for_project` says so (`lease.rs`: the lease
//!   holder in cluster mode, always on one node).

mod challenge;
mod commands;
mod connection;
mod delivery;
mod dev;
mod downloads;
mod events;
mod external;
mod fanout;
mod forms;
pub mod handlers;
mod host;
mod lease;
mod lifecycle;
mod memory;
mod outage;
mod points;
mod push;
mod schedule;
mod state;
mod ui;
mod view;

pub use challenge::ChallengeAnswer;
pub use commands::{ACL_DENIED_MESSAGE, run_frame};
pub use connection::{Connection, Incoming, Outgoing};
pub use downloads::{Download, DownloadBody, DownloadError, run_download};
pub use external::{EventError, EventKind, EventOutcome, EventTarget, ExternalEvent};
pub use handlers::FAILED_MESSAGE;
pub use lifecycle::{StartupError, StoreChoice};
pub use state::{Caller, Runtime, ShutdownReason};
pub use ui::ProjectUi;

/// Registers the host functions bound to no runtime (each fails if called):
/// what `switchboard check` compiles against.
pub fn register_host_functions_unbound(engine: &mut rhai::Engine, project: &str) {
    host::register(engine, std::sync::Weak::new(), project);
}
