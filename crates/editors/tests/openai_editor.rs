//! The `openai` editor kind against a fake `/v1/images/edits` server.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart};
use axum::http::Request;
use editthinker_core::{Editor, EditorError, Image};
use editthinker_editors::{EditorKind, EditorProfile, OpenAiEditor};
use serde_json::json;
use support::{
    api_key, b64, image_info, red_png, source, Answer, FakeProvider, RawRequest, CANDIDATE_SEED,
};

/// A profile against `server` with small retry delays.
fn profile(server: &FakeProvider, key_var: &str) -> EditorProfile {
    let key = format!("sk-{key_var}");
    support::test_profile(
        EditorKind::Openai,
        format!("{}/v1", server.url),
        key_var,
        &key,
    )
}

async fn edit(p: &EditorProfile, src: &Image, prompt: &str) -> Result<Image, EditorError> {
    support::edit_prompt(&OpenAiEditor::from_profile("o", p).unwrap(), src, prompt).await
}

fn edited(w: u32, h: u32) -> Answer {
    Answer::Json(json!({
        "created": 1,
        "data": [{"b64_json": b64(&red_png(w, h))}],
        "usage": {"total_tokens": 1}
    }))
}

/// One multipart part: file name, content type, bytes.
#[derive(Debug)]
struct Part {
    file_name: Option<String>,
    content_type: Option<String>,
    bytes: Vec<u8>,
}

impl Part {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.bytes).unwrap()
    }
}

/// The received body parsed with axum's multipart extractor.
async fn form(r: &RawRequest) -> BTreeMap<String, Part> {
    let request = Request::builder()
        .method("POST")
        .header("content-type", r.header("content-type").unwrap())
        .body(Body::from(r.body.clone()))
        .unwrap();
    let mut multipart = Multipart::from_request(request, &()).await.unwrap();
    let mut parts = BTreeMap::new();
    while let Some(field) = multipart.next_field().await.unwrap() {
        let name = field.name().unwrap().to_owned();
        let part = Part {
            file_name: field.file_name().map(str::to_owned),
            content_type: field.content_type().map(str::to_owned),
            bytes: field.bytes().await.unwrap().to_vec(),
        };
        assert!(parts.insert(name.clone(), part).is_none(), "{name} twice");
    }
    parts
}

#[tokio::test]
async fn sends_the_png_prompt_default_model_and_configured_extras_only() {
    let server = FakeProvider::start().await;
    server.answer(vec![], edited(64, 48));
    let mut p = profile(&server, "OPENAI_TEST_KEY_SUCCESS");
    p.size = Some("1024x1024".into());
    p.quality = Some("high".into());

    let out = edit(&p, &source(100, 37), "make the sky purple")
        .await
        .unwrap();

    let got = server.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/images/edits");
    assert_eq!(
        r.header("authorization"),
        Some("Bearer sk-OPENAI_TEST_KEY_SUCCESS")
    );
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("multipart/form-data; boundary="));
    let parts = form(r).await;
    assert_eq!(
        parts.keys().collect::<Vec<_>>(),
        ["image", "model", "prompt", "quality", "size"],
        "unconfigured extras (input_fidelity, output_format) are not sent"
    );
    let image = &parts["image"];
    assert_eq!(image.file_name.as_deref(), Some("image.png"));
    assert_eq!(image.content_type.as_deref(), Some("image/png"));
    assert_eq!(
        image_info(&image.bytes),
        (true, 100, 37),
        "a PNG of the source size"
    );
    assert_eq!(parts["prompt"].text(), "make the sky purple");
    assert_eq!(parts["model"].text(), "gpt-image-1");
    assert_eq!(parts["size"].text(), "1024x1024");
    assert_eq!(parts["quality"].text(), "high");
    assert_eq!((out.width, out.height), (64, 48));
    assert_eq!(
        out.decode().unwrap().to_rgb8().get_pixel(3, 3).0,
        [255, 0, 0]
    );
    assert!(server.downloads().is_empty());
}

