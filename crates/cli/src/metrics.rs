//! `[metrics]`: the Prometheus exporter of every long-running role. The
//! names are defined in `editthinker_core::metrics`; this module installs
//! the recorder, serves `GET /metrics` on its own listener (kept off the
//! API port, so a gateway never exposes it), and polls the queue gauges.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use editthinker_store::Store;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// `[metrics]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the `/metrics` listener; empty turns the exporter off.
    pub listen: String,
    /// How often this process reads the queue gauges from the database.
    pub queue_poll_seconds: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            queue_poll_seconds: 15,
        }
    }
}

impl MetricsConfig {
    /// The listener address, `None` when the exporter is off; the error
    /// names the key and the rule.
    pub fn listen_addr(&self) -> Result<Option<std::net::SocketAddr>, (&'static str, String)> {
        if self.listen.trim().is_empty() {
            return Ok(None);
        }
        if self.queue_poll_seconds == 0 {
            return Err((
                "metrics.queue_poll_seconds",
                "must be at least 1".to_string(),
            ));
        }
        self.listen.trim().parse().map(Some).map_err(|_| {
            (
                "metrics.listen",
                format!(
                    "{:?} must be an IP address and port such as 127.0.0.1:9090 (or empty for no exporter)",
                    self.listen
                ),
            )
        })
    }
}

/// Binds the listener, installs the recorder and starts serving and
/// polling; `None` when `[metrics] listen` is empty, or when its address
/// cannot be bound: metrics are an aid, so a port in use (9090 is also
/// Prometheus's own default; `api` and `worker` started on one host with
/// one configuration share it) logs a warning and the role runs without
/// them. The API's own port stays fatal.
pub async fn start(
    config: &MetricsConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(addr) = config
        .listen_addr()
        .map_err(|(key, rule)| anyhow::anyhow!("{key}: {rule}"))?
    else {
        info!("metrics exporter off ([metrics] listen is empty)");
        return Ok(None);
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            warn!(metrics_addr = %addr, error = %e,
                "metrics exporter off: [metrics] listen cannot be bound (set another address, or \"\" to turn it off)");
            return Ok(None);
        }
    };
    let handle = recorder()?;
    info!(metrics_addr = %listener.local_addr()?, "metrics exporter ready");
    let poll = Duration::from_secs(config.queue_poll_seconds);
    Ok(Some(tokio::spawn(async move {
        let poller = tokio::spawn(poll_queue(store, poll, handle.clone(), shutdown.clone()));
        let app = axum::Router::new().route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        handle.render(),
                    )
                }
            }),
        );
        // The API's response headers (nosniff, no referrer) here too.
        let app = app.layer(axum::middleware::from_fn(editthinker_api::security_headers));
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            warn!(error = %e, "metrics listener failed");
        }
        let _ = poller.await;
    })))
}

/// The process-wide Prometheus recorder, with our histogram buckets and
/// help texts.
fn recorder() -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in editthinker_core::metrics::buckets() {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            .context("metrics buckets")?;
    }
    let handle = builder
        .install_recorder()
        .context("installing the metrics recorder")?;
    editthinker_core::metrics::describe();
    editthinker_core::metrics::register_known_series();
    Ok(handle)
}

/// Sets the queue gauges from one query per interval (not per scrape or
/// request), and drains the histograms' buffers.
async fn poll_queue(
    store: Arc<dyn Store>,
    every: Duration,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) {
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = timer.tick() => {}
        }
        match store.queue_stats().await {
            Ok(stats) => {
                editthinker_core::metrics::queue(stats.queued, stats.running, stats.oldest_due_age)
            }
            Err(e) => warn!(error = %e, "reading the queue gauges failed"),
        }
        handle.run_upkeep();
    }
}
