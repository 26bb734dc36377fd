//! Wall time of one turn of k candidates against an editor and a thinker
//! of fixed latency (not a test: run it by hand).
//!
//!     cargo bench --bench turn                  # L = 400 ms, T = 300 ms, 5 runs per k
//!     TURN_BENCH_EDITOR_MS=1000 TURN_BENCH_THINKER_MS=500 cargo bench --bench turn
//!
//! Runs the loop (`run_loop`) in this process on one job of one turn
//! (`max_turns = 1`, `selection = "best"`, so the turn is critiqued) with
//! `candidates` = 1, 2, 4 and 8, through the real clients over loopback
//! HTTP: the `http` editor kind against a `/edit` server that answers after
//! TURN_BENCH_EDITOR_MS (L, 400) with a PNG, and the `openai` thinker
//! (`stream = false`) against a chat-completions server that answers after
//! TURN_BENCH_THINKER_MS (T, 300) with an EditThinker answer whose scores
//! change from call to call, so a turn's candidates rank apart. The
//! observer records nothing: storage is not measured.
//!
//! Each k runs once to warm up, then TURN_BENCH_RUNS (5) times; the bench
//! prints the median and the maximum against L + T, writes them as JSON to
//! TURN_BENCH_JSON (default `$CARGO_TARGET_DIR/bench-turn.json`, else
//! `target/bench-turn.json`) and exits non-zero when a median is above
//! 1.3 × (L + T). Other knobs: TURN_BENCH_MAX_IN_FLIGHT (the editor
//! profile's `max_in_flight`, default 8 = the most candidates a turn can
//! have; 0 leaves the `http` kind's default of 4), TURN_BENCH_IMAGE_PX
//! (side of the square source image, 256).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use editthinker_core::{
    run_loop, CandidateRecord, Choice, CritiqueRecord, Image, JobOptions, LoopConfig, LoopJob,
    LoopParts, ObserverError, Progress, Selection, Spending, TurnObserver, TurnRecord,
    MAX_CANDIDATES,
};
use editthinker_editors::{EditorKind, EditorProfile, HttpEditor};
use editthinker_thinker::{build_thinker, ThinkerConfig, ThinkerKind};
use image::{DynamicImage, Rgb, RgbImage};
use serde_json::{json, Value};
use support::{env_or, load_average};

/// Candidates per turn, as the issue lists them.
const CANDIDATES: [u32; 4] = [1, 2, 4, 8];
/// A turn's median may take at most this many times L + T.
const LIMIT: f64 = 1.3;
const INSTRUCTION: &str = "make the sky purple";

