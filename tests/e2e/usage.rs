//! The usage ledger (issue 24): every paid provider call is in the job's
//! `usage` (and per turn, and in the terminal event), priced by the
//! configuration, across a worker killed mid-job and a retry of a failed
//! job; `GET /v1/usage` sums a tenant's calls by editor and never shows
//! another tenant's.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// The fakes' backends with prices, in euros.
fn priced(thinker: &FakeThinker, editor: &FakeEditor, dir: &std::path::Path) -> String {
    let backends = backends_config(thinker, editor, dir)
        .replace(
            "retry_base_ms = 50\n\n[editors.fake]",
            "retry_base_ms = 50\nprice_per_million_input_tokens = 2.0\nprice_per_million_output_tokens = 8.0\n\n[editors.fake]",
        )
        .replace("default = true\n", "default = true\nprice_per_call = 0.04\nmax_retries = 1\n");
    assert!(
        backends.contains("price_per_call") && backends.contains("price_per_million_input_tokens")
    );
    format!("currency = \"EUR\"\n{backends}")
}

/// What `calls` editor and `answers` thinker calls cost at [`priced`]'s prices.
fn cost(calls: u32, answers: u32) -> f64 {
    let tokens = f64::from(answers)
        * (FAKE_PROMPT_TOKENS as f64 * 2.0 + FAKE_GENERATED_TOKENS as f64 * 8.0)
        / 1e6;
    ((f64::from(calls) * 0.04 + tokens) * 1e6).round() / 1e6
}

fn assert_usage(usage: &Value, editor_calls: u32, thinker_calls: u32) {
    assert_eq!(usage["editor_calls"], editor_calls, "{usage}");
    assert_eq!(usage["thinker_calls"], thinker_calls, "{usage}");
    assert_eq!(
        usage["thinker_input_tokens"],
        u64::from(thinker_calls) * FAKE_PROMPT_TOKENS,
        "{usage}"
    );
    assert_eq!(
        usage["thinker_output_tokens"],
        u64::from(thinker_calls) * FAKE_GENERATED_TOKENS,
        "{usage}"
    );
    assert_eq!(usage["verifier_calls"], 0);
    assert_eq!(usage["currency"], "EUR");
    let got = usage["cost"].as_f64().unwrap();
    assert!(
        (got - cost(editor_calls, thinker_calls)).abs() < 1e-9,
        "{usage}"
    );
}

