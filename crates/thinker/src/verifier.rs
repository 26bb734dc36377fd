//! The verifier (`[verifier]`, docs/configuration.md "Verifier"): a second,
//! independent judge that scores each edit and refines nothing.
//!
//! Two kinds:
//! - `openai` ([`OpenAiVerifier`]): an OpenAI-compatible vision-language
//!   server (an EditScore or EditReward model on vLLM, or a general model
//!   following our prompt). Protocol `score`: one non-streamed
//!   `POST {base_url}/chat/completions` per candidate, with one user
//!   message holding the source image, the edited image (PNG data URLs,
//!   the longer side scaled to `max_image_edge`) and our prompt
//!   ([`DEFAULT_VERIFIER_PROMPT`], or the operator's
//!   `prompt_template_file`). The model answers a JSON object,
//!   `{"semantic": s, "quality": q}` or `{"score": x}`, on 0 to 10, which
//!   [`parse_verifier_score`] finds in the answer. Failures are classed and
//!   retried like the remote thinker's (crate `chat` module): connection
//!   errors, timeouts, 408, 429 and 5xx are retried and end as
//!   [`ThinkerError::Transient`]; 401/403 are [`ThinkerError::Auth`]; other
//!   4xx, and an answer without a usable score, are
//!   [`ThinkerError::Invalid`].
//! - `sandbox` ([`SandboxVerifier`]): a test mode with no network and no
//!   model, whose scores are made up from the edited image's bytes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use editthinker_core::{
    Image, TemplateError, ThinkerError, Tokens, Verifier, VerifierAnswer, VerifierScore,
    VerifyRequest,
};
use editthinker_provider_http::excerpt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use crate::chat::{chat_body, image_urls, retry_policy, tokens, ChatEndpoint};
use crate::config::{
    check_model, load_template, parse_base_url, read_api_key, refuse_sandbox_api_key,
    RequestLimits, ThinkerConfigError, VERIFIER_KEYS,
};

/// Which verifier backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifierKind {
    /// Any OpenAI-compatible chat-completions server with a vision model.
    #[default]
    Openai,
    /// Test mode: made-up scores, no network and no model (see
    /// [`SandboxVerifier`]).
    Sandbox,
}

/// The form the verifier model answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifierProtocol {
    /// A JSON object, `{"semantic": s, "quality": q}` or `{"score": x}`,
    /// each on 0 to 10.
    #[default]
    Score,
}

/// The `[verifier]` section (docs/configuration.md "Verifier"). Every field
/// has a default, so an empty section is valid; unknown keys are rejected
/// to catch typos.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierConfig {
    /// Backend kind (default `openai`).
    pub kind: VerifierKind,
    /// Answer form the model follows (default and only value: `score`).
    pub protocol: VerifierProtocol,
    /// Base URL of the chat-completions API; `/chat/completions` is
    /// appended (default `http://127.0.0.1:8001/v1`).
    pub base_url: String,
    /// Model name sent in each request (default `EditScore`).
    pub model: String,
    /// Name of the environment variable holding the API key (never the key
    /// itself), sent as a bearer token; none by default.
    pub api_key_env: Option<String>,
    /// An operator's prompt file replacing ours; it must contain the
    /// placeholder `{instruction}` and no other.
    pub prompt_template_file: Option<PathBuf>,
    /// Longer image side sent to the model, in pixels (default 1024,
    /// minimum 32).
    pub max_image_edge: u32,
    /// Sampling temperature (default 0, so a candidate's score is
    /// repeatable); unset, the server's default applies.
    pub temperature: Option<f64>,
    /// Upper bound on generated tokens (default 256: the answer is one
    /// small JSON object, but reasoning models think first).
    pub max_tokens: u32,
    /// Total time allowed for one HTTP call, in seconds (default 120).
    pub timeout_seconds: u64,
    /// Extra attempts after a transient failure (connection, timeout, 408,
    /// 429, 5xx; default 3).
    pub max_retries: u32,
    /// First backoff delay in milliseconds; doubles with each retry
    /// (default 500).
    pub retry_base_ms: u64,
    /// What a million prompt tokens cost, in the configuration's
    /// `currency` (default 0).
    pub price_per_million_input_tokens: Option<f64>,
    /// What a million generated tokens cost (default 0).
    pub price_per_million_output_tokens: Option<f64>,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            kind: VerifierKind::Openai,
            protocol: VerifierProtocol::Score,
            base_url: "http://127.0.0.1:8001/v1".into(),
            model: "EditScore".into(),
            api_key_env: None,
            prompt_template_file: None,
            max_image_edge: 1024,
            temperature: Some(0.0),
            max_tokens: 256,
            timeout_seconds: 120,
            max_retries: 3,
            retry_base_ms: 500,
            price_per_million_input_tokens: None,
            price_per_million_output_tokens: None,
        }
    }
}

