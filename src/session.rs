//! Sessions and what the server remembers for each: who it belongs to, the
//! last valid value of every object (for rollback), and which command opened
//! each page (for `/close`). Also the command pipeline that reads and writes
//! that memory: run the handler, decode its answer, log the command.
//!
//! Sessions live in memory in a [`DashMap`]; nothing here speaks HTTP.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use rhai::Dynamic;
use tracing::{info, warn};

use crate::answer::{self, Action, Answer, Decoded, Display, Origin, Status};
use crate::project::Project;
use crate::protocol::{Command, PageClosed, Reply};
use crate::script::ScriptError;

/// The message a user sees when a handler failed; the details go to the log
/// only, since they may describe the server's internals.
pub const FAILED_MESSAGE: &str = "Sorry, that did not work. Please try again.";

/// All live sessions of all projects.
#[derive(Default)]
pub struct Sessions {
    by_id: DashMap<String, Arc<Session>>,
}

impl Sessions {
    /// Starts a session of `project` for `userid` (`""` when anonymous).
    pub fn create(&self, project: &str, userid: &str) -> Arc<Session> {
        let session = Arc::new(Session {
            id: new_session_id(),
            project: project.to_string(),
            userid: userid.to_string(),
            memory: Mutex::default(),
        });
        self.by_id.insert(session.id.clone(), session.clone());
        session
    }

