//! The requests the hosted kinds make besides their edit call: JSON POSTs,
//! polling GETs, cancel calls and downloads of result URLs, each with its
//! own resend rule, size limit and answers that are not failures.

use bytes::Bytes;
use editthinker_core::imaging::off_thread;
use editthinker_core::{EditorError, Image, RetryPolicy};
use editthinker_provider_http::{body_excerpt, without_query};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tracing::Instrument;
use url::Url;

use super::caller::HttpCaller;
use super::classify::{is_retryable, parse_json};
use super::images::decode_base64_image;
use super::profile::Credential;
use super::transport::{CallSpec, Resend};
use super::{CANCEL_RETRIES, CANCEL_TIMEOUT, MAX_DOWNLOAD_BYTES, MAX_OUTPUT_PIXELS, PROBE_TIMEOUT};

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
                    .header(credential.name().clone(), credential.value().clone())
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
                        .header(credential.name().clone(), credential.value().clone()))
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
                            .header(credential.name().clone(), credential.value().clone()))
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

    /// A readiness check: one GET of `url` (a free call such as a model's
    /// description) with `credential`, within [`PROBE_TIMEOUT`] and with no
    /// retry, so a probe answers quickly either way. 2xx is `Ok`; the
    /// answer is classified like any other (401/403 `Auth`, 5xx, 429 and
    /// connection errors `Transient`, 404 `Invalid`: an unknown model). No
    /// in-flight slot is taken: a probe must not wait behind edits.
    pub async fn probe_get(&self, url: &Url, credential: &Credential) -> Result<(), EditorError> {
        let span = tracing::info_span!("editor.probe", editor = %self.editor, kind = %self.kind);
        let spec = CallSpec {
            retry: RetryPolicy {
                max_retries: 0,
                ..self.retry
            },
            ..self.spec(Resend::Idempotent)
        };
        self.send_with(
            |_| {
                Ok(self
                    .client
                    .get(url.clone())
                    .timeout(PROBE_TIMEOUT)
                    .header(credential.name().clone(), credential.value().clone()))
            },
            spec,
        )
        .instrument(span)
        .await
        .map(|_| ())
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
