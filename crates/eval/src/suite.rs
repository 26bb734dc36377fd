//! Suites: the cases an evaluation runs, and the filters that pick some of
//! them.
//!
//! [`load`] reads one of three layouts:
//!
//! * a **JSONL manifest** (a file): one case a line, `{"id", "image",
//!   "instruction", "group"?, "language"?}`; blank lines and lines starting
//!   with `#` are skipped. `image` is an `http`/`https` URL or a path, a
//!   relative path being taken from the manifest's folder.
//! * **ImgEdit-Bench** (a folder holding `basic_edit.json`, or the
//!   `singleturn.json` of the published `Benchmark/singleturn` folder): an
//!   object mapping a key to `{"id": "<image path>", "prompt", "edit_type"}`,
//!   where `id` is the original image's path relative to the image root
//!   (`animal/000342021.jpg`). The image root is the folder itself, or its
//!   `singleturn`, `Benchmark/singleturn` or `images` subfolder, the first that
//!   holds the case's image. The case id is the key, the group the
//!   `edit_type`, the language `en`.
//! * **RISEBench** (a folder holding `datav2_total_w_subtask.json`, the
//!   full benchmark as published on Hugging Face, or `data_total.json`, the
//!   64-case subset in the authors' repository; either directly or in a
//!   `data` subfolder): an array of `{"index", "instruction", "image",
//!   "category", ...}` where `image` is relative to the images folder (`data`,
//!   as `data.zip` unpacks: `data/temporal_reasoning_images/1.png`). The case
//!   id is the `index`, the group the `category`, the language `en`.
//! * **GEdit-Bench** (the Hugging Face dataset `stepfun-ai/GEdit-Bench`: a
//!   folder of `*.parquet` files, directly, in `data/`
//!   (`data/train-00000-of-00002.parquet`, ...) or in `default/train/`, the
//!   Hub's own conversion): one case a row, with the columns `key`,
//!   `task_type`, `instruction`, `instruction_language` (`en` or `cn`),
//!   `input_image`, `input_image_raw` and `Intersection_exist`. The case id
//!   is the `key`, the group the `task_type` (11 of them, `background_change`
//!   to `tone_transfer`), the language the `instruction_language` as
//!   published, the image the `input_image`'s bytes, held in memory
//!   ([`ImageRef::Bytes`]), and [`Case::intersection`] the
//!   `Intersection_exist` flag. The benchmark's EN score is the mean over the
//!   `en` cases (`--language en`); it also reports the intersection subset
//!   ([`intersection_subset`]).
//!
//! Every image path must exist when the suite is loaded; URLs are not
//! fetched. [`select`] then narrows a suite by group and language, draws a
//! seeded sample stratified by group, and keeps the first N.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use url::Url;

/// Where a case's input image is.
#[derive(Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A local file (already resolved against the suite's folder).
    Path(PathBuf),
    /// An `http` or `https` URL, fetched by whoever runs the case.
    Url(Url),
    /// The image file's bytes, in memory: a benchmark that stores its images
    /// inside its data files (GEdit-Bench's parquet). Cloning shares them.
    Bytes(Arc<[u8]>),
}

impl fmt::Debug for ImageRef {
    /// Like a derived `Debug`, but [`ImageRef::Bytes`] shows its length, not
    /// every byte.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Path(path) => f.debug_tuple("Path").field(path).finish(),
            ImageRef::Url(url) => f.debug_tuple("Url").field(&url.as_str()).finish(),
            ImageRef::Bytes(bytes) => write!(f, "Bytes(<{} bytes>)", bytes.len()),
        }
    }
}

impl ImageRef {
    /// Reads a manifest's `image` string: an `http`/`https` URL is a
    /// [`ImageRef::Url`], a `file:` URL the path it names, anything else a
    /// path, a relative one joined onto `base` (the manifest's folder).
    pub fn parse(raw: &str, base: &Path) -> ImageRef {
        if let Ok(url) = Url::parse(raw) {
            match url.scheme() {
                "http" | "https" => return ImageRef::Url(url),
                "file" => {
                    if let Ok(path) = url.to_file_path() {
                        return ImageRef::Path(path);
                    }
                }
                _ => {}
            }
        }
        ImageRef::Path(base.join(raw))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Path(path) => write!(f, "{}", path.display()),
            ImageRef::Url(url) => write!(f, "{url}"),
            ImageRef::Bytes(bytes) => write!(f, "<{} bytes in memory>", bytes.len()),
        }
    }
}

