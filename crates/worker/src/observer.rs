//! The loop's observer backed by the store: each paid edit and each
//! critique is written before the loop goes on, retried while the storage
//! fails briefly, and a stop from outside is seen after each durable step.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use editthinker_core::imaging::off_thread;
use editthinker_core::{
    CandidateRecord, Choice, CritiqueRecord, LedgerEntry, ObserverError, ProviderRequest,
    RetryPolicy, TurnObserver, TurnRecord,
};
use editthinker_store::{
    BlobStore, ChosenRecord, Lease, NewCall, NewCandidate, NewTurn, PendingEditRecord, Store,
    StoreError,
};
use tracing::{info, warn};

use crate::job::Submitted;
use crate::lease::LeaseClock;
use crate::stop::Stop;
use crate::thinking::ThinkingPublisher;

pub(crate) struct StoreObserver {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) blobs: Arc<BlobStore>,
    pub(crate) lease: Lease,
    pub(crate) clock: LeaseClock,
    pub(crate) stop: Stop,
    pub(crate) submitted: Submitted,
    pub(crate) thinking: ThinkingPublisher,
    /// The job's editor (the `editor` label of the turn counter).
    pub(crate) editor: String,
    /// A write was refused for good ([`PersistError::Refused`]): the job
    /// fails with [`crate::job::error_code::STORAGE_REFUSED`] instead of retrying.
    pub(crate) refused: std::sync::atomic::AtomicBool,
    /// The thinker's circuit breaker: a new edit waits while it is open.
    pub(crate) gate: Arc<crate::breaker::ThinkerGate>,
    /// The currency of the job's prices.
    pub(crate) currency: String,
    /// The job's options (which turns have several candidates).
    pub(crate) options: editthinker_core::JobOptions,
}

impl StoreObserver {
    /// The provider request id of the edit of (`turn`, `candidate`) in
    /// flight, if it went to an asynchronous provider.
    fn in_flight(&self, turn: u32, candidate: u32) -> Option<String> {
        self.submitted
            .lock()
            .expect("submitted lock")
            .get(&(turn, candidate))
            .map(|r| r.id.clone())
    }

    /// The edit of (`turn`, `candidate`) is recorded: nothing to cancel.
    fn landed(&self, turn: u32, candidate: u32) {
        self.submitted
            .lock()
            .expect("submitted lock")
            .remove(&(turn, candidate));
    }

    /// Writes an edited image as PNG under `key` (retried like every
    /// write); returns its MIME type.
    async fn put_image(&self, image: editthinker_core::Image, key: &str) -> Result<String, String> {
        let png = off_thread(move || image.to_png())
            .await
            .map_err(|e| e.to_string())?;
        self.persist("storing an edited image", || async {
            self.blobs
                .put(key, png.bytes.clone())
                .await
                .map_err(|e| PersistError::Passing(e.to_string()))
        })
        .await?;
        Ok(png.format.mime().to_string())
    }

    /// Records the critique of `turn` (one-candidate) or of one of its
    /// candidates, after the live reasoning that led to it.
    async fn record_critique_of(
        &self,
        turn: u32,
        candidate: Option<u32>,
        critique: &CritiqueRecord,
    ) -> Result<(), ObserverError> {
        self.thinking.flush().await;
        let json = serde_json::to_value(critique).map_err(|e| e.to_string())?;
        let (thinker_ms, raw, error) = (
            critique.thinker_ms,
            &critique.raw_output,
            critique.error.as_deref(),
        );
        self.persist("recording the critique", || async {
            let lease = &self.lease;
            match candidate {
                None => {
                    self.store
                        .record_critique(lease, turn, &json, thinker_ms, raw, error)
                        .await?
                }
                Some(c) => {
                    self.store
                        .record_candidate_critique(lease, turn, c, &json, thinker_ms, raw, error)
                        .await?
                }
            }
            Ok(())
        })
        .await?;
        info!(
            turn,
            candidate,
            satisfied = critique.satisfied,
            overall = critique.overall(),
            verifier = critique.verifier.map(|v| v.overall),
            "critique recorded"
        );
        self.check_stop()
    }

    /// After each durable step, stop if a cancel or shutdown is pending.
    fn check_stop(&self) -> Result<(), ObserverError> {
        match self.stop.reason() {
            Some(_) => Err(ObserverError::Stopped),
            None => Ok(()),
        }
    }

