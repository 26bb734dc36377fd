//! Clients generated from `openapi/openapi.json` work (issue 21, item 2):
//!
//! - openapi-typescript (npm, pinned in `tests/clients/package.json`)
//!   generates types and strict `tsc` compiles `tests/clients/client.ts`,
//!   which sets `options.max_turns`, narrows `status` exhaustively and
//!   reads a problem's `code`;
//! - openapi-python-client (PyPI, [`PYTHON_CLIENT_VERSION`]) generates a
//!   client with no warning, and its `Job` and `Problem` models parse a
//!   real job and a real problem from the binary.
//!
//! Generated code goes to the test's temporary folder, never the
//! repository. Needs `node` and `tests/clients/node_modules` (`npm ci` in
//! `tests/clients`), and `openapi-python-client` on PATH; `.ci/run`
//! installs them. When one is missing the test says so and passes —
//! unless `CI` is set, where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

/// The openapi-python-client release `.ci/run` installs.
const PYTHON_CLIENT_VERSION: &str = "0.29.1";

fn spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json")
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    println!(
        "{command:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn typescript_types_compile_a_strict_client() {
    let modules = clients_dir().join("node_modules");
    let generator = modules.join("openapi-typescript/bin/cli.js");
    let tsc = modules.join("typescript/bin/tsc");
    if which("node").is_none() || !generator.is_file() || !tsc.is_file() {
        tool_missing(
            "clients_e2e",
            "node or tests/clients/node_modules (npm ci in tests/clients)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("generated")).unwrap();
    for file in ["client.ts", "tsconfig.json"] {
        std::fs::copy(clients_dir().join(file), dir.path().join(file)).unwrap();
    }
    let types = dir.path().join("generated/api.d.ts");
    let out = run(Command::new("node")
        .arg(&generator)
        .arg(spec())
        .arg("-o")
        .arg(&types));
    assert!(out.status.success(), "openapi-typescript failed");
    let generated = std::fs::read_to_string(&types).unwrap();
    // The enums the client narrows on are unions of literals, not `string`.
    assert!(
        generated
            .contains(r#"JobStatus: "queued" | "running" | "succeeded" | "failed" | "canceled";"#),
        "JobStatus is not an enum in the generated types"
    );
    let out = run(Command::new("node")
        .arg(&tsc)
        .arg("-p")
        .arg(dir.path().join("tsconfig.json")));
    assert!(
        out.status.success(),
        "strict tsc refused tests/clients/client.ts against the generated types (see above)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_generates_cleanly_and_parses_a_real_job() {
    let Some(generator) = which("openapi-python-client") else {
        tool_missing(
            "clients_e2e",
            &format!("openapi-python-client (pip install openapi-python-client=={PYTHON_CLIENT_VERSION})"),
        );
        return;
    };
    let env = TestEnv::new(Backend::Sqlite).await;
    let package = env.dir.path().join("pyclient/editthinker_client");
    let out = run(Command::new(&generator)
        .arg("generate")
        .arg("--path")
        .arg(spec())
        .arg("--output-path")
        .arg(&package)
        .args(["--meta", "none"])
        .arg("--config")
        .arg(clients_dir().join("python-config.yaml"))
        .current_dir(env.dir.path()));
    assert!(out.status.success(), "openapi-python-client failed");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !said.to_ascii_lowercase().contains("warning"),
        "openapi-python-client warned (see above)"
    );
    for model in ["job", "job_options", "problem", "turn_edited_data"] {
        assert!(
            package.join(format!("models/{model}.py")).is_file(),
            "no {model} model generated"
        );
    }

    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("make the sky purple", said_answer());
    let config = env.config(
        "clients",
        &backends_config(&thinker, &editor, env.dir.path()),
    );
    let service = Service::start("serve", &config);
    let created = create_job(
        &service,
        job_body(
            &png(16, 16, [20, 90, 200]),
            "make the sky purple",
            json!({"max_turns": 2, "selection": "last"}),
        ),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    wait_for_job(&service, id, Duration::from_secs(30), is_terminal).await;
    let (status, job) = get_json(&service.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "succeeded", "{job}");
    let (status, problem) =
        get_json(&service.url(&format!("/v1/jobs/{}", uuid::Uuid::nil()))).await;
    assert_eq!(status, 404, "{problem}");

    let script = r#"
import json, sys
from editthinker_client.models.job import Job
from editthinker_client.models.job_status import JobStatus
from editthinker_client.models.problem import Problem
from editthinker_client.models.error_code import ErrorCode
from editthinker_client.models.selection import Selection
from editthinker_client.types import UNSET

given = json.load(sys.stdin)
job = Job.from_dict(given["job"])
assert job.status == JobStatus.SUCCEEDED, job.status
assert str(job.id) == given["job"]["id"], job.id
assert job.options.max_turns == 2, job.options
assert job.options.selection == Selection.LAST, job.options
assert job.options.stop is not UNSET and job.options.stop.semantic == 8, job.options
assert job.stop_reason.value == given["job"]["stop_reason"], job.stop_reason
assert len(job.turns) == len(given["job"]["turns"]) >= 1, job.turns
assert job.turns[0].critique.satisfied in (True, False), job.turns[0]
assert job.result.turn == given["job"]["result"]["turn"], job.result
problem = Problem.from_dict(given["problem"])
assert problem.code == ErrorCode.NOT_FOUND, problem.code
print("parsed", job.id, job.status.value, job.stop_reason.value, problem.code.value)
"#;
    let input = json!({"job": job, "problem": problem}).to_string();
    let out = run_with_stdin(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .env("PYTHONPATH", env.dir.path().join("pyclient"))
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        input.as_bytes(),
    );
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the generated Python client could not parse the job (see above): {job:#}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("parsed {id} succeeded")));
}

/// A satisfied critique, so the job ends after its first turn.
fn said_answer() -> String {
    said(9, 9, "make the sky purple")
}

#[test]
fn the_pinned_tools_match_ci() {
    let ci =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/run")).unwrap();
    assert!(
        ci.contains(&format!(
            "OPENAPI_PYTHON_CLIENT_VERSION={PYTHON_CLIENT_VERSION}"
        )),
        ".ci/run installs another openapi-python-client than {PYTHON_CLIENT_VERSION}"
    );
    let package: Value =
        serde_json::from_str(&std::fs::read_to_string(clients_dir().join("package.json")).unwrap())
            .unwrap();
    for tool in ["openapi-typescript", "typescript"] {
        let version = package["dependencies"][tool].as_str().unwrap_or_default();
        assert!(
            version.chars().next().is_some_and(|c| c.is_ascii_digit()),
            "{tool} is not pinned to an exact version in tests/clients/package.json: {version:?}"
        );
    }
}

/// Parses an event's `data` with the type its document schema comes from
/// (`crates/api/src/contract.rs`, which denies unknown fields).
pub(crate) fn check_event_data(kind: &str, data: &Value) {
    use editthinker_api::contract::*;
    let data = data.clone();
    let parsed = match kind {
        "job.queued" => serde_json::from_value::<JobQueuedData>(data.clone()).map(drop),
        "job.started" => serde_json::from_value::<JobStartedData>(data.clone()).map(drop),
        "job.retrying" => serde_json::from_value::<JobRetryingData>(data.clone()).map(drop),
        "turn.edited" => serde_json::from_value::<TurnEditedData>(data.clone()).map(drop),
        "turn.critiqued" => serde_json::from_value::<TurnCritiquedData>(data.clone()).map(drop),
        "job.succeeded" => serde_json::from_value::<JobSucceededData>(data.clone()).map(drop),
        "job.failed" => serde_json::from_value::<JobFailedData>(data.clone()).map(drop),
        "job.canceled" => serde_json::from_value::<JobCanceledData>(data.clone()).map(drop),
        "turn.thinking" => serde_json::from_value::<TurnThinkingData>(data.clone()).map(drop),
        "turn.chosen" => serde_json::from_value::<TurnChosenData>(data.clone()).map(drop),
        other => panic!("event type {other} has no data schema"),
    };
    parsed.unwrap_or_else(|e| panic!("{kind} data {data} does not match its schema: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_matches_its_documented_data_schema() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("paint it red", said(4, 5, "paint the door red"));
    thinker.on("paint the door red", said(9, 9, "paint the door red"));
    let config = env.config(
        "events",
        &backends_config(&thinker, &editor, env.dir.path()),
    );
    let service = Service::start("serve", &config);
    let created = create_job(
        &service,
        job_body(
            &png(16, 16, [200, 20, 20]),
            "paint it red",
            json!({"max_turns": 3}),
        ),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let events = read_sse_all(
        &service.url(&format!("/v1/jobs/{id}/events")),
        None,
        Duration::from_secs(30),
    )
    .await;
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(spec()).unwrap()).unwrap();
    // The stream's schema: one variant per event type, whose `data` is
    // JSON text of the type's schema.
    let variants = doc["paths"]["/v1/jobs/{id}/events"]["get"]["responses"]["200"]["content"]
        ["text/event-stream"]["schema"]["oneOf"]
        .as_array()
        .expect("the event stream's schema is a oneOf")
        .clone();
    let documented = |kind: &str| {
        variants.iter().any(|v| {
            v["properties"]["event"]["const"] == kind
                && v["properties"]["data"]["contentSchema"]["$ref"].is_string()
        })
    };
    let mut kinds = std::collections::BTreeSet::new();
    for event in &events {
        assert!(
            documented(&event.event),
            "{} has no data schema in the document",
            event.event
        );
        check_event_data(&event.event, &event.data);
        kinds.insert(event.event.as_str());
    }
    for kind in [
        "job.queued",
        "job.started",
        "turn.edited",
        "turn.critiqued",
        "job.succeeded",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {events:?}");
    }
}
