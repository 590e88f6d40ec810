//! The actix routes: pages, the HTTP command endpoint, the WebSocket,
//! downloads, and the endpoints external systems use (messages, device
//! events). Thin by design: parse the request, find the project and the
//! session, call into [`runtime`], serialize what comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

mod login;

use crate::metrics::METRICS;

use crate::project::Project;
use crate::protocol::{self, ClientFrame, Push, Rejection};
use crate::runtime::{self, DownloadError, Runtime};
use crate::session::{Frame, Session};

/// Web settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// Origins allowed besides the server's own host.
    pub allowed_origins: Vec<String>,
    /// Mark cookies `Secure` (served over TLS).
    pub secure_cookies: bool,
}

/// Headers on every response. The CSP allows no inline script: everything
/// the runtime runs comes from `/_sb/`, so injected markup cannot run code.
pub fn security_headers(frame_ancestors: &str) -> actix_web::middleware::DefaultHeaders {
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
         media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; \
         frame-ancestors {frame_ancestors}"
    );
    let mut headers = actix_web::middleware::DefaultHeaders::new()
        .add((header::CONTENT_SECURITY_POLICY, csp))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "same-origin"));
    // Old browsers ignore frame-ancestors; X-Frame-Options can only say
    // "same origin", so it is sent only when that is the setting.
    if frame_ancestors.trim() == "'self'" {
        headers = headers.add((header::X_FRAME_OPTIONS, "SAMEORIGIN"));
    }
    headers
}

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

/// Pushed frames waiting to be written to one connection. A browser that
/// falls this far behind misses pushes (it gets current UI state again on
/// reconnect) rather than holding memory for everyone.
const PUSH_QUEUE: usize = 256;

type State = web::Data<Runtime>;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The project or page needs a logged-in user.
    #[error("sign in first")]
    LoginRequired,
    /// The user's roles do not open this project or page.
    #[error("you may not open this")]
    Forbidden,
    /// No open challenge has that id (answered, expired, or another session's).
    #[error("no such authentication challenge")]
    UnknownChallenge,
    /// No project by that name is served.
    #[error("no such project")]
    ProjectNotFound,
    /// The project has no page by that name.
    #[error("no such page")]
    PageNotFound,
    /// The request carries no live session of this project.
    #[error("no session: load a page of the project or POST /<project>/api/session first")]
    NoSession,
    /// The bearer token is missing or wrong.
    #[error("a valid API token is required")]
    BadToken,
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
            RequestError::NoSession | RequestError::BadToken | RequestError::LoginRequired => {
                StatusCode::UNAUTHORIZED
            }
            RequestError::Forbidden => StatusCode::FORBIDDEN,
            RequestError::UnknownChallenge => StatusCode::NOT_FOUND,
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
        .app_data(web::QueryConfig::default().error_handler(|error, _| {
            RequestError::Rejected(Rejection::new(None, format!("bad query: {error}"))).into()
        }))
        .route("/", web::get().to(index))
        .route("/_sb/{file}", web::get().to(asset))
        .route("/metrics", web::get().to(metrics))
        .route("/{project}", web::get().to(project_root_redirect))
        .route("/{project}/", web::get().to(start_page))
        .route("/{project}/api/session", web::post().to(create_session))
        .route("/{project}/api/command", web::post().to(http_command))
        .route("/{project}/api/ws", web::get().to(websocket))
        .route("/{project}/api/download", web::get().to(download))
        .route("/{project}/api/page/{page}", web::get().to(page_fragment))
        .route("/{project}/api/message", web::post().to(message))
        .route("/{project}/api/event", web::post().to(device_event))
        .route("/{project}/static/{file:.*}", web::get().to(static_file))
        .configure(login::routes)
        .route("/{project}/{page}", web::get().to(page));
}

fn project_of(state: &Runtime, name: &str) -> Result<Arc<Project>, RequestError> {
    state.project(name).ok_or(RequestError::ProjectNotFound)
}

// ---------------------------------------------------------------- pages

async fn index(state: State) -> HttpResponse {
    let items: String = state
        .project_names()
        .iter()
        // Project names are letters, digits, `-` and `_` (see `project`): no escaping needed.
        .map(|name| format!("<li><a href=\"/{name}/\">{name}</a></li>"))
        .collect();
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(format!(
        "<!doctype html><html lang=en><meta charset=utf-8><title>Switchboard</title>\
         <link rel=stylesheet href=/_sb/switchboard.css><body class=sb-index><h1>Projects</h1><ul>{items}</ul></body></html>"
    ))
}

