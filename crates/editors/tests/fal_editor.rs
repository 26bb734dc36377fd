//! The `fal` editor kind against a fake fal queue: submission, status
//! polling (202 while queued or running, 200 when completed), the response
//! URL, the result file, checkpoint and resume.

mod support;

use std::time::Duration;

use editthinker_core::{EditCheckpoint, EditorError, Image, NoCheckpoint, ProviderRequest};
use editthinker_editors::{EditorKind, EditorProfile, FalEditor};
use serde_json::json;
use support::{
    api_key, png_info, red_png, source, Answer, FakeProvider, RecordingCheckpoint, CANDIDATE_SEED,
};

const SUBMIT: &str = "/fal-ai/flux-pro/kontext";

fn status_path(id: &str) -> String {
    format!("/fal-ai/flux-pro/requests/{id}/status")
}

fn response_path(id: &str) -> String {
    format!("/fal-ai/flux-pro/requests/{id}")
}

/// A profile against `server` with small retry and poll delays.
fn profile(server: &FakeProvider, key_var: &str) -> EditorProfile {
    let key = format!("fal-{key_var}");
    support::test_profile(EditorKind::Fal, server.url.clone(), key_var, &key)
}

async fn edit_with(
    p: &EditorProfile,
    src: &Image,
    resume: Option<&ProviderRequest>,
    checkpoint: &dyn EditCheckpoint,
) -> Result<Image, EditorError> {
    let editor = FalEditor::from_profile("f", p).unwrap();
    support::edit_once(&editor, src, resume, checkpoint).await
}

async fn edit(p: &EditorProfile, src: &Image) -> Result<Image, EditorError> {
    edit_with(p, src, None, &NoCheckpoint).await
}

fn cancel_path(id: &str) -> String {
    format!("{}/cancel", response_path(id))
}

/// The URLs of a submitted request, as fal returns and the handle stores them.
fn handle_data(server: &FakeProvider, id: &str) -> serde_json::Value {
    json!({
        "status_url": format!("{}{}", server.url, status_path(id)),
        "response_url": format!("{}{}", server.url, response_path(id)),
        "cancel_url": format!("{}{}", server.url, cancel_path(id)),
    })
}

fn submitted(server: &FakeProvider, id: &str) -> Answer {
    let mut answer = handle_data(server, id);
    answer["request_id"] = id.into();
    answer["status"] = "IN_QUEUE".into();
    Answer::Json(answer)
}

fn queued(position: u32) -> Answer {
    Answer::JsonWith(
        202,
        json!({"status": "IN_QUEUE", "queue_position": position}),
    )
}

fn running() -> Answer {
    Answer::JsonWith(202, json!({"status": "IN_PROGRESS", "logs": []}))
}

fn completed() -> Answer {
    Answer::Json(json!({"status": "COMPLETED", "logs": [], "metrics": {"inference_time": 3.2}}))
}

/// The model output, its image served once.
fn output(server: &FakeProvider, id: &str, w: u32, h: u32) -> Answer {
    let url = server.serve_file_once(&format!("{id}.png"), red_png(w, h).bytes);
    Answer::Json(json!({
        "images": [{"url": url, "width": w, "height": h, "content_type": "image/png"}],
        "seed": 7, "has_nsfw_concepts": [false], "prompt": "p"
    }))
}

/// Scripts a request that completes after `polls` 202s.
fn script(server: &FakeProvider, id: &str, pending: Vec<Answer>) {
    server.answer_path(&status_path(id), pending, completed());
    server.answer_path(&response_path(id), vec![], output(server, id, 40, 30));
}

