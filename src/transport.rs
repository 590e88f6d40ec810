//! The actix routes: pages, the HTTP command endpoint, the WebSocket, and
//! downloads. Thin by design: parse the request, find the project and the
//! session, call into [`session`], serialize what comes back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, warn};

use crate::project::Project;
use crate::protocol::{self, ClientFrame, Rejection, Reply};
use crate::session::{self, DownloadError, Session, Sessions};

/// The session cookie; scoped to the project's path, so each project has its own.
pub const SESSION_COOKIE: &str = "sb_session";

/// Largest WebSocket message the codec accepts at all. Anything between the
/// project's `max_frame_bytes` and this is answered with a rejection and the
/// connection stays open; past it, the connection is closed (1009).
const HARD_FRAME_LIMIT: usize = 1 << 20;

/// actix-ws sends no heartbeat of its own: ping this often, and drop a
/// connection that has sent nothing (not even a pong) for `IDLE_CUTOFF`.
const PING_INTERVAL: Duration = Duration::from_secs(20);
const IDLE_CUTOFF: Duration = Duration::from_secs(60);

/// Frames of one connection waiting for their turn; they run in order.
const PENDING_FRAMES: usize = 64;

/// Shared by every worker.
pub struct AppState {
    projects: HashMap<String, Arc<Project>>,
    pub sessions: Sessions,
    shutdown: watch::Sender<bool>,
}

impl AppState {
    pub fn new(projects: Vec<Project>) -> AppState {
        AppState {
            projects: projects
                .into_iter()
                .map(|p| (p.name.clone(), Arc::new(p)))
                .collect(),
            sessions: Sessions::default(),
            shutdown: watch::channel(false).0,
        }
    }

    fn project(&self, name: &str) -> Result<Arc<Project>, RequestError> {
        self.projects
            .get(name)
            .cloned()
            .ok_or(RequestError::ProjectNotFound)
    }

