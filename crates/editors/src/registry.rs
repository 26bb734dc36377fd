//! The configured editors, by name, with the default one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use editthinker_core::Editor;
use serde::Serialize;

use crate::bfl::BflEditor;
use crate::config::{EditorConfigError, EditorKind, EditorProfile};
use crate::dashscope::DashscopeEditor;
use crate::fal::FalEditor;
use crate::gemini::GeminiEditor;
use crate::http_editor::HttpEditor;
use crate::openai::OpenAiEditor;
use crate::replicate::ReplicateEditor;
use crate::sandbox::SandboxEditor;

/// What `GET /v1/editors` shows about one editor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EditorInfo {
    /// The name clients pick it by (`[editors.<name>]`).
    pub name: String,
    /// The provider protocol, e.g. `http`.
    pub kind: String,
    /// The model behind it: the configured one, else the kind's default
    /// (none for `http` unless configured).
    pub model: Option<String>,
    /// Whether jobs that name no editor use it.
    pub default: bool,
}

struct Entry {
    info: EditorInfo,
    editor: Arc<dyn Editor>,
}

/// The editors a process can use. An empty registry is valid: the service
/// starts and reports that no editor is configured.
#[derive(Default)]
pub struct EditorRegistry {
    entries: BTreeMap<String, Entry>,
    default: Option<String>,
}

impl EditorRegistry {
    /// Name, kind, model and default of every profile, validated (the
    /// default, each kind's availability) without building clients or
    /// reading secrets: what a process that only serves the API needs.
    pub fn describe(
        profiles: &BTreeMap<String, EditorProfile>,
    ) -> Result<Vec<EditorInfo>, EditorConfigError> {
        let default = default_name(profiles)?;
        profiles
            .iter()
            .map(|(name, profile)| {
                if !profile.kind.is_available() {
                    return Err(EditorConfigError::KindUnavailable {
                        name: name.clone(),
                        kind: profile.kind,
                    });
                }
                Ok(EditorInfo {
                    name: name.clone(),
                    kind: profile.kind.to_string(),
                    model: profile.effective_model(),
                    default: default.as_deref() == Some(name.as_str()),
                })
            })
            .collect()
    }

    /// Builds every configured editor, validating the whole configuration
    /// first: the default, each kind's availability, URLs, keys and limits.
    pub fn from_config(
        profiles: &BTreeMap<String, EditorProfile>,
    ) -> Result<Self, EditorConfigError> {
        let mut registry = Self::default();
        for info in Self::describe(profiles)? {
            let name = &info.name;
            let profile = &profiles[name];
            let editor: Arc<dyn Editor> = match profile.kind {
                EditorKind::Http => Arc::new(HttpEditor::from_profile(name, profile)?),
                EditorKind::Openai => Arc::new(OpenAiEditor::from_profile(name, profile)?),
                EditorKind::Gemini => Arc::new(GeminiEditor::from_profile(name, profile)?),
                EditorKind::Dashscope => Arc::new(DashscopeEditor::from_profile(name, profile)?),
                EditorKind::Bfl => Arc::new(BflEditor::from_profile(name, profile)?),
                EditorKind::Fal => Arc::new(FalEditor::from_profile(name, profile)?),
                EditorKind::Replicate => Arc::new(ReplicateEditor::from_profile(name, profile)?),
                EditorKind::Sandbox => Arc::new(SandboxEditor::from_profile(name, profile)?),
            };
            registry.insert(info, editor);
        }
        Ok(registry)
    }

    /// Adds (or replaces) an editor; `info.default` makes it the default in
    /// place of any earlier one. For wiring editors built elsewhere, e.g.
    /// test doubles in other crates.
    pub fn insert(&mut self, info: EditorInfo, editor: Arc<dyn Editor>) {
        if info.default {
            if let Some(old) = self.default.take() {
                if let Some(entry) = self.entries.get_mut(&old) {
                    entry.info.default = false;
                }
            }
            self.default = Some(info.name.clone());
        } else if self.default.as_deref() == Some(info.name.as_str()) {
            self.default = None;
        }
        self.entries
            .insert(info.name.clone(), Entry { info, editor });
    }

    /// The editor called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Editor>> {
        self.entries.get(name).map(|e| Arc::clone(&e.editor))
    }

    /// The default editor's name (none only when the registry is empty).
    pub fn default_name(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The configured names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// Name, kind, model and default flag of every editor, sorted by name.
    pub fn infos(&self) -> Vec<EditorInfo> {
        self.entries.values().map(|e| e.info.clone()).collect()
    }

    /// Number of editors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no editor is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for EditorRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EditorRegistry")
            .field("editors", &self.infos())
            .field("default", &self.default)
            .finish()
    }
}

/// The one profile marked default; a lone profile is the default unmarked.
fn default_name(
    profiles: &BTreeMap<String, EditorProfile>,
) -> Result<Option<String>, EditorConfigError> {
    let marked: Vec<String> = profiles
        .iter()
        .filter(|(_, p)| p.default)
        .map(|(n, _)| n.clone())
        .collect();
    match (marked.len(), profiles.len()) {
        (0, 0) => Ok(None),
        (0, 1) => Ok(profiles.keys().next().cloned()),
        (0, _) => Err(EditorConfigError::NoDefault),
        (1, _) => Ok(marked.into_iter().next()),
        _ => Err(EditorConfigError::SeveralDefaults(marked)),
    }
}
