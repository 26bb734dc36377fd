//! Editor backends (DESIGN.md §4, BACKENDS.md "Editors"): the registry of
//! configured editors and one module per provider protocol, over shared HTTP
//! machinery (timeouts, retries, error classes, in-flight limits).
//!
//! Kinds in this build: `http` (self-hosted `/edit` servers). The other kinds
//! of [`EditorKind`] are recognised in configuration and refused with a clear
//! error until their clients land.

pub mod config;
pub mod http_common;
pub mod http_editor;
pub mod registry;

pub use config::{EditorConfigError, EditorKind, EditorProfile};
pub use http_editor::HttpEditor;
pub use registry::{EditorInfo, EditorRegistry};
