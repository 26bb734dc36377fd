//! The `export` command: jobs' trajectories as training data (contract:
//! docs/eval.md, "Exporting trajectories").
//!
//! `--format thinkedit` writes one JSON line per job ([`ThinkEditLine`]):
//! the source, each turn's instruction, image and critique, the judge's
//! scores where a run judged the turn, and the selected turn — what the
//! paper fine-tuned its thinker on for FLUX.1 Kontext, here for whatever
//! editor the jobs used. The jobs come from a run folder (its
//! `cases.jsonl`, with the server of its `run.json`) and/or by id, and are
//! read through the service's public API. Building a line from the job JSON
//! ([`line`]) is pure; [`run`] fetches and writes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine as _;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::ServiceApi;
use crate::report::{CaseRecord, JudgeScores};

/// The `format` of every line this version writes.
pub const THINKEDIT_FORMAT: &str = "thinkedit/1";

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON line per job: source, turns, critiques, judge scores.
    Thinkedit,
}

/// `editthinker-eval export`'s arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("jobs_from").required(true).multiple(true).args(["run", "jobs"])))]
pub struct ExportArgs {
    /// The output format.
    #[arg(long, value_enum)]
    pub format: Format,
    /// A run folder: every case's job, with the judge's scores.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Job ids to export too, comma-separated (no judge scores).
    #[arg(long, value_delimiter = ',')]
    pub jobs: Vec<String>,
    /// The service's base URL (default: the run's, from its run.json).
    #[arg(long)]
    pub server: Option<String>,
    /// The service's API key, sent as a bearer token.
    #[arg(long, env = "EDITTHINKER_EVAL_KEY")]
    pub key: Option<String>,
    /// The JSONL file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// The folder the images are written to (default: FILE.images next to
    /// the output).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Embed the images as data URLs instead of writing files.
    #[arg(long, conflicts_with = "images")]
    pub inline: bool,
    /// Jobs fetched at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

/// One line of a `thinkedit` export: one job's trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThinkEditLine {
    /// Always [`THINKEDIT_FORMAT`].
    pub format: String,
    /// The service's job.
    pub job_id: String,
    /// The run's case, when exported from a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    /// The case's group, when exported from a run and it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The job's status when exported (`succeeded`, `failed`, …).
    pub status: String,
    /// The source image: a path relative to the JSONL's folder (absolute
    /// when the images folder is outside it), or a data URL (`--inline`).
    pub source: String,
    /// The user's instruction.
    pub instruction: String,
    /// The editor the job used.
    pub editor: String,
    /// The turns, in order.
    pub turns: Vec<ThinkEditTurn>,
    /// The turn the service selected (`null` when it selected none).
    pub selected_turn: Option<u32>,
    /// Why the loop stopped, once finished.
    pub stop_reason: Option<String>,
}

/// One turn of a trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThinkEditTurn {
    /// Turn number, from 1.
    pub index: u32,
    /// The instruction the editor received.
    pub instruction: String,
    /// The edited image, referenced as `source` is.
    pub image: String,
    /// The thinker's critique of the image (`null` when none was made).
    pub critique: Option<ThinkEditCritique>,
    /// The judge's scores, when the run judged the turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeScores>,
}

/// The thinker's critique of a turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThinkEditCritique {
    /// Instruction following, 0–10.
    pub semantic: Option<f64>,
    /// Visual quality, 0–10.
    pub quality: Option<f64>,
    /// `sqrt(semantic × quality)`.
    pub overall: Option<f64>,
    /// The thinker's reasoning.
    pub reasoning: Option<String>,
    /// The instruction it proposed next.
    pub refined_instruction: Option<String>,
    /// Whether it ended the loop.
    pub satisfied: bool,
}

