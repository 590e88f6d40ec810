//! The invariants the fuzz targets assert, kept apart from the targets so
//! that they are unit-tested on the stable toolchain
//! (`cargo test --manifest-path fuzz/Cargo.toml`) and the seeds checked
//! without libFuzzer.
//!
//! Each check panics (which libFuzzer reports as a crash) when the code
//! breaks a property it guarantees. Only what `src/answer.rs` and
//! `src/protocol.rs` actually guarantee is asserted; see
//! the fuzzing section of `docs/security.md`.

use serde_json::Value;
use switchboard::answer::{Action, Answer, Decoded, Origin, Status, decode};
use switchboard::protocol::{ClientFrame, parse_frame};

/// The origins every answer is decoded with: no object, an object with a
/// last valid value (a slider), an object without one (a button), and an
/// empty object id.
pub const ORIGINS: [Origin<'static>; 4] = [
    Origin {
        object: None,
        rollback_value: None,
    },
    Origin {
        object: Some("slider1"),
        rollback_value: Some("40"),
    },
    Origin {
        object: Some("button1"),
        rollback_value: None,
    },
    Origin {
        object: Some(""),
        rollback_value: Some(""),
    },
];

/// The frame limit the server uses.
pub const FRAME_LIMIT: usize = 65536;

/// Longest warning `decode` can write: handler text goes through `clip`
/// (40 chars, each escaped to at most 10 bytes, plus `…`), at most twice per
/// warning, in a fixed sentence.
pub const MAX_WARNING_BYTES: usize = 1024;

// --- answer_decoder ------------------------------------------------------------

/// `answer_decoder`: the bytes as a text answer, and as a JSON answer when
/// they parse as JSON.
pub fn fuzz_answer_bytes(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_text(text);
    }
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        check_answer(&Answer::Json(value));
    }
}

/// A text answer, plus the two equivalences the text decoder guarantees:
/// a JSON object as text decodes exactly like the parsed object, and a
/// leading `!` only makes the answer quiet.
pub fn check_text(text: &str) {
    let decoded = check_answer(&Answer::Text(text.to_string()));

    if let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
        for origin in &ORIGINS {
            assert_eq!(
                decode(&Answer::Text(text.to_string()), origin),
                decode(&Answer::Json(value.clone()), origin),
                "a JSON object as text must decode like the object: {text:?}"
            );
        }
    }

    let quiet_text = format!("!{text}");
    let quiet = check_answer(&Answer::Text(quiet_text.clone()));
    assert!(quiet.quiet, "{quiet_text:?} must be quiet");
    assert_eq!(
        Decoded {
            quiet: true,
            ..decoded
        },
        quiet,
        "a leading ! must change nothing but `quiet`: {text:?}"
    );
}

/// Decodes `answer` with every origin, checks each result, and returns the
/// decoding with the first origin.
pub fn check_answer(answer: &Answer) -> Decoded {
    let mut first = None;
    for origin in &ORIGINS {
        let decoded = decode(answer, origin);
        check_decoded(answer, origin, &decoded);
        assert_eq!(
            decode(answer, origin),
            decoded,
            "decode must be deterministic"
        );
        first.get_or_insert(decoded);
    }
    first.expect("ORIGINS is not empty")
}

