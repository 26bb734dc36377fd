//! The seams of the loop: editors, thinkers and the observer that persists turns.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::critique::CritiqueRecord;
use crate::imaging::Image;
use crate::parse::Protocol;
use crate::run::{CandidateRecord, Choice, TurnRecord};

/// One edit: always of the job's source image.
#[derive(Clone, Copy)]
pub struct EditRequest<'a> {
    /// The job's source image (never a previous output).
    pub source: &'a Image,
    /// The instruction for this turn.
    pub instruction: &'a str,
    /// Turn number, from 1.
    pub turn: u32,
    /// Which of the turn's candidates this is, from 0 (`options.candidates`).
    pub candidate: u32,
    /// The seed this candidate asks the provider for: set when a turn has
    /// several candidates, so each is a distinct sample; `None` leaves the
    /// profile's own `seed` (or the provider's randomness) in charge.
    /// Kinds without a seed field ignore it (docs/configuration.md).
    pub seed: Option<i64>,
    /// A request this same edit (turn and instruction) already submitted to
    /// an asynchronous provider before a crash: poll it instead of
    /// submitting (and paying for) a new one.
    pub resume: Option<&'a ProviderRequest>,
    /// Where an asynchronous editor records its provider request, durably,
    /// before it starts waiting for the result.
    pub checkpoint: &'a dyn EditCheckpoint,
}

impl fmt::Debug for EditRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EditRequest")
            .field("instruction", &self.instruction)
            .field("turn", &self.turn)
            .field("candidate", &self.candidate)
            .field("seed", &self.seed)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

/// A request accepted by an asynchronous provider (bfl, fal, replicate):
/// enough to find its result again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRequest {
    /// The provider's request or prediction id.
    pub id: String,
    /// Provider-specific handles to poll it (polling, status and result
    /// URLs, exactly as the provider returned them).
    #[serde(default)]
    pub data: serde_json::Value,
}

/// Durable record of provider requests, implemented by the worker.
#[async_trait]
pub trait EditCheckpoint: Send + Sync {
    /// `request` was accepted by the provider for this edit. Must be
    /// durable before it returns; an error means the worker can no longer
    /// record progress (e.g. its lease is gone) and the edit should stop.
    async fn submitted(&self, request: &ProviderRequest) -> Result<(), EditorError>;
}

/// A checkpoint that keeps nothing: for synchronous editors, tests and
/// one-off calls outside the worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCheckpoint;

#[async_trait]
impl EditCheckpoint for NoCheckpoint {
    async fn submitted(&self, _: &ProviderRequest) -> Result<(), EditorError> {
        Ok(())
    }
}

/// Why an editor call failed; the worker acts on the class (docs/architecture.md §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditorError {
    /// Unavailable for now (connection errors, 429, 5xx after retries): requeue later.
    #[error("editor unavailable: {0}")]
    Transient(String),
    /// Moderation or safety refusal of the instruction or image.
    #[error("editor refused the request: {0}")]
    Refused(String),
    /// Bad request or configuration: retrying cannot help.
    #[error("editor rejected the request: {0}")]
    Invalid(String),
    /// Credentials rejected: an operator must fix the configuration.
    #[error("editor rejected the credentials: {0}")]
    Auth(String),
    /// The request was sent, but whether the provider did (and billed) the
    /// work is unknown: a timeout or broken connection after sending, or a
    /// 5xx. Never resent inside the call on a kind without idempotency;
    /// the worker requeues the job visibly (`editor_ambiguous`).
    #[error("editor outcome unknown: {0}")]
    Ambiguous(String),
}

/// Refined instructions are cut to this many characters unless an editor
/// says otherwise ([`Editor::max_instruction_chars`]).
pub const DEFAULT_MAX_INSTRUCTION_CHARS: usize = 2000;

/// An image editor backend.
#[async_trait]
pub trait Editor: Send + Sync {
    /// Edits `request.source` following `request.instruction`.
    async fn edit(&self, request: EditRequest<'_>) -> Result<Image, EditorError>;

    /// Asks the provider to stop `request` (an asynchronous edit the job no
    /// longer wants: canceled, or past its deadline). Best effort; kinds
    /// whose API has no cancel call do nothing.
    async fn cancel(&self, request: &ProviderRequest) -> Result<(), EditorError> {
        let _ = request;
        Ok(())
    }

    /// The longest instruction this editor is sent, in characters: a
    /// thinker's refined instruction is cut to it (at a word boundary).
    fn max_instruction_chars(&self) -> usize {
        DEFAULT_MAX_INSTRUCTION_CHARS
    }

    /// Checks that the provider answers, with a call that costs nothing
    /// (e.g. listing models). `None`: the provider offers no free call, so
    /// the editor is not checked (readiness reports it as `unchecked`).
    async fn probe(&self) -> Option<Result<(), EditorError>> {
        None
    }
}

/// One critique: the source and the previous edit, with both instructions.
#[derive(Clone, Copy)]
pub struct CritiqueRequest<'a> {
    /// The job's source image.
    pub source: &'a Image,
    /// The image produced by `previous_instruction`.
    pub edited: &'a Image,
    /// The user's instruction.
    pub original_instruction: &'a str,
    /// The instruction that produced `edited`.
    pub previous_instruction: &'a str,
    /// Number of the turn being critiqued, from 1.
    pub turn: u32,
    /// Earlier turns, oldest first: empty unless the job asked for
    /// `history = "all"`.
    pub history: &'a [HistoryEntry],
    /// Receives the answer's text as it is generated (live reasoning);
    /// thinkers that cannot stream may never call it.
    pub thinking: &'a dyn ThinkingSink,
}

