//! The `[editors.<name>]` configuration tables (docs/configuration.md).

use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

/// Which provider protocol an editor profile speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EditorKind {
    /// The self-hosted `/edit` protocol of the reference servers.
    Http,
    /// OpenAI image edits (`POST {base_url}/images/edits`, multipart).
    Openai,
    /// Black Forest Labs FLUX API (asynchronous: submit, then poll).
    Bfl,
    /// fal.ai queue API (asynchronous: submit, then poll).
    Fal,
    /// Replicate predictions (asynchronous: create, then poll).
    Replicate,
    /// Google Gemini image models (`generateContent`).
    Gemini,
    /// Alibaba DashScope Qwen-Image-Edit (multimodal generation).
    Dashscope,
    /// Test mode: no network, no model, no cost. Marks the source visibly
    /// and deterministically, and simulates latency, refusals, 429s and
    /// timeouts at configured rates (see [`crate::sandbox`]).
    Sandbox,
}

impl EditorKind {
    /// The name used in configuration and in `GET /v1/editors`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Openai => "openai",
            Self::Bfl => "bfl",
            Self::Fal => "fal",
            Self::Replicate => "replicate",
            Self::Gemini => "gemini",
            Self::Dashscope => "dashscope",
            Self::Sandbox => "sandbox",
        }
    }

    /// Whether this build has a client for the kind.
    pub fn is_available(self) -> bool {
        // Every kind has a client now; kept so a future kind can land in
        // configuration before its client does.
        true
    }

    /// Whether this is the `sandbox` kind: a simulation that calls nothing
    /// and costs nothing.
    pub fn is_sandbox(self) -> bool {
        matches!(self, Self::Sandbox)
    }

    /// Whether the provider works asynchronously (submit, then poll): these
    /// kinds record their provider request before waiting, and read
    /// `poll_interval_ms`.
    pub fn is_async(self) -> bool {
        matches!(self, Self::Bfl | Self::Fal | Self::Replicate)
    }

    /// The model used when a profile names none (`None`: the kind has no
    /// model of its own, e.g. `http`).
    pub fn default_model(self) -> Option<&'static str> {
        match self {
            Self::Openai => Some("gpt-image-1"),
            Self::Gemini => Some("gemini-2.5-flash-image"),
            Self::Dashscope => Some("qwen-image-edit"),
            // The endpoint name after `/v1/`.
            Self::Bfl => Some("flux-kontext-pro"),
            // fal model ids are paths: owner/app[/endpoint].
            Self::Fal => Some("fal-ai/flux-pro/kontext"),
            // Replicate official models are owner/name.
            Self::Replicate => Some("black-forest-labs/flux-kontext-pro"),
            // Shown in `GET /v1/editors`, so nobody takes it for a model.
            Self::Sandbox => Some("sandbox"),
            Self::Http => None,
        }
    }

    /// The provider's base URL when a profile sets no `base_url` (BACKENDS.md,
    /// the `base_url` contract); the client appends the rest of the path.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Self::Openai => Some("https://api.openai.com/v1"),
            Self::Bfl => Some("https://api.bfl.ai"),
            Self::Fal => Some("https://queue.fal.run"),
            Self::Replicate => Some("https://api.replicate.com/v1"),
            Self::Gemini => Some("https://generativelanguage.googleapis.com"),
            Self::Dashscope => Some("https://dashscope-intl.aliyuncs.com/api/v1"),
            Self::Http | Self::Sandbox => None,
        }
    }

    /// How many `/`-separated segments a model id of this kind has: fal ids
    /// are `owner/app` or `owner/app/endpoint...`, Replicate's `owner/name`,
    /// every other kind's a single URL-safe name.
    pub fn model_segments(self) -> std::ops::RangeInclusive<usize> {
        match self {
            Self::Fal => 2..=6,
            Self::Replicate => 2..=2,
            _ => 1..=1,
        }
    }

    /// Calls in flight per process when a profile sets no `max_in_flight`:
    /// the provider's published concurrency where there is one.
    pub fn default_max_in_flight(self, model: Option<&str>) -> usize {
        match self {
            // A self-hosted GPU server works on few edits at once.
            Self::Http => 4,
            // Limited by images per minute (tier 1: a handful) and calls
            // take 60-120 s, so a few in flight already use the quota.
            Self::Openai => 4,
            // Requests-per-minute quotas; calls take ~10 s (unconfirmed
            // per-tier numbers, so a moderate value).
            Self::Gemini => 8,
            // Qwen-Image-Edit is throttled to a few requests per second per
            // account (unconfirmed exact figure).
            Self::Dashscope => 2,
            // BFL: 24 active tasks per account, 6 for Kontext Max.
            Self::Bfl if model.is_some_and(|m| m.contains("kontext-max")) => 6,
            Self::Bfl => 24,
            // fal: 2 concurrent requests for new accounts rising to 40 with
            // credits; more are queued by fal (the wait counts against
            // `timeout_seconds`), so a middle value.
            Self::Fal => 10,
            // Replicate publishes a create rate (600/min), not a concurrency
            // limit; official models scale on their side.
            Self::Replicate => 16,
            // Nothing to overload: as many as a worker is likely to run,
            // so a load test sees the service's own limits.
            Self::Sandbox => 16,
        }
    }

    /// Whether a call whose outcome is unknown (sent, then a timeout, a
    /// broken connection or a 5xx) is sent again inside the call when a
    /// profile sets no `retry_ambiguous`. Only `http`: a self-hosted server
    /// costs nothing per call. Every other kind is paid per call and none
    /// documents an idempotency key (searched: OpenAI images, BFL, fal,
    /// Replicate, Gemini, DashScope), so a resend could pay for the edit
    /// twice; the worker requeues the job visibly instead
    /// (`EditorError::Ambiguous`). `sandbox` behaves like a paid kind, so
    /// that its simulated timeouts exercise that path.
    pub fn retries_ambiguous_by_default(self) -> bool {
        matches!(self, Self::Http)
    }

    /// The longest instruction sent to this kind when a profile sets no
    /// `max_instruction_chars`; a thinker's refined instruction is cut to it.
    pub fn default_max_instruction_chars(self) -> usize {
        match self {
            // BACKENDS.md: the images edits `prompt` takes up to 32,000
            // characters.
            Self::Openai => OPENAI_MAX_PROMPT_CHARS,
            // DashScope's Qwen-Image models read about 800 units of prompt
            // and cut the rest (its pages say characters in some places,
            // tokens in others; unconfirmed): 800 characters is within
            // either reading.
            Self::Dashscope => 800,
            // FLUX Kontext (bfl, fal's and Replicate's default models)
            // encodes the prompt with T5 up to 512 tokens, about 2,000
            // characters of English; the self-hosted reference servers run
            // models of the same size class, and Gemini's limit is far
            // higher but longer instructions do not make better edits. The
            // core default is that conservative value.
            Self::Http | Self::Bfl | Self::Fal | Self::Replicate | Self::Gemini | Self::Sandbox => {
                editthinker_core::DEFAULT_MAX_INSTRUCTION_CHARS
            }
        }
    }

    /// The most `max_instruction_chars` may be set to: the provider's
    /// documented prompt limit, where there is one (a longer prompt is a 400).
    pub fn max_instruction_chars_limit(self) -> Option<usize> {
        match self {
            Self::Openai => Some(OPENAI_MAX_PROMPT_CHARS),
            _ => None,
        }
    }

    /// The optional settings this kind reads; setting any other one is a
    /// configuration error rather than being silently ignored.
    fn accepts(self, field: &str) -> bool {
        let own: &[&str] = match self {
            Self::Http => &["url", "urls", "params"],
            Self::Openai => &[
                "base_url",
                "size",
                "quality",
                "input_fidelity",
                "output_format",
            ],
            Self::Gemini => &["base_url", "seed"],
            Self::Dashscope => &["base_url", "seed", "negative_prompt"],
            Self::Bfl => &[
                "base_url",
                "seed",
                "aspect_ratio",
                "output_format",
                "safety_tolerance",
                "prompt_upsampling",
                "poll_interval_ms",
            ],
            Self::Fal => &[
                "base_url",
                "seed",
                "guidance_scale",
                "output_format",
                "safety_tolerance",
                "num_inference_steps",
                "poll_interval_ms",
            ],
            // Replicate input names differ per model: anything beyond the
            // common ones goes in `input`.
            Self::Replicate => &[
                "base_url",
                "seed",
                "output_format",
                "input",
                "poll_interval_ms",
            ],
            Self::Sandbox => &[
                "seed",
                "latency_ms",
                "refusal_rate",
                "rate_limit_rate",
                "timeout_rate",
            ],
        };
        own.contains(&field)
    }
}

