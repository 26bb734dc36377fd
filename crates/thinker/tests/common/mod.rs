//! A fake OpenAI-compatible chat-completions server for the thinker tests.
//!
//! It checks the protocol basics itself (method, path, a JSON body with the
//! chat-completions shape) and answers 404/400 like a real server when they
//! are wrong; every request is recorded so tests can assert its details.
//! Replies are scripted in order. A [`Reply::content`] answers the way a real
//! server does: as server-sent events when the request asked for
//! `"stream": true`, else as one JSON completion; [`Reply::sse`] scripts a
//! stream event by event, including how it ends.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::VecDeque;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use editthinker_core::{Image, PromptTemplate, Protocol, ThinkingSink};
use editthinker_thinker::OpenAiSettings;
use futures::StreamExt as _;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use serde_json::{json, Value};

/// How a scripted event stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `data: [DONE]`, then the body ends.
    Done,
    /// The body ends cleanly with no `[DONE]`.
    Close,
    /// The connection is cut mid-body (a body error on the client's side).
    Abort,
    /// Nothing more is sent for this long, then `[DONE]`.
    Stall(Duration),
}

/// What a reply's body is.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `body` as it is, with `content_type`.
    Fixed,
    /// A completion with this content: streamed when the request asks for it.
    Completion(String),
    /// These `data:` payloads, as `text/event-stream`, then `end`.
    Stream { events: Vec<String>, end: End },
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub content_type: &'static str,
    pub delay: Duration,
    pub mode: Mode,
}

impl Reply {
    /// A 200 completion whose message content is `content`, streamed in a
    /// few chunks when the request has `"stream": true`.
    pub fn content(content: &str) -> Self {
        Self {
            mode: Mode::Completion(content.into()),
            ..Self::json_completion(content)
        }
    }

    /// A 200 JSON completion whatever the request asked: a server that
    /// ignores `stream`.
    pub fn json_completion(content: &str) -> Self {
        Self::json(200, completion(content))
    }

    /// A 200 event stream of these `data:` payloads (see [`chunk`]),
    /// ending with `data: [DONE]`.
    pub fn sse(events: Vec<Value>) -> Self {
        Self::sse_raw(events.iter().map(Value::to_string).collect())
    }

    /// A 200 event stream of these raw `data:` payloads.
    pub fn sse_raw(events: Vec<String>) -> Self {
        Self {
            content_type: "text/event-stream",
            mode: Mode::Stream {
                events,
                end: End::Done,
            },
            ..Self::raw(200, "")
        }
    }

    /// How a [`Reply::sse`] stream ends.
    pub fn ending(mut self, how: End) -> Self {
        match &mut self.mode {
            Mode::Stream { end, .. } => *end = how,
            _ => panic!("ending() applies to sse replies"),
        }
        self
    }

    /// Any JSON body with `status`.
    pub fn json(status: u16, body: Value) -> Self {
        Self::raw(status, &body.to_string())
    }

    /// An OpenAI-style error body.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(
            status,
            json!({"error": {"message": message, "type": "invalid_request_error"}}),
        )
    }

    /// A raw body (labelled JSON unless [`Reply::content_type`] says otherwise).
    pub fn raw(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            content_type: "application/json",
            delay: Duration::ZERO,
            mode: Mode::Fixed,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn content_type(mut self, value: &'static str) -> Self {
        self.content_type = value;
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A non-streamed chat completion.
pub fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    })
}

/// A `chat.completion.chunk` carrying `delta`.
pub fn chunk(delta: Value) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": null}],
    })
}

/// A content chunk.
pub fn content_chunk(text: &str) -> Value {
    chunk(json!({ "content": text }))
}

/// The last chunk of a choice: an empty delta and `reason`.
pub fn finish_chunk(reason: &str) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}],
    })
}

