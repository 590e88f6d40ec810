//! Finding and loading projects: `project.toml`, page templates and scripts.
//!
//! A project is a folder `<projects>/<name>/` holding `project.toml`, pages in
//! `pages/` and popups in `popups/` (Tera templates, one file each), shared
//! templates in `templates/`, Rhai scripts in `events/` and shared Rhai modules in `lib/`. Loading compiles
//! everything; a project with any error is not served, and every error names
//! its file, line and column. This module does not run handlers or hold
//! sessions.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tera::Tera;

use crate::script::{self, Limits, ScriptHost, SourceFile};

/// Built-in templates, under a prefix project files cannot use.
const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    (
        "sb/layout.html",
        include_str!("../web/templates/layout.html"),
    ),
    (
        "sb/components.html",
        include_str!("../web/templates/components.html"),
    ),
    ("sb/login.html", include_str!("../web/templates/login.html")),
];

/// `project.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Shown in the browser's title bar.
    pub title: String,
    /// The page `/<project>/` opens.
    pub start: String,
    /// Where toasts stack.
    pub toast_position: ToastPosition,
    /// Largest command frame or body accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Seconds a session with no browser connected lives on.
    pub idle_timeout_secs: u64,
    /// Handler runs stopped by a limit, in a row, before the session is
    /// terminated (`TerminationTimeout`).
    pub max_limit_stops: u32,
    /// Bearer token external systems present to `POST /<project>/api/message`
    /// and `/api/event`; empty disables token access.
    pub api_token: String,
    /// Seconds the results of processed form submissions are kept, to
    /// answer repeated deliveries without running the handler again.
    pub submission_retention_secs: u64,
    /// Who may open the project and its pages.
    pub access: Access,
    /// Command access rules, first match wins; with any rule, what no rule
    /// allows is denied.
    pub acl: Vec<crate::acl::Rule>,
    /// Seconds a user has to answer an authentication challenge (the
    /// handler's `getTimeout()` reports it in minutes, rounded up).
    pub challenge_timeout_secs: u64,
    pub limits: Limits,
    /// Keys and key sequences the browser reports to `fn keystroke`.
    pub keystrokes: Vec<KeystrokeMatcher>,
    /// Periodic calls of `fn timer(name)`.
    pub timers: Vec<Timer>,
    /// IANA time zone (`Europe/Rome`) for dates and times in scripts and
    /// templates and for `cron` timers; empty: the server's own zone.
    pub timezone: String,
    /// The language of texts when neither the viewer nor their browser
    /// asks for one the project has.
    pub i18n_default: String,
    /// Device networks points read and write (`[[connections]]`).
    pub connections: Vec<toml::Spanned<crate::points::config::ConnectionConfig>>,
    /// The project's live values (`[[points]]`).
    pub points: Vec<toml::Spanned<crate::points::config::PointConfig>>,
}

/// A `[[keystrokes]]` entry: a single key, or a regex over the last typed
/// characters (always checked on key release).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeystrokeMatcher {
    /// Passed to the handler as `event.name`.
    pub name: String,
    /// `KeyboardEvent.key` to match (single-key mode).
    pub key: Option<String>,
    /// `KeyboardEvent.code` to match (single-key mode).
    pub code: Option<String>,
    /// `keydown` or `keyup` (single-key mode).
    #[serde(default = "default_key_event")]
    pub event: String,
    /// Modifiers: `Some(true)` must be held, `Some(false)` must not be,
    /// `None` (not named) does not matter unless `exact` is set. Shift is
    /// already in `key` ("A" is a Shift+a), so requiring it to be named
    /// would make `key = "A"` never fire.
    pub alt: Option<bool>,
    pub ctrl: Option<bool>,
    pub shift: Option<bool>,
    pub meta: Option<bool>,
    /// Modifiers not named must not be held.
    #[serde(default)]
    pub exact: bool,
    /// Listen in the capture phase, before the page's own handlers.
    #[serde(default)]
    pub capture: bool,
    #[serde(default)]
    pub prevent_default: bool,
    #[serde(default)]
    pub stop_propagation: bool,
    /// Regex mode: the pattern, valid both as a JavaScript and a Rust regex.
    pub regex: Option<String>,
    /// Regex mode: how many of the last typed characters are matched.
    pub buffer: Option<usize>,
}

fn default_key_event() -> String {
    "keydown".into()
}

