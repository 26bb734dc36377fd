//! The Think-while-Edit loop (docs/architecture.md §2) and result selection.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::critique::{Critique, CritiqueRecord};
use crate::imaging::Image;
use crate::options::{Budget, History, JobOptions, RankBy, Selection, StopThresholds};
use crate::parse::Protocol;
use crate::traits::{
    CritiqueRequest, EditCheckpoint, EditRequest, Editor, EditorError, HistoryEntry,
    ProviderRequest, Thinker, ThinkerError, ThinkingSink, TurnObserver, Verifier, VerifyRequest,
};
use crate::usage::{CallKind, Held, LedgerEntry, ProviderCall, Spending, Tokens};

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
    /// The edited image, at the source's size. Only the newest turn keeps
    /// it while its critique is pending: the loop drops older images, and a
    /// resumed job loads none it does not need, so a job's memory does not
    /// grow with its turns.
    pub image: Option<Image>,
    /// Editor wall time.
    pub editor_ms: u64,
    /// The critique of this turn's image, once made.
    pub critique: Option<CritiqueRecord>,
}

/// An edit submitted to an asynchronous provider whose result was not yet
/// recorded as a turn when the job stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEdit {
    /// The turn it is for.
    pub turn: u32,
    /// The candidate it is for (0 in a one-candidate turn).
    pub candidate: u32,
    /// The instruction it was submitted with.
    pub instruction: String,
    /// The provider's handle.
    pub request: ProviderRequest,
}

/// One candidate of a turn that edits several (`options.candidates`),
/// recorded on its own as soon as its edit and then its critique finish.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateRecord {
    /// Its turn, from 1.
    pub turn: u32,
    /// Its number within the turn, from 0.
    pub index: u32,
    /// The instruction the editor received (the same for every candidate).
    pub instruction: String,
    /// The seed it asked the provider for.
    pub seed: Option<i64>,
    /// The edited image: kept until its critique is made.
    pub image: Option<Image>,
    /// Editor wall time.
    pub editor_ms: u64,
    /// Its critique (with the verifier's score), once made.
    pub critique: Option<CritiqueRecord>,
}

impl CandidateRecord {
    /// The turn this candidate is when its turn is it (a one-candidate
    /// turn) or chose it.
    fn as_turn(&self) -> TurnRecord {
        TurnRecord {
            index: self.turn,
            instruction: self.instruction.clone(),
            image: self.image.clone(),
            editor_ms: self.editor_ms,
            critique: self.critique.clone(),
        }
    }
}

/// How a turn's candidate was chosen: the `turn.chosen` event (contract).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// The chosen candidate.
    pub candidate: u32,
    /// Its ranking score, when it has one.
    pub score: Option<f64>,
    /// Which score ranked the candidates.
    pub by: RankBy,
}

/// What a job already did before this run: its recorded turns, the
/// candidates of a turn not yet chosen, and the edits in flight.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    /// Recorded turns, in order.
    pub turns: Vec<TurnRecord>,
    /// Asynchronous edits submitted but not recorded.
    pub pending_edits: Vec<PendingEdit>,
    /// Recorded candidates of the turn after the last recorded one.
    pub candidates: Vec<CandidateRecord>,
}

impl From<Vec<TurnRecord>> for Progress {
    fn from(turns: Vec<TurnRecord>) -> Self {
        Self {
            turns,
            ..Self::default()
        }
    }
}

/// The editor turned down a refined instruction, which ended the loop
/// early; the result is selected among the earlier turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditRefusal {
    /// The turn that was turned down (never recorded).
    pub turn: u32,
    /// The instruction it was given.
    pub instruction: String,
    /// The provider's reason.
    pub reason: String,
    /// Whether the editor refused it (moderation, safety) or rejected it
    /// as invalid.
    pub kind: RefusalKind,
}

/// Why the editor turned down a refined instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// Moderation or safety ([`EditorError::Refused`]).
    Refused,
    /// Rejected as an invalid request ([`EditorError::Invalid`]).
    Invalid,
}

impl RefusalKind {
    /// The JSON spelling (`"refused"`, `"invalid"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Invalid => "invalid",
        }
    }
}

/// How a loop ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopOutcome {
    /// Every turn, in order.
    pub turns: Vec<TurnRecord>,
    /// The selected turn's number.
    pub selected: u32,
    /// Set when the editor refused a refined instruction, which ended the loop.
    pub refusal: Option<EditRefusal>,
    /// Why the loop stopped.
    pub stop: StopReason,
}

/// Why a finished job stopped: the job JSON's `stop_reason` (contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The thinker judged the edit good enough (or had nothing to refine).
    Satisfied,
    /// `max_turns` edits were made.
    MaxTurns,
    /// The editor refused a refined instruction (moderation, safety).
    Refusal,
    /// The editor rejected a refined instruction as invalid.
    InvalidRefinement,
    /// The best overall score stopped rising (`options.stop.patience`).
    Plateau,
    /// The next edit would not fit `options.budget`.
    Budget,
    /// The job's deadline passed.
    Deadline,
    /// The client canceled the job.
    Canceled,
    /// The job failed.
    Failed,
}

impl StopReason {
    /// The contract name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Satisfied => "satisfied",
            Self::MaxTurns => "max_turns",
            Self::Refusal => "refusal",
            Self::InvalidRefinement => "invalid_refinement",
            Self::Plateau => "plateau",
            Self::Budget => "budget",
            Self::Deadline => "deadline",
            Self::Canceled => "canceled",
            Self::Failed => "failed",
        }
    }

    /// Parses a contract name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Satisfied,
            Self::MaxTurns,
            Self::Refusal,
            Self::InvalidRefinement,
            Self::Plateau,
            Self::Budget,
            Self::Deadline,
            Self::Canceled,
            Self::Failed,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
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
    /// The verifier failed while scoring `turn` (or the job needs a
    /// verifier this worker lacks).
    #[error("verification of turn {turn}: {error}")]
    Verifier {
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
    /// Recording progress failed.
    #[error("could not record progress: {0}")]
    Persist(String),
    /// The observer reported a stop from outside at a step boundary.
    #[error("stopped from outside")]
    Stopped,
    /// `options.budget` leaves no room for the first edit.
    #[error("the budget leaves no room for an edit: {0}")]
    BudgetExhausted(String),
}

impl From<crate::ObserverError> for LoopError {
    fn from(error: crate::ObserverError) -> Self {
        match error {
            crate::ObserverError::Stopped => Self::Stopped,
            crate::ObserverError::Failed(message) => Self::Persist(message),
        }
    }
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

/// Whether the best overall score has stalled: with `stop.patience` = p
/// above 0 and at least p + 1 turns, the best score over every turn is less
/// than `stop.min_gain` above the best score before the last p turns. Turns
/// without a numeric score count as no progress.
pub fn has_plateaued(turns: &[TurnRecord], stop: &StopThresholds) -> bool {
    let patience = stop.patience as usize;
    if patience == 0 || turns.len() <= patience {
        return false;
    }
    let best = |turns: &[TurnRecord]| {
        turns
            .iter()
            .filter_map(|t| t.critique.as_ref().and_then(CritiqueRecord::overall))
            .fold(None, |best: Option<f64>, score| {
                Some(best.map_or(score, |b| b.max(score)))
            })
    };
    let before = best(&turns[..turns.len() - patience]);
    match (before, best(turns)) {
        (Some(before), Some(now)) => now - before < stop.min_gain,
        // Nothing scored before the window: the window is the first progress.
        (None, _) => false,
        (Some(_), None) => unreachable!("the whole includes the part"),
    }
}

/// What the thinker is told of `turn`'s predecessors with `history = "all"`.
pub fn history_before(turns: &[TurnRecord], turn: u32) -> Vec<HistoryEntry> {
    turns
        .iter()
        .filter(|t| t.index < turn)
        .map(|t| {
            let critique = t.critique.as_ref().and_then(|c| c.critique.as_ref());
            HistoryEntry {
                turn: t.index,
                instruction: t.instruction.clone(),
                semantic: critique.and_then(|c| c.semantic),
                quality: critique.and_then(|c| c.quality),
                reason: critique.map_or_else(String::new, |c| one_line(&c.reasoning)),
            }
        })
        .collect()
}

/// The first sentence of `text` on one line, at most 200 characters.
fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let sentence = flat.find(". ").map_or(flat.as_str(), |end| &flat[..=end]);
    cap_instruction(sentence, 200)
}

/// Picks the result turn (docs/api.md "Loop options", `selection`). `turns` must not be empty.
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

/// One run of the loop: the job it works on and where the job stands.
#[derive(Debug)]
pub struct LoopJob<'a> {
    /// The source image.
    pub source: &'a Image,
    /// The client's instruction.
    pub instruction: &'a str,
    /// The job's options.
    pub options: &'a JobOptions,
    /// The server's loop settings.
    pub config: &'a LoopConfig,
    /// What earlier attempts recorded (empty for a new job).
    pub progress: Progress,
    /// What earlier attempts spent, and the prices of the next calls.
    pub spending: Spending,
    /// Where the job's candidate seeds come from ([`candidate_seed`]): the
    /// same for every attempt, so a resumed turn asks for the same seeds.
    pub seed_base: u64,
}

/// Who the loop works with.
#[derive(Clone, Copy)]
pub struct LoopParts<'a> {
    /// Makes the edits.
    pub editor: &'a dyn Editor,
    /// Critiques them.
    pub thinker: &'a dyn Thinker,
    /// Scores every candidate a second time, where one is configured.
    pub verifier: Option<&'a dyn Verifier>,
    /// Records each step before the next begins.
    pub observer: &'a dyn TurnObserver,
}

/// The seed of candidate `candidate` of turn `turn`: a mix of the job's
/// `seed_base` and both numbers, within 0..=2³¹−1 (every provider's range).
pub fn candidate_seed(seed_base: u64, turn: u32, candidate: u32) -> i64 {
    // splitmix64's finaliser: neighbouring inputs give unrelated seeds.
    let mut z = seed_base ^ (u64::from(turn) << 32 | u64::from(candidate));
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    i64::try_from(z & 0x7FFF_FFFF).expect("31 bits fit")
}

