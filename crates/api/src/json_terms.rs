//! A create body's type errors in the API document's terms.
//!
//! serde's messages name Rust types and repeat the value they refused
//! (`invalid type: string "iVBORw0…", expected struct ImageInput`), which
//! a client neither wrote nor can act on, and which can be a whole image.
//! Here each field of `CreateJobRequest` says what it must be in the
//! words of `openapi/openapi.json`, what came instead is named by its JSON
//! kind, and any value quoted from the request is cut to
//! [`MAX_ECHO_CHARS`].

use editthinker_core::options::{MAX_DEADLINE_SECONDS, MAX_TURNS, MIN_TURNS};

/// Longest piece of a request quoted back in an error.
pub const MAX_ECHO_CHARS: usize = 64;

/// What `field` (a dotted path such as `options.max_turns`) must be, for
/// the fields a create body has.
fn expected(field: &str) -> Option<String> {
    Some(match field {
        "image" => "an object with `base64` (the image's bytes in base64) or `url`".into(),
        "image.base64" | "image.url" | "instruction" | "editor" | "webhook.url" => {
            "a string".into()
        }
        "options" => "an object (`max_turns`, `stop`, `selection`, `deadline_seconds`)".into(),
        "options.max_turns" => format!("an integer from {MIN_TURNS} to {MAX_TURNS}"),
        "options.stop" => "an object with `semantic` and `quality`".into(),
        "options.stop.semantic" | "options.stop.quality" => "a number from 0 to 10".into(),
        "options.selection" => "`best` or `last`".into(),
        "options.deadline_seconds" => {
            format!("an integer from 1 to {MAX_DEADLINE_SECONDS}")
        }
        "metadata" => "an object".into(),
        "webhook" => "an object with `url` and, optionally, `events`".into(),
        "webhook.events" => "an array of event type names".into(),
        "priority" => "an integer".into(),
        _ => return None,
    })
}

/// The JSON kind serde names first in `invalid type: <kind>, expected …`.
fn kind_sent(unexpected: &str) -> &'static str {
    let unexpected = unexpected.trim();
    for (prefix, kind) in [
        ("string", "a string"),
        ("integer", "an integer"),
        ("floating point", "a number with a fraction"),
        ("boolean", "a boolean"),
        ("map", "an object"),
        ("sequence", "an array"),
        ("null", "null"),
        ("unit", "null"),
    ] {
        if unexpected.starts_with(prefix) {
            return kind;
        }
    }
    "another kind of value"
}

/// The rule for a data error at `field` with serde's `message` (already
/// without its position).
pub fn describe(field: &str, message: &str) -> String {
    let sent = message
        .strip_prefix("invalid type: ")
        .map(|rest| kind_sent(rest.split(", expected").next().unwrap_or(rest)));
    let out_of_range = message.starts_with("invalid value: ");
    match (expected(field), sent) {
        (Some(expected), Some(sent)) => format!("must be {expected} (got {sent})"),
        (Some(expected), None) if out_of_range => format!("must be {expected}"),
        _ => cut_quotes(message),
    }
}

/// `text` cut to [`MAX_ECHO_CHARS`] characters (a field path made of
/// names the client sent).
pub fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// `text` with every quoted piece (`"…"` or `` `…` ``) longer than
/// [`MAX_ECHO_CHARS`] cut, and the whole no longer than a few lines.
pub fn cut_quotes(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(512));
    let mut quoted: Option<(char, usize)> = None;
    for c in text.chars() {
        match quoted {
            Some((close, n)) if c == close => {
                quoted = None;
                if n > MAX_ECHO_CHARS {
                    out.push('…');
                }
                out.push(c);
            }
            Some((close, n)) => {
                if n < MAX_ECHO_CHARS {
                    out.push(c);
                }
                quoted = Some((close, n + 1));
            }
            None => {
                if c == '"' || c == '`' {
                    quoted = Some((c, 0));
                }
                out.push(c);
            }
        }
    }
    if let Some((_, n)) = quoted {
        if n > MAX_ECHO_CHARS {
            out.push('…');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_error_says_what_the_field_must_be_and_what_came() {
        let image = "x".repeat(5000);
        let message = format!("invalid type: string \"{image}\", expected struct ImageInput");
        let rule = describe("image", &message);
        assert_eq!(
            rule,
            "must be an object with `base64` (the image's bytes in base64) or `url` (got a string)"
        );
        assert_eq!(
            describe(
                "options.max_turns",
                "invalid type: string \"3\", expected u32"
            ),
            "must be an integer from 1 to 10 (got a string)"
        );
        assert_eq!(
            describe(
                "options.max_turns",
                "invalid value: integer `-1`, expected u32"
            ),
            "must be an integer from 1 to 10"
        );
        assert_eq!(
            describe("metadata", "invalid type: sequence, expected a map"),
            "must be an object (got an array)"
        );
    }

    #[test]
    fn unknown_fields_keep_serde_s_rule_with_long_quotes_cut() {
        let long = "y".repeat(200);
        let rule = describe(
            "colour",
            &format!("unknown field `{long}`, expected one of `image`"),
        );
        assert!(rule.len() < 120, "{rule}");
        assert!(
            rule.contains(&format!("`{}…`", "y".repeat(MAX_ECHO_CHARS))),
            "{rule}"
        );
        assert!(rule.ends_with("expected one of `image`"), "{rule}");
        assert_eq!(cut_quotes("missing field `image`"), "missing field `image`");
        assert_eq!(cut("options.turns"), "options.turns");
        assert_eq!(
            cut(&"é".repeat(100)),
            format!("{}…", "é".repeat(MAX_ECHO_CHARS))
        );
    }
}
