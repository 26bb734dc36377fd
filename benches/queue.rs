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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use editthinker_store::{Fairness, NewJob, PgStore, Store};
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

/// The 1-minute load average, to tell a quiet machine from a busy one.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

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
    match pgbench().await {
        Ok(p) => {
            println!(
                "pgbench -N             {:.1} tps (scale {}, -c {} -j {} -T {}, same server, same run)",
                p.tps, p.scale, p.clients, p.threads, p.seconds
            );
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
    }
}

/// A `pgbench -N` run.
struct Pgbench {
    tps: f64,
    scale: usize,
    clients: usize,
    threads: usize,
    seconds: usize,
}

/// Finds pgbench: $PGBENCH, then PATH, then /usr/bin.
fn find_pgbench() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PGBENCH") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("pgbench"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/bin/pgbench");
        p.is_file().then_some(p)
    })
}

/// Runs a command with a time limit; returns stdout, or why it failed.
async fn run_limited(
    cmd: &mut tokio::process::Command,
    limit: Duration,
    what: &str,
) -> Result<String, String> {
    cmd.kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("{what}: no answer within {limit:?}"))?
        .map_err(|e| format!("{what}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{what}: {}: {}", out.status, tail.join(" | ")));
    }
    Ok(stdout)
}

/// `pgbench -i` into a fresh database on the same server, then `pgbench -N`;
/// the database is dropped afterwards.
async fn pgbench() -> Result<Pgbench, String> {
    if std::env::var("BENCH_PGBENCH").is_ok_and(|v| v == "0") {
        return Err("BENCH_PGBENCH=0".into());
    }
    let Some(bin) = find_pgbench() else {
        return Err("pgbench not found (set PGBENCH, or install postgresql-client)".into());
    };
    let p = Pgbench {
        tps: 0.0,
        scale: env_or("BENCH_PGBENCH_SCALE", 1),
        clients: env_or("BENCH_PGBENCH_CLIENTS", 8),
        threads: env_or("BENCH_PGBENCH_THREADS", 2),
        seconds: env_or("BENCH_PGBENCH_SECONDS", 10),
    };
    let url = common::fresh_postgres_database().await;
    let result = async {
        run_limited(
            tokio::process::Command::new(&bin)
                .args(["-i", "-q", "-s", &p.scale.to_string()])
                .arg(&url),
            Duration::from_secs(300),
            "pgbench -i",
        )
        .await?;
        let out = run_limited(
            tokio::process::Command::new(&bin)
                .args([
                    "-N",
                    "-c",
                    &p.clients.to_string(),
                    "-j",
                    &p.threads.to_string(),
                    "-T",
                    &p.seconds.to_string(),
                ])
                .arg(&url),
            Duration::from_secs(p.seconds as u64 + 120),
            "pgbench -N",
        )
        .await?;
        // "tps = 1579.091916 (without initial connection time)"
        out.lines()
            .find_map(|l| l.trim().strip_prefix("tps = "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|tps| *tps > 0.0)
            .ok_or_else(|| format!("pgbench -N: no `tps = ` line in its output:\n{out}"))
    }
    .await;
    drop_database(&url).await;
    Ok(Pgbench { tps: result?, ..p })
}

/// Drops a database made by `fresh_postgres_database` (best effort).
async fn drop_database(url: &str) {
    use sqlx::Connection;
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    let admin = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
        if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
        {
            eprintln!("dropping {name}: {e}");
        }
    }
}
