//! Running one claimed job: loading state, heartbeating, the loop with
//! store-backed persistence, and mapping the outcome onto the queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use editthinker_core::{
    run_loop, CritiqueRecord, EditorError, Image, JobOptions, LoopError, PendingEdit, Progress,
    ProviderRequest, ThinkerError, TurnObserver, TurnRecord,
};
use editthinker_store::{
    event_type, BlobStore, ClaimedJob, Lease, NewTurn, PendingEditRecord, RefusalRecord, Store,
    StoreError, TurnRow,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Worker;

/// Stable error codes a job can fail with (contract: clients match on them).
pub mod error_code {
    /// The editor refused the user's own instruction (moderation, safety).
    pub const EDITOR_REFUSED: &str = "editor_refused";
    /// The editor rejected the request as invalid.
    pub const EDITOR_INVALID: &str = "editor_invalid";
    /// The editor rejected our credentials.
    pub const EDITOR_AUTH: &str = "editor_auth";
    /// The editor stayed unavailable.
    pub const EDITOR_UNAVAILABLE: &str = "editor_unavailable";
    /// The editor may or may not have done (and billed) the edit: the job is
    /// requeued visibly rather than the request silently resent.
    pub const EDITOR_AMBIGUOUS: &str = "editor_ambiguous";
    /// The editor answered with an image we cannot use.
    pub const EDITOR_BAD_OUTPUT: &str = "editor_bad_output";
    /// The thinker stayed unavailable.
    pub const THINKER_UNAVAILABLE: &str = "thinker_unavailable";
    /// The thinker rejected the request as invalid (e.g. unknown model).
    pub const THINKER_INVALID: &str = "thinker_invalid";
    /// The thinker rejected our credentials.
    pub const THINKER_AUTH: &str = "thinker_auth";
    /// The job names an editor this worker does not have.
    pub const UNKNOWN_EDITOR: &str = "unknown_editor";
    /// The stored job or its images could not be read.
    pub const STORAGE: &str = "storage_error";
}

/// Internal reason the loop was interrupted from outside.
const INTERRUPTED: &str = "interrupted";

pub(crate) struct JobRunner {
    pub worker: Worker,
    pub shutdown: CancellationToken,
}

/// What stopped a job from the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    CancelRequested,
    LeaseLost,
    Shutdown,
}

