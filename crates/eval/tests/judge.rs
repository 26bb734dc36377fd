//! The judge against a small chat-completions server written here, which
//! checks what it receives (model, images and their order, the prompt, the
//! bearer key) and answers from a script.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use editthinker_eval::judge::{same_model_warning, Judge, JudgeConfig, JudgeError, Judgement};
use image::{ImageFormat, RgbImage};
use serde_json::{json, Value};

const MODEL: &str = "Qwen/Qwen2.5-VL-72B-Instruct";
const INSTRUCTION: &str = "Make the sky purple";
/// The environment variable the key is read from: one cargo sets for tests.
const KEY_ENV: &str = "CARGO_PKG_NAME";

/// Which question a request asks, told by its number of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Semantic consistency: source and edited image.
    Sc,
    /// Perceptual quality: the edited image alone.
    Pq,
}

/// What the server received.
#[derive(Debug, Clone)]
struct Seen {
    kind: Kind,
    authorization: Option<String>,
    model: String,
    temperature: Option<f64>,
    prompt: String,
    /// Width and height of each image, in order.
    sizes: Vec<(u32, u32)>,
}

/// The server's answer to the `n`-th request (from 0) of a kind.
type Script = dyn Fn(Kind, usize) -> (u16, String) + Send + Sync;

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Script>,
}

struct Server {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, kind: Kind) -> usize {
        self.seen().iter().filter(|s| s.kind == kind).count()
    }
}

async fn serve(script: impl Fn(Kind, usize) -> (u16, String) + Send + Sync + 'static) -> Server {
    let shared = Shared {
        seen: Arc::default(),
        script: Arc::new(script),
    };
    let seen = shared.seen.clone();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        base_url: format!("http://{address}/v1"),
        seen,
    }
}

/// Checks the request's form (a 400 naming the fault otherwise), records
/// it, and answers from the script.
async fn chat(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, String) {
    let seen = match read_request(&headers, &body) {
        Ok(seen) => seen,
        Err(fault) => return (StatusCode::BAD_REQUEST, format!("test server: {fault}")),
    };
    let kind = seen.kind;
    let n = {
        let mut log = shared.seen.lock().unwrap();
        log.push(seen);
        log.iter().filter(|s| s.kind == kind).count() - 1
    };
    let (status, body) = (shared.script)(kind, n);
    (StatusCode::from_u16(status).unwrap(), body)
}

fn read_request(headers: &HeaderMap, body: &Value) -> Result<Seen, String> {
    if body["stream"].as_bool() == Some(true) {
        return Err("streaming asked for".into());
    }
    let messages = body["messages"].as_array().ok_or("no messages")?;
    if messages.len() != 1 || messages[0]["role"] != "user" {
        return Err(format!("want one user message: {messages:?}"));
    }
    let parts = messages[0]["content"]
        .as_array()
        .ok_or("content not a list")?;
    let (text, images) = parts.split_last().ok_or("empty content")?;
    if text["type"] != "text" {
        return Err("the last part is not the text".into());
    }
    let sizes = images
        .iter()
        .map(image_size)
        .collect::<Result<Vec<_>, _>>()?;
    let kind = match sizes.len() {
        2 => Kind::Sc,
        1 => Kind::Pq,
        n => return Err(format!("{n} images")),
    };
    Ok(Seen {
        kind,
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string()),
        model: body["model"].as_str().unwrap_or_default().to_string(),
        temperature: body["temperature"].as_f64(),
        prompt: text["text"]
            .as_str()
            .ok_or("text not a string")?
            .to_string(),
        sizes,
    })
}

/// The size of an `image_url` part holding a PNG data URL.
fn image_size(part: &Value) -> Result<(u32, u32), String> {
    if part["type"] != "image_url" {
        return Err(format!("not an image_url part: {part}"));
    }
    let url = part["image_url"]["url"].as_str().ok_or("no image url")?;
    let data = url
        .strip_prefix("data:image/png;base64,")
        .ok_or("not a PNG data URL")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| e.to_string())?;
    let image =
        image::load_from_memory_with_format(&bytes, ImageFormat::Png).map_err(|e| e.to_string())?;
    Ok((image.width(), image.height()))
}

/// A 200 chat completion whose content is `content`.
fn completion(content: &str) -> (u16, String) {
    let body = json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
    });
    (200, body.to_string())
}

/// A well-formed answer.
fn answer(score: [f64; 2], reasoning: &str) -> (u16, String) {
    completion(&json!({"score": score, "reasoning": reasoning}).to_string())
}

/// The good answers: SC [8, 6], PQ [9, 4].
fn good(kind: Kind) -> (u16, String) {
    match kind {
        Kind::Sc => answer([8.0, 6.0], "the sky is purple; a cloud went missing"),
        Kind::Pq => answer([9.0, 4.0], "natural light, but a seam at the horizon"),
    }
}

