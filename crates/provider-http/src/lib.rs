//! The HTTP layer every remote provider client shares: the editor kinds
//! (crates/editors) and the remote thinker (crates/thinker/src/openai.rs).
//!
//! - [`retry`]: the loop of attempts of one provider call under a
//!   [`RetryPolicy`](editthinker_core::RetryPolicy), with the hooks each
//!   caller fills in (what a final failure becomes, how a retry is logged);
//! - [`retry_after`](mod@retry_after): the server's `Retry-After`, both forms;
//! - [`error_text`]: readable error text (a reqwest error with its causes,
//!   body excerpts, URLs without their signed query);
//! - [`body`]: reading an answer's body under a size limit.
//!
//! What to retry and how long to wait are pure decisions and stay in
//! `editthinker_core::retry`; this crate runs them against the network.

pub mod body;
pub mod error_text;
pub mod retry;
pub mod retry_after;

pub use body::{read_body, BodyError};
pub use error_text::{body_excerpt, describe_error, excerpt, without_query, BODY_EXCERPT_CHARS};
pub use retry::{provider_policy, run, Call, Failure, GiveUp, Step, MAX_BACKOFF};
pub use retry_after::{parse_retry_after, retry_after};
