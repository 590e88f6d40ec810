//! Getting started (issue 16, items 11–13): `switchboard new` makes a
//! project that passes `check` and runs; docs/tutorial.md followed step by
//! step (its file blocks are the project this test builds and drives);
//! the favicon.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use common::{Server, run_check, temp_dir, toast_of};

fn switchboard_new(dir: &Path) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("new")
        .arg(dir)
        .output()
        .expect("switchboard new runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn get(client: &common::Client, path: &str, language: &str) -> String {
    let response = client
        .http
        .get(format!("{}/{path}", client.base))
        .header("accept-language", language)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn a_new_project_passes_check_and_runs() {
    let root = temp_dir("new");
    let dir = root.join("lobby");
    let (code, stdout, stderr) = switchboard_new(&dir);
    assert_eq!(code, Some(0), "{stderr}");
    for file in [
        "project.toml",
        "pages/home.html",
        "events/10-main.rhai",
        "lib/panel.rhai",
        "i18n/en.ftl",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing; {stdout}");
        assert!(stdout.contains(file), "{stdout}");
    }
    let (code, out, err) = run_check(&dir);
    assert_eq!((code, out.trim()), (Some(0), "ok"), "{err}");
    let events = std::fs::read_to_string(dir.join("events/10-main.rhai")).unwrap();
    assert!(
        events.contains("docs/scripting.md"),
        "comments point at the docs"
    );

    // It runs: the page, its translation and its handler.
    let server = Server::start(&root);
    let client = server.client("lobby").await;
    let html = get(&client, "home", "it").await;
    assert!(html.contains("Benvenuto in lobby"), "{html}");
    assert!(html.contains(">off<"), "{html}");
    assert_eq!(toast_of(&client.command("lamp", "toggle").await), "Fatto");
    assert!(get(&client, "home", "it").await.contains(">on<"));

    // Never over an existing folder, never with a name that cannot be served.
    let (code, _, stderr) = switchboard_new(&dir);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("already exists"), "{stderr}");
    let (code, _, stderr) = switchboard_new(&root.join("_private"));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("project name"), "{stderr}");
    std::fs::remove_dir_all(&root).ok();
}

#[tokio::test]
async fn every_page_has_a_favicon() {
    let root = temp_dir("favicon");
    switchboard_new(&root.join("lobby"));
    let server = Server::start(&root);
    let client = server.client("lobby").await;
    let html = get(&client, "home", "en").await;
    assert!(
        html.contains("<link rel=\"icon\" href=\"/_sb/favicon.svg\""),
        "{html}"
    );
    for path in ["/favicon.ico", "/_sb/favicon.svg"] {
        let response = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "image/svg+xml");
        assert!(response.text().await.unwrap().starts_with("<svg"));
    }
    std::fs::remove_dir_all(&root).ok();
}

/// The fenced blocks of docs/tutorial.md tagged `file=<path>`, in order.
fn tutorial_files() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/tutorial.md"))
            .unwrap();
    let mut files = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => {
                if let Some(path) = info
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("file="))
                {
                    current = Some((path.to_string(), String::new()));
                } else if !info.trim().is_empty() {
                    // Skip the block: a marker that it is not ours.
                    current = Some((String::new(), String::new()));
                }
            }
            (Some(_), Some("")) => {
                let (path, body) = current.take().unwrap();
                if !path.is_empty() {
                    files.push((path, body));
                }
            }
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    files
}

async fn send(client: &common::Client, object: &str, name: &str, param: &str) -> Value {
    let (status, reply) = client
        .post(&json!({"type":"command","seq":1,"object":object,"name":name,"param":param}))
        .await;
    assert_eq!(status, 200, "{name}({param}): {reply}");
    reply
}

#[tokio::test]
async fn the_tutorial_works_step_by_step() {
    let files = tutorial_files();
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "project.toml",
            "i18n/en.ftl",
            "i18n/it.ftl",
            "pages/home.html",
            "lib/room.rhai",
            "events/10-main.rhai"
        ]
    );
    // Step 1: `switchboard new projects/room`; then each file as the
    // tutorial gives it, and `switchboard check`.
    let root = temp_dir("tutorial");
    let dir = root.join("room");
    assert_eq!(switchboard_new(&dir).0, Some(0));
    for (path, body) in &files {
        std::fs::write(dir.join(path), body).unwrap();
    }
    let (code, out, err) = run_check(&dir);
    assert_eq!((code, out.trim(), err.as_str()), (Some(0), "ok", ""));

    let server = Server::start_with(&root, &["--dev"]);
    let client = server.client("room").await;
    let html = get(&client, "", "en-GB,en;q=0.8").await;
    assert!(html.contains("<h1>Room 12</h1>"), "{html}");
    assert!(
        html.contains(">○</span>"),
        "the light's state on first load: {html}"
    );

    // The light: its state is pushed and on the page.
    assert_eq!(
        send(&client, "light", "light", "toggle").await["status"],
        "ok"
    );
    assert!(get(&client, "", "en").await.contains(">●</span>"));

    // The setpoint: kept, then refused and rolled back.
    let reply = send(&client, "setpoint", "setpoint", "22").await;
    assert_eq!(toast_of(&reply), "Set to 22 °C", "{reply}");
    let reply = send(&client, "setpoint", "setpoint", "35").await;
    assert_eq!(reply["status"], "error", "{reply}");
    assert_eq!(toast_of(&reply), "Choose between 16 and 28 °C");
    assert_eq!(
        reply["actions"][1],
        json!({"type":"rollback","object":"setpoint","value":"22"})
    );
    assert_eq!(
        send(&client, "setpoint", "setpoint", "warm").await["status"],
        "error"
    );

    // The form: field errors, then success.
    let reply = send(&client, "send", "send", r#"{"guest":"","email":"ann"}"#).await;
    assert_eq!(reply["status"], "error", "{reply}");
    let errors: Vec<(&str, &str)> = reply["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["field"].as_str().unwrap(), a["message"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        [
            ("email", "This is not an e-mail address"),
            ("guest", "Please fill this in")
        ]
    );
    let reply = send(
        &client,
        "send",
        "send",
        r#"{"guest":"Ann","email":"ann@example.com"}"#,
    )
    .await;
    assert_eq!(toast_of(&reply), "Sent: we will get back to you");
    server.wait_for_log("front desk request from Ann <ann@example.com>");

    // Translated, for an Italian browser.
    let italian = server.client("room").await;
    let html = get(&italian, "", "it-IT,it;q=0.9").await;
    assert!(
        html.contains("<h1>Camera 12</h1>") && html.contains("Scrivi alla reception"),
        "{html}"
    );
    let reply = send(&italian, "setpoint", "setpoint", "40").await;
    assert_eq!(toast_of(&reply), "Scegli tra 16 e 28 °C");
    std::fs::remove_dir_all(&root).ok();
}
