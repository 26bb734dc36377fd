//! Event `data` payloads (contract, docs/api.md "Events (SSE)"): both backends build them
//! here so they stay identical.

use serde_json::{json, Value};

/// `job.queued`.
pub(crate) fn queued() -> Value {
    json!({ "status": "queued" })
}

/// `job.started`.
pub(crate) fn started(attempt: u32) -> Value {
    json!({ "attempt": attempt })
}

/// `turn.edited` of a one-candidate turn (its candidate 0).
pub(crate) fn edited(turn: u32, instruction: &str, editor_ms: u64) -> Value {
    json!({
        "turn": turn,
        "candidate": 0,
        "instruction": instruction,
        "editor_ms": editor_ms,
    })
}

/// `turn.edited` of candidate `candidate` of a turn of several: with its
/// `seed`, which tells clients the turn has several.
pub(crate) fn candidate_edited(
    turn: u32,
    candidate: u32,
    seed: Option<i64>,
    instruction: &str,
    editor_ms: u64,
) -> Value {
    let mut data = edited(turn, instruction, editor_ms);
    data["candidate"] = candidate.into();
    data["seed"] = seed.into();
    data
}

/// `turn.critiqued` of candidate `candidate` (0 in a one-candidate turn).
pub(crate) fn critiqued(turn: u32, candidate: u32, critique: &Value, thinker_ms: u64) -> Value {
    json!({
        "turn": turn,
        "candidate": candidate,
        "critique": critique,
        "thinker_ms": thinker_ms,
    })
}

/// `turn.chosen`.
pub(crate) fn chosen(chosen: &crate::ChosenRecord) -> Value {
    json!({
        "turn": chosen.turn,
        "candidate": chosen.candidate,
        "score": chosen.score,
        "by": chosen.by.as_str(),
    })
}

/// `job.succeeded`; `refusal` says the editor refused a refined
/// instruction, which ended the loop early.
pub(crate) fn succeeded(
    result_turn: u32,
    refusal: Option<&Value>,
    stop: editthinker_core::StopReason,
) -> Value {
    let mut data = json!({ "result_turn": result_turn, "stop_reason": stop.as_str() });
    if let Some(refusal) = refusal {
        data["refusal"] = refusal.clone();
    }
    data
}

/// `job.retrying`: the job went back to the queue after `attempt`.
pub(crate) fn retrying(
    attempt: u32,
    reason: &str,
    code: Option<&str>,
    run_at: chrono::DateTime<chrono::Utc>,
) -> Value {
    json!({
        "attempt": attempt,
        "reason": reason,
        "code": code,
        "run_at": run_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// `job.failed`.
pub(crate) fn failed(code: &str, message: &str) -> Value {
    json!({ "code": code, "message": message })
}

/// `job.canceled`.
pub(crate) fn canceled() -> Value {
    json!({})
}

/// Error code written when a job's lease expired and its attempts are spent.
pub(crate) const LEASE_EXPIRED: &str = editthinker_core::ErrorCode::LeaseExpired.as_str();

/// The `pg_notify` payload of a stored event, as a SQL expression over the
/// `event` rows that [`crate::postgres`] writes (`job_id`, `id`, `type`):
/// `<job_id>,<event_id>,<type>`, ids only (NOTIFY payloads are
/// size-limited). [`parse_notify_payload`] reads it back.
pub(crate) const NOTIFY_PAYLOAD_SQL: &str =
    "event.job_id::text || ',' || event.id::text || ',' || event.type";

/// The `pg_notify` payload as [`NOTIFY_PAYLOAD_SQL`] builds it.
/// Adds the job's `usage` to a terminal event's data (contract:
/// `job.succeeded`, `job.failed`, `job.canceled`; the drivers' `emit` calls
/// it for those, see [`crate::model::is_terminal_event`]).
pub(crate) fn add_usage(data: &mut Value, ledger: &crate::model::JobLedger) {
    let (usage, _) = ledger.summarize();
    data["usage"] = serde_json::to_value(usage).expect("usage serializes");
}

#[cfg(test)]
fn notify_payload(job_id: uuid::Uuid, event_id: i64, kind: &str) -> String {
    format!("{job_id},{event_id},{kind}")
}

/// A record as the JSON stored in a column.
pub(crate) fn to_json(record: &impl serde::Serialize) -> Value {
    serde_json::to_value(record).expect("store records always serialise")
}

/// The NOTIFY channel for live, unstored events.
pub(crate) const LIVE_CHANNEL: &str = "editthinker_live";

/// Postgres refuses NOTIFY payloads of 8000 bytes or more.
pub const MAX_LIVE_PAYLOAD: usize = 7900;

/// The `pg_notify` payload of a live event: the whole event as JSON.
pub(crate) fn live_payload(job_id: uuid::Uuid, kind: &str, data: &Value) -> String {
    json!({ "job_id": job_id, "type": kind, "data": data }).to_string()
}

/// Parses [`live_payload`]'s output.
pub(crate) fn parse_live_payload(payload: &str) -> Option<crate::Notice> {
    let v: Value = serde_json::from_str(payload).ok()?;
    Some(crate::Notice::Live {
        job_id: v.get("job_id")?.as_str()?.parse().ok()?,
        kind: v.get("type")?.as_str()?.to_owned(),
        data: v.get("data")?.clone(),
    })
}

/// Parses [`notify_payload`]'s output.
pub(crate) fn parse_notify_payload(payload: &str) -> Option<crate::Notice> {
    let mut parts = payload.splitn(3, ',');
    let job_id = parts.next()?.parse().ok()?;
    let event_id = parts.next()?.parse().ok()?;
    let kind = parts.next()?.to_owned();
    Some(crate::Notice::Event {
        job_id,
        event_id,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_payload_round_trips() {
        let id = uuid::Uuid::now_v7();
        let p = notify_payload(id, 42, "job.queued");
        assert_eq!(
            parse_notify_payload(&p),
            Some(crate::Notice::Event {
                job_id: id,
                event_id: 42,
                kind: "job.queued".into()
            })
        );
        assert_eq!(parse_notify_payload("garbage"), None);
    }

    #[test]
    fn live_payload_round_trips() {
        let id = uuid::Uuid::now_v7();
        let data = json!({"turn": 2, "delta": "the cup, \"red\""});
        let p = live_payload(id, "turn.thinking", &data);
        assert_eq!(
            parse_live_payload(&p),
            Some(crate::Notice::Live {
                job_id: id,
                kind: "turn.thinking".into(),
                data
            })
        );
        assert_eq!(parse_live_payload("{}"), None);
    }
}
