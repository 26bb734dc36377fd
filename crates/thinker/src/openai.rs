//! The `openai` thinker: one chat-completions call per critique.
//!
//! The request is `POST {base_url}/chat/completions` with one user message:
//! the source image, the edited image (both `data:image/png;base64,` URLs)
//! and the rendered prompt, in that order (docs/configuration.md "`[thinker]`"). The expert
//! protocol adds a `response_format` JSON schema when `structured` is set.
//!
//! With `stream` set (the default) the request asks for server-sent events
//! and every piece of text is handed to the request's [`ThinkingSink`] as it
//! arrives; the returned answer is the whole text. Reasoning that a server
//! splits out of the content (`delta.reasoning_content`, or
//! `delta.reasoning`, as vLLM's reasoning parsers and mistral.rs do) is
//! forwarded to the sink as well. For the EditThinker protocol it is part of
//! the answer, wrapped as `<think>…</think>` before the content, and the sink
//! sees those tags too, so the concatenated deltas equal the answer. For the
//! expert protocol the reasoning reaches the sink only: the answer is the
//! JSON content alone. A server that ignores `stream` and answers with a
//! plain JSON completion is read as such (the sink is then not called).
//!
//! Failures: connection errors, timeouts, a stream that breaks or goes idle
//! mid-way, 408, 429 and 5xx are retried under the one [`RetryPolicy`] of
//! `editthinker_core` (exponential backoff with jitter, never sooner than
//! the server's `Retry-After`, giving up on one longer than two minutes), and
//! end as
//! [`ThinkerError::Transient`]. 401 and 403 are [`ThinkerError::Auth`]; 404
//! and other 4xx are [`ThinkerError::Invalid`] and are not retried. A 200
//! answer we cannot read (not JSON, no `choices`, no content) is
//! `Transient` without an in-call retry: the worker requeues the job.
//! When a streamed attempt is retried, the sink receives the new attempt's
//! text from its beginning (live text is a view, not a record).
//!
//! [`Thinker::probe`] is one `GET {base_url}/models` (with the bearer key),
//! at most [`PROBE_TIMEOUT`], never retried: 2xx is fine unless the body
//! lists models without the configured one (then
//! [`ThinkerError::Invalid`]); 401/403 are `Auth`; a connection failure, a
//! timeout, 408, 429 and 5xx are `Transient`; any other status is `Invalid`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use editthinker_core::{
    CritiqueRequest, FailureClass, PromptTemplate, Protocol, RetryPolicy, Thinker, ThinkerAnswer,
    ThinkerError, ThinkingSink,
};
use editthinker_provider_http::{describe_error, excerpt, read_body, BodyError, Failure, Step};
use futures::StreamExt as _;
use serde_json::{json, Value};
use url::Url;

use editthinker_core::metrics;

use crate::chat::{
    chat_body, image_urls, is_error_object, read_text, server_message, tokens, usage, Attempt,
    Attempts, ChatEndpoint,
};
use crate::config::{ThinkerConfigError, THINKER_KEYS};
use crate::sse::{is_event_stream, looks_like_event_stream, SseEvent, SseParser};

/// The default of `thinker.stream_idle_timeout_seconds`: the longest
/// silence allowed between two events of a streamed answer once it has
/// started (capped by the total timeout). Before the first event only
/// the total timeout applies: a busy server may queue the request a while.
pub(crate) const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a probe (`GET {base_url}/models`) may take, connection included;
/// a shorter `timeout` applies instead.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A model list larger than this is not read: the probe passes unchecked.
const PROBE_MAX_BODY: usize = 4 << 20;
/// Most model names a probe error lists.
const PROBE_LISTED_MODELS: usize = 20;

