//! What every HTTP editor client shares (BACKENDS.md, "Common rules"): one
//! reqwest client with connect and total timeouts, retries with the one
//! [`RetryPolicy`] of `editthinker_core` (exponential backoff, jitter,
//! `Retry-After` as a floor and a cap), the classification of final answers
//! into the worker's error classes, and a per-editor limit on calls in
//! flight. Also what the hosted kinds share: API-key headers, base URLs,
//! JSON POSTs, downloads of result URLs, cancel calls and decoding of base64
//! images.
//!
//! # Retries that cannot double-charge
//!
//! Every failed attempt is one of three kinds:
//!
//! - **not sent**: connecting failed (refused, DNS, TLS, connect timeout):
//!   the provider never saw the request. Retried.
//! - **refused before work**: 408, 429 or 503: the provider answered that
//!   it did not take the request on. Retried, no sooner than its
//!   `Retry-After`.
//! - **ambiguous**: the request was sent, then the attempt timed out or the
//!   connection broke, or the answer was another 5xx: the provider may have
//!   done (and billed) the work. What happens depends on the request's
//!   [`Resend`]: idempotent requests (GETs of status and result URLs,
//!   cancels) are retried; a paid, non-idempotent one (an edit, a
//!   submission) is sent again only when the profile's `retry_ambiguous`
//!   says so (the default of the free `http` kind), and otherwise ends the
//!   call at once as [`EditorError::Ambiguous`]: the worker requeues the job
//!   visibly, counted against its attempts. None of the hosted providers
//!   documents an idempotency key that would make a resend safe (see
//!   [`EditorKind::retries_ambiguous_by_default`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use editthinker_core::imaging::off_thread;
use editthinker_core::metrics::{self, ProviderOutcome};
use editthinker_core::{EditorError, FailureClass, Image, RetryPolicy};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;
use url::Url;

use crate::config::{EditorConfigError, EditorKind, EditorProfile};

/// Answers larger than this are refused rather than buffered.
pub const MAX_BODY_BYTES: usize = 256 << 20;
/// How much of a server's body goes into an error message.
pub const BODY_EXCERPT_CHARS: usize = 500;
/// A `Retry-After` longer than this ends the in-call retries: the job is
/// better requeued by the worker than holding a slot that long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Upper bound of one backoff delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Result images fetched from a provider's URL larger than this are refused.
pub const MAX_DOWNLOAD_BYTES: usize = 50 << 20;
/// The pixel limit for images an editor sends back.
pub const MAX_OUTPUT_PIXELS: u64 = 100_000_000;
/// Time allowed for one attempt of a cancel call: it is best effort, and
/// the job it belongs to is already over.
pub const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a cancel call after its first attempt.
pub const CANCEL_RETRIES: u32 = 2;

/// Turns a final non-2xx answer (status, body) into an error class. A
/// classifier that answers anything but `Transient` for a retryable status
/// stops the retries (e.g. a 429 that means "out of quota").
pub type Classifier = fn(StatusCode, &[u8]) -> EditorError;

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

/// The shared HTTP machinery, and the settings every kind reads, of one
/// editor profile.
#[derive(Debug, Clone)]
pub struct HttpCaller {
    client: reqwest::Client,
    retry: RetryPolicy,
    retry_ambiguous: bool,
    max_instruction_chars: usize,
    limiter: Arc<Semaphore>,
    editor: String,
    kind: EditorKind,
    classify: Classifier,
}

/// How one logical request is sent, retried and read.
#[derive(Clone, Copy)]
struct CallSpec {
    resend: Resend,
    retry: RetryPolicy,
    max_bytes: usize,
    classify: Classifier,
    /// Failed statuses handed back as replies instead of being classified.
    pass: fn(StatusCode) -> bool,
}

