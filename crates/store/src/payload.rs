//! Event `data` payloads (contract, DESIGN.md §7): both backends build them
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

/// `turn.edited`.
pub(crate) fn edited(turn: u32, instruction: &str, editor_ms: u64) -> Value {
    json!({ "turn": turn, "instruction": instruction, "editor_ms": editor_ms })
}

/// `turn.critiqued`.
pub(crate) fn critiqued(turn: u32, critique: &Value, thinker_ms: u64) -> Value {
    json!({ "turn": turn, "critique": critique, "thinker_ms": thinker_ms })
}

/// `job.succeeded`.
pub(crate) fn succeeded(result_turn: u32) -> Value {
    json!({ "result_turn": result_turn })
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
pub(crate) const LEASE_EXPIRED: &str = "lease_expired";

/// The `pg_notify` payload: ids only, NOTIFY payloads are size-limited.
pub(crate) fn notify_payload(job_id: uuid::Uuid, event_id: i64, kind: &str) -> String {
    format!("{job_id},{event_id},{kind}")
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
}
