//! The Command API decoder on typical answers: what every command pays
//! after its handler returns (target: ≤ 1 µs; docs/performance.md).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use switchboard::answer::{Answer, Origin, decode};

fn typical_answers(c: &mut Criterion) {
    let origin = Origin {
        object: Some("setpoint"),
        rollback_value: Some("21"),
    };
    let toast = Answer::Json(json!({ "toast": "ok" }));
    let page = Answer::Text("page:home".into());
    let refused = Answer::Json(json!({ "error": "Above the 28 °C limit", "rollback": true }));
    let mut group = c.benchmark_group("answer::decode");
    group.bench_function("toast (Json)", |b| {
        b.iter(|| decode(black_box(&toast), black_box(&origin)))
    });
    group.bench_function("page:home (Text)", |b| {
        b.iter(|| decode(black_box(&page), black_box(&origin)))
    });
    group.bench_function("error with rollback (Json)", |b| {
        b.iter(|| decode(black_box(&refused), black_box(&origin)))
    });
    group.finish();
}

/// What the runtime does with a Rhai map answer: convert it to JSON, then
/// decode it.
fn from_rhai_map(c: &mut Criterion) {
    let mut map = rhai::Map::new();
    map.insert("toast".into(), rhai::Dynamic::from("ok".to_string()));
    let answer = rhai::Dynamic::from_map(map);
    let origin = Origin {
        object: Some("ping"),
        rollback_value: None,
    };
    c.bench_function("answer::from_dynamic+decode/#{ toast: \"ok\" }", |b| {
        b.iter(|| decode(&Answer::from_dynamic(black_box(answer.clone())), &origin))
    });
}

criterion_group!(benches, typical_answers, from_rhai_map);
criterion_main!(benches);
