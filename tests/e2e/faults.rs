//! The fault suite: the real binary on Postgres, as separate `api` and
//! `worker` processes, under faults — a worker SIGKILLed over and over
//! during a batch, a worker frozen past its lease (SIGSTOP, then SIGCONT),
//! every database backend of the service terminated again and again, an
//! editor that never answers, and a thinker stream that stalls.
//!
//! Every test ends with the same checks ([`verify`]):
//! - **no job lost**: every created job is found and terminal — succeeded,
//!   or failed with a code the test expects;
//! - **no completed edit re-bought**: the fake editor numbers its calls and
//!   paints each answer in a colour that encodes the call's number, so a
//!   recorded turn image says which call produced it; any later call for
//!   the same (job, turn) bought an edit that was already recorded;
//! - **no turn image changed after it was recorded**: a watcher fetches
//!   each turn's image as soon as the job shows the turn and the end
//!   compares it with what is served then.
//!
//! Each test prints its figures on a `faults[...]` line (nextest shows the
//! output of passing tests with `--success-output immediate`). Among them,
//! `unused_paid_edits` counts edits the editor answered whose image no turn
//! recorded (a worker killed holding the result, or a store write that
//! failed after the edit): reported, not asserted.
//!
//! Prompts carry the job and the turn: a job's instruction is `"<tag> #t1"`
//! and the fake thinker always refines `"<tag> #tN"` into `"<tag> #tN+1"`
//! (scores 5/5, never satisfied), so both fakes know which (job, turn) each
//! request is for and `max_turns` fixes how many turns a job makes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use futures::StreamExt;
use image::GenericImageView;
use serde_json::{json, Value};
use sqlx::Connection;

// ---------------------------------------------------------------------------
// Fake providers that know which (job, turn) each request is for
// ---------------------------------------------------------------------------

/// One request a fake provider received.
#[derive(Debug, Clone)]
struct Call {
    tag: String,
    turn: u32,
    /// This fake's call number, from 1, in order of arrival.
    n: u64,
    at: Instant,
}

/// How a fake answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Answers after the delay.
    Ok(Duration),
    /// HTTP 500 after the delay.
    Fail(Duration),
    /// Accepts the request and never answers (no status line); the
    /// connection stays open until the client gives up.
    Hang,
    /// Thinker only: a streamed answer that sends its first few chunks and
    /// then nothing, the connection kept open.
    Stall,
}

/// Decides the answer from (tag, turn, how many calls this (tag, turn)
/// has had, this one included).
type Policy = Box<dyn Fn(&str, u32, usize) -> Act + Send + Sync>;

struct Fake {
    calls: Mutex<Vec<Call>>,
    /// Numbers of the calls answered with a result (the editor's paid edits).
    answered: Mutex<HashSet<u64>>,
    policy: Mutex<Policy>,
}

impl Fake {
    fn new(policy: Policy) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            answered: Mutex::new(HashSet::new()),
            policy: Mutex::new(policy),
        })
    }

    fn arrive(&self, tag: &str, turn: u32) -> (u64, Act) {
        let (n, nth) = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.len() as u64 + 1;
            let nth = calls
                .iter()
                .filter(|c| c.tag == tag && c.turn == turn)
                .count()
                + 1;
            calls.push(Call {
                tag: tag.to_string(),
                turn,
                n,
                at: Instant::now(),
            });
            (n, nth)
        };
        let act = (self.policy.lock().unwrap())(tag, turn, nth);
        (n, act)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn answer(&self, n: u64) {
        self.answered.lock().unwrap().insert(n);
    }

    fn was_answered(&self, n: u64) -> bool {
        self.answered.lock().unwrap().contains(&n)
    }

    fn len(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn calls_for(&self, tag: &str, turn: u32) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.tag == tag && c.turn == turn)
            .collect()
    }

    fn calls_after(&self, t: Instant) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.at > t).collect()
    }
}

fn always(act: Act) -> Policy {
    Box::new(move |_, _, _| act)
}

/// `"<tag> #t<turn>"` → (tag, turn); anything else is turn 0.
fn parse_prompt(prompt: &str) -> (String, u32) {
    match prompt.rsplit_once(" #t") {
        Some((tag, turn)) => match turn.trim().parse() {
            Ok(turn) => (tag.to_string(), turn),
            Err(_) => (prompt.to_string(), 0),
        },
        None => (prompt.to_string(), 0),
    }
}

fn prompt(tag: &str, turn: u32) -> String {
    format!("{tag} #t{turn}")
}

/// The colour of the editor's answer to call `n`.
fn colour_of(n: u64) -> [u8; 3] {
    [(n & 0xff) as u8, ((n >> 8) & 0xff) as u8, 0x5a]
}

