//! Dev mode (`--dev`): compile errors and silent mistakes reach the
//! browser's dev overlay with paths relative to the project; without it no
//! file path ever reaches a browser (issue 16, items 4 and 6).

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

use common::{
    HOME_PAGE, Server, Socket, command, receive_any, receive_push, run_check, temp_dir,
    write_project,
};

const MISTAKES: &str = r#"fn userCommand(session, userid, name, param) {
    if name == "save" {
        return #{ tost: "Saved" };
    }
    if name == "flag" {
        return true;
    }
    if name == "marker" {
        sendActions(session, #{ toast: "marker" });
        return "ok";
    }
}
"#;

fn mistakes_project(label: &str) -> (PathBuf, PathBuf) {
    let root = temp_dir(label);
    let dir = write_project(
        &root,
        "site",
        &[
            ("project.toml", ""),
            ("pages/home.html", HOME_PAGE),
            ("events/10-main.rhai", MISTAKES),
        ],
    );
    (root, dir)
}

/// Every frame up to the `marker` toast push: pushes of one session arrive
/// in order, so anything the earlier commands pushed comes before it.
async fn frames_until_marker(socket: &mut Socket, seq: u64) -> Vec<Value> {
    common::send(
        socket,
        &serde_json::json!({"type":"command","seq":seq,"name":"marker","param":""}),
    )
    .await;
    let mut frames = Vec::new();
    loop {
        let frame = receive_any(socket).await;
        let is_marker = frame["type"] == "actions" && frame["actions"][0]["message"] == "marker";
        frames.push(frame);
        if is_marker {
            return frames;
        }
    }
}

/// Sends a command; returns its reply and the dev notice it caused (in
/// either order: the notice is pushed before the reply is written).
async fn command_with_notice(
    socket: &mut Socket,
    seq: u64,
    name: &str,
    param: &str,
) -> (Value, String) {
    common::send(
        socket,
        &serde_json::json!({"type":"command","seq":seq,"name":name,"param":param}),
    )
    .await;
    let (mut reply, mut notice) = (None, None);
    while reply.is_none() || notice.is_none() {
        let frame = receive_any(socket).await;
        if frame["type"] == "dev_notice" {
            notice = frame["message"].as_str().map(String::from);
        } else if frame.get("type").is_none() {
            reply = Some(frame);
        }
    }
    (reply.unwrap(), notice.unwrap())
}

fn break_script(dir: &Path) {
    std::fs::write(
        dir.join("events/10-main.rhai"),
        "fn userCommand(s, u, n, p) {\n  let = ;\n}\n",
    )
    .unwrap();
}

/// Regression test for the dev overlay reaching every browser with the
/// server's absolute paths (issue 16 item 6; security issue 12 item 5).
#[tokio::test]
async fn dev_overlay_paths_stay_on_the_server() {
    let (root, dir) = mistakes_project("devmode-off");
    let server = Server::start(&root);
    let client = server.client("site").await;
    let mut socket = client.socket_tab("t1", "home").await;
    command(&mut socket, 1, "save", "").await;
    command(&mut socket, 2, "nothing", "").await;
    command(&mut socket, 3, "flag", "").await;
    break_script(&dir);
    server.wait_for_log("still serving the last good version");
    let frames = frames_until_marker(&mut socket, 4).await;
    let root_text = root.display().to_string();
    for frame in &frames {
        let text = frame.to_string();
        assert!(
            !text.contains("dev_") && !text.contains(&root_text) && !text.contains(".rhai"),
            "outside dev mode a browser got {frame}"
        );
    }
    assert!(
        server.log().contains("10-main.rhai:2:"),
        "the log keeps the detail"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[tokio::test]
async fn dev_mode_shows_compile_errors_relative_to_the_project() {
    let (root, dir) = mistakes_project("devmode-on");
    let server = Server::start_with(&root, &["--dev"]);
    let client = server.client("site").await;
    let mut socket = client.socket_tab("t1", "home").await;
    break_script(&dir);
    let error = receive_push(&mut socket, "dev_error").await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("events/10-main.rhai:2:"),
        "path relative to the project: {message}"
    );
    assert!(!message.contains(&root.display().to_string()), "{message}");
    std::fs::remove_dir_all(&root).ok();
}

#[tokio::test]
async fn dev_mode_shows_silent_mistakes_with_file_and_line() {
    let (root, _dir) = mistakes_project("devmode-notices");
    let server = Server::start_with(&root, &["--dev"]);
    let client = server.client("site").await;
    let mut socket = client.socket_tab("t1", "home").await;

    let (reply, notice) = command_with_notice(&mut socket, 1, "save", "").await;
    assert_eq!(
        reply["status"], "ok",
        "the answer itself is unchanged: {reply}"
    );
    assert_eq!(
        notice,
        "events/10-main.rhai:3:16: userCommand(\"save\", \"\"): tost: unknown key, ignored"
    );

    let (_, notice) = command_with_notice(&mut socket, 2, "nothing", "x").await;
    assert_eq!(
        notice,
        "userCommand(\"nothing\", \"x\") [UNHANDLED]: every script returned () (events/10-main.rhai)"
    );

    let (_, notice) = command_with_notice(&mut socket, 3, "flag", "").await;
    assert!(
        notice.starts_with(
            "events/10-main.rhai:1: userCommand(\"flag\", \"\"): answer: a value of type bool"
        ),
        "{notice}"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn check_warns_about_unknown_answer_keys() {
    let (root, dir) = mistakes_project("devmode-check");
    let (code, stdout, stderr) = run_check(&dir);
    assert_eq!((code, stdout.trim()), (Some(0), "ok"), "{stderr}");
    let wanted = "events/10-main.rhai:3:16: answer key `tost` is not part of the Command API";
    assert!(
        stderr.starts_with("warning: ") && stderr.contains(wanted),
        "{stderr}"
    );
    assert!(
        !stderr.contains("toast"),
        "sendActions' known keys pass: {stderr}"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[tokio::test]
async fn dev_mode_shows_mistakes_of_session_events() {
    let root = temp_dir("devmode-events");
    write_project(
        &root,
        "site",
        &[
            ("project.toml", ""),
            ("pages/home.html", HOME_PAGE),
            (
                "events/10-main.rhai",
                "fn pageStartup(session, page) {\n    sessionSet(session, \"page\", page.name)\n}\n",
            ),
        ],
    );
    let server = Server::start_with(&root, &["--dev"]);
    let client = server.client("site").await;
    let mut socket = client.socket_tab("t1", "home").await;
    let notice = receive_push(&mut socket, "dev_notice").await;
    assert_eq!(
        notice["message"],
        "events/10-main.rhai:1: pageStartup(\"home\"): answer: a value of type bool is not a Command API answer, ignored"
    );
    std::fs::remove_dir_all(&root).ok();
}
