//! The Postgres backend: production, shared by many API and worker replicas.

use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Row};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::direct_conns::{DirectConnections, DIRECT_CONNECTIONS};
use crate::model::{
    event_type, is_terminal_event, ledger_from, usage_by_editor, LedgerRow, LedgerSum,
};
use crate::notifier::Notifier;
use crate::transition::{self, GiveBack, RunningJob, Settlement};
use crate::{
    payload, ApiKeyRow, CandidateRow, ChosenRecord, ClaimedJob, CreateCheck, DeliveryAttempt,
    DeliveryRow, DeliveryStatus, DueDelivery, EditorUsage, EventRow, Fairness, IdempotentInsert,
    JobLedger, JobRow, JobStatus, JobWithTurns, Lease, NewApiKey, NewCall, NewCandidate, NewJob,
    NewTurn, Notice, PendingEditRecord, QueueStats, RefusalRecord, StopReason, Store, StoreError,
    StoreResult, TurnRow, IDEMPOTENCY_WINDOW,
};

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// The job read's statements, without and with the position
/// ([`crate::job_with_turns_sql`]), built once.
static JOB_WITH_TURNS: LazyLock<[String; 2]> =
    LazyLock::new(|| [false, true].map(|p| crate::job_with_turns_sql("$1", "$2", p)));

/// [`crate::jobs_ahead_sql`], built once.
static JOBS_AHEAD: LazyLock<String> = LazyLock::new(|| crate::jobs_ahead_sql("$1"));

/// [`crate::queue_positions_sql`], built once.
static QUEUE_POSITIONS: LazyLock<String> = LazyLock::new(|| crate::queue_positions_sql("$1"));

/// The NOTIFY channel carrying `<job_id>,<event_id>,<type>` payloads.
pub const CHANNEL: &str = "editthinker_events";

/// Capacity of the in-process notice broadcast; slower subscribers lag and
/// must re-read from the table.
const NOTICE_CAPACITY: usize = 1024;

/// Pause before reconnecting a failed LISTEN connection.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Fences a write on the caller's lease and locks the row, so that a job's
/// events are written (and committed) in id order.
/// A lease past its expiry is lost even before the rescuer requeues it, so
/// a worker that was frozen or cut off cannot write after its deadline.
const FENCE: &str = "SELECT attempt, max_attempts, cancel_requested FROM jobs \
     WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND status = 'running' \
     AND lease_expires_at > now() FOR UPDATE";

/// The [`Store`] on Postgres. Cheap to clone; clones share the pool and
/// the one LISTEN connection.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    notices: broadcast::Sender<Notice>,
    /// Sends the NOTIFYs of creates after they commit.
    notifier: Arc<Notifier>,
    /// Connections for the hottest statements (a job read, a create).
    direct: Arc<DirectConnections>,
    _tasks: Arc<[AbortOnDrop; 2]>,
}

/// Stops a background task (the LISTEN loop, the notifier) when the last
/// store clone goes away.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a pooled connection may sit idle and still be handed out
/// without a ping first.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

impl PgStore {
    /// Connects a pool and the LISTEN connection that feeds
    /// [`Store::subscribe`]. LISTEN is in place when this returns, so no
    /// event committed afterwards is missed.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options: PgConnectOptions = url.parse::<PgConnectOptions>()?.options([
            // A statement that hangs (a lock wait, a stalled server) ends
            // instead of holding its connection for ever.
            ("statement_timeout", "30s"),
            ("idle_in_transaction_session_timeout", "60s"),
            // The server drops connections of clients that vanished
            // (sqlx sets no client-side keepalive; every call of ours that
            // must not hang has its own timeout instead).
            ("tcp_keepalives_idle", "30"),
            ("tcp_keepalives_interval", "10"),
            ("tcp_keepalives_count", "3"),
        ]);
        let direct = DirectConnections::new(options.clone(), DIRECT_CONNECTIONS, PING_IDLE_AFTER);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // Covers connecting too: an unreachable server fails fast.
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings every connection it hands out by default: a round
            // trip before every query, as many as the query's own on a hot
            // read. A connection is pinged when it goes back to the pool
            // anyway, so only one that sat idle for a while (a server
            // restart in between would have closed it) is pinged again.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        let listener = connect_listener(url).await?;
        let (notices, _) = broadcast::channel(NOTICE_CAPACITY);
        let listen = tokio::spawn(listen_loop(url.to_owned(), listener, notices.clone()));
        let (notifier, send) = Notifier::spawn(pool.clone(), CHANNEL);
        Ok(Self {
            pool,
            notices,
            notifier,
            direct: Arc::new(direct),
            _tasks: Arc::new([AbortOnDrop(listen), AbortOnDrop(send)]),
        })
    }

    /// The connection pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn connect_listener(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener
        .listen_all([CHANNEL, payload::LIVE_CHANNEL])
        .await?;
    Ok(listener)
}

