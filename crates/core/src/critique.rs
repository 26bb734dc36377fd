//! What the thinker said about one turn.

use serde::{Deserialize, Serialize};

/// A parsed thinker answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Critique {
    /// Instruction-following score 0..=10 (`None` for the expert protocol).
    pub semantic: Option<f64>,
    /// Visual quality score 0..=10 (`None` for the expert protocol).
    pub quality: Option<f64>,
    /// The thinker's reasoning.
    pub reasoning: String,
    /// The refined instruction (may equal the previous one, or be empty).
    pub refined_instruction: String,
    /// The expert protocol's explicit verdict; `None` for EditThinker output.
    pub is_satisfied: Option<bool>,
}

impl Critique {
    /// `sqrt(semantic * quality)` when both scores are present.
    pub fn overall(&self) -> Option<f64> {
        match (self.semantic, self.quality) {
            (Some(s), Some(q)) => Some((s * q).sqrt()),
            _ => None,
        }
    }
}

/// A critique as stored on a turn: the parsed answer (if any), the verdict,
/// timing, raw output and the parse failure (if any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CritiqueRecord {
    /// Parsed answer; `None` when every attempt failed to parse or the thinker failed.
    pub critique: Option<Critique>,
    /// Whether this critique stops the loop (docs/architecture.md §2, "The loop").
    pub satisfied: bool,
    /// Wall time of the thinker calls for this turn, retries included.
    pub thinker_ms: u64,
    /// Raw output of the last attempt.
    pub raw_output: String,
    /// Why the output could not be used, when it could not.
    pub error: Option<String>,
    /// Thinker calls made for this critique.
    pub attempts: u32,
    /// The verifier's score of the same image, where a `[verifier]` judged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<crate::traits::VerifierScore>,
}

impl CritiqueRecord {
    /// Overall score of the parsed critique, if any.
    pub fn overall(&self) -> Option<f64> {
        self.critique.as_ref().and_then(Critique::overall)
    }
}
