//! The README's create-and-watch snippets, run as a newcomer would paste
//! them (issue 22 items 1 and 5): against `editthinker serve --sandbox`,
//! with `photo.png` in the working folder, only the service's address put
//! in place of the README's. curl runs through `sh`; the JavaScript and
//! Python examples use the client libraries, whose suites run them.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use base64::Engine;

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
    let events = run("sh", "follow.sh", &follow, dir.path(), base);
    assert!(
        events.trim_end().contains("event: job.succeeded"),
        "{events}"
    );
    assert_eq!(
        events.matches("event: turn.critiqued").count(),
        3,
        "{events}"
    );
    let saved = std::fs::read(dir.path().join("result.png")).unwrap();
    assert_eq!((decode(&saved).width(), decode(&saved).height()), (64, 48));
}

/// The README's client-library examples are the libraries' own README
/// examples, word for word: those are run as written by each library's
/// suite (`clients/typescript/tests/readme.test.mjs`,
/// `clients/python/tests/test_readme.py`, both run by
/// `client_libraries.rs`), so these run too.
#[test]
fn the_readme_client_examples_are_the_libraries_tested_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
    let typescript = read("clients/typescript/README.md");
    let python = read("clients/python/README.md");
    let examples = [
        ("js", "@editthinker/client", "client.stream(", &typescript),
        (
            "js",
            "@editthinker/client",
            "export async function POST",
            &typescript,
        ),
        ("python", "editthinker", "client.stream(", &python),
        ("python", "editthinker", "FastAPI()", &python),
    ];
    for (language, import, needle, library_readme) in examples {
        let block = snippet(language, needle);
        assert!(block.contains(import), "{block}");
        assert!(
            library_readme.contains(&format!("```{language}\n{block}```")),
            "the README's {language} example with {needle} is not in the library's README:\n{block}"
        );
        assert!(block.lines().count() <= 20, "{block}");
    }
}

/// The JSON create example of docs/api.md is accepted as written (with a
/// real image and the sandbox's editor name in place of its placeholders).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_docs_create_example_is_accepted() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api.md")).unwrap();
    let section = &docs[docs.find("### Creating a job").unwrap()..];
    let start = section.find("```json\n").unwrap() + "```json\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let mut body: serde_json::Value = serde_json::from_str(example).unwrap();
    body["image"]["base64"] = B64.encode(png(32, 32, [1, 2, 3])).into();
    body["editor"] = "sandbox".into();
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start_sandbox(dir.path(), &[("EDITTHINKER_LISTEN", "127.0.0.1:0")]);
    let (status, job) = post_json(&service, "/v1/jobs", &body).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["metadata"], body["metadata"]);
}
