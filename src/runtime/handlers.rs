//! The one path every Rhai callback takes: run it off the async threads
//! under the project's limits, decode its answer through the Command API
//! decoder (logging what was ignored), file the authentication challenges
//! it asks for, report a failure (`[FAILED]` in the log, limit stops to
//! `sessionTerminating`, too many of them end the session) and hand the
//! actions back as a reply or deliver them to the session's browsers.
//!
//! Which callback runs when is decided by the callers (`commands`,
//! `events`, `forms`, `challenge`, `external`); what the answer means is
//! `answer`'s business. A handler's persistent effects are committed by
//! `delivery`, around this path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::Dynamic;
use tracing::{error, info, warn};

use super::state::{Runtime, ShutdownReason};
use crate::answer::{self, Action, Answer, Decoded, Display, Origin, Status};
use crate::metrics::METRICS;
use crate::project::Project;
use crate::protocol::{Push, Reply};
use crate::script::{self, ScriptError, ScriptErrorKind};
use crate::session::Session;
use crate::store::Commit;

/// The message a user sees when a handler failed; the details go to the log
/// only, since they may describe the server's internals.
pub const FAILED_MESSAGE: &str = "Sorry, that did not work. Please try again.";

/// One callback to run.
pub struct Call {
    pub callback: &'static str,
    pub args: Vec<Dynamic>,
    /// What the answer refers to: the object that sent a command and its
    /// last valid value, for `rollback` and actions aimed at "the object".
    pub object: Option<String>,
    pub rollback_value: Option<String>,
    /// The name the answer's warnings are logged under (a command's name;
    /// the callback's by default).
    pub log_name: Option<String>,
}

impl Call {
    pub fn new(callback: &'static str, args: Vec<Dynamic>) -> Call {
        Call {
            callback,
            args,
            object: None,
            rollback_value: None,
            log_name: None,
        }
    }
}

/// What a callback did.
pub struct Ran {
    pub callback: &'static str,
    /// The decoded answer; `None` when no script defines the callback or
    /// every one returned `()`.
    pub decoded: Option<Decoded>,
    /// Why the run failed (then `decoded` is the failure the user sees).
    pub failure: Option<ScriptError>,
    pub handler_time: Duration,
    /// The script whose answer was decoded (`events/10-main.rhai`), for
    /// dev mode's notices.
    pub answered_by: Option<String>,
    /// The store batch with the run's effects and record, when the reply
    /// must wait for it to be durable (see `delivery`).
    pub durable: Option<Commit>,
}

impl Ran {
    /// The answer as the user gets it: `unhandled` when nobody answered.
    pub fn into_decoded(self) -> Decoded {
        self.decoded.unwrap_or_else(unhandled)
    }

    /// Waits until the run's effects and record are durable, when the
    /// reply must (a reply is never sent before that); `false` when they
    /// could not be stored. A store failure is logged: the effects may be
    /// lost, and a repeat would run again (one node), or is answered
    /// "outcome unknown" (cluster mode).
    pub async fn wait_durable(&mut self) -> bool {
        if let Some(commit) = self.durable.take()
            && let Err(error) = commit.durable().await
        {
            error!("could not commit a handler's changes: {error}");
            return false;
        }
        true
    }
}

/// Runs a callback on this thread — a script thread, never an async
/// worker: the handler may run up to its wall-clock limit. With a runtime
/// and a session, the answer's challenges are filed for that session.
pub fn run_blocking(
    runtime: Option<&Runtime>,
    project: &Project,
    session: Option<&Session>,
    call: Call,
) -> Ran {
    let Call {
        callback,
        args,
        object,
        rollback_value,
        log_name,
    } = call;
    // Dev mode names the call in its notices; described before the
    // arguments move into the script.
    let dev_call = runtime
        .filter(|runtime| runtime.dev_mode() && session.is_some())
        .map(|_| super::dev::describe_call(callback, &args));
    let started = Instant::now();
    let result = project.scripts.call_first_from(callback, args);
    let handler_time = started.elapsed();
    let mut answered_by = None;
    let (decoded, failure) = match result {
        Ok(Some((answer, script))) => {
            answered_by = Some(script.to_string());
            let origin = Origin {
                object: object.as_deref(),
                rollback_value: rollback_value.as_deref(),
            };
            let name = log_name.as_deref().unwrap_or(callback);
            let decoded = decode_logging_warnings(&Answer::from_dynamic(answer), &origin, name);
            (Some(decoded), None)
        }
        Ok(None) => (None, None),
        Err(error) => (Some(failed(object.as_deref())), Some(error)),
    };
    let mut ran = Ran {
        callback,
        decoded,
        failure,
        handler_time,
        answered_by,
        durable: None,
    };
    if let (Some(runtime), Some(session), Some(decoded)) = (runtime, session, &mut ran.decoded) {
        runtime.file_challenges(project, session, &mut decoded.actions);
        if let Some(call) = &dev_call {
            let answered_by = ran.answered_by.as_deref();
            super::dev::notice_answer(runtime, project, session, call, answered_by, decoded);
        }
    }
    ran
}

