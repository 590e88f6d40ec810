//! Translations: a project's `i18n/<language>.ftl` files (Fluent), the
//! runtime's own texts (`web/i18n/*.ftl`, the browser's `CONFIG.TEXT_*`)
//! underneath them, and choosing a language for a viewer: their own
//! setting, else the browser's `Accept-Language`, else the project's
//! default. Pure: loading reads the files it is given, nothing here knows
//! sessions or requests.

use std::collections::BTreeMap;

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};
use unic_langid::LanguageIdentifier;

/// The runtime's own texts, by language.
const BUILTIN: &[(&str, &str)] = &[
    ("en", include_str!("../web/i18n/en.ftl")),
    ("it", include_str!("../web/i18n/it.ftl")),
];

/// Placeholders of the runtime's texts, filled back in as `{name}` for the
/// browser to replace.
const BROWSER_PLACEHOLDERS: &[&str] = &["reason", "page", "command", "count"];

/// Prefix of the runtime's own message ids (`sb-rejected` is `TEXT_REJECTED`).
const RUNTIME_PREFIX: &str = "sb-";

/// One error in a `.ftl` file, at a byte offset of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtlError {
    pub offset: usize,
    pub message: String,
}

/// A project's translations, one bundle per language.
pub struct Translations {
    bundles: BTreeMap<String, FluentBundle<FluentResource>>,
    languages: Vec<LanguageIdentifier>,
    default: String,
}

impl std::fmt::Debug for Translations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translations")
            .field("languages", &self.bundles.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn bundle(language: &LanguageIdentifier) -> FluentBundle<FluentResource> {
    let mut bundle = FluentBundle::new_concurrent(vec![language.clone()]);
    // No Unicode isolation marks around placeables: the texts go into HTML
    // and toasts where they would only be invisible noise.
    bundle.set_use_isolating(false);
    bundle
}

/// Parses one `.ftl` text; every syntax error, with its offset.
pub fn parse(text: &str) -> Result<FluentResource, Vec<FtlError>> {
    FluentResource::try_new(text.to_string()).map_err(|(_, errors)| {
        errors
            .into_iter()
            .map(|error| FtlError {
                offset: error.pos.start,
                message: error.kind.to_string(),
            })
            .collect()
    })
}

impl Translations {
    /// Builds the bundles from the project's files (`(language, text)`,
    /// already parsed by [`parse`]) over the runtime's texts. `default`
    /// is the language used when nothing else matches.
    pub fn new(files: Vec<(LanguageIdentifier, FluentResource)>, default: &str) -> Translations {
        let mut bundles: BTreeMap<String, FluentBundle<FluentResource>> = BTreeMap::new();
        for (language, text) in BUILTIN {
            if let (Ok(id), Ok(resource)) = (language.parse::<LanguageIdentifier>(), parse(text)) {
                let mut builtin = bundle(&id);
                builtin.add_resource_overriding(resource);
                bundles.insert(id.to_string(), builtin);
            }
        }
        for (language, resource) in files {
            bundles
                .entry(language.to_string())
                .or_insert_with(|| {
                    // A language the runtime does not ship starts from
                    // English, so the browser's texts are never missing.
                    let mut fallback = bundle(&language);
                    if let Ok(english) = parse(BUILTIN[0].1) {
                        fallback.add_resource_overriding(english);
                    }
                    fallback
                })
                .add_resource_overriding(resource);
        }
        let languages = bundles.keys().filter_map(|l| l.parse().ok()).collect();
        Translations {
            bundles,
            languages,
            default: default.to_string(),
        }
    }

    /// The languages there are texts in.
    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.bundles.keys().map(String::as_str)
    }

    /// The language to show a viewer: `chosen` (their setting) if the
    /// project has it, else the best match of the browser's
    /// `Accept-Language`, else the default.
    pub fn negotiate(&self, chosen: Option<&str>, accept_language: &str) -> String {
        let mut requested: Vec<LanguageIdentifier> =
            chosen.and_then(|c| c.parse().ok()).into_iter().collect();
        requested.extend(fluent_langneg::accepted_languages::parse(accept_language));
        let default = self.default.parse::<LanguageIdentifier>().ok();
        fluent_langneg::negotiate_languages(
            &requested,
            &self.languages,
            default.as_ref(),
            fluent_langneg::NegotiationStrategy::Lookup,
        )
        .first()
        .map_or_else(|| self.default.clone(), |l| l.to_string())
    }

    /// The text of `key` in `language` with `args`; `None` when neither
    /// that language nor the default has it.
    pub fn text(&self, language: &str, key: &str, args: Option<&FluentArgs>) -> Option<String> {
        [language, self.default.as_str()]
            .into_iter()
            .find_map(|language| {
                let bundle = self.bundles.get(language)?;
                let pattern = bundle.get_message(key)?.value()?;
                let mut errors = Vec::new();
                Some(
                    bundle
                        .format_pattern(pattern, args, &mut errors)
                        .into_owned(),
                )
            })
    }

    /// The text of `key`, or the key itself when there is none: a missing
    /// translation shows where it is missing instead of nothing.
    pub fn text_or_key(&self, language: &str, key: &str, args: Option<&FluentArgs>) -> String {
        self.text(language, key, args)
            .unwrap_or_else(|| key.to_string())
    }

    /// The browser runtime's texts in `language`, as `CONFIG` keys
    /// (`TEXT_REJECTED`), placeholders left as `{reason}`.
    pub fn browser_texts(&self, language: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut args = FluentArgs::new();
        for name in BROWSER_PLACEHOLDERS {
            args.set(*name, FluentValue::from(format!("{{{name}}}")));
        }
        let keys = runtime_keys();
        keys.into_iter()
            .filter_map(|key| {
                let text = self.text(language, &key, Some(&args))?;
                let name = key[RUNTIME_PREFIX.len()..].replace('-', "_").to_uppercase();
                Some((format!("TEXT_{name}"), text.into()))
            })
            .collect()
    }
}

