//! `GET /<project>/api/download` through `userDownload`.

mod common;

use common::Server;

async fn get(client: &common::Client, query: &str) -> reqwest::Response {
    client
        .http
        .get(format!("{}/api/download?{query}", client.base))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_generated_file_has_its_name_type_and_bytes() {
    let server = Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    let response = get(&client, "name=report&parameter=21.5").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/csv");
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.starts_with("attachment") && disposition.contains("report.csv"),
        "{disposition}"
    );
    assert_eq!(response.text().await.unwrap(), "room,temp\nkitchen,21.5\n");
}

#[tokio::test]
async fn a_blob_body_is_sent_as_bytes() {
    let server = Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    let response = get(&client, "name=blob").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"AAA");
}

#[tokio::test]
async fn a_project_file_is_served() {
    let server = Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    let response = get(&client, "name=file&parameter=manual.txt").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("manual.txt")
    );
    assert_eq!(response.text().await.unwrap(), "The manual.\n");
}

/// Issue 12: `file` was confined to the whole project folder, so a handler
/// passing a client's param on could serve `project.toml` (with the API
/// token) and the scripts. It is confined to the project's `files/`.
#[tokio::test]
async fn a_download_file_reads_the_project_toml_and_scripts() {
    let server = Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    for path in [
        "project.toml",
        "../project.toml",
        "events/10-main.rhai",
        "files/../project.toml",
        "pages/home.html",
    ] {
        let response = get(&client, &format!("name=file&parameter={path}")).await;
        assert_eq!(response.status(), 404, "{path} was served");
    }
    assert_eq!(
        get(&client, "name=file&parameter=manual.txt")
            .await
            .status(),
        200,
        "files/ itself is served"
    );
}

/// Issue 12: a right-to-left override in a download's name passed to the
/// browser, which showed `invoice\u{202E}fdp.exe` as `invoiceexe.pdf`.
#[tokio::test]
async fn a_right_to_left_override_disguises_a_download_name() {
    let server = Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    let response = get(&client, "name=named&parameter=invoice%E2%80%AEfdp.exe").await;
    assert_eq!(response.status(), 200);
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.contains("filename=\"invoicefdp.exe\""),
        "{disposition}"
    );
    assert!(
        !disposition.to_ascii_lowercase().contains("%e2%80%ae"),
        "the override reached the header: {disposition}"
    );
}

#[tokio::test]
async fn paths_cannot_escape_the_project() {
    let server = Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    for path in [
        "../broken/project.toml",
        "files/../../broken/project.toml",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "files/..%2F..%2Fbroken%2Fproject.toml",
    ] {
        let response = get(&client, &format!("name=file&parameter={path}")).await;
        assert_eq!(response.status(), 404, "{path} was not refused");
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("Broken") && !body.contains("root:"),
            "{path} leaked: {body}"
        );
    }
}

#[tokio::test]
async fn bad_answers_and_failures_are_clear_errors() {
    let server = Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    let response = get(&client, "name=bad").await;
    assert_eq!(response.status(), 422);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["reason"].as_str().unwrap().contains("not a download"),
        "{body}"
    );
    assert_eq!(get(&client, "name=nobody").await.status(), 404);
    let response = get(&client, "name=throw").await;
    assert_eq!(response.status(), 500);
    assert!(
        !response.text().await.unwrap().contains("download failed"),
        "script errors stay in the log"
    );
    server.wait_for_log("download failed");
    assert_eq!(
        get(&client, "parameter=x").await.status(),
        400,
        "name is required"
    );
}

#[tokio::test]
async fn downloads_need_a_session() {
    let server = Server::start(&common::test_projects());
    let response = reqwest::get(server.url("/testbed/api/download?name=report"))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}
