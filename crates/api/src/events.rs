//! `GET /v1/jobs/{id}/events`: stored events replayed after `Last-Event-ID`,
//! then live ones, until the terminal event (DESIGN.md §7).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use editthinker_store::{event_type, EventRow, Notice};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::ApiError;
use crate::jobs::job_id;
use crate::views::{result_url, turn_image_url, CritiqueView};
use crate::AppState;
use editthinker_core::CritiqueRecord;

/// How often the table is re-read even without a notice, as a safety net.
const REREAD_EVERY: Duration = Duration::from_secs(2);

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
        (status = 200, description = "`text/event-stream`: each event has `id:` (event row id), `event:` (job.queued, job.started, turn.edited, turn.critiqued, job.succeeded, job.failed, job.canceled) and JSON `data:`; while a thinker generates, `turn.thinking` events without `id:` carry `{\"turn\", \"delta\"}` reasoning text (not stored, not replayed); the stream ends after the terminal event", content_type = "text/event-stream"),
        (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
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
    let notices = state.store.subscribe();
    if state.store.get_job(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("job {id} not found")));
    }
    let stream = futures::stream::unfold(
        Cursor {
            state,
            job: id,
            last: after,
            notices,
            pending: Vec::new(),
            live: Default::default(),
            done: false,
        },
        Cursor::next_event,
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Cursor {
    state: AppState,
    job: Uuid,
    last: i64,
    notices: tokio::sync::broadcast::Receiver<Notice>,
    pending: Vec<EventRow>,
    /// Live events (no id) waiting to be sent, oldest first.
    live: std::collections::VecDeque<Event>,
    done: bool,
}

impl Cursor {
    async fn next_event(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.live.pop_front() {
                if !self.done {
                    return Some((Ok(event), self));
                }
            }
            if let Some(row) = self.pending.pop() {
                // Drop duplicates: ids only ever increase.
                if row.id <= self.last {
                    continue;
                }
                self.last = row.id;
                if is_terminal(&row.kind) {
                    self.done = true;
                    self.pending.clear();
                }
                return Some((Ok(to_sse(&row)), self));
            }
            if self.done || self.state.shutdown.is_cancelled() {
                return None;
            }
            // Live events already heard go out before stored rows read now,
            // which were written after them.
            if self.drain_live() {
                continue;
            }
            match self.state.store.events_after(self.job, self.last).await {
                Ok(mut rows) if !rows.is_empty() => {
                    rows.reverse(); // pop() takes from the end
                    self.pending = rows;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, job_id = %self.job, "reading events failed");
                }
            }
            self.wait_for_news().await;
        }
    }

    /// Queues this job's live events already received, without waiting;
    /// returns whether any were queued.
    fn drain_live(&mut self) -> bool {
        let before = self.live.len();
        while let Ok(notice) = self.notices.try_recv() {
            if let Notice::Live { job_id, kind, data } = notice {
                self.queue_live(job_id, &kind, data);
            }
        }
        self.live.len() > before
    }

    /// Queues a live event if it is about this job; returns whether it was.
    fn queue_live(&mut self, job_id: Uuid, kind: &str, data: serde_json::Value) -> bool {
        let ours = job_id == self.job;
        if ours {
            self.live.push_back(live_sse(job_id, kind, data));
        }
        ours
    }

    /// Waits for a notice about this job, a resync, lag, or the re-read timer.
    async fn wait_for_news(&mut self) {
        let deadline = tokio::time::sleep(REREAD_EVERY);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = self.state.shutdown.cancelled() => return,
                notice = self.notices.recv() => match notice {
                    Ok(Notice::Event { job_id, event_id, .. }) => {
                        if job_id == self.job && event_id > self.last {
                            return;
                        }
                    }
                    Ok(Notice::Live { job_id, kind, data }) => {
                        if self.queue_live(job_id, &kind, data) {
                            return;
                        }
                    }
                    Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => {
                        // No more notices; rely on the timer.
                        (&mut deadline).await;
                        return;
                    }
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
