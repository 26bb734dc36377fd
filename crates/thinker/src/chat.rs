//! What every chat-completions client of this crate shares: the remote
//! thinker ([`crate::openai`]) and the verifier ([`crate::verifier`]).
//!
//! A [`ChatEndpoint`] is one configured server: its HTTP client (the total
//! and connect timeouts), `{base_url}/chat/completions`, the bearer key, the
//! retry policy, and how an answer's status and body become a
//! [`ThinkerError`]: 408, 429 and 5xx (and connection failures) are retried,
//! 401 and 403 are `Auth`, 404 and other 4xx are `Invalid` with a hint at
//! the key to fix, and a 200 answer we cannot read is `Transient`. Messages
//! name the section (`thinker.model`, `verifier.api_key_env`, ...).
//!
//! Also here: the request body with both images as PNG data URLs
//! ([`image_urls`], [`chat_body`]) and reading a non-streamed completion
//! ([`ChatEndpoint::completion`]).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use base64::Engine as _;
use editthinker_core::metrics::{self, ProviderOutcome};
use editthinker_core::{FailureClass, Image, Protocol, RetryPolicy, ThinkerError, Tokens};
use editthinker_provider_http::{
    describe_error, excerpt, provider_policy, retry_after, run, Call, Failure, GiveUp, Step,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;

use crate::config::{SectionKeys, ThinkerConfigError};

/// Smallest image side a Qwen3-VL model accepts (patch 16 × merge 2).
const MIN_IMAGE_SIDE: u32 = 32;
/// Largest aspect ratio a Qwen-VL preprocessor accepts.
const MAX_ASPECT: f64 = 200.0;
/// A `Retry-After` longer than this is not waited out inside one call: the
/// job is better requeued than a worker slot held.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// What one HTTP attempt came to: the answer text and the server's token
/// counts (prompt, generated) when it sent them, a final error, or a
/// failure worth another try. A model call costs no provider money, so
/// every [`FailureClass`] is retried; the class only feeds
/// `editthinker_provider_requests_total`.
pub(crate) type Attempt = Step<(String, Option<(u64, u64)>), ThinkerError>;

/// The retry policy of a model call: `max_retries` retries after the first
/// attempt, backoff from `base` doubling up to 30 s, and a `Retry-After` of
/// more than two minutes ends the retries (the worker requeues the job
/// rather than hold a slot that long).
pub(crate) fn retry_policy(max_retries: u32, base: Duration) -> RetryPolicy {
    provider_policy(max_retries, base, MAX_RETRY_AFTER)
}

/// One OpenAI-compatible server as a section configures it.
pub(crate) struct ChatEndpoint {
    /// The configuration section, `thinker` or `verifier`: named in
    /// messages, and the `provider` label of its attempts (its own, so that
    /// the remote thinker is never confused with the `openai` editor kind).
    section: &'static str,
    base_url: Url,
    /// `{base_url}/chat/completions`.
    endpoint: String,
    model: String,
    api_key: Option<String>,
    client: reqwest::Client,
    retry: RetryPolicy,
    /// Hints added to a 4xx rejection: the first whose words occur in the
    /// server's message (lowercased) is appended to it.
    hints: Vec<(&'static [&'static str], &'static str)>,
}

// Hand-written so the API key never reaches logs.
impl fmt::Debug for ChatEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatEndpoint")
            .field("section", &self.section)
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl ChatEndpoint {
    /// The endpoint of `keys`' section at `base_url`, with an HTTP client
    /// whose total timeout is `timeout`.
    pub(crate) fn new(
        keys: &SectionKeys,
        base_url: &Url,
        model: &str,
        api_key: Option<String>,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, ThinkerConfigError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| ThinkerConfigError::invalid(keys.section, format!("HTTP client: {e}")))?;
        Ok(Self {
            section: keys.section,
            base_url: base_url.clone(),
            endpoint: join(base_url, "chat/completions"),
            model: model.to_string(),
            api_key,
            client,
            retry,
            hints: Vec::new(),
        })
    }

    /// Adds `hint` to rejections whose message mentions one of `words`.
    pub(crate) fn hint(&mut self, words: &'static [&'static str], hint: &'static str) {
        self.hints.push((words, hint));
    }

    /// The full chat-completions URL.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `{base_url}/{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        join(&self.base_url, path)
    }

    /// The HTTP client (its timeouts set).
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `request` with the bearer key, when there is one.
    pub(crate) fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Posts `body` to the endpoint. A connection failure or a non-2xx
    /// answer ends the attempt (`Err`); a 2xx answer is returned unread.
    pub(crate) async fn send(&self, body: &Value) -> Result<reqwest::Response, Attempt> {
        let request = self.authorized(self.client.post(&self.endpoint).json(body));
        let response = match request.send().await {
            Ok(r) => r,
            // Connection refused/reset, DNS, timeouts: all worth retrying.
            Err(e) => return Err(Step::Retry(Failure::transport(&e))),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let text = read_text(response).await?;
        Err(self.status_error(status, &text, retry_after))
    }

    /// Reads a non-streamed completion body: its `choices[0].message.content`
    /// (see [`answer_text`]) and token counts.
    pub(crate) fn completion(&self, status: StatusCode, text: &str, protocol: Protocol) -> Attempt {
        let value = serde_json::from_str::<Value>(text).ok();
        match answer_text(text, protocol) {
            Some(answer) => Step::Done((answer, value.as_ref().and_then(usage))),
            None => match value {
                Some(value) if is_error_object(&value) => {
                    self.error_object(&value, "error body with HTTP 200")
                }
                _ => Step::Fail(ThinkerError::Transient(format!(
                    "HTTP {status} without choices[0].message.content: {}",
                    excerpt(text)
                ))),
            },
        }
    }

    /// One non-streamed call with the retry policy: `body` is posted until
    /// an attempt gives an answer or fails for good. Returns the content of
    /// the answer and its token counts.
    pub(crate) async fn complete(
        &self,
        body: &Value,
        turn: u32,
    ) -> Result<(String, Option<(u64, u64)>), ThinkerError> {
        self.call(turn, Plain { chat: self, body }).await
    }

    /// Runs `attempts` under the retry policy; each attempt is counted in
    /// `editthinker_provider_requests_total`.
    pub(crate) async fn call<A: Attempts>(
        &self,
        turn: u32,
        attempts: A,
    ) -> Result<(String, Option<(u64, u64)>), ThinkerError> {
        run(
            self.retry,
            &mut ChatCall {
                chat: self,
                turn,
                attempts,
            },
        )
        .await
    }

    /// What a non-success status means for this call.
    fn status_error(
        &self,
        status: StatusCode,
        body: &str,
        retry_after: Option<Duration>,
    ) -> Attempt {
        let server = server_message(body);
        if let Some(class) = FailureClass::of_status(status.as_u16()) {
            return Step::Retry(Failure::answered(
                class,
                format!("HTTP {status}: {server}"),
                retry_after,
            ));
        }
        Step::Fail(self.rejection(status.as_u16(), &server))
    }

    /// The permanent error for a rejection with HTTP status `code` (also used
    /// for error events inside a stream), with a hint at the likely fix.
    pub(crate) fn rejection(&self, code: u16, server: &str) -> ThinkerError {
        let section = self.section;
        match code {
            401 | 403 => self.auth_error(&self.endpoint, code, server),
            404 => ThinkerError::Invalid(format!(
                "HTTP 404 from {}: {server}; unknown model {:?} or wrong base_url {:?} \
                 ({section}.model, {section}.base_url)",
                self.endpoint,
                self.model,
                self.base_url.as_str()
            )),
            _ => {
                let lower = server.to_ascii_lowercase();
                let mut message = format!("HTTP {code} from {}: {server}", self.endpoint);
                if let Some((_, hint)) = self
                    .hints
                    .iter()
                    .find(|(words, _)| words.iter().any(|w| lower.contains(w)))
                {
                    message.push_str(hint);
                }
                ThinkerError::Invalid(message)
            }
        }
    }

    /// The error for credentials `url` refused with HTTP `code`.
    pub(crate) fn auth_error(&self, url: &str, code: u16, server: &str) -> ThinkerError {
        let section = self.section;
        ThinkerError::Auth(match &self.api_key {
            Some(_) => format!(
                "the {section} at {url} rejected the API key (HTTP {code}: {server}); check \
                 the key in the environment variable {section}.api_key_env names, and that \
                 it grants access to model {:?}",
                self.model
            ),
            None => format!(
                "the {section} at {url} wants an API key (HTTP {code}: {server}); none was \
                 sent: set {section}.api_key_env to the environment variable that holds it"
            ),
        })
    }

    /// What an error object in a 200 answer means (an error event inside a
    /// stream, or an error body sent with 200; `context` says which):
    /// classified by its HTTP-like `code` or its `type`; an unknown one
    /// counts as a server failure and is retried.
    pub(crate) fn error_object(&self, value: &Value, context: &str) -> Attempt {
        let error = value
            .get("error")
            .filter(|e| e.is_object())
            .unwrap_or(value);
        let server = error
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| value.get("error").and_then(Value::as_str))
            .map_or_else(|| excerpt(&value.to_string()), excerpt);
        let code = ["code", "status"]
            .iter()
            .filter_map(|k| error.get(*k))
            .find_map(|c| {
                c.as_u64()
                    .or_else(|| c.as_str().and_then(|s| s.trim().parse().ok()))
            })
            .and_then(|c| u16::try_from(c).ok());
        let kind = ["type", "code"]
            .iter()
            .filter_map(|k| error.get(*k).and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_lowercase();
        let retry = |class| {
            Step::Retry(Failure::answered(
                class,
                format!("{context}: {server}"),
                None,
            ))
        };
        let server_said = format!("{server} ({context})");
        match code.map(|c| (c, FailureClass::of_status(c))) {
            Some((_, Some(class))) => retry(class),
            Some((c, None)) if c >= 500 => retry(FailureClass::Ambiguous),
            Some((c, None)) if (400..500).contains(&c) => {
                Step::Fail(self.rejection(c, &server_said))
            }
            _ if kind.contains("auth") || kind.contains("api_key") => {
                Step::Fail(self.rejection(401, &server_said))
            }
            _ if kind.contains("invalid_request") || kind.contains("badrequest") => {
                Step::Fail(self.rejection(400, &server_said))
            }
            // An unknown error counts as a server failure.
            _ => retry(FailureClass::Ambiguous),
        }
    }
}

