//! Shared harness for the end-to-end tests: the real `editthinker` binary
//! as a child process, a fresh database per test (Postgres or SQLite), fake
//! editor and thinker servers that speak the providers' wire protocols and
//! record what they receive, and a small SSE client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use futures::StreamExt;
use image::{DynamicImage, GenericImageView, Rgb, RgbImage};
use serde_json::{json, Value};

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A fresh database and blob folder for one test.
pub struct TestEnv {
    pub backend: Backend,
    pub database_url: String,
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database_url = match backend {
            Backend::Sqlite => format!("sqlite://{}/et.db", dir.path().display()),
            Backend::Postgres => fresh_postgres_database().await,
        };
        Self {
            backend,
            database_url,
            dir,
        }
    }

    /// Runs `editthinker migrate` (the `api` and `worker` roles do not migrate).
    pub fn migrate(&self) {
        let status = Command::new(env!("CARGO_BIN_EXE_editthinker"))
            .args(["migrate", "--config"])
            .arg(self.config("migrate", ""))
            .status()
            .unwrap();
        assert!(status.success(), "migrate failed");
    }

    /// Writes a config file and returns its path.
    pub fn config(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndatabase_url = \"{}\"\nblob_url = \"file://{}/blobs\"\nallow_private_image_urls = true\n{extra}\n",
            self.database_url,
            self.dir.path().display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Creates an empty database on the server at `DATABASE_URL` (default: the
/// local server). Panics — never skips — when Postgres is unreachable.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is required for this test and is unreachable at {admin}: {e}")
        });
    let name = format!("et_e2e_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// A running `editthinker` process.
pub struct Service {
    child: Child,
    pub addr: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts `editthinker <role> --config <config>` and, for roles that
    /// serve HTTP, waits for the bound address in its log.
    pub fn start(role: &str, config: &Path) -> Self {
        Self::start_with_env(role, config, &[])
    }

    pub fn start_with_env(role: &str, config: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Self::command(role, env);
        cmd.arg("--config").arg(config);
        Self::spawn(cmd, role)
    }

    /// Starts `editthinker <role>` in `dir`, without `--config`: it reads
    /// `dir/editthinker.toml` when there is one.
    pub fn start_in_dir(role: &str, dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Self::command(role, env);
        cmd.current_dir(dir);
        Self::spawn(cmd, role)
    }

    /// Starts `editthinker serve --sandbox` in `dir`, as the README's
    /// quick start does (no configuration file unless `dir` has one).
    pub fn start_sandbox(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Self::command("serve", env);
        cmd.arg("--sandbox").current_dir(dir);
        Self::spawn(cmd, "serve")
    }

    fn command(role: &str, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_editthinker"));
        cmd.arg(role)
            .env("RUST_LOG", "info,tower_http=warn,sqlx=warn")
            .env("NO_COLOR", "1")
            // Many services run at once: each exporter takes a free port
            // (a test that reads it passes its own in `env`).
            .env("EDITTHINKER_METRICS__LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn(mut cmd: Command, role: &str) -> Self {
        let mut child = cmd.spawn().expect("starting the editthinker binary");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            let role = role.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[{role}] {line}");
                    if let Some(rest) = line.split("listening addr=").nth(1) {
                        let addr: SocketAddr =
                            rest.split_whitespace().next().unwrap().parse().unwrap();
                        let _ = tx.send(addr);
                    }
                    // The same line with `[log] format = "json"`.
                    if let Ok(json) = serde_json::from_str::<Value>(&line) {
                        if json["fields"]["message"] == "listening" {
                            let addr = json["fields"]["addr"].as_str().unwrap();
                            let _ = tx.send(addr.parse().unwrap());
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let addr = if role == "worker" {
            None
        } else {
            Some(
                rx.recv_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|_| panic!("{role} did not report a listening address")),
            )
        };
        Self { child, addr, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.expect("this role serves HTTP"))
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the child.
    pub fn signal(&self, signal: libc::c_int) {
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.child.id());
    }

    /// Whether the child has exited (without waiting for it).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A solid-colour PNG.
pub fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(width, height, Rgb(rgb)));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

pub fn decode(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).unwrap()
}

async fn serve(router: Router) -> SocketAddr {
    serve_on(router, 0).await
}

/// [`serve`] on `port` (0: a free one).
async fn serve_on(router: Router, port: u16) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// One request the fake editor received.
#[derive(Debug, Clone)]
pub struct EditCall {
    pub prompt: String,
    pub width: u32,
    pub height: u32,
    pub source_pixel: [u8; 3],
    pub params: Value,
    /// When the request arrived.
    pub at: std::time::Instant,
}

impl EditCall {
    /// The seed the request asked for (`params.seed` of the `http` kind).
    pub fn seed(&self) -> Option<i64> {
        self.params["seed"].as_i64()
    }
}

/// What the fake editor answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditorMode {
    /// A PNG whose colour encodes the call number: [call, 100, 200].
    Ok,
    /// HTTP 451 for prompts in `refuse`.
    Refuse,
}

#[derive(Default)]
pub struct FakeEditorState {
    pub calls: Mutex<Vec<EditCall>>,
    pub delay: Mutex<Duration>,
    pub refuse: Mutex<Vec<String>>,
    /// Answers 500 this many times first.
    pub fail_first: Mutex<u32>,
    /// Per call number (from 1): a delay in place of `delay`.
    pub delay_of_call: Mutex<HashMap<usize, Duration>>,
}

/// A self-hosted `/edit` server (the `http` editor protocol).
pub struct FakeEditor {
    pub url: String,
    pub state: Arc<FakeEditorState>,
}

impl FakeEditor {
    pub async fn start() -> Self {
        let state = Arc::new(FakeEditorState::default());
        let router = Router::new()
            .route("/edit", post(fake_edit))
            .with_state(state.clone());
        let addr = serve(router).await;
        Self {
            url: format!("http://{addr}"),
            state,
        }
    }

    pub fn calls(&self) -> Vec<EditCall> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn prompts(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.prompt).collect()
    }

    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    /// The colour the n-th call (from 1) answers with.
    pub fn colour_of_call(n: usize) -> [u8; 3] {
        [n as u8, 100, 200]
    }
}

