//! The SQLite backend: the embedded default, one process.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction: it takes the write
//! lock up front, so two writers queue on `busy_timeout` instead of failing
//! when a read lock cannot be upgraded. Notices go out after the commit.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, Transaction};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::model::{
    event_type, is_terminal_event, ledger_from, usage_by_editor, LedgerRow, LedgerSum,
};
use crate::transition::{self, GiveBack, RunningJob, Settlement};
use crate::{
    payload, ApiKeyRow, CandidateRow, ChosenRecord, ClaimedJob, CreateCheck, DeliveryAttempt,
    DeliveryRow, DeliveryStatus, DueDelivery, EditorUsage, EventRow, Fairness, IdempotentInsert,
    JobLedger, JobRow, JobStatus, JobWithTurns, Lease, NewApiKey, NewCall, NewCandidate, NewJob,
    NewTurn, Notice, PendingEditRecord, QueueStats, RefusalRecord, StopReason, Store, StoreError,
    StoreResult, TurnRow, IDEMPOTENCY_WINDOW,
};

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The job read's statements, without and with the position
/// ([`crate::job_with_turns_sql`]), built once.
static JOB_WITH_TURNS: LazyLock<[String; 2]> =
    LazyLock::new(|| [false, true].map(|p| crate::job_with_turns_sql("?1", "?2", p)));

/// [`crate::jobs_ahead_sql`], built once.
static JOBS_AHEAD: LazyLock<String> = LazyLock::new(|| crate::jobs_ahead_sql("?1"));

/// [`crate::queue_positions_sql`], built once.
static QUEUE_POSITIONS: LazyLock<String> = LazyLock::new(|| crate::queue_positions_sql("?1"));

/// Capacity of the in-process notice broadcast.
const NOTICE_CAPACITY: usize = 1024;

/// Fences a write on the caller's lease.
/// A lease past its expiry is lost even before the rescuer requeues it.
const FENCE: &str = "SELECT attempt, max_attempts, cancel_requested FROM jobs \
     WHERE id = ?1 AND attempt = ?2 AND lease_owner = ?3 AND status = 'running' \
     AND lease_expires_at > ?4";

/// The [`Store`] on SQLite. Cheap to clone; clones share the pool and the
/// notice broadcast.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    notices: broadcast::Sender<Notice>,
}

impl SqliteStore {
    /// Opens (creating the file and its folder when missing) the database
    /// at `url` (`sqlite://path`, `sqlite:path` or `sqlite::memory:`).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            if let Some(dir) = options.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::BadUrl(format!("{url}: cannot create {}: {e}", dir.display()))
                    })?;
                }
            }
        }
        let pool = if in_memory {
            // An in-memory database lives as long as its last connection.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?
        } else {
            SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await?
        };
        let (notices, _) = broadcast::channel(NOTICE_CAPACITY);
        Ok(Self { pool, notices })
    }

    /// The connection pool (for tests and tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn write(&self) -> StoreResult<WriteTx> {
        Ok(WriteTx {
            tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
            notices: Vec::new(),
            now: now_us(),
        })
    }

    async fn commit(&self, w: WriteTx) -> StoreResult<()> {
        w.tx.commit().await?;
        for notice in w.notices {
            // No subscribers is fine.
            let _ = self.notices.send(notice);
        }
        Ok(())
    }
}

/// A write transaction, the notices to send once it commits, and the one
/// "now" all its timestamps use. Dropping it rolls back.
struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    notices: Vec<Notice>,
    now: i64,
}

