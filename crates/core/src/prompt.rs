//! The thinker prompt: our default texts and operator templates.
//!
//! A template is plain text with two placeholders, `{original_instruction}`
//! (the user's words) and `{rewritten_prompt}` (the instruction that produced
//! the edited image). Only `{` + `[a-z_]+` + `}` counts as a placeholder, so
//! literal JSON such as `{"semantic": 7}` may appear freely.

use crate::parse::Protocol;
use crate::traits::{CritiqueRequest, HistoryEntry};

/// Placeholder for the user's instruction.
const ORIGINAL: &str = "original_instruction";
/// Placeholder for the instruction that produced the edited image.
const REWRITTEN: &str = "rewritten_prompt";

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

/// Our default prompt for EditThinker-style models (docs/configuration.md "`[thinker]`"). The images
/// are sent before this text: source first, then the edit.
const EDITTHINKER_PROMPT: &str = r#"You are checking the work of an image editing model and coaching it to do better.

Two images come before this message. The FIRST is the original picture, before any editing. The SECOND is what the editor produced from it.

What the user wants: {original_instruction}
The instruction the editor was given for this attempt: {rewritten_prompt}

Do three things: compare the two images, score the edit, and write a better instruction for the editor's next attempt. The next attempt starts again from the original picture, so your instruction must work on its own, without reference to this attempt.

Scores are numbers from 0 to 10:
- semantic: does the edited picture do what the user wants, and leave alone everything the user did not ask to change? 10 = the request is fully carried out and nothing else differs; 0 = the request was ignored, or the picture was changed in ways nobody asked for.
- quality: does the edited picture look natural and clean? Check lighting, shadows, perspective, faces, hands and bodies, sharpness, and the borders of the edited area. 10 = natural and seamless; 0 = clearly broken, distorted or fake-looking.

How to write the better instruction:
1. Diagnose before rewriting. Name what went wrong: the instruction was vague or contradicted itself; a detail of the main subject was lost; something sits in the wrong place or at the wrong size; the style is wrong; the editor changed too much, or too little.
2. Fix that specific problem:
   - name things precisely (which object, its colour, material, number, size);
   - say what must stay as it is, e.g. "keep the woman's face, hair and clothes unchanged";
   - give positions exactly, e.g. "on the left edge of the table, in front of the vase";
   - use visual words for light, texture, camera angle and art style;
   - say how strong the change should be with words like "subtle", "slightly", "clearly", "dramatic".
3. Write one direct editing command, not a review. Keep the user's intent; do not add wishes of your own.
4. If the edit already does what the user wants and looks right, repeat the given instruction unchanged.

Reply in exactly this form, with nothing before or after it:
<think> your comparison of the two pictures and your diagnosis </think>
<score> {"semantic": <0-10>, "quality": <0-10>} </score>
<answer> the better instruction, or the given instruction unchanged when the edit is good enough </answer>"#;

/// Our default prompt for general models answering in the expert JSON form.
const EXPERT_PROMPT: &str = r#"You are an expert reviewer of instruction-based image edits. Two images come before this message: the FIRST is the original picture, the SECOND is the result of an editing model.

What the user wants: {original_instruction}
The instruction the editor was given for this attempt: {rewritten_prompt}

Decide whether the edited picture does what the user wants, keeps everything else as it was, and looks natural (lighting, shadows, perspective, faces and bodies, no blur or seams). If it does, you are satisfied. If not, explain what went wrong and write a new instruction for the editor. The editor will start again from the original picture, so the new instruction must stand on its own. Make it fix the actual problem: name objects precisely, say what must stay unchanged ("keep ... unchanged"), give exact positions and sizes, use visual vocabulary for style and light, and say how strong the change should be ("subtle", "dramatic"). Keep the user's intent.

Answer with one JSON object and nothing else:
{"is_satisfied": true or false, "reason": "one or two sentences", "new_rewritten_prompt": "the new instruction" or null when satisfied}

Examples (the pictures are described in words here):

User wants: "make the car red". Given instruction: "make the car red". The car is now a glossy red; the street, the sky and the people are exactly as before.
{"is_satisfied": true, "reason": "The car is red with believable reflections and nothing else changed.", "new_rewritten_prompt": null}

User wants: "change the mug on the desk to blue". Given instruction: "make the mug blue". The desk lamp turned blue; the mug is still white.
{"is_satisfied": false, "reason": "The wrong object was recoloured: the lamp is blue and the mug is unchanged.", "new_rewritten_prompt": "Change the colour of the white coffee mug on the right side of the desk to a solid cobalt blue; keep the desk lamp, the desk and everything else exactly as they are."}

