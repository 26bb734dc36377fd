//! Parsers for the two thinker output protocols (DESIGN.md §3).

use serde::{Deserialize, Serialize};

use crate::critique::Critique;

/// Which output form a thinker answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `<think>…</think><score>{…}</score><answer>…</answer>` (EditThinker-8B).
    #[default]
    Editthinker,
    /// JSON `{"is_satisfied", "reason", "new_rewritten_prompt"}` (general models).
    Expert,
}

impl Protocol {
    /// Parses `raw` in this protocol's form.
    pub fn parse(self, raw: &str) -> Result<Critique, ParseError> {
        match self {
            Self::Editthinker => parse_editthinker(raw),
            Self::Expert => parse_expert(raw),
        }
    }
}

/// Why a thinker answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unparseable thinker output: {0}")]
pub struct ParseError(pub String);

/// Parses EditThinker output. (Filled in by the parser work.)
pub fn parse_editthinker(raw: &str) -> Result<Critique, ParseError> {
    let _ = raw;
    Err(ParseError("parser pending".into()))
}

/// Parses expert JSON output. (Filled in by the parser work.)
pub fn parse_expert(raw: &str) -> Result<Critique, ParseError> {
    let _ = raw;
    Err(ParseError("parser pending".into()))
}
