//! Points entering the runtime (`crate::points` owns the table and the
//! drivers): the callbacks of the project as a whole that point changes and
//! MQTT messages cause (`pointChange`, `mqttMessage`), run in order through
//! [`handlers`](super::handlers); and writes from objects bound to a point,
//! the command `point:<name>`, which `commands` routes here after the ACL
//! and the exactly-once claim, so that the command log records them too.

use std::sync::{Arc, Weak};
use std::time::Duration;

use rhai::Dynamic;
use serde_json::{Value, json};

use super::handlers::{self, Call, Ran};
use super::state::Runtime;
use crate::answer::{Answer, Origin, Status};
use crate::points::{PointEvent, Points, Source, WriteError, parse_param, to_dynamic};
use crate::project::Project;
use crate::session::Session;

/// Command names of writes from bound objects: `point:<name>`.
pub const POINT_COMMAND: &str = "point:";

/// What a user sees when a write finds its device offline.
pub const OFFLINE_MESSAGE: &str = "The device is offline";

/// Starts the project's points, and runs the callbacks their events ask
/// for, one at a time in arrival order: once per change per project.
pub fn start(runtime: Weak<Runtime>, points: &Points, project: &Arc<Project>) {
    let Some(mut events) = points.start_project(project) else {
        return;
    };
    let project = Arc::downgrade(project);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let (Some(project), Some(runtime)) = (project.upgrade(), runtime.upgrade()) else {
                return;
            };
            if !runs_here(&runtime, &project, &event) {
                continue;
            }
            let (callback, args) = event.into_call();
            handlers::run_for_project(&project, callback, args).await;
        }
    });
}

/// Whether this node runs the callback of `event`. In a cluster every node
/// holds the device connections and sees every device change (so its own
/// panels get live values), but only the lease holder runs the callbacks
/// of device changes and MQTT messages: once per cluster. A memory point
/// changes by a write on one node (its table is that node's), so that node
/// runs its `pointChange`, once.
fn runs_here(runtime: &Runtime, project: &Project, event: &PointEvent) -> bool {
    let from_this_node = match event {
        PointEvent::Change { point, .. } => runtime
            .points
            .of(&project.name)
            .and_then(|points| points.def(point).map(|def| def.source == Source::Memory))
            .unwrap_or(false),
        PointEvent::Message { .. } => false,
    };
    from_this_node || runtime.acts_for_project(&project.name)
}

/// A write from a bound object: `pointWrite(session, userid, name, value)`
/// first when the project defines it — an answer with an `error` refuses
/// the write — then the write itself, handed to the point's connection
/// without waiting for the network. Its answer is the handler's (or an
/// empty one). The runtime refuses on its own, with an error and rollback
/// to the point's value, an unknown or read-only point, a value that does
/// not fit its type and an offline device. Runs on a script thread.
pub fn write_from_page(
    runtime: &Runtime,
    project: &Project,
    session: &Session,
    point: &str,
    command: Call,
) -> Ran {
    let points = runtime.points.of(&project.name);
    let object = command.object;
    let rollback_value = points.as_ref().and_then(|p| p.param_of(point));
    let refuse = |message: &str| {
        let origin = Origin {
            object: object.as_deref(),
            rollback_value: rollback_value.as_deref(),
        };
        let answer = Answer::Json(json!({ "error": message, "rollback": true }));
        ran(Some(handlers::decode_logging_warnings(
            &answer,
            &origin,
            "pointWrite",
        )))
    };
    let Some((points, def)) = points
        .as_ref()
        .and_then(|p| Some((p, p.def(point)?.clone())))
    else {
        return refuse("There is no such point.");
    };
    if !def.writable {
        return refuse("This value cannot be changed here.");
    }
    let Ok(value) = parse_param(def.kind(), &param_of(&command.args)) else {
        return refuse("That is not a valid value.");
    };
    let mut answered = ran(None);
    if project.scripts.defines("pointWrite", 4) {
        let call = Call {
            callback: "pointWrite",
            args: vec![
                Dynamic::from(session.id.clone()),
                Dynamic::from(session.userid.clone()),
                Dynamic::from(point.to_string()),
                to_dynamic(value.clone()),
            ],
            object: object.clone(),
            rollback_value: rollback_value.clone(),
            log_name: command.log_name,
        };
        answered = handlers::run_blocking(Some(runtime), project, Some(session), call);
        let refused = answered
            .decoded
            .as_ref()
            .is_some_and(|d| matches!(d.status, Status::Error | Status::Failed));
        if refused || answered.failure.is_some() {
            return answered;
        }
    }
    match points.write(point, &value, false) {
        Ok(()) => {
            let accepted = Answer::Json(Value::Object(Default::default()));
            answered
                .decoded
                .get_or_insert_with(|| crate::answer::decode(&accepted, &Origin::default()));
            answered
        }
        Err(WriteError::Offline) => refuse(OFFLINE_MESSAGE),
        Err(other) => refuse(&other.to_string()),
    }
}

/// The param of a `userCommand` call's arguments (its fourth).
fn param_of(args: &[Dynamic]) -> String {
    args.get(3)
        .and_then(|param| param.clone().into_string().ok())
        .unwrap_or_default()
}

fn ran(decoded: Option<crate::answer::Decoded>) -> Ran {
    Ran {
        callback: "pointWrite",
        decoded,
        failure: None,
        handler_time: Duration::ZERO,
        durable: None,
        answered_by: None,
    }
}
