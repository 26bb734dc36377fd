//! `GET /v1/jobs/{id}/events`: stored events replayed after `Last-Event-ID`,
//! then live ones, until the terminal event (docs/architecture.md §4).
//!
//! The stream's body is one of the two writers of an event stream: it takes
//! the typed events of its replay and of the hub (crates/api/src/fanout.rs)
//! and sends their wire form (crates/api/src/wire.rs) until it hands the
//! stream to the hub's writers (crates/api/src/direct.rs).

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use editthinker_store::{EventRow, Store};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::ReusableBoxFuture;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::{Caller, StreamSlot};
use crate::direct::{ConnHandle, End, Socket, Untouched};
use crate::error::ApiError;
use crate::fanout::{Feed, Subscription};
use crate::jobs::{job_id, owned_row};
pub use crate::stream_event::public_event_data;
use crate::stream_event::{ends_stream_at, StreamEvent, KEEP_ALIVE};
use crate::wire;
use crate::AppState;

/// Query of the events endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Replay events after this id (same as the `Last-Event-ID` header, which wins).
    #[param(minimum = 0)]
    after: Option<i64>,
}

/// Streams a job's events as Server-Sent Events.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id"), EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, description = "Resume after this event id")),
    responses(
        (status = 200, description = "`text/event-stream`: each event has `id:` (event row id), `event:` (job.queued, job.started, job.retrying, turn.edited, turn.critiqued, turn.chosen, job.succeeded, job.failed, job.canceled) and JSON `data:`; while a thinker generates, `turn.thinking` events without `id:` carry `{\"turn\", \"candidate\", \"delta\"}` reasoning text (not stored, not replayed); the stream ends after the terminal event", content_type = "text/event-stream"),
        (status = 204, description = "The job has finished and nothing is stored after the cursor: the EventSource standard's signal to stop reconnecting"),
        (status = 401, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad `Last-Event-ID` or `after`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's open streams on this replica are at the limit", body = crate::error::Problem, content_type = "application/problem+json")))]
#[allow(clippy::too_many_arguments)]
pub async fn job_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    method: Method,
    version: Version,
    conn: Option<Extension<ConnHandle>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    // `after` is the query's only field: a rejection is always about it,
    // and the extractor's own text speaks Rust.
    let Query(query) =
        query.map_err(|_| ApiError::invalid("after", "must be an event id (0 or more)"))?;
    let id = job_id(&id)?;
    let header_after = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be an event id"))?,
        ),
        None => None,
    };
    if query.after.is_some_and(|after| after < 0) {
        return Err(ApiError::invalid(
            "after",
            "must be an event id (0 or more)",
        ));
    }
    let after = header_after.or(query.after).unwrap_or(0);
    // Subscribe before reading the table, so nothing falls between the two.
    let feed = state.hub.subscribe(id, after);
    let job = owned_row(&state, &caller, id).await?;
    let slot = state.auth.open_stream(&caller.tenant)?;
    let replay = state.store.events_after(id, after).await?;
    if job.status.is_terminal() && replay.is_empty() {
        // Read after the status, so a finished job's terminal event is in
        // `replay` unless the cursor is already past it: nothing will come.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // Only a chunked GET body can be written by the hub (crates/api/src/direct.rs).
    let conn = conn.map(|Extension(ConnHandle(socket))| socket);
    // A socket error ends the stream whoever is writing it, so a client
    // gone while hyper does not read is noticed at once.
    let failed = conn
        .clone()
        .map(|socket| -> SocketFailed { Box::pin(socket.failed()) });
    let socket = conn.filter(|_| {
        state.sse_direct_writes && method == Method::GET && version == Version::HTTP_11
    });
    let untouched = Arc::new(Untouched::default());
    let cursor = Cursor {
        store: state.store.clone(),
        job: id,
        feed,
        socket,
        untouched: untouched.clone(),
        _slot: slot,
        _open: editthinker_core::metrics::OpenStream::open(),
        position: Position {
            last: after,
            pending: VecDeque::from([Batch::stored(&replay)]),
            ..Position::default()
        },
        keep_alive: keep_alive_timer(),
    };
    Ok((
        // For crates/api/src/direct.rs's `checked`: no hand-off unless
        // hyper gets this body's own frames.
        Extension(untouched.clone()),
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Tells nginx not to buffer the stream.
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::new(EventBody {
            next: ReusableBoxFuture::new(cursor.next_bytes()),
            handed: None,
            failed,
            untouched,
            ended: false,
        }),
    )
        .into_response())
}

