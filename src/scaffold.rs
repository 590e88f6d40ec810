//! `switchboard new DIR`: a new project's files — a page, an events file
//! with `userCommand`, a `lib/` module and translations — that pass
//! `switchboard check` and run as they are, with comments pointing at the
//! docs. This module only writes files; it does not load projects.

use std::fs;
use std::path::{Path, PathBuf};

use crate::project;

/// `(path in the project, contents)`; `{{name}}` is the project's name.
const FILES: &[(&str, &str)] = &[
    ("project.toml", include_str!("scaffold/project.toml")),
    ("pages/home.html", include_str!("scaffold/home.html")),
    ("events/10-main.rhai", include_str!("scaffold/main.rhai")),
    ("lib/panel.rhai", include_str!("scaffold/panel.rhai")),
    ("i18n/en.ftl", include_str!("scaffold/en.ftl")),
    ("i18n/it.ftl", include_str!("scaffold/it.ftl")),
];

/// Why no project was created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The folder's name cannot be a project name.
    #[error(
        "{0}: a project name has only letters, digits, `-` and `_`, does not start with `_` and is not `metrics`"
    )]
    BadName(PathBuf),
    /// Something is already there.
    #[error("{0} already exists; choose a new folder")]
    Exists(PathBuf),
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates the project folder `dir` and its files; returns the files written.
pub fn create(dir: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !project::is_valid_project_name(dir) {
        return Err(ScaffoldError::BadName(dir.to_path_buf()));
    }
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.to_path_buf()));
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let mut written = Vec::new();
    for (path, text) in FILES {
        let path = dir.join(path);
        let io = |source| ScaffoldError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        fs::write(&path, text.replace("{{name}}", name)).map_err(io)?;
        written.push(path);
    }
    Ok(written)
}
