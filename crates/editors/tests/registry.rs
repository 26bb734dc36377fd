//! Parsing `[editors.<name>]` tables and validating them into a registry.

mod support;

use std::collections::BTreeMap;

use editthinker_editors::{
    EditorConfigError, EditorInfo, EditorKind, EditorProfile, EditorRegistry,
};
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    editors: BTreeMap<String, EditorProfile>,
}

/// Parses like the service does (figment over TOML); errors as text.
fn parse(toml: &str) -> Result<BTreeMap<String, EditorProfile>, String> {
    Figment::from(Toml::string(toml))
        .extract::<Config>()
        .map(|c| c.editors)
        .map_err(|e| e.to_string())
}

fn registry(toml: &str) -> Result<EditorRegistry, EditorConfigError> {
    EditorRegistry::from_config(&parse(toml).unwrap())
}

fn error(toml: &str) -> String {
    registry(toml).unwrap_err().to_string()
}

#[test]
fn a_full_profile_parses_and_omitted_settings_get_defaults() {
    let editors = parse(
        r#"
        [editors.kontext]
        kind = "http"
        urls = ["http://10.0.0.1:8005", "http://10.0.0.2:8005"]
        model = "FLUX.1-Kontext-dev"
        default = true
        timeout_seconds = 120
        params = { num_inference_steps = 28, guidance_scale = 2.5, seed = 42 }

        [editors.qwen]
        kind = "http"
        url = "https://qwen.internal"
        "#,
    )
    .unwrap();
    let k = &editors["kontext"];
    assert_eq!(k.kind, EditorKind::Http);
    assert_eq!(k.urls.as_ref().unwrap().len(), 2);
    assert_eq!(k.timeout_seconds, 120.0);
    assert_eq!(k.params["num_inference_steps"], 28);
    assert_eq!(k.params["guidance_scale"], 2.5);
    let q = &editors["qwen"];
    assert_eq!(q, &{
        let mut p = EditorProfile::new(EditorKind::Http);
        p.url = Some("https://qwen.internal".into());
        p
    });
    assert_eq!(
        (q.timeout_seconds, q.connect_timeout_seconds, q.max_retries),
        (300.0, 10.0, 3)
    );
    assert_eq!(
        (q.retry_base_ms, q.effective_max_in_flight(), q.multiple_of),
        (500, 4, 16)
    );
}

#[test]
fn retry_ambiguous_and_max_instruction_chars_parse_with_defaults_per_kind() {
    std::env::set_var("REGISTRY_TEST_RETRY_KEY", "k");
    let editors = parse(
        r#"
        [editors.local]
        kind = "http"
        url = "http://h"
        retry_ambiguous = false
        max_instruction_chars = 1200
        default = true

        [editors.paid]
        kind = "fal"
        api_key_env = "REGISTRY_TEST_RETRY_KEY"
        "#,
    )
    .unwrap();
    let (local, paid) = (&editors["local"], &editors["paid"]);
    assert_eq!(local.retry_ambiguous, Some(false));
    assert!(!local.effective_retry_ambiguous());
    assert_eq!(local.effective_max_instruction_chars("local"), Ok(1200));
    assert_eq!(paid.retry_ambiguous, None);
    assert!(
        !paid.effective_retry_ambiguous(),
        "paid kinds never resend by default"
    );
    assert!(EditorProfile::new(EditorKind::Http).effective_retry_ambiguous());
    assert_eq!(paid.effective_max_instruction_chars("paid"), Ok(2000));

    let r = EditorRegistry::from_config(&editors).unwrap();
    assert_eq!(r.get("local").unwrap().max_instruction_chars(), 1200);
    assert_eq!(r.get("paid").unwrap().max_instruction_chars(), 2000);
    for (kind, chars) in [
        (EditorKind::Http, 2000),
        (EditorKind::Openai, 32_000),
        (EditorKind::Bfl, 2000),
        (EditorKind::Fal, 2000),
        (EditorKind::Replicate, 2000),
        (EditorKind::Gemini, 2000),
        (EditorKind::Dashscope, 800),
    ] {
        assert_eq!(kind.default_max_instruction_chars(), chars, "{kind}");
    }

    let err = parse("[editors.a]\nkind = \"http\"\nurl = \"http://h\"\nretry_ambiguos = true\n")
        .unwrap_err();
    assert!(err.contains("retry_ambiguos"), "{err}");
}

