//! Downloads: `userDownload(session, userid, name, param)` answers with a
//! file the browser saves — its bytes, or a file of the project's that the
//! transport reads (where static files are served, under the same
//! confinement). The answer is checked here; no file is read here.

use std::path::Path;
use std::sync::Arc;

use rhai::Dynamic;
use tracing::{info, warn};

use super::handlers::{self, Call};
use super::state::Runtime;
use crate::project::Project;
use crate::script::ScriptError;
use crate::session::Session;

/// A file the client downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub filename: String,
    pub content_type: String,
    pub body: DownloadBody,
}

/// Where a download's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadBody {
    /// Made by the handler.
    Bytes(Vec<u8>),
    /// A file of the project, by its path relative to the project's
    /// `files/` folder as the handler wrote it (not yet checked against
    /// escapes: `transport::files` confines it).
    File(String),
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
    /// `file` points outside the project's `files/` folder or at nothing.
    #[error("the requested file is not available")]
    FileNotAvailable,
}

/// Runs `userDownload(session, userid, name, param)` and turns its answer
/// into a download.
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
    // The answer is a download, not a Command API answer: it is taken raw.
    let answer = match handlers::run_raw(&project, Call::new("userDownload", args)).await {
        Ok(Some(answer)) => answer,
        Ok(None) => return Err(DownloadError::NotHandled),
        Err(error) => {
            handlers::failed_run(runtime, &project, &session, &error).await;
            return Err(DownloadError::Failed(error));
        }
    };
    let download = download_from_answer(answer);
    match &download {
        Ok(file) => {
            info!(target: "switchboard::command", "session={} download name={name:?} file={:?} [OK]",
            session.log_id(), file.filename)
        }
        Err(error) => {
            warn!(target: "switchboard::command", "session={} download name={name:?} [ERROR] {error}",
            session.log_id())
        }
    }
    download
}

fn download_from_answer(answer: Dynamic) -> Result<Download, DownloadError> {
    let type_name = answer.type_name();
    let Some(map) = answer.try_cast::<rhai::Map>() else {
        return Err(DownloadError::BadAnswer(format!(
            "expected a map, got {type_name}"
        )));
    };
    let text_of = |key: &str| map.get(key).and_then(|v| v.clone().into_string().ok());
    if let Some(file) = text_of("file") {
        let filename = text_of("filename").unwrap_or_else(|| {
            Path::new(&file)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("download")
                .to_string()
        });
        let content_type = content_type_for(text_of("content_type"), &filename)?;
        return Ok(Download {
            filename,
            content_type,
            body: DownloadBody::File(file),
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
        body: DownloadBody::Bytes(body),
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
        None => Ok(mime_guess::from_path(filename)
            .first_or_octet_stream()
            .essence_str()
            .to_string()),
    }
}
