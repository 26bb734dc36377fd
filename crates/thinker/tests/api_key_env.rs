//! The bearer key is read from the variable `api_key_env` names. This is its
//! own test binary because it sets a process environment variable.

mod common;

use common::{solid, Fake, Reply};
use editthinker_core::{CritiqueRequest, NoThinking};
use editthinker_thinker::{build_thinker, ThinkerConfig};
use image::ImageFormat;

#[tokio::test]
async fn bearer_key_comes_from_the_named_environment_variable() {
    std::env::set_var("EDITTHINKER_TEST_THINKER_KEY", "sk-test-0123");
    let fake = Fake::start(vec![Reply::content(
        "<score>[9, 9]</score><answer>turn the cup red</answer>",
    )])
    .await;
    let cfg = ThinkerConfig {
        base_url: fake.base_url(),
        api_key_env: Some("EDITTHINKER_TEST_THINKER_KEY".into()),
        ..Default::default()
    };
    let thinker = build_thinker(&cfg).unwrap();
    let (source, edited) = (
        solid(64, 64, [255, 0, 0], ImageFormat::Png),
        solid(64, 64, [0, 0, 255], ImageFormat::Png),
    );
    thinker
        .critique(CritiqueRequest {
            source: &source,
            edited: &edited,
            original_instruction: "make the cup red",
            previous_instruction: "turn the cup red",
            turn: 2,
            history: &[],
            thinking: &NoThinking,
        })
        .await
        .unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization(), Some("Bearer sk-test-0123"));
    // The key never appears in the request body.
    assert!(!seen[0].body.to_string().contains("sk-test-0123"));
}