/// Forwards notifications to the broadcast. Any lost connection means
/// notices may have been missed, so subscribers get a `Resync` once LISTEN
/// is back in place.
async fn listen_loop(url: String, first: PgListener, notices: broadcast::Sender<Notice>) {
    let mut listener = Some(first);
    loop {
        let Some(current) = listener.as_mut() else {
            match connect_listener(&url).await {
                Ok(l) => {
                    listener = Some(l);
                    let _ = notices.send(Notice::Resync);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN reconnect failed");
                    tokio::time::sleep(RECONNECT_DELAY).await;
                }
            }
            continue;
        };
        match current.try_recv().await {
            Ok(Some(n)) => match if n.channel() == payload::LIVE_CHANNEL {
                payload::parse_live_payload(n.payload())
            } else {
                payload::parse_notify_payload(n.payload())
            } {
                Some(notice) => {
                    let _ = notices.send(notice);
                }
                None => tracing::warn!(payload = n.payload(), "unexpected NOTIFY payload"),
            },
            // The listener already reconnected and re-issued LISTEN.
            Ok(None) => {
                tracing::warn!("LISTEN connection lost; reconnected");
                let _ = notices.send(Notice::Resync);
            }
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed");
                listener = None;
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn to_u32(v: i32, what: &str) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| corrupt(format!("{what} = {v}")))
}

fn to_u64(v: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| corrupt(format!("{what} = {v}")))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn job_from_row(row: &PgRow) -> StoreResult<JobRow> {
    let status: String = row.try_get("status")?;
    let status = JobStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?;
    Ok(JobRow {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        status,
        instruction: row.try_get("instruction")?,
        editor: row.try_get("editor")?,
        options: row.try_get("options")?,
        metadata: row.try_get("metadata")?,
        source_key: row.try_get("source_key")?,
        source_mime: row.try_get("source_mime")?,
        attempt: to_u32(row.try_get("attempt")?, "attempt")?,
        max_attempts: to_u32(row.try_get("max_attempts")?, "max_attempts")?,
        priority: row.try_get("priority")?,
        run_at: row.try_get("run_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        cancel_requested: row.try_get("cancel_requested")?,
        result_turn: row
            .try_get::<Option<i32>, _>("result_turn")?
            .map(|v| to_u32(v, "result_turn"))
            .transpose()?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        pending_edit: row.try_get("pending_edit")?,
        refusal: row.try_get("refusal")?,
        webhook: row.try_get("webhook")?,
        stop_reason: crate::stop_reason(
            status,
            row.try_get::<Option<String>, _>("stop_reason")?.as_deref(),
            row.try_get::<Option<String>, _>("error_code")?.as_deref(),
        ),
        deadline_at: row.try_get("deadline_at")?,
        traceparent: row.try_get("traceparent")?,
        sandbox: row.try_get("sandbox")?,
    })
}

fn delivery_from_row(row: &PgRow) -> StoreResult<DeliveryRow> {
    let status: String = row.try_get("status")?;
    Ok(DeliveryRow {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        event_id: row.try_get("event_id")?,
        kind: row.try_get("type")?,
        url: row.try_get("url")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("delivery status {status}")))?,
        attempts: to_u32(row.try_get("attempts")?, "attempts")?,
        last_status_code: row
            .try_get::<Option<i32>, _>("last_status_code")?
            .map(|v| u16::try_from(v).map_err(|_| corrupt(format!("status code {v}"))))
            .transpose()?,
        last_error: row.try_get("last_error")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

fn api_key_from_row(row: &PgRow) -> StoreResult<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        label: row.try_get("label")?,
        prefix: row.try_get("prefix")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// A job's usage ledger, read on `conn` (a pool or a transaction).
async fn ledger_of<'c, E>(conn: E, job_id: Uuid) -> StoreResult<JobLedger>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    // Without calls, one placeholder row carries the currency of the
    // latest call recorded anywhere.
    const LEDGER_SQL: &str = "SELECT id, kind, turn::bigint AS turn, seconds, input_tokens, \
             output_tokens, cost, currency \
         FROM job_calls WHERE job_id = $1 \
         UNION ALL \
         SELECT 0, 'none', 0::bigint, 0.0::float8, 0::bigint, 0::bigint, 0.0::float8, currency \
         FROM (SELECT currency FROM job_calls ORDER BY id DESC LIMIT 1) latest \
         WHERE NOT EXISTS (SELECT 1 FROM job_calls WHERE job_id = $1) \
         ORDER BY 1";
    let rows: Vec<LedgerRow> = sqlx::query_as(LEDGER_SQL)
        .bind(job_id)
        .fetch_all(conn)
        .await?;
    Ok(ledger_from(rows))
}

fn turn_from_row(row: &PgRow, c: &crate::TurnColumns) -> StoreResult<TurnRow> {
    Ok(TurnRow {
        job_id: row.try_get(c.job_id)?,
        index: to_u32(row.try_get(c.idx)?, "idx")?,
        instruction: row.try_get(c.instruction)?,
        image_key: row.try_get(c.image_key)?,
        image_mime: row.try_get(c.image_mime)?,
        editor_ms: to_u64(row.try_get(c.editor_ms)?, "editor_ms")?,
        critique: row.try_get(c.critique)?,
        thinker_ms: row
            .try_get::<Option<i64>, _>(c.thinker_ms)?
            .map(|v| to_u64(v, "thinker_ms"))
            .transpose()?,
        raw_output: row.try_get(c.raw_output)?,
        parse_error: row.try_get(c.parse_error)?,
        provider_request_id: row.try_get(c.provider_request_id)?,
        chosen: row
            .try_get::<Option<i32>, _>(c.chosen)?
            .map(|v| to_u32(v, "chosen"))
            .transpose()?,
        created_at: row.try_get(c.created_at)?,
    })
}

fn candidate_from_row(row: &PgRow) -> StoreResult<CandidateRow> {
    let opt_u64 = |col: &str| {
        row.try_get::<Option<i64>, _>(col)?
            .map(|v| to_u64(v, col))
            .transpose()
    };
    Ok(CandidateRow {
        job_id: row.try_get("job_id")?,
        turn: to_u32(row.try_get("turn_idx")?, "turn_idx")?,
        index: to_u32(row.try_get("idx")?, "idx")?,
        instruction: row.try_get("instruction")?,
        seed: row.try_get("seed")?,
        pending_request: row.try_get("pending_request")?,
        provider_request_id: row.try_get("provider_request_id")?,
        image_key: row.try_get("image_key")?,
        image_mime: row.try_get("image_mime")?,
        editor_ms: opt_u64("editor_ms")?,
        critique: row.try_get("critique")?,
        thinker_ms: opt_u64("thinker_ms")?,
        raw_output: row.try_get("raw_output")?,
        parse_error: row.try_get("parse_error")?,
        created_at: row.try_get("created_at")?,
    })
}

/// A turn or candidate number as Postgres stores it.
fn pg_index(n: u32) -> StoreResult<i32> {
    i32::try_from(n).map_err(|_| corrupt("turn index overflow"))
}

fn event_from_row(row: &PgRow) -> StoreResult<EventRow> {
    Ok(EventRow {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        kind: row.try_get("type")?,
        data: row.try_get("data")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The common table expressions that write an event for each row of
/// `jobs` (a table expression with the job's `id` and `webhook`), with
/// `kind`, `data` and `delivery_id` as SQL placeholders: `event`, the
/// `job_events` row, and its webhook delivery when the job's webhook wants
/// this type (the outbox, in the same statement). The statement's final
/// query sends the NOTIFY ([`EVENT_NOTIFY`]), which Postgres delivers at
/// commit.
fn event_ctes(jobs: &str, kind: &str, data: &str, delivery_id: &str) -> String {
    format!(
        "event AS (\
             INSERT INTO job_events (job_id, type, data, created_at) \
             SELECT id, {kind}, {data}, now() FROM {jobs} RETURNING id, job_id, type), \
         delivery AS (\
             INSERT INTO webhook_deliveries \
                 (id, job_id, event_id, type, url, status, next_attempt_at, created_at) \
             SELECT {delivery_id}, j.id, event.id, {kind}, j.webhook->>'url', 'pending', now(), now() \
             FROM {jobs} j JOIN event ON event.job_id = j.id \
             WHERE j.webhook IS NOT NULL AND jsonb_exists(j.webhook->'events', {kind}))"
    )
}

/// What a statement built on [`event_ctes`] joins to its final query to
/// announce the event (a NOTIFY on [`CHANNEL`]).
fn event_notify() -> String {
    format!(
        "CROSS JOIN LATERAL pg_notify('{CHANNEL}', {}) AS notified",
        payload::NOTIFY_PAYLOAD_SQL
    )
}

/// Writes an event row, its webhook delivery and its NOTIFY in one
/// statement ([`event_ctes`]).
async fn emit(
    conn: &mut PgConnection,
    job_id: Uuid,
    kind: &str,
    mut data: Value,
) -> StoreResult<i64> {
    if is_terminal_event(kind) {
        let ledger = ledger_of(&mut *conn, job_id).await?;
        payload::add_usage(&mut data, &ledger);
    }
    static EMIT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH target AS (SELECT id, webhook FROM jobs WHERE id = $1), {} \
             SELECT event.id FROM event {}",
            event_ctes("target", "$2", "$3", "$4"),
            event_notify()
        )
    });
    let id: i64 = sqlx::query_scalar(&EMIT)
        .bind(job_id)
        .bind(kind)
        .bind(data)
        .bind(Uuid::now_v7())
        .fetch_one(&mut *conn)
        .await?;
    Ok(id)
}

/// The earlier job of an idempotency key (`row`: the key's
/// `request_digest` and the job's columns), or a refusal when the key was
/// used for another request.
fn replay_or_reuse(row: &PgRow, digest: &str) -> StoreResult<IdempotentInsert> {
    let same: String = row.try_get("request_digest")?;
    if same != digest {
        return Ok(IdempotentInsert::KeyReused);
    }
    let status: i32 = row.try_get("response_status")?;
    Ok(IdempotentInsert::Replayed {
        job: job_from_row(row)?,
        status: u16::try_from(status).unwrap_or(202),
    })
}

/// Advisory-lock namespace of the per-tenant active-jobs check (the first
/// key of `pg_advisory_xact_lock(int, int)`).
const ACTIVE_LIMIT_LOCK: i32 = 0x4554_0001;

/// Inserts a queued job, its `job.queued` event and its webhook delivery
/// in one statement (on its own, its own transaction: one round trip), and
/// returns the job with the NOTIFY payload of its event, for the caller to
/// hand to the [`Notifier`] once the transaction committed. With `job.active_limit`, the tenant's active jobs are counted in
/// that statement by `editthinker_active_jobs_locked`
/// (migrations/postgres/0010_active_jobs_locked.sql), after it takes a
/// per-tenant lock held to the end of the transaction: two replicas
/// inserting for one tenant take turns, so the count one checks includes
/// the job the other committed.
async fn insert_job_row(conn: &mut PgConnection, job: NewJob) -> StoreResult<(JobRow, String)> {
    static INSERT_JOB: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH job AS (\
                 INSERT INTO jobs (id, status, instruction, editor, options, metadata, source_key, \
                     source_mime, attempt, max_attempts, priority, webhook, run_at, created_at, \
                     deadline_at, tenant, traceparent, sandbox) \
                 SELECT $1, 'queued', $2, $3, $4, $5, $6, $7, 0, $8, $9, $10, now(), now(), \
                     now() + $11 * interval '1 second', $12, $13, $19 \
                 WHERE CASE WHEN $14::bigint IS NULL THEN true \
                     ELSE editthinker_active_jobs_locked($18, $12) < $14 END \
                 RETURNING *), {} \
             SELECT job.*, {} AS notify_payload FROM job JOIN event ON event.job_id = job.id",
            event_ctes("job", "$15", "$16", "$17"),
            payload::NOTIFY_PAYLOAD_SQL
        )
    });
    let row = sqlx::query(&INSERT_JOB)
        .bind(job.id)
        .bind(&job.instruction)
        .bind(&job.editor)
        .bind(&job.options)
        .bind(&job.metadata)
        .bind(&job.source_key)
        .bind(&job.source_mime)
        .bind(i32::try_from(job.max_attempts).unwrap_or(i32::MAX))
        .bind(job.priority)
        .bind(&job.webhook)
        .bind(job.deadline_seconds.map(f64::from))
        .bind(&job.tenant)
        .bind(&job.traceparent)
        .bind(job.active_limit.map(i64::from))
        .bind(event_type::JOB_QUEUED)
        .bind(payload::queued())
        .bind(Uuid::now_v7())
        .bind(ACTIVE_LIMIT_LOCK)
        .bind(job.sandbox)
        .fetch_optional(&mut *conn)
        .await?;
    match (row, job.active_limit) {
        (Some(row), _) => Ok((job_from_row(&row)?, row.try_get("notify_payload")?)),
        (None, Some(limit)) => Err(StoreError::ActiveJobsLimit {
            tenant: job.tenant,
            limit,
        }),
        (None, None) => Err(corrupt("a job insert without a limit wrote no row")),
    }
}

