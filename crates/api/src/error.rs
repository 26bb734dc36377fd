//! The API layer's errors and their RFC 9457 problem responses.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
pub use editthinker_core::ErrorCode;
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
    pub code: ErrorCode,
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
        code: ErrorCode,
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
    /// The path exists but not with this method (405; axum's router adds
    /// the `Allow` header to the answer).
    #[error("{method} is not allowed on {path}: the Allow header lists the methods it takes")]
    MethodNotAllowed {
        /// The method sent.
        method: String,
        /// The path.
        path: String,
    },
    /// The job is in the wrong state for this request.
    #[error("{detail}")]
    Conflict {
        /// Stable code.
        code: ErrorCode,
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
            code: ErrorCode::ValidationFailed,
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The problem `code` this error answers with.
    pub fn code(&self) -> ErrorCode {
        self.parts().1
    }

    fn parts(&self) -> (StatusCode, ErrorCode, &str, Option<&str>) {
        match self {
            Self::Malformed { field, .. } => (
                StatusCode::BAD_REQUEST,
                ErrorCode::MalformedRequest,
                "Malformed request",
                field.as_deref(),
            ),
            Self::Invalid { code, field, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                *code,
                "Invalid request",
                Some(field),
            ),
            Self::TooLarge { field, .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                "Payload too large",
                Some(field),
            ),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "Unsupported media type",
                None,
            ),
            Self::NotFound(_) => (
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "Not found",
                None,
            ),
            Self::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "Method not allowed",
                None,
            ),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, *code, "Conflict", None),
            Self::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "Unauthorized",
                Some("Authorization"),
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "Too many requests",
                None,
            ),
            Self::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                ErrorCode::HeadersTooLarge,
                "Request header fields too large",
                Some("headers"),
            ),
            Self::BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::RequestTimeout,
                "Request timeout",
                Some("body"),
            ),
            Self::NotConfigured(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::NotConfigured,
                "Service not configured",
                None,
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
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
                code: ErrorCode::JobFinished,
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
        code: ErrorCode::JobNotReady,
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
            code,
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

/// Hyper answers the requests its parser refuses itself, before any of
/// our code runs and with no hook to change the answer: `400` (a NUL or
/// other control byte in a header, a bad request line), `431` (more
/// header fields than `server::MAX_PARSED_HEADERS`, a head over the read
/// buffer) or `414`, each with an empty body. Its head always starts with
/// the status line, then `connection: close` and `content-length: 0`;
/// the router never answers an error with an empty body, so a head like
/// that is hyper's. Given such a head, this returns the same answer with
/// a problem body and the edge headers (issue 20, finding 11), for the
/// connection's IO to write instead.
pub(crate) fn bare_error_answer(head: &[u8]) -> Option<Vec<u8>> {
    const PREFIX: &[u8] = b"HTTP/1.1 4";
    const BARE: &[u8] = b"connection: close\r\ncontent-length: 0\r\n";
    if !head.starts_with(PREFIX) || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let line_end = head.windows(2).position(|w| w == b"\r\n")? + 2;
    let rest = head[line_end..].strip_prefix(BARE)?;
    let (status, code, title, detail) = match &head[PREFIX.len() - 1..PREFIX.len() + 2] {
        b"400" => (
            400,
            ErrorCode::MalformedRequest,
            "Malformed request",
            "the request head is not valid HTTP/1.1: a control character (such as NUL) in a \
             header, or a bad request line or header line",
        ),
        b"431" => (
            431,
            ErrorCode::HeadersTooLarge,
            "Request header fields too large",
            "the request head has more than 128 header fields or is over 64 KiB",
        ),
        b"414" => (
            414,
            ErrorCode::UriTooLong,
            "URI too long",
            "the request's URI is too long",
        ),
        _ => return None,
    };
    let problem = Problem {
        kind: format!("https://editthinker.dev/problems/{code}"),
        title: title.into(),
        status,
        detail: detail.into(),
        code,
        field: None,
    };
    let body = serde_json::to_vec(&problem).expect("problem serializes");
    let mut answer = Vec::with_capacity(head.len() + body.len() + 160);
    answer.extend_from_slice(&head[..line_end]);
    answer.extend_from_slice(b"connection: close\r\ncontent-type: application/problem+json\r\n");
    answer
        .extend_from_slice(b"x-content-type-options: nosniff\r\nreferrer-policy: no-referrer\r\n");
    answer.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    // Hyper's remaining headers (its `date`) and the blank line.
    answer.extend_from_slice(rest);
    answer.extend_from_slice(&body);
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_errors_get_a_problem_body() {
        let head = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 22:18:13 GMT\r\n\r\n";
        let answer = String::from_utf8(bare_error_answer(head).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        for line in [
            "content-type: application/problem+json",
            "x-content-type-options: nosniff",
            "referrer-policy: no-referrer",
            "connection: close",
            "date: Sun, 06 Dec 2026 22:18:13 GMT",
        ] {
            assert!(head.contains(line), "{line} in {head}");
        }
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["code"], "malformed_request");
        assert_eq!(problem["status"], 400);

        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(bare_error_answer(head).unwrap()).unwrap();
        assert!(
            answer.contains("\"code\":\"headers_too_large\""),
            "{answer}"
        );
    }

    #[test]
    fn other_answers_are_left_alone() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 10\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n",
            b"3\r\n:\n\n\r\n",
        ] {
            assert!(bare_error_answer(head).is_none(), "{:?}", String::from_utf8_lossy(head));
        }
    }
}
