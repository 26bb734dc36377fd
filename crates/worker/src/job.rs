//! Running one claimed job: loading state, heartbeating, the loop with
//! store-backed persistence, and mapping the outcome onto the queue.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use editthinker_core::{
    run_loop, CandidateRecord, CritiqueRecord, EditorError, Image, JobOptions, LoopError, LoopJob,
    LoopParts, PendingEdit, Progress, ProviderRequest, ThinkerError, TurnRecord,
};
use editthinker_store::{
    BlobError, BlobStore, CandidateRow, ClaimedJob, Lease, PendingEditRecord, RefusalRecord,
    StoreError, TurnRow,
};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::heartbeat::heartbeat;
use crate::lease::{LeaseClock, LeasedEditor, LeasedThinker, LeasedVerifier};
use crate::observer::StoreObserver;
use crate::stop::{Interrupt, Stop};
use crate::thinking::ThinkingPublisher;
use crate::Worker;

/// Stable error codes a job can fail with (contract: clients match on
/// them), spelled by [`ErrorCode`], the one list the API shares.
pub mod error_code {
    use editthinker_core::ErrorCode;

    /// The editor refused the user's own instruction (moderation, safety).
    pub const EDITOR_REFUSED: &str = ErrorCode::EditorRefused.as_str();
    /// The editor rejected the request as invalid.
    pub const EDITOR_INVALID: &str = ErrorCode::EditorInvalid.as_str();
    /// The editor rejected our credentials.
    pub const EDITOR_AUTH: &str = ErrorCode::EditorAuth.as_str();
    /// The editor stayed unavailable.
    pub const EDITOR_UNAVAILABLE: &str = ErrorCode::EditorUnavailable.as_str();
    /// The editor may or may not have done (and billed) the edit: the job is
    /// requeued visibly rather than the request silently resent.
    pub const EDITOR_AMBIGUOUS: &str = ErrorCode::EditorAmbiguous.as_str();
    /// The editor answered with an image we cannot use.
    pub const EDITOR_BAD_OUTPUT: &str = ErrorCode::EditorBadOutput.as_str();
    /// The thinker stayed unavailable.
    pub const THINKER_UNAVAILABLE: &str = ErrorCode::ThinkerUnavailable.as_str();
    /// The thinker rejected the request as invalid (e.g. unknown model).
    pub const THINKER_INVALID: &str = ErrorCode::ThinkerInvalid.as_str();
    /// The thinker rejected our credentials.
    pub const THINKER_AUTH: &str = ErrorCode::ThinkerAuth.as_str();
    /// The job names an editor this worker does not have.
    pub const UNKNOWN_EDITOR: &str = ErrorCode::UnknownEditor.as_str();
    /// The stored job or its images could not be read or written.
    pub const STORAGE: &str = ErrorCode::StorageError.as_str();
    /// The database refused what the job produced (data it can never
    /// take): another attempt would pay for the same edit and fail again.
    pub const STORAGE_REFUSED: &str = ErrorCode::StorageRefused.as_str();
    /// The worker hit a bug (a panic) while running the job.
    pub const INTERNAL: &str = ErrorCode::Internal.as_str();
    /// `options.budget` leaves no room for even one edit.
    pub const BUDGET_EXHAUSTED: &str = ErrorCode::BudgetExhausted.as_str();
    /// The verifier stayed unavailable.
    pub const VERIFIER_UNAVAILABLE: &str = ErrorCode::VerifierUnavailable.as_str();
    /// The verifier turned the request down, or the job needs one the
    /// worker lacks.
    pub const VERIFIER_INVALID: &str = ErrorCode::VerifierInvalid.as_str();
}

pub(crate) struct JobRunner {
    pub worker: Worker,
    pub shutdown: CancellationToken,
    /// When the claim that granted the lease was sent.
    pub claimed_at: tokio::time::Instant,
}

/// The asynchronous provider requests in flight, by (turn, candidate).
pub(crate) type Submitted =
    Arc<std::sync::Mutex<std::collections::BTreeMap<(u32, u32), ProviderRequest>>>;

