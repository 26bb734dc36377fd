//! Layered configuration (DESIGN.md §9): built-in defaults < TOML file <
//! `EDITTHINKER_*` environment variables (nested keys joined with `__`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use editthinker_api::Limits;
use editthinker_editors::EditorProfile;
use editthinker_thinker::ThinkerConfig;
use editthinker_worker::WorkerSettings;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::telemetry::LogConfig;

/// The default configuration file, read when present and no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "editthinker.toml";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the API listens on.
    pub listen: String,
    /// `sqlite://path` (embedded default) or `postgres://…`.
    pub database_url: String,
    /// `file://folder` (default `file://data/blobs`) or `s3://bucket/prefix`.
    pub blob_url: String,
    /// Let image URLs target loopback, private, link-local or metadata addresses.
    pub allow_private_image_urls: bool,
    /// Let webhook URLs target such addresses.
    pub allow_private_webhook_urls: bool,
    /// `[webhooks]`: signing and delivery.
    pub webhooks: WebhooksConfig,
    /// `[http]`: what browsers may do.
    pub http: HttpConfig,
    /// `[retention]`: how long finished jobs are kept.
    pub retention: RetentionConfig,
    /// Input limits.
    pub limits: LimitsConfig,
    /// Worker settings.
    pub worker: WorkerConfig,
    /// The thinker; jobs are refused while it is absent.
    pub thinker: Option<ThinkerConfig>,
    /// Editors by the name clients use.
    pub editors: BTreeMap<String, EditorProfile>,
    /// Logging.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://data/editthinker.db".into(),
            blob_url: "file://data/blobs".into(),
            allow_private_image_urls: false,
            allow_private_webhook_urls: false,
            webhooks: WebhooksConfig::default(),
            http: HttpConfig::default(),
            retention: RetentionConfig::default(),
            limits: LimitsConfig::default(),
            worker: WorkerConfig::default(),
            thinker: None,
            editors: BTreeMap::new(),
            log: LogConfig::default(),
        }
    }
}

/// `[limits]`: what clients may send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest source image in bytes (default 20 MiB).
    pub max_image_bytes: usize,
    /// Largest source image in pixels (default 40 MP).
    pub max_pixels: u64,
    /// Longest instruction in characters (default 4,000).
    pub max_instruction_chars: usize,
    /// Time allowed to fetch an image URL (default 20 s).
    pub image_fetch_timeout_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = Limits::default();
        Self {
            max_image_bytes: d.max_image_bytes,
            max_pixels: d.max_pixels,
            max_instruction_chars: d.max_instruction_chars,
            image_fetch_timeout_seconds: d.image_fetch_timeout.as_secs(),
        }
    }
}

/// `[retention]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a finished job is kept (with its turns, events, deliveries,
    /// keys and blobs); 0 keeps them for ever.
    pub days: u32,
    /// Seconds between sweeps.
    pub sweep_interval_seconds: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            days: 7,
            sweep_interval_seconds: 300,
        }
    }
}

impl RetentionConfig {
    /// How long finished jobs are kept; `None`: for ever.
    pub fn keep(&self) -> Option<Duration> {
        (self.days > 0).then(|| Duration::from_secs(u64::from(self.days) * 86_400))
    }
}

/// `[http]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Origins (`https://app.example`) whose pages may call the API from a
    /// browser (CORS); default none.
    pub cors_allowed_origins: Vec<String>,
}

/// `[webhooks]`: how job events are signed and delivered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// The environment variable holding the `whsec_…` signing secret;
    /// without it, jobs with a webhook are refused.
    pub secret_env: String,
    /// Delays between attempts, in seconds; after the last one fails the
    /// delivery is marked failed. Default about 24 h in all.
    pub retry_schedule_seconds: Vec<f64>,
    /// Time allowed for one attempt.
    pub timeout_seconds: f64,
    /// Attempts in flight at once per destination host (per process).
    pub max_per_host: usize,
    /// Longest wait between looks for due deliveries, in milliseconds
    /// (new events wake the loop at once).
    pub poll_interval_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            secret_env: "WEBHOOK_SECRET".into(),
            retry_schedule_seconds: editthinker_webhooks::RetrySchedule::default()
                .delays()
                .iter()
                .map(Duration::as_secs_f64)
                .collect(),
            timeout_seconds: 10.0,
            max_per_host: 8,
            poll_interval_ms: 1000,
        }
    }
}

impl WebhooksConfig {
    /// The signing secret, when its variable is set; an error when it is
    /// set but not a valid `whsec_…` value.
    pub fn secret(&self) -> Result<Option<editthinker_webhooks::Secret>, ConfigError> {
        match std::env::var(&self.secret_env) {
            Err(_) => Ok(None),
            Ok(value) => editthinker_webhooks::Secret::parse(&value)
                .map(Some)
                .map_err(|e| ConfigError::Invalid {
                    key: "webhooks.secret_env",
                    rule: format!(
                        "the variable {} is not a whsec_ secret: {e}",
                        self.secret_env
                    ),
                }),
        }
    }
}

/// `[worker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs in flight per worker process.
    pub concurrency: usize,
    /// Lease length in seconds.
    pub lease_seconds: u64,
    /// Heartbeat interval in seconds (must be shorter than the lease).
    pub heartbeat_seconds: u64,
    /// Attempts a job gets before it fails for good.
    pub max_attempts: u32,
    /// Longest wait between claim attempts, in milliseconds.
    pub poll_interval_ms: u64,
    /// On shutdown, time for jobs to finish their step in progress.
    pub shutdown_grace_seconds: u64,
    /// First delay before retrying a transiently failed job, in milliseconds.
    pub retry_base_ms: u64,
    /// Thinker calls per critique when the answer does not parse.
    pub parse_attempts: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            lease_seconds: 30,
            heartbeat_seconds: 5,
            max_attempts: 3,
            poll_interval_ms: 1000,
            shutdown_grace_seconds: 30,
            retry_base_ms: 5000,
            parse_attempts: 3,
        }
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or typing the layers failed.
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    /// A value breaks a rule.
    #[error("{key}: {rule}")]
    Invalid {
        /// Dotted key.
        key: &'static str,
        /// The rule.
        rule: String,
    },
}

