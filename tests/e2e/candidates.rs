//! Candidates per turn and the verifier (issue 24), through the real
//! binary: each candidate is its own editor call with its own seed, the
//! calls overlap, every candidate is critiqued, the chosen one is the best
//! by the ranking score, and a worker killed mid-turn resumes by buying
//! only the candidates it had not recorded.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// `sqrt(semantic × quality)` of a critique in the job JSON, from its parts.
fn overall(critique: &Value) -> f64 {
    let product = critique["semantic"].as_f64().unwrap() * critique["quality"].as_f64().unwrap();
    assert!((critique["overall"].as_f64().unwrap() - product.sqrt()).abs() < 1e-9);
    product.sqrt()
}

/// The fake editor's call number an image was made by (its red channel).
async fn call_of(service: &Service, image_url: &str) -> u8 {
    let resp = reqwest::get(service.url(image_url)).await.unwrap();
    assert_eq!(resp.status(), 200, "{image_url}");
    let img = decode(&resp.bytes().await.unwrap());
    img.to_rgb8().get_pixel(0, 0)[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_candidates_get_their_own_seeds_overlap_and_the_best_is_chosen() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    editor.set_delay(Duration::from_millis(600));
    // Distinct scores per editor call; call 3 is the best whatever
    // candidate it turns out to be.
    for (n, (s, q)) in [(1, (5, 6)), (2, (7, 6)), (3, (9, 8)), (4, (4, 9))] {
        thinker.on_edit_call(n, said(s, q, "make it redder"));
    }
    let service = Service::start(
        "serve",
        &env.config("serve", &backends_config(&thinker, &editor, env.dir.path())),
    );
    let job = create_job(
        &service,
        job_body(
            &png(32, 24, [10, 20, 30]),
            "make it red",
            json!({"max_turns": 1, "candidates": 4}),
        ),
    )
    .await;
    assert_eq!(job["options"]["candidates"], 4);
    let id = job["id"].as_str().unwrap().to_string();
    let job = wait_for_job(&service, &id, LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // Four editor calls of the source with the same instruction and four
    // distinct seeds, overlapping in time.
    let calls = editor.calls();
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|c| c.prompt == "make it red"));
    assert!(calls.iter().all(|c| c.source_pixel == [10, 20, 30]));
    let seeds: BTreeSet<i64> = calls.iter().map(|c| c.seed().expect("a seed")).collect();
    assert_eq!(seeds.len(), 4, "{seeds:?}");
    let first = calls.iter().map(|c| c.at).min().unwrap();
    let last = calls.iter().map(|c| c.at).max().unwrap();
    assert!(
        last - first < Duration::from_millis(600),
        "every call started before the first answered: {:?}",
        last - first
    );
    assert_eq!(thinker.calls().len(), 4, "every candidate is critiqued");

    // The job JSON: four candidates, the chosen one the argmax.
    let turn = &job["turns"][0];
    let candidates = turn["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 4, "{turn}");
    let by_index: Vec<u64> = candidates
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(by_index, [0, 1, 2, 3]);
    let json_seeds: BTreeSet<i64> = candidates
        .iter()
        .map(|c| c["seed"].as_i64().unwrap())
        .collect();
    assert_eq!(json_seeds, seeds);
    let best = candidates
        .iter()
        .max_by(|a, b| overall(&a["critique"]).total_cmp(&overall(&b["critique"])))
        .unwrap();
    assert_eq!(turn["chosen"], best["index"], "{turn}");
    assert_eq!(overall(&best["critique"]), (72f64).sqrt());
    assert_eq!(
        turn["critique"], best["critique"],
        "the turn is its chosen candidate"
    );
    // Each candidate's image is the call its critique judged.
    for c in candidates {
        let n = call_of(&service, c["image_url"].as_str().unwrap()).await;
        let (s, q): (u8, u8) = [(5, 6), (7, 6), (9, 8), (4, 9)][usize::from(n) - 1];
        assert_eq!(c["critique"]["semantic"], f64::from(s), "{c}");
        assert_eq!(c["critique"]["quality"], f64::from(q), "{c}");
    }
    assert_eq!(
        call_of(&service, turn["image_url"].as_str().unwrap()).await,
        3
    );
    assert_eq!(job["usage"]["editor_calls"], 4);
    assert_eq!(job["usage"]["thinker_calls"], 4);

    // Events: an edit and a critique per candidate, then the choice.
    let events = read_sse(&service.url(&format!("/v1/jobs/{id}/events")), None, LIMIT).await;
    let of = |kind: &str| -> Vec<&SseEvent> { events.iter().filter(|e| e.event == kind).collect() };
    let edited: BTreeSet<u64> = of("turn.edited")
        .iter()
        .map(|e| e.data["candidate"].as_u64().unwrap())
        .collect();
    let critiqued: BTreeSet<u64> = of("turn.critiqued")
        .iter()
        .map(|e| e.data["candidate"].as_u64().unwrap())
        .collect();
    assert_eq!(edited, BTreeSet::from([0, 1, 2, 3]));
    assert_eq!(critiqued, BTreeSet::from([0, 1, 2, 3]));
    let chosen = of("turn.chosen");
    assert_eq!(chosen.len(), 1);
    assert_eq!(chosen[0].data["turn"], 1);
    assert_eq!(chosen[0].data["candidate"], turn["chosen"]);
    assert_eq!(chosen[0].data["by"], "thinker");
    assert!((chosen[0].data["score"].as_f64().unwrap() - (72f64).sqrt()).abs() < 1e-9);
    for event in &events {
        crate::clients::check_event_data(&event.event, &event.data);
    }
    let seeded = of("turn.edited")
        .iter()
        .filter(|e| e.data["seed"].is_i64())
        .count();
    assert_eq!(seeded, 4, "a candidate's edit names its seed");
    let position = |kind: &str| events.iter().rposition(|e| e.event == kind).unwrap();
    assert!(position("turn.critiqued") < position("turn.chosen"));
    assert!(position("turn.chosen") < position("job.succeeded"));

    // A one-candidate job looks as it always did, with one candidate.
    let job = create_job(
        &service,
        job_body(
            &png(16, 16, [1, 2, 3]),
            "make it red",
            json!({"max_turns": 1}),
        ),
    )
    .await;
    let job = wait_for_job(&service, job["id"].as_str().unwrap(), LIMIT, is_terminal).await;
    let turn = &job["turns"][0];
    assert_eq!(turn["chosen"], 0, "{turn}");
    assert_eq!(turn["candidates"].as_array().unwrap().len(), 1);
    assert_eq!(turn["candidates"][0]["critique"], turn["critique"]);
    assert!(turn["candidates"][0]["seed"].is_null());
    assert!(
        editor.calls()[4].seed() == Some(0),
        "the profile's own seed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_turn_buys_only_the_candidates_it_had_not_recorded() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    editor.set_delay(Duration::from_millis(100));
    // Calls 3 and 4 hang until the worker is killed.
    for n in [3, 4] {
        editor
            .state
            .delay_of_call
            .lock()
            .unwrap()
            .insert(n, Duration::from_secs(120));
    }
    let backends = backends_config(&thinker, &editor, env.dir.path());
    env.migrate();
    let api = Service::start("api", &env.config("api", &backends));
    let mut worker = Service::start("worker", &env.config("worker", &backends));
    let job = create_job(
        &api,
        job_body(
            &png(24, 24, [9, 9, 9]),
            "add a hat",
            json!({"max_turns": 1, "candidates": 4}),
        ),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    // Wait until two candidates are edited and critiqued (and a moment
    // for their critiques to be written) while two edits hang.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while thinker
        .state
        .answered
        .load(std::sync::atomic::Ordering::SeqCst)
        < 2
        || editor.calls().len() < 4
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "two candidates were not critiqued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.kill();
    let calls = editor.calls();
    let recorded: BTreeSet<i64> = calls[..2].iter().map(|c| c.seed().unwrap()).collect();
    let unrecorded: BTreeSet<i64> = calls[2..].iter().map(|c| c.seed().unwrap()).collect();
    let _worker = Service::start("worker", &env.config("worker2", &backends));
    let job = wait_for_job(&api, &id, LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 2);
    let calls = editor.calls();
    assert_eq!(
        calls.len(),
        6,
        "only the two unrecorded candidates were bought again"
    );
    let again: BTreeSet<i64> = calls[4..].iter().map(|c| c.seed().unwrap()).collect();
    assert_eq!(
        again, unrecorded,
        "the same candidates, with their own seeds"
    );
    assert!(recorded.is_disjoint(&again));
    assert_eq!(thinker.calls().len(), 4, "no critique was made twice");
    let candidates = job["turns"][0]["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 4);
    // The ledger counts the two calls the killed worker never saw answered
    // only if they were answered: they were not (the fake was hanging).
    assert_eq!(job["usage"]["editor_calls"], 4, "{}", job["usage"]);
}

/// A verifier's answer in the `score` protocol's two shapes.
fn scored(semantic: f64, quality: f64) -> String {
    format!("{{\"semantic\": {semantic}, \"quality\": {quality}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_ranks_candidates_and_gates_the_thinkers_verdict() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    // The verifier is another OpenAI-compatible server, with our prompt.
    let verifier = FakeThinker::start().await;
    let backends = format!(
        "{}\n[verifier]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"EditScore-7B\"\nretry_base_ms = 50\n",
        backends_config(&thinker, &editor, env.dir.path()),
        verifier.base_url
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let service = Service::start_with_env(
        "serve",
        &env.config("serve", &backends),
        &[("EDITTHINKER_METRICS__LISTEN", metrics.as_str())],
    );

    // 1. Ranked by the verifier: the thinker likes call 1 best, the
    // verifier call 2.
    for (n, thinks, verifies) in [
        (1, said(9, 9, "more red"), scored(2.0, 2.0)),
        (
            2,
            said(5, 5, "more red"),
            "```json\n{\"score\": 8.5}\n```".to_string(),
        ),
        (3, said(6, 6, "more red"), scored(6.0, 6.0)),
    ] {
        thinker.on_edit_call(n, thinks);
        verifier.on_edit_call(n, verifies);
    }
    let job = create_job(
        &service,
        job_body(
            &png(20, 20, [40, 40, 40]),
            "make it red",
            json!({"max_turns": 1, "candidates": 3, "rank_by": "verifier"}),
        ),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job = wait_for_job(&service, &id, LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let turn = &job["turns"][0];
    let candidates = turn["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 3);
    let mut best = (f64::MIN, Value::Null);
    for c in candidates {
        let v = c["verifier"]["overall"]
            .as_f64()
            .expect("every candidate has a verifier score");
        if v > best.0 {
            best = (v, c["index"].clone());
        }
    }
    assert_eq!(best.0, 8.5);
    assert_eq!(turn["chosen"], best.1, "{turn}");
    assert_eq!(
        call_of(&service, turn["image_url"].as_str().unwrap()).await,
        2
    );
    assert_eq!(job["usage"]["verifier_calls"], 3, "{}", job["usage"]);
    let calls = verifier.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls
        .iter()
        .all(|c| c.model == "EditScore-7B" && c.text.contains("make it red")));
    assert!(calls
        .iter()
        .all(|c| c.image_pixels.len() == 2 && c.image_pixels[0] == [40, 40, 40]));
    let events = read_sse(&service.url(&format!("/v1/jobs/{id}/events")), None, LIMIT).await;
    let chosen = events.iter().find(|e| e.event == "turn.chosen").unwrap();
    assert_eq!(chosen.data["by"], "verifier");
    assert_eq!(chosen.data["score"], 8.5);

    // 2. The gate: the thinker is satisfied with turn 1 (9 and 9), the
    // verifier is not (3); turn 2 passes both.
    thinker.state.by_edit_red.lock().unwrap().clear();
    thinker.on("make it blue", said(9, 9, "make it deep blue"));
    thinker.on("make it deep blue", said(9, 9, "make it deeper blue"));
    verifier.on_edit_call(4, scored(3.0, 3.0));
    verifier.on_edit_call(5, scored(9.0, 9.0));
    let job = create_job(
        &service,
        job_body(
            &png(20, 20, [40, 40, 40]),
            "make it blue",
            json!({"max_turns": 3, "stop": {"verifier": 7}}),
        ),
    )
    .await;
    let job = wait_for_job(&service, job["id"].as_str().unwrap(), LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stop_reason"], "satisfied");
    let turns = job["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2, "the gate kept the job going after turn 1");
    assert_eq!(turns[0]["critique"]["semantic"], 9.0);
    assert_eq!(turns[0]["critique"]["satisfied"], false);
    assert_eq!(turns[0]["candidates"][0]["verifier"]["overall"], 3.0);
    assert_eq!(turns[1]["critique"]["satisfied"], true);

    // Every candidate both judged is in the disagreement histogram: gaps of
    // 7, 3.5 and 0, then 6 and 0.
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    assert_eq!(value("editthinker_verifier_gap_count "), 5.0);
    assert_eq!(value("editthinker_verifier_gap_sum "), 16.5);

    // 3. Without a [verifier], a job that needs one is refused by name.
    let plain = Service::start(
        "serve",
        &env.config("plain", &backends_config(&thinker, &editor, env.dir.path())),
    );
    let resp = reqwest::Client::new()
        .post(plain.url("/v1/jobs"))
        .json(&job_body(
            &png(8, 8, [1, 1, 1]),
            "x",
            json!({"rank_by": "verifier"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let problem: Value = resp.json().await.unwrap();
    assert!(problem.to_string().contains("options.rank_by"), "{problem}");
}