/// Every property of one decoding.
pub fn check_decoded(answer: &Answer, origin: &Origin, decoded: &Decoded) {
    let context = || format!("answer {answer:?}, origin {origin:?}, decoded {decoded:?}");

    // Warnings go to the log: one line each, short, whatever the input.
    for warning in &decoded.warnings {
        assert!(
            !warning.contains(['\n', '\r']),
            "warning forges a log line: {warning:?}; {}",
            context()
        );
        assert!(
            warning.len() <= MAX_WARNING_BYTES,
            "warning of {} bytes; {}",
            warning.len(),
            context()
        );
    }

    match answer {
        Answer::Unit => {
            assert_eq!(decoded.status, Status::Unhandled, "{}", context());
            assert!(decoded.actions.is_empty() && decoded.warnings.is_empty());
            assert!(!decoded.quiet);
            return;
        }
        Answer::Other(_) => {
            assert_eq!(decoded.status, Status::Ok, "{}", context());
            assert!(decoded.actions.is_empty(), "{}", context());
            assert_eq!(decoded.warnings.len(), 1, "{}", context());
            assert!(!decoded.quiet);
            return;
        }
        Answer::Text(text) => assert_eq!(decoded.quiet, text.starts_with('!'), "{}", context()),
        Answer::Json(_) => assert!(!decoded.quiet, "{}", context()),
    }

    // Status: Error iff an Error/FieldError action was raised, or the answer
    // is a failed form submission (`"success": false`), which may show its
    // failure as a popup or toast instead.
    let form = form_object(answer);
    let form_failure = form
        .as_ref()
        .and_then(|map| map.get("success"))
        .is_some_and(|success| *success == Value::Bool(false));
    let has_error = decoded
        .actions
        .iter()
        .any(|action| matches!(action, Action::Error { .. } | Action::FieldError { .. }));
    assert!(
        matches!(decoded.status, Status::Ok | Status::Error),
        "{}",
        context()
    );
    assert_eq!(
        decoded.status == Status::Error,
        has_error || form_failure,
        "status must be Error iff an error action or a failed form; {}",
        context()
    );
    if form_failure {
        // A failed submission always shows the user something.
        assert!(!decoded.actions.is_empty(), "{}", context());
    }

    let mut urls = 0;
    for (index, action) in decoded.actions.iter().enumerate() {
        match action {
            Action::Url { url, .. } => {
                urls += 1;
                if let Err(reason) = url_allowed(url) {
                    panic!("url {url:?} let through: {reason}; {}", context());
                }
            }
            Action::Page { page } => assert!(!page.is_empty(), "{}", context()),
            Action::App { command } => assert!(!command.is_empty(), "{}", context()),
            Action::Download { name, .. } => assert!(!name.is_empty(), "{}", context()),
            Action::Error { object, .. } => assert!(
                object.is_none() || object.as_deref() == origin.object,
                "error anchored to another object; {}",
                context()
            ),
            Action::Rollback { object, value } => {
                assert_eq!(Some(object.as_str()), origin.object, "{}", context());
                assert_eq!(value.as_deref(), origin.rollback_value, "{}", context());
                assert!(
                    index > 0 && matches!(decoded.actions[index - 1], Action::Error { .. }),
                    "a rollback must follow its error; {}",
                    context()
                );
            }
            _ => {}
        }
        // What the server sends is what the client reads back, except a
        // challenge's payload, which must never leave the server.
        let wire = serde_json::to_string(action).expect("an action serializes");
        let back: Action = serde_json::from_str(&wire).expect("an action deserializes");
        if let Action::Challenge { id, .. } = action {
            let sent: Value = serde_json::from_str(&wire).expect("wire is JSON");
            assert_eq!(
                sent,
                serde_json::json!({"type": "challenge", "id": id}),
                "a challenge sends its id only; {}",
                context()
            );
            assert_eq!(
                back,
                Action::Challenge {
                    id: id.clone(),
                    payload: Value::Null
                }
            );
        } else {
            assert_eq!(&back, action, "wire round trip of {wire}");
        }
    }
    assert!(urls <= 1, "at most one url action; {}", context());

    // The documented order of actions, for answers outside the form
    // vocabulary (whose actions are interleaved by design).
    if !form.is_some_and(|map| map.contains_key("success")) {
        let ranks: Vec<u8> = decoded.actions.iter().map(rank).collect();
        assert!(
            ranks.is_sorted(),
            "actions out of the documented order {ranks:?}; {}",
            context()
        );
    }
}