/// The editor call a turn image came from.
fn call_of(image: &[u8]) -> Option<u64> {
    let img = image::load_from_memory(image).ok()?.to_rgb8();
    let p = img.get_pixel(img.width() / 2, img.height() / 2).0;
    (p[2] == 0x5a).then(|| u64::from(p[0]) + (u64::from(p[1]) << 8))
}

async fn serve_router(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// A self-hosted `/edit` server (the `http` editor kind).
async fn start_editor(fake: Arc<Fake>) -> String {
    serve_router(
        Router::new()
            .route("/edit", post(edit_handler))
            .with_state(fake),
    )
    .await
}

async fn edit_handler(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> Response {
    let (tag, turn) = parse_prompt(body["prompt"].as_str().unwrap_or_default());
    let (width, height) = B64
        .decode(body["image"].as_str().unwrap_or_default())
        .ok()
        .and_then(|b| image::load_from_memory(&b).ok())
        .map(|i| i.dimensions())
        .unwrap_or((32, 32));
    let (n, act) = fake.arrive(&tag, turn);
    match act {
        Act::Ok(delay) => {
            tokio::time::sleep(delay).await;
            let out = png(width, height, colour_of(n));
            fake.answer(n);
            Json(json!({"edited_image": B64.encode(out)})).into_response()
        }
        Act::Fail(delay) => {
            tokio::time::sleep(delay).await;
            (StatusCode::INTERNAL_SERVER_ERROR, "busy").into_response()
        }
        Act::Hang | Act::Stall => futures::future::pending().await,
    }
}

/// An OpenAI-compatible chat-completions server; streams when asked to.
async fn start_thinker(fake: Arc<Fake>) -> String {
    let url = serve_router(
        Router::new()
            .route("/v1/chat/completions", post(chat_handler))
            .with_state(fake),
    )
    .await;
    format!("{url}/v1")
}

async fn chat_handler(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> Response {
    let text = body["messages"][0]["content"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["type"] == "text")
        .and_then(|p| p["text"].as_str())
        .unwrap_or_default()
        .to_string();
    let prev = text
        .split("PREV:")
        .nth(1)
        .and_then(|r| r.split("\nEND").next())
        .unwrap_or_default();
    let (tag, turn) = parse_prompt(prev);
    let (_, act) = fake.arrive(&tag, turn);
    let answer = said(5, 5, &prompt(&tag, turn + 1));
    let stream = body["stream"] == json!(true);
    match act {
        Act::Ok(delay) => {
            tokio::time::sleep(delay).await;
            if stream {
                sse_answer(&answer, false)
            } else {
                Json(json!({
                    "id": "chatcmpl-faults",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]
                }))
                .into_response()
            }
        }
        Act::Fail(delay) => {
            tokio::time::sleep(delay).await;
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"message": "busy", "type": "server_error"}})),
            )
                .into_response()
        }
        Act::Stall if stream => sse_answer(&answer, true),
        Act::Stall | Act::Hang => futures::future::pending().await,
    }
}

/// `answer` as `chat.completion.chunk` events of 8 characters, then
/// `[DONE]`; with `stall`, only the first three chunks, then silence with
/// the connection open.
fn sse_answer(answer: &str, stall: bool) -> Response {
    let chars: Vec<char> = answer.chars().collect();
    let mut events: Vec<String> = chars
        .chunks(8)
        .map(|c| {
            let piece: String = c.iter().collect();
            let chunk = json!({
                "id": "chatcmpl-faults",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]
            });
            format!("data: {chunk}\n\n")
        })
        .collect();
    events.push("data: [DONE]\n\n".into());
    let body = if stall {
        events.truncate(3);
        Body::from_stream(
            futures::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>))
                .chain(futures::stream::pending()),
        )
    } else {
        Body::from_stream(futures::stream::iter(
            events.into_iter().map(Ok::<_, std::convert::Infallible>),
        ))
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

// ---------------------------------------------------------------------------
// The rig: Postgres, fakes, an api process and worker processes
// ---------------------------------------------------------------------------

/// Settings that differ between tests.
struct Knobs {
    concurrency: u32,
    max_attempts: u32,
    /// Extra lines for `[editors.fake]`.
    editor: &'static str,
    /// Extra lines for `[thinker]`.
    thinker: &'static str,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            concurrency: 2,
            max_attempts: 10,
            editor: "",
            thinker: "",
        }
    }
}

struct Rig {
    env: TestEnv,
    editor: Arc<Fake>,
    thinker: Arc<Fake>,
    api: Service,
    worker_config: std::path::PathBuf,
    started: Instant,
}

/// A submitted job.
#[derive(Debug, Clone)]
struct Job {
    tag: String,
    id: String,
}

