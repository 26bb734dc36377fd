//! Layered configuration (docs/configuration.md): built-in defaults < TOML file <
//! `EDITTHINKER_*` environment variables (nested keys joined with `__`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use editthinker_api::auth::{AuthMode, CallerLimits, FailedAuthLimits};
use editthinker_api::Limits;
use editthinker_editors::{EditorKind, EditorProfile};
use editthinker_thinker::{ThinkerConfig, ThinkerKind};
use editthinker_worker::WorkerSettings;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::telemetry::LogConfig;

/// The default configuration file, read from the working directory (never
/// a parent folder) when present and no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "editthinker.toml";

/// The editor `serve --sandbox` configures.
pub const SANDBOX_EDITOR: &str = "sandbox";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The file the configuration was read from; `None`: defaults and
    /// environment variables only. Set by [`Config::load`], not a key.
    #[serde(skip)]
    pub loaded_from: Option<std::path::PathBuf>,
    /// Set by [`Config::with_sandbox`] (`serve --sandbox`), not a key.
    #[serde(skip)]
    pub sandbox_flag: bool,
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
    /// Run sandbox (test-mode) providers although `[auth]` is on: an
    /// authenticated service is a shared one, where made-up edits must be
    /// asked for, not stumbled into.
    pub allow_sandbox: bool,
    /// The currency of every price (`price_per_call`, the thinker's token
    /// prices) and of the usage ledger's costs.
    pub currency: String,
    /// `[auth]`: who may call the API.
    pub auth: AuthConfig,
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
    /// `[verifier]`: a second opinion on every candidate; jobs that ask for
    /// one (`options.rank_by = "verifier"`, `options.stop.verifier`) are
    /// refused while it is absent.
    pub verifier: Option<editthinker_thinker::VerifierConfig>,
    /// Editors by the name clients use.
    pub editors: BTreeMap<String, EditorProfile>,
    /// Logging.
    pub log: LogConfig,
    /// `[metrics]`: the Prometheus exporter.
    pub metrics: crate::metrics::MetricsConfig,
    /// `[telemetry]`: OpenTelemetry traces.
    pub telemetry: crate::telemetry::TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            loaded_from: None,
            sandbox_flag: false,
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://data/editthinker.db".into(),
            blob_url: "file://data/blobs".into(),
            allow_private_image_urls: false,
            allow_private_webhook_urls: false,
            allow_sandbox: false,
            currency: editthinker_store::DEFAULT_CURRENCY.into(),
            auth: AuthConfig::default(),
            webhooks: WebhooksConfig::default(),
            http: HttpConfig::default(),
            retention: RetentionConfig::default(),
            limits: LimitsConfig::default(),
            worker: WorkerConfig::default(),
            thinker: None,
            verifier: None,
            editors: BTreeMap::new(),
            log: LogConfig::default(),
            metrics: crate::metrics::MetricsConfig::default(),
            telemetry: crate::telemetry::TelemetryConfig::default(),
        }
    }
}

/// `[auth]`: how the API knows who calls (contract).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `"none"` (default: every request acts for the tenant `default`),
    /// `"api_keys"` (`Authorization: Bearer et_…`) or `"gateway"` (a
    /// trusted gateway names the tenant in `tenant_header`).
    pub mode: String,
    /// The header a gateway puts the tenant in (mode `gateway`).
    pub tenant_header: String,
    /// Mode `api_keys`: failed authentications a client address may make
    /// per minute (and at once) before it is answered 429 without a key
    /// lookup (default 60); 0: no limit.
    pub failed_auth_per_minute_per_address: u32,
    /// Mode `api_keys`: seconds a key found unknown is answered from
    /// memory without a lookup (default 30); 0: not remembered.
    pub negative_cache_seconds: u64,
    /// The header a gateway puts the client's address in (e.g.
    /// `X-Forwarded-For`, last entry used); empty (default): the peer of
    /// the connection. Set it only when every request comes through that
    /// gateway, which must append the address it saw.
    pub client_address_header: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let guard = editthinker_api::auth::FailedAuthLimits::default();
        Self {
            mode: "none".into(),
            tenant_header: "X-Tenant-Id".into(),
            failed_auth_per_minute_per_address: guard.per_minute_per_address,
            negative_cache_seconds: guard.negative_cache.as_secs(),
            client_address_header: String::new(),
        }
    }
}

