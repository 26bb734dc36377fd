//! The one rule for what becomes of a running job that is given back
//! without a result (a transient failure, an expired lease, a graceful
//! release). Both backends apply its verdict; neither decides on its own.

use std::time::Duration;

use editthinker_core::StopReason;

use crate::payload::LEASE_EXPIRED;
use crate::JobStatus;

/// Counts a job given back, once its transaction has committed: back in
/// the queue is a retry for `reason`; settled terminal is a finished job.
pub(crate) fn count_given_back(status: JobStatus, reason: RequeueReason) {
    match status {
        JobStatus::Queued => editthinker_core::metrics::job_retried(reason.as_str()),
        terminal => count_finished(terminal, None),
    }
}

/// Counts a job that reached a terminal `status`, once its transaction has
/// committed (`stop` for a success).
pub(crate) fn count_finished(status: JobStatus, stop: Option<StopReason>) {
    editthinker_core::metrics::job_finished(status.as_str(), stop.map(StopReason::as_str));
}

/// What the fence (or the rescuer) read about a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunningJob {
    /// The attempt now ending.
    pub attempt: u32,
    /// The claim limit.
    pub max_attempts: u32,
    /// A client asked to cancel it.
    pub cancel_requested: bool,
}

/// Why a job goes back to the queue (`job.retrying` `reason`, contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequeueReason {
    /// A retryable failure reported by its worker.
    Transient,
    /// Its worker went silent past the lease.
    LeaseExpired,
    /// Its worker shut down gracefully; the attempt does not count.
    Released,
}

impl RequeueReason {
    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::LeaseExpired => "lease_expired",
            Self::Released => "released",
        }
    }
}

/// How a job is being given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GiveBack<'a> {
    /// Why.
    pub reason: RequeueReason,
    /// The failure's code and message, when there was one.
    pub error: Option<(&'a str, &'a str)>,
    /// How long to wait before the job may run again.
    pub delay: Duration,
}

impl<'a> GiveBack<'a> {
    /// A transient failure with its stable code.
    pub fn transient(code: &'a str, message: &'a str, delay: Duration) -> Self {
        Self {
            reason: RequeueReason::Transient,
            error: Some((code, message)),
            delay,
        }
    }

    /// An expired lease, found by the rescuer.
    pub fn lease_expired() -> Self {
        Self {
            reason: RequeueReason::LeaseExpired,
            error: Some((LEASE_EXPIRED, "lease expired; requeued")),
            delay: Duration::ZERO,
        }
    }

    /// A graceful release at shutdown.
    pub fn released() -> Self {
        Self {
            reason: RequeueReason::Released,
            error: None,
            delay: Duration::ZERO,
        }
    }
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// A cancel was requested: running it again would only cancel it.
    Cancel,
    /// No attempts are left: failed for good with this code and message.
    Fail { code: String, message: String },
    /// Back to the queue, due after `delay`; `counted` is false for a
    /// release, whose attempt is handed back.
    Requeue { delay: Duration, counted: bool },
}

/// Cancel requested → canceled; attempts spent → failed; else requeue.
/// A release never spends an attempt, so it is never failed.
pub(crate) fn settle(job: RunningJob, give: &GiveBack<'_>) -> Settlement {
    if job.cancel_requested {
        return Settlement::Cancel;
    }
    let counted = give.reason != RequeueReason::Released;
    if counted && job.attempt >= job.max_attempts {
        let (code, message) = match give.reason {
            RequeueReason::LeaseExpired => (
                LEASE_EXPIRED.to_owned(),
                format!(
                    "lease expired; {} of {} attempts spent",
                    job.attempt, job.max_attempts
                ),
            ),
            _ => {
                let (code, message) = give.error.unwrap_or(("internal", "attempts spent"));
                (code.to_owned(), message.to_owned())
            }
        };
        return Settlement::Fail { code, message };
    }
    Settlement::Requeue {
        delay: give.delay,
        counted,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn every_requeue_reason_is_a_known_metric_label() {
        for reason in [
            RequeueReason::Transient,
            RequeueReason::LeaseExpired,
            RequeueReason::Released,
        ] {
            assert!(
                editthinker_core::metrics::RETRY_REASONS.contains(&reason.as_str()),
                "{reason:?}"
            );
        }
    }

    use super::*;

    fn job(attempt: u32, max_attempts: u32, cancel_requested: bool) -> RunningJob {
        RunningJob {
            attempt,
            max_attempts,
            cancel_requested,
        }
    }

    #[test]
    fn cancel_wins_over_everything() {
        for give in [
            GiveBack::transient("editor_unavailable", "down", Duration::from_secs(5)),
            GiveBack::lease_expired(),
            GiveBack::released(),
        ] {
            assert_eq!(settle(job(3, 3, true), &give), Settlement::Cancel);
            assert_eq!(settle(job(1, 3, true), &give), Settlement::Cancel);
        }
    }

    #[test]
    fn spent_attempts_fail_with_the_failure_code() {
        let give = GiveBack::transient("editor_unavailable", "down", Duration::from_secs(5));
        assert_eq!(
            settle(job(3, 3, false), &give),
            Settlement::Fail {
                code: "editor_unavailable".into(),
                message: "down".into()
            }
        );
        assert_eq!(
            settle(job(2, 2, false), &GiveBack::lease_expired()),
            Settlement::Fail {
                code: "lease_expired".into(),
                message: "lease expired; 2 of 2 attempts spent".into()
            }
        );
    }

    #[test]
    fn otherwise_requeued_and_a_release_is_never_counted() {
        let give = GiveBack::transient("thinker_unavailable", "x", Duration::from_secs(7));
        assert_eq!(
            settle(job(1, 3, false), &give),
            Settlement::Requeue {
                delay: Duration::from_secs(7),
                counted: true
            }
        );
        assert_eq!(
            settle(job(3, 3, false), &GiveBack::released()),
            Settlement::Requeue {
                delay: Duration::ZERO,
                counted: false
            }
        );
    }
}