impl Rig {
    async fn new(knobs: Knobs, editor: Policy, thinker: Policy) -> Self {
        let env = TestEnv::new(Backend::Postgres).await;
        let editor = Fake::new(editor);
        let thinker = Fake::new(thinker);
        let editor_url = start_editor(editor.clone()).await;
        let thinker_url = start_thinker(thinker.clone()).await;
        let template = env.dir.path().join("template.txt");
        std::fs::write(&template, TEST_TEMPLATE).unwrap();
        let backends = format!(
            r#"
[worker]
concurrency = {concurrency}
lease_seconds = 3
heartbeat_seconds = 1
poll_interval_ms = 200
retry_base_ms = 200
shutdown_grace_seconds = 2
max_attempts = {max_attempts}

[thinker]
kind = "openai"
base_url = "{thinker_url}"
model = "EditThinker-8B"
prompt_template_file = "{template}"
retry_base_ms = 50
{thinker_extra}

[editors.fake]
kind = "http"
url = "{editor_url}"
default = true
retry_base_ms = 50
{editor_extra}
"#,
            concurrency = knobs.concurrency,
            max_attempts = knobs.max_attempts,
            template = template.display(),
            thinker_extra = knobs.thinker,
            editor_extra = knobs.editor,
        );
        env.migrate();
        let api = Service::start("api", &env.config("api", &backends));
        let worker_config = env.config("worker", &backends);
        Self {
            env,
            editor,
            thinker,
            api,
            worker_config,
            started: Instant::now(),
        }
    }

    fn worker(&self) -> Service {
        Service::start("worker", &self.worker_config)
    }

    async fn submit(&self, tag: &str, max_turns: u32) -> Job {
        let job = create_job(
            &self.api,
            job_body(
                &png(32, 32, [0, 0, 0]),
                &prompt(tag, 1),
                json!({"max_turns": max_turns}),
            ),
        )
        .await;
        Job {
            tag: tag.to_string(),
            id: job["id"].as_str().unwrap().to_string(),
        }
    }

    async fn submit_batch(&self, prefix: &str, count: usize, max_turns: u32) -> Vec<Job> {
        let mut jobs = Vec::with_capacity(count);
        for i in 0..count {
            jobs.push(self.submit(&format!("{prefix}{i:02}"), max_turns).await);
        }
        jobs
    }