/// OpenAI's images edits `prompt` limit, in characters (BACKENDS.md).
const OPENAI_MAX_PROMPT_CHARS: usize = 32_000;

impl fmt::Display for EditorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[editors.<name>]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditorProfile {
    /// The provider protocol.
    pub kind: EditorKind,
    /// The server's base URL (`http` only: `POST {url}/edit`).
    #[serde(default)]
    pub url: Option<String>,
    /// Several base URLs, used round-robin (instead of `url`; `http` only).
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    /// The provider's base URL, for hosted kinds (default per kind, see
    /// [`EditorKind::default_base_url`]); the client appends the rest of the
    /// path, e.g. `/images/edits`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The model behind the editor (informational for `http`; default per
    /// kind, see [`EditorKind::default_model`]).
    #[serde(default)]
    pub model: Option<String>,
    /// Seed for reproducible edits (`gemini`, `dashscope`, `bfl`, `fal`,
    /// `replicate`; `sandbox`: picks its tint, default 0).
    #[serde(default)]
    pub seed: Option<i64>,
    /// Output size, e.g. `1024x1024` or `auto` (`openai`).
    #[serde(default)]
    pub size: Option<String>,
    /// Rendering quality, e.g. `high` (`openai`).
    #[serde(default)]
    pub quality: Option<String>,
    /// How closely the output keeps the input's details, `high` or `low`
    /// (`openai`).
    #[serde(default)]
    pub input_fidelity: Option<String>,
    /// Encoding of the result, `png`, `jpeg` or `webp` (`openai`); `png` or
    /// `jpeg` (`bfl`, `fal`, `replicate`).
    #[serde(default)]
    pub output_format: Option<String>,
    /// What the edit should avoid (`dashscope`).
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// How strongly the edit follows the prompt (`fal`).
    #[serde(default)]
    pub guidance_scale: Option<f64>,
    /// Moderation tolerance, 0 (strict) to 6 (permissive) (`bfl`; `fal`
    /// takes 1 to 6).
    #[serde(default)]
    pub safety_tolerance: Option<i64>,
    /// Output aspect ratio `W:H`, between `21:9` and `9:21` (`bfl`; default:
    /// the source's).
    #[serde(default)]
    pub aspect_ratio: Option<String>,
    /// Whether the provider rewrites the prompt (`bfl`).
    #[serde(default)]
    pub prompt_upsampling: Option<bool>,
    /// Denoising steps (`fal`, models that take them, e.g. qwen-image-edit).
    #[serde(default)]
    pub num_inference_steps: Option<u32>,
    /// Delay between two polls of an asynchronous provider's request, in
    /// milliseconds (`bfl`, `fal`, `replicate`; default 1000).
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    /// Extra model inputs merged into the prediction's `input` object
    /// (`replicate`, whose input names differ per model, e.g. `guidance`).
    #[serde(default)]
    pub input: Map<String, Value>,
    /// How long each simulated edit takes, in milliseconds (`sandbox` only;
    /// default 500).
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Probability, 0 to 1, that a simulated edit is refused as if by
    /// moderation (`sandbox` only; default 0).
    #[serde(default)]
    pub refusal_rate: Option<f64>,
    /// Probability, 0 to 1, that a simulated attempt is answered 429 Too
    /// Many Requests, retried like a provider's (`sandbox` only; default 0).
    #[serde(default)]
    pub rate_limit_rate: Option<f64>,
    /// Probability, 0 to 1, that a simulated edit times out after it was
    /// sent, its outcome unknown (`sandbox` only; default 0). The three
    /// rates together are at most 1.
    #[serde(default)]
    pub timeout_rate: Option<f64>,
    /// Whether jobs that name no editor use this one.
    #[serde(default)]
    pub default: bool,
    /// Extra fields passed through into the request body (`http` only; e.g.
    /// `num_inference_steps`, `guidance_scale`, `seed`).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Total time allowed for one HTTP attempt, in seconds; for the
    /// asynchronous kinds also the longest wait for a submitted request.
    #[serde(default = "defaults::timeout_seconds")]
    pub timeout_seconds: f64,
    /// Time allowed to establish a connection, in seconds.
    #[serde(default = "defaults::connect_timeout_seconds")]
    pub connect_timeout_seconds: f64,
    /// Retries after the first attempt on connection errors, timeouts, 429 and 5xx.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    /// Base delay of the exponential backoff, in milliseconds.
    #[serde(default = "defaults::retry_base_ms")]
    pub retry_base_ms: u64,
    /// Whether a paid request whose outcome is unknown (sent, then a
    /// timeout, a broken connection or a 5xx other than 503) is sent again
    /// inside the call. Default per kind
    /// ([`EditorKind::retries_ambiguous_by_default`]): `true` for `http`,
    /// `false` for the paid kinds, whose call then ends as
    /// `EditorError::Ambiguous` and the worker requeues the job visibly.
    /// Setting it on a paid kind accepts that such a failure may be paid
    /// twice.
    #[serde(default)]
    pub retry_ambiguous: Option<bool>,
    /// The longest instruction sent to this editor, in characters: a
    /// thinker's refined instruction is cut to it (default per kind, see
    /// [`EditorKind::default_max_instruction_chars`]).
    #[serde(default)]
    pub max_instruction_chars: Option<usize>,
    /// Calls to this editor in flight at once, per process (default per
    /// kind, see [`EditorKind::default_max_in_flight`]).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// The source is resized down so both sides are multiples of this before
    /// it is sent (1 disables; `http` only: hosted kinds get the source size).
    #[serde(default = "defaults::multiple_of")]
    pub multiple_of: u32,
    /// Environment variable holding the API key (`http`: optional bearer
    /// token; required by the hosted kinds, sent as each provider expects).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// What one call that returns an image costs, in the configuration's
    /// `currency` (the usage ledger's; default 0).
    #[serde(default)]
    pub price_per_call: Option<f64>,
}

