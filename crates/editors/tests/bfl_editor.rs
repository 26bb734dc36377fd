//! The `bfl` editor kind against a fake BFL API: submission, polling of the
//! (regional) polling URL, the signed result URL, checkpoint and resume.

mod support;

use std::time::Duration;

use editthinker_core::{EditCheckpoint, EditorError, Image, NoCheckpoint, ProviderRequest};
use editthinker_editors::{BflEditor, EditorKind, EditorProfile};
use serde_json::{json, Value};
use support::{
    api_key, png_info, red_png, source, Answer, FakeProvider, RecordingCheckpoint, CANDIDATE_SEED,
};

const SUBMIT: &str = "/v1/flux-kontext-pro";
const POLL: &str = "/eu1/v1/get_result";

/// A profile against `server` with small retry and poll delays.
fn profile(server: &FakeProvider, key_var: &str) -> EditorProfile {
    let key = format!("bfl-{key_var}");
    support::test_profile(EditorKind::Bfl, server.url.clone(), key_var, &key)
}

async fn edit_with(
    p: &EditorProfile,
    src: &Image,
    resume: Option<&ProviderRequest>,
    checkpoint: &dyn EditCheckpoint,
) -> Result<Image, EditorError> {
    let editor = BflEditor::from_profile("b", p).unwrap();
    support::edit_once(&editor, src, resume, checkpoint).await
}

async fn edit(p: &EditorProfile, src: &Image) -> Result<Image, EditorError> {
    edit_with(p, src, None, &NoCheckpoint).await
}

fn polling_url(server: &FakeProvider, id: &str) -> String {
    format!("{}{POLL}?id={id}", server.url)
}

fn submitted(server: &FakeProvider, id: &str) -> Answer {
    Answer::Json(json!({"id": id, "polling_url": polling_url(server, id)}))
}

fn status(id: &str, status: &str) -> Answer {
    Answer::Json(json!({"id": id, "status": status, "result": null, "progress": 0.5}))
}

/// `Ready` with a signed result URL served once (a red `w`×`h` PNG).
fn ready(server: &FakeProvider, id: &str, w: u32, h: u32) -> Answer {
    let url = server.serve_file_once(&format!("{id}.png"), red_png(w, h).bytes);
    Answer::Json(json!({"id": id, "status": "Ready", "result": {"sample": url, "prompt": "p"}}))
}

#[tokio::test]
async fn submits_polls_through_pending_records_the_request_first_and_downloads_at_once() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "task-1"));
    server.answer_path(
        POLL,
        vec![status("task-1", "Pending"), status("task-1", "Pending")],
        ready(&server, "task-1", 64, 48),
    );
    let checkpoint = RecordingCheckpoint::new(&server);

    let out = edit_with(
        &profile(&server, "BFL_TEST_KEY_SUCCESS"),
        &source(80, 60),
        None,
        &checkpoint,
    )
    .await
    .unwrap();
    assert_eq!((out.width, out.height), (64, 48));
    assert_eq!(
        out.decode().unwrap().to_rgb8().get_pixel(1, 1).0,
        [255, 0, 0]
    );

    let got = server.requests();
    let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, [SUBMIT, POLL, POLL, POLL]);
    let submit = &got[0];
    assert_eq!(submit.method, "POST");
    assert_eq!(submit.header("x-key"), Some("bfl-BFL_TEST_KEY_SUCCESS"));
    assert_eq!(submit.header("authorization"), None);
    assert_eq!(submit.header("content-type"), Some("application/json"));
    let body = submit.json();
    assert_eq!(body["prompt"], "make it so");
    let image = body["input_image"].as_str().unwrap();
    assert!(!image.starts_with("data:"), "plain base64");
    assert_eq!(png_info(image), (true, 80, 60), "a PNG of the source size");
    assert_eq!(body["aspect_ratio"], "4:3", "derived from the source");
    // Sorted: serde_json keeps insertion order when another crate turns on
    // its `preserve_order` feature.
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["aspect_ratio", "input_image", "prompt"],
        "nothing unconfigured"
    );
    for poll in &got[1..] {
        assert_eq!(poll.method, "GET");
        assert_eq!(poll.header("x-key"), Some("bfl-BFL_TEST_KEY_SUCCESS"));
    }
    assert!(
        got[2].at - got[1].at >= Duration::from_millis(15),
        "polls are spaced"
    );

    let calls = checkpoint.calls();
    assert_eq!(calls.len(), 1, "the checkpoint is called exactly once");
    let (recorded, seen) = &calls[0];
    assert_eq!(recorded.id, "task-1");
    assert_eq!(
        recorded.data,
        json!({"polling_url": polling_url(&server, "task-1")})
    );
    assert_eq!(seen, &[SUBMIT], "recorded before the first poll");

    let fetched = server.downloads();
    assert_eq!(fetched.len(), 1, "the signed URL is fetched exactly once");
    assert_eq!(
        fetched[0].header("x-key"),
        None,
        "no key to the result host"
    );
    // Fetched right after the final poll, with no other request between
    // (how soon is a matter for benchmarks, not assertions).
    assert!(fetched[0].at >= got[3].at);
}

