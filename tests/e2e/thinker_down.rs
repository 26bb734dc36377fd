//! No paid edit for a job that cannot be critiqued (issue 22 item 3): the
//! worker probes its thinker at start and every second here; while a probe
//! fails it claims nothing and a running job waits before its next edit,
//! and `/readyz`, the log and `editthinker_thinker_reachable` say so. The
//! thinker is a real HTTP server that is absent, then present, or whose
//! probe fails while its chat endpoint still answers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// The config of a service whose thinker is at `thinker_url`, probed every
/// second.
fn config(env: &TestEnv, editor: &FakeEditor, thinker_url: &str) -> String {
    let template = env.dir.path().join("template.txt");
    std::fs::write(&template, TEST_TEMPLATE).unwrap();
    format!(
        "[worker]\npoll_interval_ms = 200\nthinker_probe_seconds = 1\n\n\
         [thinker]\nkind = \"openai\"\nbase_url = \"{thinker_url}\"\nmodel = \"EditThinker-8B\"\n\
         prompt_template_file = \"{}\"\nretry_base_ms = 50\n\n\
         [editors.fake]\nkind = \"http\"\nurl = \"{}\"\nretry_base_ms = 50\n",
        template.display(),
        editor.url
    )
}

async fn readyz_thinker(service: &Service) -> String {
    let (_, ready) = get_json(&service.url("/readyz")).await;
    ready["thinker"].as_str().unwrap().to_string()
}

/// Waits up to `limit` for `/readyz` to say `thinker` starts with `prefix`.
async fn wait_for_readyz(service: &Service, prefix: &str, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let thinker = readyz_thinker(service).await;
        if thinker.starts_with(prefix) {
            return thinker;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never said {prefix:?}: {thinker}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_thinker_gets_no_claims_until_it_answers() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let port = free_port();
    let metrics_port = free_port();
    let thinker_url = format!("http://127.0.0.1:{port}/v1");
    let config = env.config("down", &config(&env, &editor, &thinker_url));
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let service = Service::start_with_env(
        "serve",
        &config,
        &[("EDITTHINKER_METRICS__LISTEN", metrics_addr.as_str())],
    );

    let reason = wait_for_readyz(&service, "unreachable", Duration::from_secs(10)).await;
    assert!(
        reason.contains("/v1/models"),
        "the reason names the call: {reason}"
    );
    let (status, ready) = get_json(&service.url("/readyz")).await;
    assert_eq!(
        (status, &ready["ready"]),
        (200, &json!(true)),
        "the API still serves"
    );
    assert!(service.log_contains("thinker unreachable: claiming no jobs"));
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    assert_eq!(
        metric(&metrics, "editthinker_thinker_reachable").await,
        Some(0.0)
    );

    // A job is accepted and waits in the queue: no edit is bought.
    let job = create_job(
        &service,
        job_body(&png(16, 16, [9, 9, 9]), "paint the door red", json!({})),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, queued) = get_json(&service.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(queued["status"], "queued", "{queued:#}");
    assert_eq!(queued["attempt"], 0, "never claimed");
    assert!(editor.calls().is_empty(), "no edit bought");

    // The thinker comes up on its port: the breaker closes by itself.
    let thinker = FakeThinker::start_on(port).await;
    let done = wait_for_job(&service, &id, Duration::from_secs(30), is_terminal).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["attempt"], 1, "one claim, after the thinker answered");
    assert!(thinker.state.probes.load(Ordering::Relaxed) >= 1);
    assert_eq!(readyz_thinker(&service).await, "ok");
    assert!(service.log_contains("thinker reachable: claiming jobs"));
    assert_eq!(
        metric(&metrics, "editthinker_thinker_reachable").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_waits_before_its_next_edit_while_the_thinker_is_down() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    // Long enough for the probe to fail while turn 1's edit runs.
    editor.set_delay(Duration::from_millis(3000));
    let thinker = FakeThinker::start().await;
    thinker.on("paint the door red", said(4, 5, "paint the whole door red"));
    thinker.on(
        "paint the whole door red",
        said(9, 9, "paint the whole door red"),
    );
    let config = env.config("waits", &config(&env, &editor, &thinker.base_url));
    let service = Service::start("serve", &config);
    wait_for_readyz(&service, "ok", Duration::from_secs(10)).await;

    let job = create_job(
        &service,
        job_body(&png(16, 16, [9, 9, 9]), "paint the door red", json!({})),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    // Turn 1's edit is under way: the thinker's probe fails from now on
    // (its chat endpoint still answers, so turn 1 is critiqued).
    wait_for_job(&service, &id, Duration::from_secs(10), |j| {
        j["status"] == "running"
    })
    .await;
    thinker.state.models_down.store(true, Ordering::Relaxed);
    wait_for_readyz(&service, "unreachable", Duration::from_secs(10)).await;
    let critiqued = wait_for_job(&service, &id, Duration::from_secs(20), |j| {
        !j["turns"][0]["critique"].is_null()
    })
    .await;
    assert_eq!(critiqued["status"], "running");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, held) = get_json(&service.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(held["status"], "running", "held, not failed: {held:#}");
    assert_eq!(held["turns"].as_array().unwrap().len(), 1, "{held:#}");
    assert_eq!(
        editor.calls().len(),
        1,
        "no second edit while the thinker is down"
    );
    assert!(service.log_contains("the job waits before this edit"));

    thinker.state.models_down.store(false, Ordering::Relaxed);
    let done = wait_for_job(&service, &id, Duration::from_secs(30), is_terminal).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["turns"].as_array().unwrap().len(), 2);
    assert_eq!(done["attempt"], 1, "the same claim went on");
}

/// An editor whose API offers a free call is probed too, and reported,
/// but never blocks claims: a job names its editor, and the others work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_each_editors_probe() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let extra = format!(
        "{}\n[editors.gpt]\nkind = \"openai\"\nbase_url = \"{dead}\"\napi_key_env = \"ET_TEST_GPT_KEY\"\n",
        config(&env, &editor, &thinker.base_url).replace("[editors.fake]", "[editors.fake]\ndefault = true")
    );
    let service = Service::start_with_env(
        "serve",
        &env.config("checks", &extra),
        &[("ET_TEST_GPT_KEY", "sk-test")],
    );
    wait_for_readyz(&service, "ok", Duration::from_secs(10)).await;
    let (_, ready) = get_json(&service.url("/readyz")).await;
    assert_eq!(ready["editor_checks"]["fake"], "not checked", "{ready}");
    let gpt = ready["editor_checks"]["gpt"].as_str().unwrap();
    assert!(
        gpt.starts_with("unreachable: ") && gpt.contains("/models/gpt-image-1"),
        "{gpt}"
    );
    assert!(service.log_contains("editor unreachable"));
    // Jobs on the other editor still run.
    let job = create_job(
        &service,
        job_body(&png(16, 16, [9, 9, 9]), "paint the door red", json!({})),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let done = wait_for_job(&service, id, Duration::from_secs(30), is_terminal).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
}
