//! Dev mode's notices: mistakes that are silent at run time (an answer key
//! the Command API does not know, a value that is not an answer, an
//! unhandled command) described for the integrator's dev overlay, with the
//! script and line, paths relative to the project. Sending happens only in
//! dev mode ([`Runtime::dev_notice`]); this module only words the notices.

use rhai::Dynamic;

use super::state::Runtime;
use crate::answer::{Decoded, Status};
use crate::project::Project;
use crate::protocol::Command;
use crate::session::Session;

/// Longest shown argument: a notice names the call, it does not dump data.
const MAX_ARGUMENT_CHARS: usize = 60;

/// A callback's call as a notice shows it: `userCommand("save", "")`,
/// `pageStartup("home")`. The session id (a credential) and the user id are
/// left out.
pub(super) fn describe_call(callback: &str, args: &[Dynamic]) -> String {
    let skip = match callback {
        "userCommand" | "userDownload" => 2,
        "timer" | "projectStartup" => 0,
        _ => 1,
    };
    let shown: Vec<String> = args
        .iter()
        .skip(skip)
        .map(|arg| {
            // A page object shows as its name, as scripts compare it.
            let text = match arg.clone().try_cast::<super::events::PageInfo>() {
                Some(page) => format!("{:?}", page.name),
                None => format!("{arg:?}"),
            };
            if text.chars().count() > MAX_ARGUMENT_CHARS {
                let cut: String = text.chars().take(MAX_ARGUMENT_CHARS).collect();
                format!("{cut}…")
            } else {
                text
            }
        })
        .collect();
    format!("{callback}({})", shown.join(", "))
}

/// Shows the parts of an answer the decoder ignored, each at the place the
/// load-time check saw it, else at the callback's first line.
pub(super) fn notice_answer(
    runtime: &Runtime,
    project: &Project,
    session: &Session,
    call: &str,
    answered_by: Option<&str>,
    decoded: &Decoded,
) {
    if decoded.quiet {
        return;
    }
    let script = answered_by.unwrap_or("?");
    let callback = call.split('(').next().unwrap_or_default();
    for warning in &decoded.warnings {
        let place = place_of(project, script, callback, warning);
        runtime.dev_notice(session, &format!("{place}: {call}: {warning}"));
    }
}

/// Shows a command no script answered.
pub(super) fn notice_unhandled(
    runtime: &Runtime,
    project: &Project,
    session: &Session,
    command: &Command,
    decoded: &Decoded,
) {
    if decoded.status != Status::Unhandled {
        return;
    }
    let call = format!("userCommand({:?}, {:?})", command.name, command.param);
    let scripts = project.scripts.scripts_defining("userCommand", 4);
    let asked = if scripts.is_empty() {
        "no script defines userCommand(session, userid, name, param)".to_string()
    } else {
        format!("every script returned () ({})", scripts.join(", "))
    };
    runtime.dev_notice(session, &format!("{call} [UNHANDLED]: {asked}"));
}

/// `script:line:col` of the answer key a warning names, when the load-time
/// check saw it; else the line where the script's callback starts.
fn place_of(project: &Project, script: &str, callback: &str, warning: &str) -> String {
    let key = warning.split(':').next().unwrap_or_default();
    let seen = project
        .warnings
        .iter()
        .find(|w| w.file.ends_with(script) && w.message.contains(&format!("`{key}`")));
    match seen {
        Some(w) => format!("{script}:{}:{}", w.line, w.column),
        None => {
            let line = (0..=6)
                .map(|arity| project.scripts.callback_line(script, callback, arity))
                .find(|line| *line > 0)
                .unwrap_or(0);
            format!("{script}:{line}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_shown_without_session_or_user() {
        let text = |s: &str| Dynamic::from(s.to_string());
        let session = text("0123456789abcdef0123456789abcdef");
        assert_eq!(
            describe_call(
                "userCommand",
                &[session.clone(), text("ann"), text("save"), text("")]
            ),
            r#"userCommand("save", "")"#
        );
        assert_eq!(
            describe_call("pageStartup", &[session.clone(), text("home")]),
            r#"pageStartup("home")"#
        );
        assert_eq!(
            describe_call("sessionStartup", &[session]),
            "sessionStartup()"
        );
        let long = describe_call("timer", &[text(&"x".repeat(200))]);
        assert!(long.ends_with("…)") && long.len() < 80, "{long}");
    }
}
