//! End-to-end checks of the HTTP surface: bad input, listing, configuration
//! errors, readiness without backends, documentation endpoints.

use std::time::Duration;

use crate::common::*;
use axum::routing::get;
use axum::Router;
use futures::StreamExt as _;
use serde_json::{json, Value};
use sqlx::Connection as _;

/// A PNG header that declares 100000×100000 pixels in under 100 bytes.
fn huge_declared_png() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let idat: &[u8] = &[0x78, 0x9c, 0x03, 0, 0, 0, 0, 1];
    for (kind, data) in [
        (&b"IHDR"[..], &ihdr[4..]),
        (b"IDAT", idat),
        (b"IEND", &[][..]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend(data);
        bytes.extend((data.len() as u32).to_be_bytes());
        bytes.extend(&chunk);
        bytes.extend(crc32(&chunk).to_be_bytes());
    }
    bytes
}

/// Noise compresses badly, so this PNG is large in bytes.
fn noisy_png(side: u32) -> Vec<u8> {
    let mut state = 12345u32;
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        image::Rgb([(state >> 16) as u8, (state >> 8) as u8, state as u8])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

async fn expect_problem(
    resp: reqwest::Response,
    status: u16,
    code: &str,
    field: Option<&str>,
) -> Value {
    let got = resp.status().as_u16();
    let content_type = resp.headers()["content-type"].clone();
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(got, status, "{problem}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(problem["status"], status, "{problem}");
    assert_eq!(problem["code"], code, "{problem}");
    match field {
        Some(f) => assert_eq!(problem["field"], f, "{problem}"),
        None => assert!(
            problem.get("field").is_none() || problem["field"].is_string(),
            "{problem}"
        ),
    }
    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    problem
}

async fn image_server() -> String {
    let image = png(20, 20, [5, 5, 5]);
    let router = Router::new()
        .route("/ok.png", get(move || async move { image.clone() }))
        .route(
            "/redirect",
            get(|| async { axum::response::Redirect::temporary("/ok.png") }),
        )
        .route("/big.png", get(|| async { vec![0u8; 5000] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

async fn bad_input_is_refused_with_problems(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    env.migrate();
    let extra = format!(
        "{}\n[limits]\nmax_image_bytes = 4000\n",
        backends_config(&thinker, &editor, env.dir.path())
    );
    let api = Service::start("api", &env.config("api", &extra));
    let client = reqwest::Client::new();
    let ok = png(16, 16, [0, 0, 0]);
    let post = |body: Value| client.post(api.url("/v1/jobs")).json(&body);
    let body = |image: &[u8], instruction: &str| job_body(image, instruction, json!({}));

    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            body(b"hello, not an image", "x"),
            422,
            "image_unsupported",
            "image",
        ),
        (
            body(&ok[..ok.len() - 10], "x"),
            422,
            "image_undecodable",
            "image",
        ),
        (body(&noisy_png(64), "x"), 413, "too_large", "image"),
        (
            body(&huge_declared_png(), "x"),
            422,
            "image_too_many_pixels",
            "image",
        ),
        (body(&ok, "   "), 422, "validation_failed", "instruction"),
        (
            body(&ok, &"a".repeat(4001)),
            422,
            "validation_failed",
            "instruction",
        ),
        (
            json!({"image": {"base64": "%%%"}, "instruction": "x"}),
            422,
            "validation_failed",
            "image.base64",
        ),
        (
            json!({"image": {}, "instruction": "x"}),
            422,
            "validation_failed",
            "image",
        ),
        (
            json!({"instruction": "x"}),
            422,
            "validation_failed",
            "image",
        ),
        (
            json!({"image": {"base64": B64_OK.clone()}, "instruction": "x", "editor": "nope"}),
            422,
            "unknown_editor",
            "editor",
        ),
        (
            json!({"image": {"base64": B64_OK.clone()}, "instruction": "x", "options": {"max_turns": 11}}),
            422,
            "validation_failed",
            "options.max_turns",
        ),
        (
            json!({"image": {"base64": B64_OK.clone()}, "instruction": "x", "options": {"max_turns": 0}}),
            422,
            "validation_failed",
            "options.max_turns",
        ),
        (
            json!({"image": {"base64": B64_OK.clone()}, "instruction": "x", "options": {"stop": {"semantic": 11}}}),
            422,
            "validation_failed",
            "options.stop.semantic",
        ),
        (
            json!({"image": {"base64": B64_OK.clone()}, "instruction": "x", "options": {"selection": "first"}}),
            422,
            "validation_failed",
            "options.selection",
        ),
        (
            json!({"image": {"base64": B64_OK.clone()}, "instruction": "x", "colour": "red"}),
            422,
            "validation_failed",
            "colour",
        ),
        (
            json!({"image": {"base64": B64_OK.clone()}, "instruction": "x", "options": {"turns": 2}}),
            422,
            "validation_failed",
            "options.turns",
        ),
        (
            json!({"image": {"base64": B64_OK.clone()}, "instruction": "x", "metadata": [1]}),
            422,
            "validation_failed",
            "metadata",
        ),
        (
            json!({"image": {"url": "ftp://example.com/a.png"}, "instruction": "x"}),
            422,
            "validation_failed",
            "image.url",
        ),
    ];
    for (body, status, code, field) in cases {
        let problem = expect_problem(
            post(body.clone()).send().await.unwrap(),
            status,
            code,
            Some(field),
        )
        .await;
        if code == "unknown_editor" {
            assert!(
                problem["detail"].as_str().unwrap().contains("fake"),
                "lists configured editors: {problem}"
            );
        }
    }

    // Malformed bodies and content types.
    let resp = client
        .post(api.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    expect_problem(resp, 400, "malformed_request", None).await;
    let resp = client
        .post(api.url("/v1/jobs"))
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    expect_problem(resp, 415, "unsupported_media_type", None).await;
    let resp = client
        .post(api.url("/v1/jobs"))
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"instruction\"\r\n\r\nhi\r\n--XY")
        .send()
        .await
        .unwrap();
    expect_problem(resp, 400, "malformed_request", Some("multipart")).await;
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(ok.clone()).file_name("a.png"),
        )
        .text("instruction", "x")
        .text("flavour", "y");
    let resp = client
        .post(api.url("/v1/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation_failed", Some("flavour")).await;
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(ok.clone()).file_name("a.png"),
        )
        .text("instruction", "x")
        .text("options", "{\"max_turns\": 99}");
    let resp = client
        .post(api.url("/v1/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation_failed", Some("options.max_turns")).await;
    let form = reqwest::multipart::Form::new().text("instruction", "x");
    let resp = client
        .post(api.url("/v1/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation_failed", Some("image")).await;

    // Image URLs: fetched with the same limits; errors name image.url.
    let images = image_server().await;
    let resp = post(json!({"image": {"url": format!("{images}/missing")}, "instruction": "x"}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation_failed", Some("image.url")).await;
    let resp = post(json!({"image": {"url": format!("{images}/big.png")}, "instruction": "x"}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 413, "too_large", Some("image")).await;

    // Queries and paths.
    let resp = client
        .get(api.url("/v1/jobs?status=bogus"))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation_failed", Some("status")).await;
    let resp = client
        .get(api.url("/v1/jobs?limit=0"))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation_failed", Some("limit")).await;
    let resp = client
        .get(api.url("/v1/jobs?cursor=xyz"))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation_failed", Some("cursor")).await;
    let resp = client
        .get(api.url("/v1/jobs/0190a5c4-0000-7000-8000-000000000000"))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not_found", None).await;
    let resp = client
        .get(api.url("/v1/jobs/not-a-uuid/events"))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not_found", None).await;

    // Nothing above created a job.
    let (_, list) = get_json(&api.url("/v1/jobs")).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");

    // Good input through every door: JSON base64, JSON URL (with a
    // redirect), multipart; then listing with cursors, newest first.
    let mut created = Vec::new();
    created.push(create_job(&api, job_body(&ok, "first", json!({}))).await);
    created.push(create_job(&api, json!({"image": {"url": format!("{images}/redirect")}, "instruction": "second", "metadata": {"user": 7}})).await);
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(ok.clone())
                .file_name("a.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("instruction", "third")
        .text("options", "{\"max_turns\": 2, \"selection\": \"last\"}")
        .text("metadata", "{\"k\": \"v\"}");
    let resp = client
        .post(api.url("/v1/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let third: Value = resp.json().await.unwrap();
    assert_eq!(third["options"]["max_turns"], 2);
    assert_eq!(third["options"]["selection"], "last");
    assert_eq!(third["metadata"]["k"], "v");
    created.push(third);
    assert_eq!(created[1]["metadata"]["user"], 7);
    let src = client
        .get(api.url(&format!(
            "/v1/jobs/{}/source",
            created[1]["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(
        decode(&src.bytes().await.unwrap())
            .to_rgb8()
            .get_pixel(0, 0)
            .0,
        [5, 5, 5]
    );

    let (_, page1) = get_json(&api.url("/v1/jobs?limit=2")).await;
    let ids: Vec<&str> = page1["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            created[2]["id"].as_str().unwrap(),
            created[1]["id"].as_str().unwrap()
        ]
    );
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = get_json(&api.url(&format!("/v1/jobs?limit=2&cursor={cursor}"))).await;
    assert_eq!(page2["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page2["jobs"][0]["id"], created[0]["id"]);
    assert!(page2["next_cursor"].is_null());
    let (_, queued) = get_json(&api.url("/v1/jobs?status=queued")).await;
    assert_eq!(queued["jobs"].as_array().unwrap().len(), 3);
    let (_, none) = get_json(&api.url("/v1/jobs?status=succeeded")).await;
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0);
}

static B64_OK: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| B64.encode(png(16, 16, [0, 0, 0])));

use base64::Engine;

crate::both_backends!(bad_input_is_refused_with_problems);

#[tokio::test]
async fn private_image_urls_are_refused_unless_allowed() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let images = image_server().await;
    let extra = backends_config(&thinker, &editor, env.dir.path());
    let config = env.config("serve", &extra);
    // The harness allows private URLs; this test turns that off.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "allow_private_image_urls = true",
        "allow_private_image_urls = false",
    );
    std::fs::write(&config, text).unwrap();
    let service = Service::start("serve", &config);
    let client = reqwest::Client::new();
    for url in [
        format!("{images}/ok.png"),
        "http://localhost:9/x.png".into(),
        "http://169.254.169.254/latest".into(),
        "http://[::1]:9/a.png".into(),
    ] {
        let resp = client
            .post(service.url("/v1/jobs"))
            .json(&json!({"image": {"url": url}, "instruction": "x"}))
            .send()
            .await
            .unwrap();
        let problem = expect_problem(resp, 422, "image_url_forbidden", Some("image.url")).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("may not target"),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn without_thinker_or_editor_the_server_starts_and_says_what_to_configure() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let service = Service::start("serve", &env.config("serve", ""));
    assert!(service.log_contains("no thinker is configured"));
    assert!(service.log_contains("no editor is configured"));
    let (status, ready) = get_json(&service.url("/readyz")).await;
    assert_eq!(status, 200);
    assert_eq!(ready["database"], "ok");
    assert!(
        ready["thinker"]
            .as_str()
            .unwrap()
            .contains("not configured"),
        "{ready}"
    );
    assert!(
        ready["editors"]
            .as_str()
            .unwrap()
            .contains("none configured"),
        "{ready}"
    );
    let resp = reqwest::Client::new()
        .post(service.url("/v1/jobs"))
        .json(&job_body(&png(16, 16, [0, 0, 0]), "x", json!({})))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(resp, 503, "not_configured", None).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("[editors."),
        "{problem}"
    );
    let (_, editors) = get_json(&service.url("/v1/editors")).await;
    assert_eq!(editors, json!({"editors": []}));
}

#[tokio::test]
async fn system_endpoints() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let service = Service::start(
        "serve",
        &env.config("serve", &backends_config(&thinker, &editor, env.dir.path())),
    );
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(service.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The worker in this process probes the thinker at start: `ok` once
    // the first probe answered (`checking` before).
    let mut ready = json!(null);
    for _ in 0..50 {
        let (status, body) = get_json(&service.url("/readyz")).await;
        assert_eq!(status, 200, "{body}");
        ready = body;
        if ready["thinker"] != "checking" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (ready["ready"].clone(), ready["thinker"].clone()),
        (json!(true), json!("ok"))
    );
    // A self-hosted /edit server offers no free call to probe.
    assert_eq!(ready["editor_checks"], json!({"fake": "not checked"}));
    let (_, editors) = get_json(&service.url("/v1/editors")).await;
    assert_eq!(
        editors,
        json!({"editors": [{"name": "fake", "kind": "http", "model": null, "default": true, "sandbox": false}]})
    );
    let spec = client
        .get(service.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap();
    // Compared as JSON: key order depends on serde_json features that
    // other dependencies may switch on.
    assert_eq!(
        serde_json::from_str::<Value>(&spec).unwrap(),
        serde_json::from_str::<Value>(&checked_in).unwrap(),
        "served spec matches openapi/openapi.json"
    );
    let docs = client
        .get(service.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(docs.contains("/openapi.json"));
    assert!(
        !docs.contains("https://"),
        "the reader loads nothing from elsewhere"
    );
    let resp = client.get(service.url("/v2/nothing")).send().await.unwrap();
    expect_problem(resp, 404, "not_found", None).await;
}

/// `editthinker openapi` prints the checked-in document (regenerate with
/// `cargo run -- openapi > openapi/openapi.json`).
#[test]
fn openapi_command_matches_the_checked_in_document() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_editthinker"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::from_str::<Value>(&checked_in).unwrap(),
        "openapi/openapi.json is stale: regenerate it with `cargo run -- openapi > openapi/openapi.json`"
    );
}

/// Bad configuration stops the binary with a message naming the key.
#[test]
fn configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("database_url = \"sqlite://{0}/db\"\nblob_url = \"file://{0}/blobs\"\nlisten = \"127.0.0.1:0\"\n", dir.path().display());
    let cases = [
        ("[editors.a]\nkind = \"magic\"\nurl = \"http://x\"\n", "editors"),
        ("[editors.a]\nkind = \"http\"\nurl = \"http://x\"\n[editors.b]\nkind = \"http\"\nurl = \"http://y\"\n", "no default editor"),
        ("[editors.a]\nkind = \"http\"\nurl = \"not a url\"\n", "editors.a.url"),
        ("[editors.a]\nkind = \"http\"\nurl = \"http://x\"\napi_key_env = \"ET_TEST_SURELY_UNSET\"\n", "ET_TEST_SURELY_UNSET"),
        ("[thinker]\nkind = \"openai\"\napi_key_env = \"ET_TEST_SURELY_UNSET_2\"\n", "thinker.api_key_env"),
        ("[thinker]\nbase_url = \"::nope\"\n", "thinker.base_url"),
        ("[worker]\nconcurency = 3\n", "concurency"),
        ("[worker]\nheartbeat_seconds = 40\n", "worker.heartbeat_seconds"),
        ("listen = \"nowhere\"\n", "listen"),
    ];
    for (extra, needle) in cases {
        let path = dir.path().join("bad.toml");
        let text = if extra.starts_with("listen") {
            format!("{}{extra}", base.replace("listen = \"127.0.0.1:0\"\n", ""))
        } else {
            format!("{base}{extra}")
        };
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_editthinker"))
            .args(["serve", "--config"])
            .arg(&path)
            .env_remove("ET_TEST_SURELY_UNSET")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra} was accepted");
        assert!(
            stderr.contains(needle),
            "{extra}: expected {needle:?} in {stderr}"
        );
    }
    // Environment variables override the file, with `__` for nesting.
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, &base).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_editthinker"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("EDITTHINKER_WORKER__LEASE_SECONDS", "2")
        .env("EDITTHINKER_WORKER__HEARTBEAT_SECONDS", "5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker.heartbeat_seconds"));
    let _ = Duration::ZERO;
}

/// SIGTERM with an event stream open: the stream ends, the running job is
/// released after the grace period, and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_streams_and_exits() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    editor.set_delay(Duration::from_secs(300));
    let mut service = Service::start(
        "serve",
        &env.config("serve", &backends_config(&thinker, &editor, env.dir.path())),
    );
    let job = create_job(
        &service,
        job_body(&png(16, 16, [0, 0, 0]), "slow", json!({})),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    wait_for_job(&service, &id, Duration::from_secs(30), |j| {
        j["status"] == "running"
    })
    .await;
    let url = service.url(&format!("/v1/jobs/{id}/events"));
    let stream = tokio::spawn(async move { read_sse(&url, None, Duration::from_secs(60)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = service.terminate();
        (status, service)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{:?}", status.0);
    let events = stream.await.unwrap();
    assert_eq!(events.last().unwrap().event, "job.started");
    assert!(status.1.log_contains("releasing job for shutdown"));
}

/// API replicas validate the editor and thinker sections but build no
/// clients, so they start without the providers' secret variables.
#[tokio::test]
async fn api_role_needs_no_provider_secrets() {
    let env = TestEnv::new(Backend::Sqlite).await;
    env.migrate();
    let extra = "[thinker]\nkind = \"openai\"\napi_key_env = \"ET_TEST_UNSET_THINKER_KEY\"\n\n[editors.gpt]\nkind = \"openai\"\napi_key_env = \"ET_TEST_UNSET_EDITOR_KEY\"\n";
    let api = Service::start("api", &env.config("api", extra));
    let (_, editors) = get_json(&api.url("/v1/editors")).await;
    assert_eq!(
        editors,
        json!({"editors": [{"name": "gpt", "kind": "openai", "model": "gpt-image-1", "default": true, "sandbox": false}]})
    );
    let (_, ready) = get_json(&api.url("/readyz")).await;
    assert_eq!(ready["thinker"], "configured");
    assert_eq!(
        ready["editor_checks"],
        json!(null),
        "an API process probes nothing"
    );
    // The worker, which calls the providers, refuses to start without them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_editthinker"))
        .args(["worker", "--config"])
        .arg(env.config("worker", extra))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ET_TEST_UNSET_EDITOR_KEY"));
}

/// A client that stops reading while events pile up: the hub stops writing
/// its stream once a bounded amount is queued, the stream catches up from
/// the table at the client's pace, and the client gets every stored event
/// once, in order, then a well-formed end of the body (the same client's
/// next request reuses the connection and gets 204). On hyper's path
/// (`sse_direct_writes = false`) the same holds at the client's pace.
async fn a_stream_that_stops_reading_catches_up_in_order(mode: SseMode) {
    let env = TestEnv::new(Backend::Postgres).await;
    env.migrate();
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    // No worker: the job stays queued.
    let api = Service::start_with_env(
        "api",
        &env.config("api", &backends_config(&thinker, &editor, env.dir.path())),
        &[mode.env()],
    );
    let job = create_job(
        &api,
        job_body(&png(16, 16, [0, 0, 0]), "make it brighter", json!({})),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let url = api.url(&format!("/v1/jobs/{id}/events"));
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    // The replay (job.queued) arrives; then the client stops reading.
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("job.queued"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 300 stored events of 64 KiB each (far more than the socket buffers
    // and the hub's queue hold), each with its NOTIFY, then a cancel.
    let mut db = sqlx::PgConnection::connect(&env.database_url)
        .await
        .unwrap();
    let job_id: uuid::Uuid = id.parse().unwrap();
    for batch in 0..30 {
        sqlx::query(
            "WITH ins AS ( \
               INSERT INTO job_events (job_id, type, data, created_at) \
               SELECT $1, 'job.queued', jsonb_build_object('n', $2::int * 10 + g, 'pad', repeat('x', 65536)), now() \
               FROM generate_series(0, 9) AS g RETURNING id, job_id, type) \
             SELECT pg_notify('editthinker_events', job_id::text || ',' || id || ',' || type) FROM ins",
        )
        .bind(job_id)
        .bind(batch)
        .fetch_all(&mut db)
        .await
        .unwrap();
    }
    let resp = client
        .post(api.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let stored: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM job_events WHERE job_id = $1 ORDER BY id")
            .bind(job_id)
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(stored.len(), 302, "job.queued, 300 events, job.canceled");
    // With direct writes, the hub gave the stream back (the socket stopped
    // taking bytes). On hyper's path nothing polls the stream while the
    // socket is full: it reads the feed, or the table, when the client reads.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while mode == SseMode::Direct && !api.log_contains("catches up from the table") {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never fell behind the hub"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Now read it all.
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("the stream ends")
    {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let ids: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(ids, stored, "every stored event once, in order");
    let last_kind = text.lines().rev().find_map(|l| l.strip_prefix("event: "));
    assert_eq!(last_kind, Some("job.canceled"));

    // The body ended cleanly: the pooled connection serves the reconnect.
    let again = client
        .get(&url)
        .header("Last-Event-ID", stored.last().unwrap().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 204);
}

crate::both_sse_modes!(a_stream_that_stops_reading_catches_up_in_order);
