//! A tiny random-weight Qwen3-VL model directory, **for tests and
//! benchmarks only**: it has EditThinker-8B's architecture
//! (`Qwen3VLForConditionalGeneration`, the same tensor names, tokenizer
//! tokens and chat format) at a few hundred kilobytes, so the real
//! mistral.rs loading and generation path can run on a CPU in seconds. Its
//! answers are noise; with the output grammar they still have the
//! EditThinker form.
//!
//! [`write_tiny_qwen3_vl`] writes `config.json`, `model.safetensors` (F32,
//! deterministic seeded weights), a byte-level BPE `tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja`, `preprocessor_config.json`
//! and `generation_config.json`. Nothing is downloaded.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde_json::{json, Value};

/// Shape of the tiny model. The defaults are what [`write_tiny_qwen3_vl`]
/// writes; they satisfy mistral.rs's Qwen3-VL loader (text
/// `mrope_section` sums to `head_dim / 2`, vision `hidden_size / num_heads`
/// divisible by 4, `temporal_patch_size` 2, `num_position_embeddings` a
/// perfect square).
#[derive(Debug, Clone, PartialEq)]
pub struct TinyQwen3VlConfig {
    /// Text model width.
    pub text_hidden: usize,
    /// Text MLP width.
    pub text_intermediate: usize,
    /// Decoder layers.
    pub text_layers: usize,
    /// Attention heads.
    pub text_heads: usize,
    /// Key/value heads.
    pub text_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Multimodal RoPE sections (temporal, height, width); sum = `head_dim / 2`.
    pub mrope_section: [usize; 3],
    /// Longest context.
    pub max_position_embeddings: usize,
    /// Vision transformer width.
    pub vision_hidden: usize,
    /// Vision MLP width.
    pub vision_intermediate: usize,
    /// Vision blocks.
    pub vision_depth: usize,
    /// Vision attention heads.
    pub vision_heads: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Patches merged per side into one token.
    pub spatial_merge_size: usize,
    /// Learned position embeddings of the vision tower (a perfect square).
    pub num_position_embeddings: usize,
    /// Vision blocks whose outputs are injected into the first text layers.
    pub deepstack_visual_indexes: Vec<usize>,
    /// Largest image area, in pixels, the preprocessor resizes to.
    pub max_pixels: usize,
    /// Smallest image area, in pixels, the preprocessor resizes to.
    pub min_pixels: usize,
    /// Seed of the weights.
    pub seed: u64,
}

impl Default for TinyQwen3VlConfig {
    fn default() -> Self {
        Self {
            text_hidden: 64,
            text_intermediate: 128,
            text_layers: 2,
            text_heads: 4,
            text_kv_heads: 2,
            head_dim: 16,
            mrope_section: [4, 2, 2],
            max_position_embeddings: 8192,
            vision_hidden: 32,
            vision_intermediate: 64,
            vision_depth: 2,
            vision_heads: 2,
            patch_size: 16,
            spatial_merge_size: 2,
            num_position_embeddings: 256,
            deepstack_visual_indexes: vec![0, 1],
            // 256x256 at most (64 image tokens per image). Not less: the
            // preprocessor scales images above this area down, and a
            // 1024x32 image (the widest our padding produces for the
            // default max_image_edge) must keep a 32 px side.
            max_pixels: 256 * 256,
            min_pixels: 32 * 32,
            seed: 0x5eed_ed17_7411_4e25,
        }
    }
}

/// Byte-level vocabulary size (one token per byte).
const BYTE_TOKENS: usize = 256;

/// Added tokens of the Qwen3-VL tokenizer that mistral.rs and our prompt
/// rely on, in id order after the byte tokens, with their `special` flag as
/// in the real tokenizer (`<think>`/`</think>` are not special there).
pub const ADDED_TOKENS: &[(&str, bool)] = &[
    ("<|endoftext|>", true),
    ("<|im_start|>", true),
    ("<|im_end|>", true),
    ("<|vision_start|>", true),
    ("<|vision_end|>", true),
    ("<|image_pad|>", true),
    ("<|video_pad|>", true),
    ("<|placeholder|>", true),
    ("<think>", false),
    ("</think>", false),
];

