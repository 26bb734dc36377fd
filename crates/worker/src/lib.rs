//! The worker role: claims jobs, runs the Think-while-Edit loop with
//! store-backed persistence, heartbeats its leases, and shuts down gracefully.

mod breaker;
mod heartbeat;
mod job;
mod lease;
mod observer;
mod stop;
mod thinking;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use editthinker_core::{Editor, LoopConfig, Thinker};
use editthinker_store::{BlobStore, Notice, Store};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

pub use breaker::{ThinkerGate, ThinkerHealth};
pub use job::error_code;

/// Worker settings (`[worker]` in the configuration).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Jobs in flight at once.
    pub concurrency: usize,
    /// Lease length; a worker silent for this long loses its jobs.
    pub lease: Duration,
    /// How often leases are extended (and cancel flags read).
    pub heartbeat: Duration,
    /// Longest wait between claim attempts when no notification arrives.
    pub poll_interval: Duration,
    /// On shutdown, how long a job may take to finish its turn in progress.
    pub shutdown_grace: Duration,
    /// First retry delay after a transient failure; doubles per attempt.
    pub retry_base: Duration,
    /// Claim order between tenants within a priority.
    pub fairness: editthinker_store::Fairness,
    /// How often the thinker is probed (crates/worker/src/breaker.rs).
    pub thinker_probe_interval: Duration,
    /// Loop settings.
    pub loop_config: LoopConfig,
    /// What provider calls cost, for the usage ledger.
    pub pricing: Pricing,
}

/// What provider calls cost (docs/configuration.md "Prices"): the
/// configuration's prices, in its one currency.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    /// The currency of every price (`currency`, default `USD`).
    pub currency: String,
    /// `price_per_call` of each editor profile that sets one.
    pub per_editor_call: BTreeMap<String, f64>,
    /// `[thinker]`'s per-million-token prices (input, output).
    pub thinker_per_million: (f64, f64),
    /// `[verifier]`'s per-million-token prices (input, output).
    pub verifier_per_million: (f64, f64),
    /// Tokens a critique is reserved at before it is made (budgets): the
    /// thinker's `max_tokens` as output, an estimate of the prompt as input
    /// (raised by the largest prompt the job has seen).
    pub critique_reserve: editthinker_core::Tokens,
    /// Tokens a verifier call is reserved at, where a `[verifier]` is
    /// configured: its `max_tokens` as output, an estimate of the prompt.
    pub verifier_reserve: Option<editthinker_core::Tokens>,
}

/// Prompt tokens a critique is reserved at before the job has made one:
/// two images of about 1,300 tokens each at the default 1024-pixel edge
/// for a Qwen-VL thinker, and the prompt text.
pub const CRITIQUE_INPUT_ESTIMATE: u64 = 4096;

impl Default for Pricing {
    fn default() -> Self {
        Self {
            currency: editthinker_store::DEFAULT_CURRENCY.to_string(),
            per_editor_call: BTreeMap::new(),
            thinker_per_million: (0.0, 0.0),
            verifier_per_million: (0.0, 0.0),
            critique_reserve: editthinker_core::Tokens {
                input: CRITIQUE_INPUT_ESTIMATE,
                output: 4096,
            },
            verifier_reserve: None,
        }
    }
}

impl Pricing {
    /// The prices for a job on `editor`.
    pub fn for_editor(&self, editor: &str) -> editthinker_core::Prices {
        editthinker_core::Prices {
            per_editor_call: self.per_editor_call.get(editor).copied().unwrap_or(0.0),
            thinker_per_million_input: self.thinker_per_million.0,
            thinker_per_million_output: self.thinker_per_million.1,
            verifier_per_million_input: self.verifier_per_million.0,
            verifier_per_million_output: self.verifier_per_million.1,
        }
    }

    /// What a job on `editor` has spent according to its ledger, and what
    /// its next calls are reserved at.
    pub fn spending(
        &self,
        editor: &str,
        ledger: &[editthinker_core::LedgerEntry],
    ) -> editthinker_core::Spending {
        let mut spending = editthinker_core::Spending {
            prices: self.for_editor(editor),
            critique_reserve: self.critique_reserve,
            verifier_reserve: self.verifier_reserve,
            ..Default::default()
        };
        for entry in ledger {
            spending.add(entry);
        }
        spending
    }
}

impl WorkerSettings {
    /// The delay before a transiently failed job runs again: `retry_base`
    /// doubling per attempt, at most ten minutes, with jitter.
    pub fn requeue_policy(&self) -> editthinker_core::RetryPolicy {
        editthinker_core::RetryPolicy {
            max_retries: u32::MAX,
            base: self.retry_base,
            max_delay: Duration::from_secs(600),
            max_retry_after: Duration::ZERO,
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            retry_base: Duration::from_secs(5),
            fairness: editthinker_store::Fairness::Tenant,
            thinker_probe_interval: Duration::from_secs(5),
            loop_config: LoopConfig::default(),
            pricing: Pricing::default(),
        }
    }
}

