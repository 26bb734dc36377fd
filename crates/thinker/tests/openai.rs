//! The `openai` thinker against a fake chat-completions server on loopback.

mod common;

use std::time::{Duration, Instant};

use common::{
    centre, chunk, content_chunk, dead_base_url, finish_chunk, settings, solid, End, Fake,
    Recorder, Reply,
};
use editthinker_core::{
    parse_editthinker, parse_expert, CritiqueRequest, Image, NoThinking, PromptTemplate, Protocol,
    Thinker, ThinkerAnswer, ThinkerError, ThinkingSink, Tokens,
};
use editthinker_thinker::{build_thinker, OpenAiSettings, OpenAiThinker, ThinkerConfig};
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
    ask_with(cfg, &NoThinking).await
}

async fn ask_with(cfg: &ThinkerConfig, sink: &dyn ThinkingSink) -> Result<String, ThinkerError> {
    answer_with(cfg, sink).await.map(|a| a.text)
}

async fn answer_with(
    cfg: &ThinkerConfig,
    sink: &dyn ThinkingSink,
) -> Result<ThinkerAnswer, ThinkerError> {
    let thinker = build_thinker(cfg).expect("valid config");
    answer_thinker(thinker.as_ref(), sink).await
}

async fn ask_thinker(
    thinker: &dyn Thinker,
    sink: &dyn ThinkingSink,
) -> Result<String, ThinkerError> {
    answer_thinker(thinker, sink).await.map(|a| a.text)
}

async fn answer_thinker(
    thinker: &dyn Thinker,
    sink: &dyn ThinkingSink,
) -> Result<ThinkerAnswer, ThinkerError> {
    let (source, edited) = images();
    thinker
        .critique(CritiqueRequest {
            source: &source,
            edited: &edited,
            original_instruction: "make the cup red",
            previous_instruction: "turn the cup red",
            turn: 1,
            history: &[],
            thinking: sink,
        })
        .await
}

fn expect_transient(result: Result<String, ThinkerError>) -> String {
    match result {
        Err(ThinkerError::Transient(m)) => m,
        other => panic!("expected Transient, got {other:?}"),
    }
}

fn expect_invalid(result: Result<String, ThinkerError>) -> String {
    match result {
        Err(ThinkerError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
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
    assert_eq!(req.body["stream"], true, "streaming is the default");
    assert!(req.body.get("stream_options").is_none());

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
    assert_eq!(format["json_schema"]["name"], "edit_verdict");
    assert_eq!(format["json_schema"]["strict"], true);
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["properties"]["is_satisfied"]["type"], "boolean");
    assert_eq!(schema["properties"]["reason"]["type"], "string");
    assert_eq!(
        schema["properties"]["new_rewritten_prompt"]["type"],
        json!(["string", "null"])
    );
    // The whole default expert prompt, rendered, is the text part.
    let text = req.text();
    assert_eq!(
        text,
        PromptTemplate::default_for(Protocol::Expert)
            .render("make the cup red", "turn the cup red")
    );
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
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_retry_after_past_the_cap_ends_the_retries_at_once() {
    let fake = Fake::start(vec![
        Reply::error(429, "come back tomorrow").header("retry-after", "121"),
        Reply::content(ANSWER),
    ])
    .await;
    let started = Instant::now();
    match ask(&config(fake.base_url())).await {
        Err(ThinkerError::Transient(m)) => assert!(m.contains("121s"), "{m}"),
        other => panic!("expected Transient, got {other:?}"),
    }
    assert_eq!(fake.seen().len(), 1, "not retried");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(fake.unused_replies(), 1);
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
            Err(ThinkerError::Auth(m)) => {
                assert!(m.contains("Incorrect API key"), "{m}");
                assert!(m.contains(&format!("HTTP {status}")), "{m}");
                // No key was configured: the message says so and names the setting.
                assert!(m.contains("none was sent"), "{m}");
                assert!(m.contains("thinker.api_key_env"), "{m}");
            }
            other => panic!("{status}: expected Auth, got {other:?}"),
        }
        assert_eq!(fake.seen().len(), 1, "{status} must not be retried");
    }
}

