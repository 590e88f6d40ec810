//! Frames from a browser: commands through `userCommand`, page reports,
//! keystrokes and device events; and downloads through `userDownload`.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rhai::Dynamic;
use tracing::{info, warn};

use super::delivery::{Claim, StoredReply, reply_key};
use super::{Caller, Runtime, events, forms};
use crate::acl;
use crate::answer::{self, Action, Answer, Decoded, Display, Origin, Status};
use crate::metrics::METRICS;
use crate::project::Project;
use crate::protocol::{ClientFrame, Command, PageClosed, PageShown, Rejection, Reply};
use crate::script::{self, ScriptError};
use crate::session::{Opener, Session, SessionState};
use crate::store::{Table, Write};

/// The message a user sees when a handler failed; the details go to the log
/// only, since they may describe the server's internals.
pub const FAILED_MESSAGE: &str = "Sorry, that did not work. Please try again.";

/// Runs one frame from a browser tab (`tab` is the tab's id, when known).
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
        ClientFrame::PageShown(shown) => Ok(page_shown(runtime, &session, shown, tab)),
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

/// What a user sees when the ACL refuses a command.
pub const ACL_DENIED_MESSAGE: &str = "You are not allowed to do that.";

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
        let executed = execute_off_async(runtime, &project, &session, command, true, None).await;
        return finish(runtime, &project, &session, seq, executed).await;
    };
    match runtime.claim(Table::Replies, &key).await {
        Claim::Answered(stored) => {
            info!(target: "switchboard::command", "session={} name={:?} id={:?} [REPEAT] answered from the record",
                session.log_id(), command.name, command.id.as_deref().unwrap_or_default());
            stored.reply(seq)
        }
        Claim::Run(done) => {
            let executed = execute_off_async(
                runtime,
                &project,
                &session,
                command,
                true,
                Some(key.clone()),
            )
            .await;
            let reply = finish(runtime, &project, &session, seq, executed).await;
            runtime.release(&key, done, &reply);
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
    let opener = session.with_state(|state| state.openers.remove(&closed.page));
    let Some(opener) = opener else {
        return Reply {
            seq: closed.seq,
            status: Status::Ok,
            actions: Vec::new(),
        };
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
    let executed = execute_off_async(runtime, &project, &session, command, false, None).await;
    finish(runtime, &project, &session, closed.seq, executed).await
}

fn page_shown(runtime: &Runtime, session: &Session, shown: PageShown, tab: Option<&str>) -> Reply {
    if let Some(tab) = tab {
        let changed = session.with_state(|state| {
            state.tabs.insert(tab.to_string(), shown.page.clone()) != Some(shown.page)
        });
        if changed {
            runtime.persist(session);
        }
    }
    Reply {
        seq: shown.seq,
        status: Status::Ok,
        actions: Vec::new(),
    }
}

struct Executed {
    command: Command,
    decoded: Decoded,
    failure: Option<ScriptError>,
    handler_time: std::time::Duration,
    /// The script whose answer was decoded, if one answered.
    answered_by: Option<String>,
}

/// Runs the handler, decodes its answer and updates the session's memory,
/// all on a script thread: the handler may run up to its wall-clock limit
/// and the store write blocks, neither may hold an async worker.
async fn execute_off_async(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    command: Command,
    remember_value: bool,
    reply_key: Option<String>,
) -> Executed {
    let (job_runtime, job_project, job_session) =
        (runtime.clone(), project.clone(), session.clone());
    let fallback = command.clone();
    let job = move || {
        job_runtime.atomically(|| {
            let executed = execute(
                &job_runtime,
                &job_project,
                &job_session,
                command,
                remember_value,
            );
            // The answer is stored in the same transaction as the handler's
            // effects: both survive a crash, or neither does.
            let record = reply_key.map(|key| {
                let reply = Reply {
                    seq: None,
                    status: executed.decoded.status,
                    actions: executed.decoded.actions.clone(),
                };
                Write::Put(
                    Table::Replies,
                    key,
                    serde_json::to_vec(&StoredReply::new(&reply)).unwrap_or_default(),
                )
            });
            (executed, record.into_iter().collect())
        })
    };
    match script::run_off_async(job).await {
        Ok(executed) => executed,
        Err(join_error) => {
            let object = fallback
                .object
                .clone()
                .unwrap_or_else(|| fallback.name.clone());
            Executed {
                decoded: failed(Some(&object)),
                failure: Some(abnormal_end("userCommand", &join_error)),
                command: fallback,
                handler_time: std::time::Duration::ZERO,
                answered_by: None,
            }
        }
    }
}

pub(super) fn abnormal_end(callback: &str, error: &dyn std::fmt::Display) -> ScriptError {
    ScriptError {
        kind: script::ScriptErrorKind::Runtime,
        script: "?".into(),
        callback: callback.into(),
        line: 0,
        column: 0,
        message: format!("handler task ended abnormally: {error}"),
    }
}

fn execute(
    runtime: &Runtime,
    project: &Project,
    session: &Session,
    command: Command,
    remember_value: bool,
) -> Executed {
    let object = command
        .object
        .clone()
        .unwrap_or_else(|| command.name.clone());
    let rollback_value = if remember_value {
        session.last_valid_value(&object)
    } else {
        None
    };
    let args = vec![
        Dynamic::from(session.id.clone()),
        Dynamic::from(session.userid.clone()),
        Dynamic::from(command.name.clone()),
        Dynamic::from(command.param.clone()),
    ];
    let started = std::time::Instant::now();
    let result = project.scripts.call_first_from("userCommand", args);
    let handler_time = started.elapsed();
    let mut answered_by = None;
    let (decoded, failure) = match result {
        Ok(answer) => {
            let answer = answer.map_or(Answer::Unit, |(answer, script)| {
                answered_by = Some(script.to_string());
                Answer::from_dynamic(answer)
            });
            let origin = Origin {
                object: Some(&object),
                rollback_value: rollback_value.as_deref(),
            };
            (
                decode_logging_warnings(&answer, &origin, &command.name),
                None,
            )
        }
        Err(error) => (failed(Some(&object)), Some(error)),
    };
    let mut decoded = decoded;
    runtime.file_challenges(project, session, &mut decoded.actions);
    let changed =
        session.with_state(|state| remember(state, &object, &command, &decoded, remember_value));
    if changed {
        runtime.persist(session);
    }
    Executed {
        command,
        decoded,
        failure,
        handler_time,
        answered_by,
    }
}

pub(super) fn decode_logging_warnings(answer: &Answer, origin: &Origin, name: &str) -> Decoded {
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

/// Logs the command, reports a failure, and builds the reply.
async fn finish(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    seq: Option<u64>,
    executed: Executed,
) -> Reply {
    log_command(session, &executed.command, &executed.decoded);
    if runtime.dev_mode() {
        super::dev::notice_command(runtime, project, session, &executed.command, &executed.decoded, executed.answered_by.as_deref());
    }
    METRICS.command(executed.decoded.status, executed.handler_time);
    match &executed.failure {
        Some(error) => events::handler_failed(runtime, project, session, error).await,
        None => session.clear_limit_stops(),
    }
    Reply {
        seq,
        status: executed.decoded.status,
        actions: executed.decoded.actions,
    }
}

/// The reply to a command whose handler failed.
pub(super) fn failed(object: Option<&str>) -> Decoded {
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

/// Updates rollback and `/close` memory; returns whether anything changed.
fn remember(
    state: &mut SessionState,
    object: &str,
    command: &Command,
    decoded: &Decoded,
    remember_value: bool,
) -> bool {
    let mut changed = false;
    // A command that was not refused — answered without error, or not
    // handled at all — leaves its value as the object's valid one.
    if remember_value && matches!(decoded.status, Status::Ok | Status::Unhandled) {
        changed |= state.last_valid.get(object) != Some(&command.param);
        if changed {
            state
                .last_valid
                .insert(object.to_string(), command.param.clone());
        }
    }
    for action in &decoded.actions {
        if let Action::Page { page } = action
            && !matches!(page.as_str(), "back" | "forward" | "close" | "close-all")
        {
            let opener = Opener {
                object: command.object.clone(),
                name: command.name.clone(),
                param: command.param.clone(),
            };
            changed |= state.openers.insert(page.clone(), opener.clone()) != Some(opener);
        }
    }
    changed
}

fn log_command(session: &Session, command: &Command, decoded: &Decoded) {
    let status = match decoded.status {
        Status::Ok => "[OK]",
        Status::Error => "[ERROR]",
        Status::Failed => "[FAILED]",
        Status::Unhandled => "[UNHANDLED]",
    };
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

/// A file the client downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub filename: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Why a download produced no file.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// No `userDownload` handler answered.
    #[error("no handler provides this download")]
    NotHandled,
    /// The handler failed (details logged).
    #[error("the download handler failed")]
    Failed(ScriptError),
    /// The handler's answer is not a download.
    #[error("the download handler's answer is not a download: {0}")]
    BadAnswer(String),
    /// `file` points outside the project or at nothing.
    #[error("the requested file is not available")]
    FileNotAvailable,
}

/// Runs `userDownload(session, userid, name, param)` and turns its answer
/// into a file.
pub async fn run_download(
    runtime: &Arc<Runtime>,
    project: Arc<Project>,
    session: Arc<Session>,
    name: String,
    parameter: String,
) -> Result<Download, DownloadError> {
    let args = vec![
        Dynamic::from(session.id.clone()),
        Dynamic::from(session.userid.clone()),
        Dynamic::from(name.clone()),
        Dynamic::from(parameter),
    ];
    let job_project = project.clone();
    let result =
        script::run_off_async(move || job_project.scripts.call_first("userDownload", args))
            .await
            .unwrap_or_else(|join_error| Err(abnormal_end("userDownload", &join_error)));
    let answer = match result {
        Ok(Some(answer)) => answer,
        Ok(None) => return Err(DownloadError::NotHandled),
        Err(error) => {
            events::handler_failed(runtime, &project, &session, &error).await;
            return Err(DownloadError::Failed(error));
        }
    };
    let download = download_from_answer(&project.dir, answer).await;
    match &download {
        Ok(file) => {
            info!(target: "switchboard::command", "session={} download name={name:?} file={:?} bytes={} [OK]",
            session.log_id(), file.filename, file.body.len())
        }
        Err(error) => {
            warn!(target: "switchboard::command", "session={} download name={name:?} [ERROR] {error}",
            session.log_id())
        }
    }
    download
}

async fn download_from_answer(
    project_dir: &Path,
    answer: Dynamic,
) -> Result<Download, DownloadError> {
    let type_name = answer.type_name();
    let Some(map) = answer.try_cast::<rhai::Map>() else {
        return Err(DownloadError::BadAnswer(format!(
            "expected a map, got {type_name}"
        )));
    };
    let text_of = |key: &str| map.get(key).and_then(|v| v.clone().into_string().ok());
    if let Some(file) = text_of("file") {
        let path = resolve_inside(project_dir, &file).ok_or(DownloadError::FileNotAvailable)?;
        let body = tokio::fs::read(&path)
            .await
            .map_err(|_| DownloadError::FileNotAvailable)?;
        let filename = text_of("filename").unwrap_or_else(|| {
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("download")
                .to_string()
        });
        let content_type = content_type_for(text_of("content_type"), &filename)?;
        return Ok(Download {
            filename,
            content_type,
            body,
        });
    }
    let filename = text_of("filename")
        .ok_or_else(|| DownloadError::BadAnswer("missing `filename` (or `file`)".into()))?;
    let body = match map.get("body") {
        Some(body) if body.is_string() => {
            body.clone().into_string().unwrap_or_default().into_bytes()
        }
        Some(body) if body.is_blob() => body.clone().into_blob().unwrap_or_default(),
        Some(other) => {
            return Err(DownloadError::BadAnswer(format!(
                "`body` must be a string or a blob, got {}",
                other.type_name()
            )));
        }
        None => return Err(DownloadError::BadAnswer("missing `body`".into())),
    };
    let content_type = content_type_for(text_of("content_type"), &filename)?;
    Ok(Download {
        filename,
        content_type,
        body,
    })
}

/// The handler's content type if it is a valid one, else a guess from the
/// file name.
fn content_type_for(given: Option<String>, filename: &str) -> Result<String, DownloadError> {
    match given {
        Some(given) if given.parse::<mime_guess::mime::Mime>().is_ok() => Ok(given),
        Some(given) => Err(DownloadError::BadAnswer(format!(
            "`content_type` {given:?} is not a media type"
        ))),
        None => Ok(guess_content_type(filename)),
    }
}

fn guess_content_type(filename: &str) -> String {
    mime_guess::from_path(filename)
        .first_or_octet_stream()
        .essence_str()
        .to_string()
}

/// `relative` inside `root`, or `None` when it is absolute, climbs out with
/// `..`, or (through a symlink) resolves outside `root`.
pub fn resolve_inside(root: &Path, relative: &str) -> Option<PathBuf> {
    let relative = Path::new(relative);
    if relative.as_os_str().is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    let root = root.canonicalize().ok()?;
    let path = root.join(relative).canonicalize().ok()?;
    (path.starts_with(&root) && path.is_file()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_inside_refuses_escapes() {
        let dir = std::env::temp_dir().join(format!("sb-resolve-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("files")).unwrap();
        std::fs::write(dir.join("files/a.txt"), "a").unwrap();
        assert!(resolve_inside(&dir, "files/a.txt").is_some());
        assert!(resolve_inside(&dir, "./files/a.txt").is_some());
        for bad in [
            "../x",
            "files/../../x",
            "/etc/passwd",
            "",
            "files",
            "missing.txt",
        ] {
            assert!(resolve_inside(&dir, bad).is_none(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn command(param: &str) -> Command {
        Command {
            seq: None,
            id: None,
            object: Some("o".into()),
            name: "n".into(),
            param: param.into(),
            page: None,
        }
    }

    fn decoded(status: Status, actions: Vec<Action>) -> Decoded {
        Decoded {
            status,
            actions,
            quiet: false,
            warnings: vec![],
        }
    }

    #[test]
    fn only_values_that_were_not_refused_become_valid() {
        let mut state = SessionState::default();
        assert!(remember(
            &mut state,
            "o",
            &command("1"),
            &decoded(Status::Ok, vec![]),
            true
        ));
        assert!(
            !remember(
                &mut state,
                "o",
                &command("1"),
                &decoded(Status::Ok, vec![]),
                true
            ),
            "unchanged"
        );
        assert!(!remember(
            &mut state,
            "o",
            &command("9"),
            &decoded(Status::Error, vec![]),
            true
        ));
        assert!(!remember(
            &mut state,
            "o",
            &command("9"),
            &decoded(Status::Failed, vec![]),
            true
        ));
        assert!(remember(
            &mut state,
            "o",
            &command("2"),
            &decoded(Status::Unhandled, vec![]),
            true
        ));
        assert_eq!(state.last_valid["o"], "2");
    }

    #[test]
    fn pages_opened_by_a_command_remember_it() {
        let mut state = SessionState::default();
        let actions = vec![
            Action::Page {
                page: "back".into(),
            },
            Action::Page {
                page: "popup".into(),
            },
        ];
        remember(
            &mut state,
            "o",
            &command("p"),
            &decoded(Status::Ok, actions),
            false,
        );
        assert_eq!(state.openers.keys().collect::<Vec<_>>(), ["popup"]);
        assert_eq!(state.openers["popup"].param, "p");
    }
}
