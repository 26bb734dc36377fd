//! What a final non-2xx answer means for the worker: its error class
//! ([`EditorError`]), and the provider's own words for the message.

use editthinker_core::{EditorError, FailureClass};
use editthinker_provider_http::body_excerpt;
use reqwest::StatusCode;
use serde_json::Value;

use super::refusal::{is_refusal, refusal_message};

/// Turns a final non-2xx answer (status, body) into an error class. A
/// classifier that answers anything but `Transient` for a retryable status
/// stops the retries (e.g. a 429 that means "out of quota").
pub type Classifier = fn(StatusCode, &[u8]) -> EditorError;

/// Whether a failed status may pass on a later attempt.
pub fn is_retryable(status: StatusCode) -> bool {
    FailureClass::of_status(status.as_u16()).is_some()
}

/// The error class of a final non-2xx answer: 451 or a moderation/safety
/// code → `Refused`; 401/403 → `Auth`; 408/429/5xx → `Transient`; any other
/// 4xx → `Invalid`. The message carries the status and the server's body,
/// truncated.
pub fn classify_failure(status: StatusCode, body: &[u8]) -> EditorError {
    let message = format!("HTTP {status}: {}", body_excerpt(body));
    if status == StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS {
        EditorError::Refused(message)
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        EditorError::Auth(message)
    } else if is_retryable(status) {
        EditorError::Transient(message)
    } else if is_refusal(body) {
        EditorError::Refused(format!("HTTP {status}: {}", refusal_message(body)))
    } else {
        EditorError::Invalid(message)
    }
}

/// A 2xx answer parsed as JSON; anything else is `Invalid`.
pub fn parse_json(body: &[u8]) -> Result<Value, EditorError> {
    serde_json::from_slice(body).map_err(|_| {
        EditorError::Invalid(format!(
            "the editor's answer is not JSON: {}",
            body_excerpt(body)
        ))
    })
}

/// The provider's own explanation in a JSON error body: `error.message`,
/// `message` or a string `error`, else the body excerpt.
pub fn provider_message(body: &[u8]) -> String {
    let json = serde_json::from_slice::<Value>(body).ok();
    let found = json.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
    });
    match found {
        Some(m) if !m.trim().is_empty() => body_excerpt(m.as_bytes()),
        _ => body_excerpt(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let c = |s: u16, b: &str| classify_failure(StatusCode::from_u16(s).unwrap(), b.as_bytes());
        assert!(matches!(c(401, ""), EditorError::Auth(_)));
        assert!(matches!(c(403, ""), EditorError::Auth(_)));
        assert!(matches!(c(400, "nope"), EditorError::Invalid(m) if m.contains("nope")));
        assert!(matches!(c(404, ""), EditorError::Invalid(_)));
        assert!(matches!(c(422, ""), EditorError::Invalid(_)));
        assert!(matches!(c(451, ""), EditorError::Refused(_)));
        assert!(matches!(c(429, ""), EditorError::Transient(_)));
        assert!(matches!(c(503, ""), EditorError::Transient(_)));
        let openai = r#"{"error":{"message":"Your request was rejected","type":"image_generation_user_error","code":"moderation_blocked"}}"#;
        assert!(matches!(c(400, openai), EditorError::Refused(_)));
        assert!(matches!(
            c(400, r#"{"error":"safety_check_failed"}"#),
            EditorError::Refused(_)
        ));
        assert!(matches!(
            c(
                400,
                r#"{"error":"safety_tolerance must be between 0 and 6"}"#
            ),
            EditorError::Invalid(_)
        ));
    }
}
