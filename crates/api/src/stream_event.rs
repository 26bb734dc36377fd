//! Events as SSE streams carry them (docs/architecture.md §4): typed, with
//! their public data, and shared by every stream that sends them. The event
//! hub (crates/api/src/fanout.rs) and `Prefer: wait` (crates/api/src/jobs.rs)
//! carry these and never see bytes: only the writers turn them into bytes,
//! through crates/api/src/wire.rs. A leaf among the SSE modules (it uses
//! none of them), so they import one another in no cycle.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use editthinker_core::CritiqueRecord;
use editthinker_store::{event_type, EventRow};
use uuid::Uuid;

use crate::views::{candidate_image_url, result_url, turn_image_url, CritiqueView};

/// Keep-alive comment interval of an idle stream.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// An event's type (its SSE `event:`), as the store names it
/// (`editthinker_store::event_type`).
///
/// A stored type this build does not know (one a newer version wrote, say)
/// is no error: it becomes [`EventKind::Other`], sent under its own name,
/// neither terminal nor queued, as any unknown type always was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `job.queued`: the job was created or queued again.
    JobQueued,
    /// `job.started`: a worker claimed the job.
    JobStarted,
    /// `job.retrying`: the job went back to the queue.
    JobRetrying,
    /// `turn.edited`: a turn's image exists.
    TurnEdited,
    /// `turn.critiqued`: a turn's critique exists.
    TurnCritiqued,
    /// `turn.chosen`: a turn of several candidates chose one.
    TurnChosen,
    /// `job.succeeded`: the job finished with a result.
    JobSucceeded,
    /// `job.failed`: the job failed for good.
    JobFailed,
    /// `job.canceled`: the job was canceled.
    JobCanceled,
    /// `turn.thinking`: live reasoning text (never stored).
    TurnThinking,
    /// Any other type, by its name.
    Other(Box<str>),
}

impl EventKind {
    /// Every kind with a name of its own.
    const KNOWN: [EventKind; 10] = [
        Self::JobQueued,
        Self::JobStarted,
        Self::JobRetrying,
        Self::TurnEdited,
        Self::TurnCritiqued,
        Self::TurnChosen,
        Self::JobSucceeded,
        Self::JobFailed,
        Self::JobCanceled,
        Self::TurnThinking,
    ];

    /// The type's name: the SSE `event:` and the store's `kind`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::JobQueued => event_type::JOB_QUEUED,
            Self::JobStarted => event_type::JOB_STARTED,
            Self::JobRetrying => event_type::JOB_RETRYING,
            Self::TurnEdited => event_type::TURN_EDITED,
            Self::TurnCritiqued => event_type::TURN_CRITIQUED,
            Self::TurnChosen => event_type::TURN_CHOSEN,
            Self::JobSucceeded => event_type::JOB_SUCCEEDED,
            Self::JobFailed => event_type::JOB_FAILED,
            Self::JobCanceled => event_type::JOB_CANCELED,
            Self::TurnThinking => event_type::TURN_THINKING,
            Self::Other(name) => name,
        }
    }

    /// Whether the job finished: succeeded, failed or canceled.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::JobSucceeded | Self::JobFailed | Self::JobCanceled
        )
    }

    /// Whether the job was queued (again, after a terminal event: a retry).
    pub fn is_queued(&self) -> bool {
        matches!(self, Self::JobQueued)
    }
}

impl From<&str> for EventKind {
    /// The kind named `name`; [`EventKind::Other`] for an unknown name.
    fn from(name: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .unwrap_or_else(|| Self::Other(name.into()))
    }
}

/// One event as a job's streams send it: shared by all of them (the hub
/// hands out `Arc`s), so its wire form is rendered once per process.
#[derive(Debug)]
pub struct StreamEvent {
    /// The stored event's id; `None` for a live event (no `id:` line, so it
    /// never moves a client's `Last-Event-ID`).
    pub id: Option<i64>,
    /// Its type.
    pub kind: EventKind,
    /// Its data as clients see it ([`public_event_data`] for a stored one).
    pub data: serde_json::Value,
    /// Its wire forms: rendered on first use by crates/api/src/wire.rs,
    /// which alone fills and reads them.
    pub(crate) wire: OnceLock<[Bytes; 3]>,
}