/// Aborts a task when dropped, so no unwind can leave a heartbeat running.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl JobRunner {
    pub async fn run(self, claimed: ClaimedJob) {
        let store = self.worker.store.clone();
        let settings = &self.worker.settings;
        let clock = LeaseClock::new(self.claimed_at, settings.lease);
        let stop = Stop::default();
        let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(
            store.clone(),
            claimed.lease.clone(),
            settings.clone(),
            clock.clone(),
            stop.clone(),
        )));
        // A shutdown lets the step in progress finish: the observer stops
        // the loop at the next step boundary; after the grace period the
        // loop is abandoned mid-step.
        let shutdown = self.shutdown.clone();
        let grace = settings.shutdown_grace;
        let _grace_timer = {
            let stop = stop.clone();
            AbortOnDrop(tokio::spawn(async move {
                shutdown.cancelled().await;
                stop.request(Interrupt::Shutdown);
                tokio::time::sleep(grace).await;
                stop.abandon();
            }))
        };
        let submitted: Submitted = Arc::new(std::sync::Mutex::new(
            pending_edit(claimed.job.pending_edit.as_ref())
                .map(|p| ((p.turn, p.candidate), p.request))
                .into_iter()
                .collect(),
        ));

        // A panic anywhere in the job's work is caught here, so the job is
        // given back (counted) instead of keeping a lease nobody serves.
        let work =
            AssertUnwindSafe(self.execute(&claimed, &clock, stop.clone(), submitted.clone()))
                .catch_unwind();
        let deadline = deadline_instant(claimed.job.deadline_at);
        let result = tokio::select! {
            biased;
            _ = clock.expired() => {
                stop.now(Interrupt::LeaseLost);
                Err(JobError::Interrupted)
            }
            _ = stop.abandoned() => Err(JobError::Interrupted),
            // The in-flight editor or thinker call is dropped right here.
            _ = until(deadline) => {
                stop.now(Interrupt::Deadline);
                Err(JobError::Interrupted)
            }
            r = work => r.unwrap_or_else(|panic| Err(JobError::Panicked(panic_message(panic.as_ref())))),
        };
        drop(_heartbeat);
        let decision = decide(result, stop.reason(), settings, claimed.lease.attempt);
        if matches!(decision, Decision::Cancel | Decision::Deadline) {
            self.cancel_provider_request(&claimed, &submitted).await;
        }
        if !clock.holds() && decision != Decision::Abandon {
            warn!("lease ran out before the outcome was written; leaving the job to the rescuer");
            return;
        }
        self.apply(&claimed.lease, decision).await;
    }

    /// The deadline passed: the job succeeds with the selection among its
    /// recorded turns, or fails with `deadline_exceeded` without one.
    async fn finish_at_deadline(&self, lease: &Lease) -> Result<(), StoreError> {
        let store = &self.worker.store;
        let job = store.get_job(lease.job_id).await?;
        let rows = store.list_turns(lease.job_id).await?;
        let turns = match recorded_turns(&rows) {
            Ok(turns) => turns,
            Err(e) => return Err(StoreError::Corrupt(format!("{e:?}"))),
        };
        if turns.is_empty() {
            let (code, message) = editthinker_store::deadline_failure();
            warn!("deadline passed before any turn was recorded; job failed");
            return store.fail(lease, code, message).await;
        }
        let selection = job
            .and_then(|j| serde_json::from_value::<JobOptions>(j.options).ok())
            .map(|o| o.selection)
            .unwrap_or_default();
        let selected = editthinker_core::select_turn(&turns, selection);
        info!(
            selected,
            turns = turns.len(),
            "deadline passed; job succeeded with a recorded turn"
        );
        store
            .complete(
                lease,
                selected,
                None,
                editthinker_core::StopReason::Deadline,
            )
            .await
    }

    /// Asks the provider to stop the edits in flight of a canceled job.
    async fn cancel_provider_request(&self, claimed: &ClaimedJob, submitted: &Submitted) {
        let requests = std::mem::take(&mut *submitted.lock().expect("submitted lock"));
        let Some(editor) = self.worker.editors.get(&claimed.job.editor) else {
            return;
        };
        let cancels = requests.into_iter().map(|((turn, candidate), request)| async move {
            match tokio::time::timeout(PROVIDER_CANCEL_TIMEOUT, editor.cancel(&request)).await {
                Ok(Ok(())) => {
                    info!(turn, candidate, provider_request_id = %request.id, "provider request canceled")
                }
                Ok(Err(e)) => warn!(error = %e, "could not cancel the provider request"),
                Err(_) => warn!("canceling the provider request timed out"),
            }
        });
        futures::future::join_all(cancels).await;
    }

    async fn execute(
        &self,
        claimed: &ClaimedJob,
        clock: &LeaseClock,
        stop: Stop,
        submitted: Submitted,
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
        let mut pending_edits: Vec<PendingEdit> = pending_edit(job.pending_edit.as_ref())
            .into_iter()
            .collect();
        let next_turn = prior.len() as u32 + 1;
        let several = options.candidates_for(next_turn) > 1;
        let candidates = if several {
            let rows = w
                .store
                .list_candidates(job.id)
                .await
                .map_err(|e| storage_error(e.to_string()))?;
            let (candidates, pending) = load_candidates(&w.blobs, rows, next_turn).await?;
            let mut in_flight = submitted.lock().expect("submitted lock");
            for p in &pending {
                in_flight.insert((p.turn, p.candidate), p.request.clone());
            }
            pending_edits.extend(pending);
            if !candidates.is_empty() {
                info!(
                    turn = next_turn,
                    candidates = candidates.len(),
                    "resuming a turn with recorded candidates"
                );
            }
            candidates
        } else {
            Vec::new()
        };
        for p in &pending_edits {
            info!(turn = p.turn, candidate = p.candidate, provider_request_id = %p.request.id, "resuming the edit in flight");
        }
        let observer = StoreObserver {
            store: w.store.clone(),
            blobs: w.blobs.clone(),
            lease: claimed.lease.clone(),
            clock: clock.clone(),
            stop,
            submitted,
            thinking: ThinkingPublisher::start(w.store.clone(), job.id, clock.clone()),
            editor: job.editor.clone(),
            refused: Default::default(),
            gate: w.gate.clone(),
            currency: w.settings.pricing.currency.clone(),
            options,
        };
        // Earlier attempts' calls count against the budget too.
        let ledger = w
            .store
            .job_calls(job.id)
            .await
            .map_err(|e| storage_error(e.to_string()))?;
        let spending = w.settings.pricing.spending(&job.editor, &ledger.entries);
        let editor = LeasedEditor {
            inner: editor.as_ref(),
            clock,
        };
        let thinker = LeasedThinker {
            inner: w.thinker.as_ref(),
            clock,
        };
        let verifier = w
            .verifier
            .as_deref()
            .map(|inner| LeasedVerifier { inner, clock });
        run_loop(
            LoopJob {
                source: &source,
                instruction: &job.instruction,
                options: &options,
                config: &w.settings.loop_config,
                progress: Progress {
                    turns: prior,
                    pending_edits,
                    candidates,
                },
                spending,
                seed_base: seed_base(job.id),
            },
            LoopParts {
                editor: &editor,
                thinker: &thinker,
                verifier: verifier
                    .as_ref()
                    .map(|v| v as &dyn editthinker_core::Verifier),
                observer: &observer,
            },
        )
        .await
        .map_err(|error| match error {
            LoopError::Persist(message)
                if observer.refused.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                JobError::Permanent {
                    code: error_code::STORAGE_REFUSED,
                    message,
                }
            }
            other => JobError::Loop(other),
        })
    }

    /// Writes a decision. A lost lease is expected here (another worker
    /// or the rescuer got there first) and only logged.
    async fn apply(&self, lease: &Lease, decision: Decision) {
        let store = &self.worker.store;
        let outcome = match decision {
            Decision::Complete {
                selected,
                refusal,
                stop,
            } => {
                if let Some(r) = &refusal {
                    info!(reason = %r.reason, turn = r.turn, kind = %r.kind, "editor turned down a refined instruction; selecting among earlier turns");
                }
                info!(selected, stop_reason = stop.as_str(), "job succeeded");
                store
                    .complete(lease, selected, refusal.as_ref(), stop)
                    .await
            }
            Decision::Abandon => {
                warn!("lease lost; leaving the job to its new owner");
                return;
            }
            Decision::Cancel => {
                info!("job canceled");
                store.mark_canceled(lease).await
            }
            Decision::Deadline => self.finish_at_deadline(lease).await,
            Decision::Release => {
                info!("releasing job for shutdown");
                store.release(lease).await
            }
            Decision::Retry {
                code,
                message,
                delay,
            } => match store.retry_later(lease, code, &message, delay).await {
                Ok(status) => {
                    warn!(code, %message, ?delay, %status, "transient failure");
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Decision::Fail { code, message } => {
                warn!(code, %message, "job failed");
                store.fail(lease, code, &message).await
            }
        };
        match outcome {
            Ok(()) => {}
            Err(StoreError::LeaseLost(_)) => warn!("lease lost before the outcome was written"),
            Err(e) => warn!(error = %e, "could not record the job outcome; its lease will expire"),
        }
    }
}

/// How long a provider's cancel call may take.
const PROVIDER_CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// What to write once a job's run is over: decided without IO.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    /// Succeeded with this turn (and the refinement the editor turned down).
    Complete {
        selected: u32,
        refusal: Option<RefusalRecord>,
        stop: editthinker_core::StopReason,
    },
    /// Another worker owns the job now: write nothing.
    Abandon,
    /// Canceled by the client.
    Cancel,
    /// The job's deadline passed: finish with what is recorded.
    Deadline,
    /// Shutting down: hand the job back without spending the attempt.
    Release,
    /// Worth another attempt after `delay`.
    Retry {
        code: &'static str,
        message: String,
        delay: Duration,
    },
    /// Failed for good.
    Fail { code: &'static str, message: String },
}

/// The outcome rule: a finished loop is a success whatever interrupted it
/// afterwards; an interrupted one follows the interrupt (a lost lease writes
/// nothing); a failure is retried or final by its class.
fn decide(
    result: Result<editthinker_core::LoopOutcome, JobError>,
    interrupted: Option<Interrupt>,
    settings: &crate::WorkerSettings,
    attempt: u32,
) -> Decision {
    match (result, interrupted) {
        (Ok(outcome), _) => Decision::Complete {
            selected: outcome.selected,
            stop: outcome.stop,
            refusal: outcome.refusal.map(|r| RefusalRecord {
                turn: r.turn,
                instruction: r.instruction,
                reason: r.reason,
                kind: r.kind.as_str().to_owned(),
            }),
        },
        (Err(_), Some(Interrupt::LeaseLost)) => Decision::Abandon,
        (Err(_), Some(Interrupt::CancelRequested)) => Decision::Cancel,
        (Err(_), Some(Interrupt::Deadline)) => Decision::Deadline,
        (Err(_), Some(Interrupt::Shutdown)) => Decision::Release,
        // A stop always records its reason first; without one, give the
        // job back without spending the attempt rather than guess.
        (Err(JobError::Interrupted | JobError::Loop(LoopError::Stopped)), None) => {
            Decision::Release
        }
        (Err(error), None) => {
            let (code, message, transient) = error.classify();
            if transient {
                Decision::Retry {
                    code,
                    message,
                    delay: settings.requeue_policy().backoff(attempt),
                }
            } else {
                Decision::Fail { code, message }
            }
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
    /// Something in the job's work panicked (a bug): retried, counted.
    Panicked(String),
    /// Stopped from outside; the [`Stop`]'s reason says why.
    Interrupted,
}

impl JobError {
    /// The stable error code, the message, and whether to retry later.
    fn classify(self) -> (&'static str, String, bool) {
        match self {
            JobError::Permanent { code, message } => (code, message, false),
            JobError::Transient { code, message } => (code, message, true),
            JobError::Panicked(message) => (
                error_code::INTERNAL,
                format!("the worker hit a bug while running the job: {message}"),
                true,
            ),
            JobError::Interrupted => (
                error_code::INTERNAL,
                "stopped from outside without a reason".into(),
                true,
            ),
            JobError::Loop(error) => {
                let (code, transient) = loop_error_class(&error);
                (code, error.to_string(), transient)
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
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
        // Only reaches here without a recorded reason (see `decide`).
        LoopError::Stopped => (error_code::INTERNAL, true),
        LoopError::BudgetExhausted(_) => (error_code::BUDGET_EXHAUSTED, false),
        LoopError::Verifier { error, .. } => match error {
            ThinkerError::Transient(_) => (error_code::VERIFIER_UNAVAILABLE, true),
            ThinkerError::Invalid(_) | ThinkerError::Auth(_) => {
                (error_code::VERIFIER_INVALID, false)
            }
        },
    }
}

/// Where a job's candidate seeds come from: its id, so every attempt asks
/// for the same seeds.
fn seed_base(job_id: uuid::Uuid) -> u64 {
    let (high, low) = job_id.as_u64_pair();
    high ^ low
}

/// The recorded candidates of turn `turn` (the one after the last recorded
/// turn), images loaded where a critique is still to be made, and the
/// provider requests its candidates left in flight.
async fn load_candidates(
    blobs: &BlobStore,
    rows: Vec<CandidateRow>,
    turn: u32,
) -> Result<(Vec<CandidateRecord>, Vec<PendingEdit>), JobError> {
    let mut candidates = Vec::new();
    let mut pending = Vec::new();
    for row in rows.into_iter().filter(|r| r.turn == turn) {
        let Some(image_key) = row.image_key else {
            let request = row
                .pending_request
                .and_then(|r| serde_json::from_value::<ProviderRequest>(r).ok());
            if let Some(request) = request {
                pending.push(PendingEdit {
                    turn,
                    candidate: row.index,
                    instruction: row.instruction,
                    request,
                });
            }
            continue;
        };
        let critique = row
            .critique
            .map(serde_json::from_value::<CritiqueRecord>)
            .transpose()
            .map_err(|e| JobError::Permanent {
                code: error_code::STORAGE,
                message: format!(
                    "stored critique of candidate {} of turn {turn} unreadable: {e}",
                    row.index
                ),
            })?;
        let image = match critique {
            Some(_) => None,
            None => Some(load_image(blobs, &image_key).await?),
        };
        candidates.push(CandidateRecord {
            turn,
            index: row.index,
            instruction: row.instruction,
            seed: row.seed,
            image,
            editor_ms: row.editor_ms.unwrap_or(0),
            critique,
        });
    }
    Ok((candidates, pending))
}

fn storage_error(message: String) -> JobError {
    JobError::Transient {
        code: error_code::STORAGE,
        message,
    }
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
            candidate: record.candidate.unwrap_or(0),
            instruction: record.instruction,
            request,
        }),
        Err(e) => {
            warn!(error = %e, "stored provider request unreadable; the edit will be submitted again");
            None
        }
    }
}

async fn load_image(blobs: &BlobStore, key: &str) -> Result<Image, JobError> {
    let bytes = blobs.get(key).await.map_err(|e| match e {
        // A row naming an image that is not there is a bug or a manual
        // edit, not a passing failure: another attempt finds it missing too.
        BlobError::NotFound(_) => JobError::Permanent {
            code: error_code::INTERNAL,
            message: format!("the stored image {key} is missing"),
        },
        e => storage_error(format!("{key}: {e}")),
    })?;
    Image::probe(bytes, u64::MAX).map_err(|e| JobError::Permanent {
        code: error_code::STORAGE,
        message: format!("{key}: {e}"),
    })
}

/// The recorded turns as the loop wants them. Only an image the loop will
/// look at again is loaded: the newest turn's, when its critique is still
/// to be made (every edit starts from the source).
async fn load_turns(blobs: &BlobStore, rows: Vec<TurnRow>) -> Result<Vec<TurnRecord>, JobError> {
    let mut turns = recorded_turns(&rows)?;
    if let (Some(turn), Some(row)) = (turns.last_mut(), rows.last()) {
        if turn.critique.is_none() {
            turn.image = Some(load_image(blobs, &row.image_key).await?);
        }
    }
    Ok(turns)
}

/// The recorded turns with their critiques, no images.
fn recorded_turns(rows: &[TurnRow]) -> Result<Vec<TurnRecord>, JobError> {
    rows.iter()
        .map(|row| {
            let critique = match &row.critique {
                Some(json) => Some(
                    serde_json::from_value::<CritiqueRecord>(json.clone()).map_err(|e| {
                        JobError::Permanent {
                            code: error_code::STORAGE,
                            message: format!(
                                "stored critique of turn {} unreadable: {e}",
                                row.index
                            ),
                        }
                    })?,
                ),
                None => None,
            };
            Ok(TurnRecord {
                index: row.index,
                instruction: row.instruction.clone(),
                image: None,
                editor_ms: row.editor_ms,
                critique,
            })
        })
        .collect()
}

/// The job's deadline on the runtime's clock (wall-clock time left from now).
fn deadline_instant(
    deadline: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<tokio::time::Instant> {
    let left = (deadline? - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    Some(tokio::time::Instant::now() + left)
}

/// Sleeps until `at`, or for ever without one.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_image_is_an_internal_error_not_a_storage_retry() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::from_url(&format!("file://{}", dir.path().display())).unwrap();
        let key = BlobStore::source_key(uuid::Uuid::now_v7(), "png");
        match load_image(&blobs, &key).await {
            Err(JobError::Permanent { code, message }) => {
                assert_eq!(code, error_code::INTERNAL);
                assert!(message.contains("missing"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    fn failed(error: EditorError, turn: u32) -> Result<editthinker_core::LoopOutcome, JobError> {
        Err(JobError::Loop(LoopError::Editor { turn, error }))
    }

    #[test]
    fn the_outcome_rule() {
        let settings = crate::WorkerSettings {
            retry_base: Duration::from_secs(4),
            ..Default::default()
        };
        let decide = |r, i| decide(r, i, &settings, 2);
        let done = || {
            Ok(editthinker_core::LoopOutcome {
                turns: Vec::new(),
                selected: 2,
                refusal: Some(editthinker_core::EditRefusal {
                    turn: 3,
                    instruction: "x".into(),
                    reason: "too long".into(),
                    kind: editthinker_core::RefusalKind::Invalid,
                }),
                stop: editthinker_core::StopReason::InvalidRefinement,
            })
        };
        // A finished loop is a success even if an interrupt came after it.
        for interrupt in [None, Some(Interrupt::Shutdown), Some(Interrupt::LeaseLost)] {
            let Decision::Complete {
                selected,
                refusal,
                stop,
            } = decide(done(), interrupt)
            else {
                panic!("not a success");
            };
            assert_eq!(selected, 2);
            assert_eq!(stop, editthinker_core::StopReason::InvalidRefinement);
            assert_eq!(refusal.unwrap().kind, "invalid");
        }
        // Interrupted: the interrupt decides; a lost lease writes nothing.
        let stopped = || Err(JobError::Interrupted);
        assert_eq!(
            decide(stopped(), Some(Interrupt::LeaseLost)),
            Decision::Abandon
        );
        assert_eq!(
            decide(stopped(), Some(Interrupt::CancelRequested)),
            Decision::Cancel
        );
        assert_eq!(
            decide(stopped(), Some(Interrupt::Shutdown)),
            Decision::Release
        );
        // Failures by class; retries back off from the attempt.
        let Decision::Retry { code, delay, .. } =
            decide(failed(EditorError::Ambiguous("timeout".into()), 2), None)
        else {
            panic!("an ambiguous edit is retried");
        };
        assert_eq!(code, error_code::EDITOR_AMBIGUOUS);
        assert!(delay >= Duration::from_secs(4) && delay <= Duration::from_secs(8));
        assert!(matches!(
            decide(failed(EditorError::Refused("no".into()), 1), None),
            Decision::Fail {
                code: error_code::EDITOR_REFUSED,
                ..
            }
        ));
        assert!(matches!(
            decide(failed(EditorError::Auth("401".into()), 2), None),
            Decision::Fail {
                code: error_code::EDITOR_AUTH,
                ..
            }
        ));
        assert!(matches!(
            decide(Err(JobError::Panicked("boom".into())), None),
            Decision::Retry {
                code: error_code::INTERNAL,
                ..
            }
        ));
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
