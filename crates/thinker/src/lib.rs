//! Thinker backends (docs/architecture.md §1; docs/configuration.md "`[thinker]`"): the model that critiques each edit
//! and rewrites the instruction.
//!
//! Three kinds:
//! - `openai`: any OpenAI-compatible chat-completions server (vLLM,
//!   `mistralrs serve`, OpenAI, Gemini's compatible endpoint);
//! - `local`: EditThinker-8B (a Qwen3-VL model) in this process, on
//!   mistral.rs (`local`, only in a build with the `local` feature; the
//!   binary's feature is `local-thinker`);
//! - `sandbox`: a test mode in every build, with no network and no model:
//!   made-up but deterministic critiques, streamed word by word like a
//!   model's, whose scores rise over the turns ([`sandbox`]).
//!
//! [`build_thinker_async`] turns the `[thinker]` configuration section into
//! an [`editthinker_core::Thinker`] (loading the model for `local`);
//! [`build_thinker`] does the same without waiting, for `openai` and
//! `sandbox` only.
//! `tiny_model` (feature `test-support`, for tests and benchmarks only)
//! writes a tiny random-weight Qwen3-VL model.
//!
//! The verifier ([`verifier`], `[verifier]` in docs/configuration.md
//! "Verifier"), a second model that only scores edits, lives here too: it
//! shares the remote thinker's chat-completions plumbing. Its kinds are
//! `openai` ([`OpenAiVerifier`]) and `sandbox` ([`SandboxVerifier`]);
//! [`VerifierConfig::build`] turns the section into an
//! [`editthinker_core::Verifier`].

mod chat;
mod config;
#[cfg(feature = "local")]
pub mod local;
mod openai;
pub mod sandbox;
mod sse;
#[cfg(feature = "test-support")]
pub mod tiny_model;
pub mod verifier;

pub use config::{
    build_thinker, build_thinker_async, ThinkerConfig, ThinkerConfigError, ThinkerKind,
    LOCAL_NOT_BUILT, MAX_TOKEN_INTERVAL_MS,
};
#[cfg(feature = "local")]
pub use local::{CritiqueStats, LocalDType, LocalDevice, LocalSettings, LocalThinker};
pub use openai::{OpenAiSettings, OpenAiThinker};
pub use sandbox::SandboxThinker;
pub use verifier::{
    build_verifier, parse_verifier_score, OpenAiVerifier, SandboxVerifier, VerifierConfig,
    VerifierConfigError, VerifierKind, VerifierPrompt, VerifierProtocol, DEFAULT_VERIFIER_PROMPT,
};