/// Prometheus metrics. They reveal counts, not content; an operator who
/// wants them private filters `/metrics` at the reverse proxy.
async fn metrics(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(METRICS.render(state.sessions.len()))
}

async fn asset(file: web::Path<String>) -> HttpResponse {
    let (body, content_type) = match file.as_str() {
        "switchboard.js" => (
            include_str!("../../web/switchboard.js"),
            "text/javascript; charset=utf-8",
        ),
        "switchboard.css" => (
            include_str!("../../web/switchboard.css"),
            "text/css; charset=utf-8",
        ),
        _ => return HttpResponse::NotFound().finish(),
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// A project's own assets (stylesheets, images) from its `static/` folder.
/// Public like the runtime's assets: pages need them before anyone signs in.
async fn static_file(
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, RequestError> {
    let (name, file) = path.into_inner();
    let project = project_of(&state, &name)?;
    let path = runtime::resolve_inside(&project.dir.join("static"), &file)
        .ok_or(RequestError::PageNotFound)?;
    let body = tokio::fs::read(&path)
        .await
        .map_err(|_| RequestError::PageNotFound)?;
    let content_type = mime_guess::from_path(&path).first_or_octet_stream();
    Ok(HttpResponse::Ok()
        .content_type(content_type.essence_str())
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body))
}

async fn project_root_redirect(
    state: State,
    name: web::Path<String>,
) -> Result<HttpResponse, RequestError> {
    let project = project_of(&state, &name)?;
    Ok(HttpResponse::MovedPermanently()
        .insert_header((header::LOCATION, format!("/{}/", project.name)))
        .finish())
}

async fn start_page(
    req: HttpRequest,
    state: State,
    name: web::Path<String>,
) -> Result<HttpResponse, RequestError> {
    let project = project_of(&state, &name)?;
    let start = project.settings.start.clone();
    render_page(&req, &state, project, &start)
}

async fn page(
    req: HttpRequest,
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, RequestError> {
    let (name, page) = path.into_inner();
    let project = project_of(&state, &name)?;
    render_page(&req, &state, project, &page)
}

/// What templates see as `session`.
fn template_session(session: &Session) -> serde_json::Value {
    serde_json::json!({ "properties": session.with_state(|state| state.properties.clone()) })
}

fn render_page(
    req: &HttpRequest,
    state: &Runtime,
    project: Arc<Project>,
    page: &str,
) -> Result<HttpResponse, RequestError> {
    if !project.pages.contains_key(page) {
        return Err(RequestError::PageNotFound);
    }
    let (session, is_new) = match session_of(req, state, &project.name) {
        Some(session) => (session, false),
        None => (state.start_session(&project, ""), true),
    };
    match login::authorize(state, &project, &session, Some(page)) {
        Ok(()) => {}
        Err(RequestError::LoginRequired) => {
            let mut redirect = login::login_redirect(&project, page);
            if is_new {
                let _ = redirect.add_cookie(&session_cookie(
                    &project.name,
                    &session,
                    secure_cookies(req),
                ));
            }
            return Ok(redirect);
        }
        Err(error) => return Err(error),
    }
    let rendered = project
        .render_page(page, &template_session(&session))
        .ok_or(RequestError::PageNotFound)?;
    let html = rendered.map_err(|error| render_failed(&project, page, error))?;
    let mut response = HttpResponse::Ok();
    response.content_type("text/html; charset=utf-8");
    if is_new {
        response.cookie(session_cookie(&project.name, &session, secure_cookies(req)));
    }
    Ok(response.body(html))
}

/// A page's `content` block alone, for the client to swap in (pages) or show
/// in a modal (popups) without reloading the document.
async fn page_fragment(
    req: HttpRequest,
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, RequestError> {
    let (name, page) = path.into_inner();
    let (project, session) = authorized(&req, &state, &name, Some(&page))?;
    let context = template_session(&session);
    let rendered = project
        .render_block(&page, "content", &context)
        .ok_or(RequestError::PageNotFound)?;
    let html = rendered.map_err(|error| render_failed(&project, &page, error))?;
    let title = match project.render_block(&page, "title", &context) {
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

fn session_cookie(project: &str, session: &Session, secure: bool) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, session.id.clone())
        .path(format!("/{project}"))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .finish()
}

fn secure_cookies(req: &HttpRequest) -> bool {
    req.app_data::<web::Data<WebConfig>>()
        .is_some_and(|c| c.secure_cookies)
}

/// The request's live session; any request with it counts as activity
/// (an HTTP-only client is not idle while it keeps sending).
fn session_of(req: &HttpRequest, state: &Runtime, project: &str) -> Option<Arc<Session>> {
    let cookie = req.cookie(SESSION_COOKIE)?;
    let session = state.sessions.get(cookie.value(), project)?;
    session.touch();
    Some(session)
}

/// The project and the caller's session, after every check an API call
/// needs: the project exists, a browser's `Origin` is this server's (any
/// site could otherwise ride on the user's cookie — actix-ws does not check
/// it for WebSockets either), the session is live, and its user may use the
/// project (and `page`).
fn authorized(
    req: &HttpRequest,
    state: &Runtime,
    name: &str,
    page: Option<&str>,
) -> Result<(Arc<Project>, Arc<Session>), RequestError> {
    let project = project_of(state, name)?;
    check_origin(req)?;
    let session = require_session(req, state, &project.name)?;
    login::authorize(state, &project, &session, page)?;
    Ok((project, session))
}

fn require_session(
    req: &HttpRequest,
    state: &Runtime,
    project: &str,
) -> Result<Arc<Session>, RequestError> {
    session_of(req, state, project).ok_or(RequestError::NoSession)
}

/// Starts a session, or confirms the caller's one is still live (the
/// browser runtime asks before reconnecting, e.g. after a server restart).
async fn create_session(
    req: HttpRequest,
    state: State,
    name: web::Path<String>,
) -> Result<HttpResponse, RequestError> {
    let project = project_of(&state, &name)?;
    check_origin(&req)?;
    if session_of(&req, &state, &project.name).is_some() {
        return Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ok", "resumed": true })));
    }
    let session = state.start_session(&project, "");
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(
            &project.name,
            &session,
            secure_cookies(&req),
        ))
        .json(serde_json::json!({ "status": "ok", "resumed": false })))
}

/// A request from a browser carries `Origin`; it must name this server.
/// Requests without it (non-browser clients) pass: they cannot ride on a
/// user's cookies.
fn check_origin(req: &HttpRequest) -> Result<(), RequestError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let allowed = req
        .app_data::<web::Data<WebConfig>>()
        .map(|c| c.allowed_origins.as_slice())
        .unwrap_or_default();
    if origin.to_str().is_ok_and(|o| {
        allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o))
    }) {
        return Ok(());
    }
    // The Host header itself, not X-Forwarded-Host: a forwarded header is
    // as easy to forge as the Origin it would be compared with.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
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

