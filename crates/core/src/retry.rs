//! The one retry policy: exponential backoff with jitter and a cap on how
//! long a server's `Retry-After` is waited out. Editors, the remote thinker
//! and the worker's requeue delay all use it. Also the one rule for what a
//! failed call to a provider says about the work behind it
//! ([`FailureClass`]), which editors act on and both editors and the remote
//! thinker count in `editthinker_provider_requests_total`.

use std::time::Duration;

use rand::Rng;

/// How often and how patiently something is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry (before jitter); doubles per retry.
    pub base: Duration,
    /// Cap of one delay (before jitter).
    pub max_delay: Duration,
    /// A server asking for a longer pause than this (`Retry-After`) ends the
    /// retries: the caller is better off giving the work back than holding
    /// a slot that long.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The delay before retry number `retry` (from 1): `base · 2^(retry-1)`,
    /// capped at `max_delay`, then scaled by a random factor in [50 %, 100 %]
    /// so that clients that failed together do not come back together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1).min(30)))
            .min(self.max_delay);
        exp.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// The delay before retry number `retry` when the server may have said
    /// how long to wait: never shorter than its `Retry-After`, or `None`
    /// (give up) when that is longer than `max_retry_after`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        match retry_after {
            Some(wait) if wait > self.max_retry_after => None,
            Some(wait) => Some(wait.max(self.backoff(retry))),
            None => Some(self.backoff(retry)),
        }
    }

    /// Whether retry number `retry` (from 1) is still allowed.
    pub fn allows(&self, retry: u32) -> bool {
        retry <= self.max_retries
    }
}

/// What a failed attempt at a provider call says about the work behind it
/// (crates/editors/src/http_common/mod.rs explains what each class allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The provider never saw the request (connect errors: DNS, refused,
    /// TLS, the connect timeout).
    NotSent,
    /// The provider answered that it did not take the request on (408,
    /// 429, 503).
    RefusedBeforeWork,
    /// Sent; whether the provider did the work is unknown (a timeout or a
    /// broken connection after sending, any other 5xx).
    Ambiguous,
}

impl FailureClass {
    /// The class of a failed HTTP status that a later attempt may get past,
    /// `None` for the rest (a final answer such as 400 or 401).
    pub fn of_status(status: u16) -> Option<Self> {
        match status {
            408 | 429 | 503 => Some(Self::RefusedBeforeWork),
            500..=599 => Some(Self::Ambiguous),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = policy();
        for _ in 0..200 {
            let d1 = p.backoff(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = p.backoff(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d9 = p.backoff(9);
            assert!(d9 >= Duration::from_millis(250) && d9 <= Duration::from_millis(500));
            assert!(p.backoff(u32::MAX) <= Duration::from_millis(500));
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_a_long_one_gives_up() {
        let p = policy();
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(p.delay(1, Some(Duration::from_secs(61))), None);
        let d = p.delay(1, None).unwrap();
        assert!(d <= Duration::from_millis(100));
        assert!(p.allows(3) && !p.allows(4));
    }

    #[test]
    fn failed_statuses_are_classed_by_what_the_provider_did() {
        for refused in [408, 429, 503] {
            assert_eq!(
                FailureClass::of_status(refused),
                Some(FailureClass::RefusedBeforeWork),
                "{refused}"
            );
        }
        for ambiguous in [500, 502, 504, 599] {
            assert_eq!(
                FailureClass::of_status(ambiguous),
                Some(FailureClass::Ambiguous),
                "{ambiguous}"
            );
        }
        for final_ in [200, 400, 401, 403, 404, 409, 422, 451] {
            assert_eq!(FailureClass::of_status(final_), None, "{final_}");
        }
    }
}
