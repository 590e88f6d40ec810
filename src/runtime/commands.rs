//! Frames from a browser tab, dispatched: commands through the ACL and
//! `userCommand` (exactly once when they carry an `id`), page reports,
//! keystrokes, device events and form submissions. Running a handler is
//! [`handlers`](super::handlers)'s; what a command changes in the session's
//! memory (rollback values, which command opened a page) is decided here.

use std::sync::Arc;

use rhai::Dynamic;
use tracing::{info, warn};

use super::delivery::{self, Claim, reply_key};
use super::handlers::{self, Call, OnFailure, Ran};
use super::state::{Caller, Runtime};
use super::{events, forms, memory, points};
use crate::acl;
use crate::answer::{Action, Decoded, Display, Status};
use crate::metrics::METRICS;
use crate::project::Project;
use crate::protocol::{ClientFrame, Command, PageClosed, PageShown, Rejection, Reply};
use crate::session::Session;
use crate::store::{Table, Write};

/// What a user sees when the ACL refuses a command.
pub const ACL_DENIED_MESSAGE: &str = "You are not allowed to do that.";

/// Runs one frame from a browser tab (`caller.tab` is the tab's id, when known).
pub async fn run_frame(
    runtime: &Arc<Runtime>,
    project: Arc<Project>,
    session: Arc<Session>,
    frame: ClientFrame,
    caller: &Caller,
) -> Result<Reply, Rejection> {
    let tab = caller.tab.as_deref();
    match frame {
        ClientFrame::Command(command) => {
            if let Some(denied) = acl_denied(runtime, &project, &session, &command, caller) {
                return Ok(denied);
            }
            Ok(run_command(runtime, project, session, command).await)
        }
        ClientFrame::PageClosed(closed) => Ok(page_closed(runtime, project, session, closed).await),
        ClientFrame::PageShown(shown) => page_shown(runtime, &project, &session, shown, tab),
        ClientFrame::Keystroke(keystroke) => {
            events::keystroke(runtime, project, session, keystroke, tab).await
        }
        ClientFrame::Device(device) => events::device(runtime, project, session, device).await,
        ClientFrame::Form(form) => {
            // The ACL sees a submission as a command named after the form,
            // with its data (as JSON) as the param.
            let as_command = Command {
                seq: form.seq,
                id: None,
                object: Some(form.name.clone()),
                name: form.name.clone(),
                param: serde_json::Value::Object(form.data.clone()).to_string(),
                page: None,
            };
            if let Some(denied) = acl_denied(runtime, &project, &session, &as_command, caller) {
                return Ok(denied);
            }
            Ok(forms::submit(runtime, project, session, form).await)
        }
    }
}

/// The reply to a command the project's ACL refuses; `None` when allowed.
/// A refused command never reaches a handler.
fn acl_denied(
    runtime: &Runtime,
    project: &Project,
    session: &Session,
    command: &Command,
    caller: &Caller,
) -> Option<Reply> {
    let roles = runtime.roles_of(&session.userid);
    let subject = acl::Subject {
        user: &session.userid,
        roles: &roles,
    };
    let decision = acl::decide(
        &project.settings.acl,
        &subject,
        &command.name,
        &command.param,
    );
    if decision.is_allowed() {
        return None;
    }
    let rule = match decision {
        acl::Decision::Denied(Some(index)) => format!("rule {}", index + 1),
        _ => "no rule allows it".to_string(),
    };
    warn!(target: "switchboard::acl", "ACL DENIED user={:?} address={} name={:?} param={:?} ({rule})",
        session.userid, caller.address, command.name, command.param);
    Some(Reply {
        seq: command.seq,
        status: Status::Error,
        actions: vec![Action::Error {
            message: Some(ACL_DENIED_MESSAGE.into()),
            display: Display::Toast,
            object: command.object.clone(),
        }],
    })
}

/// Runs a command through the project's `userCommand` handlers; a command
/// with an `id` runs once, repeats get the stored answer.
async fn run_command(
    runtime: &Arc<Runtime>,
    project: Arc<Project>,
    session: Arc<Session>,
    command: Command,
) -> Reply {
    let seq = command.seq;
    let Some(key) = command.id.as_deref().map(|id| reply_key(&session.id, id)) else {
        let executed = execute(runtime, &project, &session, command, true, None, None).await;
        return finish(runtime, &project, &session, seq, executed).await;
    };
    match runtime.claim(Table::Replies, &key).await {
        Claim::Answered(stored) => {
            info!(target: "switchboard::command", "session={} name={:?} id={:?} [REPEAT] answered from the record",
                session.log_id(), command.name, command.id.as_deref().unwrap_or_default());
            stored.reply(seq)
        }
        Claim::Unavailable => {
            warn!(target: "switchboard::command", "session={} name={:?} [REFUSED] no claim: the cluster is unreachable",
                session.log_id(), command.name);
            delivery::error_reply(seq, delivery::UNAVAILABLE_MESSAGE)
        }
        Claim::Run(running) => {
            let (id_key, claim) = (Some(key.clone()), running.shared());
            let executed = execute(runtime, &project, &session, command, true, id_key, claim).await;
            let stored = executed.stored;
            let reply = finish(runtime, &project, &session, seq, executed).await;
            runtime.release(&key, running, &reply, stored).await;
            reply
        }
    }
}

