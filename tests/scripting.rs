//! Script functions for integrators: log lines at any level (issue 16,
//! item 9), dates and times in the project's time zone in scripts and
//! templates (item 7), and calendar timers (item 8).

mod common;

use std::time::{Duration, Instant};

use common::{Server, run_check, temp_dir, toast_of, write_project};

#[tokio::test]
async fn scripts_log_warnings_and_errors_with_their_place() {
    let root = temp_dir("scripting-log");
    write_project(
        &root,
        "site",
        &[
            ("project.toml", ""),
            ("pages/home.html", common::HOME_PAGE),
            (
                "events/10-main.rhai",
                "fn userCommand(session, userid, name, param) {\n    log_warn(`low battery: ${param}`);\n    log_error(\"pump stopped\");\n    log(\"info\", 42);\n    if name == \"bad\" { log(\"loud\", \"x\"); }\n    \"ok\"\n}\n",
            ),
        ],
    );
    let server = Server::start(&root);
    let client = server.client("site").await;
    assert_eq!(client.command("log", "7%").await["status"], "ok");
    let log = server.wait_for_log("pump stopped");
    for wanted in [
        "WARN switchboard::script: events/10-main.rhai:2:5: low battery: 7% project=site",
        "ERROR switchboard::script: events/10-main.rhai:3:5: pump stopped project=site",
        "INFO switchboard::script: events/10-main.rhai:4:5: 42 project=site",
    ] {
        assert!(log.contains(wanted), "missing {wanted:?} in:\n{log}");
    }
    assert_eq!(client.command("bad", "").await["status"], "failed");
    server.wait_for_log("log: unknown level `loud`");
    std::fs::remove_dir_all(&root).ok();
}

/// 2026-01-01T00:00Z and 2025-07-01T00:00Z: winter and summer time in Rome.
const EVENTS_TIME: &str = r#"fn userCommand(session, userid, name, param) {
    let winter = 1767225600000;
    let summer = 1751328000000;
    if name == "format" {
        return #{ toast: `${format_time(winter, "%H:%M %Z")}|${format_time(summer, "%H:%M %Z")}|${format_time(winter)}|${time_zone()}` };
    }
    if name == "parts" {
        let t = local_time(summer);
        return #{ toast: `${t.hour}:${t.minute} day ${t.weekday} ${t.offset_minutes}` };
    }
    if name == "bad" {
        return #{ toast: format_time(winter, "%H:%") };
    }
}
"#;

#[tokio::test]
async fn times_are_formatted_in_the_project_time_zone() {
    let root = temp_dir("scripting-time");
    write_project(
        &root,
        "site",
        &[
            ("project.toml", "timezone = \"Europe/Rome\"\n"),
            (
                "pages/home.html",
                "{% extends \"sb/layout.html\" %}\n{% block content %}<p>at {{ 1751328000000 | format_time(format=\"%d/%m %H:%M\") }}</p>{% endblock %}\n",
            ),
            ("events/10-main.rhai", EVENTS_TIME),
        ],
    );
    let server = Server::start(&root);
    let client = server.client("site").await;
    assert_eq!(
        toast_of(&client.command("format", "").await),
        "01:00 CET|02:00 CEST|2026-01-01 01:00:00|Europe/Rome"
    );
    assert_eq!(
        toast_of(&client.command("parts", "").await),
        "2:0 day 2 120"
    );
    assert_eq!(client.command("bad", "").await["status"], "failed");
    let html = client
        .http
        .get(format!("{}/home", client.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("<p>at 01/07 02:00</p>"), "{html}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn bad_time_zones_and_schedules_are_load_errors() {
    let root = temp_dir("scripting-bad-time");
    let dir = write_project(
        &root,
        "site",
        &[
            (
                "project.toml",
                "title = \"x\"\ntimezone = \"Mars/Olympus\"\n\n[[timers]]\nname = \"t\"\ncron = \"61 * * * *\"\n",
            ),
            ("pages/home.html", common::HOME_PAGE),
        ],
    );
    let (code, _, stderr) = run_check(&dir);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("project.toml:2:1: timezone `Mars/Olympus` is not a known IANA time zone"),
        "{stderr}"
    );
    assert!(
        stderr.contains("project.toml:4:1: timer `t`: cron \"61 * * * *\""),
        "{stderr}"
    );
    std::fs::remove_dir_all(&root).ok();
}

const EVENTS_SCHEDULE: &str = r#"fn timer(name) {
    let runs = varGet("runs");
    if runs == () { runs = []; }
    runs.push(now());
    varSet("runs", runs);
}

fn userCommand(session, userid, name, param) {
    let runs = varGet("runs");
    if runs == () { runs = []; }
    return #{ toast: `${runs}` };
}
"#;

#[tokio::test]
async fn calendar_timers_run_once_per_due_time_whatever_the_sessions() {
    let root = temp_dir("scripting-cron");
    write_project(
        &root,
        "site",
        &[
            (
                "project.toml",
                "timezone = \"Europe/Rome\"\n\n[[timers]]\nname = \"tick\"\ncron = \"* * * * * *\"\n",
            ),
            ("pages/home.html", common::HOME_PAGE),
            ("events/10-main.rhai", EVENTS_SCHEDULE),
        ],
    );
    let server = Server::start(&root);
    let mut clients = Vec::new();
    for tab in ["a", "b", "c"] {
        let client = server.client("site").await;
        let socket = client.socket_tab(tab, "home").await;
        clients.push((client, socket));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let runs: Vec<i64> = loop {
        let text = toast_of(&clients[0].0.command("runs", "").await).to_string();
        let runs: Vec<i64> = serde_json::from_str(&text).unwrap();
        if runs.len() >= 3 {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "the timer ran {} times",
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Each due second gets one run, never one per session: three sessions
    // running it would put runs milliseconds apart.
    for pair in runs.windows(2) {
        assert!(
            pair[1] - pair[0] >= 500,
            "two runs {} ms apart: {runs:?}",
            pair[1] - pair[0]
        );
    }
    std::fs::remove_dir_all(&root).ok();
}
