//! Tenants, keys and limits through the real binary (issue 10): keys made
//! and revoked with `editthinker keys`, every per-job route tried across
//! tenants (404), gateway mode, each limit answered 429 with
//! `Retry-After`, request hardening, and slow clients cut off.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

/// A client acting with one set of headers (a key, or a gateway's tenant).
#[derive(Clone)]
struct As {
    base: String,
    headers: HeaderMap,
    http: reqwest::Client,
}

impl As {
    fn key(service: &Service, key: &str) -> Self {
        Self::header(service, "authorization", &format!("Bearer {key}"))
    }

    fn header(service: &Service, name: &str, value: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        Self {
            base: service.url(""),
            headers,
            http: reqwest::Client::new(),
        }
    }

    fn anonymous(service: &Service) -> Self {
        Self {
            base: service.url(""),
            headers: HeaderMap::new(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .headers(self.headers.clone());
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (status, _, body) = self.send(reqwest::Method::GET, path, None).await;
        (status, body)
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (u16, HeaderMap, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }

    /// Creates a job and waits (`Prefer: wait`) for it to finish.
    async fn run_job(&self, instruction: &str) -> Value {
        let resp = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .headers(self.headers.clone())
            .header("prefer", "wait=30")
            .json(&job_body(
                &png(16, 16, [9, 9, 9]),
                instruction,
                json!({"max_turns": 1}),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }
}

/// Every per-job route, with the status the owner gets for a succeeded job.
fn per_job_routes(id: &str) -> Vec<(reqwest::Method, String, u16)> {
    use reqwest::Method;
    vec![
        (Method::GET, format!("/v1/jobs/{id}"), 200),
        (Method::GET, format!("/v1/jobs/{id}/events"), 200),
        (Method::GET, format!("/v1/jobs/{id}/source"), 200),
        (Method::GET, format!("/v1/jobs/{id}/turns/1/image"), 200),
        (Method::GET, format!("/v1/jobs/{id}/result"), 200),
        (Method::GET, format!("/v1/jobs/{id}/webhooks"), 200),
        (Method::POST, format!("/v1/jobs/{id}/cancel"), 409),
        (Method::POST, format!("/v1/jobs/{id}/retry"), 409),
    ]
}

async fn keys_isolate_tenants_and_revoked_keys_stop_working(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let config = env.config(
        "keys",
        &format!(
            "[auth]\nmode = \"api_keys\"\n[limits]\nrequests_per_second = 1000\nburst = 1000\n{}",
            backends_config(&thinker, &editor, env.dir.path())
        ),
    );
    // `keys` migrates a fresh database itself.
    let acme_key = keys_cli(&config, &["create", "--tenant", "acme", "--label", "ci"]);
    let acme_key = acme_key.trim();
    let globex_key = keys_cli(&config, &["create", "--tenant", "globex"]);
    let globex_key = globex_key.trim();
    assert!(acme_key.starts_with("et_") && globex_key.starts_with("et_"));
    let service = Service::start("serve", &config);

    // Without a key, or with a bad one: 401 problems naming the header.
    let anonymous = As::anonymous(&service);
    for who in [anonymous.clone(), As::key(&service, "et_not-a-real-key")] {
        let (status, headers, problem) = who.post("/v1/jobs", Some(json!({}))).await;
        assert_eq!(status, 401, "{problem}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(problem["code"], "unauthorized");
        assert_eq!(problem["field"], "Authorization");
        assert_eq!(who.get("/v1/jobs").await.0, 401);
    }
    for open in ["/healthz", "/readyz", "/openapi.json", "/docs"] {
        assert_eq!(anonymous.get(open).await.0, 200, "{open} stays open");
    }

    let acme = As::key(&service, acme_key);
    let globex = As::key(&service, globex_key);
    let job = acme.run_job("acme's job").await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let id = job["id"].as_str().unwrap().to_string();

    // Another tenant's job is 404 on every route; the owner reaches it.
    for (method, path, owner_status) in per_job_routes(&id) {
        let (status, _, problem) = globex.send(method.clone(), &path, None).await;
        assert_eq!(status, 404, "{method} {path} as another tenant: {problem}");
        assert_eq!(problem["code"], "not_found");
        let (status, _, body) = acme.send(method.clone(), &path, None).await;
        assert_eq!(status, owner_status, "{method} {path} as the owner: {body}");
    }
    // A job id that exists nowhere answers the same way.
    let (_, missing) = globex
        .get(&format!("/v1/jobs/{}", uuid::Uuid::now_v7()))
        .await;
    let (_, foreign) = globex.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(missing["code"], foreign["code"]);
    assert_eq!(missing["title"], foreign["title"]);

    // Listings hold only the caller's jobs.
    let other = globex.run_job("globex's job").await;
    let (_, list) = acme.get("/v1/jobs").await;
    let listed: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [id.as_str()]);
    let (_, list) = globex.get("/v1/jobs").await;
    assert_eq!(list["jobs"][0]["id"], other["id"]);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);

    // Idempotency keys are per tenant: one key, two tenants, two jobs.
    let body = job_body(&png(8, 8, [1, 1, 1]), "same key", json!({"max_turns": 1}));
    let mut created = Vec::new();
    for who in [&acme, &globex, &acme] {
        let resp = who
            .http
            .post(format!("{}/v1/jobs", who.base))
            .headers(who.headers.clone())
            .header("idempotency-key", "order-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let job: Value = resp.json().await.unwrap();
        created.push(job["id"].as_str().unwrap().to_string());
    }
    assert_ne!(
        created[0], created[1],
        "another tenant's key is another key"
    );
    assert_eq!(created[0], created[2], "the same tenant's key replays");

    // Listing shows both keys, never the keys themselves.
    let listing = keys_cli(&config, &["list"]);
    assert!(
        listing.contains("acme") && listing.contains("globex"),
        "{listing}"
    );
    assert!(!listing.contains(acme_key), "{listing}");
    let acme_id = listing
        .lines()
        .find(|l| l.contains(" acme "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    keys_cli(&config, &["revoke", &acme_id]);
    // Revoked keys stop working within seconds (the lookup cache's TTL).
    let revoked_at = Instant::now();
    loop {
        let (status, _) = acme.get("/v1/jobs").await;
        if status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(10),
            "a revoked key still works after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(globex.get("/v1/jobs").await.0, 200);
    let listing = keys_cli(&config, &["list"]);
    let acme_line = listing.lines().find(|l| l.contains(&acme_id)).unwrap();
    assert!(
        !acme_line.trim_end().ends_with('-'),
        "revocation time listed: {acme_line}"
    );
}

async fn limits_answer_429_with_retry_after(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    // The editor hangs, so jobs stay running and streams stay open.
    editor.set_delay(Duration::from_secs(600));
    let thinker = FakeThinker::start().await;
    let config = env.config(
        "limits",
        &format!(
            "[auth]\nmode = \"gateway\"\ntenant_header = \"X-Tenant-Id\"\n\
             [limits]\nrequests_per_second = 2\nburst = 30\nmax_active_jobs_per_tenant = 2\n\
             max_streams_per_tenant = 2\nmax_metadata_bytes = 100\nmax_json_depth = 6\n\
             max_multipart_parts = 3\nmax_header_bytes = 2048\n{}",
            backends_config(&thinker, &editor, env.dir.path())
        ),
    );
    let service = Service::start("serve", &config);
    let tenant = |name: &str| As::header(&service, "x-tenant-id", name);
    let (acme, globex, initech) = (tenant("acme"), tenant("globex"), tenant("initech"));
    // Gateway mode: no tenant header, or a bad one, is 401.
    assert_eq!(As::anonymous(&service).get("/v1/jobs").await.0, 401);
    assert_eq!(tenant("bad tenant!").get("/v1/jobs").await.0, 401);

    // Active jobs: two per tenant; the third is refused, other tenants go on.
    let body = || job_body(&png(8, 8, [3, 3, 3]), "hold", json!({"max_turns": 1}));
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, _, job) = acme.post("/v1/jobs", Some(body())).await;
        assert_eq!(status, 202, "{job}");
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    let (status, headers, problem) = acme.post("/v1/jobs", Some(body())).await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(problem["code"], "rate_limited");
    assert!(retry_after(&headers) >= 1);
    assert_eq!(globex.post("/v1/jobs", Some(body())).await.0, 202);
    // Canceling one frees a place.
    assert_eq!(
        acme.post(&format!("/v1/jobs/{}/cancel", ids[1]), None)
            .await
            .0,
        202
    );
    let (acme_ref, canceled) = (&acme, format!("/v1/jobs/{}", ids[1]));
    let canceled = canceled.as_str();
    wait_until(|| async move { acme_ref.get(canceled).await.1["status"] == "canceled" }).await;
    assert_eq!(acme.post("/v1/jobs", Some(body())).await.0, 202);

    // Open streams: two per tenant on this replica.
    let open = |who: As, id: String| async move {
        who.http
            .get(format!("{}/v1/jobs/{id}/events", who.base))
            .headers(who.headers.clone())
            .send()
            .await
            .unwrap()
    };
    let first = open(initech.clone(), ids[0].clone()).await;
    assert_eq!(first.status(), 404, "another tenant's job");
    let a = open(acme.clone(), ids[0].clone()).await;
    let b = open(acme.clone(), ids[0].clone()).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let refused = open(acme.clone(), ids[0].clone()).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    drop(a);
    let (acme_again, running) = (acme.clone(), ids[0].clone());
    wait_until(|| {
        let (who, id) = (acme_again.clone(), running.clone());
        async move { open(who, id).await.status() == 200 }
    })
    .await;
    drop(b);

    // Hardening: metadata size, JSON depth, multipart parts, header size.
    let mut big = body();
    big["metadata"] = json!({"note": "x".repeat(200)});
    let (status, _, problem) = initech.post("/v1/jobs", Some(big)).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("metadata")),
        "{problem}"
    );
    let mut deep = body();
    deep["metadata"] = json!({"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}});
    let (status, _, problem) = initech.post("/v1/jobs", Some(deep)).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("metadata.a.b.c.d.e")),
        "{problem}"
    );
    let form = reqwest::multipart::Form::new()
        .text("instruction", "x")
        .text("editor", "fake")
        .text("priority", "1")
        .text("metadata", "{}");
    let resp = initech
        .http
        .post(format!("{}/v1/jobs", initech.base))
        .headers(initech.headers.clone())
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["field"], "multipart", "{problem}");
    let resp = initech
        .http
        .get(format!("{}/v1/jobs", initech.base))
        .headers(initech.headers.clone())
        .header("x-padding", "p".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "headers_too_large");

    // Request rate: a burst of 30, then 2 per second, per tenant.
    let hooli = tenant("hooli");
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let (status, headers, _) = hooli.send(reqwest::Method::GET, "/v1/jobs", None).await;
        if status == 429 {
            assert!(retry_after(&headers) >= 1);
        }
        statuses.push(status);
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert!((30..=33).contains(&served), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // Another tenant's bucket is untouched; open routes are never limited.
    assert_eq!(tenant("umbrella").get("/v1/jobs").await.0, 200);
    for _ in 0..20 {
        assert_eq!(As::anonymous(&service).get("/healthz").await.0, 200);
    }
}

/// Polls `check` until it holds (or panics after 20 s).
async fn wait_until<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "condition not met within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

crate::both_backends!(
    keys_isolate_tenants_and_revoked_keys_stop_working,
    limits_answer_429_with_retry_after,
);

/// A slowloris client (headers one byte a second) is cut off at the
/// header-read timeout while other clients are served; a body that never
/// arrives is answered 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_without_blocking_others() {
    let env = TestEnv::new(Backend::Sqlite).await;
    env.migrate();
    let config = env.config(
        "slow",
        "[limits]\nheader_read_timeout_seconds = 2\nbody_read_timeout_seconds = 2\n",
    );
    let service = Service::start("api", &config);
    let addr = service.addr.unwrap();
    let slow = std::thread::spawn(move || {
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let started = Instant::now();
        let head =
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for byte in head {
            if sock.write_all(&[*byte]).is_err() {
                return started.elapsed();
            }
            let mut buf = [0u8; 512];
            match sock.read(&mut buf) {
                // The server closed the connection (with or without a 408).
                Ok(_) => return started.elapsed(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return started.elapsed(),
            }
        }
        panic!("the slow client sent its whole head without being cut off");
    });
    // Meanwhile everyone else is served at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let started = Instant::now();
        let (status, _) = get_json(&service.url("/healthz")).await;
        assert_eq!(status, 200);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let cut_after = slow.join().unwrap();
    assert!(
        cut_after >= Duration::from_secs(2) && cut_after < Duration::from_secs(6),
        "cut off after {cut_after:?}"
    );

    // A body announced and never sent.
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "no answer to a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

/// Authentication off on a non-loopback address: the start says so loudly;
/// on loopback it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_on_a_public_address_is_warned_about() {
    let env = TestEnv::new(Backend::Sqlite).await;
    env.migrate();
    let public = env.config("public", "");
    let text = std::fs::read_to_string(&public)
        .unwrap()
        .replace("127.0.0.1:0", "0.0.0.0:0");
    std::fs::write(&public, text).unwrap();
    let loud = Service::start("api", &public);
    let quiet = Service::start("api", &env.config("loopback", ""));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(loud.log_contains("AUTHENTICATION IS OFF"));
    assert!(!quiet.log_contains("AUTHENTICATION IS OFF"));
}

/// A 429's `Retry-After`, in seconds.
fn retry_after(headers: &HeaderMap) -> u64 {
    headers["retry-after"].to_str().unwrap().parse().unwrap()
}