impl HttpCaller {
    /// Runs one `Editor::edit` call: inside an `editor.edit` span (editor,
    /// kind, model, turn, and the provider's `request_id` once an
    /// asynchronous kind knows it) that each attempt's `editor.request` span
    /// nests in, holding an in-flight slot for the whole call, retries and
    /// polls included.
    pub async fn run_edit<T>(
        &self,
        model: Option<&str>,
        turn: u32,
        call: impl std::future::Future<Output = Result<T, EditorError>>,
    ) -> Result<T, EditorError> {
        let span = tracing::info_span!(
            "editor.edit",
            editor = %self.editor,
            kind = %self.kind,
            model = model.unwrap_or_default(),
            turn,
            request_id = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let result = async {
            let _permit = self.acquire().await;
            call.await
        }
        .instrument(span)
        .await;
        metrics::edit_done(&self.editor, self.kind.as_str(), started.elapsed());
        result
    }

    /// Builds the client, retry policy and in-flight limit from the common
    /// settings of `profile`, validating them (and `max_instruction_chars`).
    pub fn from_profile(name: &str, profile: &EditorProfile) -> Result<Self, EditorConfigError> {
        let seconds = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(EditorConfigError::invalid(
                    name,
                    field,
                    format!("must be a positive number of seconds, got {v}"),
                ))
            }
        };
        let timeout = seconds("timeout_seconds", profile.timeout_seconds)?;
        let connect_timeout = seconds("connect_timeout_seconds", profile.connect_timeout_seconds)?;
        let max_in_flight = profile.effective_max_in_flight();
        if max_in_flight == 0 || max_in_flight > Semaphore::MAX_PERMITS {
            return Err(EditorConfigError::invalid(
                name,
                "max_in_flight",
                "must be at least 1",
            ));
        }
        let max_instruction_chars = profile.effective_max_instruction_chars(name)?;
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .user_agent(concat!("editthinker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EditorConfigError::invalid(name, "kind", format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            retry: RetryPolicy {
                max_retries: profile.max_retries,
                base: Duration::from_millis(profile.retry_base_ms),
                max_delay: MAX_BACKOFF,
                max_retry_after: MAX_RETRY_AFTER,
            },
            retry_ambiguous: profile.effective_retry_ambiguous(),
            max_instruction_chars,
            limiter: Arc::new(Semaphore::new(max_in_flight)),
            editor: name.to_owned(),
            kind: profile.kind,
            classify: classify_failure,
        })
    }

    /// Uses `classify` instead of [`classify_failure`] for this provider's
    /// failed answers (provider-specific refusal and credential codes).
    pub fn with_classifier(mut self, classify: Classifier) -> Self {
        self.classify = classify;
        self
    }

    /// The underlying client (for building requests).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The retry policy of this editor's calls.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Whether paid requests are sent again after an ambiguous failure
    /// (`retry_ambiguous`).
    pub fn retries_ambiguous(&self) -> bool {
        self.retry_ambiguous
    }

    /// The profile's instruction cap (`max_instruction_chars`), what
    /// `Editor::max_instruction_chars` answers.
    pub fn max_instruction_chars(&self) -> usize {
        self.max_instruction_chars
    }

    /// Waits for a slot under the editor's `max_in_flight`; hold the permit
    /// for the whole edit (all requests, retries and polls of it).
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.limiter)
            .acquire_owned()
            .await
            .expect("the limiter semaphore is never closed")
    }

    /// Sends one paid, non-idempotent request (an edit or a submission) that
    /// `build` makes for each attempt until a 2xx answer: what may pass is
    /// retried with backoff, except an ambiguous failure, which only
    /// `retry_ambiguous` resends ([`Resend::Paid`]); the final failure is
    /// classified.
    pub async fn send<F>(&self, build: F) -> Result<HttpReply, EditorError>
    where
        F: FnMut(&Attempt) -> Result<RequestBuilder, EditorError>,
    {
        self.send_with(build, self.spec(Resend::Paid)).await
    }

    /// The usual handling of a request of this editor.
    fn spec(&self, resend: Resend) -> CallSpec {
        CallSpec {
            resend,
            retry: self.retry,
            max_bytes: MAX_BODY_BYTES,
            classify: self.classify,
            pass: never,
        }
    }

    async fn send_with<F>(&self, mut build: F, spec: CallSpec) -> Result<HttpReply, EditorError>
    where
        F: FnMut(&Attempt) -> Result<RequestBuilder, EditorError>,
    {
        let resend_ambiguous = spec.resend == Resend::Idempotent || self.retry_ambiguous;
        let mut attempt = Attempt {
            number: 1,
            connection_failures: 0,
        };
        loop {
            let request = build(&attempt)?
                .build()
                .map_err(|e| EditorError::Invalid(format!("could not build the request: {e}")))?;
            let span = tracing::info_span!(
                "editor.request",
                editor = %self.editor,
                kind = %self.kind,
                method = %request.method(),
                url = %without_query(request.url()),
                attempt = attempt.number,
            );
            let outcome = self.attempt(request, &spec).instrument(span.clone()).await;
            metrics::provider_request(self.kind.as_str(), outcome.metric());
            let failure = match outcome {
                Outcome::Done(reply) => return Ok(reply),
                Outcome::Fail(error) => return Err(error),
                Outcome::Retry(failure) => failure,
            };
            if !failure.answered {
                attempt.connection_failures += 1;
            }
            let error = match failure.class {
                FailureClass::Ambiguous if !resend_ambiguous => {
                    span.in_scope(|| {
                        tracing::warn!(
                            error = %failure.message,
                            "paid request failed after it was sent; not resending"
                        )
                    });
                    return Err(EditorError::Ambiguous(failure.message));
                }
                class => {
                    tracing::debug!(?class, "retryable failure");
                    EditorError::Transient(failure.message)
                }
            };
            let retry = attempt.number;
            if !spec.retry.allows(retry) {
                return Err(error);
            }
            let Some(delay) = spec.retry.delay(retry, failure.retry_after) else {
                span.in_scope(|| {
                    tracing::warn!(
                        retry_after = ?failure.retry_after,
                        %error,
                        "server asks for a long pause; giving up"
                    )
                });
                return Err(error);
            };
            span.in_scope(|| tracing::warn!(%error, ?delay, "editor request failed; retrying"));
            tokio::time::sleep(delay).await;
            attempt.number += 1;
        }
    }

    async fn attempt(&self, request: reqwest::Request, spec: &CallSpec) -> Outcome {
        let response = match self.client.execute(request).await {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                return Outcome::Fail(EditorError::Invalid(format!("bad request: {e}")))
            }
            Err(e) => return Outcome::Retry(Failure::transport(&e)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match read_body(response, spec.max_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return Outcome::Fail(EditorError::Invalid(format!(
                    "the answer is larger than {} bytes",
                    spec.max_bytes
                )))
            }
            // The answer started but broke off (reset, total timeout): the
            // request was received, and for a 2xx the work was done.
            Err(BodyError::Transport(e)) => {
                let mut failure = Failure::transport(&e);
                failure.class = FailureClass::Ambiguous;
                return Outcome::Retry(failure);
            }
        };
        if status.is_success() || (spec.pass)(status) {
            tracing::debug!(%status, bytes = body.len(), "editor answered");
            return Outcome::Done(HttpReply {
                status,
                headers,
                body,
            });
        }
        let error = (spec.classify)(status, &body);
        match (FailureClass::of_status(status.as_u16()), error) {
            (Some(class), EditorError::Transient(message)) => Outcome::Retry(Failure {
                class,
                message,
                retry_after: retry_after(&headers),
                answered: true,
            }),
            (_, error) => {
                tracing::warn!(%status, %error, "editor refused the request");
                Outcome::Fail(error)
            }
        }
    }
}

