//! The `replicate` editor kind against a fake Replicate API: prediction
//! creation, polling of `urls.get`, the output file, checkpoint and resume.

mod support;

use std::time::Duration;

use editthinker_core::{EditCheckpoint, EditorError, Image, NoCheckpoint, ProviderRequest};
use editthinker_editors::{EditorKind, EditorProfile, ReplicateEditor};
use image::{DynamicImage, Rgb, RgbImage};
use serde_json::{json, Value};
use support::{
    api_key, image_info, png_info, red_png, source, Answer, FakeProvider, RecordingCheckpoint,
    CANDIDATE_SEED,
};

const CREATE: &str = "/v1/models/black-forest-labs/flux-kontext-pro/predictions";

fn get_path(id: &str) -> String {
    format!("/v1/predictions/{id}")
}

/// A profile against `server` with small retry and poll delays.
fn profile(server: &FakeProvider, key_var: &str) -> EditorProfile {
    let key = format!("r8_{key_var}");
    support::test_profile(
        EditorKind::Replicate,
        format!("{}/v1", server.url),
        key_var,
        &key,
    )
}

async fn edit_with(
    p: &EditorProfile,
    src: &Image,
    resume: Option<&ProviderRequest>,
    checkpoint: &dyn EditCheckpoint,
) -> Result<Image, EditorError> {
    let editor = ReplicateEditor::from_profile("r", p).unwrap();
    support::edit_once(&editor, src, resume, checkpoint).await
}

async fn edit(p: &EditorProfile, src: &Image) -> Result<Image, EditorError> {
    edit_with(p, src, None, &NoCheckpoint).await
}

fn urls(server: &FakeProvider, id: &str) -> Value {
    json!({
        "get": format!("{}{}", server.url, get_path(id)),
        "cancel": format!("{}{}/cancel", server.url, get_path(id)),
    })
}

fn prediction(server: &FakeProvider, id: &str, status: &str) -> Answer {
    Answer::Json(json!({
        "id": id, "model": "black-forest-labs/flux-kontext-pro", "status": status,
        "output": null, "error": null, "urls": urls(server, id),
    }))
}

fn created(server: &FakeProvider, id: &str) -> Answer {
    match prediction(server, id, "starting") {
        Answer::Json(v) => Answer::JsonWith(201, v),
        _ => unreachable!(),
    }
}

/// `succeeded`, its output served once.
fn succeeded(server: &FakeProvider, id: &str, w: u32, h: u32) -> Answer {
    let url = server.serve_file_once(&format!("{id}.png"), red_png(w, h).bytes);
    Answer::Json(json!({
        "id": id, "status": "succeeded", "output": url, "error": null, "urls": urls(server, id),
    }))
}

fn failed(server: &FakeProvider, id: &str, error: &str) -> Answer {
    Answer::Json(json!({
        "id": id, "status": "failed", "output": null, "error": error, "urls": urls(server, id),
    }))
}

#[tokio::test]
async fn creates_polls_starting_and_processing_records_first_and_downloads_at_once() {
    let server = FakeProvider::start().await;
    server.answer_path(CREATE, vec![], created(&server, "p1"));
    server.answer_path(
        &get_path("p1"),
        vec![
            prediction(&server, "p1", "starting"),
            prediction(&server, "p1", "processing"),
        ],
        succeeded(&server, "p1", 50, 20),
    );
    let checkpoint = RecordingCheckpoint::new(&server);

    let out = edit_with(
        &profile(&server, "REPLICATE_TEST_KEY_SUCCESS"),
        &source(60, 40),
        None,
        &checkpoint,
    )
    .await
    .unwrap();
    assert_eq!((out.width, out.height), (50, 20));

    let got = server.requests();
    let get = get_path("p1");
    let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, [CREATE, get.as_str(), get.as_str(), get.as_str()]);
    let create = &got[0];
    assert_eq!(create.method, "POST");
    assert_eq!(
        create.header("authorization"),
        Some("Bearer r8_REPLICATE_TEST_KEY_SUCCESS")
    );
    assert_eq!(create.header("prefer"), None, "no blocking create");
    let body = create.json();
    // Sorted: serde_json keeps insertion order when another crate turns on
    // its `preserve_order` feature.
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["input"]);
    let input = &body["input"];
    assert_eq!(input["prompt"], "make it so");
    let image = input["input_image"].as_str().unwrap();
    assert!(image.starts_with("data:image/png;base64,"), "{image:.40}");
    assert_eq!(png_info(image), (true, 60, 40));
    assert_eq!(input.as_object().unwrap().len(), 2, "nothing unconfigured");
    for r in &got[1..] {
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.header("authorization"),
            Some("Bearer r8_REPLICATE_TEST_KEY_SUCCESS")
        );
    }

    let calls = checkpoint.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0.id, "p1");
    assert_eq!(calls[0].0.data, json!({"urls": urls(&server, "p1")}));
    assert_eq!(calls[0].1, [CREATE], "recorded before the first poll");

    let fetched = server.downloads();
    assert_eq!(fetched.len(), 1, "the output is fetched exactly once");
    assert_eq!(fetched[0].header("authorization"), None);
    assert!(fetched[0].at >= got[3].at, "fetched after the final poll");
}

