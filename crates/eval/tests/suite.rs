//! Suite loaders on small fixtures written in each published layout, and the
//! case filters.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use editthinker_eval::suite::{load, select, Case, Filter, ImageRef, SuiteError, SuiteKind};
use tempfile::TempDir;

/// Writes a tiny 2×2 image at `path` (PNG or JPEG by its extension),
/// creating its folders.
fn png(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(2, 2, image::Rgb([200, 30, 30]))
        .save(path)
        .unwrap();
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn load_err(path: &Path) -> (SuiteError, String) {
    let err = load(path).expect_err("the suite should not load");
    let message = err.to_string();
    (err, message)
}

// ---- JSONL manifests ------------------------------------------------------

#[test]
fn manifest_loads_paths_and_urls() {
    let dir = TempDir::new().unwrap();
    png(&dir.path().join("cat.png"));
    let manifest = dir.path().join("smoke.jsonl");
    write(
        &manifest,
        concat!(
            r#"{"id": "a", "image": "cat.png", "instruction": "make it blue", "group": "color", "language": "en"}"#,
            "\n",
            r#"{"id": "b", "image": "https://example.com/dog.jpg", "instruction": "把狗变成猫", "language": "zh"}"#,
            "\n",
            r#"{"id": "c", "image": "http://example.com/missing.png", "instruction": "add a hat", "group": null}"#,
            "\n",
        ),
    );
    let suite = load(&manifest).unwrap();
    assert_eq!(suite.name, "smoke.jsonl");
    assert_eq!(suite.kind, SuiteKind::Manifest);
    assert_eq!(
        suite.cases,
        vec![
            Case {
                id: "a".into(),
                image: ImageRef::Path(dir.path().join("cat.png")),
                instruction: "make it blue".into(),
                group: Some("color".into()),
                language: Some("en".into()),
            },
            Case {
                id: "b".into(),
                image: ImageRef::Url("https://example.com/dog.jpg".parse().unwrap()),
                instruction: "把狗变成猫".into(),
                group: None,
                language: Some("zh".into()),
            },
            // URLs are not checked: this one does not exist.
            Case {
                id: "c".into(),
                image: ImageRef::Url("http://example.com/missing.png".parse().unwrap()),
                instruction: "add a hat".into(),
                group: None,
                language: None,
            },
        ]
    );
}

#[test]
fn manifest_paths_resolve_against_the_manifest_folder() {
    let dir = TempDir::new().unwrap();
    let suites = dir.path().join("suites");
    png(&suites.join("images/one.png"));
    png(&dir.path().join("shared/two.png"));
    let absolute = dir.path().join("elsewhere/three.png");
    png(&absolute);
    let manifest = suites.join("nested.jsonl");
    write(
        &manifest,
        &format!(
            "{}\n{}\n{}\n",
            r#"{"id": "1", "image": "images/one.png", "instruction": "x"}"#,
            r#"{"id": "2", "image": "../shared/two.png", "instruction": "x"}"#,
            serde_json::json!({"id": "3", "image": absolute, "instruction": "x"}),
        ),
    );
    let suite = load(&manifest).unwrap();
    let images: Vec<&ImageRef> = suite.cases.iter().map(|c| &c.image).collect();
    assert_eq!(
        images,
        vec![
            &ImageRef::Path(suites.join("images/one.png")),
            &ImageRef::Path(suites.join("../shared/two.png")),
            &ImageRef::Path(absolute.clone()),
        ]
    );
    // Not the working directory: the image exists only beside the manifest.
    assert!(!Path::new("images/one.png").exists());
}

#[test]
fn image_ref_parse_tells_urls_from_paths() {
    let base = Path::new("/suites");
    assert_eq!(
        ImageRef::parse("https://example.com/a.png?x=1", base),
        ImageRef::Url("https://example.com/a.png?x=1".parse().unwrap())
    );
    assert_eq!(
        ImageRef::parse("a.png", base),
        ImageRef::Path(PathBuf::from("/suites/a.png"))
    );
    assert_eq!(
        ImageRef::parse("/abs/a.png", base),
        ImageRef::Path(PathBuf::from("/abs/a.png"))
    );
    // Other schemes are not fetched: they are read as paths.
    assert_eq!(
        ImageRef::parse("ftp://example.com/a.png", base),
        ImageRef::Path(PathBuf::from("/suites/ftp://example.com/a.png"))
    );
    assert_eq!(
        ImageRef::parse("file:///abs/b.png", base),
        ImageRef::Path(PathBuf::from("/abs/b.png"))
    );
}

#[test]
fn manifest_skips_comments_and_blank_lines() {
    let dir = TempDir::new().unwrap();
    png(&dir.path().join("a.png"));
    let manifest = dir.path().join("commented.jsonl");
    write(
        &manifest,
        concat!(
            "# a smoke suite\n",
            "\n",
            "   \n",
            r#"{"id": "one", "image": "a.png", "instruction": "first"}"#,
            "\r\n",
            "  # indented comment\n",
            r#"{"id": "two", "image": "a.png", "instruction": "second"}"#,
        ),
    );
    let suite = load(&manifest).unwrap();
    let ids: Vec<&str> = suite.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["one", "two"]);
}

