//! The seams of the loop: editors, thinkers and the observer that persists turns.

use async_trait::async_trait;

use crate::critique::CritiqueRecord;
use crate::imaging::Image;
use crate::parse::Protocol;
use crate::run::TurnRecord;

/// One edit: always of the job's source image.
#[derive(Debug, Clone, Copy)]
pub struct EditRequest<'a> {
    /// The job's source image (never a previous output).
    pub source: &'a Image,
    /// The instruction for this turn.
    pub instruction: &'a str,
    /// Turn number, from 1.
    pub turn: u32,
}

/// Why an editor call failed; the worker acts on the class (DESIGN.md §6).
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
}

/// An image editor backend.
#[async_trait]
pub trait Editor: Send + Sync {
    /// Edits `request.source` following `request.instruction`.
    async fn edit(&self, request: EditRequest<'_>) -> Result<Image, EditorError>;
}

/// One critique: the source and the previous edit, with both instructions.
#[derive(Debug, Clone, Copy)]
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

/// A thinker backend: returns the model's raw answer; the loop parses it.
#[async_trait]
pub trait Thinker: Send + Sync {
    /// The output protocol this thinker's answers follow.
    fn protocol(&self) -> Protocol;
    /// Asks for one critique and returns the raw text answer.
    async fn critique(&self, request: CritiqueRequest<'_>) -> Result<String, ThinkerError>;
}

/// Persists loop progress. Each call must be durable before it returns, so
/// a resumed job continues after the last recorded step.
#[async_trait]
pub trait TurnObserver: Send + Sync {
    /// A new turn's image exists (its critique is still `None`).
    async fn turn_edited(&self, turn: &TurnRecord) -> Result<(), String>;
    /// `turn`'s critique is known.
    async fn turn_critiqued(&self, turn: u32, critique: &CritiqueRecord) -> Result<(), String>;
}
