//! Dev mode's notices: mistakes that are silent at run time (an answer key
//! the Command API does not know, an unhandled command, a value that is not
//! an answer) described for the integrator's dev overlay, with the script
//! and line, paths relative to the project. Sending happens only in dev
//! mode ([`Runtime::dev_notice`]); this module only words the notices.

use crate::answer::{Decoded, Status};
use crate::project::Project;
use crate::protocol::Command;
use crate::session::Session;

use super::state::Runtime;

/// Shows what went unnoticed in a command's answer, if anything.
pub(super) fn notice_command(
    runtime: &Runtime,
    project: &Project,
    session: &Session,
    command: &Command,
    decoded: &Decoded,
    answered_by: Option<&str>,
) {
    let call = format!("userCommand({:?}, {:?})", command.name, command.param);
    if decoded.status == Status::Unhandled {
        let scripts = project.scripts.scripts_defining("userCommand", 4);
        let asked = if scripts.is_empty() {
            "no script defines userCommand(session, userid, name, param)".to_string()
        } else {
            format!("every script returned () ({})", scripts.join(", "))
        };
        runtime.dev_notice(session, &format!("{call} [UNHANDLED]: {asked}"));
        return;
    }
    if decoded.quiet || decoded.warnings.is_empty() {
        return;
    }
    let script = answered_by.unwrap_or("?");
    for warning in &decoded.warnings {
        let place = place_of(project, script, warning);
        runtime.dev_notice(session, &format!("{place}: {call}: {warning}"));
    }
}

/// `script:line:col` of the answer key a warning names, when the load-time
/// check saw it; else the line where the script's `userCommand` starts.
fn place_of(project: &Project, script: &str, warning: &str) -> String {
    let key = warning.split(':').next().unwrap_or_default();
    let seen = project
        .warnings
        .iter()
        .find(|w| w.file.ends_with(script) && w.message.contains(&format!("`{key}`")));
    match seen {
        Some(w) => format!("{script}:{}:{}", w.line, w.column),
        None => format!(
            "{script}:{}",
            project.scripts.callback_line(script, "userCommand", 4)
        ),
    }
}
