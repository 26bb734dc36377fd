//! `GET /v1/usage`: a tenant's paid provider calls over a period, summed
//! by editor (docs/api.md "Usage").

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use editthinker_core::Usage;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::AppState;

/// The longest period one request may sum: a year.
const MAX_PERIOD_DAYS: i64 = 366;

/// The period when `since` is absent: the 30 days before `until`.
const DEFAULT_PERIOD_DAYS: i64 = 30;

/// Query of `GET /v1/usage`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Start of the period, inclusive (RFC 3339; default 30 days before `until`).
    #[param(value_type = Option<DateTime<Utc>>)]
    since: Option<String>,
    /// End of the period, exclusive (RFC 3339; default now).
    #[param(value_type = Option<DateTime<Utc>>)]
    until: Option<String>,
}

/// One editor's share of a tenant's usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct EditorUsageView {
    /// The jobs' editor.
    pub editor: String,
    /// The sums of its jobs' calls (their thinker calls included).
    pub usage: Usage,
}

/// `GET /v1/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    /// Start of the period, inclusive.
    pub since: DateTime<Utc>,
    /// End of the period, exclusive.
    pub until: DateTime<Utc>,
    /// Every call of the tenant's jobs in the period.
    pub total: Usage,
    /// The same, by the jobs' editor, sorted by name.
    pub editors: Vec<EditorUsageView>,
}

fn instant(field: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::invalid(field, "must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z")
        })
}

/// The caller's usage over a period: calls recorded by workers (every
/// attempt's, a lost attempt's included), summed in total and by editor.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageReport),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn tenant_usage(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    let Query(query) = query
        .map_err(|_| ApiError::invalid("query", "takes only since and until (RFC 3339 times)"))?;
    let until = match &query.until {
        Some(raw) => instant("until", raw)?,
        None => Utc::now(),
    };
    let since = match &query.since {
        Some(raw) => instant("since", raw)?,
        None => until - Duration::days(DEFAULT_PERIOD_DAYS),
    };
    if since >= until {
        return Err(ApiError::invalid("since", "must be before until"));
    }
    if until - since > Duration::days(MAX_PERIOD_DAYS) {
        return Err(ApiError::invalid(
            "since",
            "must be at most 366 days before until",
        ));
    }
    let rows = state
        .store
        .tenant_usage(&caller.tenant, since, until)
        .await?;
    let total = Usage::total(rows.iter().map(|r| &r.usage), &state.currency);
    Ok(Json(UsageReport {
        since,
        until,
        total,
        editors: rows
            .into_iter()
            .map(|r| EditorUsageView {
                editor: r.editor,
                usage: r.usage,
            })
            .collect(),
    }))
}