/// `[access]`: a public project is open to anyone (anonymous sessions);
/// otherwise only logged-in users holding one of `roles` (or any logged-in
/// user when `roles` is empty). `pages` narrows single pages further.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Access {
    pub public: bool,
    pub roles: Vec<String>,
    /// Page name → roles that may open it.
    pub pages: BTreeMap<String, Vec<String>>,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            public: true,
            roles: Vec::new(),
            pages: BTreeMap::new(),
        }
    }
}

impl Access {
    /// Whether a user (`""`: anonymous) with `roles` may use the project.
    pub fn allows_project(&self, user: &str, roles: &[String]) -> bool {
        self.public
            || (!user.is_empty()
                && (self.roles.is_empty() || roles.iter().any(|r| self.roles.contains(r))))
    }

    /// Whether they may open `page` (project access included).
    pub fn allows_page(&self, page: &str, user: &str, roles: &[String]) -> bool {
        self.allows_project(user, roles)
            && self
                .pages
                .get(page)
                .is_none_or(|allowed| roles.iter().any(|r| allowed.contains(r)))
    }
}

/// A `[[timers]]` entry: either a period or a calendar schedule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timer {
    /// Passed to `fn timer(name)`.
    pub name: String,
    /// Run every this many milliseconds.
    pub every_ms: Option<u64>,
    /// Run at the times a cron pattern matches, in the project's time zone:
    /// `"0 30 23 * * *"` (seconds first, optional), `"@daily"`.
    pub cron: Option<String>,
}

impl Settings {
    /// The `[[connections]]` and `[[points]]` entries, without their
    /// positions in the file.
    pub fn devices(
        &self,
    ) -> (
        Vec<crate::points::config::ConnectionConfig>,
        Vec<crate::points::config::PointConfig>,
    ) {
        (
            self.connections
                .iter()
                .map(|c| c.get_ref().clone())
                .collect(),
            self.points.iter().map(|p| p.get_ref().clone()).collect(),
        )
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            title: String::new(),
            start: "home".into(),
            toast_position: ToastPosition::default(),
            // Commands carry a field value or a form's fields; 64 KiB is far
            // beyond any panel's form and small enough to refuse floods.
            max_frame_bytes: 64 * 1024,
            // One hour, as HSYCO.
            idle_timeout_secs: 3600,
            max_limit_stops: 3,
            api_token: String::new(),
            // A week: longer than any device stays offline in practice.
            submission_retention_secs: 7 * 24 * 3600,
            access: Access::default(),
            acl: Vec::new(),
            challenge_timeout_secs: 300,
            limits: Limits::default(),
            keystrokes: Vec::new(),
            timers: Vec::new(),
            timezone: String::new(),
            i18n_default: "en".into(),
            connections: Vec::new(),
            points: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToastPosition {
    #[default]
    TopRight,
    TopLeft,
    TopCenter,
    BottomRight,
    BottomLeft,
    BottomCenter,
}

/// Whether a page is a full page or a modal popup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PageKind {
    Page,
    Popup,
}

/// One error found while loading a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as a path the operator can open.
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place in the file.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Why a project could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The project folder or one of its files could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Templates, scripts or settings have errors.
    #[error("{}", list(.0))]
    Invalid(Vec<Diagnostic>),
}