/// Picks a turn's candidate: the highest ranking score (`by`), ties to the
/// lower number; without any score, the first satisfied one, else the first.
/// `candidates` must not be empty.
pub fn choose_candidate(candidates: &[CandidateRecord], by: RankBy) -> Choice {
    let score = |c: &CandidateRecord| {
        let critique = c.critique.as_ref()?;
        match by {
            RankBy::Thinker => critique.overall(),
            RankBy::Verifier => critique.verifier.map(|v| v.overall),
        }
    };
    let mut best: Option<(f64, u32)> = None;
    for candidate in candidates {
        if let Some(s) = score(candidate) {
            if best.is_none_or(|(b, i)| s > b || (s == b && candidate.index < i)) {
                best = Some((s, candidate.index));
            }
        }
    }
    let candidate = best.map(|(_, i)| i).unwrap_or_else(|| {
        candidates
            .iter()
            .find(|c| c.critique.as_ref().is_some_and(|c| c.satisfied))
            .unwrap_or(&candidates[0])
            .index
    });
    Choice {
        candidate,
        score: best.map(|(s, _)| s),
        by,
    }
}

/// Runs the loop from wherever `job.progress` left it (empty for a new
/// job).
///
/// Each step is reported to the observer before the next begins, so a job
/// resumed with the recorded turns never repeats a finished edit or critique.
pub async fn run_loop(job: LoopJob<'_>, parts: LoopParts<'_>) -> Result<LoopOutcome, LoopError> {
    let LoopJob {
        source,
        instruction,
        options,
        config,
        progress: prior,
        spending,
        seed_base,
    } = job;
    let LoopParts {
        editor,
        thinker,
        verifier,
        observer,
    } = parts;
    let Progress {
        mut turns,
        pending_edits,
        candidates: mut prior_candidates,
    } = prior;
    if let (Some(field), None) = (options.verifier_field(), verifier) {
        return Err(LoopError::Verifier {
            turn: turns.len() as u32 + 1,
            error: ThinkerError::Invalid(format!(
                "{field} needs a verifier, and this worker has no [verifier] section"
            )),
        });
    }
    let meter = Meter {
        state: std::sync::Mutex::new((spending, Held::default())),
        budget: options.budget,
        observer,
    };
    let edits = Edits {
        source,
        editor,
        observer,
        meter: &meter,
        pending: pending_edits,
        seed_base,
    };
    let critic = Critic {
        source,
        original: instruction,
        options,
        config,
        thinker,
        verifier,
        observer,
        meter: &meter,
    };
    let max_turns = options.max_turns.max(1);
    if turns.is_empty() {
        // The first edit uses the user's words unchanged.
        let prior = std::mem::take(&mut prior_candidates);
        match make_turn(&edits, critic, 1, instruction, &turns, prior).await? {
            Some(turn) => turns.push(turn),
            None => return Err(LoopError::BudgetExhausted(meter.describe())),
        }
    }
    let mut refusal = None;
    let mut stop = StopReason::MaxTurns;
    loop {
        let index = turns.last().expect("at least one turn").index;
        let is_final_turn = index >= max_turns;
        if turns.last().is_some_and(|t| t.critique.is_none()) {
            if is_final_turn && options.selection == Selection::Last {
                break; // The paper never critiques the last image.
            }
            let history = history_for(options, &turns, index);
            let last = turns.last_mut().expect("at least one turn");
            let image = last.image.as_ref().ok_or_else(|| {
                LoopError::Persist(format!("the image of turn {index} was not loaded"))
            })?;
            let record =
                critique(critic, (index, 0), &last.instruction, image, &history, None).await?;
            observer.turn_critiqued(index, &record).await?;
            last.critique = Some(record);
        }
        let last = turns.last().expect("at least one turn");
        if last.critique.as_ref().is_some_and(|c| c.satisfied) {
            stop = StopReason::Satisfied;
            break;
        }
        if is_final_turn {
            break;
        }
        if has_plateaued(&turns, &options.stop) {
            stop = StopReason::Plateau;
            break;
        }
        let last = turns.last_mut().expect("at least one turn");
        let record = last.critique.as_ref().expect("critiqued above");
        // On a parse failure, the previous instruction is kept.
        let next_instruction = record
            .critique
            .as_ref()
            .map_or(last.instruction.clone(), |c| {
                cap_instruction(c.refined_instruction.trim(), editor.max_instruction_chars())
            });
        let next_index = last.index + 1;
        // The critiqued image is no longer needed: the next edit starts
        // from the source again.
        last.image = None;
        let prior = std::mem::take(&mut prior_candidates);
        match make_turn(&edits, critic, next_index, &next_instruction, &turns, prior).await {
            Ok(Some(turn)) => turns.push(turn),
            Ok(None) => {
                stop = StopReason::Budget;
                break;
            }
            Err(LoopError::Editor { error, .. })
                if matches!(error, EditorError::Refused(_) | EditorError::Invalid(_)) =>
            {
                // A refinement the editor turns down ends the loop; earlier
                // turns still count.
                let (kind, reason) = match error {
                    EditorError::Refused(reason) => (RefusalKind::Refused, reason),
                    EditorError::Invalid(reason) => (RefusalKind::Invalid, reason),
                    _ => unreachable!("matched above"),
                };
                stop = match kind {
                    RefusalKind::Refused => StopReason::Refusal,
                    RefusalKind::Invalid => StopReason::InvalidRefinement,
                };
                refusal = Some(EditRefusal {
                    turn: next_index,
                    instruction: next_instruction,
                    reason,
                    kind,
                });
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
        stop,
    })
}

/// What the thinker is told of the turns before `index`.
fn history_for(options: &JobOptions, turns: &[TurnRecord], index: u32) -> Vec<HistoryEntry> {
    match options.history {
        History::All => history_before(turns, index),
        History::Previous => Vec::new(),
    }
}

/// Makes turn `index` with `instruction`: `Ok(None)` when the budget leaves
/// no room for it. A one-candidate turn comes back edited, its critique left
/// to the loop (the paper's order); a turn of several candidates comes back
/// critiqued and chosen.
async fn make_turn(
    edits: &Edits<'_>,
    critic: Critic<'_>,
    index: u32,
    instruction: &str,
    turns: &[TurnRecord],
    prior: Vec<CandidateRecord>,
) -> Result<Option<TurnRecord>, LoopError> {
    let wanted = critic.options.candidates_for(index);
    if wanted == 1 && prior.is_empty() {
        let resumed = edits.resumed(index, 0, instruction).is_some();
        let Some(hold) = (if resumed {
            Some(Hold::none(edits.meter))
        } else {
            edits.meter.reserve(1).pop()
        }) else {
            return Ok(None);
        };
        let edited = edits.edit(instruction, (index, 0), None, &hold).await?;
        return Ok(Some(edited.as_turn()));
    }
    let history = history_for(critic.options, turns, index);
    let Some(candidates) =
        edit_candidates(edits, critic, index, instruction, wanted, prior, &history).await?
    else {
        return Ok(None);
    };
    let choice = choose_candidate(&candidates, critic.options.rank_by);
    let chosen = candidates
        .iter()
        .find(|c| c.index == choice.candidate)
        .expect("the choice is one of them");
    // Critiqued candidates no longer hold their images.
    let turn = chosen.as_turn();
    critic.observer.turn_chosen(&turn, &choice).await?;
    Ok(Some(turn))
}

/// Edits and critiques the candidates of turn `index` that `prior` lacks,
/// concurrently, each recorded as soon as it finishes; `Ok(None)` when the
/// budget leaves room for none. A candidate the editor turns down is left
/// out; the turn fails with the refusal only when every candidate does.
async fn edit_candidates(
    edits: &Edits<'_>,
    critic: Critic<'_>,
    index: u32,
    instruction: &str,
    wanted: u32,
    prior: Vec<CandidateRecord>,
    history: &[HistoryEntry],
) -> Result<Option<Vec<CandidateRecord>>, LoopError> {
    let prior: Vec<CandidateRecord> = prior
        .into_iter()
        .filter(|c| c.turn == index && c.instruction == instruction && c.index < wanted)
        .collect();
    let missing: Vec<u32> = (0..wanted)
        .filter(|c| prior.iter().all(|p| p.index != *c))
        .collect();
    // Edits a provider already accepted resume without a new reservation.
    let (resumed, fresh): (Vec<u32>, Vec<u32>) = missing
        .into_iter()
        .partition(|&c| edits.resumed(index, c, instruction).is_some());
    let mut holds = edits.meter.reserve(fresh.len() as u32);
    let started: Vec<(u32, Hold<'_>)> = resumed
        .into_iter()
        .map(|c| (c, Hold::none(edits.meter)))
        .chain(fresh.into_iter().zip(std::iter::from_fn(|| holds.pop())))
        .collect();
    if prior.is_empty() && started.is_empty() {
        return Ok(None);
    }
    let (done, to_critique): (Vec<_>, Vec<_>) =
        prior.into_iter().partition(|c| c.critique.is_some());
    let seed = |c: u32| Some(candidate_seed(edits.seed_base, index, c));
    let fresh_work = started.into_iter().map(|(c, hold)| async move {
        let edited = edits.edit(instruction, (index, c), seed(c), &hold).await?;
        critique_candidate(critic, edited, history, Some(&hold)).await
    });
    let resumed_work = to_critique
        .into_iter()
        .map(|c| critique_candidate(critic, c, history, None));
    let (fresh_results, resumed_results) = futures::future::join(
        futures::future::join_all(fresh_work),
        futures::future::join_all(resumed_work),
    )
    .await;
    let mut finished = done;
    let mut refused = None;
    for result in fresh_results.into_iter().chain(resumed_results) {
        match result {
            Ok(candidate) => finished.push(candidate),
            Err(e @ LoopError::Editor { .. }) if is_refusal(&e) => {
                refused.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    if finished.is_empty() {
        return Err(refused.expect("a candidate that did not finish failed"));
    }
    finished.sort_by_key(|c| c.index);
    Ok(Some(finished))
}

/// Critiques an edited candidate and records the critique.
async fn critique_candidate(
    critic: Critic<'_>,
    mut candidate: CandidateRecord,
    history: &[HistoryEntry],
    hold: Option<&Hold<'_>>,
) -> Result<CandidateRecord, LoopError> {
    let at = (candidate.turn, candidate.index);
    let image = candidate.image.take().ok_or_else(|| {
        LoopError::Persist(format!(
            "the image of candidate {} of turn {} was not loaded",
            at.1, at.0
        ))
    })?;
    let record = critique(critic, at, &candidate.instruction, &image, history, hold).await?;
    critic
        .observer
        .candidate_critiqued(at.0, at.1, &record)
        .await?;
    candidate.critique = Some(record);
    Ok(candidate)
}

fn is_refusal(error: &LoopError) -> bool {
    matches!(
        error,
        LoopError::Editor {
            error: EditorError::Refused(_) | EditorError::Invalid(_),
            ..
        }
    )
}

/// Prices each paid call, keeps the job's spending and what calls in
/// flight hold, and reports each call to the observer for the ledger.
struct Meter<'a> {
    state: std::sync::Mutex<(Spending, Held)>,
    budget: Budget,
    observer: &'a dyn TurnObserver,
}

/// What one candidate in flight holds of the budget until its calls are
/// paid; whatever is left is given back when it is dropped.
struct Hold<'m> {
    meter: &'m Meter<'m>,
    left: std::sync::Mutex<Held>,
}

impl<'m> Hold<'m> {
    /// A hold of nothing (a resumed request was reserved by its attempt).
    fn none(meter: &'m Meter<'m>) -> Self {
        Self {
            meter,
            left: std::sync::Mutex::new(Held::default()),
        }
    }

    /// Gives back the part of the hold that `call` was reserved at.
    fn release(&self, call: CallKind) {
        let mut left = self.left.lock().expect("hold lock");
        let mut state = self.meter.state.lock().expect("spending lock");
        let (spending, held) = &mut *state;
        let part = match call {
            CallKind::Editor => {
                let calls = left.editor_calls.min(1);
                left.editor_calls -= calls;
                held.editor_calls -= calls;
                spending.prices.per_editor_call
            }
            CallKind::Thinker => spending.critique_cost(),
            CallKind::Verifier => spending.verification_cost(),
        };
        let part = part.min(left.cost);
        left.cost -= part;
        held.cost = (held.cost - part).max(0.0);
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let left = *self.left.lock().expect("hold lock");
        let mut state = self.meter.state.lock().expect("spending lock");
        let held = &mut state.1;
        held.editor_calls -= left.editor_calls;
        held.cost = (held.cost - left.cost).max(0.0);
    }
}

impl<'m> Meter<'m> {
    fn spending(&self) -> Spending {
        self.state.lock().expect("spending lock").0
    }

    /// Holds the budget for as many of `wanted` new candidates as fit.
    fn reserve(&'m self, wanted: u32) -> Vec<Hold<'m>> {
        let mut state = self.state.lock().expect("spending lock");
        let (spending, held) = &mut *state;
        let n = spending.candidates_that_fit(&self.budget, *held, wanted);
        let each = Held {
            editor_calls: 1,
            cost: spending.candidate_cost(),
        };
        held.editor_calls += n;
        held.cost += f64::from(n) * each.cost;
        (0..n)
            .map(|_| Hold {
                meter: self,
                left: std::sync::Mutex::new(each),
            })
            .collect()
    }

    /// Whether another critique call fits the budget beside what calls in
    /// flight hold.
    fn critique_fits(&self) -> bool {
        let (spending, held) = *self.state.lock().expect("spending lock");
        spending.critique_fits(&self.budget, held)
    }

    /// What was spent, against the budget, in words.
    fn describe(&self) -> String {
        let s = self.spending();
        format!(
            "{} editor calls and {:.4} spent, {:.4} reserved for an edit and its critique; \
             budget: {} editor calls, {} cost",
            s.editor_calls,
            s.cost,
            s.candidate_cost(),
            self.budget
                .max_editor_calls
                .map_or_else(|| "any".into(), |n| n.to_string()),
            self.budget
                .max_cost
                .map_or_else(|| "any".into(), |c| c.to_string()),
        )
    }

    /// Prices `call`, counts it (giving back what `hold` kept for it), and
    /// hands it to the observer.
    async fn paid(&self, call: ProviderCall, hold: Option<&Hold<'_>>) -> Result<(), LoopError> {
        if let Some(hold) = hold {
            hold.release(call.kind);
        }
        let entry = {
            let mut state = self.state.lock().expect("spending lock");
            let spending = &mut state.0;
            let entry = LedgerEntry {
                cost: spending.prices.cost(&call),
                call,
            };
            spending.add(&entry);
            entry
        };
        Ok(self.observer.call_made(&entry).await?)
    }
}

/// What every edit of one run shares.
struct Edits<'a> {
    source: &'a Image,
    editor: &'a dyn Editor,
    observer: &'a dyn TurnObserver,
    meter: &'a Meter<'a>,
    pending: Vec<PendingEdit>,
    seed_base: u64,
}

impl Edits<'_> {
    /// The provider request this very edit (turn, candidate and
    /// instruction) left in flight, if any: resuming it buys nothing new.
    fn resumed(&self, index: u32, candidate: u32, instruction: &str) -> Option<&ProviderRequest> {
        self.pending
            .iter()
            .find(|p| p.turn == index && p.candidate == candidate && p.instruction == instruction)
            .map(|p| &p.request)
    }

    /// Edits candidate `at.1` of turn `at.0` and records it: as the turn
    /// itself in a one-candidate turn (`seed` `None`), as a candidate
    /// otherwise.
    async fn edit(
        &self,
        instruction: &str,
        at: (u32, u32),
        seed: Option<i64>,
        hold: &Hold<'_>,
    ) -> Result<CandidateRecord, LoopError> {
        let (index, candidate) = at;
        let started = Instant::now();
        // Only the very edit that was in flight resumes its provider request.
        let resume = self.resumed(index, candidate, instruction);
        if resume.is_none() {
            self.observer.before_edit(index).await?;
        }
        let checkpoint = TurnCheckpoint {
            observer: self.observer,
            turn: index,
            candidate,
            instruction,
        };
        let output = self
            .editor
            .edit(EditRequest {
                source: self.source,
                instruction,
                turn: index,
                candidate,
                seed,
                resume,
                checkpoint: &checkpoint,
            })
            .await
            .map_err(|error| LoopError::Editor { turn: index, error })?;
        self.meter
            .paid(
                ProviderCall {
                    kind: CallKind::Editor,
                    turn: index,
                    seconds: started.elapsed().as_secs_f64(),
                    tokens: Tokens::default(),
                },
                Some(hold),
            )
            .await?;
        let (width, height) = (self.source.width, self.source.height);
        let image = crate::imaging::off_thread(move || output.resized_to(width, height))
            .await
            .map_err(|e| LoopError::BadEditorImage {
                turn: index,
                message: e.to_string(),
            })?;
        let record = CandidateRecord {
            turn: index,
            index: candidate,
            instruction: instruction.to_string(),
            seed,
            image: Some(image),
            editor_ms: elapsed_ms(started),
            critique: None,
        };
        if seed.is_none() {
            self.observer.turn_edited(&record.as_turn()).await?;
        } else {
            self.observer.candidate_edited(&record).await?;
        }
        Ok(record)
    }
}

/// Forwards an editor's provider request to the observer with its turn.
struct TurnCheckpoint<'a> {
    observer: &'a dyn TurnObserver,
    turn: u32,
    candidate: u32,
    instruction: &'a str,
}

#[async_trait::async_trait]
impl EditCheckpoint for TurnCheckpoint<'_> {
    async fn submitted(&self, request: &ProviderRequest) -> Result<(), EditorError> {
        self.observer
            .edit_submitted(self.turn, self.candidate, self.instruction, request)
            .await
            // Not the provider's fault: a requeue lets a fresh run resume it.
            .map_err(|e| {
                EditorError::Transient(format!("could not record the provider request: {e}"))
            })
    }
}