/// The span of one attempt at a job: it continues the trace the job was
/// created in, after a `queue.wait` span from when the job became due to
/// its claim, and carries `trace_id` into every log line of the job.
fn job_span(claimed: &editthinker_store::ClaimedJob) -> tracing::Span {
    use editthinker_core::trace;
    let job = &claimed.job;
    let span = tracing::info_span!(
        "job",
        job_id = %job.id,
        attempt = claimed.lease.attempt,
        trace_id = tracing::field::Empty,
    );
    let stored = job.traceparent.as_deref();
    if let Some(traceparent) = stored {
        let due = job.run_at.max(job.created_at);
        trace::record_past_span(
            "queue.wait",
            traceparent,
            due.into(),
            std::time::SystemTime::now(),
            vec![
                opentelemetry::KeyValue::new("job_id", job.id.to_string()),
                opentelemetry::KeyValue::new("attempt", i64::from(claimed.lease.attempt)),
            ],
        );
    }
    trace::continue_trace(&span, stored);
    let trace_id = trace::trace_id_of_span(&span)
        .or_else(|| stored.and_then(trace::trace_id_of).map(str::to_owned));
    if let Some(id) = trace_id {
        span.record("trace_id", id);
    }
    span
}

/// Everything a worker needs to run jobs.
#[derive(Clone)]
pub struct Worker {
    store: Arc<dyn Store>,
    blobs: Arc<BlobStore>,
    editors: Arc<BTreeMap<String, Arc<dyn Editor>>>,
    thinker: Arc<dyn Thinker>,
    verifier: Option<Arc<dyn editthinker_core::Verifier>>,
    settings: WorkerSettings,
    owner: String,
    gate: Arc<ThinkerGate>,
}

impl Worker {
    /// A worker with a fresh, unique owner id (host name, pid and a random suffix).
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<BlobStore>,
        editors: BTreeMap<String, Arc<dyn Editor>>,
        thinker: Arc<dyn Thinker>,
        settings: WorkerSettings,
    ) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        let owner = format!(
            "{host}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        Self {
            store,
            blobs,
            editors: Arc::new(editors),
            thinker,
            verifier: None,
            settings,
            owner,
            gate: Arc::default(),
        }
    }

    /// This worker with a verifier (`[verifier]`): it scores every
    /// candidate and serves `options.rank_by = "verifier"` and
    /// `options.stop.verifier`.
    pub fn with_verifier(mut self, verifier: Arc<dyn editthinker_core::Verifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// The thinker's circuit breaker, for `/readyz` in a process that also
    /// serves the API.
    pub fn thinker_gate(&self) -> Arc<ThinkerGate> {
        self.gate.clone()
    }

    /// This worker's lease owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Claims and runs jobs until `shutdown` fires, then stops claiming,
    /// lets jobs finish the step in progress (up to the grace period),
    /// releases their leases and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut notices = self.store.subscribe();
        let mut jobs = JoinSet::new();
        let concurrency = self.settings.concurrency.max(1);
        info!(owner = %self.owner, concurrency, "worker started");
        let probes = tokio::spawn(self.gate.clone().run_probes(
            self.thinker.clone(),
            self.editors.clone(),
            self.settings.thinker_probe_interval,
            shutdown.clone(),
        ));
        let mut health = self.gate.subscribe();
        // The rescuer runs on its own interval, not on every claim: a
        // lease can only expire so often, and each pass is a write. The
        // deadline sweep rides along, so a queued job fails at most a
        // third of a lease after its deadline.
        let rescue_every = (self.settings.lease / 3).max(Duration::from_millis(500));
        let mut last_rescue: Option<tokio::time::Instant> = None;
        while !shutdown.is_cancelled() {
            if last_rescue.is_none_or(|at| at.elapsed() >= rescue_every) {
                last_rescue = Some(tokio::time::Instant::now());
                if let Err(e) = self.store.rescue_expired().await {
                    warn!(error = %e, "rescuing expired leases failed");
                }
                // Same pace for queued jobs whose deadline passed unclaimed.
                match self.store.expire_queued_deadlines().await {
                    Ok(0) => {}
                    Ok(n) => info!(jobs = n, "failed queued jobs past their deadline"),
                    Err(e) => warn!(error = %e, "expiring queued deadlines failed"),
                }
            }
            let free = concurrency.saturating_sub(jobs.len());
            // No claim while the thinker cannot judge an edit: a claimed
            // job would only wait (or, worse, buy an edit).
            if free > 0 && !self.gate.blocks_edits() {
                // The lease runs from before the claim was sent.
                let claimed_at = tokio::time::Instant::now();
                match self
                    .store
                    .claim(
                        &self.owner,
                        free as u32,
                        self.settings.lease,
                        self.settings.fairness,
                    )
                    .await
                {
                    Ok(claimed) => {
                        for claimed in claimed {
                            let span = job_span(&claimed);
                            let runner = job::JobRunner {
                                worker: self.clone(),
                                shutdown: shutdown.clone(),
                                claimed_at,
                            };
                            jobs.spawn(runner.run(claimed).instrument(span));
                        }
                    }
                    Err(e) => warn!(error = %e, "claiming jobs failed"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
                _ = wait_for_queued(&mut notices) => {}
                _ = health.changed() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        info!(in_flight = jobs.len(), "worker stopping: no new claims");
        while jobs.join_next().await.is_some() {}
        let _ = probes.await;
        info!("worker stopped");
    }
}

/// Resolves when a notice says a job was queued (or notices were lost).
async fn wait_for_queued(notices: &mut tokio::sync::broadcast::Receiver<Notice>) {
    loop {
        match notices.recv().await {
            Ok(Notice::Event { kind, .. }) if kind == editthinker_store::event_type::JOB_QUEUED => {
                return
            }
            Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => return,
            Ok(_) => {}
            // The store is gone; fall back to polling.
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}