impl StreamEvent {
    /// A stored event as sent on the stream.
    pub(crate) fn stored(row: &EventRow) -> Self {
        let kind = EventKind::from(row.kind.as_str());
        let data = public_data(row, &kind);
        Self::new(Some(row.id), kind, data)
    }

    /// A live event (`turn.thinking`), with the job id added to its data
    /// (and its `candidate`, 0, when a worker of an earlier release left
    /// it out).
    pub(crate) fn live(job_id: Uuid, kind: &str, mut data: serde_json::Value) -> Self {
        let kind = EventKind::from(kind);
        if let Some(map) = data.as_object_mut() {
            map.insert("job_id".into(), job_id.to_string().into());
            if kind == EventKind::TurnThinking {
                candidate_of(map);
            }
        }
        Self::new(None, kind, data)
    }

    fn new(id: Option<i64>, kind: EventKind, data: serde_json::Value) -> Self {
        Self {
            id,
            kind,
            data,
            wire: OnceLock::new(),
        }
    }

    /// A stored terminal event (a live one never ends anything).
    pub fn is_terminal(&self) -> bool {
        self.id.is_some() && self.kind.is_terminal()
    }

    /// A stored `job.queued`: after a terminal event, the job was retried.
    pub fn is_queued(&self) -> bool {
        self.id.is_some() && self.kind.is_queued()
    }
}

/// The one rule for where a stream ends: after a terminal event, unless a
/// `job.queued` stored after it (a retry, `POST /v1/jobs/{id}/retry`) is
/// among the events known to `later`.
pub(crate) fn ends_stream_at<'a>(
    event: &StreamEvent,
    mut later: impl Iterator<Item = &'a StreamEvent>,
) -> bool {
    event.is_terminal() && !later.any(|e| e.is_queued() && e.id > event.id)
}

/// [`ends_stream_at`] for `events[index]` and the events after it.
pub(crate) fn ends_stream(events: &[StreamEvent], index: usize) -> bool {
    ends_stream_at(&events[index], events[index + 1..].iter())
}

/// A stored row of type `kind` with empty data, for tests.
#[cfg(test)]
pub(crate) fn test_row(id: i64, kind: &str) -> EventRow {
    EventRow {
        id,
        job_id: Uuid::nil(),
        kind: kind.into(),
        data: serde_json::json!({}),
        created_at: chrono::Utc::now(),
    }
}

/// A stored event's data as clients see it, on the stream and in webhook
/// deliveries: the stored data plus the job id and image URLs.
pub fn public_event_data(row: &EventRow) -> serde_json::Value {
    public_data(row, &EventKind::from(row.kind.as_str()))
}

/// [`public_event_data`] for a row of type `kind`.
fn public_data(row: &EventRow, kind: &EventKind) -> serde_json::Value {
    let mut data = row.data.clone();
    if let Some(map) = data.as_object_mut() {
        map.insert("job_id".into(), row.job_id.to_string().into());
        match kind {
            EventKind::TurnEdited => {
                let candidate = candidate_of(map);
                // Only a candidate of a turn of several carries a seed; a
                // one-candidate turn's image is the turn's, as it always was.
                let several = map.contains_key("seed");
                if let Some(turn) = map.get("turn").and_then(|t| t.as_u64()) {
                    let turn = turn as u32;
                    let url = match candidate.filter(|_| several) {
                        Some(c) => candidate_image_url(row.job_id, turn, c),
                        None => turn_image_url(row.job_id, turn),
                    };
                    map.insert("image_url".into(), url.into());
                }
            }
            EventKind::TurnCritiqued => {
                candidate_of(map);
                // Same shape as a turn's critique in the job JSON.
                let view = map
                    .get("critique")
                    .cloned()
                    .and_then(|c| serde_json::from_value::<CritiqueRecord>(c).ok())
                    .map(|record| CritiqueView::from_record(&record));
                if let Some(view) = view {
                    map.insert(
                        "critique".into(),
                        serde_json::to_value(view).expect("critique view serializes"),
                    );
                }
            }
            EventKind::JobSucceeded => {
                map.insert("image_url".into(), result_url(row.job_id).into());
            }
            _ => {}
        }
    }
    data
}

