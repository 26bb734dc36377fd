//! A fake self-hosted `/edit` server on loopback that records what it
//! receives and answers from a script.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use editthinker_core::Image;
use image::{DynamicImage, Rgb, RgbImage};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub json: serde_json::Value,
    /// The `image` field decoded: (format is PNG, width, height), or why not.
    pub image: Result<(bool, u32, u32), String>,
    pub at: Instant,
}

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with `{"edited_image": <red PNG of the received size>}`.
    Edited,
    /// Like `Edited`, as a `data:image/png;base64,` URL.
    EditedDataUrl,
    /// Any status, optional `Retry-After`, a body.
    Status(u16, Option<&'static str>, String),
    /// 200 with this body.
    Body(String),
    /// Sleeps this long, then answers like `Edited`.
    Slow(Duration),
}

struct Shared {
    script: Mutex<VecDeque<Reply>>,
    otherwise: Reply,
    received: Mutex<Vec<Received>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A running fake server; stops when dropped.
pub struct FakeEditor {
    /// Base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeEditor {
    /// Answers `script` in order, then `otherwise` forever.
    pub async fn start(script: Vec<Reply>, otherwise: Reply) -> Self {
        let shared = Arc::new(Shared {
            script: Mutex::new(script.into()),
            otherwise,
            received: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, shared, task }
    }

    /// Always answers with an edited image.
    pub async fn ok() -> Self {
        Self::start(vec![], Reply::Edited).await
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for FakeEditor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let image = decode_image_field(&json);
    let size = image.as_ref().map(|&(_, w, h)| (w, h)).unwrap_or((8, 8));
    shared.received.lock().unwrap().push(Received {
        method,
        path: uri.path().to_owned(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        json,
        image,
        at: Instant::now(),
    });
    let reply = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| shared.otherwise.clone());
    let response = match reply {
        Reply::Edited => edited(size, false),
        Reply::EditedDataUrl => edited(size, true),
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            edited(size, false)
        }
        Reply::Status(code, retry_after, body) => {
            let mut r = (StatusCode::from_u16(code).unwrap(), body).into_response();
            if let Some(v) = retry_after {
                r.headers_mut().insert("retry-after", v.parse().unwrap());
            }
            r
        }
        Reply::Body(body) => body.into_response(),
    };
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

fn decode_image_field(json: &serde_json::Value) -> Result<(bool, u32, u32), String> {
    let b64 = json
        .get("image")
        .and_then(|v| v.as_str())
        .ok_or("no image string")?;
    let bytes = STANDARD.decode(b64).map_err(|e| e.to_string())?;
    let is_png = bytes.starts_with(b"\x89PNG\r\n\x1a\n");
    let img = Image::validate(bytes.into(), 1 << 30).map_err(|e| e.to_string())?;
    Ok((is_png, img.width, img.height))
}

fn edited((w, h): (u32, u32), data_url: bool) -> Response {
    let png = red_png(w, h);
    let b64 = STANDARD.encode(&png.bytes);
    let value = if data_url {
        format!("data:image/png;base64,{b64}")
    } else {
        b64
    };
    axum::Json(serde_json::json!({ "edited_image": value })).into_response()
}

/// A solid red PNG.
pub fn red_png(w: u32, h: u32) -> Image {
    Image::from_pixels(&DynamicImage::ImageRgb8(RgbImage::from_pixel(
        w,
        h,
        Rgb([255, 0, 0]),
    )))
}

/// A source image with a gradient, `w`×`h`.
pub fn source(w: u32, h: u32) -> Image {
    Image::from_pixels(&DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    })))
}

/// A loopback URL where nothing listens.
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// One request a [`FakeProvider`] received, as raw as it came.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl RawRequest {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }
}

