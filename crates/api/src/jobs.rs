//! Job handlers: create, read, list, cancel, and image bytes.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use editthinker_store::{
    BlobError, BlobStore, CreateCheck, IdempotentInsert, JobRow, JobStatus, JobWithTurns, NewJob,
    StoreError,
};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{wrong_status, ApiError, ErrorCode, Problem};
use crate::fanout::Feed;
use crate::intake::{self, ParsedCreate};
use crate::views::{Delivery, DeliveryList, Job, JobList, JobSummary};
use crate::{AppState, ThinkerSetup};

/// Creates a job from JSON or multipart.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,255}$", description = "1–255 visible ASCII characters: the same key with the same request within 24 h returns the original job (`Idempotent-Replayed: true`); with another request, 422 `idempotency_key_reused`"),
        ("Prefer" = Option<String>, Header, nullable = false, description = "`wait=N` (1–60): answer 200 with the finished job if it finishes within N seconds, else 202"),
    ),
    request_body(content(
        (intake::CreateJobRequest = "application/json"),
        (intake::CreateJobForm = "multipart/form-data"),
    ), description = "JSON, or multipart with an `image` file part and `instruction`, `editor`, `options` (JSON text), `metadata` (JSON text) fields."),
    responses(
        (status = 200, description = "Finished within `Prefer: wait=N` (1–60 s); `Preference-Applied: wait=N`. An idempotent replay of such an answer is 200 too, with `Idempotent-Replayed: true`", body = Job, headers(
            ("Location" = String, description = "The job's URL, `/v1/jobs/{id}`"),
            ("Preference-Applied" = String, description = "`wait=N`, the `Prefer: wait` that was honoured"),
            ("Idempotent-Replayed" = String, description = "`true` when an `Idempotency-Key` returned an earlier job"),
        )),
        (status = 202, description = "Queued; `Location` names the job. `Idempotent-Replayed: true` when an `Idempotency-Key` returned an earlier job whose first answer was 202", body = Job, headers(
            ("Location" = String, description = "The job's URL, `/v1/jobs/{id}`"),
            ("Idempotent-Replayed" = String, description = "`true` when an `Idempotency-Key` returned an earlier job"),
        )),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Image over the byte limit", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within `[limits] body_read_timeout_seconds`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither JSON nor multipart", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks a rule", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No thinker or editor configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_job(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(request.headers())?;
    let wait = prefer_wait(request.headers())?;
    // The request span continues the caller's `traceparent`
    // (`crate::request_span`); the worker continues the job's.
    let traceparent = editthinker_core::trace::job_traceparent(
        &tracing::Span::current(),
        request
            .headers()
            .get(editthinker_core::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let body_timeout = state.limits.body_read_timeout;
    let slow = || {
        ApiError::BodyTimeout(format!(
            "the body did not arrive within {} s",
            body_timeout.as_secs()
        ))
    };
    let parsed = if content_type.starts_with("application/json") {
        let body = tokio::time::timeout(body_timeout, Bytes::from_request(request, &state))
            .await
            .map_err(|_| slow())?
            .map_err(|e| body_error(e.status(), e.body_text(), &state.limits))?;
        intake::parse_json(&body, &state.limits).await?
    } else if content_type.starts_with("multipart/form-data") {
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| body_error(e.status(), e.body_text(), &state.limits))?;
        tokio::time::timeout(
            body_timeout,
            intake::parse_multipart(multipart, &state.limits),
        )
        .await
        .map_err(|_| slow())??
    } else {
        return Err(ApiError::UnsupportedMediaType(content_type));
    };
    let (mut job, replayed) = insert(
        &state,
        &caller,
        parsed,
        idempotency_key.as_deref(),
        traceparent,
    )
    .await?;
    let location = format!("/v1/jobs/{}", job.id);
    let mut status = StatusCode::ACCEPTED;
    if let Some(original) = replayed {
        // A replay answers what the first request was answered, with the
        // job as it is now.
        status = StatusCode::from_u16(original).unwrap_or(StatusCode::ACCEPTED);
    } else if let Some(seconds) = wait {
        if let Some(finished) = wait_until_finished(&state, &caller, job.id, seconds).await? {
            job = finished;
            status = StatusCode::OK;
            if let Some(key) = &idempotency_key {
                let recorded = state
                    .store
                    .record_idempotent_status(&caller.tenant, key, status.as_u16())
                    .await;
                if let Err(e) = recorded {
                    // The answer stands; only its replays would say 202.
                    tracing::warn!(error = %e, "recording the answered status of an idempotent create failed");
                }
            }
        }
    }
    let mut response = (status, [(header::LOCATION, location)], Json(job)).into_response();
    if status == StatusCode::OK && replayed.is_none() {
        let applied = HeaderValue::from_str(&format!("wait={}", wait.unwrap_or_default()))
            .expect("digits are a header value");
        response
            .headers_mut()
            .insert(HeaderName::from_static("preference-applied"), applied);
    }
    if replayed.is_some() {
        response.headers_mut().insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// Longest `Prefer: wait`, in seconds.
pub const MAX_PREFER_WAIT: u64 = 60;

/// `Prefer: wait=N` (RFC 7240), N from 1 to [`MAX_PREFER_WAIT`]; other
/// preferences are ignored.
fn prefer_wait(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let mut wait = None;
    for value in headers.get_all("prefer") {
        let text = value
            .to_str()
            .map_err(|_| ApiError::invalid("Prefer", "must be ASCII"))?;
        for preference in text.split(',') {
            let token = preference.split(';').next().unwrap_or_default().trim();
            let Some((name, seconds)) = token.split_once('=') else {
                continue;
            };
            if !name.trim().eq_ignore_ascii_case("wait") {
                continue;
            }
            let seconds = seconds.trim().trim_matches('"');
            match seconds.parse::<u64>() {
                Ok(n) if (1..=MAX_PREFER_WAIT).contains(&n) => wait = Some(n),
                _ => {
                    return Err(ApiError::invalid(
                        "Prefer",
                        format!("wait must be 1 to {MAX_PREFER_WAIT} seconds (got {seconds:?})"),
                    ))
                }
            }
        }
    }
    Ok(wait)
}

/// Waits up to `seconds` for the job to finish, through this process's
/// event hub (so it works with the worker in another process); the
/// finished job, or `None` when it is still going.
async fn wait_until_finished(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    seconds: u64,
) -> Result<Option<Job>, ApiError> {
    use tokio::sync::broadcast::error::RecvError;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    // Subscribed before the status is read: a finish in between is heard.
    let mut feed = state.hub.subscribe(id, 0);
    loop {
        let read = read_job(state, caller, id, false).await?;
        if read.job.status.is_terminal() {
            return Ok(Some(job_json(state, &read)));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        // The hub announces the end; the status is also read again every
        // couple of seconds, in case no notice reaches this process (SQLite
        // with the worker in another process, a LISTEN reconnect).
        let recheck = (tokio::time::Instant::now() + WAIT_RECHECK).min(deadline);
        loop {
            match tokio::time::timeout_at(recheck, feed.recv()).await {
                Ok(Err(RecvError::Closed)) => return Ok(None),
                Ok(Ok(Feed::Rows(events))) if events.iter().any(|e| e.is_terminal()) => break,
                Ok(Ok(_)) => {}
                // Time to look again, or fell behind the hub.
                Err(_) | Ok(Err(RecvError::Lagged(_))) => break,
            }
        }
    }
}

/// How often a `Prefer: wait` reads the job's status again.
const WAIT_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters (no spaces)",
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// A digest of everything a create request asks for (the image bytes and
/// every field), so a replayed key can tell the same request from another.
fn request_digest(parsed: &ParsedCreate) -> String {
    use sha2::{Digest, Sha256};
    let fields = serde_json::json!({
        "instruction": parsed.instruction,
        "editor": parsed.editor,
        "options": parsed.options,
        "metadata": parsed.metadata,
        "webhook": parsed.webhook,
        "priority": parsed.priority,
    });
    let mut hasher = Sha256::new();
    hasher.update(Sha256::digest(&parsed.image));
    hasher.update(fields.to_string().as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn body_error(status: StatusCode, text: String, limits: &intake::Limits) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge {
            field: "body".into(),
            detail: format!(
                "the body is over the limit of {} bytes (a base64 image of up to \
                 [limits] max_image_bytes = {} bytes, plus 1 MiB for the other fields); \
                 send a smaller image, or its URL as image.url",
                crate::body_limit(limits),
                limits.max_image_bytes
            ),
        }
    } else {
        ApiError::Malformed {
            field: None,
            detail: text,
        }
    }
}

/// Stores the source image and inserts the job (under the idempotency key
/// when there is one); `true` when the key replayed an earlier job.
async fn insert(
    state: &AppState,
    caller: &Caller,
    parsed: ParsedCreate,
    idempotency_key: Option<&str>,
    traceparent: Option<String>,
) -> Result<(Job, Option<u16>), ApiError> {
    let editor = resolve_editor(state, parsed.editor.as_deref())?;
    if state.thinker == ThinkerSetup::Missing {
        return Err(ApiError::NotConfigured(
            "no thinker is configured: set [thinker] (kind, base_url, model) in the configuration or EDITTHINKER_THINKER__* variables".into(),
        ));
    }
    if let Some(webhook) = &parsed.webhook {
        if !state.webhooks_configured
            && state
                .store
                .tenant_webhook_secret(&caller.tenant)
                .await?
                .is_none()
        {
            return Err(ApiError::NotConfigured(
                "webhooks are not configured: set [webhooks] secret_env to the name of an environment variable holding a whsec_… secret".into(),
            ));
        }
        intake::check_webhook_address(&webhook.url, &state.limits).await?;
    }
    let digest = idempotency_key.map(|_| request_digest(&parsed));
    // Everything that can refuse or replay the create is asked before the
    // image is decoded or stored: a refused create and a replay store
    // nothing. The limit is not counted for a tenant this process knows
    // to be well under it (crates/api/src/headroom.rs).
    let idempotency = idempotency_key.zip(digest.as_deref());
    let limit = state
        .max_active_jobs_per_tenant
        .filter(|&limit| !state.headroom.well_under(&caller.tenant, limit));
    match state
        .store
        .check_create(&caller.tenant, limit, idempotency)
        .await?
    {
        CreateCheck::Answered(outcome) => return idempotent_outcome(state, caller, *outcome).await,
        CreateCheck::Proceed {
            active_jobs: Some(active),
        } => state.headroom.counted(&caller.tenant, active),
        CreateCheck::Proceed { active_jobs: None } => {}
    }
    let image = intake::validate_image(parsed.image, &state.limits).await?;
    let id = Uuid::now_v7();
    let source_key = BlobStore::source_key(id, image.format.extension());
    state
        .blobs
        .put(&source_key, image.bytes.clone())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let deadline_seconds = parsed.options.deadline_seconds;
    let sandbox = state.runs_sandbox(&editor);
    let job = NewJob {
        id,
        tenant: caller.tenant.to_string(),
        active_limit: state.max_active_jobs_per_tenant,
        deadline_seconds,
        instruction: parsed.instruction,
        editor,
        options: serde_json::to_value(parsed.options).expect("options serialize"),
        metadata: parsed.metadata,
        source_key,
        source_mime: image.format.mime().to_string(),
        max_attempts: state.max_attempts,
        priority: parsed.priority,
        webhook: parsed
            .webhook
            .map(|w| serde_json::to_value(w).expect("webhook serializes")),
        traceparent,
        sandbox,
    };
    let inserted = match idempotency {
        Some((key, digest)) => state.store.insert_job_idempotent(job, key, digest).await,
        None => state
            .store
            .insert_job(job)
            .await
            .map(IdempotentInsert::Created),
    };
    if let Err(StoreError::ActiveJobsLimit { .. }) = &inserted {
        state.headroom.refused(&caller.tenant);
    }
    let row = match inserted {
        Ok(IdempotentInsert::Created(row)) => row,
        // Refused or replayed after all (a concurrent create got in
        // between the check and the insert): the image stored above
        // belongs to no job.
        other => {
            if let Err(e) = state.blobs.delete_job(id).await {
                tracing::warn!(job_id = %id, error = %e, "removing an unused source image failed; the retention sweep will");
            }
            return idempotent_outcome(state, caller, other?).await;
        }
    };
    state.headroom.created(&caller.tenant);
    editthinker_core::metrics::job_created();
    tracing::info!(job_id = %row.id, editor = %row.editor, "job queued");
    // No queue position in the create's answer: ranking a new job costs
    // the database as much as the queue is deep, on the hottest write
    // path; a read of the job has it (docs/api.md).
    let read = JobWithTurns {
        jobs_ahead: None,
        job: row,
        turns: Vec::new(),
        ledger: Default::default(),
        candidates: Vec::new(),
    };
    Ok((job_json(state, &read), None))
}

/// The answer to a create whose idempotency key was seen before: the
/// earlier job as it is now (it may have run since), or a refusal when the
/// key was used for another request.
async fn idempotent_outcome(
    state: &AppState,
    caller: &Caller,
    outcome: IdempotentInsert,
) -> Result<(Job, Option<u16>), ApiError> {
    let (row, status) = match outcome {
        IdempotentInsert::Replayed { job, status } => (job, status),
        // A created job never comes here (the create answers it itself);
        // were it to, it is the first answer: 202.
        IdempotentInsert::Created(job) => (job, 202),
        IdempotentInsert::KeyReused => {
            return Err(ApiError::Invalid {
                code: ErrorCode::IdempotencyKeyReused,
                field: "Idempotency-Key".into(),
                rule: "was used in the last 24 hours for a different request (other image or fields); use a new key".into(),
            })
        }
    };
    let read = read_job(state, caller, row.id, true).await?;
    Ok((job_json(state, &read), Some(status)))
}

/// The job JSON: its turns, when its record expires, and its place in
/// the queue when that was read ([`JobWithTurns::jobs_ahead`]).
fn job_json(state: &AppState, read: &JobWithTurns) -> Job {
    let row = &read.job;
    let mut job = Job::from_read(read);
    if read.ledger.entries.is_empty() {
        // A job without paid calls (never claimed: its ledger was not read)
        // shows this configuration's currency.
        job.usage.currency.clone_from(&state.currency);
    }
    job.expires_at = row
        .finished_at
        .zip(
            state
                .retention
                .and_then(|k| chrono::Duration::from_std(k).ok()),
        )
        .map(|(finished, keep)| finished + keep);
    if row.status == JobStatus::Queued {
        job.queue_position = read.jobs_ahead.map(|ahead| ahead + 1);
    }
    job
}

/// The caller's job `id` with its turns and, with `position`, its place in
/// the queue: one query ([`editthinker_store::Store::job_with_turns`]),
/// which ranks the job itself only when this process's snapshot
/// (crates/api/src/positions.rs) ranked only the queue's front; a second
/// one for a queued job the snapshot does not know (queued since it was
/// taken, or no fresh snapshot).
async fn read_job(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    position: bool,
) -> Result<JobWithTurns, ApiError> {
    use crate::positions::Position;
    let known = position.then(|| state.positions.look(id)).flatten();
    let mut read = state
        .store
        .job_with_turns(id, &caller.tenant, known == Some(Position::Unknown))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    if position && read.job.status == JobStatus::Queued {
        state.positions.keep_fresh();
        match known {
            Some(Position::Ahead(ahead)) => read.jobs_ahead = Some(ahead),
            // Ranked by the read itself.
            Some(Position::Unknown) => {}
            // No fresh snapshot: wait for the ranking under way.
            None => match state.positions.look_fresh(id).await {
                Some(Position::Ahead(ahead)) => read.jobs_ahead = Some(ahead),
                _ => read.jobs_ahead = state.store.jobs_ahead(id).await?,
            },
            // Queued since the snapshot was taken.
            Some(Position::NotQueued) => {
                read.jobs_ahead = state.store.jobs_ahead(id).await?;
            }
        }
    }
    Ok(read)
}

fn resolve_editor(state: &AppState, requested: Option<&str>) -> Result<String, ApiError> {
    if state.editors.is_empty() {
        return Err(ApiError::NotConfigured(
            "no editor is configured: add an [editors.<name>] section (kind, url) to the configuration".into(),
        ));
    }
    match requested {
        Some(name) => state
            .editors
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.name.clone())
            .ok_or_else(|| ApiError::Invalid {
                code: ErrorCode::UnknownEditor,
                field: "editor".into(),
                rule: format!(
                    "no editor named {name:?}; configured editors: {}",
                    state.editor_names()
                ),
            }),
        None => state
            .editors
            .iter()
            .find(|e| e.default)
            .or(state.editors.first())
            .map(|e| e.name.clone())
            .ok_or_else(|| ApiError::invalid("editor", "is required: no default editor")),
    }
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs with this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// Page size, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    cursor: Option<String>,
}

/// Lists jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    // `status` and `cursor` arrive as text and are checked below: only
    // `limit` can fail to parse, and the extractor's own text speaks Rust.
    let Query(query) =
        query.map_err(|_| ApiError::invalid("limit", "must be an integer from 1 to 100"))?;
    let status = query
        .status
        .as_deref()
        .map(|s| {
            JobStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    "must be one of queued, running, succeeded, failed, canceled",
                )
            })
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 100"));
    }
    let cursor = query
        .cursor
        .as_deref()
        .map(|c| Uuid::parse_str(c).map_err(|_| ApiError::invalid("cursor", "must be a job id")))
        .transpose()?;
    let rows = state
        .store
        .list_jobs(&caller.tenant, status, limit + 1, cursor)
        .await?;
    let more = rows.len() > limit as usize;
    let jobs: Vec<JobSummary> = rows
        .iter()
        .take(limit as usize)
        .map(JobSummary::from_row)
        .collect();
    let next_cursor = if more {
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok(Json(JobList { jobs, next_cursor }))
}

/// Parses a job id path segment.
pub(crate) fn job_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(format!("job {raw} not found")))
}

