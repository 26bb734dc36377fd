//! Sending one logical request of an editor: each attempt built afresh,
//! sent, its answer read whole (bounded) and classified, and the attempts
//! retried by the shared loop of `editthinker_provider_http` under the
//! rules of the module documentation of `http_common` (what is resent and
//! what ends the call as ambiguous).

use std::time::Duration;

use bytes::Bytes;
use editthinker_core::metrics::{self, ProviderOutcome};
use editthinker_core::{EditorError, FailureClass, RetryPolicy};
use editthinker_provider_http::{
    describe_error, read_body, retry_after, run, without_query, BodyError, Call, Failure, GiveUp,
    Step,
};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use tracing::Instrument;

use super::caller::HttpCaller;
use super::classify::Classifier;
use super::MAX_BODY_BYTES;

/// Whether a request may be sent again after an ambiguous failure (see the
/// module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Sending it twice does no paid work twice (a GET of a status or result
    /// URL, a cancel): every passing failure is retried.
    Idempotent,
    /// A paid, non-idempotent request (a synchronous edit, an asynchronous
    /// submission): an ambiguous failure is retried only when the profile's
    /// `retry_ambiguous` is set, else it ends the call as
    /// [`EditorError::Ambiguous`].
    Paid,
}

/// What the request builder of an attempt may depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Attempt number, from 1.
    pub number: u32,
    /// Earlier attempts of this call that got no HTTP answer at all
    /// (connection error, timeout): clients with several URLs move on by this.
    pub connection_failures: u32,
}

/// A successful (2xx) answer, fully read.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status (2xx).
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// How one logical request is sent, retried and read.
#[derive(Clone, Copy)]
pub(super) struct CallSpec {
    pub(super) resend: Resend,
    pub(super) retry: RetryPolicy,
    pub(super) max_bytes: usize,
    pub(super) classify: Classifier,
    /// Failed statuses handed back as replies instead of being classified.
    pub(super) pass: fn(StatusCode) -> bool,
}

impl HttpCaller {
    /// Sends one paid, non-idempotent request (an edit or a submission) that
    /// `build` makes for each attempt until a 2xx answer: what may pass is
    /// retried with backoff, except an ambiguous failure, which only
    /// `retry_ambiguous` resends ([`Resend::Paid`]); the final failure is
    /// classified.
    pub async fn send<F>(&self, build: F) -> Result<HttpReply, EditorError>
    where
        F: FnMut(&Attempt) -> Result<RequestBuilder, EditorError> + Send,
    {
        self.send_with(build, self.spec(Resend::Paid)).await
    }

    /// The usual handling of a request of this editor.
    pub(super) fn spec(&self, resend: Resend) -> CallSpec {
        CallSpec {
            resend,
            retry: self.retry,
            max_bytes: MAX_BODY_BYTES,
            classify: self.classify,
            pass: never,
        }
    }

    pub(super) async fn send_with<F>(
        &self,
        build: F,
        spec: CallSpec,
    ) -> Result<HttpReply, EditorError>
    where
        F: FnMut(&Attempt) -> Result<RequestBuilder, EditorError> + Send,
    {
        let mut call = EditorCall {
            caller: self,
            build,
            spec,
            resend_ambiguous: spec.resend == Resend::Idempotent || self.retry_ambiguous,
            connection_failures: 0,
            span: tracing::Span::none(),
        };
        run(spec.retry, &mut call).await
    }

    /// One attempt: send, read the answer, classify it.
    async fn attempt(
        &self,
        request: reqwest::Request,
        spec: &CallSpec,
    ) -> Step<HttpReply, EditorError> {
        let response = match self.client.execute(request).await {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                return Step::Fail(EditorError::Invalid(format!("bad request: {e}")))
            }
            Err(e) => return Step::Retry(Failure::transport(&e)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match read_body(response, spec.max_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return Step::Fail(EditorError::Invalid(format!(
                    "the answer is larger than {} bytes",
                    spec.max_bytes
                )))
            }
            // The answer started but broke off (reset, total timeout): the
            // request was received, and for a 2xx the work was done.
            Err(BodyError::Transport(e)) => {
                return Step::Retry(Failure::ambiguous(describe_error(&e)))
            }
        };
        if status.is_success() || (spec.pass)(status) {
            tracing::debug!(%status, bytes = body.len(), "editor answered");
            return Step::Done(HttpReply {
                status,
                headers,
                body,
            });
        }
        let error = (spec.classify)(status, &body);
        match (FailureClass::of_status(status.as_u16()), error) {
            (Some(class), EditorError::Transient(message)) => {
                Step::Retry(Failure::answered(class, message, retry_after(&headers)))
            }
            (_, error) => {
                tracing::warn!(%status, %error, "editor refused the request");
                Step::Fail(error)
            }
        }
    }
}

/// One logical request as the retry loop runs it.
struct EditorCall<'a, F> {
    caller: &'a HttpCaller,
    build: F,
    spec: CallSpec,
    /// Whether an ambiguous failure is sent again (see [`Resend`]).
    resend_ambiguous: bool,
    /// Attempts so far that got no HTTP answer ([`Attempt::connection_failures`]).
    connection_failures: u32,
    /// The `editor.request` span of the latest attempt, which the retry and
    /// give-up logs belong to.
    span: tracing::Span,
}

impl<F> Call for EditorCall<'_, F>
where
    F: FnMut(&Attempt) -> Result<reqwest::RequestBuilder, EditorError> + Send,
{
    type Output = HttpReply;
    type Error = EditorError;

    async fn attempt(&mut self, number: u32) -> Step<HttpReply, EditorError> {
        let attempt = Attempt {
            number,
            connection_failures: self.connection_failures,
        };
        let request = match (self.build)(&attempt).and_then(|builder| {
            builder
                .build()
                .map_err(|e| EditorError::Invalid(format!("could not build the request: {e}")))
        }) {
            Ok(request) => request,
            Err(error) => return Step::Fail(error),
        };
        let caller = self.caller;
        self.span = tracing::info_span!(
            "editor.request",
            editor = %caller.editor,
            kind = %caller.kind,
            method = %request.method(),
            url = %without_query(request.url()),
            attempt = number,
        );
        let step = caller
            .attempt(request, &self.spec)
            .instrument(self.span.clone())
            .await;
        metrics::provider_request(
            caller.kind.as_str(),
            step.outcome(ProviderOutcome::of_error),
        );
        let Step::Retry(failure) = step else {
            return step;
        };
        if !failure.answered {
            self.connection_failures += 1;
        }
        if failure.class == FailureClass::Ambiguous && !self.resend_ambiguous {
            self.span.in_scope(|| {
                tracing::warn!(
                    error = %failure.message,
                    "paid request failed after it was sent; not resending"
                )
            });
            return Step::Fail(EditorError::Ambiguous(failure.message));
        }
        tracing::debug!(class = ?failure.class, "retryable failure");
        Step::Retry(failure)
    }

    fn give_up(&mut self, failure: Failure, _: u32, why: GiveUp) -> EditorError {
        let error = EditorError::Transient(failure.message);
        if let GiveUp::RetryAfterTooLong(retry_after) = why {
            self.span.in_scope(
                || tracing::warn!(?retry_after, %error, "server asks for a long pause; giving up"),
            );
        }
        error
    }

    fn retrying(&mut self, failure: &Failure, _: u32, delay: Duration) {
        let error = EditorError::Transient(failure.message.clone());
        self.span
            .in_scope(|| tracing::warn!(%error, ?delay, "editor request failed; retrying"));
    }
}

fn never(_: StatusCode) -> bool {
    false
}