/// Forwards a thinker's live text to the observer with its turn and candidate.
struct TurnThinking<'a> {
    observer: &'a dyn TurnObserver,
    turn: u32,
    candidate: u32,
}

impl ThinkingSink for TurnThinking<'_> {
    fn delta(&self, text: &str) {
        self.observer.thinking(self.turn, self.candidate, text);
    }
}

/// What every critique of one run shares.
#[derive(Clone, Copy)]
struct Critic<'a> {
    source: &'a Image,
    original: &'a str,
    options: &'a JobOptions,
    config: &'a LoopConfig,
    thinker: &'a dyn Thinker,
    verifier: Option<&'a dyn Verifier>,
    observer: &'a dyn TurnObserver,
    meter: &'a Meter<'a>,
}

/// Critiques candidate `at.1` of turn `at.0` (`edited`, made with
/// `instruction`), with the verifier's score beside it when there is a
/// verifier: both calls run at once. `hold` is what the candidate's
/// reservation still keeps for these calls.
async fn critique(
    critic: Critic<'_>,
    at: (u32, u32),
    instruction: &str,
    edited: &Image,
    history: &[HistoryEntry],
    hold: Option<&Hold<'_>>,
) -> Result<CritiqueRecord, LoopError> {
    let verification = async {
        match critic.verifier {
            Some(verifier) => verify(critic, verifier, at, edited, hold).await.map(Some),
            None => Ok(None),
        }
    };
    let (record, verifier) = futures::future::join(
        think(critic, at, instruction, edited, history, hold),
        verification,
    )
    .await;
    let (mut record, verifier) = (record?, verifier?);
    if let Some(score) = verifier {
        if let Some(thinker) = record.overall() {
            crate::metrics::verifier_gap(thinker, score.overall);
        }
        record.verifier = Some(score);
    }
    if let Some(gate) = critic.options.stop.verifier {
        // The thinker's verdict counts only with the verifier's agreement.
        record.satisfied &= record.verifier.is_some_and(|v| v.overall >= gate);
    }
    Ok(record)
}