/// Id of an added token in the tiny tokenizer.
fn added_id(content: &str) -> usize {
    BYTE_TOKENS
        + ADDED_TOKENS
            .iter()
            .position(|(c, _)| *c == content)
            .expect("known added token")
}

/// Total number of tokens (and rows of the embedding and LM head).
pub fn vocab_size() -> usize {
    BYTE_TOKENS + ADDED_TOKENS.len()
}

/// Chat template: Qwen's `<|im_start|>role ... <|im_end|>` format, with each
/// image part rendered as `<|vision_start|><|image_pad|><|vision_end|>` (what
/// mistral.rs's Qwen3-VL processor expands). It deliberately does not
/// mention the think tags, so mistral.rs does not split reasoning out of the
/// content (EditThinker-8B's own template decides that for the real model).
pub const CHAT_TEMPLATE: &str = "{%- for message in messages -%}\
<|im_start|>{{ message['role'] }}\n\
{%- if message['content'] is string -%}{{ message['content'] }}\
{%- else -%}{%- for part in message['content'] -%}\
{%- if part['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>\
{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}\
{%- endfor -%}{%- endif -%}<|im_end|>\n\
{%- endfor -%}\
{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}";

/// Writes the tiny model with the default shape into `dir` (created if
/// missing). For tests and benchmarks: the weights are random.
pub fn write_tiny_qwen3_vl(dir: &Path) -> io::Result<()> {
    write_tiny_qwen3_vl_with(dir, &TinyQwen3VlConfig::default())
}

/// Writes a tiny model of shape `cfg` into `dir` (created if missing).
pub fn write_tiny_qwen3_vl_with(dir: &Path, cfg: &TinyQwen3VlConfig) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).expect("JSON values serialize");
    std::fs::write(dir.join("config.json"), pretty(&model_config(cfg)))?;
    std::fs::write(dir.join("tokenizer.json"), pretty(&tokenizer_json()))?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        pretty(&json!({
            "tokenizer_class": "Qwen2Tokenizer",
            "add_bos_token": false,
            "add_prefix_space": false,
            "bos_token": null,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": null,
            "model_max_length": cfg.max_position_embeddings,
            "clean_up_tokenization_spaces": false,
        })),
    )?;
    std::fs::write(dir.join("chat_template.jinja"), CHAT_TEMPLATE)?;
    std::fs::write(
        dir.join("preprocessor_config.json"),
        pretty(&json!({
            "image_processor_type": "Qwen2VLImageProcessorFast",
            "processor_class": "Qwen3VLProcessor",
            "patch_size": cfg.patch_size,
            "temporal_patch_size": 2,
            "merge_size": cfg.spatial_merge_size,
            "min_pixels": cfg.min_pixels,
            "max_pixels": cfg.max_pixels,
            "do_resize": true,
            "do_rescale": true,
            "rescale_factor": 1.0 / 255.0,
            "do_normalize": true,
            "do_convert_rgb": true,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        })),
    )?;
    std::fs::write(
        dir.join("generation_config.json"),
        pretty(&json!({
            "eos_token_id": [added_id("<|im_end|>"), added_id("<|endoftext|>")],
            "pad_token_id": added_id("<|endoftext|>"),
        })),
    )?;
    let tensors = random_tensors(cfg);
    std::fs::write(dir.join("model.safetensors"), safetensors_bytes(&tensors))?;
    Ok(())
}

