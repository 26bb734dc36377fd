//! `GET /v1/jobs/{id}/events`: stored events replayed after `Last-Event-ID`,
//! then live ones, until the terminal event (DESIGN.md §7).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use editthinker_store::{event_type, EventRow};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::ApiError;
use crate::fanout::{Feed, Subscription};
use crate::jobs::job_id;
use crate::views::{result_url, turn_image_url, CritiqueView};
use crate::AppState;
use editthinker_core::CritiqueRecord;

/// Query of the events endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Replay events after this id (same as the `Last-Event-ID` header, which wins).
    after: Option<i64>,
}

/// Streams a job's events as Server-Sent Events.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id"), EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "`text/event-stream`: each event has `id:` (event row id), `event:` (job.queued, job.started, job.retrying, turn.edited, turn.critiqued, job.succeeded, job.failed, job.canceled) and JSON `data:`; while a thinker generates, `turn.thinking` events without `id:` carry `{\"turn\", \"delta\"}` reasoning text (not stored, not replayed); the stream ends after the terminal event", content_type = "text/event-stream"),
        (status = 204, description = "The job has finished and nothing is stored after the cursor: the EventSource standard's signal to stop reconnecting"),
        (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("after", e.body_text()))?;
    let id = job_id(&id)?;
    let header_after = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be an event id"))?,
        ),
        None => None,
    };
    let after = header_after.or(query.after).unwrap_or(0);
    // Subscribe before reading the table, so nothing falls between the two.
    let feed = state.hub.subscribe(id, after);
    let Some(job) = state.store.get_job(id).await? else {
        return Err(ApiError::NotFound(format!("job {id} not found")));
    };
    let replay = state.store.events_after(id, after).await?;
    if job.status.is_terminal() && replay.is_empty() {
        // Read after the status, so a finished job's terminal event is in
        // `replay` unless the cursor is already past it: nothing will come.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let stream = futures::stream::unfold(
        Cursor {
            state,
            job: id,
            feed,
            position: Position {
                last: after,
                pending: replay.into(),
                ..Position::default()
            },
        },
        Cursor::next_event,
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One stream: its feed from the hub and its [`Position`].
struct Cursor {
    state: AppState,
    job: Uuid,
    feed: Subscription,
    position: Position,
}

/// Where a stream stands, without IO: stored rows not yet sent, live
/// events heard, and the id of the last stored event sent.
#[derive(Default)]
struct Position {
    last: i64,
    pending: VecDeque<EventRow>,
    /// Live events (no id) waiting to be sent, oldest first.
    live: VecDeque<Event>,
    done: bool,
}

/// What a stream does next.
enum Step {
    /// Send this stored event.
    Stored(EventRow),
    /// Send this live event.
    Live(Event),
    /// The stream is over.
    End,
    /// Nothing to send: wait for the hub.
    Wait,
}

impl Position {
    /// The next thing to do with what is buffered: live events heard first
    /// (they were announced before the stored rows read with or after
    /// them), then stored rows in id order without duplicates; the end
    /// after the terminal event.
    fn step(&mut self) -> Step {
        if self.done {
            return Step::End;
        }
        if let Some(event) = self.live.pop_front() {
            return Step::Live(event);
        }
        while let Some(row) = self.pending.pop_front() {
            // Drop duplicates: ids only ever increase.
            if row.id <= self.last {
                continue;
            }
            self.last = row.id;
            if is_terminal(&row.kind) {
                self.done = true;
                self.pending.clear();
                self.live.clear();
            }
            return Step::Stored(row);
        }
        Step::Wait
    }

    fn take(&mut self, job: Uuid, feed: Feed) {
        match feed {
            Feed::Rows(rows) => self.pending.extend(rows.iter().cloned()),
            Feed::Live { kind, data } => {
                self.live
                    .push_back(live_sse(job, &kind, data.as_ref().clone()))
            }
        }
    }
}

impl Cursor {
    async fn next_event(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            match self.position.step() {
                Step::Stored(row) => return Some((Ok(to_sse(&row)), self)),
                Step::Live(event) => return Some((Ok(event), self)),
                Step::End => return None,
                Step::Wait => {}
            }
            tokio::select! {
                _ = self.state.shutdown.cancelled() => return None,
                feed = self.feed.recv() => match feed {
                    Ok(feed) => self.position.take(self.job, feed),
                    Err(RecvError::Lagged(_)) => {
                        // Fell behind the hub: catch up from the table.
                        let last = self.position.last;
                        match self.state.store.events_after(self.job, last).await {
                            Ok(rows) => self.position.pending.extend(rows),
                            Err(e) => {
                                tracing::warn!(error = %e, job_id = %self.job, "reading events failed");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                    // The hub is gone (shutdown).
                    Err(RecvError::Closed) => return None,
                },
            }
        }
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
fn live_sse(job_id: Uuid, kind: &str, mut data: serde_json::Value) -> Event {
    if let Some(map) = data.as_object_mut() {
        map.insert("job_id".into(), job_id.to_string().into());
    }
    Event::default().event(kind).data(data.to_string())
}

/// The event as sent: the stored data plus the job id and image URLs.
fn to_sse(row: &EventRow) -> Event {
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
    Event::default()
        .id(row.id.to_string())
        .event(row.kind.as_str())
        .data(data.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn row(id: i64, kind: &str) -> EventRow {
        EventRow {
            id,
            job_id: Uuid::nil(),
            kind: kind.into(),
            data: serde_json::json!({}),
            created_at: chrono::Utc::now(),
        }
    }

    fn sent(p: &mut Position) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match p.step() {
                Step::Stored(r) => out.push(format!("{}:{}", r.id, r.kind)),
                Step::Live(_) => out.push("live".into()),
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
        p.take(
            Uuid::nil(),
            Feed::Rows(
                vec![
                    row(1, "job.queued"),
                    row(2, "job.started"),
                    row(3, "turn.edited"),
                ]
                .into(),
            ),
        );
        // The hub's read overlaps the replay.
        p.take(
            Uuid::nil(),
            Feed::Rows(vec![row(3, "turn.edited"), row(4, "turn.critiqued")].into()),
        );
        assert_eq!(sent(&mut p), ["3:turn.edited", "4:turn.critiqued"]);
        assert_eq!(p.last, 4);
    }

    #[test]
    fn live_events_go_first_and_nothing_follows_the_terminal_event() {
        let mut p = Position::default();
        p.take(
            Uuid::nil(),
            Feed::Rows(
                vec![
                    row(5, "turn.critiqued"),
                    row(6, "job.succeeded"),
                    row(7, "job.retrying"),
                ]
                .into(),
            ),
        );
        p.take(
            Uuid::nil(),
            Feed::Live {
                kind: "turn.thinking".into(),
                data: Arc::new(serde_json::json!({"turn": 1, "delta": "hm"})),
            },
        );
        assert_eq!(
            sent(&mut p),
            ["live", "5:turn.critiqued", "6:job.succeeded", "end"]
        );
        // Anything heard after the end is never sent.
        p.take(Uuid::nil(), Feed::Rows(vec![row(8, "job.queued")].into()));
        assert_eq!(sent(&mut p), ["end"]);
    }
}
