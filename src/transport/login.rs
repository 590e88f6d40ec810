//! Signing in and out, access checks on projects and pages, and answers to
//! authentication challenges.
//!
//! The login page is a plain HTML form (no script, so it works in any
//! webview and under the CSP). A successful login replaces the session
//! with a new one under a new id: an id known before login (planted by
//! someone else) is worth nothing after it.

use std::sync::Arc;

use actix_web::cookie::Cookie;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use tracing::{info, warn};

use super::{
    RequestError, SESSION_COOKIE, State, WebConfig, check_origin, client_address, project_of,
    session_cookie, session_of,
};
use crate::auth::{Refused, User};
use crate::project::Project;
use crate::runtime::{ChallengeAnswer, Runtime, ShutdownReason};
use crate::session::Session;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/{project}/login", web::get().to(login_page))
        .route("/{project}/login", web::post().to(log_in))
        .route("/{project}/logout", web::post().to(log_out))
        .route("/{project}/api/challenge", web::post().to(answer_challenge));
}

/// Whether the session's user may use the project (and `page`, if given).
pub fn authorize(
    state: &Runtime,
    project: &Project,
    session: &Session,
    page: Option<&str>,
) -> Result<(), RequestError> {
    let roles = state.roles_of(&session.userid);
    let access = &project.settings.access;
    let allowed = match page {
        Some(page) => access.allows_page(page, &session.userid, &roles),
        None => access.allows_project(&session.userid, &roles),
    };
    match (allowed, session.userid.is_empty()) {
        (true, _) => Ok(()),
        (false, true) => Err(RequestError::LoginRequired),
        (false, false) => Err(RequestError::Forbidden),
    }
}

/// Where an anonymous visitor of a closed page is sent.
pub fn login_redirect(project: &Project, page: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("/{}/login?next=/{}/{page}", project.name, project.name),
        ))
        .finish()
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(
    state: State,
    name: web::Path<String>,
    query: web::Query<LoginQuery>,
) -> Result<HttpResponse, RequestError> {
    let project = project_of(&state, &name)?;
    let next = safe_next(&project, query.into_inner().next.as_deref());
    render_login(&project, None, &next, "", actix_web::http::StatusCode::OK)
}

fn render_login(
    project: &Project,
    error: Option<&str>,
    next: &str,
    user: &str,
    status: actix_web::http::StatusCode,
) -> Result<HttpResponse, RequestError> {
    let mut context = tera::Context::new();
    context.insert(
        "project",
        &serde_json::json!({ "name": project.name, "title": project.settings.title }),
    );
    context.insert("error", &error);
    context.insert("next", next);
    context.insert("user", user);
    let html = project
        .templates
        .render("sb/login.html", &context)
        .map_err(|e| {
            tracing::error!("login page: {e}");
            RequestError::Render
        })?;
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(html))
}