enum Outcome {
    Done(HttpReply),
    Fail(EditorError),
    Retry(Failure),
}

impl Outcome {
    /// What this attempt counts as in `editthinker_provider_requests_total`.
    fn metric(&self) -> ProviderOutcome {
        match self {
            Self::Done(_) => ProviderOutcome::Ok,
            Self::Fail(error) => ProviderOutcome::of_error(error),
            Self::Retry(failure) => ProviderOutcome::of_failure(failure.class),
        }
    }
}

/// A failed attempt that another attempt may get past.
struct Failure {
    class: FailureClass,
    message: String,
    retry_after: Option<Duration>,
    /// Whether a complete HTTP answer came back; clients with several URLs
    /// move on from a server that sent none ([`Attempt::connection_failures`]).
    answered: bool,
}

impl Failure {
    /// A transport error before any answer: not sent when connecting failed
    /// (reqwest's connect errors cover DNS, refused connections, TLS and
    /// the connect timeout), else ambiguous (the request, or part of it, was
    /// written: a total timeout, a reset, a body that could not be written).
    fn transport(e: &reqwest::Error) -> Self {
        Self {
            class: if e.is_connect() {
                FailureClass::NotSent
            } else {
                FailureClass::Ambiguous
            },
            message: describe_transport_error(e),
            retry_after: None,
            answered: false,
        }
    }
}

enum BodyError {
    TooLarge,
    Transport(reqwest::Error),
}