impl ThinkEditCritique {
    fn of(critique: &Value) -> Option<Self> {
        let text = |key: &str| critique[key].as_str().map(str::to_string);
        critique.is_object().then(|| Self {
            semantic: critique["semantic"].as_f64(),
            quality: critique["quality"].as_f64(),
            overall: critique["overall"].as_f64(),
            reasoning: text("reasoning"),
            refined_instruction: text("refined_instruction"),
            satisfied: critique["satisfied"].as_bool().unwrap_or(false),
        })
    }
}

/// A job's line from its JSON (`GET /v1/jobs/{id}`), its run's record
/// (for the judge's scores) and where its images went: `source`, and
/// `turn_images` by turn number (a turn missing there gets `""`).
pub fn line(
    job: &Value,
    case: Option<&CaseRecord>,
    source: String,
    turn_images: &BTreeMap<u32, String>,
) -> ThinkEditLine {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let turns = job["turns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|turn| {
            let index = turn["index"].as_u64().unwrap_or(0) as u32;
            let judged = case.and_then(|c| c.turns.iter().find(|t| t.index == index));
            ThinkEditTurn {
                index,
                instruction: text(&turn["instruction"]),
                image: turn_images.get(&index).cloned().unwrap_or_default(),
                critique: ThinkEditCritique::of(&turn["critique"]),
                judge: judged.map(|t| t.judge),
            }
        })
        .collect();
    ThinkEditLine {
        format: THINKEDIT_FORMAT.to_string(),
        job_id: text(&job["id"]),
        case_id: case.map(|c| c.id.clone()),
        group: case.and_then(|c| c.group.clone()),
        status: text(&job["status"]),
        source,
        instruction: text(&job["instruction"]),
        editor: text(&job["editor"]),
        turns,
        selected_turn: job["result"]["turn"].as_u64().map(|t| t as u32),
        stop_reason: job["stop_reason"].as_str().map(str::to_string),
    }
}

/// The images folder when `--images` is not given: `FILE.images` next to
/// `FILE.jsonl`.
pub fn default_images_dir(out: &Path) -> PathBuf {
    out.with_extension("images")
}

/// The file extension and MIME type of an image, told by its bytes
/// (`bin` and `application/octet-stream` when unknown).
pub fn image_kind(bytes: &[u8]) -> (&'static str, &'static str) {
    match image::guess_format(bytes) {
        Ok(format) => (
            format.extensions_str().first().copied().unwrap_or("bin"),
            format.to_mime_type(),
        ),
        Err(_) => ("bin", "application/octet-stream"),
    }
}

/// Whether a job id is safe in a URL path and a file name.
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Where the images go.
enum Sink {
    /// Files under `dir`, referenced as `prefix/{job}/{name}.{ext}`.
    Files { dir: PathBuf, prefix: String },
    /// Data URLs in the line.
    Inline,
}

impl Sink {
    fn new(args: &ExportArgs) -> anyhow::Result<Self> {
        if args.inline {
            return Ok(Self::Inline);
        }
        let dir = args
            .images
            .clone()
            .unwrap_or_else(|| default_images_dir(&args.out));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let base = match args.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
        .canonicalize()?;
        let shown = dir.strip_prefix(&base).unwrap_or(&dir);
        let prefix = shown
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        // An absolute path's root component renders as "/", so the join
        // starts with "//"; keep a single slash.
        let prefix = prefix.strip_prefix('/').unwrap_or(&prefix).to_string();
        Ok(Self::Files { dir, prefix })
    }