User wants: "put the dog on a beach". Given instruction: "put the dog on a beach". The background is now a sandy beach, but the dog's black-and-white spotted coat became plain brown and its red collar is gone.
{"is_satisfied": false, "reason": "The background is right, but the dog lost its spotted coat and its red collar.", "new_rewritten_prompt": "Replace only the background with a sunny sandy beach and calm sea; keep the dog exactly as it is, with its black-and-white spotted coat, red collar, pose and size."}

User wants: "add a lamp on the bedside table". Given instruction: "add a lamp". A lamp appeared, but it floats on the wall above the bed.
{"is_satisfied": false, "reason": "The lamp is in the wrong place: it hangs on the wall instead of standing on the bedside table.", "new_rewritten_prompt": "Add a small table lamp with a white fabric shade standing on top of the wooden bedside table to the right of the bed, at a realistic size; keep the bed, the wall and the rest of the room unchanged."}"#;

/// One placeholder occurrence: byte range of `{name}` and the name.
fn placeholders(text: &str) -> impl Iterator<Item = (usize, usize, &str)> {
    let bytes = text.as_bytes();
    text.match_indices('{').filter_map(move |(start, _)| {
        let name_len = bytes[start + 1..]
            .iter()
            .take_while(|b| b.is_ascii_lowercase() || **b == b'_')
            .count();
        let close = start + 1 + name_len;
        (name_len > 0 && bytes.get(close) == Some(&b'}'))
            .then(|| (start, close + 1, &text[start + 1..close]))
    })
}

impl PromptTemplate {
    /// Our default text for `protocol`.
    pub fn default_for(protocol: Protocol) -> Self {
        let text = match protocol {
            Protocol::Editthinker => EDITTHINKER_PROMPT,
            Protocol::Expert => EXPERT_PROMPT,
        };
        Self { text: text.into() }
    }

    /// Validates an operator's template: both placeholders must appear, and
    /// no other `{identifier}` may.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if let Some((_, _, name)) =
            placeholders(text).find(|(_, _, name)| *name != ORIGINAL && *name != REWRITTEN)
        {
            return Err(TemplateError::UnknownPlaceholder(name.to_string()));
        }
        for required in [ORIGINAL, REWRITTEN] {
            if !placeholders(text).any(|(_, _, name)| name == required) {
                return Err(TemplateError::MissingPlaceholder(required));
            }
        }
        Ok(Self { text: text.into() })
    }

    /// The template text, placeholders included.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Fills in both instructions. Substitution is one pass over the
    /// template, so braces inside the instructions are never re-expanded.
    pub fn render(&self, original_instruction: &str, previous_instruction: &str) -> String {
        let mut out = String::with_capacity(
            self.text.len() + original_instruction.len() + previous_instruction.len(),
        );
        let mut copied = 0;
        for (start, end, name) in placeholders(&self.text) {
            let value = match name {
                ORIGINAL => original_instruction,
                REWRITTEN => previous_instruction,
                _ => continue,
            };
            out.push_str(&self.text[copied..start]);
            out.push_str(value);
            copied = end;
        }
        out.push_str(&self.text[copied..]);
        out
    }
}

impl PromptTemplate {
    /// The prompt for one critique: the template with both instructions
    /// filled in, then, when the request carries earlier turns
    /// (`history = "all"`), a list of them as text.
    pub fn render_request(&self, request: &CritiqueRequest<'_>) -> String {
        let mut text = self.render(request.original_instruction, request.previous_instruction);
        text.push_str(&history_text(request.history));
        text
    }
}

