//! The Modbus TCP driver: one task per connection, polling its points with
//! tokio-modbus. Points of one unit, table and interval are read together,
//! adjacent registers in one request; every request has a timeout, and a
//! failed one drops the connection (points go `stale`) and reconnects with
//! backoff. Writes go to coils and holding registers, and the written
//! register is read back at once.
//!
//! It knows nothing of sessions, pages or scripts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};
use tracing::{info, warn};

use super::config::{ConnectionConfig, Endpoint, Register, RegisterFormat, RegisterKind};
use super::{DriverLink, Outgoing, PointDef, PointType, Update};

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Registers between two points that are still read in one request
/// (reading a few unused registers beats a second round trip).
const MAX_GAP: u16 = 8;

/// The protocol's limits for one read request.
const MAX_REGISTERS: u16 = 125;
const MAX_BITS: u16 = 2000;

/// Starts the driver task.
pub fn spawn(
    config: ConnectionConfig,
    url: String,
    points: Vec<Arc<PointDef>>,
    link: DriverLink,
    writes: mpsc::Receiver<Outgoing>,
) {
    tokio::spawn(async move {
        let address = match resolve(&url).await {
            Ok(address) => address,
            Err(message) => {
                warn!(project = %link.project, connection = %config.name, "connection not started: {message}");
                link.status.set_error(&message);
                return;
            }
        };
        let groups = plan(&points);
        Driver {
            request_timeout: Duration::from_millis(config.timeout_ms.max(10)),
            config,
            address,
            groups,
            link,
            context: None,
        }
        .run(writes)
        .await;
    });
}

async fn resolve(url: &str) -> Result<SocketAddr, String> {
    let endpoint = Endpoint::parse(url, &["tcp"])?;
    tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))
}

/// Points read together: one unit, one table, one interval.
struct Group {
    unit: u8,
    kind: RegisterKind,
    every: Duration,
    due: Instant,
    ranges: Vec<Range>,
}

/// One read request and the points in it.
struct Range {
    start: u16,
    count: u16,
    points: Vec<(Arc<PointDef>, Register)>,
}

/// Points of one unit, table and interval, with their parsed registers.
type Grouped = BTreeMap<(u8, RegisterKind, u64), Vec<(Arc<PointDef>, Register)>>;

/// Groups the points and packs adjacent addresses into ranges.
fn plan(points: &[Arc<PointDef>]) -> Vec<Group> {
    let mut by_key: Grouped = BTreeMap::new();
    for point in points {
        let Some(register) = point.config.parsed_register() else {
            continue;
        };
        by_key
            .entry((point.config.unit_id, register.kind, point.config.poll_ms))
            .or_default()
            .push((point.clone(), register));
    }
    let now = Instant::now();
    by_key
        .into_iter()
        .map(|((unit, kind, every), mut points)| {
            points.sort_by_key(|(_, register)| register.address);
            Group {
                unit,
                kind,
                every: Duration::from_millis(every),
                due: now,
                ranges: pack(kind, points),
            }
        })
        .collect()
}

fn width(point: &PointDef, kind: RegisterKind) -> u16 {
    if kind.is_bit() {
        1
    } else {
        point.config.format.words()
    }
}

fn pack(kind: RegisterKind, points: Vec<(Arc<PointDef>, Register)>) -> Vec<Range> {
    let limit = if kind.is_bit() {
        MAX_BITS
    } else {
        MAX_REGISTERS
    };
    let mut ranges: Vec<Range> = Vec::new();
    for (point, register) in points {
        let end = register.address.saturating_add(width(&point, kind));
        if let Some(range) = ranges.last_mut() {
            let range_end = range.start + range.count;
            if register.address <= range_end.saturating_add(MAX_GAP) && end - range.start <= limit {
                range.count = range.count.max(end - range.start);
                range.points.push((point, register));
                continue;
            }
        }
        ranges.push(Range {
            start: register.address,
            count: end - register.address,
            points: vec![(point, register)],
        });
    }
    ranges
}

