//! Event streams against the real binary, at the socket: clients that
//! vanish (after pipelining, in the middle of an event), connections that
//! are reused after a stream, and what `/metrics` says about open streams
//! (docs/architecture.md §4, crates/api/src/direct.rs).

use std::time::Duration;

use crate::common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// An `api` process (no worker: jobs stay queued, so streams stay open)
/// with its metrics exporter on a known address.
struct Api {
    service: Service,
    scrape: String,
    _env: TestEnv,
    _editor: FakeEditor,
    _thinker: FakeThinker,
}

impl Api {
    async fn start(mode: SseMode) -> Self {
        let env = TestEnv::new(Backend::Sqlite).await;
        env.migrate();
        let editor = FakeEditor::start().await;
        let thinker = FakeThinker::start().await;
        let config = env.config("api", &backends_config(&thinker, &editor, env.dir.path()));
        let metrics = format!("127.0.0.1:{}", free_port());
        let service = Service::start_with_env(
            "api",
            &config,
            &[
                ("EDITTHINKER_METRICS__LISTEN", metrics.as_str()),
                mode.env(),
            ],
        );
        Self {
            service,
            scrape: format!("http://{metrics}/metrics"),
            _env: env,
            _editor: editor,
            _thinker: thinker,
        }
    }

    async fn queued_job(&self) -> String {
        let job = create_job(
            &self.service,
            job_body(&png(8, 8, [1, 2, 3]), "stay queued", json!({})),
        )
        .await;
        job["id"].as_str().unwrap().to_owned()
    }

    async fn open_streams(&self) -> f64 {
        metric(&self.scrape, "editthinker_sse_streams")
            .await
            .unwrap_or(0.0)
    }