impl EditorProfile {
    /// A profile of `kind` with every optional setting at its default.
    pub fn new(kind: EditorKind) -> Self {
        Self {
            kind,
            url: None,
            urls: None,
            base_url: None,
            model: None,
            seed: None,
            size: None,
            quality: None,
            input_fidelity: None,
            output_format: None,
            negative_prompt: None,
            guidance_scale: None,
            safety_tolerance: None,
            aspect_ratio: None,
            prompt_upsampling: None,
            num_inference_steps: None,
            poll_interval_ms: None,
            input: Map::new(),
            latency_ms: None,
            refusal_rate: None,
            rate_limit_rate: None,
            timeout_rate: None,
            default: false,
            params: Map::new(),
            timeout_seconds: defaults::timeout_seconds(),
            connect_timeout_seconds: defaults::connect_timeout_seconds(),
            max_retries: defaults::max_retries(),
            retry_base_ms: defaults::retry_base_ms(),
            retry_ambiguous: None,
            max_instruction_chars: None,
            max_in_flight: None,
            multiple_of: defaults::multiple_of(),
            api_key_env: None,
            price_per_call: None,
        }
    }

    /// The model this profile uses: the configured one, else the kind's
    /// default.
    pub fn effective_model(&self) -> Option<String> {
        self.model
            .clone()
            .or_else(|| self.kind.default_model().map(str::to_owned))
    }

