//! Queue positions for job reads (`queue_position`, docs/api.md).
//!
//! Ranking a job among the queued jobs costs the database work in
//! proportion to the queue, so a read of a queued job that ranked it each
//! time would slow down as the queue grows. Instead each API process ranks
//! the first [`SNAPSHOT_JOBS`] queued jobs in one query, at most once per
//! [`REFRESH_AFTER`] and only while queued jobs are being read (reads of
//! finished jobs never pay for a ranking); a read finds its job's position
//! there, or that the job was not queued, and stays one plain query. For a
//! job further back than the snapshot's front, the read ranks its job in
//! its own query ([`editthinker_store::Store::job_with_turns`]); a job
//! queued since the snapshot was taken, or read with no fresh snapshot,
//! costs a second query (crates/api/src/jobs.rs, `read_job`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use editthinker_store::Store;
use tokio::sync::Notify;
use uuid::Uuid;

/// How old a snapshot gets before a read that uses it starts a new
/// ranking in the background.
pub const REFRESH_AFTER: Duration = Duration::from_secs(1);

/// How old a snapshot may be and still answer, while the next ranking is
/// under way: a position is at most this stale (claims do not change
/// positions; a job finishing or a new tenant's job can).
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(2);

/// Longest a read without a fresh snapshot waits for the ranking under
/// way before it ranks its job itself.
pub const RANKING_WAIT: Duration = Duration::from_secs(1);

/// Queued jobs a snapshot ranks, from the front of the queue.
pub const SNAPSHOT_JOBS: u32 = 100_000;

/// The front of the queue as last ranked.
struct Snapshot {
    taken: Instant,
    ahead: HashMap<Uuid, u64>,
    /// Every queued job was ranked (fewer than [`SNAPSHOT_JOBS`]).
    complete: bool,
}

/// What a snapshot says about one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Queued, with this many jobs ahead of it.
    Ahead(u64),
    /// Not queued when the snapshot was taken (though it may have been
    /// queued since).
    NotQueued,
    /// Not in a snapshot that ranked only the queue's front: the read
    /// must rank the job itself.
    Unknown,
}

/// This process's snapshot of queue positions.
pub struct QueuePositions {
    store: Arc<dyn Store>,
    snapshot: RwLock<Option<Snapshot>>,
    refreshing: AtomicBool,
    /// Woken when a ranking ends.
    ranked: Notify,
}