/// Runs a callback on a script thread and waits for it. A callback no
/// script defines costs no thread crossing.
pub async fn run(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: Option<&Arc<Session>>,
    call: Call,
) -> Ran {
    let callback = call.callback;
    if !project.scripts.defines(callback, call.args.len()) {
        return Ran {
            callback,
            decoded: None,
            failure: None,
            handler_time: Duration::ZERO,
            answered_by: None,
            durable: None,
        };
    }
    let object = call.object.clone();
    let (job_runtime, job_project, job_session) =
        (runtime.clone(), project.clone(), session.cloned());
    let job = move || {
        run_blocking(
            Some(&job_runtime),
            &job_project,
            job_session.as_deref(),
            call,
        )
    };
    off_async(callback, object.as_deref(), job).await
}

/// Runs `job` (which runs a callback) on a script thread; a job that ends
/// abnormally (a panic in a host function) is a failed run.
pub async fn off_async(
    callback: &'static str,
    object: Option<&str>,
    job: impl FnOnce() -> Ran + Send + 'static,
) -> Ran {
    match script::run_off_async(job).await {
        Ok(ran) => ran,
        Err(join_error) => Ran {
            callback,
            decoded: Some(failed(object)),
            failure: Some(abnormal_end(callback, &join_error)),
            handler_time: Duration::ZERO,
            answered_by: None,
            durable: None,
        },
    }
}

/// Runs a callback whose answer is not a Command API answer (a download)
/// on a script thread, and hands the answer back as it is.
pub async fn run_raw(project: &Arc<Project>, call: Call) -> Result<Option<Dynamic>, ScriptError> {
    let (callback, job_project) = (call.callback, project.clone());
    script::run_off_async(move || job_project.scripts.call_first(callback, call.args))
        .await
        .unwrap_or_else(|join_error| Err(abnormal_end(callback, &join_error)))
}

/// Decodes an answer, logging what the decoder ignored.
pub fn decode_logging_warnings(answer: &Answer, origin: &Origin, name: &str) -> Decoded {
    let decoded = answer::decode(answer, origin);
    if decoded.quiet {
        // A `!` answer keeps its content out of the log, warnings included.
        if !decoded.warnings.is_empty() {
            warn!(target: "switchboard::answer", name, "ignored {} part(s) of a quiet answer", decoded.warnings.len());
        }
        return decoded;
    }
    for warning in &decoded.warnings {
        warn!(target: "switchboard::answer", name, "ignored part of the answer: {warning}");
    }
    decoded
}

/// The answer when nobody answered.
pub fn unhandled() -> Decoded {
    Decoded {
        status: Status::Unhandled,
        actions: Vec::new(),
        quiet: false,
        warnings: Vec::new(),
    }
}

/// The answer to a run that failed.
pub fn failed(object: Option<&str>) -> Decoded {
    Decoded {
        status: Status::Failed,
        actions: vec![Action::Error {
            message: Some(FAILED_MESSAGE.into()),
            display: Display::Toast,
            object: object.map(String::from),
        }],
        quiet: false,
        warnings: Vec::new(),
    }
}

pub fn abnormal_end(callback: &str, error: &dyn std::fmt::Display) -> ScriptError {
    ScriptError {
        kind: script::ScriptErrorKind::Runtime,
        script: "?".into(),
        callback: callback.into(),
        line: 0,
        column: 0,
        message: format!("handler task ended abnormally: {error}"),
    }
}

/// The reply to a frame.
pub fn reply(seq: Option<u64>, decoded: Decoded) -> Reply {
    Reply {
        seq,
        status: decoded.status,
        actions: decoded.actions,
    }
}

/// Pushes actions to the session's browsers, outside any reply.
pub fn deliver(session: &Session, event: &str, actions: &[Action]) {
    if !actions.is_empty() {
        session.push(&Push::Actions { event, actions }.to_frame());
    }
}

