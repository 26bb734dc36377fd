//! The verifier (`[verifier]`): the `openai` kind against a fake
//! chat-completions server on loopback that records what it receives, the
//! answer parser, the configuration's checks, and the `sandbox` kind.

mod common;

use std::collections::HashSet;

use common::{centre, dead_base_url, solid, Fake, Reply};
use editthinker_core::{
    Image, ThinkerError, Tokens, Verifier, VerifierAnswer, VerifierScore, VerifyRequest,
};
use editthinker_thinker::{
    build_verifier, parse_verifier_score, OpenAiVerifier, SandboxVerifier, VerifierConfig,
    VerifierKind, VerifierPrompt, VerifierProtocol, DEFAULT_VERIFIER_PROMPT,
};
use image::ImageFormat;
use serde_json::json;

const RED: [u8; 3] = [220, 20, 20];
const BLUE: [u8; 3] = [20, 20, 220];
const INSTRUCTION: &str = "make the {cup} on the left blue";

/// A source (JPEG, 96×64, red) and an edit (PNG, 40×20, blue) that are
/// easy to tell apart.
fn images() -> (Image, Image) {
    (
        solid(96, 64, RED, ImageFormat::Jpeg),
        solid(40, 20, BLUE, ImageFormat::Png),
    )
}

fn config(base_url: String) -> VerifierConfig {
    VerifierConfig {
        base_url,
        retry_base_ms: 1,
        ..Default::default()
    }
}

async fn score_with(verifier: &dyn Verifier) -> Result<VerifierAnswer, ThinkerError> {
    let (source, edited) = images();
    verifier
        .score(VerifyRequest {
            source: &source,
            edited: &edited,
            instruction: INSTRUCTION,
            turn: 2,
            candidate: 1,
        })
        .await
}

async fn score(cfg: &VerifierConfig) -> Result<VerifierAnswer, ThinkerError> {
    let verifier = cfg.build().expect("valid config");
    score_with(verifier.as_ref()).await
}

/// Scores once against a fake that answers `replies`; returns the result
/// and the fake, for its record of requests.
async fn score_against(replies: Vec<Reply>) -> (Result<VerifierAnswer, ThinkerError>, Fake) {
    let fake = Fake::start(replies).await;
    let result = score(&config(fake.base_url())).await;
    (result, fake)
}