/// The chunks a server streams for `content`: the role, the text in three
/// pieces, the finish, and a usage chunk with no choices.
pub fn stream_of(content: &str) -> Vec<Value> {
    let chars: Vec<char> = content.chars().collect();
    let third = chars.len().div_ceil(3).max(1);
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}))];
    events.extend(
        chars
            .chunks(third)
            .map(|piece| content_chunk(&piece.iter().collect::<String>())),
    );
    events.push(finish_chunk("stop"));
    events.push(json!({
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }));
    events
}

/// A [`ThinkingSink`] that keeps every delta.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    /// The deltas received, in order.
    pub fn deltas(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// All deltas joined.
    pub fn text(&self) -> String {
        self.deltas().concat()
    }
}

impl ThinkingSink for Recorder {
    fn delta(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_string());
    }
}

/// A request the fake server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Seen {
    /// The `Authorization` header, if any.
    pub fn authorization(&self) -> Option<&str> {
        self.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
    }

    /// The user message's content parts.
    pub fn parts(&self) -> &Vec<Value> {
        self.body["messages"][0]["content"].as_array().unwrap()
    }

    /// The decoded images, in order, checking each is a PNG data URL.
    pub fn images(&self) -> Vec<DynamicImage> {
        self.parts()
            .iter()
            .filter(|p| p["type"] == "image_url")
            .map(|p| {
                let url = p["image_url"]["url"].as_str().unwrap();
                let b64 = url
                    .strip_prefix("data:image/png;base64,")
                    .unwrap_or_else(|| panic!("not a PNG data URL: {:.60}", url));
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap();
                assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not PNG bytes");
                image::load_from_memory_with_format(&bytes, ImageFormat::Png).unwrap()
            })
            .collect()
    }

    /// Whether the request asked for a streamed answer.
    pub fn stream(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool) == Some(true)
    }

    /// The text part.
    pub fn text(&self) -> &str {
        let parts = self.parts();
        let last = parts.last().unwrap();
        assert_eq!(last["type"], "text", "the text must come after the images");
        last["text"].as_str().unwrap()
    }
}

#[derive(Clone)]
struct FakeState {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A running fake server.
pub struct Fake {
    pub addr: SocketAddr,
    state: FakeState,
}

impl Fake {
    /// Starts on 127.0.0.1 with a free port, answering `replies` in order.
    pub async fn start(replies: Vec<Reply>) -> Self {
        let state = FakeState {
            replies: Arc::new(Mutex::new(replies.into())),
            seen: Arc::default(),
        };
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    /// The base URL a thinker should be configured with.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Scripted replies not yet used.
    pub fn unused_replies(&self) -> usize {
        self.state.replies.lock().unwrap().len()
    }
}

async fn handle(
    State(state): State<FakeState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        headers: headers.clone(),
        body: parsed.clone(),
    });
    if method != Method::POST || uri.path() != "/v1/chat/completions" {
        return (StatusCode::NOT_FOUND, "no such route").into_response();
    }
    if let Err(problem) = check_shape(&headers, &parsed) {
        return reply(Reply::error(400, &problem), false).await;
    }
    let stream = parsed.get("stream").and_then(Value::as_bool) == Some(true);
    let next = state.replies.lock().unwrap().pop_front();
    match next {
        Some(r) => reply(r, stream).await,
        None => {
            reply(
                Reply::error(500, "the test scripted no more replies"),
                false,
            )
            .await
        }
    }
}

/// What any chat-completions server would reject.
fn check_shape(headers: &HeaderMap, body: &Value) -> Result<(), String> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(format!("content-type {content_type:?} is not JSON"));
    }
    if !body["model"].is_string() {
        return Err("model must be a string".into());
    }
    let messages = body["messages"]
        .as_array()
        .ok_or("messages must be a list")?;
    if messages.len() != 1 || messages[0]["role"] != "user" {
        return Err("expected exactly one user message".into());
    }
    let parts = messages[0]["content"]
        .as_array()
        .ok_or("content must be a list of parts")?;
    for part in parts {
        match part["type"].as_str() {
            Some("text") if part["text"].is_string() => {}
            Some("image_url") if part["image_url"]["url"].is_string() => {}
            _ => return Err(format!("bad content part {part}")),
        }
    }
    if !body["max_tokens"].is_u64() {
        return Err("max_tokens must be an integer".into());
    }
    if body.get("stream").is_some_and(|s| !s.is_boolean()) {
        return Err("stream must be a boolean".into());
    }
    Ok(())
}

