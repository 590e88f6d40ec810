//! Cluster mode: a push made on one node reaches the panels of every node.
//!
//! Every push a script makes (`uiSet`, `uiSessionSet`, `sendActions`,
//! `sendMessage`) and every session's end is a [`Remote`]: the node whose
//! handler made it applies it ([`Here::Origin`]) and publishes it on the
//! cluster's bus; every other node applies the same value through the same
//! function ([`Here::Remote`]) to the sessions connected to it. On one node
//! (no `--cluster`) there is no bus and the origin is all there is.
//!
//! In a cluster a node delivers only to the sessions whose socket is open
//! on it ([`Runtime::delivers_to`]): a copy without a socket is stale (the
//! panel is on another node, or on none) and is re-read from the shared
//! record when used again. Project-wide values are also kept in the shared
//! store (`Table::Ui`), for the nodes that start later.

use std::sync::Arc;

use rhai::Dynamic;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{error, info, warn};

use super::external::{EventKind, EventTarget, ExternalEvent};
use super::state::{Runtime, ShutdownReason};
use super::ui::set;
use crate::cluster::{Bus, Deliver};
use crate::project::Project;
use crate::session::Session;
use crate::store::{StoreError, Table, Write};

/// One push as the nodes send it to each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "push", rename_all = "camelCase")]
pub(super) enum Remote {
    /// `uiSet(id, attr, value)`.
    Ui {
        id: String,
        attr: String,
        value: Value,
    },
    /// `uiSessionSet(scope, id, attr, value)`.
    Scope {
        scope: String,
        id: String,
        attr: String,
        value: Value,
    },
    /// `uiSessionSet(session, id, attr, value)`.
    Session {
        session: String,
        id: String,
        attr: String,
        value: Value,
    },
    /// `sendActions(session, answer)`: the answer as JSON.
    Actions { session: String, answer: Value },
    /// `sendMessage` and `/api/message`: the target as a message scope.
    Message {
        handler: String,
        payload: Value,
        scope: String,
    },
    /// The session ended on the node that published this (logout,
    /// termination…): its `sessionShutdown` ran there.
    Ended { session: String, reason: String },
}

/// Where a push is being applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Here {
    /// On the node whose handler made it.
    Origin,
    /// On another node, which heard it on the bus.
    Remote,
}

impl Runtime {
    /// Connects this node to the other nodes' pushes (cluster mode).
    pub(super) fn join_pushes(&self, url: &str, node: &str) -> Result<(), StoreError> {
        let myself = self.myself.clone();
        let deliver: Deliver = Arc::new(move |project, payload| {
            if let Some(runtime) = myself.upgrade() {
                runtime.receive_push(project, payload);
            }
        });
        let bus = Bus::connect(url, node, deliver)?;
        let _ = self.bus.set(bus);
        Ok(())
    }

    /// Whether this node delivers pushes to `session`: on one node, every
    /// session it has (a push waits for its socket); in a cluster, those
    /// whose socket is open here, so that no panel gets a push twice.
    pub(super) fn delivers_to(&self, session: &Session) -> bool {
        !self.store.is_shared() || session.is_connected()
    }

    /// `sessions` without those [`Runtime::delivers_to`] skips.
    pub(super) fn delivered(&self, mut sessions: Vec<Arc<Session>>) -> Vec<Arc<Session>> {
        if self.store.is_shared() {
            sessions.retain(|session| session.is_connected());
        }
        sessions
    }

    /// A push made here: applied here, kept (project-wide values), and
    /// sent to the other nodes.
    pub(super) fn fan_out(&self, project: &str, push: Remote) {
        self.keep(project, &push);
        self.publish(project, &push);
        self.apply_push(project, push, Here::Origin);
    }

    /// Sends a push to the other nodes (cluster mode; else nothing).
    pub(super) fn publish(&self, project: &str, push: &Remote) {
        let Some(bus) = self.bus.get() else {
            return;
        };
        match serde_json::to_vec(push) {
            Ok(payload) => bus.publish(project, payload),
            Err(error) => error!(project, "push not sent to the other nodes: {error}"),
        }
    }