    fn db_name(&self) -> String {
        self.env
            .database_url
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// GET a job; `None` on any error (faults may make the API answer 5xx).
async fn try_job(client: &reqwest::Client, api: &Service, id: &str) -> Option<Value> {
    let resp = client
        .get(api.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.json().await.ok()
}

async fn try_bytes(client: &reqwest::Client, url: &str) -> Option<Vec<u8>> {
    let resp = client.get(url).send().await.ok()?;
    if resp.status() != 200 {
        return None;
    }
    Some(resp.bytes().await.ok()?.to_vec())
}

/// Whether every job is terminal right now.
async fn all_terminal(api: &Service, jobs: &[Job]) -> bool {
    let client = http();
    for job in jobs {
        match try_job(&client, api, &job.id).await {
            Some(j) if is_terminal(&j) => {}
            _ => return false,
        }
    }
    true
}

/// Waits until every job is terminal; false if `limit` passes first (the
/// final check then reports which are not).
async fn wait_all_terminal(api: &Service, jobs: &[Job], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if all_terminal(api, jobs).await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `cond` holds, polling; false if `limit` passes first.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

// ---------------------------------------------------------------------------
// The watcher: each turn image as first served
// ---------------------------------------------------------------------------

/// Turn images as first served, by (job id, turn).
type Images = Arc<Mutex<HashMap<(String, u32), Vec<u8>>>>;

/// Polls every job and fetches each turn's image as soon as the job lists
/// the turn, keeping the bytes first served.
struct Watcher {
    jobs: Arc<Mutex<Vec<Job>>>,
    seen: Images,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    fn start(api_url: String, jobs: &[Job]) -> Self {
        let jobs = Arc::new(Mutex::new(jobs.to_vec()));
        let seen: Images = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (jobs, seen, stop) = (jobs.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                let client = http();
                // Jobs whose every turn is fetched and that are terminal.
                let mut done: HashSet<String> = HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let list = jobs.lock().unwrap().clone();
                    for job in &list {
                        if done.contains(&job.id) {
                            continue;
                        }
                        let url = format!("{api_url}/v1/jobs/{}", job.id);
                        let Some(value) = async {
                            let r = client.get(&url).send().await.ok()?;
                            if r.status() != 200 {
                                return None;
                            }
                            r.json::<Value>().await.ok()
                        }
                        .await
                        else {
                            continue;
                        };
                        let mut complete = true;
                        for turn in value["turns"].as_array().into_iter().flatten() {
                            let index = turn["index"].as_u64().unwrap_or(0) as u32;
                            let key = (job.id.clone(), index);
                            if seen.lock().unwrap().contains_key(&key) {
                                continue;
                            }
                            let image =
                                format!("{api_url}{}", turn["image_url"].as_str().unwrap_or(""));
                            match try_bytes(&client, &image).await {
                                Some(bytes) => {
                                    seen.lock().unwrap().insert(key, bytes);
                                }
                                None => complete = false,
                            }
                        }
                        if complete && is_terminal(&value) {
                            done.insert(job.id.clone());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Self {
            jobs,
            seen,
            stop,
            task,
        }
    }

    fn add(&self, job: &Job) {
        self.jobs.lock().unwrap().push(job.clone());
    }

    fn first_seen(&self, id: &str, turn: u32) -> Option<Vec<u8>> {
        self.seen
            .lock()
            .unwrap()
            .get(&(id.to_string(), turn))
            .cloned()
    }

    /// Stops polling, letting a pass in progress finish so that no fetch
    /// races the final check.
    async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
    }
}

// ---------------------------------------------------------------------------
// The final check and the figures
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Figures {
    jobs: usize,
    succeeded: usize,
    failed: usize,
    /// Editor calls, all jobs.
    edits: usize,
    /// Recorded turns, all jobs.
    turns: usize,
    /// Calls for a (job, turn) after the call whose image was recorded.
    rebought: usize,
    /// Edits the editor answered with an image that no turn recorded:
    /// paid for and thrown away (a worker killed holding the result, or a
    /// failed write after the edit).
    unused_paid_edits: usize,
    /// Turn images served differently at the end than when first seen.
    images_changed: usize,
    thinks: usize,
    /// Sum of `attempt` over the jobs.
    attempts: u64,
}

impl Figures {
    fn line(&self, test: &str, extra: &str, started: Instant) -> String {
        format!(
            "faults[{test}]: jobs={} succeeded={} failed={} {extra} edits={} turns={} \
             extra_edits={} unused_paid_edits={} rebought_edits={} images_changed={} \
             critiques={} attempts={} wall={:.1}s",
            self.jobs,
            self.succeeded,
            self.failed,
            self.edits,
            self.turns,
            self.edits.saturating_sub(self.turns),
            self.unused_paid_edits,
            self.rebought,
            self.images_changed,
            self.thinks,
            self.attempts,
            started.elapsed().as_secs_f64()
        )
    }
}

/// The three promises, for every job: found and terminal (succeeded unless
/// `failures` lists its tag with the codes it may fail with), no recorded
/// edit bought again, no turn image changed. Returns the figures and the
/// list of broken promises (empty when all hold).
async fn verify(
    rig: &Rig,
    jobs: &[Job],
    watcher: &Watcher,
    failures: &[(&str, &[&str])],
) -> (Figures, Vec<String>) {
    let client = http();
    let mut problems = Vec::new();
    let mut figures = Figures {
        jobs: jobs.len(),
        edits: rig.editor.len(),
        thinks: rig.thinker.len(),
        ..Figures::default()
    };
    let expected: HashMap<&str, &[&str]> = failures.iter().copied().collect();
    for job in jobs {
        let mut value = None;
        for _ in 0..20 {
            value = try_job(&client, &rig.api, &job.id).await;
            if value.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let Some(value) = value else {
            problems.push(format!("job {} ({}) lost: not found", job.tag, job.id));
            continue;
        };
        figures.attempts += value["attempt"].as_u64().unwrap_or(0);
        let status = value["status"].as_str().unwrap_or_default();
        let code = value["error"]["code"].as_str().unwrap_or_default();
        match (status, expected.get(job.tag.as_str())) {
            ("succeeded", None) => figures.succeeded += 1,
            ("failed", Some(codes)) if codes.contains(&code) => figures.failed += 1,
            _ => {
                if status == "failed" {
                    figures.failed += 1;
                }
                problems.push(format!(
                    "job {} ({}) ended {status:?} (code {code:?}, attempt {}), expected {}",
                    job.tag,
                    job.id,
                    value["attempt"],
                    match expected.get(job.tag.as_str()) {
                        Some(codes) => format!("failed with one of {codes:?}"),
                        None => "succeeded".into(),
                    }
                ));
            }
        }
        let turns = value["turns"].as_array().cloned().unwrap_or_default();
        figures.turns += turns.len();
        let mut recorded_calls = HashSet::new();
        for turn in &turns {
            let index = turn["index"].as_u64().unwrap_or(0) as u32;
            let url = rig.api.url(turn["image_url"].as_str().unwrap_or(""));
            let mut now = None;
            for _ in 0..20 {
                now = try_bytes(&client, &url).await;
                if now.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let Some(now) = now else {
                problems.push(format!("job {} turn {index}: image not served", job.tag));
                continue;
            };
            let first = watcher
                .first_seen(&job.id, index)
                .unwrap_or_else(|| now.clone());
            if first != now {
                figures.images_changed += 1;
                problems.push(format!(
                    "job {} turn {index}: image changed after it was recorded \
                     (first served from editor call {:?}, now from call {:?})",
                    job.tag,
                    call_of(&first),
                    call_of(&now)
                ));
            }
            let calls = rig.editor.calls_for(&job.tag, index);
            let Some(recorded) = call_of(&first) else {
                problems.push(format!(
                    "job {} turn {index}: the image is not one the editor made",
                    job.tag
                ));
                continue;
            };
            recorded_calls.insert(recorded);
            if !calls.iter().any(|c| c.n == recorded) {
                problems.push(format!(
                    "job {} turn {index}: recorded image is from editor call {recorded}, \
                     which was not for this turn",
                    job.tag
                ));
            }
            let again: Vec<u64> = calls
                .iter()
                .filter(|c| c.n > recorded)
                .map(|c| c.n)
                .collect();
            if !again.is_empty() {
                figures.rebought += again.len();
                problems.push(format!(
                    "job {} turn {index}: recorded from editor call {recorded}, \
                     then bought again by calls {again:?}",
                    job.tag
                ));
            }
        }
        figures.unused_paid_edits += rig
            .editor
            .calls()
            .iter()
            .filter(|c| c.tag == job.tag && rig.editor.was_answered(c.n))
            .filter(|c| !recorded_calls.contains(&c.n))
            .count();
    }
    (figures, problems)
}

/// Prints the figures, then fails with every broken promise.
fn report(line: String, problems: Vec<String>) {
    println!("{line}");
    assert!(
        problems.is_empty(),
        "{} broken promise(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// A small xorshift generator: random intervals without a dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Self(seed | 1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(low + self.0 % (high - low + 1))
    }
}

// ---------------------------------------------------------------------------
// 1. Worker SIGKILLs during a batch
// ---------------------------------------------------------------------------

/// 36 jobs of 3 turns on two worker processes; every 1–2 s one of them is
/// SIGKILLed and restarted at once, alternating, for as long as the batch
/// runs (at most 25 s). Short leases (3 s) bring the killed worker's jobs
/// back; attempts (10) are enough that kills never exhaust them. Every job
/// succeeds; no recorded turn is edited again; no image changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkilled_repeatedly_during_a_batch() {
    let rig = Rig::new(
        Knobs {
            concurrency: 2,
            max_attempts: 10,
            ..Knobs::default()
        },
        always(Act::Ok(Duration::from_millis(400))),
        always(Act::Ok(Duration::from_millis(150))),
    )
    .await;
    let jobs = rig.submit_batch("kill", 36, 3).await;
    let mut watcher = Watcher::start(rig.api.url(""), &jobs);
    let mut workers = [rig.worker(), rig.worker()];
    let mut rng = Rng::new();
    let mut kills = 0usize;
    let kill_until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < kill_until {
        tokio::time::sleep(rng.millis(1000, 2000)).await;
        if all_terminal(&rig.api, &jobs).await {
            break;
        }
        let i = kills % workers.len();
        workers[i].kill();
        kills += 1;
        workers[i] = rig.worker();
    }
    wait_all_terminal(&rig.api, &jobs, Duration::from_secs(40)).await;
    watcher.stop().await;
    let (figures, problems) = verify(&rig, &jobs, &watcher, &[]).await;
    let mut problems = problems;
    if kills < 5 {
        problems.push(format!(
            "only {kills} kills happened: the batch ended too soon to test anything"
        ));
    }
    report(
        figures.line("sigkill", &format!("kills={kills}"), rig.started),
        problems,
    );
    drop(workers);
}

// ---------------------------------------------------------------------------
// 2. A worker frozen past its lease, then woken
// ---------------------------------------------------------------------------

/// Everything a worker can have written: the job, turn and event rows, and
/// the blob folder (path → size and content hash).
#[derive(Debug, PartialEq, Eq)]
struct Writes {
    rows: Vec<String>,
    blobs: BTreeMap<String, (u64, u64)>,
}

async fn writes(database_url: &str, blob_dir: &Path) -> Writes {
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    let mut rows = Vec::new();
    for query in [
        "SELECT row_to_json(j)::text FROM jobs j ORDER BY id",
        "SELECT row_to_json(t)::text FROM turns t ORDER BY job_id, idx",
        "SELECT row_to_json(e)::text FROM job_events e ORDER BY id",
    ] {
        rows.extend(
            sqlx::query_scalar::<_, String>(query)
                .fetch_all(&mut conn)
                .await
                .unwrap(),
        );
    }
    let _ = conn.close().await;
    let mut blobs = BTreeMap::new();
    let mut stack = vec![blob_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                let name = path.strip_prefix(blob_dir).unwrap().display().to_string();
                blobs.insert(name, (bytes.len() as u64, h.finish()));
            }
        }
    }
    Writes { rows, blobs }
}

/// What differs between two snapshots, one line each.
fn diff(before: &Writes, after: &Writes) -> Vec<String> {
    let mut out = Vec::new();
    let old: HashSet<&String> = before.rows.iter().collect();
    for row in after.rows.iter().filter(|r| !old.contains(r)) {
        out.push(format!("row written: {row}"));
    }
    for (path, v) in &after.blobs {
        match before.blobs.get(path) {
            None => out.push(format!("blob written: {path}")),
            Some(old) if old != v => out.push(format!("blob overwritten: {path}")),
            _ => {}
        }
    }
    for path in before
        .blobs
        .keys()
        .filter(|p| !after.blobs.contains_key(*p))
    {
        out.push(format!("blob removed: {path}"));
    }
    out
}

/// Worker A runs four jobs, each caught in a different provider call when
/// A is frozen with SIGSTOP: an edit that will succeed, an edit that will
/// answer 500 (its client would retry it), a critique that will succeed,
/// and a critique that will answer 500. The fakes answer while A is frozen.
/// A stays frozen past its lease; worker B takes the jobs over and
/// finishes them. Then B is killed, so only A is left, and A gets SIGCONT:
/// for 5 s after it wakes no editor or thinker request may arrive, no
/// notification may go out, and no row or blob may be written (A's work was
/// past its lease). Then A must still be alive and run a new job. Plus the
/// three promises for all five jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_frozen_past_its_lease_does_nothing_when_it_wakes() {
    const HOLD: Duration = Duration::from_millis(1500);
    let quick = Act::Ok(Duration::from_millis(20));
    let rig = Rig::new(
        Knobs {
            concurrency: 4,
            max_attempts: 5,
            ..Knobs::default()
        },
        Box::new(move |tag, turn, nth| match (tag, turn, nth) {
            ("frozen-edit-ok", 1, 1) => Act::Ok(HOLD),
            ("frozen-edit-500", 1, 1) => Act::Fail(HOLD),
            _ => quick,
        }),
        Box::new(move |tag, turn, nth| match (tag, turn, nth) {
            ("frozen-think-ok", 1, 1) => Act::Ok(HOLD),
            ("frozen-think-500", 1, 1) => Act::Fail(HOLD),
            _ => quick,
        }),
    )
    .await;
    let mut jobs = Vec::new();
    for tag in [
        "frozen-edit-ok",
        "frozen-edit-500",
        "frozen-think-ok",
        "frozen-think-500",
    ] {
        jobs.push(rig.submit(tag, 3).await);
    }
    let mut watcher = Watcher::start(rig.api.url(""), &jobs);
    let mut a = rig.worker();
    // All four held calls are in flight at A: freeze it.
    let (editor, thinker) = (rig.editor.clone(), rig.thinker.clone());
    let caught = wait_until(Duration::from_secs(20), || {
        editor.calls_for("frozen-edit-ok", 1).len() == 1
            && editor.calls_for("frozen-edit-500", 1).len() == 1
            && thinker.calls_for("frozen-think-ok", 1).len() == 1
            && thinker.calls_for("frozen-think-500", 1).len() == 1
    })
    .await;
    assert!(
        caught,
        "worker A never had all four provider calls in flight: editor {:?}, thinker {:?}",
        rig.editor.calls(),
        rig.thinker.calls()
    );
    a.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    let mut b = rig.worker();
    let finished = wait_all_terminal(&rig.api, &jobs, Duration::from_secs(30)).await;
    let takeover = rig
        .editor
        .calls_after(frozen_at)
        .iter()
        .chain(rig.thinker.calls_after(frozen_at).iter())
        .map(|c| c.at.duration_since(frozen_at))
        .min();
    let mut problems = Vec::new();
    if !finished {
        problems.push("worker B did not finish the jobs of the frozen worker in 30 s".into());
    }
    // Only A is left; whatever happens from now on is A's doing.
    b.kill();
    // Let the watcher fetch every recorded image before A wakes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = writes(&rig.env.database_url, &rig.env.dir.path().join("blobs")).await;
    let mut listener = sqlx::postgres::PgListener::connect(&rig.env.database_url)
        .await
        .unwrap();
    listener
        .listen_all(["editthinker_events", "editthinker_live"])
        .await
        .unwrap();
    let (edits_before, thinks_before) = (rig.editor.len(), rig.thinker.len());
    let frozen_for = frozen_at.elapsed();
    let woke_at = Instant::now();
    a.signal(libc::SIGCONT);
    let mut notices = Vec::new();
    let window = woke_at + Duration::from_secs(5);
    while let Ok(Ok(n)) =
        tokio::time::timeout_at(tokio::time::Instant::from_std(window), listener.recv()).await
    {
        notices.push(format!("{}: {}", n.channel(), n.payload()));
    }
    let after = writes(&rig.env.database_url, &rig.env.dir.path().join("blobs")).await;
    let late_edits = rig.editor.calls_after(woke_at);
    let late_thinks = rig.thinker.calls_after(woke_at);
    for c in &late_edits {
        problems.push(format!(
            "editor request from the woken worker, {:?} after SIGCONT: {} turn {}",
            c.at.duration_since(woke_at),
            c.tag,
            c.turn
        ));
    }
    for c in &late_thinks {
        problems.push(format!(
            "thinker request from the woken worker, {:?} after SIGCONT: {} turn {}",
            c.at.duration_since(woke_at),
            c.tag,
            c.turn
        ));
    }
    for n in &notices {
        problems.push(format!("notification from the woken worker: {n}"));
    }
    for d in diff(&before, &after) {
        problems.push(format!("the woken worker wrote: {d}"));
    }
    if a.has_exited() {
        problems.push("worker A exited after SIGCONT".into());
    }
    // A is healthy: it runs a new job on its own.
    let fresh = rig.submit("after-wake", 2).await;
    watcher.add(&fresh);
    jobs.push(fresh);
    if !wait_all_terminal(&rig.api, &jobs, Duration::from_secs(20)).await {
        problems.push("the woken worker did not run a new job within 20 s".into());
    }
    watcher.stop().await;
    let (figures, more) = verify(&rig, &jobs, &watcher, &[]).await;
    problems.extend(more);
    let extra = format!(
        "frozen_for={:.1}s takeover_after={} calls_before_wake={}+{} \
         late_provider_calls={} late_writes={} late_notices={}",
        frozen_for.as_secs_f64(),
        takeover.map_or("none".into(), |d| format!("{:.1}s", d.as_secs_f64())),
        edits_before,
        thinks_before,
        late_edits.len() + late_thinks.len(),
        diff(&before, &after).len(),
        notices.len()
    );
    report(figures.line("sigstop", &extra, rig.started), problems);
    drop(a);
}

// ---------------------------------------------------------------------------
// 3. Every database backend of the service terminated, again and again
// ---------------------------------------------------------------------------

/// 24 jobs of 3 turns on one api and one worker process; every 0.5–1 s all
/// of the service's backends on its database are terminated
/// (`pg_terminate_backend`), for as long as the batch runs (at most 30 s).
/// Every job succeeds; no recorded turn is edited again; no image changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_backends_terminated_repeatedly_during_a_batch() {
    let rig = Rig::new(
        Knobs {
            concurrency: 4,
            max_attempts: 10,
            ..Knobs::default()
        },
        always(Act::Ok(Duration::from_millis(300))),
        always(Act::Ok(Duration::from_millis(150))),
    )
    .await;
    let jobs = rig.submit_batch("pgkill", 24, 3).await;
    let mut watcher = Watcher::start(rig.api.url(""), &jobs);
    let worker = rig.worker();
    let admin = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    let db = rig.db_name();
    let mut rng = Rng::new();
    let (mut rounds, mut terminated) = (0usize, 0i64);
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        tokio::time::sleep(rng.millis(500, 1000)).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) s WHERE t",
        )
        .bind(&db)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        rounds += 1;
        terminated += n;
        if all_terminal(&rig.api, &jobs).await {
            break;
        }
    }
    let _ = conn.close().await;
    wait_all_terminal(&rig.api, &jobs, Duration::from_secs(30)).await;
    watcher.stop().await;
    let (figures, mut problems) = verify(&rig, &jobs, &watcher, &[]).await;
    // Issue 8 item 3: a paid edit whose write failed is retried while the
    // lease holds, never thrown away to be bought again.
    if figures.unused_paid_edits > 0 {
        problems.push(format!(
            "{} paid edits were never recorded (thrown away after a database error)",
            figures.unused_paid_edits
        ));
    }
    report(
        figures.line(
            "pg_terminate",
            &format!("rounds={rounds} backends_terminated={terminated}"),
            rig.started,
        ),
        problems,
    );
    drop(worker);
}

