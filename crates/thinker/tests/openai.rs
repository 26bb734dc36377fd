//! The `openai` thinker against a fake chat-completions server on loopback.

mod common;

use std::time::{Duration, Instant};

use common::{centre, dead_base_url, solid, Fake, Reply};
use editthinker_core::{
    parse_editthinker, CritiqueRequest, Image, NoThinking, Protocol, ThinkerError,
};
use editthinker_thinker::{build_thinker, ThinkerConfig};
use image::ImageFormat;
use serde_json::json;

const RED: [u8; 3] = [220, 20, 20];
const BLUE: [u8; 3] = [20, 20, 220];
const ANSWER: &str = "<think>The cup is still white.</think><score>{\"semantic\": 3, \"quality\": 9}</score><answer>Make the cup on the left red; keep the table unchanged.</answer>";

/// A source (JPEG, 96×64, red) and an edit (PNG, 40×20, blue) that are easy to tell apart.
fn images() -> (Image, Image) {
    (
        solid(96, 64, RED, ImageFormat::Jpeg),
        solid(40, 20, BLUE, ImageFormat::Png),
    )
}

fn config(fake_url: String) -> ThinkerConfig {
    ThinkerConfig {
        base_url: fake_url,
        retry_base_ms: 1,
        ..Default::default()
    }
}

async fn ask(cfg: &ThinkerConfig) -> Result<String, ThinkerError> {
    let thinker = build_thinker(cfg).expect("valid config");
    let (source, edited) = images();
    thinker
        .critique(CritiqueRequest {
            source: &source,
            edited: &edited,
            original_instruction: "make the cup red",
            previous_instruction: "turn the cup red",
            turn: 1,
            thinking: &NoThinking,
        })
        .await
}

#[tokio::test]
async fn editthinker_request_carries_images_prompt_and_model() {
    let fake = Fake::start(vec![Reply::content(ANSWER)]).await;
    let answer = ask(&config(fake.base_url())).await.unwrap();
    assert_eq!(answer, ANSWER);
    assert!(parse_editthinker(&answer).is_ok());

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.authorization(), None, "no key configured, no header");
    assert_eq!(req.body["model"], "EditThinker-8B");
    assert_eq!(req.body["max_tokens"], 4096);
    assert!(
        req.body.get("temperature").is_none(),
        "server default wanted"
    );
    assert!(req.body.get("response_format").is_none());

    // Two images, then the text; source first.
    let parts = req.parts();
    assert_eq!(parts.len(), 3);
    let images = req.images();
    assert_eq!(images.len(), 2);
    assert_eq!((images[0].width(), images[0].height()), (96, 64));
    // The 20 px side is padded up to the vision model's 32 px minimum.
    assert_eq!((images[1].width(), images[1].height()), (40, 32));
    let near = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| x.abs_diff(y) < 40);
    assert!(near(centre(&images[0]), RED), "source first");
    assert!(near(centre(&images[1]), BLUE), "edited second");

    let text = req.text();
    assert!(text.contains("make the cup red"));
    assert!(text.contains("turn the cup red"));
    assert!(text.contains("<score>") && text.contains("<answer>"));
    assert!(!text.contains("{original_instruction}") && !text.contains("{rewritten_prompt}"));
}

#[tokio::test]
async fn images_are_scaled_to_max_image_edge() {
    let fake = Fake::start(vec![Reply::content(ANSWER)]).await;
    let cfg = ThinkerConfig {
        max_image_edge: 48,
        ..config(fake.base_url())
    };
    ask(&cfg).await.unwrap();
    let images = fake.seen()[0].images();
    assert_eq!((images[0].width(), images[0].height()), (48, 32));
    assert_eq!((images[1].width(), images[1].height()), (40, 32));
}