impl JobRunner {
    pub async fn run(self, claimed: ClaimedJob) {
        let store = self.worker.store.clone();
        let lease = claimed.lease.clone();
        let interrupt = Arc::new(std::sync::Mutex::new(None::<Interrupt>));
        let stop_loop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            store.clone(),
            lease.clone(),
            self.worker.settings.clone(),
            interrupt.clone(),
            stop_loop.clone(),
        ));
        // A shutdown lets the step in progress finish: the observer stops
        // the loop at the next step boundary; after the grace period the
        // loop is abandoned mid-step.
        let shutdown = self.shutdown.clone();
        let grace = self.worker.settings.shutdown_grace;
        let grace_timer = {
            let interrupt = interrupt.clone();
            let stop_loop = stop_loop.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                set_interrupt(&interrupt, Interrupt::Shutdown);
                tokio::time::sleep(grace).await;
                stop_loop.cancel();
            })
        };

        let result = tokio::select! {
            r = self.execute(&claimed, interrupt.clone()) => r,
            _ = stop_loop.cancelled() => Err(JobError::Loop(LoopError::Persist(INTERRUPTED.into()))),
        };
        heartbeat.abort();
        grace_timer.abort();
        let interrupted = *interrupt.lock().expect("interrupt lock");
        self.finish(&claimed, result, interrupted).await;
    }

    async fn execute(
        &self,
        claimed: &ClaimedJob,
        interrupt: Arc<std::sync::Mutex<Option<Interrupt>>>,
    ) -> Result<editthinker_core::LoopOutcome, JobError> {
        let w = &self.worker;
        let job = &claimed.job;
        let options: JobOptions =
            serde_json::from_value(job.options.clone()).map_err(|e| JobError::Permanent {
                code: error_code::STORAGE,
                message: format!("stored options unreadable: {e}"),
            })?;
        let editor = w
            .editors
            .get(&job.editor)
            .cloned()
            .ok_or_else(|| JobError::Permanent {
                code: error_code::UNKNOWN_EDITOR,
                message: format!(
                    "no editor named {:?} is configured on this worker",
                    job.editor
                ),
            })?;
        let source = load_image(&w.blobs, &job.source_key).await?;
        let rows = w
            .store
            .list_turns(job.id)
            .await
            .map_err(|e| storage_error(e.to_string()))?;
        let prior = load_turns(&w.blobs, rows).await?;
        if !prior.is_empty() {
            info!(
                turns = prior.len(),
                "resuming after the last persisted turn"
            );
        }
        let pending_edit = pending_edit(job.pending_edit.as_ref());
        if let Some(p) = &pending_edit {
            info!(turn = p.turn, provider_request_id = %p.request.id, "resuming the edit in flight");
        }
        let observer = StoreObserver {
            store: w.store.clone(),
            blobs: w.blobs.clone(),
            lease: claimed.lease.clone(),
            interrupt,
            submitted: std::sync::Mutex::new(
                pending_edit
                    .as_ref()
                    .map(|p| (p.turn, p.request.id.clone())),
            ),
            thinking: ThinkingPublisher::start(w.store.clone(), job.id),
        };
        run_loop(
            &source,
            &job.instruction,
            &options,
            &w.settings.loop_config,
            Progress {
                turns: prior,
                pending_edit,
            },
            editor.as_ref(),
            w.thinker.as_ref(),
            &observer,
        )
        .await
        .map_err(JobError::Loop)
    }

    async fn finish(
        &self,
        claimed: &ClaimedJob,
        result: Result<editthinker_core::LoopOutcome, JobError>,
        interrupted: Option<Interrupt>,
    ) {
        let store = &self.worker.store;
        let lease = &claimed.lease;
        let outcome = match (result, interrupted) {
            (Ok(outcome), _) => {
                let refusal = outcome.refusal.map(|r| {
                    info!(reason = %r.reason, turn = r.turn, "editor refused a refined instruction; selecting among earlier turns");
                    RefusalRecord {
                        turn: r.turn,
                        instruction: r.instruction,
                        reason: r.reason,
                        kind: r.kind.as_str().to_owned(),
                    }
                });
                info!(
                    turns = outcome.turns.len(),
                    selected = outcome.selected,
                    "job succeeded"
                );
                store
                    .complete(lease, outcome.selected, refusal.as_ref())
                    .await
            }
            (Err(_), Some(Interrupt::LeaseLost)) => {
                warn!("lease lost; leaving the job to its new owner");
                return;
            }
            (Err(_), Some(Interrupt::CancelRequested)) => {
                info!("job canceled");
                store.mark_canceled(lease).await
            }
            (Err(_), Some(Interrupt::Shutdown)) => {
                info!("releasing job for shutdown");
                store.release(lease).await
            }
            (Err(error), None) => self.fail_or_retry(lease, error).await,
        };
        match outcome {
            Ok(()) => {}
            Err(StoreError::LeaseLost(_)) => warn!("lease lost before the outcome was written"),
            Err(e) => warn!(error = %e, "could not record the job outcome; its lease will expire"),
        }
    }

    async fn fail_or_retry(&self, lease: &Lease, error: JobError) -> Result<(), StoreError> {
        let store = &self.worker.store;
        let (code, message, transient) = error.classify();
        if transient {
            let delay = backoff(self.worker.settings.retry_base, lease.attempt);
            let status = store.retry_later(lease, code, &message, delay).await?;
            warn!(code, %message, ?delay, %status, "transient failure");
            Ok(())
        } else {
            warn!(code, %message, "job failed");
            store.fail(lease, code, &message).await
        }
    }
}

