//! The wire contract between the browser runtime and the server: the frames a
//! client may send and the replies it gets back (see `docs/protocol.md`).
//!
//! Parsing is pure and total: any text in, a [`ClientFrame`] or a
//! [`Rejection`] out, never a panic. What a frame *does* is decided elsewhere
//! (`runtime`); how it travels (HTTP body, WebSocket text frame) is
//! `transport`'s business.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::answer::{Action, Status};

/// A command as sent by an object on the page.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub seq: Option<u64>,
    /// Unique per command (the browser runtime sends `<tab>-<seq>`): a
    /// command whose id was already answered gets that answer again and is
    /// not run twice.
    pub id: Option<String>,
    /// The id of the object that sent it (a button, a field…).
    pub object: Option<String>,
    pub name: String,
    #[serde(default)]
    pub param: String,
    /// The page the object is on.
    pub page: Option<String>,
}

/// The client reports that a page (usually a popup) was closed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageClosed {
    pub seq: Option<u64>,
    pub page: String,
}

/// The client now shows another page in this tab (client-side navigation).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageShown {
    pub seq: Option<u64>,
    pub page: String,
}

/// A keystroke matcher of the project fired in the browser.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keystroke {
    pub seq: Option<u64>,
    /// The matcher's `name` in `project.toml`.
    pub matcher: String,
    pub page: Option<String>,
    /// The `KeyboardEvent` fields (key, code, altKey, ctrlKey, …).
    #[serde(default)]
    pub event: serde_json::Map<String, Value>,
    /// Regex matchers: the last typed characters; the server runs the regex
    /// itself to find `matches`.
    pub buffer: Option<String>,
}

/// A device event: a scanned barcode, an NFC tag, accelerometer or
/// Bluetooth data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub seq: Option<u64>,
    pub event: DeviceEvent,
    pub data: Value,
    #[serde(default)]
    pub context: Value,
    /// Gateways posting to `/api/event` with the project token name the
    /// session here.
    pub session: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceEvent {
    Barcode,
    Nfc,
    Accelerometer,
    Bluetooth,
}

impl DeviceEvent {
    /// The Rhai callback that receives it.
    pub fn callback(self) -> &'static str {
        match self {
            DeviceEvent::Barcode => "barcode",
            DeviceEvent::Nfc => "nfc",
            DeviceEvent::Accelerometer => "accelerometer",
            DeviceEvent::Bluetooth => "bluetooth",
        }
    }
}

/// A reliable form's submission, for `fn formSubmission`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormSubmit {
    pub seq: Option<u64>,
    /// Unique per submission, kept across retries: processed once.
    pub id: String,
    /// The form's name (its container id).
    pub name: String,
    /// Field id → value.
    pub data: serde_json::Map<String, Value>,
    /// What the page author attached to the form.
    #[serde(default)]
    pub context: Value,
    /// Captured by the browser when the user submitted: `timestamp`,
    /// `device`, `location` when available.
    #[serde(default)]
    pub session_context: serde_json::Map<String, Value>,
    /// `true` on every delivery attempt after the first.
    #[serde(default)]
    pub retry: bool,
}

/// Everything a client may send.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Command(Command),
    PageClosed(PageClosed),
    PageShown(PageShown),
    Keystroke(Keystroke),
    Device(Device),
    Form(FormSubmit),
}

impl ClientFrame {
    pub fn seq(&self) -> Option<u64> {
        match self {
            ClientFrame::Command(command) => command.seq,
            ClientFrame::PageClosed(closed) => closed.seq,
            ClientFrame::PageShown(shown) => shown.seq,
            ClientFrame::Keystroke(keystroke) => keystroke.seq,
            ClientFrame::Device(device) => device.seq,
            ClientFrame::Form(form) => form.seq,
        }
    }
}

