//! Authentication challenges (the Perspective seed's "Authentication
//! Challenge"): a handler asks the user to re-enter credentials before a
//! sensitive action; the outcome reaches `fn authChallenge(session,
//! payload, result)` with a `result` offering the seed's API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Map, Position};
use tracing::info;

use super::handlers::{self, Call, OnFailure};
use super::state::{PendingChallenge as Pending, Runtime};
use crate::answer::Action;
use crate::auth::User;
use crate::project::Project;
use crate::protocol::{Push, Reply};
use crate::session::Session;

/// What the browser answered.
pub enum ChallengeAnswer {
    /// The credentials are those of this user.
    Verified(Box<User>),
    /// Wrong credentials (or throttled): the message says why.
    Refused(String),
    Cancelled,
}

/// The `result` argument of `authChallenge`.
#[derive(Debug, Clone)]
pub enum ChallengeResult {
    Success(Map),
    Generic(Option<String>),
    /// The timeout, in minutes.
    Timeout(i64),
    Cancelled,
}

impl Runtime {
    /// Gives every challenge action an id and files its payload; each is
    /// answered as a timeout if the user does not answer in time.
    pub fn file_challenges(&self, project: &Project, session: &Session, actions: &mut [Action]) {
        for action in actions {
            if let Action::Challenge { id, payload } = action {
                *id = uuid::Uuid::new_v4().simple().to_string();
                let timeout = Duration::from_secs(project.settings.challenge_timeout_secs.max(1));
                self.challenges.insert(
                    id.clone(),
                    Pending {
                        session: session.id.clone(),
                        project: project.name.clone(),
                        payload: std::mem::take(payload),
                        opened: Instant::now(),
                        timeout,
                    },
                );
                info!(target: "switchboard::auth", session = session.log_id(), "authentication challenge opened");
                self.expire_challenge_later(id.clone(), timeout);
            }
        }
    }

    fn expire_challenge_later(&self, id: String, timeout: Duration) {
        let Some(runtime) = self.arc() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some((_, pending)) = runtime.challenges.remove(&id) else {
                return;
            };
            let (Some(project), Some(session)) = (
                runtime.project(&pending.project),
                runtime.sessions.by_id(&pending.session),
            ) else {
                return;
            };
            session.push(&Push::ChallengeClosed { id: &id }.to_frame());
            let reply = runtime
                .run_auth_challenge(
                    &project,
                    &session,
                    pending,
                    ChallengeResult::Timeout(minutes(timeout)),
                )
                .await;
            handlers::deliver(&session, "authChallenge", &reply.actions);
        });
    }

    /// Whether `id` is an open challenge of `session`: checked before a
    /// password is hashed for it.
    pub fn has_challenge(&self, id: &str, session: &Session) -> bool {
        self.challenges
            .get(id)
            .is_some_and(|pending| pending.session == session.id)
    }

    /// Runs `authChallenge` for the browser's answer; `None` when the id is
    /// unknown, answered already, or another session's.
    pub async fn answer_challenge(
        &self,
        project: &Arc<Project>,
        session: &Arc<Session>,
        id: &str,
        answer: ChallengeAnswer,
    ) -> Option<Reply> {
        let (_, pending) = self
            .challenges
            .remove_if(id, |_, p| p.session == session.id)?;
        // Other tabs of the session show the same dialog: close theirs.
        session.push(&Push::ChallengeClosed { id }.to_frame());
        let result = if pending.opened.elapsed() > pending.timeout {
            ChallengeResult::Timeout(minutes(pending.timeout))
        } else {
            match answer {
                ChallengeAnswer::Verified(user) => ChallengeResult::Success(success_context(&user)),
                ChallengeAnswer::Refused(message) => ChallengeResult::Generic(Some(message)),
                ChallengeAnswer::Cancelled => ChallengeResult::Cancelled,
            }
        };
        Some(
            self.run_auth_challenge(project, session, pending, result)
                .await,
        )
    }

    async fn run_auth_challenge(
        &self,
        project: &Arc<Project>,
        session: &Arc<Session>,
        pending: Pending,
        result: ChallengeResult,
    ) -> Reply {
        info!(target: "switchboard::auth", session = session.log_id(), result = result.kind(), "authentication challenge answered");
        let Some(runtime) = self.arc() else {
            return handlers::reply(None, handlers::failed(None));
        };
        let args = vec![
            Dynamic::from(session.id.clone()),
            rhai::serde::to_dynamic(pending.payload).unwrap_or(Dynamic::UNIT),
            Dynamic::from(result),
        ];
        let ran = handlers::run(
            &runtime,
            project,
            Some(session),
            Call::new("authChallenge", args),
        )
        .await;
        handlers::report(&runtime, project, session, &ran, OnFailure::Count).await;
        handlers::reply(None, ran.into_decoded())
    }
}

