//! Server push: UI attribute values set by scripts for everyone
//! (`uiSet`), for one session, or for the sessions subscribed to a scope
//! (`uiSessionSet`); actions sent to a session outside a reply
//! (`sendActions`); and messages (`sendMessage`).
//!
//! When a value for one object attribute exists at several levels, a
//! session sees its own first, then the global one, then its scopes' (in
//! scope-name order) — HSYCO's priority.

use std::collections::BTreeMap;
use std::sync::Arc;

use rhai::Dynamic;
use serde_json::Value;

use super::{Runtime, events};
use crate::answer::{Answer, Origin};
use crate::protocol::{Push, UiValue};
use crate::session::{Frame, Session, SessionState};

/// The attributes a script may push. `text` and `label` set an object's
/// text, `items` the entries of a list or select.
pub const ATTRIBUTES: &[&str] = &[
    "text", "label", "value", "visible", "enabled", "class", "style", "items",
];

type Values = BTreeMap<String, BTreeMap<String, Value>>;

/// A project's pushed values above session level.
#[derive(Debug, Default)]
pub struct ProjectUi {
    global: Values,
    scopes: BTreeMap<String, Values>,
}

fn get<'a>(values: &'a Values, id: &str, attr: &str) -> Option<&'a Value> {
    values.get(id)?.get(attr)
}

/// Stores `value` (or removes the entry when `value` is null).
fn set(values: &mut Values, id: &str, attr: &str, value: Value) {
    if value.is_null() {
        if let Some(attrs) = values.get_mut(id) {
            attrs.remove(attr);
            if attrs.is_empty() {
                values.remove(id);
            }
        }
    } else {
        values
            .entry(id.to_string())
            .or_default()
            .insert(attr.to_string(), value);
    }
}

fn check_attribute(attr: &str) -> Result<(), String> {
    if ATTRIBUTES.contains(&attr) {
        Ok(())
    } else {
        Err(format!(
            "unknown UI attribute `{attr}`; use one of {}",
            ATTRIBUTES.join(", ")
        ))
    }
}

fn to_json(value: &Dynamic) -> Result<Value, String> {
    rhai::serde::from_dynamic(value)
        .map_err(|e| format!("the value cannot be sent to a browser: {e}"))
}

fn ui_frame(id: &str, attr: &str, value: Value) -> Frame {
    Push::Ui {
        set: &[UiValue {
            id: id.to_string(),
            attr: attr.to_string(),
            value,
        }],
    }
    .to_frame()
}

/// A pushed value is newer than what the session remembered of the object:
/// a pushed `value` replaces the last accepted one as what rollback restores,
/// and (`own`) a project-wide value replaces the session's own. Returns
/// whether the persisted state changed.
fn supersede(state: &mut SessionState, id: &str, attr: &str, own: bool) -> bool {
    let mut changed = attr == "value" && state.last_valid.remove(id).is_some();
    if own && get(&state.ui, id, attr).is_some() {
        set(&mut state.ui, id, attr, Value::Null);
        changed = true;
    }
    changed
}

/// Where the value a session sees for one object attribute comes from.
enum Seen<'a> {
    /// The session's own value.
    Own(Value),
    /// A project-level value (global, or one of the session's scopes);
    /// `None`: no value anywhere.
    Shared(Option<&'a Value>),
}