/// `[limits]`: what clients may send, and how much each may do.
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
    /// Largest `metadata` as JSON, in bytes (default 16 KiB).
    pub max_metadata_bytes: usize,
    /// Deepest nesting in a JSON body (default 32).
    pub max_json_depth: usize,
    /// Most parts in a multipart body (default 16).
    pub max_multipart_parts: usize,
    /// Largest multipart part other than the image (default 64 KiB).
    pub max_form_field_bytes: usize,
    /// Largest request head in bytes (default 16 KiB).
    pub max_header_bytes: usize,
    /// Time a client has to send a request's head (default 30 s).
    pub header_read_timeout_seconds: u64,
    /// Time a client has to send a request's body (default 60 s).
    pub body_read_timeout_seconds: u64,
    /// Image decodes at once per process (default: one per core).
    pub max_concurrent_decodes: usize,
    /// Memory all image decodes and conversions in one process may hold at
    /// once, in bytes (default 1 GiB); a larger decode is refused, others
    /// wait for their share.
    pub decode_memory_budget_bytes: u64,
    /// Sustained requests per second per API key (gateway mode: per
    /// tenant), per replica; 0: no limit. Not applied in auth mode `none`.
    pub requests_per_second: u32,
    /// Requests above the sustained rate a key may make at once.
    pub burst: u32,
    /// Jobs queued or running per tenant, across replicas (checked in the
    /// database); 0: no limit.
    pub max_active_jobs_per_tenant: u32,
    /// Open event streams per tenant, per replica; 0: no limit.
    pub max_streams_per_tenant: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = Limits::default();
        let c = CallerLimits::default();
        Self {
            max_image_bytes: d.max_image_bytes,
            max_pixels: d.max_pixels,
            max_instruction_chars: d.max_instruction_chars,
            image_fetch_timeout_seconds: d.image_fetch_timeout.as_secs(),
            max_metadata_bytes: d.max_metadata_bytes,
            max_json_depth: d.max_json_depth,
            max_multipart_parts: d.max_multipart_parts,
            max_form_field_bytes: d.max_form_field_bytes,
            max_header_bytes: d.max_header_bytes,
            header_read_timeout_seconds: editthinker_api::server::HEADER_READ_TIMEOUT.as_secs(),
            body_read_timeout_seconds: d.body_read_timeout.as_secs(),
            max_concurrent_decodes: editthinker_api::intake::default_decode_slots(),
            decode_memory_budget_bytes: editthinker_core::imaging::DEFAULT_DECODE_MEMORY_BUDGET,
            requests_per_second: c.requests_per_second,
            burst: c.burst,
            max_active_jobs_per_tenant: 100,
            max_streams_per_tenant: c.max_streams_per_tenant,
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
    /// Seconds between sweeps of finished jobs.
    pub sweep_interval_seconds: u64,
    /// Seconds between passes over the blob store for folders whose job
    /// does not exist (each lists every job folder).
    pub orphan_interval_seconds: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            days: 7,
            sweep_interval_seconds: 300,
            orphan_interval_seconds: 3600,
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Origins (`https://app.example`) whose pages may call the API from a
    /// browser (CORS); default none.
    pub cors_allowed_origins: Vec<String>,
    /// Whether an event stream that has sent its replay is handed to the
    /// event hub's writer threads (crates/api/src/direct.rs); `false`
    /// keeps every stream on hyper's own path. Default `true`.
    pub sse_direct_writes: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            cors_allowed_origins: Vec::new(),
            sse_direct_writes: true,
        }
    }
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
    /// Claim order within a priority: `"tenant"` (round-robin between
    /// tenants) or `"none"` (oldest first).
    pub fairness: editthinker_store::Fairness,
    /// Seconds between two probes of the thinker; while one fails the
    /// worker claims no jobs and running jobs wait before their next edit.
    pub thinker_probe_seconds: u64,
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
            fairness: editthinker_store::Fairness::Tenant,
            thinker_probe_seconds: 5,
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
    /// file; without it, `editthinker.toml` is read when the working
    /// directory has one. Parent folders are never searched: a file there
    /// belongs to another project (figment's `Toml::file` would search
    /// them).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        let file = match path {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Invalid {
                        key: "--config",
                        rule: format!("{} does not exist", path.display()),
                    });
                }
                Some(path.to_path_buf())
            }
            None => Some(Path::new(DEFAULT_CONFIG_FILE).to_path_buf()).filter(|p| p.is_file()),
        };
        if let Some(file) = &file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // The command line's own variables are not configuration keys: a
        // shell set up for the client (`EDITTHINKER_SERVER`,
        // `EDITTHINKER_API_KEY`) must still start a server.
        figment = figment.merge(
            Env::prefixed("EDITTHINKER_")
                .split("__")
                .ignore(&["config", "server", "api_key"]),
        );
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        config.loaded_from = file.map(|f| std::path::absolute(&f).unwrap_or(f));
        Ok(config)
    }

    /// Prices are finite and not negative; the currency is a three-letter
    /// code (ISO 4217 style, e.g. `USD`).
    fn validate_prices(&self) -> Result<(), ConfigError> {
        if !(self.currency.len() == 3 && self.currency.chars().all(|c| c.is_ascii_uppercase())) {
            return Err(ConfigError::Invalid {
                key: "currency",
                rule: format!(
                    "{:?} must be three capital letters, e.g. \"USD\"",
                    self.currency
                ),
            });
        }
        let thinker = self.thinker.as_ref();
        let prices = [
            (
                "editors.*.price_per_call",
                self.editors
                    .values()
                    .filter_map(|e| e.price_per_call)
                    .collect::<Vec<_>>(),
            ),
            (
                "thinker.price_per_million_input_tokens",
                thinker
                    .and_then(|t| t.price_per_million_input_tokens)
                    .into_iter()
                    .collect(),
            ),
            (
                "thinker.price_per_million_output_tokens",
                thinker
                    .and_then(|t| t.price_per_million_output_tokens)
                    .into_iter()
                    .collect(),
            ),
            (
                "verifier.price_per_million_input_tokens",
                self.verifier
                    .as_ref()
                    .and_then(|v| v.price_per_million_input_tokens)
                    .into_iter()
                    .collect(),
            ),
            (
                "verifier.price_per_million_output_tokens",
                self.verifier
                    .as_ref()
                    .and_then(|v| v.price_per_million_output_tokens)
                    .into_iter()
                    .collect(),
            ),
        ];
        for (key, values) in prices {
            if let Some(bad) = values.iter().find(|v| !v.is_finite() || **v < 0.0) {
                return Err(ConfigError::Invalid {
                    key,
                    rule: format!("{bad} must be a number of 0 or more"),
                });
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.metrics
            .listen_addr()
            .map_err(|(key, rule)| ConfigError::Invalid { key, rule })?;
        self.telemetry
            .traces_url()
            .map_err(|(key, rule)| ConfigError::Invalid { key, rule })?;
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
        self.validate_prices()?;
        if let Some(verifier) = &self.verifier {
            verifier.validate().map_err(|e| ConfigError::Invalid {
                key: e.key(),
                rule: e.to_string(),
            })?;
        }
        let w = &self.worker;
        let positive = [
            ("worker.concurrency", w.concurrency as u64),
            ("worker.lease_seconds", w.lease_seconds),
            ("worker.heartbeat_seconds", w.heartbeat_seconds),
            ("worker.max_attempts", u64::from(w.max_attempts)),
            ("worker.poll_interval_ms", w.poll_interval_ms),
            ("worker.parse_attempts", u64::from(w.parse_attempts)),
            ("worker.thinker_probe_seconds", w.thinker_probe_seconds),
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
        self.auth_mode()?;
        if self.auth.mode != "none" && !self.allow_sandbox {
            if let Some(provider) = self.sandbox_providers().first() {
                return Err(ConfigError::Invalid {
                    key: "allow_sandbox",
                    rule: format!(
                        "{provider} is a sandbox provider (test mode: made-up edits and \
                         critiques) and [auth] mode = {:?}: set allow_sandbox = true to run \
                         it on an authenticated service",
                        self.auth.mode
                    ),
                });
            }
        }
        let l = &self.limits;
        let at_least_one = [
            ("limits.max_json_depth", l.max_json_depth as u64),
            ("limits.max_multipart_parts", l.max_multipart_parts as u64),
            ("limits.max_form_field_bytes", l.max_form_field_bytes as u64),
            (
                "limits.header_read_timeout_seconds",
                l.header_read_timeout_seconds,
            ),
            (
                "limits.body_read_timeout_seconds",
                l.body_read_timeout_seconds,
            ),
            (
                "limits.max_concurrent_decodes",
                l.max_concurrent_decodes as u64,
            ),
            (
                "limits.decode_memory_budget_bytes",
                l.decode_memory_budget_bytes,
            ),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    rule: "must be at least 1".into(),
                });
            }
        }
        if l.max_header_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "limits.max_header_bytes",
                rule: "must be at least 1024".into(),
            });
        }
        Ok(())
    }

    /// The sandbox providers configured, by key (`thinker`,
    /// `editors.<name>`).
    pub fn sandbox_providers(&self) -> Vec<String> {
        let thinker = self
            .thinker
            .as_ref()
            .filter(|t| t.kind == ThinkerKind::Sandbox)
            .map(|_| "thinker".to_string());
        let verifier = self
            .verifier
            .as_ref()
            .filter(|v| v.kind == editthinker_thinker::VerifierKind::Sandbox)
            .map(|_| "verifier".to_string());
        thinker
            .into_iter()
            .chain(verifier)
            .chain(
                self.editors
                    .iter()
                    .filter(|(_, p)| p.kind.is_sandbox())
                    .map(|(name, _)| format!("editors.{name}")),
            )
            .collect()
    }

    /// `serve --sandbox`: the sandbox thinker and one sandbox editor (the
    /// default) in place of the configured ones, so no configured
    /// provider is ever paid for a made-up critique. Naming the flag is
    /// the explicit enabling `allow_sandbox` asks for.
    pub fn with_sandbox(mut self) -> Self {
        self.thinker = Some(ThinkerConfig {
            kind: ThinkerKind::Sandbox,
            ..ThinkerConfig::default()
        });
        let mut editor = EditorProfile::new(EditorKind::Sandbox);
        editor.default = true;
        self.editors = BTreeMap::from([(SANDBOX_EDITOR.to_string(), editor)]);
        self.allow_sandbox = true;
        self.sandbox_flag = true;
        self
    }

    /// What the API knows of the thinker the workers run.
    pub fn thinker_setup(&self) -> editthinker_api::ThinkerSetup {
        use editthinker_api::ThinkerSetup;
        match &self.thinker {
            None => ThinkerSetup::Missing,
            Some(t) if t.kind == ThinkerKind::Sandbox => ThinkerSetup::Sandbox,
            Some(_) => ThinkerSetup::Model,
        }
    }

    /// `[auth]` as the API's mode.
    pub fn auth_mode(&self) -> Result<AuthMode, ConfigError> {
        match self.auth.mode.as_str() {
            "none" => Ok(AuthMode::None),
            "api_keys" => Ok(AuthMode::ApiKeys),
            "gateway" => {
                let tenant_header = axum::http::HeaderName::try_from(
                    self.auth.tenant_header.as_str(),
                )
                .map_err(|_| ConfigError::Invalid {
                    key: "auth.tenant_header",
                    rule: format!("{:?} is not a header name", self.auth.tenant_header),
                })?;
                Ok(AuthMode::Gateway { tenant_header })
            }
            other => Err(ConfigError::Invalid {
                key: "auth.mode",
                rule: format!("{other:?} must be \"none\", \"api_keys\" or \"gateway\""),
            }),
        }
    }

    /// `[auth]`'s limits on failed authentications.
    pub fn failed_auth_limits(&self) -> Result<FailedAuthLimits, ConfigError> {
        let header = self.auth.client_address_header.trim();
        let client_address_header = if header.is_empty() {
            None
        } else {
            Some(
                axum::http::HeaderName::try_from(header).map_err(|_| ConfigError::Invalid {
                    key: "auth.client_address_header",
                    rule: format!("{header:?} is not a header name"),
                })?,
            )
        };
        Ok(FailedAuthLimits {
            per_minute_per_address: self.auth.failed_auth_per_minute_per_address,
            negative_cache: Duration::from_secs(self.auth.negative_cache_seconds),
            client_address_header,
        })
    }

    /// The per-caller limits of each API process.
    pub fn caller_limits(&self) -> CallerLimits {
        CallerLimits {
            requests_per_second: self.limits.requests_per_second,
            burst: self.limits.burst,
            max_streams_per_tenant: self.limits.max_streams_per_tenant,
        }
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
            verifier_configured: self.verifier.is_some(),
            max_image_bytes: self.limits.max_image_bytes,
            max_pixels: self.limits.max_pixels,
            max_instruction_chars: self.limits.max_instruction_chars,
            allow_private_image_urls: self.allow_private_image_urls,
            allow_private_webhook_urls: self.allow_private_webhook_urls,
            image_fetch_timeout: Duration::from_secs(self.limits.image_fetch_timeout_seconds),
            max_metadata_bytes: self.limits.max_metadata_bytes,
            max_json_depth: self.limits.max_json_depth,
            max_multipart_parts: self.limits.max_multipart_parts,
            max_form_field_bytes: self.limits.max_form_field_bytes,
            max_header_bytes: self.limits.max_header_bytes,
            body_read_timeout: Duration::from_secs(self.limits.body_read_timeout_seconds),
            decode_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                self.limits.max_concurrent_decodes,
            )),
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
            fairness: w.fairness,
            thinker_probe_interval: Duration::from_secs(w.thinker_probe_seconds),
            loop_config: editthinker_core::LoopConfig {
                parse_attempts: w.parse_attempts,
            },
            pricing: self.pricing(),
        }
    }

    /// The prices of the configuration, in its currency.
    pub fn pricing(&self) -> editthinker_worker::Pricing {
        let thinker = self.thinker.as_ref();
        let price = |p: Option<f64>| p.unwrap_or(0.0);
        editthinker_worker::Pricing {
            currency: self.currency.clone(),
            per_editor_call: self
                .editors
                .iter()
                .filter_map(|(name, e)| Some((name.clone(), e.price_per_call?)))
                .collect(),
            thinker_per_million: (
                price(thinker.and_then(|t| t.price_per_million_input_tokens)),
                price(thinker.and_then(|t| t.price_per_million_output_tokens)),
            ),
            verifier_per_million: self
                .verifier
                .as_ref()
                .map_or((0.0, 0.0), |v| v.prices_per_million()),
            critique_reserve: editthinker_core::Tokens {
                input: editthinker_worker::CRITIQUE_INPUT_ESTIMATE,
                output: thinker.map_or(4096, |t| u64::from(t.max_tokens)),
            },
            // A verifier sees the same two images as the thinker.
            verifier_reserve: self.verifier.as_ref().map(|v| editthinker_core::Tokens {
                input: editthinker_worker::CRITIQUE_INPUT_ESTIMATE,
                output: u64::from(v.max_tokens),
            }),
        }
    }
}