/// Why a job attempt ended without a result.
#[derive(Debug)]
enum JobError {
    /// The loop failed.
    Loop(LoopError),
    /// Retrying cannot help.
    Permanent { code: &'static str, message: String },
    /// Worth another attempt later.
    Transient { code: &'static str, message: String },
}

impl JobError {
    /// The stable error code, the message, and whether to retry later.
    fn classify(self) -> (&'static str, String, bool) {
        match self {
            JobError::Permanent { code, message } => (code, message, false),
            JobError::Transient { code, message } => (code, message, true),
            JobError::Loop(error) => {
                let (code, transient) = loop_error_class(&error);
                (code, error.to_string(), transient)
            }
        }
    }
}

/// The stable code of a loop failure, and whether it is worth a retry.
fn loop_error_class(error: &LoopError) -> (&'static str, bool) {
    match error {
        LoopError::Editor { error, turn } => match error {
            // Only the user's own words failing is final; a refused
            // refinement never reaches here (the loop selects earlier turns).
            EditorError::Refused(_) if *turn == 1 => (error_code::EDITOR_REFUSED, false),
            EditorError::Refused(_) | EditorError::Invalid(_) => {
                (error_code::EDITOR_INVALID, false)
            }
            EditorError::Auth(_) => (error_code::EDITOR_AUTH, false),
            EditorError::Transient(_) => (error_code::EDITOR_UNAVAILABLE, true),
            EditorError::Ambiguous(_) => (error_code::EDITOR_AMBIGUOUS, true),
        },
        LoopError::Thinker { error, .. } => match error {
            ThinkerError::Transient(_) => (error_code::THINKER_UNAVAILABLE, true),
            ThinkerError::Invalid(_) => (error_code::THINKER_INVALID, false),
            ThinkerError::Auth(_) => (error_code::THINKER_AUTH, false),
        },
        LoopError::BadEditorImage { .. } => (error_code::EDITOR_BAD_OUTPUT, true),
        LoopError::Persist(_) => (error_code::STORAGE, true),
    }
}

fn storage_error(message: String) -> JobError {
    JobError::Transient {
        code: error_code::STORAGE,
        message,
    }
}

/// Exponential backoff with ±25 % jitter, capped at ten minutes.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(Duration::from_secs(600));
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    capped.mul_f64(jitter)
}

fn set_interrupt(slot: &std::sync::Mutex<Option<Interrupt>>, value: Interrupt) {
    let mut slot = slot.lock().expect("interrupt lock");
    // Cancel and lease loss outrank a shutdown.
    if slot.is_none() || value != Interrupt::Shutdown {
        *slot = Some(value);
    }
}

async fn heartbeat(
    store: Arc<dyn Store>,
    lease: Lease,
    settings: crate::WorkerSettings,
    interrupt: Arc<std::sync::Mutex<Option<Interrupt>>>,
    stop_loop: CancellationToken,
) {
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(settings.heartbeat).await;
        match store.heartbeat(&lease, settings.lease).await {
            Ok(false) => last_ok = Instant::now(),
            Ok(true) => {
                set_interrupt(&interrupt, Interrupt::CancelRequested);
                stop_loop.cancel();
                return;
            }
            Err(StoreError::LeaseLost(_)) => {
                set_interrupt(&interrupt, Interrupt::LeaseLost);
                stop_loop.cancel();
                return;
            }
            Err(e) => {
                warn!(error = %e, "heartbeat failed");
                // Past the lease another worker may own the job: stop writing.
                if last_ok.elapsed() >= settings.lease {
                    set_interrupt(&interrupt, Interrupt::LeaseLost);
                    stop_loop.cancel();
                    return;
                }
            }
        }
    }
}

struct StoreObserver {
    store: Arc<dyn Store>,
    blobs: Arc<BlobStore>,
    lease: Lease,
    interrupt: Arc<std::sync::Mutex<Option<Interrupt>>>,
    /// The provider request id of the edit in flight: (turn, id).
    submitted: std::sync::Mutex<Option<(u32, String)>>,
    thinking: ThinkingPublisher,
}

/// The stored pending edit as the loop wants it. A record we cannot read is
/// dropped with a warning: the edit is then submitted anew, which costs a
/// provider call but loses nothing.
fn pending_edit(stored: Option<&serde_json::Value>) -> Option<PendingEdit> {
    let record: PendingEditRecord = match serde_json::from_value(stored?.clone()) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "stored pending edit unreadable; the edit will be submitted again");
            return None;
        }
    };
    match serde_json::from_value::<ProviderRequest>(record.request) {
        Ok(request) => Some(PendingEdit {
            turn: record.turn,
            instruction: record.instruction,
            request,
        }),
        Err(e) => {
            warn!(error = %e, "stored provider request unreadable; the edit will be submitted again");
            None
        }
    }
}