#[tokio::main]
async fn main() {
    let editor_ms = env_or("TURN_BENCH_EDITOR_MS", 400) as u64;
    let thinker_ms = env_or("TURN_BENCH_THINKER_MS", 300) as u64;
    let runs = env_or("TURN_BENCH_RUNS", 5).max(1);
    let side = env_or("TURN_BENCH_IMAGE_PX", 256).max(16) as u32;
    let max_in_flight = env_or("TURN_BENCH_MAX_IN_FLIGHT", MAX_CANDIDATES as usize);
    let load_before = load_average();

    let editor_server = common::FakeEditor::start().await;
    editor_server.set_delay(Duration::from_millis(editor_ms));
    let thinker_server = SlowThinker::start(Duration::from_millis(thinker_ms)).await;

    let mut profile = EditorProfile::new(EditorKind::Http);
    profile.url = Some(editor_server.url.clone());
    profile.max_in_flight = (max_in_flight > 0).then_some(max_in_flight);
    let in_flight = profile.effective_max_in_flight();
    let editor = HttpEditor::from_profile("bench", &profile).expect("editor profile");
    let thinker = build_thinker(&ThinkerConfig {
        kind: ThinkerKind::Openai,
        base_url: thinker_server.base_url.clone(),
        stream: false,
        ..ThinkerConfig::default()
    })
    .expect("thinker config");
    let parts = LoopParts {
        editor: &editor,
        thinker: thinker.as_ref(),
        verifier: None,
        observer: &NoStore,
    };
    let source = Image::from_pixels(&DynamicImage::ImageRgb8(RgbImage::from_fn(
        side,
        side,
        |x, y| Rgb([x as u8, y as u8, 128]),
    )));

    let budget = Duration::from_millis(editor_ms + thinker_ms);
    println!(
        "one turn of k candidates: editor L = {editor_ms} ms, thinker T = {thinker_ms} ms, \
         L + T = {budget:?}, limit {LIMIT} × (L + T) = {:?}; {side}×{side} source, \
         editor max_in_flight {in_flight}, {runs} runs per k after one warm-up",
        budget.mul_f64(LIMIT)
    );
    println!(
        "{:>2} {:>11} {:>11} {:>14} {:>11}  verdict",
        "k", "median", "max", "median/(L+T)", "max/(L+T)"
    );
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for k in CANDIDATES {
        let calls = (editor_server.calls().len(), thinker_server.calls());
        let mut samples = Vec::with_capacity(runs);
        for run in 0..=runs {
            let took = one_turn(parts, &source, k, run as u64).await;
            if run > 0 {
                samples.push(took);
            }
        }
        check_calls(&editor_server, &thinker_server, calls, k, runs + 1);
        samples.sort();
        let median = samples[samples.len() / 2];
        let max = samples[samples.len() - 1];
        let ratio = |d: Duration| d.as_secs_f64() / budget.as_secs_f64();
        let ok = ratio(median) <= LIMIT;
        println!(
            "{k:>2} {:>8.1} ms {:>8.1} ms {:>14.3} {:>11.3}  {}",
            ms(median),
            ms(max),
            ratio(median),
            ratio(max),
            if ok { "ok" } else { "TOO SLOW" }
        );
        if !ok {
            failures.push(explain(k, median, budget, in_flight));
        }
        rows.push(json!({
            "k": k,
            "median_ms": ms(median),
            "max_ms": ms(max),
            "median_ratio": ratio(median),
            "max_ratio": ratio(max),
            "samples_ms": samples.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        }));
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_after = load_average();
    println!(
        "machine {cpus} CPUs; 1-min load average {load_before} before, {load_after} after \
         (other work on the machine skews the figures)"
    );
    let report = json!({
        "bench": "turn",
        "editor_ms": editor_ms,
        "thinker_ms": thinker_ms,
        "limit_ratio": LIMIT,
        "runs": runs,
        "image_px": side,
        "editor_max_in_flight": in_flight,
        "cpus": cpus,
        "load_before": load_before,
        "load_after": load_after,
        "results": rows,
    });
    println!("{report}");
    let path = std::env::var("TURN_BENCH_JSON").unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        format!("{target}/bench-turn.json")
    });
    match std::fs::write(&path, format!("{report:#}\n")) {
        Ok(()) => println!("written to {path}"),
        Err(e) => eprintln!("could not write {path}: {e}"),
    }
    if !failures.is_empty() {
        for failure in &failures {
            eprintln!("turn bench FAILED: {failure}");
        }
        std::process::exit(1);
    }
}

/// One job of one turn of `k` candidates, timed from the loop's start to
/// its outcome.
async fn one_turn(parts: LoopParts<'_>, source: &Image, k: u32, run: u64) -> Duration {
    let options = JobOptions {
        max_turns: 1,
        selection: Selection::Best,
        candidates: k,
        ..JobOptions::default()
    };
    let config = LoopConfig::default();
    let job = LoopJob {
        source,
        instruction: INSTRUCTION,
        options: &options,
        config: &config,
        progress: Progress::default(),
        spending: Spending::default(),
        seed_base: run,
    };
    let started = Instant::now();
    let outcome = run_loop(job, parts).await;
    let took = started.elapsed();
    let outcome = outcome.unwrap_or_else(|e| panic!("k = {k}: the loop failed: {e}"));
    let turn = &outcome.turns[..];
    assert!(
        turn.len() == 1
            && turn[0]
                .critique
                .as_ref()
                .is_some_and(|c| c.overall().is_some()),
        "k = {k}: expected one critiqued turn with scores, got {turn:?}"
    );
    took
}

