//! The actix routes: pages, the HTTP command endpoint, downloads, and the
//! endpoints external systems use (messages, device events); WebSockets are
//! served apart from the routes ([`websocket`]). Thin by design: parse the
//! request, find the project and the session, call into [`runtime`],
//! serialize what comes back.

use std::sync::Arc;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::error::QueryPayloadError;
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use tracing::{error, warn};

mod files;
mod hosts;
mod login;
mod websocket;

pub use hosts::{AllowedHosts, refuse_other_hosts};
pub use websocket::Upgrades;

use crate::metrics::METRICS;

use crate::project::Project;
use crate::protocol::{self, ClientFrame, Rejection};
use crate::runtime::{
    self, DownloadBody, DownloadError, EventError, EventKind, EventOutcome, EventTarget,
    ExternalEvent, Runtime,
};
use crate::session::Session;

/// Web settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// Origins allowed besides the server's own host.
    pub allowed_origins: Vec<String>,
    /// Mark cookies `Secure` (served over TLS); origins are then `https`.
    pub secure_cookies: bool,
    /// The `Host` names requests may name.
    pub allowed_hosts: AllowedHosts,
    /// The bearer token `/metrics` wants, if any.
    pub metrics_token: Option<String>,
    /// Anonymous sessions each client address may start; `None`: no limit.
    pub new_sessions: Option<Arc<SessionBudget>>,
    /// This node's name, as `/healthz` tells it.
    pub node: String,
}

/// What a request is checked against when the app was given no settings.
static NO_WEB_CONFIG: WebConfig = WebConfig {
    node: String::new(),
    allowed_origins: Vec::new(),
    secure_cookies: false,
    allowed_hosts: AllowedHosts::any(),
    metrics_token: None,
    new_sessions: None,
};

/// How many anonymous sessions one client address may start: a burst of
/// `per_minute`, refilled at `per_minute` a minute. Without it one
/// connection started 5 000 sessions in 2.8 s, each kept in memory and
/// the database.
pub struct SessionBudget {
    per_minute: u32,
    limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
}

/// Addresses remembered before the ones that are full again are dropped.
const SESSION_BUDGET_ADDRESSES: usize = 10_000;

impl SessionBudget {
    /// `None` for 0 (no limit).
    pub fn per_minute(per_minute: u32) -> Option<SessionBudget> {
        let rate = std::num::NonZeroU32::new(per_minute)?;
        Some(SessionBudget {
            per_minute,
            limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(rate)),
        })
    }

    /// Takes one session from the address's budget; `false` when spent.
    fn take(&self, address: std::net::IpAddr) -> bool {
        if self.limiter.len() > SESSION_BUDGET_ADDRESSES {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&address).is_ok()
    }

    /// Seconds until the budget has room for one more.
    fn retry_after_secs(&self) -> u64 {
        60u64.div_ceil(u64::from(self.per_minute)).max(1)
    }
}

impl std::fmt::Debug for SessionBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionBudget({}/min)", self.per_minute)
    }
}

/// The web settings the app was given.
fn web_config(req: &HttpRequest) -> &WebConfig {
    req.app_data::<web::Data<WebConfig>>()
        .map_or(&NO_WEB_CONFIG, |config| config.get_ref())
}

