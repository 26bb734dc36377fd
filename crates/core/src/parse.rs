//! Parsers for the two thinker output protocols (docs/configuration.md "`[thinker]`").
//!
//! Both parsers are lenient about form (whitespace, code fences, tag case,
//! truncated closing tags, text around the payload) because real servers
//! mangle output in small ways, and strict about content (both scores, an
//! answer, a verdict), because a guessed critique is worse than a retry.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

fn err(message: impl Into<String>) -> ParseError {
    ParseError(message.into())
}

/// Highest score either criterion can take.
const MAX_SCORE: f64 = 10.0;

/// Parses EditThinker output:
/// `<think>…</think> <score>{"semantic": s, "quality": q}</score> <answer>…</answer>`.
///
/// Accepted variations: whitespace anywhere; reasoning before `<score>` with
/// no think tags (mistral.rs drops them); code fences around the whole answer
/// or the score JSON; scores as a list `[semantic, quality]`; numbers as
/// strings or floats (clamped to 0..=10); any tag case; a missing closing tag
/// at the very end; trailing text after `</answer>`. Both scores and an
/// `<answer>` tag are required; an empty answer is allowed (it means "stop").
pub fn parse_editthinker(raw: &str) -> Result<Critique, ParseError> {
    let text = drop_fence_lines(raw);
    // ASCII lowercasing keeps byte offsets identical, so positions found in
    // `lower` index `text` directly.
    let lower = text.to_ascii_lowercase();

    // Search for the score after the reasoning, so a reasoning that happens
    // to mention "<score>" does not confuse us.
    let think_close = lower.find("</think>");
    let search_from = think_close.map_or(0, |p| p + "</think>".len());
    let score_open =
        find_from(&lower, "<score>", search_from).ok_or_else(|| err("no <score> tag"))?;

    let reasoning = {
        let mut head = &text[..score_open];
        if let Some(p) = head.to_ascii_lowercase().find("<think>") {
            head = &head[p + "<think>".len()..];
        }
        if let Some(p) = head.to_ascii_lowercase().find("</think>") {
            head = &head[..p];
        }
        head.trim().to_string()
    };

    let score_start = score_open + "<score>".len();
    let answer_open = find_from(&lower, "<answer>", score_start)
        .ok_or_else(|| err("no <answer> tag after the score"))?;
    // A missing </score> is tolerated as long as <answer> follows.
    let score_end = find_from(&lower, "</score>", score_start)
        .filter(|&p| p < answer_open)
        .unwrap_or(answer_open);
    let (semantic, quality) = parse_scores(&text[score_start..score_end])?;

    let answer_start = answer_open + "<answer>".len();
    let answer = match find_from(&lower, "</answer>", answer_start) {
        Some(end) => &text[answer_start..end],
        // Truncated output: take the rest, minus a partial closing tag.
        None => strip_partial_suffix(&text[answer_start..], "</answer>"),
    };
    let answer = answer.trim().trim_matches('`').trim();

    Ok(Critique {
        semantic: Some(semantic),
        quality: Some(quality),
        reasoning,
        refined_instruction: answer.to_string(),
        is_satisfied: None,
    })
}

/// Parses expert JSON output:
/// `{"is_satisfied": bool, "reason": string, "new_rewritten_prompt": string|null}`,
/// possibly inside code fences or surrounded by other text.
///
/// `is_satisfied` is required (a boolean, or the strings "true"/"false");
/// a missing `reason` reads as empty and a missing or null prompt as "".
pub fn parse_expert(raw: &str) -> Result<Critique, ParseError> {
    let text = drop_fence_lines(raw);
    let object = first_json_object_with(&text, "is_satisfied")
        .ok_or_else(|| err("no JSON object with an \"is_satisfied\" field"))?;

    let is_satisfied = match object.get("is_satisfied") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => false,
        other => {
            return Err(err(format!(
                "\"is_satisfied\" must be a boolean, got {}",
                other.map_or_else(|| "nothing".to_string(), Value::to_string)
            )))
        }
    };
    let reason = match object.get("reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(other) => return Err(err(format!("\"reason\" must be a string, got {other}"))),
    };
    let prompt = match object.get("new_rewritten_prompt") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(other) => {
            return Err(err(format!(
                "\"new_rewritten_prompt\" must be a string or null, got {other}"
            )))
        }
    };

    Ok(Critique {
        semantic: None,
        quality: None,
        reasoning: reason,
        refined_instruction: prompt,
        is_satisfied: Some(is_satisfied),
    })
}