impl QueuePositions {
    /// No snapshot yet: the first read that asks takes one.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            snapshot: RwLock::new(None),
            refreshing: AtomicBool::new(false),
            ranked: Notify::new(),
        }
    }

    /// What a snapshot at most [`SNAPSHOT_MAX_AGE`] old says about `id`;
    /// `None` without one. Starts no ranking ([`QueuePositions::keep_fresh`]
    /// does).
    pub fn look(&self, id: Uuid) -> Option<Position> {
        let snapshot = self.snapshot.read().expect("positions lock");
        let s = snapshot
            .as_ref()
            .filter(|s| s.taken.elapsed() < SNAPSHOT_MAX_AGE)?;
        Some(match s.ahead.get(&id) {
            Some(ahead) => Position::Ahead(*ahead),
            None if s.complete => Position::NotQueued,
            None => Position::Unknown,
        })
    }

    /// A queued job was read: a snapshot older than [`REFRESH_AFTER`], or
    /// none, starts a new ranking in the background (one at a time), for
    /// the reads after this one; meanwhile the older snapshot keeps
    /// answering.
    pub fn keep_fresh(self: &Arc<Self>) {
        let age = self
            .snapshot
            .read()
            .expect("positions lock")
            .as_ref()
            .map(|s| s.taken.elapsed());
        if age.is_none_or(|age| age >= REFRESH_AFTER) {
            self.refresh();
        }
    }

    /// What a fresh snapshot says about `id`, waiting (up to
    /// [`RANKING_WAIT`]) for the ranking under way, or starting one, when
    /// there is none: concurrent reads share one ranking instead of each
    /// ranking its own job. `None` when no snapshot came in time.
    pub async fn look_fresh(self: &Arc<Self>, id: Uuid) -> Option<Position> {
        if let Some(known) = self.look(id) {
            return Some(known);
        }
        let ranked = self.ranked.notified();
        tokio::pin!(ranked);
        // Registered before the ranking can end, so its wake-up is not missed.
        ranked.as_mut().enable();
        self.refresh();
        let _ = tokio::time::timeout(RANKING_WAIT, ranked).await;
        self.look(id)
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
                        complete: ranked.len() < SNAPSHOT_JOBS as usize,
                        ahead: ranked.into_iter().collect(),
                    };
                    *this.snapshot.write().expect("positions lock") = Some(snapshot);
                }
                // Reads rank their own jobs meanwhile; the next read that
                // finds no fresh snapshot tries again.
                Err(e) => tracing::warn!(error = %e, "ranking the queue failed"),
            }
            this.refreshing.store(false, Ordering::Release);
            this.ranked.notify_waiters();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use editthinker_store::{NewJob, SqliteStore};

    async fn queued(store: &Arc<dyn Store>) -> Uuid {
        let id = Uuid::now_v7();
        store
            .insert_job(NewJob {
                id,
                tenant: "t".into(),
                active_limit: None,
                instruction: "x".into(),
                editor: "e".into(),
                options: serde_json::json!({}),
                metadata: serde_json::json!({}),
                source_key: format!("jobs/{id}/source.png"),
                source_mime: "image/png".into(),
                max_attempts: 1,
                priority: 0,
                webhook: None,
                deadline_seconds: None,
                traceparent: None,
                sandbox: false,
            })
            .await
            .unwrap();
        id
    }

    /// A look knows nothing until a queued job's read asks for a
    /// ranking; later looks answer from it until it is older than
    /// [`SNAPSHOT_MAX_AGE`]; a job queued since is "not queued" by the
    /// snapshot, which the caller checks against the job's status.
    #[tokio::test]
    async fn positions_come_from_a_fresh_snapshot_taken_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::connect(&format!("sqlite://{}/p.db", dir.path().display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let first = queued(&store).await;
        let second = queued(&store).await;
        let positions = Arc::new(QueuePositions::new(store.clone()));
        assert_eq!(positions.look(first), None);
        // Looking alone never ranks.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(positions.look(first), None);
        positions.keep_fresh();
        let deadline = Instant::now() + Duration::from_secs(10);
        while positions.look(second).is_none() {
            assert!(Instant::now() < deadline, "no snapshot was taken");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(positions.look(first), Some(Position::Ahead(0)));
        assert_eq!(positions.look(second), Some(Position::Ahead(1)));
        let third = queued(&store).await;
        assert_eq!(positions.look(third), Some(Position::NotQueued));
        // A fresh snapshot is kept: no new ranking yet.
        positions.keep_fresh();
        assert_eq!(positions.look(third), Some(Position::NotQueued));
        // Past REFRESH_AFTER the old snapshot answers while a new one is
        // taken.
        tokio::time::sleep(REFRESH_AFTER).await;
        positions.keep_fresh();
        assert!(positions.look(third).is_some());
        while positions.look(third) == Some(Position::NotQueued) {
            assert!(Instant::now() < deadline, "no second snapshot");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(positions.look(third), Some(Position::Ahead(2)));
        // Past SNAPSHOT_MAX_AGE with no queued read, it says nothing.
        tokio::time::sleep(SNAPSHOT_MAX_AGE).await;
        assert_eq!(positions.look(third), None);
        // Until a read waits for the next ranking.
        let fourth = queued(&store).await;
        assert_eq!(positions.look_fresh(fourth).await, Some(Position::Ahead(3)));
    }
}