/// Claims in age order ([`Fairness::None`]). MATERIALIZED keeps the
/// locking subquery from being inlined and re-evaluated; SKIP LOCKED lets
/// concurrent claimers pass each other.
const CLAIM_OLDEST: &str = "WITH picked AS MATERIALIZED ( \
         SELECT id FROM jobs WHERE status = 'queued' AND run_at <= now() \
         ORDER BY priority DESC, run_at, id LIMIT $1 FOR UPDATE SKIP LOCKED \
     ), claimed AS ( \
         UPDATE jobs j SET status = 'running', attempt = j.attempt + 1, \
             lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3), \
             heartbeat_at = now(), started_at = coalesce(j.started_at, now()) \
         FROM picked WHERE j.id = picked.id RETURNING j.* \
     ) SELECT * FROM claimed ORDER BY priority DESC, run_at, id";

/// Claims round-robin between tenants ([`Fairness::Tenant`]): a job's
/// turn is its tenant's running jobs of its priority plus its rank among
/// its tenant's due queued jobs of that priority.
///
/// Kept cheap on a deep queue: only the first `$4` queued jobs of each
/// (priority, tenant) can be among the `$4` candidates (a tenant's turns
/// grow with its rank), so `groups` walks the distinct (priority, tenant)
/// pairs of queued jobs on `jobs_fair_claim_idx` (one index probe each, a
/// loose index scan), and each pair reads at most `$4` of its jobs from the
/// same index. The cost grows with the number of tenants, not the depth of
/// their queues.
///
/// A window function cannot be combined with FOR UPDATE, so the candidates
/// (more than `$1`, so that rows another claimer holds locked can be
/// passed) are then locked by id, in turn order, skipping locked ones. FOR
/// UPDATE re-checks `status` on the latest row version, so a candidate
/// claimed meanwhile is not taken twice.
const CLAIM_FAIR: &str = "WITH RECURSIVE groups AS ( \
         (SELECT priority, tenant FROM jobs WHERE status = 'queued' \
          ORDER BY priority, tenant LIMIT 1) \
         UNION ALL \
         SELECT n.priority, n.tenant FROM groups g CROSS JOIN LATERAL ( \
             SELECT priority, tenant FROM jobs \
             WHERE status = 'queued' AND (priority, tenant) > (g.priority, g.tenant) \
             ORDER BY priority, tenant LIMIT 1) n \
     ), running AS ( \
         SELECT tenant, priority, count(*) AS n FROM jobs WHERE status = 'running' \
         GROUP BY tenant, priority \
     ), candidates AS MATERIALIZED ( \
         SELECT q.id, g.priority, q.run_at, coalesce(r.n, 0) + q.rank AS turn \
         FROM groups g CROSS JOIN LATERAL ( \
             SELECT id, run_at, row_number() OVER (ORDER BY run_at, id) AS rank FROM jobs \
             WHERE status = 'queued' AND priority = g.priority AND tenant = g.tenant \
               AND run_at <= now() \
             ORDER BY run_at, id LIMIT $4) q \
         LEFT JOIN running r ON r.tenant = g.tenant AND r.priority = g.priority \
         ORDER BY g.priority DESC, turn, q.run_at, q.id LIMIT $4 \
     ), picked AS MATERIALIZED ( \
         SELECT j.id, c.turn FROM jobs j JOIN candidates c ON c.id = j.id \
         WHERE j.status = 'queued' \
         ORDER BY c.priority DESC, c.turn, c.run_at, c.id LIMIT $1 \
         FOR UPDATE OF j SKIP LOCKED \
     ), claimed AS ( \
         UPDATE jobs j SET status = 'running', attempt = j.attempt + 1, \
             lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3), \
             heartbeat_at = now(), started_at = coalesce(j.started_at, now()) \
         FROM picked WHERE j.id = picked.id RETURNING j.*, picked.turn \
     ) SELECT * FROM claimed ORDER BY priority DESC, turn, run_at, id";