/// `{base_url}/{path}`, with no doubled slash.
fn join(base_url: &Url, path: &str) -> String {
    format!("{}/{path}", base_url.as_str().trim_end_matches('/'))
}

/// Reads a whole answer body as text; a body that breaks off is worth
/// another try.
pub(crate) async fn read_text(response: reqwest::Response) -> Result<String, Attempt> {
    response.text().await.map_err(|e| {
        Step::Retry(Failure::ambiguous(format!(
            "reading the response: {}",
            describe_error(&e)
        )))
    })
}

/// The attempts of one call, as [`ChatEndpoint::call`] runs them.
pub(crate) trait Attempts: Send {
    /// Makes one attempt.
    fn attempt(&self) -> impl Future<Output = Attempt> + Send;
}

/// A plain (non-streamed) completion: post, read, parse.
struct Plain<'a> {
    chat: &'a ChatEndpoint,
    body: &'a Value,
}

impl Attempts for Plain<'_> {
    async fn attempt(&self) -> Attempt {
        let response = match self.chat.send(self.body).await {
            Ok(r) => r,
            Err(end) => return end,
        };
        let status = response.status();
        match read_text(response).await {
            // The reasoning a server splits out is not part of the answer.
            Ok(text) => self.chat.completion(status, &text, Protocol::Expert),
            Err(end) => end,
        }
    }
}

