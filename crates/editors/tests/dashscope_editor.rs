//! The `dashscope` editor kind against a fake multimodal-generation server
//! that also serves the signed result URLs it hands back.

mod support;

use std::time::Duration;

use editthinker_core::{Editor, EditorError, Image};
use editthinker_editors::{DashscopeEditor, EditorKind, EditorProfile};
use serde_json::json;
use support::{api_key, png_info, red_png, source, Answer, FakeProvider, CANDIDATE_SEED};

const PATH: &str = "/api/v1/services/aigc/multimodal-generation/generation";

/// A profile against `server` with small retry delays.
fn profile(server: &FakeProvider, key_var: &str) -> EditorProfile {
    let key = format!("sk-{key_var}");
    support::test_profile(
        EditorKind::Dashscope,
        format!("{}/api/v1", server.url),
        key_var,
        &key,
    )
}

async fn edit(p: &EditorProfile, src: &Image, prompt: &str) -> Result<Image, EditorError> {
    support::edit_prompt(&DashscopeEditor::from_profile("d", p).unwrap(), src, prompt).await
}

/// Serves a red `w`×`h` PNG and answers with its URL.
fn edited(server: &FakeProvider, w: u32, h: u32) -> Answer {
    let url = server.serve_file("result.png", red_png(w, h).bytes);
    Answer::Json(json!({
        "output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": [{"image": url}]}}]},
        "usage": {"width": w, "height": h, "image_count": 1},
        "request_id": "req-1"
    }))
}

fn error_body(code: &str, message: &str) -> String {
    json!({"request_id": "req-1", "code": code, "message": message}).to_string()
}