/// The response body of a stream: the [`Cursor`]'s chunks, and the end
/// announced together with the terminal event, so the last frame and the
/// end of the chunked body leave in one write. Once the replay is sent,
/// the stream is handed to the hub when the connection allows it; the
/// body then only waits for the hub to say the stream ended or lagged.
struct EventBody {
    /// The wait for the next chunk; its allocation is reused for each.
    next: ReusableBoxFuture<'static, (Next, Cursor)>,
    /// While the hub writes the stream: the parked cursor and the socket.
    handed: Option<(Cursor, Arc<Socket>)>,
    /// Resolves when the connection's socket reports an error.
    failed: Option<SocketFailed>,
    /// Told each data frame, to check that hyper gets it as it is.
    untouched: Arc<Untouched>,
    ended: bool,
}

/// The wait for a socket error ([`Socket::failed`]).
type SocketFailed = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The error a stream's body fails with when its client is gone: hyper
/// then closes the connection, and dropping the body frees the stream's
/// slot and subscription.
fn client_gone() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "the event stream's client is gone",
    )
}

/// What a [`Cursor`] came to.
enum Next {
    /// A chunk to send.
    Send(Chunk),
    /// The stream is over.
    End,
    /// The hub writes the stream to this socket from now on.
    HandOff(Arc<Socket>),
}

