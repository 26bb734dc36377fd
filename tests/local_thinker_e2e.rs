//! End to end through the binary with the in-process thinker
//! (`kind = "local"`): the worker loads a tiny random-weight Qwen3-VL model
//! generated here through the real mistral.rs path on the CPU, and a job runs
//! to the end with every critique parsed thanks to the output grammar.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Loading and generating in a debug build on two shared cores is slow.
const LIMIT: Duration = Duration::from_secs(150);

async fn a_job_runs_on_the_in_process_thinker(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let model = env.dir.path().join("tiny-qwen3-vl");
    editthinker_thinker::tiny_model::write_tiny_qwen3_vl(&model).unwrap();
    // A short prompt keeps prefill small in a debug build; the default
    // prompt is exercised by the thinker crate's own tests.
    let template = env.dir.path().join("template.txt");
    std::fs::write(
        &template,
        "Original: {original_instruction}\nUsed: {rewritten_prompt}\nJudge and refine.",
    )
    .unwrap();
    let editor = FakeEditor::start().await;
    let backends = format!(
        r#"
[worker]
concurrency = 2
poll_interval_ms = 200

[thinker]
kind = "local"
model = "{}"
device = "cpu"
dtype = "f32"
max_tokens = 128
prompt_template_file = "{}"

[editors.fake]
kind = "http"
url = "{}"
default = true
retry_base_ms = 50
"#,
        model.display(),
        template.display(),
        editor.url
    );
    let service = Service::start("serve", &env.config("serve", &backends));
    assert!(
        service.log_contains("thinker ready"),
        "loaded before serving"
    );
    let job = create_job(
        &service,
        job_body(
            &png(48, 40, [10, 20, 30]),
            "make the sky purple",
            json!({"max_turns": 2}),
        ),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let url = service.url(&format!("/v1/jobs/{id}/events"));
    let events = read_sse_all(&url, None, LIMIT).await;
    let job = wait_for_job(&service, &id, LIMIT, is_terminal).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");

    // Every critique parsed: the grammar forced the EditThinker form out of
    // random weights.
    let turns = job["turns"].as_array().unwrap();
    assert!(!turns.is_empty());
    for turn in turns {
        let critique = &turn["critique"];
        assert!(
            critique.is_object(),
            "best selection critiques every turn: {job:#}"
        );
        assert_eq!(critique["error"], serde_json::Value::Null, "{job:#}");
        for score in ["semantic", "quality"] {
            let v = critique[score].as_f64().unwrap();
            assert!((0.0..=10.0).contains(&v), "{score} = {v}");
        }
    }
    // The editor got the user's words first, and a second edit (if any)
    // used the thinker's refinement.
    let prompts = editor.prompts();
    assert_eq!(prompts[0], "make the sky purple");
    if turns.len() == 2 {
        assert_eq!(
            Some(prompts[1].as_str()),
            turns[0]["critique"]["refined_instruction"].as_str()
        );
    }
    // The local engine streams its reasoning to SSE clients.
    let thinking: Vec<_> = events
        .iter()
        .filter(|e| e.event == "turn.thinking")
        .collect();
    assert!(!thinking.is_empty(), "{events:#?}");
    assert!(thinking.iter().all(|e| e.id.is_none()));
}

both_backends!(a_job_runs_on_the_in_process_thinker);