/// Handles the client's report that a page closed: when a command opened
/// that page, its handler is called again with `/close` appended to the param.
async fn page_closed(
    runtime: &Arc<Runtime>,
    project: Arc<Project>,
    session: Arc<Session>,
    closed: PageClosed,
) -> Reply {
    runtime.points.page_closed(&session, &closed.page);
    let opener = session.with_state(|state| state.openers.remove(&closed.page));
    let Some(opener) = opener else {
        return handlers::reply(closed.seq, nothing_to_do());
    };
    runtime.persist(&session);
    let command = Command {
        seq: closed.seq,
        id: None,
        object: opener.object,
        name: opener.name,
        param: format!("{}/close", opener.param),
        page: Some(closed.page),
    };
    let executed = execute(runtime, &project, &session, command, false, None, None).await;
    finish(runtime, &project, &session, closed.seq, executed).await
}

fn page_shown(
    runtime: &Runtime,
    project: &Project,
    session: &Session,
    shown: PageShown,
    tab: Option<&str>,
) -> Result<Reply, Rejection> {
    if !runtime.may_show_page(project, session, &shown.page) {
        return Err(Rejection::new(
            shown.seq,
            "page_shown: no such page, or not one this user may open",
        ));
    }
    if let Some(tab) = tab {
        let changed = session
            .with_state(|state| state.show_in_tab(tab, &shown.page).as_ref() != Some(&shown.page));
        if changed {
            runtime.persist(session);
        }
    }
    Ok(handlers::reply(shown.seq, nothing_to_do()))
}

fn nothing_to_do() -> Decoded {
    Decoded {
        status: Status::Ok,
        actions: Vec::new(),
        quiet: false,
        warnings: Vec::new(),
    }
}

/// A command and what its handler did.
struct Executed {
    command: Command,
    decoded: Decoded,
    ran: Ran,
    /// Whether its effects and record were stored.
    stored: bool,
    claim: Option<Arc<crate::cluster::Held>>,
}

/// Runs `userCommand` and updates the session's memory on a script thread,
/// in one store transaction with the answer's record when the command has
/// an id: the handler's effects and its answer survive a crash together,
/// or neither does.
async fn execute(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    command: Command,
    remember_value: bool,
    reply_key: Option<String>,
    claim: Option<Arc<crate::cluster::Held>>,
) -> Executed {
    let object = command
        .object
        .clone()
        .unwrap_or_else(|| command.name.clone());
    let (job_runtime, job_project, job_session) =
        (runtime.clone(), project.clone(), session.clone());
    let job_command = command.clone();
    let job_claim = claim.clone();
    let job = move || {
        let (mut ran, durable) = job_runtime.atomically(
            job_claim,
            || {
                let (ran, record) = execute_here(
                    &job_runtime,
                    &job_project,
                    &job_session,
                    &job_command,
                    remember_value,
                    reply_key,
                );
                (ran, record.into_iter().flatten().collect())
            },
            |ran| ran.failure.is_some(),
        );
        ran.durable = Some(durable);
        ran
    };
    let mut ran = handlers::off_async("userCommand", Some(&object), job).await;
    let stored = ran.wait_durable().await;
    let decoded = ran.decoded.take().unwrap_or_else(handlers::unhandled);
    Executed {
        command,
        decoded,
        ran,
        stored,
        claim,
    }
}

/// The handler run and the session memory update, on a script thread.
fn execute_here(
    runtime: &Runtime,
    project: &Project,
    session: &Session,
    command: &Command,
    remember_value: bool,
    reply_key: Option<String>,
) -> (Ran, Option<[Write; 2]>) {
    let object = command
        .object
        .clone()
        .unwrap_or_else(|| command.name.clone());
    let call = Call {
        callback: "userCommand",
        args: vec![
            Dynamic::from(session.id.clone()),
            Dynamic::from(session.userid.clone()),
            Dynamic::from(command.name.clone()),
            Dynamic::from(command.param.clone()),
        ],
        // The last accepted value, else what a push made the page show.
        rollback_value: remember_value
            .then(|| {
                session
                    .last_valid_value(&object)
                    .or_else(|| runtime.shown_value(session, &object))
            })
            .flatten(),
        object: Some(object.clone()),
        log_name: Some(command.name.clone()),
    };
    // A write from an object bound to a point takes the point's path.
    let mut ran = match command.name.strip_prefix(points::POINT_COMMAND) {
        Some(point) => points::write_from_page(runtime, project, session, point, call),
        None => handlers::run_blocking(Some(runtime), project, Some(session), call),
    };
    let decoded = ran.decoded.get_or_insert_with(handlers::unhandled);
    let changed = session
        .with_state(|state| memory::remember(state, &object, command, decoded, remember_value));
    if changed {
        runtime.persist(session);
    }
    let record = reply_key.map(|key| {
        let reply = Reply {
            seq: None,
            status: decoded.status,
            actions: decoded.actions.clone(),
        };
        let keep = runtime.retention(Table::Replies, &key);
        delivery::answer_writes(Table::Replies, key, &reply, keep)
    });
    (ran, record)
}

/// Logs the command, reports a failure, and builds the reply.
async fn finish(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    seq: Option<u64>,
    executed: Executed,
) -> Reply {
    handlers::log_command(session, &executed.command, &executed.decoded);
    if runtime.dev_mode() {
        super::dev::notice_unhandled(
            runtime,
            project,
            session,
            &executed.command,
            &executed.decoded,
        );
    }
    METRICS.command(executed.decoded.status, executed.ran.handler_time);
    handlers::report(runtime, project, session, &executed.ran, OnFailure::Count).await;
    if executed.ran.failure.is_none() {
        session.clear_limit_stops();
    }
    // Cluster mode: a reply never claims what the cluster did not store.
    if !executed.stored && runtime.store.is_shared() {
        return delivery::commit_failed_reply(seq, executed.claim.as_deref());
    }
    handlers::reply(seq, executed.decoded)
}
