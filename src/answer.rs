//! The Command API decoder: a handler's answer in, a status and the client
//! actions it asks for out.
//!
//! This module is pure — no I/O, no sessions, no Rhai engine — so every form
//! of the HSYCO Command API can be tested as a table (see the tests at the
//! bottom). It does not run scripts, remember rollback values or log; the
//! caller passes what it knows about the command in an [`Origin`] and logs the
//! [`Decoded::warnings`] it gets back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a handler returned, before decoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The handler returned `()`: it did not handle the command.
    Unit,
    /// A string answer (`page:home`, `!`, `error`, a JSON object as text…).
    Text(String),
    /// A map answer (a Rhai map converted to JSON, or parsed JSON).
    Json(Value),
    /// Any other value; the name of its type, for the warning.
    Other(String),
}

/// Outcome of a command, as sent to the client in the reply's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Error,
    Unhandled,
    Failed,
}

impl Status {
    /// The name on the wire (`"ok"`…), the one source of status names.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Unhandled => "unhandled",
            Status::Failed => "failed",
        }
    }

    /// The status as the logs show it: `[OK]`, `[FAILED]`…
    pub fn log_tag(self) -> impl std::fmt::Display {
        struct Tag(Status);
        impl std::fmt::Display for Tag {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("[")?;
                for c in self.0.as_str().chars() {
                    std::fmt::Write::write_char(f, c.to_ascii_uppercase())?;
                }
                f.write_str("]")
            }
        }
        Tag(self)
    }
}

/// The styling of a toast or popup (`type` in the answer, `level` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Success,
    Warning,
    Error,
}

/// Where an error message is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Display {
    #[default]
    Tooltip,
    Popup,
    Toast,
}

/// One thing the client must do, in the order given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    Page {
        page: String,
    },
    Url {
        url: String,
        target: Option<String>,
    },
    Copy {
        text: String,
    },
    App {
        command: String,
    },
    Share {
        text: String,
    },
    Download {
        name: String,
        parameter: String,
    },
    Toast {
        message: String,
        duration: Option<u64>,
        level: Option<Level>,
        duplicate: bool,
        close: bool,
        /// A heading above the message (form results: the seed's `title`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    Popup {
        title: Option<String>,
        message: String,
        level: Option<Level>,
    },
    Error {
        message: Option<String>,
        display: Display,
        object: Option<String>,
    },
    Rollback {
        object: String,
        value: Option<String>,
    },
    FieldError {
        field: String,
        message: Option<String>,
        display: Display,
        /// A heading above the message (form results' `fieldErrors`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    /// Ask the user to re-enter their credentials; the answer reaches
    /// `fn authChallenge(session, payload, result)`. The payload stays on
    /// the server: the runtime files it under `id` before sending.
    Challenge {
        id: String,
        #[serde(skip)]
        payload: Value,
    },
}

/// What the decoder knows about the command that produced the answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origin<'a> {
    /// The object that sent the command (error tooltips anchor to it, rollback
    /// targets it).
    pub object: Option<&'a str>,
    /// The last valid value of that object, for `"rollback": true`.
    pub rollback_value: Option<&'a str>,
}

/// The decoded answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub status: Status,
    pub actions: Vec<Action>,
    /// `true` when the answer started with `!`: the command log must leave out
    /// the param and the answer.
    pub quiet: bool,
    /// One line per ignored piece of the answer (bad shape, unknown key…),
    /// naming the key, for the log.
    pub warnings: Vec<String>,
}

impl Answer {
    /// Classifies what a Rhai handler returned.
    ///
    /// A map that cannot become JSON (it holds a function pointer, a custom
    /// type…) is reported as `Other("map")` rather than half-converted.
    pub fn from_dynamic(value: rhai::Dynamic) -> Answer {
        // A value captured by a closure is shared; look at what it holds.
        let value = value.flatten();
        if value.is_unit() {
            return Answer::Unit;
        }
        if value.is_string() {
            return match value.into_string() {
                Ok(text) => Answer::Text(text),
                Err(type_name) => Answer::Other(type_name.to_string()),
            };
        }
        if value.is_map()
            && let Ok(json) = rhai::serde::from_dynamic::<Value>(&value)
        {
            return Answer::Json(json);
        }
        Answer::Other(value.type_name().to_string())
    }
}

/// Decodes a handler's answer into a status and the client actions it asks
/// for.
///
/// Actions come out in a fixed order, whatever the order of the keys (Rhai
/// and `serde_json` maps are sorted, so the handler's order is lost anyway):
///
/// 1. `error` (a string or `true`), then its `rollback`,
/// 2. field errors (`error` as an object), by field name,
/// 3. `toast`s, in array order,
/// 4. `popup`, then `challenge`,
/// 5. `copy`, `share`, `app`, `download`,
/// 6. `url`,
/// 7. `page`s, in array order.
///
/// Feedback comes before navigation so that the client shows it before it
/// leaves the page: with `{"toast": "saved", "page": "close"}` the toast
/// appears, then the popup closes.
///
/// `copy` and `app` are also accepted as JSON keys, an extension of the
/// Command API, which only knows them as the `copy:` and `app:` strings.
///
/// Anything the decoder cannot use is skipped with a line in
/// [`Decoded::warnings`] naming the key; the rest of the answer still applies.
/// It never panics.
pub fn decode(answer: &Answer, origin: &Origin) -> Decoded {
    let mut out = Decoded {
        status: Status::Ok,
        actions: Vec::new(),
        quiet: false,
        warnings: Vec::new(),
    };
    match answer {
        Answer::Unit => out.status = Status::Unhandled,
        Answer::Text(text) => decode_text(text, origin, &mut out),
        Answer::Json(Value::Object(map)) => decode_object(map, origin, &mut out),
        Answer::Json(other) => out.warn(format!(
            "answer: expected a JSON object, got {}",
            describe(other)
        )),
        Answer::Other(type_name) => out.warn(format!(
            "answer: a value of type {} is not a Command API answer, ignored",
            clip(type_name)
        )),
    }
    out
}

impl Decoded {
    fn push(&mut self, action: Action) {
        self.actions.push(action);
    }

    fn warn(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    fn fail(&mut self, action: Action) {
        self.status = Status::Error;
        self.push(action);
    }
}

fn decode_text(text: &str, origin: &Origin, out: &mut Decoded) {
    // Stripping every leading `!` at once gives the same result as stripping
    // one and decoding the rest, without recursing on `!!!!…`.
    let rest = text.trim_start_matches('!');
    out.quiet = rest.len() != text.len();
    if rest == "error" {
        out.fail(error_action(None, Display::Tooltip, origin));
    } else if let Some(page) = rest.strip_prefix("page:") {
        push_page(Key::new("page"), page, out);
    } else if let Some(text) = rest.strip_prefix("copy:") {
        out.push(Action::Copy {
            text: text.to_string(),
        });
    } else if let Some(command) = rest.strip_prefix("app:") {
        push_app(command, out);
    } else if rest.trim_start().starts_with('{') {
        // Java handlers can only return strings, so a JSON object arrives as
        // text. Anything that does not parse is just a string answer.
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(rest) {
            decode_object(&map, origin, out);
        }
    }
}

/// Every key a JSON answer may have; `switchboard check` warns about
/// others it can see in a script.
pub const ANSWER_KEYS: &[&str] = &[
    "page",
    "url",
    "target",
    "copy",
    "app",
    "share",
    "download",
    "toast",
    "popup",
    "error",
    "display",
    "rollback",
    "success",
    "title",
    "message",
    "fieldErrors",
    "challenge",
];

/// The recognised keys of a JSON answer, picked out in one pass.
#[derive(Default)]
struct Keys<'v> {
    page: Option<&'v Value>,
    url: Option<&'v Value>,
    target: Option<&'v Value>,
    copy: Option<&'v Value>,
    app: Option<&'v Value>,
    share: Option<&'v Value>,
    download: Option<&'v Value>,
    toast: Option<&'v Value>,
    popup: Option<&'v Value>,
    error: Option<&'v Value>,
    display: Option<&'v Value>,
    rollback: Option<&'v Value>,
    success: Option<&'v Value>,
    title: Option<&'v Value>,
    message: Option<&'v Value>,
    field_errors: Option<&'v Value>,
    challenge: Option<&'v Value>,
}

impl<'v> Keys<'v> {
    fn collect(map: &'v Map<String, Value>, out: &mut Decoded) -> Self {
        let mut keys = Keys::default();
        for (name, value) in map {
            let slot = match name.as_str() {
                "page" => &mut keys.page,
                "url" => &mut keys.url,
                "target" => &mut keys.target,
                "copy" => &mut keys.copy,
                "app" => &mut keys.app,
                "share" => &mut keys.share,
                "download" => &mut keys.download,
                "toast" => &mut keys.toast,
                "popup" => &mut keys.popup,
                "error" => &mut keys.error,
                "display" => &mut keys.display,
                "rollback" => &mut keys.rollback,
                "success" => &mut keys.success,
                "title" => &mut keys.title,
                "message" => &mut keys.message,
                "fieldErrors" => &mut keys.field_errors,
                "challenge" => &mut keys.challenge,
                _ => {
                    out.warn(format!("{}: unknown key, ignored", clip(name)));
                    continue;
                }
            };
            *slot = Some(value);
        }
        keys
    }
}

