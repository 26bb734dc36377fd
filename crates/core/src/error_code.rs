//! The stable error codes of the contract (docs/api.md "Errors"): the `code` of
//! an API problem and the `error.code` of a failed job, one list for both.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code, of an API problem or of a failed
/// job. Clients match on these.
// docs/api.md's error tables list exactly these members (a test below checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON or multipart, or the request head is
    /// not valid HTTP/1.1.
    MalformedRequest,
    /// An upload or the whole body is over the byte limit.
    TooLarge,
    /// The content type is neither JSON nor multipart.
    UnsupportedMediaType,
    /// A field breaks a rule.
    ValidationFailed,
    /// `editor` names no configured editor (API), or the worker has no
    /// editor of the job's name (job).
    UnknownEditor,
    /// The bytes are not an image in a supported format.
    ImageUnsupported,
    /// The image is empty or does not decode.
    ImageUndecodable,
    /// The image declares more pixels than allowed.
    ImageTooManyPixels,
    /// The image declares more decoded bytes than allowed.
    ImageTooLargeDecoded,
    /// The image declares far more pixels than its file size suggests.
    ImageTooCompressed,
    /// `image.url` resolves to an address that is not globally reachable.
    ImageUrlForbidden,
    /// `webhook.url` resolves to an address that is not globally reachable.
    WebhookUrlForbidden,
    /// An `Idempotency-Key` was used for a different request.
    IdempotencyKeyReused,
    /// Missing or bad credentials.
    Unauthorized,
    /// The body did not arrive in time.
    RequestTimeout,
    /// A limit was reached; `Retry-After` says when to try again.
    RateLimited,
    /// The request's URI is too long.
    UriTooLong,
    /// The request's headers are too large or too many.
    HeadersTooLarge,
    /// No such job, turn or route.
    NotFound,
    /// The route exists, but not with this method (`Allow` lists its
    /// methods).
    MethodNotAllowed,
    /// Canceling a job that has already finished.
    JobFinished,
    /// Asking for the result of a job that has not succeeded.
    JobNotReady,
    /// Retrying a job that has not failed.
    JobNotFailed,
    /// No thinker or no editor is configured.
    NotConfigured,
    /// A bug or an internal failure; details are logged, not returned.
    Internal,
    /// The editor refused the user's own instruction (moderation, safety).
    EditorRefused,
    /// The editor rejected the request as invalid.
    EditorInvalid,
    /// The editor rejected the credentials.
    EditorAuth,
    /// The editor stayed unavailable.
    EditorUnavailable,
    /// The editor may or may not have done (and billed) the edit.
    EditorAmbiguous,
    /// The editor answered with an image that cannot be used.
    EditorBadOutput,
    /// The thinker stayed unavailable.
    ThinkerUnavailable,
    /// The thinker rejected the request as invalid (e.g. unknown model).
    ThinkerInvalid,
    /// The thinker rejected the credentials.
    ThinkerAuth,
    /// The stored job or its images could not be read or written.
    StorageError,
    /// The database refused what the job produced, data it can never take:
    /// another attempt would pay for the same edit and fail again.
    StorageRefused,
    /// The job's worker vanished and no attempts are left.
    LeaseExpired,
    /// The job's deadline passed before any turn was recorded.
    DeadlineExceeded,
    /// `options.budget` leaves no room for even one edit.
    BudgetExhausted,
    /// The verifier stayed unavailable.
    VerifierUnavailable,
    /// The verifier rejected the request or the credentials, answered
    /// without a usable score, or the job needs a verifier the worker
    /// lacks.
    VerifierInvalid,
}

impl ErrorCode {
    /// Every member, in declaration order.
    pub const ALL: [ErrorCode; 41] = [
        Self::MalformedRequest,
        Self::TooLarge,
        Self::UnsupportedMediaType,
        Self::ValidationFailed,
        Self::UnknownEditor,
        Self::ImageUnsupported,
        Self::ImageUndecodable,
        Self::ImageTooManyPixels,
        Self::ImageTooLargeDecoded,
        Self::ImageTooCompressed,
        Self::ImageUrlForbidden,
        Self::WebhookUrlForbidden,
        Self::IdempotencyKeyReused,
        Self::Unauthorized,
        Self::RequestTimeout,
        Self::RateLimited,
        Self::UriTooLong,
        Self::HeadersTooLarge,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::JobFinished,
        Self::JobNotReady,
        Self::JobNotFailed,
        Self::NotConfigured,
        Self::Internal,
        Self::EditorRefused,
        Self::EditorInvalid,
        Self::EditorAuth,
        Self::EditorUnavailable,
        Self::EditorAmbiguous,
        Self::EditorBadOutput,
        Self::ThinkerUnavailable,
        Self::ThinkerInvalid,
        Self::ThinkerAuth,
        Self::StorageError,
        Self::StorageRefused,
        Self::LeaseExpired,
        Self::DeadlineExceeded,
        Self::BudgetExhausted,
        Self::VerifierUnavailable,
        Self::VerifierInvalid,
    ];

