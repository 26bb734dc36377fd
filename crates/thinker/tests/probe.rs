//! `Thinker::probe` of the `openai` thinker: one `GET {base_url}/models`
//! against a small fake server on loopback.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use editthinker_core::{Thinker, ThinkerError};
use editthinker_thinker::{OpenAiSettings, OpenAiThinker};
use serde_json::json;

/// What the fake server got: method, path and `Authorization` header.
type Seen = (Method, String, Option<String>);

#[derive(Clone)]
struct Fake {
    status: u16,
    body: String,
    delay: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn handle(
    State(fake): State<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    fake.seen
        .lock()
        .unwrap()
        .push((method, uri.path().to_string(), auth));
    tokio::time::sleep(fake.delay).await;
    (
        StatusCode::from_u16(fake.status).unwrap(),
        [("content-type", "application/json")],
        fake.body.clone(),
    )
        .into_response()
}

/// Starts a server answering every request with `status` and `body`;
/// returns its base URL and what it sees.
async fn serve(status: u16, body: &str, delay: Duration) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let fake = Fake {
        status,
        body: body.into(),
        delay,
        seen: Arc::default(),
    };
    let seen = fake.seen.clone();
    let app = Router::new().fallback(handle).with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

fn settings(base_url: &str, api_key: Option<&str>) -> OpenAiSettings {
    OpenAiSettings {
        api_key: api_key.map(str::to_string),
        // Retries are configured, and the probe must not use them.
        retry: OpenAiSettings::retry_policy(3, Duration::from_millis(1)),
        ..common::settings(base_url)
    }
}

fn thinker(base_url: &str, api_key: Option<&str>) -> OpenAiThinker {
    OpenAiThinker::new(settings(base_url, api_key)).unwrap()
}

fn models(ids: &[&str]) -> String {
    let data: Vec<_> = ids
        .iter()
        .map(|id| json!({"id": id, "object": "model", "owned_by": "test"}))
        .collect();
    json!({"object": "list", "data": data}).to_string()
}

#[tokio::test]
async fn a_server_listing_the_model_passes() {
    let (url, seen) = serve(200, &models(&["other", "EditThinker-8B"]), Duration::ZERO).await;
    assert_eq!(thinker(&url, Some("sk-probe")).probe().await, Ok(()));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(
            Method::GET,
            "/v1/models".to_string(),
            Some("Bearer sk-probe".to_string())
        )]
    );

    // No key configured: no header.
    let (url, seen) = serve(200, &models(&["EditThinker-8B"]), Duration::ZERO).await;
    assert_eq!(thinker(&url, None).probe().await, Ok(()));
    assert_eq!(seen.lock().unwrap()[0].2, None);
}

#[tokio::test]
async fn a_server_listing_other_models_is_invalid() {
    let (url, seen) = serve(200, &models(&["qwen3-vl-8b", "llava"]), Duration::ZERO).await;
    match thinker(&url, None).probe().await {
        Err(ThinkerError::Invalid(m)) => {
            assert!(m.contains("\"EditThinker-8B\" is not served by"), "{m}");
            assert!(m.contains(&format!("{url}/models")), "{m}");
            assert!(m.contains("it serves: qwen3-vl-8b, llava"), "{m}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 1, "no retries");
}

#[tokio::test]
async fn an_empty_or_unexpected_200_body_passes() {
    for body in [
        "",
        "not json",
        "{}",
        r#"{"data": []}"#,
        r#"{"data": [{"name": "x"}]}"#,
    ] {
        let (url, _) = serve(200, body, Duration::ZERO).await;
        assert_eq!(thinker(&url, None).probe().await, Ok(()), "{body:?}");
    }
}

#[tokio::test]
async fn rejected_credentials_are_auth() {
    for status in [401, 403] {
        let (url, seen) = serve(
            status,
            r#"{"error": {"message": "bad key"}}"#,
            Duration::ZERO,
        )
        .await;
        match thinker(&url, Some("sk-wrong")).probe().await {
            Err(ThinkerError::Auth(m)) => {
                assert!(m.contains("rejected the API key"), "{m}");
                assert!(m.contains("bad key") && m.contains("/v1/models"), "{m}");
                assert!(!m.contains("sk-wrong"), "the key never shows: {m}");
            }
            other => panic!("expected Auth, got {other:?}"),
        }
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn server_trouble_is_transient_and_not_retried() {
    for status in [429, 500, 503] {
        let (url, seen) = serve(status, r#"{"error": {"message": "busy"}}"#, Duration::ZERO).await;
        match thinker(&url, None).probe().await {
            Err(ThinkerError::Transient(m)) => {
                assert!(
                    m.starts_with(&format!("GET {url}/models: HTTP {status}")),
                    "{m}"
                );
                assert!(m.contains("busy"), "{m}");
            }
            other => panic!("expected Transient, got {other:?}"),
        }
        assert_eq!(seen.lock().unwrap().len(), 1, "no retries for {status}");
    }
}

#[tokio::test]
async fn other_client_errors_are_invalid() {
    let (url, _) = serve(400, r#"{"detail": "bad"}"#, Duration::ZERO).await;
    match thinker(&url, None).probe().await {
        Err(ThinkerError::Invalid(m)) => assert!(m.contains("HTTP 400"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// A server without a model listing answers, so it is reachable: the
/// probe asks only that (the critique itself finds a wrong path).
#[tokio::test]
async fn a_server_without_a_model_listing_passes() {
    for status in [404, 405] {
        let (url, _) = serve(status, r#"{"detail": "Not Found"}"#, Duration::ZERO).await;
        assert_eq!(thinker(&url, None).probe().await, Ok(()), "HTTP {status}");
    }
}

#[tokio::test]
async fn a_dead_port_is_transient() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/v1");
    match thinker(&url, None).probe().await {
        Err(ThinkerError::Transient(m)) => {
            assert_eq!(m, format!("GET {url}/models: connection refused"));
        }
        other => panic!("expected Transient, got {other:?}"),
    }
}

#[tokio::test]
async fn a_slow_server_is_transient_within_the_timeout() {
    let (url, _) = serve(200, &models(&["EditThinker-8B"]), Duration::from_secs(3)).await;
    // The probe waits at most the smaller of 5 s and the call timeout.
    let slow = OpenAiThinker::new(OpenAiSettings {
        timeout: Duration::from_millis(300),
        ..settings(&url, None)
    })
    .unwrap();
    let started = Instant::now();
    match slow.probe().await {
        Err(ThinkerError::Transient(m)) => {
            assert_eq!(m, format!("GET {url}/models: no answer within 300ms"));
        }
        other => panic!("expected Transient, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
