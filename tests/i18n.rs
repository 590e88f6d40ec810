//! Translations (issue 16, item 10): `i18n/<language>.ftl` (Fluent), `t`
//! in templates and scripts, the language chosen by the user's setting or
//! the browser's `Accept-Language`, the runtime's own texts from the same
//! files.

mod common;

use common::{Client, Server, run_check, temp_dir, toast_of, write_project};

const PAGE: &str = r#"{% extends "sb/layout.html" %}
{% block content %}
<h1>{{ t(key="room-title", n=3) }}</h1>
<p>{{ "saved" | t }}</p>
{% endblock %}
"#;

const EVENTS: &str = r#"fn userCommand(session, userid, name, param) {
    if name == "save" {
        return #{ toast: t(session, "saved") };
    }
    if name == "language" {
        sessionSet(session, "language", param);
        return #{ toast: t(session, "room-title", #{ n: 7 }) };
    }
}
"#;

async fn page(client: &Client, accept_language: Option<&str>) -> String {
    let mut request = client.http.get(format!("{}/home", client.base));
    if let Some(languages) = accept_language {
        request = request.header("accept-language", languages);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn texts_follow_the_user_setting_then_the_browser() {
    let root = temp_dir("i18n");
    write_project(
        &root,
        "site",
        &[
            ("project.toml", ""),
            ("pages/home.html", PAGE),
            (
                "i18n/en.ftl",
                "room-title = Room { $n }\nsaved = Saved\n# The runtime's own texts can be overridden too.\nsb-ok = Got it\n",
            ),
            (
                "i18n/it.ftl",
                "room-title = Stanza { $n }\nsaved = Salvato\n",
            ),
            ("events/10-main.rhai", EVENTS),
        ],
    );
    let server = Server::start(&root);

    let italian = server.client("site").await;
    let html = page(&italian, Some("it-IT,it;q=0.9,en;q=0.5")).await;
    for wanted in [
        "<html lang=\"it\">",
        "<h1>Stanza 3</h1>",
        "<p>Salvato</p>",
        "\"TEXT_CANCEL\":\"Annulla\"",
        "\"TEXT_REJECTED\":\"Il server ha rifiutato il comando: {reason}\"",
    ] {
        assert!(html.contains(wanted), "missing {wanted} in {html}");
    }
    assert_eq!(toast_of(&italian.command("save", "").await), "Salvato");

    let english = server.client("site").await;
    let html = page(&english, None).await;
    for wanted in ["<h1>Room 3</h1>", "<p>Saved</p>", "\"TEXT_OK\":\"Got it\""] {
        assert!(html.contains(wanted), "missing {wanted} in {html}");
    }
    assert_eq!(toast_of(&english.command("save", "").await), "Saved");

    // The user's own setting wins over the browser's.
    assert_eq!(
        toast_of(&english.command("language", "it").await),
        "Stanza 7"
    );
    assert!(
        page(&english, Some("en"))
            .await
            .contains("<h1>Stanza 3</h1>")
    );
    assert_eq!(toast_of(&english.command("save", "").await), "Salvato");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn translation_errors_are_placed() {
    let root = temp_dir("i18n-errors");
    let dir = write_project(
        &root,
        "site",
        &[
            ("project.toml", "i18n_default = \"fr\"\n"),
            ("pages/home.html", common::HOME_PAGE),
            ("i18n/it.ftl", "ok = bene\nbroken = { $\n"),
        ],
    );
    let (code, _, stderr) = run_check(&dir);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("i18n/it.ftl:2:"), "{stderr}");
    assert!(
        stderr.contains("project.toml:1:1: i18n_default `fr` has no translations"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_project_with_texts_has_them_in_its_default_language() {
    let root = temp_dir("i18n-default");
    let dir = write_project(
        &root,
        "site",
        &[
            ("project.toml", "title = \"x\"\n"),
            ("pages/home.html", common::HOME_PAGE),
            ("i18n/it.ftl", "ok = bene\n"),
        ],
    );
    let (code, _, stderr) = run_check(&dir);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("i18n_default `en` has no translations (i18n/en.ftl)"),
        "{stderr}"
    );
    std::fs::write(dir.join("project.toml"), "i18n_default = \"it\"\n").unwrap();
    let (code, out, stderr) = run_check(&dir);
    assert_eq!((code, out.trim()), (Some(0), "ok"), "{stderr}");
    std::fs::remove_dir_all(&root).ok();
}