#[tokio::test]
async fn configured_options_are_sent_to_the_configured_model() {
    let server = FakeProvider::start().await;
    server.answer_path("/v1/flux-kontext-max", vec![], submitted(&server, "t"));
    server.answer_path(POLL, vec![], ready(&server, "t", 16, 16));
    let mut p = profile(&server, "BFL_TEST_KEY_OPTIONS");
    p.model = Some("flux-kontext-max".into());
    p.seed = Some(42);
    p.aspect_ratio = Some("16:9".into());
    p.output_format = Some("jpeg".into());
    p.safety_tolerance = Some(2);
    p.prompt_upsampling = Some(true);
    edit(&p, &source(32, 32)).await.unwrap();
    let body = server.requests_to("/v1/flux-kontext-max")[0].json();
    assert_eq!(body["seed"], 42);
    assert_eq!(body["aspect_ratio"], "16:9", "the configured ratio wins");
    assert_eq!(body["output_format"], "jpeg");
    assert_eq!(body["safety_tolerance"], 2);
    assert_eq!(body["prompt_upsampling"], true);
}

#[tokio::test]
async fn a_candidate_seed_is_sent_in_place_of_the_profile_seed() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "t"));
    server.answer_path(POLL, vec![], ready(&server, "t", 16, 16));
    let mut p = profile(&server, "BFL_TEST_KEY_CANDIDATE_SEED");
    p.seed = Some(42);
    let editor = BflEditor::from_profile("b", &p).unwrap();
    support::edit_seeded(&editor, &source(32, 32))
        .await
        .unwrap();
    assert_eq!(server.requests_to(SUBMIT)[0].json()["seed"], CANDIDATE_SEED);
}

#[tokio::test]
async fn flux_2_gets_no_derived_aspect_ratio() {
    let server = FakeProvider::start().await;
    server.answer_path("/v1/flux-2-pro", vec![], submitted(&server, "t"));
    server.answer_path(POLL, vec![], ready(&server, "t", 16, 16));
    let mut p = profile(&server, "BFL_TEST_KEY_FLUX2");
    p.model = Some("flux-2-pro".into());
    edit(&p, &source(32, 16)).await.unwrap();
    let body = server.requests_to("/v1/flux-2-pro")[0].json();
    assert_eq!(body.get("aspect_ratio"), None);
}

#[tokio::test]
async fn retry_after_is_honoured_on_429_then_the_edit_succeeds() {
    let server = FakeProvider::start().await;
    server.answer_path(
        SUBMIT,
        vec![Answer::Status(
            429,
            Some("1"),
            json!({"detail": "You have exceeded the number of active tasks"}).to_string(),
        )],
        submitted(&server, "t"),
    );
    server.answer_path(POLL, vec![], ready(&server, "t", 16, 16));
    edit(&profile(&server, "BFL_TEST_KEY_429"), &source(32, 32))
        .await
        .unwrap();
    let submits = server.requests_to(SUBMIT);
    assert_eq!(submits.len(), 2);
    let pause = submits[1].at - submits[0].at;
    assert!(pause >= Duration::from_millis(950), "{pause:?}");
}

