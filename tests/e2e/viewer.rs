//! The web viewer in a real browser (issue 12): `tests/ui/viewer.mjs`
//! drives Debian's Chromium with playwright-core against the real binary
//! (API keys on, fake backends): it gives the key, submits a job with an
//! image file, watches turns appear live with their scores, reloads mid-job,
//! opens the finished job in a new tab and reads the chart, the recent jobs
//! and the API reader. Screenshots go to `target/ui-screenshots/`.
//!
//! Needs `node`, `chromium` and `tests/ui/node_modules` (`npm ci` in
//! `tests/ui`; `.ci/run` does it). When one is missing the test says so and
//! passes — unless `CI` is set, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_shows_every_turn_live_and_after_the_fact() {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let chromium = std::env::var("CHROMIUM")
        .map(PathBuf::from)
        .ok()
        .or_else(|| which("chromium"));
    let ready = which("node").is_some()
        && chromium.is_some()
        && ui.join("node_modules/playwright-core").is_dir();
    if !ready {
        tool_missing("viewer_e2e", "node, chromium or tests/ui/node_modules");
        return;
    }
    let env = TestEnv::new(Backend::Sqlite).await;
    env.migrate();
    let editor = FakeEditor::start().await;
    // Slow enough that a person (and the browser) sees the turns arrive.
    editor.set_delay(Duration::from_millis(1500));
    editor
        .state
        .refuse
        .lock()
        .unwrap()
        .push("make it forbidden".into());
    let thinker = FakeThinker::start().await;
    thinker.on(
        "paint the door red",
        said(5, 6, "paint the front door bright red"),
    );
    thinker.on(
        "paint the front door bright red",
        said(9, 8, "paint the front door bright red"),
    );
    let config = env.config(
        "viewer",
        &format!(
            "[auth]\nmode = \"api_keys\"\n{}",
            backends_config(&thinker, &editor, env.dir.path())
        ),
    );
    let key = keys_cli(&config, &["create", "--tenant", "people"]);
    let service = Service::start("serve", &config);
    let image = env.dir.path().join("door.png");
    std::fs::write(&image, png(48, 32, [200, 40, 40])).unwrap();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let base = service.url("");
    let key_for_checks = key.clone();
    let run = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("node");
        cmd.arg(ui.join("viewer.mjs"))
            .args([&base, &key])
            .arg(&image)
            .arg(&shots)
            .current_dir(&ui);
        if let Some(chromium) = chromium {
            cmd.env("CHROMIUM", chromium);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{}", String::from_utf8_lossy(&run.stderr));
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    println!("viewer saw: {seen:#}");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen:#}");
    assert_eq!(seen["editors"], serde_json::json!(["fake"]));
    // Live: turn 1 was scored while the job still ran.
    assert_eq!(seen["statusAtTurn1"], "running", "{seen:#}");
    let turn1 = seen["turn1"].as_str().unwrap();
    assert!(
        turn1.contains("semantic 5")
            && turn1.contains("quality 6")
            && turn1.contains("overall 5.48"),
        "{turn1}"
    );
    assert_eq!(seen["turn1Instruction"], "paint the door red");
    // A reload mid-job shows the same turn the same way.
    assert_eq!(seen["turn1AfterReload"], seen["turn1"]);
    assert_eq!(seen["finalStatus"], "succeeded");
    assert_eq!(seen["turns"], 2);
    assert_eq!(seen["selectedTurn"], "2");
    // What changed from turn 1's instruction is marked.
    assert_eq!(
        seen["turn2Inserted"],
        serde_json::json!(["front", "bright"])
    );
    assert!(seen["downloadHref"].as_str().unwrap().starts_with("blob:"));
    assert_eq!(seen["turnImagesLoaded"], true);
    // The finished job, replayed in a new tab, with its chart.
    assert_eq!(seen["replayTurns"], 2);
    assert_eq!(
        seen["chartSeries"],
        serde_json::json!([["semantic", 2], ["quality", 2], ["overall", 2]])
    );
    let job_path = seen["jobUrl"]
        .as_str()
        .unwrap()
        .split_once("/ui/")
        .unwrap()
        .1;
    let recent = seen["recent"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|r| r[0].as_str().unwrap().ends_with(job_path) && r[1] == "succeeded"),
        "{recent:?}"
    );
    assert!(seen["docsOperations"].as_u64().unwrap() >= 13, "{seen:#}");
    // A failed job retried from its page failed again in view.
    assert!(
        seen["failedInfo"]
            .as_str()
            .unwrap()
            .contains("editor_refused"),
        "{seen:#}"
    );
    assert_eq!(seen["retryHiddenWhileFailed"], false, "retry offered again");
    let failed_id = seen["failedUrl"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (_, failed) = get_json_as(
        &service.url(&format!("/v1/jobs/{failed_id}")),
        &key_for_checks,
    )
    .await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["attempt"], 2,
        "the retry ran a second attempt: {failed:#}"
    );
    for shot in ["ui-submit.png", "ui-job.png", "ui-finished.png"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/ui-screenshots")
            .join(shot);
        assert!(path.metadata().is_ok_and(|m| m.len() > 1000), "{shot}");
    }
}
