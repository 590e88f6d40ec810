//! Server push: UI attribute values set by scripts for everyone
//! (`uiSet`), for one session, or for the sessions subscribed to a scope
//! (`uiSessionSet`); actions sent to a session outside a reply
//! (`sendActions`); and messages (`sendMessage`). The values themselves and
//! which one a session sees are `ui`'s. Each push enters through
//! `fanout`, which applies it here and, in a cluster, on the other nodes
//! through the same `apply_…` functions.

use std::sync::Arc;

use rhai::Dynamic;
use serde_json::Value;

use super::external::{EventKind, EventTarget, ExternalEvent};
use super::fanout::{Here, Remote};
use super::handlers;
use super::state::Runtime;
use super::ui::{
    ProjectUi, Seen, Values, check_attribute, seen, set, supersede, to_json, ui_frame,
};
use crate::answer::{Answer, Origin};
use crate::protocol::UiValue;
use crate::session::{Frame, Session};

impl Runtime {
    /// The value a session sees for one object attribute.
    fn effective(&self, ui: &ProjectUi, session: &Session, id: &str, attr: &str) -> Value {
        match seen(ui, session, id, attr) {
            Seen::Own(value) => value,
            Seen::Shared(value) => value.cloned().unwrap_or(Value::Null),
        }
    }

    /// `uiSet(id, attr, value)`: for every session of the project.
    ///
    /// It is the newest word on that attribute, so it replaces what sessions
    /// set for themselves: an earlier `uiSessionSet(session, …)` (often made
    /// only to give rollback a value) must not hide project-wide values from
    /// that session for ever.
    pub fn ui_set(
        &self,
        project: &str,
        id: &str,
        attr: &str,
        value: &Dynamic,
    ) -> Result<(), String> {
        check_attribute(attr)?;
        let value = to_json(value)?;
        self.fan_out(
            project,
            Remote::Ui {
                id: id.to_string(),
                attr: attr.to_string(),
                value,
            },
        );
        Ok(())
    }

    /// A `uiSet` made here or on another node (`fanout`).
    pub(super) fn apply_ui_set(&self, project: &str, id: &str, attr: &str, value: Value) {
        let mut ui = self.ui(project);
        set(&mut ui.global, id, attr, value);
        let sessions = self.delivered(self.sessions.of_project(project));
        let superseded = superseded_in(&sessions, id, attr, true);
        self.push_if_changed(&ui, sessions, id, attr);
        drop(ui);
        for session in superseded {
            self.persist(&session);
        }
    }

    /// The value the page shows for an object's `value`, as pushed by
    /// `uiSet`/`uiSessionSet`: what rollback restores when no command from
    /// the object was accepted since.
    pub(super) fn shown_value(&self, session: &Session, id: &str) -> Option<String> {
        let ui = self.ui(&session.project);
        match self.effective(&ui, session, id, "value") {
            Value::Null => None,
            Value::String(text) => Some(text),
            other => Some(other.to_string()),
        }
    }

    /// `uiSessionSet(target, id, attr, value)`: `target` is a session of the
    /// project (held by any node of a cluster), or else a scope name.
    pub fn ui_session_set(
        &self,
        project: &str,
        target: &str,
        id: &str,
        attr: &str,
        value: &Dynamic,
    ) -> Result<(), String> {
        check_attribute(attr)?;
        let value = to_json(value)?;
        let (target, id, attr) = (target.to_string(), id.to_string(), attr.to_string());
        let push = if self.session(&target, project).is_some() {
            Remote::Session {
                session: target,
                id,
                attr,
                value,
            }
        } else {
            Remote::Scope {
                scope: target,
                id,
                attr,
                value,
            }
        };
        self.fan_out(project, push);
        Ok(())
    }

    /// A `uiSessionSet` to one session, made here or on another node. The
    /// origin stores the value in the session's record (it read the record
    /// first, see [`Runtime::session`]); the node holding the session's
    /// socket shows it.
    pub(super) fn apply_session_set(
        &self,
        project: &str,
        target: &str,
        id: &str,
        attr: &str,
        value: Value,
        here: Here,
    ) {
        let Some(session) = self.sessions.get(target, project) else {
            return;
        };
        let delivered = self.delivers_to(&session);
        if here == Here::Remote && !delivered {
            return;
        }
        let ui = self.ui(project);
        session.with_state(|state| {
            supersede(state, id, attr, false);
            set(&mut state.ui, id, attr, value);
        });
        if delivered {
            self.push_if_changed(&ui, vec![session.clone()], id, attr);
        }
        drop(ui);
        if here == Here::Origin {
            self.persist(&session);
        }
    }

    /// A `uiSessionSet` to a scope, made here or on another node.
    pub(super) fn apply_scope_set(
        &self,
        project: &str,
        scope: &str,
        id: &str,
        attr: &str,
        value: Value,
    ) {
        let mut ui = self.ui(project);
        set(
            ui.scopes.entry(scope.to_string()).or_default(),
            id,
            attr,
            value,
        );
        let subscribed: Vec<Arc<Session>> = self
            .delivered(self.sessions.of_project(project))
            .into_iter()
            .filter(|s| s.with_state(|state| state.scopes.contains(scope)))
            .collect();
        let superseded = superseded_in(&subscribed, id, attr, false);
        self.push_if_changed(&ui, subscribed, id, attr);
        drop(ui);
        for session in superseded {
            self.persist(&session);
        }
    }

