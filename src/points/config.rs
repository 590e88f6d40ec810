//! The `[[connections]]` and `[[points]]` of `project.toml`: their shapes,
//! and the checks `switchboard check` (and every load) runs on them. Each
//! problem names the entry it was found in, so the project loader can report
//! it at that entry's line. Nothing here connects to anything.

use std::collections::HashSet;

use serde::Deserialize;

/// A `[[connections]]` entry: one device network the project talks to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// What points name in `connection = "…"`.
    pub name: String,
    pub kind: ConnectionKind,
    /// `mqtt://host:port`, `mqtts://host:port`, or `tcp://host:port` for
    /// Modbus TCP.
    #[serde(default)]
    pub url: String,
    /// The environment variable holding the URL instead of `url`. When it is
    /// unset or empty the connection is off and its points behave as memory
    /// points (a development machine without the building's network).
    #[serde(default)]
    pub url_env: String,
    /// MQTT user name.
    #[serde(default)]
    pub username: String,
    /// The environment variable holding the MQTT password (never the
    /// password itself: project files end up in version control).
    #[serde(default)]
    pub password_env: String,
    /// MQTT client id; default `switchboard-<project>-<connection>`.
    #[serde(default)]
    pub client_id: String,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[serde(default = "default_protocol")]
    pub protocol: u8,
    /// MQTT quality of service for subscriptions and publishes: 0 or 1.
    #[serde(default)]
    pub qos: u8,
    /// MQTT keep-alive in seconds; a dead broker is noticed within about
    /// 1.5 times this.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// A PEM file of CA certificates for `mqtts://` (default: the system's).
    #[serde(default)]
    pub ca_file: String,
    /// MQTT topic filters delivered to `fn mqttMessage` (besides points).
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Modbus: how long one request may take before the connection is
    /// considered lost.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_protocol() -> u8 {
    4
}

fn default_keep_alive() -> u64 {
    10
}

fn default_timeout_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ConnectionKind {
    #[serde(rename = "mqtt")]
    Mqtt,
    #[serde(rename = "modbus-tcp")]
    ModbusTcp,
}

/// A `[[points]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: PointType,
    /// The connection; absent: a memory point.
    #[serde(default)]
    pub connection: Option<String>,
    /// Shown after numbers (`°C`).
    #[serde(default)]
    pub unit: String,
    /// Memory points: the value before anything sets it.
    #[serde(default)]
    pub initial: Option<toml::Value>,
    /// Whether pages and scripts may write it. Default: memory points and
    /// points with a `command` topic or a writable register are.
    #[serde(default)]
    pub writable: Option<bool>,
    /// MQTT: the topic whose payloads set the value.
    #[serde(default)]
    pub state: Option<String>,
    /// MQTT: the topic a write publishes to.
    #[serde(default)]
    pub command: Option<String>,
    /// MQTT: a JSON pointer into JSON payloads (`/state`, `/temperature`).
    #[serde(default)]
    pub value_path: Option<String>,
    /// MQTT: publish writes retained.
    #[serde(default)]
    pub retain: bool,
    /// MQTT: what a bool write publishes for true and false.
    #[serde(default = "default_on")]
    pub payload_on: String,
    #[serde(default = "default_off")]
    pub payload_off: String,
    /// Modbus: the device's unit id.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Modbus: `holding:40001`, `input:30001`, `coil:1`, `discrete:10001`.
    #[serde(default)]
    pub register: Option<String>,
    /// Modbus: how a register's bits read as a number.
    #[serde(default)]
    pub format: RegisterFormat,
    /// Modbus: value = raw × scale + offset.
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Modbus: how often it is read.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

impl PointConfig {
    /// The parsed `register`, when it has a valid one.
    pub fn parsed_register(&self) -> Option<Register> {
        self.register
            .as_deref()
            .and_then(|r| parse_register(r).ok())
    }
}

fn default_on() -> String {
    "ON".into()
}

fn default_off() -> String {
    "OFF".into()
}

fn default_unit_id() -> u8 {
    1
}

fn default_scale() -> f64 {
    1.0
}

fn default_poll_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PointType {
    Bool,
    Number,
    Text,
    Json,
}

/// How Modbus registers encode a number (big-endian words, the common
/// order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterFormat {
    #[default]
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl RegisterFormat {
    /// How many 16-bit registers one value takes.
    pub fn words(self) -> u16 {
        match self {
            RegisterFormat::U16 | RegisterFormat::I16 => 1,
            RegisterFormat::U32 | RegisterFormat::I32 | RegisterFormat::F32 => 2,
        }
    }
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegisterKind {
    Coil,
    Discrete,
    Input,
    Holding,
}

impl RegisterKind {
    /// Whether a value of this table is one bit.
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }

    pub fn is_writable(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Holding)
    }

    /// The leading digit of its 1-based Modicon references.
    fn prefix(self) -> u32 {
        match self {
            RegisterKind::Coil => 0,
            RegisterKind::Discrete => 1,
            RegisterKind::Input => 3,
            RegisterKind::Holding => 4,
        }
    }
}