/// Only a path inside the project: anything else would make the login page
/// an open redirect to another site.
fn safe_next(project: &Project, next: Option<&str>) -> String {
    let prefix = format!("/{}/", project.name);
    match next {
        // No control characters either: `next` becomes a header, and a CR or
        // LF there would fail the response after the session was replaced.
        Some(next)
            if next.starts_with(&prefix)
                && !next.contains("//")
                && !next.contains('\\')
                && !next.chars().any(char::is_control) =>
        {
            next.to_string()
        }
        _ => prefix,
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    next: Option<String>,
}

async fn log_in(
    req: HttpRequest,
    state: State,
    name: web::Path<String>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, RequestError> {
    let project = project_of(&state, &name)?;
    check_origin(&req)?;
    let form = form.into_inner();
    // Validated before anything happens: the session is replaced below.
    let next = safe_next(&project, form.next.as_deref());
    let address = client_address(&req);
    let verified = match check_password(&state, &form.user, &form.password, &address).await {
        Ok(verified) => verified,
        Err(refused) => {
            warn!(target: "switchboard::auth", "LOGIN THROTTLED user={:?} address={address} reason={refused:?}", form.user);
            let message = match refused {
                Refused::LockedOut(_) => format!(
                    "Too many failed attempts. Try again in {} s.",
                    refused.retry_after_secs()
                ),
                Refused::Busy => "Too many attempts at once. Try again in a moment.".to_string(),
            };
            let mut response = render_login(
                &project,
                Some(&message),
                &next,
                &form.user,
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            )?;
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(refused.retry_after_secs()),
            );
            return Ok(response);
        }
    };
    let Some(user) = verified else {
        warn!(target: "switchboard::auth", "LOGIN FAILED user={:?} address={address}", form.user);
        return render_login(
            &project,
            Some("Wrong user name or password."),
            &next,
            &form.user,
            actix_web::http::StatusCode::UNAUTHORIZED,
        );
    };
    info!(target: "switchboard::auth", "LOGIN user={:?} address={address}", user.id);
    let old = session_of(&req, &state, &project.name);
    let session = state.log_in(&project, old, &user.id).await;
    let secure = req
        .app_data::<web::Data<WebConfig>>()
        .is_some_and(|c| c.secure_cookies);
    Ok(HttpResponse::SeeOther()
        .cookie(session_cookie(&project.name, &session, secure))
        .insert_header((header::LOCATION, next))
        .finish())
}

/// Checks a password under the throttle (see [`crate::auth::Throttle`]):
/// `Err` when the attempt is refused without being checked. The user's
/// progressive delay is waited here, holding no hashing slot.
async fn check_password(
    state: &State,
    user: &str,
    password: &str,
    address: &str,
) -> Result<Option<User>, Refused> {
    let mut attempt = state.throttle.begin(user, address)?;
    if !attempt.delay().is_zero() {
        info!(target: "switchboard::auth", "LOGIN DELAYED user={user:?} address={address} delay_ms={}", attempt.delay().as_millis());
        tokio::time::sleep(attempt.delay()).await;
    }
    let slot = attempt.start_check()?;
    let runtime = state.clone().into_inner();
    let (user, password) = (user.to_string(), password.to_string());
    let verified = web::block(move || {
        let _slot = slot;
        runtime.verify_password(&user, &password)
    })
    .await
    .ok()
    .flatten();
    if verified.is_some() {
        attempt.succeeded();
    }
    Ok(verified)
}

async fn log_out(
    req: HttpRequest,
    state: State,
    name: web::Path<String>,
) -> Result<HttpResponse, RequestError> {
    let project = project_of(&state, &name)?;
    check_origin(&req)?;
    if let Some(session) = session_of(&req, &state, &project.name) {
        info!(target: "switchboard::auth", "LOGOUT user={:?}", session.userid);
        state.end_session(&session, ShutdownReason::Logout).await;
    }
    let mut expired = Cookie::build(SESSION_COOKIE, "")
        .path(format!("/{}", project.name))
        .finish();
    expired.make_removal();
    Ok(HttpResponse::SeeOther()
        .cookie(expired)
        .insert_header((header::LOCATION, format!("/{}/login", project.name)))
        .finish())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeBody {
    id: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    cancel: bool,
}

/// The browser's answer to an authentication challenge popup.
async fn answer_challenge(
    req: HttpRequest,
    state: State,
    name: web::Path<String>,
    body: web::Json<ChallengeBody>,
) -> Result<HttpResponse, RequestError> {
    let project = project_of(&state, &name)?;
    check_origin(&req)?;
    let session = session_of(&req, &state, &project.name).ok_or(RequestError::NoSession)?;
    let body = body.into_inner();
    // An unknown id is refused before any password is hashed.
    if !state.has_challenge(&body.id, &session) {
        return Err(RequestError::UnknownChallenge);
    }
    let address = client_address(&req);
    let answer = if body.cancel {
        ChallengeAnswer::Cancelled
    } else {
        match check_password(&state, &body.user, &body.password, &address).await {
            Ok(Some(user)) => ChallengeAnswer::Verified(Box::new(user)),
            Ok(None) => {
                warn!(target: "switchboard::auth", "CHALLENGE FAILED user={:?} address={address}", body.user);
                ChallengeAnswer::Refused("Wrong user name or password.".into())
            }
            Err(refused) => {
                warn!(target: "switchboard::auth", "CHALLENGE THROTTLED user={:?} address={address} reason={refused:?}", body.user);
                ChallengeAnswer::Refused("Too many failed attempts.".into())
            }
        }
    };
    let runtime: Arc<Runtime> = state.into_inner();
    let reply = runtime
        .answer_challenge(&project, &session, &body.id, answer)
        .await
        .ok_or(RequestError::UnknownChallenge)?;
    Ok(HttpResponse::Ok().json(reply))
}
