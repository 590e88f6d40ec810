//! One handler call through the Rhai host: the bench project's
//! `userCommand` answering `ping` with `#{ toast: "ok" }`, compiled once
//! and called many times, as the server does for every command.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rhai::Dynamic;
use switchboard::script::{Limits, ScriptHost, SourceFile};

const BENCH_SCRIPT: &str = include_str!("../bench/projects/bench/events/bench.rhai");

fn args(name: &str) -> Vec<Dynamic> {
    ["0123456789abcdef0123456789abcdef", "", name, ""]
        .iter()
        .map(|value| Dynamic::from(value.to_string()))
        .collect()
}

fn user_command(c: &mut Criterion) {
    let files = vec![SourceFile {
        name: "events/bench.rhai".into(),
        text: BENCH_SCRIPT.into(),
    }];
    // The host functions (`uiSet`…) must be known for the script to load;
    // bound to no server they would fail, but `ping` calls none.
    let host = ScriptHost::compile("bench", files, &Limits::default(), |engine| {
        switchboard::runtime::register_host_functions_unbound(engine, "bench")
    })
    .expect("the bench project's script compiles");
    let ping = args("ping");
    assert!(
        host.call_first("userCommand", ping.clone())
            .expect("ping answers")
            .is_some_and(|answer| answer.is_map()),
        "ping answers a map"
    );
    c.bench_function("script::call_first/userCommand ping", |b| {
        b.iter(|| host.call_first("userCommand", black_box(ping.clone())))
    });
}

criterion_group!(benches, user_command);
criterion_main!(benches);
