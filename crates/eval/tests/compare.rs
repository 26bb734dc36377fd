//! `editthinker-eval compare` on two run folders written here: run B wins
//! on one group and ties on the other.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

/// One `cases.jsonl` line: a case whose turns the judge gave `os`.
fn record(id: &str, group: &str, selected: Option<u32>, os: &[f64]) -> String {
    let turns: Vec<String> = (1..)
        .zip(os)
        .map(|(i, o)| {
            format!(
                r#"{{"index":{i},"instruction":"edit {i}","thinker":{{"semantic":5.0,"quality":5.0,"overall":5.0}},"verifier":null,"judge":{{"sc":{o},"pq":{o},"o":{o}}},"editor_ms":10,"thinker_ms":20}}"#
            )
        })
        .collect();
    let selected = selected.map_or("null".to_string(), |t| t.to_string());
    format!(
        r#"{{"id":"{id}","group":"{group}","language":"en","job_id":"job-{id}","status":"succeeded","error":null,"selected_turn":{selected},"editor_calls":{},"cost":0.01,"currency":"USD","turns":[{}]}}"#,
        os.len(),
        turns.join(",")
    )
}

/// Writes run A and run B under `root`: group `color`, where B's selected
/// turn is 1 to 2 points better, group `style`, where B is as often worse as
/// better, and a case only in each run.
fn write_runs(root: &Path) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (i, gain) in [1.0, 1.5, 2.0, 1.0, 1.5, 2.0].into_iter().enumerate() {
        let id = format!("color-{i}");
        a.push(record(&id, "color", Some(1), &[4.0, 3.0]));
        // B selected turn 2; its last turn is worse and must not count.
        b.push(record(&id, "color", Some(2), &[4.0, 4.0 + gain, 1.0]));
    }
    for (i, change) in [0.5, -0.5, 0.25, -0.25].into_iter().enumerate() {
        let id = format!("style-{i}");
        a.push(record(&id, "style", None, &[6.0]));
        b.push(record(&id, "style", None, &[2.0, 6.0 + change]));
    }
    a.push(record("only-a", "color", None, &[9.0]));
    b.push(record("only-b", "color", None, &[0.0]));
    for (name, lines) in [("a", a), ("b", b)] {
        std::fs::create_dir_all(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("cases.jsonl"), lines.join("\n") + "\n").unwrap();
    }
}

fn compare(cwd: &Path, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_editthinker-eval"))
        .arg("compare")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn verdict_line(output: &Output) -> String {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    stdout.lines().last().unwrap_or_default().to_string()
}

#[test]
fn b_wins_on_one_group_and_ties_on_the_other() {
    let dir = TempDir::new().unwrap();
    write_runs(dir.path());
    let output = compare(dir.path(), &["a", "b", "--out", "out/result.json"]);
    let verdict = verdict_line(&output);
    assert!(
        verdict.starts_with("B wins by +") && verdict.ends_with("outside zero)"),
        "{verdict}"
    );

    let text = std::fs::read_to_string(dir.path().join("out/result.json")).unwrap();
    let result: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(result["verdict"], verdict.as_str());
    assert_eq!(result["run_a"], "a");
    assert_eq!(result["only_in_a"], serde_json::json!(["only-a"]));
    assert_eq!(result["only_in_b"], serde_json::json!(["only-b"]));
    assert_eq!(result["paired"].as_array().unwrap().len(), 10);

    let overall = &result["overall"];
    assert_eq!(overall["cases"], 10);
    assert_eq!(overall["verdict"], "b_wins");
    // Color gains 9 points over 6 cases, style nets 0: 0.9 a case.
    assert!((overall["diff"]["mean"].as_f64().unwrap() - 0.9).abs() < 1e-9);
    assert!(overall["diff"]["lo"].as_f64().unwrap() > 0.0);

    let color = &result["by_group"]["color"];
    assert_eq!(color["verdict"], "b_wins");
    assert_eq!(color["cases"], 6);
    assert_eq!(color["mean_a"], 4.0);
    assert!((color["diff"]["mean"].as_f64().unwrap() - 1.5).abs() < 1e-9);
    assert!(color["diff"]["lo"].as_f64().unwrap() >= 1.0);

    let style = &result["by_group"]["style"];
    assert_eq!(style["verdict"], "no_clear_winner");
    assert!(style["diff"]["mean"].as_f64().unwrap().abs() < 1e-9);
    assert!(style["diff"]["lo"].as_f64().unwrap() < 0.0);
    assert!(style["diff"]["hi"].as_f64().unwrap() > 0.0);
}

#[test]
fn swapped_runs_make_a_the_winner_and_write_compare_json_here() {
    let dir = TempDir::new().unwrap();
    write_runs(dir.path());
    let output = compare(dir.path(), &["b", "a"]);
    let verdict = verdict_line(&output);
    assert!(verdict.starts_with("A wins by +0.90 O"), "{verdict}");
    let text = std::fs::read_to_string(dir.path().join("compare.json")).unwrap();
    let result: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(result["overall"]["verdict"], "a_wins");
    assert_eq!(result["by_group"]["style"]["verdict"], "no_clear_winner");
}
