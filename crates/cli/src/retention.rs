//! The retention sweep: deletes finished jobs older than `[retention] days`
//! with everything they own, and blob folders whose job does not exist
//! (a source stored for a create that then failed or was replayed).
//!
//! Rows go first, in small batches that skip locked rows (the queue is
//! never blocked: only finished jobs are touched), then the job's blob
//! folder. A blob delete that fails leaves an orphan folder, which the
//! orphan pass removes later.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use editthinker_store::{BlobStore, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Jobs deleted per transaction.
const BATCH: u32 = 100;
/// A blob folder younger than this is never an orphan: its job row may
/// still be on its way (the source is stored just before the insert).
const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// How the sweep runs.
pub struct Retention {
    /// The rows.
    pub store: Arc<dyn Store>,
    /// The blobs.
    pub blobs: Arc<BlobStore>,
    /// How long finished jobs are kept; `None`: for ever.
    pub keep: Option<Duration>,
    /// Time between passes over finished jobs.
    pub every: Duration,
    /// Time between orphan passes: each lists every job folder of the blob
    /// store, which costs far more than a pass over rows, and orphans are
    /// rare and harmless for a while.
    pub orphans_every: Duration,
}

impl Retention {
    /// Runs a pass over finished jobs every `every` and an orphan pass
    /// every `orphans_every`, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let ticker = |every| {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        };
        let (mut jobs, mut orphans) = (ticker(self.every), ticker(self.orphans_every));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = jobs.tick() => {
                    if let Some(keep) = self.keep {
                        self.delete_expired(keep, &shutdown).await;
                    }
                }
                _ = orphans.tick() => self.delete_orphans().await,
            }
        }
    }

    async fn delete_expired(&self, keep: Duration, shutdown: &CancellationToken) {
        let Ok(keep) = chrono::Duration::from_std(keep) else {
            return;
        };
        let before = chrono::Utc::now() - keep;
        while !shutdown.is_cancelled() {
            let ids = match self.store.delete_finished_before(before, BATCH).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "retention: deleting finished jobs failed");
                    return;
                }
            };
            for id in &ids {
                if let Err(e) = self.blobs.delete_job(*id).await {
                    tracing::warn!(error = %e, job_id = %id, "retention: deleting blobs failed (the orphan pass retries)");
                }
            }
            if !ids.is_empty() {
                tracing::info!(jobs = ids.len(), "retention: deleted finished jobs");
            }
            if ids.len() < BATCH as usize {
                return;
            }
        }
    }

    async fn delete_orphans(&self) {
        let folders = match self.blobs.job_folders().await {
            Ok(folders) => folders,
            Err(e) => {
                tracing::warn!(error = %e, "retention: listing blob folders failed");
                return;
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let old: Vec<Uuid> = folders
            .into_iter()
            .filter(|id| created_before(*id, now.saturating_sub(ORPHAN_GRACE)))
            .collect();
        for chunk in old.chunks(500) {
            let existing: HashSet<Uuid> = match self.store.existing_jobs(chunk).await {
                Ok(ids) => ids.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "retention: checking blob folders failed");
                    return;
                }
            };
            for id in chunk.iter().filter(|id| !existing.contains(id)) {
                match self.blobs.delete_job(*id).await {
                    Ok(()) => tracing::info!(job_id = %id, "retention: deleted orphaned blobs"),
                    Err(e) => {
                        tracing::warn!(error = %e, job_id = %id, "retention: deleting orphaned blobs failed")
                    }
                }
            }
        }
    }
}

/// Whether a job id (a UUIDv7, which carries its creation time) was made
/// before `cutoff` (time since the Unix epoch). Ids without a time are
/// never treated as old.
fn created_before(id: Uuid, cutoff: Duration) -> bool {
    id.get_timestamp().is_some_and(|ts| {
        let (secs, nanos) = ts.to_unix();
        Duration::new(secs, nanos) < cutoff
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_uuid_v7_ids_count_as_old() {
        let at = |secs: u64| Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, 0));
        let cutoff = Duration::from_secs(1_000_000);
        assert!(created_before(at(999_999), cutoff));
        assert!(!created_before(at(1_000_001), cutoff));
        assert!(
            !created_before(Uuid::new_v4(), cutoff),
            "no time in a v4 id"
        );
    }
}