#[test]
fn unknown_fields_and_kinds_are_rejected_when_parsing() {
    let err = parse("[editors.a]\nkind = \"http\"\nurl = \"http://h\"\nstep = 3\n").unwrap_err();
    assert!(err.contains("step"), "{err}");
    let err = parse("[editors.a]\nkind = \"dalle\"\n").unwrap_err();
    assert!(err.contains("dalle"), "{err}");
}

#[test]
fn the_registry_lists_editors_and_the_default() {
    let r = registry(
        r#"
        [editors.kontext]
        kind = "http"
        url = "http://127.0.0.1:8005"
        model = "FLUX.1-Kontext-dev"
        default = true

        [editors.qwen]
        kind = "http"
        url = "http://127.0.0.1:8006"
        "#,
    )
    .unwrap();
    assert_eq!(r.default_name(), Some("kontext"));
    assert_eq!(r.names(), ["kontext", "qwen"]);
    assert!(r.get("qwen").is_some() && r.get("nope").is_none());
    assert_eq!(
        r.infos(),
        [
            EditorInfo {
                name: "kontext".into(),
                kind: "http".into(),
                model: Some("FLUX.1-Kontext-dev".into()),
                default: true,
            },
            EditorInfo {
                name: "qwen".into(),
                kind: "http".into(),
                model: None,
                default: false,
            },
        ]
    );
    let json = serde_json::to_value(&r.infos()[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"name": "kontext", "kind": "http", "model": "FLUX.1-Kontext-dev", "default": true})
    );
}

#[tokio::test]
async fn editors_from_the_registry_call_their_server() {
    let server = support::FakeEditor::ok().await;
    let r = registry(&format!(
        "[editors.only]\nkind = \"http\"\nurl = \"{}\"\n",
        server.url
    ))
    .unwrap();
    assert_eq!(
        r.default_name(),
        Some("only"),
        "a lone editor is the default"
    );
    assert!(r.infos()[0].default);
    let src = support::source(40, 40);
    let out = support::edit_prompt(&*r.get("only").unwrap(), &src, "x")
        .await
        .unwrap();
    assert_eq!((out.width, out.height), (32, 32));
}

#[test]
fn an_empty_registry_is_valid() {
    let r = registry("").unwrap();
    assert!(r.is_empty());
    assert_eq!(r.default_name(), None);
    assert!(r.infos().is_empty());
}

#[test]
fn two_defaults_are_an_error() {
    let err = error(
        r#"
        [editors.a]
        kind = "http"
        url = "http://h"
        default = true
        [editors.b]
        kind = "http"
        url = "http://h"
        default = true
        "#,
    );
    assert!(err.contains("several default editors (a, b)"), "{err}");
}

#[test]
fn several_editors_and_no_default_is_an_error() {
    let err = error(
        r#"
        [editors.a]
        kind = "http"
        url = "http://h"
        [editors.b]
        kind = "http"
        url = "http://h"
        "#,
    );
    assert_eq!(
        err,
        "no default editor: mark one [editors.<name>] with default = true"
    );
}

#[test]
fn bad_urls_name_their_key() {
    for (urls, key) in [
        ("url = \"not a url\"", "editors.kontext.url: "),
        ("url = \"ftp://h/x\"", "editors.kontext.url: "),
        ("url = \"http://\"", "editors.kontext.url: "),
        (
            "urls = [\"http://ok\", \"file:///x\"]",
            "editors.kontext.urls[1]: ",
        ),
        ("urls = []", "editors.kontext.urls: "),
        ("", "editors.kontext.url: missing"),
        (
            "url = \"http://a\"\nurls = [\"http://b\"]",
            "editors.kontext.url: ",
        ),
    ] {
        let err = error(&format!("[editors.kontext]\nkind = \"http\"\n{urls}\n"));
        assert!(err.starts_with(key), "{urls}: {err}");
    }
}

#[test]
fn a_missing_or_empty_api_key_variable_is_an_error() {
    std::env::remove_var("EDITORS_TEST_UNSET_KEY");
    let err = error(
        "[editors.k]\nkind = \"http\"\nurl = \"http://h\"\napi_key_env = \"EDITORS_TEST_UNSET_KEY\"\n",
    );
    assert_eq!(
        err,
        "editors.k.api_key_env: environment variable EDITORS_TEST_UNSET_KEY is not set or empty"
    );
    std::env::set_var("EDITORS_TEST_EMPTY_KEY", " ");
    let err = error(
        "[editors.k]\nkind = \"http\"\nurl = \"http://h\"\napi_key_env = \"EDITORS_TEST_EMPTY_KEY\"\n",
    );
    assert!(err.contains("EDITORS_TEST_EMPTY_KEY"), "{err}");
}

