//! The HTTP/1.1 server the API runs on: one task per connection, hyper's
//! HTTP/1 connection directly (no protocol sniffing), graceful shutdown.
//!
//! Why not `axum::serve`: at 10,000 open event streams the per-connection
//! state is what the process's memory is made of. `axum::serve` rebuilds
//! the router for every connection and sniffs for HTTP/2, whose rewound
//! prefix makes hyper grow its read buffer to 16 KiB; here each connection
//! shares the one router and keeps an 8 KiB read buffer (the bench in
//! `benches/sse.rs` measures it). HTTP/2 to clients is the gateway's
//! business; the API speaks HTTP/1.1 to it (docs/architecture.md §4).

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tower::Service as _;

use crate::direct::{ConnHandle, ConnIo, Socket};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// By default, a client has this long to send a request's head once it has
/// connected or once its previous request was answered (slow-loris
/// protection; `[limits] header_read_timeout_seconds`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for open connections to finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Hyper's cap on a connection's read buffer, which bounds a request head
/// (the API answers heads over `[limits] max_header_bytes` with a problem
/// 431 itself; hyper cuts off the ones over this with a bare 431).
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Header fields hyper parses before it answers a bare 431 itself: above
/// [`crate::auth::MAX_HEADER_FIELDS`], so requests just over the API's
/// limit reach the router and get a problem body. Hyper allocates this
/// many slots per request head, so it is not raised further.
pub const MAX_PARSED_HEADERS: usize = 128;

/// Serves `router` on `listener` until `shutdown` fires, then stops
/// accepting and waits (up to [`SHUTDOWN_GRACE`]) for open connections.
/// A client that takes longer than `header_read_timeout` to send a
/// request's head is disconnected.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(MAX_READ_BUFFER)
        .max_headers(MAX_PARSED_HEADERS)
        .header_read_timeout(header_read_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Event frames are small and latency matters more than packets.
        let _ = stream.set_nodelay(true);
        let socket = Socket::new(stream);
        let handle = ConnHandle(socket.clone());
        let router = router.clone();
        // Each request carries its connection's socket, through which an
        // event stream can be handed to the hub (crates/api/src/direct.rs).
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(handle.clone());
            // The peer address, for the failed-authentication limit.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let response = router.clone().call(request);
            // What hyper gets is checked against what an event stream's
            // body made, before that stream may be handed off.
            async move { response.await.map(crate::direct::checked) }
        });
        let connection = builder.serve_connection(TokioIo::new(ConnIo(socket)), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}
