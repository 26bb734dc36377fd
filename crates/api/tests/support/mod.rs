//! What the in-process router tests share: the router over a real SQLite
//! store in a temporary folder, requests and problem checks.
#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use editthinker_api::auth::{Auth, AuthMode, CallerLimits};
use editthinker_api::fanout::EventHub;
use editthinker_api::intake::Limits;
use editthinker_api::positions::QueuePositions;
use editthinker_api::views::EditorView;
use editthinker_api::{AppState, ThinkerSetup};
use editthinker_store::{BlobStore, SqliteStore, Store};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A 1×1 PNG.
pub const PNG_1X1: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// The router over a fresh SQLite store and blob folder, with one editor
/// (`fake`), a thinker configured and no webhook secret.
pub async fn app() -> (Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    (replica(&store, &dir, None), dir)
}

/// A fresh SQLite store in `dir`.
pub async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let store = SqliteStore::connect(&format!("sqlite://{}/et.db", dir.path().display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    Arc::new(store)
}

/// One API process's router over `store` and the blob folder in `dir`,
/// with an active-jobs `limit`: several share a store as replicas do.
pub fn replica(store: &Arc<dyn Store>, dir: &tempfile::TempDir, limit: Option<u32>) -> Router {
    replica_with(store, dir, limit, "http")
}

/// [`replica`] whose one editor, `fake`, is of `kind`.
pub fn replica_with(
    store: &Arc<dyn Store>,
    dir: &tempfile::TempDir,
    limit: Option<u32>,
    kind: &str,
) -> Router {
    let blobs =
        Arc::new(BlobStore::from_url(&format!("file://{}/blobs", dir.path().display())).unwrap());
    let state = AppState {
        hub: EventHub::start(store.clone(), CancellationToken::new()),
        positions: Arc::new(QueuePositions::new(store.clone())),
        headroom: Default::default(),
        store: store.clone(),
        blobs,
        editors: Arc::new(vec![EditorView {
            name: "fake".into(),
            kind: kind.into(),
            model: None,
            default: true,
            sandbox: kind == "sandbox",
        }]),
        thinker: ThinkerSetup::Model,
        provider_probes: None,
        currency: "USD".into(),
        webhooks_configured: false,
        retention: None,
        cors_allowed_origins: Vec::new(),
        limits: Limits::default(),
        max_attempts: 3,
        auth: Arc::new(Auth::new(AuthMode::None, &CallerLimits::default())),
        max_active_jobs_per_tenant: limit,
        sse_direct_writes: true,
    };
    editthinker_api::router(state)
}

/// Sends `request`; the status and the body as JSON (after checking that
/// an error is a problem body).
pub async fn send(request: Request<Body>) -> (StatusCode, Value) {
    let (router, _dir) = app().await;
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    if !status.is_success() {
        assert_eq!(content_type, "application/problem+json", "{status}");
    }
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub fn post(content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/jobs")
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap()
}

/// A valid create body with `change` applied to it.
pub fn create(change: impl FnOnce(&mut Value)) -> Request<Body> {
    let mut body = json!({"image": {"base64": PNG_1X1}, "instruction": "make it red"});
    change(&mut body);
    post("application/json", body.to_string())
}

/// Checks a problem: its status, `code`, `field`, and that its `status`
/// member agrees with the answer's.
pub fn assert_problem(
    (status, problem): (StatusCode, Value),
    expected: StatusCode,
    code: &str,
    field: Option<&str>,
) {
    assert_eq!(status, expected, "{problem}");
    assert_eq!(problem["status"], expected.as_u16(), "{problem}");
    assert_eq!(problem["code"], code, "{problem}");
    assert_eq!(problem["field"].as_str(), field, "{problem}");
    assert!(
        problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{problem}"
    );
}
