//! Response bodies (docs/api.md) and their conversion from stored rows.

use chrono::{DateTime, Utc};
use editthinker_core::{CritiqueRecord, ErrorCode, JobOptions, Usage};
use editthinker_store::{JobLedger, JobRow, JobStatus, TurnRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A job with its turns.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    /// Job id (UUIDv7).
    pub id: Uuid,
    /// `queued`, `running`, `succeeded`, `failed` or `canceled`.
    pub status: JobStatus,
    /// The user's instruction.
    #[schema(min_length = 1, max_length = 4000)]
    pub instruction: String,
    /// The editor's configured name.
    pub editor: String,
    /// `true` when the job runs on a sandbox (test-mode) editor or thinker:
    /// its images and critiques are made up and say nothing about edit
    /// quality (docs/api.md "Sandbox").
    pub sandbox: bool,
    /// Loop options in force.
    #[schema(value_type = JobOptions)]
    pub options: serde_json::Value,
    /// Turns so far, in order.
    pub turns: Vec<Turn>,
    /// What the job's provider calls used and cost so far, every attempt's
    /// included (a paid call stays paid when its attempt is lost).
    pub usage: Usage,
    /// The selected turn, once succeeded.
    pub result: Option<JobResult>,
    /// Why the job failed (or, while queued again, its last transient error).
    pub error: Option<JobErrorView>,
    /// Set when the editor refused a refined instruction (moderation,
    /// safety): the loop stopped there and the result was selected among
    /// the earlier turns.
    pub refusal: Option<RefusalView>,
    /// Claims so far.
    pub attempt: u32,
    /// Why the job stopped, once finished: `satisfied`, `max_turns`,
    /// `plateau`, `budget`, `refusal`, `invalid_refinement`, `deadline`,
    /// `canceled` or `failed`.
    pub stop_reason: Option<editthinker_core::StopReason>,
    /// Claim priority, −10 to 10: higher runs first.
    #[schema(minimum = -10, maximum = 10)]
    pub priority: i32,
    /// While queued: 1 when the job is claimed next (up to two seconds old);
    /// `null` otherwise, and in the answer to the create itself.
    pub queue_position: Option<u64>,
    /// When the job must be done by (`options.deadline_seconds` after
    /// creation), if it has a deadline.
    pub deadline_at: Option<DateTime<Utc>>,
    /// When the retention sweep deletes the finished job (`[retention]
    /// days` after it finished); `null` while it runs or when kept for ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// The job's webhook (`{"url", "events"}`), if it has one.
    #[schema(value_type = Option<crate::intake::WebhookInput>)]
    pub webhook: Option<serde_json::Value>,
    /// Client metadata, as given.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// When a worker first claimed it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal status.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One job in a listing (turns omitted).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobSummary {
    /// Job id.
    pub id: Uuid,
    /// Status.
    pub status: JobStatus,
    /// The user's instruction.
    pub instruction: String,
    /// Editor name.
    pub editor: String,
    /// `true` when the job runs on a sandbox (test-mode) editor or thinker.
    pub sandbox: bool,
    /// The selected turn, once succeeded.
    pub result: Option<JobResult>,
    /// Failure, if any.
    pub error: Option<JobErrorView>,
    /// Why the job stopped, once finished.
    pub stop_reason: Option<editthinker_core::StopReason>,
    /// Claims so far.
    pub attempt: u32,
    /// Client metadata.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// One turn.
#[derive(Debug, Serialize, ToSchema)]
pub struct Turn {
    /// Turn number, from 1.
    pub index: u32,
    /// The instruction the editor received.
    pub instruction: String,
    /// Where to fetch the image.
    pub image_url: String,
    /// Editor wall time in milliseconds.
    pub editor_ms: u64,
    /// The asynchronous provider's id for this edit (bfl, fal, replicate),
    /// for support requests to the provider.
    pub provider_request_id: Option<String>,
    /// The thinker's critique, once made.
    pub critique: Option<CritiqueView>,
    /// What this turn's provider calls used and cost (its edit, its
    /// critique with any retries).
    pub usage: Usage,
}

/// A refined instruction the editor refused, which ended the loop.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RefusalView {
    /// The turn that would have been made (it has no image).
    pub turn: u32,
    /// The refused instruction.
    pub instruction: String,
    /// The provider's reason.
    pub reason: String,
    /// `refused` (moderation or safety) or `invalid` (the editor rejected
    /// the refined instruction as an invalid request).
    #[serde(default = "refused")]
    #[schema(example = "refused")]
    pub kind: String,
}

fn refused() -> String {
    "refused".into()
}

/// The thinker's verdict on a turn.
#[derive(Debug, Serialize, ToSchema)]
pub struct CritiqueView {
    /// Instruction-following score 0–10 (null for expert thinkers or parse failures).
    pub semantic: Option<f64>,
    /// Visual quality score 0–10.
    pub quality: Option<f64>,
    /// `sqrt(semantic * quality)`.
    pub overall: Option<f64>,
    /// The thinker's reasoning.
    pub reasoning: Option<String>,
    /// The instruction it proposed next.
    pub refined_instruction: Option<String>,
    /// Whether this critique ended the loop.
    pub satisfied: bool,
    /// Thinker wall time in milliseconds.
    pub thinker_ms: u64,
    /// Why the answer could not be used, if it could not.
    pub error: Option<String>,
}

/// The selected result.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobResult {
    /// Selected turn number.
    pub turn: u32,
    /// Where to fetch the image.
    pub image_url: String,
}

/// A job's error.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobErrorView {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
}