async fn verify(
    critic: Critic<'_>,
    verifier: &dyn Verifier,
    (turn, candidate): (u32, u32),
    edited: &Image,
    hold: Option<&Hold<'_>>,
) -> Result<crate::traits::VerifierScore, LoopError> {
    let started = Instant::now();
    let answer = verifier
        .score(VerifyRequest {
            source: critic.source,
            edited,
            instruction: critic.original,
            turn,
            candidate,
        })
        .await
        .map_err(|error| LoopError::Verifier { turn, error })?;
    critic
        .meter
        .paid(
            ProviderCall {
                kind: CallKind::Verifier,
                turn,
                seconds: started.elapsed().as_secs_f64(),
                tokens: answer.tokens,
            },
            hold,
        )
        .await?;
    Ok(answer.score)
}

async fn think(
    critic: Critic<'_>,
    (turn, candidate): (u32, u32),
    instruction: &str,
    edited: &Image,
    history: &[HistoryEntry],
    hold: Option<&Hold<'_>>,
) -> Result<CritiqueRecord, LoopError> {
    let Critic {
        source,
        original,
        options,
        config,
        thinker,
        observer,
        meter,
        ..
    } = critic;
    let started = Instant::now();
    let thinking = TurnThinking {
        observer,
        turn,
        candidate,
    };
    let protocol: Protocol = thinker.protocol();
    let attempts = config.parse_attempts.max(1);
    let mut raw_output = String::new();
    let mut error = None;
    let mut attempts_made = 0;
    for attempt in 1..=attempts {
        // The first call was reserved with its edit; a parse retry must fit.
        if attempt > 1 && !meter.critique_fits() {
            break;
        }
        attempts_made = attempt;
        let call_started = Instant::now();
        let answer = thinker
            .critique(CritiqueRequest {
                source,
                edited,
                original_instruction: original,
                previous_instruction: instruction,
                turn,
                history,
                thinking: &thinking,
            })
            .await
            .map_err(|error| LoopError::Thinker { turn, error })?;
        meter
            .paid(
                ProviderCall {
                    kind: CallKind::Thinker,
                    turn,
                    seconds: call_started.elapsed().as_secs_f64(),
                    tokens: answer.tokens,
                },
                // The first call was reserved; retries were checked above.
                hold.filter(|_| attempt == 1),
            )
            .await?;
        raw_output = answer.text;
        match protocol.parse(&raw_output) {
            Ok(parsed) => {
                let satisfied = is_satisfied(&parsed, instruction, &options.stop);
                return Ok(CritiqueRecord {
                    critique: Some(parsed),
                    satisfied,
                    thinker_ms: elapsed_ms(started),
                    raw_output,
                    error: None,
                    attempts: attempt,
                    verifier: None,
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
        attempts: attempts_made,
        verifier: None,
    })
}

/// `text` cleaned of the characters stored text never holds
/// ([`crate::text`]: the editor gets what the turn records) and cut to at
/// most `max` characters, at the last word boundary when there is one in
/// the second half (a thinker that rambles must not make the editor reject
/// the request for its length).
pub fn cap_instruction(text: &str, max: usize) -> String {
    let text = &*crate::text::clean_provider_text(text, usize::MAX);
    if text.chars().count() <= max {
        return text.to_string();
    }
    // One character more than allowed: a space there means the cut already
    // falls between words.
    let probe: String = text.chars().take(max + 1).collect();
    match probe.rfind(char::is_whitespace) {
        Some(at) if at >= probe.len() / 2 => probe[..at].trim_end().to_string(),
        _ => text.chars().take(max).collect(),
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    //! Table-driven checks of every loop rule, with scripted editor and
    //! thinker doubles (the real clients are tested against fake servers in
    //! their own crates).

    use std::sync::Mutex;

    use async_trait::async_trait;
    use image::{DynamicImage, Rgb, RgbImage};

    use super::*;
    use crate::critique::CritiqueRecord;
    use crate::traits::ThinkerAnswer;

    fn solid(w: u32, h: u32, shade: u8) -> Image {
        Image::from_pixels(&DynamicImage::ImageRgb8(RgbImage::from_pixel(
            w,
            h,
            Rgb([shade, 0, 0]),
        )))
    }

    /// Edits by painting the turn number into the red channel; refuses on
    /// the turns listed in `refuse`.
    struct ScriptedEditor {
        calls: Mutex<Vec<(String, u32, u32)>>,
        refuse: Vec<u32>,
        output_size: (u32, u32),
    }

    #[async_trait]
    impl Editor for ScriptedEditor {
        async fn edit(&self, r: EditRequest<'_>) -> Result<Image, EditorError> {
            self.calls
                .lock()
                .unwrap()
                .push((r.instruction.to_string(), r.source.width, r.turn));
            // The editor must always get the source (shade 0).
            assert_eq!(r.source.decode().unwrap().to_rgb8().get_pixel(0, 0)[0], 0);
            if self.refuse.contains(&r.turn) {
                return Err(EditorError::Refused("blocked".into()));
            }
            Ok(solid(
                self.output_size.0,
                self.output_size.1,
                r.turn as u8 * 10,
            ))
        }
    }

    struct ScriptedThinker {
        protocol: Protocol,
        outputs: Mutex<Vec<String>>,
        seen: Mutex<Vec<(u8, String, String, u32)>>,
        histories: Mutex<Vec<Vec<HistoryEntry>>>,
    }

    #[async_trait]
    impl Thinker for ScriptedThinker {
        fn protocol(&self) -> Protocol {
            self.protocol
        }
        async fn critique(&self, r: CritiqueRequest<'_>) -> Result<ThinkerAnswer, ThinkerError> {
            let shade = r.edited.decode().unwrap().to_rgb8().get_pixel(0, 0)[0];
            self.seen.lock().unwrap().push((
                shade,
                r.original_instruction.to_string(),
                r.previous_instruction.to_string(),
                r.turn,
            ));
            self.histories.lock().unwrap().push(r.history.to_vec());
            let mut outputs = self.outputs.lock().unwrap();
            assert!(
                !outputs.is_empty(),
                "thinker called more often than scripted"
            );
            Ok(outputs.remove(0).into())
        }
    }

    #[derive(Default)]
    struct Recorder {
        edited: Mutex<Vec<u32>>,
        critiqued: Mutex<Vec<u32>>,
        calls: Mutex<Vec<(CallKind, u32)>>,
        /// (turn, candidate, seed) of each recorded candidate edit.
        candidates: Mutex<Vec<(u32, u32, Option<i64>)>>,
        /// (turn, candidate) of each recorded candidate critique.
        candidate_critiques: Mutex<Vec<(u32, u32)>>,
        chosen: Mutex<Vec<(u32, Choice)>>,
    }

    #[async_trait]
    impl TurnObserver for Recorder {
        async fn turn_edited(&self, turn: &TurnRecord) -> Result<(), crate::ObserverError> {
            self.edited.lock().unwrap().push(turn.index);
            Ok(())
        }
        async fn turn_critiqued(
            &self,
            turn: u32,
            _: &CritiqueRecord,
        ) -> Result<(), crate::ObserverError> {
            self.critiqued.lock().unwrap().push(turn);
            Ok(())
        }
        async fn candidate_edited(&self, c: &CandidateRecord) -> Result<(), crate::ObserverError> {
            assert!(c.image.is_some() && c.critique.is_none());
            self.candidates
                .lock()
                .unwrap()
                .push((c.turn, c.index, c.seed));
            Ok(())
        }
        async fn candidate_critiqued(
            &self,
            turn: u32,
            candidate: u32,
            _: &CritiqueRecord,
        ) -> Result<(), crate::ObserverError> {
            self.candidate_critiques
                .lock()
                .unwrap()
                .push((turn, candidate));
            Ok(())
        }
        async fn turn_chosen(
            &self,
            turn: &TurnRecord,
            choice: &Choice,
        ) -> Result<(), crate::ObserverError> {
            assert!(turn.critique.is_some());
            self.chosen.lock().unwrap().push((turn.index, *choice));
            Ok(())
        }
        async fn call_made(&self, entry: &LedgerEntry) -> Result<(), crate::ObserverError> {
            self.calls
                .lock()
                .unwrap()
                .push((entry.call.kind, entry.call.turn));
            Ok(())
        }
    }

    fn said(semantic: f64, quality: f64, answer: &str) -> String {
        format!(
            "<think>looking</think><score>{{\"semantic\": {semantic}, \"quality\": {quality}}}</score><answer>{answer}</answer>"
        )
    }

    fn expert(satisfied: bool, prompt: Option<&str>) -> String {
        serde_json::json!({"is_satisfied": satisfied, "reason": "r", "new_rewritten_prompt": prompt})
            .to_string()
    }

    struct Case {
        name: &'static str,
        options: JobOptions,
        protocol: Protocol,
        thinker: Vec<String>,
        refuse: Vec<u32>,
        prior: Vec<TurnRecord>,
        // Expectations.
        edits: Vec<&'static str>,
        thinker_calls: usize,
        selected: u32,
        critiqued: Vec<bool>,
        /// The stop reason, where the case is about it.
        stop: Option<StopReason>,
    }

    fn opts(max_turns: u32, selection: Selection) -> JobOptions {
        JobOptions {
            max_turns,
            selection,
            ..JobOptions::default()
        }
    }

    fn case(name: &'static str, options: JobOptions, thinker: Vec<String>) -> Case {
        Case {
            name,
            options,
            protocol: Protocol::Editthinker,
            thinker,
            refuse: vec![],
            prior: vec![],
            edits: vec![],
            thinker_calls: 0,
            selected: 0,
            critiqued: vec![],
            stop: None,
        }
    }

    fn patience(max_turns: u32, patience: u32, min_gain: f64) -> JobOptions {
        JobOptions {
            stop: StopThresholds {
                patience,
                min_gain,
                ..StopThresholds::default()
            },
            ..opts(max_turns, Selection::Best)
        }
    }

    fn prior_turn(index: u32, instruction: &str, critique: Option<String>) -> TurnRecord {
        TurnRecord {
            index,
            instruction: instruction.into(),
            image: Some(solid(64, 48, index as u8 * 10)),
            editor_ms: 1,
            critique: critique.map(|raw| {
                let parsed = Protocol::Editthinker.parse(&raw).unwrap();
                CritiqueRecord {
                    satisfied: is_satisfied(&parsed, instruction, &StopThresholds::default()),
                    critique: Some(parsed),
                    thinker_ms: 1,
                    raw_output: raw,
                    error: None,
                    attempts: 1,
                    verifier: None,
                }
            }),
        }
    }

    fn cases() -> Vec<Case> {
        let best = Selection::Best;
        let last = Selection::Last;
        vec![
            Case {
                edits: vec!["T0", "R1"],
                thinker_calls: 2,
                selected: 2,
                critiqued: vec![true, true],
                ..case(
                    "satisfied on turn 2 stops",
                    opts(5, best),
                    vec![said(5.0, 5.0, "R1"), said(9.0, 8.0, "R2")],
                )
            },
            Case {
                edits: vec!["T0", "R1", "R2"],
                thinker_calls: 2,
                selected: 3,
                critiqued: vec![true, true, false],
                ..case(
                    "last: never satisfied, last image never critiqued",
                    opts(3, last),
                    vec![said(3.0, 3.0, "R1"), said(4.0, 4.0, "R2")],
                )
            },
            Case {
                edits: vec!["T0", "R1", "R2"],
                thinker_calls: 3,
                selected: 1,
                critiqued: vec![true, true, true],
                ..case(
                    "best: every turn critiqued, highest overall wins",
                    opts(3, best),
                    vec![
                        said(6.0, 6.0, "R1"),
                        said(3.0, 3.0, "R2"),
                        said(5.0, 5.0, "R3"),
                    ],
                )
            },
            Case {
                edits: vec!["T0", "R1"],
                thinker_calls: 2,
                selected: 1,
                critiqued: vec![true, true],
                ..case(
                    "best: ties go to the earlier turn",
                    opts(2, best),
                    vec![said(6.0, 6.0, "R1"), said(6.0, 6.0, "R2")],
                )
            },
            Case {
                edits: vec!["T0", "R1"],
                thinker_calls: 2,
                selected: 2,
                critiqued: vec![true, true],
                ..case(
                    "best: overall is sqrt(semantic*quality)",
                    opts(2, best),
                    vec![said(10.0, 3.0, "R1"), said(6.0, 6.0, "R2")],
                )
            },
            Case {
                edits: vec!["T0"],
                thinker_calls: 1,
                selected: 1,
                critiqued: vec![true],
                ..case(
                    "unchanged instruction stops",
                    opts(5, best),
                    vec![said(2.0, 2.0, "  T0 ")],
                )
            },
            Case {
                edits: vec!["T0"],
                thinker_calls: 1,
                selected: 1,
                critiqued: vec![true],
                ..case(
                    "empty answer stops",
                    opts(5, last),
                    vec![said(2.0, 2.0, "")],
                )
            },
            Case {
                edits: vec!["T0", "R1"],
                thinker_calls: 3,
                selected: 2,
                critiqued: vec![true, true],
                ..case(
                    "unparseable output is retried",
                    opts(2, best),
                    vec!["garbage".into(), said(3.0, 3.0, "R1"), said(4.0, 4.0, "R2")],
                )
            },
            Case {
                edits: vec!["T0", "T0"],
                thinker_calls: 3,
                selected: 2,
                critiqued: vec![true, false],
                ..case(
                    "parse failures exhausted keep the previous instruction",
                    opts(2, last),
                    vec!["x".into(), "y".into(), "z".into()],
                )
            },
            Case {
                edits: vec!["T0"],
                thinker_calls: 1,
                selected: 1,
                critiqued: vec![true],
                ..case(
                    "max_turns 1 with best critiques the only turn",
                    opts(1, best),
                    vec![said(1.0, 1.0, "R1")],
                )
            },
            Case {
                edits: vec!["T0"],
                thinker_calls: 0,
                selected: 1,
                critiqued: vec![false],
                ..case(
                    "max_turns 1 with last never asks the thinker",
                    opts(1, last),
                    vec![],
                )
            },
            Case {
                edits: vec!["T0"],
                thinker_calls: 1,
                selected: 1,
                critiqued: vec![true],
                ..case(
                    "custom thresholds",
                    JobOptions {
                        stop: StopThresholds {
                            semantic: 5.0,
                            quality: 6.0,
                            ..StopThresholds::default()
                        },
                        ..opts(5, best)
                    },
                    vec![said(6.0, 6.0, "R1")],
                )
            },
            Case {
                edits: vec!["T0", "R1"],
                refuse: vec![2],
                thinker_calls: 1,
                selected: 1,
                critiqued: vec![true],
                ..case(
                    "a refused refinement ends the loop",
                    opts(5, best),
                    vec![said(3.0, 3.0, "R1")],
                )
            },
            Case {
                prior: vec![prior_turn(1, "T0", Some(said(4.0, 4.0, "R1")))],
                edits: vec!["R1"],
                thinker_calls: 1,
                selected: 2,
                critiqued: vec![true, true],
                ..case(
                    "resumes after a critiqued turn without redoing it",
                    opts(2, best),
                    vec![said(5.0, 5.0, "R2")],
                )
            },
            Case {
                prior: vec![
                    prior_turn(1, "T0", Some(said(4.0, 4.0, "R1"))),
                    prior_turn(2, "R1", None),
                ],
                edits: vec![],
                thinker_calls: 1,
                selected: 2,
                critiqued: vec![true, true],
                ..case(
                    "resumes by critiquing an uncritiqued turn",
                    opts(3, best),
                    vec![said(9.0, 9.0, "R2")],
                )
            },
            Case {
                protocol: Protocol::Expert,
                edits: vec!["T0", "R1", "R2"],
                thinker_calls: 3,
                selected: 3,
                critiqued: vec![true, true, true],
                ..case(
                    "expert: no scores, best falls back to last",
                    opts(3, best),
                    vec![
                        expert(false, Some("R1")),
                        expert(false, Some("R2")),
                        expert(false, Some("R3")),
                    ],
                )
            },
            Case {
                protocol: Protocol::Expert,
                edits: vec!["T0", "R1"],
                thinker_calls: 2,
                selected: 2,
                critiqued: vec![true, true],
                ..case(
                    "expert: is_satisfied stops",
                    opts(5, best),
                    vec![expert(false, Some("R1")), expert(true, None)],
                )
            },
            Case {
                edits: vec!["T0", "R1", "R2"],
                thinker_calls: 3,
                selected: 3,
                critiqued: vec![true, true, true],
                stop: Some(StopReason::Plateau),
                ..case(
                    "plateau: +0.3 within 2 turns is under min_gain 0.5",
                    patience(5, 2, 0.5),
                    vec![
                        said(5.0, 5.0, "R1"),
                        said(5.2, 5.2, "R2"),
                        said(5.3, 5.3, "R3"),
                    ],
                )
            },
            Case {
                edits: vec!["T0", "R1", "R2", "R3"],
                thinker_calls: 4,
                selected: 3,
                critiqued: vec![true, true, true, true],
                stop: Some(StopReason::Plateau),
                ..case(
                    "plateau: progress resets the window, a worse turn does not count",
                    patience(6, 2, 0.5),
                    vec![
                        said(5.0, 5.0, "R1"),
                        said(6.0, 6.0, "R2"),
                        said(6.4, 6.4, "R3"),
                        said(4.0, 4.0, "R4"),
                    ],
                )
            },
            Case {
                edits: vec!["T0", "R1"],
                thinker_calls: 2,
                selected: 2,
                critiqued: vec![true, true],
                stop: Some(StopReason::Budget),
                ..case(
                    "budget: two editor calls end a five-turn job",
                    JobOptions {
                        budget: Budget {
                            max_editor_calls: Some(2),
                            max_cost: None,
                        },
                        ..opts(5, best)
                    },
                    vec![said(5.0, 5.0, "R1"), said(6.0, 6.0, "R2")],
                )
            },
            Case {
                edits: vec!["T0", "R1", "R2"],
                thinker_calls: 3,
                critiqued: vec![true, true, true],
                stop: Some(StopReason::MaxTurns),
                selected: 1,
                ..case(
                    "plateau off by default",
                    opts(3, best),
                    vec![
                        said(5.0, 5.0, "R1"),
                        said(5.0, 5.0, "R2"),
                        said(5.0, 5.0, "R3"),
                    ],
                )
            },
        ]
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn loop_rules() {
        for c in cases() {
            let source = solid(64, 48, 0);
            let editor = ScriptedEditor {
                calls: Mutex::default(),
                refuse: c.refuse.clone(),
                output_size: (64, 48),
            };
            let scripted = c.thinker.len();
            let thinker = ScriptedThinker {
                protocol: c.protocol,
                outputs: Mutex::new(c.thinker),
                seen: Mutex::default(),
                histories: Mutex::default(),
            };
            let recorder = Recorder::default();
            let prior_len = c.prior.len() as u32;
            let outcome = block_on(run_loop(
                LoopJob {
                    source: &source,
                    instruction: "T0",
                    options: &c.options,
                    config: &LoopConfig::default(),
                    progress: c.prior.into(),
                    spending: Spending::default(),
                    seed_base: 7,
                },
                LoopParts {
                    editor: &editor,
                    thinker: &thinker,
                    observer: &recorder,
                    verifier: None,
                },
            ))
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            let edits: Vec<String> = editor
                .calls
                .lock()
                .unwrap()
                .iter()
                .map(|c| c.0.clone())
                .collect();
            assert_eq!(edits, c.edits, "{}: editor instructions", c.name);
            // Every paid call reached the ledger, for its turn (a refused
            // edit returned no image).
            let calls = recorder.calls.lock().unwrap().clone();
            let of = |kind| calls.iter().filter(|(k, _)| *k == kind).count();
            let refused = usize::from(!c.refuse.is_empty());
            assert_eq!(
                of(CallKind::Editor),
                c.edits.len() - refused,
                "{}: editor calls",
                c.name
            );
            assert_eq!(
                of(CallKind::Thinker),
                c.thinker_calls,
                "{}: thinker calls",
                c.name
            );
            assert_eq!(
                thinker.seen.lock().unwrap().len(),
                c.thinker_calls,
                "{}: thinker calls",
                c.name
            );
            assert_eq!(
                thinker.outputs.lock().unwrap().len(),
                scripted - c.thinker_calls,
                "{}",
                c.name
            );
            assert_eq!(outcome.selected, c.selected, "{}: selected", c.name);
            let critiqued: Vec<bool> = outcome.turns.iter().map(|t| t.critique.is_some()).collect();
            assert_eq!(critiqued, c.critiqued, "{}: critiqued turns", c.name);
            // Every new step was reported, and nothing from before resumption.
            let edited = recorder.edited.lock().unwrap().clone();
            let expected: Vec<u32> = ((prior_len + 1)..=outcome.turns.len() as u32).collect();
            assert_eq!(edited, expected, "{}: edited events", c.name);
            assert_eq!(
                outcome.refusal.is_some(),
                !c.refuse.is_empty(),
                "{}",
                c.name
            );
            if let Some(stop) = c.stop {
                assert_eq!(outcome.stop, stop, "{}", c.name);
            }
            if !c.refuse.is_empty() {
                assert_eq!(outcome.stop, StopReason::Refusal, "{}", c.name);
            } else {
                assert_ne!(outcome.stop, StopReason::Refusal, "{}", c.name);
            }
            // The thinker saw the previous turn's image with both instructions.
            for (shade, original, previous, turn) in thinker.seen.lock().unwrap().iter() {
                assert_eq!(original, "T0", "{}", c.name);
                assert_eq!(
                    *shade,
                    *turn as u8 * 10,
                    "{}: critique of turn {turn} saw another image",
                    c.name
                );
                let t = &outcome.turns[*turn as usize - 1];
                assert_eq!(previous, &t.instruction, "{}", c.name);
            }
        }
    }

    /// Rejects every refined instruction as invalid; records what it got.
    struct PickyEditor {
        calls: Mutex<Vec<String>>,
        max_chars: usize,
    }

    #[async_trait]
    impl Editor for PickyEditor {
        async fn edit(&self, r: EditRequest<'_>) -> Result<Image, EditorError> {
            self.calls.lock().unwrap().push(r.instruction.to_string());
            if r.turn > 1 {
                return Err(EditorError::Invalid("prompt rejected".into()));
            }
            Ok(solid(64, 48, 10))
        }
        fn max_instruction_chars(&self) -> usize {
            self.max_chars
        }
    }

    #[test]
    fn a_budget_without_room_for_one_edit_fails_and_retries_must_fit() {
        let editor = ScriptedEditor {
            calls: Mutex::default(),
            refuse: vec![],
            output_size: (8, 8),
        };
        let thinker = ScriptedThinker {
            protocol: Protocol::Editthinker,
            outputs: Mutex::new(vec!["not an answer".into(); 3]),
            seen: Mutex::default(),
            histories: Mutex::default(),
        };
        let spending = Spending {
            prices: crate::Prices {
                per_editor_call: 1.0,
                ..crate::Prices::default()
            },
            ..Spending::default()
        };
        let run = |max_cost: f64, thinker_per_million_output: f64| {
            let options = JobOptions {
                budget: Budget {
                    max_editor_calls: None,
                    max_cost: Some(max_cost),
                },
                ..opts(3, Selection::Best)
            };
            let spending = Spending {
                prices: crate::Prices {
                    thinker_per_million_output,
                    ..spending.prices
                },
                critique_reserve: Tokens {
                    input: 0,
                    output: 1_000_000,
                },
                ..spending
            };
            block_on(run_loop(
                LoopJob {
                    source: &solid(8, 8, 0),
                    instruction: "T0",
                    options: &options,
                    config: &LoopConfig::default(),
                    progress: Progress::default(),
                    spending,
                    seed_base: 7,
                },
                LoopParts {
                    editor: &editor,
                    thinker: &thinker,
                    observer: &Recorder::default(),
                    verifier: None,
                },
            ))
        };
        // An edit costs 1.0: a budget of 0.5 fails before any call.
        let error = run(0.5, 0.0).unwrap_err();
        assert!(matches!(error, LoopError::BudgetExhausted(_)), "{error}");
        assert!(editor.calls.lock().unwrap().is_empty());
        // 1.0 for the edit and 0.5 reserved for its critique: 1.5 buys the
        // edit and its critique (these answers report no tokens, so their
        // parse retries cost nothing and fit), and no second edit fits.
        let outcome = run(1.5, 0.5).unwrap();
        assert_eq!(outcome.stop, StopReason::Budget);
        assert_eq!(outcome.turns.len(), 1);
        assert_eq!(editor.calls.lock().unwrap().len(), 1);
        assert_eq!(outcome.turns[0].critique.as_ref().unwrap().attempts, 3);
    }

    #[test]
    fn history_all_tells_the_thinker_every_earlier_turn() {
        for (history, expected) in [(History::Previous, 0), (History::All, 2)] {
            let editor = ScriptedEditor {
                calls: Mutex::default(),
                refuse: vec![],
                output_size: (8, 8),
            };
            let thinker = ScriptedThinker {
                protocol: Protocol::Editthinker,
                outputs: Mutex::new(vec![
                    "<think>The sky is pink. More text.</think><score>{\"semantic\": 3, \"quality\": 9}</score><answer>R1</answer>".into(),
                    said(5.0, 5.0, "R2"),
                    said(6.0, 6.0, "R3"),
                ]),
                seen: Mutex::default(),
                histories: Mutex::default(),
            };
            let options = JobOptions {
                history,
                ..opts(3, Selection::Best)
            };
            block_on(run_loop(
                LoopJob {
                    source: &solid(8, 8, 0),
                    instruction: "T0",
                    options: &options,
                    config: &LoopConfig::default(),
                    progress: Progress::default(),
                    spending: Spending::default(),
                    seed_base: 7,
                },
                LoopParts {
                    editor: &editor,
                    thinker: &thinker,
                    observer: &Recorder::default(),
                    verifier: None,
                },
            ))
            .unwrap();
            let histories = thinker.histories.lock().unwrap();
            let lengths: Vec<usize> = histories.iter().map(Vec::len).collect();
            assert_eq!(lengths, [0, expected / 2, expected], "{history:?}");
            if history == History::All {
                let third = &histories[2];
                assert_eq!(third[0].instruction, "T0");
                assert_eq!(third[0].reason, "The sky is pink.");
                assert_eq!(
                    (third[0].semantic, third[0].quality),
                    (Some(3.0), Some(9.0))
                );
                assert_eq!(third[1].instruction, "R1");
                assert_eq!(third[1].turn, 2);
            }
        }
    }

    #[test]
    fn an_invalid_refinement_ends_the_loop_like_a_refusal() {
        let editor = PickyEditor {
            calls: Mutex::default(),
            max_chars: 12,
        };
        let thinker = ScriptedThinker {
            protocol: Protocol::Editthinker,
            outputs: Mutex::new(vec![said(3.0, 3.0, "make it much redder please")]),
            seen: Mutex::default(),
            histories: Mutex::default(),
        };
        let outcome = block_on(run_loop(
            LoopJob {
                source: &solid(64, 48, 0),
                instruction: "T0",
                options: &JobOptions::default(),
                config: &LoopConfig::default(),
                progress: Progress::default(),
                spending: Spending::default(),
                seed_base: 7,
            },
            LoopParts {
                editor: &editor,
                thinker: &thinker,
                observer: &Recorder::default(),
                verifier: None,
            },
        ))
        .unwrap();
        assert_eq!(outcome.selected, 1);
        assert_eq!(outcome.stop, StopReason::InvalidRefinement);
        let refusal = outcome.refusal.expect("the rejection is reported");
        assert_eq!(refusal.kind, RefusalKind::Invalid);
        assert_eq!(refusal.turn, 2);
        assert_eq!(refusal.reason, "prompt rejected");
        // The refined instruction was cut at a word boundary to the cap.
        assert_eq!(refusal.instruction, "make it much");
        assert_eq!(editor.calls.lock().unwrap()[1], "make it much");
        // The critiqued turn no longer holds its image.
        assert!(outcome.turns[0].image.is_none());
    }

    #[test]
    fn instructions_are_capped_at_word_boundaries() {
        assert_eq!(cap_instruction("short", 10), "short");
        assert_eq!(cap_instruction("one two three", 9), "one two");
        // No boundary in the second half: a hard cut.
        assert_eq!(cap_instruction("abcdefghij", 4), "abcd");
        assert_eq!(cap_instruction("ééééé", 3), "ééé");
        assert_eq!(
            cap_instruction("make\u{0} it \u{202e}red", 20),
            "make it red"
        );
    }

    #[test]
    fn refusal_of_the_users_words_is_an_error() {
        let editor = ScriptedEditor {
            calls: Mutex::default(),
            refuse: vec![1],
            output_size: (64, 48),
        };
        let thinker = ScriptedThinker {
            protocol: Protocol::Editthinker,
            outputs: Mutex::default(),
            seen: Mutex::default(),
            histories: Mutex::default(),
        };
        let err = block_on(run_loop(
            LoopJob {
                source: &solid(64, 48, 0),
                instruction: "T0",
                options: &JobOptions::default(),
                config: &LoopConfig::default(),
                progress: Progress::default(),
                spending: Spending::default(),
                seed_base: 7,
            },
            LoopParts {
                editor: &editor,
                thinker: &thinker,
                observer: &Recorder::default(),
                verifier: None,
            },
        ))
        .unwrap_err();
        assert_eq!(
            err,
            LoopError::Editor {
                turn: 1,
                error: EditorError::Refused("blocked".into())
            }
        );
    }

    #[test]
    fn editor_outputs_come_back_at_the_source_size() {
        let editor = ScriptedEditor {
            calls: Mutex::default(),
            refuse: vec![],
            output_size: (32, 32),
        };
        let thinker = ScriptedThinker {
            protocol: Protocol::Editthinker,
            outputs: Mutex::default(),
            seen: Mutex::default(),
            histories: Mutex::default(),
        };
        let outcome = block_on(run_loop(
            LoopJob {
                source: &solid(64, 48, 0),
                instruction: "T0",
                options: &opts(1, Selection::Last),
                config: &LoopConfig::default(),
                progress: Progress::default(),
                spending: Spending::default(),
                seed_base: 7,
            },
            LoopParts {
                editor: &editor,
                thinker: &thinker,
                observer: &Recorder::default(),
                verifier: None,
            },
        ))
        .unwrap();
        assert_eq!(
            {
                let image = outcome.turns[0]
                    .image
                    .as_ref()
                    .expect("the only turn keeps its image");
                (image.width, image.height)
            },
            (64, 48)
        );
    }

    /// An asynchronous editor double: checkpoints a provider request for
    /// every new submission and records what it was asked to resume.
    #[derive(Default)]
    struct AsyncEditor {
        resumed: Mutex<Vec<(u32, Option<String>)>>,
    }

    #[async_trait]
    impl Editor for AsyncEditor {
        async fn edit(&self, r: EditRequest<'_>) -> Result<Image, EditorError> {
            self.resumed
                .lock()
                .unwrap()
                .push((r.turn, r.resume.map(|p| p.id.clone())));
            if r.resume.is_none() {
                r.checkpoint
                    .submitted(&ProviderRequest {
                        id: format!("req-{}", r.turn),
                        data: serde_json::json!({"polling_url": "u"}),
                    })
                    .await?;
            }
            Ok(solid(64, 48, r.turn as u8 * 10))
        }
    }

    /// Records checkpoints and live thinking.
    #[derive(Default)]
    struct CheckpointRecorder {
        submitted: Mutex<Vec<(u32, String, String)>>,
        thinking: Mutex<Vec<(u32, String)>>,
        fail_submissions: bool,
    }

    #[async_trait]
    impl TurnObserver for CheckpointRecorder {
        async fn turn_edited(&self, _: &TurnRecord) -> Result<(), crate::ObserverError> {
            Ok(())
        }
        async fn turn_critiqued(
            &self,
            _: u32,
            _: &CritiqueRecord,
        ) -> Result<(), crate::ObserverError> {
            Ok(())
        }
        async fn candidate_edited(&self, _: &CandidateRecord) -> Result<(), crate::ObserverError> {
            Ok(())
        }
        async fn candidate_critiqued(
            &self,
            _: u32,
            _: u32,
            _: &CritiqueRecord,
        ) -> Result<(), crate::ObserverError> {
            Ok(())
        }
        async fn turn_chosen(
            &self,
            _: &TurnRecord,
            _: &Choice,
        ) -> Result<(), crate::ObserverError> {
            Ok(())
        }
        async fn edit_submitted(
            &self,
            turn: u32,
            _: u32,
            instruction: &str,
            request: &ProviderRequest,
        ) -> Result<(), crate::ObserverError> {
            if self.fail_submissions {
                return Err("lease lost".into());
            }
            self.submitted
                .lock()
                .unwrap()
                .push((turn, instruction.into(), request.id.clone()));
            Ok(())
        }
        fn thinking(&self, turn: u32, _: u32, delta: &str) {
            self.thinking.lock().unwrap().push((turn, delta.into()));
        }
    }

    /// A thinker that streams its answer in two pieces.
    struct StreamingThinker;

    #[async_trait]
    impl Thinker for StreamingThinker {
        fn protocol(&self) -> Protocol {
            Protocol::Editthinker
        }
        async fn critique(&self, r: CritiqueRequest<'_>) -> Result<ThinkerAnswer, ThinkerError> {
            let answer = said(3.0, 3.0, &format!("R{}", r.turn));
            let (a, b) = answer.split_at(10);
            r.thinking.delta(a);
            r.thinking.delta(b);
            Ok(answer.into())
        }
    }

    #[test]
    fn provider_requests_are_checkpointed_and_resumed_only_for_the_same_edit() {
        let pending = |instruction: &str| PendingEdit {
            turn: 2,
            candidate: 0,
            instruction: instruction.into(),
            request: ProviderRequest {
                id: "req-old".into(),
                data: serde_json::Value::Null,
            },
        };
        for (pending_instruction, expect_resume) in [("R1", true), ("something else", false)] {
            let editor = AsyncEditor::default();
            let observer = CheckpointRecorder::default();
            let prior = Progress {
                turns: vec![prior_turn(1, "T0", Some(said(4.0, 4.0, "R1")))],
                pending_edits: vec![pending(pending_instruction)],
                ..Progress::default()
            };
            block_on(run_loop(
                LoopJob {
                    source: &solid(64, 48, 0),
                    instruction: "T0",
                    options: &opts(3, Selection::Last),
                    config: &LoopConfig::default(),
                    progress: prior,
                    spending: Spending::default(),
                    seed_base: 7,
                },
                LoopParts {
                    editor: &editor,
                    thinker: &StreamingThinker,
                    observer: &observer,
                    verifier: None,
                },
            ))
            .unwrap();
            let resumed = editor.resumed.lock().unwrap().clone();
            let submitted = observer.submitted.lock().unwrap().clone();
            if expect_resume {
                assert_eq!(resumed, vec![(2, Some("req-old".into())), (3, None)]);
                assert_eq!(submitted, vec![(3, "R2".into(), "req-3".into())]);
            } else {
                assert_eq!(resumed, vec![(2, None), (3, None)]);
                assert_eq!(
                    submitted,
                    vec![
                        (2, "R1".into(), "req-2".into()),
                        (3, "R2".into(), "req-3".into())
                    ]
                );
            }
            // Live thinking is forwarded with the turn being critiqued.
            let thinking = observer.thinking.lock().unwrap().clone();
            let turn2: String = thinking
                .iter()
                .filter(|(t, _)| *t == 2)
                .map(|(_, d)| d.as_str())
                .collect();
            assert_eq!(turn2, said(3.0, 3.0, "R2"));
            assert!(thinking.iter().all(|(t, _)| *t == 2));
        }
    }

    #[test]
    fn a_checkpoint_that_cannot_be_recorded_stops_the_edit() {
        let observer = CheckpointRecorder {
            fail_submissions: true,
            ..CheckpointRecorder::default()
        };
        let err = block_on(run_loop(
            LoopJob {
                source: &solid(64, 48, 0),
                instruction: "T0",
                options: &opts(1, Selection::Last),
                config: &LoopConfig::default(),
                progress: Progress::default(),
                spending: Spending::default(),
                seed_base: 7,
            },
            LoopParts {
                editor: &AsyncEditor::default(),
                thinker: &StreamingThinker,
                observer: &observer,
                verifier: None,
            },
        ))
        .unwrap_err();
        assert!(
            matches!(&err, LoopError::Editor { turn: 1, error: EditorError::Transient(m) } if m.contains("lease lost")),
            "{err:?}"
        );
    }

    #[test]
    fn satisfied_rule() {
        let stop = StopThresholds::default();
        let c = |s: f64, q: f64, a: &str| Critique {
            semantic: Some(s),
            quality: Some(q),
            reasoning: String::new(),
            refined_instruction: a.into(),
            is_satisfied: None,
        };
        assert!(is_satisfied(&c(8.0, 8.0, "new"), "old", &stop));
        assert!(!is_satisfied(&c(8.0, 7.9, "new"), "old", &stop));
        assert!(!is_satisfied(&c(7.0, 9.0, "new"), "old", &stop));
        assert!(is_satisfied(&c(1.0, 1.0, " old\n"), "old", &stop));
        assert!(is_satisfied(&c(1.0, 1.0, "   "), "old", &stop));
    }

    /// Paints each candidate its own shade, (candidate + 1) × 20, and
    /// records (turn, candidate, seed); refuses the candidates in `refuse`.
    #[derive(Default)]
    struct CandidateEditor {
        calls: Mutex<Vec<(u32, u32, Option<i64>)>>,
        refuse: Vec<u32>,
    }

    #[async_trait]
    impl Editor for CandidateEditor {
        async fn edit(&self, r: EditRequest<'_>) -> Result<Image, EditorError> {
            self.calls
                .lock()
                .unwrap()
                .push((r.turn, r.candidate, r.seed));
            if self.refuse.contains(&r.candidate) {
                return Err(EditorError::Refused("blocked".into()));
            }
            Ok(solid(8, 8, (r.candidate as u8 + 1) * 20))
        }
    }

    /// Scores an edit by its shade: `scores[shade / 20 - 1]`.
    struct ShadeThinker {
        scores: Vec<(f64, f64)>,
        calls: Mutex<Vec<u8>>,
    }

    #[async_trait]
    impl Thinker for ShadeThinker {
        fn protocol(&self) -> Protocol {
            Protocol::Editthinker
        }
        async fn critique(&self, r: CritiqueRequest<'_>) -> Result<ThinkerAnswer, ThinkerError> {
            let shade = r.edited.decode().unwrap().to_rgb8().get_pixel(0, 0)[0];
            self.calls.lock().unwrap().push(shade);
            let (s, q) = self.scores[usize::from(shade / 20) - 1];
            Ok(said(s, q, &format!("{} again", r.previous_instruction)).into())
        }
    }

    /// Scores an edit by its shade, like [`ShadeThinker`].
    struct ShadeVerifier(Vec<f64>);

    #[async_trait]
    impl Verifier for ShadeVerifier {
        async fn score(
            &self,
            r: VerifyRequest<'_>,
        ) -> Result<crate::traits::VerifierAnswer, ThinkerError> {
            let shade = r.edited.decode().unwrap().to_rgb8().get_pixel(0, 0)[0];
            Ok(crate::traits::VerifierAnswer {
                score: crate::traits::VerifierScore::single(self.0[usize::from(shade / 20) - 1]),
                tokens: Tokens::default(),
            })
        }
    }

    fn with_candidates(k: u32, max_turns: u32) -> JobOptions {
        JobOptions {
            candidates: k,
            ..opts(max_turns, Selection::Best)
        }
    }

    fn run_candidates(
        options: &JobOptions,
        editor: &CandidateEditor,
        thinker: &ShadeThinker,
        verifier: Option<&dyn Verifier>,
        progress: Progress,
        recorder: &Recorder,
    ) -> Result<LoopOutcome, LoopError> {
        block_on(run_loop(
            LoopJob {
                source: &solid(8, 8, 0),
                instruction: "T0",
                options,
                config: &LoopConfig::default(),
                progress,
                spending: Spending::default(),
                seed_base: 7,
            },
            LoopParts {
                editor,
                thinker,
                verifier,
                observer: recorder,
            },
        ))
    }

    fn shades(scores: &[(f64, f64)]) -> ShadeThinker {
        ShadeThinker {
            scores: scores.to_vec(),
            calls: Mutex::default(),
        }
    }

    #[test]
    fn each_candidate_has_its_own_seed_and_the_best_is_chosen() {
        let editor = CandidateEditor::default();
        let thinker = shades(&[(5.0, 5.0), (8.0, 7.0), (9.0, 3.0), (6.0, 6.0)]);
        let recorder = Recorder::default();
        let outcome = run_candidates(
            &with_candidates(4, 1),
            &editor,
            &thinker,
            None,
            Progress::default(),
            &recorder,
        )
        .unwrap();
        let calls = editor.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 4);
        for (turn, candidate, seed) in &calls {
            assert_eq!(*seed, Some(candidate_seed(7, *turn, *candidate)));
        }
        let seeds: std::collections::BTreeSet<_> = calls.iter().map(|c| c.2).collect();
        assert_eq!(seeds.len(), 4, "distinct seeds");
        assert_eq!(thinker.calls.lock().unwrap().len(), 4);
        assert_eq!(recorder.candidates.lock().unwrap().len(), 4);
        assert_eq!(recorder.candidate_critiques.lock().unwrap().len(), 4);
        // sqrt(8 × 7) beats sqrt(6 × 6), sqrt(9 × 3) and 5.
        let chosen = recorder.chosen.lock().unwrap().clone();
        assert_eq!(chosen.len(), 1);
        assert_eq!((chosen[0].0, chosen[0].1.candidate), (1, 1));
        assert_eq!(chosen[0].1.by, RankBy::Thinker);
        assert!((chosen[0].1.score.unwrap() - 56f64.sqrt()).abs() < 1e-12);
        let turn = &outcome.turns[0];
        assert_eq!(turn.critique.as_ref().unwrap().overall(), chosen[0].1.score);
        // A turn of several is recorded only as its choice.
        assert!(recorder.edited.lock().unwrap().is_empty());
        assert!(recorder.critiqued.lock().unwrap().is_empty());
        // Seeds differ between turns too.
        assert_ne!(candidate_seed(7, 1, 0), candidate_seed(7, 2, 0));
        assert!((0..=i64::from(i32::MAX)).contains(&candidate_seed(u64::MAX, 9, 7)));
    }

    #[test]
    fn the_verifier_ranks_and_gates() {
        let editor = CandidateEditor::default();
        let thinker = shades(&[(9.0, 9.0), (5.0, 5.0), (6.0, 6.0)]);
        let verifier = ShadeVerifier(vec![2.0, 8.5, 6.0]);
        let recorder = Recorder::default();
        let options = JobOptions {
            rank_by: RankBy::Verifier,
            ..with_candidates(3, 1)
        };
        let outcome = run_candidates(
            &options,
            &editor,
            &thinker,
            Some(&verifier),
            Progress::default(),
            &recorder,
        )
        .unwrap();
        let choice = recorder.chosen.lock().unwrap()[0].1;
        assert_eq!(
            (choice.candidate, choice.score, choice.by),
            (1, Some(8.5), RankBy::Verifier)
        );
        let record = outcome.turns[0].critique.as_ref().unwrap();
        assert_eq!(record.verifier.unwrap().overall, 8.5);
        let verifier_calls = recorder
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == CallKind::Verifier)
            .count();
        assert_eq!(verifier_calls, 3);

        // The gate: the thinker is satisfied with every turn (9 and 9, the
        // instruction refined), the verifier with none below 7.
        let thinker = shades(&[(9.0, 9.0)]);
        let gated = |gate: Option<f64>| {
            let options = JobOptions {
                stop: StopThresholds {
                    verifier: gate,
                    ..StopThresholds::default()
                },
                ..with_candidates(1, 3)
            };
            run_candidates(
                &options,
                &CandidateEditor::default(),
                &thinker,
                Some(&ShadeVerifier(vec![3.0])),
                Progress::default(),
                &Recorder::default(),
            )
            .unwrap()
        };
        let open = gated(None);
        assert_eq!((open.turns.len(), open.stop), (1, StopReason::Satisfied));
        let kept = gated(Some(7.0));
        assert_eq!((kept.turns.len(), kept.stop), (3, StopReason::MaxTurns));
        assert!(kept
            .turns
            .iter()
            .all(|t| !t.critique.as_ref().unwrap().satisfied));

        // A job that needs a verifier fails at once on a worker without one.
        let error = run_candidates(
            &options,
            &CandidateEditor::default(),
            &thinker,
            None,
            Progress::default(),
            &Recorder::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&error, LoopError::Verifier { error: ThinkerError::Invalid(m), .. } if m.contains("options.rank_by")),
            "{error}"
        );
    }

    #[test]
    fn a_resumed_turn_edits_only_the_candidates_it_lacks() {
        let editor = CandidateEditor::default();
        let thinker = shades(&[(5.0, 5.0), (6.0, 6.0), (7.0, 7.0), (4.0, 4.0)]);
        let recorder = Recorder::default();
        let prior = |index: u32, critiqued: bool| CandidateRecord {
            turn: 1,
            index,
            instruction: "T0".into(),
            seed: Some(candidate_seed(7, 1, index)),
            image: (!critiqued).then(|| solid(8, 8, (index as u8 + 1) * 20)),
            editor_ms: 1,
            critique: critiqued.then(|| {
                let raw = said(5.0, 5.0, "R");
                CritiqueRecord {
                    critique: Some(Protocol::Editthinker.parse(&raw).unwrap()),
                    satisfied: false,
                    thinker_ms: 1,
                    raw_output: raw,
                    error: None,
                    attempts: 1,
                    verifier: None,
                }
            }),
        };
        let progress = Progress {
            // 0 and 1 critiqued, 2 edited, 3 never bought; a request of
            // another instruction is not resumed.
            candidates: vec![prior(0, true), prior(1, true), prior(2, false)],
            pending_edits: vec![PendingEdit {
                turn: 1,
                candidate: 3,
                instruction: "other".into(),
                request: ProviderRequest {
                    id: "old".into(),
                    data: serde_json::Value::Null,
                },
            }],
            ..Progress::default()
        };
        run_candidates(
            &with_candidates(4, 1),
            &editor,
            &thinker,
            None,
            progress,
            &recorder,
        )
        .unwrap();
        assert_eq!(
            *editor.calls.lock().unwrap(),
            [(1, 3, Some(candidate_seed(7, 1, 3)))]
        );
        // Candidate 2's critique and candidate 3's: nothing twice.
        let mut critiqued = thinker.calls.lock().unwrap().clone();
        critiqued.sort_unstable();
        assert_eq!(critiqued, [60, 80]);
        // Candidate 2 (7 and 7) beats the recorded ones (5 and 5).
        assert_eq!(recorder.chosen.lock().unwrap()[0].1.candidate, 2);
    }

    #[test]
    fn a_budget_buys_the_candidates_that_fit_and_refusals_are_left_out() {
        let editor = CandidateEditor {
            refuse: vec![0],
            ..CandidateEditor::default()
        };
        let thinker = shades(&[(1.0, 1.0), (6.0, 6.0), (7.0, 7.0), (4.0, 4.0)]);
        let recorder = Recorder::default();
        let options = JobOptions {
            budget: Budget {
                max_editor_calls: Some(5),
                max_cost: None,
            },
            ..with_candidates(4, 3)
        };
        let outcome = run_candidates(
            &options,
            &editor,
            &thinker,
            None,
            Progress::default(),
            &recorder,
        )
        .unwrap();
        // Candidate 0 is always refused, and a refused edit is not paid:
        // turn 1 pays 3 of 4 calls, turn 2 has room for 2 (one paid), turn
        // 3 for 1, refused: every candidate of the turn refused ends the
        // loop as a refusal, with the two turns recorded.
        let calls = editor.calls.lock().unwrap().clone();
        let of_turn = |turn| calls.iter().filter(|c| c.0 == turn).count();
        assert_eq!((of_turn(1), of_turn(2), of_turn(3)), (4, 2, 1));
        assert_eq!(outcome.turns.len(), 2);
        assert_eq!(outcome.stop, StopReason::Refusal);
        assert_eq!(recorder.chosen.lock().unwrap()[0].1.candidate, 2);
        assert_eq!(recorder.chosen.lock().unwrap()[1].1.candidate, 1);
        assert_eq!(recorder.candidates.lock().unwrap().len(), 4);

        // Without the refusal, the budget stops the loop: 4 + 1 calls.
        let editor = CandidateEditor::default();
        let outcome = run_candidates(
            &options,
            &editor,
            &thinker,
            None,
            Progress::default(),
            &Recorder::default(),
        )
        .unwrap();
        assert_eq!(editor.calls.lock().unwrap().len(), 5);
        assert_eq!(outcome.turns.len(), 2);
        assert_eq!(outcome.stop, StopReason::Budget);
    }

    #[test]
    fn choosing_breaks_ties_low_and_falls_back_without_scores() {
        let candidate = |index: u32, raw: Option<String>, satisfied: bool| CandidateRecord {
            turn: 1,
            index,
            instruction: "T0".into(),
            seed: None,
            image: None,
            editor_ms: 1,
            critique: Some(CritiqueRecord {
                critique: raw
                    .as_deref()
                    .map(|r| Protocol::Editthinker.parse(r).unwrap()),
                satisfied,
                thinker_ms: 1,
                raw_output: raw.unwrap_or_default(),
                error: None,
                attempts: 1,
                verifier: None,
            }),
        };
        let tie = [
            candidate(0, Some(said(4.0, 4.0, "R")), false),
            candidate(1, Some(said(6.0, 6.0, "R")), false),
            candidate(2, Some(said(6.0, 6.0, "R")), false),
        ];
        assert_eq!(choose_candidate(&tie, RankBy::Thinker).candidate, 1);
        let unscored = [candidate(0, None, false), candidate(1, None, true)];
        let choice = choose_candidate(&unscored, RankBy::Thinker);
        assert_eq!((choice.candidate, choice.score), (1, None));
        // Ranked by a verifier that scored nothing: the first.
        assert_eq!(choose_candidate(&tie[1..], RankBy::Verifier).candidate, 1);
    }
}
