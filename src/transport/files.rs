//! Files served from a project's folder: its `static/` assets, and the
//! project files that downloads name. Every path a client or a handler
//! gives is confined to its folder here, the one place that reads them.

use std::path::{Component, Path, PathBuf};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::{RequestError, State, login, project_of, require_session};
use crate::runtime::DownloadError;

/// The folder of a project that downloads naming a `file` are confined to:
/// not the project folder, which holds `project.toml` (with the API token)
/// and the scripts.
pub const DOWNLOADS_FOLDER: &str = "files";

/// A project's own assets (stylesheets, images) from its `static/` folder.
/// A public project's are public; a login-only project's go to its users
/// only (its login page uses the runtime's assets alone).
pub(super) async fn static_file(
    req: HttpRequest,
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, RequestError> {
    let (name, file) = path.into_inner();
    let project = project_of(&state, &name)?;
    if !project.settings.access.public {
        let session = require_session(&req, &state, &project.name)?;
        login::authorize(&state, &project, &session, None)?;
    }
    let path =
        resolve_inside(&project.dir.join("static"), &file).ok_or(RequestError::PageNotFound)?;
    let body = tokio::fs::read(&path)
        .await
        .map_err(|_| RequestError::PageNotFound)?;
    let content_type = mime_guess::from_path(&path).first_or_octet_stream();
    Ok(HttpResponse::Ok()
        .content_type(content_type.essence_str())
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body))
}

/// Reads a file a download names, relative to the project's `files/`.
pub(super) async fn read_project_file(
    project_dir: &Path,
    relative: &str,
) -> Result<Vec<u8>, DownloadError> {
    let path = resolve_inside(&project_dir.join(DOWNLOADS_FOLDER), relative)
        .ok_or(DownloadError::FileNotAvailable)?;
    tokio::fs::read(&path)
        .await
        .map_err(|_| DownloadError::FileNotAvailable)
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
}