/// How a [`FakeProvider`] answers one API request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with this JSON body.
    Json(serde_json::Value),
    /// This status, an optional `Retry-After`, this body.
    Status(u16, Option<&'static str>, String),
    /// This (2xx) status with this JSON body (e.g. fal's 202 while queued).
    JsonWith(u16, serde_json::Value),
    /// Reads the whole request, then closes the connection without any
    /// answer: the request was sent, its outcome unknown to the client.
    Drop,
    /// Holds the request this long (the client's timeout should be
    /// shorter), then answers 500.
    Hang(Duration),
}

/// A script for one path: answers in order, then `otherwise` forever.
#[derive(Default)]
struct Route {
    script: VecDeque<Answer>,
    otherwise: Option<Answer>,
}

#[derive(Default)]
struct ProviderState {
    script: VecDeque<Answer>,
    otherwise: Option<Answer>,
    requests: Vec<RawRequest>,
    /// Per-path scripts, tried before the global one.
    routes: std::collections::HashMap<String, Route>,
    /// Served under `/files/<name>`; `true`: only once (then 404, like an
    /// expired signed URL).
    files: std::collections::HashMap<String, (Bytes, bool)>,
    downloads: Vec<RawRequest>,
}

/// A fake hosted provider on loopback: records every API request and
/// answers from a script; also serves result files under `/files/<name>`
/// (the "signed URLs" a provider hands back) and records their fetches.
pub struct FakeProvider {
    /// Base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<Mutex<ProviderState>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeProvider {
    /// A server with no script yet (it answers 500 until [`Self::answer`]).
    pub async fn start() -> Self {
        Self::start_after(Duration::ZERO).await
    }

    /// A server whose port is taken at once but that only listens after
    /// `delay`: until then every connection is refused (nothing reaches it).
    pub async fn start_after(delay: Duration) -> Self {
        let state = Arc::new(Mutex::new(ProviderState::default()));
        let app = Router::new()
            .fallback(provider_handle)
            .with_state(Arc::clone(&state));
        // Bound but not listening: the kernel refuses connections to the
        // port, which stays ours, so no other test can take it meanwhile.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://{}", socket.local_addr().unwrap());
        let task = if delay.is_zero() {
            // Listening before the first request is sent: a spawned task
            // may not have run yet when the client connects (a loaded
            // machine refused a test's first attempts and spent its
            // retries).
            let listener = socket.listen(1024).unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() })
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let listener = socket.listen(1024).unwrap();
                axum::serve(listener, app).await.unwrap();
            })
        };
        Self { url, state, task }
    }

    /// Answers `script` in order, then `otherwise` forever.
    pub fn answer(&self, script: Vec<Answer>, otherwise: Answer) {
        let mut s = self.state.lock().unwrap();
        s.script = script.into();
        s.otherwise = Some(otherwise);
    }

    /// Answers requests to `path` with `script` in order, then `otherwise`
    /// forever (other paths use the global script).
    pub fn answer_path(&self, path: &str, script: Vec<Answer>, otherwise: Answer) {
        self.state.lock().unwrap().routes.insert(
            path.to_owned(),
            Route {
                script: script.into(),
                otherwise: Some(otherwise),
            },
        );
    }

    /// Serves `bytes` and returns its URL, signed-looking (with a query).
    pub fn serve_file(&self, name: &str, bytes: Bytes) -> String {
        self.serve(name, bytes, false)
    }

    /// Serves `bytes` for one fetch only (later fetches get 404, like an
    /// expired signed URL) and returns its URL.
    pub fn serve_file_once(&self, name: &str, bytes: Bytes) -> String {
        self.serve(name, bytes, true)
    }

    fn serve(&self, name: &str, bytes: Bytes, once: bool) -> String {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(name.to_owned(), (bytes, once));
        format!("{}/files/{name}?Expires=1&Signature=abc", self.url)
    }

    /// The API requests to `path`.
    pub fn requests_to(&self, path: &str) -> Vec<RawRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// A cheap handle that counts the API requests received so far.
    pub fn counter(&self) -> RequestCounter {
        RequestCounter(Arc::clone(&self.state))
    }

    /// The API requests received (file fetches excluded).
    pub fn requests(&self) -> Vec<RawRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The fetches of served files.
    pub fn downloads(&self) -> Vec<RawRequest> {
        self.state.lock().unwrap().downloads.clone()
    }
}