/// `config.json` in the Hugging Face Qwen3-VL layout.
fn model_config(cfg: &TinyQwen3VlConfig) -> Value {
    json!({
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": added_id("<|image_pad|>"),
        "video_token_id": added_id("<|video_pad|>"),
        "vision_start_token_id": added_id("<|vision_start|>"),
        "vision_end_token_id": added_id("<|vision_end|>"),
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "qwen3_vl_text",
            "vocab_size": vocab_size(),
            "hidden_size": cfg.text_hidden,
            "intermediate_size": cfg.text_intermediate,
            "num_hidden_layers": cfg.text_layers,
            "num_attention_heads": cfg.text_heads,
            "num_key_value_heads": cfg.text_kv_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": cfg.max_position_embeddings,
            "rms_norm_eps": 1e-6,
            "rope_theta": 5_000_000.0,
            "rope_scaling": {
                "rope_type": "default",
                "mrope_interleaved": true,
                "mrope_section": cfg.mrope_section,
            },
            "sliding_window": null,
            "attention_bias": false,
            "bos_token_id": added_id("<|endoftext|>"),
            "eos_token_id": added_id("<|im_end|>"),
            "tie_word_embeddings": false,
            "torch_dtype": "float32",
        },
        "vision_config": {
            "model_type": "qwen3_vl",
            "depth": cfg.vision_depth,
            "hidden_size": cfg.vision_hidden,
            "hidden_act": "gelu_pytorch_tanh",
            "intermediate_size": cfg.vision_intermediate,
            "num_heads": cfg.vision_heads,
            "in_channels": 3,
            "patch_size": cfg.patch_size,
            "spatial_merge_size": cfg.spatial_merge_size,
            "temporal_patch_size": 2,
            "out_hidden_size": cfg.text_hidden,
            "num_position_embeddings": cfg.num_position_embeddings,
            "deepstack_visual_indexes": cfg.deepstack_visual_indexes,
        },
    })
}

/// GPT-2's byte-to-character map used by byte-level BPE vocabularies.
fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("valid code point")
}

/// A byte-level BPE `tokenizer.json` with no merges (one token per byte)
/// plus [`ADDED_TOKENS`]. The decoder is ByteLevel, which the grammar
/// engine (llguidance) needs to map tokens to bytes.
fn tokenizer_json() -> Value {
    let vocab: serde_json::Map<String, Value> = (0..=255u8)
        .map(|b| (byte_to_char(b).to_string(), json!(b as usize)))
        .collect();
    let added: Vec<Value> = ADDED_TOKENS
        .iter()
        .map(|(content, special)| {
            json!({
                "id": added_id(content),
                "content": content,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": special,
            })
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": false,
            "use_regex": true,
        },
        "post_processor": null,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": false,
            "use_regex": true,
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": [],
        },
    })
}

/// What a tensor is initialised to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    /// Uniform in ±1/sqrt(fan_in), fan_in being the product of all but the
    /// first dimension.
    Fan,
    /// Uniform in ±0.02 (embeddings).
    Small,
    /// All ones (norm scales).
    Ones,
    /// All zeros (biases, norm shifts).
    Zeros,
}

/// The name and shape of every tensor mistral.rs 0.8.1's Qwen3-VL loader
/// reads for `cfg` (Hugging Face naming: `model.visual.*`,
/// `model.language_model.*`, `lm_head.weight`), in a fixed order.
///
/// Derived from `mistralrs-core` 0.8.1 `vision_models/qwen3_vl/{vision,text,
/// mod}.rs`: vision linears and layer norms carry biases, text projections
/// do not, attention has per-head `q_norm`/`k_norm`, the main merger's norm
/// has the vision width and the deepstack mergers' norms the merged width,
/// and `lm_head` is separate because `tie_word_embeddings` is false.
pub fn expected_tensors(cfg: &TinyQwen3VlConfig) -> Vec<(String, Vec<usize>)> {
    declared_tensors(cfg)
        .into_iter()
        .map(|(name, shape, _)| (name, shape))
        .collect()
}

