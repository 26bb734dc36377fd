//! The `local` thinker through the real mistral.rs loading and generation
//! path, on a tiny random-weight Qwen3-VL model generated here (CPU, F32).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use editthinker_core::{
    parse_editthinker, CritiqueRequest, Image, NoThinking, Protocol, Thinker, ThinkerAnswer,
    ThinkerError, ThinkingSink,
};
use editthinker_thinker::tiny_model::{
    read_safetensors_index, vocab_size, write_tiny_qwen3_vl, TinyQwen3VlConfig,
};
use editthinker_thinker::{
    build_thinker_async, LocalSettings, LocalThinker, ThinkerConfig, ThinkerKind,
};
use image::{DynamicImage, Rgb, RgbImage};

/// Enough for the grammar's fixed parts even one byte per token.
const MAX_TOKENS: u32 = 128;

/// A short prompt, so debug-build tests prefill a few hundred tokens
/// rather than our full instructions (one test uses those).
const SHORT_PROMPT: &str = "Original instruction: {original_instruction}\n\
Instruction used: {rewritten_prompt}\n\
Score the edit and refine the instruction.";

/// A `[thinker]` section for the tiny model in `dir`, with a short prompt.
fn config(dir: &Path) -> ThinkerConfig {
    let template = dir.join("short_prompt.txt");
    std::fs::write(&template, SHORT_PROMPT).unwrap();
    ThinkerConfig {
        kind: ThinkerKind::Local,
        model: dir.to_str().unwrap().to_string(),
        prompt_template_file: Some(template),
        dtype: Some("f32".into()),
        // scripts/gpu-check runs these tests on the GPU.
        device: Some(std::env::var("EDITTHINKER_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())),
        max_tokens: MAX_TOKENS,
        max_batch: Some(4),
        ..ThinkerConfig::default()
    }
}

fn tiny_model() -> tempfile::TempDir {
    // `RUST_LOG=info` shows mistral.rs's own logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    write_tiny_qwen3_vl(dir.path()).unwrap();
    dir
}

async fn load(cfg: &ThinkerConfig) -> LocalThinker {
    LocalThinker::load(LocalSettings::from_config(cfg).unwrap())
        .await
        .expect("the tiny model loads")
}

fn picture(w: u32, h: u32, seed: u8) -> Image {
    let img = RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x as u8).wrapping_mul(3).wrapping_add(seed),
            (y as u8).wrapping_mul(5),
            seed,
        ])
    });
    Image::from_pixels(&DynamicImage::ImageRgb8(img))
}

fn request<'a>(
    source: &'a Image,
    edited: &'a Image,
    sink: &'a dyn ThinkingSink,
) -> CritiqueRequest<'a> {
    CritiqueRequest {
        source,
        edited,
        original_instruction: "make the sky purple",
        previous_instruction: "make the sky purple",
        turn: 1,
        history: &[],
        thinking: sink,
    }
}

/// Keeps every delta.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl ThinkingSink for Recorder {
    fn delta(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_string());
    }
}

/// The tensors mistral.rs 0.8.1's Qwen3-VL loader reads, written out
/// independently of the generator from `mistralrs-core-0.8.1/src/
/// vision_models/qwen3_vl/{vision,text,mod}.rs` (`vb.pp(...)` paths and
/// `linear` vs `linear_no_bias`), for the default tiny shape: vision depth 2
/// with 2 deepstack mergers, 2 text layers, untied `lm_head`.
fn names_read_by_mistralrs() -> Vec<String> {
    let mut names = vec![
        "model.visual.patch_embed.proj.weight".to_string(), // Conv3dNoBias
        "model.visual.patch_embed.proj.bias".into(),        // added separately
        "model.visual.pos_embed.weight".into(),
    ];
    for i in 0..2 {
        for suffix in [
            "norm1.weight",
            "norm1.bias",
            "norm2.weight",
            "norm2.bias",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "mlp.linear_fc1.weight",
            "mlp.linear_fc1.bias",
            "mlp.linear_fc2.weight",
            "mlp.linear_fc2.bias",
        ] {
            names.push(format!("model.visual.blocks.{i}.{suffix}"));
        }
    }
    let merger = [
        "norm.weight",
        "norm.bias",
        "linear_fc1.weight",
        "linear_fc1.bias",
        "linear_fc2.weight",
        "linear_fc2.bias",
    ];
    for prefix in [
        "model.visual.merger",
        "model.visual.deepstack_merger_list.0",
        "model.visual.deepstack_merger_list.1",
    ] {
        for suffix in merger {
            names.push(format!("{prefix}.{suffix}"));
        }
    }
    names.push("model.language_model.embed_tokens.weight".into());
    for i in 0..2 {
        for suffix in [
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "self_attn.q_norm.weight",
            "self_attn.k_norm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
        ] {
            names.push(format!("model.language_model.layers.{i}.{suffix}"));
        }
    }
    names.push("model.language_model.norm.weight".into());
    names.push("lm_head.weight".into());
    names
}

