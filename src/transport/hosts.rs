//! Which `Host` names the server answers to: the defence against DNS
//! rebinding, where a page on another site re-points its own name at this
//! server and then drives it as if it were same-origin. The `Origin` check
//! cannot see that (Origin and Host then agree), a host list can.
//!
//! This module decides the list and checks requests against it; the routes
//! and the WebSocket handshake call it.

use std::net::SocketAddr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};
use tracing::warn;

use super::{RequestError, WebConfig};

/// The host names requests may name; `None` accepts any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    names: Option<Vec<String>>,
}

impl AllowedHosts {
    /// Any host name.
    pub const fn any() -> AllowedHosts {
        AllowedHosts { names: None }
    }

    /// The `--allowed-hosts` list, or when it is empty the bound address's
    /// own names on loopback (`localhost`, `127.0.0.1`, `::1`). Bound to
    /// any other address with no list, every host is accepted and the
    /// second value is a warning to print. `*` in the list accepts any.
    pub fn from_settings(
        configured: &[String],
        bind: SocketAddr,
    ) -> (AllowedHosts, Option<String>) {
        let configured: Vec<String> = configured
            .iter()
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        if configured.iter().any(|name| name == "*") {
            return (AllowedHosts::any(), None);
        }
        if !configured.is_empty() {
            return (
                AllowedHosts {
                    names: Some(configured),
                },
                None,
            );
        }
        if bind.ip().is_loopback() {
            let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
            names.push(bind.ip().to_string());
            names.dedup();
            return (AllowedHosts { names: Some(names) }, None);
        }
        let warning = format!(
            "listening on {bind} with no --allowed-hosts: any Host is accepted, so DNS rebinding \
             is not blocked; list the names clients use (SWITCHBOARD_ALLOWED_HOSTS)"
        );
        (AllowedHosts::any(), Some(warning))
    }

    /// Whether a request with these headers names an allowed host. A
    /// request without `Host` passes: browsers always send one.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(names) = &self.names else {
            return true;
        };
        let Some(host) = headers.get(header::HOST) else {
            return true;
        };
        host.to_str().ok().map(host_name).is_some_and(|name| {
            names
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(name))
        })
    }
}

/// The name of a `Host` value without its port: `example.com:8080` →
/// `example.com`, `[::1]:8080` → `::1`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The middleware every route is behind: a request naming another host is
/// answered `421` before any route sees it.
pub async fn refuse_other_hosts(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let allowed = req
        .app_data::<web::Data<WebConfig>>()
        .is_none_or(|config| config.allowed_hosts.allows(req.headers()));
    if allowed {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    warn!(host = ?req.headers().get(header::HOST), path = req.path(), "request for another host refused");
    let response = RequestError::HostNotAllowed.error_response();
    Ok(req.into_response(response).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn with_host(host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        headers
    }

    #[test]
    fn loopback_binds_answer_to_their_own_names_only() {
        let (hosts, warning) = AllowedHosts::from_settings(&[], "127.0.0.1:8080".parse().unwrap());
        assert!(warning.is_none());
        for (host, allowed) in [
            ("127.0.0.1:8080", true),
            ("localhost:41234", true),
            ("LOCALHOST", true),
            ("[::1]:8080", true),
            ("rebind.attacker.example:8080", false),
            ("127.0.0.1.attacker.example", false),
        ] {
            assert_eq!(hosts.allows(&with_host(host)), allowed, "{host}");
        }
        assert!(hosts.allows(&HeaderMap::new()), "no Host header");
    }

    #[test]
    fn public_binds_accept_any_host_with_a_warning_unless_listed() {
        let bind = "0.0.0.0:8080".parse().unwrap();
        let (hosts, warning) = AllowedHosts::from_settings(&[], bind);
        assert!(warning.is_some_and(|w| w.contains("--allowed-hosts")));
        assert!(hosts.allows(&with_host("anything.example")));
        let (hosts, warning) = AllowedHosts::from_settings(&["panel.example.com".into()], bind);
        assert!(warning.is_none());
        assert!(hosts.allows(&with_host("panel.example.com:8443")));
        assert!(!hosts.allows(&with_host("other.example.com")));
        let (hosts, _) = AllowedHosts::from_settings(&["*".into()], bind);
        assert_eq!(hosts, AllowedHosts::any());
    }
}