async fn read_body(mut response: reqwest::Response, max_bytes: usize) -> Result<Bytes, BodyError> {
    if response
        .content_length()
        .is_some_and(|n| n > max_bytes as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > max_bytes {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn describe_transport_error(e: &reqwest::Error) -> String {
    // reqwest's Display hides the cause ("error sending request"); the
    // source chain says what happened (connection refused, timed out, ...).
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_timeout() {
        message.push_str(" (timed out)");
    }
    // reqwest names the URL; a signed result URL's query is a credential.
    if let Some(url) = e.url().filter(|u| u.query().is_some()) {
        message = message.replace(url.as_str(), without_query(url).as_str());
    }
    message
}

fn never(_: StatusCode) -> bool {
    false
}

/// 404 and 410: what a provider answers for a request or file it no
/// longer has.
fn is_gone(status: StatusCode) -> bool {
    status == StatusCode::NOT_FOUND || status == StatusCode::GONE
}

/// What a result URL answers once it expired: 404 or 410, or 403 from a
/// signed URL whose signature is past its time (S3-style stores).
fn is_expired(status: StatusCode) -> bool {
    is_gone(status) || status == StatusCode::FORBIDDEN
}

/// What a cancel call may answer when there is nothing left to stop: 404 or
/// 410 (unknown or gone), 409, or 400 (fal answers `ALREADY_COMPLETED`
/// with it).
fn nothing_to_cancel(status: StatusCode) -> bool {
    is_gone(status) || status == StatusCode::CONFLICT || status == StatusCode::BAD_REQUEST
}

/// Whether a failed status may pass on a later attempt.
pub fn is_retryable(status: StatusCode) -> bool {
    FailureClass::of_status(status.as_u16()).is_some()
}

/// The `Retry-After` delay, seconds form (the HTTP-date form is ignored and
/// falls back to our own backoff).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(Duration::from_secs)
}

/// The error class of a final non-2xx answer: 451 or a moderation/safety
/// code → `Refused`; 401/403 → `Auth`; 408/429/5xx → `Transient`; any other
/// 4xx → `Invalid`. The message carries the status and the server's body,
/// truncated.
pub fn classify_failure(status: StatusCode, body: &[u8]) -> EditorError {
    let message = format!("HTTP {status}: {}", body_excerpt(body));
    if status == StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS {
        EditorError::Refused(message)
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        EditorError::Auth(message)
    } else if is_retryable(status) {
        EditorError::Transient(message)
    } else if is_refusal(body) {
        EditorError::Refused(format!("HTTP {status}: {}", refusal_message(body)))
    } else {
        EditorError::Invalid(message)
    }
}

/// The body as text, cut to [`BODY_EXCERPT_CHARS`] characters.
pub fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    match text.char_indices().nth(BODY_EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Whether a JSON error body says the provider refused on moderation or
/// safety grounds. Only code-like fields are read (`code`, `type`,
/// `error_type`, …, or an `error` string without spaces), never free-text
/// messages, so "safety_tolerance must be ≤ 6" stays a plain bad request.
pub fn is_refusal(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| value_is_refusal(&v, 0))
}

fn value_is_refusal(value: &Value, depth: u32) -> bool {
    const CODE_KEYS: [&str; 6] = [
        "code",
        "type",
        "error_type",
        "error_code",
        "reason",
        "status",
    ];
    let Value::Object(map) = value else {
        return false;
    };
    if CODE_KEYS
        .iter()
        .filter_map(|k| map.get(*k).and_then(Value::as_str))
        .any(says_refused)
    {
        return true;
    }
    ["error", "detail"].iter().any(|k| match map.get(*k) {
        Some(Value::String(s)) => !s.trim().contains(char::is_whitespace) && says_refused(s),
        Some(v @ Value::Object(_)) if depth < 3 => value_is_refusal(v, depth + 1),
        _ => false,
    })
}

/// Whether a provider's error code (not free text) names a moderation or
/// safety refusal.
pub fn says_refused(code: &str) -> bool {
    let code = code.to_ascii_lowercase();
    [
        "moderat",
        "safety",
        "refus",
        "content_policy",
        "content_filter",
    ]
    .iter()
    .any(|m| code.contains(m))
}

impl HttpCaller {
    /// POSTs `body` as JSON to `url` with `credential`: one paid request,
    /// retried like [`send`](Self::send); the 2xx answer is parsed as JSON.
    /// Serialising and parsing (megabytes of base64 images) run off the
    /// async threads.
    pub async fn post_json(
        &self,
        url: &Url,
        credential: &Credential,
        body: Value,
    ) -> Result<Value, EditorError> {
        let body = off_thread(move || {
            Bytes::from(serde_json::to_vec(&body).expect("a JSON value always serialises"))
        })
        .await;
        let reply = self
            .send(|_| {
                Ok(self
                    .client
                    .post(url.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .header(credential.name.clone(), credential.value.clone())
                    .body(body.clone()))
            })
            .await?;
        off_thread(move || parse_json(&reply.body)).await
    }

    /// GETs `url` (a polling handle the provider handed back) with
    /// `credential`, retrying every passing failure (a GET is idempotent),
    /// and parses the 2xx answer as JSON; `None` when the provider answers
    /// 404 or 410 (it no longer has what the URL named).
    pub async fn get_json(
        &self,
        url: &Url,
        credential: &Credential,
    ) -> Result<Option<Value>, EditorError> {
        let reply = self
            .send_with(
                |_| {
                    Ok(self
                        .client
                        .get(url.clone())
                        .header(credential.name.clone(), credential.value.clone()))
                },
                CallSpec {
                    pass: is_gone,
                    ..self.spec(Resend::Idempotent)
                },
            )
            .await?;
        if is_gone(reply.status) {
            return Ok(None);
        }
        off_thread(move || parse_json(&reply.body).map(Some)).await
    }

    /// Asks the provider to stop request `request_id`: `method` to `url` (a
    /// cancel URL the provider handed back) with `credential`. Best effort
    /// and bounded: each attempt within [`CANCEL_TIMEOUT`], at most
    /// [`CANCEL_RETRIES`] retries (a cancel is idempotent), no in-flight
    /// slot taken (the edit it stops held one). An answer that there is
    /// nothing left to stop (404, 409, 410, or 400 for a finished request)
    /// is success.
    pub async fn cancel(
        &self,
        method: Method,
        url: &Url,
        credential: &Credential,
        request_id: &str,
    ) -> Result<(), EditorError> {
        let span = tracing::info_span!(
            "editor.cancel",
            editor = %self.editor,
            kind = %self.kind,
            request_id,
        );
        let spec = CallSpec {
            // Short pauses too: nobody waits for the answer.
            retry: RetryPolicy {
                max_retries: self.retry.max_retries.min(CANCEL_RETRIES),
                max_retry_after: CANCEL_TIMEOUT,
                ..self.retry
            },
            pass: nothing_to_cancel,
            ..self.spec(Resend::Idempotent)
        };
        async {
            let reply = self
                .send_with(
                    |_| {
                        Ok(self
                            .client
                            .request(method.clone(), url.clone())
                            .timeout(CANCEL_TIMEOUT)
                            .header(credential.name.clone(), credential.value.clone()))
                    },
                    spec,
                )
                .await?;
            if reply.status.is_success() {
                tracing::info!(status = %reply.status, "provider request canceled");
            } else {
                tracing::info!(
                    status = %reply.status,
                    answer = %body_excerpt(&reply.body),
                    "nothing left to cancel"
                );
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Fetches a result image from a URL the provider handed back (signed,
    /// short-lived: called at once), with this editor's client and retries
    /// (a GET is idempotent), up to [`MAX_DOWNLOAD_BYTES`]. No credential is
    /// sent: the URL carries its own authorisation and often points at
    /// another host. A `data:` URL is decoded in place.
    pub async fn download(&self, url: &str) -> Result<Image, EditorError> {
        match self.download_unless_gone(url).await? {
            Ok(image) => Ok(image),
            Err(gone) => Err(EditorError::Invalid(gone)),
        }
    }

    /// [`download`](Self::download), telling a result the provider no longer
    /// has (404 or 410: deleted; 403: an expired signature) apart, as
    /// `Ok(Err(why))`.
    pub async fn download_unless_gone(
        &self,
        url: &str,
    ) -> Result<Result<Image, String>, EditorError> {
        if url.starts_with("data:") {
            let url = url.to_owned();
            return off_thread(move || decode_base64_image(&url, "result"))
                .await
                .map(Ok);
        }
        let parsed = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                EditorError::Invalid(format!(
                    "the editor's result URL is not an http(s) URL: {}",
                    body_excerpt(url.as_bytes())
                ))
            })?;
        tracing::debug!(url = %without_query(&parsed), "downloading the result");
        let reply = self
            .send_with(
                |_| Ok(self.client.get(parsed.clone())),
                CallSpec {
                    max_bytes: MAX_DOWNLOAD_BYTES,
                    classify: classify_download_failure,
                    pass: is_expired,
                    ..self.spec(Resend::Idempotent)
                },
            )
            .await?;
        if is_expired(reply.status) {
            return Ok(Err(format!(
                "downloading the result failed: HTTP {}: {}",
                reply.status,
                body_excerpt(&reply.body)
            )));
        }
        off_thread(move || {
            Image::validate(reply.body, MAX_OUTPUT_PIXELS).map_err(|e| {
                EditorError::Invalid(format!(
                    "the editor's result URL did not hold a usable image: {e}"
                ))
            })
        })
        .await
        .map(Ok)
    }
}

/// The URL without its query: signed result URLs carry their signature
/// there, which has no place in logs.
fn without_query(url: &Url) -> Url {
    let mut url = url.clone();
    url.set_query(None);
    url
}

/// Failures fetching a result URL: our credentials are not involved, so a
/// 401/403 (an expired signature) is not `Auth`; what may pass is
/// `Transient`, the rest `Invalid`.
fn classify_download_failure(status: StatusCode, body: &[u8]) -> EditorError {
    let message = format!(
        "downloading the result failed: HTTP {status}: {}",
        body_excerpt(body)
    );
    if is_retryable(status) {
        EditorError::Transient(message)
    } else {
        EditorError::Invalid(message)
    }
}

/// A 2xx answer parsed as JSON; anything else is `Invalid`.
pub fn parse_json(body: &[u8]) -> Result<Value, EditorError> {
    serde_json::from_slice(body).map_err(|_| {
        EditorError::Invalid(format!(
            "the editor's answer is not JSON: {}",
            body_excerpt(body)
        ))
    })
}

/// The source as PNG, resized down to multiples of `multiple` (1 keeps the
/// source size): decoding, resizing and encoding run off the async threads.
pub async fn source_png(source: &Image, multiple: u32) -> Result<Image, EditorError> {
    let source = source.clone();
    off_thread(move || {
        source
            .to_png_multiple_of(multiple)
            .map_err(|e| EditorError::Invalid(format!("the source image cannot be prepared: {e}")))
    })
    .await
}

/// The source as base64 PNG at its own size, as a `data:image/png;base64,`
/// URL when `data_uri`, with its width and height (encoded off the async
/// threads).
pub async fn source_png_base64(
    source: &Image,
    data_uri: bool,
) -> Result<(String, u32, u32), EditorError> {
    let png = source_png(source, 1).await?;
    let (width, height) = (png.width, png.height);
    let encoded = off_thread(move || {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png.bytes);
        if data_uri {
            format!("data:image/png;base64,{b64}")
        } else {
            b64
        }
    })
    .await;
    Ok((encoded, width, height))
}

/// Tolerates missing padding; providers differ.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a base64 image (plain, or a `data:<mime>;base64,` URL; line
/// breaks allowed) and validates it. `what` names the field in errors.
/// Every failure is `Invalid`.
pub fn decode_base64_image(encoded: &str, what: &str) -> Result<Image, EditorError> {
    let payload = match encoded.strip_prefix("data:") {
        Some(rest) => rest
            .split_once(";base64,")
            .map(|(_, data)| data)
            .ok_or_else(|| {
                EditorError::Invalid(format!(
                    "the editor's {what} is a data URL that is not base64"
                ))
            })?,
        None => encoded,
    };
    let compact: String;
    let payload = if payload.contains(|c: char| c.is_ascii_whitespace()) {
        compact = payload.split_ascii_whitespace().collect();
        &compact
    } else {
        payload
    };
    let bytes = LENIENT
        .decode(payload)
        .map_err(|e| EditorError::Invalid(format!("the editor's {what} is not base64: {e}")))?;
    Image::validate(Bytes::from(bytes), MAX_OUTPUT_PIXELS).map_err(|e| {
        EditorError::Invalid(format!("the editor's {what} is not a usable image: {e}"))
    })
}

/// A refusal in the provider's words: its message, with its code when it
/// has one (`error.code` or `code`).
pub fn refusal_message(body: &[u8]) -> String {
    let message = provider_message(body);
    let code = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.pointer("/error/code")
            .or_else(|| v.get("code"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    match code {
        Some(code) if !message.contains(&code) => format!("{message} ({code})"),
        _ => message,
    }
}

/// The provider's own explanation in a JSON error body: `error.message`,
/// `message` or a string `error`, else the body excerpt.
pub fn provider_message(body: &[u8]) -> String {
    let json = serde_json::from_slice::<Value>(body).ok();
    let found = json.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
    });
    match found {
        Some(m) if !m.trim().is_empty() => body_excerpt(m.as_bytes()),
        _ => body_excerpt(body),
    }
}

/// An API key as the header a provider expects. The value is marked
/// sensitive and never printed.
#[derive(Clone)]
pub struct Credential {
    name: HeaderName,
    value: HeaderValue,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}: <redacted>)", self.name)
    }
}

impl Credential {
    /// The header name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// The header value (sensitive).
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }

    /// Reads the key a hosted kind requires from the variable named by
    /// `api_key_env` and sends it as `header: {prefix}{key}` (e.g.
    /// `authorization: Bearer <key>`). A missing `api_key_env`, an unset
    /// variable or a key that cannot be a header value is a configuration
    /// error naming `editors.<name>.api_key_env`.
    pub fn required(
        name: &str,
        profile: &EditorProfile,
        header: HeaderName,
        prefix: &str,
    ) -> Result<Self, EditorConfigError> {
        let key = read_api_key(name, profile)?.ok_or_else(|| {
            EditorConfigError::invalid(
                name,
                "api_key_env",
                format!(
                    "missing: the {} kind needs an API key; name the environment variable that holds it",
                    profile.kind
                ),
            )
        })?;
        let mut value = HeaderValue::from_str(&format!("{prefix}{key}")).map_err(|_| {
            EditorConfigError::invalid(
                name,
                "api_key_env",
                "the key holds characters an HTTP header cannot carry",
            )
        })?;
        value.set_sensitive(true);
        Ok(Self {
            name: header,
            value,
        })
    }
}