/// Checked settings for [`OpenAiThinker`] (secrets already read).
#[derive(Clone)]
pub struct OpenAiSettings {
    /// Base URL; `/chat/completions` is appended.
    pub base_url: Url,
    /// Model name sent with each request.
    pub model: String,
    /// Bearer token, if the server needs one.
    pub api_key: Option<String>,
    /// The output protocol the model answers in.
    pub protocol: Protocol,
    /// Prompt template, rendered with both instructions.
    pub template: PromptTemplate,
    /// Longer image side sent to the model.
    pub max_image_edge: u32,
    /// Sampling temperature (omitted when `None`: the server's default).
    pub temperature: Option<f64>,
    /// Upper bound on generated tokens.
    pub max_tokens: u32,
    /// Total time allowed for one HTTP call.
    pub timeout: Duration,
    /// How transient failures are retried (see
    /// [`OpenAiSettings::retry_policy`]).
    pub retry: RetryPolicy,
    /// Expert protocol only: request JSON-schema structured output.
    pub structured: bool,
    /// Ask for a streamed answer (`"stream": true`) and pass its text to the
    /// request's thinking sink as it arrives.
    pub stream: bool,
    /// Longest silence between two events of a streamed answer once the
    /// first has arrived; the total `timeout` bounds the call regardless.
    pub stream_idle_timeout: Duration,
}

impl OpenAiSettings {
    /// The remote thinker's retry policy: `max_retries` retries after the
    /// first attempt, backoff from `base` doubling up to 30 s, and a
    /// `Retry-After` of more than two minutes ends the retries (the worker
    /// requeues the job rather than hold a slot that long).
    pub fn retry_policy(max_retries: u32, base: Duration) -> RetryPolicy {
        crate::chat::retry_policy(max_retries, base)
    }
}

// Hand-written so the API key never reaches logs.
impl fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("base_url", &self.base_url.as_str())
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("protocol", &self.protocol)
            .field("max_image_edge", &self.max_image_edge)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("structured", &self.structured)
            .field("stream", &self.stream)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .finish_non_exhaustive()
    }
}

/// A thinker behind an OpenAI-compatible `POST {base_url}/chat/completions`.
#[derive(Debug)]
pub struct OpenAiThinker {
    settings: OpenAiSettings,
    chat: ChatEndpoint,
}

/// The `thinker` label of this thinker's critique metrics.
const THINKER_LABEL: &str = "openai";

impl OpenAiThinker {
    /// Builds the HTTP client for `settings`.
    pub fn new(settings: OpenAiSettings) -> Result<Self, ThinkerConfigError> {
        let mut chat = ChatEndpoint::new(
            &THINKER_KEYS,
            &settings.base_url,
            &settings.model,
            settings.api_key.clone(),
            settings.timeout,
            settings.retry,
        )?;
        if settings.protocol == Protocol::Expert && settings.structured {
            chat.hint(
                &["response_format", "json_schema", "structured"],
                "; the server may not support response_format json_schema: set \
                 thinker.structured = false",
            );
        }
        if settings.stream {
            chat.hint(
                &["stream"],
                "; if the server cannot stream answers, set thinker.stream = false",
            );
        }
        Ok(Self { settings, chat })
    }

    /// The full chat-completions URL this thinker posts to.
    pub fn endpoint(&self) -> &str {
        self.chat.endpoint()
    }

    /// The model-list URL [`Thinker::probe`] asks: `{base_url}/models`.
    pub fn models_url(&self) -> String {
        self.chat.url("models")
    }

    /// The JSON request body for one critique.
    fn body(&self, images: (String, String), text: String) -> Value {
        let s = &self.settings;
        let mut body = chat_body(&s.model, images, text, s.max_tokens, s.temperature);
        if s.protocol == Protocol::Expert && s.structured {
            body["response_format"] = expert_response_format();
        }
        if s.stream {
            // `stream_options.include_usage` is left out on purpose: strict
            // servers reject fields they do not know. Counts that come
            // anyway feed `editthinker_thinker_tokens_total`.
            body["stream"] = json!(true);
        }
        body
    }

    async fn attempt(&self, body: &Value, sink: &dyn ThinkingSink) -> Attempt {
        let response = match self.chat.send(body).await {
            Ok(r) => r,
            Err(end) => return end,
        };
        let status = response.status();
        if is_event_stream(response.headers()) {
            return self.read_stream(response, sink).await;
        }
        let text = match read_text(response).await {
            Ok(t) => t,
            Err(end) => return end,
        };
        // Some servers send events without the event-stream content type.
        if looks_like_event_stream(&text) {
            let mut parser = SseParser::default();
            let mut answer = StreamAnswer::new(self.settings.protocol);
            let mut events = parser.push(text.as_bytes());
            events.extend(parser.finish());
            for event in events {
                if let Some(end) = answer.event(&event, sink, &self.chat) {
                    return end;
                }
            }
            return answer.end_of_stream(sink);
        }
        self.chat.completion(status, &text, self.settings.protocol)
    }

