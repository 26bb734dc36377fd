//! The evaluation harness (issue 25), through the real service binary and
//! the real `editthinker-eval` binary: a scripted judge's scores come back
//! aggregated exactly as an independent computation here says, and a run
//! killed mid-way then rerun creates no job and asks no judgement twice.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(120);

/// `editthinker-eval`, built beside the service binary by a workspace build.
fn eval_binary() -> PathBuf {
    let service = PathBuf::from(env!("CARGO_BIN_EXE_editthinker"));
    let eval = service.with_file_name("editthinker-eval");
    assert!(
        eval.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        eval.display()
    );
    eval
}

/// The judge's overall score of the fake editor's call `n` (its SC and PQ
/// are both min of the two numbers it answers).
fn judged(n: u8) -> f64 {
    f64::from(1 + (u32::from(n) * 7) % 9)
}

/// A judge: an OpenAI-compatible fake answering by the edited image.
async fn scripted_judge() -> FakeThinker {
    let judge = FakeThinker::start().await;
    for n in 1..=60u8 {
        let o = judged(n);
        judge.on_edit_call(
            n,
            json!({"score": [o, o + 0.5], "reasoning": "scripted"}).to_string(),
        );
    }
    judge
}

/// Writes the manifest, its images and `eval.toml`; returns their paths.
fn suite(dir: &Path, judge: &FakeThinker) -> (PathBuf, PathBuf) {
    let cases = [
        ("red", "make it red", "color"),
        ("hat", "add a hat", "object"),
        ("blur", "blur it", "style"),
    ];
    let mut manifest = String::from("# three cases\n");
    for (i, (id, instruction, group)) in cases.iter().enumerate() {
        let image = format!("{id}.png");
        std::fs::write(dir.join(&image), png(24, 24, [200 + i as u8, 10, 10])).unwrap();
        manifest.push_str(
            &json!({"id": id, "image": image, "instruction": instruction, "group": group})
                .to_string(),
        );
        manifest.push('\n');
    }
    let manifest_path = dir.join("suite.jsonl");
    std::fs::write(&manifest_path, manifest).unwrap();
    let config = dir.join("eval.toml");
    std::fs::write(
        &config,
        format!(
            "[judge]\nbase_url = \"{}\"\nmodel = \"judge-vl\"\n",
            judge.base_url
        ),
    )
    .unwrap();
    (manifest_path, config)
}

fn script_thinker(thinker: &FakeThinker) {
    // red: three turns; hat: satisfied at once; blur: three turns, worse.
    thinker.on("make it red", said(4, 4, "make it redder"));
    thinker.on("make it redder", said(6, 7, "make it reddest"));
    thinker.on("make it reddest", said(9, 9, "make it reddest"));
    thinker.on("add a hat", said(9, 9, "add a hat"));
    thinker.on("blur it", said(5, 5, "blur it more"));
    thinker.on("blur it more", said(3, 2, "blur it most"));
    thinker.on("blur it most", said(4, 4, "blur it fully"));
}

fn eval_command(args: &[&str]) -> Command {
    let mut command = Command::new(eval_binary());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn run_args<'a>(manifest: &'a str, server: &'a str, out: &'a str, config: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--suite",
        manifest,
        "--server",
        server,
        "--out",
        out,
        "--config",
        config,
        "--options",
        r#"{"max_turns": 3}"#,
        "--concurrency",
        "2",
    ]
}