#[tokio::test]
async fn a_large_source_is_sent_as_a_jpeg_data_url_under_the_limit() {
    let server = FakeProvider::start().await;
    server.answer_path(CREATE, vec![], created(&server, "p"));
    server.answer_path(&get_path("p"), vec![], succeeded(&server, "p", 16, 16));
    // Noise does not compress: the PNG is far over 256 KB.
    let noisy = Image::from_pixels(&DynamicImage::ImageRgb8(RgbImage::from_fn(
        640,
        480,
        |x, y| {
            let v = (x.wrapping_mul(7919) ^ y.wrapping_mul(104_729)).wrapping_mul(2_654_435_761);
            Rgb([(v >> 8) as u8, (v >> 16) as u8, (v >> 24) as u8])
        },
    )));
    assert!(noisy.bytes.len() > 256_000);
    edit(&profile(&server, "REPLICATE_TEST_KEY_LARGE"), &noisy)
        .await
        .unwrap();
    let body = server.requests_to(CREATE)[0].json();
    let image = body["input"]["input_image"].as_str().unwrap();
    assert!(image.len() <= 256_000, "{} bytes", image.len());
    let payload = image.strip_prefix("data:image/jpeg;base64,").unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .unwrap();
    let (is_png, w, h) = image_info(&bytes);
    assert!(!is_png);
    assert!(
        w <= 640 && (f64::from(w) / f64::from(h) - 4.0 / 3.0).abs() < 0.02,
        "{w}x{h}"
    );
}

#[tokio::test]
async fn configured_inputs_are_merged() {
    let server = FakeProvider::start().await;
    let create = "/v1/models/black-forest-labs/flux-kontext-dev/predictions";
    server.answer_path(create, vec![], created(&server, "p"));
    server.answer_path(&get_path("p"), vec![], succeeded(&server, "p", 16, 16));
    let mut p = profile(&server, "REPLICATE_TEST_KEY_INPUTS");
    p.model = Some("black-forest-labs/flux-kontext-dev".into());
    p.seed = Some(5);
    p.output_format = Some("jpeg".into());
    p.input.insert("guidance".into(), json!(2.5));
    p.input.insert("num_inference_steps".into(), json!(28));
    edit(&p, &source(32, 32)).await.unwrap();
    let input = server.requests_to(create)[0].json()["input"].clone();
    assert_eq!(input["seed"], 5);
    assert_eq!(input["output_format"], "jpg", "Replicate's spelling");
    assert_eq!(input["guidance"], 2.5);
    assert_eq!(input["num_inference_steps"], 28);
}

#[tokio::test]
async fn a_candidate_seed_is_sent_in_place_of_the_configured_seed() {
    // The profile's `seed`, or a `seed` given in `input`.
    for key_var in [
        "REPLICATE_TEST_KEY_SEED_PROFILE",
        "REPLICATE_TEST_KEY_SEED_INPUT",
    ] {
        let server = FakeProvider::start().await;
        server.answer_path(CREATE, vec![], created(&server, "p"));
        server.answer_path(&get_path("p"), vec![], succeeded(&server, "p", 16, 16));
        let mut p = profile(&server, key_var);
        if key_var.ends_with("INPUT") {
            p.input.insert("seed".into(), json!(2));
        } else {
            p.seed = Some(5);
        }
        let editor = ReplicateEditor::from_profile("r", &p).unwrap();
        support::edit_seeded(&editor, &source(32, 32))
            .await
            .unwrap();
        let input = server.requests_to(CREATE)[0].json()["input"].clone();
        assert_eq!(input["seed"], CANDIDATE_SEED, "{key_var}");
    }
}

