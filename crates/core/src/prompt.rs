//! The thinker prompt: our default texts and operator templates.

use crate::parse::Protocol;

/// A prompt template with `{original_instruction}` and `{rewritten_prompt}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    text: String,
}

/// Why a template file is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A required placeholder is absent.
    #[error("the template lacks the placeholder {{{0}}}")]
    MissingPlaceholder(&'static str),
    /// A placeholder we do not know.
    #[error("the template uses an unknown placeholder {{{0}}}")]
    UnknownPlaceholder(String),
}

impl PromptTemplate {
    /// Our default text for `protocol`.
    pub fn default_for(protocol: Protocol) -> Self {
        let _ = protocol;
        Self {
            text: "{original_instruction}\n{rewritten_prompt}".into(),
        }
    }

    /// Validates an operator's template.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        Ok(Self { text: text.into() })
    }

    /// Fills in both instructions.
    pub fn render(&self, original_instruction: &str, previous_instruction: &str) -> String {
        self.text
            .replace("{original_instruction}", original_instruction)
            .replace("{rewritten_prompt}", previous_instruction)
    }
}
