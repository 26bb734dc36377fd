//! The `run` command: every case of a suite becomes one job of the service
//! (through its public API, so the run measures what users get), every
//! recorded turn is judged, and the run folder gets the report
//! (docs/eval.md).
//!
//! A run folder belongs to one run: `run.json` keeps its parameters, and
//! `jobs.jsonl` each case's job as soon as it is created. A rerun into the
//! same folder (after Ctrl-C or a crash) reuses those jobs, and each
//! create carries an `Idempotency-Key` derived from the suite, case, editor
//! and options, so no job is created, or paid for, twice; judgements are
//! cached in `judgements.jsonl` ([`crate::judge`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::api::ServiceApi;
use crate::judge::{Judge, JudgeConfig};
use crate::report::{CandidateRecord, CaseRecord, Scores, TurnRecord};
use crate::suite::{Case, Filter, ImageRef};

/// The command line (contract: docs/eval.md).
#[derive(Debug, Parser)]
#[command(
    name = "editthinker-eval",
    version,
    about = "Evaluate the service on a suite of edits"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a suite through the service and judge every turn.
    Run(RunArgs),
    /// Compare two runs case by case: paired differences of O (B − A).
    Compare(crate::compare::CompareArgs),
    /// Export jobs' trajectories (a run's, or any jobs') as training data.
    Export(crate::export::ExportArgs),
}

/// `editthinker-eval run`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// A JSONL manifest, or a benchmark folder (its layout detected).
    #[arg(long)]
    pub suite: PathBuf,
    /// The service's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub server: String,
    /// The run folder (created; reused by a rerun of the same run).
    #[arg(long)]
    pub out: PathBuf,
    /// `eval.toml`: the `[judge]` section (and `thinker_model`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The service's API key, sent as a bearer token.
    #[arg(long, env = "EDITTHINKER_EVAL_KEY")]
    pub key: Option<String>,
    /// The editor every job uses (default: the service's default editor).
    #[arg(long)]
    pub editor: Option<String>,
    /// Loop options of every job, as JSON (the API's `options`).
    #[arg(long)]
    pub options: Option<String>,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// The first N cases (after the other filters).
    #[arg(long)]
    pub limit: Option<usize>,
    /// N cases drawn at random, stratified by group (with `--seed`).
    #[arg(long)]
    pub sample: Option<usize>,
    /// The seed of `--sample`.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only the cases of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Only the cases in this language.
    #[arg(long)]
    pub language: Option<String>,
    /// Judge every candidate of every turn too, not only the turns.
    #[arg(long)]
    pub candidates: bool,
}

/// `eval.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// The judge model.
    pub judge: JudgeConfig,
    /// The model the service's thinker runs, when known: a judge of the
    /// same model gets a warning (it would grade its own homework).
    #[serde(default)]
    pub thinker_model: Option<String>,
}

impl EvalConfig {
    /// Reads `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use figment::providers::{Format, Toml};
        figment::Figment::new()
            .merge(Toml::file(path))
            .extract()
            .with_context(|| format!("reading {}", path.display()))
    }
}

