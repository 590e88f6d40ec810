//! The rest of a command's fixed cost on the server: parsing the frame and
//! serializing the reply.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard::answer::{Action, Status};
use switchboard::protocol::{Reply, parse_frame};

fn frames_and_replies(c: &mut Criterion) {
    let frame = r#"{"type":"command","seq":12,"name":"ping","param":""}"#;
    c.bench_function("protocol::parse_frame/command", |b| {
        b.iter(|| parse_frame(black_box(frame), 64 * 1024))
    });
    let reply = Reply {
        seq: Some(12),
        status: Status::Ok,
        actions: vec![Action::Toast {
            message: "ok".into(),
            duration: None,
            level: None,
            duplicate: false,
            close: false,
            title: None,
        }],
    };
    c.bench_function("protocol::serialize/reply with a toast", |b| {
        b.iter(|| serde_json::to_string(black_box(&reply)))
    });
}

criterion_group!(benches, frames_and_replies);
criterion_main!(benches);