// ---------------------------------------------------------------------------
// 4. An editor that never answers
// ---------------------------------------------------------------------------

/// The editor accepts every request for one job and never answers. With a
/// 1 s editor timeout and 3 attempts, that job fails with
/// `editor_unavailable` (or `editor_ambiguous`, once timeouts after sending
/// are no longer resent) after exactly 3 attempts, with at most two calls
/// per attempt (one retry configured) — while six other jobs on the same
/// worker succeed, and a job submitted after the failure succeeds too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_that_never_answers() {
    let rig = Rig::new(
        Knobs {
            concurrency: 2,
            max_attempts: 3,
            editor: "timeout_seconds = 1.0\nconnect_timeout_seconds = 1.0\nmax_retries = 1",
            ..Knobs::default()
        },
        Box::new(|tag, _, _| {
            if tag == "hang" {
                Act::Hang
            } else {
                Act::Ok(Duration::from_millis(100))
            }
        }),
        always(Act::Ok(Duration::from_millis(50))),
    )
    .await;
    let mut jobs = vec![rig.submit("hang", 1).await];
    jobs.extend(rig.submit_batch("ok", 6, 2).await);
    let mut watcher = Watcher::start(rig.api.url(""), &jobs);
    let worker = rig.worker();
    let mut problems = Vec::new();
    if !wait_all_terminal(&rig.api, &jobs, Duration::from_secs(40)).await {
        problems.push("not every job ended within 40 s".into());
    }
    let hang_done = rig.started.elapsed();
    let hang_calls = rig.editor.calls_for("hang", 1).len();
    let (_, hang) = get_json(&rig.api.url(&format!("/v1/jobs/{}", jobs[0].id))).await;
    if hang["attempt"] != 3 {
        problems.push(format!(
            "the hanging job ended after attempt {} (expected 3)",
            hang["attempt"]
        ));
    }
    if !(3..=6).contains(&hang_calls) {
        problems.push(format!(
            "the hanging job made {hang_calls} editor calls (expected 3 to 6: \
             3 attempts, at most 1 retry each)"
        ));
    }
    // Still healthy after the failure.
    let after = rig.submit("after-hang", 2).await;
    watcher.add(&after);
    jobs.push(after);
    if !wait_all_terminal(&rig.api, &jobs, Duration::from_secs(15)).await {
        problems.push("a job submitted after the hanging one failed did not end in 15 s".into());
    }
    watcher.stop().await;
    let (figures, more) = verify(
        &rig,
        &jobs,
        &watcher,
        &[("hang", &["editor_unavailable", "editor_ambiguous"])],
    )
    .await;
    problems.extend(more);
    report(
        figures.line(
            "editor_hang",
            &format!(
                "hang_code={} hang_attempts={} hang_calls={hang_calls} ended_after={:.1}s",
                hang["error"]["code"],
                hang["attempt"],
                hang_done.as_secs_f64()
            ),
            rig.started,
        ),
        problems,
    );
    drop(worker);
}

