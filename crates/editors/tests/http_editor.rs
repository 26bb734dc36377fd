//! The `http` editor kind against fake `/edit` servers on loopback.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use editthinker_core::{Editor, EditorError, Image};
use editthinker_editors::{EditorKind, EditorProfile, HttpEditor};
use serde_json::json;
use support::{dead_url, source, FakeEditor, Reply, CANDIDATE_SEED};

/// A profile with small retry delays, so tests stay fast.
fn profile(urls: &[&str]) -> EditorProfile {
    let mut p = EditorProfile::new(EditorKind::Http);
    if let [one] = urls {
        p.url = Some((*one).to_owned());
    } else {
        p.urls = Some(urls.iter().map(|u| (*u).to_owned()).collect());
    }
    p.retry_base_ms = 5;
    p.max_retries = 3;
    p
}

fn editor(p: &EditorProfile) -> HttpEditor {
    HttpEditor::from_profile("test", p).unwrap()
}

async fn edit(editor: &HttpEditor, src: &Image, prompt: &str) -> Result<Image, EditorError> {
    support::edit_prompt(editor, src, prompt).await
}

#[tokio::test]
async fn sends_resized_png_prompt_params_and_bearer_and_returns_the_answer() {
    let server = FakeEditor::ok().await;
    std::env::set_var("EDITORS_TEST_KEY_SUCCESS", "sekrit");
    let mut p = profile(&[&format!("{}/", server.url)]);
    p.api_key_env = Some("EDITORS_TEST_KEY_SUCCESS".into());
    p.params = json!({"num_inference_steps": 28, "guidance_scale": 2.5, "seed": 42})
        .as_object()
        .unwrap()
        .clone();
    let src = source(100, 37);

    let out = edit(&editor(&p), &src, "make the sky purple")
        .await
        .unwrap();

    let got = server.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/edit");
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(r.authorization.as_deref(), Some("Bearer sekrit"));
    assert_eq!(
        r.image,
        Ok((true, 96, 32)),
        "PNG rounded down to multiples of 16"
    );
    assert_eq!(r.json["prompt"], "make the sky purple");
    assert_eq!(r.json["num_inference_steps"], 28);
    assert_eq!(r.json["guidance_scale"], 2.5);
    assert_eq!(r.json["seed"], 42);
    assert_eq!(r.json.as_object().unwrap().len(), 5, "{:?}", r.json);
    // The answer comes back as sent: bringing it to the source size is the loop's job.
    assert_eq!((out.width, out.height), (96, 32));
    let pixel = out.decode().unwrap().to_rgb8().get_pixel(5, 5).0;
    assert_eq!(pixel, [255, 0, 0]);
}

#[tokio::test]
async fn a_candidate_seed_replaces_the_params_seed_for_that_request_only() {
    let server = FakeEditor::ok().await;
    let mut p = profile(&[&server.url]);
    p.params = json!({"num_inference_steps": 28, "seed": 42})
        .as_object()
        .unwrap()
        .clone();
    let e = editor(&p);
    support::edit_seeded(&e, &source(32, 32)).await.unwrap();
    edit(&e, &source(32, 32), "x").await.unwrap();
    let got = server.received();
    assert_eq!(got[0].json["seed"], CANDIDATE_SEED);
    assert_eq!(
        got[0].json["num_inference_steps"], 28,
        "the other params stay"
    );
    assert_eq!(
        got[1].json["seed"], 42,
        "the next request has its params back"
    );

    // Without a seed in params, the candidate's is added.
    let server = FakeEditor::ok().await;
    let e = editor(&profile(&[&server.url]));
    support::edit_seeded(&e, &source(32, 32)).await.unwrap();
    edit(&e, &source(32, 32), "x").await.unwrap();
    let got = server.received();
    assert_eq!(got[0].json["seed"], CANDIDATE_SEED);
    assert_eq!(got[1].json.get("seed"), None);
}

#[tokio::test]
async fn multiple_of_one_sends_the_source_size_and_no_key_means_no_header() {
    let server = FakeEditor::ok().await;
    let mut p = profile(&[&server.url]);
    p.multiple_of = 1;
    let out = edit(&editor(&p), &source(100, 37), "x").await.unwrap();
    let got = server.received();
    assert_eq!(got[0].image, Ok((true, 100, 37)));
    assert_eq!(got[0].authorization, None);
    assert_eq!((out.width, out.height), (100, 37));
}