async fn fake_edit(
    State(state): State<Arc<FakeEditorState>>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let prompt = body["prompt"]
        .as_str()
        .expect("prompt is a string")
        .to_string();
    let image_b64 = body["image"].as_str().expect("image is base64 text");
    let bytes = B64.decode(image_b64).expect("image is valid base64");
    assert!(bytes.starts_with(b"\x89PNG"), "the editor receives PNG");
    let img = decode(&bytes);
    let (width, height) = img.dimensions();
    let p = img.to_rgb8().get_pixel(0, 0).0;
    let mut params = body.clone();
    params.as_object_mut().unwrap().remove("image");
    params.as_object_mut().unwrap().remove("prompt");
    {
        let mut fail = state.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return Err((StatusCode::INTERNAL_SERVER_ERROR, "busy".into()));
        }
    }
    let n = {
        let mut calls = state.calls.lock().unwrap();
        calls.push(EditCall {
            prompt: prompt.clone(),
            width,
            height,
            source_pixel: p,
            params,
            at: std::time::Instant::now(),
        });
        calls.len()
    };
    let delay = state
        .delay_of_call
        .lock()
        .unwrap()
        .get(&n)
        .copied()
        .unwrap_or_else(|| *state.delay.lock().unwrap());
    tokio::time::sleep(delay).await;
    if state.refuse.lock().unwrap().contains(&prompt) {
        return Err((
            StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
            json!({"error": {"code": "moderation_blocked"}}).to_string(),
        ));
    }
    let out = png(width, height, FakeEditor::colour_of_call(n));
    Ok(Json(json!({"edited_image": B64.encode(out)})))
}

/// One request the fake thinker received.
#[derive(Debug, Clone)]
pub struct ThinkCall {
    pub model: String,
    pub text: String,
    /// First pixel of each image, in order.
    pub image_pixels: Vec<[u8; 3]>,
    pub image_sizes: Vec<(u32, u32)>,
}