/// One model call as the retry loop runs it.
struct ChatCall<'a, A> {
    chat: &'a ChatEndpoint,
    turn: u32,
    attempts: A,
}

impl<A: Attempts> Call for ChatCall<'_, A> {
    type Output = (String, Option<(u64, u64)>);
    type Error = ThinkerError;

    async fn attempt(&mut self, _: u32) -> Attempt {
        let attempt = self.attempts.attempt().await;
        metrics::provider_request(
            self.chat.section,
            attempt.outcome(ProviderOutcome::of_thinker_error),
        );
        attempt
    }

    fn give_up(&mut self, failure: Failure, attempts: u32, why: GiveUp) -> ThinkerError {
        let endpoint = &self.chat.endpoint;
        let message = failure.message;
        ThinkerError::Transient(match why {
            GiveUp::Exhausted => format!("{endpoint} after {attempts} attempt(s): {message}"),
            GiveUp::RetryAfterTooLong(asked) => {
                format!("{endpoint}: server asked to retry after {asked:?}: {message}")
            }
        })
    }

    fn retrying(&mut self, failure: &Failure, number: u32, delay: Duration) {
        tracing::warn!(
            endpoint = %self.chat.endpoint,
            turn = self.turn,
            attempt = number,
            delay_ms = delay.as_millis() as u64,
            error = %failure.message,
            "{} call failed; retrying",
            self.chat.section
        );
    }
}

/// Both images as `data:image/png;base64,` URLs, scaled so the longer side
/// is at most `max_edge` and padded for a Qwen-VL-style vision encoder.
/// The decoding and scaling run off the async workers.
pub(crate) async fn image_urls(
    source: &Image,
    edited: &Image,
    max_edge: u32,
) -> Result<(String, String), ThinkerError> {
    let (source, edited) = (source.clone(), edited.clone());
    tokio::task::spawn_blocking(move || {
        Ok::<_, ThinkerError>((
            data_url(&source, max_edge, "source")?,
            data_url(&edited, max_edge, "edited")?,
        ))
    })
    .await
    .map_err(|e| ThinkerError::Invalid(format!("image preparation panicked: {e}")))?
}