/// Headers on every response. The CSP allows no inline script: everything
/// the runtime runs comes from `/_sb/`, so injected markup cannot run code.
pub fn security_headers(frame_ancestors: &str, tls: bool) -> actix_web::middleware::DefaultHeaders {
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
    // Served over TLS, browsers are told to never try plain HTTP again (a
    // first visit over HTTP could otherwise be intercepted).
    if tls {
        headers = headers.add((header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"));
    }
    headers
}

/// The session cookie; scoped to the project's path, so each project has its own.
pub const SESSION_COOKIE: &str = "sb_session";

/// Largest HTTP body or WebSocket message read at all. Anything between the
/// project's `max_frame_bytes` and this is answered with a rejection (and a
/// WebSocket stays open); past it, a body gets `413` and a WebSocket is
/// closed (1009).
const HARD_FRAME_LIMIT: usize = 1 << 20;

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
    /// A WebSocket handshake for anything but `GET /<project>/api/ws`.
    #[error("no WebSocket here: only /<project>/api/ws accepts one")]
    NoWebSocket,
    /// A template failed to render (details logged).
    #[error("the page could not be rendered")]
    Render,
    /// The `Host` header names a host this server does not answer to.
    #[error("this server does not answer to that host name (see --allowed-hosts)")]
    HostNotAllowed,
    /// The client's address started too many sessions lately.
    #[error("too many new sessions from this address; try again in {0} s")]
    TooManySessions(u64),
}

impl ResponseError for RequestError {
    fn status_code(&self) -> StatusCode {
        match self {
            RequestError::ProjectNotFound
            | RequestError::PageNotFound
            | RequestError::NoWebSocket => StatusCode::NOT_FOUND,
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
            RequestError::HostNotAllowed => StatusCode::MISDIRECTED_REQUEST,
            RequestError::TooManySessions(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let seq = match self {
            RequestError::Rejected(rejection) | RequestError::TooLarge(rejection) => rejection.seq,
            _ => None,
        };
        let mut response = HttpResponse::build(self.status_code());
        if let RequestError::TooManySessions(wait) = self {
            response.insert_header((header::RETRY_AFTER, *wait));
        }
        response.json(Rejection::new(seq, self.to_string()))
    }
}

/// Mounts every route.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .app_data(web::PayloadConfig::new(HARD_FRAME_LIMIT))
        .app_data(web::QueryConfig::default().error_handler(|error, _| bad_query(error).into()))
        .route("/", web::get().to(index))
        .route("/_sb/{file}", web::get().to(asset))
        .route("/metrics", web::get().to(metrics))
        .route("/favicon.ico", web::get().to(favicon))
        .route("/healthz", web::get().to(healthz))
        .route("/{project}", web::get().to(project_root_redirect))
        .route("/{project}/", web::get().to(start_page))
        .route("/{project}/api/session", web::post().to(create_session))
        .route("/{project}/api/command", web::post().to(http_command))
        .route("/{project}/api/ws", web::get().to(websocket::not_upgraded))
        .route("/{project}/api/download", web::get().to(download))
        .route("/{project}/api/page/{page}", web::get().to(page_fragment))
        .route("/{project}/api/message", web::post().to(message))
        .route("/{project}/api/event", web::post().to(device_event))
        .route(
            "/{project}/static/{file:.*}",
            web::get().to(files::static_file),
        )
        .configure(login::routes)
        .route("/{project}/{page}", web::get().to(page));
}

fn project_of(state: &Runtime, name: &str) -> Result<Arc<Project>, RequestError> {
    state.project(name).ok_or(RequestError::ProjectNotFound)
}

/// A query string the route cannot read.
fn bad_query(error: QueryPayloadError) -> RequestError {
    RequestError::Rejected(Rejection::new(None, format!("bad query: {error}")))
}

// ---------------------------------------------------------------- pages

/// The projects an anonymous visitor may open: session cookies are scoped
/// to each project's path, so a visitor of `/` is always anonymous here.
async fn index(state: State) -> HttpResponse {
    let items: String = state
        .project_names()
        .iter()
        .filter(|name| {
            state
                .project(name)
                .is_some_and(|project| project.settings.access.public)
        })
        // Project names are letters, digits, `-` and `_` (see `project`): no escaping needed.
        .map(|name| format!("<li><a href=\"/{name}/\">{name}</a></li>"))
        .collect();
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(format!(
        "<!doctype html><html lang=en><meta charset=utf-8><title>Switchboard</title>\
         <link rel=icon href=/_sb/favicon.svg type=image/svg+xml><link rel=stylesheet href=/_sb/switchboard.css><body class=sb-index><h1>Projects</h1><ul>{items}</ul></body></html>"
    ))
}

/// Prometheus metrics. They reveal counts, not content; with
/// `--metrics-token` only a scraper presenting it gets them.
async fn metrics(req: HttpRequest, state: State) -> Result<HttpResponse, RequestError> {
    if let Some(expected) = &web_config(&req).metrics_token
        && !bearer_is(&req, expected)
    {
        return Err(RequestError::BadToken);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(METRICS.render(state.sessions.len()) + state.points.render_metrics().as_str()))
}

/// For load balancers: 200 while this node can serve, 503 when it cannot
/// (stopping, or in cluster mode without its NATS connection). Tells no
/// more than the node's name and the kind of store.
async fn healthz(req: HttpRequest, state: State) -> HttpResponse {
    let health = state.store_health();
    let stopping = state.is_stopping();
    let ok = !stopping && health.connected != Some(false);
    let body = serde_json::json!({
        "ok": ok,
        "node": web_config(&req).node,
        "store": health.kind,
        "nats": health.connected.map(|up| if up { "connected" } else { "disconnected" }),
        "stopping": stopping,
    });
    let mut response = if ok {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response.insert_header((header::CACHE_CONTROL, "no-store"));
    response.json(body)
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
        "favicon.svg" => (include_str!("../../web/favicon.svg"), "image/svg+xml"),
        _ => return HttpResponse::NotFound().finish(),
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// Browsers ask for `/favicon.ico` on their own (pages also name
/// `/_sb/favicon.svg`): the same icon, so that no page load logs a 404.
async fn favicon() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header((header::CACHE_CONTROL, "max-age=86400"))
        .body(include_str!("../../web/favicon.svg"))
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

/// Keeps the browser's languages on the session: they choose the
/// language of its texts, in pages and in scripts' `t(session, …)`.
fn note_accept_language(req: &HttpRequest, state: &Runtime, session: &Session) {
    let header = req
        .headers()
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // A header is a few dozen bytes; longer ones are not worth storing.
    if header.len() <= 256 {
        state.note_accept_language(session, header);
    }
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
        None => (start_anonymous_session(req, state, &project)?, true),
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
    note_accept_language(req, state, &session);
    let rendered = project
        .render_page(page, &state.template_view(&project, &session))
        .ok_or(RequestError::PageNotFound)?;
    let html = rendered.map_err(|error| render_failed(&project, page, error))?;
    state
        .points
        .bind_rendered(&session, page, project.pages.get(page).copied(), &html);
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
    note_accept_language(&req, &state, &session);
    let context = state.template_view(&project, &session);
    let rendered = project
        .render_block(&page, "content", &context)
        .ok_or(RequestError::PageNotFound)?;
    let html = rendered.map_err(|error| render_failed(&project, &page, error))?;
    state
        .points
        .bind_rendered(&session, &page, project.pages.get(&page).copied(), &html);
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
    web_config(req).secure_cookies
}

/// The request's live session; any request with it counts as activity
/// (an HTTP-only client is not idle while it keeps sending).
fn session_of(req: &HttpRequest, state: &Runtime, project: &str) -> Option<Arc<Session>> {
    session_in(req.headers(), state, project)
}

/// [`session_of`] for a request known by its headers alone.
fn session_in(headers: &HeaderMap, state: &Runtime, project: &str) -> Option<Arc<Session>> {
    let id = cookie_value(headers, SESSION_COOKIE)?;
    let session = state.session(&id, project)?;
    session.touch();
    Some(session)
}

/// A cookie's (percent-decoded) value, read as actix-web's
/// `HttpRequest::cookie` reads it: the first cookie of that name in the
/// `Cookie` headers, unparseable ones skipped, none if a header is not UTF-8.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = None;
    for header in headers.get_all(header::COOKIE) {
        let text = std::str::from_utf8(header.as_bytes()).ok()?;
        if found.is_none() {
            found = text
                .split(';')
                .map(str::trim)
                .filter(|part| !part.is_empty())
                .filter_map(|part| Cookie::parse_encoded(part).ok())
                .find(|cookie| cookie.name() == name)
                .map(|cookie| cookie.value().to_string());
        }
    }
    found
}

/// The project and the caller's session, after every check an API call
/// needs: the project exists, a browser's `Origin` is this server's (any
/// site could otherwise ride on the user's cookie — the WebSocket handshake
/// does not prevent that either), the session is live, and its user may use
/// the project (and `page`).
fn authorized(
    req: &HttpRequest,
    state: &Runtime,
    name: &str,
    page: Option<&str>,
) -> Result<(Arc<Project>, Arc<Session>), RequestError> {
    authorized_by(req.headers(), web_config(req), state, name, page)
}

/// [`authorized`] for a request known by its headers alone (a WebSocket
/// handshake, which never reaches the routes).
fn authorized_by(
    headers: &HeaderMap,
    config: &WebConfig,
    state: &Runtime,
    name: &str,
    page: Option<&str>,
) -> Result<(Arc<Project>, Arc<Session>), RequestError> {
    let project = project_of(state, name)?;
    origin_allowed(headers, config)?;
    let session = session_in(headers, state, &project.name).ok_or(RequestError::NoSession)?;
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
    let session = start_anonymous_session(&req, &state, &project)?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(
            &project.name,
            &session,
            secure_cookies(&req),
        ))
        .json(serde_json::json!({ "status": "ok", "resumed": false })))
}

/// Starts a session with no user, if the client's address has not started
/// too many lately (see [`SessionBudget`]).
fn start_anonymous_session(
    req: &HttpRequest,
    state: &Runtime,
    project: &Arc<Project>,
) -> Result<Arc<Session>, RequestError> {
    if let Some(budget) = &web_config(req).new_sessions
        && let Some(peer) = req.peer_addr()
        && !budget.take(peer.ip())
    {
        warn!(project = %project.name, address = %peer.ip(), "new session refused: too many from this address");
        return Err(RequestError::TooManySessions(budget.retry_after_secs()));
    }
    Ok(state.start_session(project, ""))
}

/// A request from a browser carries `Origin`; it must name this server.
/// Requests without it (non-browser clients) pass: they cannot ride on a
/// user's cookies.
fn check_origin(req: &HttpRequest) -> Result<(), RequestError> {
    origin_allowed(req.headers(), web_config(req))
}

/// [`check_origin`] for a request known by its headers alone.
fn origin_allowed(headers: &HeaderMap, config: &WebConfig) -> Result<(), RequestError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let allowed = &config.allowed_origins;
    if origin.to_str().is_ok_and(|o| {
        allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o))
    }) {
        return Ok(());
    }
    // The Host header itself, not X-Forwarded-Host: a forwarded header is
    // as easy to forge as the Origin it would be compared with. The scheme
    // counts too: `http://host` is another origin than `https://host`.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let scheme = if config.secure_cookies {
        "https"
    } else {
        "http"
    };
    let own_origin = format!("{scheme}://{host}");
    if origin
        .to_str()
        .is_ok_and(|o| o.trim_end_matches('/').eq_ignore_ascii_case(&own_origin))
    {
        Ok(())
    } else {
        warn!(origin = ?origin, host, "cross-origin request refused");
        Err(RequestError::ForbiddenOrigin)
    }
}

