//! The `[thinker]` configuration section and its validation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use editthinker_core::{PromptTemplate, Protocol, Thinker};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::openai::{OpenAiSettings, OpenAiThinker};
use crate::sandbox::{SandboxThinker, DEFAULT_TOKEN_INTERVAL_MS};

/// Which thinker backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThinkerKind {
    /// Any OpenAI-compatible chat-completions server.
    #[default]
    Openai,
    /// In-process mistral.rs (EditThinker-8B or another Qwen3-VL model);
    /// needs a build with the `local` feature (the binary's
    /// `local-thinker`).
    Local,
    /// Test mode: simulated critiques, no network and no model (see
    /// [`SandboxThinker`]). Every answer starts with `[sandbox]`.
    Sandbox,
}

/// The `[thinker]` section (docs/configuration.md). Every field has a default, so an
/// empty section is valid; unknown keys are rejected to catch typos.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThinkerConfig {
    /// Backend kind.
    pub kind: ThinkerKind,
    /// Output protocol the model answers in.
    pub protocol: Protocol,
    /// Base URL of the chat-completions API; `/chat/completions` is appended.
    pub base_url: String,
    /// Model name sent in each request.
    pub model: String,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    /// Operator prompt template replacing our default text.
    pub prompt_template_file: Option<PathBuf>,
    /// Longer image side sent to the model, in pixels.
    pub max_image_edge: u32,
    /// Sampling temperature; the server's default when unset.
    pub temperature: Option<f64>,
    /// Upper bound on generated tokens.
    pub max_tokens: u32,
    /// Total time allowed for one HTTP call.
    pub timeout_seconds: u64,
    /// Extra attempts after a transient failure (connection, timeout, 429, 5xx).
    pub max_retries: u32,
    /// First backoff delay in milliseconds; doubles with each retry.
    pub retry_base_ms: u64,
    /// Expert protocol only: ask for JSON-schema structured output.
    pub structured: bool,
    /// `kind = "openai"`: ask for a streamed answer, so the reasoning reaches
    /// clients live (`turn.thinking` events). Servers that ignore it still work.
    pub stream: bool,
    /// `kind = "openai"`: longest silence, in seconds, between two events
    /// of a streamed answer once its first event has arrived (default 60);
    /// a stream quiet for longer is retried like a broken one. Before the
    /// first event only `timeout_seconds` applies (a busy server may queue
    /// the request a while), and `timeout_seconds` bounds the call
    /// regardless.
    pub stream_idle_timeout_seconds: u64,
    /// `kind = "local"` only: Hugging Face revision (branch, tag or commit)
    /// of `model`; the default branch when unset.
    pub revision: Option<String>,
    /// `kind = "local"` only: weight dtype, `auto`, `bf16`, `f16` or `f32`
    /// (default `auto`: mistral.rs picks one for the device).
    pub dtype: Option<String>,
    /// `kind = "local"` only: quantize in place at load (ISQ), e.g. `q8_0`,
    /// `q4k`, `q6k`, `hqq4`, `fp8`; none by default.
    pub isq: Option<String>,
    /// `kind = "local"` only: `cpu` or `cuda` (default: `cuda` in a build
    /// with the `cuda` feature, else `cpu`).
    pub device: Option<String>,
    /// `kind = "local"` only: nucleus sampling threshold, used when
    /// `temperature` is above 0.
    pub top_p: Option<f64>,
    /// `kind = "local"` only: most critiques generated together in one
    /// batch (default 8).
    pub max_batch: Option<u32>,
    /// `kind = "local"` only: constrain the output with a grammar so it
    /// always parses (default true).
    pub grammar: Option<bool>,
    /// `kind = "sandbox"` only: delay between two streamed tokens, in
    /// milliseconds, 0 to [`MAX_TOKEN_INTERVAL_MS`] (default 15).
    pub token_interval_ms: Option<u64>,
    /// What a million prompt tokens cost, in the configuration's
    /// `currency` (the usage ledger's; default 0).
    pub price_per_million_input_tokens: Option<f64>,
    /// What a million generated tokens cost (default 0).
    pub price_per_million_output_tokens: Option<f64>,
}

