//! How many key-value operations one client gets from one NATS server, in
//! the shapes a Switchboard node uses (docs/cluster.md, "Capacity"):
//!
//! - `put, one at a time`: the node's writer applies its batches in order,
//!   waiting for each acknowledgement (src/cluster/kv.rs);
//! - `put, 64 in flight`: what many writers (or a pipelined writer) get;
//! - `get, one at a time` and `64 in flight`: session and variable reads
//!   from request handlers, each waited for;
//! - `update (compare-and-set)`: lease renewals and atomic updates.
//!
//! With `sizes BUCKET` after the URL it only prints the sizes of the
//! values in that bucket (a running cluster's `switchboard_sessions`).
//!
//! Values are `SIZE` bytes (default 1 024, the order of a session record).
//! Each shape runs `SECONDS` (default 3) after the bucket is filled. Prints
//! one line per shape: operations per second and p50/p99 latency. Bucket
//! `bench_kv` is created with one replica, file storage, and deleted after.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

const KEYS: usize = 1_000;
const IN_FLIGHT: usize = 64;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    if std::env::args().nth(2).as_deref() == Some("sizes") {
        let bucket = std::env::args().nth(3).unwrap_or_else(|| "switchboard_sessions".into());
        return print_sizes(&url, &bucket).await;
    }
    let size: usize = env_or("SIZE", 1024);
    let seconds: u64 = env_or("SECONDS", 3);
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client);
    let _ = js.delete_stream("KV_bench_kv").await;
    // The settings src/cluster/kv.rs gives a bucket's stream (`bucket_stream`).
    js.create_stream(stream::Config {
        name: "KV_bench_kv".into(),
        subjects: vec!["$KV.bench_kv.>".into()],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await?;
    let store = js.get_key_value("bench_kv").await?;
    let value = bytes::Bytes::from(vec![b'x'; size]);
    for key in 0..KEYS {
        store.put(key_of(key), value.clone()).await?;
    }
    let run = Duration::from_secs(seconds);
    println!("NATS KV from one client, values of {size} B, {seconds} s per shape");
    report("put, one at a time", measure(run, 1, |i| {
        let (store, value) = (store.clone(), value.clone());
        async move { store.put(key_of(i % KEYS), value).await.map(|_| ()).map_err(|e| e.to_string()) }
    }).await);
    report(&format!("put, {IN_FLIGHT} in flight"), measure(run, IN_FLIGHT, |i| {
        let (store, value) = (store.clone(), value.clone());
        async move { store.put(key_of(i % KEYS), value).await.map(|_| ()).map_err(|e| e.to_string()) }
    }).await);
    report("get, one at a time", measure(run, 1, |i| {
        let store = store.clone();
        async move { store.get(key_of(i % KEYS)).await.map(|_| ()).map_err(|e| e.to_string()) }
    }).await);
    report(&format!("get, {IN_FLIGHT} in flight"), measure(run, IN_FLIGHT, |i| {
        let store = store.clone();
        async move { store.get(key_of(i % KEYS)).await.map(|_| ()).map_err(|e| e.to_string()) }
    }).await);
    report("update (compare-and-set), one at a time", measure(run, 1, |i| {
        let (store, value) = (store.clone(), value.clone());
        async move { cas(&store, &key_of(i % KEYS), value).await }
    }).await);
    js.delete_stream("KV_bench_kv").await?;
    Ok(())
}

/// Sizes of the values in `bucket`: count, min, median, max, total.
async fn print_sizes(url: &str, bucket: &str) -> Result<(), Box<dyn std::error::Error>> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let store = js.get_key_value(bucket).await?;
    let mut keys = store.keys().await?;
    let mut sizes = Vec::new();
    while let Some(key) = keys.next().await {
        if let Some(value) = store.get(key?).await? {
            sizes.push(value.len());
        }
    }
    sizes.sort();
    if sizes.is_empty() {
        println!("{bucket}: empty");
        return Ok(());
    }
    println!(
        "{bucket}: {} values, min {} B, median {} B, max {} B, total {} B",
        sizes.len(),
        sizes[0],
        sizes[sizes.len() / 2],
        sizes[sizes.len() - 1],
        sizes.iter().sum::<usize>()
    );
    Ok(())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn key_of(i: usize) -> String {
    format!("k{i:06}")
}

/// Read the revision, then update on it: a lease renewal's or a
/// compare-and-set variable update's two round trips.
async fn cas(store: &kv::Store, key: &str, value: bytes::Bytes) -> Result<(), String> {
    let entry = store.entry(key).await.map_err(|e| e.to_string())?;
    let revision = entry.map_or(0, |e| e.revision);
    store.update(key, value, revision).await.map(|_| ()).map_err(|e| e.to_string())
}

struct Outcome {
    done: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// Runs `op` for `run`, keeping `in_flight` operations going.
async fn measure<F, Fut>(run: Duration, in_flight: usize, op: F) -> Outcome
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let mut running = FuturesUnordered::new();
    let mut next = 0;
    let mut outcome = Outcome { done: 0, failed: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
    let timed = |i: usize| {
        let future = op(i);
        async move {
            let at = Instant::now();
            (future.await, at.elapsed())
        }
    };
    while running.len() < in_flight {
        running.push(timed(next));
        next += 1;
    }
    while let Some((result, latency)) = running.next().await {
        match result {
            Ok(()) => outcome.done += 1,
            Err(_) => outcome.failed += 1,
        }
        outcome.latencies.push(latency);
        if started.elapsed() < run {
            running.push(timed(next));
            next += 1;
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}

fn report(shape: &str, mut outcome: Outcome) {
    outcome.latencies.sort();
    let at = |q: f64| {
        let index = ((outcome.latencies.len() as f64 - 1.0) * q).round() as usize;
        outcome.latencies.get(index).copied().unwrap_or_default()
    };
    println!(
        "{shape:<42} {:>8.0} ops/s   p50 {:>6.2} ms   p99 {:>6.2} ms   failed {}",
        outcome.done as f64 / outcome.elapsed.as_secs_f64(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        outcome.failed
    );
}