/// `haystack.find(needle)` starting at byte `from`.
fn find_from(haystack: &str, needle: &str, from: usize) -> Option<usize> {
    haystack.get(from..)?.find(needle).map(|p| p + from)
}

/// Removes lines that are only a code-fence marker (```` ``` ```` or
/// ```` ```json ````), wherever they are: fences carry no content for us.
fn drop_fence_lines(raw: &str) -> String {
    raw.lines()
        .filter(|line| {
            let t = line.trim();
            !(t.starts_with("```")
                && t[3..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Drops a trailing incomplete `tag` (e.g. `</ans`) left by truncated output.
fn strip_partial_suffix<'a>(text: &'a str, tag: &str) -> &'a str {
    let trimmed = text.trim_end();
    let lower = trimmed.to_ascii_lowercase();
    for len in (2..tag.len()).rev() {
        if lower.ends_with(&tag[..len]) {
            return &trimmed[..trimmed.len() - len];
        }
    }
    text
}

/// Reads `(semantic, quality)` from the inside of a `<score>` tag.
fn parse_scores(inner: &str) -> Result<(f64, f64), ParseError> {
    let inner = inner.trim().trim_matches('`').trim();
    if let Some(start) = inner.find(['{', '[']) {
        let mut values = serde_json::Deserializer::from_str(&inner[start..]).into_iter::<Value>();
        if let Some(Ok(value)) = values.next() {
            return scores_from_json(&value);
        }
    }
    // Not JSON (e.g. single quotes or bare keys): look for `key: number` pairs.
    let semantic = loose_number_after(inner, "semantic");
    let quality = loose_number_after(inner, "quality");
    match (semantic, quality) {
        (Some(s), Some(q)) => Ok((clamp_score(s)?, clamp_score(q)?)),
        _ => Err(err(format!(
            "the score needs numeric \"semantic\" and \"quality\", got {inner:?}"
        ))),
    }
}

fn scores_from_json(value: &Value) -> Result<(f64, f64), ParseError> {
    match value {
        Value::Object(map) => {
            let get = |key: &str| {
                map.iter()
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
                    .map(|(_, v)| v)
                    .ok_or_else(|| err(format!("the score lacks \"{key}\"")))
                    .and_then(|v| score_value(key, v))
            };
            Ok((get("semantic")?, get("quality")?))
        }
        Value::Array(items) if items.len() == 2 => Ok((
            score_value("semantic", &items[0])?,
            score_value("quality", &items[1])?,
        )),
        Value::Array(items) => Err(err(format!(
            "a score list needs exactly two numbers, got {}",
            items.len()
        ))),
        other => Err(err(format!("the score is not an object or list: {other}"))),
    }
}

/// A score as a number, or a string holding one (`"7"`, `"7.5"`, `"7/10"`).
fn score_value(key: &str, value: &Value) -> Result<f64, ParseError> {
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            let s = s.strip_suffix("/10").unwrap_or(s).trim();
            s.parse::<f64>().ok()
        }
        _ => None,
    };
    let number = number.ok_or_else(|| err(format!("\"{key}\" is not a number: {value}")))?;
    clamp_score(number)
}

fn clamp_score(value: f64) -> Result<f64, ParseError> {
    if value.is_finite() {
        Ok(value.clamp(0.0, MAX_SCORE))
    } else {
        Err(err(format!("score {value} is not finite")))
    }
}

/// Finds `key` (any case) followed by quotes, colons, `=` or spaces and then
/// a number; anything else between key and number means "not found".
fn loose_number_after(text: &str, key: &str) -> Option<f64> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find(key)? + key.len();
    let rest = text[at..]
        .trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ':' | '='));
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(rest.len());
    rest[..end].parse::<f64>().ok()
}