/// A parsed `register = "…"`: the table and the 0-based address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register {
    pub kind: RegisterKind,
    pub address: u16,
}

/// Parses `holding:40001` (a 1-based Modicon reference with the table's
/// leading digit, 5 or 6 digits: `holding:400001` is the same register).
pub fn parse_register(text: &str) -> Result<Register, String> {
    let (kind, number) = text.split_once(':').ok_or_else(|| {
        format!(
            "register `{text}`: write `holding:40001`, `input:30001`, `coil:1` or `discrete:10001`"
        )
    })?;
    let kind = match kind {
        "coil" => RegisterKind::Coil,
        "discrete" => RegisterKind::Discrete,
        "input" => RegisterKind::Input,
        "holding" => RegisterKind::Holding,
        other => {
            return Err(format!(
                "register `{text}`: unknown table `{other}`; use holding, input, coil or discrete"
            ));
        }
    };
    let number: u32 = number
        .parse()
        .map_err(|_| format!("register `{text}`: `{number}` is not a register number"))?;
    let prefix = kind.prefix();
    let five = prefix * 10_000 + 1..=prefix * 10_000 + 9_999;
    let six = prefix * 100_000 + 1..=prefix * 100_000 + 65_536;
    let address = if five.contains(&number) {
        number - five.start()
    } else if six.contains(&number) {
        number - six.start()
    } else {
        return Err(format!(
            "register `{text}`: {} references run {}..={} (or {}..={})",
            match kind {
                RegisterKind::Coil => "coil",
                RegisterKind::Discrete => "discrete input",
                RegisterKind::Input => "input register",
                RegisterKind::Holding => "holding register",
            },
            five.start(),
            five.end(),
            six.start(),
            six.end()
        ));
    };
    Ok(Register {
        kind,
        address: u16::try_from(address)
            .map_err(|_| format!("register `{text}` is out of range"))?,
    })
}

/// Where a problem was found: a connection or a point, by position in its
/// list (the loader turns it into a line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Connection(usize),
    Point(usize),
}

/// Point names end up in `data-sb-point`, command names and store keys:
/// letters, digits and `. _ - /` only.
pub fn is_valid_point_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// Connection names: letters, digits, `-` and `_` (they appear in logs
/// and metrics labels).
fn is_valid_connection_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether a device could take a write of the point: an MQTT `command`
/// topic, a coil or a holding register.
pub fn device_writable(point: &PointConfig) -> bool {
    point.command.is_some()
        || point
            .parsed_register()
            .is_some_and(|r| r.kind.is_writable())
}

/// `points` as templates see it before the server runs (`switchboard
/// check`, the render check at load): memory points' initial values,
/// nothing known of device points.
pub fn declared_context(
    connections: &[ConnectionConfig],
    points: &[PointConfig],
) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for point in points {
        let memory = point
            .connection
            .as_ref()
            .is_none_or(|name| !connections.iter().any(|c| &c.name == name));
        let initial = point
            .initial
            .as_ref()
            .filter(|_| memory)
            .and_then(|v| super::value::coerce(point.kind, &toml_to_json(v)).ok());
        let writable = point.writable.unwrap_or(true) && (memory || device_writable(point));
        let quality = if initial.is_some() { "good" } else { "unknown" };
        let value = initial.unwrap_or(serde_json::Value::Null);
        map.insert(
            point.name.clone(),
            super::value::template_entry(point.kind, &point.unit, writable, &value, quality, 0, 0),
        );
    }
    serde_json::Value::Object(map)
}

/// Checks the connections and points together: names, references, topics,
/// registers. Returns every problem with the entry it belongs to.
pub fn validate(connections: &[ConnectionConfig], points: &[PointConfig]) -> Vec<(Entry, String)> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    for (index, connection) in connections.iter().enumerate() {
        let mut problem = |message: String| problems.push((Entry::Connection(index), message));
        if !is_valid_connection_name(&connection.name) {
            problem(format!(
                "connection name `{}`: use letters, digits, `-` and `_`",
                connection.name
            ));
        }
        if !names.insert(connection.name.as_str()) {
            problem(format!(
                "a connection named `{}` already exists",
                connection.name
            ));
        }
        for message in check_connection(connection) {
            problem(message);
        }
    }
    let mut point_names = HashSet::new();
    for (index, point) in points.iter().enumerate() {
        let mut problem = |message: String| problems.push((Entry::Point(index), message));
        if !is_valid_point_name(&point.name) {
            problem(format!(
                "point name `{}`: use letters, digits and `. _ - /`",
                point.name
            ));
        }
        if !point_names.insert(point.name.as_str()) {
            problem(format!("a point named `{}` already exists", point.name));
        }
        let connection = match &point.connection {
            None => None,
            Some(name) => match connections.iter().find(|c| &c.name == name) {
                Some(connection) => Some(connection),
                None => {
                    problem(format!(
                        "point `{}`: unknown connection `{name}`",
                        point.name
                    ));
                    continue;
                }
            },
        };
        for message in check_point(point, connection) {
            problem(format!("point `{}`: {message}", point.name));
        }
    }
    problems
}

