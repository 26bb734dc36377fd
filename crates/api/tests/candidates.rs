//! Turns with candidates, answered in process (the router through
//! `oneshot`, a real SQLite store in a temporary folder, the worker's
//! writes made straight to the store): the job JSON's `turns[].chosen`
//! and `turns[].candidates`, the candidate image route, and the events'
//! data against their documented schemas.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use editthinker_api::contract::{TurnChosenData, TurnCritiquedData, TurnEditedData};
use editthinker_core::{CritiqueRecord, RankBy};
use editthinker_store::{
    BlobStore, ChosenRecord, Fairness, Lease, NewCandidate, NewTurn, PendingEditRecord, Store,
};
use serde_json::{json, Value};
use support::*;
use tower::ServiceExt;
use uuid::Uuid;

/// One API process over a fresh store, and what a worker writes with.
struct Rig {
    router: Router,
    store: Arc<dyn Store>,
    blobs: BlobStore,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        let router = replica(&store, &dir, None);
        let blobs = BlobStore::from_url(&format!("file://{}/blobs", dir.path().display())).unwrap();
        Self {
            router,
            store,
            blobs,
            _dir: dir,
        }
    }

    /// A job created with `options` and claimed by a worker.
    async fn claimed_job(&self, options: Value) -> (Uuid, Lease) {
        let (status, _, body) = self.get_or_post(create(|b| b["options"] = options)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let job: Value = serde_json::from_slice(&body).unwrap();
        let id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
        let claimed = self
            .store
            .claim("worker", 1, Duration::from_secs(60), Fairness::Tenant)
            .await
            .unwrap();
        assert_eq!(claimed[0].job.id, id);
        (id, claimed[0].lease.clone())
    }

    /// Stores `bytes` as an image and records them as candidate `index` of
    /// turn `turn`.
    async fn edited_candidate(&self, lease: &Lease, turn: u32, index: u32, bytes: &'static [u8]) {
        let key = BlobStore::candidate_key(lease.job_id, turn, index, lease.attempt);
        self.blobs
            .put(&key, Bytes::from_static(bytes))
            .await
            .unwrap();
        let candidate = NewCandidate {
            turn,
            index,
            instruction: "make it red".into(),
            seed: Some(40 + i64::from(index)),
            image_key: key,
            image_mime: "image/png".into(),
            editor_ms: 100 + u64::from(index),
            provider_request_id: None,
        };
        self.store.record_candidate(lease, candidate).await.unwrap();
    }

    async fn get_or_post(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status, parts.headers, bytes)
    }

    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.get_or_post(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    async fn job(&self, id: Uuid) -> Value {
        let (status, _, body) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&body).unwrap()
    }

    /// Image bytes at `path`, checking the answer is a cached PNG.
    async fn image(&self, path: &str) -> Bytes {
        let (status, headers, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body:?}");
        assert_eq!(headers[header::CONTENT_TYPE], "image/png");
        assert!(headers.contains_key(header::CACHE_CONTROL), "{path}");
        body
    }

    /// Checks `path` answers the `404` problem.
    async fn not_found(&self, path: &str) {
        let (status, headers, body) = self.get(path).await;
        let problem: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_problem((status, problem), StatusCode::NOT_FOUND, "not_found", None);
    }

    /// The job's stored events as clients see them, each checked against
    /// its documented schema (`contract.rs` denies unknown fields).
    async fn events(&self, id: Uuid) -> Vec<(String, Value)> {
        let rows = self.store.events_after(id, 0).await.unwrap();
        rows.iter()
            .map(|row| {
                let data = editthinker_api::events::public_event_data(row);
                let parsed = match row.kind.as_str() {
                    "turn.edited" => serde_json::from_value::<TurnEditedData>(data.clone()).err(),
                    "turn.critiqued" => {
                        serde_json::from_value::<TurnCritiquedData>(data.clone()).err()
                    }
                    "turn.chosen" => serde_json::from_value::<TurnChosenData>(data.clone()).err(),
                    _ => None,
                };
                assert!(parsed.is_none(), "{} {data}: {parsed:?}", row.kind);
                (row.kind.clone(), data)
            })
            .filter(|(kind, _)| kind.starts_with("turn."))
            .collect()
    }
}

/// A critique JSON as the worker stores it (a serialized
/// `CritiqueRecord`), with the verifier's single score when given.
fn critique(semantic: f64, verifier: Option<f64>) -> Value {
    let mut record = json!({
        "critique": {"semantic": semantic, "quality": 9.0, "reasoning": "close",
            "refined_instruction": "make it redder", "is_satisfied": null},
        "satisfied": false, "thinker_ms": 20, "raw_output": "", "error": null, "attempts": 1,
    });
    if let Some(overall) = verifier {
        record["verifier"] = json!({"overall": overall});
    }
    // Checked against the record type, as the worker writes it.
    serde_json::from_value::<CritiqueRecord>(record.clone()).unwrap();
    record
}