/// Every run of `k` edited `k` candidates (with distinct seeds when there
/// are several) and critiqued each once.
fn check_calls(
    editor: &common::FakeEditor,
    thinker: &SlowThinker,
    (edits_before, critiques_before): (usize, u32),
    k: u32,
    jobs: usize,
) {
    let edits = editor.calls();
    let want = k as usize * jobs;
    assert_eq!(edits.len() - edits_before, want, "k = {k}: editor calls");
    assert_eq!(
        (thinker.calls() - critiques_before) as usize,
        want,
        "k = {k}: thinker calls"
    );
    if k > 1 {
        let mut seeds: Vec<String> = edits[edits.len() - k as usize..]
            .iter()
            .map(|c| c.params["seed"].to_string())
            .collect();
        seeds.sort();
        seeds.dedup();
        assert_eq!(seeds.len(), k as usize, "k = {k}: candidate seeds");
    }
}

/// Why `k` missed the limit, as far as the bench can tell.
fn explain(k: u32, median: Duration, budget: Duration, in_flight: usize) -> String {
    let mut why = format!(
        "k = {k}: median {median:.1?} is {:.2} × (L + T) = {budget:?}, above {LIMIT} ×",
        median.as_secs_f64() / budget.as_secs_f64()
    );
    if k as usize > in_flight {
        why.push_str(&format!(
            "; the editor profile lets {in_flight} edits be in flight (max_in_flight), \
             so {k} candidates edit in {} waves",
            (k as usize).div_ceil(in_flight)
        ));
    }
    why
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// An OpenAI-compatible chat-completions server that answers every
/// critique after a fixed latency, non-streamed.
struct SlowThinker {
    base_url: String,
    calls: Arc<AtomicU32>,
}

impl SlowThinker {
    async fn start(latency: Duration) -> Self {
        let calls = Arc::new(AtomicU32::new(0));
        let router = Router::new()
            .route("/v1/chat/completions", post(critique))
            .with_state((latency, Arc::clone(&calls)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the thinker");
        let addr = listener.local_addr().expect("thinker address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            base_url: format!("http://{addr}/v1"),
            calls,
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// One critique: both images must be there; the scores follow the call
/// number, so neighbouring calls score apart.
async fn critique(
    State((latency, calls)): State<(Duration, Arc<AtomicU32>)>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let images = body["messages"][0]["content"]
        .as_array()
        .map_or(0, |parts| {
            parts.iter().filter(|p| p["type"] == "image_url").count()
        });
    assert_eq!(images, 2, "a critique carries the source and the edit");
    let n = calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(latency).await;
    let content = common::said(2 + n * 3 % 7, 3 + n % 5, "make the sky a deeper purple");
    Json(json!({
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": content},
        }],
    }))
}

/// The loop's steps, recorded nowhere: the bench times the providers and
/// the loop, not storage. (`TurnObserver` is an `async_trait`; this
/// package does not depend on that crate, so its methods are written out.)
struct NoStore;

type Recorded<'a> = Pin<Box<dyn Future<Output = Result<(), ObserverError>> + Send + 'a>>;

fn recorded<'a>() -> Recorded<'a> {
    Box::pin(std::future::ready(Ok(())))
}

impl TurnObserver for NoStore {
    fn turn_edited<'s, 't, 'f>(&'s self, _: &'t TurnRecord) -> Recorded<'f>
    where
        's: 'f,
        't: 'f,
        Self: 'f,
    {
        recorded()
    }

    fn turn_critiqued<'s, 'c, 'f>(&'s self, _: u32, _: &'c CritiqueRecord) -> Recorded<'f>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        recorded()
    }

    fn candidate_edited<'s, 'c, 'f>(&'s self, _: &'c CandidateRecord) -> Recorded<'f>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        recorded()
    }

    fn candidate_critiqued<'s, 'c, 'f>(
        &'s self,
        _: u32,
        _: u32,
        _: &'c CritiqueRecord,
    ) -> Recorded<'f>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        recorded()
    }

    fn turn_chosen<'s, 't, 'c, 'f>(&'s self, _: &'t TurnRecord, _: &'c Choice) -> Recorded<'f>
    where
        's: 'f,
        't: 'f,
        'c: 'f,
        Self: 'f,
    {
        recorded()
    }
}