    /// The contract spelling (what serde writes). `const`, so the store
    /// and worker can name codes in constants.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MalformedRequest => "malformed_request",
            Self::TooLarge => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::ValidationFailed => "validation_failed",
            Self::UnknownEditor => "unknown_editor",
            Self::ImageUnsupported => "image_unsupported",
            Self::ImageUndecodable => "image_undecodable",
            Self::ImageTooManyPixels => "image_too_many_pixels",
            Self::ImageTooLargeDecoded => "image_too_large_decoded",
            Self::ImageTooCompressed => "image_too_compressed",
            Self::ImageUrlForbidden => "image_url_forbidden",
            Self::WebhookUrlForbidden => "webhook_url_forbidden",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::Unauthorized => "unauthorized",
            Self::RequestTimeout => "request_timeout",
            Self::RateLimited => "rate_limited",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::JobFinished => "job_finished",
            Self::JobNotReady => "job_not_ready",
            Self::JobNotFailed => "job_not_failed",
            Self::NotConfigured => "not_configured",
            Self::Internal => "internal",
            Self::EditorRefused => "editor_refused",
            Self::EditorInvalid => "editor_invalid",
            Self::EditorAuth => "editor_auth",
            Self::EditorUnavailable => "editor_unavailable",
            Self::EditorAmbiguous => "editor_ambiguous",
            Self::EditorBadOutput => "editor_bad_output",
            Self::ThinkerUnavailable => "thinker_unavailable",
            Self::ThinkerInvalid => "thinker_invalid",
            Self::ThinkerAuth => "thinker_auth",
            Self::StorageError => "storage_error",
            Self::StorageRefused => "storage_refused",
            Self::LeaseExpired => "lease_expired",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::BudgetExhausted => "budget_exhausted",
            Self::VerifierUnavailable => "verifier_unavailable",
            Self::VerifierInvalid => "verifier_invalid",
        }
    }

    /// Parses the contract spelling (a stored job's `error_code`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spelling_is_serdes_and_every_member_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::String(code.as_str().into())
            );
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!(seen.insert(code), "{code} listed twice");
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
        // The document's enum (every variant) is exactly `ALL`.
        let schema = serde_json::to_value(<ErrorCode as utoipa::PartialSchema>::schema()).unwrap();
        let members: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(members, all);
    }

    /// The codes in docs/api.md's "### Errors" tables: each table's `code`
    /// column, backticks removed.
    fn readme_codes() -> std::collections::BTreeSet<String> {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md"))
                .expect("docs/api.md");
        let start = readme
            .find("\n### Errors\n")
            .expect("docs/api.md has ### Errors");
        let section = &readme[start + 1..];
        let end = section[4..].find("\n### ").map_or(section.len(), |i| i + 4);
        let mut codes = std::collections::BTreeSet::new();
        let mut column = None;
        let mut tables = 0;
        for line in section[..end].lines() {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            if !line.starts_with('|') {
                column = None;
                continue;
            }
            if column.is_none() {
                column = cells.iter().position(|c| *c == "code" || *c == "`code`");
                tables += usize::from(column.is_some());
                continue;
            }
            let cell = cells[column.unwrap()];
            if cell.starts_with("---") {
                continue;
            }
            codes.insert(cell.trim_matches('`').to_string());
        }
        assert_eq!(tables, 2, "the API problem table and the job error table");
        codes
    }

    #[test]
    fn the_readme_tables_list_exactly_the_codes() {
        let readme = readme_codes();
        let ours: std::collections::BTreeSet<String> = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        let undocumented: Vec<_> = ours.difference(&readme).collect();
        let unknown: Vec<_> = readme.difference(&ours).collect();
        assert!(
            undocumented.is_empty(),
            "codes missing from docs/api.md's error tables: {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "docs/api.md's error tables list codes ErrorCode lacks: {unknown:?}"
        );
    }
}
