//! Throughput and latency benchmark (not a test: run it by hand).
//!
//!     cargo bench --bench queue            # defaults: 200 jobs, worker concurrency 8
//!     BENCH_JOBS=500 BENCH_CONCURRENCY=16 cargo bench --bench queue
//!
//! Starts the real binary as an `api` process and a `worker` process on a
//! fresh Postgres database (DATABASE_URL, default the local server), with
//! instant in-process fake editor and thinker servers, then reports:
//! - jobs per second through the queue (each job: 2 edits, 2 critiques);
//! - `POST /v1/jobs` and `GET /v1/jobs/{id}` latency percentiles;
//! - `pgbench -N` TPS on the same Postgres server, measured in the same run
//!   right after the queue (services stopped), in a separate fresh database,
//!   and jobs/s as a ratio of it: a figure that travels between machines.
//!
//! pgbench knobs: BENCH_PGBENCH=0 skips it; PGBENCH (path, default
//! `pgbench` on PATH, then /usr/bin/pgbench), BENCH_PGBENCH_SCALE (1),
//! BENCH_PGBENCH_CLIENTS (8), BENCH_PGBENCH_THREADS (2),
//! BENCH_PGBENCH_SECONDS (10). Without pgbench the figure is skipped, with
//! the reason printed.
//!
//! Then claim throughput of the store itself, tenant-fair and oldest-first
//! side by side (`[worker] fairness`), each on its own fresh database in the
//! same run: BENCH_CLAIM_JOBS (2000) queued jobs, half of them one tenant's
//! deep queue and the rest spread over BENCH_CLAIM_TENANTS - 1 (9) others,
//! drained by BENCH_CONCURRENCY claimers taking one job per claim.
//! BENCH_CLAIMS_ONLY=1 runs only this part.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use editthinker_store::{Fairness, NewJob, PgStore, Store};
use serde_json::json;
use support::{drop_database, env_or, load_average, percentiles, pgbench, PgbenchMode};

#[tokio::main]
async fn main() {
    let load_before = load_average();
    if std::env::var("BENCH_CLAIMS_ONLY").is_ok_and(|v| v == "1") {
        claims().await;
    } else {
        queue().await;
        claims().await;
    }
    println!(
        "machine                {} CPUs; 1-min load average {load_before} before, {} after (other work on the machine skews both figures)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
}

/// Jobs through the real binaries, request latencies, and pgbench.
async fn queue() {
    let jobs = env_or("BENCH_JOBS", 200);
    let concurrency = env_or("BENCH_CONCURRENCY", 8).to_string();
    let env = TestEnv::new(Backend::Postgres).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    // Never satisfied: every job runs both turns.
    *thinker.state.fallback.lock().unwrap() = said(5, 5, "try again");
    env.migrate();
    let backends = backends_config(&thinker, &editor, env.dir.path());
    // The bench queues every job at once: no per-tenant active-jobs limit.
    let quiet = [
        ("RUST_LOG", "warn,editthinker::roles=info"),
        ("EDITTHINKER_LIMITS__MAX_ACTIVE_JOBS_PER_TENANT", "0"),
    ];
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

    let jobs_per_s = jobs as f64 / elapsed.as_secs_f64();
    let clients = env_or("BENCH_PGBENCH_CLIENTS", 8);
    match pgbench(&[PgbenchMode::SimpleUpdate], clients).await {
        Ok(runs) => {
            let p = &runs[0];
            println!("pgbench -N             {:.1} tps ({})", p.tps, p.settings());
            println!(
                "jobs/s ÷ pgbench TPS   {jobs_per_s:.1} / {:.1} = {:.4} (one job's throughput ≈ {:.0} pgbench -N transactions)",
                p.tps,
                jobs_per_s / p.tps,
                p.tps / jobs_per_s
            );
        }
        Err(why) => println!("pgbench -N             skipped: {why}"),
    }
}

/// Claim throughput with and without tenant fairness, printed side by side.
async fn claims() {
    let jobs = env_or("BENCH_CLAIM_JOBS", 2000);
    let tenants = env_or("BENCH_CLAIM_TENANTS", 10).max(2);
    let claimers = env_or("BENCH_CONCURRENCY", 8);
    let fair = claim_throughput(Fairness::Tenant, jobs, tenants, claimers).await;
    let oldest = claim_throughput(Fairness::None, jobs, tenants, claimers).await;
    println!(
        "claim throughput       fairness tenant {fair:.1} claims/s | none {oldest:.1} claims/s ({:.0} %), {jobs} queued jobs of {tenants} tenants (one holds half), {claimers} claimers, 1 job per claim",
        fair / oldest * 100.0
    );
}

/// Claims per second draining `jobs` queued jobs with `claimers` concurrent
/// claimers, on a fresh database.
async fn claim_throughput(fairness: Fairness, jobs: usize, tenants: usize, claimers: usize) -> f64 {
    let url = fresh_postgres_database().await;
    let store = Arc::new(PgStore::connect(&url).await.unwrap());
    store.migrate().await.unwrap();
    for n in 0..jobs {
        // Every other job is tenant 0's: its queue is the deep one.
        let tenant = if n % 2 == 0 {
            0
        } else {
            1 + (n / 2) % (tenants - 1)
        };
        store.insert_job(bench_job(tenant)).await.unwrap();
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..claimers {
        let store = store.clone();
        tasks.spawn(async move {
            let owner = format!("bench-{c}");
            let mut claimed = 0;
            loop {
                let got = store
                    .claim(&owner, 1, Duration::from_secs(600), fairness)
                    .await
                    .unwrap();
                // Empty can mean the rows left are locked by other claimers.
                if got.is_empty() && store.queue_stats().await.unwrap().queued == 0 {
                    break claimed;
                }
                claimed += got.len();
            }
        });
    }
    let claimed: usize = tasks.join_all().await.into_iter().sum();
    let elapsed = started.elapsed();
    assert_eq!(claimed, jobs, "every job claimed once");
    store.pool().close().await;
    drop(store);
    drop_database(&url).await;
    claimed as f64 / elapsed.as_secs_f64()
}

/// A queued job of tenant `n`.
fn bench_job(n: usize) -> NewJob {
    let id = uuid::Uuid::now_v7();
    NewJob {
        id,
        tenant: format!("tenant-{n}"),
        active_limit: None,
        instruction: "make it brighter".into(),
        editor: "fake".into(),
        options: json!({"max_turns": 2}),
        metadata: json!({}),
        source_key: format!("jobs/{id}/source.png"),
        source_mime: "image/png".into(),
        max_attempts: 3,
        priority: 0,
        webhook: None,
        deadline_seconds: None,
        traceparent: None,
        sandbox: false,
    }
}
