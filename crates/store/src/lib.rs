//! Persistence for jobs, turns and events, the job queue, and blob storage.
//!
//! One [`Store`] API with two backends: Postgres (production, many replicas)
//! and SQLite (embedded default, one process). Both pass the same
//! conformance suite (`tests/conformance.rs`). Image bytes live in a
//! [`BlobStore`]; rows hold keys only.

#![warn(missing_docs)]

mod blobs;
mod classify;
mod clean;
mod direct_conns;
mod model;
mod notifier;
mod payload;
mod postgres;
mod sqlite;
mod transition;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use uuid::Uuid;

pub use blobs::{BlobError, BlobStore};
pub use model::*;
pub use payload::MAX_LIVE_PAYLOAD;
pub use postgres::{PgStore, CHANNEL as PG_NOTIFY_CHANNEL};
pub use sqlite::SqliteStore;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable or refused the statement for a reason
    /// that passes (lost connection, pool exhausted, serialization failure,
    /// deadlock, shutdown, busy): the same write may succeed later.
    /// [`StoreError::is_transient`].
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// The database refused the data itself (an encoding it cannot store,
    /// a constraint, a value too long or out of range, one that does not
    /// decode): the same write fails every time, so it is never retried.
    #[error("data refused by the database: {0}")]
    Data(String),
    /// Any other database error (a statement or schema the database does
    /// not accept): a bug or a mismatched schema, not retried either.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// Migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The caller's lease is gone (expired and rescued, or released): it
    /// must stop working on the job and write nothing more.
    #[error("lease lost for job {0}")]
    LeaseLost(Uuid),
    /// No such job.
    #[error("job {0} not found")]
    NotFound(Uuid),
    /// The operation does not apply in the job's current state.
    #[error("job {id} is {status}")]
    Conflict {
        /// The job.
        id: Uuid,
        /// Its current status.
        status: JobStatus,
    },
    /// A database URL we cannot use.
    #[error("unsupported database_url: {0}")]
    BadUrl(String),
    /// Stored data that does not decode (a bug or a manual edit).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The turn is already recorded with another image; recorded turns are
    /// never replaced.
    #[error("turn {index} of job {job_id} is already recorded")]
    TurnRecorded {
        /// The job.
        job_id: Uuid,
        /// The turn.
        index: u32,
    },
    /// The tenant already has its limit of queued and running jobs.
    #[error("tenant {tenant} already has {limit} jobs queued or running")]
    ActiveJobsLimit {
        /// The tenant.
        tenant: String,
        /// Its limit.
        limit: u32,
    },
    /// A live event too large to deliver.
    #[error("live event of {0} bytes is over the limit of {MAX_LIVE_PAYLOAD}")]
    LiveTooLarge(usize),
}

impl StoreError {
    /// Whether the same call may succeed if made again later: only
    /// [`StoreError::Unavailable`]. Everything else (refused data, a lost
    /// lease, a conflict, a bug) fails the same way every time.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Result alias for the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// The job store and queue. All writes about a claimed job take its
/// [`Lease`] and are fenced on `(id, attempt, owner)`: a stale worker gets
/// [`StoreError::LeaseLost`] and changes nothing. Every state change writes
/// its `job_events` row in the same transaction and then wakes subscribers.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// Readiness: the database answers and every migration is applied.
    async fn ready(&self) -> StoreResult<bool>;

