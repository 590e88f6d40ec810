//! Events from outside any browser: a gateway posting a scanned badge, a
//! device bridge, another system's message, a script's `sendMessage`. The
//! caller names the project, a typed event and its target; the runtime
//! runs the event's callback once per target session (or once for the
//! project as a whole) through [`handlers`](super::handlers) and delivers
//! the answers to the sessions' browsers.
//!
//! This is the one seam for anything that is not a browser tab: a new
//! bridge builds an [`ExternalEvent`] and calls [`Runtime::external_event`].

use std::sync::Arc;

use rhai::Dynamic;
use serde_json::Value;

use super::events;
use super::handlers::{self, Call};
use super::state::Runtime;
use crate::project::Project;
use crate::protocol::{Device, Reply};
use crate::session::Session;

/// An event for a project, from outside any browser.
#[derive(Debug, Clone)]
pub struct ExternalEvent {
    pub kind: EventKind,
    pub target: EventTarget,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// Device data (`barcode`, `nfc`, `accelerometer`, `bluetooth`), shaped
    /// as the browser's device frames are.
    Device(Device),
    /// `message(session, handler, payload)`.
    Message { handler: String, payload: Value },
}

/// Who the event is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTarget {
    /// One session, by id.
    Session(String),
    /// Every session of one user.
    User(String),
    /// Every session of the project.
    AllSessions,
    /// The project as a whole: the callback runs once, with `""` as the
    /// session, and its answer reaches nobody.
    Project,
    /// No one: Perspective's `"C"` (Vision clients), which Switchboard has
    /// not. Accepted so that a script written for the seed runs.
    Nobody,
}

impl EventTarget {
    /// A message scope as scripts and `/api/message` write it:
    /// `session:<id>`, `user:<userid>`, `project` (every session) or `""`
    /// (the same), `once` (the project as a whole).
    pub fn from_scope(scope: &str) -> Result<EventTarget, String> {
        match scope.split_once(':') {
            Some(("session", id)) => Ok(EventTarget::Session(id.to_string())),
            Some(("user", user)) => Ok(EventTarget::User(user.to_string())),
            None if scope == "project" || scope.is_empty() => Ok(EventTarget::AllSessions),
            None if scope == "once" => Ok(EventTarget::Project),
            None if is_perspective_scope(scope) => Ok(perspective_target(scope)),
            _ => Err(format!(
                "unknown message scope `{scope}`; use session:<id>, user:<id>, project, once, or the letters S, G, C"
            )),
        }
    }
}

/// Perspective's `sendMessage` scope: any of the letters S, G and C, in any
/// letter case.
fn is_perspective_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .chars()
            .all(|c| matches!(c.to_ascii_uppercase(), 'S' | 'G' | 'C'))
}

/// S (sessions): every session; G (the gateway's handler): the project
/// once; C (Vision clients): nobody. With S, the sessions are the target
/// (one target per event: a combination's G part is not run again).
fn perspective_target(scope: &str) -> EventTarget {
    let has = |letter: char| scope.chars().any(|c| c.eq_ignore_ascii_case(&letter));
    if has('S') {
        EventTarget::AllSessions
    } else if has('G') {
        EventTarget::Project
    } else {
        EventTarget::Nobody
    }
}

/// What became of an event.
#[derive(Debug)]
pub enum EventOutcome {
    /// The event had one session as its target and ran: its answer (also
    /// delivered to the session's browsers).
    Answered(Reply),
    /// The callback was started for this many sessions (or for the project:
    /// 1) and runs in the background.
    Started(usize),
}

/// Why an event was not run.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The target session does not exist (or is another project's).
    #[error("no such session")]
    NoSession,
    /// The event's data is not shaped as its kind needs.
    #[error("{0}")]
    BadData(String),
}

