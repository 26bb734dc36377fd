//! Hostile cases for the worker: provider answers that must not stall it.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

/// Whether `text` holds a character the store never keeps.
fn has_refused(text: &str) -> bool {
    text.chars().any(|c| {
        (c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    })
}

/// A thinker answer with NUL, escape sequences and a bidi override (a
/// faulty server or a prompt-injected model) used to make the Postgres
/// critique write fail and the worker retry it for ever.
async fn a_thinker_answer_with_control_characters_finishes_the_job(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on(
        "paint it",
        "<think>looks \u{0}off\u{1b}[31m \u{202e}reversed</think>\n<score>{\"semantic\": 4, \"quality\": 5}</score>\n<answer>paint\u{0} it \u{7f}red</answer>".into(),
    );
    let config = env.config("serve", &backends_config(&thinker, &editor, env.dir.path()));
    let service = Service::start("serve", &config);
    let job = create_job(
        &service,
        job_body(&png(16, 16, [9, 9, 9]), "paint it", json!({"max_turns": 3})),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let done = wait_for_job(&service, id, Duration::from_secs(40), is_terminal).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let turns = done["turns"].as_array().unwrap();
    assert!(turns.len() >= 2, "{done:#}");
    let text = serde_json::to_string(&done).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut strings = Vec::new();
    collect_strings(&parsed, &mut strings);
    for s in &strings {
        assert!(
            !has_refused(s),
            "stored text keeps a refused character: {s:?}"
        );
    }
    assert_eq!(turns[1]["instruction"], "paint it red", "{done:#}");
    let reasoning = turns[0]["critique"]["reasoning"]
        .as_str()
        .unwrap_or_default();
    assert!(reasoning.contains("off[31m reversed"), "{reasoning:?}");
    eprintln!("hostile: a thinker answer with NUL, ESC, DEL and U+202E finished its job clean ({backend:?})");
}

fn collect_strings<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| {
            out.push(k);
            collect_strings(v, out)
        }),
        _ => {}
    }
}

crate::both_backends!(a_thinker_answer_with_control_characters_finishes_the_job);