    /// Inserts a queued job and its `job.queued` event. With
    /// `job.active_limit`, refuses ([`StoreError::ActiveJobsLimit`]) when
    /// the tenant already has that many jobs queued or running, checked in
    /// the inserting transaction so that it holds across API replicas.
    async fn insert_job(&self, job: NewJob) -> StoreResult<JobRow>;
    /// Inserts a queued job under an `Idempotency-Key` (remembered for
    /// [`IDEMPOTENCY_WINDOW`]): the first request with the key makes the
    /// job; a later one with the same `digest` gets that job back, one with
    /// another digest is refused. Concurrent requests with one key make one
    /// job. Keys are per tenant (`job.tenant`).
    async fn insert_job_idempotent(
        &self,
        job: NewJob,
        key: &str,
        digest: &str,
    ) -> StoreResult<IdempotentInsert>;
    /// What a create would meet, checked before anything is stored for
    /// it: [`CreateCheck::Answered`] when its idempotency key (`(key,
    /// digest)`) replays an earlier job or was used for another request;
    /// [`StoreError::ActiveJobsLimit`] when the tenant is at
    /// `active_limit`; [`CreateCheck::Proceed`] (with the count, when the
    /// limit was checked) to go ahead. A replay is answered even at the
    /// limit (it makes no job). The insert checks both again atomically;
    /// this only keeps refused creates from storing their image.
    async fn check_create(
        &self,
        tenant: &str,
        active_limit: Option<u32>,
        idempotency: Option<(&str, &str)>,
    ) -> StoreResult<CreateCheck>;
    /// Remembers the status the request that made `key`'s job was
    /// answered with (default 202), for its replays
    /// ([`IdempotentInsert::Replayed`]).
    async fn record_idempotent_status(
        &self,
        tenant: &str,
        key: &str,
        status: u16,
    ) -> StoreResult<()>;
    /// One job.
    async fn get_job(&self, id: Uuid) -> StoreResult<Option<JobRow>>;
    /// One job, only when it belongs to `tenant`: another tenant's job is
    /// `None` exactly as a missing one is, from the same query, so that
    /// neither the answer nor its timing tells the two apart.
    async fn get_job_for_tenant(&self, id: Uuid, tenant: &str) -> StoreResult<Option<JobRow>>;
    /// The tenant's job `id` with its turns and, with `position` and
    /// while it is queued, [`Store::jobs_ahead`]: the whole read of
    /// `GET /v1/jobs/{id}` in one query (one round trip on Postgres).
    /// Another tenant's job is `None` like a missing one, as with
    /// [`Store::get_job_for_tenant`].
    async fn job_with_turns(
        &self,
        id: Uuid,
        tenant: &str,
        position: bool,
    ) -> StoreResult<Option<JobWithTurns>>;
    /// Puts a `failed` job back in the queue with `attempts` more attempts
    /// (`job.queued` event); its recorded turns stay, so it resumes after
    /// the last one. [`StoreError::Conflict`] when it is not failed.
    async fn retry_failed(&self, id: Uuid, attempts: u32) -> StoreResult<JobRow>;
    /// About how many queued jobs claims take before this one, in the
    /// default claim order ([`Fairness::Tenant`]): every queued job of a
    /// higher priority, plus, at its priority, every job with an earlier
    /// turn (or the same turn and older). Claims leave turns as they are (a
    /// claimed job moves from its tenant's queue to its running jobs), so
    /// the estimate holds until something else changes: a job finishing
    /// moves its tenant's later jobs one turn up, a new tenant's or a
    /// higher priority's job can pass this one, jobs waiting out a retry
    /// backoff count as if due, and workers running with
    /// `fairness = "none"` claim in plain age order instead.
    /// `None` when the job is not queued.
    async fn jobs_ahead(&self, id: Uuid) -> StoreResult<Option<u64>>;
    /// The first `limit` queued jobs in the order of [`Store::jobs_ahead`],
    /// each with how many queued jobs claims take before it, ranked in one
    /// query (the API's position snapshot, crates/api/src/positions.rs).
    async fn queue_positions(&self, limit: u32) -> StoreResult<Vec<(Uuid, u64)>>;
    /// A job's webhook deliveries, in event order.
    async fn list_deliveries(&self, job_id: Uuid) -> StoreResult<Vec<DeliveryRow>>;
    /// Claims up to `limit` pending deliveries that are due, locking each
    /// for `lock` (a delivery loop that dies lets the lock lapse and another
    /// takes the row over: at least once).
    async fn claim_deliveries(&self, limit: u32, lock: Duration) -> StoreResult<Vec<DueDelivery>>;
    /// Records one attempt of a claimed delivery.
    async fn record_delivery(&self, id: Uuid, attempt: DeliveryAttempt) -> StoreResult<()>;
    /// Ends a job's pending deliveries to `url` without another attempt:
    /// `failed`, with `reason` as their `last_error` and their attempts and
    /// last status left as they were (the receiver answered 410 Gone).
    /// Returns how many it ended.
    async fn cancel_deliveries(&self, job_id: Uuid, url: &str, reason: &str) -> StoreResult<u64>;
    /// A tenant's jobs, newest first (by id, which is a UUIDv7), optionally
    /// filtered by status, starting after `cursor` (exclusive).
    async fn list_jobs(
        &self,
        tenant: &str,
        status: Option<JobStatus>,
        limit: u32,
        cursor: Option<Uuid>,
    ) -> StoreResult<Vec<JobRow>>;
    /// A job's turns in order.
    async fn list_turns(&self, job_id: Uuid) -> StoreResult<Vec<TurnRow>>;
    /// Cancels a queued job at once (status canceled, `job.canceled` event),
    /// or flags a running one (its worker sees the flag at its next
    /// heartbeat). `Conflict` when the job is finished; `NotFound`.
    async fn request_cancel(&self, id: Uuid) -> StoreResult<JobRow>;

