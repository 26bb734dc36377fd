//! Webhooks and idempotent create through the real binary (issue 9): a
//! receiver in the test verifies every signature (here, and with the
//! reference `standardwebhooks` Python library), fails the first attempts
//! and sees the retries carry the same `webhook-id`; deliveries outlive a
//! SIGKILL of the delivering process; one `Idempotency-Key` makes one job
//! even for concurrent creates.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);
/// The signing secret the services get (`whsec_` + base64 of 24 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    answered: u16,
}

#[derive(Default)]
struct ReceiverState {
    got: Vec<Received>,
    /// Answers 500 to this many requests on `/flaky` before 204s.
    flaky_failures: usize,
    /// Requests to `/hang` never get an answer while this is set.
    hang: bool,
}

struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    async fn start(flaky_failures: usize) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState {
            flaky_failures,
            ..ReceiverState::default()
        }));
        let app = axum::Router::new()
            .route("/{path}", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    fn got(&self) -> Vec<Received> {
        self.state.lock().unwrap().got.clone()
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let got = self.got();
            if pred(&got) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "receiver: {what} did not happen; got {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    // This request's own answer, decided under the lock: concurrent
    // deliveries (to other paths) push their own entries meanwhile.
    let answered = {
        let mut s = state.lock().unwrap();
        let answered = match path.as_str() {
            "flaky" if s.flaky_failures > 0 => {
                s.flaky_failures -= 1;
                500
            }
            "fail" => 500,
            // A receiver that fails the first event and is gone by the next.
            "gone" => match serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|b| b["type"].as_str().map(str::to_owned))
                .as_deref()
            {
                Some("job.queued") => 500,
                Some("turn.edited") => 410,
                _ => 204,
            },
            "hang" if s.hang => 0,
            _ => 204,
        };
        s.got.push(Received {
            path: path.clone(),
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body: body.to_vec(),
            answered,
        });
        answered
    };
    if answered == 0 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    StatusCode::from_u16(answered).unwrap()
}

