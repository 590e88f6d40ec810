//! Session events: the optional Rhai callbacks the runtime calls at moments
//! in a session's life (`sessionStartup`, `pageStartup`, `sessionShutdown`,
//! `sessionRestored`), for messages, keystrokes and device data. Each runs
//! through [`handlers`](super::handlers) like a `userCommand`: its answer
//! reaches the session's browsers as actions (or is the reply to the
//! keystroke or device frame that caused it).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rhai::{Array, Dynamic, Map};
use serde_json::Value;
use tracing::info;

use super::handlers::{self, Call, OnFailure};
use super::state::{Runtime, ShutdownReason};
use crate::answer::Status;
use crate::project::Project;
use crate::protocol::{Device, DeviceEvent, Keystroke, Rejection, Reply};
use crate::session::Session;

fn text(value: &str) -> Dynamic {
    Dynamic::from(value.to_string())
}

/// Calls a session's event callback and pushes the actions of its answer to
/// the session's browsers.
async fn fire(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    call: Call,
    on_failure: OnFailure,
) {
    let ran = handlers::run(runtime, project, Some(session), call).await;
    handlers::report(runtime, project, session, &ran, on_failure).await;
    if let (Some(decoded), None) = (&ran.decoded, &ran.failure) {
        info!(target: "switchboard::event", session = session.log_id(), "{} answered {}", ran.callback, decoded.status.as_str());
        handlers::deliver(session, ran.callback, &decoded.actions);
    }
}

pub async fn session_startup(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
) {
    let call = Call::new("sessionStartup", vec![text(&session.id)]);
    fire(runtime, project, session, call, OnFailure::Count).await;
}

/// `pageStartup(session, page)`: a new tab opened `page`; `tab` is its id.
pub async fn page_startup(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    page: &str,
    tab: &str,
) {
    let page = PageInfo::new(project, page, tab);
    let call = Call::new("pageStartup", vec![text(&session.id), Dynamic::from(page)]);
    fire(runtime, project, session, call, OnFailure::Count).await;
}

/// The page a callback is about: the seed passes page objects (`pageId`,
/// `path`), older scripts compare a page name. This is both: `page.id`,
/// `page.path`, `page.name` and `page.props.pageId`/`.path` read it, and it
/// prints as and compares equal to its name (`page == "home"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageInfo {
    /// The browser tab's id (the seed's `pageId`); `""` when unknown.
    pub id: String,
    /// The page's URL path, `/<project>/<page>`.
    pub path: String,
    pub name: String,
}

impl PageInfo {
    pub fn new(project: &Project, name: &str, tab: &str) -> PageInfo {
        PageInfo {
            id: tab.to_string(),
            path: format!("/{}/{name}", project.name),
            name: name.to_string(),
        }
    }
}

/// Registers the `Page` type scripts get as `page`.
pub fn register_page_type(engine: &mut rhai::Engine) {
    engine.register_type_with_name::<PageInfo>("Page");
    engine.register_get("id", |p: &mut PageInfo| p.id.clone());
    engine.register_get("path", |p: &mut PageInfo| p.path.clone());
    engine.register_get("name", |p: &mut PageInfo| p.name.clone());
    engine.register_get("props", |p: &mut PageInfo| {
        let mut props = Map::new();
        props.insert("pageId".into(), text(&p.id));
        props.insert("path".into(), text(&p.path));
        props.insert("name".into(), text(&p.name));
        props
    });
    engine.register_fn("to_string", |p: &mut PageInfo| p.name.clone());
    engine.register_fn("to_debug", |p: &mut PageInfo| {
        format!("Page(id={:?}, path={:?}, name={:?})", p.id, p.path, p.name)
    });
    engine.register_fn("==", |p: PageInfo, name: &str| p.name == name);
    engine.register_fn("==", |name: &str, p: PageInfo| p.name == name);
    engine.register_fn("!=", |p: PageInfo, name: &str| p.name != name);
    engine.register_fn("!=", |name: &str, p: PageInfo| p.name != name);
}