/// Why the `[verifier]` section cannot be used: the thinker's error type,
/// whose [`key`](ThinkerConfigError::key) names the offending key, e.g.
/// `verifier.base_url`.
pub type VerifierConfigError = ThinkerConfigError;

impl VerifierConfig {
    /// Checks every key without reading the API key's environment variable
    /// (an `api` replica validates the section but calls no verifier); the
    /// prompt file is read and checked.
    pub fn validate(&self) -> Result<(), VerifierConfigError> {
        match self.kind {
            VerifierKind::Openai => self.check_server().map(|_| ())?,
            VerifierKind::Sandbox => {
                refuse_sandbox_api_key(&VERIFIER_KEYS, self.api_key_env.as_deref())?
            }
        }
        self.check_shared().map(|_| ())
    }

    /// Validates the section, reads the API key `api_key_env` names, and
    /// builds the verifier.
    pub fn build(&self) -> Result<Arc<dyn Verifier>, VerifierConfigError> {
        let verifier: Arc<dyn Verifier> = match self.kind {
            VerifierKind::Openai => Arc::new(OpenAiVerifier::from_config(self)?),
            VerifierKind::Sandbox => {
                self.validate()?;
                tracing::warn!(
                    "verifier kind \"sandbox\": scores are made up from the image bytes, no \
                     model runs (test mode)"
                );
                Arc::new(SandboxVerifier)
            }
        };
        tracing::info!(
            kind = ?self.kind,
            model = %match self.kind {
                VerifierKind::Sandbox => "(none: simulated)",
                VerifierKind::Openai => self.model.trim(),
            },
            "verifier ready"
        );
        Ok(verifier)
    }

    /// The prices per million tokens, (input, output), 0 where unset.
    pub fn prices_per_million(&self) -> (f64, f64) {
        (
            self.price_per_million_input_tokens.unwrap_or(0.0),
            self.price_per_million_output_tokens.unwrap_or(0.0),
        )
    }

    /// Checks the keys only `kind = "openai"` reads: the base URL and the
    /// model name (trimmed). A `kind = "sandbox"` section ignores them (and
    /// the retry keys), as the sandbox thinker does.
    fn check_server(&self) -> Result<(Url, String), VerifierConfigError> {
        Ok((
            parse_base_url(&VERIFIER_KEYS, &self.base_url)?,
            check_model(&VERIFIER_KEYS, &self.model)?,
        ))
    }

    /// Checks the keys every kind shares, though the sandbox uses none of
    /// them (so a section stays valid when its kind changes back), and
    /// loads the prompt.
    fn check_shared(&self) -> Result<VerifierPrompt, VerifierConfigError> {
        let prompt = match &self.prompt_template_file {
            None => VerifierPrompt::default(),
            Some(path) => load_template(&VERIFIER_KEYS, path, VerifierPrompt::parse)?,
        };
        RequestLimits {
            max_image_edge: self.max_image_edge,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            timeout_seconds: self.timeout_seconds,
        }
        .check(&VERIFIER_KEYS)?;
        for (key, price) in [
            (
                "verifier.price_per_million_input_tokens",
                self.price_per_million_input_tokens,
            ),
            (
                "verifier.price_per_million_output_tokens",
                self.price_per_million_output_tokens,
            ),
        ] {
            if let Some(bad) = price.filter(|p| !p.is_finite() || *p < 0.0) {
                return Err(VerifierConfigError::invalid(
                    key,
                    format!("{bad} must be a number of 0 or more"),
                ));
            }
        }
        Ok(prompt)
    }
}

/// Builds the verifier `cfg` describes (see [`VerifierConfig::build`]).
pub fn build_verifier(cfg: &VerifierConfig) -> Result<Arc<dyn Verifier>, VerifierConfigError> {
    cfg.build()
}