#[tokio::test]
async fn expert_structured_sends_json_schema() {
    let verdict = r#"{"is_satisfied": false, "reason": "wrong cup", "new_rewritten_prompt": "Make the left cup red."}"#;
    let fake = Fake::start(vec![Reply::content(verdict)]).await;
    let cfg = ThinkerConfig {
        protocol: Protocol::Expert,
        model: "gpt-4.1".into(),
        ..config(fake.base_url())
    };
    let thinker = build_thinker(&cfg).unwrap();
    assert_eq!(thinker.protocol(), Protocol::Expert);
    let answer = ask(&cfg).await.unwrap();
    assert_eq!(answer, verdict);
    assert_eq!(
        Protocol::Expert.parse(&answer).unwrap().is_satisfied,
        Some(false)
    );

    let req = &fake.seen()[0];
    assert_eq!(req.body["model"], "gpt-4.1");
    let format = &req.body["response_format"];
    assert_eq!(format["type"], "json_schema");
    assert!(format["json_schema"]["name"].is_string());
    let schema = &format["json_schema"]["schema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(
        schema["required"],
        json!(["is_satisfied", "reason", "new_rewritten_prompt"])
    );
    assert_eq!(schema["properties"]["is_satisfied"]["type"], "boolean");
    let text = req.text();
    assert!(text.contains("\"is_satisfied\""), "expert prompt expected");
    assert!(text.contains("make the cup red") && text.contains("turn the cup red"));
    assert!(!text.contains("<score>"));
}

#[tokio::test]
async fn expert_unstructured_omits_response_format_and_sends_temperature() {
    let fake = Fake::start(vec![Reply::content("{}")]).await;
    let cfg = ThinkerConfig {
        protocol: Protocol::Expert,
        structured: false,
        temperature: Some(0.25),
        max_tokens: 300,
        ..config(fake.base_url())
    };
    ask(&cfg).await.unwrap();
    let req = &fake.seen()[0];
    assert!(req.body.get("response_format").is_none());
    assert_eq!(req.body["temperature"], 0.25);
    assert_eq!(req.body["max_tokens"], 300);
}

#[tokio::test]
async fn structured_is_ignored_for_the_editthinker_protocol() {
    let fake = Fake::start(vec![Reply::content(ANSWER)]).await;
    let cfg = ThinkerConfig {
        structured: true,
        ..config(fake.base_url())
    };
    ask(&cfg).await.unwrap();
    assert!(fake.seen()[0].body.get("response_format").is_none());
}

#[tokio::test]
async fn template_file_replaces_the_default_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompt.txt");
    std::fs::write(
        &path,
        "Goal: {original_instruction}\nUsed: {rewritten_prompt}\nReply as <score>{\"semantic\": n, \"quality\": n}</score>.",
    )
    .unwrap();
    let fake = Fake::start(vec![Reply::content(ANSWER)]).await;
    let cfg = ThinkerConfig {
        prompt_template_file: Some(path),
        ..config(fake.base_url())
    };
    ask(&cfg).await.unwrap();
    assert_eq!(
        fake.seen()[0].text(),
        "Goal: make the cup red\nUsed: turn the cup red\nReply as <score>{\"semantic\": n, \"quality\": n}</score>."
    );
}

#[tokio::test]
async fn base_url_with_trailing_slash_works() {
    let fake = Fake::start(vec![Reply::content(ANSWER)]).await;
    ask(&config(format!("{}/", fake.base_url()))).await.unwrap();
    assert_eq!(fake.seen()[0].path, "/v1/chat/completions");
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let fake = Fake::start(vec![
        Reply::error(429, "slow down").header("retry-after", "1"),
        Reply::content(ANSWER),
    ])
    .await;
    let started = Instant::now();
    let answer = ask(&config(fake.base_url())).await.unwrap();
    assert_eq!(answer, ANSWER);
    assert_eq!(fake.seen().len(), 2);
    // retry_base_ms is 1, so only Retry-After explains a wait this long.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_error_is_retried_then_succeeds() {
    let fake = Fake::start(vec![
        Reply::error(500, "boom"),
        Reply::raw(503, "upstream unavailable"),
        Reply::content(ANSWER),
    ])
    .await;
    assert_eq!(ask(&config(fake.base_url())).await.unwrap(), ANSWER);
    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    // Every attempt sends the same request.
    assert_eq!(seen[0].body, seen[2].body);
}

#[tokio::test]
async fn gives_up_after_max_retries_as_transient() {
    let fake = Fake::start(vec![
        Reply::error(502, "bad gateway"),
        Reply::error(502, "bad gateway"),
        Reply::error(502, "still bad"),
        Reply::content(ANSWER),
    ])
    .await;
    let cfg = ThinkerConfig {
        max_retries: 2,
        ..config(fake.base_url())
    };
    match ask(&cfg).await {
        Err(ThinkerError::Transient(m)) => {
            assert!(m.contains("3 attempt"), "{m}");
            assert!(m.contains("still bad"), "{m}");
        }
        other => panic!("expected Transient, got {other:?}"),
    }
    assert_eq!(fake.seen().len(), 3);
    assert_eq!(fake.unused_replies(), 1);
}

