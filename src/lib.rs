//! Switchboard: an HSYCO-style command-response UI runtime.
//!
//! Data flows one way: [`transport`] parses a request, [`runtime`] runs it
//! against the project's [`script`] handlers (one path for every callback:
//! `runtime::handlers`), [`answer`] decodes what they returned, and the
//! actions go back through the runtime's connection to [`transport`].
//! [`session`] is plain data; see `src/runtime/mod.rs` for how a command
//! flows, file by file.

pub mod acl;
pub mod answer;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod i18n;
pub mod logwriter;
pub mod metrics;
pub mod points;
pub mod project;
pub mod protocol;
pub mod reload;
pub mod runtime;
pub mod scaffold;
pub mod script;
pub mod server;
pub mod session;
pub mod store;
pub mod text;
pub mod time;
pub mod transport;
