//! Regression tests for the attacks of issue 12 (a hands-on attack of the
//! server): one test per finding, named after the attack, each reproducing
//! it against the real server. docs/security.md lists them ("Tested
//! attacks").

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::accounts::{PASSWORD, bare, command, log_in, secure_server, session_of};
use common::{Server, receive, send};
use futures_util::future::join_all;
use serde_json::json;

/// The lock-out's free failures per user and address (src/auth.rs).
const FREE_FAILURES: u64 = 5;

/// A field of /proc/<pid>/status, in kB.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A counter of `/metrics`.
async fn metric(server: &Server, name: &str) -> u64 {
    let text = bare()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Password checks the lock-out allows in `elapsed` for one user from one
/// address: the free failures, then one more after 1 s, 2 s more, 4 s more…
fn checks_allowed_within(elapsed: Duration) -> u64 {
    let extra = (elapsed.as_secs_f64() + 1.0).log2().floor() as u64;
    FREE_FAILURES + extra
}

/// `attempts` login posts sent at once; their statuses.
async fn login_burst(server: &Server, user: &str, passwords: &[String]) -> Vec<u16> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = server.url("/secure/login");
    let requests = passwords.iter().map(|password| {
        let request = client
            .post(&url)
            .form(&[("user", user), ("password", password.as_str())]);
        async move { request.send().await.unwrap().status().as_u16() }
    });
    join_all(requests).await
}

// ---------------------------------------------------------------- 1. login burst

/// Issue 12, item 1: 200 concurrent logins for a user that does not exist
/// took the server from 20 MB to 4 GB and every one of them was hashed.
#[tokio::test]
async fn login_burst_exhausts_memory_and_skips_the_lockout() {
    let server = secure_server();
    // One login first, so that the baseline includes a hash's buffers.
    assert_eq!(log_in(&server, None, "ann", PASSWORD).await.status(), 303);
    let checks_before = metric(&server, "switchboard_password_checks_total").await;
    let rss_before = proc_status_kb(server.pid(), "VmRSS:");
    let passwords: Vec<String> = (0..200).map(|n| format!("guess-{n}")).collect();
    let started = Instant::now();
    let statuses = login_burst(&server, "mallory", &passwords).await;
    let elapsed = started.elapsed();
    let peak = proc_status_kb(server.pid(), "VmHWM:");
    let checks = metric(&server, "switchboard_password_checks_total").await - checks_before;
    let refused = statuses.iter().filter(|s| **s == 429).count();
    let wrong = statuses.iter().filter(|s| **s == 401).count() as u64;
    eprintln!(
        "200 concurrent logins in {elapsed:?}: {wrong} checked (401), {refused} refused (429); \
         password checks {checks}; RSS before {rss_before} kB, peak {peak} kB"
    );
    assert_eq!(
        wrong + refused as u64,
        200,
        "every attempt answered: {statuses:?}"
    );
    assert_eq!(checks, wrong, "each 401 is one check, each 429 none");
    assert!(
        checks <= checks_allowed_within(elapsed),
        "{checks} passwords checked in {elapsed:?}; the lock-out allows {}",
        checks_allowed_within(elapsed)
    );
    assert!(
        peak.saturating_sub(rss_before) < 100 * 1024,
        "RSS grew from {rss_before} kB to a peak of {peak} kB"
    );
    // A normal client is still served.
    assert_eq!(log_in(&server, None, "otto", PASSWORD).await.status(), 303);
}

