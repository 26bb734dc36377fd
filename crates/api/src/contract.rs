//! Schemas that exist only for the OpenAPI document: the event types and
//! each event's `data` (docs/api.md "Events (SSE)"), as the SSE stream
//! (`events.rs`) and webhook deliveries send them. The payloads are built
//! as JSON in the store (`crates/store/src/payload.rs`) and completed by
//! `events::public_event_data`; these types describe that JSON, and a test
//! below checks the two agree.

use chrono::{DateTime, Utc};
use editthinker_core::{ErrorCode, RankBy, StopReason, Usage};
use editthinker_store::JobStatus;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::views::{CritiqueView, RefusalView};

/// A stored event's type (SSE `event:`, a webhook's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
pub enum EventType {
    /// The job was created or queued again.
    #[serde(rename = "job.queued")]
    #[schema(rename = "job.queued")]
    JobQueued,
    /// A worker claimed the job.
    #[serde(rename = "job.started")]
    #[schema(rename = "job.started")]
    JobStarted,
    /// The job went back to the queue.
    #[serde(rename = "job.retrying")]
    #[schema(rename = "job.retrying")]
    JobRetrying,
    /// A turn's image exists.
    #[serde(rename = "turn.edited")]
    #[schema(rename = "turn.edited")]
    TurnEdited,
    /// A turn's critique exists.
    #[serde(rename = "turn.critiqued")]
    #[schema(rename = "turn.critiqued")]
    TurnCritiqued,
    /// A turn of several candidates chose one.
    #[serde(rename = "turn.chosen")]
    #[schema(rename = "turn.chosen")]
    TurnChosen,
    /// The job finished with a result.
    #[serde(rename = "job.succeeded")]
    #[schema(rename = "job.succeeded")]
    JobSucceeded,
    /// The job failed for good.
    #[serde(rename = "job.failed")]
    #[schema(rename = "job.failed")]
    JobFailed,
    /// The job was canceled.
    #[serde(rename = "job.canceled")]
    #[schema(rename = "job.canceled")]
    JobCanceled,
}

/// `job.queued`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobQueuedData {
    /// The job.
    pub job_id: Uuid,
    /// Always `queued`.
    pub status: JobStatus,
}

/// `job.started`, each time a worker claims the job.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobStartedData {
    /// The job.
    pub job_id: Uuid,
    /// The claim's number, from 1.
    pub attempt: u32,
}

/// Why a job went back to the queue.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryReason {
    /// A retryable failure; `code` says which.
    Transient,
    /// Its worker went silent past the lease.
    LeaseExpired,
    /// Its worker shut down gracefully; the attempt is not counted.
    Released,
}

/// `job.retrying`: the job went back to the queue after `attempt`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRetryingData {
    /// The job.
    pub job_id: Uuid,
    /// The attempt that ended.
    pub attempt: u32,
    /// Why.
    pub reason: RetryReason,
    /// The failure's code; `null` for a release.
    pub code: Option<ErrorCode>,
    /// When it may run again.
    pub run_at: DateTime<Utc>,
}

/// `turn.edited`: a turn's image exists (in a turn of several: one
/// candidate's, the turn is not chosen yet).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnEditedData {
    /// The job.
    pub job_id: Uuid,
    /// Turn number, from 1.
    pub turn: u32,
    /// The edited candidate, from 0 (0 in a one-candidate turn).
    pub candidate: u32,
    /// The candidate's seed: present only in a turn of several candidates.
    #[serde(default)]
    pub seed: Option<i64>,
    /// The instruction the editor received.
    pub instruction: String,
    /// Editor wall time in milliseconds.
    pub editor_ms: u64,
    /// Where to fetch the image: the turn's (`/v1/jobs/{id}/turns/{n}/image`)
    /// in a one-candidate turn, the candidate's
    /// (`/v1/jobs/{id}/turns/{n}/candidates/{c}/image`) in a turn of several.
    pub image_url: String,
}

/// `turn.critiqued`: a turn's critique exists (in a turn of several: one
/// candidate's).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnCritiquedData {
    /// The job.
    pub job_id: Uuid,
    /// Turn number, from 1.
    pub turn: u32,
    /// The critiqued candidate, from 0 (0 in a one-candidate turn).
    pub candidate: u32,
    /// Thinker wall time in milliseconds.
    pub thinker_ms: u64,
    /// The same shape as a turn's critique in the job JSON.
    #[schema(value_type = CritiqueView)]
    pub critique: serde_json::Value,
}

/// `turn.chosen`: a turn of several candidates chose one, which is now
/// the turn in the job JSON (`turns[].chosen`); follows the turn's
/// `turn.edited` and `turn.critiqued` events. A one-candidate turn has none.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnChosenData {
    /// The job.
    pub job_id: Uuid,
    /// Turn number, from 1.
    pub turn: u32,
    /// The chosen candidate, from 0.
    pub candidate: u32,
    /// Its score by `by` (0–10), `null` when no candidate had one.
    pub score: Option<f64>,
    /// Which score ranked the candidates (`options.rank_by`).
    pub by: RankBy,
}

/// `job.succeeded`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSucceededData {
    /// The job.
    pub job_id: Uuid,
    /// The selected turn.
    pub result_turn: u32,
    /// Why the loop stopped.
    pub stop_reason: StopReason,
    /// Where to fetch the result image.
    pub image_url: String,
    /// Present when the editor refused a refined instruction.
    #[serde(default)]
    #[schema(nullable = false)]
    pub refusal: Option<RefusalView>,
    /// What the job's provider calls used and cost.
    pub usage: Usage,
}