fn decode_object(map: &Map<String, Value>, origin: &Origin, out: &mut Decoded) {
    let keys = Keys::collect(map, out);
    decode_error(&keys, origin, out);
    decode_form_result(&keys, out);
    if let Some(toast) = keys.toast {
        decode_toasts(toast, out);
    }
    if let Some(popup) = keys.popup {
        decode_popup(popup, out);
    }
    if let Some(challenge) = keys.challenge {
        decode_challenge(challenge, out);
    }
    if let Some(copy) = keys.copy
        && let Some(text) = expect_string(Key::new("copy"), copy, out)
    {
        out.push(Action::Copy {
            text: text.to_string(),
        });
    }
    if let Some(share) = keys.share
        && let Some(text) = expect_string(Key::new("share"), share, out)
    {
        out.push(Action::Share {
            text: text.to_string(),
        });
    }
    if let Some(app) = keys.app
        && let Some(command) = expect_string(Key::new("app"), app, out)
    {
        push_app(command, out);
    }
    if let Some(download) = keys.download {
        decode_download(download, out);
    }
    decode_url(keys.url, keys.target, out);
    if let Some(page) = keys.page {
        decode_pages(page, out);
    }
}

// --- authentication challenge ------------------------------------------------

/// `{ "challenge": { "payload": … } }`: the payload may be any value.
fn decode_challenge(challenge: &Value, out: &mut Decoded) {
    match challenge.as_object() {
        Some(map) if map.keys().all(|k| k == "payload") => out.push(Action::Challenge {
            id: String::new(),
            payload: map.get("payload").cloned().unwrap_or(Value::Null),
        }),
        Some(_) => out.warn("challenge: only `payload` is allowed, ignored".into()),
        None => out.warn(format!(
            "challenge: expected an object with `payload`, got {}",
            describe(challenge)
        )),
    }
}

// --- form submission results -------------------------------------------------

/// The Form Submission vocabulary of the Perspective seed:
/// `{ success, title, message, fieldErrors: { field: { title, message } } }`.
/// Success becomes a success toast; failure an error status with a field
/// error per field, plus the message as an error toast (with field errors)
/// or an error popup (without).
fn decode_form_result(keys: &Keys, out: &mut Decoded) {
    let Some(success) = keys.success else {
        for (name, present) in [
            ("title", keys.title),
            ("message", keys.message),
            ("fieldErrors", keys.field_errors),
        ] {
            if present.is_some() {
                out.warn(format!("{name}: only meaningful with `success`, ignored"));
            }
        }
        return;
    };
    let Some(success) = success.as_bool() else {
        out.warn(format!(
            "success: expected true or false, got {}",
            describe(success)
        ));
        return;
    };
    let title = keys
        .title
        .and_then(|v| expect_string(Key::new("title"), v, out))
        .map(String::from);
    let message = keys
        .message
        .and_then(|v| expect_string(Key::new("message"), v, out))
        .map(String::from);
    if success {
        if let Some((title, text)) = title_and_text(title, message) {
            out.push(form_toast(title, text, Level::Success));
        }
        if keys.field_errors.is_some() {
            out.warn("fieldErrors: ignored on a successful submission".into());
        }
        return;
    }
    out.status = Status::Error;
    let fields = keys
        .field_errors
        .map(|errors| decode_form_field_errors(errors, out))
        .unwrap_or(0);
    match (fields, title, message) {
        (0, None, None) => out.push(Action::Error {
            message: None,
            display: Display::Toast,
            object: None,
        }),
        (0, title, Some(message)) => out.push(Action::Popup {
            title,
            message,
            level: Some(Level::Error),
        }),
        (0, Some(title), None) => out.push(Action::Popup {
            title: None,
            message: title,
            level: Some(Level::Error),
        }),
        (_, title, message) => {
            if let Some((title, text)) = title_and_text(title, message) {
                out.push(form_toast(title, text, Level::Error));
            }
        }
    }
}

/// The seed's examples give both a `title` and a `message`: both are kept,
/// the title as a heading above the message. A title alone is the text.
fn title_and_text(
    title: Option<String>,
    message: Option<String>,
) -> Option<(Option<String>, String)> {
    match (title, message) {
        (title, Some(message)) => Some((title, message)),
        (Some(title), None) => Some((None, title)),
        (None, None) => None,
    }
}

fn form_toast(title: Option<String>, message: String, level: Level) -> Action {
    Action::Toast {
        message,
        duration: None,
        level: Some(level),
        duplicate: false,
        close: false,
        title,
    }
}

/// `fieldErrors`: field → `{ title, message }` (or a plain message string).
/// Returns how many field errors it produced.
fn decode_form_field_errors(errors: &Value, out: &mut Decoded) -> usize {
    let Some(errors) = errors.as_object() else {
        out.warn(format!(
            "fieldErrors: expected an object, got {}",
            describe(errors)
        ));
        return 0;
    };
    let mut fields: Vec<(&String, &Value)> = errors.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let mut count = 0;
    for (field, detail) in fields {
        let text = |key: &str, detail: &Map<String, Value>| {
            detail.get(key).and_then(Value::as_str).map(String::from)
        };
        let (title, message) = match detail {
            Value::String(message) => (None, Some(message.clone())),
            Value::Object(detail) => {
                match title_and_text(text("title", detail), text("message", detail)) {
                    Some((title, message)) => (title, Some(message)),
                    None => (None, None),
                }
            }
            other => {
                out.warn(format!(
                    "fieldErrors.{}: expected an object or a string, got {}",
                    clip(field),
                    describe(other)
                ));
                continue;
            }
        };
        out.push(Action::FieldError {
            field: field.clone(),
            message,
            display: Display::Tooltip,
            title,
        });
        count += 1;
    }
    count
}

// --- errors and rollback ---------------------------------------------------

fn decode_error(keys: &Keys, origin: &Origin, out: &mut Decoded) {
    let message = match keys.error {
        None | Some(Value::Null | Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(None),
        Some(Value::String(message)) => Some(Some(message.as_str())),
        Some(Value::Object(fields)) => {
            decode_field_errors(fields, out);
            None
        }
        Some(other) => {
            out.warn(format!(
                "error: expected a string, a boolean or an object of field errors, got {}",
                describe(other)
            ));
            None
        }
    };
    let Some(message) = message else {
        // `display` and `rollback` qualify the single error of the object
        // that sent the command; field errors carry their own display.
        for (name, value) in [("display", keys.display), ("rollback", keys.rollback)] {
            if value.is_some() {
                out.warn(format!(
                    "{name}: ignored without a string or true \"error\""
                ));
            }
        }
        return;
    };
    let display = keys.display.map_or(Display::Tooltip, |display| {
        parse_display(Key::new("display"), display, out)
    });
    out.fail(error_action(message, display, origin));
    if let Some(rollback) = keys.rollback {
        decode_rollback(rollback, origin, out);
    }
}

fn error_action(message: Option<&str>, display: Display, origin: &Origin) -> Action {
    Action::Error {
        message: message.map(String::from),
        display,
        object: origin.object.map(String::from),
    }
}

fn decode_rollback(rollback: &Value, origin: &Origin, out: &mut Decoded) {
    match (rollback, origin.object) {
        (Value::Bool(false), _) => {}
        (Value::Bool(true), Some(object)) => out.push(Action::Rollback {
            object: object.to_string(),
            value: origin.rollback_value.map(String::from),
        }),
        (Value::Bool(true), None) => {
            out.warn("rollback: the command came from no object, nothing to roll back".to_string())
        }
        (other, _) => out.warn(format!(
            "rollback: expected a boolean, got {}",
            describe(other)
        )),
    }
}

fn decode_field_errors(fields: &Map<String, Value>, out: &mut Decoded) {
    // Sorted explicitly: with serde_json's `preserve_order` the map would
    // iterate in the handler's order instead.
    let mut fields: Vec<(&String, &Value)> = fields.iter().collect();
    fields.sort_unstable_by_key(|(field, _)| *field);
    for (field, value) in fields {
        let (message, display) = match value {
            Value::Bool(false) => continue,
            Value::Bool(true) => (None, Display::Tooltip),
            Value::String(message) => (Some(message.clone()), Display::Tooltip),
            Value::Object(spec) => field_error_spec(field, spec, out),
            other => {
                out.warn(format!(
                    "{}: expected a boolean, a string or an object, got {}; field skipped",
                    Key::field(field, ""),
                    describe(other)
                ));
                continue;
            }
        };
        out.fail(Action::FieldError {
            field: field.clone(),
            message,
            display,
            title: None,
        });
    }
}

/// `{ "message": …, "display": … }` for one field.
///
/// Unlike a toast, a field error with a bad detail is still raised: dropping
/// it would let the submit pass for a success.
fn field_error_spec(
    field: &str,
    spec: &Map<String, Value>,
    out: &mut Decoded,
) -> (Option<String>, Display) {
    let mut message = None;
    let mut display = Display::Tooltip;
    for (name, value) in spec {
        match (name.as_str(), value) {
            ("message", Value::String(text)) => message = Some(text.clone()),
            ("message", other) => out.warn(format!(
                "{}: expected a string, got {}; error raised without a message",
                Key::field(field, ".message"),
                describe(other)
            )),
            ("display", value) => {
                display = parse_display(Key::field(field, ".display"), value, out);
            }
            (other, _) => out.warn(format!(
                "{}: unknown key {}, ignored",
                Key::field(field, ""),
                clip(other)
            )),
        }
    }
    (message, display)
}

fn parse_display(key: Key, value: &Value, out: &mut Decoded) -> Display {
    let text = value.as_str().unwrap_or_default();
    let known = [
        ("tooltip", Display::Tooltip),
        ("popup", Display::Popup),
        ("toast", Display::Toast),
    ]
    .into_iter()
    .find_map(|(name, display)| name.eq_ignore_ascii_case(text).then_some(display));
    match known {
        Some(display) => display,
        None => {
            out.warn(format!(
                "{key}: expected tooltip, popup or toast, got {}, using tooltip",
                describe(value)
            ));
            Display::Tooltip
        }
    }
}

// --- toasts and popups -----------------------------------------------------

fn decode_toasts(value: &Value, out: &mut Decoded) {
    match value {
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                decode_toast(Key::indexed("toast", index), item, out);
            }
        }
        Value::String(_) | Value::Object(_) => decode_toast(Key::new("toast"), value, out),
        other => out.warn(format!(
            "toast: expected a string, an object or an array, got {}",
            describe(other)
        )),
    }
}