#[tokio::test]
async fn sends_the_data_uri_and_prompt_and_downloads_the_result_once() {
    let server = FakeProvider::start().await;
    server.answer(vec![], edited(&server, 64, 48));

    let out = edit(
        &profile(&server, "DASHSCOPE_TEST_KEY_SUCCESS"),
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
        r.header("authorization"),
        Some("Bearer sk-DASHSCOPE_TEST_KEY_SUCCESS")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["model"], "qwen-image-edit");
    let messages = body["input"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["role"], "user");
    let content = messages[0]["content"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    let image = content[0]["image"].as_str().unwrap();
    assert!(image.starts_with("data:image/png;base64,"), "{image:.40}");
    assert_eq!(png_info(image), (true, 100, 37), "a PNG of the source size");
    assert_eq!(content[1], json!({"text": "make the sky purple"}));
    assert_eq!(
        body["parameters"],
        json!({"watermark": false}),
        "no seed or negative prompt unless configured"
    );

    assert_eq!((out.width, out.height), (64, 48));
    assert_eq!(
        out.decode().unwrap().to_rgb8().get_pixel(3, 3).0,
        [255, 0, 0]
    );
    let fetched = server.downloads();
    assert_eq!(fetched.len(), 1, "the result URL is fetched exactly once");
    assert_eq!(fetched[0].method, "GET");
    assert_eq!(fetched[0].path, "/files/result.png");
    assert_eq!(
        fetched[0].header("authorization"),
        None,
        "the key is not sent to the result host"
    );
}

#[tokio::test]
async fn a_configured_model_seed_and_negative_prompt_are_sent() {
    let server = FakeProvider::start().await;
    server.answer(vec![], edited(&server, 16, 16));
    let mut p = profile(&server, "DASHSCOPE_TEST_KEY_PARAMS");
    p.model = Some("qwen-image-edit-plus".into());
    p.seed = Some(1234);
    p.negative_prompt = Some("blurry, watermark".into());
    edit(&p, &source(32, 32), "x").await.unwrap();
    let body = server.requests()[0].json();
    assert_eq!(body["model"], "qwen-image-edit-plus");
    assert_eq!(
        body["parameters"],
        json!({"watermark": false, "seed": 1234, "negative_prompt": "blurry, watermark"})
    );
}

#[tokio::test]
async fn a_candidate_seed_is_sent_in_place_of_the_profile_seed() {
    let server = FakeProvider::start().await;
    server.answer(vec![], edited(&server, 16, 16));
    let mut p = profile(&server, "DASHSCOPE_TEST_KEY_CANDIDATE_SEED");
    p.seed = Some(1234);
    let editor = DashscopeEditor::from_profile("d", &p).unwrap();
    support::edit_seeded(&editor, &source(32, 32))
        .await
        .unwrap();
    assert_eq!(
        server.requests()[0].json()["parameters"],
        json!({"watermark": false, "seed": CANDIDATE_SEED})
    );
}

#[tokio::test]
async fn retry_after_is_honoured_on_429_then_the_edit_succeeds() {
    let server = FakeProvider::start().await;
    server.answer(
        vec![Answer::Status(
            429,
            Some("1"),
            error_body("Throttling.RateQuota", "Requests rate limit exceeded"),
        )],
        edited(&server, 16, 16),
    );
    edit(
        &profile(&server, "DASHSCOPE_TEST_KEY_429"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap();
    let got = server.requests();
    assert_eq!(got.len(), 2);
    let pause = got[1].at - got[0].at;
    assert!(pause >= Duration::from_millis(950), "{pause:?}");
    assert_eq!(server.downloads().len(), 1);
}

#[tokio::test]
async fn a_500_is_ambiguous_and_the_paid_edit_is_sent_once() {
    let server = FakeProvider::start().await;
    server.answer(
        vec![Answer::Status(
            500,
            None,
            error_body("InternalError", "internal error"),
        )],
        edited(&server, 16, 16),
    );
    let err = edit(
        &profile(&server, "DASHSCOPE_TEST_KEY_500"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, EditorError::Ambiguous(_)), "{err:?}");
    assert_eq!(server.requests().len(), 1, "never resent");
    assert!(server.downloads().is_empty());
}

#[tokio::test]
async fn a_503_is_refused_before_work_and_retried() {
    let server = FakeProvider::start().await;
    server.answer(
        vec![Answer::Status(
            503,
            None,
            error_body("ServiceUnavailable", "service unavailable"),
        )],
        edited(&server, 16, 16),
    );
    edit(
        &profile(&server, "DASHSCOPE_TEST_KEY_503"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_timeout_after_sending_is_ambiguous_and_sent_once() {
    let server = FakeProvider::start().await;
    server.answer(
        vec![Answer::Hang(Duration::from_secs(5))],
        edited(&server, 16, 16),
    );
    let mut p = profile(&server, "DASHSCOPE_TEST_KEY_HANG");
    p.timeout_seconds = 0.3;
    let err = edit(&p, &source(32, 32), "x").await.unwrap_err();
    assert!(matches!(err, EditorError::Ambiguous(_)), "{err:?}");
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn the_instruction_cap_is_conservative() {
    let mut p = EditorProfile::new(EditorKind::Dashscope);
    p.api_key_env = Some(api_key("DASHSCOPE_TEST_KEY_CAP", "sk-cap"));
    let editor = DashscopeEditor::from_profile("d", &p).unwrap();
    assert_eq!(editor.max_instruction_chars(), 800);
}

#[tokio::test]
async fn content_inspection_codes_are_refused_with_the_message() {
    for code in [
        "DataInspectionFailed",
        "data_inspection_failed",
        "IPInfringementSuspect",
    ] {
        let server = FakeProvider::start().await;
        server.answer(
            vec![],
            Answer::Status(
                400,
                None,
                error_body(code, "Input data may contain inappropriate content."),
            ),
        );
        let err = edit(
            &profile(&server, "DASHSCOPE_TEST_KEY_REFUSED"),
            &source(32, 32),
            "x",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, EditorError::Refused(m)
                if m.contains("inappropriate content") && m.contains(code)),
            "{code}: {err:?}"
        );
        assert_eq!(server.requests().len(), 1, "a refusal is not retried");
        assert!(server.downloads().is_empty());
    }
}

#[tokio::test]
async fn a_bad_key_is_auth_without_retry() {
    let server = FakeProvider::start().await;
    server.answer(
        vec![],
        Answer::Status(
            401,
            None,
            error_body("InvalidApiKey", "Invalid API-key provided."),
        ),
    );
    let err = edit(
        &profile(&server, "DASHSCOPE_TEST_KEY_401"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EditorError::Auth(m) if m.contains("Invalid API-key")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn other_bad_requests_are_invalid() {
    let server = FakeProvider::start().await;
    server.answer(
        vec![],
        Answer::Status(
            400,
            None,
            error_body("InvalidParameter", "The image size is too small"),
        ),
    );
    let err = edit(
        &profile(&server, "DASHSCOPE_TEST_KEY_400"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EditorError::Invalid(m) if m.contains("too small")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_expired_result_url_is_invalid_not_auth() {
    let server = FakeProvider::start().await;
    let url = format!("{}/files/gone.png?Signature=x", server.url);
    server.answer(
        vec![],
        Answer::Json(json!({"output": {"choices": [{"message": {"content": [{"image": url}]}}]}})),
    );
    let err = edit(
        &profile(&server, "DASHSCOPE_TEST_KEY_EXPIRED"),
        &source(32, 32),
        "x",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, EditorError::Invalid(m) if m.contains("404")),
        "{err:?}"
    );
    assert!(
        !format!("{err}").contains("Signature"),
        "the signature stays out of messages"
    );
    assert_eq!(server.downloads().len(), 1);
}

#[test]
fn configuration_errors_name_their_key() {
    let ok = || {
        let mut p = EditorProfile::new(EditorKind::Dashscope);
        p.api_key_env = Some(api_key("DASHSCOPE_TEST_KEY_CONFIG", "sk"));
        p
    };
    let error = |p: EditorProfile| {
        DashscopeEditor::from_profile("d", &p)
            .unwrap_err()
            .to_string()
    };
    let e = DashscopeEditor::from_profile("d", &ok()).unwrap();
    assert_eq!(
        e.endpoint().as_str(),
        "https://dashscope-intl.aliyuncs.com/api/v1/services/aigc/multimodal-generation/generation"
    );
    let mut p = ok();
    p.api_key_env = None;
    assert!(error(p).starts_with("editors.d.api_key_env: missing"));
    let mut p = ok();
    p.base_url = Some("https://h/api/v1?region=x".into());
    assert!(error(p).starts_with("editors.d.base_url: "));
    let mut p = ok();
    p.seed = Some(i64::from(i32::MAX) + 1);
    assert!(error(p).starts_with("editors.d.seed: "));
    let mut p = ok();
    p.size = Some("1024x1024".into());
    assert_eq!(error(p), "editors.d.size: not used by the dashscope kind");
}