/// The client's address as the logs name it: the TCP peer (a reverse
/// proxy's own address when there is one; see docs/security.md).
fn client_address(req: &HttpRequest) -> String {
    req.peer_addr()
        .map_or_else(|| "-".to_string(), |addr| addr.ip().to_string())
}

/// External systems authenticate with `Authorization: Bearer <api_token>`.
fn check_token(req: &HttpRequest, project: &Project) -> Result<(), RequestError> {
    let expected = &project.settings.api_token;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given)
            if !expected.is_empty() && constant_time_eq(given.as_bytes(), expected.as_bytes()) =>
        {
            Ok(())
        }
        _ => Err(RequestError::BadToken),
    }
}

/// Compares without stopping at the first difference, so response time does
/// not reveal how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------- commands

fn parse_body(project: &Project, body: &[u8]) -> Result<ClientFrame, RequestError> {
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
    let text = std::str::from_utf8(body)
        .map_err(|_| RequestError::Rejected(Rejection::new(None, "malformed frame: not UTF-8")))?;
    protocol::parse_frame(text, limit).map_err(RequestError::Rejected)
}

async fn http_command(
    req: HttpRequest,
    state: State,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, RequestError> {
    let (project, session) = authorized(&req, &state, &name, None)?;
    let frame = parse_body(&project, &body)?;
    let runtime = state.into_inner();
    let caller = runtime::Caller {
        tab: None,
        address: client_address(&req),
    };
    let reply = runtime::run_frame(&runtime, project, session, frame, &caller)
        .await
        .map_err(RequestError::Rejected)?;
    Ok(HttpResponse::Ok().json(reply))
}

/// `filename=` (ASCII, for old clients) and `filename*=` (UTF-8, RFC 6266).
fn filename_parameters(filename: &str) -> Vec<DispositionParam> {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut parameters = vec![DispositionParam::Filename(ascii)];
    if !filename.is_ascii() {
        parameters.push(DispositionParam::FilenameExt(header::ExtendedValue {
            charset: header::Charset::Ext("UTF-8".into()),
            language_tag: None,
            value: filename.as_bytes().to_vec(),
        }));
    }
    parameters
}

#[derive(Debug, Deserialize)]
struct DownloadQuery {
    name: String,
    #[serde(default)]
    parameter: String,
}

async fn download(
    req: HttpRequest,
    state: State,
    name: web::Path<String>,
    query: web::Query<DownloadQuery>,
) -> Result<HttpResponse, RequestError> {
    let (project, session) = authorized(&req, &state, &name, None)?;
    let query = query.into_inner();
    let runtime = state.into_inner();
    let file =
        runtime::run_download(&runtime, project, session, query.name, query.parameter).await?;
    let disposition = ContentDisposition {
        disposition: DispositionType::Attachment,
        parameters: filename_parameters(&file.filename),
    };
    Ok(HttpResponse::Ok()
        .content_type(file.content_type)
        .insert_header(disposition)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(file.body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    handler: String,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default = "project_scope")]
    scope: String,
}

fn project_scope() -> String {
    "project".into()
}

/// `POST /<project>/api/message`: an external system sends a message to
/// `fn message(session, handler, payload)` of the sessions in `scope`.
async fn message(
    req: HttpRequest,
    state: State,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, RequestError> {
    let project = project_of(&state, &name)?;
    check_token(&req, &project)?;
    let message: MessageBody = serde_json::from_slice(&body).map_err(|e| {
        RequestError::Rejected(Rejection::new(None, format!("malformed message: {e}")))
    })?;
    let delivered = state
        .send_message(
            &project.name,
            &message.handler,
            message.payload,
            &message.scope,
        )
        .map_err(|reason| RequestError::Rejected(Rejection::new(None, reason)))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ok", "delivered": delivered })))
}

/// `POST /<project>/api/event`: a device event for a session, from a
/// gateway (project token + `session` in the body) or a test (the session
/// cookie). The actions reach the session's browsers and the reply.
async fn device_event(
    req: HttpRequest,
    state: State,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, RequestError> {
    let project = project_of(&state, &name)?;
    let frame = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("type".into(), "device".into());
            parse_body(
                &project,
                serde_json::Value::Object(map).to_string().as_bytes(),
            )?
        }
        _ => {
            return Err(RequestError::Rejected(Rejection::new(
                None,
                "malformed event: expected a JSON object",
            )));
        }
    };
    let ClientFrame::Device(device) = frame else {
        unreachable!("typed as device above")
    };
    let session = match &device.session {
        Some(id) => {
            check_token(&req, &project)?;
            state
                .sessions
                .get(id, &project.name)
                .ok_or(RequestError::NoSession)?
        }
        None => {
            check_origin(&req)?;
            let session = require_session(&req, &state, &project.name)?;
            login::authorize(&state, &project, &session, None)?;
            session
        }
    };
    let runtime = state.into_inner();
    let event = device.event.callback();
    let reply = runtime::run_frame(
        &runtime,
        project,
        session.clone(),
        ClientFrame::Device(device),
        &runtime::Caller {
            tab: None,
            address: client_address(&req),
        },
    )
    .await
    .map_err(RequestError::Rejected)?;
    if !reply.actions.is_empty() {
        session.push(
            &Push::Actions {
                event,
                actions: &reply.actions,
            }
            .to_frame(),
        );
    }
    Ok(HttpResponse::Ok().json(reply))
}

// ---------------------------------------------------------------- WebSocket

#[derive(Debug, Deserialize)]
struct SocketQuery {
    /// The browser tab's id (kept in its sessionStorage): a new one means a
    /// new tab or window, which gets `pageStartup`.
    tab: Option<String>,
    page: Option<String>,
}

async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    state: State,
    name: web::Path<String>,
    query: web::Query<SocketQuery>,
) -> Result<HttpResponse, RequestError> {
    let (project, session) = authorized(&req, &state, &name, None)?;
    let (response, ws, stream) =
        actix_ws::handle(&req, body).map_err(|e| RequestError::Handshake(e.to_string()))?;
    let stream = stream
        .max_frame_size(HARD_FRAME_LIMIT)
        .aggregate_continuations()
        .max_continuation_size(HARD_FRAME_LIMIT);
    let query = query.into_inner();
    let tab = query.tab.filter(|t| !t.is_empty() && t.len() <= 64);
    let caller = runtime::Caller {
        tab,
        address: client_address(&req),
    };
    let runtime = state.into_inner();
    actix_web::rt::spawn(serve_connection(
        runtime, project, session, ws, stream, caller, query.page,
    ));
    Ok(response)
}