#[derive(Default)]
pub struct FakeThinkerState {
    /// Answers by the instruction that produced the edit (the text after
    /// "PREV:" in our test template); unknown ones get `fallback`.
    pub script: Mutex<HashMap<String, String>>,
    pub fallback: Mutex<String>,
    pub calls: Mutex<Vec<ThinkCall>>,
    pub delay: Mutex<Duration>,
    /// Pause between streamed chunks (requests with `"stream": true`).
    pub chunk_delay: Mutex<Duration>,
    /// How many requests asked to stream.
    pub streamed: Mutex<u32>,
    /// Answer this many requests first with 503 (turned away before any
    /// work); they are not in `calls`.
    pub busy_first: Mutex<u32>,
    /// How many requests got that 503.
    pub turned_away: Mutex<u32>,
    /// `GET /v1/models` (the workers' probe) answers 503 while set.
    pub models_down: std::sync::atomic::AtomicBool,
    /// How many probes (`GET /v1/models`) arrived.
    pub probes: std::sync::atomic::AtomicU32,
    /// Requests answered (a request whose client left during `delay` is
    /// not): the calls a provider would bill.
    pub answered: std::sync::atomic::AtomicU32,
    /// Answers by the red channel of the edited (last) image, before
    /// `script`: the fake editor's images encode their call number there.
    pub by_edit_red: Mutex<HashMap<u8, String>>,
}

/// Characters per streamed chunk.
pub const STREAM_CHUNK_CHARS: usize = 8;

/// An OpenAI-compatible chat-completions server; it streams (SSE chunks of
/// [`STREAM_CHUNK_CHARS`] characters) when asked to.
pub struct FakeThinker {
    pub base_url: String,
    pub state: Arc<FakeThinkerState>,
}

/// A prompt template that makes the previous instruction easy to find.
pub const TEST_TEMPLATE: &str =
    "Judge the edit. ORIGINAL:{original_instruction}\nPREV:{rewritten_prompt}\nEND";

impl FakeThinker {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// [`FakeThinker::start`] on `port` (0: a free one), e.g. one a
    /// service was told to use while nothing listened there.
    pub async fn start_on(port: u16) -> Self {
        let state = Arc::new(FakeThinkerState::default());
        *state.fallback.lock().unwrap() = said(9, 9, "");
        let router = Router::new()
            .route("/v1/chat/completions", post(fake_chat))
            .route("/v1/models", axum::routing::get(fake_models))
            .with_state(state.clone());
        let addr = serve_on(router, port).await;
        Self {
            base_url: format!("http://{addr}/v1"),
            state,
        }
    }

    /// Answer `output` when critiquing the edit made from `previous`.
    pub fn on(&self, previous: &str, output: String) {
        self.state
            .script
            .lock()
            .unwrap()
            .insert(previous.to_string(), output);
    }

    pub fn calls(&self) -> Vec<ThinkCall> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    /// Answer `output` when the edited image is the fake editor's call `n`.
    pub fn on_edit_call(&self, n: u8, output: String) {
        self.state.by_edit_red.lock().unwrap().insert(n, output);
    }
}

/// EditThinker output.
pub fn said(semantic: u32, quality: u32, answer: &str) -> String {
    format!("<think>checking the edit</think>\n<score>{{\"semantic\": {semantic}, \"quality\": {quality}}}</score>\n<answer>{answer}</answer>")
}

async fn fake_chat(
    State(state): State<Arc<FakeThinkerState>>,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let content = body["messages"][0]["content"]
        .as_array()
        .expect("content parts");
    let mut pixels = Vec::new();
    let mut sizes = Vec::new();
    let mut text = String::new();
    for part in content {
        match part["type"].as_str() {
            Some("image_url") => {
                let url = part["image_url"]["url"].as_str().unwrap();
                let b64 = url
                    .strip_prefix("data:image/png;base64,")
                    .expect("images are sent as data: URLs");
                let img = decode(&B64.decode(b64).unwrap());
                sizes.push(img.dimensions());
                pixels.push(img.to_rgb8().get_pixel(img.width() / 2, img.height() / 2).0);
            }
            Some("text") => text = part["text"].as_str().unwrap().to_string(),
            other => panic!("unexpected part {other:?}"),
        }
    }
    let prev = text
        .split("PREV:")
        .nth(1)
        .and_then(|r| r.split("\nEND").next())
        .unwrap_or_default()
        .to_string();
    {
        let mut busy = state.busy_first.lock().unwrap();
        if *busy > 0 {
            *busy -= 1;
            *state.turned_away.lock().unwrap() += 1;
            return axum::response::IntoResponse::into_response((
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": {"message": "overloaded, try again", "code": 503}})),
            ));
        }
    }
    state.calls.lock().unwrap().push(ThinkCall {
        model: body["model"].as_str().unwrap_or_default().into(),
        text: text.clone(),
        image_pixels: pixels.clone(),
        image_sizes: sizes,
    });
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let by_colour = pixels
        .last()
        .and_then(|p| state.by_edit_red.lock().unwrap().get(&p[0]).cloned());
    let answer = by_colour.unwrap_or_else(|| {
        state
            .script
            .lock()
            .unwrap()
            .get(&prev)
            .cloned()
            .unwrap_or_else(|| state.fallback.lock().unwrap().clone())
    });
    state
        .answered
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if body["stream"] == json!(true) {
        *state.streamed.lock().unwrap() += 1;
        return stream_answer(answer, *state.chunk_delay.lock().unwrap());
    }
    axum::response::IntoResponse::into_response(Json(json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": fake_usage()
    })))
}