    /// A push another node published.
    fn receive_push(&self, project: &str, payload: &[u8]) {
        match serde_json::from_slice::<Remote>(payload) {
            Ok(push) => self.apply_push(project, push, Here::Remote),
            Err(error) => warn!(
                project,
                "a push from another node was not understood: {error}"
            ),
        }
    }

    fn apply_push(&self, project: &str, push: Remote, here: Here) {
        match push {
            Remote::Ui { id, attr, value } => self.apply_ui_set(project, &id, &attr, value),
            Remote::Scope {
                scope,
                id,
                attr,
                value,
            } => self.apply_scope_set(project, &scope, &id, &attr, value),
            Remote::Session {
                session,
                id,
                attr,
                value,
            } => self.apply_session_set(project, &session, &id, &attr, value, here),
            Remote::Actions { session, answer } => match rhai::serde::to_dynamic(answer) {
                Ok(answer) => self.deliver_actions(project, &session, answer),
                Err(error) => warn!(project, "actions from another node not delivered: {error}"),
            },
            Remote::Message {
                handler,
                payload,
                scope,
            } => self.start_remote_message(project, handler, payload, &scope),
            Remote::Ended { session, reason } => self.close_ended_elsewhere(&session, &reason),
        }
    }

    /// `sendActions` made here: the other nodes get the answer as JSON.
    pub(super) fn publish_actions(&self, project: &str, session: &str, answer: &Dynamic) {
        if self.bus.get().is_none() {
            return;
        }
        match rhai::serde::from_dynamic::<Value>(answer) {
            Ok(answer) => self.publish(
                project,
                &Remote::Actions {
                    session: session.to_string(),
                    answer,
                },
            ),
            Err(error) => {
                warn!(
                    project,
                    "sendActions reaches this node's panels only: {error}"
                )
            }
        }
    }

    /// Starts an event's callbacks (see [`Runtime::start_event_here`]); a
    /// message also goes to the other nodes, for the sessions they hold.
    pub fn start_event(
        &self,
        project: &Arc<Project>,
        event: ExternalEvent,
    ) -> Result<usize, super::EventError> {
        let remote = match (&event.kind, scope_of(&event.target)) {
            (EventKind::Message { handler, payload }, Some(scope)) => Some(Remote::Message {
                handler: handler.clone(),
                payload: payload.clone(),
                scope,
            }),
            _ => None,
        };
        let started = self.start_event_here(project, event)?;
        if let Some(remote) = remote {
            self.publish(&project.name, &remote);
        }
        Ok(started)
    }

    fn start_remote_message(&self, project: &str, handler: String, payload: Value, scope: &str) {
        let (Some(project), Ok(target)) = (self.project(project), EventTarget::from_scope(scope))
        else {
            return;
        };
        let event = ExternalEvent {
            kind: EventKind::Message { handler, payload },
            target,
        };
        if let Err(error) = self.start_event_here(&project, event) {
            warn!(project = %project.name, "a message from another node was not run: {error}");
        }
    }

    /// A session ended on another node: its browsers here are told and its
    /// copy is dropped (its `sessionShutdown` ran where it ended).
    fn close_ended_elsewhere(&self, id: &str, reason: &str) {
        let (Some(session), Some(runtime), Some(reason)) = (
            self.sessions.by_id(id),
            self.arc(),
            ShutdownReason::named(reason),
        ) else {
            return;
        };
        tokio::spawn(async move {
            runtime.close_here(&session, reason).await;
            info!(project = %session.project, session = session.log_id(), reason = reason.as_str(), "session ended on another node");
        });
    }

    /// Keeps a project-wide value in the shared store (cluster mode).
    fn keep(&self, project: &str, push: &Remote) {
        if !self.store.is_shared() {
            return;
        }
        let (key, value) = match push {
            Remote::Ui { id, attr, value } => (kept_key(project, None, id, attr), value),
            Remote::Scope {
                scope,
                id,
                attr,
                value,
            } => (kept_key(project, Some(scope), id, attr), value),
            _ => return,
        };
        let write = if value.is_null() {
            Write::Delete(Table::Ui, key)
        } else {
            match serde_json::to_vec(value) {
                Ok(bytes) => Write::Put(Table::Ui, key, bytes),
                Err(error) => return error!(project, "UI value not kept: {error}"),
            }
        };
        // Written behind, in order with this node's other writes.
        drop(self.store.write_soon(vec![write]));
    }