/// `job.failed`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFailedData {
    /// The job.
    pub job_id: Uuid,
    /// Why it failed.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// What the job's provider calls used and cost.
    pub usage: Usage,
}

/// `job.canceled`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobCanceledData {
    /// The job.
    pub job_id: Uuid,
    /// What the job's provider calls used and cost.
    pub usage: Usage,
}

/// `turn.thinking`: live reasoning text (no `id:`, never stored or
/// replayed, never delivered to webhooks).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnThinkingData {
    /// The job.
    pub job_id: Uuid,
    /// The turn being critiqued.
    pub turn: u32,
    /// The candidate being critiqued, from 0 (0 in a one-candidate turn).
    pub candidate: u32,
    /// The next piece of the thinker's text.
    pub delta: String,
}

/// A webhook delivery's body (Standard Webhooks): a stored event.
#[derive(Debug, Deserialize, ToSchema)]
pub struct WebhookEvent {
    /// The event type.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When the event happened.
    pub timestamp: DateTime<Utc>,
    /// The event's data, as on the SSE stream (see the `*Data` schemas).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// The schema names of each event type's `data`, in the document.
pub const EVENT_DATA: [(&str, &str); 10] = [
    ("job.queued", "JobQueuedData"),
    ("job.started", "JobStartedData"),
    ("job.retrying", "JobRetryingData"),
    ("turn.edited", "TurnEditedData"),
    ("turn.critiqued", "TurnCritiquedData"),
    ("turn.chosen", "TurnChosenData"),
    ("job.succeeded", "JobSucceededData"),
    ("job.failed", "JobFailedData"),
    ("job.canceled", "JobCanceledData"),
    ("turn.thinking", "TurnThinkingData"),
];

/// Writes into the document (as JSON, like `add_job_links` in `lib.rs`)
/// what utoipa's attributes cannot say:
///
/// - the SSE stream's schema: before OpenAPI 3.2 a `text/event-stream`
///   schema describes one event (`event`, `id`, `data`, as Schemathesis
///   reads it), so it is one variant per event type whose `data` is JSON
///   text (`contentMediaType`) of that type's schema (`contentSchema`);
/// - the top-level `webhooks` entry `jobEvent`: the delivery body, whose
///   `data` is one of the stored events' schemas;
/// - image responses are binary strings.
pub(crate) fn describe_events_and_images(doc: &mut serde_json::Value) {
    use serde_json::{json, Value};
    let data_ref = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let variants: Vec<Value> = EVENT_DATA
        .iter()
        .map(|(kind, name)| {
            // `turn.thinking` is live: it has no `id:`.
            let required = if *kind == "turn.thinking" {
                json!(["event", "data"])
            } else {
                json!(["event", "id", "data"])
            };
            json!({
                "type": "object",
                "title": kind,
                "required": required,
                "properties": {
                    "event": {"const": kind},
                    "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The stored event's id (resume with `Last-Event-ID`)"},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": data_ref(name),
                    },
                },
            })
        })
        .collect();
    if let Some(stream) = doc
        .pointer_mut("/paths/~1v1~1jobs~1{id}~1events/get/responses/200/content/text~1event-stream")
    {
        stream["schema"] = json!({"oneOf": variants});
    }
    // Webhooks carry stored events only (`turn.thinking` is never sent).
    let stored: Vec<Value> = EVENT_DATA
        .iter()
        .filter(|(kind, _)| *kind != "turn.thinking")
        .map(|(_, name)| data_ref(name))
        .collect();
    if let Some(envelope) = doc["components"]["schemas"]["WebhookEvent"].as_object_mut() {
        envelope["properties"]["data"] = json!({
            "oneOf": stored,
            "description": "The event's data, as on the SSE stream.",
        });
    }
    doc["webhooks"] = json!({
        "jobEvent": {"post": {
            "summary": "A job's event, POSTed to the job's `webhook.url` (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`)",
            "operationId": "job_event",
            "requestBody": {"required": true, "content": {"application/json": {
                "schema": data_ref("WebhookEvent"),
            }}},
            "responses": {"2XX": {"description": "Delivered; any other answer is retried"}},
        }},
    });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut() {
        let Some(get) = item.get_mut("get") else {
            continue;
        };
        let Some(responses) = get["responses"].as_object_mut() else {
            continue;
        };
        for response in responses.values_mut() {
            // `get_mut`: indexing a `Value` mutably would add a null
            // `content` to responses that have none (a 204).
            let Some(content) = response.get_mut("content").and_then(|c| c.as_object_mut()) else {
                continue;
            };
            for (media, body) in content.iter_mut() {
                if media.starts_with("image/") {
                    body["schema"] = json!({"type": "string", "format": "binary"});
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EVENT_DATA;

    #[test]
    fn responses_without_a_body_stay_without_content() {
        let doc: serde_json::Value = serde_json::from_str(&crate::openapi_json()).unwrap();
        let events = &doc["paths"]["/v1/jobs/{id}/events"]["get"]["responses"];
        assert!(events["204"].is_object(), "{events}");
        assert!(events["204"].get("content").is_none(), "{}", events["204"]);
        let variants = &events["200"]["content"]["text/event-stream"]["schema"]["oneOf"];
        assert_eq!(
            variants.as_array().map(Vec::len),
            Some(EVENT_DATA.len()),
            "{variants}"
        );
        assert_eq!(
            variants[0]["properties"]["data"]["contentSchema"]["$ref"],
            "#/components/schemas/JobQueuedData"
        );
        let image = &doc["paths"]["/v1/jobs/{id}/result"]["get"]["responses"]["200"]["content"];
        assert_eq!(image["image/png"]["schema"]["format"], "binary", "{image}");
        assert!(!crate::openapi_json().contains("\"content\": null"));
    }
}