/// A failed request: the connection is unusable, or the device refused.
enum Failure {
    Lost(String),
    Refused(ExceptionCode),
}

struct Driver {
    config: ConnectionConfig,
    address: SocketAddr,
    groups: Vec<Group>,
    link: DriverLink,
    context: Option<Context>,
    request_timeout: Duration,
}

impl Driver {
    async fn run(mut self, mut writes: mpsc::Receiver<Outgoing>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self.context.is_none() {
                match self.connect().await {
                    Ok(()) => backoff = FIRST_BACKOFF,
                    Err(message) => {
                        self.lost(&message);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.link.stopped() => return,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let next = self
                .groups
                .iter()
                .map(|g| g.due)
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep_until(next) => self.poll_due().await,
                write = writes.recv() => match write {
                    Some(Outgoing::Point { point, value }) => self.write(&point, &value).await,
                    Some(Outgoing::Publish { .. }) => {}
                    None => return,
                },
                _ = self.link.stopped() => return,
            }
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        let stream = timeout(
            self.request_timeout,
            tokio::net::TcpStream::connect(self.address),
        )
        .await
        .map_err(|_| {
            format!(
                "no answer from {} within {:?}",
                self.address, self.request_timeout
            )
        })?
        .map_err(|e| format!("{}: {e}", self.address))?;
        self.context = Some(tokio_modbus::client::tcp::attach(stream));
        self.link.status.clear_error();
        if self.link.status.set_connected(true) {
            info!(project = %self.link.project, connection = %self.config.name, "connected to the Modbus device");
        }
        let now = Instant::now();
        for group in &mut self.groups {
            group.due = now;
        }
        Ok(())
    }

    /// Drops the connection: points go stale, the log says it once.
    fn lost(&mut self, message: &str) {
        self.context = None;
        let was_connected = self.link.status.set_connected(false);
        let new_error = self.link.status.set_error(message);
        if was_connected {
            warn!(project = %self.link.project, connection = %self.config.name, "lost the Modbus device, retrying: {message}");
            self.link.send(Update::Offline {
                connection: self.config.name.clone(),
            });
        } else if new_error {
            warn!(project = %self.link.project, connection = %self.config.name, "cannot connect to the Modbus device, retrying: {message}");
        }
    }

    async fn poll_due(&mut self) {
        let now = Instant::now();
        for index in 0..self.groups.len() {
            if self.groups[index].due > now {
                continue;
            }
            let group = &mut self.groups[index];
            group.due = now + group.every;
            let (unit, kind) = (group.unit, group.kind);
            for range in 0..self.groups[index].ranges.len() {
                let (start, count) = {
                    let range = &self.groups[index].ranges[range];
                    (range.start, range.count)
                };
                match self.read(unit, kind, start, count).await {
                    Ok(words) => {
                        self.link.status.count_in();
                        for (point, register) in &self.groups[index].ranges[range].points {
                            let at = usize::from(register.address - start);
                            self.link.send(decode(point, kind, &words, at));
                        }
                    }
                    Err(Failure::Refused(code)) => {
                        for (point, _) in &self.groups[index].ranges[range].points {
                            self.link.send(Update::Unusable {
                                point: point.name().to_string(),
                                reason: format!("the device refused the read: {code:?}"),
                            });
                        }
                    }
                    Err(Failure::Lost(message)) => {
                        self.lost(&message);
                        return;
                    }
                }
            }
        }
    }

    /// Reads a range; bits come back as 0/1 words.
    async fn read(
        &mut self,
        unit: u8,
        kind: RegisterKind,
        start: u16,
        count: u16,
    ) -> Result<Vec<u16>, Failure> {
        let request_timeout = self.request_timeout;
        let context = self
            .context
            .as_mut()
            .ok_or_else(|| Failure::Lost("not connected".into()))?;
        context.set_slave(Slave(unit));
        let bits = |r: Vec<bool>| r.into_iter().map(u16::from).collect::<Vec<_>>();
        let result = timeout(request_timeout, async {
            match kind {
                RegisterKind::Coil => context.read_coils(start, count).await.map(|r| r.map(bits)),
                RegisterKind::Discrete => context
                    .read_discrete_inputs(start, count)
                    .await
                    .map(|r| r.map(bits)),
                RegisterKind::Input => context.read_input_registers(start, count).await,
                RegisterKind::Holding => context.read_holding_registers(start, count).await,
            }
        })
        .await;
        match result {
            Err(_) => Err(Failure::Lost(format!(
                "no answer within {request_timeout:?}"
            ))),
            Ok(Err(error)) => Err(Failure::Lost(error.to_string())),
            Ok(Ok(Err(code))) => Err(Failure::Refused(code)),
            Ok(Ok(Ok(words))) if words.len() >= usize::from(count) => Ok(words),
            Ok(Ok(Ok(_))) => Err(Failure::Lost("short answer".into())),
        }
    }

    async fn write(&mut self, point: &Arc<PointDef>, value: &Value) {
        let Some(register) = point.config.parsed_register() else {
            return;
        };
        let request_timeout = self.request_timeout;
        let Some(context) = self.context.as_mut() else {
            return;
        };
        context.set_slave(Slave(point.config.unit_id));
        let words = encode(point, value);
        let result = timeout(request_timeout, async {
            match (register.kind, words.as_slice()) {
                (RegisterKind::Coil, _) => {
                    context
                        .write_single_coil(register.address, value == &Value::Bool(true))
                        .await
                }
                (RegisterKind::Holding, [word]) => {
                    context.write_single_register(register.address, *word).await
                }
                (RegisterKind::Holding, words) => {
                    context
                        .write_multiple_registers(register.address, words)
                        .await
                }
                _ => Ok(Ok(())),
            }
        })
        .await;
        match result {
            Ok(Ok(Ok(()))) => {
                self.link.status.count_out();
                // Read it back soon: the device has the last word.
                for group in &mut self.groups {
                    if group.unit == point.config.unit_id && group.kind == register.kind {
                        group.due = Instant::now();
                    }
                }
            }
            Ok(Ok(Err(code))) => {
                warn!(project = %self.link.project, connection = %self.config.name, point = point.name(), "the device refused the write: {code:?}");
            }
            Ok(Err(error)) => self.lost(&error.to_string()),
            Err(_) => self.lost(&format!("no answer within {request_timeout:?}")),
        }
    }
}

/// The point's value from the words read (`at`: its first word).
fn decode(point: &PointDef, kind: RegisterKind, words: &[u16], at: usize) -> Update {
    let name = point.name().to_string();
    if kind.is_bit() {
        return Update::Value {
            point: name,
            value: Value::Bool(words[at] != 0),
        };
    }
    let high = u32::from(words[at]);
    let low = || u32::from(words.get(at + 1).copied().unwrap_or(0));
    let raw = match point.config.format {
        RegisterFormat::U16 => f64::from(words[at]),
        RegisterFormat::I16 => f64::from(words[at] as i16),
        RegisterFormat::U32 => f64::from((high << 16) | low()),
        RegisterFormat::I32 => f64::from(((high << 16) | low()) as i32),
        RegisterFormat::F32 => f64::from(f32::from_bits((high << 16) | low())),
    };
    if point.kind() == PointType::Bool {
        return Update::Value {
            point: name,
            value: Value::Bool(raw != 0.0),
        };
    }
    let scaled = raw * point.config.scale + point.config.offset;
    match number_value(scaled) {
        Some(value) => Update::Value { point: name, value },
        None => Update::Unusable {
            point: name,
            reason: format!("{scaled} is not a number"),
        },
    }
}

/// A number as JSON: whole numbers as integers, others rounded to 6
/// decimals (a scale of 0.1 would otherwise show 21.500000000000004).
fn number_value(value: f64) -> Option<Value> {
    if !value.is_finite() {
        return None;
    }
    let rounded = (value * 1e6).round() / 1e6;
    if rounded.fract() == 0.0 && rounded.abs() < 9e15 {
        return Some(Value::from(rounded as i64));
    }
    serde_json::Number::from_f64(rounded).map(Value::Number)
}

/// The words a write of `value` puts in the register(s).
fn encode(point: &PointDef, value: &Value) -> Vec<u16> {
    let number = match value {
        Value::Bool(b) => f64::from(u8::from(*b)),
        other => other.as_f64().unwrap_or(0.0),
    };
    let raw = if point.kind() == PointType::Bool {
        number
    } else {
        ((number - point.config.offset) / point.config.scale).round()
    };
    match point.config.format {
        RegisterFormat::U16 => vec![raw.clamp(0.0, f64::from(u16::MAX)) as u16],
        RegisterFormat::I16 => {
            vec![raw.clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16 as u16]
        }
        RegisterFormat::U32 => split(raw.clamp(0.0, f64::from(u32::MAX)) as u32),
        RegisterFormat::I32 => {
            split(raw.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32 as u32)
        }
        RegisterFormat::F32 => split((number as f32).to_bits()),
    }
}

fn split(value: u32) -> Vec<u16> {
    vec![(value >> 16) as u16, value as u16]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::points::Source;

    fn point(name: &str, register: &str, extra: &str) -> Arc<PointDef> {
        let config = toml::from_str(&format!(
            "name = \"{name}\"\ntype = \"number\"\nconnection = \"plc\"\nregister = \"{register}\"\n{extra}"
        ))
        .unwrap();
        Arc::new(PointDef {
            config,
            source: Source::Device(0),
            writable: true,
        })
    }

    #[test]
    fn adjacent_registers_are_read_together() {
        let points = vec![
            point("a", "holding:40001", ""),
            point("b", "holding:40002", "format = \"u32\""),
            point("c", "holding:40005", ""),
            point("d", "holding:40100", ""),
            point("e", "input:30001", ""),
            point("f", "holding:40003", "poll_ms = 5000"),
        ];
        let groups = plan(&points);
        let holding = groups
            .iter()
            .find(|g| g.kind == RegisterKind::Holding && g.every == Duration::from_secs(1))
            .unwrap();
        let spans: Vec<(u16, u16)> = holding.ranges.iter().map(|r| (r.start, r.count)).collect();
        assert_eq!(
            spans,
            [(0, 5), (99, 1)],
            "a, b (2 words) and c in one read; d apart"
        );
        assert_eq!(
            groups.len(),
            3,
            "input registers and another interval are their own groups"
        );
    }

    #[test]
    fn values_scale_both_ways() {
        let temp = point("t", "holding:40001", "scale = 0.1\nformat = \"i16\"");
        assert_eq!(
            decode(&temp, RegisterKind::Holding, &[215], 0),
            Update::Value {
                point: "t".into(),
                value: serde_json::json!(21.5)
            }
        );
        assert_eq!(
            decode(&temp, RegisterKind::Holding, &[(-50i16) as u16], 0),
            Update::Value {
                point: "t".into(),
                value: serde_json::json!(-5)
            }
        );
        assert_eq!(encode(&temp, &serde_json::json!(22.5)), [225]);
        let energy = point("e", "holding:40001", "format = \"u32\"");
        assert_eq!(
            decode(&energy, RegisterKind::Holding, &[1, 2], 0),
            Update::Value {
                point: "e".into(),
                value: serde_json::json!(65538)
            }
        );
        assert_eq!(encode(&energy, &serde_json::json!(65538)), [1, 2]);
    }
}