#[tokio::test]
async fn submits_polls_in_queue_and_in_progress_then_fetches_the_response_and_the_image() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "req-1"));
    script(&server, "req-1", vec![queued(2), running()]);
    let checkpoint = RecordingCheckpoint::new(&server);

    let out = edit_with(
        &profile(&server, "FAL_TEST_KEY_SUCCESS"),
        &source(100, 37),
        None,
        &checkpoint,
    )
    .await
    .unwrap();
    assert_eq!((out.width, out.height), (40, 30));

    let got = server.requests();
    let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    let (status, response) = (status_path("req-1"), response_path("req-1"));
    assert_eq!(
        paths,
        [
            SUBMIT,
            status.as_str(),
            status.as_str(),
            status.as_str(),
            response.as_str()
        ]
    );
    let submit = &got[0];
    assert_eq!(submit.method, "POST");
    assert_eq!(
        submit.header("authorization"),
        Some("Key fal-FAL_TEST_KEY_SUCCESS")
    );
    assert_eq!(submit.header("content-type"), Some("application/json"));
    let body = submit.json();
    assert_eq!(body["prompt"], "make it so");
    let image = body["image_url"].as_str().unwrap();
    assert!(image.starts_with("data:image/png;base64,"), "{image:.40}");
    assert_eq!(png_info(image), (true, 100, 37));
    // Sorted: serde_json keeps insertion order when another crate turns on
    // its `preserve_order` feature.
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["image_url", "prompt"], "nothing unconfigured");
    for r in &got[1..] {
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.header("authorization"),
            Some("Key fal-FAL_TEST_KEY_SUCCESS")
        );
    }

    let calls = checkpoint.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0.id, "req-1");
    assert_eq!(calls[0].0.data, handle_data(&server, "req-1"));
    assert_eq!(calls[0].1, [SUBMIT], "recorded before the first poll");

    let fetched = server.downloads();
    assert_eq!(fetched.len(), 1, "the image is fetched exactly once");
    assert_eq!(fetched[0].header("authorization"), None);
    assert!(fetched[0].at >= got[4].at, "fetched after the final poll");
}

#[tokio::test]
async fn configured_options_are_sent() {
    let server = FakeProvider::start().await;
    let submit = "/fal-ai/qwen-image-edit";
    server.answer_path(submit, vec![], submitted(&server, "r"));
    script(&server, "r", vec![]);
    let mut p = profile(&server, "FAL_TEST_KEY_OPTIONS");
    p.model = Some("fal-ai/qwen-image-edit".into());
    p.seed = Some(9);
    p.guidance_scale = Some(4.0);
    p.num_inference_steps = Some(30);
    p.output_format = Some("png".into());
    p.safety_tolerance = Some(5);
    edit(&p, &source(32, 32)).await.unwrap();
    let body = server.requests_to(submit)[0].json();
    assert_eq!(body["seed"], 9);
    assert_eq!(body["guidance_scale"], 4.0);
    assert_eq!(body["num_inference_steps"], 30);
    assert_eq!(body["output_format"], "png");
    assert_eq!(body["safety_tolerance"], "5", "fal takes it as a string");
}

#[tokio::test]
async fn a_candidate_seed_is_sent_in_place_of_the_profile_seed() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "r"));
    script(&server, "r", vec![]);
    let mut p = profile(&server, "FAL_TEST_KEY_CANDIDATE_SEED");
    p.seed = Some(9);
    let editor = FalEditor::from_profile("f", &p).unwrap();
    support::edit_seeded(&editor, &source(32, 32))
        .await
        .unwrap();
    assert_eq!(server.requests_to(SUBMIT)[0].json()["seed"], CANDIDATE_SEED);
}

#[tokio::test]
async fn retry_after_is_honoured_on_429_then_the_edit_succeeds() {
    let server = FakeProvider::start().await;
    server.answer_path(
        SUBMIT,
        vec![Answer::Status(
            429,
            Some("1"),
            json!({"detail": "rate limited"}).to_string(),
        )],
        submitted(&server, "r"),
    );
    script(&server, "r", vec![]);
    edit(&profile(&server, "FAL_TEST_KEY_429"), &source(32, 32))
        .await
        .unwrap();
    let submits = server.requests_to(SUBMIT);
    assert_eq!(submits.len(), 2);
    assert!(submits[1].at - submits[0].at >= Duration::from_millis(950));
}

#[tokio::test]
async fn a_5xx_on_status_is_retried() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "r"));
    script(
        &server,
        "r",
        vec![Answer::Status(503, None, "unavailable".into())],
    );
    edit(&profile(&server, "FAL_TEST_KEY_5XX"), &source(32, 32))
        .await
        .unwrap();
    assert_eq!(server.requests_to(SUBMIT).len(), 1);
    assert_eq!(server.requests_to(&status_path("r")).len(), 2);
}

#[tokio::test]
async fn a_content_policy_violation_is_refused_with_the_message() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "r"));
    server.answer_path(&status_path("r"), vec![running()], completed());
    server.answer_path(
        &response_path("r"),
        vec![],
        Answer::Status(
            422,
            None,
            json!({"detail": [{"loc": ["body", "prompt"], "msg": "The content was flagged by a content checker.", "type": "content_policy_violation"}]}).to_string(),
        ),
    );
    let err = edit(&profile(&server, "FAL_TEST_KEY_POLICY"), &source(32, 32))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EditorError::Refused(m) if m.contains("flagged by a content checker")),
        "{err:?}"
    );
    assert!(server.downloads().is_empty());
}