/// Reads frames until the client leaves, the heartbeat lapses, the session
/// ends or the server stops; writes replies and pushed frames. Frames run
/// one after the other on a worker task so that a slow handler never stops
/// this loop from answering pings or noticing a close.
async fn serve_connection(
    runtime: Arc<Runtime>,
    project: Arc<Project>,
    session: Arc<Session>,
    mut ws: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    caller: runtime::Caller,
    page: Option<String>,
) {
    let (push_tx, mut pushes) = mpsc::channel::<Frame>(PUSH_QUEUE);
    let _ = push_tx.try_send(
        Push::Config {
            keystrokes: &project.settings.keystrokes,
        }
        .to_frame(),
    );
    let snapshot = runtime.ui_snapshot(&session);
    if !snapshot.is_empty() {
        let _ = push_tx.try_send(Push::Ui { set: &snapshot }.to_frame());
    }
    let connection = session.connect(push_tx);
    METRICS.websocket_opened();
    runtime::connection_opened(
        &runtime,
        &project,
        &session,
        caller.tab.as_deref(),
        page.as_deref(),
    )
    .await;

    let (frames, pending) = mpsc::channel::<Result<ClientFrame, Rejection>>(PENDING_FRAMES);
    let worker = actix_web::rt::spawn(run_frames(
        runtime.clone(),
        project.name.clone(),
        session.clone(),
        ws.clone(),
        pending,
        caller,
    ));
    let mut shutdown: watch::Receiver<bool> = runtime.shutdown_signal();
    let mut heartbeat = actix_web::rt::time::interval_at(
        actix_web::rt::time::Instant::now() + PING_INTERVAL,
        PING_INTERVAL,
    );
    let mut last_heard = Instant::now();
    let limit = project.settings.max_frame_bytes;
    drop(project);
    let close_reason = loop {
        tokio::select! {
            message = stream.recv() => {
                last_heard = Instant::now();
                match message {
                    // Rejections queue behind earlier frames, so every
                    // answer comes back in the order its frame was sent.
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        let parsed = protocol::parse_frame(&text, limit);
                        if let Err(rejection) = &parsed {
                            debug!(session = session.log_id(), "rejected frame: {}", rejection.reason);
                        }
                        if frames.send(parsed).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        let rejection = Rejection::new(None, "binary frames are not supported; send JSON text");
                        if frames.send(Err(rejection)).await.is_err() {
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
                        // Usually a tab that vanished without a close frame.
                        info!(session = session.log_id(), "WebSocket ended: {error}");
                        let code = match error {
                            actix_ws::ProtocolError::Overflow => CloseCode::Size,
                            _ => CloseCode::Protocol,
                        };
                        break Some(CloseReason { code, description: Some(error.to_string()) });
                    }
                }
            }
            pushed = pushes.recv() => match pushed {
                Some(frame) => {
                    if ws.text(frame.to_string()).await.is_err() {
                        break None;
                    }
                }
                // The session ended and dropped its senders.
                None => break Some(CloseReason { code: CloseCode::Normal, description: Some("session ended".into()) }),
            },
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
    session.disconnect(connection);
    METRICS.websocket_closed();
    // Frames already received still run to the end (their replies have
    // nowhere to go): a command the user sent is never half-done, and a
    // re-send after reconnecting is answered from its record.
    drop(frames);
    drop(worker);
    let _ = ws.close(close_reason).await;
}

async fn run_frames(
    runtime: Arc<Runtime>,
    project: String,
    session: Arc<Session>,
    mut ws: actix_ws::Session,
    mut pending: mpsc::Receiver<Result<ClientFrame, Rejection>>,
    caller: runtime::Caller,
) {
    while let Some(frame) = pending.recv().await {
        // Looked up per frame: a hot reload replaces the project meanwhile.
        let Some(project) = runtime.project(&project) else {
            break;
        };
        let answer = match frame {
            Ok(frame) => {
                runtime::run_frame(&runtime, project, session.clone(), frame, &caller).await
            }
            Err(rejection) => Err(rejection),
        };
        let sent = match answer {
            Ok(reply) => send_json(&mut ws, &reply).await,
            Err(rejection) => send_json(&mut ws, &rejection).await,
        };
        if sent.is_err() {
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
