//! Templates: errors placed at the right file, line and column with the
//! real cause first (issue 16, item 3); the state a page renders with on
//! its first load, and `projectStartup()` (item 5).

mod common;

use std::time::{Duration, Instant};

use common::{Client, HOME_PAGE, Server, run_check, temp_dir, write_project};

fn page(content: &str) -> String {
    format!(
        "{{% extends \"sb/layout.html\" %}}\n{{% block content %}}\n{content}\n{{% endblock %}}\n"
    )
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
            "{% extends \"sb/layout.html\" %}\n{% block content %}\n<p>x</p>\n{% endblok %}\n"
                .to_string(),
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

/// Issue 16 item 2: every built-in component and each of its arguments has
/// its entry in docs/objects.md.
#[test]
fn every_component_and_argument_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let components = std::fs::read_to_string(root.join("web/templates/components.html")).unwrap();
    let docs = std::fs::read_to_string(root.join("docs/objects.md")).unwrap();
    let mut seen = 0;
    for line in components.lines() {
        let Some(rest) = line.strip_prefix("{% component ") else {
            continue;
        };
        let (name, args) = rest.split_once('(').unwrap();
        let args = args.rsplit_once(')').unwrap().0;
        let heading = format!("### `{name}`");
        let section = docs
            .split_once(&heading)
            .unwrap_or_else(|| panic!("docs/objects.md has no {heading}"))
            .1;
        let section = section.split("\n### ").next().unwrap();
        for arg in args
            .split(',')
            .map(str::trim)
            // `...attrs` gathers the rest; `@points` is taken from the
            // page's context, never written by the integrator.
            .filter(|a| !a.starts_with("...") && !a.starts_with('@'))
        {
            let arg = arg.split([':', '=']).next().unwrap().trim();
            assert!(
                section.contains(&format!("`{arg}`")),
                "{name}: argument `{arg}` is not documented"
            );
        }
        assert!(
            section.contains("{{ <") || section.contains("{% <"),
            "{name}: no example"
        );
        seen += 1;
    }
    assert!(seen >= 8, "found {seen} components");
}

#[tokio::test]
async fn links_and_project_components_render_as_documented() {
    let root = temp_dir("template-components");
    write_project(
        &root,
        "site",
        &[
            ("project.toml", ""),
            (
                "templates/parts.html",
                "{% component room_light(n: integer) %}\n  {{ <sb.button id={\"light\" ~ n} name=\"light\" param={n | str} label={\"Light \" ~ n} /> }}\n{% endcomponent room_light %}\n",
            ),
            (
                "pages/home.html",
                &page(
                    "{{ <room_light n={2} /> }}\n{{ <sb.link page=\"other\" label=\"Other\" /> }}",
                ),
            ),
            ("pages/other.html", HOME_PAGE),
        ],
    );
    let server = Server::start(&root);
    let client = server.client("site").await;
    let html = get_page(&client, "home").await;
    assert!(
        html.contains(r#"<button type="button" id="light2" data-sb-object="button" data-sb-name="light" data-sb-param="2""#),
        "a project's component, with no import: {html}"
    );
    let href = html
        .split("data-sb-link=\"other\"")
        .next()
        .and_then(|before| before.rsplit("href=\"").next())
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    // docs/objects.md: the href resolves to /<project>/<page> from any page.
    let page_url = reqwest::Url::parse(&server.url("/site/home")).unwrap();
    assert_eq!(page_url.join(href).unwrap().path(), "/site/other");
    let start_url = reqwest::Url::parse(&server.url("/site/")).unwrap();
    assert_eq!(start_url.join(href).unwrap().path(), "/site/other");
    std::fs::remove_dir_all(&root).ok();
}