/// The ids of the runtime's own messages (the English file has them all).
fn runtime_keys() -> Vec<String> {
    let Ok(english) = parse(BUILTIN[0].1) else {
        return Vec::new();
    };
    english
        .entries()
        .filter_map(|entry| match entry {
            fluent_syntax::ast::Entry::Message(message) => Some(message.id.name.to_string()),
            _ => None,
        })
        .collect()
}

/// Fluent arguments from a JSON-like map of strings and numbers.
pub fn args_from(map: &serde_json::Map<String, serde_json::Value>) -> FluentArgs<'static> {
    let mut args = FluentArgs::new();
    for (name, value) in map {
        let value = match value {
            serde_json::Value::Number(n) => n
                .as_f64()
                .map_or_else(|| FluentValue::from(n.to_string()), FluentValue::from),
            serde_json::Value::String(s) => FluentValue::from(s.clone()),
            other => FluentValue::from(other.to_string()),
        };
        args.set(name.clone(), value);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, &str)]) -> Translations {
        let files = files
            .iter()
            .map(|(l, t)| (l.parse().unwrap(), parse(t).unwrap()))
            .collect();
        Translations::new(files, "en")
    }

    #[test]
    fn every_browser_text_is_in_every_shipped_language() {
        let script = include_str!("../web/switchboard.js");
        let wanted: Vec<&str> = script
            .lines()
            .filter_map(|l| l.trim().strip_prefix("TEXT_"))
            .filter_map(|l| l.split(':').next())
            .collect();
        assert!(wanted.len() > 20);
        let translations = project(&[]);
        for (language, _) in BUILTIN {
            let texts = translations.browser_texts(language);
            for name in &wanted {
                assert!(
                    texts.contains_key(&format!("TEXT_{name}")),
                    "{language}: TEXT_{name}"
                );
            }
        }
        assert_eq!(
            translations.browser_texts("it")["TEXT_REJECTED"],
            "Il server ha rifiutato il comando: {reason}"
        );
    }

    #[test]
    fn the_viewer_setting_then_the_browser_then_the_default() {
        let t = project(&[
            ("en", "hello = Hello"),
            ("it", "hello = Ciao"),
            ("de", "hello = Hallo"),
        ]);
        let cases = [
            (None, "", "en"),
            (None, "it-IT,it;q=0.9,en;q=0.5", "it"),
            (None, "fr-CH, fr;q=0.9, de;q=0.7", "de"),
            (Some("it"), "de", "it"),
            (Some("xx"), "de", "de"),
            (None, "ja", "en"),
        ];
        for (chosen, accept, expected) in cases {
            assert_eq!(t.negotiate(chosen, accept), expected, "{chosen:?} {accept}");
        }
        assert_eq!(t.text_or_key("de", "hello", None), "Hallo");
        assert_eq!(t.text_or_key("de", "missing", None), "missing");
    }

    #[test]
    fn projects_override_runtime_texts_and_use_arguments() {
        let t = project(&[("it", "sb-ok = Va bene\nwelcome = Benvenuto, { $name }!")]);
        let mut args = FluentArgs::new();
        args.set("name", "Ann");
        assert_eq!(
            t.text("it", "welcome", Some(&args)).unwrap(),
            "Benvenuto, Ann!"
        );
        assert_eq!(t.browser_texts("it")["TEXT_OK"], "Va bene");
        assert_eq!(t.browser_texts("it")["TEXT_CANCEL"], "Annulla");
    }

    #[test]
    fn syntax_errors_have_offsets() {
        let errors = parse("ok = fine\nbroken = { $\n").unwrap_err();
        assert!(errors[0].offset >= 10, "{errors:?}");
    }
}
