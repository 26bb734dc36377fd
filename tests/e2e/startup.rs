//! What a process says and does as it starts: which configuration file it
//! read (never one from a parent folder), and a metrics port in use.

use crate::common::*;
use serde_json::json;

/// A config naming one editor, `name`, and a thinker, so the service is
/// configured.
fn config_with_editor(name: &str) -> String {
    format!(
        "[thinker]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n\n\
         [editors.{name}]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/edit\"\n"
    )
}

#[tokio::test]
async fn the_configuration_file_comes_from_the_working_directory_only() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::write(
        parent.path().join("editthinker.toml"),
        config_with_editor("from_parent"),
    )
    .unwrap();
    let here = parent.path().join("project");
    std::fs::create_dir(&here).unwrap();
    let env = [("EDITTHINKER_LISTEN", "127.0.0.1:0")];

    // No file here: the parent's is not read, and the log says so.
    let mut service = Service::start_in_dir("serve", &here, &env);
    let (_, editors) = get_json(&service.url("/v1/editors")).await;
    assert_eq!(editors, json!({"editors": []}));
    assert!(
        service.log_contains("no editthinker.toml in the working directory"),
        "the log says defaults apply"
    );
    assert!(!service.log_contains("configuration loaded"));
    service.terminate();

    // A file here is read, and the log names it.
    let file = here.join("editthinker.toml");
    std::fs::write(&file, config_with_editor("from_here")).unwrap();
    let mut service = Service::start_in_dir("serve", &here, &env);
    let (_, editors) = get_json(&service.url("/v1/editors")).await;
    assert_eq!(editors["editors"][0]["name"], "from_here", "{editors}");
    assert_eq!(editors["editors"].as_array().map(Vec::len), Some(1));
    assert!(
        service.log_contains(&format!("configuration loaded file={}", file.display())),
        "the log names the file"
    );
    service.terminate();
}

#[tokio::test]
async fn a_metrics_port_in_use_is_a_warning_not_a_stop() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut service = Service::start_with_env(
        "serve",
        &env.config("serve", ""),
        &[("EDITTHINKER_METRICS__LISTEN", addr.as_str())],
    );
    let (status, _) = get_json(&service.url("/healthz")).await;
    assert_eq!(status, 200);
    assert!(service.log_contains("metrics exporter off"));
    assert!(!service.has_exited());
    service.terminate();
}

/// A shell set up for the command-line client still starts a server: its
/// variables are not configuration keys (a misspelt key still stops it).
#[tokio::test]
async fn the_clients_variables_do_not_stop_a_server() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let config = env.config("serve", "");
    let mut service = Service::start_with_env(
        "serve",
        &config,
        &[
            ("EDITTHINKER_SERVER", "http://127.0.0.1:9"),
            ("EDITTHINKER_API_KEY", "et_not_a_key"),
        ],
    );
    let (status, _) = get_json(&service.url("/healthz")).await;
    assert_eq!(status, 200);
    service.terminate();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_editthinker"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("EDITTHINKER_LISTN", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("listn"), "{stderr}");
}
