//! The retry loop against a tiny local server that answers a scripted list
//! of statuses (with `Retry-After` headers), through a [`Call`] that speaks
//! plain HTTP the way the editors and the thinker do.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use editthinker_core::FailureClass;
use editthinker_provider_http::{provider_policy, retry_after, run, Call, Failure, GiveUp, Step};

/// What the server answers, in order, and when each request arrived.
#[derive(Default)]
struct Script {
    replies: Vec<(u16, Option<&'static str>)>,
    seen: Vec<Instant>,
}

async fn answer(State(script): State<Arc<Mutex<Script>>>) -> (StatusCode, HeaderMap, &'static str) {
    let mut script = script.lock().unwrap();
    script.seen.push(Instant::now());
    let (status, after) = if script.replies.is_empty() {
        (200, None)
    } else {
        script.replies.remove(0)
    };
    let mut headers = HeaderMap::new();
    if let Some(after) = after {
        headers.insert("retry-after", after.parse().unwrap());
    }
    (StatusCode::from_u16(status).unwrap(), headers, "body")
}

async fn server(replies: Vec<(u16, Option<&'static str>)>) -> (SocketAddr, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(Script {
        replies,
        seen: Vec::new(),
    }));
    let app = Router::new()
        .route("/work", get(answer))
        .with_state(Arc::clone(&script));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, script)
}

/// GETs `/work`; a status core classes as passing is retried.
struct Get {
    client: reqwest::Client,
    url: String,
    attempts: u32,
    gave_up: Option<GiveUp>,
    delays: Vec<Duration>,
}

impl Get {
    fn new(addr: SocketAddr) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: format!("http://{addr}/work"),
            attempts: 0,
            gave_up: None,
            delays: Vec::new(),
        }
    }
}

impl Call for Get {
    type Output = String;
    type Error = String;

    async fn attempt(&mut self, number: u32) -> Step<String, String> {
        self.attempts += 1;
        assert_eq!(number, self.attempts, "attempts are numbered from 1");
        let response = match self.client.get(&self.url).send().await {
            Ok(r) => r,
            Err(e) => return Step::Retry(Failure::transport(&e)),
        };
        let status = response.status();
        let wait = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        match FailureClass::of_status(status.as_u16()) {
            _ if status.is_success() => Step::Done(body),
            Some(class) => Step::Retry(Failure::answered(class, format!("HTTP {status}"), wait)),
            None => Step::Fail(format!("HTTP {status}")),
        }
    }

    fn give_up(&mut self, failure: Failure, attempts: u32, why: GiveUp) -> String {
        self.gave_up = Some(why);
        format!("{} after {attempts}", failure.message)
    }

    fn retrying(&mut self, _: &Failure, _: u32, delay: Duration) {
        self.delays.push(delay);
    }
}

#[tokio::test]
async fn a_503_with_retry_after_is_retried_no_sooner_than_it_asks() {
    let (addr, script) = server(vec![(503, Some("1")), (503, Some("1"))]).await;
    let mut call = Get::new(addr);
    // A 1 ms base: only Retry-After explains a pause of a second.
    let policy = provider_policy(3, Duration::from_millis(1), Duration::from_secs(60));
    let answer = run(policy, &mut call).await;
    assert_eq!(answer.as_deref(), Ok("body"));
    assert_eq!(call.attempts, 3);
    assert_eq!(call.gave_up, None);
    assert!(
        call.delays.iter().all(|d| *d >= Duration::from_secs(1)),
        "{:?}",
        call.delays
    );
    let seen = script.lock().unwrap().seen.clone();
    assert_eq!(seen.len(), 3);
    for pair in seen.windows(2) {
        let interval = pair[1] - pair[0];
        assert!(interval >= Duration::from_secs(1), "{interval:?}");
    }
}

#[tokio::test]
async fn a_retry_after_past_the_maximum_ends_the_call_at_once() {
    let (addr, script) = server(vec![(429, Some("120"))]).await;
    let mut call = Get::new(addr);
    let policy = provider_policy(3, Duration::from_millis(1), Duration::from_secs(60));
    let error = run(policy, &mut call).await.unwrap_err();
    assert_eq!(error, "HTTP 429 Too Many Requests after 1");
    assert_eq!(
        call.gave_up,
        Some(GiveUp::RetryAfterTooLong(Duration::from_secs(120)))
    );
    assert!(call.delays.is_empty());
    assert_eq!(script.lock().unwrap().seen.len(), 1);
}

#[tokio::test]
async fn retries_end_when_the_policy_is_spent_and_final_statuses_are_not_retried() {
    let (addr, script) = server(vec![(500, None), (502, None), (504, None)]).await;
    let mut call = Get::new(addr);
    let policy = provider_policy(2, Duration::from_millis(1), Duration::from_secs(60));
    let error = run(policy, &mut call).await.unwrap_err();
    assert_eq!(error, "HTTP 504 Gateway Timeout after 3");
    assert_eq!(call.gave_up, Some(GiveUp::Exhausted));
    assert_eq!(call.delays.len(), 2);
    assert_eq!(script.lock().unwrap().seen.len(), 3);

    let (addr, script) = server(vec![(404, None)]).await;
    let mut call = Get::new(addr);
    let error = run(policy, &mut call).await.unwrap_err();
    assert_eq!(error, "HTTP 404 Not Found");
    assert_eq!(call.gave_up, None);
    assert_eq!(script.lock().unwrap().seen.len(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_not_sent_and_retried() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut call = Get::new(SocketAddr::from(([127, 0, 0, 1], port)));
    let policy = provider_policy(1, Duration::from_millis(1), Duration::from_secs(60));
    let error = run(policy, &mut call).await.unwrap_err();
    assert_eq!(call.attempts, 2);
    assert_eq!(call.gave_up, Some(GiveUp::Exhausted));
    assert!(error.ends_with(" after 2"), "{error}");
    let e = reqwest::get(&call.url).await.unwrap_err();
    assert_eq!(Failure::transport(&e).class, FailureClass::NotSent);
    assert!(!Failure::transport(&e).answered);
}

#[test]
fn the_provider_policy_caps_the_backoff() {
    let policy = provider_policy(40, Duration::from_secs(1), Duration::from_secs(60));
    assert_eq!(policy.max_delay, editthinker_provider_http::MAX_BACKOFF);
    for retry in [6, 20, 40] {
        assert!(policy.backoff(retry) <= Duration::from_secs(30), "{retry}");
        assert!(policy.backoff(retry) >= Duration::from_secs(15), "{retry}");
    }
}