impl Default for ThinkerConfig {
    fn default() -> Self {
        Self {
            kind: ThinkerKind::Openai,
            protocol: Protocol::Editthinker,
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "EditThinker-8B".into(),
            api_key_env: None,
            prompt_template_file: None,
            max_image_edge: 1024,
            temperature: None,
            max_tokens: 4096,
            timeout_seconds: 300,
            max_retries: 3,
            retry_base_ms: 500,
            structured: true,
            stream: true,
            stream_idle_timeout_seconds: crate::openai::DEFAULT_STREAM_IDLE_TIMEOUT.as_secs(),
            revision: None,
            dtype: None,
            isq: None,
            device: None,
            top_p: None,
            max_batch: None,
            grammar: None,
            token_interval_ms: None,
            price_per_million_input_tokens: None,
            price_per_million_output_tokens: None,
        }
    }
}

/// Why the `[thinker]` (or the `[verifier]`) section cannot be used; the
/// message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThinkerConfigError {
    /// A setting is invalid.
    #[error("{key}: {message}")]
    Invalid {
        /// The offending key, e.g. `thinker.api_key_env`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl ThinkerConfigError {
    pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            message: message.into(),
        }
    }

    /// The configuration key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Invalid { key, .. } => key,
        }
    }
}

/// The smallest `max_image_edge` we accept: Qwen3-VL's minimum image side.
pub(crate) const MIN_IMAGE_EDGE: u32 = 32;

/// The largest `token_interval_ms` we accept: slower than this, a sandbox
/// critique would take minutes.
pub const MAX_TOKEN_INTERVAL_MS: u64 = 1000;

/// Validates `cfg`, reads the API key and template file it names, and builds
/// the thinker. `kind = "local"` loads a model, which takes time: use
/// [`build_thinker_async`] for it.
pub fn build_thinker(cfg: &ThinkerConfig) -> Result<Arc<dyn Thinker>, ThinkerConfigError> {
    match cfg.kind {
        ThinkerKind::Local => Err(ThinkerConfigError::invalid(
            "thinker.kind",
            "\"local\" loads a model: build it with build_thinker_async",
        )),
        ThinkerKind::Sandbox => {
            let thinker = sandbox(cfg)?;
            tracing::warn!(
                "thinker kind \"sandbox\": critiques are simulated, no model runs (test mode)"
            );
            Ok(Arc::new(thinker))
        }
        ThinkerKind::Openai => {
            let settings = resolve(cfg)?;
            Ok(Arc::new(OpenAiThinker::new(settings)?))
        }
    }
}

/// Builds the thinker of any kind; for `kind = "local"` this loads the
/// model (downloading it first if needed) and returns once it answers.
/// Logs `thinker ready` with the load time.
pub async fn build_thinker_async(
    cfg: &ThinkerConfig,
) -> Result<Arc<dyn Thinker>, ThinkerConfigError> {
    let started = std::time::Instant::now();
    let thinker: Arc<dyn Thinker> = match cfg.kind {
        ThinkerKind::Openai | ThinkerKind::Sandbox => build_thinker(cfg)?,
        ThinkerKind::Local => {
            refuse_sandbox_only(cfg)?;
            load_local(cfg).await?
        }
    };
    tracing::info!(
        kind = ?cfg.kind,
        model = %match cfg.kind {
            ThinkerKind::Sandbox => "(none: simulated)",
            _ => cfg.model.as_str(),
        },
        load_ms = started.elapsed().as_millis() as u64,
        "thinker ready"
    );
    Ok(thinker)
}

#[cfg(feature = "local")]
async fn load_local(cfg: &ThinkerConfig) -> Result<Arc<dyn Thinker>, ThinkerConfigError> {
    let settings = crate::local::LocalSettings::from_config(cfg)?;
    Ok(Arc::new(crate::local::LocalThinker::load(settings).await?))
}

