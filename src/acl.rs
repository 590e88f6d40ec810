//! Command access control in the spirit of HSYCO's `acl.ini`: ordered
//! allow/deny rules matching a user or role and command name and param
//! patterns. The first matching rule decides; a project with rules denies
//! what no rule allows. Pure: no I/O.
//!
//! Command names and params come from the client, so they and the rule's
//! patterns are compared in their canonical form ([`text::canonical`]:
//! NFKC, invisible characters dropped, trimmed, case-insensitive): a name a
//! person cannot tell from `vault1` on screen (`Vault1`, ` vault1`,
//! `\u{200B}vault1`) matches what `vault1` matches, so a deny rule cannot be
//! stepped around by spelling. User ids and roles come from the users file
//! and are compared exactly.

use serde::Deserialize;
use wildmatch::WildMatch;

use crate::text;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
}

/// An `[[acl]]` entry of `project.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub rule: Effect,
    /// Matches this user id only (`*` patterns allowed).
    pub user: Option<String>,
    /// Matches users holding this role.
    pub role: Option<String>,
    /// Command name pattern (`*` any run, `?` one character).
    #[serde(default = "any")]
    pub name: String,
    /// Command param pattern.
    #[serde(default = "any")]
    pub param: String,
}

fn any() -> String {
    "*".into()
}

/// Who is asking.
pub struct Subject<'a> {
    pub user: &'a str,
    pub roles: &'a [String],
}

/// The verdict, with the index of the rule that decided (none: default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed(Option<usize>),
    Denied(Option<usize>),
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allowed(_))
    }
}

pub fn decide(rules: &[Rule], subject: &Subject, name: &str, param: &str) -> Decision {
    if rules.is_empty() {
        return Decision::Allowed(None);
    }
    let (name, param) = (&text::canonical(name), &text::canonical(param));
    for (index, rule) in rules.iter().enumerate() {
        if applies(rule, subject, name, param) {
            return match rule.rule {
                Effect::Allow => Decision::Allowed(Some(index)),
                Effect::Deny => Decision::Denied(Some(index)),
            };
        }
    }
    Decision::Denied(None)
}

fn applies(rule: &Rule, subject: &Subject, name: &str, param: &str) -> bool {
    let user_ok = rule
        .user
        .as_deref()
        .is_none_or(|pattern| WildMatch::new(pattern).matches(subject.user));
    let role_ok = rule
        .role
        .as_deref()
        .is_none_or(|role| subject.roles.iter().any(|r| r == role));
    user_ok
        && role_ok
        && WildMatch::new(&text::canonical(&rule.name)).matches(name)
        && WildMatch::new(&text::canonical(&rule.param)).matches(param)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        effect: Effect,
        user: Option<&str>,
        role: Option<&str>,
        name: &str,
        param: &str,
    ) -> Rule {
        Rule {
            rule: effect,
            user: user.map(String::from),
            role: role.map(String::from),
            name: name.into(),
            param: param.into(),
        }
    }

    #[test]
    fn first_match_wins_and_the_default_is_deny() {
        use Effect::*;
        let rules = vec![
            rule(Deny, None, None, "door", "vault*"),
            rule(Allow, None, Some("operator"), "door", "*"),
            rule(Allow, Some("ann"), None, "light*", "*"),
            rule(Allow, None, None, "status", "*"),
        ];
        let operator = vec!["operator".to_string()];
        let nobody: Vec<String> = vec![];
        let cases = [
            (
                "operator opens a door",
                "bob",
                &operator,
                "door",
                "front",
                Decision::Allowed(Some(1)),
            ),
            (
                "nobody opens the vault, not even an operator",
                "bob",
                &operator,
                "door",
                "vault-1",
                Decision::Denied(Some(0)),
            ),
            (
                "a guest cannot open doors",
                "guest",
                &nobody,
                "door",
                "front",
                Decision::Denied(None),
            ),
            (
                "ann switches lights",
                "ann",
                &nobody,
                "lightKitchen",
                "on",
                Decision::Allowed(Some(2)),
            ),
            (
                "bob cannot",
                "bob",
                &operator,
                "lightKitchen",
                "on",
                Decision::Denied(None),
            ),
            (
                "everyone reads status",
                "",
                &nobody,
                "status",
                "",
                Decision::Allowed(Some(3)),
            ),
        ];
        for (case, user, roles, name, param, expected) in cases {
            assert_eq!(
                decide(&rules, &Subject { user, roles }, name, param),
                expected,
                "{case}"
            );
        }
    }

    /// Issue 12: a deny rule on `vault*` must hold against every spelling
    /// of the vault a person would read as the same name.
    #[test]
    fn deny_rules_hold_against_look_alike_params() {
        use Effect::*;
        let rules = vec![
            rule(Deny, None, None, "door", "vault*"),
            rule(Allow, None, Some("operator"), "door", "*"),
        ];
        let operator = vec!["operator".to_string()];
        let subject = Subject {
            user: "bob",
            roles: &operator,
        };
        for (case, name, param) in [
            ("as written", "door", "vault1"),
            ("upper case", "door", "Vault1"),
            ("leading space", "door", " vault1"),
            ("zero-width space first", "door", "\u{200B}vault1"),
            ("zero-width joiner inside", "door", "va\u{200D}ult1"),
            ("full-width", "door", "ｖａｕｌｔ1"),
            ("name in upper case", "DOOR", "vault1"),
            ("name with a zero-width space", "do\u{200B}or", "vault1"),
        ] {
            assert_eq!(
                decide(&rules, &subject, name, param),
                Decision::Denied(Some(0)),
                "{case}: {name:?} {param:?}"
            );
        }
        assert_eq!(
            decide(&rules, &subject, "door", "front"),
            Decision::Allowed(Some(1))
        );
    }

    #[test]
    fn no_rules_allow_everything() {
        assert!(
            decide(
                &[],
                &Subject {
                    user: "",
                    roles: &[]
                },
                "x",
                "y"
            )
            .is_allowed()
        );
    }
}