/// The image as a `data:image/png;base64,` URL, scaled and padded for a
/// Qwen-VL-style vision encoder.
fn data_url(image: &Image, max_edge: u32, which: &str) -> Result<String, ThinkerError> {
    let png = image
        .for_vision_model(max_edge, MIN_IMAGE_SIDE, MAX_ASPECT)
        .map_err(|e| ThinkerError::Invalid(format!("{which} image: {e}")))?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png.bytes)
    ))
}

/// A chat-completions body with one user message: the source image, the
/// edited image (the URLs of [`image_urls`]), then `text`.
pub(crate) fn chat_body(
    model: &str,
    (source_url, edited_url): (String, String),
    text: String,
    max_tokens: u32,
    temperature: Option<f64>,
) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": source_url}},
                {"type": "image_url", "image_url": {"url": edited_url}},
                {"type": "text", "text": text},
            ],
        }],
        "max_tokens": max_tokens,
    });
    if let Some(t) = temperature {
        body["temperature"] = json!(t);
    }
    body
}

/// Token counts as the usage ledger takes them: zero where the server did
/// not say.
pub(crate) fn tokens(usage: Option<(u64, u64)>) -> Tokens {
    usage.map_or_else(Tokens::default, |(input, output)| Tokens { input, output })
}

/// `usage.prompt_tokens` and `usage.completion_tokens` of a response or
/// stream chunk, when the server sent them.
pub(crate) fn usage(value: &Value) -> Option<(u64, u64)> {
    let usage = value.get("usage")?;
    Some((
        usage.get("prompt_tokens")?.as_u64()?,
        usage.get("completion_tokens")?.as_u64()?,
    ))
}

/// `choices[0].message.content` of a chat-completions response.
///
/// Content given as a list of text parts is joined. Servers that split
/// reasoning out (`reasoning_content`, e.g. vLLM's reasoning parsers) get it
/// put back as `<think>…</think>` for the EditThinker protocol, so the stored
/// critique keeps the model's reasoning.
fn answer_text(body: &str, protocol: Protocol) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    let message = value.get("choices")?.get(0)?.get("message")?;
    let content = match message.get("content")? {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<String>(),
        _ => return None,
    };
    let reasoning = ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|k| message.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .filter(|r| !r.is_empty());
    match reasoning {
        Some(r)
            if protocol == Protocol::Editthinker
                && !content.to_ascii_lowercase().contains("<think>") =>
        {
            Some(format!("<think>{r}</think>{content}"))
        }
        _ => Some(content),
    }
}

/// Whether `value` is an error report: OpenAI's `{"error": {...}}` or vLLM's
/// `{"object": "error", ...}`.
pub(crate) fn is_error_object(value: &Value) -> bool {
    value.get("error").is_some_and(|e| !e.is_null())
        || value.get("object").and_then(Value::as_str) == Some("error")
}

/// The server's own error text: OpenAI-style `error.message`, else the body.
pub(crate) fn server_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
    });
    match message {
        Some(m) => excerpt(m),
        None if body.trim().is_empty() => "(empty body)".into(),
        None => excerpt(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_text_variants() {
        let plain = r#"{"choices":[{"message":{"content":"hi"}}]}"#;
        assert_eq!(
            answer_text(plain, Protocol::Editthinker).as_deref(),
            Some("hi")
        );
        let parts = r#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]}"#;
        assert_eq!(answer_text(parts, Protocol::Expert).as_deref(), Some("ab"));
        let split = r#"{"choices":[{"message":{"content":"<score>[1,2]</score><answer>x</answer>","reasoning_content":" why "}}]}"#;
        assert_eq!(
            answer_text(split, Protocol::Editthinker).as_deref(),
            Some("<think>why</think><score>[1,2]</score><answer>x</answer>")
        );
        assert_eq!(
            answer_text(split, Protocol::Expert).as_deref(),
            Some("<score>[1,2]</score><answer>x</answer>")
        );
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"choices":[]}"#,
            r#"{"choices":[{"message":{}}]}"#,
            r#"{"choices":[{"message":{"content":null}}]}"#,
        ] {
            assert_eq!(answer_text(bad, Protocol::Editthinker), None, "{bad}");
        }
    }

    #[test]
    fn server_message_prefers_openai_error() {
        assert_eq!(
            server_message(r#"{"error":{"message":"model not found","type":"x"}}"#),
            "model not found"
        );
        assert_eq!(server_message(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(server_message("plain text"), "plain text");
        assert_eq!(server_message(""), "(empty body)");
        assert!(
            server_message(&"x".repeat(2000)).chars().count()
                <= editthinker_provider_http::BODY_EXCERPT_CHARS + 1
        );
    }

    #[test]
    fn urls_are_joined_without_a_doubled_slash() {
        for base in ["http://h:1/v1", "http://h:1/v1/"] {
            let url: Url = base.parse().unwrap();
            assert_eq!(join(&url, "models"), "http://h:1/v1/models");
        }
    }
}
