//! The point functions scripts may call: `pointGet`, `pointInfo`,
//! `pointSet`, `pointWatch` and `mqttPublish`. None of them waits for the
//! network: a write is handed to its connection and the answer says only
//! whether that worked.

use std::sync::{Arc, Weak};

use rhai::{Dynamic, Engine, EvalAltResult, Map, Position};

use super::{Points, to_dynamic};

type Result<T> = std::result::Result<T, Box<EvalAltResult>>;

fn script_error(message: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        Position::NONE,
    ))
}

fn upgrade(points: &Weak<Points>) -> Result<Arc<Points>> {
    points
        .upgrade()
        .ok_or_else(|| script_error("the runtime is not running"))
}

/// Registers the point functions of `project` on its engine.
pub fn register(engine: &mut Engine, points: Weak<Points>, project: &str) {
    let bind = || (points.clone(), project.to_string());

    let (points_ref, p) = bind();
    engine.register_fn("pointGet", move |name: &str| -> Result<Dynamic> {
        let state = upgrade(&points_ref)?
            .of(&p)
            .and_then(|points| points.state(name));
        Ok(state.map_or(Dynamic::UNIT, |s| to_dynamic(s.value)))
    });

    let (points_ref, p) = bind();
    engine.register_fn("pointInfo", move |name: &str| -> Result<Dynamic> {
        let Some(state) = upgrade(&points_ref)?
            .of(&p)
            .and_then(|points| points.state(name))
        else {
            return Ok(Dynamic::UNIT);
        };
        let mut info = Map::new();
        info.insert("value".into(), to_dynamic(state.value));
        info.insert(
            "quality".into(),
            Dynamic::from(state.quality.as_str().to_string()),
        );
        info.insert(
            "changed".into(),
            Dynamic::from(i64::try_from(state.changed).unwrap_or(i64::MAX)),
        );
        Ok(Dynamic::from_map(info))
    });

    let (points_ref, p) = bind();
    engine.register_fn(
        "pointSet",
        move |name: &str, value: Dynamic| -> Result<bool> {
            let Some(points) = upgrade(&points_ref)?.of(&p) else {
                return Ok(false);
            };
            let value: serde_json::Value =
                rhai::serde::from_dynamic(&value).map_err(|e| script_error(e.to_string()))?;
            Ok(points.write(name, &value, true).is_ok())
        },
    );

    let (points_ref, p) = bind();
    engine.register_fn(
        "pointWatch",
        move |session: &str, name: &str| -> Result<bool> {
            let points = upgrade(&points_ref)?;
            if points.sessions.get(session, &p).is_none() {
                return Ok(false);
            }
            let watched = points.of(&p).is_some_and(|pp| pp.watch(session, name));
            if watched && let Some(session) = points.sessions.get(session, &p) {
                points.send_snapshot(&session);
            }
            Ok(watched)
        },
    );

    let (points_ref, p) = bind();
    engine.register_fn(
        "mqttPublish",
        move |connection: &str, topic: &str, payload: Dynamic, retain: bool| -> Result<bool> {
            let Some(points) = upgrade(&points_ref)?.of(&p) else {
                return Ok(false);
            };
            let payload = if payload.is_string() {
                payload.into_string().unwrap_or_default().into_bytes()
            } else {
                let json: serde_json::Value =
                    rhai::serde::from_dynamic(&payload).map_err(|e| script_error(e.to_string()))?;
                json.to_string().into_bytes()
            };
            Ok(points.publish(connection, topic, payload, retain))
        },
    );
}
