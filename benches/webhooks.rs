//! Webhook and idempotent-create benchmark (not a test: run it by hand).
//!
//!     cargo bench --bench webhooks                  # 2,000 deliveries, 300 creates each way
//!     BENCH_DELIVERIES=5000 cargo bench --bench webhooks
//!
//! On a fresh Postgres database (DATABASE_URL, default the local server):
//! 1. create latency: BENCH_CREATES `POST /v1/jobs` to one `api` process
//!    without and then with a fresh `Idempotency-Key` each, sequentially;
//! 2. deliveries per second: BENCH_DELIVERIES jobs are created with a
//!    webhook for `job.queued` while no worker runs (the outbox fills), then
//!    a `worker` starts whose editor never answers (it runs no job to the
//!    end, so its CPU goes to the delivery loop) and the time until a local
//!    receiver has answered every delivery is measured. The receiver checks
//!    each signature.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use common::*;
use serde_json::json;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

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
        "{label:<34} n={:<5} p50={:>8.2?} p95={:>8.2?} p99={:>8.2?} max={:>8.2?}",
        samples.len(),
        at(0.50),
        at(0.95),
        at(0.99),
        samples[samples.len() - 1]
    );
}

/// What the receiver saw: webhook-ids answered, and bad signatures.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    bad: usize,
}

async fn receive(
    axum::extract::State(seen): axum::extract::State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    use hmac::{Hmac, Mac};
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(&body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    let mut seen = seen.lock().unwrap();
    if header("webhook-signature") != expected {
        seen.bad += 1;
    }
    seen.ids.insert(header("webhook-id").to_string());
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() {
    let creates = env_or("BENCH_CREATES", 300);
    let deliveries = env_or("BENCH_DELIVERIES", 2000);
    let env = TestEnv::new(Backend::Postgres).await;
    env.migrate();
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let backends = backends_config(&thinker, &editor, env.dir.path());
    let config = env.config(
        "bench",
        &format!(
            "allow_private_webhook_urls = true\n[webhooks]\npoll_interval_ms = 100\n{backends}"
        ),
    );
    // Thousands of jobs queued by one tenant: no active-jobs limit.
    let quiet = [
        ("RUST_LOG", "warn,editthinker::roles=info"),
        ("WEBHOOK_SECRET", SECRET),
        ("EDITTHINKER_LIMITS__MAX_ACTIVE_JOBS_PER_TENANT", "0"),
    ];
    let api = Service::start_with_env("api", &config, &quiet);
    let client = reqwest::Client::new();
    let image = png(64, 64, [0, 0, 0]);
    let body = job_body(&image, "make it brighter", json!({"max_turns": 1}));

    // 1. Create latency, without and with an Idempotency-Key.
    for keyed in [false, true] {
        let mut samples = Vec::with_capacity(creates);
        for n in 0..creates {
            let mut request = client.post(api.url("/v1/jobs")).json(&body);
            if keyed {
                request = request.header("Idempotency-Key", format!("bench-{n}"));
            }
            let t = Instant::now();
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 202);
            let _ = resp.bytes().await.unwrap();
            samples.push(t.elapsed());
        }
        let label = if keyed {
            "POST /v1/jobs, Idempotency-Key"
        } else {
            "POST /v1/jobs, no key"
        };
        percentiles(label, samples);
    }

    // 2. Deliveries: fill the outbox with no worker running.
    let mut webhook_body = body.clone();
    webhook_body["webhook"] = json!({"url": hook, "events": ["job.queued"]});
    let filled = Instant::now();
    for _ in 0..deliveries {
        let resp = client
            .post(api.url("/v1/jobs"))
            .json(&webhook_body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let _ = resp.bytes().await.unwrap();
    }
    println!(
        "outbox filled                      {deliveries} jobs with a job.queued webhook in {:.2?}",
        filled.elapsed()
    );
    // The worker's one job slot hangs on the editor, so it only delivers.
    editor.set_delay(Duration::from_secs(3600));
    let worker_env = [
        ("RUST_LOG", "warn,editthinker::roles=info"),
        ("WEBHOOK_SECRET", SECRET),
        ("EDITTHINKER_WORKER__CONCURRENCY", "1"),
    ];
    let started = Instant::now();
    let worker = Service::start_with_env("worker", &config, &worker_env);
    loop {
        let done = seen.lock().unwrap().ids.len();
        if done >= deliveries {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {done}/{deliveries} deliveries in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let bad = seen.lock().unwrap().bad;
    assert_eq!(bad, 0, "bad signatures");
    println!(
        "webhook deliveries                 {deliveries} in {elapsed:.2?} = {:.0} deliveries/s (one worker process, from its start; signatures all valid)",
        deliveries as f64 / elapsed.as_secs_f64()
    );
    drop(worker);
    drop(api);
}
