//! Domain types and the Think-while-Edit loop, free of IO.
//!
//! The loop ([`run_loop`]) is a pure async function over the [`Editor`] and
//! [`Thinker`] traits and a [`TurnObserver`] that persists each step; the
//! thinker protocol (prompt building and output parsing) lives in [`prompt`]
//! and [`parse`], and image geometry helpers in [`imaging`].

pub mod critique;
pub mod error_code;
pub mod imaging;
pub mod metrics;
pub mod net;
pub mod options;
pub mod parse;
pub mod prompt;
pub mod retry;
pub mod run;
pub mod text;
pub mod trace;
pub mod traits;
pub mod usage;

pub use critique::{Critique, CritiqueRecord};
pub use error_code::ErrorCode;
pub use imaging::{Image, ImageError, ImageFormat};
pub use options::{
    Budget, History, JobOptions, OptionsError, RankBy, Selection, StopThresholds, MAX_CANDIDATES,
};
pub use parse::{parse_editthinker, parse_expert, ParseError, Protocol};
pub use prompt::{PromptTemplate, TemplateError};
pub use retry::{FailureClass, RetryPolicy};
pub use run::{
    candidate_seed, cap_instruction, choose_candidate, has_plateaued, history_before, run_loop,
    select_turn, CandidateRecord, Choice, EditRefusal, LoopConfig, LoopError, LoopJob, LoopOutcome,
    LoopParts, PendingEdit, Progress, RefusalKind, StopReason, TurnRecord,
};
pub use traits::{
    CritiqueRequest, EditCheckpoint, EditRequest, Editor, EditorError, HistoryEntry, NoCheckpoint,
    NoThinking, ObserverError, ProviderRequest, Thinker, ThinkerAnswer, ThinkerError, ThinkingSink,
    TurnObserver, Verifier, VerifierAnswer, VerifierScore, VerifyRequest,
    DEFAULT_MAX_INSTRUCTION_CHARS,
};
pub use usage::{CallKind, Held, LedgerEntry, Prices, ProviderCall, Spending, Tokens, Usage};