#[test]
fn asynchronous_kinds_parse_build_and_show_their_effective_model() {
    std::env::set_var("REGISTRY_TEST_ASYNC_KEY", "k");
    let toml = r#"
        [editors.kontext]
        kind = "bfl"
        api_key_env = "REGISTRY_TEST_ASYNC_KEY"
        aspect_ratio = "16:9"
        safety_tolerance = 2
        prompt_upsampling = false
        output_format = "png"
        poll_interval_ms = 500
        default = true

        [editors.qwen]
        kind = "fal"
        model = "fal-ai/qwen-image-edit"
        api_key_env = "REGISTRY_TEST_ASYNC_KEY"
        guidance_scale = 4.0
        num_inference_steps = 30
        seed = 1

        [editors.dev]
        kind = "replicate"
        model = "black-forest-labs/flux-kontext-dev"
        api_key_env = "REGISTRY_TEST_ASYNC_KEY"
        input = { guidance = 2.5, go_fast = true }
        max_in_flight = 2
        "#;
    let editors = parse(toml).unwrap();
    assert_eq!(editors["kontext"].poll_interval_ms, Some(500));
    assert_eq!(editors["kontext"].effective_max_in_flight(), 24);
    assert_eq!(editors["qwen"].effective_max_in_flight(), 10);
    assert_eq!(editors["dev"].effective_max_in_flight(), 2, "explicit wins");
    assert_eq!(editors["dev"].input["guidance"], 2.5);
    let r = registry(toml).unwrap();
    let shown: Vec<(String, String, Option<String>)> = r
        .infos()
        .into_iter()
        .map(|i| (i.name, i.kind, i.model))
        .collect();
    assert_eq!(
        shown,
        [
            (
                "dev".into(),
                "replicate".into(),
                Some("black-forest-labs/flux-kontext-dev".into())
            ),
            (
                "kontext".into(),
                "bfl".into(),
                Some("flux-kontext-pro".into())
            ),
            (
                "qwen".into(),
                "fal".into(),
                Some("fal-ai/qwen-image-edit".into())
            ),
        ]
    );
    assert_eq!(r.default_name(), Some("kontext"));
    let err = error(
        "[editors.e]\nkind = \"bfl\"\napi_key_env = \"REGISTRY_TEST_ASYNC_KEY\"\nnum_inference_steps = 4\n",
    );
    assert_eq!(
        err,
        "editors.e.num_inference_steps: not used by the bfl kind"
    );
}

#[test]
fn limits_are_validated() {
    for (setting, key) in [
        ("max_in_flight = 0", "editors.e.max_in_flight"),
        (
            "max_instruction_chars = 0",
            "editors.e.max_instruction_chars",
        ),
        ("multiple_of = 0", "editors.e.multiple_of"),
        ("timeout_seconds = 0", "editors.e.timeout_seconds"),
        (
            "connect_timeout_seconds = -1",
            "editors.e.connect_timeout_seconds",
        ),
        ("params = { prompt = \"x\" }", "editors.e.params"),
    ] {
        let err = error(&format!(
            "[editors.e]\nkind = \"http\"\nurl = \"http://h\"\n{setting}\n"
        ));
        assert!(err.starts_with(key), "{setting}: {err}");
    }
}

#[test]
fn hosted_kinds_build_and_show_their_effective_model() {
    std::env::set_var("REGISTRY_TEST_HOSTED_KEY", "k");
    let r = registry(
        r#"
        [editors.gpt]
        kind = "openai"
        api_key_env = "REGISTRY_TEST_HOSTED_KEY"
        quality = "high"
        default = true

        [editors.nano]
        kind = "gemini"
        api_key_env = "REGISTRY_TEST_HOSTED_KEY"
        seed = 3

        [editors.qwen]
        kind = "dashscope"
        base_url = "https://dashscope.aliyuncs.com/api/v1"
        model = "qwen-image-edit-plus"
        api_key_env = "REGISTRY_TEST_HOSTED_KEY"
        negative_prompt = "blur"
        "#,
    )
    .unwrap();
    let shown: Vec<(String, String, Option<String>)> = r
        .infos()
        .into_iter()
        .map(|i| (i.name, i.kind, i.model))
        .collect();
    assert_eq!(
        shown,
        [
            ("gpt".into(), "openai".into(), Some("gpt-image-1".into())),
            (
                "nano".into(),
                "gemini".into(),
                Some("gemini-2.5-flash-image".into())
            ),
            (
                "qwen".into(),
                "dashscope".into(),
                Some("qwen-image-edit-plus".into())
            ),
        ]
    );
    assert_eq!(r.default_name(), Some("gpt"));
}

