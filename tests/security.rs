//! Users, login, access control, authentication challenges and web
//! hardening, against the real server.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::accounts::{
    PASSWORD, bare, command, cookie_value, log_in, passwd, secure_server, session_cookie,
    session_of, users_file,
};
use common::{Server, receive_push};
use serde_json::{Value, json};

#[test]
fn passwd_stores_an_argon2id_hash_never_the_password() {
    let users = common::temp_dir("passwd").join("users.toml");
    passwd(&users, "ann", "operator");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(text.contains("$argon2id$"), "{text}");
    assert!(!text.contains(PASSWORD));
    assert!(text.contains("operator"));
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_logged() {
    let server = secure_server();
    let response = log_in(&server, None, "ann", "not the password").await;
    assert_eq!(response.status(), 401);
    assert!(
        session_cookie(&response).is_none(),
        "no session for a failed login"
    );
    let page = response.text().await.unwrap();
    assert!(page.contains("Wrong user name or password."), "{page}");
    server.wait_for_log(r#"LOGIN FAILED user="ann" address=127.0.0.1"#);
    // Unknown users get the same answer.
    assert_eq!(log_in(&server, None, "nobody", "x").await.status(), 401);
}

#[tokio::test]
async fn failed_logins_are_throttled() {
    let server = secure_server();
    for _ in 0..5 {
        assert_eq!(log_in(&server, None, "otto", "wrong").await.status(), 401);
    }
    let response = log_in(&server, None, "otto", PASSWORD).await;
    assert_eq!(response.status(), 429, "even the right password waits");
    assert!(response.headers().get("retry-after").is_some());
    server.wait_for_log(r#"LOGIN THROTTLED user="otto""#);
}

#[tokio::test]
async fn login_rotates_the_session_cookie_and_sets_its_flags() {
    let server = secure_server();
    // An anonymous visit is sent to the login page with a session cookie.
    let visit = bare().get(server.url("/secure/home")).send().await.unwrap();
    assert_eq!(visit.status(), 303);
    assert!(
        visit.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/secure/login?next=")
    );
    let before = cookie_value(&session_cookie(&visit).expect("an anonymous session"));
    let response = log_in(&server, Some(&before), "ann", PASSWORD).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/secure/home");
    let set_cookie = session_cookie(&response).expect("a new cookie at login");
    let lower = set_cookie.to_ascii_lowercase();
    assert!(
        lower.contains("httponly") && lower.contains("samesite=strict"),
        "{set_cookie}"
    );
    let after = cookie_value(&set_cookie);
    assert_ne!(
        before, after,
        "session fixation: the id must change at login"
    );
    // The planted id is worthless now.
    assert_eq!(command(&server, &before, "status", "").await.0, 401);
    assert_eq!(command(&server, &after, "status", "").await.0, 200);
    let (_, reply) = command(&server, &after, "status", "").await;
    assert_eq!(
        reply["actions"][0]["message"], "status  done by ann",
        "userid is the logged-in user"
    );
}

#[tokio::test]
async fn logout_ends_the_session() {
    let server = secure_server();
    let session = session_of(&server, "otto").await;
    let response = bare()
        .post(server.url("/secure/logout"))
        .header("cookie", format!("sb_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(command(&server, &session, "status", "").await.0, 401);
    server.wait_for_log(r#"LOGOUT user="otto""#);
    server.wait_for_log(&format!("EVENT sessionShutdown {session} Logout"));
}

#[tokio::test]
async fn project_and_page_roles_are_enforced() {
    let server = secure_server();
    let page = |session: String, page: &'static str| {
        let url = server.url(&format!("/secure/{page}"));
        async move {
            bare()
                .get(url)
                .header("cookie", format!("sb_session={session}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let guest = session_of(&server, "gus").await;
    assert_eq!(
        page(guest.clone(), "home").await,
        403,
        "a guest may not open the project"
    );
    assert_eq!(command(&server, &guest, "status", "").await.0, 403);
    let operator = session_of(&server, "otto").await;
    assert_eq!(page(operator.clone(), "home").await, 200);
    assert_eq!(
        page(operator.clone(), "vault").await,
        403,
        "the vault page needs a supervisor"
    );
    let fragment = bare()
        .get(server.url("/secure/api/page/vault"))
        .header("cookie", format!("sb_session={operator}"))
        .send()
        .await
        .unwrap();
    assert_eq!(fragment.status(), 403, "fragments are checked too");
    let supervisor = session_of(&server, "ann").await;
    assert_eq!(page(supervisor, "vault").await, 200);
    // Anonymous sessions of a closed project can do nothing.
    let anonymous: Value = bare()
        .post(server.url("/secure/api/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anonymous["status"], "ok");
}

#[tokio::test]
async fn acl_first_match_wins_and_default_deny_never_reaches_the_handler() {
    let server = secure_server();
    let operator = session_of(&server, "otto").await;
    let (_, reply) = command(&server, &operator, "door", "front").await;
    assert_eq!(reply["status"], "ok", "{reply}");
    server.wait_for_log("HANDLER door front by otto");
    for (name, param) in [("door", "vault-1"), ("lights", "on")] {
        let (status, reply) = command(&server, &operator, name, param).await;
        assert_eq!(status, 200);
        assert_eq!(reply["status"], "error", "{name} {param}: {reply}");
        assert_eq!(reply["actions"][0]["display"], "toast");
        assert_eq!(
            reply["actions"][0]["message"],
            "You are not allowed to do that."
        );
        server.wait_for_log(&format!(
            r#"ACL DENIED user="otto" address=127.0.0.1 name="{name}" param="{param}""#
        ));
        assert!(
            !server.log().contains(&format!("HANDLER {name} {param}")),
            "the handler must not run for {name} {param}"
        );
    }
}

/// Issue 13 (the Perspective seed's "the user losing authorization"): when
/// the users file loses a user, or a user loses the role the project needs,
/// their sessions end with `sessionShutdown(…, AuthorizationLost)` instead of
/// living on and getting 403s.
#[tokio::test]
async fn sessions_end_when_their_user_is_removed_or_loses_the_role() {
    let users = users_file();
    let server = Server::start_with(
        &common::test_projects(),
        &["--users", users.to_str().unwrap()],
    );
    let ann = session_of(&server, "ann").await;
    let otto = session_of(&server, "otto").await;
    let (_, reply) = command(&server, &otto, "status", "").await;
    assert_eq!(reply["status"], "ok", "{reply}");

    // Otto is now only a guest: the secure project needs operator.
    passwd(&users, "otto", "guest");
    server.wait_for_log(&format!("EVENT sessionShutdown {otto} AuthorizationLost"));
    assert_session_gone(&server, &otto).await;

    // Ann is removed from the file altogether.
    let text = std::fs::read_to_string(&users).unwrap();
    let kept: Vec<&str> = text
        .split("[[users]]")
        .filter(|entry| !entry.contains(r#"id = "ann""#))
        .collect();
    std::fs::write(&users, kept.join("[[users]]")).unwrap();
    server.wait_for_log(&format!("EVENT sessionShutdown {ann} AuthorizationLost"));
    assert_session_gone(&server, &ann).await;
}

/// The session ends just after its `sessionShutdown` ran: its cookie then
/// gets 401 (unknown session), never 403 (a live session refused).
async fn assert_session_gone(server: &Server, session: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, reply) = command(server, session, "status", "").await;
        if status == 401 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session still answers {status}: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 13: the `[[acl]]` applies to form submissions, as a command named
/// after the form whose param is its data as JSON.
#[tokio::test]
async fn acl_applies_to_form_submissions() {
    let server = secure_server();
    let operator = session_of(&server, "otto").await;
    let submit = |name: &'static str, id: &'static str| {
        bare()
            .post(server.url("/secure/api/command"))
            .header("cookie", format!("sb_session={operator}"))
            .json(&json!({"type":"form","seq":1,"id":id,"name":name,"data":{"text":"hello"}}))
            .send()
    };
    let reply: Value = submit("feedback", "f-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["actions"][0]["message"], "stored feedback");
    server.wait_for_log("FORM feedback hello");

    let reply: Value = submit("payroll", "f-2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(
        reply["actions"][0]["message"],
        "You are not allowed to do that."
    );
    server.wait_for_log(
        r#"ACL DENIED user="otto" address=127.0.0.1 name="payroll" param="{\"text\":\"hello\"}""#,
    );
    assert!(
        !server.log().contains("FORM payroll"),
        "formSubmission must not run for a refused form"
    );
}

/// Opens a challenge through the handler and returns its id.
async fn open_challenge(server: &Server, session: &str) -> String {
    let (_, reply) = command(server, session, "openVault", "").await;
    assert_eq!(reply["actions"][0]["type"], "challenge", "{reply}");
    assert!(
        reply["actions"][0].get("payload").is_none(),
        "the payload stays on the server"
    );
    reply["actions"][0]["id"].as_str().unwrap().to_string()
}

async fn answer(server: &Server, session: &str, body: Value) -> (u16, Value) {
    let response = bare()
        .post(server.url("/secure/api/challenge"))
        .header("cookie", format!("sb_session={session}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn auth_challenge_results_reach_the_handler() {
    let server = secure_server();
    let session = session_of(&server, "otto").await;

    let id = open_challenge(&server, &session).await;
    let (_, reply) = answer(
        &server,
        &session,
        json!({"id": id, "user": "ann", "password": PASSWORD}),
    )
    .await;
    assert_eq!(
        reply["actions"][0]["message"],
        r#"success ann ["supervisor", "operator"] door=vault asked_by=otto"#
    );
    let (status, _) = answer(
        &server,
        &session,
        json!({"id": id, "user": "ann", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 404, "a challenge is answered once");

    let id = open_challenge(&server, &session).await;
    let (_, reply) = answer(
        &server,
        &session,
        json!({"id": id, "user": "ann", "password": "wrong"}),
    )
    .await;
    assert_eq!(
        reply["actions"][0]["message"],
        "generic Wrong user name or password."
    );

    let id = open_challenge(&server, &session).await;
    let (_, reply) = answer(&server, &session, json!({"id": id, "cancel": true})).await;
    assert_eq!(reply["actions"][0]["message"], "cancelled");

    // Another session cannot answer someone else's challenge.
    let id = open_challenge(&server, &session).await;
    let other = session_of(&server, "ann").await;
    assert_eq!(
        answer(&server, &other, json!({"id": id, "cancel": true}))
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn an_unanswered_challenge_times_out() {
    let server = secure_server();
    let session = session_of(&server, "otto").await;
    let client = common::Client {
        http: reqwest::Client::new(),
        base: server.url("/secure"),
        ws_base: server.ws_url("/secure"),
        session: session.clone(),
        set_cookie: String::new(),
    };
    let mut socket = client.socket_tab("t", "home").await;
    let id = open_challenge(&server, &session).await;
    // The project's timeout is 2 s; the result is pushed to the browser.
    let push = tokio::time::timeout(
        Duration::from_secs(10),
        receive_push(&mut socket, "actions"),
    )
    .await
    .unwrap();
    assert_eq!(push["event"], "authChallenge");
    assert_eq!(push["actions"][0]["message"], "timeout 1");
    assert_eq!(
        answer(&server, &session, json!({"id": id, "cancel": true}))
            .await
            .0,
        404,
        "too late"
    );
}

#[tokio::test]
async fn pages_carry_security_headers() {
    let server = secure_server();
    let response = bare().get(server.url("/testbed/")).send().await.unwrap();
    let headers = response.headers();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("script-src 'self' 'unsafe-inline'"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'self'"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "same-origin");
    assert_eq!(headers["x-frame-options"], "SAMEORIGIN");
}

#[tokio::test]
async fn cross_site_login_and_logout_posts_are_refused() {
    let server = secure_server();
    let response = bare()
        .post(server.url("/secure/login"))
        .header("origin", "http://evil.example")
        .form(&[("user", "ann"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

/// A self-signed certificate for 127.0.0.1, made with the openssl tool.
fn self_signed_certificate() -> (PathBuf, PathBuf) {
    let dir = common::temp_dir("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(status.success());
    (cert, key)
}

/// A server on TLS with a fresh self-signed certificate (for clients to trust).
fn tls_server() -> (PathBuf, Server) {
    let (cert, key) = self_signed_certificate();
    let server = Server::start_with(
        &common::test_projects(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    (cert, server)
}

#[test]
fn the_tls_listener_serves_https_with_secure_cookies() {
    let (cert, server) = tls_server();
    let output = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&cert)
        .arg(format!("https://{}/testbed/", server.addr))
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let headers = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(
        headers.starts_with("http/1.1 200") || headers.starts_with("http/2 200"),
        "{headers}"
    );
    let cookie = headers
        .lines()
        .find(|l| l.starts_with("set-cookie: sb_session="))
        .expect("a session cookie");
    assert!(
        cookie.contains("; secure") && cookie.contains("httponly"),
        "{cookie}"
    );
}

/// Issue 12, hardening: responses under TLS carried no HSTS, so a later
/// visit typed without `https://` could be intercepted over plain HTTP.
#[test]
fn tls_responses_let_browsers_fall_back_to_http() {
    let (cert, server) = tls_server();
    let output = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&cert)
        .arg(format!("https://{}/testbed/", server.addr))
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let headers = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(
        headers.contains("strict-transport-security: max-age=31536000"),
        "{headers}"
    );
    // Plain HTTP does not send it (browsers ignore it there anyway).
    let plain = Server::start(&common::test_projects());
    let output = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null"])
        .arg(plain.url("/testbed/"))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(!headers.contains("strict-transport-security"), "{headers}");
}

#[test]
fn websockets_work_over_tls() {
    use std::sync::Arc;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

    let (cert, server) = tls_server();
    let output = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "-X", "POST", "--cacert"])
        .arg(&cert)
        .arg(format!("https://{}/testbed/api/session", server.addr))
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let headers = String::from_utf8_lossy(&output.stdout).to_string();
    let session = headers
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: sb_session=")
        })
        .map(|l| cookie_value(l.split_once(": ").unwrap().1))
        .unwrap_or_else(|| panic!("a session cookie in {headers}"));

    // The test certificate is its own CA, which webpki refuses as a server
    // certificate: trust exactly that certificate instead.
    let expected = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExactCertificate { expected, provider }))
        .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let tcp = std::net::TcpStream::connect(&server.addr).unwrap();
    tcp.set_read_timeout(Some(common::REPLY_TIMEOUT)).unwrap();
    let tls = rustls::StreamOwned::new(connection, tcp);
    let mut request = format!("wss://{}/testbed/api/ws", server.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", format!("sb_session={session}").parse().unwrap());
    let (mut socket, response) = tungstenite::client(request, tls).expect("handshake over TLS");
    assert_eq!(response.status(), 101);
    socket
        .send(Message::text(
            json!({"type":"command","seq":1,"name":"say","param":"!"}).to_string(),
        ))
        .unwrap();
    let reply = loop {
        match socket.read().expect("a message") {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value.get("type").is_none() {
                    break value;
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    };
    assert_eq!(reply["seq"], 1, "{reply}");
    assert_eq!(reply["status"], "ok", "{reply}");
}

/// Accepts one certificate, as a browser told to trust it would.
#[derive(Debug)]
struct ExactCertificate {
    expected: rustls_pki_types::CertificateDer<'static>,
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for ExactCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the test certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
