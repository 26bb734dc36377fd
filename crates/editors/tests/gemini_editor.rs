//! The `gemini` editor kind against a fake `generateContent` server.

mod support;

use std::time::Duration;

use editthinker_core::{EditorError, Image};
use editthinker_editors::{EditorKind, EditorProfile, GeminiEditor};
use serde_json::{json, Value};
use support::{api_key, b64, png_info, red_png, source, Answer, FakeProvider, CANDIDATE_SEED};

const PATH: &str = "/v1beta/models/gemini-2.5-flash-image:generateContent";

/// A profile against `server` with small retry delays.
fn profile(server: &FakeProvider, key_var: &str) -> EditorProfile {
    let key = format!("AIza-{key_var}");
    support::test_profile(EditorKind::Gemini, server.url.clone(), key_var, &key)
}

async fn edit(p: &EditorProfile, src: &Image, prompt: &str) -> Result<Image, EditorError> {
    support::edit_prompt(&GeminiEditor::from_profile("g", p).unwrap(), src, prompt).await
}

/// A candidate with `parts` and `finishReason`.
fn answer(parts: Value, reason: &str) -> Answer {
    Answer::Json(json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": reason, "index": 0}],
        "usageMetadata": {"totalTokenCount": 1},
        "modelVersion": "gemini-2.5-flash-image"
    }))
}

/// The REST answer: camelCase `inlineData`, with some text first.
fn edited(w: u32, h: u32) -> Answer {
    answer(
        json!([
            {"text": "Here is the edited image."},
            {"inlineData": {"mimeType": "image/png", "data": b64(&red_png(w, h))}}
        ]),
        "STOP",
    )
}

#[tokio::test]
async fn sends_the_prompt_and_inline_png_with_the_key_header() {
    let server = FakeProvider::start().await;
    server.answer(vec![], edited(64, 48));

    let out = edit(
        &profile(&server, "GEMINI_TEST_KEY_SUCCESS"),
        &source(100, 37),
        "make the sky purple",
    )
    .await
    .unwrap();

    let got = server.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, PATH);
    assert_eq!(
        r.header("x-goog-api-key"),
        Some("AIza-GEMINI_TEST_KEY_SUCCESS")
    );
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    let parts = body["contents"][0]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0], json!({"text": "make the sky purple"}));
    assert_eq!(parts[1]["inline_data"]["mime_type"], "image/png");
    assert_eq!(
        png_info(parts[1]["inline_data"]["data"].as_str().unwrap()),
        (true, 100, 37),
        "a PNG of the source size"
    );
    assert_eq!(
        body["generationConfig"],
        json!({"responseModalities": ["TEXT", "IMAGE"]}),
        "no seed unless configured"
    );
    assert_eq!((out.width, out.height), (64, 48));
    assert_eq!(
        out.decode().unwrap().to_rgb8().get_pixel(3, 3).0,
        [255, 0, 0]
    );
}

#[tokio::test]
async fn a_configured_model_and_seed_are_sent_and_snake_case_answers_accepted() {
    let server = FakeProvider::start().await;
    server.answer(
        vec![],
        answer(
            json!([{"inline_data": {"mime_type": "image/png", "data": b64(&red_png(8, 8))}}]),
            "STOP",
        ),
    );
    let mut p = profile(&server, "GEMINI_TEST_KEY_SEED");
    p.model = Some("models/gemini-3-pro-image-preview".into());
    p.seed = Some(7);
    let out = edit(&p, &source(32, 32), "x").await.unwrap();
    assert_eq!((out.width, out.height), (8, 8));
    let r = &server.requests()[0];
    assert_eq!(
        r.path,
        "/v1beta/models/gemini-3-pro-image-preview:generateContent"
    );
    assert_eq!(
        r.json()["generationConfig"],
        json!({"responseModalities": ["TEXT", "IMAGE"], "seed": 7})
    );
}

#[tokio::test]
async fn a_candidate_seed_is_sent_in_place_of_the_profile_seed() {
    let server = FakeProvider::start().await;
    server.answer(vec![], edited(16, 16));
    let mut p = profile(&server, "GEMINI_TEST_KEY_CANDIDATE_SEED");
    p.seed = Some(7);
    let editor = GeminiEditor::from_profile("g", &p).unwrap();
    support::edit_seeded(&editor, &source(32, 32))
        .await
        .unwrap();
    assert_eq!(
        server.requests()[0].json()["generationConfig"],
        json!({"responseModalities": ["TEXT", "IMAGE"], "seed": CANDIDATE_SEED})
    );
}

