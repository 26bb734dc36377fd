//! The wire form of SSE events, for the stream writers only (the stock body
//! in crates/api/src/events.rs and the hub's writers in
//! crates/api/src/direct.rs): an event's `id:`, `event:` and `data:` lines,
//! the same framed as one HTTP/1.1 chunk (`{len:x}\r\n…\r\n`), and the end
//! of a chunked body. Each [`StreamEvent`] is rendered once per process, on
//! first use, into its own cache, whatever the number of streams sending it.

use std::fmt::Write;

use bytes::Bytes;

use crate::stream_event::StreamEvent;

/// The end of a chunked body (no trailers), as hyper writes it.
pub(crate) const END_CHUNK: &[u8] = b"0\r\n\r\n";

/// A keep-alive comment.
pub(crate) const COMMENT: &[u8] = b":\n\n";

/// A keep-alive comment, framed as a chunk.
pub(crate) const COMMENT_CHUNK: &[u8] = b"3\r\n:\n\n\r\n";

/// What follows a chunk's data.
const CHUNK_TAIL: &[u8] = b"\r\n";

/// Where each form sits in a [`StreamEvent`]'s cache; all three are slices
/// of one buffer.
const TEXT: usize = 0;
const CHUNK: usize = 1;
const LAST_CHUNK: usize = 2;

/// The event's SSE text: `id:` (stored events only), `event:` and `data:`
/// lines and the blank line.
pub(crate) fn sse_text(event: &StreamEvent) -> &Bytes {
    &forms(event)[TEXT]
}

/// The event's text framed as one HTTP/1.1 chunk.
pub(crate) fn chunk(event: &StreamEvent) -> &Bytes {
    &forms(event)[CHUNK]
}

/// [`chunk`] and the end of the chunked body, for a stream's last event:
/// the hub writes both in one go.
pub(crate) fn last_chunk(event: &StreamEvent) -> &Bytes {
    &forms(event)[LAST_CHUNK]
}

/// The event's forms, rendered on first use. They are handed out by
/// reference: a writer thread clones one only for bytes the socket does
/// not take at once, so thousands of streams do not contend for its count.
fn forms(event: &StreamEvent) -> &[Bytes; 3] {
    event.wire.get_or_init(|| {
        // Compact JSON has no newline, so the data fits on one `data:` line.
        let mut text = String::new();
        if let Some(id) = event.id {
            let _ = writeln!(text, "id: {id}");
        }
        let _ = write!(
            text,
            "event: {}\ndata: {}\n\n",
            event.kind.as_str(),
            event.data
        );
        let head = format!("{:x}\r\n", text.len());
        let all = Bytes::from([head.as_bytes(), text.as_bytes(), CHUNK_TAIL, END_CHUNK].concat());
        let chunk_end = all.len() - END_CHUNK.len();
        [
            all.slice(head.len()..head.len() + text.len()),
            all.slice(..chunk_end),
            all,
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream_event::test_row;

    #[test]
    fn an_event_renders_as_before() {
        let event = StreamEvent::stored(&test_row(12, "job.canceled"));
        let text = "id: 12\nevent: job.canceled\ndata: \
            {\"job_id\":\"00000000-0000-0000-0000-000000000000\"}\n\n";
        assert_eq!(sse_text(&event), text);
        let chunk_text = format!("{:x}\r\n{text}\r\n", text.len());
        assert_eq!(chunk(&event), &chunk_text);
        assert_eq!(last_chunk(&event), &format!("{chunk_text}0\r\n\r\n"));
        // Rendered once: every form is a slice of one buffer.
        assert_eq!(chunk(&event).as_ptr(), last_chunk(&event).as_ptr());
        assert!(std::ptr::eq(sse_text(&event), sse_text(&event)));
        let live = StreamEvent::live(
            uuid::Uuid::nil(),
            "turn.thinking",
            serde_json::json!({"delta": "a\nb"}),
        );
        assert!(sse_text(&live).starts_with(b"event: turn.thinking\ndata: {"));
        assert_eq!(COMMENT_CHUNK, format!("3\r\n{}\r\n", ":\n\n").as_bytes());
        assert_eq!(&COMMENT_CHUNK[3..6], COMMENT);
    }
}