/// The client's address as the logs name it: the TCP peer (a reverse
/// proxy's own address when there is one; see docs/security.md).
fn client_address(req: &HttpRequest) -> String {
    address_of(req.peer_addr())
}

/// [`client_address`] from the peer's socket address.
fn address_of(peer: Option<std::net::SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_string(), |addr| addr.ip().to_string())
}

/// External systems authenticate with `Authorization: Bearer <api_token>`.
fn check_token(req: &HttpRequest, project: &Project) -> Result<(), RequestError> {
    if bearer_is(req, &project.settings.api_token) {
        Ok(())
    } else {
        Err(RequestError::BadToken)
    }
}

/// Whether the request presents `expected` as its bearer token (never, for
/// an empty one).
fn bearer_is(req: &HttpRequest, expected: &str) -> bool {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|given| {
        !expected.is_empty() && constant_time_eq(given.as_bytes(), expected.as_bytes())
    })
}

/// Compares without stopping at the first difference, so response time does
/// not reveal how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------- commands

fn parse_body(project: &Project, body: &[u8]) -> Result<ClientFrame, RequestError> {
    check_size(project, body)?;
    let text = std::str::from_utf8(body)
        .map_err(|_| RequestError::Rejected(Rejection::new(None, "malformed frame: not UTF-8")))?;
    protocol::parse_frame(text, project.settings.max_frame_bytes).map_err(RequestError::Rejected)
}