#[cfg(not(feature = "local"))]
async fn load_local(_: &ThinkerConfig) -> Result<Arc<dyn Thinker>, ThinkerConfigError> {
    Err(ThinkerConfigError::invalid("thinker.kind", LOCAL_NOT_BUILT))
}

/// Why `kind = "local"` fails in a build without the in-process thinker.
pub const LOCAL_NOT_BUILT: &str = "\"local\" needs the in-process thinker, which this binary \
    was built without: build it with the `local-thinker` feature \
    (cargo build --release --features local-thinker, or --features cuda for NVIDIA GPUs)";

/// The full names of the keys both remote-model sections (`[thinker]` and
/// `[verifier]`) have, as their errors name them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SectionKeys {
    /// The section itself: `thinker` or `verifier`.
    pub section: &'static str,
    pub base_url: &'static str,
    pub model: &'static str,
    pub api_key_env: &'static str,
    pub prompt_template_file: &'static str,
    pub max_image_edge: &'static str,
    pub temperature: &'static str,
    pub max_tokens: &'static str,
    pub timeout_seconds: &'static str,
}

macro_rules! section_keys {
    ($section:literal) => {
        SectionKeys {
            section: $section,
            base_url: concat!($section, ".base_url"),
            model: concat!($section, ".model"),
            api_key_env: concat!($section, ".api_key_env"),
            prompt_template_file: concat!($section, ".prompt_template_file"),
            max_image_edge: concat!($section, ".max_image_edge"),
            temperature: concat!($section, ".temperature"),
            max_tokens: concat!($section, ".max_tokens"),
            timeout_seconds: concat!($section, ".timeout_seconds"),
        }
    };
}

/// The `[thinker]` keys.
pub(crate) const THINKER_KEYS: SectionKeys = section_keys!("thinker");
/// The `[verifier]` keys.
pub(crate) const VERIFIER_KEYS: SectionKeys = section_keys!("verifier");

/// What one request to a vision model is bounded by: the keys every model
/// section shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLimits {
    pub max_image_edge: u32,
    pub temperature: Option<f64>,
    pub max_tokens: u32,
    pub timeout_seconds: u64,
}

impl RequestLimits {
    /// Checks the limits; an error names the key of `keys`' section.
    pub(crate) fn check(&self, keys: &SectionKeys) -> Result<(), ThinkerConfigError> {
        use ThinkerConfigError as E;

        if self.max_image_edge < MIN_IMAGE_EDGE {
            return Err(E::invalid(
                keys.max_image_edge,
                format!(
                    "must be at least {MIN_IMAGE_EDGE}, got {}",
                    self.max_image_edge
                ),
            ));
        }
        if let Some(t) = self.temperature {
            if !t.is_finite() || t < 0.0 {
                return Err(E::invalid(
                    keys.temperature,
                    format!("must be a non-negative number, got {t}"),
                ));
            }
        }
        if self.max_tokens == 0 {
            return Err(E::invalid(keys.max_tokens, "must be at least 1"));
        }
        if self.timeout_seconds == 0 {
            return Err(E::invalid(keys.timeout_seconds, "must be at least 1"));
        }
        Ok(())
    }
}

/// Reads an operator's prompt template file and checks its text with
/// `parse`, whose error is reported after the file's path.
pub(crate) fn load_template<T, P: std::fmt::Display>(
    keys: &SectionKeys,
    path: &std::path::Path,
    parse: impl FnOnce(&str) -> Result<T, P>,
) -> Result<T, ThinkerConfigError> {
    let key = keys.prompt_template_file;
    let text = std::fs::read_to_string(path).map_err(|e| {
        ThinkerConfigError::invalid(key, format!("cannot read {}: {e}", path.display()))
    })?;
    parse(&text).map_err(|e| ThinkerConfigError::invalid(key, format!("{}: {e}", path.display())))
}