/// The caller's job named by a path segment. Another tenant's job is
/// `404` like a job that does not exist: one query either way, and the
/// same answer.
async fn load(state: &AppState, caller: &Caller, raw: &str) -> Result<JobRow, ApiError> {
    owned_row(state, caller, job_id(raw)?).await
}

/// The caller's job `id` (see [`load`]). The tenant is part of the query,
/// so another tenant's job and a missing one take the same path and time
/// (finding 10: comparing tenants after loading the row answered a foreign
/// id measurably slower).
pub(crate) async fn owned_row(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<JobRow, ApiError> {
    state
        .store
        .get_job_for_tenant(id, &caller.tenant)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))
}

/// A job with its turns.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, body = Job),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let read = read_job(&state, &caller, job_id(&id)?, true).await?;
    Ok(Json(job_json(&state, &read)))
}

/// Lists a job's webhook deliveries.
#[utoipa::path(get, path = "/v1/jobs/{id}/webhooks", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job's deliveries, in event order (empty without a webhook)", body = DeliveryList),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list_webhook_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeliveryList>, ApiError> {
    let row = load(&state, &caller, &id).await?;
    let deliveries = state.store.list_deliveries(row.id).await?;
    Ok(Json(DeliveryList {
        deliveries: deliveries.iter().map(Delivery::from_row).collect(),
    }))
}

