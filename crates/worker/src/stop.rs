//! The one way a running job is stopped from outside (a cancel, its
//! deadline, a lost lease, a shutdown): a typed reason, seen by the loop at
//! its next step boundary, and an abandon that ends the run mid-step.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// What stopped a job from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// A client asked to cancel the job.
    CancelRequested,
    /// The job's deadline passed.
    Deadline,
    /// Another worker or the rescuer owns the job now.
    LeaseLost,
    /// This worker is shutting down.
    Shutdown,
}

/// A job's stop, shared by the run, its heartbeat, its shutdown timer and
/// its observer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stop {
    reason: Arc<Mutex<Option<Interrupt>>>,
    abandon: CancellationToken,
}

impl Stop {
    /// Records `reason`; the loop stops at its next step boundary. A
    /// shutdown never replaces another reason, and any other reason
    /// replaces a shutdown: a cancel or a lost lease decides the outcome.
    pub(crate) fn request(&self, reason: Interrupt) {
        let mut slot = self.reason.lock().expect("stop lock");
        if slot.is_none() || reason != Interrupt::Shutdown {
            *slot = Some(reason);
        }
    }

    /// Records `reason` and ends the run at once, mid-step.
    pub(crate) fn now(&self, reason: Interrupt) {
        self.request(reason);
        self.abandon.cancel();
    }

    /// Ends the run at once for the reason already recorded.
    pub(crate) fn abandon(&self) {
        self.abandon.cancel();
    }

    /// The reason, once one is recorded.
    pub(crate) fn reason(&self) -> Option<Interrupt> {
        *self.reason.lock().expect("stop lock")
    }

    /// Resolves when the run is to be abandoned.
    pub(crate) async fn abandoned(&self) {
        self.abandon.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shutdown_never_hides_another_reason() {
        let stop = Stop::default();
        assert_eq!(stop.reason(), None);
        stop.request(Interrupt::Shutdown);
        assert_eq!(stop.reason(), Some(Interrupt::Shutdown));
        stop.request(Interrupt::CancelRequested);
        assert_eq!(stop.reason(), Some(Interrupt::CancelRequested));
        stop.request(Interrupt::Shutdown);
        assert_eq!(stop.reason(), Some(Interrupt::CancelRequested));
        stop.now(Interrupt::LeaseLost);
        assert_eq!(stop.reason(), Some(Interrupt::LeaseLost));
    }

    #[tokio::test]
    async fn now_abandons_and_request_does_not() {
        let stop = Stop::default();
        stop.request(Interrupt::Shutdown);
        let pending = tokio::time::timeout(std::time::Duration::ZERO, stop.abandoned()).await;
        assert!(pending.is_err(), "a request alone abandons nothing");
        stop.clone().now(Interrupt::Deadline);
        stop.abandoned().await;
        assert_eq!(stop.reason(), Some(Interrupt::Deadline));
    }
}
