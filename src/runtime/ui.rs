//! Pushed UI values as data: what scripts set for everyone (`uiSet`), for
//! one session or for a scope (`uiSessionSet`), which value a session sees
//! (HSYCO's priority: its own, then the global one, then its scopes' in
//! scope-name order), and the frame that carries one value. No pushing
//! happens here (that is `push`).

use std::collections::BTreeMap;

use rhai::Dynamic;
use serde_json::Value;

use crate::protocol::{Push, UiValue};
use crate::session::{Frame, Session, SessionState};

/// The attributes a script may push. `text` and `label` set an object's
/// text, `items` the entries of a list or select.
pub const ATTRIBUTES: &[&str] = &[
    "text", "label", "value", "visible", "enabled", "class", "style", "items",
];

pub(super) type Values = BTreeMap<String, BTreeMap<String, Value>>;

/// A project's pushed values above session level.
#[derive(Debug, Default)]
pub struct ProjectUi {
    pub(super) global: Values,
    pub(super) scopes: BTreeMap<String, Values>,
}

pub(super) fn get<'a>(values: &'a Values, id: &str, attr: &str) -> Option<&'a Value> {
    values.get(id)?.get(attr)
}

/// Stores `value` (or removes the entry when `value` is null).
pub(super) fn set(values: &mut Values, id: &str, attr: &str, value: Value) {
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

pub(super) fn check_attribute(attr: &str) -> Result<(), String> {
    if ATTRIBUTES.contains(&attr) {
        Ok(())
    } else {
        Err(format!(
            "unknown UI attribute `{attr}`; use one of {}",
            ATTRIBUTES.join(", ")
        ))
    }
}

pub(super) fn to_json(value: &Dynamic) -> Result<Value, String> {
    rhai::serde::from_dynamic(value)
        .map_err(|e| format!("the value cannot be sent to a browser: {e}"))
}

pub(super) fn ui_frame(id: &str, attr: &str, value: Value) -> Frame {
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
pub(super) fn supersede(state: &mut SessionState, id: &str, attr: &str, own: bool) -> bool {
    let mut changed = attr == "value" && state.last_valid.remove(id).is_some();
    if own && get(&state.ui, id, attr).is_some() {
        set(&mut state.ui, id, attr, Value::Null);
        changed = true;
    }
    changed
}

/// Where the value a session sees for one object attribute comes from.
pub(super) enum Seen<'a> {
    /// The session's own value.
    Own(Value),
    /// A project-level value (global, or one of the session's scopes);
    /// `None`: no value anywhere.
    Shared(Option<&'a Value>),
}

/// The value a session sees for one object attribute, looked up under one
/// lock of the session's state.
pub(super) fn seen<'a>(ui: &'a ProjectUi, session: &Session, id: &str, attr: &str) -> Seen<'a> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