#[tokio::test]
async fn a_one_candidate_turn_is_its_own_candidate_0() {
    let rig = Rig::new().await;
    let (id, lease) = rig.claimed_job(json!({"max_turns": 2})).await;
    let key = BlobStore::turn_key(id, 1, lease.attempt);
    rig.blobs
        .put(&key, Bytes::from_static(b"turn one"))
        .await
        .unwrap();
    let turn = NewTurn {
        index: 1,
        instruction: "make it red".into(),
        image_key: key,
        image_mime: "image/png".into(),
        editor_ms: 250,
        provider_request_id: None,
    };
    rig.store.record_turn(&lease, turn).await.unwrap();
    rig.store
        .record_critique(&lease, 1, &critique(6.0, None), 20, "", None)
        .await
        .unwrap();

    let job = rig.job(id).await;
    let turn = &job["turns"][0];
    assert_eq!(turn["chosen"], 0, "{turn}");
    assert_eq!(
        turn["candidates"],
        json!([{
            "index": 0,
            "seed": null,
            "image_url": format!("/v1/jobs/{id}/turns/1/candidates/0/image"),
            "editor_ms": 250,
            "critique": turn["critique"],
            "verifier": null,
        }])
    );
    assert_eq!(turn["image_url"], format!("/v1/jobs/{id}/turns/1/image"));
    assert_eq!(turn["critique"]["semantic"], 6.0);

    let image = rig
        .image(&format!("/v1/jobs/{id}/turns/1/candidates/0/image"))
        .await;
    assert_eq!(&image[..], b"turn one");
    assert_eq!(
        image,
        rig.image(&format!("/v1/jobs/{id}/turns/1/image")).await
    );
    for path in [
        "1/candidates/1",
        "2/candidates/0",
        "1/candidates/x",
        "0/candidates/0",
    ] {
        rig.not_found(&format!("/v1/jobs/{id}/turns/{path}/image"))
            .await;
    }

    let events = rig.events(id).await;
    let kinds: Vec<_> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["turn.edited", "turn.critiqued"]);
    assert_eq!(events[0].1["candidate"], 0);
    // The turn's own image, as before candidates existed.
    assert_eq!(
        events[0].1["image_url"],
        format!("/v1/jobs/{id}/turns/1/image")
    );
    assert_eq!(events[1].1["candidate"], 0);
}

#[tokio::test]
async fn a_turn_of_several_lists_its_candidates_and_serves_each_image() {
    let rig = Rig::new().await;
    let (id, lease) = rig
        .claimed_job(json!({"candidates": 3, "max_turns": 2}))
        .await;
    rig.edited_candidate(&lease, 1, 0, b"t1 c0").await;
    // Candidate 1 is still at the provider.
    let pending = PendingEditRecord {
        turn: 1,
        candidate: Some(1),
        instruction: "make it red".into(),
        request: json!({"id": "req-1", "data": null}),
    };
    rig.store
        .record_pending_edit(&lease, &pending)
        .await
        .unwrap();
    rig.edited_candidate(&lease, 1, 2, b"t1 c2").await;
    for (c, semantic, verifier) in [(0, 5.0, None), (2, 8.0, Some(7.5))] {
        rig.store
            .record_candidate_critique(&lease, 1, c, &critique(semantic, verifier), 20, "", None)
            .await
            .unwrap();
    }
    let chosen = ChosenRecord {
        turn: 1,
        candidate: 2,
        score: Some(7.5),
        by: RankBy::Verifier,
    };
    rig.store.record_chosen(&lease, &chosen).await.unwrap();
    // Turn 2 has an edited candidate and has not chosen yet.
    rig.edited_candidate(&lease, 2, 0, b"t2 c0").await;

    let job = rig.job(id).await;
    let turns = job["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 1, "{job}");
    let turn = &turns[0];
    assert_eq!(turn["chosen"], 2, "{turn}");
    let candidates = turn["candidates"].as_array().unwrap();
    let indexes: Vec<_> = candidates.iter().map(|c| c["index"].clone()).collect();
    assert_eq!(indexes, [json!(0), json!(2)], "the pending one is left out");
    assert_eq!(candidates[0]["seed"], 40);
    assert_eq!(candidates[0]["verifier"], Value::Null);
    assert_eq!(candidates[0]["critique"]["semantic"], 5.0);
    assert_eq!(candidates[1]["verifier"], json!({"overall": 7.5}));
    assert_eq!(
        candidates[1]["image_url"],
        format!("/v1/jobs/{id}/turns/1/candidates/2/image")
    );
    // The turn is its chosen candidate.
    assert_eq!(turn["critique"], candidates[1]["critique"]);
    assert_eq!(turn["editor_ms"], candidates[1]["editor_ms"]);
    assert_eq!(turn["editor_ms"], 102);

    for (path, bytes) in [
        ("1/candidates/2", &b"t1 c2"[..]),
        ("1/candidates/0", b"t1 c0"),
        ("1", b"t1 c2"),
        // Served live, before its turn chose.
        ("2/candidates/0", b"t2 c0"),
    ] {
        let image = rig
            .image(&format!("/v1/jobs/{id}/turns/{path}/image"))
            .await;
        assert_eq!(&image[..], bytes, "{path}");
    }
    for path in [
        "1/candidates/1",
        "1/candidates/3",
        "2/candidates/1",
        "3/candidates/0",
    ] {
        rig.not_found(&format!("/v1/jobs/{id}/turns/{path}/image"))
            .await;
    }
    rig.not_found(&format!(
        "/v1/jobs/{}/turns/1/candidates/0/image",
        Uuid::now_v7()
    ))
    .await;

    let events = rig.events(id).await;
    let kinds: Vec<_> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "turn.edited",
            "turn.edited",
            "turn.critiqued",
            "turn.critiqued",
            "turn.chosen",
            "turn.edited"
        ]
    );
    assert_eq!(events[1].1["candidate"], 2);
    assert_eq!(
        events[1].1["image_url"],
        format!("/v1/jobs/{id}/turns/1/candidates/2/image")
    );
    assert_eq!(
        events[4].1,
        json!({"job_id": id, "turn": 1, "candidate": 2, "score": 7.5, "by": "verifier"})
    );
}