    /// Claims up to `limit` queued jobs whose `run_at` is due, highest
    /// priority first; within a priority, by `fairness`: with
    /// [`Fairness::Tenant`] by turn (the tenant's running jobs of that
    /// priority plus the job's rank in its tenant's due queue; ties by
    /// `run_at`, then id), with [`Fairness::None`] oldest `run_at`, then id. Each
    /// claimed job: status running, `attempt + 1`, lease owner `owner`
    /// until now + `lease`, `started_at` set if unset, `job.started` event.
    /// Returned in claim order.
    ///
    /// The fairness is the caller's (the worker's `[worker] fairness`),
    /// not the store's, so that every worker states the order it claims
    /// in. On Postgres a tenant-fair claim reads, on the
    /// `jobs_fair_claim_idx` index, one entry per (priority, tenant) with
    /// queued jobs and a few jobs of each: its cost grows with the number
    /// of tenants, not the depth of their queues. SQLite (one process)
    /// ranks every due queued job. [`Fairness::None`] reads only the first
    /// rows.
    async fn claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        fairness: Fairness,
    ) -> StoreResult<Vec<ClaimedJob>>;
    /// Extends the lease to now + `lease`; returns whether cancel was requested.
    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> StoreResult<bool>;
    /// Records a new turn (critique empty) and its `turn.edited` event.
    async fn record_turn(&self, lease: &Lease, turn: NewTurn) -> StoreResult<()>;
    /// Sets a turn's critique and writes its `turn.critiqued` event.
    async fn record_critique(
        &self,
        lease: &Lease,
        index: u32,
        critique: &serde_json::Value,
        thinker_ms: u64,
        raw_output: &str,
        parse_error: Option<&str>,
    ) -> StoreResult<()>;
    /// Records candidate `candidate.index` of a turn of several, edited
    /// (its `turn.edited` event carries `candidate`). Recording the same
    /// candidate again with the same image is a no-op.
    async fn record_candidate(&self, lease: &Lease, candidate: NewCandidate) -> StoreResult<()>;
    /// Sets a candidate's critique (`turn.critiqued` with `candidate`).
    #[allow(clippy::too_many_arguments)]
    async fn record_candidate_critique(
        &self,
        lease: &Lease,
        turn: u32,
        candidate: u32,
        critique: &serde_json::Value,
        thinker_ms: u64,
        raw_output: &str,
        parse_error: Option<&str>,
    ) -> StoreResult<()>;
    /// Records the turn of several candidates as its chosen candidate
    /// (instruction, image, timing and critique copied into `turns`) and
    /// writes `turn.chosen`. Recording the same choice again is a no-op.
    async fn record_chosen(&self, lease: &Lease, chosen: &ChosenRecord) -> StoreResult<()>;
    /// A job's candidates, by turn and number.
    async fn list_candidates(&self, job_id: Uuid) -> StoreResult<Vec<CandidateRow>>;
    /// Records the asynchronous edit in flight (`jobs.pending_edit`, or the
    /// candidate's row in a turn of several) so a resumed job polls it
    /// instead of submitting again; cleared when the edit is recorded.
    async fn record_pending_edit(
        &self,
        lease: &Lease,
        pending: &PendingEditRecord,
    ) -> StoreResult<()>;
    /// Marks the job succeeded with `result_turn` (`job.succeeded` event),
    /// with the refusal that ended the loop early, if any, and why it
    /// stopped.
    async fn complete(
        &self,
        lease: &Lease,
        result_turn: u32,
        refusal: Option<&RefusalRecord>,
        stop: StopReason,
    ) -> StoreResult<()>;
    /// Marks the job failed for good (`job.failed` event).
    async fn fail(&self, lease: &Lease, code: &str, message: &str) -> StoreResult<()>;
    /// A transient failure: back to queued with `run_at = now + delay` and
    /// the error kept for inspection, or failed (`job.failed`) when
    /// `attempt >= max_attempts`. Returns the job's new status.
    async fn retry_later(
        &self,
        lease: &Lease,
        code: &str,
        message: &str,
        delay: Duration,
    ) -> StoreResult<JobStatus>;
    /// Marks a running job canceled (`job.canceled` event).
    async fn mark_canceled(&self, lease: &Lease) -> StoreResult<()>;
    /// Graceful shutdown: back to queued, due now, the attempt not counted.
    async fn release(&self, lease: &Lease) -> StoreResult<()>;
    /// Requeues running jobs whose lease expired (or fails them, with code
    /// `lease_expired` and a `job.failed` event, when attempts are spent).
    /// Returns how many jobs it touched.
    async fn rescue_expired(&self) -> StoreResult<u64>;

    /// Fails queued jobs whose deadline has passed and that have no
    /// recorded turn (`deadline_exceeded`, `job.failed`), at most 500 a
    /// call. (A queued job with turns is finished by the worker that claims
    /// it, which selects among them.) Returns how many it failed.
    async fn expire_queued_deadlines(&self) -> StoreResult<u64>;
    /// Retention: deletes up to `limit` jobs that finished before `before`,
    /// with their turns, events, webhook deliveries and idempotency keys
    /// (the rows cascade), and forgets idempotency keys past their window.
    /// Returns the deleted jobs' ids (their blobs are the caller's to
    /// delete). Queued and running jobs are never touched.
    async fn delete_finished_before(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Uuid>>;
    /// Which of `ids` name jobs that exist.
    async fn existing_jobs(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>>;
    /// A job's events with id greater than `after`, in id order.
    async fn events_after(&self, job_id: Uuid, after: i64) -> StoreResult<Vec<EventRow>>;
    /// The newest event id of each of `jobs` that has events, in one query:
    /// the per-process safety net of the SSE fan-out compares it with what
    /// it has delivered.
    async fn latest_event_ids(&self, jobs: &[Uuid]) -> StoreResult<Vec<(Uuid, i64)>>;
    /// Stores an API key (only its hash), creating its tenant's row when
    /// the tenant has none.
    async fn insert_api_key(&self, key: NewApiKey) -> StoreResult<ApiKeyRow>;
    /// Every key, revoked ones included, oldest first.
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRow>>;
    /// Revokes a key; `false` when there is no such key or it was revoked.
    async fn revoke_api_key(&self, id: Uuid) -> StoreResult<bool>;
    /// The key whose hash this is, unless revoked.
    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRow>>;
    /// Sets a tenant's own webhook secret (`whsec_…`), creating its row.
    async fn set_tenant_webhook_secret(&self, tenant: &str, secret: &str) -> StoreResult<()>;
    /// A tenant's own webhook secret, if it has one.
    async fn tenant_webhook_secret(&self, tenant: &str) -> StoreResult<Option<String>>;
    /// Records one paid provider call of `job_id` in the usage ledger, with
    /// the job's tenant and editor. Not fenced by a lease: a call made by an
    /// attempt that then lost its job was paid all the same. A job that no
    /// longer exists records nothing.
    async fn record_call(&self, job_id: Uuid, call: &NewCall) -> StoreResult<()>;
    /// A job's usage ledger, in the order the calls were recorded.
    async fn job_calls(&self, job_id: Uuid) -> StoreResult<JobLedger>;
    /// A tenant's usage of calls recorded in `[since, until)`, by the
    /// jobs' editor, sorted by editor.
    async fn tenant_usage(
        &self,
        tenant: &str,
        since: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<EditorUsage>>;
    /// Jobs queued and running, and how long the oldest due queued job has
    /// waited: one cheap query, for the queue gauges.
    async fn queue_stats(&self) -> StoreResult<QueueStats>;
    /// Live notices of new events (all jobs). On Postgres this is fed by a
    /// LISTEN connection; a [`Notice::Resync`] means notices may have been
    /// missed and subscribers should re-read from the table.
    fn subscribe(&self) -> broadcast::Receiver<Notice>;
    /// Sends a live, unstored event to every subscriber in every process
    /// ([`Notice::Live`]); best effort, at most once. Payloads must stay
    /// small (a few KB): Postgres carries them in a NOTIFY.
    async fn publish_live(
        &self,
        job_id: Uuid,
        kind: &str,
        data: serde_json::Value,
    ) -> StoreResult<()>;
}

/// Opens the store for `database_url` (`postgres://…` or `sqlite://…`),
/// creating the SQLite file and its folder when missing.
pub async fn connect(database_url: &str) -> StoreResult<Arc<dyn Store>> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(database_url).await?))
    } else if database_url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(database_url).await?))
    } else {
        Err(StoreError::BadUrl(format!(
            "{database_url}: expected postgres://… or sqlite://…"
        )))
    }
}

