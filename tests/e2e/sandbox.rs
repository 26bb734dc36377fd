//! The sandbox providers (issue 22 item 1), used the way the README's quick
//! start uses them: `editthinker serve --sandbox` in an empty folder, with
//! no key, no GPU and no configuration file; then jobs over HTTP, through
//! the CLI and (tests/e2e/viewer.rs) in Chromium. Also the rule that an
//! authenticated service runs sandbox providers only when told to.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

/// The instruction of the README's quick start.
pub const QUICK_START_INSTRUCTION: &str = "make the sky purple";

/// `serve --sandbox` in a fresh folder of `env`, on a free port.
fn sandbox_service(env: &TestEnv) -> Service {
    Service::start_sandbox(env.dir.path(), &[("EDITTHINKER_LISTEN", "127.0.0.1:0")])
}

async fn finished(service: &Service, id: &str) -> Value {
    wait_for_job(service, id, Duration::from_secs(60), is_terminal).await
}

/// Waits (a few seconds at most) for `needle` in the service's output.
async fn logged(service: &Service, needle: &str) {
    for _ in 0..100 {
        if service.log_contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the service never printed {needle:?}");
}

fn overall(turn: &Value) -> f64 {
    turn["critique"]["overall"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_finishes_a_labelled_three_turn_job() {
    assert!(
        !editthinker_thinker::sandbox::plateaus(QUICK_START_INSTRUCTION),
        "the quick start's instruction is satisfied at turn 3"
    );
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains("editthinker serve --sandbox") || readme.contains("-- serve --sandbox"),
        "the README's quick start runs serve --sandbox"
    );
    assert!(readme.contains(QUICK_START_INSTRUCTION));

    let env = TestEnv::new(Backend::Sqlite).await;
    let service = sandbox_service(&env);
    // The banner a newcomer reads, and the log line for operators.
    let viewer = service.url("/ui");
    for needle in ["SANDBOX mode", viewer.as_str(), "SANDBOX provider"] {
        logged(&service, needle).await;
    }
    assert!(
        env.dir.path().join("data").is_dir(),
        "the embedded store lives in the working directory"
    );

    let (_, editors) = get_json(&service.url("/v1/editors")).await;
    assert_eq!(
        editors,
        json!({"editors": [{"name": "sandbox", "kind": "sandbox", "model": "sandbox",
            "default": true, "sandbox": true}]})
    );
    let (status, ready) = get_json(&service.url("/readyz")).await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready["thinker"].as_str().unwrap().contains("sandbox"),
        "{ready}"
    );

    let source = png(96, 64, [40, 90, 200]);
    let job = create_job(
        &service,
        job_body(&source, QUICK_START_INSTRUCTION, json!({})),
    )
    .await;
    assert_eq!(job["sandbox"], true, "labelled from the start: {job}");
    let id = job["id"].as_str().unwrap().to_string();
    let events = read_sse_all(
        &service.url(&format!("/v1/jobs/{id}/events")),
        None,
        Duration::from_secs(60),
    )
    .await;
    let job = finished(&service, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["sandbox"], true);
    assert_eq!(job["stop_reason"], "satisfied", "{job:#}");
    let turns = job["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 3, "a three-turn job: {job:#}");
    // Scores rise turn by turn, and each turn's instruction is rewritten.
    assert!(overall(&turns[0]) < overall(&turns[1]), "{job:#}");
    assert!(overall(&turns[1]) < overall(&turns[2]), "{job:#}");
    assert_eq!(turns[0]["instruction"], QUICK_START_INSTRUCTION);
    assert_ne!(turns[1]["instruction"], turns[0]["instruction"]);
    assert!(turns.iter().all(|t| t["critique"]["reasoning"]
        .as_str()
        .unwrap()
        .contains("sandbox")));
    assert_eq!(job["result"]["turn"], 3, "{job:#}");
    // The worker probed its providers before claiming: /readyz says so.
    let (_, ready) = get_json(&service.url("/readyz")).await;
    assert_eq!(ready["editor_checks"], json!({"sandbox": "ok"}), "{ready}");

    // The reasoning streamed as it was made, like a real model's (the
    // worker sends what gathered every few tens of milliseconds).
    for turn in 1..=3 {
        let pieces = events
            .iter()
            .filter(|e| e.event == "turn.thinking" && e.data["turn"] == turn)
            .count();
        assert!(pieces >= 3, "turn {turn}: {pieces} thinking events");
    }

    // The edit is visible and deterministic: same size, not the source,
    // and the same bytes for the same source and instruction.
    let image = |turn: u32| {
        let url = service.url(&format!("/v1/jobs/{id}/turns/{turn}/image"));
        async move { reqwest::get(url).await.unwrap().bytes().await.unwrap() }
    };
    let first = image(1).await;
    let edited = decode(&first);
    assert_eq!((edited.width(), edited.height()), (96, 64));
    assert_ne!(
        edited.to_rgb8().into_raw(),
        decode(&source).to_rgb8().into_raw()
    );
    let again = create_job(
        &service,
        job_body(&source, QUICK_START_INSTRUCTION, json!({"max_turns": 1})),
    )
    .await;
    let again_id = again["id"].as_str().unwrap();
    let again = finished(&service, again_id).await;
    assert_eq!(again["status"], "succeeded", "{again:#}");
    let url = service.url(&format!("/v1/jobs/{again_id}/turns/1/image"));
    let same = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(same, first, "the same edit gives the same bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plateau_takes_a_fourth_turn_and_the_cli_says_sandbox() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let service = sandbox_service(&env);
    let plateau = [
        "make the sky purple",
        "paint the door red",
        "add a hat",
        "turn it into a watercolour",
        "remove the car",
        "make it night",
        "add snow on the roof",
        "make the cat orange",
    ]
    .into_iter()
    .find(|i| editthinker_thinker::sandbox::plateaus(i))
    .expect("one of these plateaus");
    let image = env.dir.path().join("door.png");
    std::fs::write(&image, png(48, 48, [120, 60, 30])).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_editthinker"))
        .args(["submit", image.to_str().unwrap(), plateau])
        .env("EDITTHINKER_SERVER", service.url(""))
        .env_remove("EDITTHINKER_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit {:?}", out.status);
    assert!(
        stdout.contains(editthinker::client::commands::SANDBOX_LINE),
        "{stdout}"
    );
    let turns: Vec<&str> = stdout.lines().filter(|l| l.starts_with("turn ")).collect();
    assert_eq!(turns.len(), 4, "a plateau costs one more turn: {stdout}");
    assert!(env.dir.path().join("door.edited.png").is_file());
    // The usage line: four paid edits and four critiques, no prices set.
    let usage = stdout
        .lines()
        .find(|l| l.starts_with("usage: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        usage.starts_with("usage: 4 edits (")
            && usage.contains("), 4 critiques (")
            && usage.ends_with("cost 0.0000 USD"),
        "{usage}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_editor_simulates_refusals_for_error_handling() {
    let env = TestEnv::new(Backend::Sqlite).await;
    env.migrate();
    let config = env.config(
        "refusing",
        "[thinker]\nkind = \"sandbox\"\ntoken_interval_ms = 0\n\n\
         [editors.strict]\nkind = \"sandbox\"\nlatency_ms = 0\nrefusal_rate = 1.0\n",
    );
    let service = Service::start("serve", &config);
    let job = create_job(
        &service,
        job_body(&png(32, 32, [1, 2, 3]), "paint the door red", json!({})),
    )
    .await;
    assert_eq!(job["sandbox"], true);
    let job = finished(&service, job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "editor_refused", "{job:#}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("sandbox") && message.contains("simulated"),
        "{message}"
    );
}

#[tokio::test]
async fn an_authenticated_service_runs_sandbox_providers_only_when_told() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let sandboxed = "[auth]\nmode = \"api_keys\"\n\n[thinker]\nkind = \"sandbox\"\n\n\
                     [editors.s]\nkind = \"sandbox\"\n";
    let refused = env.config("refused", sandboxed);
    let out = Command::new(env!("CARGO_BIN_EXE_editthinker"))
        .args(["serve", "--config", refused.to_str().unwrap()])
        .env("EDITTHINKER_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("allow_sandbox") && stderr.contains("thinker"),
        "{stderr}"
    );

    let allowed = env.config("allowed", &format!("allow_sandbox = true\n{sandboxed}"));
    let service = Service::start("serve", &allowed);
    let key = keys_cli(&allowed, &["create", "--tenant", "ci"]);
    let (status, editors) = get_json_as(&service.url("/v1/editors"), &key).await;
    assert_eq!(status, 200);
    assert_eq!(editors["editors"][0]["sandbox"], true, "{editors}");
}
