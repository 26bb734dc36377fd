//! The Think-while-Edit loop (DESIGN.md §2) and result selection.

use std::time::Instant;

use crate::critique::{Critique, CritiqueRecord};
use crate::imaging::Image;
use crate::options::{JobOptions, Selection, StopThresholds};
use crate::parse::Protocol;
use crate::traits::{
    CritiqueRequest, EditRequest, Editor, EditorError, Thinker, ThinkerError, TurnObserver,
};

/// Loop settings that are not per job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopConfig {
    /// Thinker calls per critique when the answer does not parse (≥ 1).
    pub parse_attempts: u32,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self { parse_attempts: 3 }
    }
}

/// One turn: an edit and, once known, its critique.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRecord {
    /// Turn number, from 1.
    pub index: u32,
    /// The instruction the editor received.
    pub instruction: String,
    /// The edited image, at the source's size.
    pub image: Image,
    /// Editor wall time.
    pub editor_ms: u64,
    /// The critique of this turn's image, once made.
    pub critique: Option<CritiqueRecord>,
}

/// How a loop ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopOutcome {
    /// Every turn, in order.
    pub turns: Vec<TurnRecord>,
    /// The selected turn's number.
    pub selected: u32,
    /// Set when the editor refused a refined instruction, which ended the loop.
    pub refusal: Option<String>,
}

/// Why a loop could not finish.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoopError {
    /// The editor failed on `turn`.
    #[error("turn {turn}: {error}")]
    Editor {
        /// Turn number.
        turn: u32,
        /// The failure.
        error: EditorError,
    },
    /// The thinker failed while critiquing `turn`.
    #[error("critique of turn {turn}: {error}")]
    Thinker {
        /// Turn number.
        turn: u32,
        /// The failure.
        error: ThinkerError,
    },
    /// The editor's image could not be used.
    #[error("turn {turn}: the editor returned an unusable image: {message}")]
    BadEditorImage {
        /// Turn number.
        turn: u32,
        /// What was wrong.
        message: String,
    },
    /// Recording progress failed (e.g. the lease was lost).
    #[error("could not record progress: {0}")]
    Persist(String),
}

/// Whether `critique` stops the loop, given the instruction it judged.
pub fn is_satisfied(critique: &Critique, previous: &str, stop: &StopThresholds) -> bool {
    let refined = critique.refined_instruction.trim();
    if refined.is_empty() || refined == previous.trim() {
        return true;
    }
    match critique.is_satisfied {
        Some(verdict) => verdict,
        None => match (critique.semantic, critique.quality) {
            (Some(s), Some(q)) => s >= stop.semantic && q >= stop.quality,
            _ => false,
        },
    }
}

/// Picks the result turn (DESIGN.md §2 `selection`). `turns` must not be empty.
pub fn select_turn(turns: &[TurnRecord], selection: Selection) -> u32 {
    let last = turns.last().expect("a finished loop has at least one turn");
    let satisfied = |t: &&TurnRecord| t.critique.as_ref().is_some_and(|c| c.satisfied);
    if selection == Selection::Best {
        let mut best: Option<(f64, u32)> = None;
        for turn in turns {
            if let Some(score) = turn.critique.as_ref().and_then(CritiqueRecord::overall) {
                // Strictly greater: ties go to the earlier turn.
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, turn.index));
                }
            }
        }
        if let Some((_, index)) = best {
            return index;
        }
        // No numeric scores (expert protocol or parse failures): last satisfied, else last.
        return turns.iter().rev().find(satisfied).unwrap_or(last).index;
    }
    turns.iter().find(satisfied).unwrap_or(last).index
}