impl Config {
    /// Loads the layers and validates the result. `path` is the `--config`
    /// file; without it, `editthinker.toml` is read when present.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        match path {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Invalid {
                        key: "--config",
                        rule: format!("{} does not exist", path.display()),
                    });
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        figment = figment.merge(
            Env::prefixed("EDITTHINKER_")
                .split("__")
                .ignore(&["config"]),
        );
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                key: "database_url",
                rule: format!(
                    "{:?} must start with sqlite:// or postgres://",
                    self.database_url
                ),
            });
        }
        if !(self.blob_url.starts_with("file://") || self.blob_url.starts_with("s3://")) {
            return Err(ConfigError::Invalid {
                key: "blob_url",
                rule: format!("{:?} must start with file:// or s3://", self.blob_url),
            });
        }
        let w = &self.worker;
        let positive = [
            ("worker.concurrency", w.concurrency as u64),
            ("worker.lease_seconds", w.lease_seconds),
            ("worker.heartbeat_seconds", w.heartbeat_seconds),
            ("worker.max_attempts", u64::from(w.max_attempts)),
            ("worker.poll_interval_ms", w.poll_interval_ms),
            ("worker.parse_attempts", u64::from(w.parse_attempts)),
            (
                "retention.sweep_interval_seconds",
                self.retention.sweep_interval_seconds,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    rule: "must be at least 1".into(),
                });
            }
        }
        // A job stops a quarter of the lease before the database would let
        // another worker take it (crates/worker/src/lease.rs), so at least
        // two renewals must fit in a lease.
        if w.heartbeat_seconds.saturating_mul(2) > w.lease_seconds {
            return Err(ConfigError::Invalid {
                key: "worker.heartbeat_seconds",
                rule: format!(
                    "must be at most half of worker.lease_seconds ({})",
                    w.lease_seconds
                ),
            });
        }
        let h = &self.webhooks;
        self.webhook_schedule()?;
        if !(h.timeout_seconds.is_finite() && h.timeout_seconds > 0.0) {
            return Err(ConfigError::Invalid {
                key: "webhooks.timeout_seconds",
                rule: "must be a positive number of seconds".into(),
            });
        }
        if h.max_per_host == 0 || h.poll_interval_ms == 0 {
            return Err(ConfigError::Invalid {
                key: if h.max_per_host == 0 {
                    "webhooks.max_per_host"
                } else {
                    "webhooks.poll_interval_ms"
                },
                rule: "must be at least 1".into(),
            });
        }
        h.secret()?;
        self.cors_origins()?;
        Ok(())
    }

    /// `[http] cors_allowed_origins` as header values; each must be an
    /// origin: scheme and host (and port), nothing after.
    pub fn cors_origins(&self) -> Result<Vec<axum::http::HeaderValue>, ConfigError> {
        self.http
            .cors_allowed_origins
            .iter()
            .map(|origin| {
                let invalid = |why: &str| ConfigError::Invalid {
                    key: "http.cors_allowed_origins",
                    rule: format!("{origin:?} {why}"),
                };
                let url = url::Url::parse(origin).map_err(|_| invalid("is not a URL"))?;
                if !matches!(url.scheme(), "http" | "https")
                    || url.host_str().is_none()
                    || url.origin().ascii_serialization() != *origin
                {
                    return Err(invalid(
                        "must be an origin like https://app.example (scheme, host, optional port; no path or trailing slash)",
                    ));
                }
                axum::http::HeaderValue::from_str(origin).map_err(|_| invalid("is not a header value"))
            })
            .collect()
    }

    /// The webhook retry schedule.
    pub fn webhook_schedule(&self) -> Result<editthinker_webhooks::RetrySchedule, ConfigError> {
        editthinker_webhooks::RetrySchedule::from_seconds(&self.webhooks.retry_schedule_seconds)
            .map_err(|rule| ConfigError::Invalid {
                key: "webhooks.retry_schedule_seconds",
                rule,
            })
    }

    /// The parsed listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| ConfigError::Invalid {
            key: "listen",
            rule: format!("{:?} is not a socket address: {e}", self.listen),
        })
    }

    /// Input limits for the API.
    pub fn limits(&self) -> Limits {
        Limits {
            max_image_bytes: self.limits.max_image_bytes,
            max_pixels: self.limits.max_pixels,
            max_instruction_chars: self.limits.max_instruction_chars,
            allow_private_image_urls: self.allow_private_image_urls,
            allow_private_webhook_urls: self.allow_private_webhook_urls,
            image_fetch_timeout: Duration::from_secs(self.limits.image_fetch_timeout_seconds),
        }
    }

    /// Worker settings.
    pub fn worker_settings(&self) -> WorkerSettings {
        let w = &self.worker;
        WorkerSettings {
            concurrency: w.concurrency,
            lease: Duration::from_secs(w.lease_seconds),
            heartbeat: Duration::from_secs(w.heartbeat_seconds),
            poll_interval: Duration::from_millis(w.poll_interval_ms),
            shutdown_grace: Duration::from_secs(w.shutdown_grace_seconds),
            retry_base: Duration::from_millis(w.retry_base_ms),
            loop_config: editthinker_core::LoopConfig {
                parse_attempts: w.parse_attempts,
            },
        }
    }
}
