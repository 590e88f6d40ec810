//! The functions scripts may call, registered on each project's engine and
//! bound to the runtime. They hold a weak reference: a script never keeps
//! the runtime alive, and calls made while it stops fail as script errors.

use std::sync::{Arc, Weak};

use rhai::{Dynamic, Engine, EvalAltResult, FnPtr, NativeCallContext, Position};

use super::handlers;
use super::state::{Runtime, ShutdownReason, VarUpdateError};

type Result<T> = std::result::Result<T, Box<EvalAltResult>>;

fn script_error(message: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        Position::NONE,
    ))
}

fn upgrade(runtime: &Weak<Runtime>) -> Result<Arc<Runtime>> {
    runtime
        .upgrade()
        .ok_or_else(|| script_error("the runtime is not running"))
}

impl Runtime {
    /// The function that registers host functions bound to this runtime.
    pub fn host_registration(&self) -> impl Fn(&mut rhai::Engine, &str) + use<> {
        let myself = self.myself.clone();
        move |engine, project| register(engine, myself.clone(), project)
    }
}

/// Registers every host function for `project`.
pub fn register(engine: &mut Engine, runtime: Weak<Runtime>, project: &str) {
    let bind = || (runtime.clone(), project.to_string());
    super::challenge::register_result_type(engine);
    super::events::register_page_type(engine);
    // Bound to no runtime (`switchboard check`) the point functions are
    // still registered, so that calls to them are known; they fail if run.
    let points = runtime
        .upgrade()
        .map_or_else(Weak::new, |runtime| Arc::downgrade(&runtime.points));
    crate::points::register_functions(engine, points, project);

    let (rt, p) = bind();
    engine.register_fn(
        "requestAuthChallenge",
        move |session: &str, payload: Dynamic| -> Result<bool> {
            let runtime = upgrade(&rt)?;
            let (Some(session), Some(project)) =
                (runtime.sessions.get(session, &p), runtime.project(&p))
            else {
                return Ok(false);
            };
            let payload =
                rhai::serde::from_dynamic(&payload).map_err(|e| script_error(e.to_string()))?;
            let mut actions = vec![crate::answer::Action::Challenge {
                id: String::new(),
                payload,
            }];
            runtime.file_challenges(&project, &session, &mut actions);
            handlers::deliver(&session, "requestAuthChallenge", &actions);
            Ok(true)
        },
    );

    let (rt, p) = bind();
    engine.register_fn(
        "uiSet",
        move |id: &str, attr: &str, value: Dynamic| -> Result<()> {
            upgrade(&rt)?
                .ui_set(&p, id, attr, &value)
                .map_err(script_error)
        },
    );
    let (rt, p) = bind();
    engine.register_fn(
        "uiSessionSet",
        move |target: &str, id: &str, attr: &str, value: Dynamic| -> Result<()> {
            upgrade(&rt)?
                .ui_session_set(&p, target, id, attr, &value)
                .map_err(script_error)
        },
    );
    for (name, subscribe) in [("sessionSubscribe", true), ("sessionUnsubscribe", false)] {
        let (rt, p) = bind();
        engine.register_fn(name, move |session: &str, scope: &str| -> Result<bool> {
            let runtime = upgrade(&rt)?;
            let Some(session) = runtime.sessions.get(session, &p) else {
                return Ok(false);
            };
            runtime.set_scope(&session, scope, subscribe);
            Ok(true)
        });
    }
    let (rt, p) = bind();
    engine.register_fn(
        "sendActions",
        move |session: &str, answer: Dynamic| -> Result<bool> {
            Ok(upgrade(&rt)?.send_actions(&p, session, answer))
        },
    );
    let rt = runtime.clone();
    engine.register_fn(
        "sendMessage",
        move |project: &str, handler: &str, payload: Dynamic, scope: &str| -> Result<i64> {
            let payload =
                rhai::serde::from_dynamic(&payload).map_err(|e| script_error(e.to_string()))?;
            let sent = upgrade(&rt)?
                .send_message(project, handler, payload, scope)
                .map_err(script_error)?;
            Ok(i64::try_from(sent).unwrap_or(i64::MAX))
        },
    );
    let (rt, p) = bind();
    engine.register_fn("varGet", move |name: &str| -> Result<Dynamic> {
        Ok(upgrade(&rt)?.var_get(&p, name))
    });
    let (rt, p) = bind();
    engine.register_fn("varSet", move |name: &str, value: Dynamic| -> Result<()> {
        upgrade(&rt)?.var_set(&p, name, value).map_err(script_error)
    });
    let (rt, p) = bind();
    engine.register_fn(
        "varUpdate",
        move |context: NativeCallContext, name: &str, update: FnPtr| -> Result<Dynamic> {
            let runtime = upgrade(&rt)?;
            runtime
                .var_update(&p, name, |current| {
                    update.call_within_context::<Dynamic>(&context, (current,))
                })
                .map_err(|error| match error {
                    VarUpdateError::Update(error) => error,
                    other => script_error(other.to_string()),
                })
        },
    );
    let (rt, p) = bind();
    engine.register_fn(
        "sessionGet",
        move |session: &str, key: &str| -> Result<Dynamic> {
            let runtime = upgrade(&rt)?;
            let Some(session) = runtime.sessions.get(session, &p) else {
                return Ok(Dynamic::UNIT);
            };
            let value = session.with_state(|state| state.properties.get(key).cloned());
            Ok(value
                .and_then(|v| rhai::serde::to_dynamic(v).ok())
                .unwrap_or(Dynamic::UNIT))
        },
    );
    let (rt, p) = bind();
    engine.register_fn(
        "sessionSet",
        move |session: &str, key: &str, value: Dynamic| -> Result<bool> {
            let runtime = upgrade(&rt)?;
            let Some(session) = runtime.sessions.get(session, &p) else {
                return Ok(false);
            };
            let value: serde_json::Value =
                rhai::serde::from_dynamic(&value).map_err(|e| script_error(e.to_string()))?;
            session.with_state(|state| {
                if value.is_null() {
                    state.properties.remove(key);
                } else {
                    state.properties.insert(key.to_string(), value);
                }
            });
            runtime.persist(&session);
            Ok(true)
        },
    );
    let (rt, p) = bind();
    engine.register_fn("sessionUser", move |session: &str| -> Result<String> {
        let runtime = upgrade(&rt)?;
        Ok(runtime
            .sessions
            .get(session, &p)
            .map(|s| s.userid.clone())
            .unwrap_or_default())
    });
    let (rt, p) = bind();
    engine.register_fn("sessionIds", move || -> Result<rhai::Array> {
        let runtime = upgrade(&rt)?;
        Ok(runtime
            .sessions
            .of_project(&p)
            .iter()
            .map(|s| Dynamic::from(s.id.clone()))
            .collect())
    });
    for with_args in [false, true] {
        let (rt, p) = bind();
        let translate = move |session: &str, key: &str, args: Option<Dynamic>| -> Result<String> {
            let runtime = upgrade(&rt)?;
            let project = runtime
                .project(&p)
                .ok_or_else(|| script_error("the project is not served"))?;
            let language = match runtime.sessions.get(session, &p) {
                Some(session) => runtime.language_of(&project, &session),
                None => project.settings.i18n_default.clone(),
            };
            let args: serde_json::Map<String, serde_json::Value> = match args {
                Some(args) => rhai::serde::from_dynamic(&args)
                    .map_err(|e| script_error(format!("t: the arguments must be a map: {e}")))?,
                None => serde_json::Map::new(),
            };
            let args = crate::i18n::args_from(&args);
            Ok(project
                .translations
                .text_or_key(&language, key, Some(&args)))
        };
        if with_args {
            engine.register_fn("t", move |session: &str, key: &str, args: Dynamic| {
                translate(session, key, Some(args))
            });
        } else {
            engine.register_fn("t", move |session: &str, key: &str| {
                translate(session, key, None)
            });
        }
    }
    engine.register_fn("now", || -> i64 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
    });
    let (rt, p) = bind();
    engine.register_fn("terminateSession", move |session: &str| -> Result<bool> {
        let runtime = upgrade(&rt)?;
        // Held here or, in a cluster, by another node (it is told).
        let Some(session) = runtime.session(session, &p) else {
            return Ok(false);
        };
        // Ending runs `sessionShutdown`, a script: it must not run inside
        // the script that asked, so it happens right after.
        tokio::spawn(async move {
            runtime
                .end_session(&session, ShutdownReason::Terminated)
                .await
        });
        Ok(true)
    });
}