fn decode_toast(key: Key, value: &Value, out: &mut Decoded) {
    let toast = match value {
        Value::String(message) => Ok(Action::Toast {
            message: message.clone(),
            duration: None,
            level: None,
            duplicate: false,
            close: false,
            title: None,
        }),
        Value::Object(spec) => toast_from_spec(key, spec, out),
        other => Err(format!(
            "{key}: expected a string or an object, got {}",
            describe(other)
        )),
    };
    match toast {
        Ok(action) => out.push(action),
        Err(warning) => out.warn(format!("{warning}; toast ignored")),
    }
}

/// A toast's spec; a bad `type` is a warning, not a reason to drop the
/// message (the user still needs to read it).
fn toast_from_spec(
    key: Key,
    spec: &Map<String, Value>,
    out: &mut Decoded,
) -> Result<Action, String> {
    let mut message = None;
    let mut duration = None;
    let mut level = None;
    let mut duplicate = false;
    let mut close = false;
    for (name, value) in spec {
        match name.as_str() {
            "message" => message = Some(sub(key, "message", value.as_str(), "a string", value)?),
            "duration" => {
                let millis = sub(key, "duration", as_millis(value), MILLIS, value)?;
                duration = Some(millis.min(LONGEST_TIMER_MS));
            }
            "type" => level = level_or_warn(key, value, out),
            "duplicate" => duplicate = sub(key, "duplicate", value.as_bool(), "a boolean", value)?,
            "close" => close = sub(key, "close", value.as_bool(), "a boolean", value)?,
            other => return Err(format!("{key}: unknown key {}", clip(other))),
        }
    }
    Ok(Action::Toast {
        message: required_message(key, message)?,
        duration,
        level,
        duplicate,
        close,
        title: None,
    })
}

fn decode_popup(value: &Value, out: &mut Decoded) {
    let popup = match value {
        Value::String(message) => Ok(Action::Popup {
            title: None,
            message: message.clone(),
            level: None,
        }),
        Value::Object(spec) => popup_from_spec(Key::new("popup"), spec, out),
        other => Err(format!(
            "popup: expected a string or an object, got {}",
            describe(other)
        )),
    };
    match popup {
        Ok(action) => out.push(action),
        Err(warning) => out.warn(format!("{warning}; popup ignored")),
    }
}

fn popup_from_spec(
    key: Key,
    spec: &Map<String, Value>,
    out: &mut Decoded,
) -> Result<Action, String> {
    let mut title = None;
    let mut message = None;
    let mut level = None;
    for (name, value) in spec {
        match name.as_str() {
            "title" => title = Some(sub(key, "title", value.as_str(), "a string", value)?),
            "message" => message = Some(sub(key, "message", value.as_str(), "a string", value)?),
            "type" => level = level_or_warn(key, value, out),
            other => return Err(format!("{key}: unknown key {}", clip(other))),
        }
    }
    Ok(Action::Popup {
        title: title.map(String::from),
        message: required_message(key, message)?,
        level,
    })
}

const MILLIS: &str = "a non-negative number of milliseconds";
/// The longest delay a browser timer keeps (2³¹ − 1 ms, about 24.8 days): a
/// longer one fires at once, so a toast meant to stay would vanish.
const LONGEST_TIMER_MS: u64 = i32::MAX as u64;
const LEVELS: &str = "info, success, warning or error";
const PARAM: &str = "a string or a number";

/// A sub-key's parsed value, or the warning that names it.
fn sub<T>(
    key: Key,
    name: &str,
    parsed: Option<T>,
    expected: &str,
    value: &Value,
) -> Result<T, String> {
    parsed.ok_or_else(|| format!("{key}.{name}: expected {expected}, got {}", describe(value)))
}

fn required_message(key: Key, message: Option<&str>) -> Result<String, String> {
    message
        .map(String::from)
        .ok_or_else(|| format!("{key}: missing \"message\""))
}

fn as_millis(value: &Value) -> Option<u64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(millis) = number.as_u64() {
        return Some(millis);
    }
    // `as` saturates, so a float beyond u64 becomes u64::MAX, not a panic.
    number
        .as_f64()
        .filter(|millis| *millis >= 0.0)
        .map(|millis| millis.round() as u64)
}

/// Letter case does not matter, here as for `display`: `"Warning"` is
/// what the handler meant.
fn as_level(value: &Value) -> Option<Level> {
    let text = value.as_str()?;
    [
        ("info", Level::Info),
        ("success", Level::Success),
        ("warning", Level::Warning),
        ("error", Level::Error),
    ]
    .into_iter()
    .find_map(|(name, level)| name.eq_ignore_ascii_case(text).then_some(level))
}

/// The `type` of a toast or popup; an unknown one is shown as info, with a
/// warning.
fn level_or_warn(key: Key, value: &Value, out: &mut Decoded) -> Option<Level> {
    let level = as_level(value);
    if level.is_none() {
        out.warn(format!(
            "{key}.type: expected {LEVELS}, got {}; shown as info",
            describe(value)
        ));
    }
    level
}

// --- clipboard, app, share, download ---------------------------------------

fn push_app(command: &str, out: &mut Decoded) {
    if command.is_empty() {
        out.warn("app: empty command".to_string());
    } else {
        out.push(Action::App {
            command: command.to_string(),
        });
    }
}

fn decode_download(value: &Value, out: &mut Decoded) {
    let download = match value {
        Value::Object(spec) => download_from_spec(spec),
        other => Err(format!(
            "download: expected an object {{\"name\", \"parameter\"}}, got {}",
            describe(other)
        )),
    };
    match download {
        Ok(action) => out.push(action),
        Err(warning) => out.warn(format!("{warning}; download ignored")),
    }
}

fn download_from_spec(spec: &Map<String, Value>) -> Result<Action, String> {
    let key = Key::new("download");
    let mut name = None;
    let mut parameter = String::new();
    for (field, value) in spec {
        match field.as_str() {
            "name" => name = Some(sub(key, "name", value.as_str(), "a string", value)?),
            "parameter" => parameter = sub(key, "parameter", as_parameter(value), PARAM, value)?,
            other => return Err(format!("{key}: unknown key {}", clip(other))),
        }
    }
    match name {
        None => Err(format!("{key}: missing \"name\"")),
        Some("") => Err(format!("{key}.name: empty command name")),
        Some(name) => Ok(Action::Download {
            name: name.to_string(),
            parameter,
        }),
    }
}