/// The signature computed independently of the service's code.
fn expected_signature(r: &Received) -> String {
    use hmac::{Hmac, Mac};
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", r.id, r.timestamp).as_bytes());
    mac.update(&r.body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// Verifies a received request with the reference `standardwebhooks`
/// library (Python), as a receiver in the wild would.
fn verify_with_reference_library(r: &Received, secret: &str) {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
case = json.load(sys.stdin)
headers = {"webhook-id": case["id"], "webhook-timestamp": case["timestamp"], "webhook-signature": case["signature"]}
payload = Webhook(case["secret"]).verify(case["body"], headers)
print(json.dumps(payload))
"#;
    let case = json!({
        "secret": secret,
        "id": r.id,
        "timestamp": r.timestamp,
        "signature": r.signature,
        "body": String::from_utf8(r.body.clone()).unwrap(),
    });
    // python3 with `pip install standardwebhooks` (.ci/run installs it).
    let out = run_with_stdin(
        std::process::Command::new("python3").args(["-c", script]),
        case.to_string().as_bytes(),
    );
    assert!(
        out.status.success(),
        "standardwebhooks rejected the delivery: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(verified, body);
}

fn webhook_config(schedule: &str, backends: &str) -> String {
    format!(
        "allow_private_webhook_urls = true\n\n[webhooks]\nretry_schedule_seconds = {schedule}\ntimeout_seconds = 1\npoll_interval_ms = 100\n{backends}"
    )
}

async fn webhook_deliveries_are_signed_retried_and_listed(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("add a hat", said(9, 9, "add a hat"));
    let receiver = Receiver::start(2).await;
    let backends = backends_config(&thinker, &editor, env.dir.path());
    let config = env.config("serve", &webhook_config("[0.2, 0.2, 0.2]", &backends));
    let service = Service::start_with_env("serve", &config, &[("WEBHOOK_SECRET", SECRET)]);

    let mut body = job_body(
        &png(32, 32, [9, 9, 9]),
        "add a hat",
        json!({"max_turns": 2}),
    );
    body["webhook"] = json!({"url": format!("{}/flaky", receiver.url), "events": ["job.queued", "job.succeeded"]});
    let job = create_job(&service, body).await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(
        job["webhook"]["events"],
        json!(["job.queued", "job.succeeded"])
    );
    // Another job whose receiver always fails: its schedule runs out.
    let mut body = job_body(
        &png(32, 32, [9, 9, 9]),
        "add a hat",
        json!({"max_turns": 1}),
    );
    body["webhook"] = json!({"url": format!("{}/fail", receiver.url)});
    let failing = create_job(&service, body).await;
    let failing_id = failing["id"].as_str().unwrap().to_string();
    assert_eq!(
        failing["webhook"]["events"],
        json!(["job.succeeded", "job.failed", "job.canceled"])
    );

    wait_for_job(&service, &id, LIMIT, |j| j["status"] == "succeeded").await;
    let got = receiver
        .wait_for("two deliveries to /flaky, both answered 204", |got| {
            got.iter()
                .filter(|r| r.path == "flaky" && r.answered == 204)
                .count()
                == 2
        })
        .await;
    let flaky: Vec<&Received> = got.iter().filter(|r| r.path == "flaky").collect();
    assert_eq!(flaky.len(), 4, "two failed attempts, then two deliveries");
    for r in &flaky {
        assert_eq!(r.signature, expected_signature(r), "signature of {r:?}");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["data"]["job_id"], id);
        assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
    }
    verify_with_reference_library(flaky.last().unwrap(), SECRET);
    let succeeded = flaky
        .iter()
        .find(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["type"] == "job.succeeded")
        .expect("a job.succeeded delivery");
    let body: Value = serde_json::from_slice(&succeeded.body).unwrap();
    assert!(body["data"]["image_url"]
        .as_str()
        .unwrap()
        .ends_with("/result"));

    // The list: both delivered; each delivery's attempts are exactly the
    // requests that carried its webhook-id (retries reuse the id).
    let (status, list) = get_json(&service.url(&format!("/v1/jobs/{id}/webhooks"))).await;
    assert_eq!(status, 200);
    let deliveries = list["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2, "{list:#}");
    let types: Vec<&str> = deliveries
        .iter()
        .map(|d| d["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["job.queued", "job.succeeded"]);
    for d in deliveries {
        assert_eq!(d["status"], "delivered", "{d:#}");
        assert!(d["delivered_at"].is_string());
        let sent = flaky.iter().filter(|r| r.id == d["id"]).count();
        assert_eq!(d["attempts"].as_u64().unwrap() as usize, sent, "{d:#}");
    }
    let retried: u64 = deliveries
        .iter()
        .map(|d| d["attempts"].as_u64().unwrap())
        .sum();
    assert_eq!(retried, 4);

    // The always-failing receiver: 1 + 3 scheduled retries, then failed.
    wait_for_job(&service, &failing_id, LIMIT, |j| j["status"] == "succeeded").await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    let delivery = loop {
        let (_, list) = get_json(&service.url(&format!("/v1/jobs/{failing_id}/webhooks"))).await;
        let d = list["deliveries"][0].clone();
        if d["status"] == "failed" {
            break d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never failed: {list:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(delivery["attempts"], 4, "{delivery:#}");
    assert_eq!(delivery["last_status_code"], 500);
    assert_eq!(delivery["last_error"], "HTTP 500");
    assert!(delivery["next_attempt_at"].is_null());
    let to_fail = receiver.got().iter().filter(|r| r.path == "fail").count();
    assert_eq!(to_fail, 4);
}

/// A receiver answering 410 Gone gets no more of that job's events: that
/// delivery is not retried, one waiting for its retry is ended at once, one
/// written later is ended before it is sent, and each record says why.
async fn a_410_ends_the_jobs_deliveries_to_that_receiver(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("add a hat", said(9, 9, "add a hat"));
    // The edit and the critique each take a second, so every delivery is
    // decided before the next wanted event is written.
    editor.set_delay(Duration::from_secs(1));
    thinker.set_delay(Duration::from_secs(1));
    let receiver = Receiver::start(0).await;
    let backends = backends_config(&thinker, &editor, env.dir.path());
    // The retry of the failed first event is due long after the 410, so
    // only ending it keeps it from being sent.
    let config = env.config("serve", &webhook_config("[8, 8]", &backends));
    let service = Service::start_with_env("serve", &config, &[("WEBHOOK_SECRET", SECRET)]);

    let mut body = job_body(
        &png(32, 32, [9, 9, 9]),
        "add a hat",
        json!({"max_turns": 2}),
    );
    body["webhook"] = json!({
        "url": format!("{}/gone", receiver.url),
        "events": ["job.queued", "turn.edited", "job.succeeded"],
    });
    let created = tokio::time::Instant::now();
    let id = create_job(&service, body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for_job(&service, &id, LIMIT, |j| j["status"] == "succeeded").await;

    let deadline = tokio::time::Instant::now() + LIMIT;
    let deliveries = loop {
        let (_, list) = get_json(&service.url(&format!("/v1/jobs/{id}/webhooks"))).await;
        let deliveries = list["deliveries"].as_array().unwrap().clone();
        if deliveries.len() == 3 && deliveries.iter().all(|d| d["status"] != "pending") {
            break deliveries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries still pending: {list:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Before the retry (8 s less 20 % jitter after the first attempt) was
    // due: it was ended, not found gone when claimed.
    assert!(
        created.elapsed() < Duration::from_secs(6),
        "the deliveries ended only after {:?}",
        created.elapsed()
    );
    let of = |kind: &str| {
        deliveries
            .iter()
            .find(|d| d["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} delivery: {deliveries:#?}"))
    };
    let edited = of("turn.edited");
    assert_eq!(edited["status"], "failed", "{edited:#}");
    assert_eq!(edited["attempts"], 1, "not retried: {edited:#}");
    assert_eq!(edited["last_status_code"], 410);
    assert_eq!(edited["last_error"], "HTTP 410 Gone");
    let reason = format!(
        "not sent: delivery {} to this URL was answered 410 Gone",
        edited["id"].as_str().unwrap()
    );
    // Failed once with a 500 and waiting for its retry when the 410 came.
    let queued = of("job.queued");
    assert_eq!(queued["status"], "failed", "{queued:#}");
    assert_eq!(queued["attempts"], 1, "{queued:#}");
    assert_eq!(queued["last_status_code"], 500);
    assert_eq!(queued["last_error"], reason.as_str());
    assert!(queued["next_attempt_at"].is_null(), "{queued:#}");
    // Written after the 410: never sent.
    let succeeded = of("job.succeeded");
    assert_eq!(succeeded["status"], "failed", "{succeeded:#}");
    assert_eq!(succeeded["attempts"], 0, "{succeeded:#}");
    assert!(succeeded["last_status_code"].is_null(), "{succeeded:#}");
    assert_eq!(succeeded["last_error"], reason.as_str());

    let got: Vec<(String, u16)> = receiver
        .got()
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            (body["type"].as_str().unwrap().to_string(), r.answered)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("job.queued".to_string(), 500),
            ("turn.edited".to_string(), 410)
        ]
    );
}

async fn deliveries_survive_a_sigkill_of_the_delivering_process(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.migrate();
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("add a hat", said(9, 9, "add a hat"));
    let receiver = Receiver::start(0).await;
    receiver.state.lock().unwrap().hang = true;
    let backends = backends_config(&thinker, &editor, env.dir.path());
    let config = env.config("split", &webhook_config("[0.2, 0.2, 0.2]", &backends));
    let secret = [("WEBHOOK_SECRET", SECRET)];
    let api = Service::start_with_env("api", &config, &secret);
    let mut worker = Service::start_with_env("worker", &config, &secret);

    let mut body = job_body(
        &png(32, 32, [9, 9, 9]),
        "add a hat",
        json!({"max_turns": 1}),
    );
    body["webhook"] = json!({"url": format!("{}/hang", receiver.url)});
    let id = create_job(&api, body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for_job(&api, &id, LIMIT, |j| j["status"] == "succeeded").await;
    // The worker's delivery loop has the attempt in flight: kill it there.
    let first = receiver
        .wait_for("the first attempt", |got| !got.is_empty())
        .await;
    worker.kill();
    receiver.state.lock().unwrap().hang = false;
    let _worker = Service::start_with_env("worker", &config, &secret);
    let got = receiver
        .wait_for("a delivery answered 204", |got| {
            got.iter().any(|r| r.answered == 204)
        })
        .await;
    let delivered = got.iter().find(|r| r.answered == 204).unwrap();
    assert_eq!(
        delivered.id, first[0].id,
        "the retry carries the same webhook-id"
    );
    assert_eq!(delivered.signature, expected_signature(delivered));
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (_, list) = get_json(&api.url(&format!("/v1/jobs/{id}/webhooks"))).await;
        if list["deliveries"][0]["status"] == "delivered" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn one_idempotency_key_makes_one_job(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let config = env.config("api", &backends_config(&thinker, &editor, env.dir.path()));
    env.migrate();
    let service = Service::start("api", &config);
    let body = job_body(&png(16, 16, [1, 2, 3]), "add a hat", json!({}));
    let client = reqwest::Client::new();
    let send = |body: Value, key: &'static str| {
        let client = client.clone();
        let url = service.url("/v1/jobs");
        async move {
            let resp = client
                .post(url)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let replayed = resp.headers().get("idempotent-replayed").is_some();
            let json: Value = resp.json().await.unwrap();
            (status, replayed, json)
        }
    };
    let answers = futures::future::join_all((0..8).map(|_| send(body.clone(), "order-42"))).await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(status, _, json)| {
            assert_eq!(*status, 202, "{json}");
            json["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "concurrent creates with one key made {ids:?}");
    let replays = answers.iter().filter(|(_, replayed, _)| *replayed).count();
    assert_eq!(replays, 7);
    let (_, list) = get_json(&service.url("/v1/jobs")).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list:#}");

    // The same key for another request is refused, naming the rule.
    let other = job_body(&png(16, 16, [1, 2, 4]), "add a hat", json!({}));
    let (status, _, problem) = send(other, "order-42").await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "idempotency_key_reused");
    // A bad key is refused before anything is stored.
    let (status, _, problem) = send(body.clone(), "has space").await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "Idempotency-Key");
}

async fn webhook_requests_are_validated(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let backends = backends_config(&thinker, &editor, env.dir.path());
    env.migrate();
    let without_secret = Service::start("api", &env.config("plain", &backends));
    let strict = Service::start_with_env(
        "api",
        &env.config("strict", &backends),
        &[("WEBHOOK_SECRET", SECRET)],
    );
    let post = |service: &Service, webhook: Value| {
        let mut body = job_body(&png(16, 16, [1, 2, 3]), "add a hat", json!({}));
        body["webhook"] = webhook;
        let url = service.url("/v1/jobs");
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, problem) = post(&without_secret, json!({"url": "https://example.com/h"})).await;
    assert_eq!(status, 503, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("secret_env"),
        "{problem}"
    );
    let (status, problem) = post(
        &strict,
        json!({"url": "https://example.com/h", "events": ["job.succeeded", "job.exploded"]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "webhook.events[1]");
    let (status, problem) = post(&strict, json!({"url": "ftp://example.com/h"})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "webhook.url");
    // Private destinations are refused unless allow_private_webhook_urls.
    let (status, problem) = post(&strict, json!({"url": "http://127.0.0.1:9/h"})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "webhook_url_forbidden");
    let (_, list) = get_json(&strict.url("/v1/jobs")).await;
    assert!(
        list["jobs"].as_array().unwrap().is_empty(),
        "nothing was stored"
    );
}

/// A tenant with a secret of its own (`editthinker keys
/// rotate-webhook-secret`) has its deliveries signed with it; others keep
/// the server's. Without a server secret, only tenants with their own may
/// ask for webhooks.
async fn a_tenants_own_secret_signs_its_deliveries(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let receiver = Receiver::start(0).await;
    let backends = backends_config(&thinker, &editor, env.dir.path());
    let config = env.config(
        "tenants",
        &format!(
            "{}\n[auth]\nmode = \"gateway\"\n",
            webhook_config("[0.2]", &backends)
        ),
    );
    let cli = |args: &[&str]| keys_cli(&config, args);
    let first = cli(&["rotate-webhook-secret", "--tenant", "acme"]);
    let acme_secret = cli(&["rotate-webhook-secret", "--tenant", "acme"]);
    assert!(acme_secret.starts_with("whsec_") && acme_secret != first);
    let create = |service: &Service, tenant: &'static str, path: &'static str| {
        let url = service.url("/v1/jobs");
        let mut body = job_body(&png(8, 8, [1, 2, 3]), "hooked", json!({"max_turns": 1}));
        body["webhook"] =
            json!({"url": format!("{}/{path}", receiver.url), "events": ["job.queued"]});
        async move {
            reqwest::Client::new()
                .post(url)
                .header("x-tenant-id", tenant)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };

    // No server secret: globex may not ask for webhooks, acme may.
    let service = Service::start("serve", &config);
    assert_eq!(create(&service, "globex", "globex").await, 503);
    assert_eq!(create(&service, "acme", "acme").await, 202);
    let got = receiver
        .wait_for("acme's delivery", |got| {
            got.iter().any(|r| r.path == "acme")
        })
        .await;
    let acme = got.iter().find(|r| r.path == "acme").unwrap();
    verify_with_reference_library(acme, &acme_secret);
    assert_ne!(
        acme.signature,
        expected_signature(acme),
        "not the server's secret"
    );
    drop(service);

    // With a server secret, tenants without their own use it.
    let service = Service::start_with_env("serve", &config, &[("WEBHOOK_SECRET", SECRET)]);
    assert_eq!(create(&service, "globex", "globex").await, 202);
    let got = receiver
        .wait_for("globex's delivery", |got| {
            got.iter().any(|r| r.path == "globex")
        })
        .await;
    let globex = got.iter().find(|r| r.path == "globex").unwrap();
    verify_with_reference_library(globex, SECRET);
}

crate::both_backends!(
    a_410_ends_the_jobs_deliveries_to_that_receiver,
    a_tenants_own_secret_signs_its_deliveries,
    webhook_deliveries_are_signed_retried_and_listed,
    deliveries_survive_a_sigkill_of_the_delivering_process,
    one_idempotency_key_makes_one_job,
    webhook_requests_are_validated,
);