    /// Tells every WebSocket connection to close.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No project by that name is served.
    #[error("no such project")]
    ProjectNotFound,
    /// The project has no page by that name.
    #[error("no such page")]
    PageNotFound,
    /// The request carries no live session of this project.
    #[error("no session: load a page of the project or POST /<project>/api/session first")]
    NoSession,
    /// The `Origin` header names another site.
    #[error("cross-origin request refused")]
    ForbiddenOrigin,
    /// The body was not a valid frame.
    #[error("{}", .0.reason)]
    Rejected(Rejection),
    /// The body was larger than the project allows.
    #[error("{}", .0.reason)]
    TooLarge(Rejection),
    /// The download produced no file.
    #[error(transparent)]
    Download(#[from] DownloadError),
    /// The WebSocket handshake failed.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    /// A template failed to render (details logged).
    #[error("the page could not be rendered")]
    Render,
}

impl ResponseError for RequestError {
    fn status_code(&self) -> StatusCode {
        match self {
            RequestError::ProjectNotFound | RequestError::PageNotFound => StatusCode::NOT_FOUND,
            RequestError::NoSession => StatusCode::UNAUTHORIZED,
            RequestError::ForbiddenOrigin => StatusCode::FORBIDDEN,
            RequestError::Rejected(_) | RequestError::Handshake(_) => StatusCode::BAD_REQUEST,
            RequestError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::Download(DownloadError::NotHandled | DownloadError::FileNotAvailable) => {
                StatusCode::NOT_FOUND
            }
            RequestError::Download(DownloadError::BadAnswer(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            RequestError::Download(DownloadError::Failed(_)) | RequestError::Render => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let seq = match self {
            RequestError::Rejected(rejection) | RequestError::TooLarge(rejection) => rejection.seq,
            _ => None,
        };
        HttpResponse::build(self.status_code()).json(Rejection::new(seq, self.to_string()))
    }
}

/// Mounts every route.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .app_data(web::PayloadConfig::new(HARD_FRAME_LIMIT))
        .route("/", web::get().to(index))
        .route("/_sb/{file}", web::get().to(asset))
        .route("/{project}", web::get().to(project_root_redirect))
        .route("/{project}/", web::get().to(start_page))
        .route("/{project}/api/session", web::post().to(create_session))
        .route("/{project}/api/command", web::post().to(http_command))
        .route("/{project}/api/ws", web::get().to(websocket))
        .route("/{project}/api/download", web::get().to(download))
        .route("/{project}/api/page/{page}", web::get().to(page_fragment))
        .route("/{project}/{page}", web::get().to(page));
}

// ---------------------------------------------------------------- pages

async fn index(state: web::Data<AppState>) -> HttpResponse {
    let mut names: Vec<&String> = state.projects.keys().collect();
    names.sort();
    let items: String = names
        .iter()
        // Project names are letters, digits, `-` and `_` (see `project`): no escaping needed.
        .map(|name| format!("<li><a href=\"/{name}/\">{name}</a></li>"))
        .collect();
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><html lang=en><meta charset=utf-8><title>Switchboard</title>\
             <link rel=stylesheet href=/_sb/switchboard.css><body class=sb-index><h1>Projects</h1><ul>{items}</ul></body></html>"
        ))
}

async fn asset(file: web::Path<String>) -> HttpResponse {
    let (body, content_type) = match file.as_str() {
        "switchboard.js" => (
            include_str!("../web/switchboard.js"),
            "text/javascript; charset=utf-8",
        ),
        "switchboard.css" => (
            include_str!("../web/switchboard.css"),
            "text/css; charset=utf-8",
        ),
        _ => return HttpResponse::NotFound().finish(),
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn project_root_redirect(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, RequestError> {
    let project = state.project(&name)?;
    Ok(HttpResponse::MovedPermanently()
        .insert_header((header::LOCATION, format!("/{}/", project.name)))
        .finish())
}

async fn start_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, RequestError> {
    let project = state.project(&name)?;
    let start = project.settings.start.clone();
    render_page(&req, &state, project, &start)
}

async fn page(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, RequestError> {
    let (name, page) = path.into_inner();
    let project = state.project(&name)?;
    render_page(&req, &state, project, &page)
}

fn render_page(
    req: &HttpRequest,
    state: &AppState,
    project: Arc<Project>,
    page: &str,
) -> Result<HttpResponse, RequestError> {
    let rendered = project
        .render_page(page)
        .ok_or(RequestError::PageNotFound)?;
    let html = rendered.map_err(|error| render_failed(&project, page, error))?;
    let mut response = HttpResponse::Ok();
    response.content_type("text/html; charset=utf-8");
    if session_of(req, state, &project.name).is_none() {
        let session = state.sessions.create(&project.name, "");
        response.cookie(session_cookie(&project.name, &session));
    }
    Ok(response.body(html))
}

/// A page's `content` block alone, for the client to swap in (pages) or show
/// in a modal (popups) without reloading the document.
async fn page_fragment(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, RequestError> {
    let (name, page) = path.into_inner();
    let project = state.project(&name)?;
    require_session(&req, &state, &project.name)?;
    let rendered = project
        .render_block(&page, "content")
        .ok_or(RequestError::PageNotFound)?;
    let html = rendered.map_err(|error| render_failed(&project, &page, error))?;
    let title = match project.render_block(&page, "title") {
        Some(Ok(title)) => title.trim().to_string(),
        _ => project.settings.title.clone(),
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "name": page,
        "kind": project.pages.get(&page),
        "title": title,
        "html": html,
    })))
}

fn render_failed(project: &Project, page: &str, error: tera::Error) -> RequestError {
    error!(project = %project.name, page, "rendering failed: {error}");
    RequestError::Render
}

// ---------------------------------------------------------------- sessions

fn session_cookie(project: &str, session: &Session) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, session.id.clone())
        .path(format!("/{project}"))
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish()
}

fn session_of(req: &HttpRequest, state: &AppState, project: &str) -> Option<Arc<Session>> {
    let cookie = req.cookie(SESSION_COOKIE)?;
    state.sessions.get(cookie.value(), project)
}

fn require_session(
    req: &HttpRequest,
    state: &AppState,
    project: &str,
) -> Result<Arc<Session>, RequestError> {
    session_of(req, state, project).ok_or(RequestError::NoSession)
}

/// Starts a session, or confirms the caller's one is still live (the
/// browser runtime asks before reconnecting, e.g. after a server restart).
async fn create_session(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, RequestError> {
    let project = state.project(&name)?;
    check_origin(&req)?;
    if session_of(&req, &state, &project.name).is_some() {
        return Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ok", "resumed": true })));
    }
    let session = state.sessions.create(&project.name, "");
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&project.name, &session))
        .json(serde_json::json!({ "status": "ok", "resumed": false })))
}

/// A request from a browser carries `Origin`; it must name this server.
/// Requests without it (non-browser clients) pass: they cannot ride on a
/// user's cookies.
fn check_origin(req: &HttpRequest) -> Result<(), RequestError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let host = req.connection_info().host().to_string();
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    if origin_host.is_some_and(|o| o.eq_ignore_ascii_case(&host)) {
        Ok(())
    } else {
        warn!(origin = ?origin, host, "cross-origin request refused");
        Err(RequestError::ForbiddenOrigin)
    }
}

// ---------------------------------------------------------------- commands

