//! Users and logins for the tests that need them: a users file written by
//! `switchboard passwd`, a server on the `secure` test project, and the
//! requests a browser's login form and API calls make.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::Server;

pub const PASSWORD: &str = "correct horse battery";

/// Sets a password with `switchboard passwd`, as an operator would.
pub fn passwd(users: &Path, user: &str, roles: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["passwd", user, "--roles", roles, "--users"])
        .arg(users)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "passwd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn users_file() -> PathBuf {
    let users = super::temp_dir("users").join("users.toml");
    passwd(&users, "ann", "supervisor,operator");
    passwd(&users, "otto", "operator");
    passwd(&users, "gus", "guest");
    users
}

pub fn secure_server() -> Server {
    let users = users_file();
    Server::start_with(
        &super::test_projects(),
        &["--users", users.to_str().unwrap()],
    )
}

/// A client that neither follows redirects nor keeps cookies: the tests
/// look at each Set-Cookie themselves.
pub fn bare() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("sb_session=") && !v.starts_with("sb_session=;"))
        .map(String::from)
}

pub fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("sb_session=")
        .to_string()
}

pub async fn log_in(
    server: &Server,
    cookie: Option<&str>,
    user: &str,
    password: &str,
) -> reqwest::Response {
    let mut request = bare().post(server.url("/secure/login")).form(&[
        ("user", user),
        ("password", password),
        ("next", "/secure/home"),
    ]);
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("sb_session={cookie}"));
    }
    request.send().await.unwrap()
}

/// Logs in and returns the session id.
pub async fn session_of(server: &Server, user: &str) -> String {
    let response = log_in(server, None, user, PASSWORD).await;
    assert_eq!(response.status(), 303, "login of {user}");
    cookie_value(&session_cookie(&response).expect("a session cookie"))
}

pub async fn command(server: &Server, session: &str, name: &str, param: &str) -> (u16, Value) {
    let response = bare()
        .post(server.url("/secure/api/command"))
        .header("cookie", format!("sb_session={session}"))
        .json(&json!({"type":"command","seq":1,"name":name,"param":param}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}