/// The endpoint of a hosted kind: `base_url` (or the kind's default) with
/// `path` appended to its path. A bad `base_url` is an error naming
/// `editors.<name>.base_url`.
pub fn endpoint(name: &str, profile: &EditorProfile, path: &str) -> Result<Url, EditorConfigError> {
    let raw = match (&profile.base_url, profile.kind.default_base_url()) {
        (Some(given), _) => given.trim(),
        (None, Some(default)) => default,
        (None, None) => {
            return Err(EditorConfigError::invalid(
                name,
                "base_url",
                format!("missing: the {} kind has no default", profile.kind),
            ))
        }
    };
    let bad = |m: String| EditorConfigError::invalid(name, "base_url", m);
    let mut url = Url::parse(raw).map_err(|e| bad(format!("{raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad(format!("{raw:?}: must be an http:// or https:// URL")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(format!("{raw:?}: must not have a query or fragment")));
    }
    let joined = format!("{}{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    Ok(url)
}

/// The profile's model (or the kind's default) as a URL-safe name: letters,
/// digits, `.`, `_`, `-`, in as many `/`-separated segments as the kind's
/// ids have ([`EditorKind::model_segments`]), none of them empty, `.` or
/// `..` (the id becomes part of a URL path). An error names
/// `editors.<name>.model`.
pub fn model_name(name: &str, profile: &EditorProfile) -> Result<String, EditorConfigError> {
    let model = profile.effective_model().unwrap_or_default();
    let model = model.trim();
    if model.is_empty() {
        return Err(EditorConfigError::invalid(
            name,
            "model",
            "must not be empty",
        ));
    }
    let segments = profile.kind.model_segments();
    let slash = *segments.end() > 1;
    if !model
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (slash && c == '/'))
    {
        let allowed = if slash { ", '-' and '/'" } else { " and '-'" };
        return Err(EditorConfigError::invalid(
            name,
            "model",
            format!("{model:?}: only letters, digits, '.', '_'{allowed} are allowed"),
        ));
    }
    let parts: Vec<&str> = model.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(EditorConfigError::invalid(
            name,
            "model",
            format!("{model:?}: empty, '.' or '..' segments are not allowed"),
        ));
    }
    if !segments.contains(&parts.len()) {
        let shape = match profile.kind {
            EditorKind::Replicate => "owner/name",
            _ => "owner/app or owner/app/endpoint",
        };
        return Err(EditorConfigError::invalid(
            name,
            "model",
            format!("{model:?}: must look like {shape}"),
        ));
    }
    Ok(model.to_owned())
}

/// Refuses a `seed` outside what the provider accepts (a 31-bit
/// non-negative integer for every hosted kind here).
pub fn check_seed(name: &str, profile: &EditorProfile) -> Result<(), EditorConfigError> {
    match profile.seed {
        Some(s) if !(0..=i64::from(i32::MAX)).contains(&s) => Err(EditorConfigError::invalid(
            name,
            "seed",
            format!("{s}: must be between 0 and {}", i32::MAX),
        )),
        _ => Ok(()),
    }
}

/// The configured `output_format` of the kinds that take `png` or `jpeg`
/// (`jpg` accepted as `jpeg`); anything else is an error naming the key.
pub fn check_output_format(
    name: &str,
    profile: &EditorProfile,
) -> Result<Option<&'static str>, EditorConfigError> {
    match profile.output_format.as_deref().map(str::trim) {
        None => Ok(None),
        Some("png") => Ok(Some("png")),
        Some("jpeg" | "jpg") => Ok(Some("jpeg")),
        Some(other) => Err(EditorConfigError::invalid(
            name,
            "output_format",
            format!("{other:?}: must be \"png\" or \"jpeg\""),
        )),
    }
}