/// Candidates a tenant-fair claim ranks beyond twice its limit: room to
/// pass rows that concurrent claimers hold locked.
const FAIR_CANDIDATE_SLACK: i64 = 16;

async fn fence(conn: &mut PgConnection, lease: &Lease) -> StoreResult<RunningJob> {
    let row = sqlx::query(FENCE)
        .bind(lease.job_id)
        .bind(lease_attempt(lease)?)
        .bind(&lease.owner)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::LeaseLost(lease.job_id))?;
    Ok(RunningJob {
        attempt: to_u32(row.try_get("attempt")?, "attempt")?,
        max_attempts: to_u32(row.try_get("max_attempts")?, "max_attempts")?,
        cancel_requested: row.try_get("cancel_requested")?,
    })
}

fn lease_attempt(lease: &Lease) -> StoreResult<i32> {
    // An attempt beyond i32 cannot exist in the table, so the lease is stale.
    i32::try_from(lease.attempt).map_err(|_| StoreError::LeaseLost(lease.job_id))
}

/// Ends a running job: terminal status, finished, lease cleared, event.
async fn finish(
    conn: &mut PgConnection,
    job_id: Uuid,
    status: JobStatus,
    error: Option<(&str, &str)>,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE jobs SET status = $2, finished_at = now(), lease_owner = NULL, \
         lease_expires_at = NULL, error_code = coalesce($3, error_code), \
         error_message = coalesce($4, error_message) WHERE id = $1",
    )
    .bind(job_id)
    .bind(status.as_str())
    .bind(error.map(|e| e.0))
    .bind(error.map(|e| e.1))
    .execute(&mut *conn)
    .await?;
    let (kind, data) = match (status, error) {
        (JobStatus::Failed, Some((code, message))) => {
            (event_type::JOB_FAILED, payload::failed(code, message))
        }
        (JobStatus::Canceled, _) => (event_type::JOB_CANCELED, payload::canceled()),
        _ => return Err(corrupt(format!("finish({status}) without its payload"))),
    };
    emit(conn, job_id, kind, data).await?;
    Ok(())
}