impl LoadError {
    /// The error with every path made relative to the project folder
    /// `dir`: what dev mode shows in browsers.
    pub fn relative_to(&self, dir: &Path) -> String {
        let relative = |path: &Path| -> String {
            path.strip_prefix(dir)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| {
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
        };
        match self {
            LoadError::Io { path, source } => format!("{}: {}", relative(path), source.kind()),
            LoadError::Invalid(diagnostics) => diagnostics
                .iter()
                .map(|d| {
                    let message = d.message.replace(&*dir.to_string_lossy(), "");
                    format!("{}:{}:{}: {message}", relative(&d.file), d.line, d.column)
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

fn list(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A loaded, compiled project, ready to serve.
pub struct Project {
    pub name: String,
    pub dir: PathBuf,
    pub settings: Settings,
    pub templates: Tera,
    pub scripts: ScriptHost,
    /// Page name → kind; names are the template file names without `.html`.
    pub pages: BTreeMap<String, PageKind>,
    /// The compiled regex of each regex-mode keystroke matcher, by name.
    pub keystroke_patterns: BTreeMap<String, regex::Regex>,
    /// Mistakes that do not stop the project (an answer key the Command
    /// API does not know); `switchboard check` prints them.
    pub warnings: Vec<Diagnostic>,
    /// The time zone of `settings.timezone`.
    pub timezone: jiff::tz::TimeZone,
    /// The parsed pattern of each `cron` timer, by timer name.
    pub schedules: BTreeMap<String, croner::Cron>,
    /// `i18n/*.ftl` over the runtime's own texts.
    pub translations: std::sync::Arc<crate::i18n::Translations>,
}

/// Registers the functions scripts may call on a project's engine; given the
/// project's name.
pub type RegisterHost<'a> = &'a dyn Fn(&mut rhai::Engine, &str);

impl fmt::Debug for Project {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Project")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish()
    }
}

impl Project {
    /// Loads and compiles the project in `dir` (its name is the folder's
    /// name), registering the host functions on its engine: calls to
    /// functions nothing registers or defines are load errors, so the host
    /// functions must be there, bound to a server or not
    /// (`runtime::register_host_functions_unbound` for `check`).
    pub fn load_with(dir: &Path, register: RegisterHost) -> Result<Project, LoadError> {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let mut diagnostics = Vec::new();
        let settings = load_settings(dir, &name, &mut diagnostics)?;
        let timezone = crate::time::zone(&settings.timezone).unwrap_or_else(|message| {
            diagnostics.push(setting_diagnostic(dir, "timezone", message));
            jiff::tz::TimeZone::UTC
        });
        let schedules = compile_schedules(dir, &settings, &mut diagnostics);
        let translations =
            std::sync::Arc::new(load_translations(dir, &settings, &mut diagnostics)?);
        let page_files = find_pages(dir, &mut diagnostics)?;
        let templates =
            compile_templates(dir, &page_files, &timezone, &translations, &mut diagnostics)?;
        let mut warnings = Vec::new();
        let register_all = |engine: &mut rhai::Engine, project: &str| {
            register(engine, project);
            crate::time::register(engine, &timezone);
        };
        let scripts = compile_scripts(
            dir,
            &name,
            &settings.limits,
            &register_all,
            &mut diagnostics,
            &mut warnings,
        )?;
        let keystroke_patterns = compile_keystrokes(dir, &settings, &mut diagnostics);
        let pages: BTreeMap<String, PageKind> = page_files
            .iter()
            .map(|p| (p.name.clone(), p.kind))
            .collect();
        if pages.get(&settings.start) == Some(&PageKind::Popup) {
            diagnostics.push(Diagnostic {
                file: dir.join("project.toml"),
                line: 0,
                column: 0,
                message: format!(
                    "start page `{}` is a popup; the start page must be in pages/",
                    settings.start
                ),
            });
        } else if !pages.contains_key(&settings.start) {
            diagnostics.push(Diagnostic {
                file: dir.join("project.toml"),
                line: 0,
                column: 0,
                message: format!(
                    "start page `{}` has no template pages/{}.html",
                    settings.start, settings.start
                ),
            });
        }
        if let Some(templates) = &templates {
            check_pages_render(
                dir,
                &name,
                &settings,
                templates,
                &page_files,
                &mut diagnostics,
            );
        }
        match (templates, scripts) {
            (Some(templates), Some(scripts)) if diagnostics.is_empty() => Ok(Project {
                name,
                dir: dir.to_path_buf(),
                settings,
                templates,
                scripts,
                pages,
                keystroke_patterns,
                warnings,
                timezone,
                schedules,
                translations,
            }),
            _ => Err(LoadError::Invalid(diagnostics)),
        }
    }

    /// The template of a page or popup, if the project has one by that name.
    pub fn template_of(&self, page: &str) -> Option<String> {
        let kind = *self.pages.get(page)?;
        Some(template_name(page, kind))
    }

    /// Renders a whole page document; `None` when there is no such page.
    /// `view` holds what templates see besides `page` and `project`
    /// (`session`, `vars`, `ui`: the runtime's `template_view`).
    pub fn render_page(
        &self,
        page: &str,
        view: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<Result<String, tera::Error>> {
        let template = self.template_of(page)?;
        Some(
            self.templates
                .render(&template, &self.page_context(page, view)),
        )
    }

    /// Renders one block of a page (`content`, `title`) for the client to
    /// swap in without reloading; `None` when there is no such page.
    pub fn render_block(
        &self,
        page: &str,
        block: &str,
        view: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<Result<String, tera::Error>> {
        let template = self.template_of(page)?;
        Some(
            self.templates
                .render_block(&template, block, &self.page_context(page, view)),
        )
    }

    fn page_context(
        &self,
        page: &str,
        view: &serde_json::Map<String, serde_json::Value>,
    ) -> tera::Context {
        let mut context = page_context(
            &self.name,
            &self.settings,
            page,
            self.pages.get(page).copied(),
        );
        for (key, value) in view {
            context.insert(key.clone(), value);
        }
        context
    }
}

fn template_name(page: &str, kind: PageKind) -> String {
    match kind {
        PageKind::Page => format!("pages/{page}.html"),
        PageKind::Popup => format!("popups/{page}.html"),
    }
}

/// What every page template sees.
fn page_context(
    project: &str,
    settings: &Settings,
    page: &str,
    kind: Option<PageKind>,
) -> tera::Context {
    let mut context = tera::Context::new();
    context.insert(
        "project",
        &serde_json::json!({
            "name": project,
            "title": settings.title,
            "toast_position": settings.toast_position,
        }),
    );
    context.insert("page", &serde_json::json!({ "name": page, "kind": kind }));
    // What `switchboard check` renders with; the server replaces them with
    // the viewer's (see `Project::render_page`).
    context.insert("session", &serde_json::json!({ "properties": {} }));
    context.insert("vars", &serde_json::json!({}));
    context.insert("ui", &serde_json::json!({}));
    context.insert("lang", &settings.i18n_default);
    context.insert("sb_texts", "{}");
    let (connections, points) = settings.devices();
    context.insert(
        "points",
        &crate::points::config::declared_context(&connections, &points),
    );
    context
}

/// Renders every page once at load, so that errors only rendering can find
/// (a component given a wrong type, a missing block) are load errors with a
/// position instead of a 500 on the first visit.
fn check_pages_render(
    dir: &Path,
    project: &str,
    settings: &Settings,
    templates: &Tera,
    pages: &[PageFile],
    diagnostics: &mut Vec<Diagnostic>,
) {
    for page in pages {
        let context = page_context(project, settings, &page.name, Some(page.kind));
        // The client swaps in the `content` block: a page without one
        // would render as a full document and fail as a fragment.
        let rendered = templates
            .render_block(&page.template, "content", &context)
            .and_then(|_| templates.render(&page.template, &context));
        let error = match rendered {
            Ok(html) => {
                check_bindings(settings, page, &html, diagnostics);
                continue;
            }
            Err(error) => error,
        };
        if matches!(error.kind(), tera::ErrorKind::Msg(m) if m.starts_with("Block `content` not found"))
        {
            diagnostics.push(Diagnostic {
                file: page.path.clone(),
                line: 1,
                column: 1,
                message: "no `content` block: extend \"sb/layout.html\" and fill {% block content %}…{% endblock %}".into(),
            });
            continue;
        }
        for mut diagnostic in tera_error_diagnostics(dir, &error) {
            if diagnostic.line == 0 {
                diagnostic.file = page.path.clone();
            }
            diagnostics.push(diagnostic);
        }
    }
}

/// A page binding a point `project.toml` does not declare would show a
/// dash forever: a load error, at the name's first place in the page's
/// file (when it is written there and not in a shared template).
fn check_bindings(
    settings: &Settings,
    page: &PageFile,
    html: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let source = fs::read_to_string(&page.path).unwrap_or_default();
    for name in crate::points::binding::bound_points(html) {
        if settings.points.iter().any(|p| p.get_ref().name == name) {
            continue;
        }
        let (line, column) = source
            .find(&format!("\"{name}\""))
            .map_or((0, 0), |at| line_and_column(&source, at + 1));
        diagnostics.push(Diagnostic {
            file: page.path.clone(),
            line,
            column,
            message: format!("binds the point `{name}`, which project.toml does not declare"),
        });
    }
}

/// What [`load_all`] found: the projects to serve and the broken ones.
#[derive(Debug, Default)]
pub struct Loaded {
    pub projects: Vec<Project>,
    pub failed: Vec<(PathBuf, LoadError)>,
}

/// Loads every project folder under `root` (a folder holding a
/// `project.toml`). Broken projects are returned apart, with their errors.
pub fn load_all(root: &Path, register: RegisterHost) -> Result<Loaded, LoadError> {
    let mut loaded = Vec::new();
    let mut failed = Vec::new();
    for dir in sorted_entries(root)? {
        if !dir.join("project.toml").is_file() || !is_valid_project_name(&dir) {
            continue;
        }
        match Project::load_with(&dir, register) {
            Ok(project) => loaded.push(project),
            Err(error) => failed.push((dir, error)),
        }
    }
    Ok(Loaded {
        projects: loaded,
        failed,
    })
}

/// Project names become URL path segments; names starting with `_` are
/// reserved for the runtime's own routes (`/_sb/...`).
/// Top-level paths the server itself answers: no project can be named so.
const SERVER_ROUTES: [&str; 2] = ["metrics", "healthz"];

pub fn is_valid_project_name(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| is_valid_name(n) && !n.starts_with('_') && !SERVER_ROUTES.contains(&n))
}

/// Names a page cannot have: routes of the runtime, and the words `page:`
/// answers use for navigation.
const RESERVED_PAGE_NAMES: &[&str] = &[
    "api",
    "login",
    "logout",
    "back",
    "forward",
    "close",
    "close-all",
];

/// Page and project names: letters, digits, `-` and `_`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read = fs::read_dir(dir).map_err(|source| io_error(dir, source))?;
    let mut paths: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

fn io_error(path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    fs::read_to_string(path).map_err(|source| io_error(path, source))
}

fn load_settings(
    dir: &Path,
    name: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Result<Settings, LoadError> {
    let path = dir.join("project.toml");
    let text = read_text(&path)?;
    let mut settings = match toml::from_str::<Settings>(&text) {
        Ok(settings) => settings,
        Err(error) => {
            let (line, column) = error
                .span()
                .map(|s| line_and_column(&text, s.start))
                .unwrap_or((0, 0));
            diagnostics.push(Diagnostic {
                file: path.clone(),
                line,
                column,
                message: error.message().to_string(),
            });
            Settings::default()
        }
    };
    if settings.title.is_empty() {
        settings.title = name.to_string();
    }
    check_points(&path, &text, &settings, diagnostics);
    Ok(settings)
}

/// Checks `[[connections]]` and `[[points]]`, each problem at its entry's
/// line.
fn check_points(path: &Path, text: &str, settings: &Settings, diagnostics: &mut Vec<Diagnostic>) {
    use crate::points::config::{Entry, validate};
    let (connections, points) = settings.devices();
    for (entry, message) in validate(&connections, &points) {
        let span = match entry {
            Entry::Connection(index) => settings.connections[index].span(),
            Entry::Point(index) => settings.points[index].span(),
        };
        let (line, column) = line_and_column(text, span.start);
        diagnostics.push(Diagnostic {
            file: path.to_path_buf(),
            line,
            column,
            message,
        });
    }
}

/// 1-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

struct PageFile {
    name: String,
    kind: PageKind,
    template: String,
    path: PathBuf,
}

fn find_pages(dir: &Path, diagnostics: &mut Vec<Diagnostic>) -> Result<Vec<PageFile>, LoadError> {
    let mut pages: Vec<PageFile> = Vec::new();
    for (folder, kind) in [("pages", PageKind::Page), ("popups", PageKind::Popup)] {
        let folder_path = dir.join(folder);
        if !folder_path.is_dir() {
            continue;
        }
        for path in sorted_entries(&folder_path)? {
            let Some(stem) = html_stem(&path) else {
                continue;
            };
            if RESERVED_PAGE_NAMES.contains(&stem.as_str()) {
                diagnostics.push(Diagnostic {
                    file: path,
                    line: 0,
                    column: 0,
                    message: format!(
                        "`{stem}` is reserved (a route or a navigation word); rename the page"
                    ),
                });
                continue;
            }
            if !is_valid_name(&stem) {
                diagnostics.push(Diagnostic {
                    file: path,
                    line: 0,
                    column: 0,
                    message: "page names may hold only letters, digits, `-` and `_`".into(),
                });
                continue;
            }
            if pages.iter().any(|p| p.name == stem) {
                diagnostics.push(Diagnostic {
                    file: path,
                    line: 0,
                    column: 0,
                    message: format!("a page or popup named `{stem}` already exists"),
                });
                continue;
            }
            pages.push(PageFile {
                template: format!("{folder}/{stem}.html"),
                name: stem,
                kind,
                path,
            });
        }
    }
    Ok(pages)
}

fn html_stem(path: &Path) -> Option<String> {
    if path.extension()? != "html" || !path.is_file() {
        return None;
    }
    Some(path.file_stem()?.to_str()?.to_string())
}

/// Shared templates (layouts, components) under `templates/`, any depth.
fn find_shared_templates(
    dir: &Path,
    prefix: &str,
    found: &mut Vec<(String, PathBuf)>,
) -> Result<(), LoadError> {
    if !dir.is_dir() {
        return Ok(());
    }
    for path in sorted_entries(dir)? {
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if path.is_dir() {
            find_shared_templates(&path, &format!("{prefix}{file_name}/"), found)?;
        } else if file_name.ends_with(".html") {
            found.push((format!("{prefix}{file_name}"), path));
        }
    }
    Ok(())
}

fn compile_templates(
    dir: &Path,
    pages: &[PageFile],
    timezone: &jiff::tz::TimeZone,
    translations: &std::sync::Arc<crate::i18n::Translations>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Result<Option<Tera>, LoadError> {
    let mut sources: Vec<(String, PathBuf, String)> = Vec::new();
    let mut shared = Vec::new();
    find_shared_templates(&dir.join("templates"), "templates/", &mut shared)?;
    for (name, path) in shared
        .into_iter()
        .chain(pages.iter().map(|p| (p.template.clone(), p.path.clone())))
    {
        let text = read_text(&path)?;
        sources.push((name, path, text));
    }
    // Each file is parsed on its own first so a syntax error is reported
    // against its own file; inheritance is checked once all are present.
    let before = diagnostics.len();
    for (name, path, text) in &sources {
        if let Err(error) = Tera::new().add_raw_template(name, text)
            && let tera::ErrorKind::SyntaxError(report) = error.kind()
        {
            diagnostics.push(template_diagnostic(path, report, Some(text)));
        }
    }
    if diagnostics.len() > before {
        return Ok(None);
    }
    let mut tera = builtin_templates();
    crate::time::register_filters(&mut tera, timezone);
    register_translation(&mut tera, translations);
    let all = sources
        .iter()
        .map(|(name, _, text)| (name.as_str(), text.as_str()));
    match tera.add_raw_templates(all) {
        Ok(()) => Ok(Some(tera)),
        Err(error) => {
            diagnostics.extend(tera_error_diagnostics(dir, &error));
            Ok(None)
        }
    }
}

/// A Tera instance holding only the runtime's own templates.
pub fn builtin_templates() -> Tera {
    let mut tera = Tera::new();
    tera.add_raw_templates(BUILTIN_TEMPLATES.iter().copied())
        .expect("built-in templates compile (checked by a unit test)");
    tera
}

/// A Tera report as a diagnostic. Tera says only "Unknown tag" for a
/// misspelt tag; with the template's `source` the tag is named.
fn template_diagnostic(
    path: &Path,
    report: &tera::ReportError,
    source: Option<&str>,
) -> Diagnostic {
    let span = report.span();
    let mut message = report.message().to_string();
    if message == "Unknown tag"
        && let Some(tag) = source.and_then(|text| word_at(text, span.range.start))
    {
        message = format!("Unknown tag `{tag}`");
    }
    Diagnostic {
        file: path.to_path_buf(),
        line: span.start_line,
        column: span.start_col + 1,
        message,
    }
}

/// The identifier starting at (or just after) `offset`.
fn word_at(text: &str, offset: usize) -> Option<&str> {
    let rest = text
        .get(offset..)?
        .trim_start_matches(|c: char| !c.is_alphanumeric() && c != '_');
    let end = rest
        .find(|c: char| !c.is_alphanumeric() && c != '_')
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// Every error a Tera error holds, each placed in its own file. Tera
/// gathers the checks of a whole template set (unknown components,
/// filters, includes, blocks) into one message of formatted reports; those
/// are taken apart here.
fn tera_error_diagnostics(dir: &Path, error: &tera::Error) -> Vec<Diagnostic> {
    match error.kind() {
        tera::ErrorKind::SyntaxError(report) | tera::ErrorKind::RenderingError(report) => {
            let path = dir.join(report.filename());
            let source = fs::read_to_string(&path).ok();
            vec![template_diagnostic(&path, report, source.as_deref())]
        }
        tera::ErrorKind::MissingParent { current, .. }
        | tera::ErrorKind::CircularExtend { tpl: current, .. } => vec![Diagnostic {
            file: dir.join(current),
            line: 1,
            column: 1,
            message: error.to_string(),
        }],
        _ => {
            let text = error.to_string();
            let reports = parse_reports(dir, &text);
            if reports.is_empty() {
                vec![Diagnostic {
                    file: dir.to_path_buf(),
                    line: 0,
                    column: 0,
                    message: text,
                }]
            } else {
                reports
            }
        }
    }
}

/// Reads Tera's formatted reports (`error: <message>` then
/// ` --> <template>:<line>:<col>`) back into diagnostics.
fn parse_reports(dir: &Path, text: &str) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut message: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("error: ") {
            message = Some(rest);
        } else if let Some(place) = line.trim_start().strip_prefix("--> ")
            && let Some(current) = message.take()
        {
            let mut parts = place.rsplitn(3, ':');
            let column = parts.next().and_then(|c| c.trim().parse().ok());
            let line_number = parts.next().and_then(|l| l.trim().parse().ok());
            if let (Some(column), Some(line_number), Some(file)) =
                (column, line_number, parts.next())
            {
                diagnostics.push(Diagnostic {
                    file: dir.join(file.trim()),
                    line: line_number,
                    column,
                    message: current.to_string(),
                });
            }
        }
    }
    diagnostics
}

/// `{{ t(key="room-title") }}` and `{{ "room-title" | t(name="Ann") }}`:
/// the text in the viewer's language (`lang` in the context); other
/// keyword arguments are the Fluent arguments.
fn register_translation(tera: &mut Tera, translations: &std::sync::Arc<crate::i18n::Translations>) {
    fn translate(
        translations: &crate::i18n::Translations,
        key: &str,
        kwargs: &tera::Kwargs,
        state: &tera::State,
    ) -> tera::TeraResult<String> {
        let language: String = state.get("lang")?.unwrap_or_default();
        let mut args = serde_json::Map::new();
        for (name, value) in kwargs.iter() {
            if let Some(name) = name.as_str().filter(|n| *n != "key") {
                args.insert(
                    name.to_string(),
                    serde_json::to_value(value).unwrap_or_default(),
                );
            }
        }
        let args = crate::i18n::args_from(&args);
        Ok(translations.text_or_key(&language, key, Some(&args)))
    }
    let for_function = translations.clone();
    tera.register_function("t", move |kwargs: tera::Kwargs, state: &tera::State| {
        let key: String = kwargs.must_get("key")?;
        translate(&for_function, &key, &kwargs, state)
    });
    let for_filter = translations.clone();
    tera.register_filter(
        "t",
        move |key: String, kwargs: tera::Kwargs, state: &tera::State| {
            translate(&for_filter, &key, &kwargs, state)
        },
    );
}

/// The project's `i18n/<language>.ftl` files over the runtime's texts.
fn load_translations(
    dir: &Path,
    settings: &Settings,
    diagnostics: &mut Vec<Diagnostic>,
) -> Result<crate::i18n::Translations, LoadError> {
    let folder = dir.join("i18n");
    let mut files = Vec::new();
    if folder.is_dir() {
        for path in sorted_entries(&folder)? {
            if path.extension().is_none_or(|e| e != "ftl") || !path.is_file() {
                continue;
            }
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            let Ok(language) = stem.parse::<unic_langid::LanguageIdentifier>() else {
                diagnostics.push(Diagnostic {
                    file: path.clone(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "`{stem}` is not a language tag; name the file like en.ftl or pt-BR.ftl"
                    ),
                });
                continue;
            };
            let text = read_text(&path)?;
            match crate::i18n::parse(&text) {
                Ok(resource) => files.push((language, resource)),
                Err(errors) => diagnostics.extend(errors.into_iter().map(|error| {
                    let (line, column) = line_and_column(&text, error.offset);
                    Diagnostic {
                        file: path.clone(),
                        line,
                        column,
                        message: error.message,
                    }
                })),
            }
        }
    }
    // With translations of its own, the project must have the default
    // language's: it is what a viewer gets when nothing else matches, and
    // without it they would see message ids.
    let has_default = files
        .iter()
        .any(|(language, _)| language.to_string() == settings.i18n_default);
    let needs_default = !files.is_empty() && !has_default;
    let translations = crate::i18n::Translations::new(files, &settings.i18n_default);
    if needs_default || !translations.languages().any(|l| l == settings.i18n_default) {
        diagnostics.push(setting_diagnostic(
            dir,
            "i18n_default",
            format!(
                "i18n_default `{}` has no translations (i18n/{}.ftl)",
                settings.i18n_default, settings.i18n_default
            ),
        ));
    }
    Ok(translations)
}

/// An error in a setting of `project.toml`, placed on the line that sets it.
fn setting_diagnostic(dir: &Path, key: &str, message: String) -> Diagnostic {
    let path = dir.join("project.toml");
    let text = fs::read_to_string(&path).unwrap_or_default();
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with(key))
        .map_or(0, |index| index + 1);
    Diagnostic {
        file: path,
        line,
        column: usize::from(line > 0),
        message,
    }
}

/// Checks the `[[timers]]` entries and parses their cron patterns.
fn compile_schedules(
    dir: &Path,
    settings: &Settings,
    diagnostics: &mut Vec<Diagnostic>,
) -> BTreeMap<String, croner::Cron> {
    let mut schedules = BTreeMap::new();
    for timer in &settings.timers {
        let problem = match (&timer.every_ms, &timer.cron) {
            (Some(_), None) => None,
            (None, Some(pattern)) => match crate::time::parse_cron(pattern) {
                Ok(cron) => {
                    schedules.insert(timer.name.clone(), cron);
                    None
                }
                Err(error) => Some(format!("timer `{}`: cron {pattern:?}: {error}", timer.name)),
            },
            _ => Some(format!(
                "timer `{}`: give either `every_ms` or `cron`",
                timer.name
            )),
        };
        if let Some(message) = problem {
            diagnostics.push(setting_diagnostic(dir, "[[timers]]", message));
        }
    }
    schedules
}

/// Checks the keystroke matchers and compiles their regexes.
fn compile_keystrokes(
    dir: &Path,
    settings: &Settings,
    diagnostics: &mut Vec<Diagnostic>,
) -> BTreeMap<String, regex::Regex> {
    let mut patterns = BTreeMap::new();
    let mut problem = |message: String| {
        diagnostics.push(Diagnostic {
            file: dir.join("project.toml"),
            line: 0,
            column: 0,
            message,
        })
    };
    for matcher in &settings.keystrokes {
        let single = matcher.key.is_some() || matcher.code.is_some();
        match (&matcher.regex, single) {
            (Some(_), true) | (None, false) => problem(format!(
                "keystroke `{}`: give either `key`/`code` or `regex`",
                matcher.name
            )),
            (Some(pattern), false) => match regex::Regex::new(pattern) {
                Ok(regex) if matcher.buffer.is_some_and(|b| b > 0) => {
                    patterns.insert(matcher.name.clone(), regex);
                }
                Ok(_) => problem(format!(
                    "keystroke `{}`: a regex needs `buffer` (characters kept)",
                    matcher.name
                )),
                Err(error) => problem(format!("keystroke `{}`: {error}", matcher.name)),
            },
            (None, true) if !matches!(matcher.event.as_str(), "keydown" | "keyup") => {
                problem(format!(
                    "keystroke `{}`: event must be keydown or keyup",
                    matcher.name
                ))
            }
            (None, true) => {}
        }
    }
    patterns
}

/// The `*.rhai` files of one folder of the project, named by their path
/// inside it (`events/10-main.rhai`), in file-name order.
fn rhai_files(dir: &Path, folder: &str) -> Result<Vec<SourceFile>, LoadError> {
    let path = dir.join(folder);
    let mut files = Vec::new();
    if !path.is_dir() {
        return Ok(files);
    }
    for path in sorted_entries(&path)? {
        if path.extension().is_some_and(|e| e == "rhai") && path.is_file() {
            let name = format!(
                "{folder}/{}",
                path.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
            );
            files.push(SourceFile {
                name,
                text: read_text(&path)?,
            });
        }
    }
    Ok(files)
}

fn compile_scripts(
    dir: &Path,
    project: &str,
    limits: &Limits,
    register: RegisterHost,
    diagnostics: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) -> Result<Option<ScriptHost>, LoadError> {
    let lib = rhai_files(dir, "lib")?;
    let files = rhai_files(dir, "events")?;
    let placed = |e: script::CompileError| Diagnostic {
        file: dir.join(&e.file),
        line: e.line,
        column: e.column,
        message: e.message,
    };
    match ScriptHost::compile_project(project, lib, files, limits, |engine| {
        register(engine, project)
    }) {
        Ok(compiled) => {
            warnings.extend(compiled.warnings.into_iter().map(placed));
            Ok(Some(compiled.host))
        }
        Err(errors) => {
            diagnostics.extend(errors.into_iter().map(placed));
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_routes_are_not_project_names() {
        for name in ["metrics", "healthz", "_private", "a b"] {
            assert!(!is_valid_project_name(Path::new(name)), "{name}");
        }
        assert!(is_valid_project_name(Path::new("/srv/projects/lobby-2")));
    }

    #[test]
    fn builtin_templates_compile() {
        let tera = builtin_templates();
        assert!(tera.get_template_names().any(|n| n == "sb/layout.html"));
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn names() {
        assert!(is_valid_name("home-2_a"));
        assert!(!is_valid_name("../x"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
    }
}
