//! Deliveries against a real HTTP receiver on 127.0.0.1, which checks the
//! Standard Webhooks headers with its own HMAC computation and answers as
//! each test scripts it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{TimeZone, Utc};
use editthinker_webhooks::{Deliverer, DeliveryRequest, Outcome, Secret, USER_AGENT};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Barrier;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    id: Option<String>,
    timestamp: Option<i64>,
    signature_ok: bool,
    content_type: Option<String>,
    user_agent: Option<String>,
    body: Value,
}

#[derive(Default)]
struct Shared {
    /// Statuses `/hook` answers in turn; 200 once used up.
    script: Mutex<VecDeque<u16>>,
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// TCP connections accepted, to see whether requests share them.
    connections: AtomicUsize,
    /// `/together` answers 200 only once two requests are in it at once.
    together: Option<Barrier>,
}

struct Receiver {
    base: String,
    shared: Arc<Shared>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        Self::start_with(Shared {
            script: Mutex::new(script.iter().copied().collect()),
            together: Some(Barrier::new(2)),
            ..Shared::default()
        })
        .await
    }

    async fn start_with(shared: Shared) -> Receiver {
        let shared = Arc::new(shared);
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counted = shared.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
            counted.connections.fetch_add(1, Ordering::SeqCst);
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            base: format!("http://127.0.0.1:{port}"),
            shared,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
}

