//! Thinker backends (DESIGN.md §3, §4): the model that critiques each edit
//! and rewrites the instruction.
//!
//! Today there is one kind, `openai`: any OpenAI-compatible chat-completions
//! server (vLLM, `mistralrs serve`, OpenAI, Gemini's compatible endpoint).
//! [`build_thinker`] turns the `[thinker]` configuration section into an
//! [`editthinker_core::Thinker`].

mod config;
mod openai;

pub use config::{build_thinker, ThinkerConfig, ThinkerConfigError, ThinkerKind};
pub use openai::{OpenAiSettings, OpenAiThinker};
