//! Timers: `fn timer(name)` every `every_ms` for each `[[timers]]` entry of
//! a project, from its load until it is replaced or removed. The timer runs
//! through [`handlers`](super::handlers) as a callback of the project as a
//! whole: no session receives its answer.

use std::sync::{Arc, Weak};
use std::time::Duration;

use rhai::Dynamic;

use super::handlers;
use super::state::Runtime;
use crate::project::Project;

/// Starts the project's timers.
pub fn start_timers(runtime: Weak<Runtime>, project: &Arc<Project>) {
    if !project.scripts.defines("timer", 1) {
        return;
    }
    for timer in &project.settings.timers {
        let (runtime, project, name) =
            (runtime.clone(), Arc::downgrade(project), timer.name.clone());
        let every = Duration::from_millis(timer.every_ms.max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let (Some(runtime), Some(project)) = (runtime.upgrade(), project.upgrade()) else {
                    return;
                };
                if !runtime
                    .project(&project.name)
                    .is_some_and(|current| Arc::ptr_eq(&current, &project))
                {
                    return;
                }
                let args = vec![Dynamic::from(name.clone())];
                handlers::run_for_project(&project, "timer", args).await;
            }
        });
    }
}
