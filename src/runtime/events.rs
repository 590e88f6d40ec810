//! Session events: the optional Rhai callbacks the runtime calls at moments
//! in a session's life and for keystrokes, device data and messages. What a
//! callback returns goes through the Command API decoder and reaches the
//! session's browser as actions, exactly like a `userCommand` answer.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rhai::{Array, Dynamic, Map};
use serde_json::Value;
use tracing::{info, warn};

use super::commands::{abnormal_end, decode_logging_warnings, failed};
use super::Runtime;
use crate::answer::{Answer, Decoded, Origin, Status};
use crate::project::Project;
use crate::protocol::{Device, DeviceEvent, Keystroke, Push, Rejection, Reply};
use crate::script::{self, ScriptError, ScriptErrorKind};
use crate::session::Session;

/// Why a session ended, as `sessionShutdown` receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    IdleTimeout,
    Logout,
    Terminated,
    ProjectRemoved,
    ServerStop,
}

impl ShutdownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownReason::IdleTimeout => "IdleTimeout",
            ShutdownReason::Logout => "Logout",
            ShutdownReason::Terminated => "Terminated",
            ShutdownReason::ProjectRemoved => "ProjectRemoved",
            ShutdownReason::ServerStop => "ServerStop",
        }
    }
}

fn text(value: &str) -> Dynamic {
    Dynamic::from(value.to_string())
}

/// Runs `callback` on a script thread and decodes its answer; `Ok(None)`
/// when no script defines it or all returned `()`.
async fn call(
    project: &Arc<Project>,
    callback: &'static str,
    args: Vec<Dynamic>,
) -> Result<Option<Decoded>, ScriptError> {
    if !project.scripts.defines(callback, args.len()) {
        return Ok(None);
    }
    let job_project = project.clone();
    let job = move || {
        let answer = job_project.scripts.call_first(callback, args)?;
        Ok(answer.map(|answer| {
            decode_logging_warnings(&Answer::from_dynamic(answer), &Origin::default(), callback)
        }))
    };
    script::run_off_async(job)
        .await
        .unwrap_or_else(|join_error| Err(abnormal_end(callback, &join_error)))
}

/// Calls a session's event callback and pushes the actions of its answer to
/// the session's browsers. Failures are logged and counted.
async fn fire(
    runtime: &Runtime,
    project: &Arc<Project>,
    session: &Arc<Session>,
    callback: &'static str,
    args: Vec<Dynamic>,
) {
    match call(project, callback, args).await {
        Ok(Some(mut decoded)) => {
            info!(target: "switchboard::event", session = session.log_id(), "{callback} answered {}", status_text(decoded.status));
            runtime.file_challenges(project, session, &mut decoded.actions);
            push_actions(session, callback, &decoded);
        }
        Ok(None) => {}
        Err(error) => handler_failed(runtime, project, session, &error).await,
    }
}

/// Like [`fire`] for the callbacks that report trouble: a failure there is
/// only logged, so a broken `sessionTerminating` cannot loop.
async fn fire_and_log(
    project: &Arc<Project>,
    session: &Arc<Session>,
    callback: &'static str,
    args: Vec<Dynamic>,
) {
    match call(project, callback, args).await {
        Ok(Some(decoded)) => push_actions(session, callback, &decoded),
        Ok(None) => {}
        Err(error) => {
            warn!(target: "switchboard::script", session = session.log_id(), "{callback} failed: {error}")
        }
    }
}

fn push_actions(session: &Session, event: &str, decoded: &Decoded) {
    if !decoded.actions.is_empty() {
        session.push(
            &Push::Actions {
                event,
                actions: &decoded.actions,
            }
            .to_frame(),
        );
    }
}

fn status_text(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Error => "error",
        Status::Unhandled => "unhandled",
        Status::Failed => "failed",
    }
}

/// Logs a failed handler run of a session. A run stopped by a limit is
/// reported to `sessionTerminating`; too many in a row end the session.
pub async fn handler_failed(
    runtime: &Runtime,
    project: &Arc<Project>,
    session: &Arc<Session>,
    error: &ScriptError,
) {
    warn!(target: "switchboard::script", session = session.log_id(), kind = ?error.kind, "handler failed: {error}");
    let reason = match error.kind {
        ScriptErrorKind::TooManyOperations => "ElementCountExceeded",
        ScriptErrorKind::Timeout => "ElementTimeout",
        ScriptErrorKind::Runtime | ScriptErrorKind::ResourceLimit => return,
    };
    crate::metrics::METRICS.limit_stop(error.kind == ScriptErrorKind::Timeout);
    let stops = session.count_limit_stop();
    session_terminating(runtime, project, session, reason).await;
    if stops >= project.settings.max_limit_stops {
        warn!(
            session = session.log_id(),
            stops, "handlers keep getting stopped: terminating the session"
        );
        session_terminating(runtime, project, session, "TerminationTimeout").await;
        runtime
            .end_session(session, ShutdownReason::Terminated)
            .await;
    }
}

