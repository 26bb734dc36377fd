//! Checked settings of the `local` thinker, from the `[thinker]` section.

use std::path::Path;
use std::time::Duration;

use editthinker_core::{PromptTemplate, Protocol};

use crate::config::{ThinkerConfig, ThinkerConfigError, ThinkerKind};
use crate::local::grammar::MIN_GRAMMAR_TOKENS;
use crate::local::images::MIN_SIDE;

/// The Hugging Face id loaded when `model` is left at the section default.
pub const DEFAULT_LOCAL_MODEL: &str = "appletea2333/EditThinker-8B";

/// The `[thinker]` section's default `model` (a name for remote servers);
/// for `kind = "local"` it stands for [`DEFAULT_LOCAL_MODEL`].
const SECTION_DEFAULT_MODEL: &str = "EditThinker-8B";

/// Default `max_batch`.
const DEFAULT_MAX_BATCH: u32 = 8;

/// Weight dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LocalDType {
    /// mistral.rs decides (BF16 or F16 where supported).
    #[default]
    Auto,
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
    /// float32 (fastest on CPUs, twice the memory of bf16).
    F32,
}

impl LocalDType {
    pub(crate) fn to_mistralrs(self) -> mistralrs::ModelDType {
        match self {
            Self::Auto => mistralrs::ModelDType::Auto,
            Self::Bf16 => mistralrs::ModelDType::BF16,
            Self::F16 => mistralrs::ModelDType::F16,
            Self::F32 => mistralrs::ModelDType::F32,
        }
    }
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalDevice {
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (needs a build with the `cuda` feature).
    Cuda,
}

impl Default for LocalDevice {
    fn default() -> Self {
        if cfg!(feature = "cuda") {
            Self::Cuda
        } else {
            Self::Cpu
        }
    }
}

/// Checked settings for [`super::LocalThinker`].
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// Hugging Face model id, or a local model directory.
    pub model: String,
    /// Hub revision; the default branch when `None`.
    pub revision: Option<String>,
    /// Weight dtype.
    pub dtype: LocalDType,
    /// In-situ quantization type (as mistral.rs spells it, e.g. `q4k`).
    pub isq: Option<String>,
    /// Device.
    pub device: LocalDevice,
    /// The output protocol the model answers in.
    pub protocol: Protocol,
    /// Prompt template, rendered with both instructions.
    pub template: PromptTemplate,
    /// Longer image side given to the model.
    pub max_image_edge: u32,
    /// Sampling temperature; greedy decoding when `None` or 0.
    pub temperature: Option<f64>,
    /// Nucleus sampling threshold (with a temperature above 0).
    pub top_p: Option<f64>,
    /// Most generated tokens per critique.
    pub max_tokens: u32,
    /// Most sequences batched together.
    pub max_batch: usize,
    /// Constrain the output with a grammar.
    pub grammar: bool,
    /// Time allowed for one critique.
    pub timeout: Duration,
}

