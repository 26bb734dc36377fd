//! The README's create-and-watch snippets, run as a newcomer would paste
//! them (issue 22 items 1 and 5): against `editthinker serve --sandbox`,
//! with `photo.png` in the working folder, only the service's address put
//! in place of the README's. curl through `sh`, JavaScript through `node`,
//! Python through `python3` with httpx.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// The README's first fenced block of `language` that mentions `needle`.
fn snippet(language: &str, needle: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let fence = format!("```{language}\n");
    readme
        .split(&fence)
        .skip(1)
        .map(|block| &block[..block.find("```").unwrap()])
        .find(|block| block.contains(needle))
        .unwrap_or_else(|| panic!("the README has a {language} block with {needle}"))
        .to_string()
}

/// `snippet`, run by `program` in `dir` with the README's address replaced.
fn run(program: &str, file: &str, code: &str, dir: &Path, base: &str) -> String {
    let code = code.replace("http://127.0.0.1:8080", base);
    std::fs::write(dir.join(file), code).unwrap();
    let out = Command::new(program)
        .arg(file)
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {file}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_snippets_finish_a_sandbox_job() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start_sandbox(dir.path(), &[("EDITTHINKER_LISTEN", "127.0.0.1:0")]);
    std::fs::write(dir.path().join("photo.png"), png(64, 48, [30, 120, 200])).unwrap();
    let base = service.url("");
    let base = base.trim_end_matches('/');
    let expected = "succeeded turn 3 of 3";

    // curl: the create prints the job; the id then fills $ID.
    let curl = snippet("sh", "curl");
    let create = curl.lines().take(2).collect::<Vec<_>>().join("\n");
    let created = run("sh", "create.sh", &create, dir.path(), base);
    let job: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(job["sandbox"], true, "{created}");
    let id = job["id"].as_str().unwrap();
    let follow = curl
        .lines()
        .skip(3)
        .collect::<Vec<_>>()
        .join("\n")
        .replace("$ID", id);
    run("sh", "follow.sh", &follow, dir.path(), base);
    let saved = std::fs::read(dir.path().join("result.png")).unwrap();
    assert_eq!((decode(&saved).width(), decode(&saved).height()), (64, 48));

    if which("node").is_some() {
        let out = run("node", "job.mjs", &snippet("js", "fetch"), dir.path(), base);
        assert!(
            out.starts_with(expected) && out.contains("(sandbox)"),
            "{out}"
        );
    } else {
        tool_missing("readme_js", "node");
    }
    let has_httpx = Command::new("python3")
        .args(["-c", "import httpx"])
        .status()
        .is_ok_and(|s| s.success());
    if has_httpx {
        let out = run(
            "python3",
            "job.py",
            &snippet("python", "httpx"),
            dir.path(),
            base,
        );
        assert!(
            out.starts_with(expected) && out.contains("sandbox"),
            "{out}"
        );
    } else {
        tool_missing("readme_python", "python3 with httpx");
    }
}
