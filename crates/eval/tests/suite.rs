//! Suite loaders on small fixtures written in each published layout, and the
//! case filters.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use editthinker_eval::suite::{
    intersection_subset, load, select, Case, Filter, ImageRef, SuiteError, SuiteKind,
};
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::SchemaDescriptor;
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
                intersection: None,
            },
            Case {
                id: "b".into(),
                image: ImageRef::Url("https://example.com/dog.jpg".parse().unwrap()),
                instruction: "把狗变成猫".into(),
                group: None,
                language: Some("zh".into()),
                intersection: None,
            },
            // URLs are not checked: this one does not exist.
            Case {
                id: "c".into(),
                image: ImageRef::Url("http://example.com/missing.png".parse().unwrap()),
                instruction: "add a hat".into(),
                group: None,
                language: None,
                intersection: None,
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
            intersection: None,
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
            intersection: None,
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

// ---- GEdit-Bench -----------------------------------------------------------

/// One row of GEdit-Bench's parquet files.
struct GEditRow {
    task_type: &'static str,
    key: &'static str,
    /// `None` writes a null.
    instruction: Option<&'static str>,
    language: &'static str,
    /// The `input_image` struct's bytes (`None`: a null `bytes`) and path.
    image: Option<Vec<u8>>,
    image_path: Option<&'static str>,
    /// `input_image_raw`'s bytes: must never become the case's image.
    raw: Vec<u8>,
    intersection: bool,
}

/// A tiny PNG of one colour: rows get different bytes.
fn png_bytes(shade: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(2, 2, image::Rgb([shade, 30, 30]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

fn gedit_row(
    task_type: &'static str,
    key: &'static str,
    instruction: &'static str,
    language: &'static str,
    shade: u8,
    intersection: bool,
) -> GEditRow {
    GEditRow {
        task_type,
        key,
        instruction: Some(instruction),
        language,
        image: Some(png_bytes(shade)),
        image_path: None,
        raw: png_bytes(shade.wrapping_add(100)),
        intersection,
    }
}

/// The columns as the published files have them, in their order: the
/// Hugging Face `datasets` schema (`task_type`, `key`, `instruction`,
/// `instruction_language`: string; `input_image`, `input_image_raw`: Image,
/// stored as a struct of `bytes` and `path`; `Intersection_exist`: bool),
/// every column nullable as pyarrow writes it.
const GEDIT_COLUMNS: &[(&str, &str)] = &[
    ("task_type", "optional binary task_type (STRING);"),
    ("key", "optional binary key (STRING);"),
    ("instruction", "optional binary instruction (STRING);"),
    (
        "instruction_language",
        "optional binary instruction_language (STRING);",
    ),
    (
        "input_image",
        "optional group input_image { optional binary bytes; optional binary path (STRING); }",
    ),
    (
        "input_image_raw",
        "optional group input_image_raw { optional binary bytes; optional binary path (STRING); }",
    ),
    ("Intersection_exist", "optional boolean Intersection_exist;"),
];

/// Writes `rows` as a snappy-compressed parquet file at `path` (one row
/// group), with every column of [`GEDIT_COLUMNS`] but those in `omit`.
fn write_gedit(path: &Path, rows: &[GEditRow], omit: &[&str]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let columns: Vec<&str> = GEDIT_COLUMNS
        .iter()
        .filter(|(name, _)| !omit.contains(name))
        .map(|(_, decl)| *decl)
        .collect();
    let schema = Arc::new(
        parse_message_type(&format!("message schema {{ {} }}", columns.join(" "))).unwrap(),
    );
    let leaves = SchemaDescriptor::new(schema.clone());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut writer =
        SerializedFileWriter::new(fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for leaf in leaves.columns() {
        let mut column = group.next_column().unwrap().unwrap();
        let name = leaf.path().string();
        // (value, definition level) per row: a top-level column is defined at
        // level 1, a struct's field at level 2 (level 1: the struct, field null).
        let strings: Vec<(Option<Vec<u8>>, i16)> = match name.as_str() {
            "task_type" => rows.iter().map(|r| (Some(r.task_type.into()), 1)).collect(),
            "key" => rows.iter().map(|r| (Some(r.key.into()), 1)).collect(),
            "instruction" => rows
                .iter()
                .map(|r| match r.instruction {
                    Some(text) => (Some(text.into()), 1),
                    None => (None, 0),
                })
                .collect(),
            "instruction_language" => rows.iter().map(|r| (Some(r.language.into()), 1)).collect(),
            "input_image.bytes" => rows
                .iter()
                .map(|r| match &r.image {
                    Some(bytes) => (Some(bytes.clone()), 2),
                    None => (None, 1),
                })
                .collect(),
            "input_image.path" => rows
                .iter()
                .map(|r| match r.image_path {
                    Some(p) => (Some(p.into()), 2),
                    None => (None, 1),
                })
                .collect(),
            "input_image_raw.bytes" => rows.iter().map(|r| (Some(r.raw.clone()), 2)).collect(),
            "input_image_raw.path" => rows.iter().map(|_| (None, 1)).collect(),
            "Intersection_exist" => {
                let values: Vec<bool> = rows.iter().map(|r| r.intersection).collect();
                column
                    .typed::<BoolType>()
                    .write_batch(&values, Some(&vec![1; rows.len()]), None)
                    .unwrap();
                column.close().unwrap();
                continue;
            }
            other => panic!("unexpected column {other}"),
        };
        let values: Vec<ByteArray> = strings
            .iter()
            .filter_map(|(v, _)| v.clone().map(ByteArray::from))
            .collect();
        let levels: Vec<i16> = strings.iter().map(|(_, level)| *level).collect();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, Some(&levels), None)
            .unwrap();
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

/// Five rows over two task types and both languages, two of them in the
/// intersection subset.
fn gedit_rows() -> Vec<GEditRow> {
    vec![
        gedit_row(
            "background_change",
            "b0f3",
            "Change the background to a beach.",
            "en",
            10,
            true,
        ),
        gedit_row(
            "background_change",
            "9c1e",
            "把背景换成雪山",
            "cn",
            20,
            false,
        ),
        gedit_row(
            "tone_transfer",
            "77aa",
            "Make it look like dusk.",
            "en",
            30,
            false,
        ),
        gedit_row("tone_transfer", "5d02", "改成黄昏的色调", "cn", 40, true),
        gedit_row(
            "tone_transfer",
            "e4c9",
            "Give it a warm vintage tone.",
            "en",
            50,
            false,
        ),
    ]
}

/// The dataset repository's layout: `data/train-0000N-of-00002.parquet`
/// beside the README.
fn write_gedit_repo(bench: &Path, rows: &[GEditRow]) {
    write(&bench.join("README.md"), "---\nlicense: mit\n---\n");
    let (first, second) = rows.split_at(rows.len().div_ceil(2));
    write_gedit(&bench.join("data/train-00000-of-00002.parquet"), first, &[]);
    write_gedit(
        &bench.join("data/train-00001-of-00002.parquet"),
        second,
        &[],
    );
}

#[test]
fn gedit_fixture_loads_in_the_published_layout() {
    let dir = TempDir::new().unwrap();
    let bench = dir.path().join("GEdit-Bench");
    let rows = gedit_rows();
    write_gedit_repo(&bench, &rows);
    let suite = load(&bench).unwrap();
    assert_eq!(suite.name, "GEdit-Bench");
    assert_eq!(suite.kind, SuiteKind::GEdit);
    assert_eq!(suite.kind.as_str(), "gedit");
    // Both files, in file then row order.
    assert_eq!(ids(&suite.cases), ["b0f3", "9c1e", "77aa", "5d02", "e4c9"]);
    assert_eq!(
        suite.cases[0],
        Case {
            id: "b0f3".into(),
            image: ImageRef::Bytes(rows[0].image.clone().unwrap().into()),
            instruction: "Change the background to a beach.".into(),
            group: Some("background_change".into()),
            language: Some("en".into()),
            intersection: Some(true),
        }
    );
    assert_eq!(suite.cases[3].instruction, "改成黄昏的色调");
    // The image is `input_image`'s bytes, never `input_image_raw`'s.
    for (case, row) in suite.cases.iter().zip(&rows) {
        assert_eq!(
            case.image,
            ImageRef::Bytes(row.image.clone().unwrap().into())
        );
        assert_ne!(case.image, ImageRef::Bytes(row.raw.clone().into()));
    }
    let groups: Vec<_> = suite.cases.iter().map(|c| c.group.as_deref()).collect();
    assert_eq!(
        groups,
        [
            Some("background_change"),
            Some("background_change"),
            Some("tone_transfer"),
            Some("tone_transfer"),
            Some("tone_transfer"),
        ]
    );
    let languages: Vec<_> = suite.cases.iter().map(|c| c.language.as_deref()).collect();
    assert_eq!(
        languages,
        [Some("en"), Some("cn"), Some("en"), Some("cn"), Some("en")]
    );

    // `--language en`: the English half, over which the EN score is taken.
    let english = select(
        &suite.cases,
        &Filter {
            language: Some("en".into()),
            ..Filter::default()
        },
    );
    assert_eq!(ids(&english), ["b0f3", "77aa", "e4c9"]);
    let tone_cn = select(
        &suite.cases,
        &Filter {
            group: Some("tone_transfer".into()),
            language: Some("cn".into()),
            ..Filter::default()
        },
    );
    assert_eq!(ids(&tone_cn), ["5d02"]);

    // The intersection subset, of the whole suite and of its English half.
    assert_eq!(ids(&intersection_subset(&suite.cases)), ["b0f3", "5d02"]);
    assert_eq!(ids(&intersection_subset(&english)), ["b0f3"]);
    let flags: Vec<_> = suite.cases.iter().map(|c| c.intersection).collect();
    assert_eq!(
        flags,
        [
            Some(true),
            Some(false),
            Some(false),
            Some(true),
            Some(false)
        ]
    );

    // Messages name the image's size, not its every byte.
    let len = rows[0].image.as_ref().unwrap().len();
    assert_eq!(
        format!("{:?}", suite.cases[0].image),
        format!("Bytes(<{len} bytes>)")
    );
    assert_eq!(
        suite.cases[0].image.to_string(),
        format!("<{len} bytes in memory>")
    );
}

#[test]
fn gedit_parquet_found_beside_or_in_the_hub_conversion() {
    for file in ["test.parquet", "default/train/0000.parquet"] {
        let dir = TempDir::new().unwrap();
        let bench = dir.path().join("gedit");
        write_gedit(&bench.join(file), &gedit_rows(), &[]);
        let suite = load(&bench).unwrap();
        assert_eq!(suite.kind, SuiteKind::GEdit, "{file}");
        assert_eq!(suite.cases.len(), 5, "{file}");
    }
}

#[test]
fn gedit_key_in_both_languages_gets_the_language_in_its_id() {
    let dir = TempDir::new().unwrap();
    let bench = dir.path().join("gedit");
    let rows = vec![
        gedit_row("color_alter", "k1", "Make the car red.", "en", 10, true),
        gedit_row("color_alter", "k1", "把车变成红色", "cn", 10, true),
        gedit_row("color_alter", "k2", "Make the sky green.", "en", 20, false),
    ];
    write_gedit(&bench.join("data/train-00000-of-00001.parquet"), &rows, &[]);
    let suite = load(&bench).unwrap();
    assert_eq!(ids(&suite.cases), ["en/k1", "cn/k1", "en/k2"]);
    // One image, held once for both languages.
    match (&suite.cases[0].image, &suite.cases[1].image) {
        (ImageRef::Bytes(en), ImageRef::Bytes(cn)) => assert!(Arc::ptr_eq(en, cn)),
        other => panic!("{other:?}"),
    }

    // The same key twice in one language is an error.
    let rows = vec![
        gedit_row("color_alter", "k1", "Make the car red.", "en", 10, true),
        gedit_row("color_alter", "k1", "Make the car blue.", "en", 20, true),
    ];
    write_gedit(&bench.join("data/train-00000-of-00001.parquet"), &rows, &[]);
    let (err, message) = load_err(&bench);
    assert!(
        matches!(&err, SuiteError::Entry { field: Some(f), .. } if f == "key"),
        "{err:?}"
    );
    assert!(message.contains("duplicate key"), "{message}");
    assert!(message.contains("row #1 (\"k1\")"), "{message}");
}

#[test]
fn gedit_missing_column_is_named() {
    let dir = TempDir::new().unwrap();
    let bench = dir.path().join("gedit");
    let file = bench.join("data/train-00000-of-00001.parquet");
    write_gedit(&file, &gedit_rows(), &["instruction_language"]);
    let (err, message) = load_err(&bench);
    match &err {
        SuiteError::Column { path, column, .. } => {
            assert_eq!(path, &file);
            assert_eq!(column, "instruction_language");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        message.contains("column `instruction_language`: missing"),
        "{message}"
    );
    assert!(
        message.contains("train-00000-of-00001.parquet"),
        "{message}"
    );

    // Without `Intersection_exist` the cases load, outside any subset.
    write_gedit(&file, &gedit_rows(), &["Intersection_exist"]);
    let suite = load(&bench).unwrap();
    assert!(suite.cases.iter().all(|c| c.intersection.is_none()));
    assert!(intersection_subset(&suite.cases).is_empty());

    // Not a parquet file at all.
    write(&file, "not parquet");
    let (err, _) = load_err(&bench);
    assert!(matches!(err, SuiteError::Parquet { .. }), "{err:?}");
}

#[test]
fn gedit_bad_cells_name_the_row_and_column() {
    let dir = TempDir::new().unwrap();
    let bench = dir.path().join("gedit");
    let file = bench.join("data/train-00000-of-00001.parquet");

    let mut rows = gedit_rows();
    rows[2].instruction = None;
    write_gedit(&file, &rows, &[]);
    let (err, message) = load_err(&bench);
    assert!(
        matches!(&err, SuiteError::Entry { field: Some(f), .. } if f == "instruction"),
        "{err:?}"
    );
    assert!(message.contains("row #2 (\"77aa\")"), "{message}");
    assert!(
        message.contains("field `instruction`: missing"),
        "{message}"
    );

    let mut rows = gedit_rows();
    rows[1].image = Some(b"not an image".to_vec());
    write_gedit(&file, &rows, &[]);
    let (_, message) = load_err(&bench);
    assert!(message.contains("row #1 (\"9c1e\")"), "{message}");
    assert!(message.contains("field `input_image`"), "{message}");
    assert!(message.contains("not an image"), "{message}");

    // No bytes: the struct's path, taken from the parquet file's folder.
    let mut rows = gedit_rows();
    rows[0].image = None;
    rows[0].image_path = Some("images/b0f3.png");
    write_gedit(&file, &rows, &[]);
    let (err, _) = load_err(&bench);
    assert!(
        matches!(&err, SuiteError::MissingImage { case, looked_for }
            if case == "b0f3" && looked_for == &vec![bench.join("data/images/b0f3.png")]),
        "{err:?}"
    );
    png(&bench.join("data/images/b0f3.png"));
    let suite = load(&bench).unwrap();
    assert_eq!(
        suite.cases[0].image,
        ImageRef::Path(bench.join("data/images/b0f3.png"))
    );
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
    assert!(message.contains("GEdit-Bench"), "{message}");
    assert!(message.contains("data/*.parquet"), "{message}");
}

// ---- filters ---------------------------------------------------------------

fn case(id: usize, group: Option<&str>, language: Option<&str>) -> Case {
    Case {
        id: format!("c{id}"),
        image: ImageRef::Url(format!("https://example.com/{id}.png").parse().unwrap()),
        instruction: format!("edit {id}"),
        group: group.map(str::to_owned),
        language: language.map(str::to_owned),
        intersection: None,
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
