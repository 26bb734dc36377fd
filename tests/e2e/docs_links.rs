//! Every relative link in the README and `docs/` leads somewhere: its file
//! or folder exists, and its `#anchor`, when it has one, is a heading of
//! that file (slugged as GitHub renders them).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The Markdown files checked: the README and every file in `docs/`.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-`
/// and `_` dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown text's headings (outside fenced code), with
/// GitHub's `-1`, `-2` suffixes for repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    for line in prose_lines(text) {
        if !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading);
        let n = seen.entry(base.clone()).or_default();
        anchors.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    anchors
}

/// The targets of inline links `[text](target)` outside fenced code.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            targets.push(
                after[..end]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            );
            rest = &after[end..];
        }
    }
    targets
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files(root) {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in link_targets(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let name = file.strip_prefix(root).unwrap().display().to_string();
            if !linked.exists() {
                broken.push(format!("{name}: {target} (no such file)"));
                continue;
            }
            if let Some(anchor) = anchor {
                let linked_text = std::fs::read_to_string(&linked).unwrap_or_default();
                if !anchors(&linked_text).contains(anchor) {
                    broken.push(format!("{name}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug(" `[limits]`: what clients may send, and how much"),
        "limits-what-clients-may-send-and-how-much"
    );
    assert_eq!(slug(" Events (SSE)"), "events-sse");
    let text = "# A\n## Notes\n```\n# not a heading\n```\n## Notes\n";
    let found = anchors(text);
    assert!(found.contains("notes") && found.contains("notes-1") && found.contains("a"));
    assert!(!found.contains("not-a-heading"));
    assert_eq!(
        link_targets("see [x](a.md#b) and [y](#c)"),
        ["a.md#b", "#c"]
    );
}

/// Each file in `docs/` opens with a `## Contents` that links every `##`
/// and `###` heading after it (anchors checked by the test above).
#[test]
fn every_docs_file_has_a_table_of_contents_of_its_headings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for file in markdown_files(root).into_iter().skip(1) {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(root).unwrap().display().to_string();
        let Some(start) = text.find("\n## Contents\n") else {
            missing.push(format!("{name}: no ## Contents"));
            continue;
        };
        let body = &text[start + "\n## Contents\n".len()..];
        let end = body.find("\n## ").unwrap_or(body.len());
        let (contents, rest) = body.split_at(end);
        let listed: BTreeSet<String> = link_targets(contents)
            .into_iter()
            .filter_map(|t| t.strip_prefix('#').map(str::to_owned))
            .collect();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for line in prose_lines(&text) {
            let level = line.chars().take_while(|&c| c == '#').count();
            let heading = &line[level..];
            if level == 0 || !heading.starts_with(' ') {
                continue;
            }
            let base = slug(heading);
            let n = seen.entry(base.clone()).or_default();
            let anchor = if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            *n += 1;
            let after_contents = rest.contains(line);
            if (2..=3).contains(&level)
                && anchor != "contents"
                && after_contents
                && !listed.contains(&anchor)
            {
                missing.push(format!("{name}: {} not in its contents", line.trim()));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