#[tokio::test]
async fn retry_after_is_honoured_on_429_then_the_edit_succeeds() {
    let server = FakeProvider::start().await;
    let exhausted = json!({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}});
    server.answer(
        vec![Answer::Status(429, Some("1"), exhausted.to_string())],
        edited(16, 16),
    );
    edit(
        &profile(&server, "GEMINI_TEST_KEY_429"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap();
    let got = server.requests();
    assert_eq!(got.len(), 2);
    let pause = got[1].at - got[0].at;
    assert!(pause >= Duration::from_millis(950), "{pause:?}");
    assert_eq!(got[0].body, got[1].body, "the same request again");
}

#[tokio::test]
async fn a_500_is_ambiguous_and_the_paid_edit_is_sent_once() {
    let server = FakeProvider::start().await;
    let internal = json!({"error": {"code": 500, "message": "An internal error has occurred", "status": "INTERNAL"}});
    server.answer(
        vec![Answer::Status(500, None, internal.to_string())],
        edited(16, 16),
    );
    let err = edit(
        &profile(&server, "GEMINI_TEST_KEY_500"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EditorError::Ambiguous(m) if m.contains("internal error")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1, "never resent");
}

#[tokio::test]
async fn a_503_is_refused_before_work_and_retried() {
    let server = FakeProvider::start().await;
    let unavailable = json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}});
    server.answer(
        vec![Answer::Status(503, None, unavailable.to_string())],
        edited(16, 16),
    );
    edit(
        &profile(&server, "GEMINI_TEST_KEY_503"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_dropped_connection_after_sending_is_ambiguous_and_sent_once() {
    let server = FakeProvider::start().await;
    server.answer(vec![Answer::Drop], edited(16, 16));
    let err = edit(
        &profile(&server, "GEMINI_TEST_KEY_DROP"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, EditorError::Ambiguous(_)), "{err:?}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_text_only_answer_is_invalid_with_the_text() {
    let server = FakeProvider::start().await;
    server.answer(
        vec![],
        answer(
            json!([{"text": "I can't edit this image, but here is a description."}]),
            "STOP",
        ),
    );
    let err = edit(
        &profile(&server, "GEMINI_TEST_KEY_TEXT"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EditorError::Invalid(m)
            if m.contains("text only") && m.contains("here is a description")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1, "not retried in the call");
}

#[tokio::test]
async fn no_image_is_invalid_not_a_refusal() {
    let server = FakeProvider::start().await;
    server.answer(vec![], answer(json!([]), "NO_IMAGE"));
    let err = edit(
        &profile(&server, "GEMINI_TEST_KEY_NOIMAGE"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EditorError::Invalid(m) if m.contains("NO_IMAGE")),
        "{err:?}"
    );
}

#[tokio::test]
async fn safety_finish_reasons_are_refused() {
    for reason in [
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "SAFETY",
        "PROHIBITED_CONTENT",
    ] {
        let server = FakeProvider::start().await;
        server.answer(vec![], answer(json!([]), reason));
        let err = edit(
            &profile(&server, "GEMINI_TEST_KEY_SAFETY"),
            &source(32, 32),
            "x",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, EditorError::Refused(m) if m.contains(reason)),
            "{reason}: {err:?}"
        );
        assert_eq!(server.requests().len(), 1);
    }
}

#[tokio::test]
async fn a_blocked_prompt_is_refused_with_the_reason() {
    let server = FakeProvider::start().await;
    server.answer(
        vec![],
        Answer::Json(json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})),
    );
    let err = edit(
        &profile(&server, "GEMINI_TEST_KEY_BLOCKED"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EditorError::Refused(m) if m.contains("PROHIBITED_CONTENT")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_bad_key_is_auth_without_retry() {
    for (status, body) in [
        (
            401,
            json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}),
        ),
        (
            400,
            json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}),
        ),
    ] {
        let server = FakeProvider::start().await;
        server.answer(vec![], Answer::Status(status, None, body.to_string()));
        let err = edit(
            &profile(&server, "GEMINI_TEST_KEY_401"),
            &source(32, 32),
            "x",
        )
        .await
        .unwrap_err();
        assert!(matches!(err, EditorError::Auth(_)), "{status}: {err:?}");
        assert_eq!(server.requests().len(), 1);
    }
}

#[test]
fn configuration_errors_name_their_key() {
    let ok = || {
        let mut p = EditorProfile::new(EditorKind::Gemini);
        p.api_key_env = Some(api_key("GEMINI_TEST_KEY_CONFIG", "k"));
        p
    };
    let error = |p: EditorProfile| GeminiEditor::from_profile("g", &p).unwrap_err().to_string();
    let e = GeminiEditor::from_profile("g", &ok()).unwrap();
    assert_eq!(
        e.endpoint().as_str(),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash-image:generateContent"
    );
    let mut p = ok();
    p.api_key_env = None;
    assert!(error(p).starts_with("editors.g.api_key_env: missing"));
    let mut p = ok();
    p.base_url = Some("gopher://h".into());
    assert!(error(p).starts_with("editors.g.base_url: "));
    let mut p = ok();
    p.model = Some("../../evil?x".into());
    assert!(error(p).starts_with("editors.g.model: "));
    let mut p = ok();
    p.seed = Some(-1);
    assert!(error(p).starts_with("editors.g.seed: "));
    let mut p = ok();
    p.negative_prompt = Some("blur".into());
    assert_eq!(
        error(p),
        "editors.g.negative_prompt: not used by the gemini kind"
    );
}

#[tokio::test]
async fn the_probe_gets_the_model_with_the_key() {
    use editthinker_core::Editor;
    let server = FakeProvider::start().await;
    let path = "/v1beta/models/gemini-2.5-flash-image";
    server.answer_path(
        path,
        vec![
            Answer::Json(json!({"name": "models/gemini-2.5-flash-image", "version": "2.0"})),
            Answer::Status(
                401,
                None,
                r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#.into(),
            ),
        ],
        Answer::Status(500, None, "no".into()),
    );
    let editor =
        GeminiEditor::from_profile("g", &profile(&server, "GEMINI_TEST_KEY_PROBE")).unwrap();
    assert_eq!(editor.probe().await, Some(Ok(())));
    assert!(matches!(
        editor.probe().await,
        Some(Err(EditorError::Auth(_)))
    ));
    let got = server.requests();
    assert_eq!(got.len(), 2);
    for r in &got {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", path));
        assert_eq!(
            r.header("x-goog-api-key"),
            Some("AIza-GEMINI_TEST_KEY_PROBE")
        );
        assert_eq!(r.header("authorization"), None);
    }
}
