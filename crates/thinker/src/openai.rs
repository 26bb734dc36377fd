//! The `openai` thinker: one chat-completions call per critique.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use editthinker_core::{CritiqueRequest, Image, PromptTemplate, Protocol, Thinker, ThinkerError};
use rand::Rng as _;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;

use crate::config::ThinkerConfigError;

/// Smallest image side a Qwen3-VL thinker accepts (patch 16 × merge 2).
const MIN_IMAGE_SIDE: u32 = 32;
/// Largest aspect ratio a Qwen-VL preprocessor accepts.
const MAX_ASPECT: f64 = 200.0;
/// Longest exponential backoff step.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A `Retry-After` longer than this is not waited out inside one call: the
/// job is better requeued than a worker slot held.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// How much of an error body we quote in messages.
const MAX_QUOTED_BODY: usize = 500;

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
    /// Extra attempts after a transient failure.
    pub max_retries: u32,
    /// First backoff delay; doubles with each retry.
    pub retry_base: Duration,
    /// Expert protocol only: request JSON-schema structured output.
    pub structured: bool,
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
            .field("max_retries", &self.max_retries)
            .field("retry_base", &self.retry_base)
            .field("structured", &self.structured)
            .finish_non_exhaustive()
    }
}

/// A thinker behind an OpenAI-compatible `POST {base_url}/chat/completions`.
#[derive(Debug)]
pub struct OpenAiThinker {
    settings: OpenAiSettings,
    endpoint: String,
    client: reqwest::Client,
}

/// What one HTTP attempt came to.
enum Attempt {
    /// The answer text.
    Done(String),
    /// Worth another try, after at least the server's `Retry-After`.
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Final.
    Fail(ThinkerError),
}

impl OpenAiThinker {
    /// Builds the HTTP client for `settings`.
    pub fn new(settings: OpenAiSettings) -> Result<Self, ThinkerConfigError> {
        let endpoint = format!(
            "{}/chat/completions",
            settings.base_url.as_str().trim_end_matches('/')
        );
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| ThinkerConfigError::invalid("thinker", format!("HTTP client: {e}")))?;
        Ok(Self {
            settings,
            endpoint,
            client,
        })
    }

    /// The full chat-completions URL this thinker posts to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The JSON request body for one critique.
    fn body(&self, source_url: String, edited_url: String, text: String) -> Value {
        let s = &self.settings;
        let mut body = json!({
            "model": s.model,
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": source_url}},
                    {"type": "image_url", "image_url": {"url": edited_url}},
                    {"type": "text", "text": text},
                ],
            }],
            "max_tokens": s.max_tokens,
        });
        if let Some(t) = s.temperature {
            body["temperature"] = json!(t);
        }
        if s.protocol == Protocol::Expert && s.structured {
            body["response_format"] = expert_response_format();
        }
        body
    }

    async fn attempt(&self, body: &Value) -> Attempt {
        let mut request = self.client.post(&self.endpoint).json(body);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(r) => r,
            // Connection refused/reset, DNS, timeouts: all worth retrying.
            Err(e) => {
                return Attempt::Retry {
                    message: describe_reqwest_error(&e),
                    retry_after: None,
                }
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Retry {
                    message: format!("reading the response: {}", describe_reqwest_error(&e)),
                    retry_after: None,
                }
            }
        };
        if status.is_success() {
            return match answer_text(&text, self.settings.protocol) {
                Some(answer) => Attempt::Done(answer),
                None => Attempt::Fail(ThinkerError::Transient(format!(
                    "HTTP {status} without choices[0].message.content: {}",
                    quote(&text)
                ))),
            };
        }
        let message = format!("HTTP {status}: {}", server_message(&text));
        if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
        {
            Attempt::Retry {
                message,
                retry_after,
            }
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            Attempt::Fail(ThinkerError::Auth(message))
        } else {
            // 404 (wrong base URL or unknown model) and other 4xx: our request is wrong.
            Attempt::Fail(ThinkerError::Invalid(message))
        }
    }

    /// Delay before retry number `retry` (0-based): exponential with jitter,
    /// never shorter than the server's `Retry-After`.
    fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let step = self
            .settings
            .retry_base
            .saturating_mul(1u32 << retry.min(16))
            .min(MAX_BACKOFF);
        // Equal jitter: half fixed, half random, so concurrent workers spread out.
        let half = step / 2;
        let jitter = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        let delay = half + Duration::from_millis(jitter);
        retry_after.map_or(delay, |ra| ra.max(delay))
    }
}

#[async_trait]
impl Thinker for OpenAiThinker {
    fn protocol(&self) -> Protocol {
        self.settings.protocol
    }

    async fn critique(&self, request: CritiqueRequest<'_>) -> Result<String, ThinkerError> {
        let max_edge = self.settings.max_image_edge;
        // Decoding and scaling are CPU work: keep them off the async workers.
        let (source, edited) = (request.source.clone(), request.edited.clone());
        let (source_url, edited_url) = tokio::task::spawn_blocking(move || {
            Ok::<_, ThinkerError>((
                data_url(&source, max_edge, "source")?,
                data_url(&edited, max_edge, "edited")?,
            ))
        })
        .await
        .map_err(|e| ThinkerError::Invalid(format!("image preparation panicked: {e}")))??;

        let text = self
            .settings
            .template
            .render(request.original_instruction, request.previous_instruction);
        let body = self.body(source_url, edited_url, text);

        let mut retry = 0;
        loop {
            let (message, retry_after) = match self.attempt(&body).await {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry {
                    message,
                    retry_after,
                } => (message, retry_after),
            };
            if retry >= self.settings.max_retries {
                return Err(ThinkerError::Transient(format!(
                    "{} after {} attempt(s): {message}",
                    self.endpoint,
                    retry + 1
                )));
            }
            if retry_after.is_some_and(|ra| ra > MAX_RETRY_AFTER) {
                return Err(ThinkerError::Transient(format!(
                    "{}: server asked to retry after {:?}: {message}",
                    self.endpoint,
                    retry_after.unwrap_or_default()
                )));
            }
            let delay = self.backoff(retry, retry_after);
            tracing::warn!(
                endpoint = %self.endpoint,
                turn = request.turn,
                attempt = retry + 1,
                delay_ms = delay.as_millis() as u64,
                error = %message,
                "thinker call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }
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

/// `Retry-After` in whole seconds (the HTTP-date form is not used by the
/// servers we target, and is ignored: plain backoff applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(Duration::from_secs)
}

/// The server's own error text: OpenAI-style `error.message`, else the body.
fn server_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
    });
    match message {
        Some(m) => quote(m),
        None if body.trim().is_empty() => "(empty body)".into(),
        None => quote(body),
    }
}

/// `text`, trimmed and cut to a length fit for an error message.
fn quote(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED_BODY) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn describe_reqwest_error(e: &reqwest::Error) -> String {
    // reqwest's Display omits the cause ("error sending request"); the chain says why.
    let mut message = if e.is_timeout() {
        format!("timed out: {e}")
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
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
        assert!(quote(&"x".repeat(2000)).chars().count() <= MAX_QUOTED_BODY + 1);
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