impl LocalSettings {
    /// Settings for a model (id or directory) with every other value at its
    /// default: the EditThinker protocol and our prompt, grammar on, greedy
    /// decoding, 4096 tokens, 300 s, auto dtype, the build's default device.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            revision: None,
            dtype: LocalDType::Auto,
            isq: None,
            device: LocalDevice::default(),
            protocol: Protocol::Editthinker,
            template: PromptTemplate::default_for(Protocol::Editthinker),
            max_image_edge: 1024,
            temperature: None,
            top_p: None,
            max_tokens: 4096,
            max_batch: DEFAULT_MAX_BATCH as usize,
            grammar: true,
            timeout: Duration::from_secs(300),
        }
    }

    /// Checks a `[thinker]` section with `kind = "local"` (reading its
    /// template file); errors name the key at fault.
    ///
    /// Keys of the remote kind are refused when they can be told apart from
    /// their defaults (`api_key_env`) and otherwise ignored (`base_url`,
    /// `max_retries`, `retry_base_ms`, `structured`, `stream`,
    /// `stream_idle_timeout_seconds`: the local thinker always streams, and
    /// a failed critique is retried by the worker).
    pub fn from_config(cfg: &ThinkerConfig) -> Result<Self, ThinkerConfigError> {
        use ThinkerConfigError as E;

        if cfg.kind != ThinkerKind::Local {
            return Err(E::invalid("thinker.kind", "expected \"local\""));
        }
        if cfg.api_key_env.is_some() {
            return Err(E::invalid(
                "thinker.api_key_env",
                "does not apply to kind = \"local\" (use HF_TOKEN for gated hub models)",
            ));
        }

        let model = resolve_model(&cfg.model)?;

        let revision = match cfg.revision.as_deref().map(str::trim) {
            None => None,
            Some("") => return Err(E::invalid("thinker.revision", "must not be empty")),
            Some(_) if Path::new(&model).is_dir() => {
                return Err(E::invalid(
                    "thinker.revision",
                    "does not apply to a local model directory",
                ))
            }
            Some(r) => Some(r.to_string()),
        };

        let dtype = match cfg.dtype.as_deref().map(|d| d.trim().to_ascii_lowercase()) {
            None => LocalDType::Auto,
            Some(d) => match d.as_str() {
                "auto" => LocalDType::Auto,
                "bf16" => LocalDType::Bf16,
                "f16" => LocalDType::F16,
                "f32" => LocalDType::F32,
                _ => {
                    return Err(E::invalid(
                        "thinker.dtype",
                        format!("{d:?} is not one of auto, bf16, f16, f32"),
                    ))
                }
            },
        };

        let device = match cfg.device.as_deref().map(|d| d.trim().to_ascii_lowercase()) {
            None => LocalDevice::default(),
            Some(d) => match d.as_str() {
                "cpu" => LocalDevice::Cpu,
                "cuda" if cfg!(feature = "cuda") => LocalDevice::Cuda,
                "cuda" => {
                    return Err(E::invalid(
                        "thinker.device",
                        "this build has no CUDA support: rebuild with `--features cuda` \
                         (needs nvcc and CUDA_COMPUTE_CAP)",
                    ))
                }
                _ => {
                    return Err(E::invalid(
                        "thinker.device",
                        format!("{d:?} is not one of cpu, cuda"),
                    ))
                }
            },
        };

        let isq = match cfg.isq.as_deref().map(str::trim) {
            None => None,
            Some(q) => {
                mistralrs::parse_isq_value(q, None)
                    .map_err(|e| E::invalid("thinker.isq", format!("{q:?}: {e}")))?;
                Some(q.to_ascii_lowercase())
            }
        };

        // Qwen3-VL's minimum side is the floor the shared check enforces.
        const _: () = assert!(MIN_SIDE == crate::config::MIN_IMAGE_EDGE);
        let template = crate::config::check_shared(cfg)?;
        if let Some(p) = cfg.top_p {
            if !p.is_finite() || p <= 0.0 || p > 1.0 {
                return Err(E::invalid(
                    "thinker.top_p",
                    format!("must be in (0, 1], got {p}"),
                ));
            }
        }
        let grammar = cfg.grammar.unwrap_or(true);
        if grammar && cfg.max_tokens < MIN_GRAMMAR_TOKENS {
            return Err(E::invalid(
                "thinker.max_tokens",
                format!(
                    "must be at least {MIN_GRAMMAR_TOKENS} with thinker.grammar on, got {}",
                    cfg.max_tokens
                ),
            ));
        }
        let max_batch = cfg.max_batch.unwrap_or(DEFAULT_MAX_BATCH);
        if max_batch == 0 {
            return Err(E::invalid("thinker.max_batch", "must be at least 1"));
        }
        Ok(Self {
            model,
            revision,
            dtype,
            isq,
            device,
            protocol: cfg.protocol,
            template,
            max_image_edge: cfg.max_image_edge,
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            max_tokens: cfg.max_tokens,
            max_batch: max_batch as usize,
            grammar,
            timeout: Duration::from_secs(cfg.timeout_seconds),
        })
    }
}