async fn get_as(url: &str, tenant: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .header("X-Tenant-Id", tenant)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_counts_every_paid_call_across_a_crash_and_a_retry() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("paint it blue", said(4, 4, "paint the wall blue"));
    thinker.on("paint the wall blue", said(9, 9, "paint the wall blue"));
    let backends = priced(&thinker, &editor, env.dir.path());

    // 1. A worker killed while its first critique is in flight: the edit
    // it paid for stays in the ledger; the unanswered critique is not.
    thinker.set_delay(Duration::from_secs(120));
    let mut first = Service::start("serve", &env.config("first", &backends));
    let job = create_job(
        &first,
        job_body(
            &png(40, 40, [0, 0, 0]),
            "paint it blue",
            json!({"max_turns": 3}),
        ),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_usage(&job["usage"], 0, 0);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while thinker.calls().is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, running) = get_json(&first.url(&format!("/v1/jobs/{id}"))).await;
    assert_usage(&running["usage"], 1, 0);
    first.kill();
    thinker.set_delay(Duration::ZERO);
    let second = Service::start("serve", &env.config("second", &backends));
    let job = wait_for_job(&second, &id, LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 2);
    let answered = thinker.state.answered.load(Ordering::SeqCst);
    assert_eq!(answered, 2, "the killed critique was never answered");
    assert_eq!(editor.calls().len(), 2);
    assert_usage(&job["usage"], 2, answered);
    for turn in job["turns"].as_array().unwrap() {
        assert_usage(&turn["usage"], 1, 1);
        assert!(turn["usage"]["editor_seconds"].as_f64().unwrap() > 0.0);
    }
    let events = read_sse(&second.url(&format!("/v1/jobs/{id}/events")), None, LIMIT).await;
    let done = events.last().unwrap();
    assert_eq!(done.event, "job.succeeded");
    assert_eq!(done.data["usage"], job["usage"]);

    // 2. A job that fails after paying for a turn, then is retried: the
    // failed attempt's calls stay in its usage.
    let (edits_before, answers_before) = (editor.calls().len(), answered);
    thinker.on("tint it", said(3, 3, "tint it red"));
    thinker.on("tint it red", said(9, 9, "tint it red"));
    drop(second);
    let third = Service::start_with_env(
        "serve",
        &env.config("third", &backends),
        &[("EDITTHINKER_WORKER__MAX_ATTEMPTS", "1")],
    );
    // Turn 1's critique takes a while; meanwhile every later edit is made
    // to fail (the editor answers 500), so turn 2 never comes.
    thinker.set_delay(Duration::from_millis(1500));
    let job = create_job(
        &third,
        job_body(&png(40, 40, [9, 9, 9]), "tint it", json!({"max_turns": 2})),
    )
    .await;
    let retried = job["id"].as_str().unwrap().to_string();
    wait_for_job(&third, &retried, LIMIT, |j| {
        j["turns"].as_array().is_some_and(|t| t.len() == 1)
    })
    .await;
    *editor.state.fail_first.lock().unwrap() = 1000;
    thinker.set_delay(Duration::ZERO);
    let failed = wait_for_job(&third, &retried, LIMIT, is_terminal).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_usage(&failed["usage"], 1, 1);
    *editor.state.fail_first.lock().unwrap() = 0;
    let resp = reqwest::Client::new()
        .post(third.url(&format!("/v1/jobs/{retried}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job = wait_for_job(&third, &retried, LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let edits = editor.calls().len() - edits_before;
    let answers = thinker.state.answered.load(Ordering::SeqCst) - answers_before;
    assert_eq!((edits, answers), (2, 2));
    assert_usage(&job["usage"], 2, 2);

    // 3. The tenant's usage, read through a gateway-mode API on the same
    // database: the sums of both jobs, by editor; another tenant sees none.
    drop(third);
    // Top-level keys come before the first table.
    let gateway_config = env.config(
        "gateway",
        &backends.replacen('\n', "\n[auth]\nmode = \"gateway\"\n", 1),
    );
    let gateway = Service::start("api", &gateway_config);
    let (status, report) = get_as(&gateway.url("/v1/usage"), "default").await;
    assert_eq!(status, 200, "{report}");
    assert_usage(&report["total"], 4, 4);
    assert_eq!(report["editors"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["editors"][0]["editor"], "fake");
    assert_eq!(report["editors"][0]["usage"], report["total"]);
    let (_, other) = get_as(&gateway.url("/v1/usage"), "acme").await;
    assert_eq!(other["total"]["editor_calls"], 0, "{other}");
    assert_eq!(other["total"]["currency"], "EUR");
    assert!(other["editors"].as_array().unwrap().is_empty());
    // A period before the jobs: nothing.
    let (_, old) = get_as(
        &gateway.url("/v1/usage?since=2020-01-01T00:00:00Z&until=2020-02-01T00:00:00Z"),
        "default",
    )
    .await;
    assert_eq!(old["total"]["editor_calls"], 0, "{old}");
    // The operator's view of the same ledger.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_editthinker"))
        .args([
            "usage",
            "--tenant",
            "default",
            "--since",
            "2020-01-01",
            "--config",
        ])
        .arg(&gateway_config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fake: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("fake "))
        .unwrap_or_else(|| panic!("{text}"))
        .split_whitespace()
        .collect();
    assert_eq!((fake[1], fake[3]), ("4", "4"), "{text}");
    assert!(text.lines().nth(1).unwrap().ends_with("COST EUR"), "{text}");
    // Bad periods are refused with the field named.
    for (query, field) in [
        ("since=yesterday", "since"),
        (
            "until=2020-01-01T00:00:00Z&since=2021-01-01T00:00:00Z",
            "since",
        ),
        ("from=2020-01-01T00:00:00Z", "query"),
    ] {
        let (status, problem) =
            get_as(&gateway.url(&format!("/v1/usage?{query}")), "default").await;
        assert_eq!(status, 422, "{query}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{query}: {problem}"
        );
    }
}

/// `options.budget` (issue 24): a job stops with `stop_reason: "budget"`
/// before a call that could cross its limit, with its selection among the
/// recorded turns; one without room for a single edit fails with
/// `budget_exhausted` and buys nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_stop_a_job_before_any_call_crosses_them() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    for (said_of, next) in [
        ("tint it", "tint it more"),
        ("tint it more", "tint it even more"),
        ("tint it even more", "tint it the most"),
        ("tint it the most", "tint it beyond"),
    ] {
        thinker.on(said_of, said(4, 4, next));
    }
    let service = Service::start(
        "serve",
        &env.config("serve", &priced(&thinker, &editor, env.dir.path())),
    );
    let run = |budget: Value| {
        let service = &service;
        async move {
            let job = create_job(
                service,
                job_body(
                    &png(32, 32, [5, 5, 5]),
                    "tint it",
                    json!({"max_turns": 5, "budget": budget}),
                ),
            )
            .await;
            assert_eq!(job["options"]["budget"], budget);
            wait_for_job(service, job["id"].as_str().unwrap(), LIMIT, is_terminal).await
        }
    };
    // A turn costs 0.04 + 0.0024 (1,000 and 50 tokens); the next edit is
    // reserved at 0.04 + 0.04096 (a critique of 4,096 and 4,096 tokens).
    // 0.2 buys three turns: a fourth would reserve up to 0.20816.
    let job = run(json!({"max_cost": 0.2})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stop_reason"], "budget");
    assert_eq!(job["turns"].as_array().unwrap().len(), 3);
    assert_usage(&job["usage"], 3, 3);
    assert!(job["usage"]["cost"].as_f64().unwrap() <= 0.2);
    assert_eq!(editor.calls().len(), 3);

    let job = run(json!({"max_editor_calls": 2})).await;
    assert_eq!(job["stop_reason"], "budget", "{job}");
    assert_usage(&job["usage"], 2, 2);
    assert_eq!(editor.calls().len(), 5);

    let job = run(json!({"max_cost": 0.05})).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "budget_exhausted");
    assert_usage(&job["usage"], 0, 0);
    assert_eq!(editor.calls().len(), 5, "no edit was bought");

    // Out-of-range budgets are refused, naming the field.
    let resp = reqwest::Client::new()
        .post(service.url("/v1/jobs"))
        .json(&job_body(
            &png(8, 8, [1, 1, 1]),
            "x",
            json!({"budget": {"max_cost": 0}}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("options.budget.max_cost:"),
        "{problem}"
    );
}
