//! Row types shared by both backends.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use editthinker_core::StopReason;

/// How [`Store::claim`](crate::Store::claim) orders queued jobs of equal
/// priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fairness {
    /// Round-robin between tenants: a job's turn is its tenant's running
    /// jobs of its priority plus its rank among its tenant's queued jobs
    /// (oldest first), and claims take lower turns first. A tenant with
    /// many jobs in flight or queued waits while one with fewer is served:
    /// a new job of an idle tenant waits behind at most one job per other
    /// tenant with jobs queued at its priority, however deep their queues.
    #[default]
    Tenant,
    /// Oldest due first, whoever queued it (a deep queue of one tenant
    /// delays every other tenant's jobs behind it).
    None,
}

/// A job's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting to be claimed (maybe not yet due).
    Queued,
    /// Claimed by a worker holding a lease.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished without one.
    Failed,
    /// Canceled by the client.
    Canceled,
}

impl JobStatus {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// Succeeded, failed or canceled.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tenant of every job when authentication is off (`[auth] mode =
/// "none"`), and of jobs stored before tenants existed.
pub const DEFAULT_TENANT: &str = "default";

/// An API key as stored: never the key itself, only its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    /// Id (UUIDv7), what `keys revoke` takes.
    pub id: Uuid,
    /// The tenant the key acts for.
    pub tenant: String,
    /// A free-form note ("ci", "web app").
    pub label: Option<String>,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Revoked at; a revoked key authenticates nothing.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key to store.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// The tenant the key acts for.
    pub tenant: String,
    /// A free-form note.
    pub label: Option<String>,
    /// Hex SHA-256 of the whole key.
    pub key_hash: String,
    /// The key's first characters.
    pub prefix: String,
}

/// Event types (contract, docs/api.md "Events (SSE)").
pub mod event_type {
    /// Job inserted.
    pub const JOB_QUEUED: &str = "job.queued";
    /// Job claimed by a worker.
    pub const JOB_STARTED: &str = "job.started";
    /// A turn's image exists.
    pub const TURN_EDITED: &str = "turn.edited";
    /// A turn's critique exists.
    pub const TURN_CRITIQUED: &str = "turn.critiqued";
    /// A turn of several candidates chose one: `{"turn", "candidate",
    /// "score", "by"}`.
    pub const TURN_CHOSEN: &str = "turn.chosen";
    /// Job went back to the queue: `{"attempt", "reason", "code", "run_at"}`.
    pub const JOB_RETRYING: &str = "job.retrying";
    /// Job finished with a result.
    pub const JOB_SUCCEEDED: &str = "job.succeeded";
    /// Job failed for good.
    pub const JOB_FAILED: &str = "job.failed";
    /// Job canceled.
    pub const JOB_CANCELED: &str = "job.canceled";
    /// Live reasoning text while a thinker generates (not stored, no id).
    pub const TURN_THINKING: &str = "turn.thinking";
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// UUIDv7 chosen by the caller.
    pub id: Uuid,
    /// The tenant that owns the job.
    pub tenant: String,
    /// Refuse the insert ([`crate::StoreError::ActiveJobsLimit`]) when the
    /// tenant already has this many jobs queued or running; `None`: no limit.
    pub active_limit: Option<u32>,
    /// The user's instruction.
    pub instruction: String,
    /// Configured editor name.
    pub editor: String,
    /// `JobOptions` as JSON.
    pub options: serde_json::Value,
    /// Client metadata, stored as given.
    pub metadata: serde_json::Value,
    /// Blob key of the source image.
    pub source_key: String,
    /// MIME type of the source image.
    pub source_mime: String,
    /// Attempts before the job fails for good.
    pub max_attempts: u32,
    /// Higher is claimed first.
    pub priority: i32,
    /// `{"url", "events": [...]}` when the job's events are delivered to a
    /// webhook.
    pub webhook: Option<serde_json::Value>,
    /// Seconds after creation by which the job must be done.
    pub deadline_seconds: Option<u32>,
    /// W3C `traceparent` of the trace the job belongs to.
    pub traceparent: Option<String>,
    /// The job runs on a sandbox (test-mode) editor or thinker.
    pub sandbox: bool,
}

