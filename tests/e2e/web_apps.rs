//! What web apps expect of the job API, through the real binary (issue 9):
//! priorities and the queue position (jobs queued with an `api` alone show
//! where they stand, then a one-slot worker runs them in priority order),
//! and CORS for browser apps.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);

async fn priority_orders_the_queue_and_positions_show_it(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.migrate();
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    for n in 0..4 {
        thinker.on(&format!("job {n}"), said(9, 9, &format!("job {n}")));
    }
    let backends = backends_config(&thinker, &editor, env.dir.path())
        .replace("concurrency = 2", "concurrency = 1");
    let config = env.config("split", &backends);
    let api = Service::start("api", &config);

    let mut ids = Vec::new();
    for (n, priority) in [0, 5, 0, -3].into_iter().enumerate() {
        let mut body = job_body(
            &png(16, 16, [1, 2, 3]),
            &format!("job {n}"),
            json!({"max_turns": 1}),
        );
        body["priority"] = json!(priority);
        let job = create_job(&api, body).await;
        assert_eq!(job["priority"], priority);
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    // Claim order: priority 5, then the two 0s oldest first, then −3.
    let expected_order = [1, 0, 2, 3];
    for (position, &n) in expected_order.iter().enumerate() {
        let (_, job) = get_json(&api.url(&format!("/v1/jobs/{}", ids[n]))).await;
        assert_eq!(
            job["queue_position"],
            position as u64 + 1,
            "job {n}: {job:#}"
        );
    }
    // Bad priorities are refused, naming the field and the range.
    let mut body = job_body(&png(16, 16, [1, 2, 3]), "job 9", json!({}));
    body["priority"] = json!(11);
    let resp = reqwest::Client::new()
        .post(api.url("/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["field"], "priority", "{problem}");

    let _worker = Service::start("worker", &config);
    for id in &ids {
        let job = wait_for_job(&api, id, LIMIT, is_terminal).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        assert!(job["queue_position"].is_null(), "{job:#}");
    }
    let prompts = editor.prompts();
    let expected: Vec<String> = expected_order.iter().map(|n| format!("job {n}")).collect();
    assert_eq!(
        prompts, expected,
        "one worker slot claims in priority order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_configured_origins_in_and_nobody_else() {
    let env = TestEnv::new(Backend::Sqlite).await;
    env.migrate();
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let backends = backends_config(&thinker, &editor, env.dir.path());
    let config = env.config(
        "api",
        &format!("[http]\ncors_allowed_origins = [\"https://app.example\"]\n{backends}"),
    );
    let api = Service::start("api", &config);
    let client = reqwest::Client::new();
    let job = create_job(&api, job_body(&png(16, 16, [1, 2, 3]), "job 0", json!({}))).await;
    let id = job["id"].as_str().unwrap();

    // A browser's preflight for a create with an idempotency key.
    let preflight = client
        .request(reqwest::Method::OPTIONS, api.url("/v1/jobs"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    let allowed = header(&preflight, "access-control-allow-headers").unwrap();
    assert!(allowed.contains("idempotency-key"), "{allowed}");

    // A create, and the event stream, from the allowed origin.
    for path in ["/v1/jobs".to_string(), format!("/v1/jobs/{id}/events")] {
        let resp = client
            .get(api.url(&path))
            .header("Origin", "https://app.example")
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some("https://app.example"),
            "{path}"
        );
    }
    let resp = client
        .post(api.url("/v1/jobs"))
        .header("Origin", "https://app.example")
        .json(&job_body(&png(16, 16, [1, 2, 3]), "job 1", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let exposed = header(&resp, "access-control-expose-headers").unwrap();
    assert!(
        exposed.contains("location") && exposed.contains("idempotent-replayed"),
        "{exposed}"
    );

    // Any other origin gets no CORS headers, so its browser blocks the answer.
    let resp = client
        .get(api.url("/v1/jobs"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(header(&resp, "access-control-allow-origin").is_none());
}

async fn prefer_wait_answers_the_finished_job_with_api_and_worker_apart(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.migrate();
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("quick", said(9, 9, "quick"));
    thinker.on("slow", said(9, 9, "slow"));
    let config = env.config("split", &backends_config(&thinker, &editor, env.dir.path()));
    let api = Service::start("api", &config);
    let _worker = Service::start("worker", &config);
    let client = reqwest::Client::new();
    let post = |instruction: &'static str, prefer: &'static str| {
        let request = client
            .post(api.url("/v1/jobs"))
            .header("Prefer", prefer)
            .json(&job_body(
                &png(16, 16, [1, 2, 3]),
                instruction,
                json!({"max_turns": 1}),
            ));
        async move {
            let resp = request.send().await.unwrap();
            let status = resp.status().as_u16();
            let applied = resp
                .headers()
                .get("preference-applied")
                .map(|v| v.to_str().unwrap().to_string());
            (
                status,
                applied,
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, applied, job) = post("quick", "respond-async, wait=20").await;
    assert_eq!(status, 200, "{job:#}");
    assert_eq!(applied.as_deref(), Some("wait=20"));
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["turns"].as_array().unwrap().len(), 1);
    assert!(job["result"]["image_url"].is_string());

    // Still running when the wait is over: the usual 202.
    editor.set_delay(Duration::from_secs(3));
    let (status, applied, job) = post("slow", "wait=1").await;
    assert_eq!(status, 202, "{job:#}");
    assert_eq!(applied, None);
    assert!(!is_terminal(&job), "{job:#}");

    let (status, _, problem) = post("quick", "wait=61").await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "Prefer");

    // An idempotent replay answers the status the first request got: 200
    // after a wait that saw the job finish, 202 when it did not (even once
    // the job has finished since).
    editor.set_delay(Duration::ZERO);
    let keyed = |instruction: &'static str, prefer: &'static str, key: &'static str| {
        let request = client
            .post(api.url("/v1/jobs"))
            .header("Prefer", prefer)
            .header("Idempotency-Key", key)
            .json(&job_body(
                &png(16, 16, [4, 5, 6]),
                instruction,
                json!({"max_turns": 1}),
            ));
        async move {
            let resp = request.send().await.unwrap();
            let status = resp.status().as_u16();
            let replayed = resp.headers().get("idempotent-replayed").is_some();
            (
                status,
                replayed,
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, replayed, first) = keyed("quick", "wait=20", "order-200").await;
    assert_eq!((status, replayed), (200, false), "{first:#}");
    let (status, replayed, again) = keyed("quick", "wait=20", "order-200").await;
    assert_eq!((status, replayed), (200, true), "{again:#}");
    assert_eq!(again["id"], first["id"]);

    editor.set_delay(Duration::from_secs(3));
    let (status, replayed, first) = keyed("slow", "wait=1", "order-202").await;
    assert_eq!((status, replayed), (202, false), "{first:#}");
    let id = first["id"].as_str().unwrap();
    wait_for_job(&api, id, Duration::from_secs(30), is_terminal).await;
    let (status, replayed, again) = keyed("slow", "wait=1", "order-202").await;
    assert_eq!((status, replayed), (202, true), "{again:#}");
    assert_eq!(
        again["status"], "succeeded",
        "the replay shows the job as it is now"
    );
}

async fn a_failed_job_retried_resumes_after_its_last_turn(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("first", said(5, 5, "second"));
    thinker.on("second", said(9, 9, "second"));
    thinker.set_delay(Duration::from_millis(1500));
    let config = env.config("serve", &backends_config(&thinker, &editor, env.dir.path()));
    let service = Service::start("serve", &config);
    let job = create_job(
        &service,
        job_body(&png(16, 16, [1, 2, 3]), "first", json!({"max_turns": 3})),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    // Turn 1 is edited; while it is critiqued the editor starts failing.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while editor.calls().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no first edit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    *editor.state.fail_first.lock().unwrap() = 10_000;
    let failed = wait_for_job(&service, &id, LIMIT, is_terminal).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(failed["stop_reason"], "failed");
    assert_eq!(failed["turns"].as_array().unwrap().len(), 1);

    // Only a failed job can be retried.
    let client = reqwest::Client::new();
    let retry = || {
        client
            .post(service.url(&format!("/v1/jobs/{id}/retry")))
            .send()
    };
    *editor.state.fail_first.lock().unwrap() = 0;
    thinker.set_delay(Duration::ZERO);
    let resp = retry().await.unwrap();
    assert_eq!(resp.status(), 202);
    let queued: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(queued["status"], "queued", "{queued:#}");
    assert!(queued["stop_reason"].is_null());
    let done = wait_for_job(&service, &id, LIMIT, is_terminal).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["stop_reason"], "satisfied");
    assert_eq!(done["turns"].as_array().unwrap().len(), 2);
    assert_eq!(
        editor.prompts(),
        ["first", "second"],
        "turn 1 was not edited again"
    );
    let resp = retry().await.unwrap();
    assert_eq!(resp.status(), 409);
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "job_not_failed", "{problem}");

    // A replay from the start goes past the old job.failed to the new end.
    let events = read_sse(&service.url(&format!("/v1/jobs/{id}/events")), None, LIMIT).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let failed_at = kinds.iter().position(|k| *k == "job.failed").unwrap();
    assert_eq!(kinds[failed_at + 1], "job.queued", "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"job.succeeded"), "{kinds:?}");
}

async fn deadlines_stop_running_and_queued_jobs(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("critique is slow", said(5, 5, "critique is slow, again"));
    let backends = backends_config(&thinker, &editor, env.dir.path())
        .replace("concurrency = 2", "concurrency = 1");
    let config = env.config("serve", &backends);
    let service = Service::start("serve", &config);

    // A turn is recorded, then the deadline passes while the thinker works:
    // the job succeeds with that turn.
    thinker.set_delay(Duration::from_secs(5));
    let job = create_job(
        &service,
        job_body(
            &png(16, 16, [1, 2, 3]),
            "critique is slow",
            json!({"max_turns": 3, "deadline_seconds": 2}),
        ),
    )
    .await;
    assert!(job["deadline_at"].is_string(), "{job:#}");
    let id = job["id"].as_str().unwrap().to_string();
    // Meanwhile a job with a 1 s deadline waits behind it in the queue.
    let queued = create_job(
        &service,
        job_body(
            &png(16, 16, [1, 2, 3]),
            "never runs",
            json!({"deadline_seconds": 1}),
        ),
    )
    .await;
    let queued_id = queued["id"].as_str().unwrap().to_string();

    let expired = wait_for_job(&service, &queued_id, LIMIT, is_terminal).await;
    assert_eq!(expired["status"], "failed", "{expired:#}");
    assert_eq!(expired["error"]["code"], "deadline_exceeded");
    assert_eq!(expired["stop_reason"], "deadline");
    let done = wait_for_job(&service, &id, LIMIT, is_terminal).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["stop_reason"], "deadline");
    assert_eq!(done["result"]["turn"], 1);
    assert_eq!(done["turns"].as_array().unwrap().len(), 1);
    let finished =
        chrono::DateTime::parse_from_rfc3339(done["finished_at"].as_str().unwrap()).unwrap();
    let deadline =
        chrono::DateTime::parse_from_rfc3339(done["deadline_at"].as_str().unwrap()).unwrap();
    // Stopped at the deadline, not when the 5 s critique would have ended.
    assert!(
        finished - deadline < chrono::Duration::seconds(2),
        "{done:#}"
    );
    assert_eq!(
        editor.prompts(),
        ["critique is slow"],
        "the queued job never ran"
    );

    // The deadline passes during the first edit: nothing recorded, failed.
    thinker.set_delay(Duration::ZERO);
    editor.set_delay(Duration::from_secs(4));
    let job = create_job(
        &service,
        job_body(
            &png(16, 16, [1, 2, 3]),
            "edit is slow",
            json!({"deadline_seconds": 1}),
        ),
    )
    .await;
    let failed = wait_for_job(&service, job["id"].as_str().unwrap(), LIMIT, is_terminal).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["code"], "deadline_exceeded");
    assert!(failed["turns"].as_array().unwrap().is_empty());

    // Out of range is refused, naming the field.
    let resp = reqwest::Client::new()
        .post(service.url("/v1/jobs"))
        .json(&job_body(
            &png(16, 16, [1, 2, 3]),
            "x",
            json!({"deadline_seconds": 0}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["field"], "options.deadline_seconds", "{problem}");
}

crate::both_backends!(
    deadlines_stop_running_and_queued_jobs,
    priority_orders_the_queue_and_positions_show_it,
    prefer_wait_answers_the_finished_job_with_api_and_worker_apart,
    a_failed_job_retried_resumes_after_its_last_turn,
);
