//! Events as they go on an SSE stream: rendered once per process and
//! shared by every stream (crates/api/src/events.rs), the event hub
//! (crates/api/src/fanout.rs) and its writers (crates/api/src/direct.rs).
//! A leaf module: it uses none of those, so they form no import cycle.

use std::time::Duration;

use bytes::Bytes;
use editthinker_core::CritiqueRecord;
use editthinker_store::{event_type, EventRow};
use uuid::Uuid;

use crate::views::{result_url, turn_image_url, CritiqueView};

/// The end of a chunked body (no trailers), as hyper writes it.
pub(crate) const END_CHUNK: &[u8] = b"0\r\n\r\n";

/// Keep-alive comment interval of an idle stream.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event as it goes on the wire, rendered once per process and shared
/// by every stream that sends it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The stored event's id; `None` for a live event.
    pub id: Option<i64>,
    /// Whether the stream ends after it.
    pub terminal: bool,
    /// A stored `job.queued`: after a terminal event, the job was retried.
    pub queued: bool,
    /// `id:`, `event:` and `data:` lines and the blank line.
    pub bytes: Bytes,
    /// The same bytes framed as one HTTP/1.1 chunk, as the hub writes them
    /// to handed-off streams (`bytes` is a slice of it).
    pub chunk: Bytes,
    /// For a terminal event: `chunk` and the end of the chunked body, which
    /// the hub writes in one go (empty for other events).
    pub last_chunk: Bytes,
}

/// The one rule for where a stream ends: after a terminal event, unless a
/// `job.queued` stored after it (a retry, `POST /v1/jobs/{id}/retry`) is
/// among the frames known to `later`.
pub(crate) fn ends_stream_at<'a>(
    frame: &Frame,
    mut later: impl Iterator<Item = &'a Frame>,
) -> bool {
    frame.terminal && !later.any(|f| f.queued && f.id > frame.id)
}

/// [`ends_stream_at`] for `frames[index]` and the frames after it.
pub(crate) fn ends_stream(frames: &[Frame], index: usize) -> bool {
    ends_stream_at(&frames[index], frames[index + 1..].iter())
}

fn frame(id: Option<i64>, kind: &str, data: &serde_json::Value) -> Frame {
    // Compact JSON has no newline, so the data fits on one `data:` line.
    let mut text = String::new();
    if let Some(id) = id {
        text.push_str(&format!("id: {id}\n"));
    }
    text.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
    let head = format!("{:x}\r\n", text.len());
    let chunk = Bytes::from(format!("{head}{text}\r\n"));
    let terminal = id.is_some() && is_terminal(kind);
    let last_chunk = if terminal {
        Bytes::from([&chunk[..], END_CHUNK].concat())
    } else {
        Bytes::new()
    };
    Frame {
        id,
        terminal,
        last_chunk,
        queued: id.is_some() && kind == event_type::JOB_QUEUED,
        bytes: chunk.slice(head.len()..head.len() + text.len()),
        chunk,
    }
}

fn is_terminal(kind: &str) -> bool {
    matches!(
        kind,
        event_type::JOB_SUCCEEDED | event_type::JOB_FAILED | event_type::JOB_CANCELED
    )
}

/// A live event (`turn.thinking`): no `id:`, so it never moves a client's
/// `Last-Event-ID`.
pub(crate) fn live_frame(job_id: Uuid, kind: &str, mut data: serde_json::Value) -> Frame {
    if let Some(map) = data.as_object_mut() {
        map.insert("job_id".into(), job_id.to_string().into());
    }
    frame(None, kind, &data)
}

/// A stored event as sent on the stream.
pub(crate) fn stored_frame(row: &EventRow) -> Frame {
    frame(Some(row.id), &row.kind, &public_event_data(row))
}

/// A stored event's data as clients see it, on the stream and in webhook
/// deliveries: the stored data plus the job id and image URLs.
pub fn public_event_data(row: &EventRow) -> serde_json::Value {
    let mut data = row.data.clone();
    if let Some(map) = data.as_object_mut() {
        map.insert("job_id".into(), row.job_id.to_string().into());
        match row.kind.as_str() {
            event_type::TURN_EDITED => {
                if let Some(turn) = map.get("turn").and_then(|t| t.as_u64()) {
                    map.insert(
                        "image_url".into(),
                        turn_image_url(row.job_id, turn as u32).into(),
                    );
                }
            }
            event_type::TURN_CRITIQUED => {
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
            event_type::JOB_SUCCEEDED => {
                map.insert("image_url".into(), result_url(row.job_id).into());
            }
            _ => {}
        }
    }
    data
}