#[tokio::test]
async fn a_flagged_output_is_refused() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "r"));
    server.answer_path(&status_path("r"), vec![], completed());
    server.answer_path(
        &response_path("r"),
        vec![],
        Answer::Json(json!({"images": [{"url": format!("{}/files/x.png", server.url)}], "has_nsfw_concepts": [true]})),
    );
    let err = edit(&profile(&server, "FAL_TEST_KEY_NSFW"), &source(32, 32))
        .await
        .unwrap_err();
    assert!(matches!(&err, EditorError::Refused(_)), "{err:?}");
    assert!(server.downloads().is_empty());
}

#[tokio::test]
async fn a_bad_key_is_auth_without_retry() {
    let server = FakeProvider::start().await;
    server.answer_path(
        SUBMIT,
        vec![],
        Answer::Status(401, None, json!({"detail": "Invalid key"}).to_string()),
    );
    let err = edit(&profile(&server, "FAL_TEST_KEY_401"), &source(32, 32))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EditorError::Auth(m) if m.contains("Invalid key")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_dropped_submission_is_ambiguous_and_sent_once() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![Answer::Drop], submitted(&server, "r"));
    script(&server, "r", vec![]);
    let err = edit(&profile(&server, "FAL_TEST_KEY_DROP"), &source(32, 32))
        .await
        .unwrap_err();
    assert!(matches!(err, EditorError::Ambiguous(_)), "{err:?}");
    assert_eq!(server.requests_to(SUBMIT).len(), 1, "never resent");
    assert!(server.requests_to(&status_path("r")).is_empty());
}

#[tokio::test]
async fn a_503_on_the_submission_is_refused_before_work_and_retried() {
    let server = FakeProvider::start().await;
    server.answer_path(
        SUBMIT,
        vec![Answer::Status(
            503,
            None,
            json!({"detail": "Service Unavailable"}).to_string(),
        )],
        submitted(&server, "r"),
    );
    script(&server, "r", vec![]);
    edit(&profile(&server, "FAL_TEST_KEY_503"), &source(32, 32))
        .await
        .unwrap();
    assert_eq!(server.requests_to(SUBMIT).len(), 2);
}

#[tokio::test]
async fn cancel_puts_to_the_stored_cancel_url_with_the_key() {
    let server = FakeProvider::start().await;
    server.answer_path(
        &cancel_path("r"),
        vec![],
        Answer::JsonWith(202, json!({"status": "CANCELLATION_REQUESTED"})),
    );
    let editor = FalEditor::from_profile("f", &profile(&server, "FAL_TEST_KEY_CANCEL")).unwrap();
    let handle = ProviderRequest {
        id: "r".into(),
        data: handle_data(&server, "r"),
    };
    editthinker_core::Editor::cancel(&editor, &handle)
        .await
        .unwrap();
    let got = server.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "PUT");
    assert_eq!(got[0].path, cancel_path("r"));
    assert_eq!(
        got[0].header("authorization"),
        Some("Key fal-FAL_TEST_KEY_CANCEL")
    );
}

#[tokio::test]
async fn cancel_of_a_finished_request_succeeds_and_a_5xx_is_retried_briefly() {
    let server = FakeProvider::start().await;
    server.answer_path(
        &cancel_path("r"),
        vec![Answer::Status(502, None, "bad gateway".into())],
        Answer::Status(
            400,
            None,
            json!({"status": "ALREADY_COMPLETED"}).to_string(),
        ),
    );
    let editor =
        FalEditor::from_profile("f", &profile(&server, "FAL_TEST_KEY_CANCEL_DONE")).unwrap();
    let handle = ProviderRequest {
        id: "r".into(),
        data: handle_data(&server, "r"),
    };
    editthinker_core::Editor::cancel(&editor, &handle)
        .await
        .unwrap();
    assert_eq!(server.requests_to(&cancel_path("r")).len(), 2);

    // A server that keeps failing: a bounded number of tries, then an error.
    server.answer_path(
        &cancel_path("x"),
        vec![],
        Answer::Status(502, None, "bad gateway".into()),
    );
    let mut p = profile(&server, "FAL_TEST_KEY_CANCEL_FAIL");
    p.max_retries = 10;
    let editor = FalEditor::from_profile("f", &p).unwrap();
    let handle = ProviderRequest {
        id: "x".into(),
        data: handle_data(&server, "x"),
    };
    let err = editthinker_core::Editor::cancel(&editor, &handle)
        .await
        .unwrap_err();
    assert!(matches!(err, EditorError::Transient(_)), "{err:?}");
    assert_eq!(
        server.requests_to(&cancel_path("x")).len(),
        3,
        "1 + 2 retries"
    );
}

