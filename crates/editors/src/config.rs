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
    /// OpenAI image edits (not available in this build yet).
    Openai,
    /// Black Forest Labs (not available in this build yet).
    Bfl,
    /// fal.ai queue API (not available in this build yet).
    Fal,
    /// Replicate predictions (not available in this build yet).
    Replicate,
    /// Google Gemini image models (not available in this build yet).
    Gemini,
    /// Alibaba DashScope Qwen-Image-Edit (not available in this build yet).
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
        matches!(self, Self::Http)
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
    /// The server's base URL (`http`: `POST {url}/edit`).
    #[serde(default)]
    pub url: Option<String>,
    /// Several base URLs, used round-robin (instead of `url`).
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    /// The model behind the editor (informational for `http`).
    #[serde(default)]
    pub model: Option<String>,
    /// Whether jobs that name no editor use this one.
    #[serde(default)]
    pub default: bool,
    /// Extra fields passed through into the request body (e.g.
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
    /// it is sent (1 disables).
    #[serde(default = "defaults::multiple_of")]
    pub multiple_of: u32,
    /// Environment variable holding the API key (sent as a bearer token).
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
            model: None,
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