fn check_connection(connection: &ConnectionConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let schemes: &[&str] = match connection.kind {
        ConnectionKind::Mqtt => &["mqtt", "mqtts"],
        ConnectionKind::ModbusTcp => &["tcp"],
    };
    match (connection.url.is_empty(), connection.url_env.is_empty()) {
        (true, true) => problems.push(format!(
            "connection `{}`: give `url` (or `url_env`)",
            connection.name
        )),
        (false, false) => problems.push(format!(
            "connection `{}`: give `url` or `url_env`, not both",
            connection.name
        )),
        (false, true) => {
            if let Err(message) = Endpoint::parse(&connection.url, schemes) {
                problems.push(format!("connection `{}`: {message}", connection.name));
            }
        }
        (true, false) => {}
    }
    if connection.kind == ConnectionKind::Mqtt {
        if connection.qos > 1 {
            problems.push(format!(
                "connection `{}`: qos must be 0 or 1",
                connection.name
            ));
        }
        if !matches!(connection.protocol, 4 | 5) {
            problems.push(format!(
                "connection `{}`: protocol must be 4 (MQTT 3.1.1) or 5",
                connection.name
            ));
        }
        for filter in &connection.subscribe {
            if !rumqttc::valid_filter(filter) {
                problems.push(format!(
                    "connection `{}`: `{filter}` is not a valid MQTT topic filter",
                    connection.name
                ));
            }
        }
    }
    problems
}

fn check_point(point: &PointConfig, connection: Option<&ConnectionConfig>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(initial) = &point.initial
        && super::value::coerce(point.kind, &toml_to_json(initial)).is_err()
    {
        problems.push(format!("`initial` is not a {:?} value", point.kind).to_lowercase());
    }
    let mqtt_keys = point.state.is_some() || point.command.is_some() || point.value_path.is_some();
    let modbus_keys = point.register.is_some();
    match connection.map(|c| c.kind) {
        None if mqtt_keys || modbus_keys => problems.push(
            "a memory point (no `connection`) takes no `state`, `command`, `value_path` or `register`".into(),
        ),
        None => {}
        Some(ConnectionKind::Mqtt) => {
            if modbus_keys {
                problems.push("`register` is for Modbus connections".into());
            }
            for (key, topic) in [("state", &point.state), ("command", &point.command)] {
                if let Some(topic) = topic
                    && (topic.is_empty() || !rumqttc::valid_topic(topic))
                {
                    problems.push(format!(
                        "`{key}` topic `{topic}` is not a valid MQTT topic (no `+` or `#`)"
                    ));
                }
            }
            if point.state.is_none() && point.command.is_none() {
                problems.push("an MQTT point needs a `state` or a `command` topic".into());
            }
            if let Some(path) = &point.value_path
                && !(path.is_empty() || path.starts_with('/'))
            {
                problems.push(format!(
                    "`value_path` `{path}` is not a JSON pointer (it starts with `/`)"
                ));
            }
        }
        Some(ConnectionKind::ModbusTcp) => {
            if mqtt_keys {
                problems.push("`state`, `command` and `value_path` are for MQTT connections".into());
            }
            match &point.register {
                None => problems.push("a Modbus point needs a `register`".into()),
                Some(text) => match parse_register(text) {
                    Err(message) => problems.push(message),
                    Ok(register) => {
                        if register.kind.is_bit() && point.kind != PointType::Bool {
                            problems.push("coils and discrete inputs are bool points".into());
                        }
                        if !register.kind.is_bit()
                            && !matches!(point.kind, PointType::Number | PointType::Bool)
                        {
                            problems.push("registers hold number (or bool) points".into());
                        }
                        if point.writable == Some(true) && !register.kind.is_writable() {
                            problems.push(
                                "input registers and discrete inputs cannot be written".into(),
                            );
                        }
                    }
                },
            }
            if point.poll_ms < 10 {
                problems.push("`poll_ms` must be at least 10".into());
            }
            if point.scale == 0.0 || !point.scale.is_finite() {
                problems.push("`scale` must be a non-zero number".into());
            }
        }
    }
    problems
}