/// Our default verifier prompt; `{instruction}` is the user's instruction.
/// The two images come before it, source first.
pub const DEFAULT_VERIFIER_PROMPT: &str = r#"You are grading one image edit. Two images come before this message. The FIRST is the original picture. The SECOND is the result of an image editing model that was asked to apply this instruction to the first picture:

{instruction}

Grade the SECOND picture with two numbers from 0 to 10:
- semantic: how well it carries out the instruction on the original picture. Everything the instruction asks for should be there, and everything it does not mention should be left as it was. 10 = fully carried out with nothing else changed; 0 = the instruction was ignored, or the picture was changed in ways nobody asked for.
- quality: how natural and clean it looks, whatever the instruction: lighting, shadows, perspective, faces, hands and bodies, sharpness, and the borders of the edited area. 10 = natural and seamless; 0 = clearly broken, distorted or fake-looking.

Reply with only this JSON object, with no text, explanation or code fence around it:
{"semantic": <0-10>, "quality": <0-10>}"#;

/// The placeholder of a verifier prompt.
const INSTRUCTION: &str = "instruction";

/// A verifier prompt: text with the placeholder `{instruction}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierPrompt {
    text: String,
}

impl Default for VerifierPrompt {
    /// Our prompt, [`DEFAULT_VERIFIER_PROMPT`].
    fn default() -> Self {
        Self {
            text: DEFAULT_VERIFIER_PROMPT.into(),
        }
    }
}

impl VerifierPrompt {
    /// Validates an operator's prompt: `{instruction}` must appear, and no
    /// other placeholder may. As for the thinker's templates, only `{`,
    /// lowercase letters or `_`, and `}` make a placeholder, so literal JSON
    /// such as `{"score": 7}` may appear freely.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let names: Vec<&str> = text
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
            .filter(|name| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
            .collect();
        if let Some(unknown) = names.iter().find(|name| **name != INSTRUCTION) {
            return Err(TemplateError::UnknownPlaceholder((*unknown).to_string()));
        }
        if names.is_empty() {
            return Err(TemplateError::MissingPlaceholder(INSTRUCTION));
        }
        Ok(Self { text: text.into() })
    }

    /// The prompt text, placeholder included.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The prompt for `instruction`: one pass over the text, so braces in
    /// the instruction are never expanded.
    pub fn render(&self, instruction: &str) -> String {
        self.text.replace("{instruction}", instruction)
    }
}

/// A verifier behind an OpenAI-compatible `POST {base_url}/chat/completions`
/// (`kind = "openai"`, protocol `score`).
#[derive(Debug)]
pub struct OpenAiVerifier {
    chat: ChatEndpoint,
    model: String,
    prompt: VerifierPrompt,
    max_image_edge: u32,
    temperature: Option<f64>,
    max_tokens: u32,
}

impl OpenAiVerifier {
    /// Checks `cfg` as a `kind = "openai"` section (whatever its `kind`),
    /// reads its API key and builds the HTTP client.
    pub fn from_config(cfg: &VerifierConfig) -> Result<Self, VerifierConfigError> {
        let (base_url, model) = cfg.check_server()?;
        let prompt = cfg.check_shared()?;
        let api_key = read_api_key(&VERIFIER_KEYS, cfg.api_key_env.as_deref())?;
        let chat = ChatEndpoint::new(
            &VERIFIER_KEYS,
            &base_url,
            &model,
            api_key,
            Duration::from_secs(cfg.timeout_seconds),
            retry_policy(cfg.max_retries, Duration::from_millis(cfg.retry_base_ms)),
        )?;
        Ok(Self {
            chat,
            model,
            prompt,
            max_image_edge: cfg.max_image_edge,
            temperature: cfg.temperature,
            max_tokens: cfg.max_tokens,
        })
    }

    /// The full chat-completions URL this verifier posts to.
    pub fn endpoint(&self) -> &str {
        self.chat.endpoint()
    }
}

#[async_trait]
impl Verifier for OpenAiVerifier {
    /// One call (with retries) per candidate. The tokens of an answer
    /// without a usable score are lost with it: the call ends as
    /// [`ThinkerError::Invalid`].
    async fn score(&self, request: VerifyRequest<'_>) -> Result<VerifierAnswer, ThinkerError> {
        let images = image_urls(request.source, request.edited, self.max_image_edge).await?;
        let body = chat_body(
            &self.model,
            images,
            self.prompt.render(request.instruction),
            self.max_tokens,
            self.temperature,
        );
        let (answer, usage) = self.chat.complete(&body, request.turn).await?;
        let score = parse_verifier_score(&answer)?;
        tracing::debug!(
            turn = request.turn,
            candidate = request.candidate,
            overall = score.overall,
            "verifier scored a candidate"
        );
        Ok(VerifierAnswer {
            score,
            tokens: tokens(usage),
        })
    }
}

