//! [`HttpCaller`]: one editor profile's client, retry policy and in-flight
//! limit, built and checked from the profile's common settings.

use std::sync::Arc;
use std::time::Duration;

use editthinker_core::metrics;
use editthinker_core::{EditorError, RetryPolicy};
use editthinker_provider_http::provider_policy;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::classify::{classify_failure, Classifier};
use super::MAX_RETRY_AFTER;
use crate::config::{EditorConfigError, EditorKind, EditorProfile};

/// The shared HTTP machinery, and the settings every kind reads, of one
/// editor profile.
#[derive(Debug, Clone)]
pub struct HttpCaller {
    pub(super) client: reqwest::Client,
    pub(super) retry: RetryPolicy,
    pub(super) retry_ambiguous: bool,
    max_instruction_chars: usize,
    limiter: Arc<Semaphore>,
    pub(super) editor: String,
    pub(super) kind: EditorKind,
    pub(super) classify: Classifier,
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
            retry: provider_policy(
                profile.max_retries,
                Duration::from_millis(profile.retry_base_ms),
                MAX_RETRY_AFTER,
            ),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_common::MAX_BACKOFF;

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
}