/// An image of `width` × `height` in `format`.
fn encoded(width: u32, height: u32, shade: u8, format: ImageFormat) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([shade, (x * 7) as u8, (y * 11) as u8])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn source() -> Vec<u8> {
    encoded(8, 6, 10, ImageFormat::Png)
}

fn edited() -> Vec<u8> {
    encoded(6, 8, 200, ImageFormat::Png)
}

/// A `[judge]` section for `server`, read the way `eval.toml` is.
fn config(server: &Server, max_retries: u32) -> JudgeConfig {
    serde_json::from_value(json!({
        "base_url": server.base_url,
        "model": MODEL,
        "api_key_env": KEY_ENV,
        "max_retries": max_retries,
    }))
    .unwrap()
}

/// A judge of `server` with its cache in `dir`.
fn judge_of(server: &Server, dir: &tempfile::TempDir, max_retries: u32) -> Judge {
    Judge::new(config(server, max_retries), cache_file(dir)).unwrap()
}

fn cache_file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("judgements.jsonl")
}

/// Judges the standard pair with a fresh judge and cache: the server, the
/// judge and the result.
async fn judge_once(
    max_retries: u32,
    script: impl Fn(Kind, usize) -> (u16, String) + Send + Sync + 'static,
) -> (Server, Judge, Result<Judgement, JudgeError>) {
    let server = serve(script).await;
    let dir = tempfile::tempdir().unwrap();
    let judge = judge_of(&server, &dir, max_retries);
    let result = judge.judge(&source(), &edited(), INSTRUCTION).await;
    (server, judge, result)
}

#[tokio::test]
async fn scores_follow_viescore_and_requests_are_well_formed() {
    let (server, judge, result) = judge_once(3, |kind, _| good(kind)).await;
    let j = result.unwrap();
    assert_eq!((j.followed, j.not_over_edited), (8.0, 6.0));
    assert_eq!((j.natural, j.artifact_free), (9.0, 4.0));
    assert_eq!((j.sc, j.pq), (6.0, 4.0));
    assert!((j.o - 24f64.sqrt()).abs() < 1e-12, "{}", j.o);
    assert_eq!(j.sc_reasoning, "the sky is purple; a cloud went missing");
    assert_eq!(j.pq_reasoning, "natural light, but a seam at the horizon");
    assert_eq!(j.model, MODEL);
    assert_eq!(judge.requests_made(), 2);
    assert_eq!(judge.cached(), 0);

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let key = format!("Bearer {}", env!("CARGO_PKG_NAME"));
    for s in &seen {
        assert_eq!(s.model, MODEL);
        assert_eq!(s.temperature, Some(0.0));
        assert_eq!(s.authorization.as_deref(), Some(key.as_str()));
        assert!(s.prompt.contains("\"score\""), "{}", s.prompt);
    }
    let sc = seen.iter().find(|s| s.kind == Kind::Sc).unwrap();
    // Source (8 × 6) first, then the edit (6 × 8).
    assert_eq!(sc.sizes, [(8, 6), (6, 8)]);
    assert!(sc.prompt.contains(INSTRUCTION), "{}", sc.prompt);
    let pq = seen.iter().find(|s| s.kind == Kind::Pq).unwrap();
    assert_eq!(pq.sizes, [(6, 8)]);
    assert!(!pq.prompt.contains(INSTRUCTION));
}

#[tokio::test]
async fn fenced_answer_in_prose_is_parsed() {
    let (_, judge, result) = judge_once(0, |kind, _| match kind {
        Kind::Sc => completion(
            "Looking at both images, the edit is good.\n```json\n\
             {\"score\": [\"7\", 9.5], \"reasoning\": \"done, nothing else touched\"}\n```\n",
        ),
        Kind::Pq => completion("<think>{not json}</think> {\"score\": [10, 10]}"),
    })
    .await;
    let j = result.unwrap();
    assert_eq!((j.followed, j.not_over_edited, j.sc), (7.0, 9.5, 7.0));
    assert_eq!((j.natural, j.artifact_free, j.pq), (10.0, 10.0, 10.0));
    assert_eq!(j.sc_reasoning, "done, nothing else touched");
    assert_eq!(j.pq_reasoning, "");
    assert_eq!(judge.requests_made(), 2);
}

#[tokio::test]
async fn malformed_answer_is_asked_again() {
    let (server, judge, result) = judge_once(1, |kind, n| match (kind, n) {
        (Kind::Sc, 0) => completion("I would rate this edit highly."),
        _ => good(kind),
    })
    .await;
    assert_eq!(result.unwrap().sc, 6.0);
    assert_eq!((server.count(Kind::Sc), server.count(Kind::Pq)), (2, 1));
    assert_eq!(judge.requests_made(), 3);
}

