//! The command-line client end to end (issue 12): `editthinker submit` and
//! `editthinker jobs …` against the real binary serving with fake
//! backends, through a loopback proxy that can cut the event stream, with
//! and without a pseudo-terminal.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A two-turn job: the first turn is refined, the second satisfies.
async fn two_turn_service(env: &TestEnv) -> (Service, FakeEditor, FakeThinker) {
    two_turn_service_in(env, SseMode::Direct).await
}

/// [`two_turn_service`] with its event streams written in `mode`.
async fn two_turn_service_in(env: &TestEnv, mode: SseMode) -> (Service, FakeEditor, FakeThinker) {
    env.migrate();
    let editor = FakeEditor::start().await;
    // Slow enough that the client watches the job run.
    editor.set_delay(Duration::from_millis(400));
    let thinker = FakeThinker::start().await;
    thinker.on("paint the door red", said(5, 6, "make the door bright red"));
    thinker.on(
        "make the door bright red",
        said(9, 9, "make the door bright red"),
    );
    let config = env.config("cli", &backends_config(&thinker, &editor, env.dir.path()));
    (
        Service::start_with_env("serve", &config, &[mode.env()]),
        editor,
        thinker,
    )
}

fn cli(args: &[&str], server: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_editthinker"))
        .args(args)
        .env("EDITTHINKER_SERVER", server)
        .env_remove("EDITTHINKER_API_KEY")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_source(dir: &Path) -> std::path::PathBuf {
    let image = dir.join("door.png");
    std::fs::write(&image, png(24, 24, [10, 20, 30])).unwrap();
    image
}

/// `--candidates` makes every turn edit several candidates; each gets its
/// line under the turn, the chosen one starred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_with_candidates_prints_each_candidate_under_its_turn() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (service, editor, _thinker) = two_turn_service(&env).await;
    let image = write_source(env.dir.path());
    let out = cli(
        &[
            "submit",
            image.to_str().unwrap(),
            "paint the door red",
            "--max-turns",
            "2",
            "--candidates",
            "3",
            "--rank-by",
            "thinker",
        ],
        &service.url(""),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let candidates: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  candidate "))
        .collect();
    assert_eq!(candidates.len(), 6, "three per turn: {stdout}");
    assert_eq!(
        candidates.iter().filter(|l| l.contains('★')).count(),
        2,
        "one chosen per turn: {stdout}"
    );
    assert!(candidates.iter().all(|l| l.contains(" seed ")), "{stdout}");
    assert_eq!(editor.calls().len(), 6);
    // A bad value is refused before anything is sent.
    let out = cli(
        &["submit", image.to_str().unwrap(), "x", "--rank-by", "judge"],
        &service.url(""),
    );
    assert!(!out.status.success());
    assert_eq!(editor.calls().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_watches_every_turn_and_saves_the_selected_result() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (service, _editor, _thinker) = two_turn_service(&env).await;
    let image = write_source(env.dir.path());
    let out = cli(
        &[
            "submit",
            image.to_str().unwrap(),
            "paint the door red",
            "--max-turns",
            "3",
        ],
        &service.url(""),
    );
    let stdout = text(&out.stdout);
    println!("{stdout}\n{}", text(&out.stderr));
    assert!(out.status.success(), "exit {:?}", out.status);
    // Plain lines without a terminal: no control codes.
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\r'),
        "{stdout:?}"
    );
    let turns: Vec<&str> = stdout.lines().filter(|l| l.starts_with("turn ")).collect();
    assert_eq!(turns.len(), 2, "{stdout}");
    assert!(
        turns[0].starts_with("turn 1  semantic 5  quality 6  overall 5.48"),
        "{}",
        turns[0]
    );
    assert!(turns[0].contains("\"paint the door red\""), "{}", turns[0]);
    assert!(
        turns[0].contains("-> \"make the door bright red\""),
        "{}",
        turns[0]
    );
    assert!(
        turns[1].starts_with("turn 2  semantic 9  quality 9  overall 9"),
        "{}",
        turns[1]
    );
    assert!(turns[1].ends_with("satisfied"), "{}", turns[1]);
    // The result beside the image is the selected turn's bytes.
    let id = stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("job "))
        .and_then(|l| l.split(':').next())
        .unwrap()
        .to_string();
    let saved = std::fs::read(env.dir.path().join("door.edited.png")).unwrap();
    let served = reqwest::get(service.url(&format!("/v1/jobs/{id}/result")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(saved, served.to_vec());
    let turn2 = reqwest::get(service.url(&format!("/v1/jobs/{id}/turns/2/image")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(saved, turn2.to_vec(), "turn 2 was selected");

    // The jobs commands on the same job.
    let server = service.url("");
    let listed = cli(&["jobs", "list", "--limit", "5"], &server);
    assert!(text(&listed.stdout).contains(&id));
    let got = cli(&["jobs", "get", &id], &server);
    let job: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(job["status"], "succeeded");
    let turn_file = env.dir.path().join("t1.png");
    let downloaded = cli(
        &[
            "jobs",
            "download",
            &id,
            "--turn",
            "1",
            "--out",
            turn_file.to_str().unwrap(),
        ],
        &server,
    );
    assert!(downloaded.status.success());
    assert_eq!(decode(&std::fs::read(&turn_file).unwrap()).width(), 24);
    // Canceling a finished job is refused: the exit code says so.
    let cancel = cli(&["jobs", "cancel", &id], &server);
    assert_eq!(cancel.status.code(), Some(3));
    assert!(
        text(&cancel.stderr).contains("job_finished"),
        "{}",
        text(&cancel.stderr)
    );
    // --json prints only the final job; --no-watch only the id.
    let json = cli(
        &[
            "submit",
            image.to_str().unwrap(),
            "paint the door red",
            "--json",
            "--out",
            env.dir.path().join("j.png").to_str().unwrap(),
        ],
        &server,
    );
    let final_job: serde_json::Value = serde_json::from_slice(&json.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&json.stdout)));
    assert_eq!(final_job["status"], "succeeded");
    let queued = cli(
        &[
            "submit",
            image.to_str().unwrap(),
            "paint the door red",
            "--no-watch",
        ],
        &server,
    );
    let queued_id = text(&queued.stdout).trim().to_string();
    assert!(uuid::Uuid::parse_str(&queued_id).is_ok(), "{queued_id}");
    let watched = cli(&["jobs", "watch", &queued_id], &server);
    assert!(watched.status.success());
    assert_eq!(
        text(&watched.stdout)
            .lines()
            .filter(|l| l.starts_with("turn "))
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_exits_nonzero_with_the_jobs_error_code() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (service, editor, _thinker) = two_turn_service(&env).await;
    editor
        .state
        .refuse
        .lock()
        .unwrap()
        .push("paint the door red".into());
    let image = write_source(env.dir.path());
    let out = cli(
        &["submit", image.to_str().unwrap(), "paint the door red"],
        &service.url(""),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("job failed: editor_refused"),
        "{}",
        text(&out.stderr)
    );
    assert!(!env.dir.path().join("door.edited.png").exists());
    // An unreachable service is its own exit code.
    let out = cli(&["jobs", "list"], "http://127.0.0.1:9");
    assert_eq!(out.status.code(), Some(3));
}

/// Requests seen by [`CuttingProxy`]: request lines and `Last-Event-ID`s.
type Seen = Arc<Mutex<Vec<String>>>;

/// A loopback proxy that cuts the first event stream once it has carried
/// `job.started`; every request line and `Last-Event-ID` header is noted.
async fn cutting_proxy(upstream: std::net::SocketAddr) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let cut = Arc::new(AtomicBool::new(false));
    let noted = seen.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (seen, cut) = (noted.clone(), cut.clone());
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let streaming = Arc::new(AtomicBool::new(false));
                let is_events = streaming.clone();
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        for line in String::from_utf8_lossy(&buf[..n]).lines() {
                            let lower = line.to_ascii_lowercase();
                            if line.starts_with("GET ") || line.starts_with("POST ") {
                                is_events.store(line.contains("/events"), Ordering::SeqCst);
                                seen.lock().unwrap().push(line.to_string());
                            } else if lower.starts_with("last-event-id:") {
                                seen.lock().unwrap().push(lower);
                            }
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 || client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let started = String::from_utf8_lossy(&buf[..n]).contains("job.started");
                    if streaming.load(Ordering::SeqCst)
                        && started
                        && !cut.swap(true, Ordering::SeqCst)
                    {
                        // Drop both directions: the client sees the stream break.
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (url, seen)
}

async fn submit_resumes_the_stream_after_the_connection_drops(mode: SseMode) {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (service, _editor, _thinker) = two_turn_service_in(&env, mode).await;
    let (proxy, seen) = cutting_proxy(service.addr.unwrap()).await;
    let image = write_source(env.dir.path());
    let out = tokio::task::spawn_blocking(move || {
        cli(
            &["submit", image.to_str().unwrap(), "paint the door red"],
            &proxy,
        )
    })
    .await
    .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    // Every turn once, though the stream broke after job.started.
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("turn ")).count(),
        2,
        "{stdout}"
    );
    let seen = seen.lock().unwrap().clone();
    let streams = seen.iter().filter(|l| l.contains("/events")).count();
    assert!(streams >= 2, "the client reconnected: {seen:#?}");
    assert!(
        seen.iter().any(|l| l.starts_with("last-event-id:")),
        "the reconnect resumed after the last event: {seen:#?}"
    );
}

/// Runs a command under a pseudo-terminal (util-linux `script`); all it
/// wrote to the terminal.
fn under_pty(cmd: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new("script");
    command.args(["-qefc", cmd, "/dev/null"]);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("script (util-linux) runs");
    (out.status.success(), text(&out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_progress_is_drawn_and_no_color_is_respected() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (service, _editor, _thinker) = two_turn_service(&env).await;
    let image = write_source(env.dir.path());
    let cmd = format!(
        "{} submit {} 'paint the door red' --server {}",
        env!("CARGO_BIN_EXE_editthinker"),
        image.display(),
        service.url("")
    );
    let (ok, colored) = {
        let cmd = cmd.clone();
        tokio::task::spawn_blocking(move || under_pty(&cmd, &[("TERM", "xterm")]))
            .await
            .unwrap()
    };
    assert!(ok, "{colored}");
    // The spinner redraws its line; scores are bold.
    assert!(
        colored.contains("\r\u{1b}[2K"),
        "no progress drawn: {colored:?}"
    );
    assert!(colored.contains("\u{1b}[1m"), "no colors: {colored:?}");
    assert_eq!(
        colored.matches("turn 1  semantic").count(),
        1,
        "{colored:?}"
    );
    // The live reasoning reads as the turn's, above its scores, without
    // the model's tags.
    let heading = colored
        .find("turn 1 thinking:")
        .expect("a reasoning heading");
    let reasoning = colored.find("checking the edit").expect("the reasoning");
    let scores = colored.find("turn 1  semantic").unwrap();
    assert!(heading < reasoning && reasoning < scores, "{colored:?}");
    assert!(
        !colored.contains("<think>") && !colored.contains("<score>"),
        "{colored:?}"
    );
    let (ok, plain) = tokio::task::spawn_blocking(move || {
        under_pty(&cmd, &[("TERM", "xterm"), ("NO_COLOR", "1")])
    })
    .await
    .unwrap();
    assert!(ok, "{plain}");
    assert!(
        plain.contains("\r\u{1b}[2K"),
        "progress is still drawn: {plain:?}"
    );
    assert!(!plain.contains("\u{1b}[1m"), "NO_COLOR: {plain:?}");
}

/// A command on a fresh pseudo-terminal (stdin, stdout and stderr), with
/// the master side to read and type on.
struct OnPty {
    child: std::process::Child,
    master: std::fs::File,
    seen: String,
}

impl OnPty {
    fn spawn(args: &[&str], server: &str) -> Self {
        use std::os::fd::{FromRawFd, OwnedFd};
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty fills in two fresh descriptors.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty");
        // SAFETY: the descriptors are ours and open.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        let child = Command::new(env!("CARGO_BIN_EXE_editthinker"))
            .args(args)
            .env("EDITTHINKER_SERVER", server)
            .env("TERM", "xterm")
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave)
            .spawn()
            .unwrap();
        // SAFETY: as above.
        let master = unsafe { std::fs::File::from_raw_fd(master) };
        Self {
            child,
            master,
            seen: String::new(),
        }
    }

    /// Reads what the terminal shows until `needle` appears.
    fn wait_for(&mut self, needle: &str) {
        use std::io::Read;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        while !self.seen.contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "never saw {needle:?} in {:?}",
                self.seen
            );
            let n = self.master.read(&mut buf).unwrap_or(0);
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    fn interrupt_and_answer(&mut self, answer: &str) -> i32 {
        use std::io::Write;
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        assert_eq!(rc, 0);
        self.wait_for("[y/N]");
        self.master.write_all(answer.as_bytes()).unwrap();
        // Drain the terminal while the client finishes.
        let reader = self.master.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut reader = reader;
            let mut buf = [0u8; 4096];
            while reader.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

/// Ctrl-C on a terminal asks whether to cancel: "n" leaves the job
/// running (exit 130), "y" cancels it and waits to see it canceled (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_asks_whether_to_cancel_the_job() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (service, editor, _thinker) = two_turn_service(&env).await;
    editor.set_delay(Duration::from_secs(30));
    let image = write_source(env.dir.path());
    let server = service.url("");
    let (code, seen) = {
        let (image, server) = (image.clone(), server.clone());
        tokio::task::spawn_blocking(move || {
            let mut run = OnPty::spawn(
                &["submit", image.to_str().unwrap(), "paint the door red"],
                &server,
            );
            run.wait_for("job ");
            run.wait_for("editing turn 1");
            let code = run.interrupt_and_answer("n\n");
            (code, run.seen)
        })
        .await
        .unwrap()
    };
    assert_eq!(code, 130, "{seen:?}");
    let id = seen
        .split("job ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .trim()
        .to_string();
    let (_, job) = get_json(&service.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(job["status"], "running", "left running: {job:#}");

    let watch_id = id.clone();
    let code = tokio::task::spawn_blocking(move || {
        let mut run = OnPty::spawn(&["jobs", "watch", &watch_id], &server);
        run.wait_for("editing turn 1");
        run.interrupt_and_answer("y\n")
    })
    .await
    .unwrap();
    assert_eq!(code, 2, "the job was canceled");
    let (_, job) = get_json(&service.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(job["status"], "canceled", "{job:#}");
}

crate::both_sse_modes!(submit_resumes_the_stream_after_the_connection_drops);

/// A client command piped into a reader that stops early (`| head -1`)
/// ends by SIGPIPE, quietly, instead of panicking on the write.
#[test]
fn a_client_command_piped_into_head_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    // `openapi` prints more than a pipe holds, so its writes outlast the
    // reader.
    let mut child = Command::new(env!("CARGO_BIN_EXE_editthinker"))
        .arg("openapi")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?} {stderr}");
}
