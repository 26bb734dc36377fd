//! The API layer's errors and their RFC 9457 problem responses.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use editthinker_store::{JobStatus, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem body (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong in this case.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
    /// The request field at fault, as a dotted path, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Everything a handler can answer instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not well-formed JSON or multipart.
    #[error("{detail}")]
    Malformed {
        /// Field, when one can be named.
        field: Option<String>,
        /// What is wrong.
        detail: String,
    },
    /// A field breaks a rule.
    #[error("{field}: {rule}")]
    Invalid {
        /// Stable code.
        code: &'static str,
        /// Dotted field path.
        field: String,
        /// The rule broken.
        rule: String,
    },
    /// An upload or download over the byte limit.
    #[error("{field}: {detail}")]
    TooLarge {
        /// Dotted field path.
        field: String,
        /// Sizes involved.
        detail: String,
    },
    /// The content type is not JSON or multipart.
    #[error("unsupported content type {0:?}: send application/json or multipart/form-data")]
    UnsupportedMediaType(String),
    /// No such job (or turn).
    #[error("{0}")]
    NotFound(String),
    /// The job is in the wrong state for this request.
    #[error("{detail}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// What state it is in.
        detail: String,
    },
    /// Missing or bad credentials (401 with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(String),
    /// A limit was reached: try again after `retry_after` seconds (429).
    #[error("{detail}")]
    RateLimited {
        /// Which limit, and its value.
        detail: String,
        /// Seconds until a retry may succeed (`Retry-After`).
        retry_after: u64,
    },
    /// The request's headers are over the size limit (431).
    #[error("{0}")]
    HeadersTooLarge(String),
    /// The client sent its body too slowly (408).
    #[error("{0}")]
    BodyTimeout(String),
    /// The server lacks configuration needed to accept jobs.
    #[error("{0}")]
    NotConfigured(String),
    /// The database or blob store failed.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// An `Invalid` error with the generic `validation_failed` code.
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self::Invalid {
            code: "validation_failed",
            field: field.into(),
            rule: rule.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &str, Option<&str>) {
        match self {
            Self::Malformed { field, .. } => (
                StatusCode::BAD_REQUEST,
                "malformed_request",
                "Malformed request",
                field.as_deref(),
            ),
            Self::Invalid { code, field, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                code,
                "Invalid request",
                Some(field),
            ),
            Self::TooLarge { field, .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "Payload too large",
                Some(field),
            ),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                None,
            ),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", "Not found", None),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code, "Conflict", None),
            Self::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                Some("Authorization"),
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
                None,
            ),
            Self::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "Request header fields too large",
                Some("headers"),
            ),
            Self::BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "Request timeout",
                Some("body"),
            ),
            Self::NotConfigured(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_configured",
                "Service not configured",
                None,
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
                None,
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Self::NotFound(format!("job {id} not found")),
            StoreError::Conflict { id, status } => Self::Conflict {
                code: "job_finished",
                detail: format!("job {id} is already {status}"),
            },
            StoreError::ActiveJobsLimit { limit, .. } => Self::RateLimited {
                detail: format!(
                    "this tenant already has {limit} jobs queued or running \
                     ([limits] max_active_jobs_per_tenant); wait for some to finish"
                ),
                retry_after: ACTIVE_JOBS_RETRY_AFTER,
            },
            other => Self::Internal(other.to_string()),
        }
    }
}

/// `Retry-After` when the active-jobs limit refuses a create: about how
/// long a short job takes.
pub const ACTIVE_JOBS_RETRY_AFTER: u64 = 10;

/// A `Conflict` saying the job is not in the needed state.
pub fn wrong_status(id: uuid::Uuid, status: JobStatus, needed: &str) -> ApiError {
    ApiError::Conflict {
        code: "job_not_ready",
        detail: format!("job {id} is {status}; {needed}"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title, field) = self.parts();
        if let Self::Internal(detail) = &self {
            // Log the cause; never send internals to clients.
            tracing::error!(%detail, "internal error");
        }
        let problem = Problem {
            kind: format!("https://editthinker.dev/problems/{code}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_string(),
            field: field.map(str::to_string),
        };
        let body = serde_json::to_vec(&problem).expect("problem serializes");
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            Self::RateLimited { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        response
    }
}
