//! Queue positions for job reads (`queue_position`, docs/api.md).
//!
//! Ranking a job among the queued jobs costs the database work in
//! proportion to the queue, so a read of a queued job that ranked it each
//! time would slow down as the queue grows. Instead each API process ranks
//! the first [`SNAPSHOT_JOBS`] queued jobs in one query, at most once per
//! [`SNAPSHOT_MAX_AGE`] and only while queued jobs are being read; a read
//! finds its job's position there and stays one round trip. A job the
//! snapshot does not hold (queued since it was taken, or further back) is
//! ranked by the read's own query
//! ([`editthinker_store::Store::job_with_turns`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use editthinker_store::Store;
use uuid::Uuid;

/// How old a snapshot may be and still answer: a position is at most this
/// stale (claims do not change positions; a job finishing or a new
/// tenant's job can).
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(1);

/// Queued jobs a snapshot ranks, from the front of the queue.
pub const SNAPSHOT_JOBS: u32 = 10_000;

/// The front of the queue as last ranked.
struct Snapshot {
    taken: Instant,
    ahead: HashMap<Uuid, u64>,
}

/// This process's snapshot of queue positions.
pub struct QueuePositions {
    store: Arc<dyn Store>,
    snapshot: RwLock<Option<Snapshot>>,
    refreshing: AtomicBool,
}

impl QueuePositions {
    /// No snapshot yet: the first read of a queued job takes one.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            snapshot: RwLock::new(None),
            refreshing: AtomicBool::new(false),
        }
    }

    /// How many queued jobs claims take before `id`, when a snapshot at
    /// most [`SNAPSHOT_MAX_AGE`] old holds it.
    pub fn ahead(&self, id: Uuid) -> Option<u64> {
        let snapshot = self.snapshot.read().expect("positions lock");
        snapshot
            .as_ref()
            .filter(|s| s.taken.elapsed() < SNAPSHOT_MAX_AGE)
            .and_then(|s| s.ahead.get(&id).copied())
    }

    /// A queued job was read without a position from the snapshot: when
    /// the snapshot is missing or stale, ranks the queue's front anew in
    /// the background (one ranking at a time), for the reads after it.
    pub fn missed(self: &Arc<Self>) {
        let fresh = self
            .snapshot
            .read()
            .expect("positions lock")
            .as_ref()
            .is_some_and(|s| s.taken.elapsed() < SNAPSHOT_MAX_AGE);
        if !fresh {
            self.refresh();
        }
    }

    /// Ranks the queue's front in the background unless a ranking is
    /// already under way.
    fn refresh(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let taken = Instant::now();
            match this.store.queue_positions(SNAPSHOT_JOBS).await {
                Ok(ranked) => {
                    let snapshot = Snapshot {
                        taken,
                        ahead: ranked.into_iter().collect(),
                    };
                    *this.snapshot.write().expect("positions lock") = Some(snapshot);
                }
                // Reads rank their own jobs meanwhile; the next read of a
                // queued job tries again.
                Err(e) => tracing::warn!(error = %e, "ranking the queue failed"),
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }
}
