//! `/metrics` as an operator's Prometheus sees it: an `api` and a `worker`
//! process on one Postgres database, each with its own exporter, scraped
//! after jobs that were created, canceled, retried after an ambiguous
//! editor failure, streamed, edited, critiqued and announced by webhook.
//! The text is parsed by the reference parser (`prometheus_client`, through
//! tests/metrics/parse.py) and every value is checked against what the
//! test made happen.

use std::time::Duration;

use crate::common::*;
use axum::routing::post;
use serde_json::{json, Value};

/// The signing secret the worker gets (`whsec_` + base64 of 24 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One parsed sample.
#[derive(Debug, Clone)]
struct Sample {
    family: String,
    kind: String,
    help: String,
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// Scrapes `url` and parses the text with the reference parser.
async fn scrape(url: &str) -> Vec<Sample> {
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    let python = which("python3").expect("python3 is needed to parse the exposition");
    let out = run_with_stdin(
        std::process::Command::new(python).arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/metrics/parse.py"
        )),
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the exposition ({}):\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .into_iter()
        .map(|s| Sample {
            family: s["family"].as_str().unwrap().into(),
            kind: s["type"].as_str().unwrap().into(),
            help: s["help"].as_str().unwrap().into(),
            name: s["name"].as_str().unwrap().into(),
            labels: s["labels"].as_object().unwrap().clone(),
            value: s["value"].as_f64().unwrap(),
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`; `None`
/// when there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k) == Some(&json!(v)))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches {matching:?}"
    );
    matching.first().map(|s| s.value)
}

/// Scrapes until `check` holds, or panics with the last scrape.
async fn scrape_until(url: &str, what: &str, check: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let samples = scrape(url).await;
        if check(&samples) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never held; last scrape: {samples:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A webhook receiver that answers 204 and counts what it got.
async fn receiver() -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = count.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, count)
}

#[tokio::test]
async fn metrics_count_what_happened_across_api_and_worker() {
    let env = TestEnv::new(Backend::Postgres).await;
    env.migrate();
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    // The first edit gets a 500 after the request was sent: ambiguous, so
    // the job goes back to the queue instead of paying twice.
    *editor.state.fail_first.lock().unwrap() = 1;
    // The thinker turns the first critique away (503): retried in the call.
    *thinker.state.busy_first.lock().unwrap() = 1;
    let (hook_url, hooks) = receiver().await;
    // The last table of the backends is `[editors.fake]`: a paid request
    // is then never resent inside the call.
    let backends = format!(
        "{}retry_ambiguous = false\n",
        backends_config(&thinker, &editor, env.dir.path())
    );
    let config = env.config(
        "services",
        &format!(
            "allow_private_webhook_urls = true\n\n[webhooks]\npoll_interval_ms = 100\n\n[metrics]\nqueue_poll_seconds = 1\n{backends}"
        ),
    );
    let api_metrics = format!("127.0.0.1:{}", free_port());
    let api = Service::start_with_env(
        "api",
        &config,
        &[
            ("EDITTHINKER_METRICS__LISTEN", api_metrics.as_str()),
            ("WEBHOOK_SECRET", SECRET),
        ],
    );
    let api_scrape = format!("http://{api_metrics}/metrics");

    // Series whose labels are known exist from the start, at 0.
    let start = scrape(&api_scrape).await;
    let known = [
        ("editthinker_sse_streams", None),
        (
            "editthinker_job_retries_total",
            Some(("reason", "transient")),
        ),
        (
            "editthinker_job_retries_total",
            Some(("reason", "lease_expired")),
        ),
        (
            "editthinker_jobs_finished_total",
            Some(("status", "failed")),
        ),
        (
            "editthinker_jobs_finished_total",
            Some(("stop_reason", "max_turns")),
        ),
        (
            "editthinker_webhook_deliveries_total",
            Some(("outcome", "gave_up")),
        ),
        ("editthinker_queue_depth", Some(("status", "running"))),
    ];
    for (name, label) in known {
        let found = start.iter().find(|s| {
            s.name == name
                && label.is_none_or(|(k, v)| s.labels.get(k).and_then(|x| x.as_str()) == Some(v))
        });
        assert_eq!(
            found.map(|s| s.value),
            Some(0.0),
            "{name} {label:?} at start"
        );
    }

    // Before any worker runs: one job waits, one is canceled while queued.
    let mut body = job_body(&png(32, 32, [9, 9, 9]), "add a hat", json!({}));
    body["webhook"] = json!({"url": hook_url, "events": ["job.succeeded"]});
    let waiting = create_job(&api, body).await;
    let canceled = create_job(
        &api,
        job_body(&png(32, 32, [9, 9, 9]), "remove the hat", json!({})),
    )
    .await;
    let id = canceled["id"].as_str().unwrap();
    let resp = reqwest::Client::new()
        .post(api.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let missing = reqwest::get(api.url("/no/such/route")).await.unwrap();
    assert_eq!(missing.status(), 404);

    let queued = scrape_until(&api_scrape, "one job queued for a second", |s| {
        value(s, "editthinker_queue_depth", &[("status", "queued")]) == Some(1.0)
            && value(s, "editthinker_queue_oldest_age_seconds", &[]).is_some_and(|v| v >= 1.0)
    })
    .await;
    assert_eq!(
        value(&queued, "editthinker_queue_depth", &[("status", "running")]),
        Some(0.0)
    );
    assert_eq!(
        value(&queued, "editthinker_jobs_created_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(
            &queued,
            "editthinker_jobs_finished_total",
            &[("status", "canceled"), ("stop_reason", "none")]
        ),
        Some(1.0)
    );
    let requests = |route: &str, method: &str, status: &str| {
        value(
            &queued,
            "editthinker_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("/v1/jobs", "POST", "202"), Some(2.0));
    assert_eq!(requests("/v1/jobs/{id}/cancel", "POST", "202"), Some(1.0));
    assert_eq!(
        requests(editthinker_api::UNMATCHED_ROUTE, "GET", "404"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &queued,
            "editthinker_http_request_duration_seconds_count",
            &[("route", "/v1/jobs"), ("method", "POST")]
        ),
        Some(2.0)
    );
    // Route templates only: no series carries a job id.
    for sample in &queued {
        if let Some(route) = sample.labels.get("route") {
            let route = route.as_str().unwrap();
            assert!(
                !route.contains(id) && !route.contains(waiting["id"].as_str().unwrap()),
                "{route}"
            );
        }
    }
    // Help texts and types reach the scraper.
    let created = queued
        .iter()
        .find(|s| s.family == "editthinker_jobs_created")
        .unwrap();
    assert_eq!(created.kind, "counter");
    assert!(created.help.contains("POST /v1/jobs"), "{}", created.help);
    let duration = queued
        .iter()
        .find(|s| s.family == "editthinker_http_request_duration_seconds")
        .unwrap();
    assert_eq!(duration.kind, "histogram");

    // A client watches the waiting job: the stream gauge counts it.
    let events_url = api.url(&format!(
        "/v1/jobs/{}/events",
        waiting["id"].as_str().unwrap()
    ));
    let stream =
        tokio::spawn(async move { read_sse(&events_url, None, Duration::from_secs(60)).await });
    scrape_until(&api_scrape, "one open stream", |s| {
        value(s, "editthinker_sse_streams", &[]) == Some(1.0)
    })
    .await;

    // The worker runs the job: one ambiguous edit, a retry, one good edit.
    let worker_metrics = format!("127.0.0.1:{}", free_port());
    let _worker = Service::start_with_env(
        "worker",
        &config,
        &[
            ("EDITTHINKER_METRICS__LISTEN", worker_metrics.as_str()),
            ("WEBHOOK_SECRET", SECRET),
        ],
    );
    let worker_scrape = format!("http://{worker_metrics}/metrics");
    let events = stream.await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert!(kinds.contains(&"job.retrying"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"job.succeeded"), "{kinds:?}");
    let done = scrape_until(
        &worker_scrape,
        "the webhook delivered and the queue empty",
        |s| {
            value(
                s,
                "editthinker_webhook_deliveries_total",
                &[("outcome", "delivered")],
            ) == Some(1.0)
                && value(s, "editthinker_queue_depth", &[("status", "queued")]) == Some(0.0)
                && value(s, "editthinker_queue_depth", &[("status", "running")]) == Some(0.0)
        },
    )
    .await;
    assert_eq!(hooks.load(std::sync::atomic::Ordering::SeqCst), 1);
    let at = |name: &str, labels: &[(&str, &str)]| value(&done, name, labels);
    assert_eq!(
        at(
            "editthinker_jobs_finished_total",
            &[("status", "succeeded"), ("stop_reason", "satisfied")]
        ),
        Some(1.0)
    );
    assert_eq!(
        at("editthinker_job_retries_total", &[("reason", "transient")]),
        Some(1.0)
    );
    assert_eq!(
        at("editthinker_turns_total", &[("editor", "fake")]),
        Some(1.0)
    );
    assert_eq!(
        at(
            "editthinker_edit_duration_seconds_count",
            &[("editor", "fake"), ("kind", "http")]
        ),
        Some(2.0),
        "the failed edit and the good one"
    );
    assert_eq!(
        at(
            "editthinker_provider_requests_total",
            &[("provider", "http"), ("outcome", "ambiguous")]
        ),
        Some(1.0)
    );
    assert_eq!(
        at(
            "editthinker_provider_requests_total",
            &[("provider", "http"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(editor.calls().len(), 1, "one edit was answered");
    assert_eq!(thinker.calls().len(), 1);
    assert_eq!(*thinker.state.turned_away.lock().unwrap(), 1);
    assert_eq!(
        at(
            "editthinker_critique_duration_seconds_count",
            &[("thinker", "openai")]
        ),
        Some(1.0),
        "one critique call, its retry included"
    );
    // Each HTTP attempt to the thinker, under its own provider label.
    assert_eq!(
        at(
            "editthinker_provider_requests_total",
            &[("provider", "thinker"), ("outcome", "unavailable")]
        ),
        Some(1.0)
    );
    assert_eq!(
        at(
            "editthinker_provider_requests_total",
            &[("provider", "thinker"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        at(
            "editthinker_thinker_tokens_total",
            &[("thinker", "openai"), ("direction", "prompt")]
        ),
        Some(FAKE_PROMPT_TOKENS as f64)
    );
    assert_eq!(
        at(
            "editthinker_thinker_tokens_total",
            &[("thinker", "openai"), ("direction", "generated")]
        ),
        Some(FAKE_GENERATED_TOKENS as f64)
    );
    // The worker creates nothing and serves no HTTP API.
    assert_eq!(at("editthinker_jobs_created_total", &[]), Some(0.0));
    assert!(done
        .iter()
        .all(|s| s.name != "editthinker_http_requests_total"));

    // The stream ended: the gauge is back to zero.
    let after = scrape_until(&api_scrape, "no open stream", |s| {
        value(s, "editthinker_sse_streams", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(
        value(
            &after,
            "editthinker_http_requests_total",
            &[
                ("route", "/v1/jobs/{id}/events"),
                ("method", "GET"),
                ("status", "200")
            ]
        ),
        Some(1.0)
    );
}

/// `[metrics] listen = ""` turns the exporter off; a bad address stops the
/// start with the key named.
#[tokio::test]
async fn the_exporter_can_be_turned_off_and_bad_addresses_are_refused() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let config = env.config("off", "");
    let api = Service::start_with_env("serve", &config, &[("EDITTHINKER_METRICS__LISTEN", "")]);
    let (status, _) = get_json(&api.url("/healthz")).await;
    assert_eq!(status, 200);
    assert!(api.log_contains("metrics exporter off"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_editthinker"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("EDITTHINKER_METRICS__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("metrics.listen"), "{stderr}");
}