#[tokio::test]
async fn a_configured_model_and_the_other_extras_are_sent() {
    let server = FakeProvider::start().await;
    server.answer(vec![], edited(16, 16));
    let mut p = profile(&server, "OPENAI_TEST_KEY_EXTRAS");
    p.model = Some("gpt-image-1-mini".into());
    p.input_fidelity = Some("high".into());
    p.output_format = Some("webp".into());
    edit(&p, &source(40, 30), "x").await.unwrap();
    let parts = form(&server.requests()[0]).await;
    assert_eq!(
        parts.keys().collect::<Vec<_>>(),
        [
            "image",
            "input_fidelity",
            "model",
            "output_format",
            "prompt"
        ]
    );
    assert_eq!(parts["model"].text(), "gpt-image-1-mini");
    assert_eq!(parts["input_fidelity"].text(), "high");
    assert_eq!(parts["output_format"].text(), "webp");
}

#[tokio::test]
async fn a_candidate_seed_is_not_sent() {
    // The edits endpoint has no seed: candidates are independent samples.
    let server = FakeProvider::start().await;
    server.answer(vec![], edited(16, 16));
    let p = profile(&server, "OPENAI_TEST_KEY_CANDIDATE_SEED");
    let editor = OpenAiEditor::from_profile("o", &p).unwrap();
    support::edit_seeded(&editor, &source(40, 30))
        .await
        .unwrap();
    let parts = form(&server.requests()[0]).await;
    assert_eq!(
        parts.keys().collect::<Vec<_>>(),
        ["image", "model", "prompt"]
    );
    let body = String::from_utf8_lossy(&server.requests()[0].body).into_owned();
    assert!(
        !body.contains(&CANDIDATE_SEED.to_string()),
        "no seed anywhere"
    );
}