/// Token counts every fake thinker answer reports.
pub const FAKE_PROMPT_TOKENS: u64 = 1000;
/// See [`FAKE_PROMPT_TOKENS`].
pub const FAKE_GENERATED_TOKENS: u64 = 50;

fn fake_usage() -> Value {
    json!({"prompt_tokens": FAKE_PROMPT_TOKENS, "completion_tokens": FAKE_GENERATED_TOKENS,
        "total_tokens": FAKE_PROMPT_TOKENS + FAKE_GENERATED_TOKENS})
}

/// The answer as OpenAI-style `chat.completion.chunk` events, then `[DONE]`.
fn stream_answer(answer: String, pause: Duration) -> axum::response::Response {
    let chars: Vec<char> = answer.chars().collect();
    let mut events: Vec<String> = chars
        .chunks(STREAM_CHUNK_CHARS)
        .map(|c| {
            let piece: String = c.iter().collect();
            let chunk = json!({
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]
            });
            format!("data: {chunk}\n\n")
        })
        .collect();
    // The usage chunk servers send last (no choices).
    let usage = json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "choices": [], "usage": fake_usage()});
    events.push(format!("data: {usage}\n\n"));
    events.push("data: [DONE]\n\n".into());
    let body = futures::stream::iter(events).then(move |event| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::convert::Infallible>(event)
    });
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(body))
        .unwrap()
}

/// `GET /v1/models` as vLLM answers it, with no models listed (so any
/// configured `model` passes the probe), or 503 while `models_down`.
async fn fake_models(
    axum::extract::State(state): axum::extract::State<Arc<FakeThinkerState>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering;
    state.probes.fetch_add(1, Ordering::Relaxed);
    if state.models_down.load(Ordering::Relaxed) {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "down for the test",
        )
            .into_response();
    }
    axum::Json(json!({"object": "list", "data": []})).into_response()
}

/// Config sections for a fake thinker and editor.
pub fn backends_config(thinker: &FakeThinker, editor: &FakeEditor, dir: &Path) -> String {
    let template = dir.join("template.txt");
    std::fs::write(&template, TEST_TEMPLATE).unwrap();
    format!(
        r#"
[worker]
concurrency = 2
lease_seconds = 3
heartbeat_seconds = 1
poll_interval_ms = 200
retry_base_ms = 200
shutdown_grace_seconds = 5

[thinker]
kind = "openai"
base_url = "{}"
model = "EditThinker-8B"
prompt_template_file = "{}"
retry_base_ms = 50

[editors.fake]
kind = "http"
url = "{}"
default = true
params = {{ num_inference_steps = 28, guidance_scale = 2.5, seed = 0 }}
retry_base_ms = 50
"#,
        thinker.base_url,
        template.display(),
        editor.url
    )
}

/// One SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

/// Reads an SSE stream until it ends (or `limit` passes), keeping only the
/// stored events (those with an `id:`); live `turn.thinking` events depend
/// on timing, so most tests leave them out.
pub async fn read_sse(url: &str, last_event_id: Option<i64>, limit: Duration) -> Vec<SseEvent> {
    let mut events = read_sse_all(url, last_event_id, limit).await;
    events.retain(|e| e.id.is_some());
    events
}

/// Reads an SSE stream until it ends (or `limit` passes), live events included.
pub async fn read_sse_all(url: &str, last_event_id: Option<i64>, limit: Duration) -> Vec<SseEvent> {
    let client = reqwest::Client::new();
    let mut req = client.get(url);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let chunk = match next {
            Ok(Some(chunk)) => chunk.unwrap(),
            Ok(None) => break,
            Err(_) => panic!("SSE stream did not end within {limit:?}; got {events:#?}"),
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf[..end].to_string();
            buf.drain(..end + 2);
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event.is_empty() && data.is_empty() {
                continue; // keep-alive comment
            }
            events.push(SseEvent {
                id,
                event,
                data: serde_json::from_str(&data).unwrap(),
            });
        }
    }
    events
}