async fn reply(r: Reply, stream_requested: bool) -> Response {
    tokio::time::sleep(r.delay).await;
    let status = StatusCode::from_u16(r.status).unwrap();
    let (content_type, body) = match r.mode {
        Mode::Fixed => (r.content_type, Body::from(r.body)),
        Mode::Completion(content) if !stream_requested => {
            (r.content_type, Body::from(completion(&content).to_string()))
        }
        Mode::Completion(content) => (
            "text/event-stream",
            sse_body(
                stream_of(&content).iter().map(Value::to_string).collect(),
                End::Done,
            ),
        ),
        Mode::Stream { events, end } => (r.content_type, sse_body(events, end)),
    };
    let mut response = (status, [("content-type", content_type)], body).into_response();
    for (name, value) in r.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// An event-stream body: each payload as `data: …` and a blank line, sent
/// as its own chunk with a short pause, then the ending.
fn sse_body(events: Vec<String>, end: End) -> Body {
    enum Frame {
        Data(String),
        Wait(Duration),
        Cut,
    }
    let mut frames: Vec<Frame> = events
        .into_iter()
        .map(|e| Frame::Data(format!("data: {e}\n\n")))
        .collect();
    match end {
        End::Done => frames.push(Frame::Data("data: [DONE]\n\n".into())),
        End::Close => {}
        End::Abort => frames.push(Frame::Cut),
        End::Stall(pause) => {
            frames.push(Frame::Wait(pause));
            frames.push(Frame::Data("data: [DONE]\n\n".into()));
        }
    }
    let stream = futures::stream::iter(frames).filter_map(|frame| async move {
        match frame {
            Frame::Data(text) => {
                // Separate chunks on the wire, so the client really streams.
                tokio::time::sleep(Duration::from_millis(5)).await;
                Some(Ok(Bytes::from(text)))
            }
            Frame::Wait(pause) => {
                tokio::time::sleep(pause).await;
                None
            }
            Frame::Cut => {
                // Let the data already sent reach the client before the cut.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some(Err(std::io::Error::other("connection cut by the test")))
            }
        }
    });
    Body::from_stream(stream)
}

/// A solid-colour image in `format`, as the loop would hand it over.
pub fn solid(width: u32, height: u32, rgb: [u8; 3], format: ImageFormat) -> Image {
    let pixels = DynamicImage::ImageRgb8(RgbImage::from_pixel(width, height, Rgb(rgb)));
    let mut bytes = Vec::new();
    pixels
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    Image::probe(bytes.into(), u64::MAX).unwrap()
}

/// Colour of the centre pixel.
pub fn centre(image: &DynamicImage) -> [u8; 3] {
    let rgb = image.to_rgb8();
    let p = rgb.get_pixel(rgb.width() / 2, rgb.height() / 2);
    [p[0], p[1], p[2]]
}

/// A port nothing listens on (bound, then released).
pub async fn dead_base_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

/// Settings of a thinker on `base_url` with no retries and a 30 s timeout.
pub fn settings(base_url: &str) -> OpenAiSettings {
    OpenAiSettings {
        base_url: base_url.parse().unwrap(),
        model: "EditThinker-8B".into(),
        api_key: None,
        protocol: Protocol::Editthinker,
        template: PromptTemplate::default_for(Protocol::Editthinker),
        max_image_edge: 1024,
        temperature: None,
        max_tokens: 512,
        timeout: Duration::from_secs(30),
        retry: OpenAiSettings::retry_policy(0, Duration::from_millis(1)),
        structured: true,
        stream: true,
        stream_idle_timeout: Duration::from_secs(60),
    }
}