/// The entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await.map(|_| ()),
            Command::Compare(args) => crate::compare::run(&args).map(|_| ()),
            Command::Export(args) => crate::export::run(&args).await.map(|_| ()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("editthinker-eval: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The parameters that make a run a run: a folder holds one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunParameters {
    suite: String,
    server: String,
    editor: Option<String>,
    options: Value,
    candidates: bool,
}

/// One line of `jobs.jsonl`: a case's job, written once it exists.
#[derive(Debug, Serialize, Deserialize)]
struct JobLine {
    case: String,
    job_id: String,
}

/// Runs a suite; returns the cases' records (also written to the folder).
pub async fn run(args: RunArgs) -> anyhow::Result<Vec<CaseRecord>> {
    let suite = crate::suite::load(&args.suite)?;
    let filter = Filter {
        group: args.group.clone(),
        language: args.language.clone(),
        limit: args.limit,
        sample: args.sample.map(|n| (n, args.seed)),
    };
    let cases = crate::suite::select(&suite.cases, &filter);
    if cases.is_empty() {
        bail!("no case of {} passes the filters", args.suite.display());
    }
    let options: Value = match &args.options {
        Some(text) => serde_json::from_str(text).context("--options is not JSON")?,
        None => json!({}),
    };
    if !options.is_object() {
        bail!("--options must be a JSON object");
    }
    let config = args
        .config
        .as_deref()
        .map(EvalConfig::load)
        .transpose()?
        .context("--config eval.toml with a [judge] section is needed to judge the turns")?;
    if let Some(warning) =
        crate::judge::same_model_warning(&config.judge.model, config.thinker_model.as_deref())
    {
        eprintln!("warning: {warning}");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let parameters = RunParameters {
        suite: suite.name.clone(),
        server: args.server.trim_end_matches('/').to_string(),
        editor: args.editor.clone(),
        options: options.clone(),
        candidates: args.candidates,
    };
    claim_folder(&args.out, &parameters)?;
    let judge = Judge::new(config.judge.clone(), args.out.join("judgements.jsonl"))?;
    let journal = Journal::open(&args.out.join("jobs.jsonl"))?;
    let service = ServiceApi::new(&parameters.server, args.key.as_deref())?;

    let progress = indicatif::ProgressBar::new(cases.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} cases, ETA {eta} {msg}")
            .expect("a valid template"),
    );
    let spent = Mutex::new((0.0f64, String::new()));
    let context = CaseContext {
        suite: &suite.name,
        parameters: &parameters,
        service: &service,
        judge: &judge,
        journal: &journal,
        out: &args.out,
    };
    let mut records: Vec<CaseRecord> = futures::stream::iter(cases.iter())
        .map(|case| {
            let context = &context;
            let progress = &progress;
            let spent = &spent;
            async move {
                let record = run_case(context, case).await;
                if let Ok(r) = &record {
                    let mut spent = spent.lock().expect("spent lock");
                    spent.0 += r.cost;
                    spent.1.clone_from(&r.currency);
                    progress.set_message(format!("{:.4} {} spent", spent.0, spent.1));
                }
                progress.inc(1);
                record.with_context(|| format!("case {}", case.id))
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    progress.finish_and_clear();
    // Suite order, whatever order the jobs finished in.
    let order: BTreeMap<&str, usize> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i))
        .collect();
    records.sort_by_key(|r| order.get(r.id.as_str()).copied());
    crate::report::write(&args.out, &records)?;
    eprintln!(
        "{} cases judged ({} judge requests, {} answers from the cache); report in {}",
        records.len(),
        judge.requests_made(),
        judge.cached(),
        args.out.display()
    );
    Ok(records)
}

/// Writes `run.json`, or checks that the folder's run is this one.
fn claim_folder(out: &Path, parameters: &RunParameters) -> anyhow::Result<()> {
    let path = out.join("run.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let earlier: RunParameters = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a run's parameters", path.display()))?;
            if &earlier != parameters {
                bail!(
                    "{} holds another run ({}); choose another --out",
                    out.display(),
                    serde_json::to_string(&earlier)?
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, serde_json::to_vec_pretty(parameters)?)
                .with_context(|| format!("writing {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `jobs.jsonl`: each case's job, appended as soon as it is created.
struct Journal {
    known: Mutex<BTreeMap<String, String>>,
    file: Mutex<std::fs::File>,
}

impl Journal {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let mut known = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            // A line cut by a crash is ignored: the idempotency key finds
            // its job again.
            for line in text.lines() {
                if let Ok(entry) = serde_json::from_str::<JobLine>(line) {
                    known.insert(entry.case, entry.job_id);
                }
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // Start the next line on a line of its own after a cut one.
        let cut = std::fs::read(path).is_ok_and(|b| b.last().is_some_and(|&c| c != b'\n'));
        if cut {
            writeln!(file)?;
        }
        Ok(Self {
            known: Mutex::new(known),
            file: Mutex::new(file),
        })
    }

    fn job_of(&self, case: &str) -> Option<String> {
        self.known.lock().expect("journal lock").get(case).cloned()
    }

    fn record(&self, case: &str, job_id: &str) -> anyhow::Result<()> {
        let line = serde_json::to_string(&JobLine {
            case: case.to_string(),
            job_id: job_id.to_string(),
        })?;
        let mut file = self.file.lock().expect("journal lock");
        writeln!(file, "{line}")?;
        file.flush()?;
        self.known
            .lock()
            .expect("journal lock")
            .insert(case.to_string(), job_id.to_string());
        Ok(())
    }
}

/// What every case of a run shares.
struct CaseContext<'a> {
    suite: &'a str,
    parameters: &'a RunParameters,
    service: &'a ServiceApi,
    judge: &'a Judge,
    journal: &'a Journal,
    /// The run folder (thumbnails go to its `thumbs/`).
    out: &'a Path,
}

/// The `Idempotency-Key` of a case's job: the same for the same suite,
/// case, editor and options, so a rerun finds the job it made.
pub fn idempotency_key(suite: &str, case: &str, editor: Option<&str>, options: &Value) -> String {
    let mut hash = Sha256::new();
    for part in [suite, case, editor.unwrap_or(""), &options.to_string()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("eval-{}", &hex[..48])
}

async fn run_case(context: &CaseContext<'_>, case: &Case) -> anyhow::Result<CaseRecord> {
    let source = match &case.image {
        ImageRef::Path(path) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        ImageRef::Url(url) => context.service.bytes(url.as_str()).await?,
        ImageRef::Bytes(bytes) => bytes.to_vec(),
    };
    let job_id = match context.journal.job_of(&case.id) {
        Some(id) => id,
        None => {
            let key = idempotency_key(
                context.suite,
                &case.id,
                context.parameters.editor.as_deref(),
                &context.parameters.options,
            );
            let id = context
                .service
                .create(&source, case, context.parameters, &key)
                .await?;
            context.journal.record(&case.id, &id)?;
            id
        }
    };
    let job = context.service.wait(&job_id).await?;
    let status = job["status"].as_str().unwrap_or_default().to_string();
    let usage = &job["usage"];
    let mut turns = Vec::new();
    for turn in job["turns"].as_array().into_iter().flatten() {
        let url = turn["image_url"]
            .as_str()
            .context("a turn without image_url")?;
        let edited = context.service.bytes(url).await?;
        let judgement = context
            .judge
            .judge(&source, &edited, &case.instruction)
            .await
            .with_context(|| format!("judging turn {}", turn["index"]))?;
        let index = turn["index"].as_u64().unwrap_or(0) as u32;
        save_thumb(context.out, &case.id, index, edited).await?;
        let mut candidates = Vec::new();
        if context.parameters.candidates {
            for candidate in turn["candidates"].as_array().into_iter().flatten() {
                // The chosen candidate is the turn, judged above.
                let judged = if candidate["index"] == turn["chosen"] {
                    judgement.clone()
                } else {
                    let url = candidate["image_url"].as_str().unwrap_or_default();
                    let edited = context.service.bytes(url).await?;
                    context
                        .judge
                        .judge(&source, &edited, &case.instruction)
                        .await?
                };
                candidates.push(CandidateRecord {
                    index: candidate["index"].as_u64().unwrap_or(0) as u32,
                    seed: candidate["seed"].as_i64(),
                    thinker: Scores::of_critique(&candidate["critique"]),
                    verifier: candidate["verifier"]["overall"].as_f64(),
                    judge: judged.into(),
                });
            }
        }
        turns.push(TurnRecord {
            index,
            instruction: turn["instruction"].as_str().unwrap_or_default().to_string(),
            thinker: Scores::of_critique(&turn["critique"]),
            verifier: turn["candidates"][turn["chosen"].as_u64().unwrap_or(0) as usize]["verifier"]
                ["overall"]
                .as_f64(),
            judge: judgement.into(),
            editor_ms: turn["editor_ms"].as_u64().unwrap_or(0),
            thinker_ms: turn["critique"]["thinker_ms"].as_u64(),
            candidates,
        });
    }
    Ok(CaseRecord {
        id: case.id.clone(),
        group: case.group.clone(),
        language: case.language.clone(),
        job_id,
        status,
        error: job["error"]["code"].as_str().map(str::to_string),
        selected_turn: job["result"]["turn"].as_u64().map(|t| t as u32),
        editor_calls: usage["editor_calls"].as_u64().unwrap_or(0),
        cost: usage["cost"].as_f64().unwrap_or(0.0),
        currency: usage["currency"].as_str().unwrap_or("USD").to_string(),
        turns,
    })
}

/// Longest side of a thumbnail in `thumbs/` (report.html's worst cases).
const THUMB_EDGE: u32 = 256;

/// Writes turn `turn`'s image of `case` as a small PNG under
/// `out/thumbs/` ([`crate::html::thumb_name`]), unless it is there.
async fn save_thumb(out: &Path, case: &str, turn: u32, image: Vec<u8>) -> anyhow::Result<()> {
    let path = out.join("thumbs").join(crate::html::thumb_name(case, turn));
    if path.exists() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let thumb = image::load_from_memory(&image)
            .context("decoding a turn image")?
            .thumbnail(THUMB_EDGE, THUMB_EDGE);
        std::fs::create_dir_all(path.parent().expect("thumbs/ has a parent"))?;
        thumb
            .save_with_format(&path, image::ImageFormat::Png)
            .with_context(|| format!("writing {}", path.display()))
    })
    .await?
}

/// How often a running job is read again.
const POLL: Duration = Duration::from_millis(300);

/// Creating and waiting for a case's job.
impl ServiceApi {
    async fn create(
        &self,
        source: &[u8],
        case: &Case,
        parameters: &RunParameters,
        key: &str,
    ) -> anyhow::Result<String> {
        let mut body = json!({
            "image": {"base64": base64::engine::general_purpose::STANDARD.encode(source)},
            "instruction": case.instruction,
            "options": parameters.options,
        });
        if let Some(editor) = &parameters.editor {
            body["editor"] = json!(editor);
        }
        let response = self
            .request(reqwest::Method::POST, "/v1/jobs")
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .context("creating a job")?;
        let status = response.status();
        let job: Value = response.json().await.context("reading the created job")?;
        if !status.is_success() {
            bail!("the service refused the job ({status}): {job}");
        }
        job["id"]
            .as_str()
            .map(str::to_string)
            .context("a created job without an id")
    }

    /// Reads the job until it has finished.
    async fn wait(&self, id: &str) -> anyhow::Result<Value> {
        loop {
            let job: Value = self.get(&format!("/v1/jobs/{id}")).await?.json().await?;
            if matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "canceled")
            ) {
                return Ok(job);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_every_part_and_only_on_them() {
        let options = json!({"max_turns": 3});
        let key = idempotency_key("gedit", "c1", Some("flux"), &options);
        assert_eq!(key, idempotency_key("gedit", "c1", Some("flux"), &options));
        assert!(key.starts_with("eval-") && key.len() == 53);
        for other in [
            idempotency_key("gedit2", "c1", Some("flux"), &options),
            idempotency_key("gedit", "c2", Some("flux"), &options),
            idempotency_key("gedit", "c1", None, &options),
            idempotency_key("gedit", "c1", Some("flux"), &json!({"max_turns": 4})),
            // Length-prefixed: moving a character between parts changes it.
            idempotency_key("gedi", "tc1", Some("flux"), &options),
        ] {
            assert_ne!(key, other);
        }
    }

    #[test]
    fn a_folder_holds_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let parameters = RunParameters {
            suite: "s".into(),
            server: "http://x".into(),
            editor: None,
            options: json!({}),
            candidates: false,
        };
        claim_folder(dir.path(), &parameters).unwrap();
        claim_folder(dir.path(), &parameters).unwrap();
        let other = RunParameters {
            candidates: true,
            ..parameters
        };
        let error = claim_folder(dir.path(), &other).unwrap_err().to_string();
        assert!(error.contains("holds another run"), "{error}");
    }

    #[test]
    fn the_journal_survives_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.jsonl");
        let journal = Journal::open(&path).unwrap();
        journal.record("a", "job-a").unwrap();
        drop(journal);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"case\":\"b\",\"jo")
            .unwrap();
        let journal = Journal::open(&path).unwrap();
        assert_eq!(journal.job_of("a").as_deref(), Some("job-a"));
        assert_eq!(journal.job_of("b"), None);
        journal.record("b", "job-b").unwrap();
        drop(journal);
        let journal = Journal::open(&path).unwrap();
        assert_eq!(journal.job_of("b").as_deref(), Some("job-b"));
    }
}