async fn http_command(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, RequestError> {
    let project = state.project(&name)?;
    check_origin(&req)?;
    let session = require_session(&req, &state, &project.name)?;
    let limit = project.settings.max_frame_bytes;
    if body.len() > limit {
        return Err(RequestError::TooLarge(Rejection::new(
            None,
            format!(
                "body of {} bytes exceeds the limit of {limit} bytes",
                body.len()
            ),
        )));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| RequestError::Rejected(Rejection::new(None, "malformed frame: not UTF-8")))?;
    let frame = protocol::parse_frame(text, limit).map_err(RequestError::Rejected)?;
    Ok(HttpResponse::Ok().json(dispatch(project, session, frame).await))
}

/// Runs one frame; the single place that knows which frame does what.
async fn dispatch(project: Arc<Project>, session: Arc<Session>, frame: ClientFrame) -> Reply {
    match frame {
        ClientFrame::Command(command) => session::run_command(project, session, command).await,
        ClientFrame::PageClosed(closed) => session::page_closed(project, session, closed).await,
    }
}

#[derive(Debug, Deserialize)]
struct DownloadQuery {
    name: String,
    #[serde(default)]
    parameter: String,
}

async fn download(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: web::Path<String>,
    query: web::Query<DownloadQuery>,
) -> Result<HttpResponse, RequestError> {
    let project = state.project(&name)?;
    let session = require_session(&req, &state, &project.name)?;
    let query = query.into_inner();
    let file = session::run_download(project, session, query.name, query.parameter).await?;
    let disposition = ContentDisposition {
        disposition: DispositionType::Attachment,
        parameters: vec![DispositionParam::Filename(file.filename)],
    };
    Ok(HttpResponse::Ok()
        .content_type(file.content_type)
        .insert_header(disposition)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(file.body))
}

// ---------------------------------------------------------------- WebSocket

async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, RequestError> {
    let project = state.project(&name)?;
    // actix-ws does not check Origin: without this, any site could open a
    // socket riding on the user's cookie (cross-site WebSocket hijacking).
    check_origin(&req)?;
    let session = require_session(&req, &state, &project.name)?;
    let (response, ws, stream) =
        actix_ws::handle(&req, body).map_err(|e| RequestError::Handshake(e.to_string()))?;
    let stream = stream
        .max_frame_size(HARD_FRAME_LIMIT)
        .aggregate_continuations()
        .max_continuation_size(HARD_FRAME_LIMIT);
    let shutdown = state.shutdown.subscribe();
    actix_web::rt::spawn(serve_connection(project, session, ws, stream, shutdown));
    Ok(response)
}

/// Reads frames until the client leaves, the heartbeat lapses or the server
/// stops. Frames run one after the other on a worker task so that a slow
/// handler never stops this loop from answering pings or noticing a close.
async fn serve_connection(
    project: Arc<Project>,
    session: Arc<Session>,
    mut ws: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    mut shutdown: watch::Receiver<bool>,
) {
    let (frames, pending) = mpsc::channel::<ClientFrame>(PENDING_FRAMES);
    let worker = actix_web::rt::spawn(run_frames(
        project.clone(),
        session.clone(),
        ws.clone(),
        pending,
    ));
    let mut heartbeat = actix_web::rt::time::interval_at(
        actix_web::rt::time::Instant::now() + PING_INTERVAL,
        PING_INTERVAL,
    );
    let mut last_heard = Instant::now();
    let limit = project.settings.max_frame_bytes;
    let close_reason = loop {
        tokio::select! {
            message = stream.recv() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(AggregatedMessage::Text(text))) => match protocol::parse_frame(&text, limit) {
                        Ok(frame) => {
                            if frames.send(frame).await.is_err() {
                                break None;
                            }
                        }
                        Err(rejection) => {
                            debug!(session = session.log_id(), "rejected frame: {}", rejection.reason);
                            if send_json(&mut ws, &rejection).await.is_err() {
                                break None;
                            }
                        }
                    },
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        let rejection = Rejection::new(None, "binary frames are not supported; send JSON text");
                        if send_json(&mut ws, &rejection).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        if ws.pong(&bytes).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Ok(AggregatedMessage::Close(_))) | None => break None,
                    Some(Err(error)) => {
                        warn!(session = session.log_id(), "WebSocket protocol error: {error}");
                        break Some(CloseReason { code: CloseCode::Size, description: Some(error.to_string()) });
                    }
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > IDLE_CUTOFF {
                    break Some(CloseReason { code: CloseCode::Away, description: Some("heartbeat lapsed".into()) });
                }
                if ws.ping(b"").await.is_err() {
                    break None;
                }
            }
            _ = shutdown.wait_for(|stopping| *stopping) => {
                break Some(CloseReason { code: CloseCode::Away, description: Some("server stopping".into()) });
            }
        }
    };
    drop(frames);
    if close_reason.is_some() {
        worker.abort();
    }
    let _ = ws.close(close_reason).await;
}

async fn run_frames(
    project: Arc<Project>,
    session: Arc<Session>,
    mut ws: actix_ws::Session,
    mut pending: mpsc::Receiver<ClientFrame>,
) {
    while let Some(frame) = pending.recv().await {
        let reply = dispatch(project.clone(), session.clone(), frame).await;
        if send_json(&mut ws, &reply).await.is_err() {
            break;
        }
    }
}

async fn send_json(
    ws: &mut actix_ws::Session,
    value: &impl serde::Serialize,
) -> Result<(), actix_ws::Closed> {
    match serde_json::to_string(value) {
        Ok(text) => ws.text(text).await,
        Err(error) => {
            error!("could not serialize a reply: {error}");
            Ok(())
        }
    }
}
