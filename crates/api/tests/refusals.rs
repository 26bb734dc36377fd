//! Bad input answered in process (the router through `oneshot`, a real
//! SQLite store in a temporary folder): each refusal its own small test,
//! checking the status, the problem's `code` and the field it names.
//! Child-process tests (`tests/` at the root) keep what needs a socket, a
//! signal or a fault.

mod support;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::Engine;
use editthinker_api::intake::Limits;
use serde_json::{json, Value};
use support::*;
use tower::ServiceExt;

#[tokio::test]
async fn a_valid_create_is_accepted() {
    let (status, job) = send(create(|_| {})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["sandbox"], false, "a real editor's job is not labelled");
}

/// A job on a sandbox editor is labelled `sandbox` in the create's answer,
/// in a read and in the listing, and the editor is in `GET /v1/editors`.
#[tokio::test]
async fn a_sandbox_editors_job_is_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let router = replica_with(&store, &dir, None, "sandbox");
    let body = |response: axum::response::Response| async move {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    let created = body(router.clone().oneshot(create(|_| {})).await.unwrap()).await;
    assert_eq!(created["sandbox"], true, "{created}");
    let get = |uri: String| Request::get(uri).body(Body::empty()).unwrap();
    let read = body(
        router
            .clone()
            .oneshot(get(format!("/v1/jobs/{}", created["id"].as_str().unwrap())))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read["sandbox"], true, "{read}");
    let listed = body(
        router
            .clone()
            .oneshot(get("/v1/jobs".into()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["jobs"][0]["sandbox"], true, "{listed}");
    let editors = body(router.oneshot(get("/v1/editors".into())).await.unwrap()).await;
    assert_eq!(editors["editors"][0]["sandbox"], true, "{editors}");
}

#[tokio::test]
async fn a_body_that_is_not_json() {
    let answer = send(post("application/json", "{not json")).await;
    assert_problem(answer, StatusCode::BAD_REQUEST, "malformed_request", None);
}

#[tokio::test]
async fn text_after_the_object() {
    let body = json!({"image": {"base64": PNG_1X1}, "instruction": "x"}).to_string() + "GARBAGE";
    let answer = send(post("application/json", body)).await;
    assert_problem(answer, StatusCode::BAD_REQUEST, "malformed_request", None);
}

#[tokio::test]
async fn neither_json_nor_multipart() {
    let answer = send(post("text/plain", "make it red")).await;
    assert_problem(
        answer,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    );
}

#[tokio::test]
async fn an_unknown_field() {
    let answer = send(create(|b| b["colour"] = json!("red"))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("colour"),
    );
}

#[tokio::test]
async fn a_missing_instruction() {
    let answer = send(create(|b| {
        b.as_object_mut().unwrap().remove("instruction");
    }))
    .await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("instruction"),
    );
}

#[tokio::test]
async fn a_blank_instruction() {
    let answer = send(create(|b| b["instruction"] = json!("   "))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("instruction"),
    );
}

#[tokio::test]
async fn an_instruction_over_4000_characters() {
    let answer = send(create(|b| b["instruction"] = json!("é".repeat(4001)))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("instruction"),
    );
}

#[tokio::test]
async fn a_nul_in_the_instruction() {
    let answer = send(create(|b| b["instruction"] = json!("make\u{0} it red"))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("instruction"),
    );
}

#[tokio::test]
async fn max_turns_out_of_range() {
    let answer = send(create(|b| b["options"] = json!({"max_turns": 0}))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("options.max_turns"),
    );
}

/// This process's configuration has no `[verifier]` (`Limits::default()`).
#[tokio::test]
async fn options_that_need_a_verifier_the_server_lacks() {
    for (options, field) in [
        (
            json!({"candidates": 3, "rank_by": "verifier"}),
            "options.rank_by",
        ),
        (json!({"stop": {"verifier": 7}}), "options.stop.verifier"),
    ] {
        let (status, problem) = send(create(|b| b["options"] = options)).await;
        assert_eq!(
            problem["detail"],
            format!("{field}: needs a [verifier] section in the server's configuration")
        );
        assert_problem(
            (status, problem),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some(field),
        );
    }
}

#[tokio::test]
async fn candidates_out_of_range() {
    let answer = send(create(|b| b["options"] = json!({"candidates": 9}))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("options.candidates"),
    );
}

#[tokio::test]
async fn options_given_as_an_array() {
    let answer = send(create(|b| b["options"] = json!([1]))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("options"),
    );
}

#[tokio::test]
async fn priority_out_of_range() {
    let answer = send(create(|b| b["priority"] = json!(11))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("priority"),
    );
}

#[tokio::test]
async fn both_base64_and_url() {
    let answer = send(create(|b| {
        b["image"]["url"] = json!("https://example.com/a.png");
    }))
    .await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("image"),
    );
}

#[tokio::test]
async fn base64_that_does_not_decode() {
    let answer = send(create(|b| b["image"]["base64"] = json!("!!"))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("image.base64"),
    );
}

#[tokio::test]
async fn bytes_that_are_no_image() {
    let text = base64::engine::general_purpose::STANDARD.encode(b"hello, not an image");
    let answer = send(create(|b| b["image"]["base64"] = json!(text))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "image_unsupported",
        Some("image"),
    );
}

#[tokio::test]
async fn an_unknown_editor() {
    let answer = send(create(|b| b["editor"] = json!("nope"))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_editor",
        Some("editor"),
    );
}

#[tokio::test]
async fn metadata_that_is_not_an_object() {
    let answer = send(create(|b| b["metadata"] = json!("x"))).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("metadata"),
    );
}

#[tokio::test]
async fn a_webhook_without_a_signing_secret() {
    let answer = send(create(|b| {
        b["webhook"] = json!({"url": "https://example.com/hook"});
    }))
    .await;
    assert_problem(
        answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_configured",
        None,
    );
}

