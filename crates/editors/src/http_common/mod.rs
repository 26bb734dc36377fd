//! What every HTTP editor client shares (BACKENDS.md, "Common rules"), one
//! concern a module:
//!
//! - `caller`: [`HttpCaller`], built from a profile: the reqwest client
//!   with connect and total timeouts, the retry policy, the per-editor
//!   limit on calls in flight, the `editor.edit` span;
//! - `transport`: sending one logical request with its retries (the loop
//!   of `editthinker_provider_http`, with `Retry-After` as a floor and a
//!   cap), and reading its answer;
//! - `requests`: the requests hosted kinds make: JSON POSTs, polling
//!   GETs, cancel calls, downloads of result URLs, readiness probes;
//! - `classify`: final answers into the worker's error classes;
//! - `refusal`: telling a moderation or safety refusal in an error body;
//! - `images`: source images as PNG or base64, base64 images decoded;
//! - `profile`: what hosted kinds read from their profile: API-key
//!   headers, base URLs, model ids, checked options, and the seed a
//!   request asks for in place of the profile's.
//!
//! What is not editor-specific (the retry loop, `Retry-After`, error text,
//! bounded body reads) is in `editthinker_provider_http`, which the remote
//! thinker uses too.
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
//!   call at once as [`EditorError::Ambiguous`]: the worker requeues the
//!   job visibly, counted against its attempts. None of the hosted
//!   providers documents an idempotency key that would make a resend safe
//!   (see [`EditorKind::retries_ambiguous_by_default`]).
//!
//! [`EditorError::Ambiguous`]: editthinker_core::EditorError::Ambiguous
//! [`EditorKind::retries_ambiguous_by_default`]: crate::config::EditorKind::retries_ambiguous_by_default

mod caller;
mod classify;
mod images;
mod profile;
mod refusal;
mod requests;
mod transport;

use std::time::Duration;

pub use caller::HttpCaller;
pub use classify::{classify_failure, is_retryable, parse_json, provider_message, Classifier};
pub use editthinker_provider_http::{body_excerpt, retry_after, BODY_EXCERPT_CHARS, MAX_BACKOFF};
pub use images::{decode_base64_image, source_png, source_png_base64};
pub use profile::{
    candidate_seed, check_output_format, check_safety_tolerance, check_seed, endpoint, model_name,
    read_api_key, Credential,
};
pub use refusal::{is_refusal, refusal_message, says_refused};
pub use transport::{Attempt, HttpReply, Resend};

/// Answers larger than this are refused rather than buffered.
pub const MAX_BODY_BYTES: usize = 256 << 20;
/// A `Retry-After` longer than this ends the in-call retries: the job is
/// better requeued by the worker than holding a slot that long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Result images fetched from a provider's URL larger than this are refused.
pub const MAX_DOWNLOAD_BYTES: usize = 50 << 20;
/// The pixel limit for images an editor sends back.
pub const MAX_OUTPUT_PIXELS: u64 = 100_000_000;
/// Time allowed for one attempt of a cancel call: it is best effort, and
/// the job it belongs to is already over.
pub const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a cancel call after its first attempt.
pub const CANCEL_RETRIES: u32 = 2;
/// Time allowed for a readiness probe (`Editor::probe`), connecting
/// included: a provider that takes longer is not ready enough.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