/// A local directory (which must hold `config.json`), or a hub id
/// `owner/name`. The section default `EditThinker-8B` means
/// [`DEFAULT_LOCAL_MODEL`] unless a directory of that name exists.
fn resolve_model(model: &str) -> Result<String, ThinkerConfigError> {
    let model = model.trim();
    let bad = |m: String| ThinkerConfigError::invalid("thinker.model", m);
    if model.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    let path = Path::new(model);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(bad(format!(
                "directory {model:?} has no config.json: not a model directory"
            )));
        }
        return Ok(model.to_string());
    }
    if model == SECTION_DEFAULT_MODEL {
        return Ok(DEFAULT_LOCAL_MODEL.to_string());
    }
    let looks_like_path =
        model.starts_with('/') || model.starts_with('.') || model.starts_with('~');
    let parts: Vec<&str> = model.split('/').collect();
    let hub_id = parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if looks_like_path || !hub_id {
        return Err(bad(format!(
            "{model:?} is neither an existing model directory nor a Hugging Face id like {DEFAULT_LOCAL_MODEL:?}"
        )));
    }
    Ok(model.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn local(extra: serde_json::Value) -> Result<LocalSettings, ThinkerConfigError> {
        let mut value = json!({"kind": "local"});
        value
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let cfg: ThinkerConfig = serde_json::from_value(value).unwrap();
        LocalSettings::from_config(&cfg)
    }

    fn key_of(extra: serde_json::Value) -> &'static str {
        local(extra.clone())
            .map(|s| panic!("accepted {extra}: {s:?}"))
            .unwrap_err()
            .key()
    }

    #[test]
    fn defaults() {
        let s = local(json!({})).unwrap();
        assert_eq!(s.model, DEFAULT_LOCAL_MODEL);
        assert_eq!(s.revision, None);
        assert_eq!(s.dtype, LocalDType::Auto);
        assert_eq!(s.isq, None);
        assert_eq!(s.device, LocalDevice::default());
        assert_eq!(s.max_image_edge, 1024);
        assert_eq!((s.temperature, s.top_p), (None, None));
        assert_eq!((s.max_tokens, s.max_batch), (4096, 8));
        assert!(s.grammar);
        assert_eq!(s.timeout, Duration::from_secs(300));
        assert_eq!(s.protocol, Protocol::Editthinker);
    }

    #[test]
    fn every_local_key() {
        let s = local(json!({
            "model": "someone/Some-VL_2.5", "revision": "abc123", "dtype": "BF16",
            "isq": "Q4K", "device": "cpu", "temperature": 0.7, "top_p": 0.8,
            "max_tokens": 512, "max_batch": 2, "grammar": false, "timeout_seconds": 9,
            "max_image_edge": 512, "protocol": "expert",
            // Remote-only keys are ignored.
            "base_url": "http://ignored", "max_retries": 1, "structured": false,
        }))
        .unwrap();
        assert_eq!(s.model, "someone/Some-VL_2.5");
        assert_eq!(s.revision.as_deref(), Some("abc123"));
        assert_eq!(s.dtype, LocalDType::Bf16);
        assert_eq!(s.isq.as_deref(), Some("q4k"));
        assert_eq!(s.device, LocalDevice::Cpu);
        assert_eq!((s.temperature, s.top_p), (Some(0.7), Some(0.8)));
        assert_eq!((s.max_tokens, s.max_batch, s.grammar), (512, 2, false));
        assert_eq!(s.timeout, Duration::from_secs(9));
        assert_eq!(s.protocol, Protocol::Expert);
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(key_of(json!({"model": "/no/such/dir"})), "thinker.model");
        assert_eq!(key_of(json!({"model": "not an id"})), "thinker.model");
        assert_eq!(key_of(json!({"model": "a/b/c"})), "thinker.model");
        assert_eq!(key_of(json!({"model": " "})), "thinker.model");
        assert_eq!(key_of(json!({"revision": ""})), "thinker.revision");
        assert_eq!(key_of(json!({"dtype": "int8"})), "thinker.dtype");
        assert_eq!(key_of(json!({"isq": "q9z"})), "thinker.isq");
        assert_eq!(key_of(json!({"device": "tpu"})), "thinker.device");
        assert_eq!(key_of(json!({"top_p": 0.0})), "thinker.top_p");
        assert_eq!(key_of(json!({"top_p": 1.5})), "thinker.top_p");
        assert_eq!(key_of(json!({"temperature": -1.0})), "thinker.temperature");
        assert_eq!(key_of(json!({"max_tokens": 0})), "thinker.max_tokens");
        assert_eq!(key_of(json!({"max_tokens": 64})), "thinker.max_tokens");
        assert_eq!(key_of(json!({"max_batch": 0})), "thinker.max_batch");
        assert_eq!(
            key_of(json!({"timeout_seconds": 0})),
            "thinker.timeout_seconds"
        );
        assert_eq!(
            key_of(json!({"max_image_edge": 16})),
            "thinker.max_image_edge"
        );
        assert_eq!(key_of(json!({"api_key_env": "X"})), "thinker.api_key_env");
        assert_eq!(
            key_of(json!({"prompt_template_file": "/no/such/template.txt"})),
            "thinker.prompt_template_file"
        );
        // Without the grammar, short generations are fine.
        assert!(local(json!({"max_tokens": 64, "grammar": false})).is_ok());
    }

    #[test]
    fn cuda_needs_the_feature() {
        let r = local(json!({"device": "cuda"}));
        if cfg!(feature = "cuda") {
            assert_eq!(r.unwrap().device, LocalDevice::Cuda);
        } else {
            let e = r.unwrap_err();
            assert_eq!(e.key(), "thinker.device");
            assert!(e.to_string().contains("--features cuda"), "{e}");
        }
    }

    #[test]
    fn model_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_string();
        // A directory without config.json is refused.
        assert_eq!(key_of(json!({"model": path})), "thinker.model");
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert_eq!(local(json!({"model": path})).unwrap().model, path);
        assert_eq!(
            key_of(json!({"model": path, "revision": "main"})),
            "thinker.revision"
        );
    }
}