    /// Writes what a paid edit or a finished critique produced, retrying
    /// with backoff while the lease holds, up to [`PERSIST_RETRY`]'s
    /// attempts and [`PERSIST_PATIENCE`]: our own storage failing briefly
    /// must not throw the work away (the next attempt would buy it again),
    /// but a write that keeps failing must not hold the worker's slot for
    /// ever (the heartbeat would keep the lease). A lost lease or a write
    /// that can never succeed ends it at once.
    async fn persist<F, Fut>(&self, what: &str, mut write: F) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), PersistError>>,
    {
        let mut retry = 0;
        let started = tokio::time::Instant::now();
        loop {
            let error = match self.clock.guard(write()).await {
                None => return Err(format!("{what}: the lease ran out")),
                Some(Ok(())) => return Ok(()),
                Some(Err(PersistError::Final(e))) => return Err(format!("{what}: {e}")),
                Some(Err(PersistError::Refused(e))) => {
                    self.refused
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(format!("{what}: {e}"));
                }
                Some(Err(PersistError::Passing(e))) => e,
            };
            if retry >= PERSIST_RETRY.max_retries || started.elapsed() >= PERSIST_PATIENCE {
                return Err(format!(
                    "{what}: {error}; still failing after {} tries in {} s",
                    retry + 1,
                    started.elapsed().as_secs()
                ));
            }
            retry += 1;
            let delay = PERSIST_RETRY.backoff(retry);
            warn!(%error, ?delay, retry, "{what} failed; retrying while the lease holds");
            if self.clock.guard(tokio::time::sleep(delay)).await.is_none() {
                return Err(format!("{what}: {error}; the lease ran out while retrying"));
            }
        }
    }
}

/// Backoff and most retries of [`StoreObserver::persist`].
const PERSIST_RETRY: RetryPolicy = RetryPolicy {
    max_retries: 40,
    base: Duration::from_millis(100),
    max_delay: Duration::from_secs(2),
    max_retry_after: Duration::ZERO,
};

/// Longest [`StoreObserver::persist`] keeps trying one write.
const PERSIST_PATIENCE: Duration = Duration::from_secs(60);

/// A failed write, by whether trying again can help.
enum PersistError {
    /// The database or blob store failed: try again.
    Passing(String),
    /// The lease is gone: stop writing.
    Final(String),
    /// The database refuses the data itself: it fails the same way on
    /// every try, in this attempt or any other.
    Refused(String),
}

impl From<StoreError> for PersistError {
    fn from(e: StoreError) -> Self {
        // The store decides what passes.
        match e {
            StoreError::LeaseLost(_) => Self::Final(e.to_string()),
            e if e.is_transient() => Self::Passing(e.to_string()),
            e => Self::Refused(e.to_string()),
        }
    }
}

#[async_trait]
impl TurnObserver for StoreObserver {
    async fn turn_edited(&self, turn: &TurnRecord) -> Result<(), ObserverError> {
        let image = turn.image.clone().ok_or("an edited turn has its image")?;
        // One key for every retry of this write: a retried commit that went
        // through is then recognised as the same turn.
        let key = BlobStore::turn_key(self.lease.job_id, turn.index, self.lease.attempt);
        let image_mime = self.put_image(image, &key).await?;
        let provider_request_id = self.in_flight(turn.index, 0);
        let new_turn = NewTurn {
            index: turn.index,
            instruction: turn.instruction.clone(),
            image_key: key.clone(),
            image_mime,
            editor_ms: turn.editor_ms,
            provider_request_id,
        };
        self.persist("recording the turn", || async {
            Ok(self
                .store
                .record_turn(&self.lease, new_turn.clone())
                .await?)
        })
        .await?;
        self.landed(turn.index, 0);
        editthinker_core::metrics::turn_recorded(&self.editor);
        info!(turn = turn.index, editor_ms = turn.editor_ms, "turn edited");
        self.check_stop()
    }

    async fn turn_critiqued(
        &self,
        turn: u32,
        critique: &CritiqueRecord,
    ) -> Result<(), ObserverError> {
        self.record_critique_of(turn, None, critique).await
    }

