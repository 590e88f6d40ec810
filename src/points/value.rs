//! Point values as devices and pages write them: device payloads to typed
//! values and back, UI params, and the text a label shows. Pure: no I/O.

use serde_json::Value;

use super::config::{PointConfig, PointType};

/// Reads `true/false`, `1/0`, `ON/OFF`, `on/off` (any case) as a bool.
fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" => Some(true),
        "false" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// A JSON value as the point's type: numbers from numeric text, bools from
/// the words above, text from any scalar.
pub fn coerce(kind: PointType, value: &Value) -> Result<Value, String> {
    let fail = || {
        Err(format!(
            "{} is not a {} value",
            clip(&value.to_string()),
            type_name(kind)
        ))
    };
    match (kind, value) {
        (PointType::Json, value) => Ok(value.clone()),
        (PointType::Bool, Value::Bool(b)) => Ok(Value::Bool(*b)),
        (PointType::Bool, Value::Number(n)) if n.as_f64() == Some(1.0) => Ok(Value::Bool(true)),
        (PointType::Bool, Value::Number(n)) if n.as_f64() == Some(0.0) => Ok(Value::Bool(false)),
        (PointType::Bool, Value::String(s)) => parse_bool(s).map(Value::Bool).map_or_else(fail, Ok),
        (PointType::Number, Value::Number(n)) => Ok(Value::Number(n.clone())),
        (PointType::Number, Value::String(s)) => number(s.trim()).map_or_else(fail, Ok),
        (PointType::Text, Value::String(s)) => Ok(Value::String(s.clone())),
        (PointType::Text, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (PointType::Text, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        _ => fail(),
    }
}

fn number(text: &str) -> Option<Value> {
    let parsed: f64 = text.parse().ok()?;
    if !parsed.is_finite() {
        return None;
    }
    if let Ok(integer) = text.parse::<i64>() {
        return Some(Value::from(integer));
    }
    serde_json::Number::from_f64(parsed).map(Value::Number)
}

fn type_name(kind: PointType) -> &'static str {
    match kind {
        PointType::Bool => "bool",
        PointType::Number => "number",
        PointType::Text => "text",
        PointType::Json => "json",
    }
}

fn clip(text: &str) -> String {
    if text.chars().count() <= 40 {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(40).collect::<String>())
    }
}

/// Decodes a device payload for a point: through `value_path` when the
/// device publishes JSON objects, else as plain text of the type.
pub fn decode_payload(
    kind: PointType,
    value_path: Option<&str>,
    payload: &[u8],
) -> Result<Value, String> {
    let text =
        std::str::from_utf8(payload).map_err(|_| "the payload is not UTF-8 text".to_string())?;
    if let Some(path) = value_path {
        let document: Value = serde_json::from_str(text)
            .map_err(|e| format!("the payload is not JSON ({e}) but the point has a value_path"))?;
        let found = document
            .pointer(path)
            .ok_or_else(|| format!("the payload has nothing at {path}"))?;
        return coerce(kind, found);
    }
    match kind {
        PointType::Text => Ok(Value::String(text.to_string())),
        PointType::Json => {
            serde_json::from_str(text).map_err(|e| format!("the payload is not JSON: {e}"))
        }
        PointType::Bool | PointType::Number => coerce(kind, &Value::String(text.to_string())),
    }
}