/// A job as a client reads it ([`crate::Store::job_with_turns`]): the
/// row, its turns in order and, when asked for and the job is queued, how
/// many queued jobs claims take before it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobWithTurns {
    /// The job.
    pub job: JobRow,
    /// Its turns, in order.
    pub turns: Vec<TurnRow>,
    /// [`crate::Store::jobs_ahead`], read in the same query.
    pub jobs_ahead: Option<u64>,
    /// Its usage ledger (empty, unread, for a job never claimed: only a
    /// worker makes paid calls).
    pub ledger: JobLedger,
    /// The candidates of its turns of several (empty, unread, when no
    /// recorded turn has any).
    pub candidates: Vec<CandidateRow>,
}

/// The queue at one moment ([`crate::Store::queue_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QueueStats {
    /// Jobs queued (due or not).
    pub queued: u64,
    /// Jobs running.
    pub running: u64,
    /// How long the oldest queued job that is due has waited since it
    /// became due; zero when none is.
    pub oldest_due_age: std::time::Duration,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// The tenant that owns the job.
    pub tenant: String,
    /// Status.
    pub status: JobStatus,
    /// The user's instruction.
    pub instruction: String,
    /// Editor name.
    pub editor: String,
    /// Options JSON.
    pub options: serde_json::Value,
    /// Client metadata.
    pub metadata: serde_json::Value,
    /// Source blob key.
    pub source_key: String,
    /// Source MIME type.
    pub source_mime: String,
    /// Claims so far.
    pub attempt: u32,
    /// Claim limit.
    pub max_attempts: u32,
    /// Priority.
    pub priority: i32,
    /// Not claimable before this time.
    pub run_at: DateTime<Utc>,
    /// Current lease owner, while running.
    pub lease_owner: Option<String>,
    /// Current lease expiry, while running.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// A cancel was requested while running.
    pub cancel_requested: bool,
    /// Selected turn, once succeeded.
    pub result_turn: Option<u32>,
    /// Stable error code (failed jobs; also the last transient error of a requeued job).
    pub error_code: Option<String>,
    /// Error message.
    pub error_message: Option<String>,
    /// Inserted at.
    pub created_at: DateTime<Utc>,
    /// First claimed at.
    pub started_at: Option<DateTime<Utc>>,
    /// Reached a terminal status at.
    pub finished_at: Option<DateTime<Utc>>,
    /// The asynchronous edit in flight (a serialized [`PendingEditRecord`]),
    /// recorded before the worker waits for it.
    pub pending_edit: Option<serde_json::Value>,
    /// Why the loop ended early: the editor refused a refined instruction
    /// (a serialized [`RefusalRecord`]).
    pub refusal: Option<serde_json::Value>,
    /// `{"url", "events": [...]}` of the job's webhook, if it has one.
    pub webhook: Option<serde_json::Value>,
    /// Why the job stopped, once it has finished ([`stop_reason`]).
    pub stop_reason: Option<StopReason>,
    /// When the job must be done by (creation + `deadline_seconds`).
    pub deadline_at: Option<DateTime<Utc>>,
    /// W3C `traceparent` of the trace the job belongs to (the worker
    /// continues it).
    pub traceparent: Option<String>,
    /// The job runs on a sandbox (test-mode) editor or thinker: its images
    /// and critiques are made up (fixed at creation).
    pub sandbox: bool,
}

/// Error code of a job that failed because its deadline passed.
pub const DEADLINE_EXCEEDED: &str = editthinker_core::ErrorCode::DeadlineExceeded.as_str();

/// The error of a job whose deadline passed before any turn was recorded.
pub fn deadline_failure() -> (&'static str, &'static str) {
    (
        DEADLINE_EXCEEDED,
        "the job's deadline (options.deadline_seconds) passed before any turn was recorded",
    )
}

/// Why a job stopped, the one rule for both backends: a succeeded job's
/// reason is stored with its completion; a failed or canceled job's
/// follows from its status (and a deadline failure from its code).
pub fn stop_reason(
    status: JobStatus,
    stored: Option<&str>,
    error_code: Option<&str>,
) -> Option<StopReason> {
    match status {
        JobStatus::Succeeded => stored.and_then(StopReason::parse),
        JobStatus::Failed if error_code == Some(DEADLINE_EXCEEDED) => Some(StopReason::Deadline),
        JobStatus::Failed => Some(StopReason::Failed),
        JobStatus::Canceled => Some(StopReason::Canceled),
        JobStatus::Queued | JobStatus::Running => None,
    }
}