/// The object `decode` reads keys from, if any: the JSON object, or a text
/// answer that is a JSON object (after its leading `!`s).
fn form_object(answer: &Answer) -> Option<serde_json::Map<String, Value>> {
    match answer {
        Answer::Json(Value::Object(map)) => Some(map.clone()),
        Answer::Text(text) => {
            let rest = text.trim_start_matches('!');
            if rest == "error"
                || ["page:", "copy:", "app:"]
                    .iter()
                    .any(|prefix| rest.starts_with(prefix))
                || !rest.trim_start().starts_with('{')
            {
                return None;
            }
            match serde_json::from_str::<Value>(rest) {
                Ok(Value::Object(map)) => Some(map),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Position in the documented order (see `answer::decode`).
fn rank(action: &Action) -> u8 {
    match action {
        Action::Error { .. } => 0,
        Action::Rollback { .. } => 1,
        Action::FieldError { .. } => 2,
        Action::Toast { .. } => 3,
        Action::Popup { .. } => 4,
        Action::Challenge { .. } => 5,
        Action::Copy { .. } => 6,
        Action::Share { .. } => 7,
        Action::App { .. } => 8,
        Action::Download { .. } => 9,
        Action::Url { .. } => 10,
        Action::Page { .. } => 11,
    }
}

/// An oracle for the url allow-list, written from the browser's side rather
/// than copied from `answer::check_url`: `Ok` when a browser given this url
/// can only open an http(s), mailto or tel url, or a relative one.
pub fn url_allowed(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("empty url".into());
    }
    // Paranoid: drop every whitespace and control character anywhere, as
    // some parser on the way might, and look for a script scheme.
    let squeezed: String = url
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect::<String>()
        .to_ascii_lowercase();
    for scheme in ["javascript:", "vbscript:", "data:", "file:", "blob:"] {
        if squeezed.starts_with(scheme) {
            return Err(format!("{scheme} scheme once whitespace is dropped"));
        }
    }
    // The WHATWG URL parser: trim C0 controls and spaces at both ends,
    // remove tabs and newlines anywhere, then read the scheme.
    let trimmed = url.trim_matches(|c: char| c <= ' ');
    let normalized: String = trimmed
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let mut chars = normalized.char_indices();
    let Some((_, first)) = chars.next() else {
        return Err("url of only spaces and controls".into());
    };
    if !first.is_ascii_alphabetic() {
        return Ok(()); // relative
    }
    for (at, c) in chars {
        if c == ':' {
            let scheme = &normalized[..at];
            return if ["http", "https", "mailto", "tel"]
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(scheme))
            {
                Ok(())
            } else {
                Err(format!("scheme {scheme:?}"))
            };
        }
        if !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) {
            return Ok(()); // no scheme: relative
        }
    }
    Ok(())
}

// --- rhai_answer -----------------------------------------------------------------

/// `rhai_answer`: JSON → a Rhai value through rhai's serde → what a handler
/// returning it gives.
pub fn fuzz_rhai_bytes(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    check_rhai(&value);
}

pub fn check_rhai(value: &Value) {
    let Ok(dynamic) = rhai::serde::to_dynamic(value) else {
        return;
    };
    let answer = Answer::from_dynamic(dynamic.clone());
    match (value, &answer) {
        (Value::Null, Answer::Unit) => {}
        (Value::String(text), Answer::Text(answer_text)) => assert_eq!(text, answer_text),
        (Value::Object(map), Answer::Json(Value::Object(answer_map))) => {
            let sorted = |map: &serde_json::Map<String, Value>| {
                let mut keys: Vec<String> = map.keys().cloned().collect();
                keys.sort();
                keys
            };
            assert!(
                sorted(map) == sorted(answer_map),
                "a map answer keeps its keys: {value} became {answer:?}"
            );
        }
        (Value::Object(_), Answer::Other(type_name)) => assert_eq!(type_name, "map"),
        (Value::Array(_) | Value::Bool(_) | Value::Number(_), Answer::Other(_)) => {}
        _ => panic!("{value} became {answer:?}"),
    }
    // A handler's value is often captured by a closure: same answer.
    assert_eq!(Answer::from_dynamic(dynamic.into_shared()), answer);
    check_answer(&answer);
}

// --- frame_parser ----------------------------------------------------------------

/// `frame_parser`: the bytes as a frame, when they are UTF-8.
pub fn fuzz_frame_bytes(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_frame(text);
    }
}