fn expect_invalid<T: std::fmt::Debug>(result: Result<T, ThinkerError>) -> String {
    match result {
        Err(ThinkerError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn config_error(cfg: &VerifierConfig) -> (String, String) {
    match cfg.build() {
        Ok(_) => panic!("built a verifier from {cfg:?}"),
        Err(e) => (e.key().to_string(), e.to_string()),
    }
}

#[tokio::test]
async fn request_carries_both_images_the_instruction_and_the_model() {
    let (result, fake) =
        score_against(vec![Reply::content(r#"{"semantic": 7, "quality": 9}"#)]).await;
    let answer = result.unwrap();
    assert_eq!(answer.score, VerifierScore::from_parts(7.0, 9.0));
    assert_eq!(answer.score.semantic, Some(7.0));
    assert_eq!(answer.score.quality, Some(9.0));
    assert!((answer.score.overall - 63f64.sqrt()).abs() < 1e-12);
    assert_eq!(answer.tokens, Tokens::default(), "no usage, no tokens");

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.authorization(), None, "no key configured, no header");
    assert_eq!(req.body["model"], "EditScore");
    assert_eq!(req.body["max_tokens"], 256);
    assert_eq!(req.body["temperature"], 0.0);
    assert!(req.body.get("stream").is_none(), "one plain answer");
    assert!(req.body.get("response_format").is_none());

    // Two images, then the text; source first. The edit's 20 px side is
    // padded up to the vision model's 32 px minimum.
    assert_eq!(req.parts().len(), 3);
    let images: Vec<_> = req
        .images()
        .iter()
        .map(|i| ((i.width(), i.height()), centre(i)))
        .collect();
    let close = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| x.abs_diff(y) < 40);
    assert!(
        matches!(&images[..], [(s, sc), (e, ec)]
            if *s == (96, 64) && *e == (40, 32) && close(*sc, RED) && close(*ec, BLUE)),
        "source, then edit: {images:?}"
    );

    // Our prompt, with the instruction put in as it is (its braces too).
    let text = req.text();
    assert_eq!(
        text,
        DEFAULT_VERIFIER_PROMPT.replace("{instruction}", INSTRUCTION)
    );
    assert!(text.contains(INSTRUCTION));
    assert!(text.contains(r#"{"semantic": <0-10>, "quality": <0-10>}"#));
    assert!(!text.contains("{instruction}"));
}

#[tokio::test]
async fn settings_reach_the_request() {
    let fake = Fake::start(vec![Reply::content(r#"{"score": 5}"#)]).await;
    let cfg = VerifierConfig {
        model: " EditReward-7B ".into(),
        max_image_edge: 48,
        temperature: None,
        max_tokens: 64,
        ..config(fake.base_url())
    };
    score(&cfg).await.unwrap();
    let req = &fake.seen()[0];
    assert_eq!(req.body["model"], "EditReward-7B");
    assert_eq!(req.body["max_tokens"], 64);
    assert!(req.body.get("temperature").is_none(), "server default");
    let images = req.images();
    assert_eq!((images[0].width(), images[0].height()), (48, 32));
    assert_eq!((images[1].width(), images[1].height()), (40, 32));
}

#[tokio::test]
async fn bearer_key_comes_from_the_named_environment_variable() {
    // A variable cargo sets for every test run: the test needs not change
    // the process environment (other tests run on other threads).
    let key = std::env::var("CARGO_PKG_NAME").expect("run under cargo");
    let fake = Fake::start(vec![Reply::content(r#"{"semantic": 5, "quality": 5}"#)]).await;
    let cfg = VerifierConfig {
        api_key_env: Some("CARGO_PKG_NAME".into()),
        ..config(fake.base_url())
    };
    let verifier = OpenAiVerifier::from_config(&cfg).unwrap();
    assert_eq!(
        verifier.endpoint(),
        format!("{}/chat/completions", fake.base_url())
    );
    assert!(!format!("{verifier:?}").contains(&format!("\"{key}\"")));
    score_with(&verifier).await.unwrap();
    let seen = fake.seen();
    assert_eq!(
        seen[0].authorization(),
        Some(format!("Bearer {key}").as_str())
    );
    assert!(!seen[0].body.to_string().contains("Bearer"));
}

#[tokio::test]
async fn a_single_score_answer_is_accepted() {
    let (result, _fake) = score_against(vec![Reply::content(r#"{"score": 6.5}"#)]).await;
    let score = result.unwrap().score;
    assert_eq!(score, VerifierScore::single(6.5));
    assert_eq!((score.semantic, score.quality), (None, None));
    assert_eq!(score.overall, 6.5);
}

#[tokio::test]
async fn a_fenced_answer_in_prose_is_found() {
    let content = "Here is my assessment of the edit.\n\n```json\n{\n  \"semantic\": \"8\",\n  \"quality\": 7.5\n}\n```\nI hope this helps.";
    let (result, _fake) = score_against(vec![Reply::content(content)]).await;
    assert_eq!(result.unwrap().score, VerifierScore::from_parts(8.0, 7.5));
}

#[tokio::test]
async fn an_out_of_range_score_is_invalid_and_not_retried() {
    let (result, fake) = score_against(vec![
        Reply::content(r#"{"semantic": 12, "quality": 5}"#),
        Reply::content(r#"{"semantic": 5, "quality": 5}"#),
    ])
    .await;
    let message = expect_invalid(result);
    assert!(message.contains("semantic = 12"), "{message}");
    assert!(message.contains("outside 0 to 10"), "{message}");
    assert!(message.contains(r#""quality": 5"#), "excerpt: {message}");
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn an_answer_without_a_score_is_invalid_with_an_excerpt() {
    let (result, _fake) =
        score_against(vec![Reply::content("The edit looks great, I'd say 9/10.")]).await;
    let message = expect_invalid(result);
    assert!(message.contains("no JSON object"), "{message}");
    assert!(message.contains("I'd say 9/10"), "{message}");
}

#[tokio::test]
async fn a_transient_failure_is_retried() {
    let (result, fake) = score_against(vec![
        Reply::error(503, "loading the model"),
        Reply::content(r#"{"semantic": 9, "quality": 8}"#),
    ])
    .await;
    assert_eq!(result.unwrap().score, VerifierScore::from_parts(9.0, 8.0));
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, seen[1].body, "the same request again");
}

#[tokio::test]
async fn retries_give_up_as_transient() {
    let fake = Fake::start(vec![
        Reply::error(500, "boom"),
        Reply::error(502, "bad gateway"),
    ])
    .await;
    let cfg = VerifierConfig {
        max_retries: 1,
        ..config(fake.base_url())
    };
    match score(&cfg).await {
        Err(ThinkerError::Transient(m)) => {
            assert!(m.contains("after 2 attempt(s)"), "{m}");
            assert!(m.contains("bad gateway"), "{m}");
        }
        other => panic!("expected Transient, got {other:?}"),
    }
    assert_eq!(fake.seen().len(), 2);

    let cfg = VerifierConfig {
        max_retries: 0,
        ..config(dead_base_url().await)
    };
    assert!(matches!(score(&cfg).await, Err(ThinkerError::Transient(_))));
}

#[tokio::test]
async fn unauthorized_is_auth_without_retry() {
    let (result, fake) = score_against(vec![
        Reply::error(401, "Incorrect API key provided"),
        Reply::content(r#"{"score": 5}"#),
    ])
    .await;
    match result {
        Err(ThinkerError::Auth(m)) => {
            assert!(m.contains("Incorrect API key"), "{m}");
            assert!(m.contains("HTTP 401"), "{m}");
            assert!(m.contains("the verifier at"), "{m}");
            assert!(m.contains("verifier.api_key_env"), "{m}");
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn not_found_is_invalid_naming_the_keys() {
    let (result, fake) = score_against(vec![Reply::error(
        404,
        "The model `EditScore` does not exist.",
    )])
    .await;
    let message = expect_invalid(result);
    assert!(message.contains("unknown model \"EditScore\""), "{message}");
    assert!(
        message.contains("verifier.model, verifier.base_url"),
        "{message}"
    );
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn tokens_are_reported() {
    let mut body = common::completion(r#"{"semantic": 6, "quality": 7}"#);
    body["usage"] = json!({"prompt_tokens": 1234, "completion_tokens": 17, "total_tokens": 1251});
    let (result, _fake) = score_against(vec![Reply::json(200, body)]).await;
    let answer = result.unwrap();
    assert_eq!(
        answer.tokens,
        Tokens {
            input: 1234,
            output: 17
        }
    );
    assert_eq!(answer.score, VerifierScore::from_parts(6.0, 7.0));
}

#[tokio::test]
async fn a_200_without_choices_is_transient() {
    let (result, _fake) = score_against(vec![Reply::json(200, json!({"id": "x"}))]).await;
    assert!(
        matches!(result, Err(ThinkerError::Transient(ref m)) if m.contains("without choices")),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_operator_prompt_replaces_ours() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verifier-prompt.txt");
    std::fs::write(
        &path,
        "Judge this edit: {instruction}\nAnswer {\"score\": 0-10}.",
    )
    .unwrap();
    let fake = Fake::start(vec![Reply::content(r#"{"score": 3}"#)]).await;
    let cfg = VerifierConfig {
        prompt_template_file: Some(path),
        ..config(fake.base_url())
    };
    assert_eq!(score(&cfg).await.unwrap().score, VerifierScore::single(3.0));
    assert_eq!(
        fake.seen()[0].text(),
        format!("Judge this edit: {INSTRUCTION}\nAnswer {{\"score\": 0-10}}.")
    );
}

#[test]
fn the_parser_takes_the_last_scored_object() {
    let cases = [
        (
            r#"{"semantic": 0, "quality": 10}"#,
            VerifierScore::from_parts(0.0, 10.0),
        ),
        (r#"  {"score": "7.5"}  "#, VerifierScore::single(7.5)),
        // Reasoning first, with a draft of its own: the final object counts.
        (
            r#"<think>{"semantic": 1, "quality": 1} seems too harsh</think>{"semantic": 6, "quality": 8}"#,
            VerifierScore::from_parts(6.0, 8.0),
        ),
        // Both forms: the pair wins.
        (
            r#"{"semantic": 4, "quality": 9, "score": 6}"#,
            VerifierScore::from_parts(4.0, 9.0),
        ),
        // Unrelated objects around it are skipped.
        (
            r#"{"note": "x"} then {"semantic": 2, "quality": 3, "details": {"a": 1}}"#,
            VerifierScore::from_parts(2.0, 3.0),
        ),
        (
            r#"{"score": 10, "semantic": null}"#,
            VerifierScore::single(10.0),
        ),
    ];
    for (answer, expected) in cases {
        assert_eq!(parse_verifier_score(answer), Ok(expected), "{answer}");
    }
}

#[test]
fn the_parser_refuses_what_is_not_a_score() {
    let cases = [
        ("", "no JSON object"),
        ("9/10", "no JSON object"),
        (r#"{"overall": 7}"#, "no JSON object"),
        (r#"{"semantic": 7}"#, "\"semantic\" without \"quality\""),
        (r#"{"quality": 7}"#, "\"quality\" without \"semantic\""),
        (
            r#"{"semantic": -1, "quality": 5}"#,
            "semantic = -1, outside 0 to 10",
        ),
        (r#"{"score": 10.5}"#, "score = 10.5, outside 0 to 10"),
        (r#"{"score": "high"}"#, "score = \"high\", not a number"),
        (r#"{"score": "NaN"}"#, "not a number"),
        (r#"{"score": "inf"}"#, "not a number"),
        (r#"{"score": true}"#, "score = true, not a number"),
        (r#"{"semantic": [7], "quality": 5}"#, "not a number"),
        (r#"{"score": null}"#, "gives no score"),
    ];
    for (answer, why) in cases {
        let message = expect_invalid(parse_verifier_score(answer));
        assert!(message.contains(why), "{answer}: {message}");
        assert!(message.starts_with("the verifier's answer"), "{message}");
    }
    // The excerpt is bounded.
    let long = format!("no score here {}", "x".repeat(5000));
    let message = expect_invalid(parse_verifier_score(&long));
    assert!(message.len() < 1000, "{}", message.len());
}

#[test]
fn an_empty_section_gives_the_defaults() {
    let cfg: VerifierConfig = serde_json::from_value(json!({})).unwrap();
    assert_eq!(cfg, VerifierConfig::default());
    assert_eq!(cfg.kind, VerifierKind::Openai);
    assert_eq!(cfg.protocol, VerifierProtocol::Score);
    assert_eq!(cfg.base_url, "http://127.0.0.1:8001/v1");
    assert_eq!(cfg.model, "EditScore");
    assert_eq!(cfg.api_key_env, None);
    assert_eq!(cfg.prompt_template_file, None);
    assert_eq!((cfg.max_image_edge, cfg.max_tokens), (1024, 256));
    assert_eq!(cfg.temperature, Some(0.0));
    assert_eq!(
        (cfg.timeout_seconds, cfg.max_retries, cfg.retry_base_ms),
        (120, 3, 500)
    );
    assert_eq!(cfg.prices_per_million(), (0.0, 0.0));
    cfg.validate().unwrap();
    assert!(build_verifier(&cfg).is_ok());
}

#[test]
fn every_key_deserializes() {
    let cfg: VerifierConfig = serde_json::from_value(json!({
        "kind": "sandbox", "protocol": "score", "base_url": "https://v.example/v1",
        "model": "m", "api_key_env": "K", "prompt_template_file": "/tmp/p.txt",
        "max_image_edge": 512, "temperature": 0.2, "max_tokens": 32, "timeout_seconds": 9,
        "max_retries": 1, "retry_base_ms": 10, "price_per_million_input_tokens": 0.5,
        "price_per_million_output_tokens": 2.0
    }))
    .unwrap();
    assert_eq!(cfg.kind, VerifierKind::Sandbox);
    assert_eq!(cfg.prices_per_million(), (0.5, 2.0));
    assert_eq!(cfg.temperature, Some(0.2));
    let text = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<VerifierConfig>(&text).unwrap(), cfg);
}

#[test]
fn unknown_keys_kinds_and_protocols_are_rejected() {
    let e = serde_json::from_value::<VerifierConfig>(json!({"base_ulr": "x"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("base_ulr"), "{e}");
    assert!(serde_json::from_value::<VerifierConfig>(json!({"kind": "vllm"})).is_err());
    assert!(serde_json::from_value::<VerifierConfig>(json!({"protocol": "pairwise"})).is_err());
    // The thinker's keys are not the verifier's.
    assert!(serde_json::from_value::<VerifierConfig>(json!({"stream": true})).is_err());
}

#[test]
fn config_errors_name_the_key() {
    let cases = [
        (
            VerifierConfig {
                base_url: "ftp://host/v1".into(),
                ..Default::default()
            },
            "verifier.base_url",
        ),
        (
            VerifierConfig {
                base_url: "http://h/v1?x=1".into(),
                ..Default::default()
            },
            "verifier.base_url",
        ),
        (
            VerifierConfig {
                model: "  ".into(),
                ..Default::default()
            },
            "verifier.model",
        ),
        (
            VerifierConfig {
                max_image_edge: 16,
                ..Default::default()
            },
            "verifier.max_image_edge",
        ),
        (
            VerifierConfig {
                temperature: Some(-0.5),
                ..Default::default()
            },
            "verifier.temperature",
        ),
        (
            VerifierConfig {
                max_tokens: 0,
                ..Default::default()
            },
            "verifier.max_tokens",
        ),
        (
            VerifierConfig {
                timeout_seconds: 0,
                ..Default::default()
            },
            "verifier.timeout_seconds",
        ),
        (
            VerifierConfig {
                price_per_million_input_tokens: Some(-1.0),
                ..Default::default()
            },
            "verifier.price_per_million_input_tokens",
        ),
        (
            VerifierConfig {
                price_per_million_output_tokens: Some(f64::NAN),
                ..Default::default()
            },
            "verifier.price_per_million_output_tokens",
        ),
        (
            VerifierConfig {
                prompt_template_file: Some("/nonexistent/editthinker/verifier.txt".into()),
                ..Default::default()
            },
            "verifier.prompt_template_file",
        ),
    ];
    for (cfg, key) in cases {
        let (got, message) = config_error(&cfg);
        assert_eq!(got, key, "{message}");
        assert!(message.starts_with(&format!("{key}: ")), "{message}");
        assert_eq!(cfg.validate().unwrap_err().key(), key);
    }
}

#[test]
fn the_api_key_variable_is_read_by_build_only() {
    let cfg = VerifierConfig {
        api_key_env: Some("EDITTHINKER_TEST_SURELY_UNSET_VERIFIER_KEY".into()),
        ..Default::default()
    };
    // An `api` replica validates the section without the secret.
    cfg.validate().unwrap();
    let (key, message) = config_error(&cfg);
    assert_eq!(key, "verifier.api_key_env");
    assert_eq!(
        message,
        "verifier.api_key_env: environment variable EDITTHINKER_TEST_SURELY_UNSET_VERIFIER_KEY \
         is not set"
    );
}

#[test]
fn an_operator_prompt_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let with = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        VerifierConfig {
            prompt_template_file: Some(path),
            ..Default::default()
        }
    };
    let (key, message) = config_error(&with("missing.txt", "Score the edit as JSON."));
    assert_eq!(key, "verifier.prompt_template_file");
    assert!(
        message.contains("lacks the placeholder {instruction}"),
        "{message}"
    );
    let (_, message) = config_error(&with("unknown.txt", "{instruction} {original_instruction}"));
    assert!(
        message.contains("unknown placeholder {original_instruction}"),
        "{message}"
    );
    let (_, message) = config_error(&with("typo.txt", "{instuction}"));
    assert!(
        message.contains("unknown placeholder {instuction}"),
        "{message}"
    );
    // Literal JSON is no placeholder.
    assert!(with("ok.txt", "{instruction}\n{\"score\": 5}")
        .build()
        .is_ok());

    let prompt = VerifierPrompt::parse("Do: {instruction} ({instruction})").unwrap();
    assert_eq!(
        prompt.render("x {instruction}"),
        "Do: x {instruction} (x {instruction})"
    );
    assert_eq!(VerifierPrompt::default().text(), DEFAULT_VERIFIER_PROMPT);
    assert!(VerifierPrompt::parse(DEFAULT_VERIFIER_PROMPT).is_ok());
}

#[tokio::test]
async fn the_sandbox_is_deterministic_and_tells_images_apart() {
    let cfg: VerifierConfig = serde_json::from_value(json!({
        // Server keys are ignored: the sandbox calls nothing.
        "kind": "sandbox", "base_url": "http://127.0.0.1:9/v1", "max_retries": 0
    }))
    .unwrap();
    let verifier = cfg.build().unwrap();
    let source = solid(64, 48, RED, ImageFormat::Png);
    let ask = |edited: Image| {
        let (verifier, source) = (verifier.clone(), source.clone());
        async move {
            verifier
                .score(VerifyRequest {
                    source: &source,
                    edited: &edited,
                    instruction: INSTRUCTION,
                    turn: 1,
                    candidate: 0,
                })
                .await
                .unwrap()
        }
    };

    let edited = solid(64, 48, BLUE, ImageFormat::Png);
    let first = ask(edited.clone()).await;
    assert_eq!(ask(edited.clone()).await, first, "same image, same score");
    assert_eq!(first.tokens, Tokens::default());
    assert_eq!(first.score, SandboxVerifier::score_of(&edited));

    let mut seen = HashSet::new();
    for shade in 0..8u8 {
        let answer = ask(solid(
            64,
            48,
            [shade * 30, 90, 200 - shade],
            ImageFormat::Png,
        ))
        .await;
        let score = answer.score;
        for part in [score.semantic.unwrap(), score.quality.unwrap()] {
            assert!((0.0..=10.0).contains(&part), "{score:?}");
            assert_eq!((part * 10.0).round() / 10.0, part, "one decimal: {score:?}");
        }
        assert_eq!(
            score,
            VerifierScore::from_parts(score.semantic.unwrap(), score.quality.unwrap())
        );
        seen.insert((
            score.semantic.unwrap().to_bits(),
            score.quality.unwrap().to_bits(),
        ));
    }
    assert_eq!(seen.len(), 8, "distinct candidates, distinct scores");
}

#[test]
fn the_sandbox_refuses_an_api_key() {
    let cfg = VerifierConfig {
        kind: VerifierKind::Sandbox,
        api_key_env: Some("X".into()),
        ..Default::default()
    };
    let (key, message) = config_error(&cfg);
    assert_eq!(key, "verifier.api_key_env");
    assert!(
        message.contains("does not apply to kind = \"sandbox\""),
        "{message}"
    );
    // The keys every kind shares are still checked.
    let cfg = VerifierConfig {
        kind: VerifierKind::Sandbox,
        max_tokens: 0,
        ..Default::default()
    };
    assert_eq!(config_error(&cfg).0, "verifier.max_tokens");
}