/// `sessionShutdown(session, reason)`; a failure there is only logged.
pub async fn session_shutdown(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    reason: ShutdownReason,
) {
    let call = Call::new(
        "sessionShutdown",
        vec![text(&session.id), text(reason.as_str())],
    );
    fire(runtime, project, session, call, OnFailure::LogOnly).await;
}

/// `serverStopping(session)`: a clean stop is about to pause the session
/// (it comes back with `sessionRestored` `persisted`). Not
/// `sessionShutdown`: the session does not end. A failure is only logged.
pub async fn server_stopping(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
) {
    let call = Call::new("serverStopping", vec![text(&session.id)]);
    fire(runtime, project, session, call, OnFailure::LogOnly).await;
}

/// `sessionRestored(session, type, pages)`: after a restart (`persisted`,
/// `failure`) or a hot reload (`newdoc`).
pub async fn session_restored(
    runtime: &Arc<Runtime>,
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
    let mut args = vec![
        text(&session.id),
        text(kind),
        Dynamic::from_array(pages.clone()),
    ];
    // The SCXML seed's event also has `states` and the previous `name` (the
    // application's, here the project's): given to a 4-parameter handler.
    if project.scripts.defines("sessionRestored", 4) {
        let mut previous = Map::new();
        previous.insert("sessionid".into(), text(&session.id));
        previous.insert("type".into(), text(kind));
        previous.insert("states".into(), Dynamic::from_array(pages));
        previous.insert("name".into(), text(&project.name));
        args.push(Dynamic::from_map(previous));
    }
    let call = Call::new("sessionRestored", args);
    fire(runtime, project, session, call, OnFailure::Count).await;
}

/// Runs an event callback for a session (a message, a device event from
/// outside the browser) and pushes its answer's actions.
pub async fn fire_event(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    call: Call,
) {
    fire(runtime, project, session, call, OnFailure::Count).await;
}

/// A keystroke matcher fired in the browser: `keystroke(session, page, event)`.
pub async fn keystroke(
    runtime: &Arc<Runtime>,
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
    let page = PageInfo::new(&project, &page, tab.unwrap_or_default());
    let args = vec![
        text(&session.id),
        Dynamic::from(page),
        Dynamic::from_map(event),
    ];
    Ok(reply_from_event(
        runtime,
        &project,
        &session,
        seq,
        Call::new("keystroke", args),
    )
    .await)
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

/// A device event from a browser: `barcode(session, data, context)`,
/// `nfc(…)`, `accelerometer(…)`, or `bluetooth(session, data)`; its answer
/// is the reply.
pub async fn device(
    runtime: &Arc<Runtime>,
    project: Arc<Project>,
    session: Arc<Session>,
    device: Device,
) -> Result<Reply, Rejection> {
    let seq = device.seq;
    let call = device_call(&session.id, device).map_err(|reason| Rejection::new(seq, reason))?;
    Ok(reply_from_event(runtime, &project, &session, seq, call).await)
}

/// The callback a device event runs, with its arguments; an error when the
/// data is not shaped as the seed describes.
pub fn device_call(session: &str, device: Device) -> Result<Call, String> {
    let data = device_data(device.event, device.data)?;
    let data = rhai::serde::to_dynamic(data).map_err(|e| e.to_string())?;
    let mut args = vec![text(session), data];
    if device.event != DeviceEvent::Bluetooth {
        args.push(rhai::serde::to_dynamic(device.context).unwrap_or(Dynamic::UNIT));
    }
    Ok(Call::new(device.event.callback(), args))
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
pub async fn reply_from_event(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    seq: Option<u64>,
    call: Call,
) -> Reply {
    let ran = handlers::run(runtime, project, Some(session), call).await;
    handlers::report(runtime, project, session, &ran, OnFailure::Count).await;
    if ran.failure.is_none() && ran.decoded.is_some() {
        session.clear_limit_stops();
    }
    let callback = ran.callback;
    let decoded = ran.into_decoded();
    info!(target: "switchboard::event", session = session.log_id(), "{callback} {}", decoded.status.log_tag());
    handlers::reply(seq, decoded)
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
