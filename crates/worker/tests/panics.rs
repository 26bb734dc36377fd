//! A panic inside a job must not keep its lease alive: the worker gives the
//! job back (counted as an attempt) and fails it with `internal` once the
//! attempts are spent. The editor here is a test-only one that panics; the
//! store is the real SQLite backend and blobs a real folder.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use editthinker_core::{
    CritiqueRequest, EditRequest, Editor, EditorError, Image, Protocol, Thinker, ThinkerAnswer,
    ThinkerError,
};
use editthinker_store::{event_type, BlobStore, JobStatus, NewJob, SqliteStore, Store};
use editthinker_worker::{Worker, WorkerSettings};
use image::{DynamicImage, RgbImage};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Panics on every edit, counting the calls.
struct PanickingEditor(AtomicU32);

#[async_trait]
impl Editor for PanickingEditor {
    async fn edit(&self, _: EditRequest<'_>) -> Result<Image, EditorError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("editor bug");
    }
}

/// Never reached: the edit panics first.
struct UnusedThinker;

#[async_trait]
impl Thinker for UnusedThinker {
    fn protocol(&self) -> Protocol {
        Protocol::Editthinker
    }
    async fn critique(&self, _: CritiqueRequest<'_>) -> Result<ThinkerAnswer, ThinkerError> {
        unreachable!("the edit panics before any critique")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_is_given_back_then_failed_as_internal() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::connect(&format!("sqlite://{}/db.sqlite", dir.path().display()))
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let blobs =
        Arc::new(BlobStore::from_url(&format!("file://{}/blobs", dir.path().display())).unwrap());
    let id = Uuid::now_v7();
    let source = Image::from_pixels(&DynamicImage::ImageRgb8(RgbImage::new(32, 32)));
    let source_key = BlobStore::source_key(id, "png");
    blobs.put(&source_key, source.bytes.clone()).await.unwrap();
    store
        .insert_job(NewJob {
            id,
            tenant: editthinker_store::DEFAULT_TENANT.into(),
            active_limit: None,
            instruction: "paint it".into(),
            editor: "buggy".into(),
            options: serde_json::json!({}),
            metadata: serde_json::json!({}),
            source_key,
            source_mime: "image/png".into(),
            max_attempts: 2,
            priority: 0,
            webhook: None,
            deadline_seconds: None,
            traceparent: None,
            sandbox: false,
        })
        .await
        .unwrap();

    let editor = Arc::new(PanickingEditor(AtomicU32::new(0)));
    let mut editors: BTreeMap<String, Arc<dyn Editor>> = BTreeMap::new();
    editors.insert("buggy".into(), editor.clone());
    let settings = WorkerSettings {
        lease: Duration::from_secs(30),
        heartbeat: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        retry_base: Duration::from_millis(10),
        ..WorkerSettings::default()
    };
    let worker = Worker::new(
        store.clone(),
        blobs,
        editors,
        Arc::new(UnusedThinker),
        settings,
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));

    // Far less than the 30 s lease: only giving the job back can end it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let job = loop {
        let job = store.get_job(id).await.unwrap().unwrap();
        if job.status.is_terminal() {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the panicking job was never given back: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    shutdown.cancel();
    running.await.unwrap();

    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error_code.as_deref(), Some("internal"));
    assert!(
        job.error_message.as_deref().unwrap().contains("editor bug"),
        "{job:?}"
    );
    assert_eq!(job.attempt, 2, "each panic spent one attempt");
    assert_eq!(job.lease_owner, None);
    assert_eq!(editor.0.load(Ordering::SeqCst), 2);
    let kinds: Vec<String> = store
        .events_after(id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            event_type::JOB_QUEUED,
            event_type::JOB_STARTED,
            event_type::JOB_RETRYING,
            event_type::JOB_STARTED,
            event_type::JOB_FAILED,
        ]
    );
}
