//! End to end through the binary with an asynchronous editor kind (`bfl`):
//! the worker is killed while it waits for the provider, and the restarted
//! worker finishes the same provider request instead of paying for a new
//! one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);
const KEY: &str = "bfl-e2e-key";
/// The colour of the fake's result image.
const RESULT_RGB: [u8; 3] = [12, 200, 34];

#[derive(Default)]
struct BflState {
    /// `(prompt, source width, source height)` of each submission.
    submissions: Mutex<Vec<(String, u32, u32)>>,
    polls: Mutex<u32>,
    /// While false, polls answer `Pending`.
    ready: Mutex<bool>,
    downloads: Mutex<u32>,
    base: Mutex<String>,
}

/// A Black Forest Labs API: `POST /v1/flux-kontext-pro` with `x-key`, a
/// polling URL that answers `Pending` until released, and a signed result.
struct FakeBfl {
    url: String,
    state: Arc<BflState>,
}

impl FakeBfl {
    async fn start() -> Self {
        let state = Arc::new(BflState::default());
        let router = Router::new()
            .route("/v1/flux-kontext-pro", post(submit))
            .route("/v1/get_result/{id}", get(poll))
            .route("/results/{id}/sample.png", get(sample))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        *state.base.lock().unwrap() = url.clone();
        Self { url, state }
    }
}

async fn submit(
    State(state): State<Arc<BflState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if headers.get("x-key").and_then(|v| v.to_str().ok()) != Some(KEY) {
        return (StatusCode::FORBIDDEN, Json(json!({"detail": "bad key"}))).into_response();
    }
    let image = B64
        .decode(body["input_image"].as_str().expect("input_image"))
        .expect("base64 source");
    let (w, h) = image::GenericImageView::dimensions(&decode(&image));
    let mut submissions = state.submissions.lock().unwrap();
    submissions.push((body["prompt"].as_str().unwrap_or_default().into(), w, h));
    let id = format!("task-{}", submissions.len());
    let base = state.base.lock().unwrap().clone();
    Json(json!({"id": id, "polling_url": format!("{base}/v1/get_result/{id}")})).into_response()
}

async fn poll(State(state): State<Arc<BflState>>, Path(id): Path<String>) -> Json<Value> {
    *state.polls.lock().unwrap() += 1;
    if !*state.ready.lock().unwrap() {
        return Json(json!({"id": id, "status": "Pending"}));
    }
    let base = state.base.lock().unwrap().clone();
    Json(json!({
        "id": id,
        "status": "Ready",
        "result": {"sample": format!("{base}/results/{id}/sample.png?sig=abc")}
    }))
}

async fn sample(State(state): State<Arc<BflState>>, Path(id): Path<String>) -> Response {
    assert_eq!(id, "task-1", "only the first submission is ever fetched");
    *state.downloads.lock().unwrap() += 1;
    ([("content-type", "image/png")], png(40, 30, RESULT_RGB)).into_response()
}

fn backends(bfl: &FakeBfl, thinker: &FakeThinker, env: &TestEnv) -> String {
    let template = env.dir.path().join("template.txt");
    std::fs::write(&template, TEST_TEMPLATE).unwrap();
    format!(
        r#"
[worker]
concurrency = 1
lease_seconds = 3
heartbeat_seconds = 1
poll_interval_ms = 200
retry_base_ms = 200

[thinker]
kind = "openai"
base_url = "{}"
prompt_template_file = "{}"
retry_base_ms = 50

[editors.kontext]
kind = "bfl"
base_url = "{}"
api_key_env = "ET_E2E_BFL_KEY"
poll_interval_ms = 50
retry_base_ms = 50
default = true
"#,
        thinker.base_url,
        template.display(),
        bfl.url
    )
}

async fn killed_while_polling_resumes_the_same_request(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let bfl = FakeBfl::start().await;
    let thinker = FakeThinker::start().await;
    let backends = backends(&bfl, &thinker, &env);
    let config = env.config("serve", &backends);
    let key = [("ET_E2E_BFL_KEY", KEY)];
    let mut first = Service::start_with_env("serve", &config, &key);
    let job = create_job(
        &first,
        job_body(
            &png(40, 30, [0, 0, 0]),
            "add a red hat",
            json!({"max_turns": 1}),
        ),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();

    // Polling has begun, so the request was recorded: kill the worker.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while *bfl.state.polls.lock().unwrap() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no polls");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    assert_eq!(bfl.state.submissions.lock().unwrap().len(), 1);
    *bfl.state.ready.lock().unwrap() = true;

    let second = Service::start_with_env("serve", &env.config("second", &backends), &key);
    let job = wait_for_job(&second, &id, LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["attempt"], 2, "resumed after the lease expired");
    assert!(second.log_contains("resuming the edit in flight"));

    // One submission, paid once, with the user's words and the source size.
    let submissions = bfl.state.submissions.lock().unwrap().clone();
    assert_eq!(submissions, [("add a red hat".to_string(), 40, 30)]);
    assert_eq!(*bfl.state.downloads.lock().unwrap(), 1);
    let turns = job["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0]["provider_request_id"], "task-1");
    // The stored turn is the provider's image.
    let bytes = reqwest::get(second.url(turns[0]["image_url"].as_str().unwrap()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let img = decode(&bytes).to_rgb8();
    assert_eq!(img.dimensions(), (40, 30));
    assert_eq!(img.get_pixel(20, 15).0, RESULT_RGB);
}

crate::both_backends!(killed_while_polling_resumes_the_same_request);