/// The first JSON object in `text` that has `field`, trying every `{`.
fn first_json_object_with(text: &str, field: &str) -> Option<serde_json::Map<String, Value>> {
    text.match_indices('{').find_map(|(start, _)| {
        let mut values = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        match values.next() {
            Some(Ok(Value::Object(map))) if map.contains_key(field) => Some(map),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(c: &Critique) -> (f64, f64) {
        (c.semantic.unwrap(), c.quality.unwrap())
    }

    #[test]
    fn editthinker_canonical_form() {
        let raw = "<think>The sky is still grey.</think>\n<score>{\"semantic\": 4, \"quality\": 9}</score>\n<answer>Make the sky a clear deep blue; keep the buildings unchanged.</answer>";
        let c = parse_editthinker(raw).unwrap();
        assert_eq!(scores(&c), (4.0, 9.0));
        assert_eq!(c.reasoning, "The sky is still grey.");
        assert_eq!(
            c.refined_instruction,
            "Make the sky a clear deep blue; keep the buildings unchanged."
        );
        assert_eq!(c.is_satisfied, None);
        assert_eq!(Protocol::Editthinker.parse(raw).unwrap(), c);
    }

    #[test]
    fn editthinker_whitespace_everywhere() {
        let raw = "\n\n  <think>\n  reasoning here \n</think>  \n\n <score>\n {\n \"semantic\" :  7 ,\n \"quality\":8 \n}\n </score>\n\t<answer>\n  do X  \n</answer>\n\n";
        let c = parse_editthinker(raw).unwrap();
        assert_eq!(scores(&c), (7.0, 8.0));
        assert_eq!(c.reasoning, "reasoning here");
        assert_eq!(c.refined_instruction, "do X");
    }

    #[test]
    fn editthinker_reasoning_without_think_tags() {
        // mistral.rs drops the special think tokens from its output.
        let raw = "The cat was recoloured, not the dog.<score>{\"semantic\": 2, \"quality\": 8}</score><answer>Recolour the dog.</answer>";
        let c = parse_editthinker(raw).unwrap();
        assert_eq!(c.reasoning, "The cat was recoloured, not the dog.");
        assert_eq!(scores(&c), (2.0, 8.0));
        assert_eq!(c.refined_instruction, "Recolour the dog.");
    }

    #[test]
    fn editthinker_only_closing_think_tag() {
        let raw =
            "thinking...</think><score>{\"semantic\": 5, \"quality\": 5}</score><answer>a</answer>";
        let c = parse_editthinker(raw).unwrap();
        assert_eq!(c.reasoning, "thinking...");
    }

    #[test]
    fn editthinker_no_reasoning_at_all() {
        let c =
            parse_editthinker("<score>{\"semantic\": 9, \"quality\": 9}</score><answer>x</answer>")
                .unwrap();
        assert_eq!(c.reasoning, "");
    }

    #[test]
    fn editthinker_fence_around_everything() {
        let raw = "```xml\n<think>r</think>\n<score>{\"semantic\": 6, \"quality\": 7}</score>\n<answer>do Y</answer>\n```";
        let c = parse_editthinker(raw).unwrap();
        assert_eq!(scores(&c), (6.0, 7.0));
        assert_eq!(c.refined_instruction, "do Y");
    }

    #[test]
    fn editthinker_fence_around_score_json() {
        let raw = "<think>r</think><score>\n```json\n{\"semantic\": 6, \"quality\": 7}\n```\n</score><answer>do Y</answer>";
        assert_eq!(scores(&parse_editthinker(raw).unwrap()), (6.0, 7.0));
        let inline = "<think>r</think><score>```json {\"semantic\": 3, \"quality\": 4}```</score><answer>do Y</answer>";
        assert_eq!(scores(&parse_editthinker(inline).unwrap()), (3.0, 4.0));
    }

    #[test]
    fn editthinker_score_as_list() {
        let raw = "<think>r</think><score>[7, 8]</score><answer>z</answer>";
        assert_eq!(scores(&parse_editthinker(raw).unwrap()), (7.0, 8.0));
    }

    #[test]
    fn editthinker_numbers_as_strings_and_floats() {
        let raw = "<score>{\"semantic\": \"7\", \"quality\": 7.5}</score><answer>z</answer>";
        assert_eq!(scores(&parse_editthinker(raw).unwrap()), (7.0, 7.5));
        let raw = "<score>[\" 6.5 \", \"9/10\"]</score><answer>z</answer>";
        assert_eq!(scores(&parse_editthinker(raw).unwrap()), (6.5, 9.0));
    }

    #[test]
    fn editthinker_scores_are_clamped() {
        let raw = "<score>{\"semantic\": 12, \"quality\": -3}</score><answer>z</answer>";
        assert_eq!(scores(&parse_editthinker(raw).unwrap()), (10.0, 0.0));
    }

    #[test]
    fn editthinker_missing_closing_answer_tag() {
        let raw = "<think>r</think><score>{\"semantic\": 3, \"quality\": 8}</score><answer>do X";
        assert_eq!(parse_editthinker(raw).unwrap().refined_instruction, "do X");
        let partial =
            "<think>r</think><score>{\"semantic\": 3, \"quality\": 8}</score><answer>do X</ans";
        assert_eq!(
            parse_editthinker(partial).unwrap().refined_instruction,
            "do X"
        );
    }

    #[test]
    fn editthinker_missing_closing_score_tag() {
        let raw = "<think>r</think><score>{\"semantic\": 3, \"quality\": 8}<answer>do X</answer>";
        assert_eq!(scores(&parse_editthinker(raw).unwrap()), (3.0, 8.0));
    }

    #[test]
    fn editthinker_tag_case_is_ignored() {
        let raw = "<THINK>r</Think><Score>{\"Semantic\": 5, \"QUALITY\": 6}</SCORE><Answer>Do it</ANSWER>";
        let c = parse_editthinker(raw).unwrap();
        assert_eq!(scores(&c), (5.0, 6.0));
        assert_eq!(c.reasoning, "r");
        assert_eq!(c.refined_instruction, "Do it");
    }

    #[test]
    fn editthinker_trailing_text_is_ignored() {
        let raw = "<think>r</think><score>{\"semantic\": 5, \"quality\": 6}</score><answer>Do it</answer>\nHope this helps! <answer>other</answer>";
        assert_eq!(parse_editthinker(raw).unwrap().refined_instruction, "Do it");
    }

    #[test]
    fn editthinker_reasoning_mentioning_score_tag() {
        let raw = "<think>I must output <score> then <answer>.</think><score>{\"semantic\": 5, \"quality\": 6}</score><answer>Do it</answer>";
        let c = parse_editthinker(raw).unwrap();
        assert_eq!(c.reasoning, "I must output <score> then <answer>.");
        assert_eq!(scores(&c), (5.0, 6.0));
    }

    #[test]
    fn editthinker_loose_score_syntax() {
        let raw = "<score>{'semantic': 4, 'quality': 9}</score><answer>z</answer>";
        assert_eq!(scores(&parse_editthinker(raw).unwrap()), (4.0, 9.0));
    }

    #[test]
    fn editthinker_empty_answer_is_allowed() {
        let c = parse_editthinker("<think>fine</think><score>[9, 9]</score><answer> </answer>")
            .unwrap();
        assert_eq!(c.refined_instruction, "");
        let c = parse_editthinker("<think>fine</think><score>[9, 9]</score><answer>").unwrap();
        assert_eq!(c.refined_instruction, "");
    }

    #[test]
    fn editthinker_requires_both_scores() {
        for raw in [
            "<think>r</think><score>{\"semantic\": 5}</score><answer>a</answer>",
            "<think>r</think><score>{\"quality\": 5}</score><answer>a</answer>",
            "<think>r</think><score>[5]</score><answer>a</answer>",
            "<think>r</think><score>[5, 6, 7]</score><answer>a</answer>",
            "<think>r</think><score></score><answer>a</answer>",
            "<think>r</think><answer>a</answer>",
        ] {
            assert!(parse_editthinker(raw).is_err(), "accepted {raw:?}");
        }
    }

    #[test]
    fn editthinker_requires_numeric_scores() {
        for raw in [
            "<score>{\"semantic\": \"high\", \"quality\": 5}</score><answer>a</answer>",
            "<score>{\"semantic\": 5, \"quality\": null}</score><answer>a</answer>",
            "<score>{\"semantic\": true, \"quality\": 5}</score><answer>a</answer>",
            "<score>[\"a\", \"b\"]</score><answer>a</answer>",
            "<score>semantic: high, quality: 5</score><answer>a</answer>",
        ] {
            assert!(parse_editthinker(raw).is_err(), "accepted {raw:?}");
        }
    }

    #[test]
    fn editthinker_requires_answer() {
        let raw = "<think>r</think><score>{\"semantic\": 5, \"quality\": 6}</score>";
        assert!(parse_editthinker(raw).is_err());
        assert!(parse_editthinker("").is_err());
        assert!(parse_editthinker("just some text").is_err());
    }

    #[test]
    fn expert_plain_json() {
        let raw = r#"{"is_satisfied": false, "reason": "The lamp was recoloured.", "new_rewritten_prompt": "Recolour the mug blue."}"#;
        let c = parse_expert(raw).unwrap();
        assert_eq!(c.is_satisfied, Some(false));
        assert_eq!(c.reasoning, "The lamp was recoloured.");
        assert_eq!(c.refined_instruction, "Recolour the mug blue.");
        assert_eq!((c.semantic, c.quality), (None, None));
        assert_eq!(Protocol::Expert.parse(raw).unwrap(), c);
    }

    #[test]
    fn expert_null_prompt_is_empty() {
        let c = parse_expert(
            r#"{"is_satisfied": true, "reason": "good", "new_rewritten_prompt": null}"#,
        )
        .unwrap();
        assert_eq!(c.is_satisfied, Some(true));
        assert_eq!(c.refined_instruction, "");
        let c = parse_expert(r#"{"is_satisfied": true, "reason": "good"}"#).unwrap();
        assert_eq!(c.refined_instruction, "");
    }

    #[test]
    fn expert_in_code_fence() {
        let raw = "```json\n{\"is_satisfied\": true, \"reason\": \"ok\", \"new_rewritten_prompt\": null}\n```";
        assert_eq!(parse_expert(raw).unwrap().is_satisfied, Some(true));
    }

    #[test]
    fn expert_with_text_around() {
        let raw = "Here is my verdict {not json} then:\n{\"is_satisfied\": false, \"reason\": \"Dog lost its {spots}.\", \"new_rewritten_prompt\": \"Keep the spots.\"}\nThanks.";
        let c = parse_expert(raw).unwrap();
        assert_eq!(c.is_satisfied, Some(false));
        assert_eq!(c.reasoning, "Dog lost its {spots}.");
        assert_eq!(c.refined_instruction, "Keep the spots.");
    }

    #[test]
    fn expert_boolean_as_string() {
        let c = parse_expert(
            r#"{"is_satisfied": "False", "reason": "r", "new_rewritten_prompt": "p"}"#,
        )
        .unwrap();
        assert_eq!(c.is_satisfied, Some(false));
    }

    #[test]
    fn expert_rejects_bad_shapes() {
        for raw in [
            "",
            "no json here",
            r#"{"reason": "r", "new_rewritten_prompt": "p"}"#,
            r#"{"is_satisfied": "maybe", "reason": "r"}"#,
            r#"{"is_satisfied": 1, "reason": "r"}"#,
            r#"{"is_satisfied": false, "reason": "r", "new_rewritten_prompt": 5}"#,
            r#"{"is_satisfied": false, "reason": 3, "new_rewritten_prompt": "p"}"#,
            r#"{"is_satisfied": false, "reason": "r", "#,
        ] {
            assert!(parse_expert(raw).is_err(), "accepted {raw:?}");
        }
    }
}