/// The common table expressions behind [`Store::jobs_ahead`] for both
/// backends, given `me`: a query of the job's `id` and `priority`, empty
/// when the job is not queued. They define `same`, the queued jobs of its
/// priority with their turn (the tenant's running jobs of that priority
/// plus the job's rank in its tenant's queue), and `mine`, the job's own
/// row of it. Only the job's own priority is ranked, on the
/// `jobs_fair_claim_idx` index. `mine` is MATERIALIZED: inlined, Postgres
/// joined `same` with itself, which grows with the square of the queue
/// (142 ms for one position among 700 queued jobs).
fn jobs_ahead_ctes(me: &str) -> String {
    format!(
        "me AS ({me}), \
         running AS (SELECT q.tenant, count(*) AS n FROM jobs q JOIN me ON q.priority = me.priority \
                     WHERE q.status = 'running' GROUP BY q.tenant), \
         same AS (SELECT q.id, q.run_at, coalesce(r.n, 0) + \
                  row_number() OVER (PARTITION BY q.tenant ORDER BY q.run_at, q.id) AS turn \
                  FROM jobs q JOIN me ON q.priority = me.priority \
                  LEFT JOIN running r ON r.tenant = q.tenant WHERE q.status = 'queued'), \
         mine AS MATERIALIZED (SELECT s.id, s.run_at, s.turn FROM same s JOIN me ON s.id = me.id)"
    )
}