/// The payload a write of `value` publishes.
pub fn encode_payload(def: &PointConfig, value: &Value) -> Vec<u8> {
    match value {
        Value::Bool(true) => def.payload_on.clone().into_bytes(),
        Value::Bool(false) => def.payload_off.clone().into_bytes(),
        Value::String(s) if def.kind == PointType::Text => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// A UI param (what a field or toggle sends) as a value of the type.
pub fn parse_param(kind: PointType, param: &str) -> Result<Value, String> {
    match kind {
        PointType::Json => serde_json::from_str(param).map_err(|e| format!("not JSON: {e}")),
        _ => coerce(kind, &Value::String(param.to_string())),
    }
}

/// The value as a field or a toggle's param holds it.
pub fn param_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The value as a label shows it: numbers with their unit, bools as On/Off.
pub fn display_text(kind: PointType, value: &Value, unit: &str) -> String {
    match (kind, value) {
        (_, Value::Null) => "—".into(),
        (PointType::Bool, Value::Bool(true)) => "On".into(),
        (PointType::Bool, Value::Bool(false)) => "Off".into(),
        (PointType::Number, Value::Number(n)) if !unit.is_empty() => format!("{n} {unit}"),
        (_, Value::String(s)) => s.clone(),
        (_, other) => other.to_string(),
    }
}

/// A point as templates see it (`points["name"]`).
#[allow(clippy::too_many_arguments)]
pub fn template_entry(
    kind: PointType,
    unit: &str,
    writable: bool,
    value: &Value,
    quality: &str,
    changed: u64,
    seq: u64,
) -> Value {
    serde_json::json!({
        "value": value,
        "quality": quality,
        "changed": changed,
        "text": display_text(kind, value, unit),
        "param": param_text(value),
        "unit": unit,
        "type": kind,
        "writable": writable,
        "seq": seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_decode_by_type() {
        let cases: &[(PointType, Option<&str>, &str, Option<Value>)] = &[
            (PointType::Bool, None, "ON", Some(json!(true))),
            (PointType::Bool, None, "off", Some(json!(false))),
            (PointType::Bool, None, "1", Some(json!(true))),
            (PointType::Bool, None, "false", Some(json!(false))),
            (PointType::Bool, None, "maybe", None),
            (PointType::Number, None, "21.5", Some(json!(21.5))),
            (PointType::Number, None, " 42 ", Some(json!(42))),
            (PointType::Number, None, "NaN", None),
            (PointType::Number, None, "warm", None),
            (PointType::Text, None, "open", Some(json!("open"))),
            (PointType::Json, None, "{\"a\":1}", Some(json!({"a": 1}))),
            (PointType::Json, None, "{broken", None),
            (
                PointType::Bool,
                Some("/state"),
                "{\"state\":\"ON\"}",
                Some(json!(true)),
            ),
            (
                PointType::Number,
                Some("/temperature"),
                "{\"temperature\":19.5}",
                Some(json!(19.5)),
            ),
            (
                PointType::Number,
                Some("/temperature"),
                "{\"humidity\":40}",
                None,
            ),
            (PointType::Number, Some("/temperature"), "19.5", None),
            (PointType::Number, Some("/t"), "not json", None),
        ];
        for (kind, path, payload, expected) in cases {
            let decoded = decode_payload(*kind, *path, payload.as_bytes()).ok();
            assert_eq!(&decoded, expected, "{kind:?} {path:?} {payload}");
        }
        assert!(decode_payload(PointType::Text, None, &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn writes_encode_for_the_device() {
        let point: PointConfig =
            toml::from_str("name = \"a\"\ntype = \"bool\"\npayload_on = \"1\"").unwrap();
        assert_eq!(encode_payload(&point, &json!(true)), b"1");
        assert_eq!(encode_payload(&point, &json!(false)), b"OFF");
        let text: PointConfig = toml::from_str("name = \"a\"\ntype = \"text\"").unwrap();
        assert_eq!(encode_payload(&text, &json!("open")), b"open");
        assert_eq!(encode_payload(&text, &json!(21.5)), b"21.5");
    }

    #[test]
    fn display_and_params() {
        assert_eq!(
            display_text(PointType::Number, &json!(21.5), "°C"),
            "21.5 °C"
        );
        assert_eq!(display_text(PointType::Bool, &json!(true), ""), "On");
        assert_eq!(display_text(PointType::Text, &Value::Null, ""), "—");
        assert_eq!(param_text(&json!(false)), "false");
        assert_eq!(parse_param(PointType::Number, "22").unwrap(), json!(22));
        assert_eq!(parse_param(PointType::Bool, "true").unwrap(), json!(true));
        assert!(parse_param(PointType::Number, "hot").is_err());
    }
}