/// Counts a [`FakeProvider`]'s API requests from elsewhere (a checkpoint).
#[derive(Clone)]
pub struct RequestCounter(Arc<Mutex<ProviderState>>);

impl RequestCounter {
    /// The paths of the API requests received so far.
    pub fn paths(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|r| r.path.clone())
            .collect()
    }
}

/// An `EditCheckpoint` that records each call with the paths the provider
/// had received at that moment (to check it ran before the first poll).
#[derive(Default)]
pub struct RecordingCheckpoint {
    pub counter: Option<RequestCounter>,
    pub calls: Mutex<Vec<(editthinker_core::ProviderRequest, Vec<String>)>>,
}

impl RecordingCheckpoint {
    pub fn new(server: &FakeProvider) -> Self {
        Self {
            counter: Some(server.counter()),
            calls: Mutex::new(Vec::new()),
        }
    }

    pub fn calls(&self) -> Vec<(editthinker_core::ProviderRequest, Vec<String>)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl editthinker_core::EditCheckpoint for RecordingCheckpoint {
    async fn submitted(
        &self,
        request: &editthinker_core::ProviderRequest,
    ) -> Result<(), editthinker_core::EditorError> {
        let seen = self.counter.as_ref().map(|c| c.paths()).unwrap_or_default();
        self.calls.lock().unwrap().push((request.clone(), seen));
        Ok(())
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn provider_handle(
    State(state): State<Arc<Mutex<ProviderState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = RawRequest {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    };
    let answer = {
        let mut s = state.lock().unwrap();
        match route(&mut s, request) {
            Routed::Api(answer) => answer,
            Routed::File(Some(bytes)) => {
                return ([("content-type", "image/png")], bytes).into_response()
            }
            Routed::File(None) => return (StatusCode::NOT_FOUND, "expired").into_response(),
        }
    };
    match answer {
        Answer::Json(v) => axum::Json(v).into_response(),
        Answer::JsonWith(code, v) => {
            (StatusCode::from_u16(code).unwrap(), axum::Json(v)).into_response()
        }
        Answer::Status(code, retry_after, body) => {
            let mut r = (
                StatusCode::from_u16(code).unwrap(),
                [("content-type", "application/json")],
                body,
            )
                .into_response();
            if let Some(v) = retry_after {
                r.headers_mut().insert("retry-after", v.parse().unwrap());
            }
            r
        }
        Answer::Hang(d) => {
            tokio::time::sleep(d).await;
            (StatusCode::INTERNAL_SERVER_ERROR, "too late").into_response()
        }
        // Unwinding ends this connection's task (axum serves each
        // connection in a task of its own), which closes the socket with no
        // answer; `resume_unwind` skips the panic hook, so nothing is
        // printed, and the state lock is released above, so it is not
        // poisoned.
        Answer::Drop => std::panic::resume_unwind(Box::new("the fake drops the connection")),
    }
}

/// Where a request went.
enum Routed {
    /// An API request, with the scripted answer.
    Api(Answer),
    /// A file fetch: the file, or `None` once it is gone.
    File(Option<Bytes>),
}

/// Records `request` and picks its answer or file.
fn route(s: &mut ProviderState, request: RawRequest) -> Routed {
    if let Some(name) = request.path.strip_prefix("/files/") {
        let file = s.files.get(name).cloned();
        if let Some((_, true)) = file {
            s.files.remove(name);
        }
        s.downloads.push(request);
        return Routed::File(file.map(|(bytes, _)| bytes));
    }
    let path = request.path.clone();
    s.requests.push(request);
    let answer = match s.routes.get_mut(&path) {
        Some(route) => route.script.pop_front().or_else(|| route.otherwise.clone()),
        None => s.script.pop_front().or_else(|| s.otherwise.clone()),
    }
    .unwrap_or(Answer::Status(500, None, "no script".into()));
    Routed::Api(answer)
}

/// Base64 of an image's bytes.
pub fn b64(image: &Image) -> String {
    STANDARD.encode(&image.bytes)
}

/// Decodes base64 (optionally a `data:` URL) into a validated image:
/// (is PNG, width, height).
pub fn png_info(encoded: &str) -> (bool, u32, u32) {
    let payload = encoded
        .strip_prefix("data:image/png;base64,")
        .unwrap_or(encoded);
    let bytes = STANDARD.decode(payload).expect("base64");
    image_info(&bytes)
}

/// (is PNG, width, height) of encoded image bytes.
pub fn image_info(bytes: &[u8]) -> (bool, u32, u32) {
    let is_png = bytes.starts_with(b"\x89PNG\r\n\x1a\n");
    let img = Image::validate(Bytes::copy_from_slice(bytes), 1 << 30).expect("a valid image");
    (is_png, img.width, img.height)
}

/// Sets a test's own API key variable (unique names: tests run in
/// parallel) and returns its name.
pub fn api_key(var: &str, value: &str) -> String {
    std::env::set_var(var, value);
    var.to_owned()
}

/// The seed the candidate-seed tests ask for: unlike any profile's.
pub const CANDIDATE_SEED: i64 = 1_234_567;

/// One edit of `src` by `editor` (instruction "make it so"), resuming
/// `resume` if given, recording through `checkpoint`.
pub async fn edit_once(
    editor: &dyn editthinker_core::Editor,
    src: &Image,
    resume: Option<&editthinker_core::ProviderRequest>,
    checkpoint: &dyn editthinker_core::EditCheckpoint,
) -> Result<Image, editthinker_core::EditorError> {
    editor
        .edit(editthinker_core::EditRequest {
            source: src,
            instruction: "make it so",
            turn: 1,
            candidate: 0,
            seed: None,
            resume,
            checkpoint,
        })
        .await
}

/// A profile of `kind` against `base_url`, its key `key` in the variable
/// `key_var`, with small retry delays (and poll delays for the
/// asynchronous kinds).
pub fn test_profile(
    kind: editthinker_editors::EditorKind,
    base_url: String,
    key_var: &str,
    key: &str,
) -> editthinker_editors::EditorProfile {
    let mut p = editthinker_editors::EditorProfile::new(kind);
    p.base_url = Some(base_url);
    p.api_key_env = Some(api_key(key_var, key));
    p.retry_base_ms = 5;
    if kind.is_async() {
        p.poll_interval_ms = Some(20);
    }
    p
}

/// One edit of `src` with `prompt`: turn 1, nothing to resume, nothing
/// recorded.
pub async fn edit_prompt(
    editor: &dyn editthinker_core::Editor,
    src: &Image,
    prompt: &str,
) -> Result<Image, editthinker_core::EditorError> {
    edit_candidate(editor, src, prompt, None).await
}

/// One edit of `src` ("make it so") as candidate 1 of turn 1 of a turn
/// with several, asking for [`CANDIDATE_SEED`].
pub async fn edit_seeded(
    editor: &dyn editthinker_core::Editor,
    src: &Image,
) -> Result<Image, editthinker_core::EditorError> {
    edit_candidate(editor, src, "make it so", Some(CANDIDATE_SEED)).await
}

/// One edit of `src` with `prompt` asking for `seed` (as candidate 1 when
/// set, else as a lone edit): turn 1, nothing to resume, nothing recorded.
async fn edit_candidate(
    editor: &dyn editthinker_core::Editor,
    src: &Image,
    prompt: &str,
    seed: Option<i64>,
) -> Result<Image, editthinker_core::EditorError> {
    editor
        .edit(editthinker_core::EditRequest {
            source: src,
            instruction: prompt,
            turn: 1,
            candidate: u32::from(seed.is_some()),
            seed,
            resume: None,
            checkpoint: &editthinker_core::NoCheckpoint,
        })
        .await
}