/// The queued jobs the tenant-fair claim order puts before the job of
/// [`jobs_ahead_ctes`] (higher priority; at the same priority, an earlier
/// turn, or the same turn and older), or NULL when it is not queued.
const JOBS_AHEAD: &str = "CASE WHEN EXISTS (SELECT 1 FROM me) THEN \
         (SELECT count(*) FROM jobs q JOIN me ON q.priority > me.priority \
          WHERE q.status = 'queued') \
       + (SELECT count(*) FROM same s JOIN mine m ON s.turn < m.turn \
          OR (s.turn = m.turn AND (s.run_at < m.run_at \
              OR (s.run_at = m.run_at AND s.id < m.id)))) END";

/// The query behind [`Store::jobs_ahead`] (`id`: the job id's
/// placeholder): `ahead`, NULL when the job is not queued.
fn jobs_ahead_sql(id: &str) -> String {
    format!(
        "WITH {} SELECT {JOBS_AHEAD} AS ahead",
        jobs_ahead_ctes(&format!(
            "SELECT id, priority FROM jobs WHERE id = {id} AND status = 'queued'"
        ))
    )
}

/// The query behind [`Store::queue_positions`] (`limit`: a placeholder):
/// every queued job ranked by priority, turn, due time and id, as
/// [`JOBS_AHEAD`] counts them, with `ahead` its rank from 0.
fn queue_positions_sql(limit: &str) -> String {
    format!(
        "WITH running AS (SELECT tenant, priority, count(*) AS n FROM jobs \
                          WHERE status = 'running' GROUP BY tenant, priority), \
         queued AS (SELECT q.id, q.priority, q.run_at, coalesce(r.n, 0) + \
                    row_number() OVER (PARTITION BY q.priority, q.tenant ORDER BY q.run_at, q.id) AS turn \
                    FROM jobs q LEFT JOIN running r ON r.tenant = q.tenant AND r.priority = q.priority \
                    WHERE q.status = 'queued') \
         SELECT id, row_number() OVER (ORDER BY priority DESC, turn, run_at, id) - 1 AS ahead \
         FROM queued ORDER BY ahead LIMIT {limit}"
    )
}