#[tokio::test]
async fn always_malformed_answer_ends_as_malformed_after_every_try() {
    // A different fault each time; the perceptual question is answered well.
    let bad = [
        "no JSON at all",
        r#"{"score": [7]}"#,
        r#"{"score": [1, 2, 3]}"#,
        r#"{"score": [11, 2]}"#,
        r#"{"score": ["high", 2], "reasoning": "last try"}"#,
    ];
    let max_retries = bad.len() as u32 - 1;
    let (server, judge, result) = judge_once(max_retries, move |kind, n| match kind {
        Kind::Sc => completion(bad[n.min(bad.len() - 1)]),
        Kind::Pq => good(kind),
    })
    .await;
    match result {
        Err(JudgeError::Malformed {
            attempts, excerpt, ..
        }) => {
            assert_eq!(attempts, max_retries + 1);
            assert!(excerpt.contains("last try"), "{excerpt}");
        }
        other => panic!("want Malformed, got {other:?}"),
    }
    assert_eq!(server.count(Kind::Sc), bad.len());
    assert_eq!(judge.requests_made(), bad.len() as u64 + 1);
}

#[tokio::test]
async fn server_error_is_retried() {
    let (server, judge, result) = judge_once(2, |kind, n| match (kind, n) {
        (Kind::Sc, 0) => (503, "warming up".into()),
        (Kind::Pq, 0) => (429, r#"{"error": {"message": "slow down"}}"#.into()),
        _ => good(kind),
    })
    .await;
    let j = result.unwrap();
    assert_eq!((j.sc, j.pq), (6.0, 4.0));
    assert_eq!((server.count(Kind::Sc), server.count(Kind::Pq)), (2, 2));
    assert_eq!(judge.requests_made(), 4);
}

#[tokio::test]
async fn unauthorized_is_an_auth_error_without_retry() {
    let (server, judge, result) = judge_once(3, |_, _| {
        (401, r#"{"error": {"message": "bad key"}}"#.into())
    })
    .await;
    match result {
        Err(JudgeError::Auth {
            status, message, ..
        }) => {
            assert_eq!(status, 401);
            assert!(message.contains("bad key"), "{message}");
        }
        other => panic!("want Auth, got {other:?}"),
    }
    // The first refusal ends the judgement; neither question is retried.
    assert!(server.count(Kind::Sc) <= 1 && server.count(Kind::Pq) <= 1);
    assert!((1..=2).contains(&judge.requests_made()));
}

#[tokio::test]
async fn bad_request_is_rejected_with_the_body() {
    let (_, _, result) = judge_once(3, |_, _| (400, "model does not take images".into())).await;
    match result {
        Err(JudgeError::Rejected { status, body, .. }) => {
            assert_eq!(status, 400);
            assert_eq!(body, "model does not take images");
        }
        other => panic!("want Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_judge_is_unavailable() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = JudgeConfig {
        base_url,
        ..serde_json::from_value(json!({"base_url": "http://x", "model": MODEL})).unwrap()
    };
    cfg.max_retries = 1;
    let judge = Judge::new(cfg, cache_file(&dir)).unwrap();
    let result = judge.judge(&source(), &edited(), INSTRUCTION).await;
    assert!(
        matches!(result, Err(JudgeError::Unavailable { attempts: 2, .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn judgements_are_cached_in_the_run_folder() {
    let server = serve(|kind, _| good(kind)).await;
    let dir = tempfile::tempdir().unwrap();
    let judge = judge_of(&server, &dir, 0);
    let first = judge
        .judge(&source(), &edited(), INSTRUCTION)
        .await
        .unwrap();
    let again = judge
        .judge(&source(), &edited(), INSTRUCTION)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!((judge.requests_made(), judge.cached()), (2, 1));

    let text = std::fs::read_to_string(cache_file(&dir)).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["key"].as_str().unwrap().len(), 64);
    assert_eq!(lines[0]["judgement"]["sc"], 6.0);

    // A rerun into the same folder asks nothing it asked before.
    let rerun = judge_of(&server, &dir, 0);
    let cached = rerun
        .judge(&source(), &edited(), INSTRUCTION)
        .await
        .unwrap();
    assert_eq!(cached, first);
    assert_eq!((rerun.requests_made(), rerun.cached()), (0, 1));
    // Another instruction is another question.
    rerun
        .judge(&source(), &edited(), "Add a moon")
        .await
        .unwrap();
    assert_eq!(rerun.requests_made(), 2);
    assert_eq!(server.seen().len(), 4);
}

#[tokio::test]
async fn torn_last_cache_line_is_dropped() {
    let server = serve(|kind, _| good(kind)).await;
    let dir = tempfile::tempdir().unwrap();
    let first = judge_of(&server, &dir, 0)
        .judge(&source(), &edited(), INSTRUCTION)
        .await
        .unwrap();
    let path = cache_file(&dir);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(r#"{"key": "abc", "judgem"#);
    std::fs::write(&path, &text).unwrap();

    let judge = judge_of(&server, &dir, 0);
    let cached = judge
        .judge(&source(), &edited(), INSTRUCTION)
        .await
        .unwrap();
    assert_eq!((cached, judge.requests_made()), (first, 0));
    judge
        .judge(&edited(), &source(), INSTRUCTION)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text
        .lines()
        .all(|l| serde_json::from_str::<Value>(l).is_ok()));

    // A broken line in the middle is an error, not silently dropped.
    std::fs::write(&path, format!("not json\n{text}")).unwrap();
    let error = Judge::new(config(&server, 0), path).unwrap_err();
    assert!(format!("{error:#}").contains("line 1"), "{error:#}");
}

#[tokio::test]
async fn concurrent_judgements_are_all_cached() {
    let server = serve(|kind, _| good(kind)).await;
    let dir = tempfile::tempdir().unwrap();
    let judge = judge_of(&server, &dir, 0);
    let instructions: Vec<String> = (0..8).map(|i| format!("edit number {i}")).collect();
    let (source, edited) = (source(), edited());
    let results = futures::future::join_all(
        instructions
            .iter()
            .map(|i| judge.judge(&source, &edited, i)),
    )
    .await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(judge.requests_made(), 16);

    let rerun = judge_of(&server, &dir, 0);
    for instruction in &instructions {
        rerun.judge(&source, &edited, instruction).await.unwrap();
    }
    assert_eq!((rerun.requests_made(), rerun.cached()), (0, 8));
}

#[tokio::test]
async fn large_images_are_scaled_down_to_png() {
    let server = serve(|kind, _| good(kind)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = JudgeConfig {
        max_image_edge: 32,
        ..config(&server, 0)
    };
    let judge = Judge::new(cfg, cache_file(&dir)).unwrap();
    let source = encoded(80, 40, 0, ImageFormat::Jpeg);
    let edited = encoded(30, 90, 0, ImageFormat::Png);
    judge.judge(&source, &edited, INSTRUCTION).await.unwrap();
    let seen = server.seen();
    let sc = seen.iter().find(|s| s.kind == Kind::Sc).unwrap();
    assert_eq!(sc.sizes, [(32, 16), (11, 32)]);

    let error = judge
        .judge(b"not an image", &edited, INSTRUCTION)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            JudgeError::Image {
                which: "source",
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn config_defaults_and_unknown_keys() {
    let cfg: JudgeConfig = serde_json::from_value(
        json!({"base_url": "https://api.openai.com/v1", "model": "gpt-4.1"}),
    )
    .unwrap();
    assert_eq!(cfg.api_key_env, None);
    assert_eq!(cfg.timeout_seconds, 120);
    assert_eq!(cfg.max_retries, 3);
    assert_eq!(cfg.max_image_edge, 1024);
    assert_eq!(cfg.temperature, 0.0);
    for bad in [
        json!({"base_url": "http://x/v1"}),
        json!({"model": "gpt-4.1"}),
        json!({"base_url": "http://x/v1", "model": "m", "max_retry": 2}),
    ] {
        assert!(
            serde_json::from_value::<JudgeConfig>(bad.clone()).is_err(),
            "{bad}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    for cfg in [
        JudgeConfig {
            api_key_env: Some("EDITTHINKER_EVAL_TEST_NEVER_SET_VARIABLE".into()),
            ..cfg.clone()
        },
        JudgeConfig {
            base_url: "not a url".into(),
            ..cfg.clone()
        },
        JudgeConfig {
            model: " ".into(),
            ..cfg.clone()
        },
        JudgeConfig {
            max_image_edge: 8,
            ..cfg.clone()
        },
    ] {
        assert!(
            Judge::new(cfg.clone(), cache_file(&dir)).is_err(),
            "{cfg:?}"
        );
    }
}

#[test]
fn same_model_warning_cases() {
    let qwen = "Qwen/Qwen2.5-VL-72B-Instruct";
    let warning = same_model_warning(qwen, Some("qwen2.5-vl-72b-instruct")).unwrap();
    assert!(warning.contains(qwen), "{warning}");
    assert!(same_model_warning("gpt-4.1", Some("GPT-4.1")).is_some());
    assert!(same_model_warning("openai/gpt-4.1", Some(" gpt-4.1 ")).is_some());
    assert!(same_model_warning(qwen, Some("Qwen/Qwen3-VL-8B-Instruct")).is_none());
    assert!(same_model_warning("gpt-4.1", Some("gpt-4.1-mini")).is_none());
    assert!(same_model_warning(qwen, None).is_none());
}