#[tokio::test]
async fn zero_retries_means_one_attempt() {
    let fake = Fake::start(vec![Reply::error(429, "busy"), Reply::content(ANSWER)]).await;
    let cfg = ThinkerConfig {
        max_retries: 0,
        ..config(fake.base_url())
    };
    assert!(matches!(ask(&cfg).await, Err(ThinkerError::Transient(_))));
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn unauthorized_and_forbidden_are_auth_without_retry() {
    for status in [401, 403] {
        let fake = Fake::start(vec![
            Reply::error(status, "Incorrect API key provided"),
            Reply::content(ANSWER),
        ])
        .await;
        match ask(&config(fake.base_url())).await {
            Err(ThinkerError::Auth(m)) => assert!(m.contains("Incorrect API key"), "{m}"),
            other => panic!("{status}: expected Auth, got {other:?}"),
        }
        assert_eq!(fake.seen().len(), 1, "{status} must not be retried");
    }
}

#[tokio::test]
async fn not_found_is_invalid_with_the_server_message() {
    let fake = Fake::start(vec![Reply::error(
        404,
        "The model `EditThinker-8B` does not exist.",
    )])
    .await;
    match ask(&config(fake.base_url())).await {
        Err(ThinkerError::Invalid(m)) => {
            assert!(m.contains("404"), "{m}");
            assert!(m.contains("does not exist"), "{m}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn wrong_base_url_path_is_invalid() {
    let fake = Fake::start(vec![]).await;
    let url = format!("http://{}/api", fake.addr);
    match ask(&config(url)).await {
        Err(ThinkerError::Invalid(m)) => assert!(m.contains("404"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(fake.seen()[0].path, "/api/chat/completions");
}

#[tokio::test]
async fn bad_request_is_invalid_without_retry() {
    let fake = Fake::start(vec![Reply::error(400, "max_tokens is too large")]).await;
    match ask(&config(fake.base_url())).await {
        Err(ThinkerError::Invalid(m)) => assert!(m.contains("max_tokens is too large"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn malformed_success_body_is_transient() {
    for body in [
        "this is not json".to_string(),
        json!({"choices": []}).to_string(),
        json!({"choices": [{"message": {"role": "assistant"}}]}).to_string(),
        json!({"choices": [{"message": {"content": null}}]}).to_string(),
    ] {
        let fake = Fake::start(vec![Reply::raw(200, &body)]).await;
        match ask(&config(fake.base_url())).await {
            Err(ThinkerError::Transient(m)) => {
                assert!(m.contains("choices[0].message.content"), "{m}")
            }
            other => panic!("{body}: expected Transient, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn reasoning_split_out_by_the_server_is_kept() {
    let fake = Fake::start(vec![Reply::json(
        200,
        json!({"choices": [{"message": {
            "content": "<score>{\"semantic\": 5, \"quality\": 6}</score><answer>x</answer>",
            "reasoning_content": "The cup is pink, not red."
        }}]}),
    )])
    .await;
    let answer = ask(&config(fake.base_url())).await.unwrap();
    let critique = parse_editthinker(&answer).unwrap();
    assert_eq!(critique.reasoning, "The cup is pink, not red.");
}

#[tokio::test]
async fn connection_refused_is_transient_after_retries() {
    let cfg = ThinkerConfig {
        max_retries: 1,
        ..config(dead_base_url().await)
    };
    match ask(&cfg).await {
        Err(ThinkerError::Transient(m)) => assert!(m.contains("2 attempt"), "{m}"),
        other => panic!("expected Transient, got {other:?}"),
    }
}

#[tokio::test]
async fn timeout_is_transient() {
    let fake = Fake::start(vec![Reply::content(ANSWER).delayed(Duration::from_secs(5))]).await;
    let cfg = ThinkerConfig {
        timeout_seconds: 1,
        max_retries: 0,
        ..config(fake.base_url())
    };
    let started = Instant::now();
    match ask(&cfg).await {
        Err(ThinkerError::Transient(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("expected Transient, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}