#[tokio::test]
async fn a_base_path_is_kept_and_data_urls_are_accepted() {
    let server = FakeEditor::start(vec![], Reply::EditedDataUrl).await;
    let p = profile(&[&format!("{}/gpu0", server.url)]);
    let out = edit(&editor(&p), &source(64, 48), "x").await.unwrap();
    assert_eq!(server.received()[0].path, "/gpu0/edit");
    assert_eq!((out.width, out.height), (64, 48));
}

#[tokio::test]
async fn several_urls_are_used_round_robin() {
    let a = FakeEditor::ok().await;
    let b = FakeEditor::ok().await;
    let e = editor(&profile(&[&a.url, &b.url]));
    let src = source(32, 32);
    edit(&e, &src, "first").await.unwrap();
    edit(&e, &src, "second").await.unwrap();
    let (got_a, got_b) = (a.received(), b.received());
    assert_eq!((got_a.len(), got_b.len()), (1, 1));
    let mut prompts = [
        got_a[0].json["prompt"].as_str().unwrap(),
        got_b[0].json["prompt"].as_str().unwrap(),
    ];
    prompts.sort();
    assert_eq!(prompts, ["first", "second"]);
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_skipped() {
    let live = FakeEditor::ok().await;
    let dead = dead_url();
    let e = editor(&profile(&[&dead, &live.url]));
    let src = source(32, 32);
    // Whichever URL a call starts at, it ends on the live server.
    for _ in 0..3 {
        edit(&e, &src, "x").await.unwrap();
    }
    assert_eq!(live.received().len(), 3);
}

#[tokio::test]
async fn connection_errors_are_transient_after_the_retries() {
    let mut p = profile(&[&dead_url()]);
    p.max_retries = 1;
    let err = edit(&editor(&p), &source(32, 32), "x").await.unwrap_err();
    assert!(matches!(err, EditorError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn retry_after_is_honoured_on_429() {
    let server = FakeEditor::start(
        vec![Reply::Status(429, Some("1"), "slow down".into())],
        Reply::Edited,
    )
    .await;
    let started = Instant::now();
    edit(&editor(&profile(&[&server.url])), &source(32, 32), "x")
        .await
        .unwrap();
    let got = server.received();
    assert_eq!(got.len(), 2);
    // retry_base_ms is 5 ms: only Retry-After explains a pause of a second.
    let pause = got[1].at - got[0].at;
    assert!(pause >= Duration::from_millis(950), "{pause:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_500_is_retried() {
    let server =
        FakeEditor::start(vec![Reply::Status(500, None, "boom".into())], Reply::Edited).await;
    edit(&editor(&profile(&[&server.url])), &source(32, 32), "x")
        .await
        .unwrap();
    assert_eq!(server.received().len(), 2);
}

#[tokio::test]
async fn retry_ambiguous_off_sends_a_500_or_a_timeout_once_as_ambiguous() {
    let server =
        FakeEditor::start(vec![Reply::Status(500, None, "boom".into())], Reply::Edited).await;
    let mut p = profile(&[&server.url]);
    p.retry_ambiguous = Some(false);
    let err = edit(&editor(&p), &source(32, 32), "x").await.unwrap_err();
    assert!(
        matches!(&err, EditorError::Ambiguous(m) if m.contains("boom")),
        "{err:?}"
    );
    assert_eq!(server.received().len(), 1);

    let server = FakeEditor::start(vec![], Reply::Slow(Duration::from_secs(3))).await;
    let mut p = profile(&[&server.url]);
    p.retry_ambiguous = Some(false);
    p.timeout_seconds = 0.2;
    let err = edit(&editor(&p), &source(32, 32), "x").await.unwrap_err();
    assert!(matches!(err, EditorError::Ambiguous(_)), "{err:?}");
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn retry_ambiguous_off_still_retries_a_503_and_a_refused_connection() {
    let server = FakeEditor::start(
        vec![Reply::Status(503, None, "warming up".into())],
        Reply::Edited,
    )
    .await;
    let dead = dead_url();
    // The dead URL first: its refused connection moves on to the live one.
    let mut p = profile(&[&dead, &server.url]);
    p.retry_ambiguous = Some(false);
    edit(&editor(&p), &source(32, 32), "x").await.unwrap();
    assert_eq!(server.received().len(), 2, "the 503, then the edit");
}

#[test]
fn the_instruction_cap_defaults_to_the_core_default_and_can_be_set() {
    let mut p = profile(&["http://h"]);
    assert_eq!(
        editor(&p).max_instruction_chars(),
        editthinker_core::DEFAULT_MAX_INSTRUCTION_CHARS
    );
    p.max_instruction_chars = Some(300);
    assert_eq!(editor(&p).max_instruction_chars(), 300);
    p.max_instruction_chars = Some(0);
    let err = HttpEditor::from_profile("test", &p)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("editors.test.max_instruction_chars:"),
        "{err}"
    );
}

#[tokio::test]
async fn persistent_500_is_transient_after_max_retries() {
    let server = FakeEditor::start(vec![], Reply::Status(503, None, "overloaded".into())).await;
    let mut p = profile(&[&server.url]);
    p.max_retries = 2;
    let err = edit(&editor(&p), &source(32, 32), "x").await.unwrap_err();
    assert!(
        matches!(&err, EditorError::Transient(m) if m.contains("503") && m.contains("overloaded")),
        "{err:?}"
    );
    assert_eq!(server.received().len(), 3, "one attempt and two retries");
}

#[tokio::test]
async fn unauthorized_is_auth_without_retry() {
    let server = FakeEditor::start(vec![], Reply::Status(401, None, "bad key".into())).await;
    let err = edit(&editor(&profile(&[&server.url])), &source(32, 32), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, EditorError::Auth(_)), "{err:?}");
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn bad_request_is_invalid_with_the_servers_body() {
    let body = format!("prompt too long {}", "x".repeat(5000));
    let server = FakeEditor::start(vec![], Reply::Status(400, None, body)).await;
    let err = edit(&editor(&profile(&[&server.url])), &source(32, 32), "x")
        .await
        .unwrap_err();
    let EditorError::Invalid(message) = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("400") && message.contains("prompt too long"));
    assert!(
        message.len() < 1000,
        "the body is truncated: {}",
        message.len()
    );
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn http_451_is_refused() {
    let server = FakeEditor::start(vec![], Reply::Status(451, None, "no".into())).await;
    let err = edit(&editor(&profile(&[&server.url])), &source(32, 32), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, EditorError::Refused(_)), "{err:?}");
}

#[tokio::test]
async fn a_moderation_code_is_refused() {
    let body = json!({"error": {"code": "moderation_blocked", "message": "rejected"}}).to_string();
    let server = FakeEditor::start(vec![], Reply::Status(400, None, body)).await;
    let err = edit(&editor(&profile(&[&server.url])), &source(32, 32), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, EditorError::Refused(_)), "{err:?}");
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn answers_without_a_usable_image_are_invalid() {
    let cut = support::red_png(16, 16).bytes.slice(..40);
    use base64::Engine;
    let truncated = base64::engine::general_purpose::STANDARD.encode(&cut);
    for body in [
        json!({"edited_image": "%%% not base64 %%%"}).to_string(),
        json!({"edited_image": "aGVsbG8gd29ybGQ="}).to_string(), // "hello world"
        json!({"edited_image": truncated}).to_string(),
        json!({"result": "done"}).to_string(),
        "<html>oops</html>".to_owned(),
    ] {
        let server = FakeEditor::start(vec![], Reply::Body(body.clone())).await;
        let err = edit(&editor(&profile(&[&server.url])), &source(32, 32), "x")
            .await
            .unwrap_err();
        assert!(matches!(err, EditorError::Invalid(_)), "{body}: {err:?}");
        assert_eq!(server.received().len(), 1, "{body}");
    }
}

#[tokio::test]
async fn a_timeout_is_transient() {
    let server = FakeEditor::start(vec![], Reply::Slow(Duration::from_secs(3))).await;
    let mut p = profile(&[&server.url]);
    p.timeout_seconds = 0.2;
    p.max_retries = 1;
    let err = edit(&editor(&p), &source(32, 32), "x").await.unwrap_err();
    assert!(matches!(err, EditorError::Transient(_)), "{err:?}");
    assert_eq!(server.received().len(), 2);
}

async fn run_concurrently(max_in_flight: usize) -> usize {
    let server = FakeEditor::start(vec![], Reply::Slow(Duration::from_millis(150))).await;
    let mut p = profile(&[&server.url]);
    p.max_in_flight = Some(max_in_flight);
    let e = Arc::new(editor(&p));
    let src = Arc::new(source(32, 32));
    let calls = (0..3).map(|_| {
        let (e, src) = (Arc::clone(&e), Arc::clone(&src));
        tokio::spawn(async move { edit(&e, &src, "x").await })
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap().unwrap();
    }
    assert_eq!(server.received().len(), 3);
    server.max_in_flight()
}

#[tokio::test]
async fn max_in_flight_one_serializes_calls() {
    assert_eq!(run_concurrently(1).await, 1);
}

#[tokio::test]
async fn calls_overlap_when_allowed() {
    // The control for the test above: without the limit the server does see overlap.
    assert!(run_concurrently(3).await >= 2);
}
