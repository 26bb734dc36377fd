//! End-to-end: the real binary runs jobs against fake editor and thinker
//! servers; we check what the fakes received, the stored job, the images
//! and the event stream.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

fn event_names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

async fn best_selection_runs_the_loop(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on(
        "make the sky purple",
        said(5, 6, "make the sky a deep purple, keep the trees unchanged"),
    );
    thinker.on(
        "make the sky a deep purple, keep the trees unchanged",
        said(9, 7, "make only the sky deep purple"),
    );
    thinker.on(
        "make only the sky deep purple",
        said(6, 6, "make the sky violet"),
    );
    let config = env.config("serve", &backends_config(&thinker, &editor, env.dir.path()));
    let service = Service::start("serve", &config);

    let source = png(100, 37, [0, 0, 0]);
    let job = create_job(
        &service,
        job_body(&source, "make the sky purple", json!({"max_turns": 3})),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["status"], "queued");
    assert_eq!(job["editor"], "fake");
    assert_eq!(job["options"]["selection"], "best");

    let events = read_sse(&service.url(&format!("/v1/jobs/{id}/events")), None, LIMIT).await;
    assert_eq!(
        event_names(&events),
        [
            "job.queued",
            "job.started",
            "turn.edited",
            "turn.critiqued",
            "turn.edited",
            "turn.critiqued",
            "turn.edited",
            "turn.critiqued",
            "job.succeeded"
        ]
    );
    let ids: Vec<i64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert_eq!(events[2].data["turn"], 1);
    assert_eq!(
        events[2].data["image_url"],
        format!("/v1/jobs/{id}/turns/1/image")
    );
    assert_eq!(events[5].data["turn"], 2);
    assert_eq!(events[5].data["critique"]["semantic"], 9.0);
    assert_eq!(
        events[5].data["critique"]["refined_instruction"],
        "make only the sky deep purple"
    );
    assert!((events[5].data["critique"]["overall"].as_f64().unwrap() - 63f64.sqrt()).abs() < 1e-9);
    assert_eq!(events[8].data["result_turn"], 2);

    // The editor got the source every time, resized to multiples of 16,
    // first with the user's words, then with each refinement.
    let calls = editor.calls();
    assert_eq!(
        editor.prompts(),
        [
            "make the sky purple",
            "make the sky a deep purple, keep the trees unchanged",
            "make only the sky deep purple"
        ]
    );
    for call in &calls {
        assert_eq!((call.width, call.height), (96, 32));
        assert_eq!(call.source_pixel, [0, 0, 0]);
        assert_eq!(
            call.params,
            json!({"num_inference_steps": 28, "guidance_scale": 2.5, "seed": 0})
        );
    }
    // The thinker saw the source first, then the previous turn's image, with
    // the original and the previous instruction; the last turn is critiqued
    // too under "best".
    let thinks = thinker.calls();
    assert_eq!(thinks.len(), 3);
    for (n, call) in thinks.iter().enumerate() {
        assert_eq!(call.model, "EditThinker-8B");
        assert_eq!(
            call.image_pixels,
            vec![[0, 0, 0], FakeEditor::colour_of_call(n + 1)]
        );
        assert_eq!(call.image_sizes, vec![(100, 37), (100, 37)]);
        assert!(
            call.text.contains("ORIGINAL:make the sky purple"),
            "{}",
            call.text
        );
        assert!(
            call.text.contains(&format!("PREV:{}", calls[n].prompt)),
            "{}",
            call.text
        );
    }

    // The stored job: turn 2 has the best overall score (sqrt(9*7)).
    let (status, job) = get_json(&service.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(job["status"], "succeeded");
    assert_eq!(
        job["stop_reason"], "max_turns",
        "three turns, none satisfied"
    );
    assert_eq!(job["result"]["turn"], 2);
    assert_eq!(job["attempt"], 1);
    let turns = job["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 3);
    assert_eq!(turns[1]["critique"]["semantic"], 9.0);
    assert_eq!(turns[1]["critique"]["quality"], 7.0);
    let overall = turns[1]["critique"]["overall"].as_f64().unwrap();
    assert!((overall - 63f64.sqrt()).abs() < 1e-9);
    assert_eq!(turns[1]["critique"]["satisfied"], false);
    assert_eq!(turns[2]["instruction"], "make only the sky deep purple");
    assert!(turns[2]["critique"].is_object());
    assert!(job["finished_at"].is_string());

    // Image bytes: each turn is the editor's output brought back to the
    // source size; the result is turn 2's; the source is what we sent.
    let client = reqwest::Client::new();
    for n in 1..=3 {
        let resp = client
            .get(service.url(&format!("/v1/jobs/{id}/turns/{n}/image")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "image/png");
        let img = decode(&resp.bytes().await.unwrap());
        assert_eq!((img.width(), img.height()), (100, 37));
        assert_eq!(
            img.to_rgb8().get_pixel(50, 18).0,
            FakeEditor::colour_of_call(n)
        );
    }
    let result = client
        .get(service.url(&format!("/v1/jobs/{id}/result")))
        .send()
        .await
        .unwrap();
    assert_eq!(result.headers()["content-type"], "image/png");
    let img = decode(&result.bytes().await.unwrap());
    assert_eq!(
        img.to_rgb8().get_pixel(50, 18).0,
        FakeEditor::colour_of_call(2)
    );
    let src = client
        .get(service.url(&format!("/v1/jobs/{id}/source")))
        .send()
        .await
        .unwrap();
    assert_eq!(src.headers()["content-type"], "image/png");
    assert_eq!(src.bytes().await.unwrap().as_ref(), source.as_slice());

    // Reconnecting with Last-Event-ID (or ?after=) replays exactly the rest.
    let url = service.url(&format!("/v1/jobs/{id}/events"));
    let resumed = read_sse(&url, Some(ids[3]), LIMIT).await;
    assert_eq!(resumed, events[4..].to_vec());
    let resumed = read_sse(&format!("{url}?after={}", ids[6]), None, LIMIT).await;
    assert_eq!(resumed, events[7..].to_vec());

    // A browser's EventSource reconnects after the stream closes, with the
    // terminal event's id: 204 is the standard's way to make it stop.
    let last = *ids.last().unwrap();
    let client = reqwest::Client::new();
    for request in [
        client.get(&url).header("Last-Event-ID", last.to_string()),
        client.get(format!("{url}?after={last}")),
    ] {
        let resp = tokio::time::timeout(LIMIT, request.send())
            .await
            .expect("answered at once")
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert!(resp.bytes().await.unwrap().is_empty());
    }
}

async fn last_selection_follows_the_paper(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("add a hat", said(3, 3, "add a red hat on the man's head"));
    thinker.on(
        "add a red hat on the man's head",
        said(4, 9, "add a small red hat"),
    );
    let config = env.config("serve", &backends_config(&thinker, &editor, env.dir.path()));
    let service = Service::start("serve", &config);
    let job = create_job(
        &service,
        job_body(
            &png(64, 64, [10, 10, 10]),
            "add a hat",
            json!({"max_turns": 3, "selection": "last"}),
        ),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let job = wait_for_job(&service, id, LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(
        editor.prompts(),
        [
            "add a hat",
            "add a red hat on the man's head",
            "add a small red hat"
        ]
    );
    // The last image is never critiqued under "last".
    assert_eq!(thinker.calls().len(), 2);
    assert_eq!(job["result"]["turn"], 3);
    assert!(job["turns"][2]["critique"].is_null());
}

async fn satisfied_and_unchanged_instruction_stop_early(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("remove the car", said(9, 9, "remove the car"));
    thinker.on("blur the face", said(2, 2, "blur the face"));
    let config = env.config("serve", &backends_config(&thinker, &editor, env.dir.path()));
    let service = Service::start("serve", &config);
    for (instruction, selection) in [("remove the car", "last"), ("blur the face", "best")] {
        let job = create_job(
            &service,
            job_body(
                &png(48, 48, [1, 2, 3]),
                instruction,
                json!({"selection": selection}),
            ),
        )
        .await;
        let job = wait_for_job(&service, job["id"].as_str().unwrap(), LIMIT, is_terminal).await;
        assert_eq!(job["status"], "succeeded");
        assert_eq!(job["turns"].as_array().unwrap().len(), 1, "{instruction}");
        assert_eq!(job["turns"][0]["critique"]["satisfied"], true);
        assert_eq!(job["stop_reason"], "satisfied", "{instruction}");
        assert_eq!(job["result"]["turn"], 1);
    }
    assert_eq!(editor.prompts(), ["remove the car", "blur the face"]);
    assert_eq!(thinker.calls().len(), 2);
}

/// `history = "all"` (issue 24): the thinker's prompt lists every earlier
/// instruction with its scores; `stop.patience` ends a job whose best score
/// stalls with `stop_reason: "plateau"`, recorded and in the event.
async fn history_and_plateau(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("tint it", said(5, 5, "tint it blue"));
    thinker.on("tint it blue", said(6, 6, "tint it deep blue"));
    thinker.on("tint it deep blue", said(6, 6, "tint it very deep blue"));
    let config = env.config("serve", &backends_config(&thinker, &editor, env.dir.path()));
    let service = Service::start("serve", &config);
    let options =
        json!({"history": "all", "max_turns": 5, "stop": {"patience": 1, "min_gain": 0.5}});
    let job = create_job(
        &service,
        job_body(&png(48, 48, [1, 2, 3]), "tint it", options.clone()),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let job = wait_for_job(&service, id, LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["options"]["history"], "all");
    assert_eq!(job["options"]["stop"]["patience"], 1);
    // Turn 3 gained nothing over turn 2 (6 after 6): a plateau, not turn 5.
    assert_eq!(job["stop_reason"], "plateau", "{job}");
    assert_eq!(job["turns"].as_array().unwrap().len(), 3);
    assert_eq!(job["result"]["turn"], 2);
    assert_eq!(
        editor.prompts(),
        ["tint it", "tint it blue", "tint it deep blue"]
    );
    let prompts: Vec<String> = thinker.calls().into_iter().map(|c| c.text).collect();
    assert_eq!(prompts.len(), 3);
    assert!(!prompts[0].contains("Earlier attempts"), "{}", prompts[0]);
    assert!(
        prompts[1].contains("- attempt 1: instruction \"tint it\"; semantic 5.0, quality 5.0")
            && !prompts[1].contains("attempt 2:"),
        "{}",
        prompts[1]
    );
    for earlier in [
        "attempt 1: instruction \"tint it\"",
        "attempt 2: instruction \"tint it blue\"; semantic 6.0",
    ] {
        assert!(prompts[2].contains(earlier), "{earlier}: {}", prompts[2]);
    }
    let events = read_sse_all(&service.url(&format!("/v1/jobs/{id}/events")), None, LIMIT).await;
    let done = events.iter().find(|e| e.event == "job.succeeded").unwrap();
    assert_eq!(done.data["stop_reason"], "plateau", "{}", done.data);

    // The paper's protocol (the default) tells nothing of earlier turns.
    let calls_before = thinker.calls().len();
    let job = create_job(
        &service,
        job_body(&png(48, 48, [1, 2, 3]), "tint it", json!({"max_turns": 2})),
    )
    .await;
    wait_for_job(&service, job["id"].as_str().unwrap(), LIMIT, is_terminal).await;
    let later = thinker.calls();
    assert_eq!(later.len(), calls_before + 2);
    assert!(later[calls_before..]
        .iter()
        .all(|c| !c.text.contains("Earlier attempts")));
}

async fn refusals(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    editor.state.refuse.lock().unwrap().extend([
        "forbidden edit".to_string(),
        "a refined but refused edit".to_string(),
    ]);
    thinker.on("fine edit", said(2, 2, "a refined but refused edit"));
    let config = env.config("serve", &backends_config(&thinker, &editor, env.dir.path()));
    let service = Service::start("serve", &config);

    // The user's own instruction refused: the job fails with editor_refused.
    let job = create_job(
        &service,
        job_body(&png(32, 32, [0, 0, 0]), "forbidden edit", json!({})),
    )
    .await;
    let job = wait_for_job(&service, job["id"].as_str().unwrap(), LIMIT, is_terminal).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["stop_reason"], "failed");
    assert_eq!(job["error"]["code"], "editor_refused");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("moderation"),
        "{job:#}"
    );

    // A refined instruction refused: the loop ends and selects among earlier turns.
    let job = create_job(
        &service,
        job_body(&png(32, 32, [0, 0, 0]), "fine edit", json!({})),
    )
    .await;
    let job = wait_for_job(&service, job["id"].as_str().unwrap(), LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["result"]["turn"], 1);
    assert_eq!(job["turns"].as_array().unwrap().len(), 1);
    // The refusal that ended the loop is visible in the job and its events.
    assert_eq!(job["refusal"]["turn"], 2, "{job:#}");
    assert_eq!(job["stop_reason"], "refusal", "{job:#}");
    assert_eq!(job["refusal"]["instruction"], "a refined but refused edit");
    assert!(
        job["refusal"]["reason"]
            .as_str()
            .unwrap()
            .contains("moderation"),
        "{job:#}"
    );
    let events = read_sse(
        &service.url(&format!("/v1/jobs/{}/events", job["id"].as_str().unwrap())),
        None,
        LIMIT,
    )
    .await;
    let succeeded = events.last().unwrap();
    assert_eq!(succeeded.event, "job.succeeded");
    assert_eq!(succeeded.data["refusal"], job["refusal"], "{succeeded:?}");
    assert_eq!(succeeded.data["stop_reason"], "refusal", "{succeeded:?}");
}

async fn transient_editor_failures_are_retried(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    // More 500s than the client retries in one call (3 retries = 4 tries):
    // the job is requeued with backoff and the next attempt succeeds.
    *editor.state.fail_first.lock().unwrap() = 5;
    let config = env.config("serve", &backends_config(&thinker, &editor, env.dir.path()));
    let service = Service::start("serve", &config);
    let job = create_job(
        &service,
        job_body(&png(32, 32, [0, 0, 0]), "fix it", json!({})),
    )
    .await;
    let job = wait_for_job(&service, job["id"].as_str().unwrap(), LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["attempt"], 2);
    assert_eq!(editor.prompts(), ["fix it"]);

    // The requeue is visible on the stream, between the two claims.
    let id = job["id"].as_str().unwrap();
    let events = read_sse(&service.url(&format!("/v1/jobs/{id}/events")), None, LIMIT).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds[..4],
        ["job.queued", "job.started", "job.retrying", "job.started"],
        "{kinds:?}"
    );
    let retrying = &events[2].data;
    assert_eq!(retrying["attempt"], 1, "{retrying}");
    assert_eq!(retrying["reason"], "transient");
    assert_eq!(retrying["code"], "editor_unavailable");
    let run_at = retrying["run_at"].as_str().unwrap();
    assert!(
        run_at.contains('T') && run_at.ends_with('Z'),
        "RFC 3339: {run_at}"
    );
}

async fn cancel_queued_running_and_finished(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let backends = backends_config(&thinker, &editor, env.dir.path());
    let client = reqwest::Client::new();

    // Queued: only an API runs, so the job waits.
    env.migrate();
    let api = Service::start("api", &env.config("api", &backends));
    let job = create_job(
        &api,
        job_body(&png(32, 32, [0, 0, 0]), "queued one", json!({})),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let resp = client
        .post(api.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "canceled");
    // Finished: 409 with a problem body.
    let resp = client
        .post(api.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "job_finished");
    let resp = client
        .get(api.url(&format!("/v1/jobs/{id}/result")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    drop(api);

    // Running: the editor takes long; the cancel reaches the worker within a heartbeat.
    editor.set_delay(Duration::from_secs(30));
    let service = Service::start("serve", &env.config("serve", &backends));
    let job = create_job(
        &service,
        job_body(&png(32, 32, [0, 0, 0]), "slow one", json!({})),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    wait_for_job(&service, id, LIMIT, |j| j["status"] == "running").await;
    let started = tokio::time::Instant::now();
    let resp = client
        .post(service.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job = wait_for_job(&service, id, Duration::from_secs(15), is_terminal).await;
    assert_eq!(job["status"], "canceled");
    assert_eq!(job["stop_reason"], "canceled");
    // Generous bound: heartbeat is 1 s; this only guards against "never".
    assert!(started.elapsed() < Duration::from_secs(15));
    let events = read_sse(&service.url(&format!("/v1/jobs/{id}/events")), None, LIMIT).await;
    assert_eq!(events.last().unwrap().event, "job.canceled");
    assert_eq!(editor.prompts(), ["slow one"]);
}

async fn crash_resumes_after_the_last_persisted_turn(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("paint it blue", said(4, 4, "paint the wall blue"));
    thinker.on("paint the wall blue", said(9, 9, "paint the wall blue"));
    // The first critique hangs, so the worker dies between turn 1's edit
    // (persisted) and its critique.
    thinker.set_delay(Duration::from_secs(120));
    let backends = backends_config(&thinker, &editor, env.dir.path());

    // Postgres: separate api and worker processes; SQLite: one serve process.
    let (api, mut first) = match backend {
        Backend::Postgres => {
            env.migrate();
            let api = Service::start("api", &env.config("api", &backends));
            let worker = Service::start("worker", &env.config("worker", &backends));
            (Some(api), worker)
        }
        Backend::Sqlite => (
            None,
            Service::start("serve", &env.config("serve", &backends)),
        ),
    };
    let front = api.as_ref().unwrap_or(&first);
    let job = create_job(
        front,
        job_body(
            &png(40, 40, [0, 0, 0]),
            "paint it blue",
            json!({"max_turns": 3}),
        ),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    wait_for_job(front, &id, LIMIT, |j| {
        j["turns"].as_array().is_some_and(|t| t.len() == 1)
    })
    .await;
    // Wait until the critique request is in flight, then SIGKILL.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while thinker.calls().is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill();
    thinker.set_delay(Duration::ZERO);

    let second = Service::start(
        if backend == Backend::Postgres {
            "worker"
        } else {
            "serve"
        },
        &env.config("second", &backends),
    );
    let front = api.as_ref().unwrap_or(&second);
    // On Postgres the SSE stream comes from the api process while a
    // separate worker process runs the job.
    let events = read_sse(&front.url(&format!("/v1/jobs/{id}/events")), None, LIMIT).await;
    assert_eq!(events.last().unwrap().event, "job.succeeded", "{events:#?}");
    let job = wait_for_job(front, &id, LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["attempt"], 2, "rescued after the lease expired");
    // Turn 1 was never edited again: one call per instruction.
    assert_eq!(editor.prompts(), ["paint it blue", "paint the wall blue"]);
    assert_eq!(job["turns"].as_array().unwrap().len(), 2);
    assert_eq!(job["result"]["turn"], 2);
    let started = events.iter().filter(|e| e.event == "job.started").count();
    assert_eq!(started, 2);
    let edited: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "turn.edited")
        .map(|e| &e.data["turn"])
        .collect();
    assert_eq!(edited, [&json!(1), &json!(2)]);
}

async fn graceful_shutdown_releases_the_job(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("crop it", said(4, 4, "crop it tighter"));
    thinker.set_delay(Duration::from_secs(2));
    let backends = backends_config(&thinker, &editor, env.dir.path());
    let mut first = Service::start("serve", &env.config("serve", &backends));
    let job = create_job(
        &first,
        job_body(&png(40, 40, [0, 0, 0]), "crop it", json!({"max_turns": 2})),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while thinker.calls().is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM mid-critique: the critique finishes (within the grace
    // period), is persisted, and the lease is released at once.
    let status = first.terminate();
    assert!(status.success(), "{status:?}");
    assert!(first.log_contains("releasing job for shutdown"));
    thinker.set_delay(Duration::ZERO);
    let second = Service::start("serve", &env.config("second", &backends));
    let (_, job) = get_json(&second.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(
        job["turns"][0]["critique"]["refined_instruction"],
        "crop it tighter"
    );
    let job = wait_for_job(&second, &id, LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded");
    // The release did not count as an attempt.
    assert_eq!(job["attempt"], 1);
    assert_eq!(editor.prompts(), ["crop it", "crop it tighter"]);
    // Turn 1 was critiqued once: no repeated paid work.
    assert_eq!(thinker.calls().len(), 2);
}

crate::both_backends!(
    best_selection_runs_the_loop,
    last_selection_follows_the_paper,
    satisfied_and_unchanged_instruction_stop_early,
    history_and_plateau,
    refusals,
    live_reasoning_streams_while_the_thinker_generates,
    transient_editor_failures_are_retried,
    cancel_queued_running_and_finished,
    crash_resumes_after_the_last_persisted_turn,
    graceful_shutdown_releases_the_job,
);

/// Two worker processes on one Postgres: every job runs once, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_postgres_queue() {
    let env = TestEnv::new(Backend::Postgres).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let backends = backends_config(&thinker, &editor, env.dir.path());
    env.migrate();
    let api = Service::start("api", &env.config("api", &backends));
    let workers = [
        Service::start("worker", &env.config("w1", &backends)),
        Service::start("worker", &env.config("w2", &backends)),
    ];
    let mut ids = Vec::new();
    for i in 0..24 {
        let job = create_job(
            &api,
            job_body(
                &png(32, 32, [0, 0, 0]),
                &format!("job number {i}"),
                json!({"max_turns": 1}),
            ),
        )
        .await;
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let job = wait_for_job(&api, id, LIMIT, is_terminal).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        assert_eq!(job["attempt"], 1);
        let events = read_sse(&api.url(&format!("/v1/jobs/{id}/events")), None, LIMIT).await;
        assert_eq!(
            events.iter().filter(|e| e.event == "job.started").count(),
            1
        );
    }
    let mut prompts = editor.prompts();
    prompts.sort();
    let mut expected: Vec<String> = (0..24).map(|i| format!("job number {i}")).collect();
    expected.sort();
    assert_eq!(prompts, expected, "each job edited exactly once");
    drop(workers);
}

/// `turn.thinking` events carry the thinker's text while it generates: no
/// `id:`, before the turn's critique, never replayed.
async fn live_reasoning_streams_while_the_thinker_generates(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let answer = said(9, 9, "");
    *thinker.state.fallback.lock().unwrap() = answer.clone();
    // About two seconds of generation, so several coalesced events go out;
    // the slow first edit lets the SSE client connect before it starts.
    *thinker.state.chunk_delay.lock().unwrap() = Duration::from_millis(100);
    editor.set_delay(Duration::from_millis(700));
    let config = env.config("serve", &backends_config(&thinker, &editor, env.dir.path()));
    let service = Service::start("serve", &config);
    let job = create_job(
        &service,
        job_body(
            &png(32, 32, [0, 0, 0]),
            "paint it blue",
            json!({"max_turns": 2}),
        ),
    )
    .await;
    let url = service.url(&format!("/v1/jobs/{}/events", job["id"].as_str().unwrap()));
    let events = read_sse_all(&url, None, LIMIT).await;
    assert_eq!(events.last().unwrap().event, "job.succeeded", "{events:#?}");
    assert_eq!(
        *thinker.state.streamed.lock().unwrap(),
        1,
        "the thinker was asked to stream"
    );

    let thinking: Vec<&SseEvent> = events
        .iter()
        .filter(|e| e.event == "turn.thinking")
        .collect();
    assert!(
        thinking.len() >= 2,
        "coalesced deltas, several of them: {events:#?}"
    );
    assert!(
        thinking.len() < answer.chars().count().div_ceil(STREAM_CHUNK_CHARS),
        "deltas are coalesced, not one event per chunk: {}",
        thinking.len()
    );
    assert!(thinking
        .iter()
        .all(|e| e.id.is_none() && e.data["turn"] == 1));
    let text: String = thinking
        .iter()
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect();
    // The client connected before generation began, so it saw all of it.
    assert_eq!(text, answer);
    // Published before the critique is recorded. In one process (SQLite)
    // the order is exact; across a NOTIFY listener it is best effort, and
    // live events only have to arrive before the stream ends.
    let critiqued = events
        .iter()
        .position(|e| e.event == "turn.critiqued")
        .unwrap();
    let last_thinking = events
        .iter()
        .rposition(|e| e.event == "turn.thinking")
        .unwrap();
    if backend == Backend::Sqlite {
        assert!(last_thinking < critiqued, "{events:#?}");
    }
    // Stored events keep strictly increasing ids; a replay has no live events.
    let ids: Vec<i64> = events.iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let replay = read_sse_all(&url, Some(0), LIMIT).await;
    assert!(replay.iter().all(|e| e.event != "turn.thinking"));
    assert_eq!(replay.len(), ids.len());
}

/// The API's LISTEN connection (and every other connection of the service)
/// is killed while a stream waits, and the job is canceled at once, so its
/// NOTIFY is likely lost: the hub's resync after reconnecting (or its
/// safety net) still delivers the event, and the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_survive_a_lost_listen_connection() {
    use futures::StreamExt;
    use sqlx::Connection;

    let env = TestEnv::new(Backend::Postgres).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    env.migrate();
    let api = Service::start(
        "api",
        &env.config("api", &backends_config(&thinker, &editor, env.dir.path())),
    );
    let job = create_job(&api, job_body(&png(16, 16, [0, 0, 0]), "wait", json!({}))).await;
    let id = job["id"].as_str().unwrap().to_string();

    let resp = reqwest::Client::new()
        .get(api.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    // The replay: job.queued.
    while !seen.contains("event: job.queued") {
        let chunk = tokio::time::timeout(LIMIT, body.next()).await.unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }

    let db = env.database_url.rsplit('/').next().unwrap().to_string();
    let mut admin = sqlx::PgConnection::connect(
        &std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    )
    .await
    .unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "the service had connections to kill");

    // Cancel right away, while the listener is still reconnecting.
    let client = reqwest::Client::new();
    let canceled = loop {
        let resp = client
            .post(api.url(&format!("/v1/jobs/{id}/cancel")))
            .send()
            .await
            .unwrap();
        if resp.status() == 202 {
            break std::time::Instant::now();
        }
        // The pool may need a moment to notice its dead connections.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The safety net runs every 15 s at worst; allow for it.
    let deadline = Duration::from_secs(25);
    loop {
        let chunk = tokio::time::timeout(deadline, body.next())
            .await
            .expect("the canceled event arrived and the stream ended");
        match chunk {
            Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            None => break,
        }
    }
    assert!(seen.contains("event: job.canceled"), "{seen}");
    println!(
        "lost-listener: job.canceled reached the stream {:?} after the cancel",
        canceled.elapsed()
    );

    // A notice that never comes at all: an event row committed without its
    // NOTIFY. Only the hub's per-process safety net can find it.
    let job = create_job(&api, job_body(&png(16, 16, [0, 0, 0]), "wait", json!({}))).await;
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let resp = client
        .get(api.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: job.queued") {
        let chunk = tokio::time::timeout(LIMIT, body.next()).await.unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    let mut conn = sqlx::PgConnection::connect(&env.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET status = 'canceled', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO job_events (job_id, type, data, created_at) \
         VALUES ($1, 'job.canceled', '{}', now())",
    )
    .bind(id)
    .execute(&mut conn)
    .await
    .unwrap();
    let silent = std::time::Instant::now();
    loop {
        let chunk = tokio::time::timeout(deadline, body.next())
            .await
            .expect("the safety net delivered the unannounced event");
        match chunk {
            Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            None => break,
        }
    }
    assert!(seen.contains("event: job.canceled"), "{seen}");
    println!(
        "lost-notice: the safety net delivered an unannounced event after {:?}",
        silent.elapsed()
    );
}