/// One chunk of a stream, and whether it is the last.
struct Chunk {
    bytes: Bytes,
    last: bool,
}

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        loop {
            if self.ended {
                return std::task::Poll::Ready(None);
            }
            if let Some(failed) = self.failed.as_mut() {
                if failed.as_mut().poll(cx).is_ready() {
                    self.ended = true;
                    return std::task::Poll::Ready(Some(Err(client_gone())));
                }
            }
            if let Some((_, socket)) = &self.handed {
                match std::task::ready!(socket.poll_end(cx)) {
                    End::Finished | End::Shutdown => {
                        self.ended = true;
                        return std::task::Poll::Ready(None);
                    }
                    End::Broken => {
                        self.ended = true;
                        return std::task::Poll::Ready(Some(Err(client_gone())));
                    }
                    End::Lagged { last } => {
                        let (cursor, _) = self.handed.take().expect("handed");
                        self.next.set(cursor.resume(last));
                        continue;
                    }
                }
            }
            let (next, cursor) = std::task::ready!(self.next.poll(cx));
            return match next {
                Next::Send(chunk) => {
                    self.ended = chunk.last;
                    if !chunk.last {
                        // The cursor moves into the next wait.
                        self.next.set(cursor.next_bytes());
                    }
                    self.untouched.produced(&chunk.bytes);
                    std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk.bytes))))
                }
                Next::End => {
                    self.ended = true;
                    std::task::Poll::Ready(None)
                }
                Next::HandOff(socket) => {
                    self.handed = Some((cursor, socket));
                    continue;
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// One stream: its feed from the hub and its [`Position`].
struct Cursor {
    store: Arc<dyn Store>,
    job: Uuid,
    feed: Subscription,
    /// The connection's socket, while the stream may still be handed to
    /// the hub.
    socket: Option<Arc<Socket>>,
    /// Whether hyper gets this stream's frames as they are: the hand-off
    /// waits for that (crates/api/src/direct.rs).
    untouched: Arc<Untouched>,
    /// The tenant's stream slot in this process, freed when the stream ends.
    _slot: StreamSlot,
    /// Counts the stream in `editthinker_sse_streams` while it is open.
    _open: editthinker_core::metrics::OpenStream,
    position: Position,
    /// Fires every [`KEEP_ALIVE`]; one timer per stream for its whole life
    /// (a fresh timer per wait would touch the timer wheel at every event
    /// of every stream).
    keep_alive: tokio::time::Interval,
}

fn keep_alive_timer() -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

/// Events shared with every stream of the job (one read of the hub's, or
/// this stream's replay), and how many of them this stream has taken.
struct Batch {
    events: Arc<[StreamEvent]>,
    taken: usize,
}

impl Batch {
    fn new(events: Arc<[StreamEvent]>) -> Self {
        Self { events, taken: 0 }
    }

    /// This stream's own read of stored rows.
    fn stored(rows: &[EventRow]) -> Self {
        Self::new(rows.iter().map(StreamEvent::stored).collect())
    }
}

/// Where a stream stands, without IO: stored events not yet sent, live
/// events heard, and the id of the last stored event sent.
#[derive(Default)]
struct Position {
    last: i64,
    pending: VecDeque<Batch>,
    /// Live events (no id) waiting to be sent, oldest first.
    live: VecDeque<Arc<StreamEvent>>,
    done: bool,
}

/// What a stream does next.
enum Step {
    /// Send these bytes; `last` when nothing may follow them.
    Send { bytes: Bytes, last: bool },
    /// The stream is over.
    End,
    /// Nothing to send: wait for the hub.
    Wait,
}

impl Position {
    /// The next thing to do with what is buffered: live events heard first
    /// (they were announced before the stored rows read with or after
    /// them), then stored events in id order without duplicates; the end
    /// after the terminal event.
    fn step(&mut self) -> Step {
        if self.done {
            return Step::End;
        }
        if let Some(event) = self.live.pop_front() {
            return Step::Send {
                bytes: wire::sse_text(&event).clone(),
                last: false,
            };
        }
        while let Some(batch) = self.pending.front_mut() {
            let index = batch.taken;
            let Some(event) = batch.events.get(index) else {
                self.pending.pop_front();
                continue;
            };
            batch.taken += 1;
            let id = event.id.unwrap_or(i64::MIN);
            // Drop duplicates: ids only ever increase.
            if id <= self.last {
                continue;
            }
            self.last = id;
            let bytes = wire::sse_text(event).clone();
            // A terminal event followed by a stored `job.queued` was a
            // failure retried (`POST /v1/jobs/{id}/retry`): the stream goes on.
            // (Only a terminal event's batch is kept, to look past it.)
            let terminal = event.is_terminal().then(|| batch.events.clone());
            if let Some(events) = terminal {
                let buffered = self
                    .pending
                    .iter()
                    .flat_map(|batch| batch.events[batch.taken..].iter());
                if ends_stream_at(&events[index], buffered) {
                    self.done = true;
                    self.pending.clear();
                    self.live.clear();
                }
            }
            return Step::Send {
                bytes,
                last: self.done,
            };
        }
        Step::Wait
    }

    fn take(&mut self, feed: Feed) {
        match feed {
            Feed::Rows(events) => self.pending.push_back(Batch::new(events)),
            Feed::Live(event) => self.live.push_back(event),
        }
    }
}

impl Cursor {
    /// Waits for the stream's next chunk, its end, or its hand-off.
    async fn next_bytes(mut self) -> (Next, Self) {
        loop {
            match self.position.step() {
                Step::Send { bytes, last } => return (Next::Send(Chunk { bytes, last }), self),
                Step::End => return (Next::End, self),
                Step::Wait => {}
            }
            if let Some(socket) = self.socket.as_ref().filter(|_| self.untouched.verified()) {
                if self.feed.hand_off(socket, self.position.last) {
                    let socket = socket.clone();
                    return (Next::HandOff(socket), self);
                }
            }
            tokio::select! {
                // A comment keeps gateways and clients from timing the stream out.
                _ = self.keep_alive.tick() => {
                    let bytes = Bytes::from_static(wire::COMMENT);
                    return (Next::Send(Chunk { bytes, last: false }), self);
                }
                feed = self.feed.recv() => match feed {
                    Ok(feed) => self.position.take(feed),
                    Err(RecvError::Lagged(_)) => {
                        // Fell behind the hub: catch up from the table.
                        let last = self.position.last;
                        tracing::info!(
                            job_id = %self.job,
                            last_event_id = last,
                            "a stream fell behind the hub's feed; it catches up from the table"
                        );
                        match self.store.events_after(self.job, last).await {
                            Ok(rows) => self.position.pending.push_back(Batch::stored(&rows)),
                            Err(e) => {
                                tracing::warn!(error = %e, job_id = %self.job, "reading events failed");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                    // The hub dropped the feed: shutdown.
                    Err(RecvError::Closed) => return (Next::End, self),
                },
            }
        }
    }

    /// Takes the stream back from the hub after it lagged at stored event
    /// `last`: from now on at its own pace, from the table.
    async fn resume(mut self, last: i64) -> (Next, Self) {
        tracing::info!(
            job_id = %self.job,
            last_event_id = last,
            "a stream fell behind the hub's writes; it catches up from the table"
        );
        // Subscribed before reading, so nothing falls between the two; the
        // old subscription then leaves the hub.
        self.feed = self.feed.renew(last);
        self.socket = None;
        self.position = Position {
            last,
            ..Position::default()
        };
        match self.store.events_after(self.job, last).await {
            Ok(rows) => self.position.pending.push_back(Batch::stored(&rows)),
            // The hub's next read, or its safety net, brings them instead.
            Err(e) => tracing::warn!(error = %e, job_id = %self.job, "reading events failed"),
        }
        self.next_bytes().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream_event::test_row as row;

    fn rows(rows: Vec<EventRow>) -> Feed {
        Feed::Rows(rows.iter().map(StreamEvent::stored).collect())
    }

    fn sent(p: &mut Position) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match p.step() {
                Step::Send { bytes, .. } => {
                    let text = String::from_utf8(bytes.to_vec()).unwrap();
                    let field = |name: &str| {
                        text.lines()
                            .find_map(|l| l.strip_prefix(name))
                            .map(str::to_owned)
                    };
                    out.push(match field("id: ") {
                        Some(id) => format!("{id}:{}", field("event: ").unwrap()),
                        None => "live".into(),
                    });
                }
                Step::End => {
                    out.push("end".into());
                    return out;
                }
                Step::Wait => return out,
            }
        }
    }

    #[test]
    fn duplicates_and_rows_before_the_cursor_are_dropped() {
        let mut p = Position {
            last: 2,
            ..Position::default()
        };
        p.take(rows(vec![
            row(1, "job.queued"),
            row(2, "job.started"),
            row(3, "turn.edited"),
        ]));
        // The hub's read overlaps the replay.
        p.take(rows(vec![row(3, "turn.edited"), row(4, "turn.critiqued")]));
        assert_eq!(sent(&mut p), ["3:turn.edited", "4:turn.critiqued"]);
        assert_eq!(p.last, 4);
    }

    #[test]
    fn a_terminal_event_followed_by_a_retry_does_not_end_the_replay() {
        let mut p = Position::default();
        p.take(rows(vec![row(6, "job.failed"), row(7, "job.queued")]));
        p.take(rows(vec![row(8, "job.started")]));
        assert_eq!(
            sent(&mut p),
            ["6:job.failed", "7:job.queued", "8:job.started"]
        );
        assert!(!p.done);
    }

    #[test]
    fn live_events_go_first_and_nothing_follows_the_terminal_event() {
        let mut p = Position::default();
        p.take(rows(vec![
            row(5, "turn.critiqued"),
            row(6, "job.succeeded"),
            row(7, "job.retrying"),
        ]));
        p.take(Feed::Live(Arc::new(StreamEvent::live(
            Uuid::nil(),
            "turn.thinking",
            serde_json::json!({"turn": 1, "delta": "hm"}),
        ))));
        assert_eq!(
            sent(&mut p),
            ["live", "5:turn.critiqued", "6:job.succeeded", "end"]
        );
        // Anything heard after the end is never sent (a retry's events
        // come to a new request, which resumes after the terminal event).
        p.take(rows(vec![row(8, "job.queued")]));
        assert_eq!(sent(&mut p), ["end"]);
    }
}