/// The query behind [`Store::job_with_turns`] (`id` and `tenant`:
/// placeholders): one row per turn (one with NULL turn columns when there
/// is none), each with the job's columns, the turn's prefixed `turn_`
/// ([`JOINED_TURN`]) and `ahead`. With `position`, `ahead` is computed
/// when the job is queued; without, it is NULL and the statement is a
/// plain join (Postgres sets up the plan of every expression of a
/// statement, computed or not, for each execution). The rows come in no
/// particular order (a sort would cost each read more than sorting a
/// handful of turns afterwards).
fn job_with_turns_sql(id: &str, tenant: &str, position: bool) -> String {
    const TURN_COLUMNS: &str = "t.job_id AS turn_job_id, t.idx AS turn_idx, \
         t.instruction AS turn_instruction, t.image_key AS turn_image_key, \
         t.image_mime AS turn_image_mime, t.editor_ms AS turn_editor_ms, \
         t.critique AS turn_critique, t.thinker_ms AS turn_thinker_ms, \
         t.raw_output AS turn_raw_output, t.parse_error AS turn_parse_error, \
         t.provider_request_id AS turn_provider_request_id, t.chosen AS turn_chosen, \
         t.created_at AS turn_created_at";
    if !position {
        return format!(
            "SELECT job.*, CAST(NULL AS BIGINT) AS ahead, {TURN_COLUMNS} \
             FROM jobs job LEFT JOIN turns t ON t.job_id = job.id \
             WHERE job.id = {id} AND job.tenant = {tenant}"
        );
    }
    format!(
        "WITH job AS (SELECT * FROM jobs WHERE id = {id} AND tenant = {tenant}), {} \
         SELECT job.*, {JOBS_AHEAD} AS ahead, {TURN_COLUMNS} \
         FROM job LEFT JOIN turns t ON t.job_id = job.id",
        jobs_ahead_ctes("SELECT id, priority FROM job WHERE status = 'queued'")
    )
}

/// Assembles [`Store::job_with_turns`]'s answer from the rows of
/// [`job_with_turns_sql`], whichever driver read them: the job and `ahead`
/// from the first row, a turn from each row that has one, turns in order.
fn job_with_turns_from_rows<R>(
    rows: &[R],
    job: impl Fn(&R) -> StoreResult<JobRow>,
    turn: impl Fn(&R) -> StoreResult<Option<TurnRow>>,
    ahead: impl Fn(&R) -> StoreResult<Option<u64>>,
) -> StoreResult<Option<JobWithTurns>> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut turns = rows
        .iter()
        .filter_map(|row| turn(row).transpose())
        .collect::<StoreResult<Vec<_>>>()?;
    turns.sort_unstable_by_key(|t| t.index);
    Ok(Some(JobWithTurns {
        job: job(first)?,
        turns,
        jobs_ahead: ahead(first)?,
        ledger: JobLedger::default(),
        candidates: Vec::new(),
    }))
}