    /// The in-flight limit: the configured one, else the kind's default.
    pub fn effective_max_in_flight(&self) -> usize {
        self.max_in_flight.unwrap_or_else(|| {
            self.kind
                .default_max_in_flight(self.effective_model().as_deref())
        })
    }

    /// Whether ambiguous failures of paid requests are retried inside the
    /// call: the configured `retry_ambiguous`, else the kind's default.
    pub fn effective_retry_ambiguous(&self) -> bool {
        self.retry_ambiguous
            .unwrap_or_else(|| self.kind.retries_ambiguous_by_default())
    }

    /// The instruction cap: the configured `max_instruction_chars`, else the
    /// kind's default; 0 or more than the provider's documented limit is an
    /// error naming `editors.<name>.max_instruction_chars`.
    pub fn effective_max_instruction_chars(&self, name: &str) -> Result<usize, EditorConfigError> {
        let Some(chars) = self.max_instruction_chars else {
            return Ok(self.kind.default_max_instruction_chars());
        };
        if chars == 0 {
            return Err(EditorConfigError::invalid(
                name,
                "max_instruction_chars",
                "must be at least 1",
            ));
        }
        match self.kind.max_instruction_chars_limit() {
            Some(limit) if chars > limit => Err(EditorConfigError::invalid(
                name,
                "max_instruction_chars",
                format!(
                    "{chars}: the {} kind accepts prompts of at most {limit} characters",
                    self.kind
                ),
            )),
            _ => Ok(chars),
        }
    }

