//! Editor backends (docs/architecture.md §1; docs/configuration.md "`[editors.<name>]`"): the registry of
//! configured editors and one module per provider protocol, over shared HTTP
//! machinery (timeouts, retries, error classes, in-flight limits).
//!
//! Kinds in this build: `http` (self-hosted `/edit` servers), the
//! synchronous hosted APIs `openai`, `gemini` and `dashscope`, and the
//! asynchronous ones `bfl`, `fal` and `replicate` (submit, record the
//! provider request through the edit's checkpoint, poll, download; see
//! [`polling`]), and `sandbox`, a test mode that calls nothing and costs
//! nothing: a visible, deterministic mark instead of an edit, with
//! simulated latency and failures (see [`sandbox`]).

pub mod bfl;
pub mod config;
pub mod dashscope;
pub mod fal;
pub mod gemini;
pub mod http_common;
pub mod http_editor;
pub mod openai;
pub mod polling;
pub mod registry;
pub mod replicate;
pub mod sandbox;

pub use bfl::BflEditor;
pub use config::{EditorConfigError, EditorKind, EditorProfile};
pub use dashscope::DashscopeEditor;
pub use fal::FalEditor;
pub use gemini::GeminiEditor;
pub use http_editor::HttpEditor;
pub use openai::OpenAiEditor;
pub use registry::{EditorInfo, EditorRegistry};
pub use replicate::ReplicateEditor;
pub use sandbox::SandboxEditor;
