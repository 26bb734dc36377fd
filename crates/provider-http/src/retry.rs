//! The loop of attempts of one provider call: each attempt is made by the
//! caller ([`Call::attempt`]), a failure that a later attempt may get past
//! ([`Step::Retry`]) is retried under the call's [`RetryPolicy`] (backoff
//! with jitter up to its cap, never sooner than the server's
//! `Retry-After`, giving up on one past the policy's maximum), and the
//! caller decides what a failure it stops on becomes ([`Call::give_up`]).

use std::future::Future;
use std::time::Duration;

use editthinker_core::metrics::ProviderOutcome;
use editthinker_core::{FailureClass, RetryPolicy};

use crate::error_text::describe_error;

/// Longest backoff step (before jitter) of any provider call.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The retry policy of a provider call: `max_retries` retries after the
/// first attempt, backoff from `base` doubling up to [`MAX_BACKOFF`], and a
/// `Retry-After` longer than `max_retry_after` ends the retries.
pub fn provider_policy(max_retries: u32, base: Duration, max_retry_after: Duration) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        base,
        max_delay: MAX_BACKOFF,
        max_retry_after,
    }
}

/// A failed attempt that another attempt may get past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What the failure says about the work behind the request.
    pub class: FailureClass,
    /// What went wrong, for logs and the final error.
    pub message: String,
    /// The server's `Retry-After`, a floor for the next delay.
    pub retry_after: Option<Duration>,
    /// Whether a complete HTTP answer came back (clients with several
    /// servers move on from one that sent none).
    pub answered: bool,
}

impl Failure {
    /// A transport error before any answer: not sent when connecting
    /// failed (reqwest's connect errors cover DNS, refused connections,
    /// TLS and the connect timeout), else ambiguous (the request, or part
    /// of it, was written: a total timeout, a reset).
    pub fn transport(e: &reqwest::Error) -> Self {
        let class = if e.is_connect() {
            FailureClass::NotSent
        } else {
            FailureClass::Ambiguous
        };
        Self {
            class,
            message: describe_error(e),
            retry_after: None,
            answered: false,
        }
    }

    /// The request was sent and its answer broke off or made no sense
    /// part-way (a body that stopped, a stream gone idle): whether the work
    /// was done is unknown.
    pub fn ambiguous(message: String) -> Self {
        Self {
            class: FailureClass::Ambiguous,
            message,
            retry_after: None,
            answered: false,
        }
    }

    /// A complete answer that a later attempt may get past (a status with
    /// a [`FailureClass::of_status`], an error the server reported).
    pub fn answered(class: FailureClass, message: String, retry_after: Option<Duration>) -> Self {
        Self {
            class,
            message,
            retry_after,
            answered: true,
        }
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Step<T, E> {
    /// Success: the call returns it.
    Done(T),
    /// A final failure: the call ends with it, no retry.
    Fail(E),
    /// Worth another attempt, if the policy allows.
    Retry(Failure),
}

impl<T, E> Step<T, E> {
    /// What the attempt counts as in `editthinker_provider_requests_total`;
    /// `of_error` maps the caller's final errors.
    pub fn outcome(&self, of_error: impl FnOnce(&E) -> ProviderOutcome) -> ProviderOutcome {
        match self {
            Self::Done(_) => ProviderOutcome::Ok,
            Self::Fail(error) => of_error(error),
            Self::Retry(failure) => ProviderOutcome::of_failure(failure.class),
        }
    }
}

/// Why the loop stopped on a failure a later attempt might have got past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The policy's retries are spent.
    Exhausted,
    /// The server asked for this long a pause, more than the policy waits.
    RetryAfterTooLong(Duration),
}

/// One provider call as the retry loop sees it: the caller's attempts and
/// its hooks.
pub trait Call {
    /// What a successful call returns.
    type Output;
    /// The caller's error type.
    type Error;

    /// Makes attempt number `number` (from 1).
    fn attempt(
        &mut self,
        number: u32,
    ) -> impl Future<Output = Step<Self::Output, Self::Error>> + Send;

    /// The error the call ends with when the loop gives up on `failure`,
    /// after `attempts` attempts.
    fn give_up(&mut self, failure: Failure, attempts: u32, why: GiveUp) -> Self::Error;

    /// Called before waiting `delay` to retry after attempt `number` failed
    /// with `failure` (for logs).
    fn retrying(&mut self, failure: &Failure, number: u32, delay: Duration) {
        let _ = (failure, number, delay);
    }
}

/// Runs `call` to its end: attempts until one is done or fails for good,
/// retrying under `policy` in between.
pub async fn run<C: Call + Send>(policy: RetryPolicy, call: &mut C) -> Result<C::Output, C::Error> {
    let mut number = 1;
    loop {
        let failure = match call.attempt(number).await {
            Step::Done(output) => return Ok(output),
            Step::Fail(error) => return Err(error),
            Step::Retry(failure) => failure,
        };
        // Retry number `number` follows attempt number `number`.
        if !policy.allows(number) {
            return Err(call.give_up(failure, number, GiveUp::Exhausted));
        }
        let Some(delay) = policy.delay(number, failure.retry_after) else {
            let asked = failure.retry_after.unwrap_or_default();
            return Err(call.give_up(failure, number, GiveUp::RetryAfterTooLong(asked)));
        };
        call.retrying(&failure, number, delay);
        tokio::time::sleep(delay).await;
        number += 1;
    }
}