pub async fn session_startup(runtime: &Runtime, project: &Arc<Project>, session: &Arc<Session>) {
    fire(
        runtime,
        project,
        session,
        "sessionStartup",
        vec![text(&session.id)],
    )
    .await;
}

pub async fn page_startup(
    runtime: &Runtime,
    project: &Arc<Project>,
    session: &Arc<Session>,
    page: &str,
) {
    fire(
        runtime,
        project,
        session,
        "pageStartup",
        vec![text(&session.id), text(page)],
    )
    .await;
}

pub async fn session_shutdown(
    _runtime: &Runtime,
    project: &Arc<Project>,
    session: &Arc<Session>,
    reason: ShutdownReason,
) {
    fire_and_log(
        project,
        session,
        "sessionShutdown",
        vec![text(&session.id), text(reason.as_str())],
    )
    .await;
}

pub async fn session_terminating(
    _runtime: &Runtime,
    project: &Arc<Project>,
    session: &Arc<Session>,
    reason: &str,
) {
    info!(session = session.log_id(), reason, "session terminating");
    fire_and_log(
        project,
        session,
        "sessionTerminating",
        vec![text(&session.id), text(reason)],
    )
    .await;
}

/// `sessionRestored(session, type, pages)`: after a restart (`persisted`,
/// `failure`) or a hot reload (`newdoc`).
pub async fn session_restored(
    runtime: &Runtime,
    project: &Arc<Project>,
    session: &Arc<Session>,
    kind: &str,
) {
    let pages: Array = session
        .with_state(|state| state.pages())
        .into_iter()
        .map(Dynamic::from)
        .collect();
    info!(session = session.log_id(), kind, "session restored");
    fire(
        runtime,
        project,
        session,
        "sessionRestored",
        vec![text(&session.id), text(kind), Dynamic::from_array(pages)],
    )
    .await;
}

pub async fn message(
    runtime: &Runtime,
    project: &Arc<Project>,
    session: &Arc<Session>,
    handler: &str,
    payload: Dynamic,
) {
    fire(
        runtime,
        project,
        session,
        "message",
        vec![text(&session.id), text(handler), payload],
    )
    .await;
}

/// A keystroke matcher fired in the browser: `keystroke(session, page, event)`.
pub async fn keystroke(
    runtime: &Runtime,
    project: Arc<Project>,
    session: Arc<Session>,
    keystroke: Keystroke,
    tab: Option<&str>,
) -> Result<Reply, Rejection> {
    let seq = keystroke.seq;
    let Some(matcher) = project
        .settings
        .keystrokes
        .iter()
        .find(|m| m.name == keystroke.matcher)
    else {
        return Err(Rejection::new(
            seq,
            format!("no keystroke matcher named `{}`", keystroke.matcher),
        ));
    };
    let matches = match project.keystroke_patterns.get(&matcher.name) {
        Some(regex) => {
            let typed = keystroke.buffer.as_deref().unwrap_or_default();
            let buffer = last_chars(typed, matcher.buffer.unwrap_or(usize::MAX));
            match regex.captures(buffer) {
                Some(captures) => captures
                    .iter()
                    .map(|c| Dynamic::from(c.map_or("", |m| m.as_str()).to_string()))
                    .collect(),
                None => {
                    return Ok(Reply {
                        seq,
                        status: Status::Ok,
                        actions: Vec::new(),
                    });
                }
            }
        }
        None => Array::new(),
    };
    let mut event = keyboard_event(&keystroke.event);
    event.insert("name".into(), text(&matcher.name));
    event.insert("matches".into(), Dynamic::from_array(matches));
    let page = keystroke
        .page
        .or_else(|| tab.and_then(|tab| session.with_state(|state| state.tabs.get(tab).cloned())))
        .unwrap_or_default();
    let args = vec![text(&session.id), text(&page), Dynamic::from_map(event)];
    Ok(reply_from_event(runtime, &project, &session, seq, "keystroke", args).await)
}

/// The seed's KeyboardEvent fields, typed; anything else the client sent is dropped.
fn keyboard_event(sent: &serde_json::Map<String, Value>) -> Map {
    let mut event = Map::new();
    for key in ["key", "code"] {
        event.insert(
            key.into(),
            text(sent.get(key).and_then(Value::as_str).unwrap_or_default()),
        );
    }
    for key in [
        "altKey",
        "ctrlKey",
        "shiftKey",
        "metaKey",
        "isComposing",
        "repeat",
    ] {
        event.insert(
            key.into(),
            Dynamic::from(sent.get(key).and_then(Value::as_bool).unwrap_or(false)),
        );
    }
    event.insert(
        "location".into(),
        Dynamic::from(sent.get("location").and_then(Value::as_i64).unwrap_or(0)),
    );
    event
}

fn last_chars(text: &str, count: usize) -> &str {
    let skip = text.chars().count().saturating_sub(count);
    text.char_indices()
        .nth(skip)
        .map_or("", |(at, _)| &text[at..])
}