/// Checks the keys both model kinds read (`prompt_template_file`,
/// `max_image_edge`, `temperature`, `max_tokens`, `timeout_seconds`) and
/// loads the prompt template.
pub(crate) fn check_shared(cfg: &ThinkerConfig) -> Result<PromptTemplate, ThinkerConfigError> {
    let template = match &cfg.prompt_template_file {
        None => PromptTemplate::default_for(cfg.protocol),
        Some(path) => load_template(&THINKER_KEYS, path, PromptTemplate::parse)?,
    };
    RequestLimits {
        max_image_edge: cfg.max_image_edge,
        temperature: cfg.temperature,
        max_tokens: cfg.max_tokens,
        timeout_seconds: cfg.timeout_seconds,
    }
    .check(&THINKER_KEYS)?;
    Ok(template)
}

/// Checks a `base_url`: an `http(s)` URL with a host, and no query or
/// fragment.
pub(crate) fn parse_base_url(keys: &SectionKeys, raw: &str) -> Result<Url, ThinkerConfigError> {
    use ThinkerConfigError as E;

    let base_url = Url::parse(raw.trim())
        .map_err(|e| E::invalid(keys.base_url, format!("{raw:?} is not a URL: {e}")))?;
    if !matches!(base_url.scheme(), "http" | "https") || base_url.host().is_none() {
        return Err(E::invalid(
            keys.base_url,
            format!("{raw:?} must be an http:// or https:// URL with a host"),
        ));
    }
    if base_url.query().is_some() || base_url.fragment().is_some() {
        return Err(E::invalid(
            keys.base_url,
            format!("{raw:?} must not have a query or fragment"),
        ));
    }
    Ok(base_url)
}

/// The model name, trimmed; it must not be empty.
pub(crate) fn check_model(keys: &SectionKeys, model: &str) -> Result<String, ThinkerConfigError> {
    match model.trim() {
        "" => Err(ThinkerConfigError::invalid(keys.model, "must not be empty")),
        name => Ok(name.to_string()),
    }
}

/// Reads the API key from the environment variable `api_key_env` names,
/// when it names one: the variable must be set, and not blank.
pub(crate) fn read_api_key(
    keys: &SectionKeys,
    api_key_env: Option<&str>,
) -> Result<Option<String>, ThinkerConfigError> {
    let Some(var) = api_key_env else {
        return Ok(None);
    };
    let problem = match std::env::var(var) {
        Ok(key) if !key.trim().is_empty() => return Ok(Some(key.trim().to_string())),
        Ok(_) => "is empty",
        Err(std::env::VarError::NotPresent) => "is not set",
        Err(std::env::VarError::NotUnicode(_)) => "is not valid UTF-8",
    };
    Err(ThinkerConfigError::invalid(
        keys.api_key_env,
        format!("environment variable {var} {problem}"),
    ))
}

/// Refuses `api_key_env` for `kind = "sandbox"`, which calls no server.
pub(crate) fn refuse_sandbox_api_key(
    keys: &SectionKeys,
    api_key_env: Option<&str>,
) -> Result<(), ThinkerConfigError> {
    match api_key_env {
        Some(_) => Err(ThinkerConfigError::invalid(
            keys.api_key_env,
            "does not apply to kind = \"sandbox\" (it calls no server)",
        )),
        None => Ok(()),
    }
}

/// Refuses the keys only `kind = "local"` reads.
fn refuse_local_only(cfg: &ThinkerConfig) -> Result<(), ThinkerConfigError> {
    let local_only = [
        ("thinker.revision", cfg.revision.is_some()),
        ("thinker.dtype", cfg.dtype.is_some()),
        ("thinker.isq", cfg.isq.is_some()),
        ("thinker.device", cfg.device.is_some()),
        ("thinker.top_p", cfg.top_p.is_some()),
        ("thinker.max_batch", cfg.max_batch.is_some()),
        ("thinker.grammar", cfg.grammar.is_some()),
    ];
    match local_only.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(ThinkerConfigError::invalid(
            key,
            "only applies to kind = \"local\"",
        )),
        None => Ok(()),
    }
}