impl fmt::Debug for CritiqueRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CritiqueRequest")
            .field("original_instruction", &self.original_instruction)
            .field("previous_instruction", &self.previous_instruction)
            .field("turn", &self.turn)
            .finish_non_exhaustive()
    }
}

/// An earlier turn as the thinker is told of it (`history = "all"`).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// Turn number.
    pub turn: u32,
    /// The instruction the editor received.
    pub instruction: String,
    /// Its semantic score, when it had one.
    pub semantic: Option<f64>,
    /// Its quality score, when it had one.
    pub quality: Option<f64>,
    /// The first sentence of the thinker's reasoning (may be empty).
    pub reason: String,
}

/// Receives a thinker's output while it is generated. Must not block: it is
/// called from the generation path for every chunk.
pub trait ThinkingSink: Send + Sync {
    /// The next piece of generated text.
    fn delta(&self, text: &str);
}

/// A sink that drops everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoThinking;

impl ThinkingSink for NoThinking {
    fn delta(&self, _: &str) {}
}

/// Why a thinker call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThinkerError {
    /// Unavailable for now (connection errors, timeouts, 429, 5xx after retries).
    #[error("thinker unavailable: {0}")]
    Transient(String),
    /// Misconfigured (unknown model, bad request): retrying cannot help.
    #[error("thinker rejected the request: {0}")]
    Invalid(String),
    /// Credentials rejected.
    #[error("thinker rejected the credentials: {0}")]
    Auth(String),
}

/// A thinker's answer: the raw text the loop parses, and the tokens the
/// call used (the usage ledger's).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThinkerAnswer {
    /// The model's raw answer.
    pub text: String,
    /// Tokens used; zero where the server did not say.
    pub tokens: crate::usage::Tokens,
}

impl From<String> for ThinkerAnswer {
    /// An answer whose token counts are unknown.
    fn from(text: String) -> Self {
        Self {
            text,
            tokens: crate::usage::Tokens::default(),
        }
    }
}

/// A thinker backend: returns the model's raw answer; the loop parses it.
#[async_trait]
pub trait Thinker: Send + Sync {
    /// The output protocol this thinker's answers follow.
    fn protocol(&self) -> Protocol;
    /// Asks for one critique and returns the raw answer.
    async fn critique(&self, request: CritiqueRequest<'_>) -> Result<ThinkerAnswer, ThinkerError>;

    /// Checks, cheaply and without generating anything, that the thinker
    /// can answer now: a remote one's server is up and knows the model, a
    /// local one's engine is alive. The worker claims no jobs while this
    /// fails (docs/operations.md), so it must be fast and free.
    async fn probe(&self) -> Result<(), ThinkerError> {
        Ok(())
    }
}

/// Why an observer did not record a step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObserverError {
    /// The job was stopped from outside (a cancel, a shutdown, its
    /// deadline, a lost lease): the loop ends at this step boundary, and
    /// whoever stopped it decides what becomes of the job.
    #[error("stopped from outside")]
    Stopped,
    /// The step could not be recorded.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for ObserverError {
    fn from(message: String) -> Self {
        Self::Failed(message)
    }
}

impl From<&str> for ObserverError {
    fn from(message: &str) -> Self {
        Self::Failed(message.to_owned())
    }
}

/// What an observer without candidate records answers a turn of several.
const NO_CANDIDATES: &str = "this observer does not record candidates";