    /// The session with this id, if it exists and belongs to `project`.
    pub fn get(&self, id: &str, project: &str) -> Option<Arc<Session>> {
        let session = self.by_id.get(id)?;
        (session.project == project).then(|| session.clone())
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// 128 random bits from the OS generator: session ids are bearer
/// credentials, so they must not be guessable.
fn new_session_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// One user's session of one project.
pub struct Session {
    pub id: String,
    pub project: String,
    pub userid: String,
    memory: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    /// Object id → param of its last command that did not return an error.
    last_valid: HashMap<String, String>,
    /// Page name → the command whose answer opened it.
    openers: HashMap<String, Opener>,
}

#[derive(Debug, Clone)]
struct Opener {
    object: Option<String>,
    name: String,
    param: String,
}

impl Session {
    fn memory(&self) -> MutexGuard<'_, Memory> {
        // A poisoned lock only means another thread panicked mid-update of
        // plain maps; the data is still usable.
        self.memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The id as it appears in logs: a prefix, since the full id is a credential.
    pub fn log_id(&self) -> &str {
        &self.id[..8.min(self.id.len())]
    }

    /// The last valid value of an object, as rollback would restore it.
    pub fn last_valid_value(&self, object: &str) -> Option<String> {
        self.memory().last_valid.get(object).cloned()
    }
}

/// Runs a command through the project's `userCommand` handlers and returns
/// the reply for the client.
pub async fn run_command(project: Arc<Project>, session: Arc<Session>, command: Command) -> Reply {
    let object = command
        .object
        .clone()
        .unwrap_or_else(|| command.name.clone());
    let rollback_value = session.last_valid_value(&object);
    let outcome = call_user_command(&project, &session, &command.name, &command.param).await;
    let decoded = decode_outcome(outcome, &command, Some(&object), rollback_value.as_deref());
    remember(&session, &object, &command, &decoded);
    log_command(&session, &command, &decoded);
    Reply {
        seq: command.seq,
        status: decoded.status,
        actions: decoded.actions,
    }
}

/// Handles the client's report that a page closed: when a command opened
/// that page, its handler is called again with `/close` appended to the param.
pub async fn page_closed(
    project: Arc<Project>,
    session: Arc<Session>,
    closed: PageClosed,
) -> Reply {
    let opener = session.memory().openers.remove(&closed.page);
    let Some(opener) = opener else {
        return Reply {
            seq: closed.seq,
            status: Status::Ok,
            actions: Vec::new(),
        };
    };
    let command = Command {
        seq: closed.seq,
        object: opener.object,
        name: opener.name,
        param: format!("{}/close", opener.param),
        page: Some(closed.page),
    };
    let object = command
        .object
        .clone()
        .unwrap_or_else(|| command.name.clone());
    let outcome = call_user_command(&project, &session, &command.name, &command.param).await;
    let decoded = decode_outcome(outcome, &command, Some(&object), None);
    remember_openers(&session, &command, &decoded);
    log_command(&session, &command, &decoded);
    Reply {
        seq: command.seq,
        status: decoded.status,
        actions: decoded.actions,
    }
}

/// What running a handler chain produced.
#[derive(Debug)]
enum Outcome {
    Answered(Answer),
    Failed(ScriptError),
}

async fn call_user_command(
    project: &Arc<Project>,
    session: &Session,
    name: &str,
    param: &str,
) -> Outcome {
    let args = vec![
        Dynamic::from(session.id.clone()),
        Dynamic::from(session.userid.clone()),
        Dynamic::from(name.to_string()),
        Dynamic::from(param.to_string()),
    ];
    match call_blocking(project, "userCommand", args).await {
        Ok(Some(value)) => Outcome::Answered(Answer::from_dynamic(value)),
        Ok(None) => Outcome::Answered(Answer::Unit),
        Err(error) => Outcome::Failed(error),
    }
}

/// Runs a callback chain on the blocking pool: a handler may take up to its
/// wall-clock limit, and must not hold an async worker meanwhile.
async fn call_blocking(
    project: &Arc<Project>,
    callback: &'static str,
    args: Vec<Dynamic>,
) -> Result<Option<Dynamic>, ScriptError> {
    let project = project.clone();
    match crate::script::run_off_async(move || project.scripts.call_first(callback, args)).await {
        Ok(result) => result,
        Err(join_error) => Err(ScriptError {
            kind: crate::script::ScriptErrorKind::Runtime,
            script: "?".into(),
            callback: callback.into(),
            line: 0,
            column: 0,
            message: format!("handler task ended abnormally: {join_error}"),
        }),
    }
}

fn decode_outcome(
    outcome: Outcome,
    command: &Command,
    object: Option<&str>,
    rollback_value: Option<&str>,
) -> Decoded {
    match outcome {
        Outcome::Answered(answer) => {
            let decoded = answer::decode(
                &answer,
                &Origin {
                    object,
                    rollback_value,
                },
            );
            for warning in &decoded.warnings {
                warn!(target: "switchboard::answer", name = %command.name, "ignored part of the answer: {warning}");
            }
            decoded
        }
        Outcome::Failed(error) => {
            warn!(target: "switchboard::script", name = %command.name, kind = ?error.kind, "handler failed: {error}");
            failed(object)
        }
    }
}

/// The reply to a command whose handler failed.
fn failed(object: Option<&str>) -> Decoded {
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

fn remember(session: &Session, object: &str, command: &Command, decoded: &Decoded) {
    // A command that was not refused — answered without error, or not
    // handled at all — leaves its value as the object's valid one.
    if matches!(decoded.status, Status::Ok | Status::Unhandled) {
        session
            .memory()
            .last_valid
            .insert(object.to_string(), command.param.clone());
    }
    remember_openers(session, command, decoded);
}

fn remember_openers(session: &Session, command: &Command, decoded: &Decoded) {
    let opened = decoded.actions.iter().filter_map(|action| match action {
        Action::Page { page }
            if !matches!(page.as_str(), "back" | "forward" | "close" | "close-all") =>
        {
            Some(page)
        }
        _ => None,
    });
    let mut memory = None;
    for page in opened {
        memory
            .get_or_insert_with(|| session.memory())
            .openers
            .insert(
                page.clone(),
                Opener {
                    object: command.object.clone(),
                    name: command.name.clone(),
                    param: command.param.clone(),
                },
            );
    }
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
    let answer = match call_blocking(&project, "userDownload", args).await {
        Ok(Some(answer)) => answer,
        Ok(None) => return Err(DownloadError::NotHandled),
        Err(error) => {
            warn!(target: "switchboard::script", name = %name, "download handler failed: {error}");
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
        let content_type = text_of("content_type").unwrap_or_else(|| guess_content_type(&filename));
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
    let content_type = text_of("content_type").unwrap_or_else(|| guess_content_type(&filename));
    Ok(Download {
        filename,
        content_type,
        body,
    })
}

fn guess_content_type(filename: &str) -> String {
    mime_guess::from_path(filename)
        .first_or_octet_stream()
        .essence_str()
        .to_string()
}

/// `relative` inside `root`, or `None` when it is absolute, climbs out with
/// `..`, or (through a symlink) resolves outside `root`.
fn resolve_inside(root: &Path, relative: &str) -> Option<PathBuf> {
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

    #[test]
    fn session_ids_are_long_and_distinct() {
        let sessions = Sessions::default();
        let a = sessions.create("p", "");
        let b = sessions.create("p", "");
        assert_eq!(a.id.len(), 32);
        assert_ne!(a.id, b.id);
        assert!(sessions.get(&a.id, "p").is_some());
        assert!(
            sessions.get(&a.id, "other").is_none(),
            "a session belongs to one project"
        );
    }
}
