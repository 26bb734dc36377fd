//! Event streams against the real binary, at the socket: clients that
//! vanish (after pipelining, in the middle of an event), connections that
//! are reused after a stream, and what `/metrics` says about open streams
//! (docs/architecture.md §4, crates/api/src/direct.rs).

mod common;

use std::time::Duration;

use common::*;
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

both_sse_modes!(pipelined_streams_end_when_their_client_resets);