/// Refuses a `safety_tolerance` outside `range` (what the provider accepts).
pub fn check_safety_tolerance(
    name: &str,
    profile: &EditorProfile,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<i64>, EditorConfigError> {
    match profile.safety_tolerance {
        Some(t) if !range.contains(&t) => Err(EditorConfigError::invalid(
            name,
            "safety_tolerance",
            format!(
                "{t}: must be between {} and {} for the {} kind",
                range.start(),
                range.end(),
                profile.kind
            ),
        )),
        t => Ok(t),
    }
}

/// Reads the API key from the variable named by `api_key_env`, if any.
pub fn read_api_key(
    name: &str,
    profile: &EditorProfile,
) -> Result<Option<String>, EditorConfigError> {
    let Some(var) = &profile.api_key_env else {
        return Ok(None);
    };
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
        _ => Err(EditorConfigError::MissingApiKey {
            name: name.to_owned(),
            var: var.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let c = |s: u16, b: &str| classify_failure(StatusCode::from_u16(s).unwrap(), b.as_bytes());
        assert!(matches!(c(401, ""), EditorError::Auth(_)));
        assert!(matches!(c(403, ""), EditorError::Auth(_)));
        assert!(matches!(c(400, "nope"), EditorError::Invalid(m) if m.contains("nope")));
        assert!(matches!(c(404, ""), EditorError::Invalid(_)));
        assert!(matches!(c(422, ""), EditorError::Invalid(_)));
        assert!(matches!(c(451, ""), EditorError::Refused(_)));
        assert!(matches!(c(429, ""), EditorError::Transient(_)));
        assert!(matches!(c(503, ""), EditorError::Transient(_)));
        let openai = r#"{"error":{"message":"Your request was rejected","type":"image_generation_user_error","code":"moderation_blocked"}}"#;
        assert!(matches!(c(400, openai), EditorError::Refused(_)));
        assert!(matches!(
            c(400, r#"{"error":"safety_check_failed"}"#),
            EditorError::Refused(_)
        ));
        assert!(matches!(
            c(
                400,
                r#"{"error":"safety_tolerance must be between 0 and 6"}"#
            ),
            EditorError::Invalid(_)
        ));
    }

    #[test]
    fn excerpt_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(2 * BODY_EXCERPT_CHARS);
        let e = body_excerpt(long.as_bytes());
        assert_eq!(e.chars().count(), BODY_EXCERPT_CHARS + 1);
        assert_eq!(body_excerpt(b"  "), "(empty body)");
    }

    #[test]
    fn the_profile_sets_the_one_retry_policy() {
        let mut p = EditorProfile::new(EditorKind::Http);
        p.max_retries = 5;
        p.retry_base_ms = 20;
        let caller = HttpCaller::from_profile("e", &p).unwrap();
        let policy = caller.retry_policy();
        assert_eq!(
            policy,
            RetryPolicy {
                max_retries: 5,
                base: Duration::from_millis(20),
                max_delay: MAX_BACKOFF,
                max_retry_after: MAX_RETRY_AFTER,
            }
        );
        // Retry-After is a floor; one past the cap gives up.
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(policy.delay(1, Some(MAX_RETRY_AFTER * 2)), None);
        assert!(caller.retries_ambiguous(), "http calls cost nothing");
        let paid = HttpCaller::from_profile("o", &EditorProfile::new(EditorKind::Openai)).unwrap();
        assert!(!paid.retries_ambiguous());
        p.retry_ambiguous = Some(false);
        assert!(!HttpCaller::from_profile("e", &p)
            .unwrap()
            .retries_ambiguous());
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
