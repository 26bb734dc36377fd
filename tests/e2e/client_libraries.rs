//! The client libraries (issue 23), each running its own suite against this
//! build's binary with the sandbox providers: `clients/typescript` (`npm
//! test`: build, type checks, node's test runner) and `clients/python`
//! (pytest). Each suite starts the binary itself (`EDITTHINKER_BIN`). Both
//! also build into the packages users install: `npm pack` and a wheel.
//!
//! Needs node with `clients/typescript/node_modules`, and python3 with
//! httpx, pytest and hatchling (`.ci/run` installs them). Outside CI a
//! missing tool makes the test say so and pass; under CI it fails.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `command` and fails with its output unless it succeeds.
fn succeeds(what: &str, command: &mut Command) -> String {
    let out: Output = command.output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {:?}\n{text}", out.status);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_library_passes_its_suite_and_packs() {
    let dir = root().join("clients/typescript");
    if which("node").is_none() || !dir.join("node_modules/typescript").is_dir() {
        tool_missing(
            "typescript_client",
            "node or clients/typescript/node_modules",
        );
        return;
    }
    let suite = tokio::task::spawn_blocking(move || {
        let out = succeeds(
            "npm test",
            Command::new("npm")
                .arg("test")
                .current_dir(&dir)
                .env("EDITTHINKER_BIN", env!("CARGO_BIN_EXE_editthinker")),
        );
        let packs = tempfile::tempdir().unwrap();
        let packed = succeeds(
            "npm pack",
            Command::new("npm")
                .args(["pack", "--pack-destination"])
                .arg(packs.path())
                .current_dir(&dir),
        );
        let tarball = std::fs::read_dir(packs.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "tgz"))
            .unwrap_or_else(|| panic!("npm pack made no tarball: {packed}"));
        (out, tarball.metadata().unwrap().len())
    })
    .await
    .unwrap();
    let (out, packed_bytes) = suite;
    println!("{out}");
    // node's runner ends with "# pass N" and "# fail 0".
    let count = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("# {key} ")))
            .and_then(|n| n.trim().parse::<u32>().ok())
    };
    assert_eq!(count("fail"), Some(0), "{out}");
    assert_eq!(count("skipped"), Some(0), "{out}");
    assert!(count("pass").is_some_and(|n| n >= 20), "{out}");
    println!("@editthinker/client packs to {packed_bytes} bytes");
    assert!(packed_bytes > 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_library_passes_its_suite_and_builds_a_wheel() {
    let dir = root().join("clients/python");
    let has = |module: &str| {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !(has("httpx") && has("pytest") && has("hatchling")) {
        tool_missing("python_client", "python3 with httpx, pytest and hatchling");
        return;
    }
    let suite = tokio::task::spawn_blocking(move || {
        let out = succeeds(
            "pytest",
            Command::new("python3")
                .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
                .current_dir(&dir)
                .env("EDITTHINKER_BIN", env!("CARGO_BIN_EXE_editthinker")),
        );
        let wheels = tempfile::tempdir().unwrap();
        succeeds(
            "pip wheel",
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "wheel",
                    "--no-deps",
                    "--no-build-isolation",
                    "-q",
                    "-w",
                ])
                .arg(wheels.path())
                .arg(&dir),
        );
        let wheel = std::fs::read_dir(wheels.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .expect("a wheel");
        // Measured here: the folder goes when `wheels` drops.
        let bytes = wheel.metadata().unwrap().len();
        (out, wheel, bytes)
    })
    .await
    .unwrap();
    let (out, wheel, wheel_bytes) = suite;
    println!("{out}");
    let summary = out
        .lines()
        .rev()
        .find(|l| l.contains(" passed"))
        .unwrap_or_else(|| panic!("no pytest summary: {out}"));
    assert!(
        !summary.contains("skipped") && !summary.contains("failed"),
        "{summary}"
    );
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("editthinker-") && name.ends_with("-py3-none-any.whl"),
        "{name}"
    );
    println!("{name}: {wheel_bytes} bytes");
    assert!(wheel_bytes > 1000);
}