impl Runtime {
    /// Runs an event from outside any browser. A device event for one
    /// session is run and answered here; anything else runs in the
    /// background, one callback per target session.
    pub async fn external_event(
        &self,
        project: &Arc<Project>,
        event: ExternalEvent,
    ) -> Result<EventOutcome, EventError> {
        let Some(runtime) = self.arc() else {
            return Ok(EventOutcome::Started(0));
        };
        if let (EventKind::Device(device), EventTarget::Session(id)) = (&event.kind, &event.target)
        {
            let session = self
                .sessions
                .get(id, &project.name)
                .ok_or(EventError::NoSession)?;
            let call =
                events::device_call(&session.id, device.clone()).map_err(EventError::BadData)?;
            let reply =
                events::reply_from_event(&runtime, project, &session, device.seq, call).await;
            handlers::deliver(&session, device.event.callback(), &reply.actions);
            return Ok(EventOutcome::Answered(reply));
        }
        self.start_event(project, event).map(EventOutcome::Started)
    }

    /// Starts an event's callbacks in the background, one per target
    /// session on this node (or one for the project); returns how many.
    /// Never waits, so a script may call it (`sendMessage`). Messages also
    /// reach the other nodes of a cluster: `fanout`'s `start_event`.
    pub(super) fn start_event_here(
        &self,
        project: &Arc<Project>,
        event: ExternalEvent,
    ) -> Result<usize, EventError> {
        let Some(runtime) = self.arc() else {
            return Ok(0);
        };
        // Checks the data once, and tells which callback it runs.
        let for_project = call_for(&event.kind, "")?;
        let targets = self.targets(project, &event.target)?;
        if !project
            .scripts
            .defines(for_project.callback, for_project.args.len())
        {
            return Ok(0);
        }
        let started = targets.as_ref().map_or(1, Vec::len);
        match targets {
            None => {
                let call = for_project;
                let project = project.clone();
                tokio::spawn(async move {
                    handlers::run_for_project(&project, call.callback, call.args).await
                });
            }
            Some(sessions) => {
                for session in sessions {
                    let call = call_for(&event.kind, &session.id)?;
                    let (runtime, project) = (runtime.clone(), project.clone());
                    tokio::spawn(async move {
                        events::fire_event(&runtime, &project, &session, call).await
                    });
                }
            }
        }
        Ok(started)
    }

    /// The target's sessions; `None` for the project as a whole.
    fn targets(
        &self,
        project: &Project,
        target: &EventTarget,
    ) -> Result<Option<Vec<Arc<Session>>>, EventError> {
        Ok(Some(match target {
            // A message to a session that has just ended goes nowhere.
            EventTarget::Session(id) => self.sessions.get(id, &project.name).into_iter().collect(),
            EventTarget::User(user) => self
                .sessions
                .of_project(&project.name)
                .into_iter()
                .filter(|s| &s.userid == user)
                .collect(),
            EventTarget::AllSessions => self.sessions.of_project(&project.name),
            EventTarget::Project => return Ok(None),
            EventTarget::Nobody => Vec::new(),
        })
        .map(|sessions| self.delivered(sessions)))
    }
}

/// The callback an event runs for one session (`""`: for the project).
fn call_for(kind: &EventKind, session: &str) -> Result<Call, EventError> {
    match kind {
        EventKind::Device(device) => {
            events::device_call(session, device.clone()).map_err(EventError::BadData)
        }
        EventKind::Message { handler, payload } => {
            let payload =
                rhai::serde::to_dynamic(payload).map_err(|e| EventError::BadData(e.to_string()))?;
            Ok(Call::new(
                "message",
                vec![
                    Dynamic::from(session.to_string()),
                    Dynamic::from(handler.clone()),
                    payload,
                ],
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perspective_scope_letters() {
        for (scope, target) in [
            ("S", EventTarget::AllSessions),
            ("s", EventTarget::AllSessions),
            ("SG", EventTarget::AllSessions),
            ("CGS", EventTarget::AllSessions),
            ("G", EventTarget::Project),
            ("GC", EventTarget::Project),
            ("C", EventTarget::Nobody),
        ] {
            assert_eq!(EventTarget::from_scope(scope), Ok(target), "{scope}");
        }
        for scope in ["X", "SX", "planet:mars"] {
            assert!(EventTarget::from_scope(scope).is_err(), "{scope}");
        }
    }
}
