//! Telling a moderation or safety refusal apart in a provider's error body
//! (a refusal calls for a rephrased instruction, not a retry).

use serde_json::Value;

use super::classify::provider_message;

/// Whether a JSON error body says the provider refused on moderation or
/// safety grounds. Only code-like fields are read (`code`, `type`,
/// `error_type`, …, or an `error` string without spaces), never free-text
/// messages, so "safety_tolerance must be ≤ 6" stays a plain bad request.
pub fn is_refusal(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| value_is_refusal(&v, 0))
}

fn value_is_refusal(value: &Value, depth: u32) -> bool {
    const CODE_KEYS: [&str; 6] = [
        "code",
        "type",
        "error_type",
        "error_code",
        "reason",
        "status",
    ];
    let Value::Object(map) = value else {
        return false;
    };
    if CODE_KEYS
        .iter()
        .filter_map(|k| map.get(*k).and_then(Value::as_str))
        .any(says_refused)
    {
        return true;
    }
    ["error", "detail"].iter().any(|k| match map.get(*k) {
        Some(Value::String(s)) => !s.trim().contains(char::is_whitespace) && says_refused(s),
        Some(v @ Value::Object(_)) if depth < 3 => value_is_refusal(v, depth + 1),
        _ => false,
    })
}

/// Whether a provider's error code (not free text) names a moderation or
/// safety refusal.
pub fn says_refused(code: &str) -> bool {
    let code = code.to_ascii_lowercase();
    [
        "moderat",
        "safety",
        "refus",
        "content_policy",
        "content_filter",
    ]
    .iter()
    .any(|m| code.contains(m))
}

/// A refusal in the provider's words: its message, with its code when it
/// has one (`error.code` or `code`).
pub fn refusal_message(body: &[u8]) -> String {
    let message = provider_message(body);
    let code = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.pointer("/error/code")
            .or_else(|| v.get("code"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    match code {
        Some(code) if !message.contains(&code) => format!("{message} ({code})"),
        _ => message,
    }
}