/// Refuses the keys only `kind = "sandbox"` reads.
fn refuse_sandbox_only(cfg: &ThinkerConfig) -> Result<(), ThinkerConfigError> {
    if cfg.token_interval_ms.is_some() {
        return Err(ThinkerConfigError::invalid(
            "thinker.token_interval_ms",
            "only applies to kind = \"sandbox\"",
        ));
    }
    Ok(())
}

/// Checks a `kind = "sandbox"` section and builds its thinker.
///
/// Keys of the other kinds are refused when they can be told apart from
/// their defaults (`api_key_env` and the `local`-only keys) and otherwise
/// ignored, as `local` does (`base_url`, `model`, `max_retries`,
/// `retry_base_ms`, `structured`, `stream`, `stream_idle_timeout_seconds`).
/// The keys every kind shares are checked ([`check_shared`]) though the
/// sandbox uses none of them, so a section stays valid when its kind
/// changes back.
fn sandbox(cfg: &ThinkerConfig) -> Result<SandboxThinker, ThinkerConfigError> {
    use ThinkerConfigError as E;

    refuse_local_only(cfg)?;
    refuse_sandbox_api_key(&THINKER_KEYS, cfg.api_key_env.as_deref())?;
    check_shared(cfg)?;
    let interval = cfg.token_interval_ms.unwrap_or(DEFAULT_TOKEN_INTERVAL_MS);
    if interval > MAX_TOKEN_INTERVAL_MS {
        return Err(E::invalid(
            "thinker.token_interval_ms",
            format!("must be at most {MAX_TOKEN_INTERVAL_MS}, got {interval}"),
        ));
    }
    Ok(SandboxThinker::new(
        cfg.protocol,
        Duration::from_millis(interval),
    ))
}

