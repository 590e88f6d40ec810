//! Templates: errors placed at the right file, line and column with the
//! real cause first (issue 16, item 3); the state a page renders with on
//! its first load, and `projectStartup()` (item 5).

mod common;

use std::time::{Duration, Instant};

use common::{HOME_PAGE, Client, Server, run_check, temp_dir, write_project};

fn page(content: &str) -> String {
    format!("{{% extends \"sb/layout.html\" %}}\n{{% block content %}}\n{content}\n{{% endblock %}}\n")
}

#[test]
fn template_errors_name_file_line_column_and_cause() {
    let root = temp_dir("template-errors");
    let cases = [
        (
            "undefined",
            page("<p>x</p>\n<p>{{ room }}</p>"),
            "pages/home.html:4:7: Variable `room` is not defined",
        ),
        (
            "component",
            page("<p>x</p>\n  {{ <sb.nope id=\"x\" /> }}"),
            "pages/home.html:4:6: Unknown component `sb.nope`",
        ),
        (
            "tag",
            "{% extends \"sb/layout.html\" %}\n{% block content %}\n<p>x</p>\n{% endblok %}\n".to_string(),
            "pages/home.html:4:4: Unknown tag `endblok`",
        ),
        (
            "argument",
            page("<p>x</p>\n  {{ <sb.button id=\"x\" repeat=\"yes\" /> }}"),
            "pages/home.html:4:6: Component argument `repeat` (type: `string`) does not match expected type: `bool`",
        ),
        (
            "nocontent",
            "<p>a page that does not extend the layout</p>\n".to_string(),
            "pages/home.html:1:1: no `content` block",
        ),
    ];
    for (name, text, expected) in cases {
        let dir = write_project(
            &root,
            name,
            &[("project.toml", ""), ("pages/home.html", text.as_str())],
        );
        let (code, _, stderr) = run_check(&dir);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        let wanted = format!("{}/{expected}", dir.display());
        assert!(
            first.starts_with(&wanted),
            "{name}: wanted {wanted:?}, got:\n{stderr}"
        );
        assert!(
            !stderr.contains("no `content` block") || name == "nocontent",
            "{name}: no wrong advice: {stderr}"
        );
    }
    std::fs::remove_dir_all(&root).ok();
}

const STATE_PAGE: &str = r#"{% extends "sb/layout.html" %}
{% block content %}
<p id="mode">mode={{ vars["mode!"] | default(value="?") }}</p>
<p id="startups">startups={{ vars.startups | default(value=0) }}</p>
<p id="clock">clock={{ ui.clock?.text | default(value="--") }}</p>
<p id="greeting">greeting={{ ui.greeting?.text | default(value="") }}</p>
{% endblock %}
"#;

const STATE_EVENTS: &str = r#"fn projectStartup() {
    let n = varGet("startups");
    varSet("startups", if n == () { 1 } else { n + 1 });
    varSet("mode!", "eco");
    uiSet("clock", "text", "12:00");
}

fn userCommand(session, userid, name, param) {
    if name == "greet" {
        uiSessionSet(session, "greeting", "text", param);
        return "ok";
    }
}
"#;

async fn get_page(client: &Client, page: &str) -> String {
    let response = client
        .http
        .get(format!("{}/{page}", client.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn pages_render_variables_and_ui_values_set_by_project_startup() {
    let root = temp_dir("template-state");
    let dir = write_project(
        &root,
        "site",
        &[
            ("project.toml", ""),
            ("pages/home.html", STATE_PAGE),
            ("pages/other.html", HOME_PAGE),
            ("events/10-main.rhai", STATE_EVENTS),
        ],
    );
    let server = Server::start(&root);
    let first = server.client("site").await;
    let second = server.client("site").await;
    for client in [&first, &second] {
        let html = get_page(client, "home").await;
        for wanted in ["mode=eco", "startups=1", "clock=12:00", "greeting=<"] {
            assert!(html.contains(wanted), "missing {wanted} in {html}");
        }
    }

    // The session's own UI values, on its page only.
    first.command("greet", "hello").await;
    assert!(get_page(&first, "home").await.contains("greeting=hello"));
    assert!(get_page(&second, "home").await.contains("greeting=<"));

    // A reload runs projectStartup once more, not once per session.
    std::fs::write(
        dir.join("events/10-main.rhai"),
        STATE_EVENTS.replace("\"eco\"", "\"comfort\""),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let html = get_page(&second, "home").await;
        if html.contains("mode=comfort") {
            assert!(html.contains("startups=2"), "{html}");
            break;
        }
        assert!(Instant::now() < deadline, "not reloaded: {html}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_dir_all(&root).ok();
}
