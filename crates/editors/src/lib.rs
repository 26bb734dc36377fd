//! Editor backends (DESIGN.md §4, BACKENDS.md "Editors"): the registry of
//! configured editors and one module per provider protocol, over shared HTTP
//! machinery (timeouts, retries, error classes, in-flight limits).
//!
//! Kinds in this build: `http` (self-hosted `/edit` servers) and the
//! synchronous hosted APIs `openai`, `gemini` and `dashscope`. The other
//! kinds of [`EditorKind`] are recognised in configuration and refused with
//! a clear error until their clients land.

pub mod config;
pub mod dashscope;
pub mod gemini;
pub mod http_common;
pub mod http_editor;
pub mod openai;
pub mod registry;

pub use config::{EditorConfigError, EditorKind, EditorProfile};
pub use dashscope::DashscopeEditor;
pub use gemini::GeminiEditor;
pub use http_editor::HttpEditor;
pub use openai::OpenAiEditor;
pub use registry::{EditorInfo, EditorRegistry};
