//! Server-sent events (`text/event-stream`) as chat-completions servers
//! stream them: telling a streamed answer apart, and an incremental parser
//! that copes with chunks split anywhere and servers that leave out the
//! blank lines between events.

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use serde_json::Value;

/// Whether the response is a server-sent event stream.
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// Whether a body labelled otherwise is really server-sent events: its first
/// non-blank line is an SSE field or comment, where JSON would start with `{`.
pub(crate) fn looks_like_event_stream(body: &str) -> bool {
    body.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .is_some_and(|line| {
            line.starts_with(':')
                || ["data:", "event:", "id:"]
                    .iter()
                    .any(|f| line.starts_with(f))
        })
}

/// One server-sent event: its `event:` name (if any) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) name: Option<String>,
    pub(crate) data: String,
}

/// An incremental parser for `text/event-stream` bodies.
///
/// Lines end in `\n` (a `\r` before it is dropped); `data:` lines of one
/// event are joined with `\n` and the event ends at a blank line, as the
/// SSE format says. As a leniency for servers that omit the blank lines, a
/// `data:` line that follows a complete JSON value or `[DONE]` starts a new
/// event. Comments (`:`) and other fields (`id:`, `retry:`) are ignored.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    name: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds a chunk of the body; returns the events it completed.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut consumed = 0;
        while let Some(end) = self.buffer[consumed..].iter().position(|b| *b == b'\n') {
            let line = &self.buffer[consumed..consumed + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            // A line never splits a UTF-8 sequence: `\n` cannot occur inside one.
            let line = String::from_utf8_lossy(line).into_owned();
            consumed += end + 1;
            self.line(&line, &mut events);
        }
        self.buffer.drain(..consumed);
        events
    }

    /// The body ended: the events still pending, including an unterminated
    /// last line.
    pub(crate) fn finish(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            let line = String::from_utf8_lossy(&rest).into_owned();
            self.line(line.trim_end_matches('\r'), &mut events);
        }
        self.dispatch(&mut events);
        events
    }

    fn line(&mut self, line: &str, events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if let Some(pending) = &self.data {
                    let pending = pending.trim();
                    if pending == "[DONE]" || serde_json::from_str::<Value>(pending).is_ok() {
                        self.dispatch(events);
                    }
                }
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                }
            }
            "event" => self.name = Some(value.to_string()),
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        let name = self.name.take();
        if let Some(data) = self.data.take() {
            events.push(SseEvent { name, data });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks_and_fields() {
        let body = "event: message\r\ndata: {\"a\":\"é\"}\r\n\r\n: comment\n\ndata: line one\ndata: line two\nid: 7\n\ndata: [DONE]";
        // Every split point, including inside the two-byte `é`.
        for cut in 0..body.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&body.as_bytes()[..cut]);
            events.extend(parser.push(&body.as_bytes()[cut..]));
            events.extend(parser.finish());
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        name: Some("message".into()),
                        data: "{\"a\":\"é\"}".into()
                    },
                    SseEvent {
                        name: None,
                        data: "line one\nline two".into()
                    },
                    SseEvent {
                        name: None,
                        data: "[DONE]".into()
                    },
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn sse_parser_splits_json_events_without_blank_lines() {
        let mut parser = SseParser::default();
        let mut events = parser.push(b"data: {\"n\":1}\ndata: {\"n\":2}\ndata:[DONE]\n");
        events.extend(parser.finish());
        let data: Vec<_> = events.into_iter().map(|e| e.data).collect();
        assert_eq!(data, ["{\"n\":1}", "{\"n\":2}", "[DONE]"]);
    }

    #[test]
    fn event_stream_sniffing() {
        assert!(looks_like_event_stream("\n\ndata: {}"));
        assert!(looks_like_event_stream(": ping\n"));
        assert!(!looks_like_event_stream("{\"choices\": []}"));
        assert!(!looks_like_event_stream(""));
    }
}