/// How often live reasoning goes out: a few events a second, whatever the
/// token rate.
const THINKING_FLUSH: Duration = Duration::from_millis(250);
/// Largest delta text in one `turn.thinking` event (NOTIFY payloads are
/// limited to 8000 bytes, JSON escaping can double the size).
const THINKING_CHUNK_BYTES: usize = 3000;

/// Forwards a thinker's deltas to [`Store::publish_live`], coalesced, from
/// a task of its own so the generation path never waits on the database.
/// The task ends, after a last flush, when the publisher is dropped.
struct ThinkingPublisher {
    tx: mpsc::UnboundedSender<ThinkingMessage>,
}

enum ThinkingMessage {
    Delta(u32, String),
    /// Publish what is buffered now, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl ThinkingPublisher {
    fn start(store: Arc<dyn Store>, job_id: uuid::Uuid) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_thinking(store, job_id, rx));
        Self { tx }
    }

    fn send(&self, turn: u32, delta: &str) {
        // A closed channel only means nobody is publishing any more.
        let _ = self.tx.send(ThinkingMessage::Delta(turn, delta.to_owned()));
    }

    /// Waits until every delta sent so far is published, so that live
    /// reasoning reaches subscribers before the critique it led to.
    async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(ThinkingMessage::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn publish_thinking(
    store: Arc<dyn Store>,
    job_id: uuid::Uuid,
    mut rx: mpsc::UnboundedReceiver<ThinkingMessage>,
) {
    let mut open = true;
    while open {
        // Wait for the first delta, then gather for one flush interval.
        let mut pending = match rx.recv().await {
            Some(ThinkingMessage::Delta(turn, text)) => Some((turn, text)),
            Some(ThinkingMessage::Flush(done)) => {
                let _ = done.send(());
                continue;
            }
            None => break,
        };
        let deadline = tokio::time::sleep(THINKING_FLUSH);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                next = rx.recv() => match next {
                    Some(ThinkingMessage::Delta(turn, text)) => match &mut pending {
                        Some((t, buf)) if *t == turn => buf.push_str(&text),
                        _ => {
                            flush_thinking(&*store, job_id, pending.take()).await;
                            pending = Some((turn, text));
                        }
                    },
                    Some(ThinkingMessage::Flush(done)) => {
                        flush_thinking(&*store, job_id, pending.take()).await;
                        let _ = done.send(());
                        break;
                    }
                    None => {
                        open = false;
                        break;
                    }
                },
            }
        }
        flush_thinking(&*store, job_id, pending.take()).await;
    }
}

async fn flush_thinking(store: &dyn Store, job_id: uuid::Uuid, pending: Option<(u32, String)>) {
    let Some((turn, text)) = pending else {
        return;
    };
    for delta in chunks(&text, THINKING_CHUNK_BYTES) {
        let data = serde_json::json!({ "turn": turn, "delta": delta });
        if let Err(e) = store
            .publish_live(job_id, event_type::TURN_THINKING, data)
            .await
        {
            // Live reasoning is best effort: the critique itself is stored.
            tracing::debug!(error = %e, "could not publish live reasoning");
        }
    }
}

/// `text` cut into pieces of at most `max` bytes, on character boundaries.
fn chunks(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(max);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out
}

impl StoreObserver {
    /// After each durable step, stop if a cancel or shutdown is pending.
    fn check_interrupt(&self) -> Result<(), String> {
        match *self.interrupt.lock().expect("interrupt lock") {
            Some(_) => Err(INTERRUPTED.into()),
            None => Ok(()),
        }
    }
}

fn store_err(e: StoreError) -> String {
    e.to_string()
}

