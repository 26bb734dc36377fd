//! The webhook delivery loop: claims due rows of the outbox
//! (`webhook_deliveries`, written with each event in the store), makes one
//! attempt each with the [`Deliverer`], and records the outcome with the
//! next attempt's time from the [`RetrySchedule`].
//!
//! At least once: a row is locked while its attempt runs; a process that
//! dies mid-attempt lets the lock lapse and any process takes the row over.
//!
//! A `410 Gone` answer ends that delivery and the job's other pending
//! deliveries to the same URL (`failed`, the reason in `last_error`); a
//! delivery of the job to that URL claimed later is ended the same way
//! before it is sent, since its row may be written after the 410.

use std::sync::Arc;
use std::time::Duration;

use editthinker_store::{DeliveryAttempt, DeliveryRow, DeliveryStatus, DueDelivery, Notice, Store};
use editthinker_webhooks::{Deliverer, DeliveryRequest, Outcome, RetrySchedule, Secret};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Rows claimed per look.
const BATCH: u32 = 64;
/// Attempts in flight per process, all hosts together.
const IN_FLIGHT: usize = 64;

/// How the loop runs.
pub struct Outbox {
    /// Where the rows are.
    pub store: Arc<dyn Store>,
    /// Makes the attempts.
    pub deliverer: Arc<Deliverer>,
    /// Signs the deliveries of tenants without a secret of their own
    /// (`[webhooks] secret_env`).
    pub default_secret: Option<Secret>,
    /// Delays between attempts.
    pub schedule: RetrySchedule,
    /// One attempt's time limit (the row lock outlasts it).
    pub timeout: Duration,
    /// Longest wait between looks when no event arrives.
    pub poll_interval: Duration,
}