/// Persists loop progress. Each call must be durable before it returns, so
/// a resumed job continues after the last recorded step.
#[async_trait]
pub trait TurnObserver: Send + Sync {
    /// A new turn's image exists (its critique is still `None`).
    async fn turn_edited(&self, turn: &TurnRecord) -> Result<(), ObserverError>;
    /// `turn`'s critique is known.
    async fn turn_critiqued(
        &self,
        turn: u32,
        critique: &CritiqueRecord,
    ) -> Result<(), ObserverError>;
    /// The editor accepted `request` for candidate `candidate` (0 in a
    /// one-candidate turn) of turn `turn` with `instruction`; must be
    /// durable before it returns (see [`EditCheckpoint`]).
    async fn edit_submitted(
        &self,
        turn: u32,
        candidate: u32,
        instruction: &str,
        request: &ProviderRequest,
    ) -> Result<(), ObserverError> {
        let _ = (turn, candidate, instruction, request);
        Ok(())
    }
    /// A candidate of a turn with several has its image (its critique is
    /// still `None`). The default refuses: an observer that cannot record
    /// candidates stops such a job instead of losing them.
    async fn candidate_edited(&self, candidate: &CandidateRecord) -> Result<(), ObserverError> {
        let _ = candidate;
        Err(NO_CANDIDATES.into())
    }
    /// Candidate `candidate` of turn `turn` has its critique (default:
    /// refused, as [`Self::candidate_edited`]).
    async fn candidate_critiqued(
        &self,
        turn: u32,
        candidate: u32,
        critique: &CritiqueRecord,
    ) -> Result<(), ObserverError> {
        let _ = (turn, candidate, critique);
        Err(NO_CANDIDATES.into())
    }
    /// Turn `turn.index` of several candidates is complete: `choice` picked
    /// the candidate whose instruction, timing and critique `turn` carries
    /// (its image is the candidate's, already recorded). Default: refused,
    /// as [`Self::candidate_edited`].
    async fn turn_chosen(&self, turn: &TurnRecord, choice: &Choice) -> Result<(), ObserverError> {
        let _ = (turn, choice);
        Err(NO_CANDIDATES.into())
    }
    /// The loop is about to pay for a new edit of `turn` (not a resumed
    /// provider request): an observer may hold it here, e.g. while the
    /// thinker that must judge the edit is unreachable, or stop it.
    async fn before_edit(&self, turn: u32) -> Result<(), ObserverError> {
        let _ = turn;
        Ok(())
    }
    /// Live text of the thinker while it critiques candidate `candidate`
    /// of `turn` (not persisted; must not block).
    fn thinking(&self, turn: u32, candidate: u32, delta: &str) {
        let _ = (turn, candidate, delta);
    }
    /// A provider call returned (an editor's image, a thinker's answer) and
    /// is paid for, priced at the job's prices: called before the step it
    /// belongs to is recorded, so a call whose step is lost to a crash
    /// still counts.
    async fn call_made(&self, call: &crate::usage::LedgerEntry) -> Result<(), ObserverError> {
        let _ = call;
        Ok(())
    }
}

/// What the verifier judges: one edit of the source against the user's
/// instruction (docs/configuration.md "Verifier").
#[derive(Clone, Copy)]
pub struct VerifyRequest<'a> {
    /// The job's source image.
    pub source: &'a Image,
    /// The candidate's edited image.
    pub edited: &'a Image,
    /// The user's instruction (what the edit should do).
    pub instruction: &'a str,
    /// Turn number, from 1.
    pub turn: u32,
    /// Candidate number within the turn, from 0.
    pub candidate: u32,
}

impl fmt::Debug for VerifyRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("instruction", &self.instruction)
            .field("turn", &self.turn)
            .field("candidate", &self.candidate)
            .finish_non_exhaustive()
    }
}

/// A verifier's judgement of one candidate, on 0..=10: the job JSON's
/// `turns[].candidates[].verifier` (contract).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifierScore {
    /// Instruction-following score, when the verifier gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic: Option<f64>,
    /// Visual quality score, when the verifier gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    /// `sqrt(semantic × quality)`, or the verifier's single score.
    pub overall: f64,
}

impl VerifierScore {
    /// A score from its two parts.
    pub fn from_parts(semantic: f64, quality: f64) -> Self {
        Self {
            semantic: Some(semantic),
            quality: Some(quality),
            overall: (semantic * quality).max(0.0).sqrt(),
        }
    }

    /// A single overall score.
    pub fn single(score: f64) -> Self {
        Self {
            semantic: None,
            quality: None,
            overall: score,
        }
    }
}

/// A verifier's answer: its score and the tokens the call used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerifierAnswer {
    /// The score, on 0..=10.
    pub score: VerifierScore,
    /// Tokens used; zero where the server did not say.
    pub tokens: crate::usage::Tokens,
}

/// A second opinion on edits (`[verifier]`): an independent model that
/// scores a candidate without refining anything.
#[async_trait]
pub trait Verifier: Send + Sync {
    /// Scores one edit. Errors are classed like a thinker's.
    async fn score(&self, request: VerifyRequest<'_>) -> Result<VerifierAnswer, ThinkerError>;
}
