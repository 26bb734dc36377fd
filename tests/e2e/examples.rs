//! The quick starts under `examples/` load and validate as the binary
//! would load them: every key known, every rule kept, every editor
//! buildable from its section, and the thinker the one each promises.

use std::path::Path;

use editthinker::config::Config;
use editthinker_core::Protocol;
use editthinker_editors::EditorRegistry;
use editthinker_thinker::ThinkerKind;

/// Loads `examples/<name>` as `--config` does.
fn load(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    Config::load(Some(&path)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The editors' names, kinds and models, and which is the default.
fn editors(config: &Config) -> Vec<(String, String, Option<String>, bool)> {
    EditorRegistry::describe(&config.editors)
        .expect("the editors are valid")
        .into_iter()
        .map(|e| (e.name, e.kind, e.model, e.default))
        .collect()
}

/// Checks the thinker's kind, protocol and model.
fn assert_thinker(config: &Config, kind: ThinkerKind, protocol: Protocol, model: &str) {
    let thinker = config.thinker.as_ref().expect("a thinker");
    assert_eq!(
        (thinker.kind, thinker.protocol, thinker.model.as_str()),
        (kind, protocol, model)
    );
}

#[test]
fn the_openai_quick_start_is_one_key_for_both() {
    let config = load("openai.toml");
    assert_thinker(&config, ThinkerKind::Openai, Protocol::Expert, "gpt-4.1");
    let thinker = config.thinker.as_ref().expect("a thinker");
    assert_eq!(thinker.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    assert_eq!(
        editors(&config),
        [(
            "gpt-image".into(),
            "openai".into(),
            Some("gpt-image-1".into()),
            true
        )]
    );
    assert_eq!(
        config.editors["gpt-image"].api_key_env.as_deref(),
        Some("OPENAI_API_KEY")
    );
}

#[test]
fn the_fal_and_vllm_quick_start_runs_the_paper_s_thinker() {
    let config = load("fal-vllm.toml");
    assert_thinker(
        &config,
        ThinkerKind::Openai,
        Protocol::Editthinker,
        "EditThinker-8B",
    );
    assert_eq!(
        editors(&config),
        [
            (
                "fal-kontext".into(),
                "fal".into(),
                Some("fal-ai/flux-pro/kontext".into()),
                true
            ),
            (
                "replicate-kontext".into(),
                "replicate".into(),
                Some("black-forest-labs/flux-kontext-pro".into()),
                false
            ),
        ]
    );
}

#[test]
fn the_gpu_box_quick_start_thinks_in_process() {
    let config = load("gpu-box.toml");
    assert_thinker(
        &config,
        ThinkerKind::Local,
        Protocol::Editthinker,
        "appletea2333/EditThinker-8B",
    );
    assert_eq!(
        editors(&config),
        [("kontext-local".into(), "http".into(), None, true)]
    );
}