/// An edit submitted to an asynchronous provider and not yet recorded as a
/// turn (`jobs.pending_edit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEditRecord {
    /// The turn it is for.
    pub turn: u32,
    /// The candidate it is for, in a turn of several (kept in
    /// `turn_candidates`); `None` in a one-candidate turn (`jobs.pending_edit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<u32>,
    /// The instruction it was submitted with.
    pub instruction: String,
    /// The provider's handle: `{"id", "data"}`.
    pub request: serde_json::Value,
}

/// The editor refused a refined instruction (`jobs.refusal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalRecord {
    /// The refused turn (never recorded).
    pub turn: u32,
    /// The refused instruction.
    pub instruction: String,
    /// The provider's reason.
    pub reason: String,
    /// `"refused"` (moderation, safety) or `"invalid"` (rejected as an
    /// invalid request); rows from before the field read as `"refused"`.
    #[serde(default = "refused")]
    pub kind: String,
}

fn refused() -> String {
    "refused".into()
}

/// A worker's hold on a claimed job; every write is fenced on all three fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub job_id: Uuid,
    /// The attempt number this claim made.
    pub attempt: u32,
    /// The worker's owner id.
    pub owner: String,
}

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job as claimed (status running).
    pub job: JobRow,
    /// The lease to present on every write.
    pub lease: Lease,
}

/// A turn to record.
#[derive(Debug, Clone)]
pub struct NewTurn {
    /// Turn number, from 1.
    pub index: u32,
    /// Instruction sent to the editor.
    pub instruction: String,
    /// Blob key of the turn's image.
    pub image_key: String,
    /// Its MIME type.
    pub image_mime: String,
    /// Editor wall time.
    pub editor_ms: u64,
    /// The asynchronous provider's id for this edit, if any.
    pub provider_request_id: Option<String>,
}

/// A stored turn.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRow {
    /// The job.
    pub job_id: Uuid,
    /// Turn number, from 1.
    pub index: u32,
    /// Instruction sent to the editor.
    pub instruction: String,
    /// Blob key of the image.
    pub image_key: String,
    /// Its MIME type.
    pub image_mime: String,
    /// Editor wall time.
    pub editor_ms: u64,
    /// The critique JSON (a serialized `CritiqueRecord`), once made.
    pub critique: Option<serde_json::Value>,
    /// Thinker wall time.
    pub thinker_ms: Option<u64>,
    /// Raw thinker output.
    pub raw_output: Option<String>,
    /// Why the thinker output did not parse.
    pub parse_error: Option<String>,
    /// The asynchronous provider's id for this edit, if any.
    pub provider_request_id: Option<String>,
    /// The candidate this turn is, in a turn of several; `None` otherwise.
    pub chosen: Option<u32>,
    /// Recorded at.
    pub created_at: DateTime<Utc>,
}

/// A candidate of a turn with several, to record once edited.
#[derive(Debug, Clone)]
pub struct NewCandidate {
    /// Its turn, from 1.
    pub turn: u32,
    /// Its number within the turn, from 0.
    pub index: u32,
    /// Instruction sent to the editor.
    pub instruction: String,
    /// The seed it asked for.
    pub seed: Option<i64>,
    /// Blob key of its image.
    pub image_key: String,
    /// Its MIME type.
    pub image_mime: String,
    /// Editor wall time.
    pub editor_ms: u64,
    /// The asynchronous provider's id for this edit, if any.
    pub provider_request_id: Option<String>,
}

/// A stored candidate: pending (a provider request, no image), edited, or
/// critiqued.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateRow {
    /// The job.
    pub job_id: Uuid,
    /// Its turn, from 1.
    pub turn: u32,
    /// Its number within the turn, from 0.
    pub index: u32,
    /// Instruction sent to the editor.
    pub instruction: String,
    /// The seed it asked for.
    pub seed: Option<i64>,
    /// The provider request in flight (`{"id", "data"}`) while it has no image.
    pub pending_request: Option<serde_json::Value>,
    /// The asynchronous provider's id for this edit, if any.
    pub provider_request_id: Option<String>,
    /// Blob key of its image, once edited.
    pub image_key: Option<String>,
    /// Its MIME type.
    pub image_mime: Option<String>,
    /// Editor wall time, once edited.
    pub editor_ms: Option<u64>,
    /// The critique JSON (a serialized `CritiqueRecord`), once made.
    pub critique: Option<serde_json::Value>,
    /// Thinker wall time.
    pub thinker_ms: Option<u64>,
    /// Raw thinker output.
    pub raw_output: Option<String>,
    /// Why the thinker output did not parse.
    pub parse_error: Option<String>,
    /// Recorded at.
    pub created_at: DateTime<Utc>,
}