/// A configured editor.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EditorView {
    /// Name clients pass as `editor`.
    pub name: String,
    /// Backend kind (`http`, `openai`, ...).
    pub kind: String,
    /// Provider model, when known.
    pub model: Option<String>,
    /// Used when a job names no editor.
    pub default: bool,
    /// A sandbox (test-mode) editor: its edits are made up, and its jobs
    /// are labelled `sandbox` (docs/api.md "Sandbox").
    pub sandbox: bool,
}

/// `GET /v1/editors`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EditorList {
    /// Configured editors.
    pub editors: Vec<EditorView>,
}

/// Path of a turn's image.
pub fn turn_image_url(job: Uuid, turn: u32) -> String {
    format!("/v1/jobs/{job}/turns/{turn}/image")
}

/// Path of a job's result image.
pub fn result_url(job: Uuid) -> String {
    format!("/v1/jobs/{job}/result")
}

fn result_of(row: &JobRow) -> Option<JobResult> {
    row.result_turn.map(|turn| JobResult {
        turn,
        image_url: result_url(row.id),
    })
}

fn error_of(row: &JobRow) -> Option<JobErrorView> {
    row.error_code.as_ref().map(|code| JobErrorView {
        // Only the worker and the store write codes, all from
        // `ErrorCode`; an unknown one (a row from a newer release) reads
        // as `internal` rather than breaking the job's JSON.
        code: ErrorCode::parse(code).unwrap_or(ErrorCode::Internal),
        message: row.error_message.clone().unwrap_or_default(),
    })
}

impl Turn {
    /// The view of a stored turn.
    pub fn from_row(row: &TurnRow, usage: Usage) -> Self {
        let critique = row.critique.as_ref().map(|json| {
            match serde_json::from_value::<CritiqueRecord>(json.clone()) {
                Ok(record) => CritiqueView::from_record(&record),
                Err(e) => CritiqueView {
                    semantic: None,
                    quality: None,
                    overall: None,
                    reasoning: None,
                    refined_instruction: None,
                    satisfied: false,
                    thinker_ms: row.thinker_ms.unwrap_or(0),
                    error: Some(format!("stored critique unreadable: {e}")),
                },
            }
        });
        Self {
            index: row.index,
            instruction: row.instruction.clone(),
            image_url: turn_image_url(row.job_id, row.index),
            editor_ms: row.editor_ms,
            provider_request_id: row.provider_request_id.clone(),
            critique,
            usage,
        }
    }
}

impl CritiqueView {
    /// The view of a critique record.
    pub fn from_record(record: &CritiqueRecord) -> Self {
        let parsed = record.critique.as_ref();
        Self {
            semantic: parsed.and_then(|c| c.semantic),
            quality: parsed.and_then(|c| c.quality),
            overall: record.overall(),
            reasoning: parsed.map(|c| c.reasoning.clone()),
            refined_instruction: parsed.map(|c| c.refined_instruction.clone()),
            satisfied: record.satisfied,
            thinker_ms: record.thinker_ms,
            error: record.error.clone(),
        }
    }
}

impl Job {
    /// The view of a stored job, its turns and its usage ledger.
    pub fn from_rows(row: &JobRow, turns: &[TurnRow], ledger: &JobLedger) -> Self {
        let (usage, mut per_turn) = ledger.summarize();
        let turns = turns
            .iter()
            .map(|t| {
                let usage = per_turn
                    .remove(&t.index)
                    .unwrap_or_else(|| Usage::zero(&ledger.currency));
                Turn::from_row(t, usage)
            })
            .collect();
        Self {
            id: row.id,
            status: row.status,
            instruction: row.instruction.clone(),
            editor: row.editor.clone(),
            sandbox: row.sandbox,
            options: row.options.clone(),
            turns,
            usage,
            result: result_of(row),
            error: error_of(row),
            refusal: row
                .refusal
                .clone()
                .and_then(|v| serde_json::from_value(v).ok()),
            attempt: row.attempt,
            stop_reason: row.stop_reason,
            priority: row.priority,
            queue_position: None,
            deadline_at: row.deadline_at,
            expires_at: None,
            webhook: row.webhook.clone(),
            metadata: row.metadata.clone(),
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }
}

impl JobSummary {
    /// The listing view of a stored job.
    pub fn from_row(row: &JobRow) -> Self {
        Self {
            id: row.id,
            status: row.status,
            instruction: row.instruction.clone(),
            editor: row.editor.clone(),
            sandbox: row.sandbox,
            result: result_of(row),
            error: error_of(row),
            stop_reason: row.stop_reason,
            attempt: row.attempt,
            metadata: row.metadata.clone(),
            created_at: row.created_at,
            finished_at: row.finished_at,
        }
    }
}

/// Options as clients send them; kept for the OpenAPI document.
pub type OptionsInput = JobOptions;

/// `GET /v1/jobs/{id}/webhooks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// The job's deliveries, in event order.
    pub deliveries: Vec<Delivery>,
}

/// One webhook delivery of a job's event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// The `webhook-id` header's value (the same on every retry).
    pub id: Uuid,
    /// The stored event it announces (its SSE `id:`).
    pub event_id: i64,
    /// The event type.
    #[serde(rename = "type")]
    #[schema(value_type = crate::contract::EventType)]
    pub kind: String,
    /// `pending`, `delivered` or `failed`.
    pub status: editthinker_store::DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The HTTP status the last attempt got, if any.
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When a 2xx answer ended it.
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Delivery {
    /// The API view of a stored delivery.
    pub fn from_row(row: &editthinker_store::DeliveryRow) -> Self {
        Self {
            id: row.id,
            event_id: row.event_id,
            kind: row.kind.clone(),
            status: row.status,
            attempts: row.attempts,
            last_status_code: row.last_status_code,
            last_error: row.last_error.clone(),
            next_attempt_at: row.next_attempt_at,
            delivered_at: row.delivered_at,
        }
    }
}