    /// Keeps `bytes` as `{job}/{name}.{ext}`; returns its reference.
    fn keep(&self, job: &str, name: &str, bytes: &[u8]) -> anyhow::Result<String> {
        let (ext, mime) = image_kind(bytes);
        match self {
            Self::Inline => Ok(format!(
                "data:{mime};base64,{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )),
            Self::Files { dir, prefix } => {
                let folder = dir.join(job);
                std::fs::create_dir_all(&folder)?;
                let file = format!("{name}.{ext}");
                let path = folder.join(&file);
                std::fs::write(&path, bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
                Ok(if prefix.is_empty() {
                    format!("{job}/{file}")
                } else {
                    format!("{prefix}/{job}/{file}")
                })
            }
        }
    }
}

/// One job to export, with its run's record when it has one.
struct Wanted {
    job_id: String,
    case: Option<CaseRecord>,
}

async fn export_job(
    api: &ServiceApi,
    sink: &Sink,
    wanted: &Wanted,
) -> anyhow::Result<ThinkEditLine> {
    let id = &wanted.job_id;
    let job: Value = api.get(&format!("/v1/jobs/{id}")).await?.json().await?;
    let source = api.bytes(&format!("/v1/jobs/{id}/source")).await?;
    let source = sink.keep(id, "source", &source)?;
    let mut turn_images = BTreeMap::new();
    for turn in job["turns"].as_array().into_iter().flatten() {
        let index = turn["index"].as_u64().unwrap_or(0) as u32;
        let url = turn["image_url"]
            .as_str()
            .with_context(|| format!("turn {index} has no image_url"))?;
        let bytes = api.bytes(url).await?;
        turn_images.insert(index, sink.keep(id, &format!("turn-{index}"), &bytes)?);
    }
    Ok(line(&job, wanted.case.as_ref(), source, &turn_images))
}

/// The jobs to export: the run's cases, then `--jobs` not among them.
fn wanted(args: &ExportArgs) -> anyhow::Result<Vec<Wanted>> {
    let mut list: Vec<Wanted> = match &args.run {
        Some(run) => crate::compare::load_cases(run)?
            .into_iter()
            .map(|case| Wanted {
                job_id: case.job_id.clone(),
                case: Some(case),
            })
            .collect(),
        None => Vec::new(),
    };
    let mut seen: BTreeSet<String> = list.iter().map(|w| w.job_id.clone()).collect();
    for id in &args.jobs {
        let id = id.trim();
        if seen.insert(id.to_string()) {
            list.push(Wanted {
                job_id: id.to_string(),
                case: None,
            });
        }
    }
    if let Some(bad) = list.iter().find(|w| !valid_job_id(&w.job_id)) {
        bail!("{:?} is not a job id", bad.job_id);
    }
    Ok(list)
}

/// The service's URL: `--server`, else the run's (its `run.json`).
fn server(args: &ExportArgs) -> anyhow::Result<String> {
    if let Some(server) = &args.server {
        return Ok(server.trim_end_matches('/').to_string());
    }
    let Some(run) = &args.run else {
        bail!("--server is needed to export jobs without --run");
    };
    let path = run.join("run.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let parameters: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a run's parameters", path.display()))?;
    parameters["server"]
        .as_str()
        .map(|s| s.trim_end_matches('/').to_string())
        .with_context(|| format!("{} names no server; pass --server", path.display()))
}

/// Runs `export`: writes the JSONL (and the images); returns its lines. A
/// job that cannot be read is reported and left out, and the command then
/// fails after writing the others.
pub async fn run(args: &ExportArgs) -> anyhow::Result<Vec<ThinkEditLine>> {
    let Format::Thinkedit = args.format;
    let wanted = wanted(args)?;
    if wanted.is_empty() {
        bail!("no job to export");
    }
    let api = ServiceApi::new(&server(args)?, args.key.as_deref())?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let sink = Sink::new(args)?;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?,
    );
    let mut results = futures::stream::iter(&wanted)
        .map(|w| {
            let (api, sink) = (&api, &sink);
            async move { (w, export_job(api, sink, w).await) }
        })
        .buffered(args.concurrency.max(1));
    let (mut lines, mut skipped) = (Vec::new(), Vec::new());
    while let Some((w, result)) = results.next().await {
        match result {
            Ok(line) => {
                writeln!(file, "{}", serde_json::to_string(&line)?)?;
                lines.push(line);
            }
            Err(e) => {
                eprintln!("warning: job {} left out: {e:#}", w.job_id);
                skipped.push(w.job_id.clone());
            }
        }
    }
    file.flush()
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{} trajectories written to {}",
        lines.len(),
        args.out.display()
    );
    if !skipped.is_empty() {
        bail!(
            "{} of {} jobs could not be exported: {}",
            skipped.len(),
            wanted.len(),
            skipped.join(", ")
        );
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> Value {
        json!({
            "id": "j1", "status": "succeeded", "instruction": "make it blue",
            "editor": "kontext", "stop_reason": "satisfied",
            "result": {"turn": 2, "image_url": "/v1/jobs/j1/result"},
            "turns": [
                {"index": 1, "instruction": "make it blue", "image_url": "/t1",
                 "critique": {"semantic": 4.0, "quality": 9.0, "overall": 6.0,
                              "reasoning": "too pale", "refined_instruction": "deep blue",
                              "satisfied": false, "thinker_ms": 5, "error": null}},
                {"index": 2, "instruction": "deep blue", "image_url": "/t2", "critique": null}
            ]
        })
    }

    #[test]
    fn a_line_carries_turns_critiques_and_judge_scores() {
        let case: CaseRecord = serde_json::from_str(concat!(
            r#"{"id":"c1","group":"color","language":null,"job_id":"j1","status":"succeeded","#,
            r#""error":null,"selected_turn":2,"editor_calls":2,"cost":0.0,"currency":"USD","turns":["#,
            r#"{"index":1,"instruction":"make it blue","thinker":{"semantic":null,"quality":null,"#,
            r#""overall":null},"verifier":null,"judge":{"sc":3.0,"pq":8.0,"o":4.9},"editor_ms":1,"#,
            r#""thinker_ms":null}]}"#
        ))
        .unwrap();
        let judged = case.turns[0].clone();
        let images = BTreeMap::from([(1, "a/1.png".to_string()), (2, "a/2.png".to_string())]);
        let l = line(&job(), Some(&case), "a/s.png".into(), &images);
        assert_eq!(l.format, "thinkedit/1");
        assert_eq!(
            (l.job_id.as_str(), l.case_id.as_deref()),
            ("j1", Some("c1"))
        );
        assert_eq!(l.group.as_deref(), Some("color"));
        assert_eq!((l.selected_turn, l.editor.as_str()), (Some(2), "kontext"));
        assert_eq!(l.turns.len(), 2);
        let critique = l.turns[0].critique.as_ref().unwrap();
        assert_eq!(critique.refined_instruction.as_deref(), Some("deep blue"));
        assert_eq!((critique.overall, critique.satisfied), (Some(6.0), false));
        assert_eq!(l.turns[0].judge, Some(judged.judge));
        assert_eq!(l.turns[1].judge, None);
        assert_eq!(l.turns[1].critique, None);
        assert_eq!(l.turns[1].image, "a/2.png");
        // Without a run: no case, no judge, and the keys are left out.
        let bare = serde_json::to_value(line(&job(), None, "s".into(), &images)).unwrap();
        assert!(bare.get("case_id").is_none() && bare["turns"][0].get("judge").is_none());
        assert!(bare["turns"][1]["critique"].is_null());
    }

    #[test]
    fn images_are_told_by_their_bytes_and_ids_checked() {
        assert_eq!(image_kind(b"\x89PNG\r\n\x1a\n...."), ("png", "image/png"));
        assert_eq!(image_kind(b"\xff\xd8\xff\xe0...."), ("jpg", "image/jpeg"));
        assert_eq!(image_kind(b"nope"), ("bin", "application/octet-stream"));
        assert!(valid_job_id("0190b6a2-7c4e-7d1a-9b1e-1c2d3e4f5a6b"));
        assert!(!valid_job_id("../etc") && !valid_job_id("a/b") && !valid_job_id(""));
        assert_eq!(
            default_images_dir(Path::new("data/traj.jsonl")),
            Path::new("data/traj.images")
        );
    }
}