/// Cancels a queued or running job.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 202, description = "Canceled (queued job) or cancel requested (running job)", body = Job),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already finished", body = Problem, content_type = "application/problem+json")))]
pub async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let id = load(&state, &caller, &id).await?.id;
    let row = state.store.request_cancel(id).await?;
    let turns = state.store.list_turns(id).await?;
    // Candidates are read only when a turn chose one of several, as
    // `Store::job_with_turns` does.
    let candidates = if turns.iter().any(|t| t.chosen.is_some()) {
        state.store.list_candidates(id).await?
    } else {
        Vec::new()
    };
    let read = JobWithTurns {
        turns,
        candidates,
        ledger: state.store.job_calls(id).await?,
        job: row,
        jobs_ahead: None,
    };
    Ok((StatusCode::ACCEPTED, Json(job_json(&state, &read))))
}

/// Puts a failed job back in the queue; it resumes after its last recorded
/// turn, with a fresh set of attempts.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 202, description = "Queued again", body = Job),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not `failed` (code `job_not_failed`)", body = Problem, content_type = "application/problem+json")))]
pub async fn retry_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let id = load(&state, &caller, &id).await?.id;
    let row = match state.store.retry_failed(id, state.max_attempts).await {
        Err(StoreError::Conflict { id, status }) => {
            return Err(ApiError::Conflict {
                code: ErrorCode::JobNotFailed,
                detail: format!("job {id} is {status}; only a failed job can be retried"),
            })
        }
        other => other?,
    };
    tracing::info!(job_id = %row.id, "failed job queued again");
    // The answer shows the job as the retry left it (queued), even when a
    // worker has claimed it by the time its turns and ledger are read.
    let read = JobWithTurns {
        job: row,
        ..read_job(&state, &caller, id, true).await?
    };
    Ok((StatusCode::ACCEPTED, Json(job_json(&state, &read))))
}