/// Which candidate a turn of several chose, and by what score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChosenRecord {
    /// The turn.
    pub turn: u32,
    /// The chosen candidate.
    pub candidate: u32,
    /// Its ranking score, when it had one.
    pub score: Option<f64>,
    /// Which score ranked them.
    pub by: editthinker_core::RankBy,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// Global, increasing id.
    pub id: i64,
    /// The job.
    pub job_id: Uuid,
    /// Type, one of [`event_type`].
    pub kind: String,
    /// Payload.
    pub data: serde_json::Value,
    /// Written at.
    pub created_at: DateTime<Utc>,
}

/// A live notice from [`crate::Store::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A new event row exists.
    Event {
        /// The job.
        job_id: Uuid,
        /// The event row id.
        event_id: i64,
        /// Its type.
        kind: String,
    },
    /// Notices may have been missed: re-read from the table.
    Resync,
    /// A live, unstored event (e.g. `turn.thinking`), delivered at most once.
    Live {
        /// The job.
        job_id: Uuid,
        /// Its type.
        kind: String,
        /// Payload.
        data: serde_json::Value,
    },
}

/// What creating a job under an `Idempotency-Key` did.
#[derive(Debug, Clone)]
pub enum IdempotentInsert {
    /// The key was new (or older than the replay window): the job was made.
    Created(JobRow),
    /// The key made this job already, for the same request.
    Replayed {
        /// The job, as it is now.
        job: JobRow,
        /// The status the first request was answered with (202, or 200
        /// when `Prefer: wait` saw the job finish), which replays repeat.
        status: u16,
    },
    /// The key made a job already, for a different request.
    KeyReused,
}

/// What a create would meet ([`crate::Store::check_create`]).
#[derive(Debug, Clone)]
pub enum CreateCheck {
    /// Go ahead: nothing refuses or replays it.
    Proceed {
        /// The tenant's jobs queued or running, when the limit was checked.
        active_jobs: Option<u64>,
    },
    /// Its idempotency key replays an earlier job or was used for another
    /// request: answer that instead.
    Answered(Box<IdempotentInsert>),
}

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Where a webhook delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet; attempts continue.
    Pending,
    /// A 2xx answer ended it.
    Delivered,
    /// The retry schedule ran out.
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One webhook delivery (a row of the outbox).
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    /// The `webhook-id`, stable across retries.
    pub id: Uuid,
    /// The job.
    pub job_id: Uuid,
    /// The stored event it announces.
    pub event_id: i64,
    /// The event's type.
    pub kind: String,
    /// Where it goes.
    pub url: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// The HTTP status of the last attempt, if it got one.
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When a 2xx ended it.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A delivery claimed for one attempt, with the event it announces.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The delivery.
    pub delivery: DeliveryRow,
    /// The event, as stored.
    pub event: EventRow,
    /// The job's tenant's own webhook secret, when it has one (otherwise
    /// the server's secret signs).
    pub tenant_secret: Option<String>,
}

/// The outcome of one delivery attempt, as recorded.
#[derive(Debug, Clone)]
pub struct DeliveryAttempt {
    /// A 2xx answer: the delivery is done.
    pub delivered: bool,
    /// The HTTP status, if an answer came.
    pub status_code: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
    /// When to try again; `None` after a failure means the schedule ran
    /// out and the delivery is failed.
    pub retry_at: Option<DateTime<Utc>>,
}

impl DeliveryAttempt {
    /// Where the delivery stands after this attempt: a 2xx ends it, a
    /// failure with a retry time keeps it pending, and one without fails it.
    pub fn status(&self) -> DeliveryStatus {
        match (self.delivered, self.retry_at) {
            (true, _) => DeliveryStatus::Delivered,
            (false, Some(_)) => DeliveryStatus::Pending,
            (false, None) => DeliveryStatus::Failed,
        }
    }
}

/// One paid provider call for the usage ledger ([`crate::Store::record_call`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewCall {
    /// The call and its cost.
    pub entry: editthinker_core::LedgerEntry,
    /// The currency of the cost.
    pub currency: String,
}