pub fn check_frame(text: &str) {
    let result = parse_frame(text, FRAME_LIMIT);
    let json_seq = || match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map.get("seq").and_then(Value::as_u64),
        _ => None,
    };
    match &result {
        Err(rejection) => {
            assert_eq!(rejection.status, "rejected");
            if text.len() > FRAME_LIMIT {
                assert_eq!(rejection.seq, json_seq(), "rejection of {text:?}");
                assert!(rejection.reason.contains("exceeds the limit"));
            } else {
                assert!(
                    rejection.reason.starts_with("malformed frame"),
                    "{}",
                    rejection.reason
                );
                // The seq is echoed exactly when the frame is a JSON object
                // with a numeric (u64) seq.
                assert_eq!(rejection.seq, json_seq(), "rejection of {text:?}");
            }
            serde_json::to_string(rejection).expect("a rejection serializes");
        }
        Ok(frame) => {
            let value: Value = serde_json::from_str(text).expect("an accepted frame is JSON");
            let map = value.as_object().expect("an accepted frame is an object");
            assert_eq!(frame.seq(), json_seq(), "seq of {text:?}");
            let tag = match frame {
                ClientFrame::Command(_) => "command",
                ClientFrame::PageClosed(_) => "page_closed",
                ClientFrame::PageShown(_) => "page_shown",
                ClientFrame::Keystroke(_) => "keystroke",
                ClientFrame::Device(_) => "device",
                ClientFrame::Form(_) => "form",
            };
            assert_eq!(map.get("type").and_then(Value::as_str), Some(tag));
        }
    }
    // The limit is inclusive and checked before parsing.
    if !text.is_empty() && text.len() <= FRAME_LIMIT {
        assert_eq!(parse_frame(text, text.len()), result);
        let over = parse_frame(text, text.len() - 1).expect_err("over the limit");
        // Too large or not, a rejection echoes the frame's seq.
        assert_eq!(over.seq, json_seq(), "over the limit: {text:?}");
        assert!(over.reason.contains("exceeds the limit"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    }

    #[test]
    fn answer_seeds_hold() {
        for seed in seeds("answer_decoder") {
            fuzz_answer_bytes(&seed);
        }
        check_answer(&Answer::Unit);
        check_answer(&Answer::Other("i64".into()));
    }

    #[test]
    fn frame_seeds_hold() {
        let mut accepted = 0;
        for seed in seeds("frame_parser") {
            fuzz_frame_bytes(&seed);
            accepted +=
                usize::from(parse_frame(std::str::from_utf8(&seed).unwrap(), FRAME_LIMIT).is_ok());
        }
        assert!(
            accepted >= 5,
            "the frame seeds should mostly be valid frames"
        );
    }

    #[test]
    fn rhai_seeds_hold() {
        for seed in seeds("rhai_answer") {
            fuzz_rhai_bytes(&seed);
        }
    }

    #[test]
    fn form_failures_are_errors_without_error_actions() {
        // The case that makes the status rule more than "has an error action".
        let decoded = check_answer(&Answer::Text(
            r#"{"success": false, "message": "Closed today"}"#.into(),
        ));
        assert_eq!(decoded.status, Status::Error);
        assert!(matches!(decoded.actions[..], [Action::Popup { .. }]));
    }

    #[test]
    fn url_oracle() {
        for good in [
            "https://example.com",
            "HTTP://x",
            "mailto:a@b",
            "tel:+1",
            "../other",
            "/x:y",
            "?a:b",
            "#c:d",
            "//host/path",
            "page",
            "a b:c", // no scheme for a browser: relative
        ] {
            assert_eq!(url_allowed(good), Ok(()), "{good}");
        }
        for bad in [
            "javascript:alert(1)",
            "JavaScript:x",
            " javascript:x",
            "java\tscript:x",
            "java\nscript:x",
            "\u{0}javascript:x",
            "java script:x",
            "data:text/html,x",
            "vbscript:x",
            "x-custom:thing",
            "",
            "  ",
        ] {
            assert!(url_allowed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_urls_are_dropped_by_decode() {
        for url in [
            "javascript:alert(1)",
            " javascript:x",
            "java\tscript:x",
            "javascript:/x",
            "\u{feff}javascript:x",
            "javascript\u{0}:x",
            "JAVASCRIPT:x",
        ] {
            let answer = Answer::Json(serde_json::json!({ "url": url }));
            let decoded = check_answer(&answer);
            assert!(
                !decoded
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Url { .. })),
                "{url:?}: {decoded:?}"
            );
        }
    }

    #[test]
    fn frames() {
        check_frame(r#"{"type":"command","seq":4}"#);
        check_frame(r#"{"type":"command","seq":12,"name":"x"}"#);
        check_frame(&"x".repeat(FRAME_LIMIT + 1));
        check_frame("");
    }
}
