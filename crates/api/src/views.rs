//! Response bodies (docs/api.md) and their conversion from stored rows.

use chrono::{DateTime, Utc};
use editthinker_core::{CritiqueRecord, ErrorCode, JobOptions, Usage, VerifierScore};
use editthinker_store::{CandidateRow, JobRow, JobStatus, JobWithTurns, TurnRow};
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
    /// The candidate this turn is (`candidates[].index`): its `image_url`,
    /// `editor_ms` and `critique` are that candidate's. 0 in a
    /// one-candidate turn.
    pub chosen: u32,
    /// The turn's edited candidates (`options.candidates`), by index: one,
    /// the turn itself, in a one-candidate turn.
    pub candidates: Vec<Candidate>,
}

/// One of a turn's candidates: an edit of the source with the turn's
/// instruction (and, in a turn of several, its own seed).
#[derive(Debug, Serialize, ToSchema)]
pub struct Candidate {
    /// Its number within the turn, from 0.
    pub index: u32,
    /// The seed it asked the editor for; `null` in a one-candidate turn.
    pub seed: Option<i64>,
    /// Where to fetch its image.
    pub image_url: String,
    /// Editor wall time in milliseconds.
    pub editor_ms: u64,
    /// The thinker's critique, once made (the same shape as a turn's).
    pub critique: Option<CritiqueView>,
    /// The verifier's score, when a `[verifier]` judged it.
    pub verifier: Option<VerifierScore>,
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
#[derive(Debug, Clone, Serialize, ToSchema)]
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

/// Path of candidate `candidate` of a turn's image.
pub fn candidate_image_url(job: Uuid, turn: u32, candidate: u32) -> String {
    format!("/v1/jobs/{job}/turns/{turn}/candidates/{candidate}/image")
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
    /// The view of a stored turn; `candidates` are the job's candidate
    /// rows (those of this turn are read when it chose one of several).
    pub fn from_row(row: &TurnRow, candidates: &[CandidateRow], usage: Usage) -> Self {
        let (critique, verifier) = critique_of(row.critique.as_ref(), row.thinker_ms);
        let (chosen, candidates) = match row.chosen {
            // One candidate: the turn itself.
            None => (
                0,
                vec![Candidate {
                    index: 0,
                    seed: None,
                    image_url: candidate_image_url(row.job_id, row.index, 0),
                    editor_ms: row.editor_ms,
                    critique: critique.clone(),
                    verifier,
                }],
            ),
            Some(chosen) => (chosen, Candidate::of_turn(candidates, row.index)),
        };
        Self {
            index: row.index,
            instruction: row.instruction.clone(),
            image_url: turn_image_url(row.job_id, row.index),
            editor_ms: row.editor_ms,
            provider_request_id: row.provider_request_id.clone(),
            critique,
            usage,
            chosen,
            candidates,
        }
    }
}

impl Candidate {
    /// The edited candidates of turn `turn` among a job's candidate rows,
    /// by index (a pending one, with no image yet, is left out).
    pub fn of_turn(rows: &[CandidateRow], turn: u32) -> Vec<Self> {
        let mut candidates: Vec<Self> = rows
            .iter()
            .filter(|c| c.turn == turn && c.image_key.is_some())
            .map(|c| {
                let (critique, verifier) = critique_of(c.critique.as_ref(), c.thinker_ms);
                Self {
                    index: c.index,
                    seed: c.seed,
                    image_url: candidate_image_url(c.job_id, c.turn, c.index),
                    editor_ms: c.editor_ms.unwrap_or(0),
                    critique,
                    verifier,
                }
            })
            .collect();
        candidates.sort_by_key(|c| c.index);
        candidates
    }
}

/// The view of a stored critique JSON (a serialized `CritiqueRecord`),
/// and the verifier's score it carries (its `verifier` key). An unreadable
/// record is a critique whose `error` says so; `thinker_ms` is the
/// stored column's, for that case.
fn critique_of(
    json: Option<&serde_json::Value>,
    thinker_ms: Option<u64>,
) -> (Option<CritiqueView>, Option<VerifierScore>) {
    let Some(json) = json else {
        return (None, None);
    };
    let verifier = json
        .get("verifier")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let view = match serde_json::from_value::<CritiqueRecord>(json.clone()) {
        Ok(record) => CritiqueView::from_record(&record),
        Err(e) => CritiqueView {
            semantic: None,
            quality: None,
            overall: None,
            reasoning: None,
            refined_instruction: None,
            satisfied: false,
            thinker_ms: thinker_ms.unwrap_or(0),
            error: Some(format!("stored critique unreadable: {e}")),
        },
    };
    (Some(view), verifier)
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
    /// The view of a stored job: its row, turns (with their candidates)
    /// and usage ledger.
    pub fn from_read(read: &JobWithTurns) -> Self {
        let (row, ledger) = (&read.job, &read.ledger);
        let (usage, mut per_turn) = ledger.summarize();
        let turns = read
            .turns
            .iter()
            .map(|t| {
                let usage = per_turn
                    .remove(&t.index)
                    .unwrap_or_else(|| Usage::zero(&ledger.currency));
                Turn::from_row(t, &read.candidates, usage)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A critique JSON as the worker stores it, with a verifier's score
    /// when `verifier` is given.
    fn critique(semantic: f64, quality: f64, verifier: Option<f64>) -> serde_json::Value {
        let record = CritiqueRecord {
            critique: Some(editthinker_core::Critique {
                semantic: Some(semantic),
                quality: Some(quality),
                reasoning: "fine".into(),
                refined_instruction: "finer".into(),
                is_satisfied: None,
            }),
            satisfied: false,
            thinker_ms: 30,
            raw_output: String::new(),
            error: None,
            attempts: 1,
            verifier: verifier.map(VerifierScore::single),
        };
        serde_json::to_value(record).unwrap()
    }

    fn turn_row(job_id: Uuid, chosen: Option<u32>, critique: serde_json::Value) -> TurnRow {
        TurnRow {
            job_id,
            index: 2,
            instruction: "paint it red".into(),
            image_key: "k".into(),
            image_mime: "image/png".into(),
            editor_ms: 700,
            critique: Some(critique),
            thinker_ms: Some(30),
            raw_output: None,
            parse_error: None,
            provider_request_id: None,
            chosen,
            created_at: Utc::now(),
        }
    }

    fn candidate_row(job_id: Uuid, turn: u32, index: u32, edited: bool) -> CandidateRow {
        CandidateRow {
            job_id,
            turn,
            index,
            instruction: "paint it red".into(),
            seed: Some(100 + i64::from(index)),
            pending_request: (!edited).then(|| json!({"id": "r", "data": null})),
            provider_request_id: None,
            image_key: edited.then(|| format!("c{index}")),
            image_mime: edited.then(|| "image/png".into()),
            editor_ms: edited.then_some(500 + u64::from(index)),
            critique: edited.then(|| critique(f64::from(index), 9.0, Some(f64::from(index)))),
            thinker_ms: edited.then_some(20),
            raw_output: None,
            parse_error: None,
            created_at: Utc::now(),
        }
    }

    fn json_of(turn: &Turn) -> serde_json::Value {
        serde_json::to_value(turn).unwrap()
    }

    #[test]
    fn a_one_candidate_turn_is_its_own_candidate_0() {
        let job = Uuid::now_v7();
        let row = turn_row(job, None, critique(6.0, 8.0, Some(7.5)));
        let turn = json_of(&Turn::from_row(&row, &[], Usage::zero("USD")));
        assert_eq!(turn["chosen"], 0, "{turn}");
        assert_eq!(turn["image_url"], format!("/v1/jobs/{job}/turns/2/image"));
        let candidates = turn["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 1, "{turn}");
        let only = &candidates[0];
        assert_eq!(only["index"], 0);
        assert_eq!(only["seed"], serde_json::Value::Null);
        assert_eq!(
            only["image_url"],
            format!("/v1/jobs/{job}/turns/2/candidates/0/image")
        );
        assert_eq!(only["editor_ms"], turn["editor_ms"]);
        assert_eq!(only["critique"], turn["critique"]);
        assert_eq!(only["verifier"], json!({"overall": 7.5}));
        // The stored `verifier` key leaves the turn's critique as it was.
        assert_eq!(turn["critique"]["semantic"], 6.0);
        assert!(turn["critique"].get("verifier").is_none(), "{turn}");
        // Without a verifier, `null`.
        let row = turn_row(job, None, critique(6.0, 8.0, None));
        let turn = json_of(&Turn::from_row(&row, &[], Usage::zero("USD")));
        assert_eq!(turn["candidates"][0]["verifier"], serde_json::Value::Null);
    }

    #[test]
    fn a_turn_of_several_lists_its_edited_candidates() {
        let job = Uuid::now_v7();
        let rows = [
            candidate_row(job, 2, 2, true),
            candidate_row(job, 2, 0, true),
            candidate_row(job, 2, 1, false),
            candidate_row(job, 1, 0, true),
            candidate_row(job, 3, 0, true),
        ];
        let chosen = &rows[0];
        let row = TurnRow {
            editor_ms: chosen.editor_ms.unwrap(),
            image_key: chosen.image_key.clone().unwrap(),
            ..turn_row(job, Some(2), chosen.critique.clone().unwrap())
        };
        let turn = json_of(&Turn::from_row(&row, &rows, Usage::zero("USD")));
        assert_eq!(turn["chosen"], 2, "{turn}");
        let candidates = turn["candidates"].as_array().unwrap();
        // The turn's edited candidates, by index: not the pending one, nor
        // other turns'.
        let indexes: Vec<_> = candidates.iter().map(|c| c["index"].clone()).collect();
        assert_eq!(indexes, [json!(0), json!(2)], "{turn}");
        let two = &candidates[1];
        assert_eq!(two["seed"], 102);
        assert_eq!(
            two["image_url"],
            format!("/v1/jobs/{job}/turns/2/candidates/2/image")
        );
        assert_eq!(two["editor_ms"], 502);
        assert_eq!(two["verifier"], json!({"overall": 2.0}));
        assert_eq!(two["critique"]["semantic"], 2.0);
        // The turn is its chosen candidate.
        assert_eq!(two["critique"], turn["critique"]);
        assert_eq!(two["editor_ms"], turn["editor_ms"]);
        assert_eq!(candidates[0]["critique"]["semantic"], 0.0);
    }

    #[test]
    fn an_unreadable_stored_critique_is_a_critique_with_an_error() {
        let row = turn_row(Uuid::now_v7(), None, json!({"verifier": {"overall": 3}}));
        let turn = json_of(&Turn::from_row(&row, &[], Usage::zero("USD")));
        let error = turn["critique"]["error"].as_str().unwrap();
        assert!(error.starts_with("stored critique unreadable"), "{turn}");
        assert_eq!(turn["critique"]["thinker_ms"], 30);
        assert_eq!(turn["candidates"][0]["verifier"]["overall"], 3.0);
    }
}