    async fn candidate_edited(&self, candidate: &CandidateRecord) -> Result<(), ObserverError> {
        let image = candidate
            .image
            .clone()
            .ok_or("an edited candidate has its image")?;
        let (turn, index) = (candidate.turn, candidate.index);
        // One key for every retry of this write, as for a turn.
        let key = BlobStore::candidate_key(self.lease.job_id, turn, index, self.lease.attempt);
        let image_mime = self.put_image(image, &key).await?;
        let new_candidate = NewCandidate {
            turn,
            index,
            instruction: candidate.instruction.clone(),
            seed: candidate.seed,
            image_key: key.clone(),
            image_mime,
            editor_ms: candidate.editor_ms,
            provider_request_id: self.in_flight(turn, index),
        };
        self.persist("recording the candidate", || async {
            Ok(self
                .store
                .record_candidate(&self.lease, new_candidate.clone())
                .await?)
        })
        .await?;
        self.landed(turn, index);
        info!(
            turn,
            candidate = index,
            editor_ms = candidate.editor_ms,
            "candidate edited"
        );
        self.check_stop()
    }

    async fn candidate_critiqued(
        &self,
        turn: u32,
        candidate: u32,
        critique: &CritiqueRecord,
    ) -> Result<(), ObserverError> {
        self.record_critique_of(turn, Some(candidate), critique)
            .await
    }

    async fn turn_chosen(&self, turn: &TurnRecord, choice: &Choice) -> Result<(), ObserverError> {
        let chosen = ChosenRecord {
            turn: turn.index,
            candidate: choice.candidate,
            score: choice.score,
            by: choice.by,
        };
        self.persist("recording the chosen candidate", || async {
            Ok(self.store.record_chosen(&self.lease, &chosen).await?)
        })
        .await?;
        editthinker_core::metrics::turn_recorded(&self.editor);
        info!(
            turn = turn.index,
            candidate = choice.candidate,
            score = choice.score,
            by = choice.by.as_str(),
            "candidate chosen"
        );
        self.check_stop()
    }

    async fn edit_submitted(
        &self,
        turn: u32,
        candidate: u32,
        instruction: &str,
        request: &ProviderRequest,
    ) -> Result<(), ObserverError> {
        let several = self.options.candidates_for(turn) > 1;
        let record = PendingEditRecord {
            turn,
            candidate: several.then_some(candidate),
            instruction: instruction.to_owned(),
            request: serde_json::to_value(request).map_err(|e| e.to_string())?,
        };
        self.submitted
            .lock()
            .expect("submitted lock")
            .insert((turn, candidate), request.clone());
        self.persist("recording the provider request", || async {
            Ok(self.store.record_pending_edit(&self.lease, &record).await?)
        })
        .await?;
        info!(turn, candidate, provider_request_id = %request.id, "edit submitted; waiting for the provider");
        Ok(())
    }

    fn thinking(&self, turn: u32, candidate: u32, delta: &str) {
        self.thinking.send(turn, candidate, delta);
    }

    async fn call_made(&self, entry: &LedgerEntry) -> Result<(), ObserverError> {
        let record = NewCall {
            entry: *entry,
            currency: self.currency.clone(),
        };
        self.persist("recording a paid call", || async {
            Ok(self.store.record_call(self.lease.job_id, &record).await?)
        })
        .await?;
        editthinker_core::metrics::call_paid(&entry.call, &self.editor, entry.cost);
        Ok(())
    }

    /// Holds a new edit while the thinker is unreachable: the job keeps
    /// its lease (the heartbeat goes on) and its turns, buys nothing it
    /// could not have judged, and still sees a cancel, its deadline or a
    /// shutdown (each ends the wait at the stop check).
    async fn before_edit(&self, turn: u32) -> Result<(), ObserverError> {
        self.check_stop()?;
        if !self.gate.blocks_edits() {
            return Ok(());
        }
        info!(turn, "thinker unreachable: the job waits before this edit");
        loop {
            tokio::select! {
                _ = self.gate.opened_for_edits() => break,
                _ = self.stop.abandoned() => return Err(ObserverError::Stopped),
                _ = tokio::time::sleep(STOP_CHECK_INTERVAL) => self.check_stop()?,
            }
        }
        info!(turn, "thinker reachable again: the job goes on");
        self.check_stop()
    }
}

/// How often a job held before an edit looks for a cancel or a shutdown.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_data_is_not_retried_and_a_lost_lease_stops_writing() {
        let refused = PersistError::from(StoreError::Data("invalid byte sequence".into()));
        assert!(matches!(refused, PersistError::Refused(_)));
        let lost = PersistError::from(StoreError::LeaseLost(uuid::Uuid::nil()));
        assert!(matches!(lost, PersistError::Final(_)));
        let down = PersistError::from(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        assert!(matches!(down, PersistError::Passing(_)));
    }
}
