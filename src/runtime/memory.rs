//! What a session remembers of its commands: each object's last valid
//! value (what `rollback` restores) and the command that opened each page
//! (called again with `/close` when the page closes).

use crate::answer::{Action, Decoded, Status};
use crate::protocol::Command;
use crate::session::{Opener, SessionState};

/// Updates rollback and `/close` memory; returns whether anything changed.
pub fn remember(
    state: &mut SessionState,
    object: &str,
    command: &Command,
    decoded: &Decoded,
    remember_value: bool,
) -> bool {
    let mut changed = false;
    // A command that was not refused — answered without error, or not
    // handled at all — leaves its value as the object's valid one.
    if remember_value && matches!(decoded.status, Status::Ok | Status::Unhandled) {
        changed |= state.last_valid.get(object) != Some(&command.param);
        if changed {
            state
                .last_valid
                .insert(object.to_string(), command.param.clone());
        }
    }
    for action in &decoded.actions {
        if let Action::Page { page } = action
            && !matches!(page.as_str(), "back" | "forward" | "close" | "close-all")
        {
            let opener = Opener {
                object: command.object.clone(),
                name: command.name.clone(),
                param: command.param.clone(),
            };
            changed |= state.openers.insert(page.clone(), opener.clone()) != Some(opener);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(param: &str) -> Command {
        Command {
            seq: None,
            id: None,
            object: Some("o".into()),
            name: "n".into(),
            param: param.into(),
            page: None,
        }
    }

    fn decoded(status: Status, actions: Vec<Action>) -> Decoded {
        Decoded {
            status,
            actions,
            quiet: false,
            warnings: vec![],
        }
    }

    #[test]
    fn only_values_that_were_not_refused_become_valid() {
        let mut state = SessionState::default();
        assert!(remember(
            &mut state,
            "o",
            &command("1"),
            &decoded(Status::Ok, vec![]),
            true
        ));
        assert!(
            !remember(
                &mut state,
                "o",
                &command("1"),
                &decoded(Status::Ok, vec![]),
                true
            ),
            "unchanged"
        );
        assert!(!remember(
            &mut state,
            "o",
            &command("9"),
            &decoded(Status::Error, vec![]),
            true
        ));
        assert!(!remember(
            &mut state,
            "o",
            &command("9"),
            &decoded(Status::Failed, vec![]),
            true
        ));
        assert!(remember(
            &mut state,
            "o",
            &command("2"),
            &decoded(Status::Unhandled, vec![]),
            true
        ));
        assert_eq!(state.last_valid["o"], "2");
    }

    #[test]
    fn pages_opened_by_a_command_remember_it() {
        let mut state = SessionState::default();
        let actions = vec![
            Action::Page {
                page: "back".into(),
            },
            Action::Page {
                page: "popup".into(),
            },
        ];
        remember(
            &mut state,
            "o",
            &command("p"),
            &decoded(Status::Ok, actions),
            false,
        );
        assert_eq!(state.openers.keys().collect::<Vec<_>>(), ["popup"]);
        assert_eq!(state.openers["popup"].param, "p");
    }
}