/// A tenant's usage of one editor over a period ([`crate::Store::tenant_usage`]).
#[derive(Debug, Clone, PartialEq)]
pub struct EditorUsage {
    /// The jobs' editor.
    pub editor: String,
    /// The sums of its jobs' calls (thinker and verifier calls included).
    pub usage: editthinker_core::Usage,
}

/// One group of ledger rows as the drivers sum them: an editor's calls of
/// one kind.
#[derive(sqlx::FromRow)]
pub(crate) struct LedgerSum {
    pub(crate) editor: String,
    pub(crate) kind: String,
    pub(crate) calls: i64,
    pub(crate) seconds: f64,
    pub(crate) input_tokens: i64,
    pub(crate) output_tokens: i64,
    pub(crate) cost: f64,
    pub(crate) currency: String,
}

/// Folds the drivers' sums into usage per editor, sorted by editor.
pub(crate) fn usage_by_editor(sums: Vec<LedgerSum>) -> Vec<EditorUsage> {
    use editthinker_core::{CallKind, Tokens, Usage};
    let mut by_editor: std::collections::BTreeMap<String, Usage> = Default::default();
    for sum in sums {
        let usage = by_editor
            .entry(sum.editor)
            .or_insert_with(|| Usage::zero(&sum.currency));
        let Some(kind) = CallKind::parse(&sum.kind) else {
            continue;
        };
        let tokens = Tokens {
            input: u64::try_from(sum.input_tokens).unwrap_or(0),
            output: u64::try_from(sum.output_tokens).unwrap_or(0),
        };
        let calls = u32::try_from(sum.calls).unwrap_or(u32::MAX);
        usage.add_calls(kind, calls, sum.seconds, tokens, sum.cost);
    }
    by_editor
        .into_iter()
        .map(|(editor, usage)| EditorUsage {
            editor,
            usage: usage.rounded(),
        })
        .collect()
}

/// The currency a job's usage is shown in when its ledger is empty.
pub const DEFAULT_CURRENCY: &str = "USD";

/// Whether `kind` ends a job (its data carries the job's `usage`).
pub fn is_terminal_event(kind: &str) -> bool {
    [
        event_type::JOB_SUCCEEDED,
        event_type::JOB_FAILED,
        event_type::JOB_CANCELED,
    ]
    .contains(&kind)
}

/// A job's usage ledger ([`crate::Store::job_calls`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JobLedger {
    /// Its calls, in the order they were recorded.
    pub entries: Vec<editthinker_core::LedgerEntry>,
    /// Their currency; without calls, that of the latest call recorded for
    /// any job, else [`DEFAULT_CURRENCY`].
    pub currency: String,
}

impl Default for JobLedger {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            currency: DEFAULT_CURRENCY.to_string(),
        }
    }
}

impl JobLedger {
    /// The job's usage in total and per turn.
    pub fn summarize(
        &self,
    ) -> (
        editthinker_core::Usage,
        std::collections::BTreeMap<u32, editthinker_core::Usage>,
    ) {
        editthinker_core::usage::summarize(&self.entries, &self.currency)
    }
}

/// One row of a job's ledger as both drivers read it (`LEDGER_SQL` in
/// each); a row of an unknown kind is no call: the drivers send one
/// (`none`) for a job without calls, to carry the currency of the latest
/// call recorded for any job.
#[derive(sqlx::FromRow)]
pub(crate) struct LedgerRow {
    kind: String,
    turn: i64,
    seconds: f64,
    input_tokens: i64,
    output_tokens: i64,
    cost: f64,
    currency: String,
}

/// Builds a [`JobLedger`] from the drivers' rows, in call order.
pub(crate) fn ledger_from(rows: Vec<LedgerRow>) -> JobLedger {
    use editthinker_core::{CallKind, LedgerEntry, ProviderCall, Tokens};
    let currency = rows
        .first()
        .map_or_else(|| DEFAULT_CURRENCY.to_string(), |r| r.currency.clone());
    let entries = rows
        .into_iter()
        .filter_map(|r| {
            Some(LedgerEntry {
                call: ProviderCall {
                    kind: CallKind::parse(&r.kind)?,
                    turn: u32::try_from(r.turn).ok()?,
                    seconds: r.seconds,
                    tokens: Tokens {
                        input: u64::try_from(r.input_tokens).unwrap_or(0),
                        output: u64::try_from(r.output_tokens).unwrap_or(0),
                    },
                },
                cost: r.cost,
            })
        })
        .collect();
    JobLedger { entries, currency }
}