    /// Pushes each session's effective value. One frame is shared by all
    /// sessions that see the same project-level value (the common case of a
    /// broadcast): per session this costs one look at its own values and a
    /// queue send, nothing serialized or allocated.
    fn push_if_changed(&self, ui: &ProjectUi, sessions: Vec<Arc<Session>>, id: &str, attr: &str) {
        let mut shared: Vec<(*const Value, Frame)> = Vec::new();
        let mut null_frame: Option<Frame> = None;
        for session in sessions {
            let frame = match seen(ui, &session, id, attr) {
                Seen::Own(value) => ui_frame(id, attr, value),
                Seen::Shared(Some(value)) => {
                    let key: *const Value = value;
                    match shared.iter().find(|(k, _)| std::ptr::eq(*k, key)) {
                        Some((_, frame)) => frame.clone(),
                        None => {
                            let frame = ui_frame(id, attr, value.clone());
                            shared.push((key, frame.clone()));
                            frame
                        }
                    }
                }
                Seen::Shared(None) => null_frame
                    .get_or_insert_with(|| ui_frame(id, attr, Value::Null))
                    .clone(),
            };
            session.push(&frame);
        }
    }

    /// Every attribute value the session sees: sent when a browser connects.
    pub fn ui_snapshot(&self, session: &Session) -> Vec<UiValue> {
        let ui = self.ui(&session.project);
        let mut keys: Vec<(String, String)> = Vec::new();
        let mut collect = |values: &Values| {
            for (id, attrs) in values {
                keys.extend(attrs.keys().map(|attr| (id.clone(), attr.clone())));
            }
        };
        collect(&ui.global);
        session.with_state(|state| collect(&state.ui));
        for scope in session.with_state(|state| state.scopes.clone()) {
            if let Some(values) = ui.scopes.get(&scope) {
                collect(values);
            }
        }
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|(id, attr)| UiValue {
                value: self.effective(&ui, session, &id, &attr),
                id,
                attr,
            })
            .collect()
    }

    /// Subscribes a session to a scope (`subscribe = false`: unsubscribes)
    /// and pushes what that changes.
    pub fn set_scope(&self, session: &Arc<Session>, scope: &str, subscribe: bool) {
        let changed = session.with_state(|state| {
            if subscribe {
                state.scopes.insert(scope.to_string())
            } else {
                state.scopes.remove(scope)
            }
        });
        if !changed {
            return;
        }
        self.persist(session);
        let ui = self.ui(&session.project);
        if let Some(values) = ui.scopes.get(scope) {
            for (id, attrs) in values {
                for attr in attrs.keys() {
                    session.push(&ui_frame(id, attr, self.effective(&ui, session, id, attr)));
                }
            }
        }
    }

    /// `sendActions(session, answer)`: decodes the answer and pushes its
    /// actions, wherever the session's socket is. Returns whether the
    /// session exists.
    pub fn send_actions(&self, project: &str, session: &str, answer: Dynamic) -> bool {
        if self.session(session, project).is_none() {
            return false;
        }
        self.publish_actions(project, session, &answer);
        self.deliver_actions(project, session, answer);
        true
    }

    /// A `sendActions` made here or on another node, for a session whose
    /// socket is here.
    pub(super) fn deliver_actions(&self, project: &str, session: &str, answer: Dynamic) {
        let Some(session) = self.sessions.get(session, project) else {
            return;
        };
        if !self.delivers_to(&session) {
            return;
        }
        let mut decoded = handlers::decode_logging_warnings(
            &Answer::from_dynamic(answer),
            &Origin::default(),
            "sendActions",
        );
        if let Some(project) = self.project(project) {
            self.file_challenges(&project, &session, &mut decoded.actions);
        }
        handlers::deliver(&session, "sendActions", &decoded.actions);
    }

    /// `sendMessage`: runs `message(session, handler, payload)` in every
    /// session the scope names (see [`EventTarget::from_scope`]). Returns
    /// how many it was sent to; the handlers run in the background.
    pub fn send_message(
        &self,
        project: &str,
        handler: &str,
        payload: Value,
        scope: &str,
    ) -> Result<usize, String> {
        let project = self
            .project(project)
            .ok_or_else(|| format!("no project `{project}` is served"))?;
        let event = ExternalEvent {
            kind: EventKind::Message {
                handler: handler.to_string(),
                payload,
            },
            target: EventTarget::from_scope(scope)?,
        };
        self.start_event(&project, event)
            .map_err(|error| error.to_string())
    }
}

/// Applies [`supersede`] to each session; returns those whose persisted
/// state changed (to be written once the UI lock is released).
fn superseded_in(sessions: &[Arc<Session>], id: &str, attr: &str, own: bool) -> Vec<Arc<Session>> {
    sessions
        .iter()
        .filter(|session| session.with_state(|state| supersede(state, id, attr, own)))
        .cloned()
        .collect()
}