/// The source image bytes.
#[utoipa::path(get, path = "/v1/jobs/{id}/source", tag = "images",
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, description = "Image bytes", content_type = "image/*"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn source_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = load(&state, &caller, &id).await?;
    blob_response(&state, &row.source_key, &row.source_mime).await
}

/// One turn's image bytes (turns count from 1).
#[utoipa::path(get, path = "/v1/jobs/{id}/turns/{n}/image", tag = "images",
    params(("id" = Uuid, Path, description = "Job id"), ("n" = u32, Path, description = "Turn number, from 1")),
    responses((status = 200, description = "PNG bytes", content_type = "image/png"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn turn_image(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (row, n) = load_turn_path(&state, &caller, &id, &n).await?;
    let turns = state.store.list_turns(row.id).await?;
    let turn = turns
        .iter()
        .find(|t| t.index == n)
        .ok_or_else(|| no_turn(row.id, n))?;
    blob_response(&state, &turn.image_key, &turn.image_mime).await
}

/// One candidate's image bytes: in a turn of several, as soon as the
/// candidate is edited (before the turn chose one); in a one-candidate
/// turn, candidate 0 is the turn's image.
#[utoipa::path(get, path = "/v1/jobs/{id}/turns/{n}/candidates/{c}/image", tag = "images",
    params(("id" = Uuid, Path, description = "Job id"), ("n" = u32, Path, description = "Turn number, from 1"),
        ("c" = u32, Path, description = "Candidate number within the turn, from 0")),
    responses((status = 200, description = "PNG bytes", content_type = "image/png"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn candidate_image(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, n, c)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let (row, n) = load_turn_path(&state, &caller, &id, &n).await?;
    let missing = || {
        ApiError::NotFound(format!(
            "job {} has no edited candidate {c} of turn {n}",
            row.id
        ))
    };
    let c: u32 = c.parse().map_err(|_| missing())?;
    let candidates = state.store.list_candidates(row.id).await?;
    let (key, mime) = if candidates.iter().any(|r| r.turn == n) {
        // A turn of several (chosen or not yet): the candidate's own row,
        // once edited.
        candidates
            .into_iter()
            .find(|r| r.turn == n && r.index == c)
            .and_then(|r| r.image_key.zip(r.image_mime))
            .ok_or_else(missing)?
    } else {
        // A one-candidate turn: candidate 0 is the turn.
        state
            .store
            .list_turns(row.id)
            .await?
            .into_iter()
            .find(|t| t.index == n && t.chosen.is_none() && c == 0)
            .map(|t| (t.image_key, t.image_mime))
            .ok_or_else(missing)?
    };
    blob_response(&state, &key, &mime).await
}

/// The caller's job and the turn number of an image path
/// (`/v1/jobs/{id}/turns/{n}/...`): a number that is not one is a turn
/// the job does not have.
async fn load_turn_path(
    state: &AppState,
    caller: &Caller,
    id: &str,
    n: &str,
) -> Result<(JobRow, u32), ApiError> {
    let row = load(state, caller, id).await?;
    let n = n.parse().map_err(|_| no_turn(row.id, n))?;
    Ok((row, n))
}

/// The 404 of a turn job `job` does not have.
fn no_turn(job: Uuid, n: impl std::fmt::Display) -> ApiError {
    ApiError::NotFound(format!("job {job} has no turn {n}"))
}

/// The selected result's image bytes.
#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "images",
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, description = "PNG bytes", content_type = "image/png"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has not succeeded", body = Problem, content_type = "application/problem+json")))]
pub async fn result_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = load(&state, &caller, &id).await?;
    let (JobStatus::Succeeded, Some(n)) = (row.status, row.result_turn) else {
        return Err(wrong_status(
            row.id,
            row.status,
            "the result exists once it succeeded",
        ));
    };
    let turns = state.store.list_turns(row.id).await?;
    let turn = turns
        .iter()
        .find(|t| t.index == n)
        .ok_or_else(|| ApiError::Internal(format!("job {} result turn {n} missing", row.id)))?;
    blob_response(&state, &turn.image_key, &turn.image_mime).await
}

async fn blob_response(state: &AppState, key: &str, mime: &str) -> Result<Response, ApiError> {
    let bytes = state.blobs.get(key).await.map_err(|e| match e {
        BlobError::NotFound(_) => ApiError::NotFound(format!("image {key} is missing")),
        other => ApiError::Internal(other.to_string()),
    })?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        mime.parse()
            .unwrap_or(header::HeaderValue::from_static("application/octet-stream")),
    );
    // Per-write keys never change once written; older turn keys might.
    let cache = if BlobStore::is_immutable_key(key) {
        "private, max-age=31536000, immutable"
    } else {
        "private, no-cache"
    };
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static(cache),
    );
    Ok((headers, Body::from(bytes)).into_response())
}
