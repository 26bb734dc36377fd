//! The `[editors.<name>]` configuration tables (DESIGN.md §9).

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
    /// Black Forest Labs (not available in this build yet).
    Bfl,
    /// fal.ai queue API (not available in this build yet).
    Fal,
    /// Replicate predictions (not available in this build yet).
    Replicate,
    /// Google Gemini image models (`generateContent`).
    Gemini,
    /// Alibaba DashScope Qwen-Image-Edit (multimodal generation).
    Dashscope,
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
        }
    }

    /// Whether this build has a client for the kind.
    pub fn is_available(self) -> bool {
        matches!(
            self,
            Self::Http | Self::Openai | Self::Gemini | Self::Dashscope
        )
    }

    /// The model used when a profile names none (`None`: the kind has no
    /// model of its own, e.g. `http`).
    pub fn default_model(self) -> Option<&'static str> {
        match self {
            Self::Openai => Some("gpt-image-1"),
            Self::Gemini => Some("gemini-2.5-flash-image"),
            Self::Dashscope => Some("qwen-image-edit"),
            Self::Http | Self::Bfl | Self::Fal | Self::Replicate => None,
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
            Self::Http => None,
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
            // Not built yet: nothing to check against.
            Self::Bfl | Self::Fal | Self::Replicate => return true,
        };
        own.contains(&field)
    }
}

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
    /// Seed for reproducible edits (`gemini`, `dashscope`).
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
    /// Encoding of the result, `png`, `jpeg` or `webp` (`openai`).
    #[serde(default)]
    pub output_format: Option<String>,
    /// What the edit should avoid (`dashscope`).
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// Whether jobs that name no editor use this one.
    #[serde(default)]
    pub default: bool,
    /// Extra fields passed through into the request body (`http` only; e.g.
    /// `num_inference_steps`, `guidance_scale`, `seed`).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Total time allowed for one HTTP attempt, in seconds.
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
    /// Calls to this editor in flight at once, per process.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// The source is resized down so both sides are multiples of this before
    /// it is sent (1 disables; `http` only: hosted kinds get the source size).
    #[serde(default = "defaults::multiple_of")]
    pub multiple_of: u32,
    /// Environment variable holding the API key (`http`: optional bearer
    /// token; required by the hosted kinds, sent as each provider expects).
    #[serde(default)]
    pub api_key_env: Option<String>,
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
            default: false,
            params: Map::new(),
            timeout_seconds: defaults::timeout_seconds(),
            connect_timeout_seconds: defaults::connect_timeout_seconds(),
            max_retries: defaults::max_retries(),
            retry_base_ms: defaults::retry_base_ms(),
            max_in_flight: defaults::max_in_flight(),
            multiple_of: defaults::multiple_of(),
            api_key_env: None,
        }
    }

    /// The model this profile uses: the configured one, else the kind's
    /// default.
    pub fn effective_model(&self) -> Option<String> {
        self.model
            .clone()
            .or_else(|| self.kind.default_model().map(str::to_owned))
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
        ];
        match set
            .iter()
            .find(|(field, is_set)| *is_set && !self.kind.accepts(field))
        {
            Some((field, _)) => {
                let hint = match (*field, self.kind.default_base_url()) {
                    ("url" | "urls", Some(_)) => " (hosted kinds take base_url)",
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
    pub fn max_in_flight() -> usize {
        4
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