/// Completes a [`Store::job_with_turns`] read with the job's ledger,
/// read by `ledger` only for a job a worker has claimed: only workers make
/// paid calls, so a never-claimed job (the queued-job hot path) costs no
/// second query.
async fn with_ledger<F, Fut>(
    read: Option<JobWithTurns>,
    ledger: F,
) -> StoreResult<Option<JobWithTurns>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = StoreResult<JobLedger>>,
{
    match read {
        Some(mut read) if read.job.attempt > 0 => {
            read.ledger = ledger().await?;
            Ok(Some(read))
        }
        other => Ok(other),
    }
}

/// Completes a [`Store::job_with_turns`] read with the candidates of its
/// turns of several, read by `candidates` only when a recorded turn chose
/// one (one-candidate jobs, the common case, cost no query).
async fn with_candidates<F, Fut>(
    read: Option<JobWithTurns>,
    candidates: F,
) -> StoreResult<Option<JobWithTurns>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = StoreResult<Vec<CandidateRow>>>,
{
    match read {
        Some(mut read) if read.turns.iter().any(|t| t.chosen.is_some()) => {
            read.candidates = candidates().await?;
            Ok(Some(read))
        }
        other => Ok(other),
    }
}

/// Column names of a turn in a result row.
struct TurnColumns {
    job_id: &'static str,
    idx: &'static str,
    instruction: &'static str,
    image_key: &'static str,
    image_mime: &'static str,
    editor_ms: &'static str,
    critique: &'static str,
    thinker_ms: &'static str,
    raw_output: &'static str,
    parse_error: &'static str,
    provider_request_id: &'static str,
    chosen: &'static str,
    created_at: &'static str,
}

/// The `turns` table's own columns.
const TURN: TurnColumns = TurnColumns {
    job_id: "job_id",
    idx: "idx",
    instruction: "instruction",
    image_key: "image_key",
    image_mime: "image_mime",
    editor_ms: "editor_ms",
    critique: "critique",
    thinker_ms: "thinker_ms",
    raw_output: "raw_output",
    parse_error: "parse_error",
    provider_request_id: "provider_request_id",
    chosen: "chosen",
    created_at: "created_at",
};

/// A turn's columns beside its job's ([`job_with_turns_sql`]).
const JOINED_TURN: TurnColumns = TurnColumns {
    job_id: "turn_job_id",
    idx: "turn_idx",
    instruction: "turn_instruction",
    image_key: "turn_image_key",
    image_mime: "turn_image_mime",
    editor_ms: "turn_editor_ms",
    critique: "turn_critique",
    thinker_ms: "turn_thinker_ms",
    raw_output: "turn_raw_output",
    parse_error: "turn_parse_error",
    provider_request_id: "turn_provider_request_id",
    chosen: "turn_chosen",
    created_at: "turn_created_at",
};

/// A turn found already recorded: fine when it is this very write retried
/// (same image key), an error otherwise (it would change a recorded turn).
fn same_turn(lease: &Lease, index: u32, existing: &str, ours: &str) -> StoreResult<()> {
    if existing == ours {
        Ok(())
    } else {
        Err(StoreError::TurnRecorded {
            job_id: lease.job_id,
            index,
        })
    }
}

/// Whether every up migration of `migrator` is among `applied` (versions
/// recorded as successful in `_sqlx_migrations`).
fn all_applied(migrator: &sqlx::migrate::Migrator, applied: &[i64]) -> bool {
    migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| applied.contains(&m.version))
}

/// The pre-check's answer for a tenant with `active` jobs queued or
/// running under `limit` ([`Store::check_create`]).
pub(crate) fn limit_check(tenant: &str, limit: u32, active: i64) -> StoreResult<CreateCheck> {
    if active >= i64::from(limit) {
        return Err(StoreError::ActiveJobsLimit {
            tenant: tenant.to_string(),
            limit,
        });
    }
    Ok(CreateCheck::Proceed {
        active_jobs: Some(u64::try_from(active).unwrap_or_default()),
    })
}
