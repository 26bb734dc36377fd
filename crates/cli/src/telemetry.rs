//! Logging setup.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// `[log]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `editthinker_worker=debug,info`;
    /// `RUST_LOG` wins when set.
    pub filter: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// `[telemetry]`: OpenTelemetry traces over OTLP (off by default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP receiver (e.g. `http://collector:4318`;
    /// `/v1/traces` is appended when the URL has no path); empty: no traces.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans (default `editthinker`).
    pub service_name: Option<String>,
}

impl TelemetryConfig {
    /// The traces URL, `None` when traces are off; the error names the key.
    pub fn traces_url(&self) -> Result<Option<url::Url>, (&'static str, String)> {
        let raw = self.otlp_endpoint.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        let mut url = url::Url::parse(raw)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                (
                    "telemetry.otlp_endpoint",
                    format!(
                        "{raw:?} must be an http:// or https:// URL such as http://collector:4318"
                    ),
                )
            })?;
        if url.path() == "/" {
            url.set_path("/v1/traces");
        }
        Ok(Some(url))
    }
}

/// Keeps the trace exporter alive; dropping it flushes the spans not yet
/// sent (on a clean exit, SIGTERM included).
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("editthinker: flushing traces failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber (logs go to stderr) and, with an OTLP
/// endpoint, the trace exporter. JSON log lines carry their spans' fields,
/// `job_id` and `trace_id` among them.
pub fn init(config: &LogConfig, telemetry: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.filter.as_str()));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match config.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let traces_url = telemetry
        .traces_url()
        .map_err(|(key, rule)| anyhow::anyhow!("{key}: {rule}"))?;
    let (otel, provider) = match traces_url {
        None => (None, None),
        Some(url) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url.as_str())
                .build()
                .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: {e}"))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(
                    telemetry
                        .service_name
                        .clone()
                        .unwrap_or_else(|| "editthinker".into()),
                )
                .build();
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("editthinker"));
            (Some(layer), Some(provider))
        }
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(TelemetryGuard { provider })
}