/// One editing case: an input image and the instruction to apply to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Unique within its suite.
    pub id: String,
    /// The input image.
    pub image: ImageRef,
    /// The editing instruction.
    pub instruction: String,
    /// The case's group (a benchmark's edit type or category), if any.
    pub group: Option<String>,
    /// The instruction's language (`en`, `zh`, ...), if known.
    pub language: Option<String>,
    /// Whether the case is in the benchmark's intersection subset, which it
    /// reports beside the full set (GEdit-Bench's `Intersection_exist`);
    /// `None` where the suite has no such subset.
    pub intersection: Option<bool>,
}

/// Which layout a suite was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SuiteKind {
    /// A JSONL manifest.
    Manifest,
    /// ImgEdit-Bench's `basic_edit.json` and its images.
    ImgEdit,
    /// RISEBench's JSON and its images.
    RiseBench,
    /// GEdit-Bench's parquet files, images inside.
    GEdit,
}

impl SuiteKind {
    /// A short lowercase name: `manifest`, `imgedit`, `risebench` or
    /// `gedit`.
    pub fn as_str(self) -> &'static str {
        match self {
            SuiteKind::Manifest => "manifest",
            SuiteKind::ImgEdit => "imgedit",
            SuiteKind::RiseBench => "risebench",
            SuiteKind::GEdit => "gedit",
        }
    }
}

impl fmt::Display for SuiteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A loaded suite.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    /// A stable identifier: the manifest's file name (`smoke.jsonl`) or the
    /// benchmark folder's name.
    pub name: String,
    /// The layout it was read from.
    pub kind: SuiteKind,
    /// The cases, in the order the source lists them.
    pub cases: Vec<Case>,
}