#[tokio::test]
async fn retry_after_is_honoured_on_429_then_the_edit_succeeds() {
    let server = FakeProvider::start().await;
    server.answer_path(
        CREATE,
        vec![Answer::Status(
            429,
            Some("1"),
            json!({"title": "Request was throttled", "detail": "Request was throttled.", "status": 429}).to_string(),
        )],
        created(&server, "p"),
    );
    server.answer_path(&get_path("p"), vec![], succeeded(&server, "p", 16, 16));
    edit(&profile(&server, "REPLICATE_TEST_KEY_429"), &source(32, 32))
        .await
        .unwrap();
    let creates = server.requests_to(CREATE);
    assert_eq!(creates.len(), 2);
    assert!(creates[1].at - creates[0].at >= Duration::from_millis(950));
}

#[tokio::test]
async fn a_5xx_on_a_poll_is_retried() {
    let server = FakeProvider::start().await;
    server.answer_path(CREATE, vec![], created(&server, "p"));
    server.answer_path(
        &get_path("p"),
        vec![Answer::Status(500, None, "internal".into())],
        succeeded(&server, "p", 16, 16),
    );
    edit(&profile(&server, "REPLICATE_TEST_KEY_5XX"), &source(32, 32))
        .await
        .unwrap();
    assert_eq!(server.requests_to(CREATE).len(), 1);
    assert_eq!(server.requests_to(&get_path("p")).len(), 2);
}

#[tokio::test]
async fn a_create_that_times_out_after_sending_is_ambiguous_and_sent_once() {
    let server = FakeProvider::start().await;
    server.answer_path(
        CREATE,
        vec![Answer::Hang(Duration::from_secs(5))],
        created(&server, "p"),
    );
    server.answer_path(&get_path("p"), vec![], succeeded(&server, "p", 16, 16));
    let mut p = profile(&server, "REPLICATE_TEST_KEY_TIMEOUT");
    p.timeout_seconds = 0.3;
    p.poll_interval_ms = Some(10);
    let err = edit(&p, &source(32, 32)).await.unwrap_err();
    assert!(
        matches!(&err, EditorError::Ambiguous(m) if m.contains("timed out")),
        "{err:?}"
    );
    assert_eq!(server.requests_to(CREATE).len(), 1, "never resent");
}

#[tokio::test]
async fn a_503_on_the_create_is_refused_before_work_and_retried() {
    let server = FakeProvider::start().await;
    server.answer_path(
        CREATE,
        vec![Answer::Status(
            503,
            None,
            json!({"detail": "Service Unavailable"}).to_string(),
        )],
        created(&server, "p"),
    );
    server.answer_path(&get_path("p"), vec![], succeeded(&server, "p", 16, 16));
    edit(&profile(&server, "REPLICATE_TEST_KEY_503"), &source(32, 32))
        .await
        .unwrap();
    assert_eq!(server.requests_to(CREATE).len(), 2);
}

