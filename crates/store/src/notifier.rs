//! NOTIFYs sent after their transaction committed, many in one statement.
//!
//! A transaction that NOTIFYs takes a database-wide lock at commit and
//! holds it until its commit record is flushed, so creates that each
//! NOTIFY in their own transaction commit one at a time, one disk flush
//! each, instead of sharing flushes (docs/benchmarks.md, "api"). A create
//! hands its notice to the [`Notifier`] once it committed; one task sends
//! whatever gathered while its previous statement ran, as one statement
//! whose transaction writes nothing else (its commit does not wait for a
//! flush). A notice lost to a crash or an error in between costs a
//! listener a wait, not an event: workers poll the queue and event streams
//! re-read the table on a timer.

use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Payloads waiting for the sender task.
pub(crate) struct Notifier {
    pending: Mutex<Vec<String>>,
    wake: Notify,
}

impl Notifier {
    /// A notifier on `channel` and its sender task, which stops when the
    /// handle is aborted.
    pub(crate) fn spawn(pool: PgPool, channel: &'static str) -> (Arc<Self>, JoinHandle<()>) {
        let notifier = Arc::new(Self {
            pending: Mutex::new(Vec::new()),
            wake: Notify::new(),
        });
        let task = tokio::spawn(send_loop(notifier.clone(), pool, channel));
        (notifier, task)
    }

    /// Queues `payload`, to be sent soon on the channel.
    pub(crate) fn send(&self, payload: String) {
        self.pending
            .lock()
            .expect("the notifier's lock is never poisoned")
            .push(payload);
        // Stores a permit when the task is busy: nothing queued is left
        // behind when its statement returns.
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .expect("the notifier's lock is never poisoned"),
        )
    }
}

async fn send_loop(notifier: Arc<Notifier>, pool: PgPool, channel: &'static str) {
    loop {
        notifier.wake.notified().await;
        let batch = notifier.take();
        if batch.is_empty() {
            continue;
        }
        let sent = sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
            .bind(channel)
            .bind(&batch)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, notices = batch.len(),
                "sending notices failed; workers and event streams find the events by polling");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgListener;
    use std::collections::BTreeSet;
    use std::time::Duration;

    /// Every payload queued in a burst arrives, in as few statements as
    /// the task needed.
    #[tokio::test]
    async fn a_burst_of_notices_all_arrive() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let channel = "editthinker_notifier_test";
        let mut listener = PgListener::connect(&url).await.unwrap();
        listener.listen(channel).await.unwrap();
        let pool = PgPool::connect(&url).await.unwrap();
        let (notifier, task) = Notifier::spawn(pool, channel);
        let sent: BTreeSet<String> = (0..200).map(|n| format!("payload-{n}")).collect();
        for payload in &sent {
            notifier.send(payload.clone());
        }
        let mut received = BTreeSet::new();
        while received.len() < sent.len() {
            let notice = tokio::time::timeout(Duration::from_secs(10), listener.recv())
                .await
                .expect("every notice arrives")
                .unwrap();
            received.insert(notice.payload().to_string());
        }
        assert_eq!(received, sent);
        task.abort();
    }
}