impl WriteTx {
    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    /// Inserts a queued job and its `job.queued` event.
    /// Inserts a queued job and its `job.queued` event, after checking the
    /// tenant's active-jobs limit (the transaction holds the write lock, so
    /// the count cannot change before the insert).
    async fn insert_job(&mut self, job: NewJob) -> StoreResult<JobRow> {
        let now = self.now;
        if let Some(limit) = job.active_limit {
            let active: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE tenant = ?1 AND status IN ('queued', 'running')",
            )
            .bind(&job.tenant)
            .fetch_one(self.conn())
            .await?;
            if active >= i64::from(limit) {
                return Err(StoreError::ActiveJobsLimit {
                    tenant: job.tenant,
                    limit,
                });
            }
        }
        let row = sqlx::query(
            "INSERT INTO jobs (id, status, instruction, editor, options, metadata, source_key, \
             source_mime, attempt, max_attempts, priority, webhook, run_at, created_at, \
             deadline_at, tenant, traceparent, sandbox) \
             VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?10, ?11, ?11, ?12, ?13, ?14, \
             ?15) \
             RETURNING *",
        )
        .bind(job.id.to_string())
        .bind(&job.instruction)
        .bind(&job.editor)
        .bind(job.options.to_string())
        .bind(job.metadata.to_string())
        .bind(&job.source_key)
        .bind(&job.source_mime)
        .bind(i64::from(job.max_attempts))
        .bind(job.priority)
        .bind(job.webhook.as_ref().map(Value::to_string))
        .bind(now)
        .bind(
            job.deadline_seconds
                .map(|s| now + micros(Duration::from_secs(u64::from(s)))),
        )
        .bind(&job.tenant)
        .bind(&job.traceparent)
        .bind(job.sandbox)
        .fetch_one(self.conn())
        .await?;
        let job = job_from_row(&row)?;
        self.emit(job.id, event_type::JOB_QUEUED, payload::queued())
            .await?;
        Ok(job)
    }

    async fn emit(&mut self, job_id: Uuid, kind: &str, mut data: Value) -> StoreResult<i64> {
        if is_terminal_event(kind) {
            let ledger = ledger_of(self.conn(), job_id).await?;
            payload::add_usage(&mut data, &ledger);
        }
        let now = self.now;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO job_events (job_id, type, data, created_at) \
             VALUES (?1, ?2, ?3, ?4) RETURNING id",
        )
        .bind(job_id.to_string())
        .bind(kind)
        .bind(data.to_string())
        .bind(now)
        .fetch_one(self.conn())
        .await?;
        // The outbox: a delivery when the job's webhook wants this type.
        sqlx::query(
            "INSERT INTO webhook_deliveries \
                 (id, job_id, event_id, type, url, status, next_attempt_at, created_at) \
             SELECT ?1, j.id, ?2, ?3, json_extract(j.webhook, '$.url'), 'pending', ?4, ?4 \
             FROM jobs j WHERE j.id = ?5 AND j.webhook IS NOT NULL \
               AND EXISTS (SELECT 1 FROM json_each(j.webhook, '$.events') WHERE value = ?3)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(id)
        .bind(kind)
        .bind(now)
        .bind(job_id.to_string())
        .execute(self.conn())
        .await?;
        self.notices.push(Notice::Event {
            job_id,
            event_id: id,
            kind: kind.to_owned(),
        });
        Ok(id)
    }

    async fn fence(&mut self, lease: &Lease) -> StoreResult<RunningJob> {
        let now = self.now;
        let row = sqlx::query(FENCE)
            .bind(lease.job_id.to_string())
            .bind(i64::from(lease.attempt))
            .bind(&lease.owner)
            .bind(now)
            .fetch_optional(self.conn())
            .await?
            .ok_or(StoreError::LeaseLost(lease.job_id))?;
        Ok(RunningJob {
            attempt: to_u32(row.try_get("attempt")?, "attempt")?,
            max_attempts: to_u32(row.try_get("max_attempts")?, "max_attempts")?,
            cancel_requested: row.try_get("cancel_requested")?,
        })
    }

    /// Ends a running job: terminal status, finished, lease cleared, event.
    async fn finish(
        &mut self,
        job_id: Uuid,
        status: JobStatus,
        error: Option<(&str, &str)>,
    ) -> StoreResult<()> {
        let now = self.now;
        sqlx::query(
            "UPDATE jobs SET status = ?2, finished_at = ?3, lease_owner = NULL, \
             lease_expires_at = NULL, error_code = coalesce(?4, error_code), \
             error_message = coalesce(?5, error_message) WHERE id = ?1",
        )
        .bind(job_id.to_string())
        .bind(status.as_str())
        .bind(now)
        .bind(error.map(|e| e.0))
        .bind(error.map(|e| e.1))
        .execute(self.conn())
        .await?;
        let (kind, data) = match (status, error) {
            (JobStatus::Failed, Some((code, message))) => {
                (event_type::JOB_FAILED, payload::failed(code, message))
            }
            (JobStatus::Canceled, _) => (event_type::JOB_CANCELED, payload::canceled()),
            _ => return Err(corrupt(format!("finish({status}) without its payload"))),
        };
        self.emit(job_id, kind, data).await?;
        Ok(())
    }

    /// Applies [`transition::settle`]'s verdict on a running job that is
    /// given back: canceled, failed, or queued again with a `job.retrying`
    /// event.
    async fn give_back(
        &mut self,
        job_id: Uuid,
        job: RunningJob,
        give: GiveBack<'_>,
    ) -> StoreResult<JobStatus> {
        match transition::settle(job, &give) {
            Settlement::Cancel => {
                self.finish(job_id, JobStatus::Canceled, None).await?;
                Ok(JobStatus::Canceled)
            }
            Settlement::Fail { code, message } => {
                self.finish(job_id, JobStatus::Failed, Some((&code, &message)))
                    .await?;
                Ok(JobStatus::Failed)
            }
            Settlement::Requeue { delay, counted } => {
                let run_at = self.now.saturating_add(micros(delay));
                sqlx::query(
                    "UPDATE jobs SET status = 'queued', run_at = ?2, lease_owner = NULL, \
                     lease_expires_at = NULL, attempt = attempt - ?3, \
                     error_code = coalesce(?4, error_code), \
                     error_message = coalesce(?5, error_message) WHERE id = ?1",
                )
                .bind(job_id.to_string())
                .bind(run_at)
                .bind(if counted { 0_i64 } else { 1 })
                .bind(give.error.map(|e| e.0))
                .bind(give.error.map(|e| e.1))
                .execute(self.conn())
                .await?;
                let data = payload::retrying(
                    job.attempt,
                    give.reason.as_str(),
                    give.error.map(|e| e.0),
                    time(run_at)?,
                );
                self.emit(job_id, event_type::JOB_RETRYING, data).await?;
                Ok(JobStatus::Queued)
            }
        }
    }

    async fn job(&mut self, id: Uuid) -> StoreResult<JobRow> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = ?1")
            .bind(id.to_string())
            .fetch_one(self.conn())
            .await?;
        job_from_row(&row)
    }
}

/// The earlier job of an idempotency key (`row`: the key's
/// `request_digest` and the job's columns), or a refusal when the key was
/// used for another request.
fn replay_or_reuse(row: &SqliteRow, digest: &str) -> StoreResult<IdempotentInsert> {
    let same: String = row.try_get("request_digest")?;
    if same == digest {
        let status: i64 = row.try_get("response_status")?;
        Ok(IdempotentInsert::Replayed {
            job: job_from_row(row)?,
            status: u16::try_from(status).unwrap_or(202),
        })
    } else {
        Ok(IdempotentInsert::KeyReused)
    }
}

fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn to_u32(v: i64, what: &str) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| corrupt(format!("{what} = {v}")))
}

fn to_u64(v: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| corrupt(format!("{what} = {v}")))
}

fn time(v: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| corrupt(format!("timestamp {v}")))
}

fn opt_time(row: &SqliteRow, col: &str) -> StoreResult<Option<DateTime<Utc>>> {
    row.try_get::<Option<i64>, _>(col)?.map(time).transpose()
}

fn uuid(row: &SqliteRow, col: &str) -> StoreResult<Uuid> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|_| corrupt(format!("{col} {s}")))
}

fn api_key_from_row(row: &SqliteRow) -> StoreResult<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: uuid(row, "id")?,
        tenant: row.try_get("tenant")?,
        label: row.try_get("label")?,
        prefix: row.try_get("prefix")?,
        created_at: time(row.try_get("created_at")?)?,
        revoked_at: opt_time(row, "revoked_at")?,
    })
}

fn json(s: &str) -> StoreResult<Value> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("JSON {e}")))
}

fn opt_json(row: &SqliteRow, col: &str) -> StoreResult<Option<Value>> {
    row.try_get::<Option<String>, _>(col)?
        .as_deref()
        .map(json)
        .transpose()
}