/// Command params are strings; a number is what a handler would have meant
/// by writing it in quotes.
fn as_parameter(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

// --- navigation ------------------------------------------------------------

fn decode_url(url: Option<&Value>, target: Option<&Value>, out: &mut Decoded) {
    let Some(url) = url else {
        if target.is_some() {
            out.warn("target: ignored without a \"url\"".to_string());
        }
        return;
    };
    let Some(url) = expect_string(Key::new("url"), url, out) else {
        return;
    };
    let target = match target {
        None => None,
        Some(Value::String(target)) => Some(target.clone()),
        Some(other) => {
            out.warn(format!(
                "target: expected a string, got {}; url ignored",
                describe(other)
            ));
            return;
        }
    };
    if let Err(reason) = check_url(url) {
        out.warn(format!("url: {reason}, got \"{}\"; url ignored", clip(url)));
        return;
    }
    out.push(Action::Url {
        url: url.to_string(),
        target,
    });
}

/// Lets through only URLs that cannot run script in the client: http(s),
/// mailto, tel, or relative ones (which inherit the page's scheme).
fn check_url(url: &str) -> Result<(), &'static str> {
    if url.is_empty() {
        return Err("empty url");
    }
    // Browsers drop tabs and newlines anywhere and trim leading and trailing
    // controls and spaces before reading the scheme, so "java\tscript:" and
    // " javascript:" would run: refuse them rather than normalise.
    if url.chars().any(|c| c.is_ascii_control()) {
        return Err("control character in url");
    }
    if url.starts_with(char::is_whitespace) || url.ends_with(char::is_whitespace) {
        return Err("leading or trailing whitespace in url");
    }
    // `//host/path` is not relative: it is an absolute URL on another host
    // that takes the page's scheme. Browsers read `\\host` and `/\host` the
    // same way. It must say its scheme, like any other absolute URL.
    let mut start = url.chars();
    if matches!(
        (start.next(), start.next()),
        (Some('/' | '\\'), Some('/' | '\\'))
    ) {
        return Err("scheme-relative url (//host): write its scheme, such as https://host/");
    }
    let path_start = url.find(['/', '?', '#']).unwrap_or(url.len());
    let Some(colon) = url[..path_start].find(':') else {
        return Ok(());
    };
    let scheme = &url[..colon];
    if ["http", "https", "mailto", "tel"]
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(scheme))
    {
        Ok(())
    } else {
        Err("scheme not allowed (only http, https, mailto, tel or a relative url)")
    }
}

fn decode_pages(value: &Value, out: &mut Decoded) {
    match value {
        Value::String(page) => push_page(Key::new("page"), page, out),
        Value::Array(pages) => {
            for (index, page) in pages.iter().enumerate() {
                let key = Key::indexed("page", index);
                match page {
                    Value::String(page) => push_page(key, page, out),
                    other => out.warn(format!("{key}: expected a string, got {}", describe(other))),
                }
            }
        }
        other => out.warn(format!(
            "page: expected a string or an array of strings, got {}",
            describe(other)
        )),
    }
}

fn push_page(key: Key, page: &str, out: &mut Decoded) {
    if page.is_empty() {
        out.warn(format!("{key}: empty page name"));
    } else {
        out.push(Action::Page {
            page: page.to_string(),
        });
    }
}

// --- warnings --------------------------------------------------------------

/// Where a value sits in the answer (`toast`, `toast[2]`, `error.name`), for
/// warnings; formatted only when a warning is actually written.
#[derive(Clone, Copy)]
struct Key<'a> {
    prefix: &'static str,
    name: &'a str,
    index: Option<usize>,
    suffix: &'static str,
}

impl<'a> Key<'a> {
    fn new(name: &'a str) -> Self {
        Key {
            prefix: "",
            name,
            index: None,
            suffix: "",
        }
    }

    fn indexed(name: &'a str, index: usize) -> Self {
        Key {
            index: Some(index),
            ..Key::new(name)
        }
    }

    fn field(field: &'a str, suffix: &'static str) -> Self {
        Key {
            prefix: "error.",
            suffix,
            ..Key::new(field)
        }
    }
}

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.prefix, clip(self.name))?;
        if let Some(index) = self.index {
            write!(f, "[{index}]")?;
        }
        f.write_str(self.suffix)
    }
}

fn expect_string<'v>(key: Key, value: &'v Value, out: &mut Decoded) -> Option<&'v str> {
    let text = value.as_str();
    if text.is_none() {
        out.warn(format!("{key}: expected a string, got {}", describe(value)));
    }
    text
}

/// A short description of a bad value; containers are not printed, they
/// could be huge.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(flag) => format!("boolean {flag}"),
        Value::Number(number) => format!("number {}", clip(&number.to_string())),
        Value::String(text) => format!("string \"{}\"", clip(text)),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// Handler-supplied text for a log line: escaped, so it cannot forge lines,