/// Applies [`transition::settle`]'s verdict on a running job that is given
/// back: canceled, failed, or queued again with a `job.retrying` event.
async fn give_back(
    conn: &mut PgConnection,
    job_id: Uuid,
    job: RunningJob,
    give: GiveBack<'_>,
) -> StoreResult<JobStatus> {
    match transition::settle(job, &give) {
        Settlement::Cancel => {
            finish(conn, job_id, JobStatus::Canceled, None).await?;
            Ok(JobStatus::Canceled)
        }
        Settlement::Fail { code, message } => {
            finish(conn, job_id, JobStatus::Failed, Some((&code, &message))).await?;
            Ok(JobStatus::Failed)
        }
        Settlement::Requeue { delay, counted } => {
            let run_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
                "UPDATE jobs SET status = 'queued', run_at = now() + make_interval(secs => $2), \
                 lease_owner = NULL, lease_expires_at = NULL, \
                 attempt = attempt - CASE WHEN $3 THEN 0 ELSE 1 END, \
                 error_code = coalesce($4, error_code), \
                 error_message = coalesce($5, error_message) WHERE id = $1 RETURNING run_at",
            )
            .bind(job_id)
            .bind(secs(delay))
            .bind(counted)
            .bind(give.error.map(|e| e.0))
            .bind(give.error.map(|e| e.1))
            .fetch_one(&mut *conn)
            .await?;
            let data = payload::retrying(
                job.attempt,
                give.reason.as_str(),
                give.error.map(|e| e.0),
                run_at,
            );
            emit(conn, job_id, event_type::JOB_RETRYING, data).await?;
            Ok(JobStatus::Queued)
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ready(&self) -> StoreResult<bool> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(false);
        }
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?;
        Ok(crate::all_applied(&MIGRATOR, &applied))
    }

    async fn insert_job(&self, job: NewJob) -> StoreResult<JobRow> {
        let mut conn = self.direct.acquire().await?;
        let (row, notice) = insert_job_row(&mut conn, job).await?;
        conn.finished();
        self.notifier.send(notice);
        Ok(row)
    }

    async fn insert_job_idempotent(
        &self,
        job: NewJob,
        key: &str,
        digest: &str,
    ) -> StoreResult<IdempotentInsert> {
        let mut tx = self.pool.begin().await?;
        // A key past the window is forgotten; a concurrent create with the
        // same key waits here on the key's row until this one commits.
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE tenant = $3 AND key = $1 \
             AND created_at < now() - $2 * interval '1 second'",
        )
        .bind(key)
        .bind(secs(IDEMPOTENCY_WINDOW))
        .bind(&job.tenant)
        .execute(&mut *tx)
        .await?;
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (tenant, key, request_digest, job_id, created_at) \
             VALUES ($4, $1, $2, $3, now()) ON CONFLICT (tenant, key) DO NOTHING",
        )
        .bind(key)
        .bind(digest)
        .bind(job.id)
        .bind(&job.tenant)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if claimed {
            // The key's foreign key is checked at commit (DEFERRABLE), after
            // the job row is in.
            let (row, notice) = insert_job_row(&mut tx, job).await?;
            tx.commit().await?;
            self.notifier.send(notice);
            return Ok(IdempotentInsert::Created(row));
        }
        let existing = sqlx::query(
            "SELECT k.request_digest, k.response_status, j.* FROM idempotency_keys k \
             JOIN jobs j ON j.id = k.job_id WHERE k.tenant = $2 AND k.key = $1",
        )
        .bind(key)
        .bind(&job.tenant)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        replay_or_reuse(&existing, digest)
    }

    async fn check_create(
        &self,
        tenant: &str,
        active_limit: Option<u32>,
        idempotency: Option<(&str, &str)>,
    ) -> StoreResult<CreateCheck> {
        if let Some((key, digest)) = idempotency {
            let existing = sqlx::query(
                "SELECT k.request_digest, k.response_status, j.* FROM idempotency_keys k \
                 JOIN jobs j ON j.id = k.job_id WHERE k.tenant = $2 AND k.key = $1 \
                 AND k.created_at >= now() - $3 * interval '1 second'",
            )
            .bind(key)
            .bind(tenant)
            .bind(secs(IDEMPOTENCY_WINDOW))
            .fetch_optional(&self.pool)
            .await?;
            if let Some(existing) = existing {
                return replay_or_reuse(&existing, digest)
                    .map(|a| CreateCheck::Answered(Box::new(a)));
            }
        }
        let Some(limit) = active_limit else {
            return Ok(CreateCheck::Proceed { active_jobs: None });
        };
        let mut conn = self.direct.acquire().await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE tenant = $1 AND status IN ('queued', 'running')",
        )
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?;
        conn.finished();
        crate::limit_check(tenant, limit, active)
    }

    async fn record_idempotent_status(
        &self,
        tenant: &str,
        key: &str,
        status: u16,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE idempotency_keys SET response_status = $3 WHERE tenant = $1 AND key = $2",
        )
        .bind(tenant)
        .bind(key)
        .bind(i32::from(status))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_deliveries(&self, job_id: Uuid) -> StoreResult<Vec<DeliveryRow>> {
        sqlx::query("SELECT * FROM webhook_deliveries WHERE job_id = $1 ORDER BY event_id, id")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(delivery_from_row)
            .collect()
    }

    async fn claim_deliveries(&self, limit: u32, lock: Duration) -> StoreResult<Vec<DueDelivery>> {
        let rows = sqlx::query(
            "WITH claimed AS (\
                 UPDATE webhook_deliveries SET locked_until = now() + $2 * interval '1 second' \
                 WHERE id IN (\
                     SELECT id FROM webhook_deliveries \
                     WHERE status = 'pending' AND next_attempt_at <= now() \
                       AND (locked_until IS NULL OR locked_until <= now()) \
                     ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING *) \
             SELECT c.*, e.data AS event_data, e.created_at AS event_created_at, \
                 t.webhook_secret AS tenant_secret \
             FROM claimed c JOIN job_events e ON e.id = c.event_id \
             JOIN jobs j ON j.id = c.job_id LEFT JOIN tenants t ON t.name = j.tenant",
        )
        .bind(i64::from(limit))
        .bind(secs(lock))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let delivery = delivery_from_row(row)?;
                Ok(DueDelivery {
                    event: EventRow {
                        id: delivery.event_id,
                        job_id: delivery.job_id,
                        kind: delivery.kind.clone(),
                        data: row.try_get("event_data")?,
                        created_at: row.try_get("event_created_at")?,
                    },
                    delivery,
                    tenant_secret: row.try_get("tenant_secret")?,
                })
            })
            .collect()
    }

    async fn record_delivery(&self, id: Uuid, attempt: DeliveryAttempt) -> StoreResult<()> {
        let status = attempt.status();
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1, \
             last_status_code = $3, last_error = $4, next_attempt_at = $5, locked_until = NULL, \
             delivered_at = CASE WHEN $2 = 'delivered' THEN now() END \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(attempt.status_code.map(i32::from))
        .bind(attempt.error)
        .bind(
            attempt
                .retry_at
                .filter(|_| status == DeliveryStatus::Pending),
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn cancel_deliveries(&self, job_id: Uuid, url: &str, reason: &str) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', last_error = $3, \
             next_attempt_at = NULL, locked_until = NULL \
             WHERE job_id = $1 AND url = $2 AND status = 'pending'",
        )
        .bind(job_id)
        .bind(url)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn retry_failed(&self, id: Uuid, attempts: u32) -> StoreResult<JobRow> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE jobs SET status = 'queued', run_at = now(), finished_at = NULL, \
             lease_owner = NULL, lease_expires_at = NULL, cancel_requested = false, \
             stop_reason = NULL, max_attempts = attempt + $2 \
             WHERE id = $1 AND status = 'failed' RETURNING *",
        )
        .bind(id)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            drop(tx);
            let job = self.get_job(id).await?.ok_or(StoreError::NotFound(id))?;
            return Err(StoreError::Conflict {
                id,
                status: job.status,
            });
        };
        emit(&mut tx, id, event_type::JOB_QUEUED, payload::queued()).await?;
        tx.commit().await?;
        job_from_row(&row)
    }

    async fn jobs_ahead(&self, id: Uuid) -> StoreResult<Option<u64>> {
        let ahead: Option<i64> = sqlx::query_scalar(&JOBS_AHEAD)
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        ahead.map(|n| to_u64(n, "jobs ahead")).transpose()
    }

    async fn queue_positions(&self, limit: u32) -> StoreResult<Vec<(Uuid, u64)>> {
        sqlx::query(&QUEUE_POSITIONS)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|row| {
                Ok((
                    row.try_get::<Uuid, _>("id")?,
                    to_u64(row.try_get("ahead")?, "jobs ahead")?,
                ))
            })
            .collect()
    }

    async fn job_with_turns(
        &self,
        id: Uuid,
        tenant: &str,
        position: bool,
    ) -> StoreResult<Option<JobWithTurns>> {
        let mut conn = self.direct.acquire().await?;
        let rows = sqlx::query(&JOB_WITH_TURNS[usize::from(position)])
            .bind(id)
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
        conn.finished();
        let read = crate::job_with_turns_from_rows(
            &rows,
            job_from_row,
            |row| {
                let has_turn = row
                    .try_get::<Option<i32>, _>(crate::JOINED_TURN.idx)?
                    .is_some();
                has_turn
                    .then(|| turn_from_row(row, &crate::JOINED_TURN))
                    .transpose()
            },
            |row| {
                row.try_get::<Option<i64>, _>("ahead")?
                    .map(|n| to_u64(n, "jobs ahead"))
                    .transpose()
            },
        )?;
        let read = crate::with_ledger(read, || ledger_of(&self.pool, id)).await?;
        crate::with_candidates(read, || self.list_candidates(id)).await
    }

    async fn get_job(&self, id: Uuid) -> StoreResult<Option<JobRow>> {
        sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn get_job_for_tenant(&self, id: Uuid, tenant: &str) -> StoreResult<Option<JobRow>> {
        sqlx::query("SELECT * FROM jobs WHERE id = $1 AND tenant = $2")
            .bind(id)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn list_jobs(
        &self,
        tenant: &str,
        status: Option<JobStatus>,
        limit: u32,
        cursor: Option<Uuid>,
    ) -> StoreResult<Vec<JobRow>> {
        sqlx::query(
            "SELECT * FROM jobs WHERE tenant = $4 AND ($1::text IS NULL OR status = $1) \
             AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(status.map(JobStatus::as_str))
        .bind(cursor)
        .bind(i64::from(limit))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(job_from_row)
        .collect()
    }

    async fn list_turns(&self, job_id: Uuid) -> StoreResult<Vec<TurnRow>> {
        sqlx::query("SELECT * FROM turns WHERE job_id = $1 ORDER BY idx")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| turn_from_row(row, &crate::TURN))
            .collect()
    }

    async fn request_cancel(&self, id: Uuid) -> StoreResult<JobRow> {
        let mut tx = self.pool.begin().await?;
        let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound(id))?;
        let status =
            JobStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?;
        match status {
            JobStatus::Queued => {
                sqlx::query(
                    "UPDATE jobs SET status = 'canceled', finished_at = now() WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                emit(&mut tx, id, event_type::JOB_CANCELED, payload::canceled()).await?;
            }
            JobStatus::Running => {
                sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            status => return Err(StoreError::Conflict { id, status }),
        }
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let job = job_from_row(&row)?;
        tx.commit().await?;
        if job.status == JobStatus::Canceled {
            transition::count_finished(JobStatus::Canceled, None);
        }
        Ok(job)
    }

    async fn claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        fairness: Fairness,
    ) -> StoreResult<Vec<ClaimedJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let query = match fairness {
            Fairness::Tenant => sqlx::query(CLAIM_FAIR),
            Fairness::None => sqlx::query(CLAIM_OLDEST),
        }
        .bind(i64::from(limit))
        .bind(owner)
        .bind(secs(lease));
        let query = match fairness {
            Fairness::Tenant => query.bind(i64::from(limit) * 2 + FAIR_CANDIDATE_SLACK),
            Fairness::None => query,
        };
        let rows = query.fetch_all(&mut *tx).await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let job = job_from_row(row)?;
            emit(
                &mut tx,
                job.id,
                event_type::JOB_STARTED,
                payload::started(job.attempt),
            )
            .await?;
            claimed.push(ClaimedJob {
                lease: Lease {
                    job_id: job.id,
                    attempt: job.attempt,
                    owner: owner.to_owned(),
                },
                job,
            });
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> StoreResult<bool> {
        sqlx::query_scalar(
            "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $4), \
             heartbeat_at = now() \
             WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND status = 'running' \
             AND lease_expires_at > now() RETURNING cancel_requested",
        )
        .bind(lease.job_id)
        .bind(lease_attempt(lease)?)
        .bind(&lease.owner)
        .bind(secs(extend))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::LeaseLost(lease.job_id))
    }

    async fn record_turn(&self, lease: &Lease, turn: NewTurn) -> StoreResult<()> {
        let turn = crate::clean::turn(turn);
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, lease).await?;
        // A recorded turn is never replaced: its image may already be cached
        // as immutable. Recording the same turn again (a retried write whose
        // commit we never heard about) is a no-op.
        let inserted = sqlx::query(
            "INSERT INTO turns (job_id, idx, instruction, image_key, image_mime, editor_ms, \
             provider_request_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now()) \
             ON CONFLICT (job_id, idx) DO NOTHING",
        )
        .bind(lease.job_id)
        .bind(i32::try_from(turn.index).map_err(|_| corrupt("turn index overflow"))?)
        .bind(&turn.instruction)
        .bind(&turn.image_key)
        .bind(&turn.image_mime)
        .bind(i64::try_from(turn.editor_ms).unwrap_or(i64::MAX))
        .bind(&turn.provider_request_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let existing: String =
                sqlx::query_scalar("SELECT image_key FROM turns WHERE job_id = $1 AND idx = $2")
                    .bind(lease.job_id)
                    .bind(i32::try_from(turn.index).map_err(|_| corrupt("turn index overflow"))?)
                    .fetch_one(&mut *tx)
                    .await?;
            return crate::same_turn(lease, turn.index, &existing, &turn.image_key);
        }
        // The edit in flight is now a recorded turn.
        sqlx::query("UPDATE jobs SET pending_edit = NULL WHERE id = $1")
            .bind(lease.job_id)
            .execute(&mut *tx)
            .await?;
        emit(
            &mut tx,
            lease.job_id,
            event_type::TURN_EDITED,
            payload::edited(turn.index, &turn.instruction, turn.editor_ms),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_critique(
        &self,
        lease: &Lease,
        index: u32,
        critique: &Value,
        thinker_ms: u64,
        raw_output: &str,
        parse_error: Option<&str>,
    ) -> StoreResult<()> {
        let clean = crate::clean::critique(critique, raw_output, parse_error);
        let (critique, raw_output, parse_error) = (
            &clean.value,
            &*clean.raw_output,
            clean.parse_error.as_deref(),
        );
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, lease).await?;
        let updated = sqlx::query(
            "UPDATE turns SET critique = $3, thinker_ms = $4, raw_output = $5, parse_error = $6 \
             WHERE job_id = $1 AND idx = $2",
        )
        .bind(lease.job_id)
        .bind(i32::try_from(index).map_err(|_| corrupt("turn index overflow"))?)
        .bind(critique)
        .bind(i64::try_from(thinker_ms).unwrap_or(i64::MAX))
        .bind(raw_output)
        .bind(parse_error)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(corrupt(format!(
                "critique for unrecorded turn {index} of job {}",
                lease.job_id
            )));
        }
        emit(
            &mut tx,
            lease.job_id,
            event_type::TURN_CRITIQUED,
            payload::critiqued(index, 0, critique, thinker_ms),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_pending_edit(
        &self,
        lease: &Lease,
        pending: &PendingEditRecord,
    ) -> StoreResult<()> {
        let pending = &crate::clean::pending(pending);
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, lease).await?;
        match pending.candidate {
            None => {
                sqlx::query("UPDATE jobs SET pending_edit = $2 WHERE id = $1")
                    .bind(lease.job_id)
                    .bind(payload::to_json(pending))
                    .execute(&mut *tx)
                    .await?;
            }
            Some(candidate) => {
                sqlx::query(
                    "INSERT INTO turn_candidates (job_id, turn_idx, idx, instruction, \
                     pending_request, created_at) VALUES ($1, $2, $3, $4, $5, now()) \
                     ON CONFLICT (job_id, turn_idx, idx) DO UPDATE SET \
                     instruction = excluded.instruction, pending_request = excluded.pending_request \
                     WHERE turn_candidates.image_key IS NULL",
                )
                .bind(lease.job_id)
                .bind(pg_index(pending.turn)?)
                .bind(pg_index(candidate)?)
                .bind(&pending.instruction)
                .bind(payload::to_json(&pending.request))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_candidate(&self, lease: &Lease, candidate: NewCandidate) -> StoreResult<()> {
        let c = crate::clean::candidate(candidate);
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, lease).await?;
        // A recorded candidate is never replaced (its image may be cached
        // as immutable); a pending row becomes the edited candidate.
        let written = sqlx::query(
            "INSERT INTO turn_candidates (job_id, turn_idx, idx, instruction, seed, \
             provider_request_id, image_key, image_mime, editor_ms, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now()) \
             ON CONFLICT (job_id, turn_idx, idx) DO UPDATE SET \
             instruction = excluded.instruction, seed = excluded.seed, \
             provider_request_id = excluded.provider_request_id, \
             image_key = excluded.image_key, image_mime = excluded.image_mime, \
             editor_ms = excluded.editor_ms, pending_request = NULL \
             WHERE turn_candidates.image_key IS NULL",
        )
        .bind(lease.job_id)
        .bind(pg_index(c.turn)?)
        .bind(pg_index(c.index)?)
        .bind(&c.instruction)
        .bind(c.seed)
        .bind(&c.provider_request_id)
        .bind(&c.image_key)
        .bind(&c.image_mime)
        .bind(i64::try_from(c.editor_ms).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if written == 0 {
            let existing: String = sqlx::query_scalar(
                "SELECT image_key FROM turn_candidates \
                 WHERE job_id = $1 AND turn_idx = $2 AND idx = $3",
            )
            .bind(lease.job_id)
            .bind(pg_index(c.turn)?)
            .bind(pg_index(c.index)?)
            .fetch_one(&mut *tx)
            .await?;
            return crate::same_turn(lease, c.turn, &existing, &c.image_key);
        }
        emit(
            &mut tx,
            lease.job_id,
            event_type::TURN_EDITED,
            payload::candidate_edited(c.turn, c.index, c.seed, &c.instruction, c.editor_ms),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_candidate_critique(
        &self,
        lease: &Lease,
        turn: u32,
        candidate: u32,
        critique: &Value,
        thinker_ms: u64,
        raw_output: &str,
        parse_error: Option<&str>,
    ) -> StoreResult<()> {
        let clean = crate::clean::critique(critique, raw_output, parse_error);
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, lease).await?;
        let updated = sqlx::query(
            "UPDATE turn_candidates SET critique = $4, thinker_ms = $5, raw_output = $6, \
             parse_error = $7 WHERE job_id = $1 AND turn_idx = $2 AND idx = $3 \
             AND image_key IS NOT NULL",
        )
        .bind(lease.job_id)
        .bind(pg_index(turn)?)
        .bind(pg_index(candidate)?)
        .bind(&clean.value)
        .bind(i64::try_from(thinker_ms).unwrap_or(i64::MAX))
        .bind(&*clean.raw_output)
        .bind(clean.parse_error.as_deref())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(corrupt(format!(
                "critique for unrecorded candidate {candidate} of turn {turn} of job {}",
                lease.job_id
            )));
        }
        emit(
            &mut tx,
            lease.job_id,
            event_type::TURN_CRITIQUED,
            payload::critiqued(turn, candidate, &clean.value, thinker_ms),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_chosen(&self, lease: &Lease, chosen: &ChosenRecord) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, lease).await?;
        let inserted = sqlx::query(
            "INSERT INTO turns (job_id, idx, instruction, image_key, image_mime, editor_ms, \
             critique, thinker_ms, raw_output, parse_error, provider_request_id, chosen, \
             created_at) \
             SELECT job_id, turn_idx, instruction, image_key, image_mime, editor_ms, critique, \
             thinker_ms, raw_output, parse_error, provider_request_id, idx, now() \
             FROM turn_candidates WHERE job_id = $1 AND turn_idx = $2 AND idx = $3 \
             AND image_key IS NOT NULL \
             ON CONFLICT (job_id, idx) DO NOTHING",
        )
        .bind(lease.job_id)
        .bind(pg_index(chosen.turn)?)
        .bind(pg_index(chosen.candidate)?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let existing: Option<Option<i32>> =
                sqlx::query_scalar("SELECT chosen FROM turns WHERE job_id = $1 AND idx = $2")
                    .bind(lease.job_id)
                    .bind(pg_index(chosen.turn)?)
                    .fetch_optional(&mut *tx)
                    .await?;
            return match existing {
                Some(Some(c)) if i64::from(c) == i64::from(chosen.candidate) => Ok(()),
                _ => Err(corrupt(format!(
                    "turn {} of job {} cannot choose candidate {} (not recorded, or another chosen)",
                    chosen.turn, lease.job_id, chosen.candidate
                ))),
            };
        }
        emit(
            &mut tx,
            lease.job_id,
            event_type::TURN_CHOSEN,
            payload::chosen(chosen),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_candidates(&self, job_id: Uuid) -> StoreResult<Vec<CandidateRow>> {
        sqlx::query("SELECT * FROM turn_candidates WHERE job_id = $1 ORDER BY turn_idx, idx")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(candidate_from_row)
            .collect()
    }

    async fn complete(
        &self,
        lease: &Lease,
        result_turn: u32,
        refusal: Option<&RefusalRecord>,
        stop: StopReason,
    ) -> StoreResult<()> {
        let refusal = refusal.map(crate::clean::refusal);
        let refusal = refusal.as_ref();
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, lease).await?;
        let refusal = refusal.map(payload::to_json);
        // A success clears the last transient error a retry left behind.
        sqlx::query(
            "UPDATE jobs SET status = 'succeeded', result_turn = $2, finished_at = now(), \
             lease_owner = NULL, lease_expires_at = NULL, error_code = NULL, \
             error_message = NULL, pending_edit = NULL, refusal = $3, stop_reason = $4 \
             WHERE id = $1",
        )
        .bind(lease.job_id)
        .bind(i32::try_from(result_turn).map_err(|_| corrupt("result turn overflow"))?)
        .bind(&refusal)
        .bind(stop.as_str())
        .execute(&mut *tx)
        .await?;
        emit(
            &mut tx,
            lease.job_id,
            event_type::JOB_SUCCEEDED,
            payload::succeeded(result_turn, refusal.as_ref(), stop),
        )
        .await?;
        tx.commit().await?;
        transition::count_finished(JobStatus::Succeeded, Some(stop));
        Ok(())
    }

    async fn fail(&self, lease: &Lease, code: &str, message: &str) -> StoreResult<()> {
        let message = &*crate::clean::message(message);
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, lease).await?;
        finish(
            &mut tx,
            lease.job_id,
            JobStatus::Failed,
            Some((code, message)),
        )
        .await?;
        tx.commit().await?;
        transition::count_finished(JobStatus::Failed, None);
        Ok(())
    }

    async fn retry_later(
        &self,
        lease: &Lease,
        code: &str,
        message: &str,
        delay: Duration,
    ) -> StoreResult<JobStatus> {
        let message = &*crate::clean::message(message);
        let mut tx = self.pool.begin().await?;
        let job = fence(&mut tx, lease).await?;
        let give = GiveBack::transient(code, message, delay);
        let reason = give.reason;
        let status = give_back(&mut tx, lease.job_id, job, give).await?;
        tx.commit().await?;
        transition::count_given_back(status, reason);
        Ok(status)
    }

    async fn mark_canceled(&self, lease: &Lease) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, lease).await?;
        finish(&mut tx, lease.job_id, JobStatus::Canceled, None).await?;
        tx.commit().await?;
        transition::count_finished(JobStatus::Canceled, None);
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let job = fence(&mut tx, lease).await?;
        let give = GiveBack::released();
        let reason = give.reason;
        let status = give_back(&mut tx, lease.job_id, job, give).await?;
        tx.commit().await?;
        transition::count_given_back(status, reason);
        Ok(())
    }

    async fn rescue_expired(&self) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED: a row locked right now belongs to a worker that is
        // writing, i.e. alive; the next rescue pass looks again.
        let rows = sqlx::query(
            "SELECT id, attempt, max_attempts, cancel_requested FROM jobs \
             WHERE status = 'running' AND lease_expires_at <= now() \
             ORDER BY lease_expires_at FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut settled = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.try_get("id")?;
            let job = RunningJob {
                attempt: to_u32(row.try_get("attempt")?, "attempt")?,
                max_attempts: to_u32(row.try_get("max_attempts")?, "max_attempts")?,
                cancel_requested: row.try_get("cancel_requested")?,
            };
            let give = GiveBack::lease_expired();
            let reason = give.reason;
            settled.push((give_back(&mut tx, id, job, give).await?, reason));
        }
        tx.commit().await?;
        for (status, reason) in settled {
            transition::count_given_back(status, reason);
        }
        Ok(rows.len() as u64)
    }

    async fn delete_finished_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Uuid>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE created_at < now() - $1 * interval '1 second'",
        )
        .bind(secs(IDEMPOTENCY_WINDOW))
        .execute(&mut *tx)
        .await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM jobs WHERE id IN (\
                 SELECT id FROM jobs \
                 WHERE status IN ('succeeded', 'failed', 'canceled') AND finished_at < $1 \
                 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING id",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn existing_jobs(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        Ok(sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn expire_queued_deadlines(&self) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs j WHERE status = 'queued' AND deadline_at <= now() \
             AND NOT EXISTS (SELECT 1 FROM turns t WHERE t.job_id = j.id) \
             ORDER BY deadline_at LIMIT 500 FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        for id in &ids {
            let (code, message) = crate::deadline_failure();
            finish(&mut tx, *id, JobStatus::Failed, Some((code, message))).await?;
        }
        tx.commit().await?;
        for _ in &ids {
            transition::count_finished(JobStatus::Failed, None);
        }
        Ok(ids.len() as u64)
    }

    async fn record_call(&self, job_id: Uuid, call: &NewCall) -> StoreResult<()> {
        let c = &call.entry.call;
        sqlx::query(
            "INSERT INTO job_calls (job_id, tenant, editor, turn, kind, seconds, input_tokens, \
                 output_tokens, cost, currency, created_at) \
             SELECT id, tenant, editor, $2, $3, $4, $5, $6, $7, $8, now() FROM jobs WHERE id = $1",
        )
        .bind(job_id)
        .bind(i32::try_from(c.turn).unwrap_or(i32::MAX))
        .bind(c.kind.as_str())
        .bind(c.seconds)
        .bind(i64::try_from(c.tokens.input).unwrap_or(i64::MAX))
        .bind(i64::try_from(c.tokens.output).unwrap_or(i64::MAX))
        .bind(call.entry.cost)
        .bind(&call.currency)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn job_calls(&self, job_id: Uuid) -> StoreResult<JobLedger> {
        ledger_of(&self.pool, job_id).await
    }

    async fn tenant_usage(
        &self,
        tenant: &str,
        since: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<EditorUsage>> {
        let sums: Vec<LedgerSum> = sqlx::query_as(
            "SELECT editor, kind, COUNT(*) AS calls, SUM(seconds) AS seconds, \
                 SUM(input_tokens)::bigint AS input_tokens, \
                 SUM(output_tokens)::bigint AS output_tokens, \
                 SUM(cost) AS cost, MAX(currency) AS currency \
             FROM job_calls WHERE tenant = $1 AND created_at >= $2 AND created_at < $3 \
             GROUP BY editor, kind",
        )
        .bind(tenant)
        .bind(since)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        Ok(usage_by_editor(sums))
    }

    async fn queue_stats(&self) -> StoreResult<QueueStats> {
        let row = sqlx::query(
            "SELECT count(*) FILTER (WHERE status = 'queued') AS queued, \
                    count(*) FILTER (WHERE status = 'running') AS running, \
                    coalesce(extract(epoch FROM now() - min(run_at) \
                        FILTER (WHERE status = 'queued' AND run_at <= now())), 0)::float8 AS oldest \
             FROM jobs WHERE status IN ('queued', 'running')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStats {
            queued: to_u64(row.try_get("queued")?, "queued jobs")?,
            running: to_u64(row.try_get("running")?, "running jobs")?,
            oldest_due_age: Duration::from_secs_f64(row.try_get::<f64, _>("oldest")?.max(0.0)),
        })
    }

    async fn events_after(&self, job_id: Uuid, after: i64) -> StoreResult<Vec<EventRow>> {
        sqlx::query("SELECT * FROM job_events WHERE job_id = $1 AND id > $2 ORDER BY id")
            .bind(job_id)
            .bind(after)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    async fn latest_event_ids(&self, jobs: &[Uuid]) -> StoreResult<Vec<(Uuid, i64)>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT job_id, max(id) FROM job_events WHERE job_id = ANY($1) GROUP BY job_id",
        )
        .bind(jobs)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn insert_api_key(&self, key: NewApiKey) -> StoreResult<ApiKeyRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO tenants (name, created_at) VALUES ($1, now()) ON CONFLICT DO NOTHING",
        )
        .bind(&key.tenant)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "INSERT INTO api_keys (id, tenant, label, key_hash, prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5, now()) RETURNING *",
        )
        .bind(key.id)
        .bind(&key.tenant)
        .bind(&key.label)
        .bind(&key.key_hash)
        .bind(&key.prefix)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        api_key_from_row(&row)
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRow>> {
        sqlx::query("SELECT * FROM api_keys ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(api_key_from_row)
            .collect()
    }

    async fn revoke_api_key(&self, id: Uuid) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRow>> {
        sqlx::query("SELECT * FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(api_key_from_row)
            .transpose()
    }

    async fn set_tenant_webhook_secret(&self, tenant: &str, secret: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO tenants (name, webhook_secret, created_at) VALUES ($1, $2, now()) \
             ON CONFLICT (name) DO UPDATE SET webhook_secret = EXCLUDED.webhook_secret",
        )
        .bind(tenant)
        .bind(secret)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn tenant_webhook_secret(&self, tenant: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT webhook_secret FROM tenants WHERE name = $1")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    async fn publish_live(&self, job_id: Uuid, kind: &str, data: Value) -> StoreResult<()> {
        let data = crate::clean::json(&data);
        let body = payload::live_payload(job_id, kind, &data);
        if body.len() > payload::MAX_LIVE_PAYLOAD {
            return Err(StoreError::LiveTooLarge(body.len()));
        }
        // Every process (this one included) hears it through its listener.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(payload::LIVE_CHANNEL)
            .bind(body)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
