//! Benchmark of the `local` thinker: load time, critique latency, token
//! speeds and peak memory.
//!
//! ```text
//! cargo bench -p editthinker-thinker --bench critique            # tiny random model
//! EDITTHINKER_BENCH_MODEL=/models/EditThinker-8B EDITTHINKER_BENCH_DEVICE=cuda \
//!   cargo bench -p editthinker-thinker --features cuda --bench critique
//! ```
//!
//! Settings (environment): `EDITTHINKER_BENCH_MODEL` (model directory or hub
//! id; default: a tiny random-weight Qwen3-VL generated in a temporary
//! directory; the first non-flag argument works too), `EDITTHINKER_BENCH_N`
//! (critiques, default 5), `EDITTHINKER_BENCH_DEVICE` (`cpu`/`cuda`),
//! `EDITTHINKER_BENCH_DTYPE` (default `f32` for the tiny model, else
//! `auto`), `EDITTHINKER_BENCH_ISQ`, `EDITTHINKER_BENCH_MAX_TOKENS` (default
//! 128 for the tiny model, else 1024), `EDITTHINKER_BENCH_GRAMMAR`
//! (`true`/`false`, default true).

use std::time::{Duration, Instant};

use editthinker_core::{CritiqueRequest, Image, NoThinking};
use editthinker_thinker::{LocalSettings, LocalThinker, ThinkerConfig, ThinkerKind};
use image::{DynamicImage, Rgb, RgbImage};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Peak resident memory of this process (`VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn picture(w: u32, h: u32, seed: u8) -> Image {
    let img = RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x as u8).wrapping_add(seed),
            (y as u8).wrapping_mul(3),
            seed,
        ])
    });
    Image::from_pixels(&DynamicImage::ImageRgb8(img))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let arg_model = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let model = env("EDITTHINKER_BENCH_MODEL").or(arg_model);
    let tiny = model.is_none();
    let _tmp;
    let model = match model {
        Some(m) => m,
        None => {
            let dir = tempfile::tempdir().expect("temporary directory");
            editthinker_thinker::tiny_model::write_tiny_qwen3_vl(dir.path())
                .expect("writing the tiny model");
            let path = dir.path().to_str().expect("UTF-8 path").to_string();
            _tmp = dir;
            path
        }
    };
    let n: usize = env("EDITTHINKER_BENCH_N").map_or(5, |v| v.parse().expect("a number"));
    let cfg = ThinkerConfig {
        kind: ThinkerKind::Local,
        model: model.clone(),
        dtype: env("EDITTHINKER_BENCH_DTYPE").or(tiny.then(|| "f32".to_string())),
        device: env("EDITTHINKER_BENCH_DEVICE"),
        isq: env("EDITTHINKER_BENCH_ISQ"),
        grammar: env("EDITTHINKER_BENCH_GRAMMAR").map(|v| v.parse().expect("true or false")),
        max_tokens: env("EDITTHINKER_BENCH_MAX_TOKENS")
            .map_or(if tiny { 128 } else { 1024 }, |v| {
                v.parse().expect("a number")
            }),
        ..ThinkerConfig::default()
    };
    let settings = LocalSettings::from_config(&cfg).expect("valid settings");
    println!(
        "model: {}{}",
        settings.model,
        if tiny { " (tiny random Qwen3-VL)" } else { "" }
    );
    println!(
        "device: {:?}, dtype: {:?}, isq: {}, grammar: {}, max_tokens: {}",
        settings.device,
        settings.dtype,
        settings.isq.as_deref().unwrap_or("none"),
        settings.grammar,
        settings.max_tokens
    );

    let started = Instant::now();
    let thinker = LocalThinker::load(settings).await.expect("model loads");
    println!(
        "load (with warm-up): {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let (source, edited) = (picture(512, 384, 20), picture(512, 384, 140));
    let mut latencies = Vec::with_capacity(n);
    let (mut prompt_tps, mut gen_tps) = (Vec::new(), Vec::new());
    let (mut prompt_tokens, mut gen_tokens) = (0, 0);
    for i in 0..n {
        let request = CritiqueRequest {
            source: &source,
            edited: &edited,
            original_instruction: "replace the red car with a blue bicycle",
            previous_instruction: "replace the red car with a blue bicycle",
            turn: i as u32 + 1,
            history: &[],
            thinking: &NoThinking,
        };
        let t = Instant::now();
        let (_, stats) = thinker
            .critique_with_stats(request)
            .await
            .expect("critique");
        latencies.push(t.elapsed());
        prompt_tps.push(stats.prompt_tok_per_sec);
        gen_tps.push(stats.completion_tok_per_sec);
        prompt_tokens = stats.prompt_tokens;
        gen_tokens = stats.completion_tokens;
    }
    latencies.sort();
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    println!(
        "critiques: {n}, prompt tokens: {prompt_tokens}, generated tokens: {gen_tokens} (last)"
    );
    println!(
        "critique latency: p50 {:.2} s, max {:.2} s",
        percentile(&latencies, 0.5).as_secs_f64(),
        latencies.last().copied().unwrap_or_default().as_secs_f64()
    );
    println!(
        "prompt: {:.0} tok/s, generation: {:.1} tok/s (mean of mistral.rs usage)",
        mean(&prompt_tps),
        mean(&gen_tps)
    );
    match peak_rss_mib() {
        Some(mib) => println!("peak RSS (VmHWM): {mib:.0} MiB"),
        None => println!("peak RSS: unavailable (no /proc/self/status)"),
    }
}