/// Average ranks (ties share their mean rank).
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        for k in i..=j {
            ranks[order[k]] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    ranks
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reports_what_an_independent_computation_says_and_resumes_without_paying_twice() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    script_thinker(&thinker);
    let judge = scripted_judge().await;
    let service = Service::start(
        "serve",
        &env.config("serve", &backends_config(&thinker, &editor, env.dir.path())),
    );
    let (manifest, config) = suite(env.dir.path(), &judge);
    let out = env.dir.path().join("run");
    let server = service.url("");
    let (manifest, config, out_s) = (
        manifest.to_str().unwrap(),
        config.to_str().unwrap(),
        out.to_str().unwrap(),
    );

    // 1. Killed once the first job exists, while its edits are slow.
    editor.set_delay(Duration::from_millis(700));
    let mut first = eval_command(&run_args(manifest, &server, out_s, config))
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while std::fs::read_to_string(out.join("jobs.jsonl")).map_or(0, |t| t.lines().count()) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no job was created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    editor.set_delay(Duration::ZERO);

    // 2. Rerun into the same folder: it finishes the same jobs.
    let output = eval_command(&run_args(manifest, &server, out_s, config))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, listed) = get_json(&service.url("/v1/jobs?limit=100")).await;
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        3,
        "one job per case, ever"
    );

    // Every case's editor calls happened once: the calls are the turns.
    let cases: Vec<Value> = std::fs::read_to_string(out.join("cases.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cases.len(), 3);
    let ids: Vec<&str> = cases.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["red", "hat", "blur"], "suite order");
    let turns: usize = cases
        .iter()
        .map(|c| c["turns"].as_array().unwrap().len())
        .sum();
    assert_eq!(turns, 7);
    assert_eq!(editor.calls().len(), turns, "no edit was bought twice");
    // Two judge requests per turn image, none repeated across the runs.
    assert_eq!(
        judge.calls().len(),
        2 * turns,
        "no judgement was asked twice"
    );

    // 3. The figures, computed here from the service's own job JSON.
    let mut by_turn: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    let (mut first_o, mut last_o, mut service_o, mut oracle_o) = (vec![], vec![], vec![], vec![]);
    let (mut thinker_scores, mut judge_scores) = (vec![], vec![]);
    for case in &cases {
        let (_, job) =
            get_json(&service.url(&format!("/v1/jobs/{}", case["job_id"].as_str().unwrap()))).await;
        let mut os = vec![];
        for (turn, reported) in job["turns"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["turns"].as_array().unwrap())
        {
            let image = reqwest::get(service.url(turn["image_url"].as_str().unwrap()))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let call = decode(&image).to_rgb8().get_pixel(0, 0)[0];
            let o = judged(call);
            assert!(close(&reported["judge"]["o"], o), "{reported}");
            assert!(close(&reported["judge"]["sc"], o) && close(&reported["judge"]["pq"], o));
            by_turn
                .entry(turn["index"].as_u64().unwrap())
                .or_default()
                .push(o);
            if let Some(t) = turn["critique"]["overall"].as_f64() {
                assert!(close(&reported["thinker"]["overall"], t));
                thinker_scores.push(t);
                judge_scores.push(o);
            }
            os.push(o);
        }
        let selected = job["result"]["turn"].as_u64().unwrap() as usize;
        assert_eq!(case["selected_turn"], selected as u64);
        first_o.push(os[0]);
        last_o.push(*os.last().unwrap());
        service_o.push(os[selected - 1]);
        oracle_o.push(os.iter().copied().fold(f64::MIN, f64::max));
        assert_eq!(case["editor_calls"], os.len() as u64);
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert_eq!(summary["cases"], 3);
    for (turn, values) in &by_turn {
        let reported = &summary["by_turn"][turn.to_string()];
        assert!(
            close(&reported["mean"], mean(values)),
            "turn {turn}: {reported}"
        );
        assert_eq!(reported["n"], values.len() as u64);
    }
    // Turn 1 has three values: its interval is the t interval (t(2) = 4.302653).
    let t1 = &by_turn[&1];
    let sd = (t1.iter().map(|x| (x - mean(t1)).powi(2)).sum::<f64>() / 2.0).sqrt();
    let half = 4.302653 * sd / 3f64.sqrt();
    assert!((summary["by_turn"]["1"]["hi"].as_f64().unwrap() - (mean(t1) + half)).abs() < 1e-4);
    for (rule, values) in [
        ("first", &first_o),
        ("last", &last_o),
        ("service", &service_o),
        ("oracle", &oracle_o),
    ] {
        assert!(
            close(&summary["selections"][rule]["mean"], mean(values)),
            "{rule}: {}",
            summary["selections"]
        );
    }
    let rho = pearson(&ranks(&thinker_scores), &ranks(&judge_scores));
    assert!(
        close(&summary["spearman_thinker_judge"], rho),
        "{} vs {rho}",
        summary["spearman_thinker_judge"]
    );
    assert_eq!(summary["editor_calls"], 7);
    assert_eq!(summary["by_group"].as_object().unwrap().len(), 3);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| all | 3 |"), "{report}");
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(page.matches("<svg").count() >= 3 && !page.contains("https://"));
    // A thumbnail of every judged turn, for the page's worst cases.
    let thumbs = std::fs::read_dir(out.join("thumbs")).unwrap().count();
    assert_eq!(thumbs, turns);

    // 4. The folder belongs to its run: other options are refused.
    let mut other = run_args(manifest, &server, out_s, config);
    other[10] = r#"{"max_turns": 2}"#;
    let output = eval_command(&other).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("holds another run"));
}