#[test]
fn tiny_model_has_exactly_the_tensors_mistralrs_reads() {
    let dir = tiny_model();
    let index: BTreeMap<String, Vec<usize>> =
        read_safetensors_index(&dir.path().join("model.safetensors")).unwrap();
    let mut expected = names_read_by_mistralrs();
    expected.sort();
    let written: Vec<String> = index.keys().cloned().collect();
    assert_eq!(written, expected);

    // Shapes the loader checks.
    let cfg = TinyQwen3VlConfig::default();
    let (h, vh) = (cfg.text_hidden, cfg.vision_hidden);
    assert_eq!(
        index["model.visual.patch_embed.proj.weight"],
        [vh, 3, 2, cfg.patch_size, cfg.patch_size]
    );
    assert_eq!(index["model.visual.merger.norm.weight"], [vh]);
    assert_eq!(
        index["model.visual.deepstack_merger_list.0.norm.weight"],
        [vh * 4]
    );
    assert_eq!(index["model.visual.merger.linear_fc2.weight"], [h, vh * 4]);
    assert_eq!(
        index["model.language_model.layers.0.self_attn.k_proj.weight"],
        [cfg.text_kv_heads * cfg.head_dim, h]
    );
    assert_eq!(index["lm_head.weight"], [vocab_size(), h]);
    assert_eq!(
        cfg.mrope_section.iter().sum::<usize>(),
        cfg.head_dim / 2,
        "mrope_section must sum to head_dim / 2"
    );

    // The tokenizer has the tokens mistral.rs's Qwen3-VL code and our
    // grammar look up, at the ids config.json names.
    let tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tokenizer.json")).unwrap()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    let id_of = |content: &str| {
        tokenizer["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["content"] == content)
            .unwrap_or_else(|| panic!("{content} missing"))["id"]
            .clone()
    };
    for token in [
        "<|im_start|>",
        "<|im_end|>",
        "<think>",
        "</think>",
        "<|video_pad|>",
    ] {
        id_of(token);
    }
    assert_eq!(id_of("<|image_pad|>"), config["image_token_id"]);
    assert_eq!(id_of("<|vision_start|>"), config["vision_start_token_id"]);
    assert_eq!(id_of("<|vision_end|>"), config["vision_end_token_id"]);
    let pre: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pre["patch_size"], 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_parse_and_stream() {
    let dir = tiny_model();
    // Our full default prompt, as in production.
    let cfg = ThinkerConfig {
        prompt_template_file: None,
        ..config(dir.path())
    };
    let thinker = build_thinker_async(&cfg).await.expect("loads");
    assert_eq!(thinker.protocol(), Protocol::Editthinker);

    let (source, edited) = (picture(256, 192, 10), picture(256, 192, 90));
    let recorder = Recorder::default();
    let started = std::time::Instant::now();
    let ThinkerAnswer {
        text: answer,
        tokens,
    } = thinker
        .critique(request(&source, &edited, &recorder))
        .await
        .expect("critique");
    eprintln!("critique took {:?}: {answer:?}", started.elapsed());
    // The engine's own counts reach the usage ledger.
    assert!(tokens.input > 0 && tokens.output > 0, "{tokens:?}");

    let critique = parse_editthinker(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    assert!((0.0..=10.0).contains(&critique.semantic.expect("a semantic score")));
    assert!((0.0..=10.0).contains(&critique.quality.expect("a quality score")));

    let deltas = recorder.0.lock().unwrap();
    assert!(deltas.len() > 1, "streamed in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_critiques_share_one_engine() {
    let dir = tiny_model();
    let thinker = load(&config(dir.path())).await;
    let images: Vec<(Image, Image)> = (0..3)
        .map(|i| (picture(128, 96, i * 40), picture(96, 128, i * 40 + 7)))
        .collect();
    let answers = futures::future::join_all(
        images
            .iter()
            .map(|(s, e)| thinker.critique_with_stats(request(s, e, &NoThinking))),
    )
    .await;
    for answer in answers {
        let (text, stats) = answer.expect("critique");
        parse_editthinker(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(stats.prompt_tokens > 0 && stats.completion_tokens > 0);
    }
    assert_eq!(thinker.loads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grammar_off_still_answers() {
    let dir = tiny_model();
    let cfg = ThinkerConfig {
        grammar: Some(false),
        max_tokens: 48,
        ..config(dir.path())
    };
    let thinker = load(&cfg).await;
    let (source, edited) = (picture(64, 64, 1), picture(64, 64, 2));
    let recorder = Recorder::default();
    let answer = thinker
        .critique(request(&source, &edited, &recorder))
        .await
        .expect("critique")
        .text;
    assert_eq!(recorder.0.lock().unwrap().concat(), answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_and_extreme_images_are_padded_not_fatal() {
    let dir = tiny_model();
    let thinker = load(&config(dir.path())).await;
    for (w, h) in [(8, 8), (2000, 8), (8, 2000), (1, 1)] {
        let (source, edited) = (picture(w, h, 3), picture(64, 48, 4));
        let answer = thinker
            .critique(request(&source, &edited, &NoThinking))
            .await
            .unwrap_or_else(|e| panic!("{w}x{h}: {e}"))
            .text;
        parse_editthinker(&answer).unwrap_or_else(|e| panic!("{w}x{h}: {e}: {answer:?}"));
    }
    assert_eq!(thinker.loads(), 1, "the engine never had to be rebuilt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_is_transient_and_rebuilt() {
    let dir = tiny_model();
    let thinker = load(&config(dir.path())).await;
    let (tiny, normal) = (picture(8, 8, 5), picture(64, 64, 6));
    // Unprepared, an 8x8 image crashes mistral.rs's Qwen3-VL preprocessor.
    let err = thinker
        .critique_unprepared(request(&tiny, &normal, &NoThinking))
        .await
        .expect_err("the preprocessor cannot take 8x8");
    assert!(matches!(err, ThinkerError::Transient(_)), "{err:?}");
    assert_eq!(thinker.loads(), 1);

    // The next critique reloads the model and succeeds.
    let answer = thinker
        .critique(request(&normal, &normal, &NoThinking))
        .await
        .expect("critique after the rebuild")
        .text;
    parse_editthinker(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    assert_eq!(thinker.loads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_transient() {
    let dir = tiny_model();
    let mut settings = LocalSettings::from_config(&config(dir.path())).unwrap();
    settings.timeout = Duration::from_millis(1);
    let thinker = LocalThinker::load(settings).await.expect("loads");
    let (source, edited) = (picture(64, 64, 7), picture(64, 64, 8));
    let err = thinker
        .critique(request(&source, &edited, &NoThinking))
        .await
        .expect_err("1 ms is too short");
    match err {
        ThinkerError::Transient(m) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_errors_name_the_model_key() {
    let dir = tempfile::tempdir().unwrap();
    // A directory with a config.json but no weights or tokenizer.
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let err = build_thinker_async(&config(dir.path()))
        .await
        .map(|_| ())
        .expect_err("nothing to load");
    assert_eq!(err.key(), "thinker.model", "{err}");
}