/// The value a session sees for one object attribute, looked up under one
/// lock of the session's state.
fn seen<'a>(ui: &'a ProjectUi, session: &Session, id: &str, attr: &str) -> Seen<'a> {
    session.with_state(|state| {
        if let Some(own) = get(&state.ui, id, attr) {
            return Seen::Own(own.clone());
        }
        if let Some(global) = get(&ui.global, id, attr) {
            return Seen::Shared(Some(global));
        }
        Seen::Shared(state.scopes.iter().find_map(|scope| {
            ui.scopes
                .get(scope)
                .and_then(|values| get(values, id, attr))
        }))
    })
}

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
        let mut ui = self.ui(project);
        set(&mut ui.global, id, attr, value);
        let sessions = self.sessions.of_project(project);
        let superseded: Vec<Arc<Session>> = sessions
            .iter()
            .filter(|session| session.with_state(|state| supersede(state, id, attr, true)))
            .cloned()
            .collect();
        self.push_if_changed(&ui, sessions, id, attr);
        drop(ui);
        for session in superseded {
            self.persist(&session);
        }
        Ok(())
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
    /// project, or else a scope name.
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
        let mut ui = self.ui(project);
        if let Some(session) = self.sessions.get(target, project) {
            session.with_state(|state| {
                supersede(state, id, attr, false);
                set(&mut state.ui, id, attr, value);
            });
            self.persist(&session);
            self.push_if_changed(&ui, vec![session], id, attr);
            return Ok(());
        }
        set(
            ui.scopes.entry(target.to_string()).or_default(),
            id,
            attr,
            value,
        );
        let subscribed: Vec<Arc<Session>> = self
            .sessions
            .of_project(project)
            .into_iter()
            .filter(|s| s.with_state(|state| state.scopes.contains(target)))
            .collect();
        let superseded: Vec<Arc<Session>> = subscribed
            .iter()
            .filter(|session| session.with_state(|state| supersede(state, id, attr, false)))
            .cloned()
            .collect();
        self.push_if_changed(&ui, subscribed, id, attr);
        drop(ui);
        for session in superseded {
            self.persist(&session);
        }
        Ok(())
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
    /// actions. Returns whether the session exists.
    pub fn send_actions(&self, project: &str, session: &str, answer: Dynamic) -> bool {
        let Some(session) = self.sessions.get(session, project) else {
            return false;
        };
        let mut decoded = super::commands::decode_logging_warnings(
            &Answer::from_dynamic(answer),
            &Origin::default(),
            "sendActions",
        );
        if let Some(project) = self.project(project) {
            self.file_challenges(&project, &session, &mut decoded.actions);
        }
        session.push(
            &Push::Actions {
                event: "sendActions",
                actions: &decoded.actions,
            }
            .to_frame(),
        );
        true
    }

    /// `sendMessage`: runs `message(session, handler, payload)` in every
    /// session the scope names — `session:<id>`, `user:<userid>`, or
    /// `project` (all sessions). Returns how many sessions it was sent to;
    /// the handlers run in the background.
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
        let targets: Vec<Arc<Session>> = match scope.split_once(':') {
            Some(("session", id)) => self.sessions.get(id, &project.name).into_iter().collect(),
            Some(("user", user)) => self
                .sessions
                .of_project(&project.name)
                .into_iter()
                .filter(|s| s.userid == user)
                .collect(),
            None if scope == "project" || scope.is_empty() => {
                self.sessions.of_project(&project.name)
            }
            None if is_perspective_scope(scope) => {
                // The seed's letters: S (sessions) reaches every session; G
                // (gateway handlers) and C (Vision clients) name targets
                // Switchboard does not have, and reach nobody.
                if scope.contains(['S', 's']) {
                    self.sessions.of_project(&project.name)
                } else {
                    Vec::new()
                }
            }
            _ => {
                return Err(format!(
                    "unknown message scope `{scope}`; use session:<id>, user:<id>, project, or the letters S, G, C"
                ));
            }
        };
        if !project.scripts.defines("message", 3) {
            return Ok(0);
        }
        let Some(runtime) = self.arc() else {
            return Ok(0);
        };
        let payload = rhai::serde::to_dynamic(payload).map_err(|e| e.to_string())?;
        for session in &targets {
            let (runtime, project, session) = (runtime.clone(), project.clone(), session.clone());
            let (handler, payload) = (handler.to_string(), payload.clone());
            tokio::spawn(async move {
                events::message(&runtime, &project, &session, &handler, payload).await
            });
        }
        Ok(targets.len())
    }
}

/// Perspective's `sendMessage` scope: any of the letters S, G and C.
fn is_perspective_scope(scope: &str) -> bool {
    !scope.is_empty() && scope.chars().all(|c| matches!(c.to_ascii_uppercase(), 'S' | 'G' | 'C'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perspective_scope_letters() {
        for scope in ["S", "G", "C", "SG", "CGS", "s"] {
            assert!(is_perspective_scope(scope), "{scope}");
        }
        for scope in ["", "X", "project", "SX", "session:1"] {
            assert!(!is_perspective_scope(scope), "{scope}");
        }
    }

    #[test]
    fn null_removes_a_value() {
        let mut values = Values::new();
        set(&mut values, "lamp", "text", Value::from("on"));
        assert_eq!(get(&values, "lamp", "text"), Some(&Value::from("on")));
        set(&mut values, "lamp", "text", Value::Null);
        assert!(values.is_empty());
    }

    #[test]
    fn only_known_attributes() {
        assert!(check_attribute("visible").is_ok());
        assert!(check_attribute("onclick").is_err());
    }
}
