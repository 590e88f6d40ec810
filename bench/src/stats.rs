//! Latency histograms and the records the suite writes: one JSON object per
//! measurement, one per line, read back by [`crate::report`].

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Map, Value};

/// A latency histogram in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(nanos.max(1));
}

fn micros(nanos: u64) -> f64 {
    (nanos as f64 / 1000.0 * 10.0).round() / 10.0
}

/// One measurement: `id` names the figure (`ws64`, `http64`, …), `server`
/// what was measured (`switchboard`, `baseline-ws`, …); the rest are
/// numbers and notes.
#[derive(Debug, Clone)]
pub struct Record(pub Map<String, Value>);

impl Record {
    pub fn new(id: &str, server: &str) -> Record {
        let mut map = Map::new();
        map.insert("id".into(), id.into());
        map.insert("server".into(), server.into());
        Record(map)
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Record {
        self.0.insert(key.into(), value.into());
        self
    }

    /// `p50_us`, `p99_us`, `p999_us`, `max_us` (with `prefix`) from a histogram.
    pub fn latencies(&mut self, prefix: &str, histogram: &Histogram<u64>) -> &mut Record {
        if histogram.is_empty() {
            return self;
        }
        for (name, quantile) in [("p50", 0.50), ("p99", 0.99), ("p999", 0.999)] {
            self.set(
                &format!("{prefix}{name}_us"),
                micros(histogram.value_at_quantile(quantile)),
            );
        }
        self.set(&format!("{prefix}max_us"), micros(histogram.max()));
        self
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.get(key).and_then(Value::as_f64)
    }

    pub fn text(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    pub fn id(&self) -> &str {
        self.text("id").unwrap_or_default()
    }

    pub fn server(&self) -> &str {
        self.text("server").unwrap_or_default()
    }

    pub fn to_line(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }

    pub fn from_line(line: &str) -> Option<Record> {
        match serde_json::from_str(line) {
            Ok(Value::Object(map)) => Some(Record(map)),
            _ => None,
        }
    }
}

/// Reads every record of a results file (missing file: none).
pub fn read_records(path: &std::path::Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().filter_map(Record::from_line).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_percentiles() {
        let mut h = histogram();
        for n in 1..=1000u64 {
            record(&mut h, Duration::from_micros(n));
        }
        let mut r = Record::new("ws64", "switchboard");
        r.set("throughput", 123.5).latencies("", &h);
        let back = Record::from_line(&r.to_line()).unwrap();
        assert_eq!(back.id(), "ws64");
        assert_eq!(back.get("throughput"), Some(123.5));
        let p99 = back.get("p99_us").unwrap();
        assert!((989.0..=991.0).contains(&p99), "{p99}");
    }
}