    /// Refuses optional settings that profile `name`'s kind does not read
    /// (e.g. `seed` for `openai`, which has none), so a typo'd or misplaced
    /// setting is an error instead of being silently ignored.
    pub fn check_settings_apply(&self, name: &str) -> Result<(), EditorConfigError> {
        let set = [
            ("url", self.url.is_some()),
            ("urls", self.urls.is_some()),
            ("params", !self.params.is_empty()),
            ("base_url", self.base_url.is_some()),
            ("seed", self.seed.is_some()),
            ("size", self.size.is_some()),
            ("quality", self.quality.is_some()),
            ("input_fidelity", self.input_fidelity.is_some()),
            ("output_format", self.output_format.is_some()),
            ("negative_prompt", self.negative_prompt.is_some()),
            ("guidance_scale", self.guidance_scale.is_some()),
            ("safety_tolerance", self.safety_tolerance.is_some()),
            ("aspect_ratio", self.aspect_ratio.is_some()),
            ("prompt_upsampling", self.prompt_upsampling.is_some()),
            ("num_inference_steps", self.num_inference_steps.is_some()),
            ("poll_interval_ms", self.poll_interval_ms.is_some()),
            ("input", !self.input.is_empty()),
            ("latency_ms", self.latency_ms.is_some()),
            ("refusal_rate", self.refusal_rate.is_some()),
            ("rate_limit_rate", self.rate_limit_rate.is_some()),
            ("timeout_rate", self.timeout_rate.is_some()),
        ];
        match set
            .iter()
            .find(|(field, is_set)| *is_set && !self.kind.accepts(field))
        {
            Some((field, _)) => {
                let hint = match (*field, self.kind) {
                    ("url" | "urls" | "base_url", EditorKind::Sandbox) => " (it calls no server)",
                    ("latency_ms" | "refusal_rate" | "rate_limit_rate" | "timeout_rate", _) => {
                        " (only the sandbox kind simulates latency and failures)"
                    }
                    ("url" | "urls", kind) if kind.default_base_url().is_some() => {
                        " (hosted kinds take base_url)"
                    }
                    (_, EditorKind::Replicate) => {
                        " (input names differ per Replicate model: set it in input)"
                    }
                    _ => "",
                };
                Err(EditorConfigError::invalid(
                    name,
                    field,
                    format!("not used by the {} kind{hint}", self.kind),
                ))
            }
            None => Ok(()),
        }
    }
}

mod defaults {
    pub fn timeout_seconds() -> f64 {
        300.0
    }
    pub fn connect_timeout_seconds() -> f64 {
        10.0
    }
    pub fn max_retries() -> u32 {
        3
    }
    pub fn retry_base_ms() -> u64 {
        500
    }
    pub fn multiple_of() -> u32 {
        16
    }
}

/// Why the editor configuration cannot be used. Messages name the offending
/// key as `editors.<name>.<field>` so operators can find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditorConfigError {
    /// Several profiles and none has `default = true`.
    #[error("no default editor: mark one [editors.<name>] with default = true")]
    NoDefault,
    /// More than one profile has `default = true`.
    #[error("several default editors ({}): mark only one with default = true", .0.join(", "))]
    SeveralDefaults(Vec<String>),
    /// The kind has no client in this build.
    #[error("editors.{name}.kind: editor kind {kind} is not available in this build yet")]
    KindUnavailable {
        /// Profile name.
        name: String,
        /// The requested kind.
        kind: EditorKind,
    },
    /// The variable named by `api_key_env` is unset or empty.
    #[error("editors.{name}.api_key_env: environment variable {var} is not set or empty")]
    MissingApiKey {
        /// Profile name.
        name: String,
        /// The variable.
        var: String,
    },
    /// Any other invalid setting.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, e.g. `editors.kontext.url`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl EditorConfigError {
    pub(crate) fn invalid(name: &str, field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: format!("editors.{name}.{field}"),
            message: message.into(),
        }
    }
}