/// Turns the raw section into checked settings (environment and files read here).
fn resolve(cfg: &ThinkerConfig) -> Result<OpenAiSettings, ThinkerConfigError> {
    use ThinkerConfigError as E;

    // Keys of the in-process thinker and of the sandbox mean nothing to a
    // remote server.
    refuse_local_only(cfg)?;
    refuse_sandbox_only(cfg)?;

    let base_url = parse_base_url(&THINKER_KEYS, &cfg.base_url)?;
    let model = check_model(&THINKER_KEYS, &cfg.model)?;
    let api_key = read_api_key(&THINKER_KEYS, cfg.api_key_env.as_deref())?;

    let template = check_shared(cfg)?;
    if cfg.stream_idle_timeout_seconds == 0 {
        return Err(E::invalid(
            "thinker.stream_idle_timeout_seconds",
            "must be at least 1",
        ));
    }

    Ok(OpenAiSettings {
        base_url,
        model,
        api_key,
        protocol: cfg.protocol,
        template,
        max_image_edge: cfg.max_image_edge,
        temperature: cfg.temperature,
        max_tokens: cfg.max_tokens,
        timeout: Duration::from_secs(cfg.timeout_seconds),
        retry: OpenAiSettings::retry_policy(
            cfg.max_retries,
            Duration::from_millis(cfg.retry_base_ms),
        ),
        structured: cfg.structured,
        stream: cfg.stream,
        stream_idle_timeout: Duration::from_secs(cfg.stream_idle_timeout_seconds),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(value: serde_json::Value) -> Result<ThinkerConfig, serde_json::Error> {
        serde_json::from_value(value)
    }

    fn build_err(cfg: &ThinkerConfig) -> String {
        match build_thinker(cfg) {
            Ok(_) => panic!("built a thinker from {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_section_gives_defaults() {
        let cfg = config(json!({})).unwrap();
        assert_eq!(cfg, ThinkerConfig::default());
        assert_eq!(cfg.kind, ThinkerKind::Openai);
        assert_eq!(cfg.protocol, Protocol::Editthinker);
        assert_eq!(cfg.base_url, "http://127.0.0.1:8000/v1");
        assert_eq!(cfg.model, "EditThinker-8B");
        assert_eq!((cfg.max_image_edge, cfg.max_tokens), (1024, 4096));
        assert_eq!((cfg.timeout_seconds, cfg.max_retries), (300, 3));
        assert_eq!(cfg.retry_base_ms, 500);
        assert!(cfg.structured);
        assert!(cfg.stream);
        assert_eq!(cfg.stream_idle_timeout_seconds, 60);
        assert_eq!(
            resolve(&cfg).unwrap().stream_idle_timeout,
            Duration::from_secs(60)
        );
        assert_eq!(cfg.temperature, None);
        let thinker = build_thinker(&cfg).unwrap();
        assert_eq!(thinker.protocol(), Protocol::Editthinker);
    }

    #[test]
    fn the_retry_settings_make_the_one_retry_policy() {
        let cfg = ThinkerConfig {
            max_retries: 2,
            retry_base_ms: 40,
            ..ThinkerConfig::default()
        };
        let settings = resolve(&cfg).unwrap();
        assert_eq!(
            settings.retry,
            editthinker_core::RetryPolicy {
                max_retries: 2,
                base: Duration::from_millis(40),
                max_delay: Duration::from_secs(30),
                max_retry_after: Duration::from_secs(120),
            }
        );
    }

    #[test]
    fn every_key_deserializes() {
        let cfg = config(json!({
            "kind": "openai", "protocol": "expert", "base_url": "https://api.example.com/v1",
            "model": "gpt-4.1", "api_key_env": "X", "prompt_template_file": "/tmp/t.txt",
            "max_image_edge": 512, "temperature": 0.3, "max_tokens": 100,
            "timeout_seconds": 5, "max_retries": 1, "retry_base_ms": 10, "structured": false,
            "stream": false, "stream_idle_timeout_seconds": 15
        }))
        .unwrap();
        assert_eq!(cfg.stream_idle_timeout_seconds, 15);
        let idle = ThinkerConfig {
            stream_idle_timeout_seconds: 15,
            ..ThinkerConfig::default()
        };
        assert_eq!(
            resolve(&idle).unwrap().stream_idle_timeout,
            Duration::from_secs(15)
        );
        assert_eq!(cfg.protocol, Protocol::Expert);
        assert_eq!(cfg.temperature, Some(0.3));
        assert!(!cfg.structured);
        assert!(!cfg.stream);
        assert_eq!(cfg.prompt_template_file, Some(PathBuf::from("/tmp/t.txt")));
    }

    #[test]
    fn absent_section_is_none() {
        #[derive(Deserialize)]
        struct Root {
            thinker: Option<ThinkerConfig>,
        }
        let root: Root = serde_json::from_value(json!({})).unwrap();
        assert!(root.thinker.is_none());
    }

    #[test]
    fn unknown_keys_and_kinds_are_rejected() {
        let e = config(json!({"base_ulr": "x"})).unwrap_err().to_string();
        assert!(e.contains("base_ulr"), "{e}");
        assert!(config(json!({"kind": "vllm"})).is_err());
        assert!(config(json!({"protocol": "json"})).is_err());
    }

    #[test]
    fn local_kind_needs_the_async_builder() {
        let cfg = config(json!({"kind": "local"})).unwrap();
        let e = build_err(&cfg);
        assert!(e.starts_with("thinker.kind: "), "{e}");
        assert!(e.contains("build_thinker_async"), "{e}");
    }

    #[test]
    fn local_only_keys_are_rejected_for_openai() {
        for (key, value) in [
            ("revision", json!("main")),
            ("dtype", json!("bf16")),
            ("isq", json!("q4k")),
            ("device", json!("cuda")),
            ("top_p", json!(0.9)),
            ("max_batch", json!(4)),
            ("grammar", json!(false)),
        ] {
            let cfg = config(json!({ key: value })).unwrap();
            let e = build_err(&cfg);
            assert_eq!(
                e,
                format!("thinker.{key}: only applies to kind = \"local\""),
                "{key}"
            );
        }
    }

    fn sandbox_err(value: serde_json::Value) -> ThinkerConfigError {
        match sandbox(&config(value).unwrap()) {
            Ok(t) => panic!("built {t:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn sandbox_kind_deserializes_and_builds() {
        let cfg = config(json!({"kind": "sandbox"})).unwrap();
        assert_eq!(cfg.kind, ThinkerKind::Sandbox);
        assert_eq!(cfg.token_interval_ms, None);
        assert_eq!(
            sandbox(&cfg).unwrap().token_interval(),
            Duration::from_millis(15)
        );
        assert_eq!(
            build_thinker(&cfg).unwrap().protocol(),
            Protocol::Editthinker
        );

        let cfg = config(json!({"kind": "sandbox", "protocol": "expert", "token_interval_ms": 0}))
            .unwrap();
        assert_eq!(cfg.token_interval_ms, Some(0));
        assert_eq!(sandbox(&cfg).unwrap().token_interval(), Duration::ZERO);
        assert_eq!(build_thinker(&cfg).unwrap().protocol(), Protocol::Expert);

        // As a serialized section it comes back the same.
        let text = serde_json::to_string(&cfg).unwrap();
        assert!(text.contains("\"kind\":\"sandbox\""), "{text}");
        assert_eq!(serde_json::from_str::<ThinkerConfig>(&text).unwrap(), cfg);
    }

    #[tokio::test]
    async fn the_async_builder_builds_the_sandbox() {
        let cfg = config(json!({"kind": "sandbox", "token_interval_ms": 3})).unwrap();
        let thinker = build_thinker_async(&cfg).await.unwrap();
        assert_eq!(thinker.probe().await, Ok(()));
    }

    #[test]
    fn sandbox_refuses_the_other_kinds_keys() {
        let e = sandbox_err(json!({"kind": "sandbox", "api_key_env": "X"}));
        assert_eq!(
            e.to_string(),
            "thinker.api_key_env: does not apply to kind = \"sandbox\" (it calls no server)"
        );
        for (key, value) in [("revision", json!("main")), ("grammar", json!(true))] {
            let e = sandbox_err(json!({"kind": "sandbox", key: value}));
            assert_eq!(
                e.to_string(),
                format!("thinker.{key}: only applies to kind = \"local\"")
            );
        }
        // Keys with defaults are ignored, as for `local`.
        let cfg = config(json!({
            "kind": "sandbox", "base_url": "http://elsewhere:9/v1", "model": "m",
            "stream": false, "max_retries": 0
        }))
        .unwrap();
        assert!(build_thinker(&cfg).is_ok());
        // The shared keys are still checked.
        let e = sandbox_err(json!({"kind": "sandbox", "max_tokens": 0}));
        assert_eq!(e.key(), "thinker.max_tokens");
    }

    #[test]
    fn token_interval_is_bounded() {
        let cfg = config(json!({"kind": "sandbox", "token_interval_ms": 1000})).unwrap();
        assert!(sandbox(&cfg).is_ok());
        let e = sandbox_err(json!({"kind": "sandbox", "token_interval_ms": 1001}));
        assert_eq!(
            e.to_string(),
            "thinker.token_interval_ms: must be at most 1000, got 1001"
        );
        assert!(config(json!({"kind": "sandbox", "token_interval_ms": -1})).is_err());
    }

    #[tokio::test]
    async fn token_interval_is_refused_for_the_model_kinds() {
        let cfg = config(json!({"token_interval_ms": 15})).unwrap();
        assert_eq!(
            build_err(&cfg),
            "thinker.token_interval_ms: only applies to kind = \"sandbox\""
        );
        let cfg = config(json!({"kind": "local", "token_interval_ms": 15})).unwrap();
        match build_thinker_async(&cfg).await {
            Ok(_) => panic!("built a local thinker with token_interval_ms"),
            Err(e) => assert_eq!(e.key(), "thinker.token_interval_ms"),
        }
    }

    #[test]
    fn malformed_base_url_is_rejected() {
        for url in ["not a url", "ftp://host/v1", "http://", "http://h/v1?x=1"] {
            let cfg = ThinkerConfig {
                base_url: url.into(),
                ..Default::default()
            };
            let e = build_err(&cfg);
            assert!(e.starts_with("thinker.base_url: "), "{url}: {e}");
        }
    }

    #[test]
    fn missing_or_empty_api_key_variable_is_rejected() {
        let cfg = ThinkerConfig {
            api_key_env: Some("EDITTHINKER_TEST_SURELY_UNSET_KEY".into()),
            ..Default::default()
        };
        assert_eq!(
            build_err(&cfg),
            "thinker.api_key_env: environment variable EDITTHINKER_TEST_SURELY_UNSET_KEY is not set"
        );
        std::env::set_var("EDITTHINKER_TEST_EMPTY_KEY", "  ");
        let cfg = ThinkerConfig {
            api_key_env: Some("EDITTHINKER_TEST_EMPTY_KEY".into()),
            ..Default::default()
        };
        assert_eq!(
            build_err(&cfg),
            "thinker.api_key_env: environment variable EDITTHINKER_TEST_EMPTY_KEY is empty"
        );
    }

    #[test]
    fn template_file_must_be_readable_and_valid() {
        let cfg = ThinkerConfig {
            prompt_template_file: Some("/nonexistent/editthinker/template.txt".into()),
            ..Default::default()
        };
        let e = build_err(&cfg);
        assert!(
            e.starts_with("thinker.prompt_template_file: cannot read"),
            "{e}"
        );

        let dir = std::env::temp_dir().join(format!("editthinker-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "{original_instruction} {rewritten_prompt} {seed}").unwrap();
        let cfg = ThinkerConfig {
            prompt_template_file: Some(bad),
            ..Default::default()
        };
        let e = build_err(&cfg);
        assert!(e.starts_with("thinker.prompt_template_file: "), "{e}");
        assert!(e.contains("unknown placeholder {seed}"), "{e}");

        let missing = dir.join("missing.txt");
        std::fs::write(&missing, "{original_instruction} only").unwrap();
        let cfg = ThinkerConfig {
            prompt_template_file: Some(missing),
            ..Default::default()
        };
        assert!(build_err(&cfg).contains("lacks the placeholder {rewritten_prompt}"));

        let good = dir.join("good.txt");
        std::fs::write(&good, "{original_instruction} then {rewritten_prompt}").unwrap();
        let cfg = ThinkerConfig {
            prompt_template_file: Some(good),
            ..Default::default()
        };
        assert!(build_thinker(&cfg).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn numeric_limits_are_checked() {
        let cases = [
            (
                ThinkerConfig {
                    max_image_edge: 16,
                    ..Default::default()
                },
                "thinker.max_image_edge",
            ),
            (
                ThinkerConfig {
                    temperature: Some(-1.0),
                    ..Default::default()
                },
                "thinker.temperature",
            ),
            (
                ThinkerConfig {
                    max_tokens: 0,
                    ..Default::default()
                },
                "thinker.max_tokens",
            ),
            (
                ThinkerConfig {
                    timeout_seconds: 0,
                    ..Default::default()
                },
                "thinker.timeout_seconds",
            ),
            (
                ThinkerConfig {
                    stream_idle_timeout_seconds: 0,
                    ..Default::default()
                },
                "thinker.stream_idle_timeout_seconds",
            ),
            (
                ThinkerConfig {
                    model: " ".into(),
                    ..Default::default()
                },
                "thinker.model",
            ),
        ];
        for (cfg, key) in cases {
            match build_thinker(&cfg) {
                Ok(_) => panic!("accepted {cfg:?}"),
                Err(e) => assert_eq!(e.key(), key),
            }
        }
    }
}