    /// Waits up to `limit` for `editthinker_sse_streams` to be `want`;
    /// returns the last value read.
    async fn streams_become(&self, want: f64, limit: Duration) -> f64 {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let now = self.open_streams().await;
            if now == want || tokio::time::Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Streams handed to the hub's writers so far.
    async fn handoffs(&self) -> f64 {
        metric(&self.scrape, "editthinker_sse_handoffs_total")
            .await
            .expect("the counter is registered at start")
    }

    /// The hand-offs `mode` allows: `streams` with direct writes, else none.
    async fn check_handoffs(&self, mode: SseMode, streams: f64) {
        let handed = self.handoffs().await;
        match mode {
            SseMode::Direct => assert!(handed >= streams, "{handed} of {streams} handed off"),
            SseMode::Hyper => assert_eq!(handed, 0.0, "the switch is off"),
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.service.addr.unwrap())
            .await
            .unwrap()
    }
}

fn events_request(id: &str) -> String {
    format!("GET /v1/jobs/{id}/events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
}

/// Closes with a reset (SO_LINGER 0), as a client that crashes does.
fn reset(stream: TcpStream) {
    stream.set_zero_linger().unwrap();
    drop(stream);
}

/// 20 clients each pipeline two event requests on one connection, read
/// the first answer's head, and reset. Hyper does not read while the
/// second request waits in its buffer, so only the stream's own watch on
/// the socket notices: every stream must be gone within 2 s, long before
/// a keep-alive comment (15 s) would be written.
async fn pipelined_streams_end_when_their_client_resets(mode: SseMode) {
    let api = Api::start(mode).await;
    let id = api.queued_job().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut stream = api.connect().await;
        let request = events_request(&id);
        stream
            .write_all(format!("{request}{request}").as_bytes())
            .await
            .unwrap();
        let (head, _) = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        clients.push(stream);
    }
    assert_eq!(
        api.streams_become(20.0, Duration::from_secs(10)).await,
        20.0
    );
    api.check_handoffs(mode, 20.0).await;
    for stream in clients {
        reset(stream);
    }
    let left = api.streams_become(0.0, Duration::from_secs(2)).await;
    assert_eq!(
        left, 0.0,
        "streams still open 2 s after their clients reset"
    );
}

/// Reads from `stream` into `buf` until `done(buf)`, or fails after 10 s.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    while !done(buf) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no more bytes after {:?}", String::from_utf8_lossy(buf)))
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn cancel(api: &Api, id: &str) {
    let canceled = reqwest::Client::new()
        .post(api.service.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status(), 202);
}

/// A client that resets once the first bytes of an event arrive: its stream ends
/// within 2 s, and another stream of the same job goes on to a well-formed
/// end.
async fn a_reset_in_the_middle_of_an_event_ends_only_that_stream(mode: SseMode) {
    let api = Api::start(mode).await;
    let id = api.queued_job().await;
    let mut gone = api.connect().await;
    gone.write_all(events_request(&id).as_bytes())
        .await
        .unwrap();
    let (head, mut body) = read_head(&mut gone).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The first bytes of the replay's event arrived; the client resets
    // with whatever else of it is on the way still unread.
    read_until(&mut gone, &mut body, |b| !b.is_empty()).await;
    let mut staying = api.connect().await;
    staying
        .write_all(events_request(&id).as_bytes())
        .await
        .unwrap();
    let (head, mut kept) = read_head(&mut staying).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(api.streams_become(2.0, Duration::from_secs(10)).await, 2.0);
    reset(gone);
    assert_eq!(
        api.streams_become(1.0, Duration::from_secs(2)).await,
        1.0,
        "the reset stream is gone within 2 s, the other is not"
    );
    cancel(&api, &id).await;
    read_until(&mut staying, &mut kept, |b| b.ends_with(b"\r\n0\r\n\r\n")).await;
    let text = String::from_utf8_lossy(&kept);
    assert!(text.contains("event: job.queued"), "{text}");
    assert!(text.contains("event: job.canceled"), "{text}");
    assert_eq!(api.streams_become(0.0, Duration::from_secs(2)).await, 0.0);
}

/// One connection: a stream that ends with its terminal event (written by
/// the hub where streams are handed off), then a 204 for the same job
/// after its last event, then another request: each answer is well framed
/// and the connection stays usable.
async fn a_connection_is_reused_after_a_stream_and_a_204(mode: SseMode) {
    let api = Api::start(mode).await;
    let id = api.queued_job().await;
    let mut conn = api.connect().await;
    conn.write_all(events_request(&id).as_bytes())
        .await
        .unwrap();
    let (head, mut body) = read_head(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    read_until(&mut conn, &mut body, |b| contains(b, b"job.queued")).await;
    assert_eq!(api.streams_become(1.0, Duration::from_secs(10)).await, 1.0);
    api.check_handoffs(mode, 1.0).await;
    cancel(&api, &id).await;
    read_until(&mut conn, &mut body, |b| b.ends_with(b"\r\n0\r\n\r\n")).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    let last_id: i64 = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(text.contains("event: job.canceled"), "{text}");

    let resume = format!(
        "GET /v1/jobs/{id}/events HTTP/1.1\r\nHost: test\r\nLast-Event-ID: {last_id}\r\n\r\n"
    );
    conn.write_all(resume.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    assert!(rest.is_empty(), "nothing after a 204: {rest:?}");

    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut conn).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(api.streams_become(0.0, Duration::from_secs(2)).await, 0.0);
}

/// A layer that rewrites every frame of every body (as a compression layer
/// does) without saying so in the headers: each frame is copied, with an
/// SSE comment after it. A stream handed to the hub would bypass it, and
/// its events would come without the comment.
async fn rewrite_bodies(response: axum::response::Response) -> axum::response::Response {
    use futures::StreamExt;
    response.map(|body| {
        axum::body::Body::from_stream(body.into_data_stream().map(|frame| {
            frame.map(|bytes| {
                let mut copy = bytes.to_vec();
                copy.extend_from_slice(b":rewritten\n\n");
                bytes::Bytes::from(copy)
            })
        }))
    })
}

/// The router with a body-rewriting layer, served in process by the API's
/// own server (whose hand-off it must not get): the stream goes through
/// the layer from its replay to its terminal event, in both modes.
async fn a_layer_that_rewrites_bodies_keeps_the_stream_on_hypers_path(mode: SseMode) {
    use editthinker_store::Store;
    let dir = tempfile::tempdir().unwrap();
    let store = editthinker_store::SqliteStore::connect("sqlite::memory:")
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(store);
    let id = uuid::Uuid::now_v7();
    store
        .insert_job(editthinker_store::NewJob {
            id,
            tenant: editthinker_store::DEFAULT_TENANT.into(),
            active_limit: None,
            instruction: "i".into(),
            editor: "e".into(),
            options: json!({}),
            metadata: json!({}),
            source_key: "k".into(),
            source_mime: "image/png".into(),
            max_attempts: 3,
            priority: 0,
            webhook: None,
            deadline_seconds: None,
            traceparent: None,
            sandbox: false,
        })
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let state = editthinker_api::AppState {
        store: store.clone(),
        blobs: std::sync::Arc::new(
            editthinker_store::BlobStore::from_url(&format!("file://{}", dir.path().display()))
                .unwrap(),
        ),
        editors: std::sync::Arc::new(Vec::new()),
        thinker: editthinker_api::ThinkerSetup::Missing,
        provider_probes: None,
        currency: "USD".into(),
        webhooks_configured: false,
        retention: None,
        cors_allowed_origins: Vec::new(),
        limits: editthinker_api::Limits::default(),
        max_attempts: 3,
        auth: std::sync::Arc::new(editthinker_api::auth::Auth::new(
            editthinker_api::auth::AuthMode::None,
            &editthinker_api::auth::CallerLimits::default(),
        )),
        max_active_jobs_per_tenant: None,
        hub: editthinker_api::fanout::EventHub::start(store.clone(), shutdown.clone()),
        positions: std::sync::Arc::new(editthinker_api::positions::QueuePositions::new(
            store.clone(),
        )),
        headroom: Default::default(),
        sse_direct_writes: mode == SseMode::Direct,
    };
    let router =
        editthinker_api::router(state).layer(axum::middleware::map_response(rewrite_bodies));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(editthinker_api::server::serve(
        listener,
        router,
        Duration::from_secs(30),
        shutdown.clone(),
    ));

    let response = reqwest::get(format!("http://{addr}/v1/jobs/{id}/events"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    // The replay, through the layer.
    while !text.contains(":rewritten") {
        use futures::StreamExt;
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the replay arrives")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // A live event: where a stream is handed off, the hub writes it.
    store.request_cancel(id).await.unwrap();
    loop {
        use futures::StreamExt;
        let next = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the stream ends after job.canceled");
        match next {
            Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            None => break,
        }
    }
    let blocks: Vec<&str> = text.split("\n\n").filter(|b| !b.is_empty()).collect();
    let kinds: Vec<&str> = blocks
        .iter()
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("event: ")))
        .collect();
    assert_eq!(kinds, ["job.queued", "job.canceled"], "{text}");
    // Every event went through the layer: each is followed by its comment.
    for pair in blocks.chunks(2) {
        assert!(pair[0].contains("event: "), "{text}");
        assert_eq!(pair.get(1), Some(&":rewritten"), "{text}");
    }
    shutdown.cancel();
    server.await.unwrap();
}

crate::both_sse_modes!(
    pipelined_streams_end_when_their_client_resets,
    a_reset_in_the_middle_of_an_event_ends_only_that_stream,
    a_connection_is_reused_after_a_stream_and_a_204,
    a_layer_that_rewrites_bodies_keeps_the_stream_on_hypers_path,
);