/// What a failed run of a session's handler leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Logged, and a limit stop is reported to `sessionTerminating` and
    /// counted towards ending the session.
    Count,
    /// Only logged: for the callbacks that report trouble themselves
    /// (`sessionTerminating`, `sessionShutdown`), so a broken one cannot loop.
    LogOnly,
}

/// Reports a session's failed run as [`OnFailure`] says.
pub async fn report(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    ran: &Ran,
    on_failure: OnFailure,
) {
    match (&ran.failure, on_failure) {
        (Some(error), OnFailure::Count) => failed_run(runtime, project, session, error).await,
        (Some(error), OnFailure::LogOnly) => {
            warn!(target: "switchboard::script", session = session.log_id(), "{} failed: {error}", ran.callback)
        }
        (None, _) => {}
    }
}

/// Logs a failed handler run of a session. A run stopped by a limit is
/// reported to `sessionTerminating`; too many in a row end the session.
pub async fn failed_run(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    error: &ScriptError,
) {
    warn!(target: "switchboard::script", session = session.log_id(), kind = ?error.kind, "handler failed: {error}");
    let reason = match error.kind {
        ScriptErrorKind::TooManyOperations => "ElementCountExceeded",
        ScriptErrorKind::Timeout => "ElementTimeout",
        ScriptErrorKind::Runtime | ScriptErrorKind::ResourceLimit => return,
    };
    METRICS.limit_stop(error.kind == ScriptErrorKind::Timeout);
    let stops = session.count_limit_stop();
    session_terminating(runtime, project, session, reason).await;
    if stops >= project.settings.max_limit_stops {
        warn!(
            session = session.log_id(),
            stops, "handlers keep getting stopped: terminating the session"
        );
        session_terminating(runtime, project, session, "TerminationTimeout").await;
        // Boxed: ending a session runs `sessionShutdown`, which takes this path.
        Box::pin(runtime.end_session(session, ShutdownReason::Terminated)).await;
    }
}

/// `sessionTerminating(session, reason)`: its actions reach the session;
/// its own failure is only logged.
pub async fn session_terminating(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    reason: &str,
) {
    info!(session = session.log_id(), reason, "session terminating");
    let call = Call::new(
        "sessionTerminating",
        vec![
            Dynamic::from(session.id.clone()),
            Dynamic::from(reason.to_string()),
        ],
    );
    let ran = run(runtime, project, Some(session), call).await;
    // Its failure is only logged (not `report`ed), so a broken
    // `sessionTerminating` cannot loop.
    match (&ran.failure, &ran.decoded) {
        (Some(error), _) => {
            warn!(target: "switchboard::script", session = session.log_id(), "{} failed: {error}", ran.callback)
        }
        (None, Some(decoded)) => deliver(session, ran.callback, &decoded.actions),
        (None, None) => {}
    }
}

/// Runs a callback of the project as a whole (a timer, a point change,
/// the project's start): no session receives its answer, so an answer
/// other than `()` is logged as going nowhere, and so is a failure.
pub async fn run_for_project(project: &Arc<Project>, callback: &'static str, args: Vec<Dynamic>) {
    if !project.scripts.defines(callback, args.len()) {
        return;
    }
    match run_raw(project, Call::new(callback, args)).await {
        Ok(Some(answer)) => {
            warn!(target: "switchboard::script", project = %project.name, "{callback} returned a {} that nobody receives; use sendActions", answer.type_name())
        }
        Ok(None) => {}
        Err(error) => {
            warn!(target: "switchboard::script", project = %project.name, "{callback} failed: {error}")
        }
    }
}

/// The command log line: who, which object, what, and how it ended
/// (without the param when the answer asked to be quiet).
pub(super) fn log_command(
    session: &Session,
    command: &crate::protocol::Command,
    decoded: &Decoded,
) {
    let status = decoded.status.log_tag();
    let user = if session.userid.is_empty() {
        "-"
    } else {
        &session.userid
    };
    let object = command.object.as_deref().unwrap_or("-");
    if decoded.quiet {
        info!(target: "switchboard::command", "session={} user={user} object={object} name={:?} {status}",
            session.log_id(), command.name);
    } else {
        info!(target: "switchboard::command", "session={} user={user} object={object} name={:?} param={:?} {status}",
            session.log_id(), command.name, command.param);
    }
}