    /// Reads a `text/event-stream` answer to its end, feeding `sink`.
    async fn read_stream(&self, response: reqwest::Response, sink: &dyn ThinkingSink) -> Attempt {
        let idle = self.settings.stream_idle_timeout.min(self.settings.timeout);
        let mut chunks = response.bytes_stream();
        let mut parser = SseParser::default();
        let mut answer = StreamAnswer::new(self.settings.protocol);
        loop {
            // The total timeout (reqwest's, which covers the body) always
            // applies; the idle one only once the answer has started.
            let next = if answer.started {
                match tokio::time::timeout(idle, chunks.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return Step::Retry(Failure::ambiguous(format!(
                            "the stream went idle for {idle:?} after {} characters",
                            answer.text.chars().count()
                        )))
                    }
                }
            } else {
                chunks.next().await
            };
            let ended = next.is_none();
            let events = match next {
                Some(Ok(bytes)) => parser.push(&bytes),
                Some(Err(e)) => {
                    return Step::Retry(Failure::ambiguous(format!(
                        "the stream broke after {} characters: {}",
                        answer.text.chars().count(),
                        describe_error(&e)
                    )))
                }
                None => parser.finish(),
            };
            for event in &events {
                if let Some(end) = answer.event(event, sink, &self.chat) {
                    return end;
                }
            }
            if ended {
                return answer.end_of_stream(sink);
            }
        }
    }

    /// What a 2xx model list says of the configured model: fine when it
    /// names it, or names nothing we can read.
    fn check_listing(&self, url: &str, body: &[u8]) -> Result<(), ThinkerError> {
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return Ok(());
        };
        let Some(data) = value.get("data").and_then(Value::as_array) else {
            return Ok(());
        };
        let ids: Vec<&str> = data
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str))
            .collect();
        let model = &self.settings.model;
        if ids.is_empty() || ids.iter().any(|id| same_model(id, model)) {
            return Ok(());
        }
        let mut served = ids
            .iter()
            .take(PROBE_LISTED_MODELS)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if ids.len() > PROBE_LISTED_MODELS {
            served.push_str(&format!(" and {} more", ids.len() - PROBE_LISTED_MODELS));
        }
        Err(ThinkerError::Invalid(format!(
            "model {model:?} is not served by {url}; it serves: {served} (check thinker.model)"
        )))
    }
}

#[async_trait]
impl Thinker for OpenAiThinker {
    fn protocol(&self) -> Protocol {
        self.settings.protocol
    }

    async fn critique(&self, request: CritiqueRequest<'_>) -> Result<ThinkerAnswer, ThinkerError> {
        let images =
            image_urls(request.source, request.edited, self.settings.max_image_edge).await?;
        let text = self.settings.template.render_request(&request);
        let body = self.body(images, text);

        let started = std::time::Instant::now();
        let result = self.call(&body, &request).await;
        let counts = result.as_ref().ok().and_then(|(_, counts)| *counts);
        metrics::critique_done(THINKER_LABEL, started.elapsed(), counts);
        result.map(|(text, counts)| ThinkerAnswer {
            text,
            tokens: tokens(counts),
        })
    }

