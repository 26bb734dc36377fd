//! The binary's roles: serve (API + worker), api, worker, migrate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use editthinker_api::{AppState, EditorView};
use editthinker_core::Editor;
use editthinker_editors::{EditorInfo, EditorKind, EditorRegistry};
use editthinker_store::{BlobStore, Store};
use editthinker_worker::{ThinkerHealth, Worker};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;

/// What every role shares: storage, and the editors and thinker as the API
/// sees them (validated, but no clients built and no secrets read, so API
/// replicas need no provider keys).
struct Parts {
    store: Arc<dyn Store>,
    blobs: Arc<BlobStore>,
    editors: Vec<EditorInfo>,
    thinker: editthinker_api::ThinkerSetup,
    /// The webhook signing secret, when its variable is set.
    webhook_secret: Option<editthinker_webhooks::Secret>,
}

async fn build(config: &Config) -> anyhow::Result<Parts> {
    // Every role decodes images (the API validates uploads, the worker
    // converts them for the providers): one budget per process.
    editthinker_core::imaging::set_decode_memory_budget(config.limits.decode_memory_budget_bytes);
    let editors = EditorRegistry::describe(&config.editors).context("editors")?;
    let blobs = Arc::new(BlobStore::from_url(&config.blob_url).context("blob_url")?);
    let store = editthinker_store::connect(&config.database_url)
        .await
        .context("database_url")?;
    if editors.is_empty() {
        warn!(
            "no editor is configured: jobs are refused until an [editors.<name>] section is added"
        );
    }
    if config.thinker.is_none() {
        warn!("no thinker is configured: jobs are refused until a [thinker] section is added");
    }
    for provider in config.sandbox_providers() {
        warn!(
            %provider,
            "SANDBOX provider (test mode): its edits and critiques are made up, and its jobs are labelled \"sandbox\": true"
        );
    }
    let webhook_secret = config.webhooks.secret()?;
    if webhook_secret.is_none() {
        info!(
            variable = %config.webhooks.secret_env,
            "no server webhook secret set: jobs with a webhook are refused unless their tenant has its own"
        );
    }
    Ok(Parts {
        store,
        blobs,
        editors,
        thinker: config.thinker_setup(),
        webhook_secret,
    })
}

/// The retention sweep (`worker` and `serve` roles).
fn start_retention(
    config: &Config,
    parts: &Parts,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let retention = crate::retention::Retention {
        store: parts.store.clone(),
        blobs: parts.blobs.clone(),
        keep: config.retention.keep(),
        every: Duration::from_secs(config.retention.sweep_interval_seconds),
        orphans_every: Duration::from_secs(config.retention.orphan_interval_seconds),
    };
    tokio::spawn(retention.run(shutdown))
}

/// The webhook delivery loop (tenants may have secrets of their own, so it
/// runs even without the server's).
fn start_outbox(
    config: &Config,
    parts: &Parts,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let timeout = Duration::from_secs_f64(config.webhooks.timeout_seconds);
    let outbox = crate::outbox::Outbox {
        store: parts.store.clone(),
        default_secret: parts.webhook_secret.clone(),
        deliverer: Arc::new(editthinker_webhooks::Deliverer::new(
            timeout,
            config.allow_private_webhook_urls,
            config.webhooks.max_per_host,
        )),
        schedule: config.webhook_schedule()?,
        timeout,
        poll_interval: Duration::from_millis(config.webhooks.poll_interval_ms),
    };
    Ok(Some(tokio::spawn(outbox.run(shutdown))))
}

/// Cancels the token on SIGTERM or Ctrl-C.
fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("interrupt received: shutting down"),
        }
        trigger.cancel();
    });
    token
}

/// Every open SSE stream is a socket: raise the soft open-file limit to the
/// hard one (often 1024 → 1048576), so one API process can hold tens of
/// thousands of streams without the operator tuning `ulimit`.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    info!(open_files = limit.rlim_cur, "open-file limit");
}

async fn run_api(
    config: &Config,
    parts: &Parts,
    provider_probes: Option<editthinker_api::ProviderProbes>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    raise_open_file_limit();
    let state = AppState {
        store: parts.store.clone(),
        blobs: parts.blobs.clone(),
        editors: Arc::new(
            parts
                .editors
                .iter()
                .cloned()
                .map(|i| EditorView {
                    sandbox: i.kind == EditorKind::Sandbox.as_str(),
                    name: i.name,
                    kind: i.kind,
                    model: i.model,
                    default: i.default,
                })
                .collect(),
        ),
        thinker: parts.thinker,
        provider_probes,
        currency: config.currency.clone(),
        webhooks_configured: parts.webhook_secret.is_some(),
        cors_allowed_origins: config.cors_origins()?,
        retention: config.retention.keep(),
        limits: config.limits(),
        max_attempts: config.worker.max_attempts,
        auth: Arc::new(
            editthinker_api::auth::Auth::new(config.auth_mode()?, &config.caller_limits())
                .with_failed_auth_limits(config.failed_auth_limits()?),
        ),
        max_active_jobs_per_tenant: Some(config.limits.max_active_jobs_per_tenant)
            .filter(|n| *n > 0),
        hub: editthinker_api::fanout::EventHub::start(parts.store.clone(), shutdown.clone()),
        positions: Arc::new(editthinker_api::positions::QueuePositions::new(
            parts.store.clone(),
        )),
        headroom: Default::default(),
        sse_direct_writes: config.http.sse_direct_writes,
    };
    let addr = config.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen: binding {addr}"))?;
    // Tests and supervisors read the bound address (port 0 picks a free one).
    info!(addr = %listener.local_addr()?, "listening");
    let local = listener.local_addr()?;
    let viewer = viewer_url(local);
    info!(url = %viewer, "viewer");
    if config.sandbox_flag {
        // Plain text, not a log line: the first thing a newcomer reads.
        eprintln!(
            "\nEditThinker is running in SANDBOX mode: test providers, no keys, no GPU.\n\
             Its edits and critiques are made up (every job says \"sandbox\": true).\n\n\
             \x20 open the viewer:  {viewer}\n\
             \x20 API reference:    {}docs\n\n\
             Ctrl-C stops it.\n",
            viewer.trim_end_matches("ui")
        );
    }
    if config.auth.mode == "none" && !local.ip().is_loopback() {
        warn!(
            addr = %local,
            "AUTHENTICATION IS OFF ([auth] mode = \"none\") and the API listens on a non-loopback address: anyone who can reach it can read, cancel and create every job; set [auth] mode = \"api_keys\" or \"gateway\""
        );
    }
    editthinker_api::server::serve(
        listener,
        editthinker_api::router(state),
        Duration::from_secs(config.limits.header_read_timeout_seconds),
        shutdown,
    )
    .await;
    Ok(())
}