impl Outbox {
    /// Runs until `shutdown`; attempts under way are finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut notices = Some(this.store.subscribe());
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        // A row stays locked through the wait for a host slot and the attempt.
        let lock = this.timeout * 2 + Duration::from_secs(5);
        loop {
            let claimed = match this.store.claim_deliveries(BATCH, lock).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming webhook deliveries failed");
                    Vec::new()
                }
            };
            let full = claimed.len() == BATCH as usize;
            for due in claimed {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    this.attempt(due).await;
                    drop(slot);
                });
            }
            if !full && !this.wait_for_work(&mut notices, &shutdown).await {
                break;
            }
        }
        // Let the attempts under way record their outcome.
        let _ = slots.acquire_many(IN_FLIGHT as u32).await;
    }

    /// Waits until a look for due rows is worth making: the poll interval
    /// passed, or a stored event (which may have a delivery) was announced.
    /// Live events are not stored and are ignored. `false` on shutdown.
    async fn wait_for_work(
        &self,
        notices: &mut Option<broadcast::Receiver<Notice>>,
        shutdown: &CancellationToken,
    ) -> bool {
        let poll = tokio::time::sleep(self.poll_interval);
        tokio::pin!(poll);
        loop {
            let notice = async {
                match notices.as_mut() {
                    Some(n) => n.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = &mut poll => return true,
                notice = notice => match notice {
                    Ok(Notice::Live { .. }) => {}
                    Ok(Notice::Event { .. } | Notice::Resync) | Err(RecvError::Lagged(_)) => {
                        return true;
                    }
                    // No more notices: the poll interval alone paces the loop.
                    Err(RecvError::Closed) => *notices = None,
                },
            }
        }
    }

    /// The secret that signs a delivery: its tenant's, else the server's.
    fn secret_for(&self, due: &DueDelivery) -> Result<Secret, String> {
        match &due.tenant_secret {
            Some(own) => Secret::parse(own)
                .map_err(|e| format!("the tenant's webhook secret is unusable: {e}")),
            None => self.default_secret.clone().ok_or_else(|| {
                "no webhook secret: the tenant has none and [webhooks] secret_env is not set"
                    .to_string()
            }),
        }
    }

    async fn attempt(&self, due: DueDelivery) {
        let delivery = &due.delivery;
        if let Some(gone) = self.gone_before(delivery).await {
            self.cancel(delivery, &gone_reason(gone)).await;
            return;
        }
        let outcome = match self.secret_for(&due) {
            Ok(secret) => self.deliverer.deliver(&self.request(&due, secret)).await,
            Err(error) => Outcome::Failed {
                status: None,
                error,
            },
        };
        let gone = matches!(outcome, Outcome::Gone { .. });
        self.record(delivery, outcome).await;
        if gone {
            self.cancel(delivery, &gone_reason(delivery.id)).await;
        }
    }

    /// Another delivery of `delivery`'s job to the same URL that was
    /// answered 410 Gone, if any. On a store error the attempt goes ahead:
    /// one unwanted request is better than a lost event.
    async fn gone_before(&self, delivery: &DeliveryRow) -> Option<uuid::Uuid> {
        match self.store.list_deliveries(delivery.job_id).await {
            Ok(rows) => rows
                .iter()
                .find(|d| {
                    d.id != delivery.id
                        && d.url == delivery.url
                        && d.status == DeliveryStatus::Failed
                        && d.last_status_code == Some(410)
                })
                .map(|d| d.id),
            Err(e) => {
                tracing::warn!(error = %e, delivery_id = %delivery.id, "listing a job's webhook deliveries failed");
                None
            }
        }
    }

    /// Ends the job's pending deliveries to `delivery`'s URL.
    async fn cancel(&self, delivery: &DeliveryRow, reason: &str) {
        match self
            .store
            .cancel_deliveries(delivery.job_id, &delivery.url, reason)
            .await
        {
            Ok(ended) => tracing::info!(
                job_id = %delivery.job_id, ended, "webhook receiver answered 410 Gone; pending deliveries to it ended"
            ),
            // Those rows stay pending; when claimed they are ended then.
            Err(e) => {
                tracing::warn!(error = %e, job_id = %delivery.job_id, "ending deliveries after a 410 failed")
            }
        }
    }

    fn request(&self, due: &DueDelivery, secret: Secret) -> DeliveryRequest {
        let delivery = &due.delivery;
        DeliveryRequest {
            id: delivery.id.to_string(),
            url: delivery.url.clone(),
            kind: delivery.kind.clone(),
            timestamp: due.event.created_at,
            data: editthinker_api::events::public_event_data(&due.event),
            secret,
        }
    }

    async fn record(&self, delivery: &editthinker_store::DeliveryRow, outcome: Outcome) {
        let attempt = match outcome {
            Outcome::Delivered { status } => DeliveryAttempt {
                delivered: true,
                status_code: Some(status),
                error: None,
                retry_at: None,
            },
            // No retry: the receiver said it wants no more.
            Outcome::Gone { error } => DeliveryAttempt {
                delivered: false,
                status_code: Some(410),
                error: Some(error),
                retry_at: None,
            },
            Outcome::Failed { status, error } => {
                let failed = delivery.attempts + 1;
                let retry_at = self
                    .schedule
                    .next_delay(failed, rand::random::<f64>())
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .map(|d| chrono::Utc::now() + d);
                tracing::info!(
                    delivery_id = %delivery.id, job_id = %delivery.job_id, attempt = failed,
                    error = %error, retry_at = ?retry_at, "webhook delivery attempt failed"
                );
                DeliveryAttempt {
                    delivered: false,
                    status_code: status,
                    error: Some(error),
                    retry_at,
                }
            }
        };
        editthinker_core::metrics::webhook_delivery(if attempt.delivered {
            "delivered"
        } else if attempt.retry_at.is_some() {
            "failed"
        } else {
            "gave_up"
        });
        if let Err(e) = self.store.record_delivery(delivery.id, attempt).await {
            // The lock lapses and the row is tried again: at least once.
            tracing::warn!(error = %e, delivery_id = %delivery.id, "recording a webhook attempt failed");
        }
    }
}

/// The `last_error` of a delivery ended because delivery `gone` of the same
/// job to the same URL was answered 410 Gone.
fn gone_reason(gone: uuid::Uuid) -> String {
    format!("not sent: delivery {gone} to this URL was answered 410 Gone")
}