/// The keys a verifier's JSON answer may carry.
const SCORE_KEYS: [&str; 3] = ["semantic", "quality", "score"];

/// Reads a verifier's answer: the last JSON object in it that has a
/// `semantic`, `quality` or `score` key (prose, `<think>` reasoning and code
/// fences around it are skipped). `{"semantic": s, "quality": q}` gives
/// [`VerifierScore::from_parts`], else `{"score": x}` gives
/// [`VerifierScore::single`]. Each number must be finite and within
/// 0..=10; a string holding a number counts as that number. Anything else
/// is [`ThinkerError::Invalid`], with an excerpt of the answer.
pub fn parse_verifier_score(answer: &str) -> Result<VerifierScore, ThinkerError> {
    let invalid = |why: String| {
        ThinkerError::Invalid(format!(
            "the verifier's answer {why}: {}",
            excerpt(answer.trim())
        ))
    };
    let object = json_objects(answer)
        .rfind(|object| SCORE_KEYS.iter().any(|key| object.contains_key(*key)))
        .ok_or_else(|| {
            invalid("holds no JSON object with \"semantic\" and \"quality\", or \"score\"".into())
        })?;
    let number = |key: &str| -> Result<Option<f64>, ThinkerError> {
        let value = match object.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(value) => value,
        };
        let x = match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match x {
            Some(x) if x.is_finite() && (0.0..=10.0).contains(&x) => Ok(Some(x)),
            Some(x) if x.is_finite() => Err(invalid(format!("gives {key} = {x}, outside 0 to 10"))),
            _ => Err(invalid(format!("gives {key} = {value}, not a number"))),
        }
    };
    match (number("semantic")?, number("quality")?, number("score")?) {
        (Some(semantic), Some(quality), _) => Ok(VerifierScore::from_parts(semantic, quality)),
        (_, _, Some(score)) => Ok(VerifierScore::single(score)),
        (Some(_), None, None) => Err(invalid("gives \"semantic\" without \"quality\"".into())),
        (None, Some(_), None) => Err(invalid("gives \"quality\" without \"semantic\"".into())),
        (None, None, None) => Err(invalid("gives no score".into())),
    }
}

/// Every JSON object that starts somewhere in `text`, in order of their
/// opening braces (an object inside another comes after it).
fn json_objects(text: &str) -> impl DoubleEndedIterator<Item = Map<String, Value>> + '_ {
    text.match_indices('{')
        .filter_map(move |(start, _)| {
            match serde_json::Deserializer::from_str(&text[start..])
                .into_iter::<Value>()
                .next()
            {
                Some(Ok(Value::Object(object))) => Some(object),
                _ => None,
            }
        })
}

/// A verifier that makes up its scores (`kind = "sandbox"`): a test mode
/// with no network and no model, like the sandbox thinker. It never
/// measures quality.
///
/// The score is a hash of the edited image's bytes: with `h` the FNV-1a
/// 64-bit hash of them, semantic is `(h % 101) / 10` and quality
/// `((h >> 32) % 101) / 10`, so both are 0.0 to 10.0 in steps of 0.1, the
/// same image always scores the same, and distinct images almost always
/// score differently. Tokens are zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxVerifier;

impl SandboxVerifier {
    /// The made-up score of `edited` (see the [type documentation](Self)).
    pub fn score_of(edited: &Image) -> VerifierScore {
        let h = crate::sandbox::fnv1a64(&edited.bytes);
        let tenths = |bits: u64| (bits % 101) as f64 / 10.0;
        VerifierScore::from_parts(tenths(h), tenths(h >> 32))
    }
}

#[async_trait]
impl Verifier for SandboxVerifier {
    async fn score(&self, request: VerifyRequest<'_>) -> Result<VerifierAnswer, ThinkerError> {
        Ok(VerifierAnswer {
            score: Self::score_of(request.edited),
            tokens: Tokens::default(),
        })
    }
}