/// Creates a job with a JSON body; returns the response JSON (asserting 202).
pub async fn create_job(service: &Service, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(service.url("/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let json: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{json}");
    assert_eq!(
        location.unwrap(),
        format!("/v1/jobs/{}", json["id"].as_str().unwrap())
    );
    json
}

pub fn job_body(image: &[u8], instruction: &str, options: Value) -> Value {
    json!({"image": {"base64": B64.encode(image)}, "instruction": instruction, "options": options})
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Runs `editthinker keys <args> --config <config>` (asserting it
/// succeeds); its stdout without surrounding whitespace.
pub fn keys_cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_editthinker"))
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `get_json` with an API key.
pub async fn get_json_as(url: &str, key: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls the job until `pred` holds (or panics after `limit`).
pub async fn wait_for_job(
    service: &Service,
    id: &str,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (_, job) = get_json(&service.url(&format!("/v1/jobs/{id}"))).await;
        if pred(&job) {
            return job;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("job {id} did not reach the expected state in {limit:?}: {job:#}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn is_terminal(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "canceled")
    )
}

/// Defines `postgres` and `sqlite` variants of async tests written as
/// `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
    };
}

/// `name` on PATH, or in the sbin folders (nginx lives in /usr/sbin, which
/// a non-root PATH often lacks).
/// A tool a test needs is missing: a failure under CI (`.ci/run` installs
/// it), else a note that `test` is skipped.
pub fn tool_missing(test: &str, what: &str) {
    assert!(
        std::env::var("CI").unwrap_or_default().is_empty(),
        "{what} is required in CI (.ci/run installs it)"
    );
    eprintln!("{test}: {what} not found; skipped outside CI");
}

/// Runs `command` with `input` on its stdin; its whole output.
pub fn run_with_stdin(command: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A free loopback TCP port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child in its own process group; the whole group is SIGKILLed on drop
/// (nginx's workers, the browser chromedriver starts).
pub struct Group {
    child: Child,
    name: &'static str,
}

impl Group {
    pub fn spawn(name: &'static str, mut cmd: Command, output: &Path) -> Self {
        let out = std::fs::File::create(output).unwrap();
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Self { child, name }
    }

    pub fn check_running(&mut self, output: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}):\n{}",
                self.name,
                std::fs::read_to_string(output).unwrap_or_default()
            );
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // The child is not reaped yet, so its pid (the group id) is still ours.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// CRC-32 (IEEE), as PNG chunks carry it: for image headers made by hand.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// POSTs `body` as JSON to `service`'s `path`: the status and the JSON
/// answer (`null` when there is none).
pub async fn post_json(service: &Service, path: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(service.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// Reads one gauge or counter (no labels) from a Prometheus scrape at
/// `url`; `None` when it is not there.
pub async fn metric(url: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// Reads a raw HTTP/1.1 response head from `stream` (up to the blank
/// line); returns it and whatever body bytes came with it.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).into_owned();
            return (head, buf[at + 4..].to_vec());
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a response head within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "the connection closed before a response head: {buf:?}"
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// How the API writes event streams (`[http] sse_direct_writes`): SSE
/// tests run in both modes (`both_sse_modes!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseMode {
    /// Streams are handed to the event hub's writer threads after their replay.
    Direct,
    /// Hyper writes every event (`sse_direct_writes = false`).
    Hyper,
}

impl SseMode {
    /// The environment setting that selects this mode for a service.
    pub fn env(self) -> (&'static str, &'static str) {
        let value = match self {
            SseMode::Direct => "true",
            SseMode::Hyper => "false",
        };
        ("EDITTHINKER_HTTP__SSE_DIRECT_WRITES", value)
    }
}

/// Defines `direct_writes` and `hyper_writes` variants of async tests
/// written as `async fn name(mode: SseMode)`.
#[macro_export]
macro_rules! both_sse_modes {
    ($($name:ident),* $(,)?) => {
        mod direct_writes {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::SseMode::Direct).await
                }
            )*
        }
        mod hyper_writes {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::SseMode::Hyper).await
                }
            )*
        }
    };
}
