//! The one rule for free text we store, whether a client sent it or a
//! provider (editor, thinker) answered it.
//!
//! Both databases must take the same text: Postgres refuses NUL in `text`
//! and `\u0000` in `jsonb`, SQLite takes both. So the rule is decided here,
//! not by whichever backend runs: client text holding a refused character
//! is answered 422 ([`check_client_text`]); provider text has such
//! characters removed and its length capped ([`clean_provider_text`]).

use std::borrow::Cow;

/// Longest provider message kept (an editor's error body, a thinker's parse
/// error), in characters.
pub const MAX_PROVIDER_MESSAGE_CHARS: usize = 2_000;

/// Longest provider answer kept (a thinker's raw output, a rewritten
/// instruction), in characters.
pub const MAX_PROVIDER_TEXT_CHARS: usize = 64 * 1024;

/// What marks text cut at a cap.
pub const TRUNCATION_MARK: &str = " […]";

/// Whether `c` is never stored: NUL and the other C0 and C1 control
/// characters except tab, line feed and carriage return; DEL; and the
/// Unicode bidirectional embedding, override and isolate controls
/// (U+202A–U+202E, U+2066–U+2069), which make displayed text read in
/// another order than it is written.
pub fn is_refused(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Checks text a client sent: `Err` holds the rule it breaks, for a 422
/// that names the field.
pub fn check_client_text(text: &str) -> Result<(), String> {
    match text.char_indices().find(|(_, c)| is_refused(*c)) {
        None => Ok(()),
        Some((at, c)) => Err(format!(
            "must not contain control or bidirectional-override characters (found U+{:04X} at byte {at})",
            c as u32
        )),
    }
}

/// Checks every key and string of a client's JSON value; `Err` holds the
/// path of the first offending one (`.key`, `[2]`) and the rule.
pub fn check_client_json(value: &serde_json::Value) -> Result<(), (String, String)> {
    fn walk(value: &serde_json::Value, path: &mut String) -> Result<(), (String, String)> {
        match value {
            serde_json::Value::String(s) => {
                check_client_text(s).map_err(|rule| (path.clone(), rule))
            }
            serde_json::Value::Array(items) => items.iter().enumerate().try_for_each(|(i, v)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(v, path)?;
                path.truncate(len);
                Ok(())
            }),
            serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                check_client_text(k).map_err(|rule| (path.clone(), format!("key {rule}")))?;
                walk(v, path)?;
                path.truncate(len);
                Ok(())
            }),
            _ => Ok(()),
        }
    }
    walk(value, &mut String::new())
}

/// Provider text as stored: refused characters removed, then cut to at
/// most `max_chars` characters (the cut marked with [`TRUNCATION_MARK`]).
/// Borrows when nothing changes.
pub fn clean_provider_text(text: &str, max_chars: usize) -> Cow<'_, str> {
    let clean: Cow<'_, str> = if text.chars().any(is_refused) {
        Cow::Owned(text.chars().filter(|c| !is_refused(*c)).collect())
    } else {
        Cow::Borrowed(text)
    };
    match clean.char_indices().nth(max_chars) {
        None => clean,
        Some(_) => {
            let keep = max_chars.saturating_sub(TRUNCATION_MARK.chars().count());
            let end = clean
                .char_indices()
                .nth(keep)
                .map_or(clean.len(), |(i, _)| i);
            Cow::Owned(format!("{}{TRUNCATION_MARK}", &clean[..end]))
        }
    }
}

/// [`clean_provider_text`] applied to every key and string of a JSON value,
/// in place (each string capped at `max_chars`).
pub fn clean_provider_json(value: &mut serde_json::Value, max_chars: usize) {
    match value {
        serde_json::Value::String(s) => {
            if let Cow::Owned(clean) = clean_provider_text(s, max_chars) {
                *s = clean;
            }
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .for_each(|v| clean_provider_json(v, max_chars)),
        serde_json::Value::Object(map) => {
            if map.keys().any(|k| k.chars().any(is_refused)) {
                let entries = std::mem::take(map);
                for (k, v) in entries {
                    map.insert(clean_provider_text(&k, max_chars).into_owned(), v);
                }
            }
            map.values_mut()
                .for_each(|v| clean_provider_json(v, max_chars));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refused_characters() {
        for c in [
            '\0', '\u{1}', '\u{1b}', '\u{7f}', '\u{85}', '\u{202e}', '\u{2066}',
        ] {
            assert!(is_refused(c), "U+{:04X}", c as u32);
        }
        for c in ['\t', '\n', '\r', ' ', 'é', '\u{200d}', '\u{2065}'] {
            assert!(!is_refused(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn client_text_is_refused_with_its_position() {
        assert!(check_client_text("make the sky purple\n").is_ok());
        let rule = check_client_text("ab\0c").unwrap_err();
        assert!(rule.contains("U+0000 at byte 2"), "{rule}");
        let rule = check_client_text("x\u{202e}y").unwrap_err();
        assert!(rule.contains("U+202E"), "{rule}");
    }

    #[test]
    fn client_json_names_the_path() {
        assert!(check_client_json(&json!({"a": [1, "ok"], "b": {"c": "d"}})).is_ok());
        let (path, _) = check_client_json(&json!({"a": [1, "o\u{0}k"]})).unwrap_err();
        assert_eq!(path, ".a[1]");
        let (path, rule) = check_client_json(&json!({"b": {"k\u{0}": 1}})).unwrap_err();
        assert_eq!(path, ".b.k\u{0}");
        assert!(rule.starts_with("key "), "{rule}");
    }

    #[test]
    fn provider_text_is_cleaned_and_capped() {
        assert!(matches!(
            clean_provider_text("fine", 10),
            Cow::Borrowed("fine")
        ));
        assert_eq!(clean_provider_text("a\0b\u{202e}c", 10), "abc");
        let long = "é".repeat(50);
        let capped = clean_provider_text(&long, 20);
        assert_eq!(capped.chars().count(), 20);
        assert!(capped.ends_with(TRUNCATION_MARK));
        assert_eq!(clean_provider_text(&"x".repeat(20), 20).len(), 20);
    }

    #[test]
    fn provider_json_is_cleaned_everywhere() {
        let mut value = json!({"reasoning": "a\u{0}b", "k\u{0}": ["\u{1}x", 3]});
        clean_provider_json(&mut value, 100);
        assert_eq!(value, json!({"reasoning": "ab", "k": ["x", 3]}));
    }
}