#[tokio::test]
async fn rejected_key_is_auth_naming_the_setting() {
    let fake = Fake::start(vec![Reply::error(401, "invalid api key")]).await;
    let thinker = OpenAiThinker::new(OpenAiSettings {
        api_key: Some("sk-test-123".into()),
        ..settings(&fake.base_url())
    })
    .unwrap();
    match ask_thinker(&thinker, &NoThinking).await {
        Err(ThinkerError::Auth(m)) => {
            assert!(m.contains("rejected the API key"), "{m}");
            assert!(m.contains("invalid api key"), "{m}");
            assert!(m.contains("thinker.api_key_env"), "{m}");
            assert!(!m.contains("sk-test-123"), "the key must not leak: {m}");
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization(), Some("Bearer sk-test-123"));
    assert!(!format!("{thinker:?}").contains("sk-test-123"));
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
            assert!(m.contains("unknown model \"EditThinker-8B\""), "{m}");
            assert!(m.contains("wrong base_url"), "{m}");
            assert!(m.contains(&fake.base_url()), "{m}");
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
        // Not retried inside the call: the worker requeues the job.
        assert_eq!(fake.seen().len(), 1);
    }
}

#[tokio::test]
async fn empty_content_is_returned_for_the_parser_to_judge() {
    // An empty answer is the model's answer: the loop's parse retry handles it.
    let fake = Fake::start(vec![Reply::json_completion("")]).await;
    assert_eq!(ask(&config(fake.base_url())).await.unwrap(), "");
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

#[tokio::test]
async fn bad_request_about_response_format_suggests_structured_false() {
    let fake = Fake::start(vec![Reply::error(
        400,
        "response_format of type json_schema is not supported by this model",
    )])
    .await;
    let cfg = ThinkerConfig {
        protocol: Protocol::Expert,
        ..config(fake.base_url())
    };
    let m = expect_invalid(ask(&cfg).await);
    assert!(m.contains("HTTP 400"), "{m}");
    assert!(m.contains("not supported by this model"), "{m}");
    assert!(m.contains("thinker.structured = false"), "{m}");
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn bad_request_about_stream_suggests_stream_false() {
    let fake = Fake::start(vec![Reply::error(400, "stream is not supported")]).await;
    let m = expect_invalid(ask(&config(fake.base_url())).await);
    assert!(m.contains("thinker.stream = false"), "{m}");
}

// --- streaming ---

#[tokio::test]
async fn streamed_deltas_reach_the_sink_in_order() {
    let pieces = [
        "<think>The cup ",
        "is still white.</think>",
        "<score>{\"semantic\": 3, \"quality\": 9}</score>",
        "<answer>Make the cup on the left red; ",
        "keep the table unchanged.</answer>",
    ];
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}))];
    events.extend(pieces.iter().map(|p| content_chunk(p)));
    events.push(finish_chunk("stop"));
    let fake = Fake::start(vec![Reply::sse(events)]).await;
    let sink = Recorder::default();
    let answer = ask_with(&config(fake.base_url()), &sink).await.unwrap();
    assert_eq!(answer, ANSWER);
    assert_eq!(
        sink.deltas(),
        pieces,
        "one delta per chunk, in order, no empties"
    );
    assert_eq!(sink.text(), answer);
    assert!(parse_editthinker(&answer).is_ok());
    assert!(fake.seen()[0].stream());
}

#[tokio::test]
async fn a_realistic_stream_with_usage_chunk_is_assembled() {
    // Reply::content streams role, three pieces, finish, a usage chunk with
    // no choices, then [DONE].
    let fake = Fake::start(vec![Reply::content(ANSWER)]).await;
    let sink = Recorder::default();
    let answer = answer_with(&config(fake.base_url()), &sink).await.unwrap();
    assert_eq!(answer.text, ANSWER);
    assert_eq!(sink.deltas().len(), 3);
    assert_eq!(sink.text(), ANSWER);
    // The usage chunk's counts reach the ledger.
    assert_eq!(
        answer.tokens,
        Tokens {
            input: 10,
            output: 5
        }
    );
}