/// and cut short.
fn clip(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut clipped: String = text
        .chars()
        .take(MAX_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        clipped.push('…');
    }
    clipped
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NO_OBJECT: Origin<'static> = Origin {
        object: None,
        rollback_value: None,
    };
    const SLIDER: Origin<'static> = Origin {
        object: Some("slider1"),
        rollback_value: Some("40"),
    };

    /// One expected decoding. Warnings are matched by prefix: each must start
    /// with the key it names.
    struct Row {
        name: &'static str,
        answer: Answer,
        origin: Origin<'static>,
        status: Status,
        actions: Vec<Action>,
        quiet: bool,
        warnings: Vec<&'static str>,
    }

    fn row(name: &'static str, answer: Answer) -> Row {
        Row {
            name,
            answer,
            origin: NO_OBJECT,
            status: Status::Ok,
            actions: Vec::new(),
            quiet: false,
            warnings: Vec::new(),
        }
    }

    impl Row {
        fn gives(mut self, actions: Vec<Action>) -> Self {
            self.actions = actions;
            self
        }

        fn status(mut self, status: Status) -> Self {
            self.status = status;
            self
        }

        fn error(self, actions: Vec<Action>) -> Self {
            self.status(Status::Error).gives(actions)
        }

        fn quiet(mut self) -> Self {
            self.quiet = true;
            self
        }

        fn warns(mut self, keys: &[&'static str]) -> Self {
            self.warnings = keys.to_vec();
            self
        }

        fn from(mut self, origin: Origin<'static>) -> Self {
            self.origin = origin;
            self
        }
    }

    fn check(rows: Vec<Row>) {
        let mut failures = Vec::new();
        for row in &rows {
            let got = decode(&row.answer, &row.origin);
            let warnings_match = got.warnings.len() == row.warnings.len()
                && got
                    .warnings
                    .iter()
                    .zip(&row.warnings)
                    .all(|(warning, key)| warning.starts_with(&format!("{key}:")));
            if got.status != row.status
                || got.actions != row.actions
                || got.quiet != row.quiet
                || !warnings_match
            {
                failures.push(format!(
                    "{}: expected {:?} {:?} quiet={} warnings {:?}\n    got {:?}",
                    row.name, row.status, row.actions, row.quiet, row.warnings, got
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    fn text(text: &str) -> Answer {
        Answer::Text(text.to_string())
    }

    fn json(value: Value) -> Answer {
        Answer::Json(value)
    }

    fn page(page: &str) -> Action {
        Action::Page {
            page: page.to_string(),
        }
    }

    fn url(url: &str, target: Option<&str>) -> Action {
        Action::Url {
            url: url.to_string(),
            target: target.map(String::from),
        }
    }

    fn copy(text: &str) -> Action {
        Action::Copy {
            text: text.to_string(),
        }
    }

    fn app(command: &str) -> Action {
        Action::App {
            command: command.to_string(),
        }
    }

    fn share(text: &str) -> Action {
        Action::Share {
            text: text.to_string(),
        }
    }

    fn download(name: &str, parameter: &str) -> Action {
        Action::Download {
            name: name.to_string(),
            parameter: parameter.to_string(),
        }
    }

    fn toast(message: &str) -> Action {
        Action::Toast {
            message: message.to_string(),
            duration: None,
            level: None,
            duplicate: false,
            close: false,
            title: None,
        }
    }

    fn toast_with(
        message: &str,
        duration: Option<u64>,
        level: Option<Level>,
        duplicate: bool,
        close: bool,
    ) -> Action {
        Action::Toast {
            message: message.to_string(),
            duration,
            level,
            duplicate,
            close,
            title: None,
        }
    }

    fn popup(title: Option<&str>, message: &str, level: Option<Level>) -> Action {
        Action::Popup {
            title: title.map(String::from),
            message: message.to_string(),
            level,
        }
    }

    fn error(message: Option<&str>, display: Display, object: Option<&str>) -> Action {
        Action::Error {
            message: message.map(String::from),
            display,
            object: object.map(String::from),
        }
    }

    fn rollback(object: &str, value: Option<&str>) -> Action {
        Action::Rollback {
            object: object.to_string(),
            value: value.map(String::from),
        }
    }

    fn field(field: &str, message: Option<&str>, display: Display) -> Action {
        Action::FieldError {
            field: field.to_string(),
            message: message.map(String::from),
            display,
            title: None,
        }
    }

    use Display::{Popup, Toast, Tooltip};

    #[test]
    fn string_forms() {
        check(vec![
            row("any string", text("done")),
            row("empty string", text("")),
            row("error", text("error")).error(vec![error(None, Tooltip, None)]),
            row("error anchors to the object", text("error"))
                .from(SLIDER)
                .error(vec![error(None, Tooltip, Some("slider1"))]),
            row("Error is not error", text("Error")),
            row("error with a space is not error", text("error ")),
            row("page:<name>", text("page:home")).gives(vec![page("home")]),
            row("page:back", text("page:back")).gives(vec![page("back")]),
            row("page:forward", text("page:forward")).gives(vec![page("forward")]),
            row("page:close", text("page:close")).gives(vec![page("close")]),
            row("page:close-all", text("page:close-all")).gives(vec![page("close-all")]),
            row("page: empty name", text("page:")).warns(&["page"]),
            row("copy:<text>", text("copy:hello")).gives(vec![copy("hello")]),
            row("copy: empty text", text("copy:")).gives(vec![copy("")]),
            row("copy: text with colons", text("copy:a:b:c")).gives(vec![copy("a:b:c")]),
            row("app:speech", text("app:speech")).gives(vec![app("speech")]),
            row("app:codescan", text("app:codescan")).gives(vec![app("codescan")]),
            row("app: any command", text("app:vibrate:200")).gives(vec![app("vibrate:200")]),
            row("app: empty command", text("app:")).warns(&["app"]),
            row("unknown prefix", text("goto:home")),
        ]);
    }

    #[test]
    fn quiet_forms() {
        check(vec![
            row("!", text("!")).quiet(),
            row("!string", text("!secret")).quiet(),
            row("!page:home", text("!page:home"))
                .quiet()
                .gives(vec![page("home")]),
            row("!error", text("!error"))
                .quiet()
                .error(vec![error(None, Tooltip, None)]),
            row("!copy:", text("!copy:pin"))
                .quiet()
                .gives(vec![copy("pin")]),
            row("!app:", text("!app:speech"))
                .quiet()
                .gives(vec![app("speech")]),
            row("!json", text(r#"!{"toast":"x"}"#))
                .quiet()
                .gives(vec![toast("x")]),
            row("!!page:home", text("!!page:home"))
                .quiet()
                .gives(vec![page("home")]),
            row("! inside is not quiet", text("page:!home")).gives(vec![page("!home")]),
        ]);
    }

    #[test]
    fn json_as_text() {
        check(vec![
            row("object text", text(r#"{"page":"home"}"#)).gives(vec![page("home")]),
            row(
                "object text with leading space",
                text(r#"  {"error":"bad"}"#),
            )
            .error(vec![error(Some("bad"), Tooltip, None)]),
            row("object text warns like json", text(r#"{"nope":1}"#)).warns(&["nope"]),
            row("broken object text is a string", text(r#"{"page":"home""#)),
            row("trailing garbage is a string", text(r#"{"page":"home"} x"#)),
            row("array text is a string", text(r#"["page"]"#)),
            row("brace inside is a string", text(r#"x {"page":"home"}"#)),
        ]);
    }

    #[test]
    fn json_pages() {
        check(vec![
            row("page", json(json!({"page": "home"}))).gives(vec![page("home")]),
            row("page back", json(json!({"page": "back"}))).gives(vec![page("back")]),
            row("page forward", json(json!({"page": "forward"}))).gives(vec![page("forward")]),
            row("page close", json(json!({"page": "close"}))).gives(vec![page("close")]),
            row("page close-all", json(json!({"page": "close-all"})))
                .gives(vec![page("close-all")]),
            row("page array", json(json!({"page": ["close-all", "popup2"]})))
                .gives(vec![page("close-all"), page("popup2")]),
            row(
                "page array bad entries",
                json(json!({"page": [1, "a", null, "b"]})),
            )
            .gives(vec![page("a"), page("b")])
            .warns(&["page[0]", "page[2]"]),
            row("page empty array", json(json!({"page": []}))),
            row("page empty name", json(json!({"page": ""}))).warns(&["page"]),
            row("page number", json(json!({"page": 5}))).warns(&["page"]),
            row("page object", json(json!({"page": {"name": "x"}}))).warns(&["page"]),
        ]);
    }

    #[test]
    fn json_urls() {
        let blank = Some("_blank");
        check(vec![
            row("url http", json(json!({"url": "http://example.com"})))
                .gives(vec![url("http://example.com", None)]),
            row(
                "url https",
                json(json!({"url": "https://example.com/a?b=c:d"})),
            )
            .gives(vec![url("https://example.com/a?b=c:d", None)]),
            row(
                "url scheme case",
                json(json!({"url": "HTTPS://example.com"})),
            )
            .gives(vec![url("HTTPS://example.com", None)]),
            row("url mailto", json(json!({"url": "mailto:a@b.c"})))
                .gives(vec![url("mailto:a@b.c", None)]),
            row("url tel", json(json!({"url": "tel:+390212345"})))
                .gives(vec![url("tel:+390212345", None)]),
            row(
                "url target _blank",
                json(json!({"url": "https://x.y", "target": "_blank"})),
            )
            .gives(vec![url("https://x.y", blank)]),
            row(
                "url target _self",
                json(json!({"url": "https://x.y", "target": "_self"})),
            )
            .gives(vec![url("https://x.y", Some("_self"))]),
            row(
                "url custom target",
                json(json!({"url": "https://x.y", "target": "tab2"})),
            )
            .gives(vec![url("https://x.y", Some("tab2"))]),
            row("url other project", json(json!({"url": "../project2"})))
                .gives(vec![url("../project2", None)]),
            row(
                "url other project with target",
                json(json!({"url": "../project2", "target": "_blank"})),
            )
            .gives(vec![url("../project2", blank)]),
            row("url absolute path", json(json!({"url": "/x/y"}))).gives(vec![url("/x/y", None)]),
            row("url colon after path", json(json!({"url": "a/b:c"})))
                .gives(vec![url("a/b:c", None)]),
            row("url colon after query", json(json!({"url": "p?t=1:2"})))
                .gives(vec![url("p?t=1:2", None)]),
            row("url colon after fragment", json(json!({"url": "#a:b"})))
                .gives(vec![url("#a:b", None)]),
            row(
                "url javascript",
                json(json!({"url": "javascript:alert(1)"})),
            )
            .warns(&["url"]),
            row(
                "url javascript mixed case",
                json(json!({"url": "JaVaScRiPt:alert(1)"})),
            )
            .warns(&["url"]),
            row(
                "url data",
                json(json!({"url": "data:text/html,<script>x</script>"})),
            )
            .warns(&["url"]),
            row("url vbscript", json(json!({"url": "vbscript:msgbox"}))).warns(&["url"]),
            row(
                "url scheme-relative",
                json(json!({"url": "//evil.example/x"})),
            )
            .warns(&["url"]),
            row(
                "url scheme-relative backslashes",
                json(json!({"url": "\\\\evil.example/x"})),
            )
            .warns(&["url"]),
            row(
                "url scheme-relative mixed slashes",
                json(json!({"url": "/\\evil.example"})),
            )
            .warns(&["url"]),
            row("url file", json(json!({"url": "file:///etc/passwd"}))).warns(&["url"]),
            row("url ftp", json(json!({"url": "ftp://x.y"}))).warns(&["url"]),
            row("url leading space", json(json!({"url": " javascript:x"}))).warns(&["url"]),
            row("url leading space relative", json(json!({"url": " ../p"}))).warns(&["url"]),
            row("url tab in scheme", json(json!({"url": "java\tscript:x"}))).warns(&["url"]),
            row(
                "url newline in scheme",
                json(json!({"url": "java\nscript:x"})),
            )
            .warns(&["url"]),
            row("url carriage return", json(json!({"url": "https://x\r.y"}))).warns(&["url"]),
            row("url leading nul", json(json!({"url": "\u{0}javascript:x"}))).warns(&["url"]),
            row(
                "url delete char",
                json(json!({"url": "java\u{7f}script:x"})),
            )
            .warns(&["url"]),
            row(
                "url nbsp scheme",
                json(json!({"url": "\u{a0}javascript:x"})),
            )
            .warns(&["url"]),
            row("url empty", json(json!({"url": ""}))).warns(&["url"]),
            row("url number", json(json!({"url": 5}))).warns(&["url"]),
            row("target without url", json(json!({"target": "_blank"}))).warns(&["target"]),
            row(
                "target not a string",
                json(json!({"url": "https://x.y", "target": 1})),
            )
            .warns(&["target"]),
            row(
                "rejected url with target",
                json(json!({"url": "data:x", "target": "_blank"})),
            )
            .warns(&["url"]),
        ]);
    }

    #[test]
    fn json_copy_app_share_download() {
        check(vec![
            row("copy", json(json!({"copy": "hello"}))).gives(vec![copy("hello")]),
            row("copy empty", json(json!({"copy": ""}))).gives(vec![copy("")]),
            row("copy number", json(json!({"copy": 5}))).warns(&["copy"]),
            row("app", json(json!({"app": "speech"}))).gives(vec![app("speech")]),
            row("app empty", json(json!({"app": ""}))).warns(&["app"]),
            row("app bool", json(json!({"app": true}))).warns(&["app"]),
            row("share", json(json!({"share": "look"}))).gives(vec![share("look")]),
            row("share array", json(json!({"share": ["a"]}))).warns(&["share"]),
            row(
                "download",
                json(json!({"download": {"name": "csv", "parameter": "2024"}})),
            )
            .gives(vec![download("csv", "2024")]),
            row(
                "download without parameter",
                json(json!({"download": {"name": "csv"}})),
            )
            .gives(vec![download("csv", "")]),
            row(
                "download integer parameter",
                json(json!({"download": {"name": "csv", "parameter": 7}})),
            )
            .gives(vec![download("csv", "7")]),
            row(
                "download float parameter",
                json(json!({"download": {"name": "csv", "parameter": 1.5}})),
            )
            .gives(vec![download("csv", "1.5")]),
            row(
                "download bool parameter",
                json(json!({"download": {"name": "csv", "parameter": true}})),
            )
            .warns(&["download.parameter"]),
            row(
                "download missing name",
                json(json!({"download": {"parameter": "x"}})),
            )
            .warns(&["download"]),
            row(
                "download empty name",
                json(json!({"download": {"name": ""}})),
            )
            .warns(&["download.name"]),
            row(
                "download number name",
                json(json!({"download": {"name": 3}})),
            )
            .warns(&["download.name"]),
            row(
                "download unknown key",
                json(json!({"download": {"name": "csv", "file": "x"}})),
            )
            .warns(&["download"]),
            row("download string", json(json!({"download": "csv"}))).warns(&["download"]),
        ]);
    }

    #[test]
    fn json_toasts() {
        use Level::{Error, Info, Success, Warning};
        let t = |toast: Value| json(json!({ "toast": toast }));
        check(vec![
            row("toast string", t(json!("saved"))).gives(vec![toast("saved")]),
            row("toast object", t(json!({"message": "saved"}))).gives(vec![toast("saved")]),
            row(
                "toast duration",
                t(json!({"message": "m", "duration": 3000})),
            )
            .gives(vec![toast_with("m", Some(3000), None, false, false)]),
            row(
                "toast zero duration",
                t(json!({"message": "m", "duration": 0})),
            )
            .gives(vec![toast_with("m", Some(0), None, false, false)]),
            row(
                "toast float duration rounds",
                t(json!({"message": "m", "duration": 2.6})),
            )
            .gives(vec![toast_with("m", Some(3), None, false, false)]),
            row(
                "toast huge duration saturates",
                t(json!({"message": "m", "duration": 1e300})),
            )
            .gives(vec![toast_with(
                "m",
                Some(LONGEST_TIMER_MS),
                None,
                false,
                false,
            )]),
            row(
                "toast duration beyond a browser timer is clamped",
                t(json!({"message": "m", "duration": 2_147_483_648_u64})),
            )
            .gives(vec![toast_with(
                "m",
                Some(2_147_483_647),
                None,
                false,
                false,
            )]),
            row(
                "toast type in any letter case",
                t(json!([{"message": "a", "type": "Warning"}, {"message": "b", "type": "ERROR"}])),
            )
            .gives(vec![
                toast_with("a", None, Some(Warning), false, false),
                toast_with("b", None, Some(Error), false, false),
            ]),
            row(
                "toast type info",
                t(json!({"message": "m", "type": "info"})),
            )
            .gives(vec![toast_with("m", None, Some(Info), false, false)]),
            row(
                "toast type success",
                t(json!({"message": "m", "type": "success"})),
            )
            .gives(vec![toast_with("m", None, Some(Success), false, false)]),
            row(
                "toast type warning",
                t(json!({"message": "m", "type": "warning"})),
            )
            .gives(vec![toast_with("m", None, Some(Warning), false, false)]),
            row(
                "toast type error",
                t(json!({"message": "m", "type": "error"})),
            )
            .gives(vec![toast_with("m", None, Some(Error), false, false)]),
            row(
                "toast duplicate",
                t(json!({"message": "m", "duplicate": true})),
            )
            .gives(vec![toast_with("m", None, None, true, false)]),
            row("toast close", t(json!({"message": "m", "close": true})))
                .gives(vec![toast_with("m", None, None, false, true)]),
            row(
                "toast every option",
                t(json!({
                    "message": "m", "duration": 10, "type": "success",
                    "duplicate": true, "close": false
                })),
            )
            .gives(vec![toast_with("m", Some(10), Some(Success), true, false)]),
            row(
                "toast array",
                t(json!([{"message": "a", "duration": 1}, {"message": "b", "duration": 2}])),
            )
            .gives(vec![
                toast_with("a", Some(1), None, false, false),
                toast_with("b", Some(2), None, false, false),
            ]),
            row(
                "toast array of strings and objects",
                t(json!(["a", {"message": "b"}])),
            )
            .gives(vec![toast("a"), toast("b")]),
            row(
                "toast array skips bad entries",
                t(json!([5, "a", {"message": "b", "type": "loud"}, ["c"], null, {"message": "d"}])),
            )
            .gives(vec![toast("a"), toast("b"), toast("d")])
            .warns(&["toast[0]", "toast[2].type", "toast[3]", "toast[4]"]),
            row("toast empty array", t(json!([]))),
            row("toast number", t(json!(5))).warns(&["toast"]),
            row("toast bool", t(json!(true))).warns(&["toast"]),
            row("toast null", t(json!(null))).warns(&["toast"]),
            row(
                "toast unknown type",
                t(json!({"message": "m", "type": "fatal"})),
            )
            .gives(vec![toast("m")])
            .warns(&["toast.type"]),
            row(
                "toast negative duration",
                t(json!({"message": "m", "duration": -1})),
            )
            .warns(&["toast.duration"]),
            row(
                "toast negative float duration",
                t(json!({"message": "m", "duration": -0.5})),
            )
            .warns(&["toast.duration"]),
            row(
                "toast string duration",
                t(json!({"message": "m", "duration": "1000"})),
            )
            .warns(&["toast.duration"]),
            row("toast missing message", t(json!({"duration": 10}))).warns(&["toast"]),
            row("toast number message", t(json!({"message": 5}))).warns(&["toast.message"]),
            row(
                "toast string duplicate",
                t(json!({"message": "m", "duplicate": "yes"})),
            )
            .warns(&["toast.duplicate"]),
            row("toast number close", t(json!({"message": "m", "close": 1})))
                .warns(&["toast.close"]),
            row(
                "toast unknown key",
                t(json!({"message": "m", "color": "red"})),
            )
            .warns(&["toast"]),
        ]);
    }

    #[test]
    fn json_popups() {
        check(vec![
            row("popup string", json(json!({"popup": "hello"})))
                .gives(vec![popup(None, "hello", None)]),
            row(
                "popup title",
                json(json!({"popup": {"title": "T", "message": "m"}})),
            )
            .gives(vec![popup(Some("T"), "m", None)]),
            row(
                "popup type",
                json(json!({"popup": {"title": "T", "message": "m", "type": "warning"}})),
            )
            .gives(vec![popup(Some("T"), "m", Some(Level::Warning))]),
            row(
                "popup message only",
                json(json!({"popup": {"message": "m"}})),
            )
            .gives(vec![popup(None, "m", None)]),
            row(
                "popup missing message",
                json(json!({"popup": {"title": "T"}})),
            )
            .warns(&["popup"]),
            row(
                "popup unknown type",
                json(json!({"popup": {"message": "m", "type": "x"}})),
            )
            .gives(vec![popup(None, "m", None)])
            .warns(&["popup.type"]),
            row(
                "popup type in any letter case",
                json(json!({"popup": {"message": "m", "type": "Success"}})),
            )
            .gives(vec![popup(None, "m", Some(Level::Success))]),
            row(
                "popup number title",
                json(json!({"popup": {"title": 1, "message": "m"}})),
            )
            .warns(&["popup.title"]),
            row(
                "popup unknown key",
                json(json!({"popup": {"message": "m", "size": 2}})),
            )
            .warns(&["popup"]),
            row("popup number", json(json!({"popup": 5}))).warns(&["popup"]),
            row("popup array", json(json!({"popup": ["m"]}))).warns(&["popup"]),
        ]);
    }

    #[test]
    fn json_errors() {
        check(vec![
            row("error message", json(json!({"error": "An error occurred"}))).error(vec![error(
                Some("An error occurred"),
                Tooltip,
                None,
            )]),
            row(
                "error message anchors to the object",
                json(json!({"error": "bad"})),
            )
            .from(SLIDER)
            .error(vec![error(Some("bad"), Tooltip, Some("slider1"))]),
            row(
                "error display tooltip",
                json(json!({"error": "m", "display": "tooltip"})),
            )
            .error(vec![error(Some("m"), Tooltip, None)]),
            row(
                "error display popup",
                json(json!({"error": "m", "display": "popup"})),
            )
            .error(vec![error(Some("m"), Popup, None)]),
            row(
                "error display toast",
                json(json!({"error": "m", "display": "toast"})),
            )
            .error(vec![error(Some("m"), Toast, None)]),
            row(
                "error display in any letter case",
                json(json!({"error": "m", "display": "Popup"})),
            )
            .error(vec![error(Some("m"), Popup, None)]),
            row(
                "error unknown display",
                json(json!({"error": "m", "display": "banner"})),
            )
            .error(vec![error(Some("m"), Tooltip, None)])
            .warns(&["display"]),
            row(
                "error number display",
                json(json!({"error": "m", "display": 2})),
            )
            .error(vec![error(Some("m"), Tooltip, None)])
            .warns(&["display"]),
            row("error true", json(json!({"error": true}))).error(vec![error(None, Tooltip, None)]),
            row(
                "error true with display",
                json(json!({"error": true, "display": "toast"})),
            )
            .error(vec![error(None, Toast, None)]),
            row("error false", json(json!({"error": false}))),
            row("error null", json(json!({"error": null}))),
            row(
                "error false with display",
                json(json!({"error": false, "display": "popup"})),
            )
            .warns(&["display"]),
            row("display without error", json(json!({"display": "popup"}))).warns(&["display"]),
            row("error number", json(json!({"error": 5}))).warns(&["error"]),
            row("error array", json(json!({"error": ["m"]}))).warns(&["error"]),
            row("rollback", json(json!({"error": "m", "rollback": true})))
                .from(SLIDER)
                .error(vec![
                    error(Some("m"), Tooltip, Some("slider1")),
                    rollback("slider1", Some("40")),
                ]),
            row(
                "rollback with error true",
                json(json!({"error": true, "rollback": true})),
            )
            .from(SLIDER)
            .error(vec![
                error(None, Tooltip, Some("slider1")),
                rollback("slider1", Some("40")),
            ]),
            row(
                "rollback without a previous value",
                json(json!({"error": "m", "rollback": true})),
            )
            .from(Origin {
                object: Some("field1"),
                rollback_value: None,
            })
            .error(vec![
                error(Some("m"), Tooltip, Some("field1")),
                rollback("field1", None),
            ]),
            row(
                "rollback without an object",
                json(json!({"error": "m", "rollback": true})),
            )
            .error(vec![error(Some("m"), Tooltip, None)])
            .warns(&["rollback"]),
            row(
                "rollback false",
                json(json!({"error": "m", "rollback": false})),
            )
            .from(SLIDER)
            .error(vec![error(Some("m"), Tooltip, Some("slider1"))]),
            row(
                "rollback not a bool",
                json(json!({"error": "m", "rollback": "yes"})),
            )
            .from(SLIDER)
            .error(vec![error(Some("m"), Tooltip, Some("slider1"))])
            .warns(&["rollback"]),
            row("rollback without error", json(json!({"rollback": true})))
                .from(SLIDER)
                .warns(&["rollback"]),
        ]);
    }

    #[test]
    fn json_field_errors() {
        check(vec![
            row("field error true", json(json!({"error": {"name": true}})))
                .error(vec![field("name", None, Tooltip)]),
            row(
                "field error message",
                json(json!({"error": {"name": "required"}})),
            )
            .error(vec![field("name", Some("required"), Tooltip)]),
            row(
                "field error message and display",
                json(json!({"error": {"name": {"message": "required", "display": "popup"}}})),
            )
            .error(vec![field("name", Some("required"), Popup)]),
            row(
                "field error display only",
                json(json!({"error": {"name": {"display": "toast"}}})),
            )
            .error(vec![field("name", None, Toast)]),
            row(
                "field error message only",
                json(json!({"error": {"name": {"message": "m"}}})),
            )
            .error(vec![field("name", Some("m"), Tooltip)]),
            row("field error false", json(json!({"error": {"name": false}}))),
            row("field errors empty", json(json!({"error": {}}))),
            row(
                "field error false and true",
                json(json!({"error": {"a": false, "b": true}})),
            )
            .error(vec![field("b", None, Tooltip)]),
            row(
                "field errors by field name",
                json(json!({"error": {"zeta": "z", "alpha": true, "mid": {"message": "m"}}})),
            )
            .error(vec![
                field("alpha", None, Tooltip),
                field("mid", Some("m"), Tooltip),
                field("zeta", Some("z"), Tooltip),
            ]),
            row(
                "field error number",
                json(json!({"error": {"age": 5, "name": true}})),
            )
            .error(vec![field("name", None, Tooltip)])
            .warns(&["error.age"]),
            row(
                "field error null only",
                json(json!({"error": {"age": null}})),
            )
            .warns(&["error.age"]),
            row(
                "field error unknown display",
                json(json!({"error": {"a": {"message": "m", "display": "x"}}})),
            )
            .error(vec![field("a", Some("m"), Tooltip)])
            .warns(&["error.a.display"]),
            row(
                "field error number message",
                json(json!({"error": {"a": {"message": 1}}})),
            )
            .error(vec![field("a", None, Tooltip)])
            .warns(&["error.a.message"]),
            row(
                "field error unknown key",
                json(json!({"error": {"a": {"message": "m", "color": "red"}}})),
            )
            .error(vec![field("a", Some("m"), Tooltip)])
            .warns(&["error.a"]),
            row(
                "field errors with display",
                json(json!({"error": {"a": true}, "display": "popup"})),
            )
            .error(vec![field("a", None, Tooltip)])
            .warns(&["display"]),
            row(
                "field errors with rollback",
                json(json!({"error": {"a": true}, "rollback": true})),
            )
            .from(SLIDER)
            .error(vec![field("a", None, Tooltip)])
            .warns(&["rollback"]),
        ]);
    }

    #[test]
    fn several_keys_in_documented_order() {
        let everything = json!({
            "page": ["close", "home"],
            "url": "../other",
            "target": "_blank",
            "download": {"name": "report"},
            "app": "speech",
            "share": "s",
            "copy": "c",
            "popup": "p",
            "toast": ["t1", "t2"],
            "rollback": true,
            "display": "toast",
            "error": "bad",
        });
        let in_order = vec![
            error(Some("bad"), Toast, Some("slider1")),
            rollback("slider1", Some("40")),
            toast("t1"),
            toast("t2"),
            popup(None, "p", None),
            copy("c"),
            share("s"),
            app("speech"),
            download("report", ""),
            url("../other", Some("_blank")),
            page("close"),
            page("home"),
        ];
        check(vec![
            row("every key", json(everything.clone()))
                .from(SLIDER)
                .error(in_order.clone()),
            row("every key as text", text(&everything.to_string()))
                .from(SLIDER)
                .error(in_order),
            row(
                "toast then page",
                json(json!({"page": "close", "toast": "saved"})),
            )
            .gives(vec![toast("saved"), page("close")]),
            row(
                "field errors then toast",
                json(json!({"toast": "fix it", "error": {"b": true, "a": "x"}})),
            )
            .error(vec![
                field("a", Some("x"), Tooltip),
                field("b", None, Tooltip),
                toast("fix it"),
            ]),
            row(
                "unknown keys do not stop the rest",
                json(json!({"zzz": 1, "page": "home", "aaa": 2})),
            )
            .gives(vec![page("home")])
            .warns(&["aaa", "zzz"]),
            row(
                "bad key does not stop the rest",
                json(json!({"toast": 5, "page": "home"})),
            )
            .gives(vec![page("home")])
            .warns(&["toast"]),
        ]);
    }

    #[test]
    fn other_answers() {
        check(vec![
            row("unit", Answer::Unit).status(Status::Unhandled),
            row("other", Answer::Other("i64".to_string())).warns(&["answer"]),
            row("json array", json(json!(["page", "home"]))).warns(&["answer"]),
            row("json string", json(json!("page:home"))).warns(&["answer"]),
            row("json number", json(json!(1))).warns(&["answer"]),
            row("json null", json(Value::Null)).warns(&["answer"]),
            row("empty object", json(json!({}))),
        ]);
        let other = decode(&Answer::Other("i64".to_string()), &NO_OBJECT);
        assert!(other.warnings[0].contains("i64"), "{:?}", other.warnings);
    }

    #[test]
    fn warnings_name_the_key() {
        let warnings = |value: Value| decode(&json(value), &NO_OBJECT).warnings;
        assert_eq!(
            warnings(json!({"toast": 5})),
            ["toast: expected a string, an object or an array, got number 5"]
        );
        assert_eq!(
            warnings(json!({"toast": [{"message": "m", "duration": -3}]})),
            [
                "toast[0].duration: expected a non-negative number of milliseconds, got number -3; toast ignored"
            ]
        );
        assert_eq!(
            warnings(json!({"colour": "red"})),
            ["colour: unknown key, ignored"]
        );
        assert_eq!(
            warnings(json!({"error": {"a": {"display": "big"}}})),
            [
                "error.a.display: expected tooltip, popup or toast, got string \"big\", using tooltip"
            ]
        );
        // A handler-chosen key cannot break the log line.
        assert_eq!(
            warnings(json!({"a\nb": 1})),
            ["a\\nb: unknown key, ignored"]
        );
    }

    #[test]
    fn wire_format() {
        let wire = |action: Action| serde_json::to_string(&action).unwrap();
        assert_eq!(
            wire(toast("m")),
            r#"{"type":"toast","message":"m","duration":null,"level":null,"duplicate":false,"close":false}"#
        );
        assert_eq!(
            wire(toast_with("m", Some(5), Some(Level::Success), true, true)),
            r#"{"type":"toast","message":"m","duration":5,"level":"success","duplicate":true,"close":true}"#
        );
        assert_eq!(
            wire(field("name", Some("required"), Popup)),
            r#"{"type":"field_error","field":"name","message":"required","display":"popup"}"#
        );
        assert_eq!(
            wire(error(None, Tooltip, Some("b1"))),
            r#"{"type":"error","message":null,"display":"tooltip","object":"b1"}"#
        );
        assert_eq!(
            wire(rollback("s1", Some("40"))),
            r#"{"type":"rollback","object":"s1","value":"40"}"#
        );
        assert_eq!(
            wire(url("../p", Some("_blank"))),
            r#"{"type":"url","url":"../p","target":"_blank"}"#
        );
        assert_eq!(wire(page("home")), r#"{"type":"page","page":"home"}"#);
        assert_eq!(
            wire(download("csv", "")),
            r#"{"type":"download","name":"csv","parameter":""}"#
        );
        assert_eq!(
            serde_json::to_string(&Status::Unhandled).unwrap(),
            r#""unhandled""#
        );
    }

    #[test]
    fn from_dynamic() {
        use rhai::{Dynamic, Engine};
        let engine = Engine::new();
        let eval = |script: &str| Answer::from_dynamic(engine.eval::<Dynamic>(script).unwrap());
        assert_eq!(eval("()"), Answer::Unit);
        assert_eq!(eval(r#""page:home""#), text("page:home"));
        assert_eq!(
            eval(r#"#{toast: #{message: "m", duration: 10}, page: ["a", "b"]}"#),
            json(json!({"toast": {"message": "m", "duration": 10}, "page": ["a", "b"]}))
        );
        assert_eq!(eval("42"), Answer::Other("i64".to_string()));
        assert_eq!(eval("[1, 2]"), Answer::Other("array".to_string()));
        assert_eq!(eval("true"), Answer::Other("bool".to_string()));
        assert_eq!(eval("#{f: Fn(\"x\")}"), Answer::Other("map".to_string()));
        let shared = Dynamic::from("error".to_string()).into_shared();
        assert_eq!(Answer::from_dynamic(shared), text("error"));
    }

    #[test]
    fn weird_values_never_panic() {
        let mut deep = json!("bottom");
        for level in 0..200 {
            deep = if level % 2 == 0 {
                json!([deep])
            } else {
                json!({"toast": deep})
            };
        }
        let long = "ü".repeat(10_000);
        let weird = [
            Value::Null,
            json!(u64::MAX),
            json!(i64::MIN),
            json!(f64::MAX),
            json!(-0.0),
            json!(long),
            json!([[[[null]]]]),
            deep.clone(),
            json!({"toast": deep.clone(), "page": deep.clone(), "error": deep.clone()}),
            json!({"error": {"": {"": {"": null}}}, "display": [], "rollback": {}}),
            json!({"toast": {"message": long, "duration": u64::MAX, "type": long}}),
            json!({"toast": [[], {}, [{}], {"message": {}}, {"duration": 1e308}]}),
            json!({"popup": {"title": null, "message": null, "type": null}}),
            json!({"download": {"name": long, "parameter": f64::MIN}}),
            json!({"url": long, "target": long}),
            json!({"url": "ü:x"}),
            json!({"url": ":"}),
            json!({"url": "é/../x"}),
            json!({"page": ["", null, 1e300, "日本語", [[]]]}),
            json!({"日本語": "値", "": "", "\u{0}": "\u{0}"}),
            json!({long.clone(): long}),
        ];
        let texts = [
            "!".repeat(100_000),
            "{".repeat(100_000),
            "[".repeat(100_000),
            format!("{}{}", "!".repeat(10), "{".repeat(1000)),
            "page:日本語".to_string(),
            "app:\u{0}".to_string(),
            " \t\n{".to_string(),
            "{}".to_string(),
        ];
        let answers = weird
            .iter()
            .flat_map(|value| [json(value.clone()), text(&value.to_string())])
            .chain(texts.iter().map(|t| text(t)));
        for answer in answers {
            for origin in [NO_OBJECT, SLIDER] {
                let decoded = decode(&answer, &origin);
                let has_error = decoded
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Error { .. } | Action::FieldError { .. }));
                assert_eq!(decoded.status == Status::Error, has_error, "{decoded:?}");
                assert!(
                    decoded
                        .warnings
                        .iter()
                        .all(|w| w.len() < 400 && !w.contains('\n'))
                );
            }
        }
    }

    fn leveled_toast(message: &str, level: Level) -> Action {
        Action::Toast {
            message: message.into(),
            duration: None,
            level: Some(level),
            duplicate: false,
            close: false,
            title: None,
        }
    }

    fn field_error(field: &str, message: Option<&str>) -> Action {
        Action::FieldError {
            field: field.into(),
            message: message.map(String::from),
            display: Display::Tooltip,
            title: None,
        }
    }

    fn titled(action: Action, heading: &str) -> Action {
        match action {
            Action::Toast {
                message,
                duration,
                level,
                duplicate,
                close,
                ..
            } => Action::Toast {
                message,
                duration,
                level,
                duplicate,
                close,
                title: Some(heading.into()),
            },
            Action::FieldError {
                field,
                message,
                display,
                ..
            } => Action::FieldError {
                field,
                message,
                display,
                title: Some(heading.into()),
            },
            other => other,
        }
    }

    #[test]
    fn form_submission_results() {
        check(vec![
            row("form_success_message", json(json!({"success": true, "title": "Form Submitted", "message": "Thank you!"})))
                .gives(vec![titled(leveled_toast("Thank you!", Level::Success), "Form Submitted")]),
            row("form_success_title_only", json(json!({"success": true, "title": "Saved"})))
                .gives(vec![leveled_toast("Saved", Level::Success)]),
            row("form_success_bare", json(json!({"success": true}))),
            row("form_failure_with_field_errors", json(json!({
                "success": false, "title": "Missing Required Field", "message": "Email address is required.",
                "fieldErrors": {"email": {"title": "Required", "message": "Please enter your email."}, "age": {"title": "Too young"}}
            })))
            .error(vec![
                field_error("age", Some("Too young")),
                titled(field_error("email", Some("Please enter your email.")), "Required"),
                titled(leveled_toast("Email address is required.", Level::Error), "Missing Required Field"),
            ]),
            row("form_failure_popup", json(json!({"success": false, "title": "Refused", "message": "Closed today"})))
                .error(vec![Action::Popup { title: Some("Refused".into()), message: "Closed today".into(), level: Some(Level::Error) }]),
            row("form_failure_bare", json(json!({"success": false})))
                .error(vec![Action::Error { message: None, display: Display::Toast, object: None }]),
            row("form_field_error_as_string", json(json!({"success": false, "fieldErrors": {"name": "Required"}})))
                .error(vec![field_error("name", Some("Required"))]),
            row("form_bad_field_error", json(json!({"success": false, "fieldErrors": {"name": 5}})))
                .error(vec![Action::Error { message: None, display: Display::Toast, object: None }])
                .warns(&["fieldErrors.name"]),
            row("form_success_not_bool", json(json!({"success": "yes", "message": "x"}))).warns(&["success"]),
            row("form_keys_without_success", json(json!({"title": "t", "toast": "x"})))
                .gives(vec![toast("x")])
                .warns(&["title"]),
            row("form_success_with_page", json(json!({"success": true, "message": "ok", "page": "home"})))
                .gives(vec![leveled_toast("ok", Level::Success), page("home")]),
        ]);
    }

    #[test]
    fn authentication_challenge() {
        let challenge = |payload: Value| Action::Challenge {
            id: String::new(),
            payload,
        };
        check(vec![
            row(
                "challenge_with_payload",
                json(json!({"challenge": {"payload": {"door": 4}}})),
            )
            .gives(vec![challenge(json!({"door": 4}))]),
            row("challenge_without_payload", json(json!({"challenge": {}})))
                .gives(vec![challenge(Value::Null)]),
            row("challenge_bad_shape", json(json!({"challenge": "x"}))).warns(&["challenge"]),
            row(
                "challenge_unknown_key",
                json(json!({"challenge": {"payload": 1, "x": 2}})),
            )
            .warns(&["challenge"]),
        ]);
        let wire = serde_json::to_value(Action::Challenge {
            id: "c1".into(),
            payload: json!("secret"),
        })
        .unwrap();
        assert_eq!(
            wire,
            json!({"type": "challenge", "id": "c1"}),
            "the payload never leaves the server"
        );
    }
}