/// Runs the loop from wherever `prior` left it (empty for a new job).
///
/// Each step is reported to `observer` before the next begins, so a job
/// resumed with the recorded turns never repeats a finished edit or critique.
#[allow(clippy::too_many_arguments)]
pub async fn run_loop(
    source: &Image,
    instruction: &str,
    options: &JobOptions,
    config: &LoopConfig,
    prior: Vec<TurnRecord>,
    editor: &dyn Editor,
    thinker: &dyn Thinker,
    observer: &dyn TurnObserver,
) -> Result<LoopOutcome, LoopError> {
    let mut turns = prior;
    let max_turns = options.max_turns.max(1);
    if turns.is_empty() {
        // The first edit uses the user's words unchanged.
        let turn = edit(source, instruction, 1, editor, observer).await?;
        turns.push(turn);
    }
    let mut refusal = None;
    loop {
        let last = turns.last_mut().expect("at least one turn");
        let is_final_turn = last.index >= max_turns;
        if last.critique.is_none() {
            if is_final_turn && options.selection == Selection::Last {
                break; // The paper never critiques the last image.
            }
            let record = critique(source, instruction, last, options, config, thinker).await?;
            observer
                .turn_critiqued(last.index, &record)
                .await
                .map_err(LoopError::Persist)?;
            last.critique = Some(record);
        }
        let record = last.critique.as_ref().expect("critiqued above");
        if record.satisfied || is_final_turn {
            break;
        }
        // On a parse failure, the previous instruction is kept.
        let next_instruction = record
            .critique
            .as_ref()
            .map_or(last.instruction.clone(), |c| {
                c.refined_instruction.trim().to_string()
            });
        let next_index = last.index + 1;
        match edit(source, &next_instruction, next_index, editor, observer).await {
            Ok(turn) => turns.push(turn),
            Err(LoopError::Editor {
                error: EditorError::Refused(reason),
                ..
            }) => {
                // A refused refinement ends the loop; earlier turns still count.
                refusal = Some(reason);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let selected = select_turn(&turns, options.selection);
    Ok(LoopOutcome {
        turns,
        selected,
        refusal,
    })
}

async fn edit(
    source: &Image,
    instruction: &str,
    index: u32,
    editor: &dyn Editor,
    observer: &dyn TurnObserver,
) -> Result<TurnRecord, LoopError> {
    let started = Instant::now();
    let output = editor
        .edit(EditRequest {
            source,
            instruction,
            turn: index,
        })
        .await
        .map_err(|error| LoopError::Editor { turn: index, error })?;
    let image = output
        .resized_to(source.width, source.height)
        .map_err(|e| LoopError::BadEditorImage {
            turn: index,
            message: e.to_string(),
        })?;
    let turn = TurnRecord {
        index,
        instruction: instruction.to_string(),
        image,
        editor_ms: elapsed_ms(started),
        critique: None,
    };
    observer
        .turn_edited(&turn)
        .await
        .map_err(LoopError::Persist)?;
    Ok(turn)
}

async fn critique(
    source: &Image,
    original: &str,
    turn: &TurnRecord,
    options: &JobOptions,
    config: &LoopConfig,
    thinker: &dyn Thinker,
) -> Result<CritiqueRecord, LoopError> {
    let started = Instant::now();
    let protocol: Protocol = thinker.protocol();
    let attempts = config.parse_attempts.max(1);
    let mut raw_output = String::new();
    let mut error = None;
    for attempt in 1..=attempts {
        raw_output = thinker
            .critique(CritiqueRequest {
                source,
                edited: &turn.image,
                original_instruction: original,
                previous_instruction: &turn.instruction,
                turn: turn.index,
            })
            .await
            .map_err(|error| LoopError::Thinker {
                turn: turn.index,
                error,
            })?;
        match protocol.parse(&raw_output) {
            Ok(parsed) => {
                let satisfied = is_satisfied(&parsed, &turn.instruction, &options.stop);
                return Ok(CritiqueRecord {
                    critique: Some(parsed),
                    satisfied,
                    thinker_ms: elapsed_ms(started),
                    raw_output,
                    error: None,
                    attempts: attempt,
                });
            }
            Err(e) => error = Some(e.to_string()),
        }
    }
    Ok(CritiqueRecord {
        critique: None,
        satisfied: false,
        thinker_ms: elapsed_ms(started),
        raw_output,
        error,
        attempts,
    })
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