#[test]
fn hosted_kinds_require_a_key_and_reject_settings_they_do_not_use() {
    for kind in ["openai", "gemini", "dashscope", "bfl", "fal", "replicate"] {
        let err = error(&format!("[editors.e]\nkind = \"{kind}\"\n"));
        assert!(
            err.starts_with("editors.e.api_key_env: missing"),
            "{kind}: {err}"
        );
    }
    std::env::set_var("REGISTRY_TEST_MISPLACED_KEY", "k");
    for (kind, setting, key) in [
        ("openai", "url = \"http://h\"", "editors.e.url: "),
        ("openai", "seed = 1", "editors.e.seed: "),
        ("gemini", "params = { a = 1 }", "editors.e.params: "),
        (
            "dashscope",
            "base_url = \"ftp://h\"",
            "editors.e.base_url: ",
        ),
        (
            "http",
            "url = \"http://h\"\nbase_url = \"http://h\"",
            "editors.e.base_url: ",
        ),
    ] {
        let err = error(&format!(
            "[editors.e]\nkind = \"{kind}\"\napi_key_env = \"REGISTRY_TEST_MISPLACED_KEY\"\n{setting}\n"
        ));
        assert!(err.starts_with(key), "{kind} {setting}: {err}");
    }
    let err = parse("[editors.e]\nkind = \"openai\"\nsede = 1\n").unwrap_err();
    assert!(err.contains("sede"), "unknown fields stay rejected: {err}");
}

#[tokio::test]
async fn sandbox_profiles_parse_build_and_edit_without_a_server() {
    let toml = r#"
        [editors.s]
        kind = "sandbox"
        seed = 42
        latency_ms = 0
        refusal_rate = 0.0
        rate_limit_rate = 0.25
        timeout_rate = 0.0
        max_retries = 0
        default = true

        [editors.plain]
        kind = "sandbox"
        "#;
    let editors = parse(toml).unwrap();
    let s = &editors["s"];
    assert_eq!(s.kind, EditorKind::Sandbox);
    assert!(s.kind.is_sandbox() && !s.kind.is_async());
    assert_eq!(
        (s.seed, s.latency_ms, s.rate_limit_rate, s.refusal_rate),
        (Some(42), Some(0), Some(0.25), Some(0.0))
    );
    let plain = &editors["plain"];
    assert_eq!((plain.latency_ms, plain.timeout_rate), (None, None));
    assert_eq!(plain.effective_max_in_flight(), 16);
    assert!(!plain.effective_retry_ambiguous(), "simulates a paid kind");
    let r = registry(toml).unwrap();
    assert_eq!(
        r.infos()[1],
        EditorInfo {
            name: "s".into(),
            kind: "sandbox".into(),
            model: Some("sandbox".into()),
            default: true,
        }
    );
    let editor = r.get("plain").unwrap();
    assert_eq!(editor.probe().await, Some(Ok(())));
    let src = support::source(64, 48);
    let out = support::edit_prompt(&*editor, &src, "make it so")
        .await
        .unwrap();
    assert_eq!((out.width, out.height), (64, 48));
    assert_ne!(out.bytes, src.bytes);

    for (setting, want) in [
        (
            "url = \"http://h\"",
            "editors.e.url: not used by the sandbox kind (it calls no server)",
        ),
        (
            "refusal_rate = 1.5",
            "editors.e.refusal_rate: 1.5: must be between 0 and 1",
        ),
        (
            "size = \"1024x1024\"",
            "editors.e.size: not used by the sandbox kind",
        ),
    ] {
        let err = error(&format!("[editors.e]\nkind = \"sandbox\"\n{setting}\n"));
        assert_eq!(err, want, "{setting}");
    }
    let err = error("[editors.e]\nkind = \"http\"\nurl = \"http://h\"\ntimeout_rate = 0.5\n");
    assert!(
        err.starts_with("editors.e.timeout_rate: not used by the http kind"),
        "{err}"
    );
}