#[tokio::test]
async fn cancel_posts_to_the_stored_urls_cancel_with_the_key() {
    let server = FakeProvider::start().await;
    let cancel = format!("{}/cancel", get_path("p"));
    server.answer_path(&cancel, vec![], prediction(&server, "p", "canceled"));
    let editor =
        ReplicateEditor::from_profile("r", &profile(&server, "REPLICATE_TEST_KEY_CANCEL")).unwrap();
    let handle = ProviderRequest {
        id: "p".into(),
        data: json!({ "urls": urls(&server, "p") }),
    };
    editthinker_core::Editor::cancel(&editor, &handle)
        .await
        .unwrap();
    let got = server.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, cancel);
    assert_eq!(
        got[0].header("authorization"),
        Some("Bearer r8_REPLICATE_TEST_KEY_CANCEL")
    );

    // A handle without urls.cancel (another version's) has nothing to call.
    let bare = ProviderRequest {
        id: "p".into(),
        data: json!({ "urls": {"get": urls(&server, "p")["get"].clone()} }),
    };
    editthinker_core::Editor::cancel(&editor, &bare)
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn cancel_with_a_rejected_key_is_auth() {
    let server = FakeProvider::start().await;
    let cancel = format!("{}/cancel", get_path("p"));
    server.answer_path(
        &cancel,
        vec![],
        Answer::Status(401, None, json!({"detail": "Invalid token."}).to_string()),
    );
    let editor =
        ReplicateEditor::from_profile("r", &profile(&server, "REPLICATE_TEST_KEY_CANCEL_AUTH"))
            .unwrap();
    let handle = ProviderRequest {
        id: "p".into(),
        data: json!({ "urls": urls(&server, "p") }),
    };
    let err = editthinker_core::Editor::cancel(&editor, &handle)
        .await
        .unwrap_err();
    assert!(matches!(err, EditorError::Auth(_)), "{err:?}");
    assert_eq!(server.requests().len(), 1, "not retried");
}

#[tokio::test]
async fn a_safety_failure_is_refused_with_the_reason_and_others_are_invalid() {
    for (error, refused) in [
        (
            "Prediction failed: the input or output was flagged as sensitive. (E005)",
            true,
        ),
        (
            "NSFW content detected. Try running it again, or try a different prompt.",
            true,
        ),
        ("input_image: could not decode", false),
    ] {
        let server = FakeProvider::start().await;
        server.answer_path(CREATE, vec![], created(&server, "p"));
        server.answer_path(
            &get_path("p"),
            vec![prediction(&server, "p", "processing")],
            failed(&server, "p", error),
        );
        let err = edit(
            &profile(&server, "REPLICATE_TEST_KEY_FAILED"),
            &source(32, 32),
        )
        .await
        .unwrap_err();
        if refused {
            assert!(
                matches!(&err, EditorError::Refused(m) if m == error),
                "{err:?}"
            );
        } else {
            assert!(
                matches!(&err, EditorError::Invalid(m) if m.contains(error)),
                "{err:?}"
            );
        }
        assert!(server.downloads().is_empty());
    }
}

#[tokio::test]
async fn a_bad_key_is_auth_without_retry() {
    let server = FakeProvider::start().await;
    server.answer_path(
        CREATE,
        vec![],
        Answer::Status(
            401,
            None,
            json!({"title": "Unauthenticated", "detail": "You did not pass a valid authentication token", "status": 401}).to_string(),
        ),
    );
    let err = edit(&profile(&server, "REPLICATE_TEST_KEY_401"), &source(32, 32))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EditorError::Auth(m) if m.contains("valid authentication token")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_resumed_prediction_is_polled_not_created() {
    let server = FakeProvider::start().await;
    server.answer_path(CREATE, vec![], created(&server, "new"));
    server.answer_path(
        &get_path("old"),
        vec![prediction(&server, "old", "processing")],
        succeeded(&server, "old", 24, 24),
    );
    let handle = ProviderRequest {
        id: "old".into(),
        data: json!({"urls": urls(&server, "old")}),
    };
    let checkpoint = RecordingCheckpoint::new(&server);
    let out = edit_with(
        &profile(&server, "REPLICATE_TEST_KEY_RESUME"),
        &source(32, 32),
        Some(&handle),
        &checkpoint,
    )
    .await
    .unwrap();
    assert_eq!((out.width, out.height), (24, 24));
    assert_eq!(server.requests_to(CREATE).len(), 0, "nothing is paid twice");
    assert_eq!(server.requests_to(&get_path("old")).len(), 2);
    assert!(checkpoint.calls().is_empty());
}

#[tokio::test]
async fn a_vanished_prediction_or_deleted_output_is_created_once_anew() {
    let gone_outputs = |server: &FakeProvider| {
        vec![
            Answer::Status(404, None, json!({"detail": "Not found."}).to_string()),
            // Outputs are deleted after an hour.
            Answer::Json(
                json!({"id": "old", "status": "succeeded", "output": null, "urls": urls(server, "old")}),
            ),
            Answer::Json(
                json!({"id": "old", "status": "succeeded", "output": format!("{}/files/deleted.png", server.url), "urls": urls(server, "old")}),
            ),
        ]
    };
    for case in 0..3 {
        let server = FakeProvider::start().await;
        server.answer_path(CREATE, vec![], created(&server, "new"));
        server.answer_path(&get_path("new"), vec![], succeeded(&server, "new", 16, 16));
        let gone = gone_outputs(&server).swap_remove(case);
        server.answer_path(&get_path("old"), vec![], gone);
        let handle = ProviderRequest {
            id: "old".into(),
            data: json!({"urls": urls(&server, "old")}),
        };
        let checkpoint = RecordingCheckpoint::new(&server);
        edit_with(
            &profile(&server, "REPLICATE_TEST_KEY_VANISHED"),
            &source(32, 32),
            Some(&handle),
            &checkpoint,
        )
        .await
        .unwrap();
        assert_eq!(server.requests_to(CREATE).len(), 1, "case {case}");
        let calls = checkpoint.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0.id, "new");
    }
}

