//! Server-Sent Events as the CLI reads them: a parser for the wire format
//! (pure), and a stream of a job's events that reconnects with
//! `Last-Event-ID` when the connection drops.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use super::{ApiClient, ClientError};

/// One event of a job's stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The stored event's id; `None` for a live `turn.thinking`.
    pub id: Option<i64>,
    /// `job.queued`, `turn.critiqued`, …
    pub kind: String,
    /// The JSON data.
    pub data: Value,
}

/// Splits SSE text into events as it arrives, across chunk boundaries.
#[derive(Default)]
pub struct Parser {
    buffer: String,
}

impl Parser {
    /// Feeds a chunk; returns the events it completed. Comments
    /// (keep-alives) and events without data are dropped.
    pub fn feed(&mut self, chunk: &str) -> Vec<Event> {
        self.buffer.push_str(&chunk.replace("\r\n", "\n"));
        let mut events = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (None, String::from("message"), String::new());
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = value.trim().parse().ok(),
                    "event" => kind = value.to_string(),
                    "data" => {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(value);
                    }
                    _ => {}
                }
            }
            if data.is_empty() {
                continue;
            }
            let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            events.push(Event { id, kind, data });
        }
        events
    }
}

/// A job's events, resumed after the last stored one on every reconnect.
pub struct JobStream<'a> {
    client: &'a ApiClient,
    job: String,
    /// The last stored event id seen.
    pub last_id: Option<i64>,
}

/// What the stream yields.
pub enum Next {
    /// An event.
    Event(Event),
    /// The connection dropped; it is being resumed.
    Reconnecting,
    /// The server said the job is over and nothing follows.
    Ended,
}

/// Reconnect attempts in a row before giving up.
const MAX_RECONNECTS: u32 = 30;

impl<'a> JobStream<'a> {
    /// Streams `job` from the start (or after `last_id`).
    pub fn new(client: &'a ApiClient, job: &str, last_id: Option<i64>) -> Self {
        Self {
            client,
            job: job.to_string(),
            last_id,
        }
    }

    /// Runs until the terminal event or the server's 204, calling (and
    /// awaiting) `on_next` for everything that happens.
    pub async fn run(&mut self, mut on_next: impl AsyncFnMut(Next)) -> Result<(), ClientError> {
        let mut failures = 0;
        loop {
            let response = match self.client.events(&self.job, self.last_id).await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    on_next(Next::Ended).await;
                    return Ok(());
                }
                Err(e) if e.is_connection() && failures < MAX_RECONNECTS => {
                    failures += 1;
                    on_next(Next::Reconnecting).await;
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut parser = Parser::default();
            let mut body = response.bytes_stream();
            let mut ended = false;
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else {
                    break;
                };
                failures = 0;
                for event in parser.feed(&String::from_utf8_lossy(&chunk)) {
                    if let Some(id) = event.id {
                        self.last_id = Some(id);
                    }
                    ended |= is_terminal(&event.kind);
                    on_next(Next::Event(event)).await;
                }
            }
            if ended {
                return Ok(());
            }
            // The stream ended without a terminal event: resume it.
            failures += 1;
            if failures > MAX_RECONNECTS {
                return Err(ClientError::Stream(format!(
                    "the event stream kept dropping ({MAX_RECONNECTS} reconnects)"
                )));
            }
            on_next(Next::Reconnecting).await;
            tokio::time::sleep(backoff(failures)).await;
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis((200 * u64::from(failures)).min(3000))
}

/// Whether an event ends a job's stream.
pub fn is_terminal(kind: &str) -> bool {
    matches!(kind, "job.succeeded" | "job.failed" | "job.canceled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_comments_are_dropped() {
        let mut p = Parser::default();
        assert!(p.feed(":\n\nid: 4\nevent: turn.crit").is_empty());
        let events = p.feed(
            "iqued\ndata: {\"turn\":1}\n\nevent: turn.thinking\r\ndata: {\"delta\":\"hm\"}\r\n\r\n",
        );
        assert_eq!(
            events,
            [
                Event {
                    id: Some(4),
                    kind: "turn.critiqued".into(),
                    data: serde_json::json!({"turn": 1}),
                },
                Event {
                    id: None,
                    kind: "turn.thinking".into(),
                    data: serde_json::json!({"delta": "hm"}),
                },
            ]
        );
        assert!(is_terminal("job.failed") && !is_terminal("job.retrying"));
    }
}