    /// Reads the project-wide values kept by the nodes of a cluster into
    /// memory. A value pushed since this node joined the bus is newer than
    /// the kept one, and stays.
    pub(super) fn load_kept_ui(&self, project: &str) {
        if !self.store.is_shared() {
            return;
        }
        let records = match self.store.scan(Table::Ui, &format!("{project}\u{0}")) {
            Ok(records) => records,
            Err(error) => return error!(project, "could not read the kept UI values: {error}"),
        };
        let mut ui = self.ui(project);
        for (key, bytes) in records {
            let (Some((scope, id, attr)), Ok(value)) = (
                parse_kept_key(project, &key),
                serde_json::from_slice::<Value>(&bytes),
            ) else {
                continue;
            };
            let values = match scope {
                None => &mut ui.global,
                Some(scope) => ui.scopes.entry(scope.to_string()).or_default(),
            };
            if super::ui::get(values, id, attr).is_none() {
                set(values, id, attr, value);
            }
        }
    }
}

/// The target of a message as the other nodes read it; `None` for what
/// runs on this node only (the project as a whole, nobody).
fn scope_of(target: &EventTarget) -> Option<String> {
    match target {
        EventTarget::Session(id) => Some(format!("session:{id}")),
        EventTarget::User(user) => Some(format!("user:{user}")),
        EventTarget::AllSessions => Some("project".to_string()),
        EventTarget::Project | EventTarget::Nobody => None,
    }
}

/// `project \0 g \0 id \0 attr` for `uiSet`, `project \0 s \0 scope \0 id
/// \0 attr` for a scope's value.
fn kept_key(project: &str, scope: Option<&str>, id: &str, attr: &str) -> String {
    match scope {
        None => format!("{project}\u{0}g\u{0}{id}\u{0}{attr}"),
        Some(scope) => format!("{project}\u{0}s\u{0}{scope}\u{0}{id}\u{0}{attr}"),
    }
}

/// The scope (`None`: global), object id and attribute of a kept key.
fn parse_kept_key<'a>(project: &str, key: &'a str) -> Option<(Option<&'a str>, &'a str, &'a str)> {
    let rest = key.strip_prefix(project)?.strip_prefix('\u{0}')?;
    let (kind, rest) = rest.split_once('\u{0}')?;
    let (scope, rest) = match kind {
        "g" => (None, rest),
        "s" => {
            let (scope, rest) = rest.split_once('\u{0}')?;
            (Some(scope), rest)
        }
        _ => return None,
    };
    let (id, attr) = rest.rsplit_once('\u{0}')?;
    Some((scope, id, attr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_keys_round_trip() {
        for scope in [None, Some("lobby")] {
            let key = kept_key("site", scope, "clock", "text");
            assert_eq!(parse_kept_key("site", &key), Some((scope, "clock", "text")));
            assert_eq!(parse_kept_key("sit", &key), None, "another project's key");
        }
    }

    #[test]
    fn pushes_travel_as_json() {
        let push = Remote::Session {
            session: "s1".into(),
            id: "clock".into(),
            attr: "text".into(),
            value: Value::from("12:00"),
        };
        let json = serde_json::to_vec(&push).unwrap();
        assert_eq!(serde_json::from_slice::<Remote>(&json).unwrap(), push);
    }

    #[test]
    fn messages_to_the_project_as_a_whole_stay_here() {
        assert_eq!(scope_of(&EventTarget::Project), None);
        assert_eq!(scope_of(&EventTarget::Nobody), None);
        for target in [
            EventTarget::Session("s1".into()),
            EventTarget::User("ann".into()),
            EventTarget::AllSessions,
        ] {
            let scope = scope_of(&target).unwrap();
            assert_eq!(EventTarget::from_scope(&scope), Ok(target));
        }
    }
}