#[test]
fn configuration_errors_name_their_key() {
    let ok = || {
        let mut p = EditorProfile::new(EditorKind::Replicate);
        p.api_key_env = Some(api_key("REPLICATE_TEST_KEY_CONFIG", "k"));
        p
    };
    let error = |p: EditorProfile| {
        ReplicateEditor::from_profile("r", &p)
            .unwrap_err()
            .to_string()
    };
    let e = ReplicateEditor::from_profile("r", &ok()).unwrap();
    assert_eq!(
        e.endpoint().as_str(),
        "https://api.replicate.com/v1/models/black-forest-labs/flux-kontext-pro/predictions"
    );
    for model in [
        "flux-kontext-pro",
        "a/b/c",
        "a/..",
        "../b",
        "a//b",
        "a/b:1234",
    ] {
        let mut p = ok();
        p.model = Some(model.into());
        assert!(error(p).starts_with("editors.r.model: "), "{model}");
    }
    for key in ["prompt", "input_image"] {
        let mut p = ok();
        p.input.insert(key.into(), json!("x"));
        assert!(error(p).starts_with("editors.r.input: "), "{key}");
    }
    let mut p = ok();
    p.seed = Some(1);
    p.input.insert("seed".into(), json!(2));
    assert!(error(p).starts_with("editors.r.input: "));
    let mut p = ok();
    p.guidance_scale = Some(2.5);
    let err = error(p);
    assert!(
        err.starts_with("editors.r.guidance_scale: not used by the replicate kind"),
        "{err}"
    );
    assert!(err.contains("input"), "points at input: {err}");
    let mut p = ok();
    p.safety_tolerance = Some(2);
    assert!(error(p).starts_with("editors.r.safety_tolerance: "));
    let mut p = ok();
    p.output_format = Some("gif".into());
    assert!(error(p).starts_with("editors.r.output_format: "));
    assert_eq!(ok().effective_max_in_flight(), 16);
}

#[tokio::test]
async fn the_probe_gets_the_model_with_the_key() {
    use editthinker_core::Editor;
    let server = FakeProvider::start().await;
    let path = "/v1/models/black-forest-labs/flux-kontext-pro";
    server.answer_path(
        path,
        vec![
            Answer::Json(json!({"owner": "black-forest-labs", "name": "flux-kontext-pro"})),
            Answer::Status(
                401,
                None,
                r#"{"title":"Unauthenticated","detail":"You did not pass a valid authentication token","status":401}"#.into(),
            ),
        ],
        Answer::Status(500, None, "no".into()),
    );
    let editor =
        ReplicateEditor::from_profile("r", &profile(&server, "REPLICATE_TEST_KEY_PROBE")).unwrap();
    assert_eq!(editor.probe().await, Some(Ok(())));
    assert!(matches!(
        editor.probe().await,
        Some(Err(EditorError::Auth(_)))
    ));
    let got = server.requests();
    assert_eq!(got.len(), 2, "nothing is created: {got:?}");
    for r in &got {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", path));
        assert_eq!(
            r.header("authorization"),
            Some("Bearer r8_REPLICATE_TEST_KEY_PROBE")
        );
    }
}
