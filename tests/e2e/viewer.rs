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

/// The folder of the browser scripts, when node, Chromium and
/// playwright-core are all there (`None` after saying what is missing).
fn ui_folder(test: &str) -> Option<PathBuf> {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let ready = which("node").is_some()
        && chromium().is_some()
        && ui.join("node_modules/playwright-core").is_dir();
    if !ready {
        tool_missing(test, "node, chromium or tests/ui/node_modules");
        return None;
    }
    Some(ui)
}

fn chromium() -> Option<PathBuf> {
    std::env::var("CHROMIUM")
        .map(PathBuf::from)
        .ok()
        .or_else(|| which("chromium"))
}

/// The screenshot folder, `target/ui-screenshots`.
fn screenshots() -> PathBuf {
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    shots
}

/// Runs `ui/<script>` with `args` in node and returns the JSON line it
/// printed last (what the browser saw).
async fn run_script(ui: PathBuf, script: &str, args: Vec<std::ffi::OsString>) -> Value {
    let script = ui.join(script);
    let run = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("node");
        cmd.arg(script).args(args).current_dir(&ui);
        if let Some(chromium) = chromium() {
            cmd.env("CHROMIUM", chromium);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_shows_every_turn_live_and_after_the_fact() {
    let Some(ui) = ui_folder("viewer_e2e") else {
        return;
    };
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
    let seen = run_script(
        ui,
        "viewer.mjs",
        vec![
            service.url("").into(),
            key.clone().into(),
            image.into(),
            screenshots().into(),
        ],
    )
    .await;
    let key_for_checks = key;
    println!("viewer saw: {seen:#}");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen:#}");
    assert_eq!(seen["editors"], serde_json::json!(["fake"]));
    assert_eq!(
        seen["maxTurnsDefault"], "5",
        "the API's default, not the UI's own"
    );
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
    // The stop thresholds (8 and 8 by default) are one dashed line.
    assert_eq!(seen["chartThresholds"], serde_json::json!([8]), "{seen:#}");
    // The header: the instruction, the editor and the timings.
    assert_eq!(seen["title"], "paint the door red");
    assert!(
        seen["documentTitle"]
            .as_str()
            .unwrap()
            .starts_with("paint the door red"),
        "{seen:#}"
    );
    let meta = seen["meta"].as_str().unwrap();
    assert!(
        meta.contains("editor fake") && meta.contains("ran ") && meta.contains("queued "),
        "{meta}"
    );
    // The usage ledger: the fake thinker reports 1,050 tokens a critique.
    let usage = meta
        .split("usage: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{meta}"));
    let critiques: u64 = usage
        .split(" edits, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{meta}"));
    assert!(critiques >= 2, "{meta}");
    assert!(
        usage.contains(&format!("({} tokens)", critiques * 1050)),
        "{meta}"
    );
    // Why turn 2: its score beside turn 1's.
    let why = seen["why"].as_str().unwrap();
    assert!(
        why.starts_with("Turn 2 is the result: the highest overall score, 8.49")
            && why.contains("turn 1 5.48"),
        "{why}"
    );
    // Full size with a before/after wipe against the source.
    let compare = &seen["compare"];
    assert_eq!(compare["before"], 48, "{compare}");
    assert_eq!(compare["after"], 48, "{compare}");
    assert_eq!(compare["clip"], "inset(0px 0px 0px 20%)", "{compare}");
    assert!(compare["shown"].as_f64().unwrap() > 250.0, "{compare}");
    assert_eq!(seen["compareClosed"], true);
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
    // Home cards: editor, time, turns and best score, uncropped.
    let cards = seen["cards"].as_array().unwrap();
    assert!(
        cards.iter().any(|c| {
            let facts = c["facts"].as_str().unwrap();
            facts.starts_with("fake · ") && facts.contains(" s · 2 turns · best 8.49")
        }),
        "{cards:?}"
    );
    assert!(cards.iter().all(|c| c["fit"] == "contain"), "{cards:?}");
    // A failed job retried from its page failed again in view.
    assert!(
        seen["failedInfo"]
            .as_str()
            .unwrap()
            .contains("editor_refused"),
        "{seen:#}"
    );
    assert_eq!(seen["retryHiddenWhileFailed"], false, "retry offered again");
    // A failed job: its code, a sentence, the raw message and its attempts,
    // and no empty chart.
    assert_eq!(seen["failedCode"], "editor_refused");
    assert!(
        seen["failedInfo"]
            .as_str()
            .unwrap()
            .contains("refused the instruction"),
        "{seen:#}"
    );
    assert!(!seen["failedMessage"].as_str().unwrap().is_empty());
    assert_eq!(seen["failedAttempts"], " After 2 attempts.", "{seen:#}");
    assert_eq!(seen["failedChartHidden"], true);
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

/// Runs `ui/<script>` against `serve --sandbox` in an empty folder (with
/// `env` added) with the base URL, a photo to submit and `args`; `None`
/// when the browser tools are missing.
async fn on_sandbox(
    test: &str,
    script: &str,
    env: &[(&str, &str)],
    args: Vec<std::ffi::OsString>,
) -> Option<Value> {
    let ui = ui_folder(test)?;
    let dir = tempfile::tempdir().unwrap();
    let env = [&[("EDITTHINKER_LISTEN", "127.0.0.1:0")][..], env].concat();
    let service = Service::start_sandbox(dir.path(), &env);
    let image = dir.path().join("photo.png");
    std::fs::write(&image, png(160, 120, [90, 140, 220])).unwrap();
    let args = [vec![service.url("").into(), image.into()], args].concat();
    Some(run_script(ui, script, args).await)
}

/// The README's quick start, in Chromium: `serve --sandbox` in an empty
/// folder, the viewer's form with its defaults, a finished three-turn job
/// with every sandbox label in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_quick_start_finishes_in_the_browser() {
    let Some(seen) = on_sandbox(
        "sandbox_viewer_e2e",
        "sandbox.mjs",
        &[],
        vec![
            crate::sandbox::QUICK_START_INSTRUCTION.into(),
            screenshots().into(),
        ],
    )
    .await
    else {
        return;
    };
    println!("the quick start in Chromium: {seen:#}");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen:#}");
    assert_eq!(seen["editors"], serde_json::json!(["sandbox (sandbox)"]));
    let live = seen["liveReasoning"].as_str().unwrap();
    assert!(
        live.starts_with("[sandbox]") && !live.contains("<think>"),
        "the reasoning streamed before the scores, without its tags: {seen:#}"
    );
    assert_eq!(seen["status"], "succeeded");
    assert_eq!(
        seen["turns"], 3,
        "a three-turn job with the form's defaults"
    );
    assert_eq!(seen["selectedTurn"], "3");
    assert_eq!(seen["badge"], "sandbox");
    assert!(seen["badgeTitle"].as_str().unwrap().contains("made up"));
    assert!(seen["why"]
        .as_str()
        .unwrap()
        .starts_with("Turn 3 is the result"));
    assert!(seen["cardBadges"].as_u64().unwrap() >= 1, "{seen:#}");
}