// ---------------------------------------------------------------------------
// 5. A thinker stream that stalls
// ---------------------------------------------------------------------------

/// The thinker's streamed critique of one job's first turn sends three
/// chunks and then nothing, connection open, twice; afterwards it answers.
/// With a 2 s thinker timeout and one retry, the first attempt's two calls
/// both stall, the job is requeued, and the second attempt critiques the
/// recorded turn 1 without editing it again and succeeds. Three other jobs
/// run alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinker_stream_that_stalls() {
    let rig = Rig::new(
        Knobs {
            concurrency: 2,
            max_attempts: 3,
            thinker: "timeout_seconds = 2\nmax_retries = 1\nstream = true",
            ..Knobs::default()
        },
        always(Act::Ok(Duration::from_millis(100))),
        Box::new(|tag, turn, nth| {
            if tag == "stall" && turn == 1 && nth <= 2 {
                Act::Stall
            } else {
                Act::Ok(Duration::from_millis(50))
            }
        }),
    )
    .await;
    let mut jobs = vec![rig.submit("stall", 2).await];
    jobs.extend(rig.submit_batch("calm", 3, 2).await);
    let mut watcher = Watcher::start(rig.api.url(""), &jobs);
    let worker = rig.worker();
    let mut problems = Vec::new();
    if !wait_all_terminal(&rig.api, &jobs, Duration::from_secs(40)).await {
        problems.push("not every job ended within 40 s".into());
    }
    let (_, stall) = get_json(&rig.api.url(&format!("/v1/jobs/{}", jobs[0].id))).await;
    let critiques = rig.thinker.calls_for("stall", 1).len();
    let edits = rig.editor.calls_for("stall", 1).len();
    if critiques != 3 {
        problems.push(format!(
            "turn 1 of the stalled job was critiqued {critiques} times (expected 3: \
             two stalled calls in attempt 1, one in attempt 2)"
        ));
    }
    if edits != 1 {
        problems.push(format!(
            "turn 1 of the stalled job was edited {edits} times (expected once)"
        ));
    }
    if stall["attempt"] != 2 {
        problems.push(format!(
            "the stalled job ended after attempt {} (expected 2: requeued once)",
            stall["attempt"]
        ));
    }
    let events = read_sse(
        &rig.api.url(&format!("/v1/jobs/{}/events", jobs[0].id)),
        None,
        Duration::from_secs(10),
    )
    .await;
    let retrying = events.iter().filter(|e| e.event == "job.retrying").count();
    watcher.stop().await;
    let (figures, more) = verify(&rig, &jobs, &watcher, &[]).await;
    problems.extend(more);
    report(
        figures.line(
            "thinker_stall",
            &format!(
                "stall_attempts={} stall_critiques={critiques} stall_edits={edits} \
                 job_retrying_events={retrying}",
                stall["attempt"]
            ),
            rig.started,
        ),
        problems,
    );
    drop(worker);
}