/// Earlier turns as a block appended to the prompt; empty without any.
fn history_text(history: &[HistoryEntry]) -> String {
    use std::fmt::Write;
    if history.is_empty() {
        return String::new();
    }
    let mut text = String::from(
        "\n\nEarlier attempts on this picture, oldest first (each started from the original; \
         use them to avoid repeating what did not work):\n",
    );
    let score = |s: Option<f64>| s.map_or_else(|| "none".to_string(), |s| format!("{s:.1}"));
    for entry in history {
        let _ = write!(
            text,
            "- attempt {}: instruction \"{}\"; semantic {}, quality {}",
            entry.turn,
            entry.instruction,
            score(entry.semantic),
            score(entry.quality)
        );
        if !entry.reason.is_empty() {
            let _ = write!(text, "; {}", entry.reason);
        }
        text.push('\n');
    }
    text.push_str("Reply in the form asked for above.");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_listed_after_the_template_only_when_given() {
        let template = PromptTemplate::default_for(Protocol::Editthinker);
        let image = crate::Image::from_pixels(&image::DynamicImage::new_rgb8(1, 1));
        let history = [HistoryEntry {
            turn: 1,
            instruction: "make the sky purple".into(),
            semantic: Some(4.0),
            quality: None,
            reason: "The sky is pink.".into(),
        }];
        let request = |history| CritiqueRequest {
            source: &image,
            edited: &image,
            original_instruction: "ORIG",
            previous_instruction: "PREV",
            turn: 2,
            history,
            thinking: &crate::NoThinking,
        };
        let plain = template.render_request(&request(&[]));
        assert_eq!(plain, template.render("ORIG", "PREV"));
        let with = template.render_request(&request(&history));
        assert!(with.starts_with(&plain));
        assert!(with.contains(
            "- attempt 1: instruction \"make the sky purple\"; semantic 4.0, quality none; The sky is pink.\n"
        ));
    }

    #[test]
    fn defaults_are_valid_templates() {
        for protocol in [Protocol::Editthinker, Protocol::Expert] {
            let t = PromptTemplate::default_for(protocol);
            assert_eq!(PromptTemplate::parse(t.text()).unwrap(), t);
        }
    }

    #[test]
    fn editthinker_default_has_the_required_structure() {
        let text = PromptTemplate::default_for(Protocol::Editthinker).render("ORIG", "PREV");
        assert!(text.contains("ORIG") && text.contains("PREV"));
        assert!(!text.contains("{original_instruction}") && !text.contains("{rewritten_prompt}"));
        for needle in [
            "FIRST is the original",
            "SECOND",
            "semantic:",
            "quality:",
            "10 =",
            "0 =",
            "unchanged",
            "subtle",
            "<think>",
            "</think>",
            r#"<score> {"semantic": <0-10>, "quality": <0-10>} </score>"#,
            "<answer>",
            "</answer>",
        ] {
            assert!(text.contains(needle), "missing {needle:?}");
        }
    }

    #[test]
    fn expert_default_has_json_form_and_examples() {
        let text = PromptTemplate::default_for(Protocol::Expert).render("ORIG", "PREV");
        assert!(text.contains("ORIG") && text.contains("PREV"));
        assert!(text.contains(r#""new_rewritten_prompt""#));
        // The in-context examples are themselves valid expert answers.
        let examples: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with(r#"{"is_satisfied": "#) && !l.contains("true or false"))
            .collect();
        assert_eq!(examples.len(), 4);
        let verdicts: Vec<_> = examples
            .iter()
            .map(|l| crate::parse::parse_expert(l).unwrap().is_satisfied.unwrap())
            .collect();
        assert_eq!(verdicts, [true, false, false, false]);
    }

    #[test]
    fn parse_requires_both_placeholders() {
        assert_eq!(
            PromptTemplate::parse("only {rewritten_prompt}"),
            Err(TemplateError::MissingPlaceholder("original_instruction"))
        );
        assert_eq!(
            PromptTemplate::parse("only {original_instruction}"),
            Err(TemplateError::MissingPlaceholder("rewritten_prompt"))
        );
        assert_eq!(
            PromptTemplate::parse("nothing"),
            Err(TemplateError::MissingPlaceholder("original_instruction"))
        );
    }

    #[test]
    fn parse_rejects_unknown_placeholders() {
        assert_eq!(
            PromptTemplate::parse("{original_instruction} {rewritten_prompt} {image}"),
            Err(TemplateError::UnknownPlaceholder("image".into()))
        );
    }

    #[test]
    fn literal_braces_are_not_placeholders() {
        let text = r#"{original_instruction} / {rewritten_prompt}
<score> {"semantic": 7, "quality": 8} </score> {} { spaced } {Upper} {x1} [{"a": 1}]"#;
        let t = PromptTemplate::parse(text).unwrap();
        let out = t.render("A", "B");
        assert!(out.starts_with("A / B\n"));
        assert!(out.contains(r#"{"semantic": 7, "quality": 8}"#));
        assert!(out.contains("{} { spaced } {Upper} {x1}"));
    }

    #[test]
    fn render_substitutes_every_occurrence_once() {
        let t = PromptTemplate::parse(
            "{original_instruction}|{rewritten_prompt}|{original_instruction}",
        )
        .unwrap();
        assert_eq!(t.render("a", "b"), "a|b|a");
        // Braces inside an instruction are not expanded again.
        assert_eq!(
            t.render("{rewritten_prompt}", "x"),
            "{rewritten_prompt}|x|{rewritten_prompt}"
        );
    }

    #[test]
    fn template_errors_name_the_placeholder() {
        assert_eq!(
            TemplateError::MissingPlaceholder("rewritten_prompt").to_string(),
            "the template lacks the placeholder {rewritten_prompt}"
        );
        assert_eq!(
            TemplateError::UnknownPlaceholder("foo".into()).to_string(),
            "the template uses an unknown placeholder {foo}"
        );
    }
}