fn job_from_row(row: &SqliteRow) -> StoreResult<JobRow> {
    let status: String = row.try_get("status")?;
    let status = JobStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?;
    Ok(JobRow {
        id: uuid(row, "id")?,
        tenant: row.try_get("tenant")?,
        status,
        instruction: row.try_get("instruction")?,
        editor: row.try_get("editor")?,
        options: json(row.try_get("options")?)?,
        metadata: json(row.try_get("metadata")?)?,
        source_key: row.try_get("source_key")?,
        source_mime: row.try_get("source_mime")?,
        attempt: to_u32(row.try_get("attempt")?, "attempt")?,
        max_attempts: to_u32(row.try_get("max_attempts")?, "max_attempts")?,
        priority: row.try_get("priority")?,
        run_at: time(row.try_get("run_at")?)?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: opt_time(row, "lease_expires_at")?,
        cancel_requested: row.try_get("cancel_requested")?,
        result_turn: row
            .try_get::<Option<i64>, _>("result_turn")?
            .map(|v| to_u32(v, "result_turn"))
            .transpose()?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        created_at: time(row.try_get("created_at")?)?,
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        pending_edit: opt_json(row, "pending_edit")?,
        refusal: opt_json(row, "refusal")?,
        webhook: opt_json(row, "webhook")?,
        stop_reason: crate::stop_reason(
            status,
            row.try_get::<Option<String>, _>("stop_reason")?.as_deref(),
            row.try_get::<Option<String>, _>("error_code")?.as_deref(),
        ),
        deadline_at: opt_time(row, "deadline_at")?,
        traceparent: row.try_get("traceparent")?,
        sandbox: row.try_get("sandbox")?,
    })
}

fn delivery_from_row(row: &SqliteRow) -> StoreResult<DeliveryRow> {
    let status: String = row.try_get("status")?;
    Ok(DeliveryRow {
        id: uuid(row, "id")?,
        job_id: uuid(row, "job_id")?,
        event_id: row.try_get("event_id")?,
        kind: row.try_get("type")?,
        url: row.try_get("url")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("delivery status {status}")))?,
        attempts: to_u32(row.try_get("attempts")?, "attempts")?,
        last_status_code: row
            .try_get::<Option<i64>, _>("last_status_code")?
            .map(|v| u16::try_from(v).map_err(|_| corrupt(format!("status code {v}"))))
            .transpose()?,
        last_error: row.try_get("last_error")?,
        next_attempt_at: opt_time(row, "next_attempt_at")?,
        delivered_at: opt_time(row, "delivered_at")?,
    })
}

/// A job's usage ledger, read on `conn` (a pool or a write transaction).
async fn ledger_of<'c, E>(conn: E, job_id: Uuid) -> StoreResult<JobLedger>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    // Without calls, one placeholder row carries the currency of the
    // latest call recorded anywhere (as in the Postgres driver).
    const LEDGER_SQL: &str = "SELECT id, kind, turn, seconds, input_tokens, output_tokens, cost, \
             currency \
         FROM job_calls WHERE job_id = ?1 \
         UNION ALL \
         SELECT 0, 'none', 0, 0.0, 0, 0, 0.0, currency \
         FROM (SELECT currency FROM job_calls ORDER BY id DESC LIMIT 1) \
         WHERE NOT EXISTS (SELECT 1 FROM job_calls WHERE job_id = ?1) \
         ORDER BY 1";
    let rows: Vec<LedgerRow> = sqlx::query_as(LEDGER_SQL)
        .bind(job_id.to_string())
        .fetch_all(conn)
        .await?;
    Ok(ledger_from(rows))
}

fn turn_from_row(row: &SqliteRow, c: &crate::TurnColumns) -> StoreResult<TurnRow> {
    Ok(TurnRow {
        job_id: uuid(row, c.job_id)?,
        index: to_u32(row.try_get(c.idx)?, "idx")?,
        instruction: row.try_get(c.instruction)?,
        image_key: row.try_get(c.image_key)?,
        image_mime: row.try_get(c.image_mime)?,
        editor_ms: to_u64(row.try_get(c.editor_ms)?, "editor_ms")?,
        critique: opt_json(row, c.critique)?,
        thinker_ms: row
            .try_get::<Option<i64>, _>(c.thinker_ms)?
            .map(|v| to_u64(v, "thinker_ms"))
            .transpose()?,
        raw_output: row.try_get(c.raw_output)?,
        parse_error: row.try_get(c.parse_error)?,
        provider_request_id: row.try_get(c.provider_request_id)?,
        chosen: row
            .try_get::<Option<i64>, _>(c.chosen)?
            .map(|v| to_u32(v, "chosen"))
            .transpose()?,
        created_at: time(row.try_get(c.created_at)?)?,
    })
}

fn candidate_from_row(row: &SqliteRow) -> StoreResult<CandidateRow> {
    let opt_u64 = |col: &str| {
        row.try_get::<Option<i64>, _>(col)?
            .map(|v| to_u64(v, col))
            .transpose()
    };
    Ok(CandidateRow {
        job_id: uuid(row, "job_id")?,
        turn: to_u32(row.try_get("turn_idx")?, "turn_idx")?,
        index: to_u32(row.try_get("idx")?, "idx")?,
        instruction: row.try_get("instruction")?,
        seed: row.try_get("seed")?,
        pending_request: opt_json(row, "pending_request")?,
        provider_request_id: row.try_get("provider_request_id")?,
        image_key: row.try_get("image_key")?,
        image_mime: row.try_get("image_mime")?,
        editor_ms: opt_u64("editor_ms")?,
        critique: opt_json(row, "critique")?,
        thinker_ms: opt_u64("thinker_ms")?,
        raw_output: row.try_get("raw_output")?,
        parse_error: row.try_get("parse_error")?,
        created_at: time(row.try_get("created_at")?)?,
    })
}