    async fn probe(&self) -> Result<(), ThinkerError> {
        let url = self.models_url();
        let timeout = PROBE_TIMEOUT.min(self.settings.timeout);
        let request = self
            .chat
            .authorized(self.chat.client().get(&url).timeout(timeout));
        let response = request.send().await.map_err(|e| {
            ThinkerError::Transient(format!("GET {url}: {}", transport_reason(&e, timeout)))
        })?;
        let status = response.status();
        // The timeout set on the request covers reading the body too.
        let body = read_body(response, PROBE_MAX_BODY).await;
        if status.is_success() {
            return match body {
                Ok(body) => self.check_listing(&url, &body),
                // A list that large surely holds the model; not worth reading.
                Err(BodyError::TooLarge) => Ok(()),
                Err(BodyError::Transport(e)) => Err(ThinkerError::Transient(format!(
                    "GET {url}: HTTP {status}, then the body broke off: {}",
                    transport_reason(&e, timeout)
                ))),
            };
        }
        let server = match &body {
            Ok(bytes) => server_message(&String::from_utf8_lossy(bytes)),
            Err(_) => "(body not read)".to_string(),
        };
        let code = status.as_u16();
        // Some OpenAI-compatible servers have no model listing: one that
        // answers 404 or 405 for it is up, which is what the probe asks.
        if matches!(code, 404 | 405) {
            tracing::debug!(%url, code, "the thinker's server has no model listing; it answers, so it counts as reachable");
            return Ok(());
        }
        Err(match code {
            401 | 403 => self.chat.auth_error(&url, code, &server),
            _ if FailureClass::of_status(code).is_some() => {
                ThinkerError::Transient(format!("GET {url}: HTTP {status}: {server}"))
            }
            _ => ThinkerError::Invalid(format!("GET {url}: HTTP {status}: {server}")),
        })
    }
}

/// Whether a listed model `id` is `model`; Gemini's compatible endpoint
/// lists `models/<name>` for the `<name>` it is asked for.
fn same_model(id: &str, model: &str) -> bool {
    let bare = |m: &str| {
        m.trim()
            .strip_prefix("models/")
            .unwrap_or(m.trim())
            .to_string()
    };
    bare(id) == bare(model)
}

/// Why a probe request got no answer, briefly: "connection refused", "no
/// answer within 5s", else the error with its causes.
fn transport_reason(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {timeout:?}");
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                kind @ (K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::TimedOut
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::AddrNotAvailable) => kind.to_string(),
                _ => io.to_string(),
            };
        }
        source = cause.source();
    }
    describe_error(e)
}

impl OpenAiThinker {
    /// One critique call: attempts with the retry policy between them;
    /// each attempt is counted in `editthinker_provider_requests_total`.
    async fn call(
        &self,
        body: &Value,
        request: &CritiqueRequest<'_>,
    ) -> Result<(String, Option<(u64, u64)>), ThinkerError> {
        let attempts = CritiqueAttempts {
            thinker: self,
            body,
            sink: request.thinking,
        };
        self.chat.call(request.turn, attempts).await
    }
}

/// The attempts of one critique call.
struct CritiqueAttempts<'a> {
    thinker: &'a OpenAiThinker,
    body: &'a Value,
    sink: &'a dyn ThinkingSink,
}

impl Attempts for CritiqueAttempts<'_> {
    async fn attempt(&self) -> Attempt {
        self.thinker.attempt(self.body, self.sink).await
    }
}

/// `response_format` for the expert protocol's JSON answer.
fn expert_response_format() -> Value {
    json!({
        "type": "json_schema",
        "json_schema": {
            "name": "edit_verdict",
            "strict": true,
            "schema": {
                "type": "object",
                "properties": {
                    "is_satisfied": {"type": "boolean"},
                    "reason": {"type": "string"},
                    "new_rewritten_prompt": {"type": ["string", "null"]},
                },
                "required": ["is_satisfied", "reason", "new_rewritten_prompt"],
                "additionalProperties": false,
            },
        },
    })
}

/// Context of an error event inside an answer stream.
const STREAM_ERROR: &str = "error event in the stream";

/// A streamed answer being put together.
struct StreamAnswer {
    protocol: Protocol,
    /// What the call returns (for the EditThinker protocol, exactly what the
    /// sink has been given).
    text: String,
    /// A `<think>` we opened for split-out reasoning is not closed yet.
    think_open: bool,
    /// Some content (not reasoning) has arrived.
    has_content: bool,
    /// A chunk with `choices` has arrived (the idle timeout now applies).
    started: bool,
    /// The server's `finish_reason`, once given.
    finish_reason: Option<String>,
    /// Token counts, when a chunk carried `usage`.
    usage: Option<(u64, u64)>,
}