#[tokio::test]
async fn retry_after_is_honoured_on_429_then_the_edit_succeeds() {
    let server = FakeProvider::start().await;
    let limited = json!({"error": {"message": "Rate limit reached for images per minute", "type": "requests", "code": "rate_limit_exceeded"}});
    server.answer(
        vec![Answer::Status(429, Some("1"), limited.to_string())],
        edited(16, 16),
    );
    edit(
        &profile(&server, "OPENAI_TEST_KEY_429"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap();
    let got = server.requests();
    assert_eq!(got.len(), 2);
    // retry_base_ms is 5 ms: only Retry-After explains a pause of a second.
    let pause = got[1].at - got[0].at;
    assert!(pause >= Duration::from_millis(950), "{pause:?}");
    // The retry is a complete form again.
    assert_eq!(form(&got[1]).await["prompt"].text(), "x");
}

#[tokio::test]
async fn a_500_is_ambiguous_and_the_paid_edit_is_sent_once() {
    let server = FakeProvider::start().await;
    server.answer(
        vec![Answer::Status(500, None, "{\"error\": {}}".into())],
        edited(16, 16),
    );
    let err = edit(
        &profile(&server, "OPENAI_TEST_KEY_500"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EditorError::Ambiguous(m) if m.contains("500")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1, "never resent");
}

#[tokio::test]
async fn a_dropped_connection_after_sending_is_ambiguous_and_sent_once() {
    let server = FakeProvider::start().await;
    server.answer(vec![Answer::Drop], edited(16, 16));
    let err = edit(
        &profile(&server, "OPENAI_TEST_KEY_DROP"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EditorError::Ambiguous(m) if m.contains("connection closed")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1, "never resent");
}

#[tokio::test]
async fn a_timeout_after_sending_is_ambiguous_and_sent_once() {
    let server = FakeProvider::start().await;
    server.answer(vec![Answer::Hang(Duration::from_secs(5))], edited(16, 16));
    let mut p = profile(&server, "OPENAI_TEST_KEY_TIMEOUT");
    p.timeout_seconds = 0.3;
    let err = edit(&p, &source(32, 32), "x").await.unwrap_err();
    assert!(
        matches!(&err, EditorError::Ambiguous(m) if m.contains("timed out")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1, "never resent");
}

#[tokio::test]
async fn a_503_is_refused_before_work_and_retried() {
    let server = FakeProvider::start().await;
    let overloaded =
        json!({"error": {"message": "The engine is currently overloaded", "type": "server_error"}});
    server.answer(
        vec![Answer::Status(503, None, overloaded.to_string())],
        edited(16, 16),
    );
    edit(
        &profile(&server, "OPENAI_TEST_KEY_503"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_refused_connection_is_not_sent_and_is_retried() {
    // Connections are refused for the first 50 ms; the first retry waits
    // at least 100 ms (retry_base_ms 200, jitter 50-100 %).
    let server = FakeProvider::start_after(Duration::from_millis(50)).await;
    server.answer(vec![], edited(16, 16));
    let mut p = profile(&server, "OPENAI_TEST_KEY_REFUSED");
    p.retry_base_ms = 200;
    edit(&p, &source(32, 32), "x").await.unwrap();
    assert_eq!(server.requests().len(), 1, "only the retry reached it");
}

#[tokio::test]
async fn retry_ambiguous_resends_a_500_when_the_operator_sets_it() {
    let server = FakeProvider::start().await;
    server.answer(vec![Answer::Status(500, None, "{}".into())], edited(16, 16));
    let mut p = profile(&server, "OPENAI_TEST_KEY_RESEND");
    p.retry_ambiguous = Some(true);
    edit(&p, &source(32, 32), "x").await.unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn the_instruction_cap_is_the_prompt_limit_unless_configured() {
    let mut p = EditorProfile::new(EditorKind::Openai);
    p.api_key_env = Some(api_key("OPENAI_TEST_KEY_CAP", "sk-cap"));
    let editor = OpenAiEditor::from_profile("o", &p).unwrap();
    assert_eq!(editor.max_instruction_chars(), 32_000);
    p.max_instruction_chars = Some(1_500);
    let editor = OpenAiEditor::from_profile("o", &p).unwrap();
    assert_eq!(editor.max_instruction_chars(), 1_500);
    p.max_instruction_chars = Some(32_001);
    let err = OpenAiEditor::from_profile("o", &p).unwrap_err().to_string();
    assert!(
        err.starts_with("editors.o.max_instruction_chars: 32001"),
        "{err}"
    );
}

#[tokio::test]
async fn moderation_blocked_is_refused_with_the_providers_message() {
    let server = FakeProvider::start().await;
    let body = json!({"error": {
        "message": "Your request was rejected by the safety system.",
        "type": "image_generation_user_error",
        "param": null,
        "code": "moderation_blocked"
    }});
    server.answer(vec![], Answer::Status(400, None, body.to_string()));
    let err = edit(
        &profile(&server, "OPENAI_TEST_KEY_MODERATION"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    let EditorError::Refused(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("Your request was rejected by the safety system.")
            && message.contains("moderation_blocked"),
        "{message}"
    );
    assert_eq!(server.requests().len(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn other_bad_requests_are_invalid() {
    let server = FakeProvider::start().await;
    let body = json!({"error": {"message": "Invalid size '7x7'.", "type": "invalid_request_error", "param": "size", "code": "invalid_value"}});
    server.answer(vec![], Answer::Status(400, None, body.to_string()));
    let err = edit(
        &profile(&server, "OPENAI_TEST_KEY_400"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EditorError::Invalid(m) if m.contains("Invalid size")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_bad_key_is_auth_without_retry() {
    let server = FakeProvider::start().await;
    let body = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}});
    server.answer(vec![], Answer::Status(401, None, body.to_string()));
    let err = edit(
        &profile(&server, "OPENAI_TEST_KEY_401"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, EditorError::Auth(_)), "{err:?}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_result_url_is_downloaded_at_once_without_the_key() {
    let server = FakeProvider::start().await;
    let url = server.serve_file("out.png", red_png(24, 20).bytes);
    server.answer(vec![], Answer::Json(json!({"data": [{"url": url}]})));
    let out = edit(
        &profile(&server, "OPENAI_TEST_KEY_URL"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap();
    assert_eq!((out.width, out.height), (24, 20));
    let fetched = server.downloads();
    assert_eq!(fetched.len(), 1, "fetched exactly once");
    assert_eq!(fetched[0].method, "GET");
    assert_eq!(fetched[0].path, "/files/out.png");
    assert_eq!(fetched[0].header("authorization"), None);
}

#[tokio::test]
async fn answers_without_an_image_are_invalid() {
    for body in [
        json!({"data": []}),
        json!({"data": [{"b64_json": "aGVsbG8="}]}),
        json!({"data": [{"url": "ftp://x/y.png"}]}),
    ] {
        let server = FakeProvider::start().await;
        server.answer(vec![], Answer::Json(body.clone()));
        let err = edit(
            &profile(&server, "OPENAI_TEST_KEY_EMPTY"),
            &source(32, 32),
            "x",
        )
        .await
        .unwrap_err();
        assert!(matches!(err, EditorError::Invalid(_)), "{body}: {err:?}");
    }
}

#[test]
fn configuration_errors_name_their_key() {
    let ok = || {
        let mut p = EditorProfile::new(EditorKind::Openai);
        p.api_key_env = Some(api_key("OPENAI_TEST_KEY_CONFIG", "sk"));
        p
    };
    let error = |p: EditorProfile| OpenAiEditor::from_profile("o", &p).unwrap_err().to_string();
    assert!(OpenAiEditor::from_profile("o", &ok()).is_ok());

    let mut p = ok();
    p.api_key_env = None;
    assert!(
        error(p).starts_with("editors.o.api_key_env: missing"),
        "the key is required"
    );
    for bad in ["not a url", "ftp://h/v1", "http://"] {
        let mut p = ok();
        p.base_url = Some(bad.into());
        let e = error(p);
        assert!(e.starts_with("editors.o.base_url: "), "{bad}: {e}");
    }
    let mut p = ok();
    p.seed = Some(1);
    assert_eq!(error(p), "editors.o.seed: not used by the openai kind");
    let mut p = ok();
    p.url = Some("http://h".into());
    assert!(error(p).starts_with("editors.o.url: not used by the openai kind"));
    let mut p = ok();
    p.quality = Some(" ".into());
    assert!(error(p).starts_with("editors.o.quality: "));
}

#[tokio::test]
async fn the_probe_gets_the_model_with_the_key_once() {
    use editthinker_core::Editor;
    let server = FakeProvider::start().await;
    let path = "/v1/models/gpt-image-1";
    server.answer_path(
        path,
        vec![
            Answer::Json(json!({"id": "gpt-image-1", "object": "model", "owned_by": "system"})),
            Answer::Status(
                401,
                None,
                r#"{"error":{"message":"Incorrect API key provided","code":"invalid_api_key"}}"#
                    .into(),
            ),
        ],
        Answer::Status(503, None, "overloaded".into()),
    );
    let editor =
        OpenAiEditor::from_profile("o", &profile(&server, "OPENAI_TEST_KEY_PROBE")).unwrap();
    assert_eq!(editor.probe().await, Some(Ok(())));
    assert!(matches!(
        editor.probe().await,
        Some(Err(EditorError::Auth(m))) if m.contains("Incorrect API key")
    ));
    // A 5xx is transient, and a probe does not retry.
    assert!(matches!(
        editor.probe().await,
        Some(Err(EditorError::Transient(_)))
    ));
    let got = server.requests();
    assert_eq!(got.len(), 3, "one request a probe: {got:?}");
    for r in &got {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", path));
        assert_eq!(
            r.header("authorization"),
            Some("Bearer sk-OPENAI_TEST_KEY_PROBE")
        );
        assert!(r.body.is_empty());
    }
}

#[tokio::test]
async fn a_probe_of_a_server_that_is_down_is_transient() {
    use editthinker_core::Editor;
    let mut p = support::test_profile(
        EditorKind::Openai,
        format!("{}/v1", support::dead_url()),
        "OPENAI_TEST_KEY_PROBE_DOWN",
        "sk-x",
    );
    p.max_retries = 5;
    p.retry_base_ms = 2_000;
    let editor = OpenAiEditor::from_profile("o", &p).unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(
        editor.probe().await,
        Some(Err(EditorError::Transient(_)))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no retries with backoff"
    );
}
