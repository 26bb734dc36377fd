//! Output constraints for the in-process thinker (llguidance, through
//! mistral.rs), so that even a weak, quantized or random-weight model
//! answers in a form [`editthinker_core::parse_editthinker`] accepts.
//!
//! The EditThinker grammar is Lark:
//!
//! ```text
//! start: <think> think </think> WS? "<score>" WS? score WS? "</score>" WS? "<answer>" answer "</answer>"
//! ```
//!
//! `<think>` and `</think>` are written unquoted: llguidance then matches
//! them as the tokenizer's added tokens. (A quoted `"<think>"` fails on the
//! first token in mistral.rs 0.8.1, see BACKENDS.md.) The reasoning and the
//! answer are capped in tokens (`max_tokens=`) so that the whole form always
//! fits in the request's `max_tokens`: when the cap is reached the grammar
//! closes the section and moves on, and the answer still parses.

use editthinker_core::Protocol;
use serde_json::{json, Value};

/// Tokens kept for everything but the reasoning and the answer: tags,
/// score JSON and optional whitespace, counted as if every byte were its
/// own token (the worst case, a byte-level tokenizer), with some slack.
pub const RESERVED_TOKENS: u32 = 96;

/// The smallest `max_tokens` the grammar accepts: the reserve plus a little
/// room for the reasoning and the answer.
pub const MIN_GRAMMAR_TOKENS: u32 = RESERVED_TOKENS + 16;

/// Most tokens the refined instruction may take.
const MAX_ANSWER_TOKENS: u32 = 1024;

/// How `max_tokens` is split between the reasoning and the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Cap on the reasoning, in tokens.
    pub think: u32,
    /// Cap on the refined instruction, in tokens.
    pub answer: u32,
}

impl Budget {
    /// Splits `max_tokens` (at least [`MIN_GRAMMAR_TOKENS`]): a quarter of
    /// what is left after [`RESERVED_TOKENS`] for the answer (at most
    /// 1024), the rest for the reasoning.
    pub fn for_max_tokens(max_tokens: u32) -> Self {
        let room = max_tokens.max(MIN_GRAMMAR_TOKENS) - RESERVED_TOKENS;
        let answer = (room / 4).clamp(1, MAX_ANSWER_TOKENS);
        Self {
            think: room - answer,
            answer,
        }
    }
}

/// The Lark grammar for the EditThinker form within `max_tokens`.
pub fn editthinker_lark(max_tokens: u32) -> String {
    let Budget { think, answer } = Budget::for_max_tokens(max_tokens);
    format!(
        r#"start: <think> think </think> WS? "<score>" WS? score WS? "</score>" WS? "<answer>" answer "</answer>"
think[max_tokens={think}]: /[^<]*/
answer[max_tokens={answer}]: /[^<]*/
score: "{{" WS? "\"semantic\"" WS? ":" WS? NUM WS? "," WS? "\"quality\"" WS? ":" WS? NUM WS? "}}"
NUM: /10|[0-9]/
WS: /[ \n]{{1,2}}/
"#
    )
}

/// The JSON schema for the expert protocol's verdict, with string lengths
/// capped (in characters) by the same budget.
pub fn expert_schema(max_tokens: u32) -> Value {
    let Budget { think, answer } = Budget::for_max_tokens(max_tokens);
    json!({
        "type": "object",
        "properties": {
            "is_satisfied": {"type": "boolean"},
            "reason": {"type": "string", "maxLength": think},
            "new_rewritten_prompt": {"type": ["string", "null"], "maxLength": answer},
        },
        "required": ["is_satisfied", "reason", "new_rewritten_prompt"],
        "additionalProperties": false,
    })
}

/// The constraint for `protocol` within `max_tokens`.
pub fn constraint(protocol: Protocol, max_tokens: u32) -> mistralrs::Constraint {
    match protocol {
        Protocol::Editthinker => mistralrs::Constraint::Lark(editthinker_lark(max_tokens)),
        Protocol::Expert => mistralrs::Constraint::JsonSchema(expert_schema(max_tokens)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_fits_max_tokens() {
        for m in [MIN_GRAMMAR_TOKENS, 128, 200, 1000, 4096, 32_768] {
            let b = Budget::for_max_tokens(m);
            assert!(b.think + b.answer + RESERVED_TOKENS <= m, "{m}: {b:?}");
            assert!(b.answer >= 1 && b.think >= 1, "{m}: {b:?}");
        }
        assert_eq!(
            Budget::for_max_tokens(4096),
            Budget {
                think: 3000,
                answer: 1000
            }
        );
        assert_eq!(Budget::for_max_tokens(32_768).answer, 1024);
    }

    #[test]
    fn think_tags_are_special_tokens_and_the_rest_literals() {
        let g = editthinker_lark(4096);
        assert!(g.starts_with("start: <think> think </think> "), "{g}");
        assert!(!g.contains("\"<think>\""), "{g}");
        assert!(!g.contains("\"</think>\""), "{g}");
        for tag in [
            "\"<score>\"",
            "\"</score>\"",
            "\"<answer>\"",
            "\"</answer>\"",
        ] {
            assert!(g.contains(tag), "{tag} in {g}");
        }
        assert!(g.contains("think[max_tokens=3000]"), "{g}");
        assert!(g.contains("answer[max_tokens=1000]"), "{g}");
        assert!(g.contains(r#"score: "{" WS? "\"semantic\""#), "{g}");
    }

    #[test]
    fn expert_schema_caps_strings() {
        let s = expert_schema(4096);
        assert_eq!(s["properties"]["reason"]["maxLength"], 3000);
        assert_eq!(s["properties"]["new_rewritten_prompt"]["maxLength"], 1000);
        assert!(matches!(
            constraint(Protocol::Expert, 4096),
            mistralrs::Constraint::JsonSchema(_)
        ));
        assert!(matches!(
            constraint(Protocol::Editthinker, 4096),
            mistralrs::Constraint::Lark(_)
        ));
    }
}
