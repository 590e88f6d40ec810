//! What a page is rendered with for one viewer: the session's properties,
//! the project's variables, the UI values the session sees, and the
//! language of its texts (with the browser runtime's own texts in it).
//! Rendering itself is `Project::render_page`; this module gathers state.

use serde_json::{Map, Value};

use super::state::Runtime;
use crate::project::Project;
use crate::session::Session;

impl Runtime {
    /// Every variable of a project, as JSON (values that cannot be JSON
    /// are left out).
    pub fn vars_of(&self, project: &str) -> Map<String, Value> {
        let prefix = Self::var_key(project, "");
        self.vars
            .iter()
            .filter_map(|entry| {
                let name = entry.key().strip_prefix(&prefix)?;
                let value = rhai::serde::from_dynamic(entry.value()).ok()?;
                Some((name.to_string(), value))
            })
            .collect()
    }

    /// What templates see besides `page` and `project` when `session`
    /// views a page: `session` (its properties), `vars` (the project's
    /// variables), `ui` (the UI values the session sees, by object id and
    /// attribute) and `points` (the project's live values), so that a page
    /// renders its state without waiting for the first push; `lang` and
    /// `sb_texts` (the browser runtime's texts).
    pub fn template_view(&self, project: &Project, session: &Session) -> Map<String, Value> {
        let mut ui = Map::new();
        for value in self.ui_snapshot(session) {
            if let Value::Object(attrs) = ui
                .entry(value.id)
                .or_insert_with(|| Value::Object(Map::new()))
            {
                attrs.insert(value.attr, value.value);
            }
        }
        let mut view = Map::new();
        view.insert(
            "session".into(),
            serde_json::json!({ "properties": session.with_state(|state| state.properties.clone()) }),
        );
        view.insert("vars".into(), self.vars_of(&session.project).into());
        view.insert("ui".into(), ui.into());
        view.insert("points".into(), self.points.template_context(&project.name));
        let language = self.language_of(project, session);
        // Embedded in a `<script type="application/json">`: `<` escaped so
        // that no text can close the element.
        let texts = Value::Object(project.translations.browser_texts(&language))
            .to_string()
            .replace('<', "\\u003c");
        view.insert("sb_texts".into(), texts.into());
        view.insert("lang".into(), language.into());
        view
    }

    /// The language of a session's texts: the user's setting (the session
    /// property `language`), else the browser's, else the project's default.
    pub fn language_of(&self, project: &Project, session: &Session) -> String {
        let (chosen, accept) = session.with_state(|state| {
            (
                state
                    .properties
                    .get("language")
                    .and_then(|l| l.as_str())
                    .map(String::from),
                state.accept_language.clone(),
            )
        });
        project.translations.negotiate(chosen.as_deref(), &accept)
    }

    /// Remembers the `Accept-Language` of the browser showing a session.
    pub fn note_accept_language(&self, session: &Session, header: &str) {
        let changed = session.with_state(|state| {
            let changed = state.accept_language != header;
            if changed {
                state.accept_language = header.to_string();
            }
            changed
        });
        if changed {
            self.persist(session);
        }
    }
}