#[tokio::test]
async fn a_5xx_on_a_poll_is_retried() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "t"));
    server.answer_path(
        POLL,
        vec![Answer::Status(502, None, "bad gateway".into())],
        ready(&server, "t", 16, 16),
    );
    edit(&profile(&server, "BFL_TEST_KEY_5XX"), &source(32, 32))
        .await
        .unwrap();
    assert_eq!(server.requests_to(SUBMIT).len(), 1, "one submission");
    assert_eq!(server.requests_to(POLL).len(), 2);
}

#[tokio::test]
async fn a_submission_that_breaks_off_after_sending_is_ambiguous_and_sent_once() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![Answer::Drop], submitted(&server, "t"));
    server.answer_path(POLL, vec![], ready(&server, "t", 16, 16));
    let checkpoint = RecordingCheckpoint::new(&server);
    let err = edit_with(
        &profile(&server, "BFL_TEST_KEY_DROP"),
        &source(32, 32),
        None,
        &checkpoint,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, EditorError::Ambiguous(_)), "{err:?}");
    assert_eq!(server.requests_to(SUBMIT).len(), 1, "never resent");
    assert!(server.requests_to(POLL).is_empty());
    assert!(checkpoint.calls().is_empty(), "nothing to record");
}

#[tokio::test]
async fn a_500_on_the_submission_is_ambiguous_and_a_503_is_retried() {
    let server = FakeProvider::start().await;
    server.answer_path(
        SUBMIT,
        vec![Answer::Status(
            500,
            None,
            "{\"detail\": \"Internal Server Error\"}".into(),
        )],
        submitted(&server, "t"),
    );
    let err = edit(&profile(&server, "BFL_TEST_KEY_500"), &source(32, 32))
        .await
        .unwrap_err();
    assert!(matches!(err, EditorError::Ambiguous(_)), "{err:?}");
    assert_eq!(server.requests_to(SUBMIT).len(), 1);

    let server = FakeProvider::start().await;
    server.answer_path(
        SUBMIT,
        vec![Answer::Status(
            503,
            None,
            "{\"detail\": \"Service Unavailable\"}".into(),
        )],
        submitted(&server, "t"),
    );
    server.answer_path(POLL, vec![], ready(&server, "t", 16, 16));
    edit(&profile(&server, "BFL_TEST_KEY_503"), &source(32, 32))
        .await
        .unwrap();
    assert_eq!(server.requests_to(SUBMIT).len(), 2);
}

#[tokio::test]
async fn a_poll_that_breaks_off_is_retried() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "t"));
    server.answer_path(
        POLL,
        vec![Answer::Drop, Answer::Drop],
        ready(&server, "t", 16, 16),
    );
    edit(&profile(&server, "BFL_TEST_KEY_POLL_DROP"), &source(32, 32))
        .await
        .unwrap();
    assert_eq!(server.requests_to(SUBMIT).len(), 1, "one submission");
    assert_eq!(server.requests_to(POLL).len(), 3, "a GET is repeated");
}

#[tokio::test]
async fn cancel_calls_nothing_bfl_has_no_cancel() {
    let server = FakeProvider::start().await;
    let editor = BflEditor::from_profile("b", &profile(&server, "BFL_TEST_KEY_CANCEL")).unwrap();
    let handle = ProviderRequest {
        id: "t".into(),
        data: json!({"polling_url": polling_url(&server, "t")}),
    };
    editthinker_core::Editor::cancel(&editor, &handle)
        .await
        .unwrap();
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn moderation_is_refused_with_the_reason() {
    for moderated in ["Request Moderated", "Content Moderated"] {
        let server = FakeProvider::start().await;
        server.answer_path(SUBMIT, vec![], submitted(&server, "t"));
        server.answer_path(
            POLL,
            vec![status("t", "Pending")],
            Answer::Json(json!({"id": "t", "status": moderated, "details": {"Moderation Reasons": ["Derivative Works Filter"]}})),
        );
        let err = edit(&profile(&server, "BFL_TEST_KEY_MODERATED"), &source(32, 32))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EditorError::Refused(m)
                if m.contains(moderated) && m.contains("Derivative Works Filter")),
            "{err:?}"
        );
        assert!(server.downloads().is_empty());
        assert_eq!(server.requests_to(SUBMIT).len(), 1);
    }
}