/// Why a suite could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// The path names nothing.
    #[error("suite {} does not exist", .0.display())]
    NotFound(PathBuf),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A manifest line is not a valid case.
    #[error("{}, line {line}{}: {reason}", path.display(), field_part(.field))]
    Line {
        /// The manifest.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field at fault, if one is.
        field: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// Two manifest lines share an id.
    #[error("{}, line {line}, field `id`: duplicate id {id:?} (first on line {first_line})", path.display())]
    DuplicateId {
        /// The manifest.
        path: PathBuf,
        /// The repeated id.
        id: String,
        /// The line repeating it (1-based).
        line: usize,
        /// The line that used it first.
        first_line: usize,
    },
    /// A benchmark's JSON file is not valid JSON or not the expected shape.
    #[error("{}: {reason}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An entry of a benchmark's data file is not a valid case.
    #[error("{}, entry {entry}{}: {reason}", path.display(), field_part(.field))]
    Entry {
        /// The JSON or parquet file.
        path: PathBuf,
        /// The entry: its key (ImgEdit), its position and index (RISEBench)
        /// or its row and key (GEdit-Bench).
        entry: String,
        /// The field at fault, if one is.
        field: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A parquet file cannot be read.
    #[error("{}: {reason}", path.display())]
    Parquet {
        /// The parquet file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A parquet file lacks a column the benchmark needs, or holds it in
    /// another type.
    #[error("{}, column `{column}`: {reason}", path.display())]
    Column {
        /// The parquet file.
        path: PathBuf,
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// A case's image file does not exist.
    #[error("case {case:?}: image file not found (looked for {})", join_paths(.looked_for))]
    MissingImage {
        /// The case's id.
        case: String,
        /// Every path tried, in order.
        looked_for: Vec<PathBuf>,
    },
    /// A folder matches no known benchmark layout.
    #[error("{} is not a suite folder: looked for {}", path.display(), .looked_for.join(", "))]
    UnknownLayout {
        /// The folder.
        path: PathBuf,
        /// The files whose presence would have identified a layout.
        looked_for: Vec<String>,
    },
    /// The suite holds no cases.
    #[error("suite {} has no cases", .0.display())]
    Empty(PathBuf),
}

fn field_part(field: &Option<String>) -> String {
    match field {
        Some(field) => format!(", field `{field}`"),
        None => String::new(),
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which cases of a suite to run. The default keeps them all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Keep only the cases of this group (exact match).
    pub group: Option<String>,
    /// Keep only the cases in this language (exact match).
    pub language: Option<String>,
    /// Keep the first N cases (after sampling).
    pub limit: Option<usize>,
    /// Draw `n` cases with this seed, stratified by group (cases without a
    /// group form one stratum).
    pub sample: Option<(usize, u64)>,
}

/// Applies `filter` to `cases`: the group and language filters first, then
/// the stratified sample, then the limit.
pub fn select(cases: &[Case], filter: &Filter) -> Vec<Case> {
    let kept: Vec<Case> = cases
        .iter()
        .filter(|c| match &filter.group {
            Some(group) => c.group.as_deref() == Some(group.as_str()),
            None => true,
        })
        .filter(|c| match &filter.language {
            Some(language) => c.language.as_deref() == Some(language.as_str()),
            None => true,
        })
        .cloned()
        .collect();
    let mut chosen = match filter.sample {
        Some((n, seed)) => crate::stats::stratified_sample(
            &kept,
            |c: &Case| c.group.clone().unwrap_or_default(),
            n,
            seed,
        ),
        None => kept,
    };
    if let Some(limit) = filter.limit {
        chosen.truncate(limit);
    }
    chosen
}

/// The cases in the benchmark's intersection subset ([`Case::intersection`]
/// is `Some(true)`), in order: the subset GEdit-Bench reports beside the
/// full set. Empty for a suite without one.
pub fn intersection_subset(cases: &[Case]) -> Vec<Case> {
    cases
        .iter()
        .filter(|c| c.intersection == Some(true))
        .cloned()
        .collect()
}

/// The file names that identify an ImgEdit-Bench folder, in order of
/// preference.
const IMGEDIT_FILES: &[&str] = &["basic_edit.json", "singleturn.json"];
/// Where ImgEdit-Bench's images may be, relative to its folder.
const IMGEDIT_IMAGE_ROOTS: &[&str] = &["", "singleturn", "Benchmark/singleturn", "images"];
/// The file names that identify a RISEBench folder, in order of preference:
/// the full benchmark (Hugging Face `PhoenixZ/RISEBench`), then the subset
/// in the authors' repository.
const RISEBENCH_FILES: &[&str] = &["datav2_total_w_subtask.json", "data_total.json"];
/// Where GEdit-Bench's parquet files may be, relative to its folder, in
/// order: the folder itself, `data` (the dataset repository's layout) and
/// `default/train` (the Hub's parquet conversion). The first that holds any
/// is read.
const GEDIT_FOLDERS: &[&str] = &["", "data", "default/train"];

/// Loads the suite at `path`: a JSONL manifest if it is a file, otherwise a
/// benchmark folder whose layout is detected (see the module's docs).
pub fn load(path: &Path) -> Result<Suite, SuiteError> {
    let meta = std::fs::metadata(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            SuiteError::NotFound(path.to_path_buf())
        } else {
            SuiteError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let suite = if meta.is_dir() {
        load_folder(path)?
    } else {
        load_manifest(path)?
    };
    if suite.cases.is_empty() {
        return Err(SuiteError::Empty(path.to_path_buf()));
    }
    Ok(suite)
}

fn load_folder(dir: &Path) -> Result<Suite, SuiteError> {
    let name = folder_name(dir);
    for file in IMGEDIT_FILES {
        let json = dir.join(file);
        if json.is_file() {
            return Ok(Suite {
                name,
                kind: SuiteKind::ImgEdit,
                cases: load_imgedit(dir, &json)?,
            });
        }
    }
    for file in RISEBENCH_FILES {
        for json in [dir.join(file), dir.join("data").join(file)] {
            if json.is_file() {
                return Ok(Suite {
                    name,
                    kind: SuiteKind::RiseBench,
                    cases: load_risebench(dir, &json)?,
                });
            }
        }
    }
    let files = gedit::parquet_files(dir)?;
    if !files.is_empty() {
        return Ok(Suite {
            name,
            kind: SuiteKind::GEdit,
            cases: gedit::load(&files)?,
        });
    }
    let mut looked_for: Vec<String> = IMGEDIT_FILES
        .iter()
        .map(|f| format!("{f} (ImgEdit-Bench)"))
        .collect();
    for file in RISEBENCH_FILES {
        looked_for.push(format!("{file} or data/{file} (RISEBench)"));
    }
    looked_for
        .push("*.parquet, data/*.parquet or default/train/*.parquet (GEdit-Bench)".to_owned());
    Err(SuiteError::UnknownLayout {
        path: dir.to_path_buf(),
        looked_for,
    })
}

/// The folder's own name, even for `.` or a path ending in `..`.
fn folder_name(dir: &Path) -> String {
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| canonical.display().to_string())
}

fn read_text(path: &Path) -> Result<String, SuiteError> {
    std::fs::read_to_string(path).map_err(|source| SuiteError::Io {
        path: path.to_path_buf(),
        source,
    })
}

const MANIFEST_KEYS: &[&str] = &["id", "image", "instruction", "group", "language"];

fn load_manifest(path: &Path) -> Result<Suite, SuiteError> {
    let text = read_text(path)?;
    let base = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());

    let mut cases = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = if line == 1 {
            raw.trim_start_matches('\u{feff}')
        } else {
            raw
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let err = |field: Option<&str>, reason: String| SuiteError::Line {
            path: path.to_path_buf(),
            line,
            field: field.map(str::to_owned),
            reason,
        };
        let value: Value =
            serde_json::from_str(trimmed).map_err(|e| err(None, format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(err(
                None,
                format!("expected a JSON object, found {}", kind_of(&value)),
            ));
        };
        if let Some(key) = obj.keys().find(|k| !MANIFEST_KEYS.contains(&k.as_str())) {
            return Err(err(
                Some(key),
                format!("unknown key (expected {})", MANIFEST_KEYS.join(", ")),
            ));
        }
        let field = |name: &str| required_str(&obj, name).map_err(|r| err(Some(name), r));
        let id = field("id")?;
        let image = field("image")?;
        let instruction = field("instruction")?;
        let opt = |name: &str| optional_str(&obj, name).map_err(|r| err(Some(name), r));
        let group = opt("group")?;
        let language = opt("language")?;

        if let Some(&first) = first_line.get(&id) {
            return Err(SuiteError::DuplicateId {
                path: path.to_path_buf(),
                id,
                line,
                first_line: first,
            });
        }
        first_line.insert(id.clone(), line);

        let image = ImageRef::parse(&image, &base);
        if let ImageRef::Path(p) = &image {
            if !p.is_file() {
                return Err(SuiteError::MissingImage {
                    case: id,
                    looked_for: vec![p.clone()],
                });
            }
        }
        cases.push(Case {
            id,
            image,
            instruction,
            group,
            language,
            intersection: None,
        });
    }
    Ok(Suite {
        name,
        kind: SuiteKind::Manifest,
        cases,
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A required, non-blank string field.
fn required_str(obj: &Map<String, Value>, name: &str) -> Result<String, String> {
    match obj.get(name) {
        None => Err("missing".to_owned()),
        Some(Value::String(s)) if s.trim().is_empty() => Err("must not be empty".to_owned()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("expected a string, found {}", kind_of(other))),
    }
}

/// An optional string field: absent or `null` is `None`; present, it must be
/// a non-blank string.
fn optional_str(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => required_str(obj, name).map(Some),
    }
}

/// A JSON object's entries in file order, duplicate keys included (a map
/// would keep only one of them).
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// The first of `roots` under which `rel` is a file, or every path tried.
fn find_image(roots: &[PathBuf], rel: &str) -> Result<PathBuf, Vec<PathBuf>> {
    let tried: Vec<PathBuf> = roots.iter().map(|r| r.join(rel)).collect();
    match tried.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(tried),
    }
}

fn load_imgedit(dir: &Path, json: &Path) -> Result<Vec<Case>, SuiteError> {
    let text = read_text(json)?;
    let Entries(entries) = serde_json::from_str(&text).map_err(|e| SuiteError::Json {
        path: json.to_path_buf(),
        reason: format!("expected an object mapping keys to edits: {e}"),
    })?;
    let roots: Vec<PathBuf> = IMGEDIT_IMAGE_ROOTS
        .iter()
        .map(|r| {
            if r.is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(r)
            }
        })
        .collect();

    let mut seen = HashMap::new();
    let mut cases = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let err = |field: Option<&str>, reason: String| SuiteError::Entry {
            path: json.to_path_buf(),
            entry: format!("{key:?}"),
            field: field.map(str::to_owned),
            reason,
        };
        if key.trim().is_empty() {
            return Err(err(None, "empty key".to_owned()));
        }
        if seen.insert(key.clone(), ()).is_some() {
            return Err(err(None, "duplicate key".to_owned()));
        }
        let Value::Object(obj) = &value else {
            return Err(err(
                None,
                format!("expected an object, found {}", kind_of(&value)),
            ));
        };
        let field = |name: &str| required_str(obj, name).map_err(|r| err(Some(name), r));
        let image = field("id")?;
        let instruction = field("prompt")?;
        let edit_type = field("edit_type")?;
        let image = find_image(&roots, &image).map_err(|looked_for| SuiteError::MissingImage {
            case: key.clone(),
            looked_for,
        })?;
        cases.push(Case {
            id: key,
            image: ImageRef::Path(image),
            instruction,
            group: Some(edit_type),
            language: Some("en".to_owned()),
            intersection: None,
        });
    }
    Ok(cases)
}

fn load_risebench(dir: &Path, json: &Path) -> Result<Vec<Case>, SuiteError> {
    let text = read_text(json)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| SuiteError::Json {
        path: json.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })?;
    let Value::Array(items) = value else {
        return Err(SuiteError::Json {
            path: json.to_path_buf(),
            reason: format!("expected an array of cases, found {}", kind_of(&value)),
        });
    };
    let json_dir = json.parent().unwrap_or(dir);
    let mut roots: Vec<PathBuf> = Vec::new();
    for root in [
        json_dir.join("data"),
        json_dir.to_path_buf(),
        dir.join("data"),
        dir.to_path_buf(),
    ] {
        if !roots.contains(&root) {
            roots.push(root);
        }
    }

    let mut first: HashMap<String, usize> = HashMap::new();
    let mut cases = Vec::with_capacity(items.len());
    for (position, item) in items.iter().enumerate() {
        let entry = format!("#{position}");
        let err = |entry: &str, field: Option<&str>, reason: String| SuiteError::Entry {
            path: json.to_path_buf(),
            entry: entry.to_owned(),
            field: field.map(str::to_owned),
            reason,
        };
        let Value::Object(obj) = item else {
            return Err(err(
                &entry,
                None,
                format!("expected an object, found {}", kind_of(item)),
            ));
        };
        let id = match obj.get("index") {
            Some(Value::Number(n)) => n.to_string(),
            _ => required_str(obj, "index").map_err(|r| err(&entry, Some("index"), r))?,
        };
        let entry = format!("#{position} ({id:?})");
        if let Some(&earlier) = first.get(&id) {
            return Err(err(
                &entry,
                Some("index"),
                format!("duplicate index (first at #{earlier})"),
            ));
        }
        first.insert(id.clone(), position);
        let field = |name: &str| required_str(obj, name).map_err(|r| err(&entry, Some(name), r));
        let instruction = field("instruction")?;
        let category = field("category")?;
        let image = match obj.get("image") {
            // RISEBench++ lists images; a single one is still a plain case.
            Some(Value::Array(list)) if list.len() == 1 => match &list[0] {
                Value::String(s) if !s.trim().is_empty() => s.clone(),
                other => {
                    return Err(err(
                        &entry,
                        Some("image"),
                        format!("expected a path, found {}", kind_of(other)),
                    ))
                }
            },
            Some(Value::Array(list)) => {
                return Err(err(
                    &entry,
                    Some("image"),
                    format!(
                        "{} images: only single-image cases are supported",
                        list.len()
                    ),
                ))
            }
            _ => field("image")?,
        };
        let image = find_image(&roots, &image).map_err(|looked_for| SuiteError::MissingImage {
            case: id.clone(),
            looked_for,
        })?;
        cases.push(Case {
            id,
            image: ImageRef::Path(image),
            instruction,
            group: Some(category),
            language: Some("en".to_owned()),
            intersection: None,
        });
    }
    Ok(cases)
}

/// GEdit-Bench: its parquet files, one case a row.
///
/// The image is the row's `input_image`, not its `input_image_raw`, because
/// the benchmark's scores are computed against `input_image`: the authors'
/// scoring script hands the judge that image (saved as `<key>_SRCIMG.png`)
/// beside the edit resized to its size, so with it the judge here compares
/// the edit with the source the benchmark's judge sees. (The authors'
/// generation example feeds the editor `input_image_raw` shrunk to about
/// 512×512 pixels' worth; evalscope feeds it `input_image`, as here.)
/// `input_image_raw`, the full-size original, is never decoded: rows are
/// read with only the columns a case needs, one image each in memory.
mod gedit {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use parquet::schema::types::Type;

    use super::{Case, ImageRef, SuiteError, GEDIT_FOLDERS};

    /// The columns every file must have.
    const REQUIRED: &[&str] = &[
        "key",
        "task_type",
        "instruction",
        "instruction_language",
        "input_image",
    ];
    /// The intersection-subset flag: read where present.
    const INTERSECTION: &str = "Intersection_exist";
    const IMAGE: &str = "input_image";

    /// The `*.parquet` files of the first of [`GEDIT_FOLDERS`] that holds
    /// any, sorted by name (`train-00000-of-00002` before `train-00001-…`);
    /// empty when none does.
    pub(super) fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, SuiteError> {
        for sub in GEDIT_FOLDERS {
            let folder = if sub.is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(sub)
            };
            if !folder.is_dir() {
                continue;
            }
            let io = |source| SuiteError::Io {
                path: folder.clone(),
                source,
            };
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&folder).map_err(io)? {
                let path = entry.map_err(io)?.path();
                if path.extension().is_some_and(|e| e == "parquet") && path.is_file() {
                    files.push(path);
                }
            }
            if !files.is_empty() {
                files.sort();
                return Ok(files);
            }
        }
        Ok(Vec::new())
    }

    /// One row, checked.
    struct Row {
        /// The file and the row's position in it, for messages.
        file: PathBuf,
        entry: String,
        key: String,
        task_type: String,
        instruction: String,
        language: String,
        image: ImageRef,
        intersection: Option<bool>,
    }

    /// Reads every row of `files`, in order. The case id is the `key`; should
    /// a key be used in more than one language (one edit, its instruction in
    /// English and in Chinese), every id is `<language>/<key>` instead, as
    /// the benchmark's own output folders (`fullset/<task_type>/<language>/
    /// <key>.png`) tell them apart.
    pub(super) fn load(files: &[PathBuf]) -> Result<Vec<Case>, SuiteError> {
        let mut rows = Vec::new();
        let mut images: HashMap<String, Arc<[u8]>> = HashMap::new();
        for file in files {
            read_file(file, &mut rows, &mut images)?;
        }

        let mut first: HashMap<(&str, &str), &Row> = HashMap::new();
        let mut language_of: HashMap<&str, &str> = HashMap::new();
        let mut shared_keys = false;
        for row in &rows {
            if let Some(earlier) = first.insert((&row.key, &row.language), row) {
                return Err(SuiteError::Entry {
                    path: row.file.clone(),
                    entry: row.entry.clone(),
                    field: Some("key".to_owned()),
                    reason: format!(
                        "duplicate key in language {:?} (first in {}, entry {})",
                        row.language,
                        earlier.file.display(),
                        earlier.entry
                    ),
                });
            }
            let language = *language_of.entry(&row.key).or_insert(&row.language);
            shared_keys |= language != row.language;
        }

        Ok(rows
            .into_iter()
            .map(|row| Case {
                id: if shared_keys {
                    format!("{}/{}", row.language, row.key)
                } else {
                    row.key
                },
                image: row.image,
                instruction: row.instruction,
                group: Some(row.task_type),
                language: Some(row.language),
                intersection: row.intersection,
            })
            .collect())
    }

    fn parquet_error(path: &Path, reason: impl std::fmt::Display) -> SuiteError {
        let reason = reason.to_string();
        let hint = if reason.contains("Disabled feature") {
            " (this build reads uncompressed and snappy-compressed parquet, as the Hub writes it)"
        } else {
            ""
        };
        SuiteError::Parquet {
            path: path.to_path_buf(),
            reason: format!("{reason}{hint}"),
        }
    }

    /// Checks `file`'s columns, then reads its rows onto `rows`. `images`
    /// holds each key's image, so that a key's rows in both languages share
    /// one copy of identical bytes.
    fn read_file(
        file: &Path,
        rows: &mut Vec<Row>,
        images: &mut HashMap<String, Arc<[u8]>>,
    ) -> Result<(), SuiteError> {
        let reader = SerializedFileReader::try_from(file).map_err(|e| parquet_error(file, e))?;
        let schema = reader.metadata().file_metadata().schema();
        let column = |column: &str, reason: String| SuiteError::Column {
            path: file.to_path_buf(),
            column: column.to_owned(),
            reason,
        };
        let fields = schema.get_fields();
        let find = |name: &str| fields.iter().find(|f| f.name() == name);
        for &name in REQUIRED {
            let Some(field) = find(name) else {
                return Err(column(
                    name,
                    format!(
                        "missing (a GEdit-Bench file has the columns {})",
                        REQUIRED.join(", ")
                    ),
                ));
            };
            let is_image =
                field.is_group() && field.get_fields().iter().any(|f| f.name() == "bytes");
            if name == IMAGE && !is_image {
                return Err(column(
                    name,
                    "expected an image: a struct of `bytes` and `path`".to_owned(),
                ));
            }
            if name != IMAGE && field.is_group() {
                return Err(column(name, "expected a string, found a struct".to_owned()));
            }
        }
        if find(INTERSECTION).is_some_and(|f| f.is_group()) {
            return Err(column(
                INTERSECTION,
                "expected a boolean, found a struct".to_owned(),
            ));
        }

        // Only the columns a case needs: `input_image_raw` stays on disk.
        let wanted: Vec<_> = fields
            .iter()
            .filter(|f| REQUIRED.contains(&f.name()) || f.name() == INTERSECTION)
            .cloned()
            .collect();
        let projection = Type::group_type_builder(schema.name())
            .with_fields(wanted)
            .build()
            .map_err(|e| parquet_error(file, e))?;
        let iter = reader
            .get_row_iter(Some(projection))
            .map_err(|e| parquet_error(file, e))?;
        let folder = file.parent().unwrap_or(Path::new("."));
        for (position, row) in iter.enumerate() {
            let row = row.map_err(|e| parquet_error(file, format_args!("row #{position}: {e}")))?;
            let mut columns: HashMap<String, Field> = row.into_columns().into_iter().collect();
            let mut take = |name: &str| columns.remove(name).unwrap_or(Field::Null);
            let mut entry = format!("row #{position}");
            let err = |entry: &str, field: &str, reason: String| SuiteError::Entry {
                path: file.to_path_buf(),
                entry: entry.to_owned(),
                field: Some(field.to_owned()),
                reason,
            };
            let key = required_string(take("key")).map_err(|r| err(&entry, "key", r))?;
            entry = format!("row #{position} ({key:?})");
            let mut string =
                |name: &str| required_string(take(name)).map_err(|r| err(&entry, name, r));
            let task_type = string("task_type")?;
            let instruction = string("instruction")?;
            let language = string("instruction_language")?;
            let intersection = match take(INTERSECTION) {
                Field::Null => None,
                Field::Bool(flag) => Some(flag),
                other => {
                    return Err(err(
                        &entry,
                        INTERSECTION,
                        format!("expected a boolean, found {}", kind(&other)),
                    ))
                }
            };
            let image = match image(take(IMAGE), folder) {
                Ok(Image::Bytes(bytes)) => {
                    if image::guess_format(&bytes).is_err() {
                        return Err(err(
                            &entry,
                            IMAGE,
                            "its bytes are not an image file (unknown format)".to_owned(),
                        ));
                    }
                    let bytes = match images.get(&key) {
                        Some(earlier) if earlier[..] == bytes[..] => earlier.clone(),
                        _ => {
                            let bytes: Arc<[u8]> = bytes.into();
                            images.insert(key.clone(), bytes.clone());
                            bytes
                        }
                    };
                    ImageRef::Bytes(bytes)
                }
                Ok(Image::Path(path)) if path.is_file() => ImageRef::Path(path),
                Ok(Image::Path(path)) => {
                    return Err(SuiteError::MissingImage {
                        case: key,
                        looked_for: vec![path],
                    })
                }
                Err(reason) => return Err(err(&entry, IMAGE, reason)),
            };
            rows.push(Row {
                file: file.to_path_buf(),
                entry,
                key,
                task_type,
                instruction,
                language,
                image,
                intersection,
            });
        }
        Ok(())
    }

    /// A cell's kind, for messages (its value may be a whole image).
    fn kind(field: &Field) -> &'static str {
        match field {
            Field::Null => "null",
            Field::Bool(_) => "a boolean",
            Field::Str(_) => "a string",
            Field::Bytes(_) => "binary",
            Field::Group(_) => "a struct",
            Field::ListInternal(_) => "a list",
            Field::MapInternal(_) => "a map",
            _ => "a number or date",
        }
    }

    /// A string cell, `None` if null. Binary cells without the string
    /// annotation are read as UTF-8.
    fn string(field: Field) -> Result<Option<String>, String> {
        match field {
            Field::Null => Ok(None),
            Field::Str(s) => Ok(Some(s)),
            Field::Bytes(bytes) => String::from_utf8(bytes.data().to_vec())
                .map(Some)
                .map_err(|_| "expected a string, found binary that is not UTF-8".to_owned()),
            other => Err(format!("expected a string, found {}", kind(&other))),
        }
    }

    /// A required, non-blank string cell.
    fn required_string(field: Field) -> Result<String, String> {
        match string(field)? {
            None => Err("missing (null)".to_owned()),
            Some(s) if s.trim().is_empty() => Err("must not be empty".to_owned()),
            Some(s) => Ok(s),
        }
    }

    enum Image {
        Bytes(Vec<u8>),
        Path(PathBuf),
    }

    /// A Hugging Face `Image` cell, `{bytes, path}`: its bytes, or failing
    /// them (an image left as a file beside the data) its path, taken from
    /// the parquet file's folder.
    fn image(field: Field, folder: &Path) -> Result<Image, String> {
        let row = match field {
            Field::Group(row) => row,
            Field::Null => return Err("missing (null)".to_owned()),
            other => return Err(format!("expected an image struct, found {}", kind(&other))),
        };
        let mut bytes = None;
        let mut path = None;
        for (name, value) in row.into_columns() {
            match (name.as_str(), value) {
                ("bytes", Field::Bytes(b)) if !b.data().is_empty() => {
                    bytes = Some(b.data().to_vec())
                }
                ("path", value) => path = string(value).unwrap_or(None),
                _ => {}
            }
        }
        match (bytes, path) {
            (Some(bytes), _) => Ok(Image::Bytes(bytes)),
            (None, Some(path)) if !path.trim().is_empty() => Ok(Image::Path(folder.join(path))),
            _ => Err("has neither bytes nor a path".to_owned()),
        }
    }
}
