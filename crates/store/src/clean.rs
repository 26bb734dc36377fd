//! Provider text as the store writes it, for both backends alike.
//!
//! Whatever a provider (editor, thinker) or the loop hands the store goes
//! through [`editthinker_core::text`]'s rule here, before either backend
//! sees it: Postgres refuses NUL and SQLite takes it, so cleaning in one
//! backend only would make the two store different text. The event rows
//! are built from the cleaned values, so they match the columns.

use std::borrow::Cow;

use editthinker_core::text::{
    clean_provider_json, clean_provider_text, MAX_PROVIDER_MESSAGE_CHARS, MAX_PROVIDER_TEXT_CHARS,
};
use serde_json::Value;

use crate::{NewCandidate, NewTurn, PendingEditRecord, RefusalRecord};

/// A long provider text (an instruction, a thinker's raw output).
pub(crate) fn text(s: &str) -> Cow<'_, str> {
    clean_provider_text(s, MAX_PROVIDER_TEXT_CHARS)
}

/// A provider message (an error body, a parse error, a refusal reason):
/// capped shorter, since an editor's error page can be any size.
pub(crate) fn message(s: &str) -> Cow<'_, str> {
    clean_provider_text(s, MAX_PROVIDER_MESSAGE_CHARS)
}

/// A JSON value from a provider: every key and string cleaned.
pub(crate) fn json(v: &Value) -> Value {
    let mut v = v.clone();
    clean_provider_json(&mut v, MAX_PROVIDER_TEXT_CHARS);
    v
}

/// A new turn: its instruction (the thinker's rewrite) and the provider's
/// request id.
pub(crate) fn turn(mut turn: NewTurn) -> NewTurn {
    if let Cow::Owned(s) = text(&turn.instruction) {
        turn.instruction = s;
    }
    if let Some(Cow::Owned(s)) = turn.provider_request_id.as_deref().map(message) {
        turn.provider_request_id = Some(s);
    }
    turn
}

/// A new candidate: its instruction and the provider's request id, as a
/// turn's.
pub(crate) fn candidate(mut candidate: NewCandidate) -> NewCandidate {
    let cleaned = turn(NewTurn {
        index: candidate.turn,
        instruction: std::mem::take(&mut candidate.instruction),
        image_key: String::new(),
        image_mime: String::new(),
        editor_ms: 0,
        provider_request_id: candidate.provider_request_id.take(),
    });
    candidate.instruction = cleaned.instruction;
    candidate.provider_request_id = cleaned.provider_request_id;
    candidate
}

/// A critique as stored: the JSON, the raw output and the parse error.
pub(crate) struct Critique<'a> {
    /// The critique JSON.
    pub value: Value,
    /// The thinker's raw output.
    pub raw_output: Cow<'a, str>,
    /// Why it did not parse, if it did not.
    pub parse_error: Option<Cow<'a, str>>,
}

/// Cleans a critique's three texts.
pub(crate) fn critique<'a>(
    value: &Value,
    raw_output: &'a str,
    parse_error: Option<&'a str>,
) -> Critique<'a> {
    Critique {
        value: json(value),
        raw_output: text(raw_output),
        parse_error: parse_error.map(message),
    }
}

/// An asynchronous edit in flight: its instruction and provider handle.
pub(crate) fn pending(p: &PendingEditRecord) -> PendingEditRecord {
    PendingEditRecord {
        turn: p.turn,
        candidate: p.candidate,
        instruction: text(&p.instruction).into_owned(),
        request: json(&p.request),
    }
}

/// An editor's refusal: the refused instruction and the provider's reason.
pub(crate) fn refusal(r: &RefusalRecord) -> RefusalRecord {
    RefusalRecord {
        turn: r.turn,
        instruction: text(&r.instruction).into_owned(),
        reason: message(&r.reason).into_owned(),
        kind: message(&r.kind).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_capped_shorter_than_texts() {
        let long = "x".repeat(MAX_PROVIDER_TEXT_CHARS + 10);
        assert_eq!(message(&long).chars().count(), MAX_PROVIDER_MESSAGE_CHARS);
        assert_eq!(text(&long).chars().count(), MAX_PROVIDER_TEXT_CHARS);
    }

    #[test]
    fn a_turn_is_cleaned() {
        let t = turn(NewTurn {
            index: 1,
            instruction: "a\0b\u{1b}c".into(),
            image_key: "k".into(),
            image_mime: "image/png".into(),
            editor_ms: 1,
            provider_request_id: Some("r\0".into()),
        });
        assert_eq!(t.instruction, "abc");
        assert_eq!(t.provider_request_id.as_deref(), Some("r"));
    }
}