#[tokio::test]
async fn a_generation_error_is_invalid() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "t"));
    server.answer_path(
        POLL,
        vec![],
        Answer::Json(json!({"id": "t", "status": "Error", "details": "generation failed"})),
    );
    let err = edit(&profile(&server, "BFL_TEST_KEY_ERROR"), &source(32, 32))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EditorError::Invalid(m) if m.contains("generation failed")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_bad_key_or_no_credits_is_auth_without_retry() {
    for (code, body) in [
        (401, json!({"detail": "Invalid API key"})),
        (403, json!({"detail": "Forbidden"})),
        (402, json!({"detail": "Insufficient credits"})),
    ] {
        let server = FakeProvider::start().await;
        server.answer_path(SUBMIT, vec![], Answer::Status(code, None, body.to_string()));
        let err = edit(&profile(&server, "BFL_TEST_KEY_AUTH"), &source(32, 32))
            .await
            .unwrap_err();
        assert!(matches!(&err, EditorError::Auth(_)), "{code}: {err:?}");
        assert_eq!(server.requests().len(), 1, "{code}: no retry");
    }
}

#[tokio::test]
async fn a_wait_past_timeout_seconds_is_transient() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "slow-1"));
    server.answer_path(POLL, vec![], status("slow-1", "Pending"));
    let mut p = profile(&server, "BFL_TEST_KEY_SLOW");
    p.timeout_seconds = 0.3;
    p.poll_interval_ms = Some(50);
    let err = edit(&p, &source(32, 32)).await.unwrap_err();
    assert!(
        matches!(&err, EditorError::Transient(m) if m.contains("slow-1") && m.contains("Pending")),
        "{err:?}"
    );
    let polls = server.requests_to(POLL).len();
    assert!((3..=7).contains(&polls), "{polls} polls in 0.3 s");
}

#[tokio::test]
async fn a_resumed_request_is_polled_not_submitted() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "new"));
    server.answer_path(
        POLL,
        vec![status("old", "Pending")],
        ready(&server, "old", 24, 24),
    );
    let handle = ProviderRequest {
        id: "old".into(),
        data: json!({"polling_url": polling_url(&server, "old")}),
    };
    let checkpoint = RecordingCheckpoint::new(&server);
    let out = edit_with(
        &profile(&server, "BFL_TEST_KEY_RESUME"),
        &source(32, 32),
        Some(&handle),
        &checkpoint,
    )
    .await
    .unwrap();
    assert_eq!((out.width, out.height), (24, 24));
    assert_eq!(server.requests_to(SUBMIT).len(), 0, "nothing is paid twice");
    let polls = server.requests_to(POLL);
    assert_eq!(polls.len(), 2);
    assert_eq!(polls[0].header("x-key"), Some("bfl-BFL_TEST_KEY_RESUME"));
    assert!(checkpoint.calls().is_empty(), "nothing new to record");
    assert_eq!(server.downloads().len(), 1);
}

#[tokio::test]
async fn a_vanished_request_is_submitted_once_anew() {
    for gone in [
        Answer::Json(json!({"id": "old", "status": "Task not found"})),
        Answer::Status(404, None, json!({"detail": "Not found"}).to_string()),
    ] {
        let server = FakeProvider::start().await;
        server.answer_path(SUBMIT, vec![], submitted(&server, "new"));
        server.answer_path("/old", vec![], gone.clone());
        server.answer_path(POLL, vec![], ready(&server, "new", 16, 16));
        let handle = ProviderRequest {
            id: "old".into(),
            data: json!({"polling_url": format!("{}/old", server.url)}),
        };
        let checkpoint = RecordingCheckpoint::new(&server);
        edit_with(
            &profile(&server, "BFL_TEST_KEY_VANISHED"),
            &source(32, 32),
            Some(&handle),
            &checkpoint,
        )
        .await
        .unwrap();
        assert_eq!(server.requests_to("/old").len(), 1, "{gone:?}");
        assert_eq!(server.requests_to(SUBMIT).len(), 1, "{gone:?}");
        let calls = checkpoint.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0.id, "new");
    }
}

