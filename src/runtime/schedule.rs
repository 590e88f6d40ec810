//! Timers: `fn timer(name)` for each `[[timers]]` entry of a project, every
//! `every_ms` or at the times a `cron` pattern matches in the project's
//! time zone, from the project's load until it is replaced or removed.
//!
//! A timer belongs to the project, not to a session: it runs once per due
//! time however many sessions there are, and no session receives its
//! answer. Missed times are not made up: after downtime, or when a run
//! overlaps the next due time, the schedule continues with the next time
//! still ahead (docs/scripting.md, `timer`). Each run goes through
//! [`handlers`](super::handlers) like every callback. Parsing and the zone
//! rules are in [`crate::time`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use jiff::{Timestamp, Zoned};
use rhai::Dynamic;
use tracing::warn;

use super::handlers;
use super::state::Runtime;
use crate::project::Project;

/// Longest single sleep while waiting for a calendar time: the wait is
/// re-measured against the wall clock after each, so a clock adjustment or
/// a suspended machine shifts a run by at most this much, and a replaced
/// project's timer task ends within it.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Shortest period; a smaller `every_ms` would busy the script threads.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// When a timer is due.
#[derive(Clone)]
enum Due {
    Every(Duration),
    Calendar(Box<croner::Cron>),
}

/// Starts the project's timers (none when no script defines `timer(name)`).
pub fn start_timers(runtime: Weak<Runtime>, project: &Arc<Project>) {
    if !project.scripts.defines("timer", 1) {
        return;
    }
    for timer in &project.settings.timers {
        let due = match (timer.every_ms, project.schedules.get(&timer.name)) {
            (Some(every_ms), _) => Due::Every(Duration::from_millis(every_ms).max(MIN_PERIOD)),
            (None, Some(cron)) => Due::Calendar(Box::new(cron.clone())),
            // Refused when the project loaded.
            (None, None) => continue,
        };
        let (runtime, project, name) =
            (runtime.clone(), Arc::downgrade(project), timer.name.clone());
        tokio::spawn(run_schedule(runtime, project, name, due));
    }
}

/// The project while it is still the one served under its name.
fn current(runtime: &Weak<Runtime>, project: &Weak<Project>) -> Option<Arc<Project>> {
    let (runtime, project) = (runtime.upgrade()?, project.upgrade()?);
    runtime
        .project(&project.name)
        .is_some_and(|served| Arc::ptr_eq(&served, &project))
        .then_some(project)
}

async fn run_schedule(runtime: Weak<Runtime>, project: Weak<Project>, name: String, due: Due) {
    match due {
        Due::Every(every) => {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            // A run longer than the period delays the next instead of
            // running the missed ones back to back.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(project) = current(&runtime, &project) else {
                    return;
                };
                run_timer_here(&runtime, &project, &name).await;
            }
        }
        Due::Calendar(cron) => {
            let Some(zone) = project.upgrade().map(|p| p.timezone.clone()) else {
                return;
            };
            let mut last = Timestamp::now();
            loop {
                // Strictly after the last due time: a wake-up a little
                // early can never run the same time twice.
                let after = last.max(Timestamp::now()).to_zoned(zone.clone());
                let next = match crate::time::next_run(&cron, &after) {
                    Ok(next) => next,
                    Err(error) => {
                        warn!(target: "switchboard::script", timer = name, "timer stopped: no next time: {error}");
                        return;
                    }
                };
                if !sleep_until(&next, &runtime, &project).await {
                    return;
                }
                last = next.timestamp();
                let Some(project) = current(&runtime, &project) else {
                    return;
                };
                run_timer_here(&runtime, &project, &name).await;
            }
        }
    }
}

/// Runs the timer if this node runs the project's once-per-cluster work:
/// every node keeps the schedule, only the lease holder runs it, so that a
/// takeover continues with the next due time.
async fn run_timer_here(runtime: &Weak<Runtime>, project: &Arc<Project>, name: &str) {
    if runtime
        .upgrade()
        .is_some_and(|runtime| runtime.acts_for_project(&project.name))
    {
        run_timer(project, name).await;
    }
}

/// Waits for the wall clock to reach `when`; `false` when the project was
/// replaced or removed meanwhile.
async fn sleep_until(when: &Zoned, runtime: &Weak<Runtime>, project: &Weak<Project>) -> bool {
    loop {
        let left = Timestamp::now().duration_until(when.timestamp());
        let Ok(left) = Duration::try_from(left) else {
            return true;
        };
        if left.is_zero() {
            return true;
        }
        tokio::time::sleep(left.min(MAX_SLEEP)).await;
        if current(runtime, project).is_none() {
            return false;
        }
    }
}

/// Runs `timer(name)` through [`handlers`] as a callback of the project as
/// a whole.
async fn run_timer(project: &Arc<Project>, name: &str) {
    let args = vec![Dynamic::from(name.to_string())];
    handlers::run_for_project(project, "timer", args).await;
}

#[cfg(test)]
mod tests {
    use crate::time::{next_run, parse_cron, zone};

    #[test]
    fn calendar_times_follow_the_project_zone_and_its_clock_changes() {
        let rome = zone("Europe/Rome").unwrap();
        // (pattern, after (UTC), the next run in Rome's local time)
        let cases = [
            (
                "0 30 23 * * *",
                "2026-01-10T12:00:00Z",
                "2026-01-10T23:30:00+01:00[Europe/Rome]",
            ),
            (
                "0 30 23 * * *",
                "2026-07-10T22:00:00Z",
                "2026-07-11T23:30:00+02:00[Europe/Rome]",
            ),
            // 02:30 does not exist on the day clocks go forward: the run is
            // at the first time after the gap, like Vixie cron.
            (
                "30 2 * * *",
                "2026-03-28T12:00:00Z",
                "2026-03-29T03:00:00+02:00[Europe/Rome]",
            ),
            (
                "@daily",
                "2026-10-24T23:00:00Z",
                "2026-10-26T00:00:00+01:00[Europe/Rome]",
            ),
        ];
        for (pattern, after, expected) in cases {
            let cron = parse_cron(pattern).unwrap();
            let after = after
                .parse::<jiff::Timestamp>()
                .unwrap()
                .to_zoned(rome.clone());
            assert_eq!(
                next_run(&cron, &after).unwrap().to_string(),
                expected,
                "{pattern}"
            );
        }
        assert!(parse_cron("61 * * * *").is_err());
    }
}
