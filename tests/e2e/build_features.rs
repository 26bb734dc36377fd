//! The default build leaves the in-process thinker out (feature
//! `local-thinker`): asking for it fails at start and says how to build it.
//! Every other end-to-end test runs this feature-less binary with the
//! remote thinker.
#![cfg(not(feature = "local-thinker"))]

use crate::common::*;

#[tokio::test]
async fn kind_local_without_the_feature_fails_at_start_naming_it() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let model = env.dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let config = env.config(
        "local",
        &format!(
            "[thinker]\nkind = \"local\"\nmodel = \"{}\"\n\n[editors.fake]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/edit\"\n",
            model.display()
        ),
    );
    for role in ["serve", "worker"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_editthinker"))
            .args([role, "--config"])
            .arg(&config)
            .env("EDITTHINKER_METRICS__LISTEN", "")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{role} started: {stderr}");
        assert!(
            stderr.contains("thinker.kind") && stderr.contains("`local-thinker` feature"),
            "{role}: {stderr}"
        );
    }
}