/// Checks the signature the way a receiver would, with the `hmac` crate
/// called directly rather than through the code under test.
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sig)) = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return false;
    };
    let Some(sig) = sig
        .strip_prefix("v1,")
        .and_then(|s| STANDARD.decode(s).ok())
    else {
        return false;
    };
    let key = STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    shared.seen.lock().unwrap().push(Seen {
        path: uri.path().to_owned(),
        id: text(header::HeaderName::from_static("webhook-id")),
        timestamp: text(header::HeaderName::from_static("webhook-timestamp"))
            .and_then(|t| t.parse().ok()),
        signature_ok: verify(&headers, &body),
        content_type: text(header::CONTENT_TYPE),
        user_agent: text(header::USER_AGENT),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });

    match uri.path() {
        "/hook" => {
            let status = shared.script.lock().unwrap().pop_front().unwrap_or(200);
            StatusCode::from_u16(status).unwrap().into_response()
        }
        "/redirect" => (StatusCode::FOUND, [(header::LOCATION, "/hook")]).into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        "/overlap" => {
            let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
            // Long enough that a second request let through alongside this
            // one would be seen in flight.
            tokio::time::sleep(Duration::from_millis(300)).await;
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            StatusCode::OK.into_response()
        }
        "/together" => {
            let barrier = shared.together.as_ref().unwrap();
            match tokio::time::timeout(Duration::from_secs(10), barrier.wait()).await {
                Ok(_) => StatusCode::OK.into_response(),
                Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            }
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn deliverer(timeout: Duration, allow_private: bool, max_per_host: usize) -> Deliverer {
    Deliverer::new(timeout, allow_private, max_per_host)
}

fn request(url: String) -> DeliveryRequest {
    DeliveryRequest {
        id: "0190f0a8-7c1e-7d55-9a51-2c6a3f1e9b10".into(),
        url,
        kind: "job.succeeded".into(),
        timestamp: Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap(),
        data: json!({"job_id": "j-1", "score": 0.75}),
        secret: Secret::parse(SECRET).unwrap(),
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_2xx_is_delivered_with_signed_standard_headers() {
    let rx = Receiver::start(&[204]).await;
    let req = request(rx.url("/hook"));
    let before = Utc::now().timestamp();

    let outcome = deliverer(10 * SECOND, true, 4).deliver(&req).await;

    assert_eq!(outcome, Outcome::Delivered { status: 204 });
    let seen = rx.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert!(s.signature_ok, "signature did not verify: {s:?}");
    assert_eq!(s.id.as_deref(), Some(req.id.as_str()));
    // The header carries the attempt's time, not the event's.
    let ts = s.timestamp.expect("webhook-timestamp is Unix seconds");
    assert!(
        (before - 5..=Utc::now().timestamp() + 5).contains(&ts),
        "{ts}"
    );
    assert_eq!(s.content_type.as_deref(), Some("application/json"));
    assert_eq!(s.user_agent.as_deref(), Some(USER_AGENT));
    assert_eq!(
        s.body,
        json!({
            "type": "job.succeeded",
            "timestamp": "2024-05-06T07:08:09Z",
            "data": {"job_id": "j-1", "score": 0.75},
        })
    );
}

#[tokio::test]
async fn a_500_fails_with_its_status() {
    let rx = Receiver::start(&[500]).await;
    let outcome = deliverer(10 * SECOND, true, 4)
        .deliver(&request(rx.url("/hook")))
        .await;
    assert_eq!(
        outcome,
        Outcome::Failed {
            status: Some(500),
            error: "HTTP 500".into()
        }
    );
    assert_eq!(rx.seen().len(), 1);
}

#[tokio::test]
async fn a_redirect_fails_and_is_not_followed() {
    let rx = Receiver::start(&[]).await;
    let outcome = deliverer(10 * SECOND, true, 4)
        .deliver(&request(rx.url("/redirect")))
        .await;
    let Outcome::Failed { status, error } = outcome else {
        panic!("a 302 must not count as delivered: {outcome:?}");
    };
    assert_eq!(status, Some(302));
    assert!(error.contains("HTTP 302"), "{error}");
    let paths: Vec<String> = rx.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/redirect"], "the Location was followed");
}

#[tokio::test]
async fn a_slow_receiver_times_out() {
    let rx = Receiver::start(&[]).await;
    let outcome = deliverer(Duration::from_millis(300), true, 4)
        .deliver(&request(rx.url("/slow")))
        .await;
    assert_eq!(
        outcome,
        Outcome::Failed {
            status: None,
            error: "timed out after 300 ms".into()
        }
    );
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let outcome = deliverer(10 * SECOND, true, 4)
        .deliver(&request(format!("http://127.0.0.1:{port}/hook")))
        .await;
    let Outcome::Failed {
        status: None,
        error,
    } = outcome
    else {
        panic!("expected a failure without status: {outcome:?}");
    };
    assert!(error.starts_with("connect: "), "{error}");
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let rx = Receiver::start(&[]).await;
    let req = request(rx.url("/hook"));

    let refused = deliverer(10 * SECOND, false, 4).deliver(&req).await;
    assert_eq!(
        refused,
        Outcome::Failed {
            status: None,
            error: "destination 127.0.0.1 is a private address \
                    (allow_private_webhook_urls is false)"
                .into()
        }
    );
    // A name that resolves to loopback is refused the same way.
    let by_name = request(req.url.replace("127.0.0.1", "localhost"));
    let Outcome::Failed {
        status: None,
        error,
    } = deliverer(10 * SECOND, false, 4).deliver(&by_name).await
    else {
        panic!("localhost must be refused");
    };
    assert!(
        error.starts_with("destination localhost (") && error.contains("private address"),
        "{error}"
    );
    assert!(rx.seen().is_empty(), "a refused destination was contacted");

    let allowed = deliverer(10 * SECOND, true, 4).deliver(&req).await;
    assert_eq!(allowed, Outcome::Delivered { status: 200 });
    assert_eq!(rx.seen().len(), 1);
}

#[tokio::test]
async fn a_name_is_delivered_through_its_pinned_addresses() {
    // Goes through resolution and `resolve_to_addrs` rather than an IP literal.
    let rx = Receiver::start(&[]).await;
    let req = request(rx.url("/hook").replace("127.0.0.1", "localhost"));
    let outcome = deliverer(10 * SECOND, true, 4).deliver(&req).await;
    assert_eq!(outcome, Outcome::Delivered { status: 200 });
    assert!(rx.seen()[0].signature_ok);
}

#[tokio::test]
async fn retries_keep_the_webhook_id_and_body_and_are_signed_afresh() {
    let rx = Receiver::start(&[503, 200]).await;
    let d = deliverer(10 * SECOND, true, 4);
    let req = request(rx.url("/hook"));

    assert_eq!(
        d.deliver(&req).await,
        Outcome::Failed {
            status: Some(503),
            error: "HTTP 503".into()
        }
    );
    assert_eq!(d.deliver(&req).await, Outcome::Delivered { status: 200 });

    let seen = rx.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.signature_ok), "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| s.id.as_deref() == Some(req.id.as_str())),
        "{seen:?}"
    );
    // The event time in the body does not move with the attempt.
    assert_eq!(seen[0].body, seen[1].body);
    assert_eq!(seen[0].body["timestamp"], "2024-05-06T07:08:09Z");
}

#[tokio::test]
async fn one_per_host_never_overlaps_at_the_receiver() {
    let rx = Receiver::start(&[]).await;
    let d = deliverer(10 * SECOND, true, 1);
    let req = request(rx.url("/overlap"));

    let (a, b) = tokio::join!(d.deliver(&req), d.deliver(&req));

    assert_eq!(a, Outcome::Delivered { status: 200 });
    assert_eq!(b, Outcome::Delivered { status: 200 });
    assert_eq!(rx.seen().len(), 2);
    assert_eq!(rx.shared.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn two_per_host_do_run_together() {
    // The control for the test above: the receiver answers 200 only when
    // both requests are inside it at the same time.
    let rx = Receiver::start(&[]).await;
    let d = deliverer(20 * SECOND, true, 2);
    let req = request(rx.url("/together"));

    let (a, b) = tokio::join!(d.deliver(&req), d.deliver(&req));

    assert_eq!(a, Outcome::Delivered { status: 200 });
    assert_eq!(b, Outcome::Delivered { status: 200 });
}

#[tokio::test]
async fn a_410_is_gone_rather_than_failed() {
    let rx = Receiver::start(&[410]).await;
    let outcome = deliverer(10 * SECOND, true, 4)
        .deliver(&request(rx.url("/hook")))
        .await;
    assert_eq!(
        outcome,
        Outcome::Gone {
            error: "HTTP 410 Gone".into()
        }
    );
    assert_eq!(rx.seen().len(), 1);
}

#[tokio::test]
async fn consecutive_deliveries_to_one_endpoint_share_connections() {
    const N: usize = 8;
    let rx = Receiver::start(&[]).await;
    let d = deliverer(10 * SECOND, true, 4);
    // By name as well as by address: both go through the client cache.
    for url in [
        rx.url("/hook"),
        rx.url("/hook").replace("127.0.0.1", "localhost"),
    ] {
        let before = rx.shared.connections.load(Ordering::SeqCst);
        for _ in 0..N {
            assert_eq!(
                d.deliver(&request(url.clone())).await,
                Outcome::Delivered { status: 200 }
            );
        }
        let opened = rx.shared.connections.load(Ordering::SeqCst) - before;
        assert!(
            (1..N).contains(&opened),
            "{N} deliveries to {url} opened {opened} connections"
        );
    }
    assert_eq!(rx.seen().len(), 2 * N);
}