/// Refuses a body over the project's frame limit.
fn check_size(project: &Project, body: &[u8]) -> Result<(), RequestError> {
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
    Ok(())
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

/// `filename=` (ASCII, for old clients) and `filename*=` (UTF-8, RFC 6266),
/// without invisible or control characters: a right-to-left override would
/// show `invoice\u{202E}fdp.exe` as `invoiceexe.pdf`.
fn filename_parameters(filename: &str) -> Vec<DispositionParam> {
    let visible = crate::text::visible(filename);
    let filename = if visible.trim().is_empty() {
        "download"
    } else {
        visible.as_str()
    };
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
    let dir = project.dir.clone();
    let file =
        runtime::run_download(&runtime, project, session, query.name, query.parameter).await?;
    let body = match file.body {
        DownloadBody::Bytes(body) => body,
        DownloadBody::File(relative) => files::read_project_file(&dir, &relative).await?,
    };
    let disposition = ContentDisposition {
        disposition: DispositionType::Attachment,
        parameters: filename_parameters(&file.filename),
    };
    Ok(HttpResponse::Ok()
        .content_type(file.content_type)
        .insert_header(disposition)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body))
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
    check_size(&project, &body)?;
    let device: protocol::Device = serde_json::from_slice(&body).map_err(|error| {
        RequestError::Rejected(Rejection::new(None, format!("malformed event: {error}")))
    })?;
    let session = match &device.session {
        Some(id) => {
            check_token(&req, &project)?;
            id.clone()
        }
        None => {
            check_origin(&req)?;
            let session = require_session(&req, &state, &project.name)?;
            login::authorize(&state, &project, &session, None)?;
            session.id.clone()
        }
    };
    let seq = device.seq;
    let event = ExternalEvent {
        kind: EventKind::Device(device),
        target: EventTarget::Session(session),
    };
    match state.external_event(&project, event).await {
        Ok(EventOutcome::Answered(reply)) => Ok(HttpResponse::Ok().json(reply)),
        Ok(EventOutcome::Started(_)) => Ok(HttpResponse::Accepted().finish()),
        Err(EventError::NoSession) => Err(RequestError::NoSession),
        Err(EventError::BadData(reason)) => {
            Err(RequestError::Rejected(Rejection::new(seq, reason)))
        }
    }
}