#[tokio::test]
async fn cancel_of_a_handle_without_cancel_url_calls_nothing() {
    let server = FakeProvider::start().await;
    let editor =
        FalEditor::from_profile("f", &profile(&server, "FAL_TEST_KEY_CANCEL_NONE")).unwrap();
    let mut data = handle_data(&server, "r");
    data.as_object_mut().unwrap().remove("cancel_url");
    let handle = ProviderRequest {
        id: "r".into(),
        data,
    };
    editthinker_core::Editor::cancel(&editor, &handle)
        .await
        .unwrap();
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn a_resumed_request_is_polled_not_submitted() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "new"));
    script(&server, "old", vec![running()]);
    let handle = ProviderRequest {
        id: "old".into(),
        data: handle_data(&server, "old"),
    };
    let checkpoint = RecordingCheckpoint::new(&server);
    edit_with(
        &profile(&server, "FAL_TEST_KEY_RESUME"),
        &source(32, 32),
        Some(&handle),
        &checkpoint,
    )
    .await
    .unwrap();
    assert_eq!(server.requests_to(SUBMIT).len(), 0, "nothing is paid twice");
    assert_eq!(server.requests_to(&status_path("old")).len(), 2);
    assert_eq!(server.requests_to(&response_path("old")).len(), 1);
    assert!(checkpoint.calls().is_empty());
    assert_eq!(server.downloads().len(), 1);
}

#[tokio::test]
async fn a_vanished_request_or_expired_output_is_submitted_once_anew() {
    // The status is gone, or the request completed but its output expired.
    for status_gone in [true, false] {
        let server = FakeProvider::start().await;
        server.answer_path(SUBMIT, vec![], submitted(&server, "new"));
        script(&server, "new", vec![]);
        let not_found = Answer::Status(
            404,
            None,
            json!({"detail": "Request not found"}).to_string(),
        );
        if status_gone {
            server.answer_path(&status_path("old"), vec![], not_found);
        } else {
            server.answer_path(&status_path("old"), vec![], completed());
            server.answer_path(&response_path("old"), vec![], not_found);
        }
        let handle = ProviderRequest {
            id: "old".into(),
            data: handle_data(&server, "old"),
        };
        let checkpoint = RecordingCheckpoint::new(&server);
        edit_with(
            &profile(&server, "FAL_TEST_KEY_VANISHED"),
            &source(32, 32),
            Some(&handle),
            &checkpoint,
        )
        .await
        .unwrap();
        assert_eq!(
            server.requests_to(SUBMIT).len(),
            1,
            "status gone: {status_gone}"
        );
        let calls = checkpoint.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0.id, "new");
    }
}

#[test]
fn configuration_errors_name_their_key() {
    let ok = || {
        let mut p = EditorProfile::new(EditorKind::Fal);
        p.api_key_env = Some(api_key("FAL_TEST_KEY_CONFIG", "k"));
        p
    };
    let error = |p: EditorProfile| FalEditor::from_profile("f", &p).unwrap_err().to_string();
    let e = FalEditor::from_profile("f", &ok()).unwrap();
    assert_eq!(
        e.endpoint().as_str(),
        "https://queue.fal.run/fal-ai/flux-pro/kontext"
    );
    for model in [
        "fal-ai",
        "fal-ai//kontext",
        "fal-ai/../admin",
        "/fal-ai/x",
        "fal-ai/x/",
        "fal-ai/./x",
        "fal-ai/x y",
        "fal-ai/x?y",
    ] {
        let mut p = ok();
        p.model = Some(model.into());
        assert!(error(p).starts_with("editors.f.model: "), "{model}");
    }
    let mut p = ok();
    p.model = Some("fal-ai/qwen-image-edit".into());
    assert!(FalEditor::from_profile("f", &p).is_ok());
    for tolerance in [0, 7] {
        let mut p = ok();
        p.safety_tolerance = Some(tolerance);
        assert!(
            error(p).starts_with("editors.f.safety_tolerance: "),
            "{tolerance}"
        );
    }
    let mut p = ok();
    p.guidance_scale = Some(-1.0);
    assert!(error(p).starts_with("editors.f.guidance_scale: "));
    let mut p = ok();
    p.num_inference_steps = Some(0);
    assert!(error(p).starts_with("editors.f.num_inference_steps: "));
    let mut p = ok();
    p.aspect_ratio = Some("1:1".into());
    assert_eq!(error(p), "editors.f.aspect_ratio: not used by the fal kind");
    let mut p = ok();
    p.prompt_upsampling = Some(true);
    assert_eq!(
        error(p),
        "editors.f.prompt_upsampling: not used by the fal kind"
    );
    assert_eq!(ok().effective_max_in_flight(), 10);
}