/// The viewer's address for a listener on `local`: a wildcard address is
/// reached through loopback.
fn viewer_url(local: std::net::SocketAddr) -> String {
    let host = match local.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/ui", local.port())
}

/// Builds the editor and thinker clients (reading their secrets) and the
/// worker; `None` when no thinker is configured.
async fn make_worker(config: &Config, parts: &Parts) -> anyhow::Result<Option<Worker>> {
    // Built even when no worker can run, so bad editor settings stop the start.
    let registry = EditorRegistry::from_config(&config.editors).context("editors")?;
    let Some(thinker_config) = &config.thinker else {
        return Ok(None);
    };
    let thinker = editthinker_thinker::build_thinker_async(thinker_config)
        .await
        .context("thinker")?;
    let editors: BTreeMap<String, Arc<dyn Editor>> = registry
        .names()
        .into_iter()
        .filter_map(|name| registry.get(name).map(|e| (name.to_string(), e)))
        .collect();
    let worker = Worker::new(
        parts.store.clone(),
        parts.blobs.clone(),
        editors,
        thinker,
        config.worker_settings(),
    );
    Ok(Some(match &config.verifier {
        Some(verifier) => worker.with_verifier(verifier.build().context("verifier")?),
        None => worker,
    }))
}

/// `serve`: migrations, then API and worker in one process.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let parts = build(&config).await?;
    let worker = make_worker(&config, &parts).await?;
    parts.store.migrate().await.context("applying migrations")?;
    let shutdown = shutdown_token();
    let metrics =
        crate::metrics::start(&config.metrics, parts.store.clone(), shutdown.clone()).await?;
    // /readyz of this process reports its worker's probes.
    let provider_probes = worker.as_ref().map(|w| {
        let gate = w.thinker_gate();
        let probes: editthinker_api::ProviderProbes =
            Arc::new(move || editthinker_api::ProbeReport {
                thinker: match gate.health() {
                    ThinkerHealth::Unknown => None,
                    ThinkerHealth::Reachable => Some(Ok(())),
                    ThinkerHealth::Unreachable(reason) => Some(Err(reason)),
                },
                editors: gate.editor_checks(),
            });
        probes
    });
    let worker = worker.map(|w| tokio::spawn(w.run(shutdown.clone())));
    if worker.is_none() {
        warn!("worker disabled: no thinker configured");
    }
    let outbox = start_outbox(&config, &parts, shutdown.clone())?;
    let retention = start_retention(&config, &parts, shutdown.clone());
    let served = run_api(&config, &parts, provider_probes, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(worker) = worker {
        worker.await.context("worker task")?;
    }
    if let Some(outbox) = outbox {
        outbox.await.context("webhook delivery task")?;
    }
    retention.await.context("retention task")?;
    if let Some(metrics) = metrics {
        metrics.await.context("metrics task")?;
    }
    served
}

/// `api`: the HTTP API alone.
pub async fn api(config: Config) -> anyhow::Result<()> {
    let parts = build(&config).await?;
    let shutdown = shutdown_token();
    let metrics =
        crate::metrics::start(&config.metrics, parts.store.clone(), shutdown.clone()).await?;
    let served = run_api(&config, &parts, None, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(metrics) = metrics {
        metrics.await.context("metrics task")?;
    }
    served
}

/// `worker`: the worker alone.
pub async fn worker(config: Config) -> anyhow::Result<()> {
    let parts = build(&config).await?;
    let worker = make_worker(&config, &parts)
        .await?
        .context("thinker: a worker needs a [thinker] section")?;
    if parts.editors.is_empty() {
        anyhow::bail!("editors: a worker needs at least one [editors.<name>] section");
    }
    let shutdown = shutdown_token();
    let metrics =
        crate::metrics::start(&config.metrics, parts.store.clone(), shutdown.clone()).await?;
    let outbox = start_outbox(&config, &parts, shutdown.clone())?;
    let retention = start_retention(&config, &parts, shutdown.clone());
    worker.run(shutdown.clone()).await;
    shutdown.cancel();
    if let Some(outbox) = outbox {
        outbox.await.context("webhook delivery task")?;
    }
    retention.await.context("retention task")?;
    if let Some(metrics) = metrics {
        metrics.await.context("metrics task")?;
    }
    Ok(())
}

/// `migrate`: apply migrations and exit.
pub async fn migrate(config: Config) -> anyhow::Result<()> {
    let store = editthinker_store::connect(&config.database_url)
        .await
        .context("database_url")?;
    store.migrate().await.context("applying migrations")?;
    info!("migrations applied");
    Ok(())
}
