//! Hot reload: watch the projects folder and reload a project shortly after
//! its files stop changing (editors write a file in several steps).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::runtime::Runtime;

/// Quiet time after the last change before a project is reloaded.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watches until the runtime stops; returns at once if watching fails
/// (the server still serves, without hot reload).
pub async fn watch(runtime: Arc<Runtime>) {
    let root = match runtime.projects_dir().canonicalize() {
        Ok(root) => root,
        Err(error) => {
            error!("hot reload is off: {error}");
            return;
        }
    };
    let (changes, mut changed) = mpsc::unbounded_channel::<PathBuf>();
    let watch_root = root.clone();
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && is_a_write(&event.kind)
            {
                for path in event.paths {
                    if let Some(project) = project_dir_of(&watch_root, &path) {
                        let _ = changes.send(project);
                    }
                }
            }
        }) {
            Ok(watcher) => watcher,
            Err(error) => {
                error!("hot reload is off: {error}");
                return;
            }
        };
    if let Err(error) = watcher.watch(&root, RecursiveMode::Recursive) {
        error!("hot reload is off: {error}");
        return;
    }
    info!("watching {} for changes", root.display());
    let mut shutdown = runtime.shutdown_signal();
    loop {
        let first = tokio::select! {
            first = changed.recv() => first,
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        };
        let Some(first) = first else { return };
        let mut dirty: HashSet<PathBuf> = HashSet::from([first]);
        while let Ok(Some(more)) = tokio::time::timeout(DEBOUNCE, changed.recv()).await {
            dirty.insert(more);
        }
        for dir in dirty {
            runtime.reload_project(&dir).await;
        }
    }
}

/// Only writes count: reading the files to reload them (or another server
/// reading them) must not trigger another reload.
fn is_a_write(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(modify) => !matches!(modify, ModifyKind::Metadata(_)),
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// The project folder (a direct child of `root`) a changed path is in.
fn project_dir_of(root: &Path, path: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix(root).ok()?;
    let first = relative.components().next()?;
    Some(root.join(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_map_to_their_project() {
        let root = Path::new("/p");
        assert_eq!(
            project_dir_of(root, Path::new("/p/demo/pages/home.html")),
            Some(PathBuf::from("/p/demo"))
        );
        assert_eq!(
            project_dir_of(root, Path::new("/p/demo")),
            Some(PathBuf::from("/p/demo"))
        );
        assert_eq!(project_dir_of(root, Path::new("/elsewhere/x")), None);
    }
}