/// Issue 12, item 1, from many addresses at once (all of 127.0.0.0/8 is
/// loopback): one attempt per address runs at a time, and hashing is capped
/// at one per core, so memory stays bounded whatever the addresses.
#[tokio::test]
async fn login_burst_from_many_addresses_exhausts_memory() {
    let server = secure_server();
    assert_eq!(log_in(&server, None, "ann", PASSWORD).await.status(), 303);
    let checks_before = metric(&server, "switchboard_password_checks_total").await;
    let rss_before = proc_status_kb(server.pid(), "VmRSS:");
    let url = server.url("/secure/login");
    let started = Instant::now();
    let requests = (0..200).map(|n| {
        let client = client_from(&format!("127.0.1.{}", 10 + n % 20));
        let url = url.clone();
        async move {
            client
                .post(url)
                .form(&[("user", "mallory"), ("password", &format!("guess-{n}"))])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = join_all(requests).await;
    let elapsed = started.elapsed();
    let peak = proc_status_kb(server.pid(), "VmHWM:");
    let checks = metric(&server, "switchboard_password_checks_total").await - checks_before;
    let checked = statuses.iter().filter(|s| **s == 401).count() as u64;
    eprintln!(
        "200 concurrent logins from 20 addresses in {elapsed:?}: {checked} checked; \
         RSS before {rss_before} kB, peak {peak} kB"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(checks, checked);
    assert!(
        checks <= 20 * checks_allowed_within(elapsed),
        "{checks} checks"
    );
    // Up to one hash per core at once, ~19 MiB each: the 100 MB budget is
    // for two cores, each further core may add one hash's memory.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let budget_kb = (100 + 20 * cores.saturating_sub(2)) * 1024;
    assert!(
        peak.saturating_sub(rss_before) < budget_kb,
        "RSS grew from {rss_before} kB to a peak of {peak} kB ({cores} cores)"
    );
}

/// Issue 12, item 1: in a burst of 100 guesses containing the right
/// password, the right one logged in (100 checked, the lock-out allows 5).
#[tokio::test]
async fn login_burst_guesses_past_the_lockout() {
    let server = secure_server();
    let checks_before = metric(&server, "switchboard_password_checks_total").await;
    let mut passwords: Vec<String> = (0..99).map(|n| format!("guess-{n}")).collect();
    passwords.push(PASSWORD.to_string());
    let started = Instant::now();
    let statuses = login_burst(&server, "otto", &passwords).await;
    let checks = metric(&server, "switchboard_password_checks_total").await - checks_before;
    let answered = statuses.iter().filter(|s| **s != 429).count() as u64;
    assert_eq!(
        checks, answered,
        "each answered guess is one check: {statuses:?}"
    );
    if statuses.contains(&303) {
        return; // the right guess came first: nothing past the lock-out ran
    }
    // More guesses, one at a time, until the lock-out answers.
    let mut guesses = checks;
    while log_in(&server, None, "otto", "guess").await.status() == 401 {
        guesses += 1;
        assert!(guesses < 100, "never locked out");
    }
    let elapsed = started.elapsed();
    assert!(
        guesses <= checks_allowed_within(elapsed),
        "{guesses} guesses checked in {elapsed:?}: {statuses:?}"
    );
    assert_eq!(
        log_in(&server, None, "otto", PASSWORD).await.status(),
        429,
        "the right password waits too"
    );
}

/// Issue 12, item 1: a challenge answer with an id that does not exist
/// still cost a password hash.
#[tokio::test]
async fn challenge_answers_with_unknown_ids_hash_passwords() {
    let server = secure_server();
    let session = session_of(&server, "otto").await;
    let checks_before = metric(&server, "switchboard_password_checks_total").await;
    let response = bare()
        .post(server.url("/secure/api/challenge"))
        .header("cookie", format!("sb_session={session}"))
        .json(&json!({"id": "no-such-challenge", "user": "ann", "password": "guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        metric(&server, "switchboard_password_checks_total").await,
        checks_before,
        "no password hashed for an unknown challenge"
    );
}

// ---------------------------------------------------------------- 3. spraying

/// A client bound to another loopback address (all of 127.0.0.0/8 reaches
/// the server on Linux): another attacker, or another user.
fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(address.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn log_in_from(client: &reqwest::Client, server: &Server, user: &str, password: &str) -> u16 {
    client
        .post(server.url("/secure/login"))
        .form(&[("user", user), ("password", password)])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Issue 12, item 3: 4 wrong users and 1 own login, repeated, gave 16
/// failures from one address and never a 429.
#[tokio::test]
async fn one_valid_account_lets_an_address_spray_passwords() {
    let server = secure_server();
    let mut failures = 0;
    let mut throttled = false;
    'rounds: for _ in 0..4 {
        for user in ["u1", "u2", "u3", "u4"] {
            match log_in(&server, None, user, "guess").await.status().as_u16() {
                401 => failures += 1,
                429 => {
                    throttled = true;
                    break 'rounds;
                }
                other => panic!("unexpected {other}"),
            }
        }
        // The attacker's own account, between the guesses.
        let own = log_in(&server, None, "gus", PASSWORD).await.status();
        assert!(own == 303 || own == 429, "{own}");
    }
    assert!(
        throttled,
        "{failures} failures from one address, never a 429"
    );
    assert!(
        failures <= 10,
        "{failures} failures before the address was locked"
    );
}

/// Issue 12, hardening: the per-user lock-out let anyone lock a user out
/// from another address.
#[tokio::test]
async fn wrong_passwords_from_another_address_lock_a_user_out() {
    let server = secure_server();
    let attacker = client_from("127.0.0.2");
    for _ in 0..FREE_FAILURES {
        assert_eq!(log_in_from(&attacker, &server, "otto", "guess").await, 401);
    }
    assert_eq!(
        log_in_from(&attacker, &server, "otto", PASSWORD).await,
        429,
        "the attacker's address is locked out for otto"
    );
    let otto = client_from("127.0.0.3");
    assert_eq!(
        log_in_from(&otto, &server, "otto", PASSWORD).await,
        303,
        "otto, from his own address, only waits"
    );
    server.wait_for_log(r#"LOGIN DELAYED user="otto" address=127.0.0.3"#);
}

// ---------------------------------------------------------------- 2, 4. page names and tabs

/// A client of `project` holding the session `session` (a logged-in one).
fn client_of(server: &Server, project: &str, session: &str) -> common::Client {
    common::Client {
        http: reqwest::Client::new(),
        base: server.url(&format!("/{project}")),
        ws_base: server.ws_url(&format!("/{project}")),
        session: session.to_string(),
        set_cookie: String::new(),
    }
}

/// Issue 12, item 2: the WebSocket handshake checked project access only,
/// then ran `pageStartup(session, "vault")` for an operator who gets 403
/// from the vault page; `page_shown` stored any name.
#[tokio::test]
async fn page_names_from_the_client_run_page_startup_for_forbidden_pages() {
    let server = secure_server();
    let otto = client_of(&server, "secure", &session_of(&server, "otto").await);
    assert!(
        otto.try_socket_tab("t1", "vault").await.is_err(),
        "the handshake for a page the user may not open is refused"
    );
    let mut socket = otto.socket_tab("t2", "home").await;
    server.wait_for_log("EVENT pageStartup home");
    for (seq, page) in [(1, "vault".to_string()), (2, "x".repeat(60_000))] {
        send(
            &mut socket,
            &json!({"type": "page_shown", "seq": seq, "page": page}),
        )
        .await;
        let reply = receive(&mut socket).await;
        assert_eq!(reply["status"], "rejected", "{reply}");
        assert_eq!(reply["seq"], seq);
    }
    send(
        &mut socket,
        &json!({"type": "page_shown", "seq": 3, "page": "home"}),
    )
    .await;
    assert_eq!(receive(&mut socket).await["status"], "ok");
    assert!(
        !server.log().contains("EVENT pageStartup vault"),
        "pageStartup ran for the vault"
    );
    // A supervisor may open it.
    let ann = client_of(&server, "secure", &session_of(&server, "ann").await);
    let _vault = ann.socket_tab("t3", "vault").await;
    server.wait_for_log("EVENT pageStartup vault");
}

/// Issue 12, item 4: 150 tabs × 60 KB page names took the database from
/// 0.6 to 74 MB.
#[tokio::test]
async fn page_shown_names_grow_the_session_without_bound() {
    let server = Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    let database = server.data.join("switchboard.redb");
    let mut sockets = Vec::new();
    for tab in 0..40 {
        let mut socket = client.socket_tab(&format!("tab-{tab}"), "home").await;
        let page = format!("{tab}-{}", "x".repeat(60_000));
        send(
            &mut socket,
            &json!({"type": "page_shown", "seq": 1, "page": page}),
        )
        .await;
        assert_eq!(receive(&mut socket).await["status"], "rejected");
        sockets.push(socket);
    }
    let size = std::fs::metadata(&database).unwrap().len();
    assert!(size < 8 << 20, "the database grew to {size} bytes");
}

/// Issue 12, item 4: one connection started 5 000 sessions in 2.8 s.
#[tokio::test]
async fn anonymous_sessions_are_created_without_bound() {
    let server = Server::start_with(
        &common::test_projects(),
        &["--new-sessions-per-minute", "20"],
    );
    let new_session = |client: reqwest::Client| {
        let url = server.url("/testbed/api/session");
        async move { client.post(url).send().await.unwrap() }
    };
    for n in 0..20 {
        assert_eq!(new_session(bare()).await.status(), 200, "session {n}");
    }
    let refused = new_session(bare()).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["status"], "rejected");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("too many new sessions"),
        "{body}"
    );
    let page = bare().get(server.url("/testbed/")).send().await.unwrap();
    assert_eq!(page.status(), 429, "pages start no session either");
    assert_eq!(
        new_session(client_from("127.0.0.4")).await.status(),
        200,
        "other addresses are not affected"
    );
}

// ---------------------------------------------------------------- 6. DNS rebinding

/// Issue 12, item 6: any `Host` was accepted and Origin was compared with
/// it, so a page whose name was re-pointed at the server drove it.
#[tokio::test]
async fn dns_rebinding_reaches_public_projects() {
    let server = Server::start(&common::test_projects());
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let rebound = format!("rebind.attacker.example:{port}");
    let page = bare()
        .get(server.url("/testbed/"))
        .header("host", &rebound)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 421);
    assert!(page.headers().contains_key("content-security-policy"));
    let command = bare()
        .post(server.url("/testbed/api/command"))
        .header("host", &rebound)
        .header("origin", format!("http://{rebound}"))
        .json(&json!({"type": "command", "seq": 1, "name": "say", "param": "!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(command.status(), 421);
    // The WebSocket handshake too.
    let client = server.client("testbed").await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.ws_url("/testbed/api/ws"),
        )
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("host", rebound.parse().unwrap());
    headers.insert(
        "cookie",
        format!("sb_session={}", client.session).parse().unwrap(),
    );
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    // The server's own names still work.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let page = bare()
            .get(server.url("/testbed/"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{host}");
    }
    // A listed name is allowed, the loopback defaults are then not.
    let listed = Server::start_with(
        &common::test_projects(),
        &["--allowed-hosts", "panel.example.com"],
    );
    let host_status = |host: String| {
        let url = listed.url("/testbed/");
        async move {
            bare()
                .get(url)
                .header("host", host)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(host_status("panel.example.com".into()).await, 200);
    assert_eq!(host_status("rebind.attacker.example".into()).await, 421);
}

/// Issue 12, item 6: Origin was compared without its scheme, so
/// `https://host` passed for a plain-HTTP server (and the reverse).
#[tokio::test]
async fn an_origin_with_another_scheme_passes() {
    let server = Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    let post = |origin: String| {
        let request = client
            .http
            .post(format!("{}/api/command", client.base))
            .header("origin", origin)
            .json(&json!({"type": "command", "seq": 1, "name": "say", "param": "!"}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(format!("https://{}", server.addr)).await, 403);
    assert_eq!(post(format!("http://{}", server.addr)).await, 200);
}

// ---------------------------------------------------------------- 7. form answers

fn submission(id: &str, email: &str) -> serde_json::Value {
    json!({"type": "form", "seq": 1, "id": id, "name": "visit", "data": {"id": id, "email": email},
           "context": {"form": "visit"}, "session_context": {}, "retry": false})
}

/// Issue 12, item 7: a submission id reused from another session got the
/// first session's stored answer (a PIN in the attack).
#[tokio::test]
async fn a_submission_id_from_another_session_gets_its_answer() {
    let server = Server::start(&common::test_projects());
    let owner = server.client("reliable").await;
    let intruder = server.client("reliable").await;
    let (_, first) = owner.post(&submission("s-1", "owner@example.com")).await;
    assert_eq!(first["status"], "ok", "{first}");
    let (_, stolen) = intruder
        .post(&submission("s-1", "intruder@example.com"))
        .await;
    assert_eq!(stolen["status"], "ok", "{stolen}");
    assert!(
        !server.log().contains("[REPEAT]"),
        "the intruder was answered from the owner's record"
    );
    // The owner's own repeat is still answered from the record.
    let (_, again) = owner.post(&submission("s-1", "owner@example.com")).await;
    assert_eq!(again["actions"], first["actions"]);
    server.wait_for_log("[REPEAT] answered from the record");
    let audit = owner.command("audit", "").await;
    assert_eq!(
        audit["actions"][0]["message"], "submissions=2 distinct=1 repeated=1",
        "the intruder's submission ran as a new one: {audit}"
    );
}

// ---------------------------------------------------------------- hardening

/// Issue 12, hardening: `/` listed login-only projects to anonymous
/// visitors.
#[tokio::test]
async fn the_index_lists_login_only_projects_to_anonymous_visitors() {
    let server = secure_server();
    let index = bare()
        .get(server.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(index.contains("/testbed/"), "{index}");
    assert!(!index.contains("/secure/"), "{index}");
}

/// Issue 12, hardening: a login-only project's `static/` was public.
#[tokio::test]
async fn static_files_of_login_only_projects_are_public() {
    let server = secure_server();
    let get = |cookie: Option<String>| {
        let mut request = bare().get(server.url("/secure/static/site.css"));
        if let Some(session) = cookie {
            request = request.header("cookie", format!("sb_session={session}"));
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(None).await, 401, "anonymous");
    assert_eq!(
        get(Some(session_of(&server, "gus").await)).await,
        403,
        "a guest"
    );
    assert_eq!(
        get(Some(session_of(&server, "otto").await)).await,
        200,
        "a user"
    );
}

/// Issue 12, hardening: `/metrics` was open to anyone.
#[tokio::test]
async fn metrics_are_open_to_anyone() {
    let server = Server::start_with(
        &common::test_projects(),
        &["--metrics-token", "metrics-secret"],
    );
    let get = |token: Option<&str>| {
        let mut request = bare().get(server.url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some("guess")).await, 401);
    assert_eq!(get(Some("metrics-secret")).await, 200);
}

/// Issue 12, hardening: a CR LF in the login form's `next` gave a 500
/// after the session had already been replaced.
#[tokio::test]
async fn a_crlf_in_the_login_next_fails_after_the_session_was_replaced() {
    let server = secure_server();
    let response = bare()
        .post(server.url("/secure/login"))
        .form(&[
            ("user", "otto"),
            ("password", PASSWORD),
            ("next", "/secure/home\r\nSet-Cookie: injected=1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/secure/");
    assert!(
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("injected")),
    );
}

/// Issue 12, hardening: the docs said cookie-based `/api/event` skips
/// `[access]`; it is checked, as for every other route.
#[tokio::test]
async fn cookie_device_events_skip_access() {
    let server = secure_server();
    let anonymous = bare()
        .post(server.url("/secure/api/session"))
        .send()
        .await
        .unwrap();
    let cookie = anonymous
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let event = bare()
        .post(server.url("/secure/api/event"))
        .header("cookie", cookie)
        .json(&json!({"event": "barcode", "data": {"text": "ASSET-42"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(event.status(), 401);
}

/// Issue 12, hardening: ACL names were matched as written, so a deny rule
/// on `vault*` let `Vault1`, ` vault1` and a zero-width space through.
#[tokio::test]
async fn acl_deny_rules_are_stepped_around_by_spelling() {
    let server = secure_server();
    let otto = session_of(&server, "otto").await;
    for param in ["Vault1", " vault1", "\u{200B}vault1", "ｖａｕｌｔ1"] {
        let (status, reply) = command(&server, &otto, "door", param).await;
        assert_eq!(status, 200);
        assert_eq!(reply["status"], "error", "{param:?}: {reply}");
        assert!(
            !server.log().contains(&format!("HANDLER door {param}")),
            "the handler ran for {param:?}"
        );
    }
}

/// Issue 12, hardening: the users file and the database were created 0644,
/// readable by every account on the machine.
#[tokio::test]
async fn secret_files_are_created_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let users = common::accounts::users_file();
    let server = Server::start_with(
        &common::test_projects(),
        &["--users", users.to_str().unwrap()],
    );
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&users), 0o600, "users file");
    assert_eq!(
        mode(&server.data.join("switchboard.redb")),
        0o600,
        "database"
    );
    drop(server);
    // An existing file readable by others is reported at start.
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::start_with(
        &common::test_projects(),
        &["--users", users.to_str().unwrap()],
    );
    server.wait_for_log("is readable by other users (mode 644)");
}
