//! Loading projects: broken ones are not served, `switchboard check`, pages.

mod common;

use std::process::Command;

use common::Server;

#[tokio::test]
async fn a_broken_project_is_not_served_and_its_error_is_logged() {
    let server = Server::start(&common::test_projects());
    assert_eq!(
        reqwest::get(server.url("/testbed/"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(server.url("/broken/")).await.unwrap().status(),
        404
    );
    let log = server.wait_for_log("is not served");
    assert!(
        log.contains("broken/events/main.rhai:2:"),
        "error names file and line:\n{log}"
    );
}

#[tokio::test]
async fn pages_popups_and_unknown_pages() {
    let server = Server::start(&common::test_projects());
    let home = reqwest::get(server.url("/testbed/home")).await.unwrap();
    assert_eq!(home.status(), 200);
    let html = home.text().await.unwrap();
    assert!(
        html.contains("/_sb/switchboard.js") && html.contains(r#"data-sb-page="home""#),
        "{html}"
    );
    assert_eq!(
        reqwest::get(server.url("/testbed/popup2"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(server.url("/testbed/nosuch"))
            .await
            .unwrap()
            .status(),
        404
    );
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = redirect.get(server.url("/testbed")).send().await.unwrap();
    assert_eq!(response.headers()["location"], "/testbed/");
    let index = reqwest::get(server.url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        index.contains("/testbed/") && !index.contains("/broken/"),
        "{index}"
    );
    let js = reqwest::get(server.url("/_sb/switchboard.js"))
        .await
        .unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
}

#[test]
fn check_reports_file_line_and_column() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("check")
        .arg(common::test_projects().join("broken"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken/events/main.rhai:2:13:"), "{stderr}");
    // The start page defaults to `home`, and broken has it; only the script is wrong.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn check_says_ok_for_a_good_project() {
    for project in [
        common::test_projects().join("testbed"),
        common::demo_projects().join("demo"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("check")
            .arg(&project)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            project.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
    }
}

#[test]
fn check_reports_template_errors_with_position() {
    let dir = std::env::temp_dir()
        .join(format!("sb-check-{}", std::process::id()))
        .join("tpl");
    std::fs::create_dir_all(dir.join("pages")).unwrap();
    std::fs::write(dir.join("project.toml"), "title = \"T\"\n").unwrap();
    std::fs::write(
        dir.join("pages/home.html"),
        "<p>ok</p>\n<p>{{ broken( }}</p>\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("check")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pages/home.html:2:"), "{stderr}");
    std::fs::write(
        dir.join("project.toml"),
        "title = \"T\"\nstrat = \"home\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("pages/home.html"), "<p>ok</p>\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("check")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("project.toml:2:1:") && stderr.contains("strat"),
        "unknown settings are errors: {stderr}"
    );
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn page_fragments_carry_the_content_block() {
    let server = Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    let fragment: serde_json::Value = client
        .http
        .get(format!("{}/api/page/popup2", client.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fragment["kind"], "popup");
    assert_eq!(fragment["html"], "<p>Popup two</p>");
    let fragment: serde_json::Value = client
        .http
        .get(format!("{}/api/page/home", client.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fragment["kind"], "page");
    assert_eq!(fragment["title"], "Testbed");
    let missing = client
        .http
        .get(format!("{}/api/page/nosuch", client.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn an_existing_session_is_resumed_not_replaced() {
    let server = Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    let response = client
        .http
        .post(format!("{}/api/session", client.base))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("set-cookie").is_none());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["resumed"], true);
}
