//! A job's local view of its lease: the deadline after which this worker
//! must assume another one owns the job. Past it, every provider call and
//! every write of the job is dropped, whatever the database would say.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use editthinker_core::{
    CritiqueRequest, EditRequest, Editor, EditorError, Image, ProviderRequest, Thinker,
    ThinkerAnswer, ThinkerError, Verifier, VerifierAnswer, VerifyRequest,
};
use tokio::time::Instant;

/// The lease's local deadline: last successful renewal + lease − margin.
/// The renewal's *send* time counts, so the database's expiry (its clock at
/// the renewal + lease) is always later than ours.
#[derive(Clone)]
pub(crate) struct LeaseClock {
    deadline: Arc<Mutex<Instant>>,
    lease: Duration,
}

impl LeaseClock {
    /// A clock for a lease just granted at `granted` (the claim's send time).
    pub fn new(granted: Instant, lease: Duration) -> Self {
        let clock = Self {
            deadline: Arc::new(Mutex::new(granted)),
            lease,
        };
        clock.renewed(granted);
        clock
    }

    /// How much of the lease is kept back: the job stops this long before
    /// the database would let another worker take it.
    pub fn margin(lease: Duration) -> Duration {
        lease / 4
    }

    /// A renewal sent at `sent` succeeded.
    pub fn renewed(&self, sent: Instant) {
        let deadline = sent + self.lease - Self::margin(self.lease);
        let mut current = self.deadline.lock().expect("lease clock lock");
        *current = (*current).max(deadline);
    }

    fn deadline(&self) -> Instant {
        *self.deadline.lock().expect("lease clock lock")
    }

    /// Whether the lease still holds.
    pub fn holds(&self) -> bool {
        Instant::now() < self.deadline()
    }

    /// Resolves once the deadline has passed (following renewals).
    pub async fn expired(&self) {
        loop {
            let deadline = self.deadline();
            tokio::time::sleep_until(deadline).await;
            if Instant::now() >= self.deadline() {
                return;
            }
        }
    }

    /// Runs `work` while the lease holds: `None` if it is already over or
    /// runs out first (then `work` is dropped mid-flight). The deadline is
    /// checked before `work` is polled each time, so a process that wakes
    /// up after a freeze does nothing more.
    pub async fn guard<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        if !self.holds() {
            return None;
        }
        tokio::select! {
            biased;
            _ = self.expired() => None,
            out = work => Some(out),
        }
    }
}

/// What a provider call ending with the lease says.
const LEASE_OVER: &str = "the job's lease ran out; the call was abandoned";

/// An editor whose every call is bounded by the job's lease.
pub(crate) struct LeasedEditor<'a> {
    pub inner: &'a dyn Editor,
    pub clock: &'a LeaseClock,
}

#[async_trait]
impl Editor for LeasedEditor<'_> {
    async fn edit(&self, request: EditRequest<'_>) -> Result<Image, EditorError> {
        self.clock
            .guard(self.inner.edit(request))
            .await
            .unwrap_or_else(|| Err(EditorError::Transient(LEASE_OVER.into())))
    }

    async fn cancel(&self, request: &ProviderRequest) -> Result<(), EditorError> {
        self.inner.cancel(request).await
    }

    fn max_instruction_chars(&self) -> usize {
        self.inner.max_instruction_chars()
    }
}

/// A thinker whose every call is bounded by the job's lease.
pub(crate) struct LeasedThinker<'a> {
    pub inner: &'a dyn Thinker,
    pub clock: &'a LeaseClock,
}

#[async_trait]
impl Thinker for LeasedThinker<'_> {
    fn protocol(&self) -> editthinker_core::Protocol {
        self.inner.protocol()
    }

    async fn critique(&self, request: CritiqueRequest<'_>) -> Result<ThinkerAnswer, ThinkerError> {
        let span = tracing::info_span!("thinker.critique", turn = request.turn);
        leased_call(self.clock, span, self.inner.critique(request)).await
    }
}

/// A verifier whose calls end when the lease does, like [`LeasedThinker`].
pub(crate) struct LeasedVerifier<'a> {
    pub inner: &'a dyn Verifier,
    pub clock: &'a LeaseClock,
}

#[async_trait]
impl Verifier for LeasedVerifier<'_> {
    async fn score(&self, request: VerifyRequest<'_>) -> Result<VerifierAnswer, ThinkerError> {
        let span = tracing::info_span!(
            "verifier.score",
            turn = request.turn,
            candidate = request.candidate
        );
        leased_call(self.clock, span, self.inner.score(request)).await
    }
}

/// A thinker or verifier call in `span`, abandoned (as a passing failure)
/// when the lease runs out.
async fn leased_call<T>(
    clock: &LeaseClock,
    span: tracing::Span,
    call: impl Future<Output = Result<T, ThinkerError>>,
) -> Result<T, ThinkerError> {
    clock
        .guard(tracing::Instrument::instrument(call, span))
        .await
        .unwrap_or_else(|| Err(ThinkerError::Transient(LEASE_OVER.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_keeps_a_margin_and_follows_renewals() {
        let lease = Duration::from_secs(8);
        let clock = LeaseClock::new(Instant::now(), lease);
        assert!(clock.holds());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(clock.holds());
        clock.renewed(Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(clock.holds(), "renewed at 5 s: good until 11 s");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!clock.holds(), "past renewal + lease - margin");
    }

    #[tokio::test(start_paused = true)]
    async fn guarded_work_is_dropped_when_the_lease_runs_out() {
        let clock = LeaseClock::new(Instant::now(), Duration::from_secs(4));
        let started = Instant::now();
        let out = clock
            .guard(tokio::time::sleep(Duration::from_secs(60)))
            .await;
        assert_eq!(out, None);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        // Once over, nothing runs at all.
        let polled = std::sync::atomic::AtomicBool::new(false);
        let out = clock
            .guard(async { polled.store(true, std::sync::atomic::Ordering::SeqCst) })
            .await;
        assert_eq!(out, None);
        assert!(!polled.load(std::sync::atomic::Ordering::SeqCst));
        // Renewed in time, work finishes.
        let clock = LeaseClock::new(Instant::now(), Duration::from_secs(4));
        assert_eq!(clock.guard(async { 7 }).await, Some(7));
    }
}