#[tokio::test]
async fn a_resumed_request_whose_result_expired_is_submitted_anew() {
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "new"));
    let expired = format!("{}/files/expired.png?Signature=x", server.url);
    server.answer_path(
        "/old",
        vec![],
        Answer::Json(json!({"id": "old", "status": "Ready", "result": {"sample": expired}})),
    );
    server.answer_path(POLL, vec![], ready(&server, "new", 16, 16));
    let handle = ProviderRequest {
        id: "old".into(),
        data: json!({"polling_url": format!("{}/old", server.url)}),
    };
    edit_with(
        &profile(&server, "BFL_TEST_KEY_EXPIRED"),
        &source(32, 32),
        Some(&handle),
        &NoCheckpoint,
    )
    .await
    .unwrap();
    assert_eq!(server.requests_to(SUBMIT).len(), 1);
    assert_eq!(
        server.downloads().len(),
        2,
        "the expired one, then the new one"
    );
}

#[tokio::test]
async fn a_failing_checkpoint_stops_before_polling() {
    struct Broken;
    #[async_trait::async_trait]
    impl EditCheckpoint for Broken {
        async fn submitted(&self, _: &ProviderRequest) -> Result<(), EditorError> {
            Err(EditorError::Transient("lease lost".into()))
        }
    }
    let server = FakeProvider::start().await;
    server.answer_path(SUBMIT, vec![], submitted(&server, "t"));
    server.answer_path(POLL, vec![], ready(&server, "t", 16, 16));
    let err = edit_with(
        &profile(&server, "BFL_TEST_KEY_BROKEN"),
        &source(32, 32),
        None,
        &Broken,
    )
    .await
    .unwrap_err();
    assert_eq!(err, EditorError::Transient("lease lost".into()));
    assert_eq!(server.requests_to(POLL).len(), 0);
}

#[test]
fn configuration_errors_name_their_key() {
    let ok = || {
        let mut p = EditorProfile::new(EditorKind::Bfl);
        p.api_key_env = Some(api_key("BFL_TEST_KEY_CONFIG", "k"));
        p
    };
    let error = |p: EditorProfile| BflEditor::from_profile("b", &p).unwrap_err().to_string();
    let e = BflEditor::from_profile("b", &ok()).unwrap();
    assert_eq!(
        e.endpoint().as_str(),
        "https://api.bfl.ai/v1/flux-kontext-pro"
    );
    for model in ["../x", "a/b", "", "flux kontext", "flux-kontext-pro?x=1"] {
        let mut p = ok();
        p.model = Some(model.into());
        assert!(error(p).starts_with("editors.b.model: "), "{model}");
    }
    for tolerance in [-1, 7] {
        let mut p = ok();
        p.safety_tolerance = Some(tolerance);
        assert!(
            error(p).starts_with("editors.b.safety_tolerance: "),
            "{tolerance}"
        );
    }
    for ratio in ["22:9", "9:22", "wide", "0:1"] {
        let mut p = ok();
        p.aspect_ratio = Some(ratio.into());
        assert!(error(p).starts_with("editors.b.aspect_ratio: "), "{ratio}");
    }
    let mut p = ok();
    p.output_format = Some("webp".into());
    assert!(error(p).starts_with("editors.b.output_format: "));
    let mut p = ok();
    p.poll_interval_ms = Some(0);
    assert!(error(p).starts_with("editors.b.poll_interval_ms: "));
    let mut p = ok();
    p.guidance_scale = Some(3.5);
    assert_eq!(
        error(p),
        "editors.b.guidance_scale: not used by the bfl kind"
    );
    let mut p = ok();
    p.input.insert("x".into(), Value::from(1));
    assert_eq!(error(p), "editors.b.input: not used by the bfl kind");
    let mut p = ok();
    p.api_key_env = None;
    assert!(error(p).starts_with("editors.b.api_key_env: missing"));
}

#[test]
fn in_flight_defaults_follow_the_provider() {
    let mut p = EditorProfile::new(EditorKind::Bfl);
    assert_eq!(p.effective_max_in_flight(), 24);
    p.model = Some("flux-kontext-max".into());
    assert_eq!(p.effective_max_in_flight(), 6);
    p.max_in_flight = Some(3);
    assert_eq!(p.effective_max_in_flight(), 3, "an explicit value wins");
}
