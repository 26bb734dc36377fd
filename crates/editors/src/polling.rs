//! What the asynchronous kinds (`bfl`, `fal`, `replicate`) share: submit a
//! request, record it through the edit's checkpoint *before* waiting (so a
//! resumed job polls it instead of paying for a new one), poll it every
//! `poll_interval_ms` within `timeout_seconds`, and download the result at
//! once (providers' result URLs expire within minutes to hours).
//!
//! The submission is the paid step: an ambiguous failure of it ends the
//! edit as `EditorError::Ambiguous` instead of being resent (see
//! `http_common`), and the worker requeues the job. Polls and downloads are
//! GETs, retried on every passing failure. `Editor::cancel` of a kind that
//! has a cancel call uses the URL stored in the handle.

use std::time::Duration;

use async_trait::async_trait;
use editthinker_core::{EditRequest, EditorError, Image, ProviderRequest};
use serde_json::Value;
use tokio::time::Instant;
use url::Url;

use crate::config::{EditorConfigError, EditorProfile};
use crate::http_common::{body_excerpt, candidate_seed, HttpCaller};

/// Delay between polls when a profile sets no `poll_interval_ms`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(1000);

/// What one look at a submitted request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Still running; the provider's status, for logs.
    Pending(String),
    /// Done: the result image's URL (or `data:` URL).
    Ready(String),
    /// The provider no longer knows the request or its result (expired,
    /// deleted); why, in its words.
    Gone(String),
}

/// One asynchronous provider's protocol; failures (refusals, errors) are
/// returned as [`EditorError`]s by `poll`.
#[async_trait]
pub trait AsyncProvider: Send + Sync {
    /// Submits the edit and returns the handle to record and poll. `seed`
    /// is the request's own ([`EditRequest::seed`]): when set, it is sent
    /// in place of the profile's `seed`.
    async fn submit(
        &self,
        source: &Image,
        instruction: &str,
        seed: Option<i64>,
    ) -> Result<ProviderRequest, EditorError>;

    /// Looks at a submitted request once.
    async fn poll(&self, handle: &ProviderRequest) -> Result<Poll, EditorError>;
}

/// How an asynchronous kind waits for its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// Between two polls.
    pub interval: Duration,
    /// The longest wait for one request's terminal state.
    pub limit: Duration,
}

impl Waiting {
    /// From `poll_interval_ms` and `timeout_seconds` (already validated by
    /// [`HttpCaller::from_profile`]); an interval of 0 or over the wait
    /// limit is an error naming the key.
    pub fn from_profile(name: &str, profile: &EditorProfile) -> Result<Self, EditorConfigError> {
        let limit = Duration::from_secs_f64(profile.timeout_seconds);
        let interval = profile
            .poll_interval_ms
            .map_or(DEFAULT_POLL_INTERVAL, Duration::from_millis);
        if interval.is_zero() || interval > limit {
            return Err(EditorConfigError::invalid(
                name,
                "poll_interval_ms",
                format!(
                    "{}: must be at least 1 and at most timeout_seconds",
                    interval.as_millis()
                ),
            ));
        }
        Ok(Self { interval, limit })
    }
}

/// Runs one edit on an asynchronous provider: polls `request.resume` when
/// given (falling back to a new submission when the provider no longer has
/// it), else submits, records the request through `request.checkpoint`,
/// waits for it and downloads the result.
/// Runs inside [`HttpCaller::run_edit`] (span, in-flight slot).
pub async fn edit_async<P: AsyncProvider + ?Sized>(
    provider: &P,
    caller: &HttpCaller,
    model: &str,
    waiting: Waiting,
    request: EditRequest<'_>,
) -> Result<Image, EditorError> {
    caller
        .run_edit(
            Some(model),
            request.turn,
            submit_or_resume(provider, caller, waiting, request),
        )
        .await
}

async fn submit_or_resume<P: AsyncProvider + ?Sized>(
    provider: &P,
    caller: &HttpCaller,
    waiting: Waiting,
    request: EditRequest<'_>,
) -> Result<Image, EditorError> {
    if let Some(previous) = request.resume {
        tracing::Span::current().record("request_id", previous.id.as_str());
        tracing::info!(request_id = %previous.id, "resuming a submitted provider request");
        match fetch(provider, caller, waiting, previous).await? {
            Ok(image) => return Ok(image),
            Err(why) => tracing::warn!(
                request_id = %previous.id,
                %why,
                "the provider no longer has the submitted request; submitting anew"
            ),
        }
    }
    let handle = provider
        .submit(
            request.source,
            request.instruction,
            candidate_seed(&request),
        )
        .await?;
    tracing::Span::current().record("request_id", handle.id.as_str());
    tracing::info!(request_id = %handle.id, "provider accepted the request");
    // Durable before any wait: after a crash the worker resumes with this
    // handle and the provider is paid once.
    request.checkpoint.submitted(&handle).await?;
    fetch(provider, caller, waiting, &handle)
        .await?
        .map_err(|why| {
            // Polled again (and resubmitted if need be) when the job resumes.
            EditorError::Transient(format!(
                "the provider lost request {} before its result was fetched: {why}",
                handle.id
            ))
        })
}