#[async_trait]
impl TurnObserver for StoreObserver {
    async fn turn_edited(&self, turn: &TurnRecord) -> Result<(), String> {
        let image = turn.image.as_ref().ok_or("an edited turn has its image")?;
        let png = image.to_png().map_err(|e| e.to_string())?;
        let key = BlobStore::turn_key(self.lease.job_id, turn.index, self.lease.attempt);
        let provider_request_id = self
            .submitted
            .lock()
            .expect("submitted lock")
            .take()
            .filter(|(t, _)| *t == turn.index)
            .map(|(_, id)| id);
        self.blobs
            .put(&key, png.bytes.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.store
            .record_turn(
                &self.lease,
                NewTurn {
                    index: turn.index,
                    instruction: turn.instruction.clone(),
                    image_key: key,
                    image_mime: png.format.mime().to_string(),
                    editor_ms: turn.editor_ms,
                    provider_request_id,
                },
            )
            .await
            .map_err(store_err)?;
        info!(turn = turn.index, editor_ms = turn.editor_ms, "turn edited");
        self.check_interrupt()
    }

    async fn turn_critiqued(&self, turn: u32, critique: &CritiqueRecord) -> Result<(), String> {
        self.thinking.flush().await;
        let json = serde_json::to_value(critique).map_err(|e| e.to_string())?;
        self.store
            .record_critique(
                &self.lease,
                turn,
                &json,
                critique.thinker_ms,
                &critique.raw_output,
                critique.error.as_deref(),
            )
            .await
            .map_err(store_err)?;
        info!(
            turn,
            satisfied = critique.satisfied,
            overall = critique.overall(),
            "turn critiqued"
        );
        self.check_interrupt()
    }

    async fn edit_submitted(
        &self,
        turn: u32,
        instruction: &str,
        request: &ProviderRequest,
    ) -> Result<(), String> {
        let record = PendingEditRecord {
            turn,
            instruction: instruction.to_owned(),
            request: serde_json::to_value(request).map_err(|e| e.to_string())?,
        };
        self.store
            .record_pending_edit(&self.lease, &record)
            .await
            .map_err(store_err)?;
        *self.submitted.lock().expect("submitted lock") = Some((turn, request.id.clone()));
        info!(turn, provider_request_id = %request.id, "edit submitted; waiting for the provider");
        Ok(())
    }

    fn thinking(&self, turn: u32, delta: &str) {
        self.thinking.send(turn, delta);
    }
}

async fn load_image(blobs: &BlobStore, key: &str) -> Result<Image, JobError> {
    let bytes = blobs
        .get(key)
        .await
        .map_err(|e| storage_error(format!("{key}: {e}")))?;
    Image::probe(bytes, u64::MAX).map_err(|e| JobError::Permanent {
        code: error_code::STORAGE,
        message: format!("{key}: {e}"),
    })
}

async fn load_turns(blobs: &BlobStore, rows: Vec<TurnRow>) -> Result<Vec<TurnRecord>, JobError> {
    let mut turns = Vec::with_capacity(rows.len());
    for row in rows {
        let critique = match row.critique {
            Some(json) => Some(serde_json::from_value::<CritiqueRecord>(json).map_err(|e| {
                JobError::Permanent {
                    code: error_code::STORAGE,
                    message: format!("stored critique of turn {} unreadable: {e}", row.index),
                }
            })?),
            None => None,
        };
        turns.push(TurnRecord {
            index: row.index,
            instruction: row.instruction,
            image: Some(load_image(blobs, &row.image_key).await?),
            editor_ms: row.editor_ms,
            critique,
        });
    }
    Ok(turns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_size_and_char_boundaries() {
        assert!(chunks("", 4).is_empty());
        assert_eq!(chunks("abcdefg", 3), vec!["abc", "def", "g"]);
        let text = "é".repeat(5); // 2 bytes each
        let parts = chunks(&text, 3);
        assert!(parts.iter().all(|p| p.len() <= 3 && !p.is_empty()));
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn unreadable_pending_edits_are_dropped() {
        assert_eq!(pending_edit(None), None);
        assert_eq!(pending_edit(Some(&serde_json::json!({"turn": "x"}))), None);
        let ok = serde_json::json!({
            "turn": 2, "instruction": "i",
            "request": {"id": "r", "data": {"polling_url": "u"}}
        });
        let p = pending_edit(Some(&ok)).unwrap();
        assert_eq!((p.turn, p.request.id.as_str()), (2, "r"));
    }
}