/// [`expected_tensors`] with each tensor's initialisation.
fn declared_tensors(cfg: &TinyQwen3VlConfig) -> Vec<(String, Vec<usize>, Init)> {
    let mut out: Vec<(String, Vec<usize>, Init)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, init: Init| out.push((name, shape, init));

    let v = "model.visual";
    let (vh, vi) = (cfg.vision_hidden, cfg.vision_intermediate);
    let merged = vh * cfg.spatial_merge_size * cfg.spatial_merge_size;
    let p = cfg.patch_size;
    add(
        format!("{v}.patch_embed.proj.weight"),
        vec![vh, 3, 2, p, p],
        Init::Fan,
    );
    add(format!("{v}.patch_embed.proj.bias"), vec![vh], Init::Zeros);
    add(
        format!("{v}.pos_embed.weight"),
        vec![cfg.num_position_embeddings, vh],
        Init::Small,
    );
    for i in 0..cfg.vision_depth {
        let b = format!("{v}.blocks.{i}");
        for norm in ["norm1", "norm2"] {
            add(format!("{b}.{norm}.weight"), vec![vh], Init::Ones);
            add(format!("{b}.{norm}.bias"), vec![vh], Init::Zeros);
        }
        add(format!("{b}.attn.qkv.weight"), vec![3 * vh, vh], Init::Fan);
        add(format!("{b}.attn.qkv.bias"), vec![3 * vh], Init::Zeros);
        add(format!("{b}.attn.proj.weight"), vec![vh, vh], Init::Fan);
        add(format!("{b}.attn.proj.bias"), vec![vh], Init::Zeros);
        add(
            format!("{b}.mlp.linear_fc1.weight"),
            vec![vi, vh],
            Init::Fan,
        );
        add(format!("{b}.mlp.linear_fc1.bias"), vec![vi], Init::Zeros);
        add(
            format!("{b}.mlp.linear_fc2.weight"),
            vec![vh, vi],
            Init::Fan,
        );
        add(format!("{b}.mlp.linear_fc2.bias"), vec![vh], Init::Zeros);
    }
    let mergers = std::iter::once((format!("{v}.merger"), vh)).chain(
        (0..cfg.deepstack_visual_indexes.len())
            .map(|j| (format!("{v}.deepstack_merger_list.{j}"), merged)),
    );
    for (m, norm_dim) in mergers {
        add(format!("{m}.norm.weight"), vec![norm_dim], Init::Ones);
        add(format!("{m}.norm.bias"), vec![norm_dim], Init::Zeros);
        add(
            format!("{m}.linear_fc1.weight"),
            vec![merged, merged],
            Init::Fan,
        );
        add(format!("{m}.linear_fc1.bias"), vec![merged], Init::Zeros);
        add(
            format!("{m}.linear_fc2.weight"),
            vec![cfg.text_hidden, merged],
            Init::Fan,
        );
        add(
            format!("{m}.linear_fc2.bias"),
            vec![cfg.text_hidden],
            Init::Zeros,
        );
    }

    let t = "model.language_model";
    let (h, inter, hd) = (cfg.text_hidden, cfg.text_intermediate, cfg.head_dim);
    let (q_out, kv_out) = (cfg.text_heads * hd, cfg.text_kv_heads * hd);
    add(
        format!("{t}.embed_tokens.weight"),
        vec![vocab_size(), h],
        Init::Small,
    );
    for i in 0..cfg.text_layers {
        let l = format!("{t}.layers.{i}");
        add(
            format!("{l}.self_attn.q_proj.weight"),
            vec![q_out, h],
            Init::Fan,
        );
        add(
            format!("{l}.self_attn.k_proj.weight"),
            vec![kv_out, h],
            Init::Fan,
        );
        add(
            format!("{l}.self_attn.v_proj.weight"),
            vec![kv_out, h],
            Init::Fan,
        );
        add(
            format!("{l}.self_attn.o_proj.weight"),
            vec![h, q_out],
            Init::Fan,
        );
        add(format!("{l}.self_attn.q_norm.weight"), vec![hd], Init::Ones);
        add(format!("{l}.self_attn.k_norm.weight"), vec![hd], Init::Ones);
        add(
            format!("{l}.mlp.gate_proj.weight"),
            vec![inter, h],
            Init::Fan,
        );
        add(format!("{l}.mlp.up_proj.weight"), vec![inter, h], Init::Fan);
        add(
            format!("{l}.mlp.down_proj.weight"),
            vec![h, inter],
            Init::Fan,
        );
        add(format!("{l}.input_layernorm.weight"), vec![h], Init::Ones);
        add(
            format!("{l}.post_attention_layernorm.weight"),
            vec![h],
            Init::Ones,
        );
    }
    add(format!("{t}.norm.weight"), vec![h], Init::Ones);
    add("lm_head.weight".into(), vec![vocab_size(), h], Init::Fan);

    out
}