#[tokio::test]
async fn a_bad_idempotency_key() {
    let mut request = create(|_| {});
    request
        .headers_mut()
        .insert("idempotency-key", "has space".parse().unwrap());
    let answer = send(request).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("Idempotency-Key"),
    );
}

#[tokio::test]
async fn a_job_that_does_not_exist() {
    let request = Request::get(format!("/v1/jobs/{}", uuid::Uuid::now_v7()))
        .body(Body::empty())
        .unwrap();
    assert_problem(
        send(request).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
}

#[tokio::test]
async fn a_list_page_size_of_zero() {
    let request = Request::get("/v1/jobs?limit=0")
        .body(Body::empty())
        .unwrap();
    let answer = send(request).await;
    assert_problem(
        answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("limit"),
    );
}

/// A create that skipped the limit's pre-check (its tenant was counted
/// well under the limit moments ago) and is then refused by the insert,
/// because jobs came from elsewhere meanwhile (another replica), answers
/// `429` and leaves no image behind (crates/api/src/headroom.rs).
#[tokio::test]
async fn a_create_refused_by_the_insert_after_a_skipped_pre_check_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let router = replica(&store, &dir, Some(4));
    let created = |router: Router| async move {
        let response = router.oneshot(create(|_| {})).await.unwrap();
        response.status()
    };
    // Counted at 0, then created for: 0 + 1 + 1 ≤ 4 / 2, still well under.
    assert_eq!(created(router.clone()).await, StatusCode::ACCEPTED);
    // Another replica fills the tenant up to its limit.
    let other = replica(&store, &dir, Some(4));
    for _ in 0..3 {
        assert_eq!(created(other.clone()).await, StatusCode::ACCEPTED);
    }
    assert_eq!(created(other).await, StatusCode::TOO_MANY_REQUESTS);
    let job_folders = || {
        std::fs::read_dir(dir.path().join("blobs/jobs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let broken_image = || create(|b| b["image"]["base64"] = json!("bm90IGFuIGltYWdl"));
    // The pre-check is skipped: a broken image is decoded (and refused as
    // such) where a pre-check would have answered 429 first.
    let response = router.clone().oneshot(broken_image()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let before = job_folders();
    let response = router.clone().oneshot(create(|_| {})).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        job_folders(),
        before,
        "the refused create's image was removed"
    );
    // The refusal forgot the count: the next create is pre-checked and
    // refused before its image is even decoded.
    let response = router.clone().oneshot(broken_image()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let response = router.oneshot(create(|_| {})).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(job_folders(), before);
}

/// The likeliest mistake, the image as a bare base64 string, is described
/// in the document's terms, without the image repeated back.
#[tokio::test]
async fn an_image_sent_as_a_string_is_described_not_echoed() {
    let image = PNG_1X1.repeat(40);
    let (status, problem) = send(create(|b| b["image"] = json!(image))).await;
    assert_problem(
        (status, problem.clone()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("image"),
    );
    let detail = problem["detail"].as_str().unwrap();
    assert_eq!(
        detail,
        "image: must be an object with `base64` (the image's bytes in base64) or `url` (got a string)"
    );
    assert!(!detail.contains("iVBOR"), "{detail}");
}

#[tokio::test]
async fn a_number_sent_as_a_string_names_the_range() {
    let (status, problem) = send(create(|b| b["options"] = json!({"max_turns": "3"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["field"], "options.max_turns");
    assert_eq!(
        problem["detail"],
        "options.max_turns: must be an integer from 1 to 10 (got a string)"
    );
}

#[tokio::test]
async fn an_unknown_field_s_long_name_is_cut() {
    let name = "z".repeat(500);
    let (status, problem) = send(create(|b| b[name.as_str()] = json!(1))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(!detail.contains(&"z".repeat(65)), "{detail}");
    assert!(detail.contains(&format!("{}…", "z".repeat(64))), "{detail}");
}

#[tokio::test]
async fn a_body_over_the_limit_names_the_limit() {
    let limit = editthinker_api::body_limit(&Limits::default());
    let body = format!(
        "{{\"image\":{{\"base64\":\"{}\"}},\"instruction\":\"x\"}}",
        "A".repeat(limit + 1)
    );
    let (status, problem) = send(post("application/json", body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert_eq!(problem["code"], "too_large");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("over the limit of {limit} bytes")),
        "{problem}"
    );
}

/// A method a path does not take gets a problem and `Allow`, not axum's
/// empty `405`.
#[tokio::test]
async fn a_method_the_path_does_not_take_gets_a_problem() {
    let (router, _dir) = app().await;
    let response = router
        .oneshot(Request::delete("/v1/jobs").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allow = response.headers()[header::ALLOW]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let problem: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(problem["code"], "method_not_allowed", "{problem}");
    assert_eq!(problem["status"], 405);
    assert_eq!(
        problem["detail"],
        "`DELETE` is not allowed on `/v1/jobs`: the Allow header lists the methods it takes"
    );
}

/// Query strings that do not parse are described in the API's terms, not
/// the extractor's.
#[tokio::test]
async fn query_values_that_do_not_parse() {
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let (status, problem) = send(get("/v1/jobs?limit=ten")).await;
    assert_problem(
        (status, problem.clone()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("limit"),
    );
    assert_eq!(problem["detail"], "limit: must be an integer from 1 to 100");
    let id = "0193f1c2-7a4e-7b1a-9c55-3f0e5b8d2a10";
    let (status, problem) = send(get(&format!("/v1/jobs/{id}/events?after=x"))).await;
    assert_problem(
        (status, problem.clone()),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("after"),
    );
    assert_eq!(problem["detail"], "after: must be an event id (0 or more)");
}
