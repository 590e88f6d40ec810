//! Counters for `/metrics` (Prometheus text format). Plain atomics: the
//! command path pays an increment or two, never a lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::answer::Status;

/// Upper bounds of the handler time histogram, in seconds.
const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    commands: [AtomicU64; 4],
    handler_buckets: [AtomicU64; BUCKETS.len()],
    handler_count: AtomicU64,
    handler_micros: AtomicU64,
    websockets: AtomicU64,
    pushes: AtomicU64,
    limit_stops_operations: AtomicU64,
    limit_stops_timeout: AtomicU64,
    store_commits: AtomicU64,
    store_batches: AtomicU64,
    store_commit_micros: AtomicU64,
    password_checks: AtomicU64,
}

pub static METRICS: Metrics = Metrics::new();

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn status_index(status: Status) -> usize {
    match status {
        Status::Ok => 0,
        Status::Error => 1,
        Status::Unhandled => 2,
        Status::Failed => 3,
    }
}

const STATUS_NAMES: [&str; 4] = ["ok", "error", "unhandled", "failed"];

impl Metrics {
    /// Every counter at zero.
    pub const fn new() -> Metrics {
        Metrics {
            commands: [const { AtomicU64::new(0) }; 4],
            handler_buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            handler_count: AtomicU64::new(0),
            handler_micros: AtomicU64::new(0),
            websockets: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            limit_stops_operations: AtomicU64::new(0),
            limit_stops_timeout: AtomicU64::new(0),
            store_commits: AtomicU64::new(0),
            store_batches: AtomicU64::new(0),
            store_commit_micros: AtomicU64::new(0),
            password_checks: AtomicU64::new(0),
        }
    }

    pub fn command(&self, status: Status, handler_time: Duration) {
        self.commands[status_index(status)].fetch_add(1, Relaxed);
        let seconds = handler_time.as_secs_f64();
        // Buckets are stored non-cumulative and summed when rendered.
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.handler_buckets[bucket].fetch_add(1, Relaxed);
        }
        self.handler_count.fetch_add(1, Relaxed);
        self.handler_micros.fetch_add(
            u64::try_from(handler_time.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    pub fn websocket_opened(&self) {
        self.websockets.fetch_add(1, Relaxed);
    }

    pub fn websocket_closed(&self) {
        self.websockets.fetch_sub(1, Relaxed);
    }

    pub fn push(&self) {
        self.pushes.fetch_add(1, Relaxed);
    }

    pub fn limit_stop(&self, timeout: bool) {
        let counter = if timeout {
            &self.limit_stops_timeout
        } else {
            &self.limit_stops_operations
        };
        counter.fetch_add(1, Relaxed);
    }

    /// One durable transaction of the store's writer, holding `batches`
    /// queued write sets (group commit), that took `took` from its start to
    /// the end of its `fdatasync`.
    pub fn group_commit(&self, batches: usize, took: Duration) {
        self.store_commits.fetch_add(1, Relaxed);
        self.store_batches
            .fetch_add(u64::try_from(batches).unwrap_or(u64::MAX), Relaxed);
        self.store_commit_micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A password was hashed and compared (a login or a challenge answer).
    pub fn password_check(&self) {
        self.password_checks.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition; `sessions` is read by the caller.
    pub fn render(&self, sessions: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP switchboard_commands_total Commands answered, by status.\n# TYPE switchboard_commands_total counter\n");
        for (name, counter) in STATUS_NAMES.iter().zip(&self.commands) {
            let _ = writeln!(
                out,
                "switchboard_commands_total{{status=\"{name}\"}} {}",
                counter.load(Relaxed)
            );
        }
        out.push_str("# HELP switchboard_handler_seconds Time spent in userCommand handlers.\n# TYPE switchboard_handler_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, counter) in BUCKETS.iter().zip(&self.handler_buckets) {
            cumulative += counter.load(Relaxed);
            let _ = writeln!(
                out,
                "switchboard_handler_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.handler_count.load(Relaxed);
        let _ = writeln!(
            out,
            "switchboard_handler_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "switchboard_handler_seconds_sum {}",
            self.handler_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "switchboard_handler_seconds_count {count}");
        let gauges = [
            ("switchboard_sessions", "Live sessions.", sessions as u64),
            (
                "switchboard_websocket_connections",
                "Open WebSocket connections.",
                self.websockets.load(Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_store_commits_total Durable database transactions (each one fdatasync).\n# TYPE switchboard_store_commits_total counter\nswitchboard_store_commits_total {}",
            self.store_commits.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_store_batches_total Write sets committed (several share a transaction).\n# TYPE switchboard_store_batches_total counter\nswitchboard_store_batches_total {}",
            self.store_batches.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_store_commit_seconds_total Time the store's writer spent in durable transactions (writing and fdatasync).\n# TYPE switchboard_store_commit_seconds_total counter\nswitchboard_store_commit_seconds_total {}",
            self.store_commit_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_password_checks_total Passwords hashed and compared (logins, challenge answers).\n# TYPE switchboard_password_checks_total counter\nswitchboard_password_checks_total {}",
            self.password_checks.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP switchboard_pushes_total Frames pushed to sessions.\n# TYPE switchboard_pushes_total counter\nswitchboard_pushes_total {}",
            self.pushes.load(Relaxed)
        );
        out.push_str("# HELP switchboard_script_limit_stops_total Handler runs stopped by a sandbox limit.\n# TYPE switchboard_script_limit_stops_total counter\n");
        let _ = writeln!(
            out,
            "switchboard_script_limit_stops_total{{limit=\"operations\"}} {}",
            self.limit_stops_operations.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "switchboard_script_limit_stops_total{{limit=\"time\"}} {}",
            self.limit_stops_timeout.load(Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let metrics = Metrics::new();
        metrics.command(Status::Ok, Duration::from_micros(300));
        metrics.command(Status::Failed, Duration::from_millis(30));
        metrics.limit_stop(true);
        metrics.password_check();
        let text = metrics.render(7);
        assert!(
            text.contains("switchboard_commands_total{status=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("switchboard_commands_total{status=\"failed\"} 1"));
        assert!(text.contains("switchboard_handler_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(
            text.contains("switchboard_handler_seconds_bucket{le=\"0.05\"} 2"),
            "cumulative: {text}"
        );
        assert!(text.contains("switchboard_handler_seconds_count 2"));
        assert!(text.contains("switchboard_sessions 7"));
        assert!(text.contains("switchboard_script_limit_stops_total{limit=\"time\"} 1"));
        assert!(text.contains("switchboard_password_checks_total 1"));
    }

    #[test]
    fn group_commits_count_batches_and_time() {
        let metrics = Metrics::new();
        metrics.group_commit(30, Duration::from_micros(2500));
        metrics.group_commit(2, Duration::from_micros(500));
        let text = metrics.render(0);
        assert!(text.contains("switchboard_store_commits_total 2"), "{text}");
        assert!(
            text.contains("switchboard_store_batches_total 32"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_store_commit_seconds_total 0.003\n"),
            "{text}"
        );
    }
}
