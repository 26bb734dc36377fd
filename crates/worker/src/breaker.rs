//! The thinker's circuit breaker: no paid edit for a job that cannot be
//! critiqued. A probe task asks the thinker (`Thinker::probe`: a cheap call,
//! no generation) at start and every few seconds; while it fails the worker
//! claims no jobs and a running job waits before its next edit
//! (crates/worker/src/observer.rs). It closes by itself when a probe
//! succeeds again. The same task probes each editor whose API offers a free
//! call; those results are only reported (`/readyz`), never block: an
//! editor is chosen per job, and its own errors are classed per call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use editthinker_core::{Editor, Thinker};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The longest a probe may take; a slower answer counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the last probe of the thinker found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinkerHealth {
    /// Not probed yet: the worker waits for the first answer before it
    /// claims anything.
    Unknown,
    /// The thinker answered.
    Reachable,
    /// It did not, for this reason.
    Unreachable(String),
}

impl ThinkerHealth {
    /// Whether edits wait: anything but a successful probe.
    pub fn blocks_edits(&self) -> bool {
        *self != Self::Reachable
    }
}

/// The breaker's state, shared by the claim loop, every running job and
/// (in `serve`) `/readyz`.
#[derive(Debug)]
pub struct ThinkerGate {
    health: watch::Sender<ThinkerHealth>,
    /// What the last probe of each editor found, by name: `None` when its
    /// API offers no free call (or before its first probe).
    editors: Mutex<BTreeMap<String, Option<Result<(), String>>>>,
}

impl Default for ThinkerGate {
    fn default() -> Self {
        Self {
            health: watch::Sender::new(ThinkerHealth::Unknown),
            editors: Mutex::default(),
        }
    }
}

impl ThinkerGate {
    /// What the last probe of each editor found (see the field).
    pub fn editor_checks(&self) -> BTreeMap<String, Option<Result<(), String>>> {
        self.editors.lock().expect("editor checks lock").clone()
    }

    /// What the last probe found.
    pub fn health(&self) -> ThinkerHealth {
        self.health.borrow().clone()
    }

    /// Whether claims and edits wait now.
    pub fn blocks_edits(&self) -> bool {
        self.health.borrow().blocks_edits()
    }

    /// A receiver that sees every change of health.
    pub fn subscribe(&self) -> watch::Receiver<ThinkerHealth> {
        self.health.subscribe()
    }

    /// Resolves once edits may go on (at once when they may now).
    pub async fn opened_for_edits(&self) {
        let mut rx = self.health.subscribe();
        // The sender lives as long as `self`: wait_for cannot fail here.
        let _ = rx.wait_for(|h| !h.blocks_edits()).await;
    }

    /// Records a probe's outcome, logging and counting a change.
    pub fn record(&self, outcome: Result<(), String>) {
        let next = match outcome {
            Ok(()) => ThinkerHealth::Reachable,
            Err(reason) => ThinkerHealth::Unreachable(reason),
        };
        let previous = self.health.send_replace(next.clone());
        editthinker_core::metrics::thinker_reachable(next == ThinkerHealth::Reachable);
        match (&previous, &next) {
            (ThinkerHealth::Reachable, ThinkerHealth::Reachable) => {}
            (_, ThinkerHealth::Reachable) => info!("thinker reachable: claiming jobs"),
            (ThinkerHealth::Unreachable(_), ThinkerHealth::Unreachable(_)) => {}
            (_, ThinkerHealth::Unreachable(reason)) => warn!(
                %reason,
                "thinker unreachable: claiming no jobs, and running jobs wait before their next edit, until it answers"
            ),
            (_, ThinkerHealth::Unknown) => {}
        }
    }

    /// Probes `thinker` and `editors` now and then every `every` until
    /// `shutdown`.
    pub async fn run_probes(
        self: Arc<Self>,
        thinker: Arc<dyn Thinker>,
        editors: Arc<BTreeMap<String, Arc<dyn Editor>>>,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            for (name, editor) in editors.iter() {
                let found = match tokio::time::timeout(PROBE_TIMEOUT, editor.probe()).await {
                    Ok(found) => found.map(|r| r.map_err(|e| e.to_string())),
                    Err(_) => Some(Err(format!(
                        "no answer to the probe within {} s",
                        PROBE_TIMEOUT.as_secs()
                    ))),
                };
                let previous = self
                    .editors
                    .lock()
                    .expect("editor checks lock")
                    .insert(name.clone(), found.clone());
                if let (Some(Err(reason)), false) = (&found, matches!(previous, Some(Some(Err(_)))))
                {
                    warn!(editor = %name, %reason, "editor unreachable");
                }
            }
            let outcome = match tokio::time::timeout(PROBE_TIMEOUT, thinker.probe()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "no answer to the probe within {} s",
                    PROBE_TIMEOUT.as_secs()
                )),
            };
            self.record(outcome);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn edits_wait_until_a_probe_succeeds() {
        let gate = Arc::new(ThinkerGate::default());
        assert!(gate.blocks_edits(), "unknown blocks until the first probe");
        gate.record(Err("connection refused".into()));
        assert_eq!(
            gate.health(),
            ThinkerHealth::Unreachable("connection refused".into())
        );
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.opened_for_edits().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "still closed to edits");
        gate.record(Ok(()));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("opened once a probe succeeds")
            .unwrap();
        assert!(!gate.blocks_edits());
    }
}