/// SplitMix64: a tiny, stable PRNG, so the weights never change with a
/// dependency upgrade.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn next_signed_unit(&mut self) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        unit * 2.0 - 1.0
    }
}

/// Every tensor of [`expected_tensors`] filled with seeded values.
fn random_tensors(cfg: &TinyQwen3VlConfig) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = SplitMix64(cfg.seed);
    declared_tensors(cfg)
        .into_iter()
        .map(|(name, shape, init)| {
            let n: usize = shape.iter().product();
            let values = match init {
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
                Init::Small => (0..n).map(|_| 0.02 * rng.next_signed_unit()).collect(),
                Init::Fan => {
                    let fan_in: usize = shape[1..].iter().product();
                    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                    (0..n).map(|_| bound * rng.next_signed_unit()).collect()
                }
            };
            (name, (shape, values))
        })
        .collect()
}

/// The safetensors encoding: an 8-byte little-endian header length, a JSON
/// header of `name -> {dtype, shape, data_offsets}`, then the raw data.
fn safetensors_bytes(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, (shape, values)) in tensors {
        let len = values.len() * 4;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut header = serde_json::to_vec(&Value::Object(header)).expect("JSON serializes");
    // Pad the header with spaces so the data starts 8-byte aligned.
    let pad = (8 - header.len() % 8) % 8;
    header.resize(header.len() + pad, b' ');
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    for (_, values) in tensors.values() {
        for v in values {
            out.extend(v.to_le_bytes());
        }
    }
    out
}

/// The tensor names and shapes stored in a safetensors file.
pub fn read_safetensors_index(path: &Path) -> io::Result<BTreeMap<String, Vec<usize>>> {
    let bytes = std::fs::read(path)?;
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let len = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or_else(|| bad("short file"))?
            .try_into()
            .expect("8 bytes"),
    ) as usize;
    let header: Value = serde_json::from_slice(
        bytes
            .get(8..8 + len)
            .ok_or_else(|| bad("truncated header"))?,
    )
    .map_err(|e| bad(&e.to_string()))?;
    let object = header
        .as_object()
        .ok_or_else(|| bad("header not an object"))?;
    object
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .map(|(name, info)| {
            let shape = info["shape"]
                .as_array()
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize).ok_or_else(|| bad("bad dim")))
                .collect::<io::Result<Vec<_>>>()?;
            Ok((name.clone(), shape))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_onto_gpt2_chars() {
        let chars: std::collections::BTreeSet<char> = (0..=255u8).map(byte_to_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(b' '), '\u{120}'); // "Ġ"
        assert_eq!(byte_to_char(b'\n'), '\u{10a}'); // "Ċ"
    }

    #[test]
    fn written_directory_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_qwen3_vl(dir.path()).unwrap();
        let index = read_safetensors_index(&dir.path().join("model.safetensors")).unwrap();
        let expected: BTreeMap<String, Vec<usize>> =
            expected_tensors(&TinyQwen3VlConfig::default())
                .into_iter()
                .collect();
        assert_eq!(index, expected);
        // Deterministic: a second write gives the same bytes.
        let again = tempfile::tempdir().unwrap();
        write_tiny_qwen3_vl(again.path()).unwrap();
        for file in ["model.safetensors", "tokenizer.json", "config.json"] {
            assert_eq!(
                std::fs::read(dir.path().join(file)).unwrap(),
                std::fs::read(again.path().join(file)).unwrap(),
                "{file}"
            );
        }
    }
}
