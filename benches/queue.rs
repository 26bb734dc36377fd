//! Throughput and latency benchmark (not a test: run it by hand).
//!
//!     cargo bench --bench queue            # defaults: 200 jobs, worker concurrency 8
//!     BENCH_JOBS=500 BENCH_CONCURRENCY=16 cargo bench --bench queue
//!
//! Starts the real binary as an `api` process and a `worker` process on a
//! fresh Postgres database (DATABASE_URL, default the local server), with
//! instant in-process fake editor and thinker servers, then reports:
//! - jobs per second through the queue (each job: 2 edits, 2 critiques);
//! - `POST /v1/jobs` and `GET /v1/jobs/{id}` latency percentiles.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{label:<22} n={:<5} p50={:>8.2?} p95={:>8.2?} p99={:>8.2?} max={:>8.2?}",
        samples.len(),
        at(0.50),
        at(0.95),
        at(0.99),
        samples[samples.len() - 1]
    );
}

#[tokio::main]
async fn main() {
    let jobs = env_or("BENCH_JOBS", 200);
    let concurrency = env_or("BENCH_CONCURRENCY", 8).to_string();
    let env = TestEnv::new(Backend::Postgres).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    // Never satisfied: every job runs both turns.
    *thinker.state.fallback.lock().unwrap() = said(5, 5, "try again");
    env.migrate();
    let backends = backends_config(&thinker, &editor, env.dir.path());
    let quiet = [("RUST_LOG", "warn,editthinker::roles=info")];
    let api = Service::start_with_env("api", &env.config("api", &backends), &quiet);
    let worker_env = [
        ("RUST_LOG", "warn,editthinker::roles=info"),
        ("EDITTHINKER_WORKER__CONCURRENCY", concurrency.as_str()),
    ];
    let worker = Service::start_with_env("worker", &env.config("worker", &backends), &worker_env);

    let image = png(64, 64, [0, 0, 0]);
    let body = job_body(&image, "make it brighter", json!({"max_turns": 2}));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut create = Vec::with_capacity(jobs);
    let mut ids = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let t = Instant::now();
        let resp = client
            .post(api.url("/v1/jobs"))
            .json(&body)
            .send()
            .await
            .unwrap();
        create.push(t.elapsed());
        assert_eq!(resp.status(), 202);
        let job: serde_json::Value = resp.json().await.unwrap();
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let job = wait_for_job(&api, id, Duration::from_secs(600), is_terminal).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let elapsed = started.elapsed();
    let mut get = Vec::with_capacity(ids.len() * 2);
    for id in ids.iter().chain(ids.iter()) {
        let t = Instant::now();
        let resp = client
            .get(api.url(&format!("/v1/jobs/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.bytes().await.unwrap();
        get.push(t.elapsed());
    }
    println!(
        "queue throughput        {jobs} jobs (2 edits + 2 critiques each) in {elapsed:.2?} = {:.1} jobs/s, worker concurrency {concurrency}",
        jobs as f64 / elapsed.as_secs_f64()
    );
    percentiles("POST /v1/jobs", create);
    percentiles("GET /v1/jobs/{id}", get);
    assert_eq!(editor.calls().len(), jobs * 2);
    drop(worker);
    drop(api);
}