/// A device event: `barcode(session, data, context)`, `nfc(…)`,
/// `accelerometer(…)`, or `bluetooth(session, data)`.
pub async fn device(
    runtime: &Runtime,
    project: Arc<Project>,
    session: Arc<Session>,
    device: Device,
) -> Result<Reply, Rejection> {
    let seq = device.seq;
    let data =
        device_data(device.event, device.data).map_err(|reason| Rejection::new(seq, reason))?;
    let data = rhai::serde::to_dynamic(data).map_err(|e| Rejection::new(seq, e.to_string()))?;
    let mut args = vec![text(&session.id), data];
    if device.event != DeviceEvent::Bluetooth {
        args.push(rhai::serde::to_dynamic(device.context).unwrap_or(Dynamic::UNIT));
    }
    Ok(reply_from_event(
        runtime,
        &project,
        &session,
        seq,
        device.event.callback(),
        args,
    )
    .await)
}

/// Checks the data is shaped as the seed describes, adding a barcode's
/// `timestamp` when the sender left it out.
fn device_data(event: DeviceEvent, data: Value) -> Result<Value, String> {
    match event {
        DeviceEvent::Barcode => {
            let Value::Object(mut data) = data else {
                return Err("barcode data must be an object with `text`".into());
            };
            if !data.get("text").is_some_and(Value::is_string) {
                return Err("barcode data needs a string `text`".into());
            }
            data.entry("timestamp")
                .or_insert_with(|| Value::from(now_millis()));
            Ok(Value::Object(data))
        }
        DeviceEvent::Nfc
            if data
                .as_array()
                .is_some_and(|records| records.iter().all(Value::is_object)) =>
        {
            Ok(data)
        }
        DeviceEvent::Nfc => Err("nfc data must be a list of records".into()),
        DeviceEvent::Accelerometer if data.pointer("/values/data").is_some_and(Value::is_array) => {
            Ok(data)
        }
        DeviceEvent::Accelerometer => {
            Err("accelerometer data needs `values.data`, a list of {x, y, z}".into())
        }
        DeviceEvent::Bluetooth if data.get("values").is_some_and(Value::is_array) => Ok(data),
        DeviceEvent::Bluetooth => {
            Err("bluetooth data needs `values`, a list of advertising data".into())
        }
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs an event callback whose answer is the reply to a frame.
async fn reply_from_event(
    runtime: &Runtime,
    project: &Arc<Project>,
    session: &Arc<Session>,
    seq: Option<u64>,
    callback: &'static str,
    args: Vec<Dynamic>,
) -> Reply {
    let decoded = match call(project, callback, args).await {
        Ok(Some(mut decoded)) => {
            session.clear_limit_stops();
            runtime.file_challenges(project, session, &mut decoded.actions);
            decoded
        }
        Ok(None) => Decoded {
            status: Status::Unhandled,
            actions: Vec::new(),
            quiet: false,
            warnings: Vec::new(),
        },
        Err(error) => {
            handler_failed(runtime, project, session, &error).await;
            failed(None)
        }
    };
    info!(target: "switchboard::event", session = session.log_id(), "{callback} [{}]", status_text(decoded.status).to_uppercase());
    Reply {
        seq,
        status: decoded.status,
        actions: decoded.actions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_chars_counts_characters_not_bytes() {
        assert_eq!(last_chars("abcdef", 3), "def");
        assert_eq!(last_chars("ab", 3), "ab");
        assert_eq!(last_chars("éèà", 2), "èà");
        assert_eq!(last_chars("x", usize::MAX), "x");
    }

    #[test]
    fn device_data_shapes() {
        let barcode =
            device_data(DeviceEvent::Barcode, serde_json::json!({"text": "123"})).unwrap();
        assert!(
            barcode["timestamp"].as_u64().unwrap() > 0,
            "a timestamp is added"
        );
        assert!(device_data(DeviceEvent::Barcode, serde_json::json!({"txt": "1"})).is_err());
        assert!(device_data(DeviceEvent::Nfc, serde_json::json!([{"type": "T"}])).is_ok());
        assert!(device_data(DeviceEvent::Nfc, serde_json::json!({"type": "T"})).is_err());
        assert!(
            device_data(
                DeviceEvent::Accelerometer,
                serde_json::json!({"values": {"data": [{"x": 1}]}})
            )
            .is_ok()
        );
        assert!(
            device_data(
                DeviceEvent::Accelerometer,
                serde_json::json!({"values": []})
            )
            .is_err()
        );
        assert!(
            device_data(
                DeviceEvent::Bluetooth,
                serde_json::json!({"values": [{"rssi": -48}]})
            )
            .is_ok()
        );
        assert!(device_data(DeviceEvent::Bluetooth, serde_json::json!([1])).is_err());
    }

    #[test]
    fn keyboard_events_are_typed() {
        let sent = serde_json::json!({"key": "5", "code": "Digit5", "shiftKey": true, "location": 3, "evil": "<x>"});
        let event = keyboard_event(sent.as_object().unwrap());
        assert_eq!(event["key"].clone().into_string().unwrap(), "5");
        assert!(event["shiftKey"].as_bool().unwrap());
        assert!(!event["ctrlKey"].as_bool().unwrap());
        assert_eq!(event["location"].as_int().unwrap(), 3);
        assert!(!event.contains_key("evil"));
    }
}