/// The `candidate` of a turn event's data, as stored; an event stored
/// (or a live one sent) before turns had candidates gets `candidate: 0`,
/// which it was, and `None` is returned.
fn candidate_of(map: &mut serde_json::Map<String, serde_json::Value>) -> Option<u32> {
    let stored = map
        .get("candidate")
        .and_then(|c| c.as_u64())
        .and_then(|c| u32::try_from(c).ok());
    if stored.is_none() {
        map.insert("candidate".into(), 0.into());
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_type_has_a_kind_of_its_own() {
        for (name, _) in crate::contract::EVENT_DATA {
            let kind = EventKind::from(name);
            assert!(!matches!(kind, EventKind::Other(_)), "{name}");
            assert_eq!(kind.as_str(), name);
        }
        assert_eq!(EventKind::KNOWN.len(), crate::contract::EVENT_DATA.len());
    }

    #[test]
    fn an_unknown_type_keeps_its_name_and_ends_nothing() {
        let kind = EventKind::from("job.paused");
        assert_eq!(kind, EventKind::Other("job.paused".into()));
        assert_eq!(kind.as_str(), "job.paused");
        assert!(!kind.is_terminal() && !kind.is_queued());
    }

    #[test]
    fn a_retry_after_a_terminal_event_keeps_the_stream_open() {
        let stored = |id, kind: EventKind| StreamEvent::new(Some(id), kind, serde_json::json!({}));
        let events = [
            stored(6, EventKind::JobFailed),
            stored(7, EventKind::JobQueued),
            stored(9, EventKind::JobCanceled),
        ];
        assert!(!ends_stream(&events, 0));
        assert!(ends_stream(&events, 2));
        // A live event of a terminal type ends nothing.
        let live = StreamEvent::new(None, EventKind::JobSucceeded, serde_json::json!({}));
        assert!(!ends_stream_at(&live, std::iter::empty()));
    }

    /// The public data of a stored row of type `kind` with data `data`.
    fn public(kind: &str, data: serde_json::Value) -> serde_json::Value {
        let row = EventRow {
            data,
            ..test_row(1, kind)
        };
        public_event_data(&row)
    }

    #[test]
    fn turn_events_name_their_candidate_and_its_image() {
        let job = Uuid::nil();
        // A candidate of a turn of several (it has a seed): its own image.
        let edited = public(
            "turn.edited",
            serde_json::json!({"turn": 2, "candidate": 3, "seed": 11, "instruction": "x", "editor_ms": 5}),
        );
        assert_eq!(edited["candidate"], 3);
        assert_eq!(
            edited["image_url"],
            format!("/v1/jobs/{job}/turns/2/candidates/3/image")
        );
        // A one-candidate turn: the turn's image, as before candidates.
        let single = public(
            "turn.edited",
            serde_json::json!({"turn": 2, "candidate": 0, "instruction": "x", "editor_ms": 5}),
        );
        assert_eq!(single["image_url"], format!("/v1/jobs/{job}/turns/2/image"));
        // Stored before turns had candidates: candidate 0, the turn's image.
        let old = public(
            "turn.edited",
            serde_json::json!({"turn": 2, "instruction": "x", "editor_ms": 5}),
        );
        assert_eq!(old["candidate"], 0);
        assert_eq!(old["image_url"], format!("/v1/jobs/{job}/turns/2/image"));
        let critiqued = public(
            "turn.critiqued",
            serde_json::json!({"turn": 1, "thinker_ms": 4, "critique": {}}),
        );
        assert_eq!(critiqued["candidate"], 0, "{critiqued}");
        let chosen = serde_json::json!({"turn": 1, "candidate": 2, "score": 7.5, "by": "verifier"});
        let public_chosen = public("turn.chosen", chosen.clone());
        assert_eq!(
            public_chosen,
            serde_json::json!({"turn": 1, "candidate": 2, "score": 7.5, "by": "verifier", "job_id": job})
        );
        let thinking = StreamEvent::live(
            job,
            "turn.thinking",
            serde_json::json!({"turn": 1, "delta": "h"}),
        );
        assert_eq!(thinking.data["candidate"], 0);
        let thinking = StreamEvent::live(
            job,
            "turn.thinking",
            serde_json::json!({"turn": 1, "candidate": 4, "delta": "h"}),
        );
        assert_eq!(thinking.data["candidate"], 4);
    }
}
