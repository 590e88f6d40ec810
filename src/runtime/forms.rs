//! Reliable forms: `fn formSubmission(session, name, data, formContext,
//! sessionContext, retry)`, run once per submission id however many times
//! the browser's offline queue delivers it.

use std::sync::Arc;

use rhai::Dynamic;
use serde_json::Value;
use tracing::{info, warn};

use super::delivery::{self, Claim, submission_key, unix_now};
use super::handlers::{self, Call, OnFailure, Ran};
use super::state::Runtime;
use crate::answer::Status;
use crate::project::Project;
use crate::protocol::{FormSubmit, Reply};
use crate::session::Session;
use crate::store::Table;

/// Runs a submission once; a repeat delivery of a processed id gets the
/// stored result and does not call the handler again.
pub async fn submit(
    runtime: &Arc<Runtime>,
    project: Arc<Project>,
    session: Arc<Session>,
    form: FormSubmit,
) -> Reply {
    let seq = form.seq;
    let key = submission_key(&project.name, &session, &form.id);
    match runtime.claim(Table::Submissions, &key).await {
        Claim::Answered(stored) => {
            info!(target: "switchboard::form", "session={} form={:?} id={:?} retry={} [REPEAT] answered from the record",
                session.log_id(), form.name, form.id, form.retry);
            stored.reply(seq)
        }
        Claim::Unavailable => {
            warn!(target: "switchboard::form", "session={} form={:?} id={:?} [REFUSED] no claim: the cluster is unreachable",
                session.log_id(), form.name, form.id);
            delivery::error_reply(seq, delivery::UNAVAILABLE_MESSAGE)
        }
        Claim::Run(running) => {
            let (name, id, retry) = (form.name.clone(), form.id.clone(), form.retry);
            let claim = running.shared();
            // Cluster mode: the project's form lock across the cluster.
            let cluster_lock = match runtime
                .store
                .lock(&format!("forms\u{0}{}", project.name))
                .await
            {
                None => None,
                Some(Ok(held)) => Some(held),
                Some(Err(error)) => {
                    warn!("a form submission was not run: no form lock in the cluster: {error}");
                    let reply = delivery::error_reply(seq, delivery::UNAVAILABLE_MESSAGE);
                    runtime.release(&key, running, &reply, false).await;
                    return reply;
                }
            };
            let (mut ran, stored) = run_handler(
                runtime,
                &project,
                &session,
                form,
                key.clone(),
                claim.clone(),
            )
            .await;
            if let Some(held) = cluster_lock {
                held.release().await;
            }
            let decoded = ran.decoded.take().unwrap_or_else(handlers::unhandled);
            info!(target: "switchboard::form", "session={} form={name:?} id={id:?} retry={retry} {}",
                session.log_id(), decoded.status.log_tag());
            if ran.failure.is_some() {
                handlers::report(runtime, &project, &session, &ran, OnFailure::Count).await;
            }
            let reply = if stored || !runtime.store.is_shared() {
                handlers::reply(seq, decoded)
            } else {
                delivery::commit_failed_reply(seq, claim.as_deref())
            };
            runtime.release(&key, running, &reply, stored).await;
            reply
        }
    }
}

/// Calls the handler under the project's form lock and commits its effects
/// together with the result. A failed run commits nothing: its variable
/// changes are undone and no result is recorded, so the browser's retry
/// (`retry = true`) runs it again, from the state before it. In cluster
/// mode the caller also holds the project's lock across the cluster until
/// the effects are stored. Returns whether they were.
async fn run_handler(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    form: FormSubmit,
    key: String,
    claim: Option<Arc<crate::cluster::Held>>,
) -> (Ran, bool) {
    let lock = runtime
        .form_locks
        .entry(project.name.clone())
        .or_default()
        .clone();
    let (job_runtime, job_project, job_session) =
        (runtime.clone(), project.clone(), session.clone());
    let job = move || {
        let _serialized = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (mut ran, durable) = job_runtime.atomically(
            claim,
            || {
                let call = Call::new("formSubmission", arguments(&job_session, form));
                let ran = handlers::run_blocking(
                    Some(&job_runtime),
                    &job_project,
                    Some(&job_session),
                    call,
                );
                let record = match &ran.decoded {
                    Some(decoded)
                        if !matches!(decoded.status, Status::Unhandled | Status::Failed) =>
                    {
                        let reply = Reply {
                            seq: None,
                            status: decoded.status,
                            actions: decoded.actions.clone(),
                        };
                        let keep = job_project.settings.submission_retention_secs;
                        delivery::answer_writes(Table::Submissions, key, &reply, keep).to_vec()
                    }
                    _ => Vec::new(),
                };
                (ran, record)
            },
            |ran| ran.failure.is_some(),
        );
        ran.durable = Some(durable);
        ran
    };
    let mut ran = handlers::off_async("formSubmission", None, job).await;
    let stored = ran.wait_durable().await;
    (ran, stored)
}

/// The seed's arguments: `(session, name, data, formContext, sessionContext, retry)`.
fn arguments(session: &Session, form: FormSubmit) -> Vec<Dynamic> {
    vec![
        Dynamic::from(session.id.clone()),
        Dynamic::from(form.name.clone()),
        to_dynamic(Value::Object(form.data)),
        to_dynamic(form.context),
        to_dynamic(Value::Object(session_context(
            session,
            form.session_context,
        ))),
        Dynamic::from(form.retry),
    ]
}

fn to_dynamic(value: Value) -> Dynamic {
    rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT)
}

/// The seed's sessionContext: what the browser captured (timestamp,
/// device, location), with the user filled in by the server, which knows it.
fn session_context(
    session: &Session,
    mut sent: serde_json::Map<String, Value>,
) -> serde_json::Map<String, Value> {
    sent.insert("user".into(), Value::from(session.userid.clone()));
    sent.insert("session".into(), Value::from(session.id.clone()));
    sent.entry("timestamp")
        .or_insert_with(|| Value::from(unix_now() * 1000));
    sent.entry("device").or_insert(Value::Null);
    sent.entry("location").or_insert(Value::Null);
    sent
}
