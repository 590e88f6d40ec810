//! Switchboard: an HSYCO-style command-response UI runtime.
//!
//! Data flows one way: [`transport`] parses a request, [`session`] runs it
//! against the project's [`script`] handlers, [`answer`] decodes what they
//! returned, and [`transport`] sends the resulting actions back.

pub mod acl;
pub mod answer;
pub mod auth;
pub mod cli;
pub mod i18n;
pub mod logwriter;
pub mod metrics;
pub mod project;
pub mod protocol;
pub mod reload;
pub mod runtime;
pub mod scaffold;
pub mod script;
pub mod server;
pub mod session;
pub mod store;
pub mod time;
pub mod transport;
