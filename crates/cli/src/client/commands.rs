//! What `editthinker submit` and `editthinker jobs …` do, and their exit
//! codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Value};

use super::sse::{JobStream, Next};
use super::watch::Watcher;
use super::{ApiClient, ClientError};

/// Exit code: the job failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the job was canceled.
pub const EXIT_CANCELED: u8 = 2;
/// Exit code: a request failed (service unreachable, refused, a file).
pub const EXIT_ERROR: u8 = 3;
/// Exit code: interrupted, the job left running.
pub const EXIT_INTERRUPTED: u8 = 130;

/// `editthinker submit`'s arguments (contract: the flags).
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The source image.
    pub image: PathBuf,
    /// What to change.
    pub instruction: String,
    /// A configured editor name (default: the server's default editor).
    #[arg(long)]
    pub editor: Option<String>,
    /// Most edit-critique turns (1-10).
    #[arg(long)]
    pub max_turns: Option<u32>,
    /// Which turn is the result: `best` or `last`.
    #[arg(long, value_parser = ["best", "last"])]
    pub selection: Option<String>,
    /// Candidates edited per turn (1-8), each with its own seed.
    #[arg(long)]
    pub candidates: Option<u32>,
    /// Which score picks a turn's candidate: `thinker` or `verifier`.
    #[arg(long, value_parser = ["thinker", "verifier"])]
    pub rank_by: Option<String>,
    /// Where to save the result (default `<image stem>.edited.png`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Create the job and print its id; do not watch.
    #[arg(long)]
    pub no_watch: bool,
    /// Print only the final job JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Where the result goes without `--out`: `<image stem>.edited.png` beside
/// the image.
pub fn default_out(image: &Path) -> PathBuf {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    image.with_file_name(format!("{stem}.edited.png"))
}