/// Waits for `handle`'s result and downloads it at once; `Ok(Err(why))`
/// when the request or its result is gone.
async fn fetch<P: AsyncProvider + ?Sized>(
    provider: &P,
    caller: &HttpCaller,
    waiting: Waiting,
    handle: &ProviderRequest,
) -> Result<Result<Image, String>, EditorError> {
    match wait(provider, waiting, handle).await? {
        Ok(url) => caller.download_unless_gone(&url).await,
        Err(why) => Ok(Err(why)),
    }
}

/// Polls until a terminal state, at most `waiting.limit`; `Ok(Ok(url))`
/// when ready, `Ok(Err(why))` when gone.
async fn wait<P: AsyncProvider + ?Sized>(
    provider: &P,
    waiting: Waiting,
    handle: &ProviderRequest,
) -> Result<Result<String, String>, EditorError> {
    let deadline = Instant::now() + waiting.limit;
    let overdue = |status: &str| {
        EditorError::Transient(format!(
            "no result for provider request {} within {:?} (last status: {status})",
            handle.id, waiting.limit
        ))
    };
    let mut polls = 0u32;
    loop {
        polls += 1;
        let status = match tokio::time::timeout_at(deadline, provider.poll(handle)).await {
            Err(_) => return Err(overdue("a poll still running")),
            Ok(poll) => match poll? {
                Poll::Ready(url) => {
                    tracing::debug!(polls, "provider request ready");
                    return Ok(Ok(url));
                }
                Poll::Gone(why) => return Ok(Err(why)),
                Poll::Pending(status) => status,
            },
        };
        tracing::debug!(polls, %status, "provider request pending");
        if Instant::now() + waiting.interval > deadline {
            return Err(overdue(&status));
        }
        tokio::time::sleep(waiting.interval).await;
    }
}

/// A URL the provider handed back (and that the handle stores) at JSON
/// `pointer` in `value`: an http(s) URL, or `None`.
pub fn url_at(value: &Value, pointer: &str) -> Option<Url> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .and_then(|s| Url::parse(s).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// The http(s) URL at `pointer` of a provider's answer, or an `Invalid`
/// error naming what is missing.
pub fn required_url(answer: &Value, pointer: &str) -> Result<Url, EditorError> {
    url_at(answer, pointer).ok_or_else(|| {
        EditorError::Invalid(format!(
            "the editor's answer has no http(s) {}: {}",
            pointer.trim_start_matches('/').replace('/', "."),
            body_excerpt(answer.to_string().as_bytes())
        ))
    })
}

/// The string at `pointer` of a provider's answer, or an `Invalid` error
/// naming what is missing.
pub fn required_str<'a>(answer: &'a Value, pointer: &str) -> Result<&'a str, EditorError> {
    answer
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            EditorError::Invalid(format!(
                "the editor's answer has no {}: {}",
                pointer.trim_start_matches('/').replace('/', "."),
                body_excerpt(answer.to_string().as_bytes())
            ))
        })
}

/// The handle URL stored at `pointer` of `handle.data`: an http(s) URL, or
/// [`Poll::Gone`] for a stored handle that lacks it (written by another
/// version, or damaged): submitting anew is then the only way forward.
pub fn handle_url(handle: &ProviderRequest, pointer: &str) -> Result<Url, Poll> {
    url_at(&handle.data, pointer).ok_or_else(|| {
        Poll::Gone(format!(
            "the stored request {} has no usable {}",
            handle.id,
            pointer.trim_start_matches('/').replace('/', ".")
        ))
    })
}

/// The provider's error text in a poll answer (`details`, `error`, ...), or
/// the whole answer, cut short.
pub fn failure_text(answer: &Value, keys: &[&str]) -> String {
    let found = keys.iter().find_map(|k| match answer.get(*k) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    });
    body_excerpt(found.unwrap_or_else(|| answer.to_string()).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EditorKind;
    use serde_json::json;

    #[test]
    fn poll_interval_is_validated() {
        let mut p = EditorProfile::new(EditorKind::Bfl);
        assert_eq!(
            Waiting::from_profile("b", &p).unwrap(),
            Waiting {
                interval: DEFAULT_POLL_INTERVAL,
                limit: Duration::from_secs(300)
            }
        );
        p.poll_interval_ms = Some(0);
        let err = Waiting::from_profile("b", &p).unwrap_err().to_string();
        assert!(err.starts_with("editors.b.poll_interval_ms: "), "{err}");
        p.poll_interval_ms = Some(301_000);
        assert!(Waiting::from_profile("b", &p).is_err());
    }

    #[test]
    fn handle_urls() {
        let h = ProviderRequest {
            id: "r1".into(),
            data: json!({"urls": {"get": "https://api/p/r1"}, "bad": "file:///x"}),
        };
        assert_eq!(
            handle_url(&h, "/urls/get").unwrap().as_str(),
            "https://api/p/r1"
        );
        assert!(matches!(handle_url(&h, "/bad"), Err(Poll::Gone(_))));
        assert!(matches!(handle_url(&h, "/none"), Err(Poll::Gone(m)) if m.contains("none")));
    }

    #[test]
    fn failure_texts() {
        let a = json!({"status": "Error", "details": {"reason": "x"}});
        assert_eq!(failure_text(&a, &["details"]), r#"{"reason":"x"}"#);
        let a = json!({"status": "failed", "error": ""});
        assert!(failure_text(&a, &["error"]).contains("failed"));
        assert!(matches!(
            required_str(&json!({"a": {}}), "/a/b"),
            Err(EditorError::Invalid(m)) if m.contains("a.b")
        ));
    }
}