fn event_from_row(row: &SqliteRow) -> StoreResult<EventRow> {
    Ok(EventRow {
        id: row.try_get("id")?,
        job_id: uuid(row, "job_id")?,
        kind: row.try_get("type")?,
        data: json(row.try_get("data")?)?,
        created_at: time(row.try_get("created_at")?)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ready(&self) -> StoreResult<bool> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        let exists: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        if exists == 0 {
            return Ok(false);
        }
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?;
        Ok(crate::all_applied(&MIGRATOR, &applied))
    }

    async fn insert_job(&self, job: NewJob) -> StoreResult<JobRow> {
        let mut w = self.write().await?;
        let job = w.insert_job(job).await?;
        self.commit(w).await?;
        Ok(job)
    }

    async fn insert_job_idempotent(
        &self,
        job: NewJob,
        key: &str,
        digest: &str,
    ) -> StoreResult<IdempotentInsert> {
        // One writer at a time (BEGIN IMMEDIATE): check, then insert.
        let mut w = self.write().await?;
        let now = w.now;
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE tenant = ?3 AND key = ?1 AND created_at < ?2",
        )
        .bind(key)
        .bind(now - micros(IDEMPOTENCY_WINDOW))
        .bind(&job.tenant)
        .execute(w.conn())
        .await?;
        let existing = sqlx::query(
            "SELECT k.request_digest, k.response_status, j.* FROM idempotency_keys k \
             JOIN jobs j ON j.id = k.job_id WHERE k.tenant = ?2 AND k.key = ?1",
        )
        .bind(key)
        .bind(&job.tenant)
        .fetch_optional(w.conn())
        .await?;
        if let Some(existing) = existing {
            let outcome = replay_or_reuse(&existing, digest)?;
            self.commit(w).await?;
            return Ok(outcome);
        }
        let row = w.insert_job(job).await?;
        sqlx::query(
            "INSERT INTO idempotency_keys (tenant, key, request_digest, job_id, created_at) \
             VALUES (?5, ?1, ?2, ?3, ?4)",
        )
        .bind(key)
        .bind(digest)
        .bind(row.id.to_string())
        .bind(now)
        .bind(&row.tenant)
        .execute(w.conn())
        .await?;
        self.commit(w).await?;
        Ok(IdempotentInsert::Created(row))
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
                 JOIN jobs j ON j.id = k.job_id WHERE k.tenant = ?2 AND k.key = ?1 \
                 AND k.created_at >= ?3",
            )
            .bind(key)
            .bind(tenant)
            .bind(now_us() - micros(IDEMPOTENCY_WINDOW))
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
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE tenant = ?1 AND status IN ('queued', 'running')",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        crate::limit_check(tenant, limit, active)
    }

    async fn record_idempotent_status(
        &self,
        tenant: &str,
        key: &str,
        status: u16,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE idempotency_keys SET response_status = ?3 WHERE tenant = ?1 AND key = ?2",
        )
        .bind(tenant)
        .bind(key)
        .bind(i64::from(status))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_deliveries(&self, job_id: Uuid) -> StoreResult<Vec<DeliveryRow>> {
        sqlx::query("SELECT * FROM webhook_deliveries WHERE job_id = ?1 ORDER BY event_id, id")
            .bind(job_id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(delivery_from_row)
            .collect()
    }

    async fn claim_deliveries(&self, limit: u32, lock: Duration) -> StoreResult<Vec<DueDelivery>> {
        let mut w = self.write().await?;
        let now = w.now;
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE webhook_deliveries SET locked_until = ?2 WHERE id IN (\
                 SELECT id FROM webhook_deliveries \
                 WHERE status = 'pending' AND next_attempt_at <= ?1 \
                   AND (locked_until IS NULL OR locked_until <= ?1) \
                 ORDER BY next_attempt_at LIMIT ?3) \
             RETURNING id",
        )
        .bind(now)
        .bind(now + micros(lock))
        .bind(i64::from(limit))
        .fetch_all(w.conn())
        .await?;
        // The claimed rows with their events, in one query.
        let rows = sqlx::query(
            "SELECT d.*, e.data AS event_data, e.created_at AS event_created_at, \
                 t.webhook_secret AS tenant_secret \
             FROM webhook_deliveries d JOIN job_events e ON e.id = d.event_id \
             JOIN jobs j ON j.id = d.job_id LEFT JOIN tenants t ON t.name = j.tenant \
             WHERE d.id IN (SELECT value FROM json_each(?1)) ORDER BY d.next_attempt_at",
        )
        .bind(serde_json::to_string(&ids).expect("ids serialize"))
        .fetch_all(w.conn())
        .await?;
        let due = rows
            .iter()
            .map(|row| {
                let delivery = delivery_from_row(row)?;
                Ok(DueDelivery {
                    event: EventRow {
                        id: delivery.event_id,
                        job_id: delivery.job_id,
                        kind: delivery.kind.clone(),
                        data: json(row.try_get("event_data")?)?,
                        created_at: time(row.try_get("event_created_at")?)?,
                    },
                    delivery,
                    tenant_secret: row.try_get("tenant_secret")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.commit(w).await?;
        Ok(due)
    }

    async fn record_delivery(&self, id: Uuid, attempt: DeliveryAttempt) -> StoreResult<()> {
        let status = attempt.status();
        let mut w = self.write().await?;
        let now = w.now;
        sqlx::query(
            "UPDATE webhook_deliveries SET status = ?2, attempts = attempts + 1, \
             last_status_code = ?3, last_error = ?4, next_attempt_at = ?5, locked_until = NULL, \
             delivered_at = CASE WHEN ?2 = 'delivered' THEN ?6 END \
             WHERE id = ?1 AND status = 'pending'",
        )
        .bind(id.to_string())
        .bind(status.as_str())
        .bind(attempt.status_code.map(i64::from))
        .bind(attempt.error)
        .bind(
            attempt
                .retry_at
                .filter(|_| status == DeliveryStatus::Pending)
                .map(|t| t.timestamp_micros()),
        )
        .bind(now)
        .execute(w.conn())
        .await?;
        self.commit(w).await?;
        Ok(())
    }

    async fn cancel_deliveries(&self, job_id: Uuid, url: &str, reason: &str) -> StoreResult<u64> {
        let mut w = self.write().await?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', last_error = ?3, \
             next_attempt_at = NULL, locked_until = NULL \
             WHERE job_id = ?1 AND url = ?2 AND status = 'pending'",
        )
        .bind(job_id.to_string())
        .bind(url)
        .bind(reason)
        .execute(w.conn())
        .await?;
        self.commit(w).await?;
        Ok(done.rows_affected())
    }

    async fn retry_failed(&self, id: Uuid, attempts: u32) -> StoreResult<JobRow> {
        let mut w = self.write().await?;
        let now = w.now;
        let row = sqlx::query(
            "UPDATE jobs SET status = 'queued', run_at = ?2, finished_at = NULL, \
             lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0, \
             stop_reason = NULL, max_attempts = attempt + ?3 \
             WHERE id = ?1 AND status = 'failed' RETURNING *",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(i64::from(attempts))
        .fetch_optional(w.conn())
        .await?;
        let Some(row) = row else {
            drop(w);
            let job = self.get_job(id).await?.ok_or(StoreError::NotFound(id))?;
            return Err(StoreError::Conflict {
                id,
                status: job.status,
            });
        };
        w.emit(id, event_type::JOB_QUEUED, payload::queued())
            .await?;
        self.commit(w).await?;
        job_from_row(&row)
    }

    async fn jobs_ahead(&self, id: Uuid) -> StoreResult<Option<u64>> {
        let ahead: Option<i64> = sqlx::query_scalar(&JOBS_AHEAD)
            .bind(id.to_string())
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
                    uuid(&row, "id")?,
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
        let rows = sqlx::query(&JOB_WITH_TURNS[usize::from(position)])
            .bind(id.to_string())
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        let read = crate::job_with_turns_from_rows(
            &rows,
            job_from_row,
            |row| {
                let has_turn = row
                    .try_get::<Option<i64>, _>(crate::JOINED_TURN.idx)?
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
        sqlx::query("SELECT * FROM jobs WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn get_job_for_tenant(&self, id: Uuid, tenant: &str) -> StoreResult<Option<JobRow>> {
        sqlx::query("SELECT * FROM jobs WHERE id = ?1 AND tenant = ?2")
            .bind(id.to_string())
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
            "SELECT * FROM jobs WHERE tenant = ?4 AND (?1 IS NULL OR status = ?1) \
             AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
        )
        .bind(status.map(JobStatus::as_str))
        .bind(cursor.map(|c| c.to_string()))
        .bind(i64::from(limit))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(job_from_row)
        .collect()
    }

    async fn list_turns(&self, job_id: Uuid) -> StoreResult<Vec<TurnRow>> {
        sqlx::query("SELECT * FROM turns WHERE job_id = ?1 ORDER BY idx")
            .bind(job_id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| turn_from_row(row, &crate::TURN))
            .collect()
    }

    async fn request_cancel(&self, id: Uuid) -> StoreResult<JobRow> {
        let mut w = self.write().await?;
        let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(w.conn())
            .await?
            .ok_or(StoreError::NotFound(id))?;
        let status =
            JobStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?;
        match status {
            JobStatus::Queued => {
                let now = w.now;
                sqlx::query("UPDATE jobs SET status = 'canceled', finished_at = ?2 WHERE id = ?1")
                    .bind(id.to_string())
                    .bind(now)
                    .execute(w.conn())
                    .await?;
                w.emit(id, event_type::JOB_CANCELED, payload::canceled())
                    .await?;
            }
            JobStatus::Running => {
                sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")
                    .bind(id.to_string())
                    .execute(w.conn())
                    .await?;
            }
            status => return Err(StoreError::Conflict { id, status }),
        }
        let job = w.job(id).await?;
        self.commit(w).await?;
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
        let mut w = self.write().await?;
        let now = w.now;
        // The write transaction holds the database's one write lock, so the
        // ranked rows cannot change before they are updated: no locking
        // dance as on Postgres.
        let ids: Vec<String> = sqlx::query_scalar(match fairness {
            Fairness::Tenant => {
                // As on Postgres (CLAIM_FAIR): running jobs of the tenant
                // at this priority, plus rank in its due queue.
                "WITH running AS (SELECT tenant, priority, count(*) AS n FROM jobs \
                     WHERE status = 'running' GROUP BY tenant, priority) \
                 SELECT id FROM (SELECT q.id, q.priority, q.run_at, \
                     coalesce(r.n, 0) + row_number() OVER \
                     (PARTITION BY q.priority, q.tenant ORDER BY q.run_at, q.id) AS turn \
                 FROM jobs q LEFT JOIN running r ON r.tenant = q.tenant AND r.priority = q.priority \
                 WHERE q.status = 'queued' AND q.run_at <= ?1) \
                 ORDER BY priority DESC, turn, run_at, id LIMIT ?2"
            }
            Fairness::None => {
                "SELECT id FROM jobs WHERE status = 'queued' AND run_at <= ?1 \
                 ORDER BY priority DESC, run_at, id LIMIT ?2"
            }
        })
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(w.conn())
        .await?;
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let row = sqlx::query(
                "UPDATE jobs SET status = 'running', attempt = attempt + 1, lease_owner = ?2, \
                 lease_expires_at = ?3, heartbeat_at = ?4, \
                 started_at = coalesce(started_at, ?4) WHERE id = ?1 RETURNING *",
            )
            .bind(&id)
            .bind(owner)
            .bind(now.saturating_add(micros(lease)))
            .bind(now)
            .fetch_one(w.conn())
            .await?;
            let job = job_from_row(&row)?;
            w.emit(
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
        self.commit(w).await?;
        Ok(claimed)
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> StoreResult<bool> {
        let now = now_us();
        let flag: Option<bool> = sqlx::query_scalar(
            "UPDATE jobs SET lease_expires_at = ?4, heartbeat_at = ?5 \
             WHERE id = ?1 AND attempt = ?2 AND lease_owner = ?3 AND status = 'running' \
             AND lease_expires_at > ?5 RETURNING cancel_requested",
        )
        .bind(lease.job_id.to_string())
        .bind(i64::from(lease.attempt))
        .bind(&lease.owner)
        .bind(now.saturating_add(micros(extend)))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        flag.ok_or(StoreError::LeaseLost(lease.job_id))
    }

    async fn record_turn(&self, lease: &Lease, turn: NewTurn) -> StoreResult<()> {
        let turn = crate::clean::turn(turn);
        let mut w = self.write().await?;
        w.fence(lease).await?;
        let now = w.now;
        // A recorded turn is never replaced: its image may already be cached
        // as immutable. Recording the same turn again (a retried write whose
        // commit we never heard about) is a no-op.
        let inserted = sqlx::query(
            "INSERT INTO turns (job_id, idx, instruction, image_key, image_mime, editor_ms, \
             provider_request_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (job_id, idx) DO NOTHING",
        )
        .bind(lease.job_id.to_string())
        .bind(i64::from(turn.index))
        .bind(&turn.instruction)
        .bind(&turn.image_key)
        .bind(&turn.image_mime)
        .bind(i64::try_from(turn.editor_ms).unwrap_or(i64::MAX))
        .bind(&turn.provider_request_id)
        .bind(now)
        .execute(w.conn())
        .await?
        .rows_affected();
        if inserted == 0 {
            let existing: String =
                sqlx::query_scalar("SELECT image_key FROM turns WHERE job_id = ?1 AND idx = ?2")
                    .bind(lease.job_id.to_string())
                    .bind(i64::from(turn.index))
                    .fetch_one(w.conn())
                    .await?;
            return crate::same_turn(lease, turn.index, &existing, &turn.image_key);
        }
        // The edit in flight is now a recorded turn.
        sqlx::query("UPDATE jobs SET pending_edit = NULL WHERE id = ?1")
            .bind(lease.job_id.to_string())
            .execute(w.conn())
            .await?;
        w.emit(
            lease.job_id,
            event_type::TURN_EDITED,
            payload::edited(turn.index, &turn.instruction, turn.editor_ms),
        )
        .await?;
        self.commit(w).await
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
        let mut w = self.write().await?;
        w.fence(lease).await?;
        let updated = sqlx::query(
            "UPDATE turns SET critique = ?3, thinker_ms = ?4, raw_output = ?5, parse_error = ?6 \
             WHERE job_id = ?1 AND idx = ?2",
        )
        .bind(lease.job_id.to_string())
        .bind(i64::from(index))
        .bind(critique.to_string())
        .bind(i64::try_from(thinker_ms).unwrap_or(i64::MAX))
        .bind(raw_output)
        .bind(parse_error)
        .execute(w.conn())
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(corrupt(format!(
                "critique for unrecorded turn {index} of job {}",
                lease.job_id
            )));
        }
        w.emit(
            lease.job_id,
            event_type::TURN_CRITIQUED,
            payload::critiqued(index, 0, critique, thinker_ms),
        )
        .await?;
        self.commit(w).await
    }

    async fn record_pending_edit(
        &self,
        lease: &Lease,
        pending: &PendingEditRecord,
    ) -> StoreResult<()> {
        let pending = &crate::clean::pending(pending);
        let mut w = self.write().await?;
        w.fence(lease).await?;
        let request = payload::to_json(&pending.request).to_string();
        match pending.candidate {
            None => {
                sqlx::query("UPDATE jobs SET pending_edit = ?2 WHERE id = ?1")
                    .bind(lease.job_id.to_string())
                    .bind(payload::to_json(pending).to_string())
                    .execute(w.conn())
                    .await?;
            }
            Some(candidate) => {
                let now = w.now;
                sqlx::query(
                    "INSERT INTO turn_candidates (job_id, turn_idx, idx, instruction, \
                     pending_request, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (job_id, turn_idx, idx) DO UPDATE SET \
                     instruction = excluded.instruction, pending_request = excluded.pending_request \
                     WHERE turn_candidates.image_key IS NULL",
                )
                .bind(lease.job_id.to_string())
                .bind(i64::from(pending.turn))
                .bind(i64::from(candidate))
                .bind(&pending.instruction)
                .bind(request)
                .bind(now)
                .execute(w.conn())
                .await?;
            }
        }
        self.commit(w).await
    }

    async fn record_candidate(&self, lease: &Lease, candidate: NewCandidate) -> StoreResult<()> {
        let c = crate::clean::candidate(candidate);
        let mut w = self.write().await?;
        w.fence(lease).await?;
        let now = w.now;
        // A recorded candidate is never replaced (its image may be cached
        // as immutable); a pending row becomes the edited candidate.
        let written = sqlx::query(
            "INSERT INTO turn_candidates (job_id, turn_idx, idx, instruction, seed, \
             provider_request_id, image_key, image_mime, editor_ms, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             ON CONFLICT (job_id, turn_idx, idx) DO UPDATE SET \
             instruction = excluded.instruction, seed = excluded.seed, \
             provider_request_id = excluded.provider_request_id, \
             image_key = excluded.image_key, image_mime = excluded.image_mime, \
             editor_ms = excluded.editor_ms, pending_request = NULL \
             WHERE turn_candidates.image_key IS NULL",
        )
        .bind(lease.job_id.to_string())
        .bind(i64::from(c.turn))
        .bind(i64::from(c.index))
        .bind(&c.instruction)
        .bind(c.seed)
        .bind(&c.provider_request_id)
        .bind(&c.image_key)
        .bind(&c.image_mime)
        .bind(i64::try_from(c.editor_ms).unwrap_or(i64::MAX))
        .bind(now)
        .execute(w.conn())
        .await?
        .rows_affected();
        if written == 0 {
            let existing: String = sqlx::query_scalar(
                "SELECT image_key FROM turn_candidates \
                 WHERE job_id = ?1 AND turn_idx = ?2 AND idx = ?3",
            )
            .bind(lease.job_id.to_string())
            .bind(i64::from(c.turn))
            .bind(i64::from(c.index))
            .fetch_one(w.conn())
            .await?;
            return crate::same_turn(lease, c.turn, &existing, &c.image_key);
        }
        w.emit(
            lease.job_id,
            event_type::TURN_EDITED,
            payload::candidate_edited(c.turn, c.index, c.seed, &c.instruction, c.editor_ms),
        )
        .await?;
        self.commit(w).await
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
        let mut w = self.write().await?;
        w.fence(lease).await?;
        let updated = sqlx::query(
            "UPDATE turn_candidates SET critique = ?4, thinker_ms = ?5, raw_output = ?6, \
             parse_error = ?7 WHERE job_id = ?1 AND turn_idx = ?2 AND idx = ?3 \
             AND image_key IS NOT NULL",
        )
        .bind(lease.job_id.to_string())
        .bind(i64::from(turn))
        .bind(i64::from(candidate))
        .bind(clean.value.to_string())
        .bind(i64::try_from(thinker_ms).unwrap_or(i64::MAX))
        .bind(&*clean.raw_output)
        .bind(clean.parse_error.as_deref())
        .execute(w.conn())
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(corrupt(format!(
                "critique for unrecorded candidate {candidate} of turn {turn} of job {}",
                lease.job_id
            )));
        }
        w.emit(
            lease.job_id,
            event_type::TURN_CRITIQUED,
            payload::critiqued(turn, candidate, &clean.value, thinker_ms),
        )
        .await?;
        self.commit(w).await
    }

    async fn record_chosen(&self, lease: &Lease, chosen: &ChosenRecord) -> StoreResult<()> {
        let mut w = self.write().await?;
        w.fence(lease).await?;
        let now = w.now;
        let inserted = sqlx::query(
            "INSERT INTO turns (job_id, idx, instruction, image_key, image_mime, editor_ms, \
             critique, thinker_ms, raw_output, parse_error, provider_request_id, chosen, \
             created_at) \
             SELECT job_id, turn_idx, instruction, image_key, image_mime, editor_ms, critique, \
             thinker_ms, raw_output, parse_error, provider_request_id, idx, ?4 \
             FROM turn_candidates WHERE job_id = ?1 AND turn_idx = ?2 AND idx = ?3 \
             AND image_key IS NOT NULL \
             ON CONFLICT (job_id, idx) DO NOTHING",
        )
        .bind(lease.job_id.to_string())
        .bind(i64::from(chosen.turn))
        .bind(i64::from(chosen.candidate))
        .bind(now)
        .execute(w.conn())
        .await?
        .rows_affected();
        if inserted == 0 {
            let existing: Option<Option<i64>> =
                sqlx::query_scalar("SELECT chosen FROM turns WHERE job_id = ?1 AND idx = ?2")
                    .bind(lease.job_id.to_string())
                    .bind(i64::from(chosen.turn))
                    .fetch_optional(w.conn())
                    .await?;
            return match existing {
                Some(Some(c)) if c == i64::from(chosen.candidate) => Ok(()),
                _ => Err(corrupt(format!(
                    "turn {} of job {} cannot choose candidate {} (not recorded, or another chosen)",
                    chosen.turn, lease.job_id, chosen.candidate
                ))),
            };
        }
        w.emit(
            lease.job_id,
            event_type::TURN_CHOSEN,
            payload::chosen(chosen),
        )
        .await?;
        self.commit(w).await
    }

    async fn list_candidates(&self, job_id: Uuid) -> StoreResult<Vec<CandidateRow>> {
        sqlx::query("SELECT * FROM turn_candidates WHERE job_id = ?1 ORDER BY turn_idx, idx")
            .bind(job_id.to_string())
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
        let mut w = self.write().await?;
        w.fence(lease).await?;
        let now = w.now;
        let refusal = refusal.map(payload::to_json);
        // A success clears the last transient error a retry left behind.
        sqlx::query(
            "UPDATE jobs SET status = 'succeeded', result_turn = ?2, finished_at = ?3, \
             lease_owner = NULL, lease_expires_at = NULL, error_code = NULL, \
             error_message = NULL, pending_edit = NULL, refusal = ?4, stop_reason = ?5 \
             WHERE id = ?1",
        )
        .bind(lease.job_id.to_string())
        .bind(i64::from(result_turn))
        .bind(now)
        .bind(refusal.as_ref().map(Value::to_string))
        .bind(stop.as_str())
        .execute(w.conn())
        .await?;
        w.emit(
            lease.job_id,
            event_type::JOB_SUCCEEDED,
            payload::succeeded(result_turn, refusal.as_ref(), stop),
        )
        .await?;
        self.commit(w).await?;
        transition::count_finished(JobStatus::Succeeded, Some(stop));
        Ok(())
    }

    async fn fail(&self, lease: &Lease, code: &str, message: &str) -> StoreResult<()> {
        let message = &*crate::clean::message(message);
        let mut w = self.write().await?;
        w.fence(lease).await?;
        w.finish(lease.job_id, JobStatus::Failed, Some((code, message)))
            .await?;
        self.commit(w).await?;
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
        let mut w = self.write().await?;
        let job = w.fence(lease).await?;
        let give = GiveBack::transient(code, message, delay);
        let reason = give.reason;
        let status = w.give_back(lease.job_id, job, give).await?;
        self.commit(w).await?;
        transition::count_given_back(status, reason);
        Ok(status)
    }

    async fn mark_canceled(&self, lease: &Lease) -> StoreResult<()> {
        let mut w = self.write().await?;
        w.fence(lease).await?;
        w.finish(lease.job_id, JobStatus::Canceled, None).await?;
        self.commit(w).await?;
        transition::count_finished(JobStatus::Canceled, None);
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> StoreResult<()> {
        let mut w = self.write().await?;
        let job = w.fence(lease).await?;
        let give = GiveBack::released();
        let reason = give.reason;
        let status = w.give_back(lease.job_id, job, give).await?;
        self.commit(w).await?;
        transition::count_given_back(status, reason);
        Ok(())
    }

    async fn rescue_expired(&self) -> StoreResult<u64> {
        let mut w = self.write().await?;
        let now = w.now;
        let rows = sqlx::query(
            "SELECT id, attempt, max_attempts, cancel_requested FROM jobs \
             WHERE status = 'running' AND lease_expires_at <= ?1 ORDER BY lease_expires_at",
        )
        .bind(now)
        .fetch_all(w.conn())
        .await?;
        let mut settled = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = uuid(row, "id")?;
            let job = RunningJob {
                attempt: to_u32(row.try_get("attempt")?, "attempt")?,
                max_attempts: to_u32(row.try_get("max_attempts")?, "max_attempts")?,
                cancel_requested: row.try_get("cancel_requested")?,
            };
            let give = GiveBack::lease_expired();
            let reason = give.reason;
            settled.push((w.give_back(id, job, give).await?, reason));
        }
        self.commit(w).await?;
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
        let mut w = self.write().await?;
        let now = w.now;
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?1")
            .bind(now - micros(IDEMPOTENCY_WINDOW))
            .execute(w.conn())
            .await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "DELETE FROM jobs WHERE id IN (\
                 SELECT id FROM jobs \
                 WHERE status IN ('succeeded', 'failed', 'canceled') AND finished_at < ?1 \
                 ORDER BY finished_at LIMIT ?2) \
             RETURNING id",
        )
        .bind(before.timestamp_micros())
        .bind(i64::from(limit))
        .fetch_all(w.conn())
        .await?;
        self.commit(w).await?;
        ids.iter()
            .map(|id| Uuid::parse_str(id).map_err(|_| corrupt(format!("job id {id}"))))
            .collect()
    }

    async fn existing_jobs(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        let list: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let found: Vec<String> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?1))")
                .bind(serde_json::to_string(&list).expect("ids serialize"))
                .fetch_all(&self.pool)
                .await?;
        found
            .iter()
            .map(|id| Uuid::parse_str(id).map_err(|_| corrupt(format!("job id {id}"))))
            .collect()
    }

    async fn expire_queued_deadlines(&self) -> StoreResult<u64> {
        let mut w = self.write().await?;
        let now = w.now;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs j WHERE status = 'queued' AND deadline_at <= ?1 \
             AND NOT EXISTS (SELECT 1 FROM turns t WHERE t.job_id = j.id) \
             ORDER BY deadline_at LIMIT 500",
        )
        .bind(now)
        .fetch_all(w.conn())
        .await?;
        for id in &ids {
            let id = Uuid::parse_str(id).map_err(|_| corrupt(format!("job id {id}")))?;
            let (code, message) = crate::deadline_failure();
            w.finish(id, JobStatus::Failed, Some((code, message)))
                .await?;
        }
        self.commit(w).await?;
        for _ in &ids {
            transition::count_finished(JobStatus::Failed, None);
        }
        Ok(ids.len() as u64)
    }

    async fn record_call(&self, job_id: Uuid, call: &NewCall) -> StoreResult<()> {
        let mut w = self.write().await?;
        let now = w.now;
        let c = &call.entry.call;
        sqlx::query(
            "INSERT INTO job_calls (job_id, tenant, editor, turn, kind, seconds, input_tokens, \
                 output_tokens, cost, currency, created_at) \
             SELECT id, tenant, editor, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 FROM jobs WHERE id = ?1",
        )
        .bind(job_id.to_string())
        .bind(i64::from(c.turn))
        .bind(c.kind.as_str())
        .bind(c.seconds)
        .bind(i64::try_from(c.tokens.input).unwrap_or(i64::MAX))
        .bind(i64::try_from(c.tokens.output).unwrap_or(i64::MAX))
        .bind(call.entry.cost)
        .bind(&call.currency)
        .bind(now)
        .execute(w.conn())
        .await?;
        self.commit(w).await
    }

    async fn job_calls(&self, job_id: Uuid) -> StoreResult<JobLedger> {
        ledger_of(&self.pool, job_id).await
    }

    async fn tenant_usage(
        &self,
        tenant: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<Vec<EditorUsage>> {
        let sums: Vec<LedgerSum> = sqlx::query_as(
            "SELECT editor, kind, COUNT(*) AS calls, SUM(seconds) AS seconds, \
                 SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens, \
                 SUM(cost) AS cost, MAX(currency) AS currency \
             FROM job_calls WHERE tenant = ?1 AND created_at >= ?2 AND created_at < ?3 \
             GROUP BY editor, kind",
        )
        .bind(tenant)
        .bind(since.timestamp_micros())
        .bind(until.timestamp_micros())
        .fetch_all(&self.pool)
        .await?;
        Ok(usage_by_editor(sums))
    }

    async fn queue_stats(&self) -> StoreResult<QueueStats> {
        let now = now_us();
        let row = sqlx::query(
            "SELECT coalesce(sum(status = 'queued'), 0) AS queued, \
                    coalesce(sum(status = 'running'), 0) AS running, \
                    min(CASE WHEN status = 'queued' AND run_at <= ?1 THEN run_at END) AS oldest \
             FROM jobs WHERE status IN ('queued', 'running')",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        Ok(QueueStats {
            queued: to_u64(row.try_get("queued")?, "queued jobs")?,
            running: to_u64(row.try_get("running")?, "running jobs")?,
            oldest_due_age: oldest.map_or(Duration::ZERO, |t| {
                Duration::from_micros(u64::try_from(now - t).unwrap_or(0))
            }),
        })
    }

    async fn events_after(&self, job_id: Uuid, after: i64) -> StoreResult<Vec<EventRow>> {
        sqlx::query("SELECT * FROM job_events WHERE job_id = ?1 AND id > ?2 ORDER BY id")
            .bind(job_id.to_string())
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
        let ids = Value::from(jobs.iter().map(Uuid::to_string).collect::<Vec<_>>());
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT job_id, max(id) FROM job_events \
             WHERE job_id IN (SELECT value FROM json_each(?1)) GROUP BY job_id",
        )
        .bind(ids.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, max)| Ok((Uuid::parse_str(&id).map_err(corrupt)?, max)))
            .collect()
    }

    async fn insert_api_key(&self, key: NewApiKey) -> StoreResult<ApiKeyRow> {
        let mut w = self.write().await?;
        let now = w.now;
        sqlx::query(
            "INSERT INTO tenants (name, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )
        .bind(&key.tenant)
        .bind(now)
        .execute(w.conn())
        .await?;
        let row = sqlx::query(
            "INSERT INTO api_keys (id, tenant, label, key_hash, prefix, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING *",
        )
        .bind(key.id.to_string())
        .bind(&key.tenant)
        .bind(&key.label)
        .bind(&key.key_hash)
        .bind(&key.prefix)
        .bind(now)
        .fetch_one(w.conn())
        .await?;
        let key = api_key_from_row(&row)?;
        self.commit(w).await?;
        Ok(key)
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
        let mut w = self.write().await?;
        let now = w.now;
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
                .bind(id.to_string())
                .bind(now)
                .execute(w.conn())
                .await?;
        self.commit(w).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRow>> {
        sqlx::query("SELECT * FROM api_keys WHERE key_hash = ?1 AND revoked_at IS NULL")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(api_key_from_row)
            .transpose()
    }

    async fn set_tenant_webhook_secret(&self, tenant: &str, secret: &str) -> StoreResult<()> {
        let mut w = self.write().await?;
        let now = w.now;
        sqlx::query(
            "INSERT INTO tenants (name, webhook_secret, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET webhook_secret = excluded.webhook_secret",
        )
        .bind(tenant)
        .bind(secret)
        .bind(now)
        .execute(w.conn())
        .await?;
        self.commit(w).await
    }

    async fn tenant_webhook_secret(&self, tenant: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT webhook_secret FROM tenants WHERE name = ?1")
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
        // One process: the in-process broadcast is every subscriber. The
        // size limit is Postgres's, kept here so both backends agree.
        let size = payload::live_payload(job_id, kind, &data).len();
        if size > payload::MAX_LIVE_PAYLOAD {
            return Err(StoreError::LiveTooLarge(size));
        }
        let _ = self.notices.send(Notice::Live {
            job_id,
            kind: kind.to_owned(),
            data,
        });
        Ok(())
    }
}
