//! Hostile cases for create requests: control characters, strict JSON,
//! refused creates that must store nothing, and image fetches that must
//! not go through an environment proxy.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};

use crate::common::*;

/// How many jobs have a folder in the blob store (`file://…/blobs`).
fn stored_job_folders(dir: &Path) -> usize {
    let blobs = dir.join("blobs");
    std::fs::read_dir(&blobs).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .map(|e| {
                // Folders may be sharded; count the leaves that hold files.
                walk_count(&e.path())
            })
            .sum()
    })
}

fn walk_count(path: &Path) -> usize {
    let entries: Vec<_> = std::fs::read_dir(path)
        .map(|r| r.filter_map(Result::ok).collect())
        .unwrap_or_default();
    if entries.iter().any(|e| e.path().is_file()) {
        return 1;
    }
    entries.iter().map(|e| walk_count(&e.path())).sum()
}

async fn problem(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(content_type, "application/problem+json", "{body}");
    (status, body)
}

async fn client_text_with_control_characters_is_refused(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    env.migrate();
    let api = Service::start(
        "api",
        &env.config("api", &backends_config(&thinker, &editor, env.dir.path())),
    );
    let http = reqwest::Client::new();
    let image = png(8, 8, [1, 2, 3]);
    let with = |instruction: &str, metadata: Value| json!({"image": {"base64": B64.encode(&image)}, "instruction": instruction, "metadata": metadata});
    let cases = [
        (with("make it\u{0} red", json!({})), "instruction"),
        (with("make it \u{202e}der", json!({})), "instruction"),
        (with("x", json!({"order": "12\u{0}34"})), "metadata.order"),
        (
            with("x", json!({"list": ["ok", "\u{1b}[2J"]})),
            "metadata.list[1]",
        ),
        (with("x", json!({"k\u{0}": 1})), "metadata.k\u{0}"),
    ];
    for (body, field) in cases {
        let resp = http
            .post(api.url("/v1/jobs"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, problem) = problem(resp).await;
        assert_eq!(status, 422, "{field}: {problem}");
        assert_eq!(problem["code"], "validation_failed", "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    for (name, value) in [
        ("instruction", "a\u{0}b"),
        ("metadata", "{\"a\":\"\u{0}\"}"),
    ] {
        let form = reqwest::multipart::Form::new()
            .part(
                "image",
                reqwest::multipart::Part::bytes(image.clone()).file_name("a.png"),
            )
            .text(name, value.to_string());
        let form = if name == "instruction" {
            form
        } else {
            form.text("instruction", "x")
        };
        let resp = http
            .post(api.url("/v1/jobs"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let (status, problem) = problem(resp).await;
        assert_eq!(status, 422, "multipart {name}: {problem}");
        assert!(
            problem["field"].as_str().unwrap().starts_with(name),
            "{problem}"
        );
    }
    assert_eq!(
        stored_job_folders(env.dir.path()),
        0,
        "a refused create stored its image"
    );
    let (_, list) = get_json(&api.url("/v1/jobs")).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");
    eprintln!("hostile: control characters in 7 client text fields refused with 422 ({backend:?})");
}

async fn refused_creates_and_replays_store_nothing(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    env.migrate();
    // No worker: the first job stays queued and holds the tenant's one slot.
    let extra = format!(
        "{}\n[limits]\nmax_active_jobs_per_tenant = 1\n",
        backends_config(&thinker, &editor, env.dir.path())
    );
    let api = Service::start("api", &env.config("api", &extra));
    let http = reqwest::Client::new();
    let body = |rgb: [u8; 3]| job_body(&png(64, 64, rgb), "make it red", json!({}));
    let post = |body: Value, key: Option<&str>| {
        let mut request = http.post(api.url("/v1/jobs")).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    };
    let first = post(body([1, 1, 1]), Some("order-1")).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(stored_job_folders(env.dir.path()), 1);
    // From here on the blob store cannot be written (a file stands where
    // its folder was): a create that got as far as storing its image
    // would answer 500, and one that stored and then removed it would
    // still have tried.
    let blobs = env.dir.path().join("blobs");
    let kept = env.dir.path().join("blobs.kept");
    std::fs::rename(&blobs, &kept).unwrap();
    std::fs::write(&blobs, b"not a folder").unwrap();

    // Refused before the image is even decoded: bytes that are no image
    // still get the 429, not a 422.
    let not_an_image =
        json!({"image": {"base64": B64.encode(b"not an image")}, "instruction": "x"});
    let resp = post(not_an_image, None).await.unwrap();
    let (status, refusal) = problem(resp).await;
    assert_eq!(
        (status, refusal["code"].as_str()),
        (429, Some("rate_limited")),
        "{refusal}"
    );

    for i in 0..5u8 {
        let resp = post(body([i, 2, 2]), None).await.unwrap();
        let retry_after = resp.headers().get("retry-after").is_some();
        let (status, problem) = problem(resp).await;
        assert_eq!(status, 429, "{problem}");
        assert!(retry_after, "429 without Retry-After");
    }

    for _ in 0..3 {
        let resp = post(body([1, 1, 1]), Some("order-1")).await.unwrap();
        assert_eq!(resp.status(), 202);
        assert_eq!(resp.headers()["idempotent-replayed"], "true");
        let replay: Value = resp.json().await.unwrap();
        assert_eq!(replay["id"], first["id"]);
    }
    let resp = post(body([9, 9, 9]), Some("order-1")).await.unwrap();
    let (status, problem) = problem(resp).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    std::fs::remove_file(&blobs).unwrap();
    std::fs::rename(&kept, &blobs).unwrap();
    assert_eq!(
        stored_job_folders(env.dir.path()),
        1,
        "refused creates, replays or a reused key stored images"
    );
    eprintln!(
        "hostile: 5 refused creates, 3 replays and a reused key stored nothing ({backend:?})"
    );
}

crate::both_backends!(
    client_text_with_control_characters_is_refused,
    refused_creates_and_replays_store_nothing
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_are_parsed_strictly() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let api = Service::start(
        "serve",
        &env.config("serve", &backends_config(&thinker, &editor, env.dir.path())),
    );
    let http = reqwest::Client::new();
    let image = B64.encode(png(8, 8, [1, 2, 3]));
    let ok = format!(
        r#"{{"image":{{"base64":"{image}"}},"instruction":"x","options":{{"max_turns":1}}}}"#
    );
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("{ok}GARBAGE"), 400, ""),
        (format!("{ok}{ok}"), 400, ""),
        (format!(r#"[{{"base64":"{image}"}},"x"]"#), 422, "body"),
        (
            format!(r#"{{"image":{{"base64":"{image}"}},"instruction":"x","options":[1]}}"#),
            422,
            "options",
        ),
        (
            format!(r#"{{"image":{{"base64":"{image}"}}}}"#),
            422,
            "instruction",
        ),
        (
            format!(r#"{{"image":{{"base64":"{image}"}},"instruction":"x","instruction":"y"}}"#),
            422,
            "instruction",
        ),
    ];
    for (body, status, field) in &cases {
        let resp = http
            .post(api.url("/v1/jobs"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (got, problem) = problem(resp).await;
        assert_eq!(
            got,
            *status,
            "{}: {problem}",
            &body[body.len().saturating_sub(40)..]
        );
        if !field.is_empty() {
            assert_eq!(problem["field"], *field, "{problem}");
        }
    }
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(png(8, 8, [1, 2, 3])).file_name("a.png"),
        )
        .text("instruction", "x")
        .text("options", "[1]");
    let resp = http
        .post(api.url("/v1/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, problem) = problem(resp).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("options")),
        "{problem}"
    );
    assert_eq!(stored_job_folders(env.dir.path()), 0);
    // The well-formed body still works.
    let resp = http
        .post(api.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    eprintln!("hostile: {} lenient JSON forms refused", cases.len() + 1);
}

/// A forward proxy that only counts who tried to use it.
async fn counting_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let used = Arc::new(AtomicUsize::new(0));
    let count = used.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            use tokio::io::AsyncWriteExt;
            let _ = socket
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    (format!("http://{addr}"), used)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fetches_ignore_environment_proxies() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let (proxy, proxy_used) = counting_proxy().await;
    let image = png(8, 8, [4, 5, 6]);
    let served = Arc::new(AtomicUsize::new(0));
    let hits = served.clone();
    let router = axum::Router::new().route(
        "/a.png",
        axum::routing::get(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            let image = image.clone();
            async move { image }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    env.migrate();
    let config = env.config("api", &backends_config(&thinker, &editor, env.dir.path()));
    let mut envs = vec![("NO_PROXY", ""), ("no_proxy", "")];
    for name in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        envs.push((name, proxy.as_str()));
    }
    let api = Service::start_with_env("api", &config, &envs);
    let body =
        json!({"image": {"url": format!("http://localhost:{port}/a.png")}, "instruction": "x"});
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(api.url("/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 202, "{text}");
    assert_eq!(
        proxy_used.load(Ordering::SeqCst),
        0,
        "the image fetch went through HTTP_PROXY"
    );
    assert_eq!(served.load(Ordering::SeqCst), 1);
}