#[tokio::test]
async fn split_out_reasoning_is_streamed_and_wrapped_in_think_tags() {
    // vLLM's reasoning parsers use `reasoning_content`, newer servers and
    // mistral.rs `reasoning`.
    for key in ["reasoning_content", "reasoning"] {
        let fake = Fake::start(vec![Reply::sse(vec![
            chunk(json!({"role": "assistant"})),
            chunk(json!({ key: "The cup " })),
            chunk(json!({ key: "is pink, not red." })),
            content_chunk("<score>{\"semantic\": 5, \"quality\": 6}</score>"),
            content_chunk("<answer>Make the cup bright red.</answer>"),
            finish_chunk("stop"),
        ])])
        .await;
        let sink = Recorder::default();
        let answer = ask_with(&config(fake.base_url()), &sink).await.unwrap();
        assert_eq!(
            answer,
            "<think>The cup is pink, not red.</think><score>{\"semantic\": 5, \"quality\": 6}</score><answer>Make the cup bright red.</answer>",
            "{key}"
        );
        assert_eq!(
            sink.text(),
            answer,
            "{key}: the sink sees the answer exactly"
        );
        assert_eq!(sink.deltas()[0], "<think>");
        assert_eq!(sink.deltas()[1], "The cup ");
        let critique = parse_editthinker(&answer).unwrap();
        assert_eq!(critique.reasoning, "The cup is pink, not red.");
        assert_eq!(critique.refined_instruction, "Make the cup bright red.");
    }
}

#[tokio::test]
async fn reasoning_without_content_is_closed() {
    let fake = Fake::start(vec![Reply::sse(vec![
        chunk(json!({"reasoning_content": "thinking until the budget ran out"})),
        finish_chunk("length"),
    ])])
    .await;
    let sink = Recorder::default();
    let answer = ask_with(&config(fake.base_url()), &sink).await.unwrap();
    assert_eq!(answer, "<think>thinking until the budget ran out</think>");
    assert_eq!(sink.text(), answer);
}

#[tokio::test]
async fn expert_stream_keeps_reasoning_out_of_the_answer() {
    let verdict = r#"{"is_satisfied": true, "reason": "red", "new_rewritten_prompt": null}"#;
    let fake = Fake::start(vec![Reply::sse(vec![
        chunk(json!({"reasoning": "Looks red. "})),
        content_chunk(&verdict[..20]),
        content_chunk(&verdict[20..]),
        finish_chunk("stop"),
    ])])
    .await;
    let cfg = ThinkerConfig {
        protocol: Protocol::Expert,
        model: "gpt-4.1".into(),
        ..config(fake.base_url())
    };
    let sink = Recorder::default();
    let answer = ask_with(&cfg, &sink).await.unwrap();
    assert_eq!(answer, verdict);
    assert_eq!(parse_expert(&answer).unwrap().is_satisfied, Some(true));
    // The sink still sees the reasoning, first.
    assert_eq!(
        sink.deltas(),
        ["Looks red. ", &verdict[..20], &verdict[20..]]
    );
    let req = &fake.seen()[0];
    assert!(req.stream());
    assert_eq!(req.body["response_format"]["type"], "json_schema");
}

#[tokio::test]
async fn length_cut_answer_is_returned() {
    let fake = Fake::start(vec![Reply::sse(vec![
        content_chunk("<think>long reasoning"),
        finish_chunk("length"),
    ])])
    .await;
    let answer = ask(&config(fake.base_url())).await.unwrap();
    assert_eq!(answer, "<think>long reasoning");
    assert_eq!(
        fake.seen().len(),
        1,
        "a cut answer is not a transport failure"
    );
}

#[tokio::test]
async fn stream_cut_mid_way_is_retried() {
    let fake = Fake::start(vec![
        Reply::sse(vec![content_chunk("<think>The cup"), content_chunk(" is")]).ending(End::Abort),
        Reply::content(ANSWER),
    ])
    .await;
    let sink = Recorder::default();
    let answer = ask_with(&config(fake.base_url()), &sink).await.unwrap();
    assert_eq!(
        answer, ANSWER,
        "only the successful attempt's text is returned"
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, seen[1].body);
    // The sink saw (some of) the broken attempt's text, then the whole new
    // answer; how much of the first arrives before the cut is up to the OS.
    let live = sink.text();
    assert!(live.starts_with("<think>The cup"), "{live}");
    assert!(live.ends_with(ANSWER), "{live}");
    assert!(live.len() > ANSWER.len(), "{live}");
}

#[tokio::test]
async fn stream_cut_every_time_ends_transient() {
    let cut = || Reply::sse(vec![content_chunk("partial")]).ending(End::Abort);
    let fake = Fake::start(vec![cut(), cut()]).await;
    let cfg = ThinkerConfig {
        max_retries: 1,
        ..config(fake.base_url())
    };
    let m = expect_transient(ask(&cfg).await);
    assert!(m.contains("2 attempt"), "{m}");
    assert!(m.contains("stream broke"), "{m}");
}

