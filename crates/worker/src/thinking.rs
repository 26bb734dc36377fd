//! Live reasoning: a thinker's deltas published as `turn.thinking` events,
//! coalesced, off the generation path.

use std::sync::Arc;
use std::time::Duration;

use editthinker_store::{event_type, Store};
use tokio::sync::mpsc;

use crate::lease::LeaseClock;

/// How often live reasoning goes out: a few events a second, whatever the
/// token rate.
const THINKING_FLUSH: Duration = Duration::from_millis(250);
/// Largest delta text in one `turn.thinking` event (NOTIFY payloads are
/// limited to 8000 bytes, JSON escaping can double the size).
const THINKING_CHUNK_BYTES: usize = 3000;

/// Forwards a thinker's deltas to [`Store::publish_live`], coalesced, from
/// a task of its own so the generation path never waits on the database.
/// The task ends, after a last flush, when the publisher is dropped.
pub(crate) struct ThinkingPublisher {
    tx: mpsc::UnboundedSender<ThinkingMessage>,
}

enum ThinkingMessage {
    /// A delta of (turn, candidate).
    Delta((u32, u32), String),
    /// Publish what is buffered now, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl ThinkingPublisher {
    pub(crate) fn start(store: Arc<dyn Store>, job_id: uuid::Uuid, clock: LeaseClock) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_thinking(store, job_id, clock, rx));
        Self { tx }
    }

    pub(crate) fn send(&self, turn: u32, candidate: u32, delta: &str) {
        // A closed channel only means nobody is publishing any more.
        let _ = self
            .tx
            .send(ThinkingMessage::Delta((turn, candidate), delta.to_owned()));
    }

    /// Waits until every delta sent so far is published, so that live
    /// reasoning reaches subscribers before the critique it led to.
    pub(crate) async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(ThinkingMessage::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn publish_thinking(
    store: Arc<dyn Store>,
    job_id: uuid::Uuid,
    clock: LeaseClock,
    mut rx: mpsc::UnboundedReceiver<ThinkingMessage>,
) {
    let flush_thinking = |pending| flush_thinking(&*store, job_id, &clock, pending);
    let mut open = true;
    while open {
        // Wait for the first delta, then gather for one flush interval.
        let mut pending = match rx.recv().await {
            Some(ThinkingMessage::Delta(turn, text)) => Some((turn, text)),
            Some(ThinkingMessage::Flush(done)) => {
                let _ = done.send(());
                continue;
            }
            None => break,
        };
        let deadline = tokio::time::sleep(THINKING_FLUSH);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                next = rx.recv() => match next {
                    Some(ThinkingMessage::Delta(turn, text)) => match &mut pending {
                        Some((t, buf)) if *t == turn => buf.push_str(&text),
                        _ => {
                            flush_thinking(pending.take()).await;
                            pending = Some((turn, text));
                        }
                    },
                    Some(ThinkingMessage::Flush(done)) => {
                        flush_thinking(pending.take()).await;
                        let _ = done.send(());
                        break;
                    }
                    None => {
                        open = false;
                        break;
                    }
                },
            }
        }
        flush_thinking(pending.take()).await;
    }
}

async fn flush_thinking(
    store: &dyn Store,
    job_id: uuid::Uuid,
    clock: &LeaseClock,
    pending: Option<((u32, u32), String)>,
) {
    let Some(((turn, candidate), text)) = pending else {
        return;
    };
    // A job past its lease says nothing more, live events included.
    if !clock.holds() {
        return;
    }
    for delta in chunks(&text, THINKING_CHUNK_BYTES) {
        let data = serde_json::json!({ "turn": turn, "candidate": candidate, "delta": delta });
        if let Err(e) = store
            .publish_live(job_id, event_type::TURN_THINKING, data)
            .await
        {
            // Live reasoning is best effort: the critique itself is stored.
            tracing::debug!(error = %e, "could not publish live reasoning");
        }
    }
}

/// `text` cut into pieces of at most `max` bytes, on character boundaries.
fn chunks(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(max);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_size_and_char_boundaries() {
        assert!(chunks("", 4).is_empty());
        assert_eq!(chunks("abcdefg", 3), vec!["abc", "def", "g"]);
        let text = "é".repeat(5); // 2 bytes each
        let parts = chunks(&text, 3);
        assert!(parts.iter().all(|p| p.len() <= 3 && !p.is_empty()));
        assert_eq!(parts.concat(), text);
    }
}