/// The seed reports timeouts in minutes; a partial minute counts as one.
fn minutes(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs().div_ceil(60)).unwrap_or(i64::MAX)
}

/// The seed's WebAuthUserContext.
fn success_context(user: &User) -> Map {
    let text = |value: &Option<String>| value.clone().map_or(Dynamic::UNIT, Dynamic::from);
    let roles: rhai::Array = user.roles.iter().cloned().map(Dynamic::from).collect();
    let mut person = Map::new();
    person.insert("id".into(), Dynamic::from(user.id.clone()));
    person.insert("userName".into(), Dynamic::from(user.id.clone()));
    person.insert("firstName".into(), text(&user.first_name));
    person.insert("lastName".into(), text(&user.last_name));
    person.insert("email".into(), text(&user.email));
    person.insert("roles".into(), Dynamic::from_array(roles));
    let levels: rhai::Array = user
        .roles
        .iter()
        .map(|r| Dynamic::from(format!("Authenticated/Roles/{r}")))
        .collect();
    let mut context = Map::new();
    context.insert("idp".into(), Dynamic::from("switchboard".to_string()));
    context.insert("securityZones".into(), Dynamic::from_array(Vec::new()));
    context.insert("user".into(), Dynamic::from_map(person));
    context.insert("securityLevels".into(), Dynamic::from_array(levels));
    context
}

impl ChallengeResult {
    fn kind(&self) -> &'static str {
        match self {
            ChallengeResult::Success(_) => "success",
            ChallengeResult::Generic(_) => "error",
            ChallengeResult::Timeout(_) => "timeout",
            ChallengeResult::Cancelled => "cancelled",
        }
    }
}

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn unsupported(what: &str) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(format!(
            "UnsupportedOperationException: the result is not {what}; check first"
        )),
        Position::NONE,
    ))
}

/// Registers the result type and its methods, named as in the seed.
pub fn register_result_type(engine: &mut Engine) {
    use ChallengeResult::*;
    engine.register_type_with_name::<ChallengeResult>("AuthChallengeResult");
    engine.register_fn("isSuccess", |r: &mut ChallengeResult| {
        matches!(r, Success(_))
    });
    engine.register_fn("isError", |r: &mut ChallengeResult| {
        !matches!(r, Success(_))
    });
    engine.register_fn("isGeneric", |r: &mut ChallengeResult| {
        matches!(r, Generic(_))
    });
    engine.register_fn("isTimeout", |r: &mut ChallengeResult| {
        matches!(r, Timeout(_))
    });
    engine.register_fn("isCancelled", |r: &mut ChallengeResult| {
        matches!(r, Cancelled)
    });
    let as_kind = |what: &'static str, accept: fn(&ChallengeResult) -> bool| {
        move |r: &mut ChallengeResult| -> RhaiResult<ChallengeResult> {
            if accept(r) {
                Ok(r.clone())
            } else {
                Err(unsupported(what))
            }
        }
    };
    engine.register_fn(
        "getAsSuccess",
        as_kind("a success", |r| matches!(r, Success(_))),
    );
    engine.register_fn(
        "getAsError",
        as_kind("an error", |r| !matches!(r, Success(_))),
    );
    engine.register_fn(
        "getAsGeneric",
        as_kind("a generic error", |r| matches!(r, Generic(_))),
    );
    engine.register_fn(
        "getAsTimeout",
        as_kind("a timeout", |r| matches!(r, Timeout(_))),
    );
    engine.register_fn(
        "getAsCancelled",
        as_kind("a cancellation", |r| matches!(r, Cancelled)),
    );
    engine.register_fn("getContext", |r: &mut ChallengeResult| -> RhaiResult<Map> {
        match r {
            Success(context) => Ok(context.clone()),
            _ => Err(unsupported("a success")),
        }
    });
    engine.register_fn(
        "getMessage",
        |r: &mut ChallengeResult| -> RhaiResult<Dynamic> {
            match r {
                Generic(message) => Ok(message.clone().map_or(Dynamic::UNIT, Dynamic::from)),
                _ => Err(unsupported("a generic error")),
            }
        },
    );
    engine.register_fn("getTimeout", |r: &mut ChallengeResult| -> RhaiResult<i64> {
        match r {
            Timeout(minutes) => Ok(*minutes),
            _ => Err(unsupported("a timeout")),
        }
    });
    engine.register_fn("to_string", |r: &mut ChallengeResult| r.kind().to_string());
}