/// Frames the server sends unasked.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Push<'a> {
    /// Actions from a session event handler or `sendActions`.
    Actions {
        event: &'a str,
        actions: &'a [Action],
    },
    /// UI attribute values to apply.
    Ui { set: &'a [UiValue] },
    /// The project changed on disk: reload these pages if shown.
    Reload { pages: &'a [String] },
    /// Dev mode only: the project failed to compile (`None` clears).
    DevError { message: Option<&'a str> },
    /// Dev mode only: a mistake that is silent otherwise (an unknown answer
    /// key, an unhandled command, a value that is not an answer).
    DevNotice { message: &'a str },
    /// The session ended; the client should stop reconnecting with it.
    SessionEnded { reason: &'a str },
    /// An authentication challenge ended without this browser's answer
    /// (timed out, or answered in another tab): close its dialog.
    ChallengeClosed { id: &'a str },
    /// Sent on connect: what the browser must detect.
    Config {
        keystrokes: &'a [crate::project::KeystrokeMatcher],
    },
}

impl Push<'_> {
    pub fn to_frame(&self) -> crate::session::Frame {
        serde_json::to_string(self).unwrap_or_default().into()
    }
}

/// One pushed UI attribute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UiValue {
    pub id: String,
    pub attr: String,
    pub value: Value,
}

/// The answer to one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub seq: Option<u64>,
    pub status: Status,
    pub actions: Vec<Action>,
}

/// A frame the server refused to act on; the connection stays usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Echoed when the frame was JSON with a numeric `seq`, so the client can
    /// match the rejection to what it sent.
    pub seq: Option<u64>,
    pub status: &'static str,
    pub reason: String,
}

impl Rejection {
    pub fn new(seq: Option<u64>, reason: impl Into<String>) -> Self {
        Rejection {
            seq,
            status: "rejected",
            reason: reason.into(),
        }
    }
}

/// Parses one frame of at most `max_bytes` bytes.
pub fn parse_frame(text: &str, max_bytes: usize) -> Result<ClientFrame, Rejection> {
    if text.len() > max_bytes {
        // The seq still matters: the client matches the rejection to its
        // frame by it. Skimming for it costs no more than parsing would
        // have (the transport caps frames at a megabyte).
        return Err(Rejection::new(
            seq_of_malformed(text),
            format!(
                "frame of {} bytes exceeds the limit of {max_bytes} bytes",
                text.len()
            ),
        ));
    }
    serde_json::from_str::<ClientFrame>(text).map_err(|error| {
        Rejection::new(seq_of_malformed(text), format!("malformed frame: {error}"))
    })
}

/// Best effort: the `seq` of a frame that was refused or did not parse as
/// a [`ClientFrame`].
fn seq_of_malformed(text: &str) -> Option<u64> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map.get("seq").and_then(Value::as_u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1024;

    #[test]
    fn command_with_every_field() {
        let frame = parse_frame(
            r#"{"type":"command","seq":12,"object":"dimmer1","name":"dimmer","param":"40","page":"home"}"#,
            LIMIT,
        )
        .unwrap();
        assert_eq!(
            frame,
            ClientFrame::Command(Command {
                seq: Some(12),
                id: None,
                object: Some("dimmer1".into()),
                name: "dimmer".into(),
                param: "40".into(),
                page: Some("home".into()),
            })
        );
    }

    #[test]
    fn command_with_only_a_name() {
        let frame = parse_frame(r#"{"type":"command","name":"light"}"#, LIMIT).unwrap();
        assert_eq!(frame.seq(), None);
        let ClientFrame::Command(command) = frame else {
            panic!("not a command")
        };
        assert_eq!(command.param, "");
        assert_eq!(command.object, None);
    }

    #[test]
    fn page_closed() {
        let frame = parse_frame(r#"{"type":"page_closed","seq":13,"page":"popup2"}"#, LIMIT);
        assert_eq!(
            frame,
            Ok(ClientFrame::PageClosed(PageClosed {
                seq: Some(13),
                page: "popup2".into()
            }))
        );
    }

    #[test]
    fn rejections_keep_the_seq_when_they_can() {
        let cases = [
            (r#"{"type":"command","seq":4}"#, Some(4)),
            (r#"{"type":"launch","seq":5,"name":"x"}"#, Some(5)),
            (r#"{"type":"command","seq":6,"name":7}"#, Some(6)),
            (r#"{"type":"command","seq":"7","name":"x"}"#, None),
            (
                r#"{"type":"command","seq":8,"name":"x","extra":1}"#,
                Some(8),
            ),
            ("not json", None),
            ("", None),
            ("[1,2]", None),
            ("null", None),
            (r#"{"seq":9}"#, Some(9)),
        ];
        for (text, seq) in cases {
            let rejection = parse_frame(text, LIMIT).expect_err(text);
            assert_eq!(rejection.seq, seq, "{text}");
            assert_eq!(rejection.status, "rejected");
            assert!(
                rejection.reason.starts_with("malformed frame"),
                "{text}: {}",
                rejection.reason
            );
        }
    }

    #[test]
    fn oversized_frame_is_rejected_before_parsing() {
        let text = format!(
            r#"{{"type":"command","name":"x","param":"{}","seq":41}}"#,
            "a".repeat(LIMIT)
        );
        let rejection = parse_frame(&text, LIMIT).unwrap_err();
        assert!(
            rejection.reason.contains("exceeds the limit"),
            "{}",
            rejection.reason
        );
        assert_eq!(rejection.seq, Some(41), "the client matches it by seq");
    }

    #[test]
    fn reply_wire_shape() {
        let reply = Reply {
            seq: Some(3),
            status: Status::Unhandled,
            actions: vec![],
        };
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"seq":3,"status":"unhandled","actions":[]}"#
        );
        let rejection = Rejection::new(None, "bad");
        assert_eq!(
            serde_json::to_string(&rejection).unwrap(),
            r#"{"seq":null,"status":"rejected","reason":"bad"}"#
        );
    }
}