/// A TOML value as JSON (dates become text).
pub fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => serde_json::Value::from(s.as_str()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::from(*b),
        toml::Value::Datetime(d) => serde_json::Value::from(d.to_string()),
        toml::Value::Array(items) => items.iter().map(toml_to_json).collect(),
        toml::Value::Table(table) => table
            .iter()
            .map(|(k, v)| (k.clone(), toml_to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

/// A parsed connection URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `scheme://host[:port]`; the port defaults by scheme (1883, 8883, 502).
    pub fn parse(url: &str, schemes: &[&str]) -> Result<Endpoint, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}` is not a URL like {}://host:port", schemes[0]))?;
        if !schemes.contains(&scheme) {
            return Err(format!(
                "`{url}`: the scheme must be {}",
                schemes.join(" or ")
            ));
        }
        if rest.contains('@') {
            return Err(format!(
                "`{url}`: put the user in `username` and the password in the variable `password_env` names, not in the URL"
            ));
        }
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("`{url}`: `{port}` is not a port"))?,
            ),
            _ => (
                rest,
                match scheme {
                    "mqtts" => 8883,
                    "tcp" => 502,
                    _ => 1883,
                },
            ),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("`{url}`: no host"));
        }
        Ok(Endpoint {
            scheme: scheme.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers() {
        let cases = [
            ("holding:40001", Ok((RegisterKind::Holding, 0))),
            ("holding:40010", Ok((RegisterKind::Holding, 9))),
            ("holding:400001", Ok((RegisterKind::Holding, 0))),
            ("holding:465536", Ok((RegisterKind::Holding, 65535))),
            ("input:30001", Ok((RegisterKind::Input, 0))),
            ("coil:1", Ok((RegisterKind::Coil, 0))),
            ("coil:65536", Ok((RegisterKind::Coil, 65535))),
            ("discrete:10001", Ok((RegisterKind::Discrete, 0))),
            ("holding:30001", Err(())),
            ("holding:0", Err(())),
            ("coil:0", Err(())),
            ("register:40001", Err(())),
            ("40001", Err(())),
            ("holding:x", Err(())),
        ];
        for (text, expected) in cases {
            let parsed = parse_register(text)
                .map(|r| (r.kind, r.address))
                .map_err(|_| ());
            assert_eq!(parsed, expected, "{text}");
        }
    }

    #[test]
    fn endpoints() {
        let mqtt = &["mqtt", "mqtts"];
        assert_eq!(
            Endpoint::parse("mqtt://127.0.0.1:1884", mqtt).unwrap(),
            Endpoint {
                scheme: "mqtt".into(),
                host: "127.0.0.1".into(),
                port: 1884
            }
        );
        assert_eq!(Endpoint::parse("mqtts://broker", mqtt).unwrap().port, 8883);
        assert_eq!(
            Endpoint::parse("mqtt://[::1]:1883", mqtt).unwrap().host,
            "::1"
        );
        assert_eq!(Endpoint::parse("tcp://plc", &["tcp"]).unwrap().port, 502);
        assert!(Endpoint::parse("http://x", mqtt).is_err());
        assert!(Endpoint::parse("mqtt://user:pw@x", mqtt).is_err());
        assert!(Endpoint::parse("mqtt://x:port", mqtt).is_err());
        assert!(Endpoint::parse("x:1883", mqtt).is_err());
    }

    fn point(name: &str) -> PointConfig {
        toml::from_str(&format!("name = \"{name}\"\ntype = \"bool\"")).unwrap()
    }

    #[test]
    fn references_and_topics_are_checked() {
        let connections: Vec<ConnectionConfig> = vec![
            toml::from_str("name = \"site\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1\"").unwrap(),
        ];
        let mut unknown = point("a");
        unknown.connection = Some("nowhere".into());
        let mut wildcard = point("b");
        wildcard.connection = Some("site".into());
        wildcard.state = Some("building/+/light".into());
        let mut good = point("c");
        good.connection = Some("site".into());
        good.state = Some("building/lobby/light".into());
        let mut register = point("d");
        register.register = Some("holding:40001".into());
        let problems = validate(
            &connections,
            &[unknown, wildcard, good, register, point("a")],
        );
        let at = |entry| {
            problems
                .iter()
                .filter(|(e, _)| *e == entry)
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
        };
        assert!(at(Entry::Point(0))[0].contains("unknown connection `nowhere`"));
        assert!(at(Entry::Point(1))[0].contains("not a valid MQTT topic"));
        assert!(at(Entry::Point(2)).is_empty());
        assert!(at(Entry::Point(3))[0].contains("memory point"));
        assert!(at(Entry::Point(4))[0].contains("already exists"));
    }
}