#[tokio::test]
async fn stream_closed_without_done_or_finish_is_retried() {
    let fake = Fake::start(vec![
        Reply::sse(vec![content_chunk("<think>half")]).ending(End::Close),
        Reply::content(ANSWER),
    ])
    .await;
    assert_eq!(ask(&config(fake.base_url())).await.unwrap(), ANSWER);
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn stream_with_finish_reason_but_no_done_is_complete() {
    let fake = Fake::start(vec![Reply::sse(vec![
        content_chunk(ANSWER),
        finish_chunk("stop"),
    ])
    .ending(End::Close)])
    .await;
    assert_eq!(ask(&config(fake.base_url())).await.unwrap(), ANSWER);
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn retryable_error_event_in_the_stream_is_retried() {
    let fake = Fake::start(vec![
        Reply::sse(vec![
            content_chunk("<think>"),
            json!({"error": {"message": "engine overloaded", "type": "server_error", "code": 503}}),
        ]),
        // vLLM's shape: a top-level error object.
        Reply::sse(vec![json!({"object": "error", "message": "internal", "type": "InternalServerError", "code": 500})]),
        Reply::content(ANSWER),
    ])
    .await;
    assert_eq!(ask(&config(fake.base_url())).await.unwrap(), ANSWER);
    assert_eq!(fake.seen().len(), 3);
}

#[tokio::test]
async fn error_event_with_a_client_error_code_is_final() {
    let fake = Fake::start(vec![
        Reply::sse(vec![json!({"error": {"message": "prompt is too long", "type": "invalid_request_error", "code": 400}})]),
        Reply::content(ANSWER),
    ])
    .await;
    let m = expect_invalid(ask(&config(fake.base_url())).await);
    assert!(m.contains("prompt is too long"), "{m}");
    assert!(m.contains("error event in the stream"), "{m}");
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn error_body_sent_with_200_is_classified() {
    let fake = Fake::start(vec![
        Reply::json(200, json!({"error": {"message": "busy", "code": 503}})),
        Reply::content(ANSWER),
    ])
    .await;
    assert_eq!(ask(&config(fake.base_url())).await.unwrap(), ANSWER);
    assert_eq!(fake.seen().len(), 2);

    let fake = Fake::start(vec![Reply::json(
        200,
        json!({"error": {"message": "Incorrect API key", "type": "authentication_error"}}),
    )])
    .await;
    match ask(&config(fake.base_url())).await {
        Err(ThinkerError::Auth(m)) => assert!(m.contains("Incorrect API key"), "{m}"),
        other => panic!("expected Auth, got {other:?}"),
    }
}

#[tokio::test]
async fn named_error_event_and_malformed_event() {
    let fake = Fake::start(vec![
        Reply::sse_raw(vec!["upstream exploded".into()]),
        Reply::sse_raw(vec!["upstream exploded".into()]),
    ])
    .await;
    // `event: error` before the data line: written by hand.
    let fake_named = Fake::start(vec![Reply::raw(
        200,
        "event: error\ndata: {\"message\": \"upstream exploded\"}\n\n",
    )
    .content_type("text/event-stream")])
    .await;
    let cfg = ThinkerConfig {
        max_retries: 0,
        ..config(fake_named.base_url())
    };
    let m = expect_transient(ask(&cfg).await);
    assert!(m.contains("upstream exploded"), "{m}");

    // A data line that is not JSON (and not a named error) is malformed.
    let m = expect_transient(ask(&config(fake.base_url())).await);
    assert!(m.contains("malformed event"), "{m}");
    assert_eq!(
        fake.seen().len(),
        1,
        "malformed answers are not retried in-call"
    );
}

#[tokio::test]
async fn stream_without_choices_is_transient() {
    let fake = Fake::start(vec![Reply::sse(vec![])]).await;
    let m = expect_transient(ask(&config(fake.base_url())).await);
    assert!(m.contains("without any choices"), "{m}");
}

#[tokio::test]
async fn server_ignoring_stream_is_read_as_json() {
    let fake = Fake::start(vec![Reply::json_completion(ANSWER)]).await;
    let sink = Recorder::default();
    let answer = ask_with(&config(fake.base_url()), &sink).await.unwrap();
    assert_eq!(answer, ANSWER);
    assert!(fake.seen()[0].stream(), "it was asked to stream");
    assert!(sink.deltas().is_empty(), "nothing was streamed");
}

#[tokio::test]
async fn events_without_the_event_stream_type_are_still_read() {
    // CRLF line endings, a comment, and no blank line between two events.
    let body = format!(
        ": keep-alive\r\ndata: {}\r\ndata: {}\r\n\r\ndata: [DONE]\r\n\r\n",
        content_chunk("<think>a</think>"),
        content_chunk("<score>[7, 8]</score><answer>b</answer>"),
    );
    let fake = Fake::start(vec![Reply::raw(200, &body).content_type("text/plain")]).await;
    let sink = Recorder::default();
    let answer = ask_with(&config(fake.base_url()), &sink).await.unwrap();
    assert_eq!(
        answer,
        "<think>a</think><score>[7, 8]</score><answer>b</answer>"
    );
    assert_eq!(sink.deltas().len(), 2);
}

#[tokio::test]
async fn stream_false_sends_no_stream_flag() {
    let fake = Fake::start(vec![Reply::content(ANSWER)]).await;
    let cfg = ThinkerConfig {
        stream: false,
        ..config(fake.base_url())
    };
    let sink = Recorder::default();
    assert_eq!(ask_with(&cfg, &sink).await.unwrap(), ANSWER);
    let req = &fake.seen()[0];
    assert!(req.body.get("stream").is_none());
    assert!(sink.deltas().is_empty());
}

#[tokio::test]
async fn total_timeout_bounds_a_stalled_stream() {
    let fake =
        Fake::start(vec![Reply::sse(vec![content_chunk("<think>slow")])
            .ending(End::Stall(Duration::from_secs(10)))])
        .await;
    let cfg = ThinkerConfig {
        timeout_seconds: 1,
        max_retries: 0,
        ..config(fake.base_url())
    };
    let sink = Recorder::default();
    let started = Instant::now();
    let m = expect_transient(ask_with(&cfg, &sink).await);
    assert!(m.contains("timed out"), "{m}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        sink.text(),
        "<think>slow",
        "the text before the stall was live"
    );
}

#[tokio::test]
async fn idle_stream_is_abandoned_and_retried() {
    let fake = Fake::start(vec![
        Reply::sse(vec![content_chunk("<think>hm")]).ending(End::Stall(Duration::from_secs(10))),
        Reply::content(ANSWER),
    ])
    .await;
    let thinker = OpenAiThinker::new(OpenAiSettings {
        stream_idle_timeout: Duration::from_millis(300),
        retry: OpenAiSettings::retry_policy(1, Duration::from_millis(1)),
        ..settings(&fake.base_url())
    })
    .unwrap();
    let started = Instant::now();
    assert_eq!(ask_thinker(&thinker, &NoThinking).await.unwrap(), ANSWER);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.seen().len(), 2);

    let fake =
        Fake::start(vec![Reply::sse(vec![content_chunk("<think>hm")])
            .ending(End::Stall(Duration::from_secs(10)))])
        .await;
    let thinker = OpenAiThinker::new(OpenAiSettings {
        stream_idle_timeout: Duration::from_millis(300),
        ..settings(&fake.base_url())
    })
    .unwrap();
    let m = expect_transient(ask_thinker(&thinker, &NoThinking).await);
    assert!(m.contains("idle"), "{m}");
}

#[tokio::test]
async fn idle_timeout_waits_for_the_first_chunk() {
    // A queued request may wait long for its first token: only the total
    // timeout applies before the answer starts.
    let fake = Fake::start(vec![
        Reply::content(ANSWER).delayed(Duration::from_millis(800))
    ])
    .await;
    let thinker = OpenAiThinker::new(OpenAiSettings {
        stream_idle_timeout: Duration::from_millis(200),
        ..settings(&fake.base_url())
    })
    .unwrap();
    assert_eq!(ask_thinker(&thinker, &NoThinking).await.unwrap(), ANSWER);
}

#[tokio::test]
async fn server_error_then_streamed_success() {
    let fake = Fake::start(vec![Reply::error(500, "boom"), Reply::content(ANSWER)]).await;
    let sink = Recorder::default();
    assert_eq!(
        ask_with(&config(fake.base_url()), &sink).await.unwrap(),
        ANSWER
    );
    assert_eq!(sink.text(), ANSWER, "a failed status streams nothing");
}