/// A turn of three candidates in Chromium, on `serve --sandbox` with the
/// sandbox verifier: the form asks for three ranked by the verifier, the
/// strip fills live, one tile is marked chosen (the verifier's best), every
/// tile has its seed and scores, and a reload replays the same strip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_shows_a_turn_s_candidates_with_the_chosen_one_marked() {
    let Some(seen) = on_sandbox(
        "candidates_viewer_e2e",
        "candidates.mjs",
        &[("EDITTHINKER_VERIFIER__KIND", "sandbox")],
        vec![screenshots().into(), "verifier".into()],
    )
    .await
    else {
        return;
    };
    println!("three candidates in Chromium: {seen:#}");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen:#}");
    assert_eq!(seen["candidatesDefault"], "1");
    assert!(seen["liveTiles"].as_u64().unwrap() >= 1, "{seen:#}");
    assert_eq!(seen["status"], "succeeded");
    assert_eq!(seen["turns"], 1, "one turn, however many candidates");
    let meta = seen["meta"].as_str().unwrap();
    assert!(
        meta.contains("3 candidates a turn, ranked by the verifier")
            && meta.contains("3 edits, 3 critiques, 3 verifier calls"),
        "{meta}"
    );
    // A tile's score as the page shows it ("overall 5.81").
    let score = |tile: &Value, name: &str| -> f64 {
        let text = tile["scores"].as_str().unwrap_or_default();
        let after = text.split(&format!("{name} ")).nth(1).unwrap_or_default();
        let number: String = after
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        number
            .parse()
            .unwrap_or_else(|_| panic!("{name} in {tile}"))
    };
    for strip in [&seen["strip"], &seen["replayedStrip"]] {
        let tiles = strip.as_array().unwrap();
        assert_eq!(tiles.len(), 3, "{seen:#}");
        let chosen: Vec<_> = tiles.iter().filter(|t| t["chosen"] == true).collect();
        assert_eq!(chosen.len(), 1, "exactly one chosen: {seen:#}");
        assert!(chosen[0]["label"].as_str().unwrap().ends_with("chosen"));
        for (i, tile) in tiles.iter().enumerate() {
            assert_eq!(tile["candidate"], i.to_string());
            assert_eq!(tile["imageLoaded"], true, "{tile}");
            assert!(tile["scores"].as_str().unwrap().starts_with("seed "));
            for name in ["semantic", "quality", "overall", "verifier"] {
                score(tile, name);
            }
            assert!(score(tile, "verifier") <= score(chosen[0], "verifier"));
        }
    }
    assert_eq!(seen["strip"], seen["replayedStrip"]);
    // The turn is its chosen candidate: its scores, image and chart point.
    let chosen = seen["strip"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["chosen"] == true)
        .unwrap();
    let turn = serde_json::json!({ "scores": seen["turnScores"] });
    assert_eq!(score(&turn, "overall"), score(chosen, "overall"));
    assert!(
        seen["turnScores"]
            .as_str()
            .unwrap()
            .ends_with("chosen by the verifier"),
        "{seen:#}"
    );
    assert_eq!(seen["turnImageLoaded"], true);
    assert_eq!(seen["chartPoints"], 1);
    assert_eq!(seen["compareTitle"], "Source ◀ ▶ turn 1 candidate 2");
}