#[test]
fn manifest_bad_json_names_the_line() {
    let dir = TempDir::new().unwrap();
    png(&dir.path().join("a.png"));
    let manifest = dir.path().join("bad.jsonl");
    write(
        &manifest,
        concat!(
            "# header\n",
            r#"{"id": "one", "image": "a.png", "instruction": "ok"}"#,
            "\n",
            r#"{"id": "two", "image": "a.png", "instruction": "unterminated}"#,
            "\n",
        ),
    );
    let (err, message) = load_err(&manifest);
    assert!(
        matches!(
            err,
            SuiteError::Line {
                line: 3,
                field: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(message.contains("line 3"), "{message}");
    assert!(message.contains("invalid JSON"), "{message}");
    assert!(message.contains("bad.jsonl"), "{message}");

    write(&manifest, "[1, 2]\n");
    let (err, message) = load_err(&manifest);
    assert!(matches!(err, SuiteError::Line { line: 1, .. }), "{err:?}");
    assert!(message.contains("expected a JSON object"), "{message}");
}

#[test]
fn manifest_missing_or_empty_field_names_line_and_field() {
    let dir = TempDir::new().unwrap();
    png(&dir.path().join("a.png"));
    let manifest = dir.path().join("fields.jsonl");
    let cases = [
        (r#"{"id": "x", "image": "a.png"}"#, "instruction", "missing"),
        (r#"{"image": "a.png", "instruction": "i"}"#, "id", "missing"),
        (
            r#"{"id": "", "image": "a.png", "instruction": "i"}"#,
            "id",
            "must not be empty",
        ),
        (
            r#"{"id": "x", "image": "a.png", "instruction": "  "}"#,
            "instruction",
            "must not be empty",
        ),
        (
            r#"{"id": 7, "image": "a.png", "instruction": "i"}"#,
            "id",
            "expected a string",
        ),
        (r#"{"id": "x", "instruction": "i"}"#, "image", "missing"),
        (
            r#"{"id": "x", "image": "a.png", "instruction": "i", "group": 3}"#,
            "group",
            "expected a string",
        ),
    ];
    for (line, field, reason) in cases {
        write(
            &manifest,
            &format!(
                "{}\n{line}\n",
                r#"{"id": "ok", "image": "a.png", "instruction": "fine"}"#
            ),
        );
        let (err, message) = load_err(&manifest);
        match &err {
            SuiteError::Line {
                line: 2,
                field: Some(f),
                ..
            } => assert_eq!(f, field, "{line}"),
            other => panic!("{line}: {other:?}"),
        }
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains(&format!("field `{field}`")), "{message}");
        assert!(message.contains(reason), "{message}");
    }
}

#[test]
fn manifest_rejects_duplicate_ids() {
    let dir = TempDir::new().unwrap();
    png(&dir.path().join("a.png"));
    let manifest = dir.path().join("dup.jsonl");
    write(
        &manifest,
        concat!(
            r#"{"id": "same", "image": "a.png", "instruction": "one"}"#,
            "\n",
            r#"{"id": "other", "image": "a.png", "instruction": "two"}"#,
            "\n\n",
            r#"{"id": "same", "image": "a.png", "instruction": "three"}"#,
            "\n",
        ),
    );
    let (err, message) = load_err(&manifest);
    match err {
        SuiteError::DuplicateId {
            id,
            line,
            first_line,
            ..
        } => {
            assert_eq!(id, "same");
            assert_eq!(line, 4);
            assert_eq!(first_line, 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(message.contains("line 4"), "{message}");
    assert!(message.contains("duplicate id \"same\""), "{message}");
    assert!(message.contains("field `id`"), "{message}");
}

#[test]
fn manifest_rejects_unknown_keys() {
    let dir = TempDir::new().unwrap();
    png(&dir.path().join("a.png"));
    let manifest = dir.path().join("unknown.jsonl");
    write(
        &manifest,
        r#"{"id": "x", "image": "a.png", "instruction": "i", "prompt": "typo"}"#,
    );
    let (err, message) = load_err(&manifest);
    assert!(
        matches!(&err, SuiteError::Line { line: 1, field: Some(f), .. } if f == "prompt"),
        "{err:?}"
    );
    assert!(message.contains("unknown key"), "{message}");
    assert!(message.contains("field `prompt`"), "{message}");
}

#[test]
fn manifest_missing_image_names_the_case() {
    let dir = TempDir::new().unwrap();
    png(&dir.path().join("a.png"));
    let manifest = dir.path().join("missing.jsonl");
    write(
        &manifest,
        concat!(
            r#"{"id": "fine", "image": "a.png", "instruction": "i"}"#,
            "\n",
            r#"{"id": "lost", "image": "nowhere/b.png", "instruction": "i"}"#,
            "\n",
        ),
    );
    let (err, message) = load_err(&manifest);
    match &err {
        SuiteError::MissingImage { case, looked_for } => {
            assert_eq!(case, "lost");
            assert_eq!(looked_for, &vec![dir.path().join("nowhere/b.png")]);
        }
        other => panic!("{other:?}"),
    }
    assert!(message.contains("\"lost\""), "{message}");
    assert!(message.contains("nowhere/b.png"), "{message}");
}

#[test]
fn manifest_without_cases_is_an_error() {
    let dir = TempDir::new().unwrap();
    let manifest = dir.path().join("empty.jsonl");
    write(&manifest, "# nothing yet\n\n");
    let (err, message) = load_err(&manifest);
    assert!(matches!(err, SuiteError::Empty(_)), "{err:?}");
    assert!(message.contains("no cases"), "{message}");
}

#[test]
fn missing_suite_path_is_not_found() {
    let dir = TempDir::new().unwrap();
    let (err, message) = load_err(&dir.path().join("absent.jsonl"));
    assert!(matches!(err, SuiteError::NotFound(_)), "{err:?}");
    assert!(message.contains("absent.jsonl"), "{message}");
}

// ---- ImgEdit-Bench ----------------------------------------------------------

/// ImgEdit-Bench as its authors publish it: `basic_edit.json` (GitHub
/// `PKU-YuanGroup/ImgEdit`, `Benchmark/Basic`) maps a key to the original
/// image's path relative to the image root, the prompt and the edit type;
/// the images come in `Benchmark/singleturn/<folder>/<file>.jpg`
/// (Hugging Face `sysuyy/ImgEdit`, `Benchmark.tar`).
const IMGEDIT_JSON: &str = r#"{
    "1082": {
        "id": "animal/000342021.jpg",
        "prompt": "Change the tortoise's shell texture to a smooth surface.",
        "edit_type": "alter"
    },
    "673": {
        "id": "style/000278574.jpg",
        "prompt": "Transfer the image into a traditional ukiyo-e woodblock-print style.",
        "edit_type": "style"
    },
    "628": {
        "id": "daily object/000276684.jpg",
        "prompt": "Replace the giant boot in the image with a large coffee mug.",
        "edit_type": "replace"
    }
}"#;

const IMGEDIT_IMAGES: [&str; 3] = [
    "animal/000342021.jpg",
    "style/000278574.jpg",
    "daily object/000276684.jpg",
];

#[test]
fn imgedit_fixture_loads_in_the_published_layout() {
    let dir = TempDir::new().unwrap();
    let bench = dir.path().join("imgedit-bench");
    write(&bench.join("basic_edit.json"), IMGEDIT_JSON);
    let root = bench.join("Benchmark/singleturn");
    for image in IMGEDIT_IMAGES {
        png(&root.join(image));
    }
    let suite = load(&bench).unwrap();
    assert_eq!(suite.name, "imgedit-bench");
    assert_eq!(suite.kind, SuiteKind::ImgEdit);
    // File order, not key order.
    let ids: Vec<&str> = suite.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["1082", "673", "628"]);
    assert_eq!(
        suite.cases[0],
        Case {
            id: "1082".into(),
            image: ImageRef::Path(root.join("animal/000342021.jpg")),
            instruction: "Change the tortoise's shell texture to a smooth surface.".into(),
            group: Some("alter".into()),
            language: Some("en".into()),
        }
    );
    assert_eq!(
        suite.cases[2].image,
        ImageRef::Path(root.join("daily object/000276684.jpg"))
    );
    let groups: Vec<_> = suite.cases.iter().map(|c| c.group.as_deref()).collect();
    assert_eq!(groups, [Some("alter"), Some("style"), Some("replace")]);
}

#[test]
fn imgedit_images_beside_the_json_or_in_singleturn() {
    // The unpacked `Benchmark/singleturn` folder itself, with its
    // `singleturn.json` (same shape as basic_edit.json).
    let dir = TempDir::new().unwrap();
    let singleturn = dir.path().join("singleturn");
    write(&singleturn.join("singleturn.json"), IMGEDIT_JSON);
    for image in IMGEDIT_IMAGES {
        png(&singleturn.join(image));
    }
    let suite = load(&singleturn).unwrap();
    assert_eq!(suite.kind, SuiteKind::ImgEdit);
    assert_eq!(suite.name, "singleturn");
    assert_eq!(
        suite.cases[1].image,
        ImageRef::Path(singleturn.join("style/000278574.jpg"))
    );

    // basic_edit.json with a `singleturn` subfolder.
    let bench = dir.path().join("bench");
    write(&bench.join("basic_edit.json"), IMGEDIT_JSON);
    for image in IMGEDIT_IMAGES {
        png(&bench.join("singleturn").join(image));
    }
    let suite = load(&bench).unwrap();
    assert_eq!(
        suite.cases[0].image,
        ImageRef::Path(bench.join("singleturn/animal/000342021.jpg"))
    );
}

#[test]
fn imgedit_missing_image_and_bad_entry_are_named() {
    let dir = TempDir::new().unwrap();
    let bench = dir.path().join("imgedit");
    write(&bench.join("basic_edit.json"), IMGEDIT_JSON);
    png(&bench.join("animal/000342021.jpg"));
    png(&bench.join("style/000278574.jpg"));
    let (err, message) = load_err(&bench);
    match &err {
        SuiteError::MissingImage { case, looked_for } => {
            assert_eq!(case, "628");
            assert_eq!(looked_for.len(), 4);
            assert_eq!(looked_for[0], bench.join("daily object/000276684.jpg"));
        }
        other => panic!("{other:?}"),
    }
    assert!(message.contains("\"628\""), "{message}");
    assert!(
        message.contains("Benchmark/singleturn/daily object/000276684.jpg"),
        "{message}"
    );

    write(
        &bench.join("basic_edit.json"),
        r#"{"1": {"id": "animal/000342021.jpg", "edit_type": "alter"}}"#,
    );
    let (err, message) = load_err(&bench);
    assert!(
        matches!(&err, SuiteError::Entry { field: Some(f), .. } if f == "prompt"),
        "{err:?}"
    );
    assert!(message.contains("entry \"1\""), "{message}");
    assert!(message.contains("field `prompt`: missing"), "{message}");

    write(
        &bench.join("basic_edit.json"),
        r#"{"1": {"id": "animal/000342021.jpg", "prompt": "a", "edit_type": "alter"},
            "1": {"id": "style/000278574.jpg", "prompt": "b", "edit_type": "style"}}"#,
    );
    let (_, message) = load_err(&bench);
    assert!(message.contains("duplicate key"), "{message}");

    write(&bench.join("basic_edit.json"), "[]");
    let (err, _) = load_err(&bench);
    assert!(matches!(err, SuiteError::Json { .. }), "{err:?}");
}

// ---- RISEBench --------------------------------------------------------------

/// RISEBench as published on Hugging Face (`PhoenixZ/RISEBench`):
/// `datav2_total_w_subtask.json`, an array of cases whose `image` is relative
/// to the `data` folder that `data.zip` unpacks to.
fn risebench_json() -> String {
    serde_json::json!([
        {
            "index": "temporal_reasoning_1",
            "category": "temporal_reasoning",
            "subtask": "Life Progression",
            "instruction": "Draw what it will look like after a year.",
            "image": "temporal_reasoning_images/1.png",
            "reference": "Rotten, blackened banana."
        },
        {
            "index": "causal_reasoning_1",
            "category": "causal_reasoning",
            "subtask": "Structural Deformation",
            "instruction": "Draw what it will look like after being bitten.",
            "image": "causal_reasoning_images/1.png",
            "reference": "Apple with a bite mark."
        },
        {
            "index": "logical_reasoning_2",
            "category": "logical_reasoning",
            "subtask": "Puzzle Solving",
            "instruction": "Solve the sudoku.",
            "image": "logical_reasoning_images/2.png",
            "reference_img": "logical_reasoning_images/2_ref.png"
        }
    ])
    .to_string()
}

#[test]
fn risebench_fixture_loads_in_the_published_layout() {
    let dir = TempDir::new().unwrap();
    let bench = dir.path().join("RISEBench");
    write(
        &bench.join("datav2_total_w_subtask.json"),
        &risebench_json(),
    );
    for image in [
        "temporal_reasoning_images/1.png",
        "causal_reasoning_images/1.png",
        "logical_reasoning_images/2.png",
    ] {
        png(&bench.join("data").join(image));
    }
    let suite = load(&bench).unwrap();
    assert_eq!(suite.name, "RISEBench");
    assert_eq!(suite.kind, SuiteKind::RiseBench);
    assert_eq!(suite.cases.len(), 3);
    assert_eq!(
        suite.cases[0],
        Case {
            id: "temporal_reasoning_1".into(),
            image: ImageRef::Path(bench.join("data/temporal_reasoning_images/1.png")),
            instruction: "Draw what it will look like after a year.".into(),
            group: Some("temporal_reasoning".into()),
            language: Some("en".into()),
        }
    );
    let groups: Vec<_> = suite.cases.iter().map(|c| c.group.as_deref()).collect();
    assert_eq!(
        groups,
        [
            Some("temporal_reasoning"),
            Some("causal_reasoning"),
            Some("logical_reasoning")
        ]
    );
}

#[test]
fn risebench_repository_subset_layout_loads() {
    // The authors' repository: data/data_total.json beside the image folders.
    let dir = TempDir::new().unwrap();
    let repo = dir.path().join("risebench-repo");
    write(&repo.join("data/data_total.json"), &risebench_json());
    for image in [
        "temporal_reasoning_images/1.png",
        "causal_reasoning_images/1.png",
        "logical_reasoning_images/2.png",
    ] {
        png(&repo.join("data").join(image));
    }
    let suite = load(&repo).unwrap();
    assert_eq!(suite.kind, SuiteKind::RiseBench);
    assert_eq!(suite.name, "risebench-repo");
    assert_eq!(
        suite.cases[2].image,
        ImageRef::Path(repo.join("data/logical_reasoning_images/2.png"))
    );
}

#[test]
fn risebench_errors_name_the_entry() {
    let dir = TempDir::new().unwrap();
    let bench = dir.path().join("rise");
    let json = bench.join("datav2_total_w_subtask.json");
    write(&json, &risebench_json());
    png(&bench.join("data/temporal_reasoning_images/1.png"));
    let (err, message) = load_err(&bench);
    assert!(
        matches!(&err, SuiteError::MissingImage { case, .. } if case == "causal_reasoning_1"),
        "{err:?}"
    );
    assert!(
        message.contains("causal_reasoning_images/1.png"),
        "{message}"
    );

    write(
        &json,
        &serde_json::json!([
            {"index": "a", "category": "c", "instruction": "i", "image": "temporal_reasoning_images/1.png"},
            {"index": "b", "category": "c", "image": "temporal_reasoning_images/1.png"}
        ])
        .to_string(),
    );
    let (err, message) = load_err(&bench);
    assert!(
        matches!(&err, SuiteError::Entry { field: Some(f), .. } if f == "instruction"),
        "{err:?}"
    );
    assert!(message.contains("entry #1 (\"b\")"), "{message}");

    write(
        &json,
        &serde_json::json!([
            {"index": "a", "category": "c", "instruction": "i", "image": "temporal_reasoning_images/1.png"},
            {"index": "a", "category": "c", "instruction": "j", "image": "temporal_reasoning_images/1.png"}
        ])
        .to_string(),
    );
    let (_, message) = load_err(&bench);
    assert!(message.contains("duplicate index"), "{message}");

    write(&json, r#"{"not": "an array"}"#);
    let (err, message) = load_err(&bench);
    assert!(matches!(err, SuiteError::Json { .. }), "{err:?}");
    assert!(message.contains("expected an array"), "{message}");
}

// ---- unknown folders --------------------------------------------------------

#[test]
fn unknown_folder_lists_what_was_looked_for() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().join("random");
    write(&folder.join("notes.txt"), "hello");
    png(&folder.join("a.png"));
    let (err, message) = load_err(&folder);
    match &err {
        SuiteError::UnknownLayout { path, looked_for } => {
            assert_eq!(path, &folder);
            let all = looked_for.join(" ");
            for name in [
                "basic_edit.json",
                "singleturn.json",
                "datav2_total_w_subtask.json",
                "data_total.json",
            ] {
                assert!(all.contains(name), "{all}");
            }
        }
        other => panic!("{other:?}"),
    }
    assert!(message.contains("not a suite folder"), "{message}");
    assert!(message.contains("ImgEdit-Bench"), "{message}");
    assert!(message.contains("RISEBench"), "{message}");
}

// ---- filters ---------------------------------------------------------------

fn case(id: usize, group: Option<&str>, language: Option<&str>) -> Case {
    Case {
        id: format!("c{id}"),
        image: ImageRef::Url(format!("https://example.com/{id}.png").parse().unwrap()),
        instruction: format!("edit {id}"),
        group: group.map(str::to_owned),
        language: language.map(str::to_owned),
    }
}

/// 30 cases: groups add/remove/style, 10 each, interleaved; every third
/// case is in Chinese.
fn cases() -> Vec<Case> {
    let groups = ["add", "remove", "style"];
    (0..30)
        .map(|i| {
            let language = if i % 3 == 0 { "zh" } else { "en" };
            case(i, Some(groups[i % 3]), Some(language))
        })
        .collect()
}

fn ids(cases: &[Case]) -> Vec<&str> {
    cases.iter().map(|c| c.id.as_str()).collect()
}

#[test]
fn default_filter_keeps_everything() {
    let all = cases();
    assert_eq!(select(&all, &Filter::default()), all);
}

#[test]
fn filter_by_group_and_language() {
    let all = cases();
    let style = select(
        &all,
        &Filter {
            group: Some("style".into()),
            ..Filter::default()
        },
    );
    assert_eq!(style.len(), 10);
    assert!(style.iter().all(|c| c.group.as_deref() == Some("style")));

    let zh = select(
        &all,
        &Filter {
            language: Some("zh".into()),
            ..Filter::default()
        },
    );
    assert_eq!(zh.len(), 10);
    assert!(zh.iter().all(|c| c.language.as_deref() == Some("zh")));

    // Both: cases 0, 3, 6, … are zh and in group "add".
    let both = select(
        &all,
        &Filter {
            group: Some("add".into()),
            language: Some("zh".into()),
            ..Filter::default()
        },
    );
    assert_eq!(both.len(), 10);
    let none = select(
        &all,
        &Filter {
            group: Some("remove".into()),
            language: Some("zh".into()),
            ..Filter::default()
        },
    );
    assert!(none.is_empty());

    // Exact match: no prefix or case folding; cases without a group never match.
    let mut with_ungrouped = all.clone();
    with_ungrouped.push(case(99, None, None));
    for group in ["Style", "sty", ""] {
        let got = select(
            &with_ungrouped,
            &Filter {
                group: Some(group.into()),
                ..Filter::default()
            },
        );
        assert!(got.is_empty(), "{group:?}");
    }
}

#[test]
fn limit_keeps_the_first_n() {
    let all = cases();
    let first = select(
        &all,
        &Filter {
            limit: Some(4),
            ..Filter::default()
        },
    );
    assert_eq!(ids(&first), ["c0", "c1", "c2", "c3"]);
    let after_group = select(
        &all,
        &Filter {
            group: Some("remove".into()),
            limit: Some(2),
            ..Filter::default()
        },
    );
    assert_eq!(ids(&after_group), ["c1", "c4"]);
    let more_than_there = select(
        &all,
        &Filter {
            limit: Some(100),
            ..Filter::default()
        },
    );
    assert_eq!(more_than_there.len(), 30);
}

#[test]
fn sample_is_deterministic_and_spread_across_groups() {
    let all = cases();
    let sample = |n: usize, seed: u64| {
        select(
            &all,
            &Filter {
                sample: Some((n, seed)),
                ..Filter::default()
            },
        )
    };
    let a = sample(6, 7);
    assert_eq!(a, sample(6, 7), "same seed, same sample");
    assert_eq!(a.len(), 6);
    let mut per_group: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &a {
        *per_group.entry(c.group.as_deref().unwrap()).or_default() += 1;
        assert!(all.contains(c));
    }
    assert_eq!(
        per_group,
        BTreeMap::from([("add", 2), ("remove", 2), ("style", 2)])
    );
    // Some other seed draws a different sample.
    assert!((8..20).any(|seed| sample(6, seed) != a));

    // Filters apply before sampling, the limit after it.
    let filtered = select(
        &all,
        &Filter {
            language: Some("en".into()),
            sample: Some((4, 7)),
            limit: Some(3),
            ..Filter::default()
        },
    );
    assert_eq!(filtered.len(), 3);
    assert!(filtered.iter().all(|c| c.language.as_deref() == Some("en")));
    let unlimited = select(
        &all,
        &Filter {
            language: Some("en".into()),
            sample: Some((4, 7)),
            ..Filter::default()
        },
    );
    assert_eq!(unlimited.len(), 4);
    assert_eq!(&unlimited[..3], &filtered[..]);
    // The en cases are the remove and style groups: the sample has both.
    let groups: std::collections::BTreeSet<_> = unlimited.iter().map(|c| c.group.clone()).collect();
    assert_eq!(groups.len(), 2, "{groups:?}");
}

#[test]
fn sample_puts_ungrouped_cases_in_one_stratum() {
    let mut all: Vec<Case> = (0..8).map(|i| case(i, None, None)).collect();
    all.extend((8..10).map(|i| case(i, Some("rare"), None)));
    let got = select(
        &all,
        &Filter {
            sample: Some((5, 1)),
            ..Filter::default()
        },
    );
    assert_eq!(got.len(), 5);
    assert!(got.iter().any(|c| c.group.as_deref() == Some("rare")));
    assert!(got.iter().any(|c| c.group.is_none()));
}