impl StreamAnswer {
    fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            text: String::new(),
            think_open: false,
            has_content: false,
            started: false,
            finish_reason: None,
            usage: None,
        }
    }

    /// Gives `piece` to the sink and appends it to the answer.
    fn emit(&mut self, piece: &str, sink: &dyn ThinkingSink) {
        if !piece.is_empty() {
            sink.delta(piece);
            self.text.push_str(piece);
        }
    }

    fn reasoning(&mut self, piece: &str, sink: &dyn ThinkingSink) {
        if piece.is_empty() {
            return;
        }
        if self.protocol == Protocol::Editthinker && !self.has_content {
            if !self.think_open {
                self.emit("<think>", sink);
                self.think_open = true;
            }
            self.emit(piece, sink);
        } else {
            // Expert answers are the JSON content alone; reasoning after the
            // content has started cannot be put back in front of it.
            sink.delta(piece);
        }
    }

    fn content(&mut self, piece: &str, sink: &dyn ThinkingSink) {
        if piece.is_empty() {
            return;
        }
        self.close_think(sink);
        self.has_content = true;
        self.emit(piece, sink);
    }

    fn close_think(&mut self, sink: &dyn ThinkingSink) {
        if self.think_open {
            self.think_open = false;
            self.emit("</think>", sink);
        }
    }

    /// Handles one event; `Some` ends the attempt.
    fn event(
        &mut self,
        event: &SseEvent,
        sink: &dyn ThinkingSink,
        chat: &ChatEndpoint,
    ) -> Option<Attempt> {
        let data = event.data.trim();
        if data.is_empty() {
            return None;
        }
        if data == "[DONE]" {
            return Some(self.done(sink));
        }
        let value: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(_) if event.name.as_deref() == Some("error") => {
                return Some(chat.error_object(&json!({ "message": data }), STREAM_ERROR))
            }
            Err(e) => {
                return Some(Step::Fail(ThinkerError::Transient(format!(
                    "malformed event in the answer stream ({e}): {}",
                    excerpt(data)
                ))))
            }
        };
        if event.name.as_deref() == Some("error") || is_error_object(&value) {
            return Some(chat.error_object(&value, STREAM_ERROR));
        }
        if let Some(counts) = usage(&value) {
            self.usage = Some(counts);
        }
        // A chunk without choices (e.g. the usage summary) carries no text.
        let choice = value.get("choices").and_then(|c| c.get(0))?;
        self.started = true;
        if let Some(delta) = choice.get("delta") {
            let reasoning = ["reasoning_content", "reasoning"]
                .iter()
                .find_map(|k| delta.get(*k).and_then(Value::as_str));
            if let Some(r) = reasoning {
                self.reasoning(r, sink);
            }
            match delta.get("content") {
                Some(Value::String(c)) => self.content(c, sink),
                Some(Value::Array(parts)) => {
                    for part in parts {
                        if let Some(t) = part.get("text").and_then(Value::as_str) {
                            self.content(t, sink);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            if reason == "length" {
                tracing::warn!(
                    "the thinker's answer was cut at max_tokens (finish_reason \"length\")"
                );
            }
            self.finish_reason = Some(reason.to_string());
        }
        None
    }

    /// `[DONE]` arrived.
    fn done(&mut self, sink: &dyn ThinkingSink) -> Attempt {
        if !self.started {
            return Step::Fail(ThinkerError::Transient(
                "the answer stream ended without any choices".into(),
            ));
        }
        Step::Done((self.take_text(sink), self.usage))
    }

    /// The body ended without `[DONE]`: complete if the server said why it
    /// finished, else the stream was cut.
    fn end_of_stream(&mut self, sink: &dyn ThinkingSink) -> Attempt {
        if self.finish_reason.is_some() {
            return Step::Done((self.take_text(sink), self.usage));
        }
        Step::Retry(Failure::ambiguous(format!(
            "the stream ended without [DONE] after {} characters",
            self.text.chars().count()
        )))
    }

    /// The finished answer (closing a `<think>` that no content followed).
    fn take_text(&mut self, sink: &dyn ThinkingSink) -> String {
        self.close_think(sink);
        std::mem::take(&mut self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_models_match_with_or_without_the_models_prefix() {
        assert!(same_model("EditThinker-8B", "EditThinker-8B"));
        assert!(same_model("models/gemini-2.5-flash", "gemini-2.5-flash"));
        assert!(same_model("gemini-2.5-flash", "models/gemini-2.5-flash"));
        assert!(!same_model("editthinker-8b", "EditThinker-8B"));
        assert!(!same_model("other/EditThinker-8B", "EditThinker-8B"));
    }
}