/// `path`, or, when a file is there already, the first free
/// `<stem>-2.<ext>`, `<stem>-3.<ext>`, … beside it.
pub fn free_path(path: PathBuf) -> PathBuf {
    if !path.exists() {
        return path;
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (2..)
        .map(|n| path.with_file_name(format!("{stem}-{n}{ext}")))
        .find(|p| !p.exists())
        .expect("some number is free")
}

/// Uploads, watches, saves the result.
pub async fn submit(client: &ApiClient, args: SubmitArgs) -> ExitCode {
    let mut options = json!({});
    if let Some(n) = args.max_turns {
        options["max_turns"] = n.into();
    }
    if let Some(selection) = &args.selection {
        options["selection"] = selection.clone().into();
    }
    if let Some(k) = args.candidates {
        options["candidates"] = k.into();
    }
    if let Some(rank_by) = &args.rank_by {
        options["rank_by"] = rank_by.clone().into();
    }
    let job = match client
        .submit(
            &args.image,
            &args.instruction,
            args.editor.as_deref(),
            &options,
        )
        .await
    {
        Ok(job) => job,
        Err(e) => return error(e),
    };
    let id = job["id"].as_str().unwrap_or_default().to_string();
    if args.no_watch {
        if args.json {
            println!("{job:#}");
        } else {
            println!("{id}");
        }
        return ExitCode::SUCCESS;
    }
    if !args.json {
        println!(
            "job {id}: {:?} with {}",
            args.instruction,
            job["editor"].as_str().unwrap_or("?")
        );
    }
    // An explicit --out is overwritten as asked; the default name never
    // replaces an earlier result.
    let out = args
        .out
        .unwrap_or_else(|| free_path(default_out(&args.image)));
    watch_job(client, &id, Some(&out), args.json).await
}

/// What the CLI says of a job on sandbox providers.
pub const SANDBOX_LINE: &str = "sandbox: this job runs on the sandbox providers (test mode): its edits and critiques are made up";

/// Watches a job to its end; saves the result to `out` when it succeeds.
pub async fn watch_job(client: &ApiClient, id: &str, out: Option<&Path>, json: bool) -> ExitCode {
    let mut watcher = (!json).then(Watcher::new);
    if let Some(w) = watcher.as_mut() {
        // Best effort: without it the status line only lacks the last turn.
        if let Ok(job) = client.job(id).await {
            w.set_job(&job);
            if job["sandbox"] == true {
                println!("{SANDBOX_LINE}");
            }
        }
    }
    let mut stream = JobStream::new(client, id, None);
    let finished = loop {
        let run = stream.run(async |next| {
            if let Some(w) = watcher.as_mut() {
                match next {
                    Next::Event(event) => {
                        // A turn of several candidates: their seeds and
                        // verifier scores are in the job, not the events.
                        if w.needs_job(&event) {
                            if let Ok(job) = client.job(id).await {
                                w.set_job(&job);
                            }
                        }
                        w.on(&event)
                    }
                    Next::Reconnecting => w.reconnecting(),
                    Next::Ended => {}
                }
            }
        });
        tokio::select! {
            result = run => break result,
            _ = tokio::signal::ctrl_c() => {
                if !ask_to_cancel(watcher.as_ref(), id) {
                    if let Some(w) = watcher.as_mut() {
                        w.finish();
                    }
                    eprintln!("left running; watch it again with: editthinker jobs watch {id}");
                    return ExitCode::from(EXIT_INTERRUPTED);
                }
                if let Err(e) = client.cancel(id).await {
                    eprintln!("canceling failed: {e}");
                }
                // Go on watching until the cancel shows.
            }
        }
    };
    let elapsed = watcher.as_mut().map(Watcher::finish);
    if let Err(e) = finished {
        return error(e);
    }
    let job = match client.job(id).await {
        Ok(job) => job,
        Err(e) => return error(e),
    };
    let code = outcome(client, &job, out, json).await;
    if let (Some(elapsed), false) = (elapsed, json) {
        // The job's own time from creation to its end: watching a job that
        // had already finished took no time at all.
        let took = job_seconds(&job).unwrap_or(elapsed.as_secs_f64());
        println!("{} in {took:.1} s", job["status"].as_str().unwrap_or("?"));
    }
    if json {
        println!("{job:#}");
    }
    code
}

/// Seconds from a job's `created_at` to its `finished_at`, when it has both.
fn job_seconds(job: &Value) -> Option<f64> {
    let at = |key: &str| {
        job[key]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let took = at("finished_at")? - at("created_at")?;
    Some(took.num_milliseconds() as f64 / 1000.0)
}

/// Saves a succeeded job's result; the exit code of its status.
async fn outcome(client: &ApiClient, job: &Value, out: Option<&Path>, json: bool) -> ExitCode {
    let id = job["id"].as_str().unwrap_or_default();
    match job["status"].as_str() {
        Some("succeeded") => {
            if let Some(out) = out {
                let bytes = match client.bytes(&format!("/v1/jobs/{id}/result")).await {
                    Ok(bytes) => bytes,
                    Err(e) => return error(e),
                };
                if let Err(e) = std::fs::write(out, &bytes) {
                    return error(ClientError::File(format!("writing {}: {e}", out.display())));
                }
                if !json {
                    println!(
                        "result: turn {} of {} (stopped: {}) saved to {}",
                        job["result"]["turn"],
                        job["turns"].as_array().map_or(0, Vec::len),
                        job["stop_reason"].as_str().unwrap_or("-"),
                        out.display()
                    );
                }
            }
            // What the job paid for, at the end, also for `jobs watch`.
            if !json {
                println!("{}", usage_line(&job["usage"]));
            }
            ExitCode::SUCCESS
        }
        Some("failed") => {
            eprintln!(
                "job failed: {}: {}",
                job["error"]["code"].as_str().unwrap_or("unknown"),
                job["error"]["message"].as_str().unwrap_or("")
            );
            eprintln!("{}", usage_line(&job["usage"]));
            ExitCode::from(EXIT_FAILED)
        }
        Some("canceled") => {
            eprintln!("job canceled");
            eprintln!("{}", usage_line(&job["usage"]));
            ExitCode::from(EXIT_CANCELED)
        }
        other => {
            eprintln!("job is {}", other.unwrap_or("in an unknown state"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The job's usage ledger in one line: what it paid for (the verifier's
/// calls when it had any), and the cost.
pub fn usage_line(usage: &Value) -> String {
    let n = |k: &str| usage[k].as_u64().unwrap_or(0);
    let verifier = match n("verifier_calls") {
        0 => String::new(),
        calls => format!(", {calls} verifier calls"),
    };
    format!(
        "usage: {} edits ({:.1} s), {} critiques ({} tokens in, {} out){verifier}, cost {:.4} {}",
        n("editor_calls"),
        usage["editor_seconds"].as_f64().unwrap_or(0.0),
        n("thinker_calls"),
        n("thinker_input_tokens"),
        n("thinker_output_tokens"),
        usage["cost"].as_f64().unwrap_or(0.0),
        usage["currency"].as_str().unwrap_or("")
    )
}

/// On Ctrl-C: on a terminal, asks whether to cancel the job (default no);
/// elsewhere the job is left running.
fn ask_to_cancel(watcher: Option<&Watcher>, id: &str) -> bool {
    if !console::Term::stdout().is_term() || !console::user_attended_stderr() {
        return false;
    }
    let ask = || {
        eprint!("\ncancel job {id}? [y/N] ");
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        matches!(answer.trim(), "y" | "Y" | "yes")
    };
    match watcher {
        Some(w) => w.suspend(ask),
        None => ask(),
    }
}

fn error(e: ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_ERROR)
}

/// `jobs list`: one line per job.
pub async fn list(client: &ApiClient, status: Option<&str>, limit: Option<u32>) -> ExitCode {
    let page = match client.list(status, limit).await {
        Ok(page) => page,
        Err(e) => return error(e),
    };
    println!(
        "{:<36}  {:<9}  {:<20}  INSTRUCTION",
        "ID", "STATUS", "CREATED"
    );
    for job in page["jobs"].as_array().into_iter().flatten() {
        let created = job["created_at"].as_str().unwrap_or("");
        println!(
            "{:<36}  {:<9}  {:<20}  {}",
            job["id"].as_str().unwrap_or(""),
            job["status"].as_str().unwrap_or(""),
            created.get(..19).unwrap_or(created),
            job["instruction"].as_str().unwrap_or("")
        );
    }
    ExitCode::SUCCESS
}

/// `jobs get`, `jobs cancel`, `jobs retry`: the job JSON.
pub fn print_job(result: Result<Value, ClientError>) -> ExitCode {
    match result {
        Ok(job) => {
            println!("{job:#}");
            ExitCode::SUCCESS
        }
        Err(e) => error(e),
    }
}

/// `jobs download`: the result, or turn `n`, to `out` (default
/// `<id>.png` / `<id>.turn<n>.png`).
pub async fn download(
    client: &ApiClient,
    id: &str,
    turn: Option<u32>,
    out: Option<PathBuf>,
) -> ExitCode {
    let (path, default) = match turn {
        Some(n) => (
            format!("/v1/jobs/{id}/turns/{n}/image"),
            format!("{id}.turn{n}.png"),
        ),
        None => (format!("/v1/jobs/{id}/result"), format!("{id}.png")),
    };
    let out = out.unwrap_or_else(|| PathBuf::from(default));
    match client.bytes(&path).await {
        Ok(bytes) => match std::fs::write(&out, &bytes) {
            Ok(()) => {
                println!("saved {} ({} bytes)", out.display(), bytes.len());
                ExitCode::SUCCESS
            }
            Err(e) => error(ClientError::File(format!("writing {}: {e}", out.display()))),
        },
        Err(e) => error(e),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_existing_result_is_never_replaced_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cat.edited.png");
        assert_eq!(free_path(out.clone()), out);
        std::fs::write(&out, b"first").unwrap();
        let second = dir.path().join("cat.edited-2.png");
        assert_eq!(free_path(out.clone()), second);
        std::fs::write(&second, b"second").unwrap();
        assert_eq!(free_path(out), dir.path().join("cat.edited-3.png"));
    }

    #[test]
    fn a_job_s_time_runs_from_its_creation_to_its_end() {
        let job = serde_json::json!({
            "created_at": "2026-12-07T10:00:00Z",
            "finished_at": "2026-12-07T10:00:12.5Z",
        });
        assert_eq!(job_seconds(&job), Some(12.5));
        assert_eq!(
            job_seconds(&serde_json::json!({"created_at": "2026-12-07T10:00:00Z"})),
            None
        );
    }
    use super::*;

    #[test]
    fn the_usage_line_says_what_the_job_paid_for() {
        let mut usage = serde_json::json!({
            "editor_calls": 3, "editor_seconds": 1.52, "thinker_calls": 3,
            "thinker_input_tokens": 1563, "thinker_output_tokens": 213,
            "verifier_calls": 0, "cost": 0.0123, "currency": "USD"
        });
        assert_eq!(
            usage_line(&usage),
            "usage: 3 edits (1.5 s), 3 critiques (1563 tokens in, 213 out), cost 0.0123 USD"
        );
        usage["verifier_calls"] = 3.into();
        assert_eq!(
            usage_line(&usage),
            "usage: 3 edits (1.5 s), 3 critiques (1563 tokens in, 213 out), 3 verifier calls, cost 0.0123 USD"
        );
    }

    #[test]
    fn the_result_goes_beside_the_image() {
        assert_eq!(
            default_out(Path::new("/photos/cat.jpg")),
            PathBuf::from("/photos/cat.edited.png")
        );
        assert_eq!(
            default_out(Path::new("dog")),
            PathBuf::from("dog.edited.png")
        );
    }
}
