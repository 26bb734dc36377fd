//! The lease's heartbeat: renewals bounded in time, and the cancel flag
//! they bring back.

use std::sync::Arc;

use editthinker_store::{Lease, Store, StoreError};
use tracing::warn;

use crate::lease::LeaseClock;
use crate::stop::{Interrupt, Stop};

/// Renews the lease every `heartbeat`, each renewal bounded by a timeout
/// shorter than the interval, so a hung connection cannot hold it up; the
/// clock then runs out by itself and the job stops.
pub(crate) async fn heartbeat(
    store: Arc<dyn Store>,
    lease: Lease,
    settings: crate::WorkerSettings,
    clock: LeaseClock,
    stop: Stop,
) {
    let timeout = settings.heartbeat.mul_f64(0.8);
    let mut wait = settings.heartbeat;
    loop {
        tokio::time::sleep(wait).await;
        // A failed renewal is tried again soon: a dropped connection must
        // not cost the lease (and with it a paid edit in flight).
        wait = settings.heartbeat / 4;
        if !clock.holds() {
            return;
        }
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout(timeout, store.heartbeat(&lease, settings.lease)).await {
            Ok(Ok(false)) => {
                clock.renewed(sent);
                wait = settings.heartbeat;
            }
            Ok(Ok(true)) => {
                clock.renewed(sent);
                stop.now(Interrupt::CancelRequested);
                return;
            }
            Ok(Err(StoreError::LeaseLost(_))) => {
                stop.now(Interrupt::LeaseLost);
                return;
            }
            Ok(Err(e)) => warn!(error = %e, "heartbeat failed"),
            Err(_) => warn!(?timeout, "heartbeat timed out"),
        }
    }
}
