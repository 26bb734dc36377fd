//! Event streams written straight to their sockets (docs/architecture.md §4).
//!
//! An SSE stream costs its connection task a wake-up and a pass through
//! hyper for every event; at 10,000 streams that work is most of what an
//! event costs (the bench in `benches/sse.rs` measures it). So once a
//! stream has sent its replay, its response body hands the stream to the
//! event hub, and the hub's writer threads ([`Writers`]) write each event,
//! framed as an HTTP/1.1 chunk by crates/api/src/wire.rs (once per
//! process), to every socket of the job in a tight loop. The hub hands them
//! typed events (crates/api/src/stream_event.rs); the framing is theirs.
//! Hyper still owns the connection: it sent the head and the replay, it
//! reads, and it writes the end of the body when the stream ends.
//!
//! A client that leaves is noticed without hyper's read side, which stops
//! looking while a pipelined request waits in its buffer: a failed hub
//! write ends the stream ([`End::Broken`]: its body fails, so hyper closes
//! the connection), and every stream's body also waits for the socket's
//! error readiness ([`Socket::failed`]), so a reset ends it even when no
//! event is being written. Pipelined requests are left to hyper: they are
//! answered once the stream ends, and never keep a stream alive. (Refusing
//! the hand-off instead would need hyper's read buffer, which it does not
//! expose, and would still leave the stock path blind to a reset.)
//!
//! Every byte for the socket passes through one [`Socket`] and its queue,
//! so hyper's bytes and the hub's never interleave:
//!
//! - the hub's chunks wait (`early`) until hyper has flushed all it had,
//!   which is when hyper calls `poll_flush` on the connection's IO
//!   ([`ConnIo`]): the stream is then *armed*;
//! - a chunk the socket does not take at once is queued, and hyper writes
//!   nothing of its own before the queue is empty; the connection task is
//!   woken to drain it when the socket has room;
//! - a client that reads too slowly (more than [`MAX_QUEUED_BYTES`] queued)
//!   gets nothing more from the hub: its body takes the stream back and
//!   catches up from the table, like any lagging subscriber;
//! - the terminal event goes out with the end of the chunked body in one
//!   write, and hyper's own copy of that end ([`END_CHUNK`]) is skipped;
//!   the body's task is woken only then, after the writer's whole batch.
//!
//! Only a `GET` over HTTP/1.1 is handed off (a `HEAD` has no body, and
//! HTTP/1.0 bodies are not chunked), and only when hyper sends the body's
//! own bytes: [`checked`] wraps every response as it leaves the router and
//! [`Untouched`] compares each data frame hyper gets with the one the
//! stream's body made. A response with `Content-Encoding` or
//! `Content-Length`, or whose frames a layer replaced (a compression layer,
//! say), is never handed off and streams through hyper. Layers that pass
//! frames through as they are (tracing) do not prevent the hand-off.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::stream_event::{ends_stream, StreamEvent, KEEP_ALIVE};
use crate::wire::{self, COMMENT_CHUNK, END_CHUNK};

/// Bytes the hub may queue for one slow socket before that stream falls
/// back to its body's own pace (reading from the table).
pub const MAX_QUEUED_BYTES: usize = 256 * 1024;

/// Why a handed-off stream stopped taking events from the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The terminal event was written: the body ends.
    Finished,
    /// The server is shutting down: the body ends.
    Shutdown,
    /// The client fell behind: the body catches up from the table after
    /// the last stored event written.
    Lagged {
        /// Id of the last stored event written (or queued) to the socket.
        last: i64,
    },
    /// A write to the socket failed: the client is gone. The body fails,
    /// so hyper closes the connection at once instead of waiting for its
    /// read side, which does not look while a pipelined request sits in
    /// its buffer.
    Broken,
}

/// A handed-off stream's state, kept with its socket.
struct Handed {
    /// Tells this stream from a later one on the same connection, so work
    /// queued for this one never reaches that one.
    generation: u64,
    /// Hyper has flushed all it had: the hub's chunks may go out.
    armed: bool,
    /// The hub's chunks from before the stream was armed.
    early: Vec<Bytes>,
    /// `early` ends with the end of the body.
    ends_early_chunks: bool,
    /// Id of the last stored event written or queued.
    last: i64,
    /// When the hub last wrote to the stream (or armed it): keep-alive
    /// comments go only to streams quiet for [`KEEP_ALIVE`] or longer.
    wrote_at: Instant,
    end: Option<End>,
    /// The connection task, woken to end the body or drain the queue.
    body: Option<Waker>,
}

/// Bytes the socket has not taken yet, in order.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<Bytes>,
    bytes: usize,
}

impl Queue {
    fn push(&mut self, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push_back(chunk);
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// What goes out on one socket, in order.
#[derive(Default)]
struct Out {
    /// Hyper writes only once this is empty.
    queue: Queue,
    /// The event stream handed to the hub on this connection, if any.
    handed: Option<Handed>,
    /// The end of the chunked body, already written by the hub with the
    /// terminal event: hyper's own copy of it is not written again.
    written_ahead: &'static [u8],
    /// Hyper's bytes differed from what was written ahead: nothing more
    /// is written to this connection.
    broken: bool,
}

/// One accepted connection's socket, shared by hyper (through [`ConnIo`])
/// and the hub's writers.
pub struct Socket {
    stream: TcpStream,
    /// Which writer thread serves this connection's streams.
    shard: usize,
    out: Mutex<Out>,
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// A handed-off stream as the hub lists it: its socket, and which stream
/// on that socket.
#[derive(Clone)]
pub(crate) struct HandedStream {
    pub(crate) socket: Arc<Socket>,
    pub(crate) generation: u64,
}

impl Socket {
    /// Wraps an accepted stream.
    pub fn new(stream: TcpStream) -> Arc<Self> {
        Arc::new(Self {
            stream,
            shard: NEXT_SHARD.fetch_add(1, Ordering::Relaxed),
            out: Mutex::new(Out::default()),
        })
    }

    fn out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().expect("socket lock")
    }

    /// The writer shard among `shards`.
    pub(crate) fn shard(&self, shards: usize) -> usize {
        self.shard % shards.max(1)
    }

    /// Starts a handed-off stream whose last stored event sent is `last`.
    pub(crate) fn hand_off(self: &Arc<Self>, last: i64) -> HandedStream {
        let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        self.out().handed = Some(Handed {
            generation,
            armed: false,
            early: Vec::new(),
            ends_early_chunks: false,
            last,
            wrote_at: Instant::now(),
            end: None,
            body: None,
        });
        HandedStream {
            socket: self.clone(),
            generation,
        }
    }

    /// Ends a handed-off stream's state (its body is gone or took it back).
    pub(crate) fn take_back(&self, generation: u64) {
        let mut out = self.out();
        if out
            .handed
            .as_ref()
            .is_some_and(|h| h.generation == generation)
        {
            // Chunks never armed were never written: dropping them is all.
            out.handed = None;
        }
    }

    /// For the body: `Ready(end)` once the hub stopped writing the stream
    /// and the stream is armed (so what the hub wrote precedes anything the
    /// body or hyper writes next), else remembers the waker.
    pub(crate) fn poll_end(&self, cx: &mut Context<'_>) -> Poll<End> {
        let mut out = self.out();
        let Some(handed) = out.handed.as_mut() else {
            return Poll::Ready(End::Shutdown);
        };
        match handed.end {
            Some(end) if handed.armed => Poll::Ready(end),
            _ => {
                match &handed.body {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => handed.body = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    /// Stops the hub's writes with `end` and wakes the body.
    pub(crate) fn finish(&self, end: End) {
        let mut out = self.out();
        if let Some(handed) = out.handed.as_mut() {
            if handed.end.is_none() {
                handed.end = Some(end);
                if let Some(w) = handed.body.take() {
                    w.wake();
                }
            }
        }
    }

    /// Writes `events` (one read of the job's rows, or one live event):
    /// stored events the stream already sent are skipped; the stream ends
    /// after its terminal event. Wakers to wake go to `wakes`: the writer
    /// wakes them after its whole batch, so that connection tasks do not
    /// take the cores from the writers while an event goes out.
    fn push_events(
        &self,
        generation: u64,
        events: &[StreamEvent],
        now: Instant,
        wakes: &mut Vec<Waker>,
    ) {
        let mut out = self.out();
        let out = &mut *out;
        let Some(handed) = out.handed.as_mut().filter(|h| h.generation == generation) else {
            return;
        };
        for (index, event) in events.iter().enumerate() {
            if handed.end.is_some() {
                return;
            }
            if event.id.is_some_and(|id| id <= handed.last) {
                continue;
            }
            let chunk = wire::chunk(event);
            let early: usize = handed.early.iter().map(Bytes::len).sum();
            if out.queue.bytes + early + chunk.len() > MAX_QUEUED_BYTES {
                let last = handed.last;
                end_handed(handed, End::Lagged { last }, wakes);
                return;
            }
            if let Some(id) = event.id {
                handed.last = id;
            }
            handed.wrote_at = now;
            if ends_stream(events, index) {
                // The terminal event and the end of the body in one write;
                // hyper's end of the body is then not written again.
                let last_chunk = wire::last_chunk(event);
                send(&self.stream, &mut out.queue, handed, last_chunk, wakes);
                if handed.end.is_some() {
                    // The write failed: nothing was written ahead.
                    return;
                }
                if handed.armed {
                    out.written_ahead = END_CHUNK;
                } else {
                    handed.ends_early_chunks = true;
                }
                end_handed(handed, End::Finished, wakes);
                return;
            }
            send(&self.stream, &mut out.queue, handed, chunk, wakes);
        }
    }

    /// Resolves once the socket reports an error (a reset, or a write the
    /// peer refused), whether or not anyone reads or writes it: a stream's
    /// body waits on this so that a client gone while hyper does not read
    /// (a pipelined request in its buffer) is noticed at once.
    pub(crate) async fn failed(self: Arc<Self>) {
        // Only the error readiness: readable data (a pipelined request the
        // kernel still holds) must not end the stream. A peer that closes
        // with a FIN is noticed at the next write, whose answer is a reset.
        let _ = self.stream.ready(tokio::io::Interest::ERROR).await;
    }

    /// Writes a keep-alive comment if the stream is armed and has been
    /// quiet for [`KEEP_ALIVE`]: streams that get events get no comments,
    /// so comments never add to an event's fan-out.
    fn push_comment(&self, generation: u64, now: Instant, wakes: &mut Vec<Waker>) {
        let mut out = self.out();
        let out = &mut *out;
        let Some(handed) = out.handed.as_mut().filter(|h| h.generation == generation) else {
            return;
        };
        let quiet = now.saturating_duration_since(handed.wrote_at) >= KEEP_ALIVE;
        if handed.end.is_none() && handed.armed && out.queue.is_empty() && quiet {
            handed.wrote_at = now;
            let chunk = Bytes::from_static(COMMENT_CHUNK);
            send(&self.stream, &mut out.queue, handed, &chunk, wakes);
        }
    }

    /// Writes the queue to the socket; `Ready` once it is empty.
    fn drain(&self, out: &mut Out, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let queue = &mut out.queue;
        while let Some(front) = queue.chunks.front_mut() {
            let n = std::task::ready!(write_ready(&self.stream, cx, |s| s.try_write(front)))?;
            queue.bytes -= n;
            if n == front.len() {
                queue.chunks.pop_front();
            } else {
                let _ = front.split_to(n);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Ends a handed-off stream; its body is to be woken.
fn end_handed(handed: &mut Handed, end: End, wakes: &mut Vec<Waker>) {
    handed.end = Some(end);
    wakes.extend(handed.body.take());
}

/// Writes `chunk` now if nothing is queued and the stream is armed, else
/// queues it; a queue that was empty has the connection task woken to
/// drain it.
fn send(
    stream: &TcpStream,
    queue: &mut Queue,
    handed: &mut Handed,
    chunk: &Bytes,
    wakes: &mut Vec<Waker>,
) {
    if !handed.armed {
        handed.early.push(chunk.clone());
        return;
    }
    let rest = if queue.is_empty() {
        match stream.try_write(chunk) {
            Ok(n) if n == chunk.len() => return,
            Ok(n) => chunk.slice(n..),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => chunk.clone(),
            // A broken connection: the stream ends now (its body fails and
            // hyper drops the connection), whatever hyper's read side does.
            Err(_) => {
                end_handed(handed, End::Broken, wakes);
                return;
            }
        }
    } else {
        chunk.clone()
    };
    let was_empty = queue.is_empty();
    queue.push(rest);
    if was_empty {
        wakes.extend(handed.body.clone());
    }
}

/// How many leading bytes of `bufs` the hub already wrote (the end of a
/// body it wrote with the terminal event); those are reported written.
///
/// Hyper's next bytes must be exactly that end ([`END_CHUNK`], which the
/// test `hyper_ends_a_chunked_body_as_the_hub_does` checks against the
/// hyper in Cargo.lock). Anything else is a framing mismatch: the client
/// already has a complete body, so the connection is closed rather than
/// risk writing what would follow a body twice ended; it is logged and
/// counted in `editthinker_sse_framing_mismatches_total`.
fn skip_written_ahead(out: &mut Out, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    if out.written_ahead.is_empty() {
        return Ok(0);
    }
    let mut skipped = 0;
    for byte in bufs.iter().flat_map(|b| b.iter()) {
        match out.written_ahead.split_first() {
            Some((expected, rest)) if expected == byte => {
                out.written_ahead = rest;
                skipped += 1;
            }
            _ => break,
        }
    }
    if skipped == 0 && bufs.iter().any(|b| !b.is_empty()) {
        let got: Vec<u8> = bufs
            .iter()
            .flat_map(|b| b.iter())
            .take(16)
            .copied()
            .collect();
        tracing::warn!(
            expected = ?String::from_utf8_lossy(out.written_ahead),
            got = ?String::from_utf8_lossy(&got),
            "hyper's end of an event stream's body is not what the hub wrote for it; closing the connection"
        );
        editthinker_core::metrics::sse_framing_mismatch();
        out.written_ahead = &[];
        out.broken = true;
        return Err(framing_mismatch());
    }
    Ok(skipped)
}

/// The error hyper gets for every write after a framing mismatch, so that
/// it closes the connection.
fn framing_mismatch() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "SSE framing mismatch: the connection is closed",
    )
}

/// `bufs` with hyper's own bare error answers given problem bodies
/// ([`crate::error::bare_error_answer`]); `None` when there is none, which
/// a prefix check tells for every other write.
fn with_problem_bodies(bufs: &[io::IoSlice<'_>]) -> Option<Bytes> {
    if !bufs.iter().any(|b| b.starts_with(b"HTTP/1.1 4")) {
        return None;
    }
    let answers: Vec<Option<Vec<u8>>> = bufs
        .iter()
        .map(|b| crate::error::bare_error_answer(b))
        .collect();
    if answers.iter().all(Option::is_none) {
        return None;
    }
    let mut all = Vec::new();
    for (buf, answer) in bufs.iter().zip(&answers) {
        all.extend_from_slice(answer.as_deref().unwrap_or(buf));
    }
    Some(all.into())
}

/// One `write` once the socket is writable; registers the waker otherwise.
fn write_ready(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(stream.poll_write_ready(cx))?;
        match write(stream) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return Poll::Ready(other),
        }
    }
}

/// A connection's socket as hyper's IO: reads pass through; writes wait for
/// the hub's queue; a flush arms a handed-off stream.
pub struct ConnIo(pub Arc<Socket>);

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.0.stream;
        loop {
            std::task::ready!(stream.poll_read_ready(cx))?;
            // Into the uninitialised part, as tokio's own read does: zeroing
            // it first would make every connection's read buffer resident.
            // SAFETY: `recv` only writes into `unfilled`, and only the bytes
            // it reports are marked initialised.
            let unfilled = unsafe { buf.unfilled_mut() };
            let read = stream.try_io(tokio::io::Interest::READABLE, || {
                socket2::SockRef::from(stream).recv(unfilled)
            });
            match read {
                Ok(n) => {
                    // SAFETY: `recv` initialised the first `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let socket = &self.0;
        let mut out = socket.out();
        if out.broken {
            return Poll::Ready(Err(framing_mismatch()));
        }
        std::task::ready!(socket.drain(&mut out, cx))?;
        let skipped = skip_written_ahead(&mut out, bufs)?;
        if skipped > 0 {
            return Poll::Ready(Ok(skipped));
        }
        if let Some(answer) = with_problem_bodies(bufs) {
            // Queued whole and reported written: the flush that follows
            // (or the shutdown) drains it.
            let written = bufs.iter().map(|b| b.len()).sum();
            out.queue.push(answer);
            return Poll::Ready(Ok(written));
        }
        write_ready(&socket.stream, cx, |stream| stream.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &self.0;
        let mut out = socket.out();
        let out = &mut *out;
        // Hyper calls this with its own buffer empty: a handed-off stream
        // may now go out, after what hyper wrote.
        if let Some(handed) = out.handed.as_mut().filter(|h| !h.armed) {
            handed.armed = true;
            handed.wrote_at = Instant::now();
            for chunk in handed.early.drain(..) {
                out.queue.push(chunk);
            }
            if handed.ends_early_chunks {
                out.written_ahead = END_CHUNK;
            }
            if handed.end.is_some() {
                // It ended before it was armed: the body may end now.
                if let Some(w) = handed.body.take() {
                    w.wake();
                }
            }
        }
        socket.drain(out, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &self.0;
        let mut out = socket.out();
        std::task::ready!(socket.drain(&mut out, cx))?;
        Poll::Ready(socket2::SockRef::from(&socket.stream).shutdown(std::net::Shutdown::Write))
    }
}

/// Whether a stream's body reaches hyper as the body made it: shared by the
/// body (in `crates/api/src/events.rs`) and, through the response's
/// extensions, by [`checked`]. A stream may be handed off only once this
/// is verified, since the hub writes to the socket what the body would
/// have produced, bypassing every layer.
#[derive(Debug, Default)]
pub struct Untouched {
    /// Address and length of the last data frame the body produced.
    last_ptr: AtomicUsize,
    last_len: AtomicUsize,
    /// 0 until hyper gets a data frame, then [`VERIFIED`] or [`REWRITTEN`]
    /// (which is final).
    state: AtomicU8,
}

const VERIFIED: u8 = 1;
const REWRITTEN: u8 = 2;

impl Untouched {
    /// The body produces `bytes` as its next data frame.
    pub(crate) fn produced(&self, bytes: &Bytes) {
        self.last_ptr
            .store(bytes.as_ptr() as usize, Ordering::Relaxed);
        self.last_len.store(bytes.len(), Ordering::Relaxed);
    }

    /// Hyper gets `bytes` as the response's next data frame: the very
    /// frame the body produced last (the same memory), or a rewrite.
    fn reached_hyper(&self, bytes: &Bytes) {
        let same = self.last_ptr.load(Ordering::Relaxed) == bytes.as_ptr() as usize
            && self.last_len.load(Ordering::Relaxed) == bytes.len();
        let next = if same { VERIFIED } else { REWRITTEN };
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| {
                (state != REWRITTEN).then_some(next)
            });
    }

    fn rewritten(&self) {
        self.state.store(REWRITTEN, Ordering::Relaxed);
    }

    /// Every frame hyper got so far was the body's own (and there was one).
    pub(crate) fn verified(&self) -> bool {
        self.state.load(Ordering::Relaxed) == VERIFIED
    }
}

/// A response body as hyper gets it (see [`checked`]).
pub struct Checked {
    body: axum::body::Body,
    untouched: Option<Arc<Untouched>>,
}

impl http_body::Body for Checked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let (Some(untouched), Some(Ok(frame))) = (&self.untouched, &frame) {
            if let Some(data) = frame.data_ref() {
                untouched.reached_hyper(data);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Wraps a response as it leaves the router for hyper: an event stream
/// (an [`Untouched`] in its extensions) is checked frame by frame, and one
/// whose headers say a layer re-encoded it is marked rewritten at once.
pub fn checked(response: axum::response::Response) -> hyper::Response<Checked> {
    let (mut parts, body) = response.into_parts();
    let untouched = parts.extensions.remove::<Arc<Untouched>>();
    if let Some(untouched) = &untouched {
        let headers = &parts.headers;
        if headers.contains_key(axum::http::header::CONTENT_ENCODING)
            || headers.contains_key(axum::http::header::CONTENT_LENGTH)
        {
            untouched.rewritten();
        }
    }
    hyper::Response::from_parts(parts, Checked { body, untouched })
}

/// A connection's socket, for handlers (a request extension): an event
/// stream can be handed to the hub through it.
#[derive(Clone)]
pub struct ConnHandle(pub Arc<Socket>);

/// Work for one writer thread.
pub(crate) enum Work {
    /// Stored events of one job (one read) for these streams.
    Events(Arc<[StreamEvent]>, Vec<HandedStream>),
    /// A live event of one job for these streams.
    Live(Arc<StreamEvent>, Vec<HandedStream>),
    /// A keep-alive comment for these streams.
    Comment(Vec<HandedStream>),
}

/// Writes `events` to `streams` (on a writer thread).
fn push_to(streams: &[HandedStream], events: &[StreamEvent], wakes: &mut Vec<Waker>) {
    let now = Instant::now();
    for s in streams {
        s.socket.push_events(s.generation, events, now, wakes);
    }
}

/// The hub's writer threads: one per core, each serving the sockets of its
/// shard in the order work arrives, so a socket's events stay in order.
pub(crate) struct Writers {
    shards: Vec<mpsc::Sender<Work>>,
}

impl Writers {
    /// Starts one writer thread per available core.
    pub(crate) fn start() -> Self {
        let count = std::thread::available_parallelism().map_or(2, |n| n.get());
        let shards = (0..count)
            .map(|i| {
                let (tx, rx) = mpsc::channel::<Work>();
                std::thread::Builder::new()
                    .name(format!("sse-writer-{i}"))
                    .spawn(move || {
                        // Ends when the hub (every sender) is gone.
                        let mut wakes = Vec::new();
                        while let Ok(work) = rx.recv() {
                            match work {
                                Work::Events(events, streams) => {
                                    push_to(&streams, &events, &mut wakes);
                                }
                                Work::Live(event, streams) => {
                                    push_to(&streams, std::slice::from_ref(&*event), &mut wakes);
                                }
                                Work::Comment(streams) => {
                                    let now = Instant::now();
                                    for s in streams {
                                        s.socket.push_comment(s.generation, now, &mut wakes);
                                    }
                                }
                            }
                            wakes.drain(..).for_each(Waker::wake);
                        }
                    })
                    .expect("spawning an SSE writer thread");
                tx
            })
            .collect();
        Self { shards }
    }

    /// How many shards there are.
    pub(crate) fn count(&self) -> usize {
        self.shards.len()
    }

    /// Queues `work` for shard `shard`.
    pub(crate) fn send(&self, shard: usize, work: Work) {
        let _ = self.shards[shard].send(work);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::stream_event::test_row;

    /// A connection's socket and the client's end of it.
    async fn connection() -> (Arc<Socket>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Socket::new(server), client)
    }

    fn events(events: &[(i64, &str)]) -> Vec<StreamEvent> {
        events
            .iter()
            .map(|(id, kind)| StreamEvent::stored(&test_row(*id, kind)))
            .collect()
    }

    /// Reads exactly `len` bytes, or fails after a second.
    async fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        tokio::time::timeout(Duration::from_secs(1), client.read_exact(&mut buf))
            .await
            .expect("the bytes arrive")
            .unwrap();
        buf
    }

    /// Nothing more has arrived within a short wait.
    async fn nothing_more(client: &mut TcpStream) {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(100), client.read(&mut byte)).await;
        assert!(read.is_err(), "unexpected bytes: {byte:?}");
    }

    #[tokio::test]
    async fn the_hub_writes_after_hyper_and_ends_the_body_once() {
        let (socket, mut client) = connection().await;
        let mut io = ConnIo(socket.clone());
        let handed = socket.hand_off(1);
        let mut wakes = Vec::new();
        let now = Instant::now();
        // Before hyper flushed its head the hub's chunk waits.
        let first = events(&[(1, "job.queued"), (2, "job.started")]);
        socket.push_events(handed.generation, &first, now, &mut wakes);
        io.write_all(b"HEAD").await.unwrap();
        assert_eq!(read_exactly(&mut client, 4).await, b"HEAD");
        nothing_more(&mut client).await;
        io.flush().await.unwrap();
        let expected = wire::chunk(&first[1]);
        assert_eq!(
            read_exactly(&mut client, expected.len()).await,
            expected[..]
        );

        // Duplicates are skipped; the terminal event carries the end of the body.
        let rest = events(&[(2, "job.started"), (3, "job.succeeded")]);
        socket.push_events(handed.generation, &rest, now, &mut wakes);
        let expected = [&wire::chunk(&rest[1])[..], END_CHUNK].concat();
        assert_eq!(wire::last_chunk(&rest[1]), &expected);
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
        let end = std::future::poll_fn(|cx| Poll::Ready(socket.poll_end(cx))).await;
        assert_eq!(end, Poll::Ready(End::Finished));

        // Hyper's own end of the body is not written again; what follows is.
        io.write_all(END_CHUNK).await.unwrap();
        io.write_all(b"NEXT").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(read_exactly(&mut client, 4).await, b"NEXT");
        socket.take_back(handed.generation);
        nothing_more(&mut client).await;
    }

    #[tokio::test]
    async fn work_for_an_earlier_stream_never_reaches_a_later_one() {
        let (socket, mut client) = connection().await;
        let mut io = ConnIo(socket.clone());
        let old = socket.hand_off(0);
        socket.take_back(old.generation);
        let new = socket.hand_off(0);
        io.flush().await.unwrap();
        let mut wakes = Vec::new();
        let events = events(&[(5, "turn.edited")]);
        socket.push_events(old.generation, &events, Instant::now(), &mut wakes);
        nothing_more(&mut client).await;
        socket.push_events(new.generation, &events, Instant::now(), &mut wakes);
        assert_eq!(
            read_exactly(&mut client, wire::chunk(&events[0]).len()).await,
            wire::chunk(&events[0])[..]
        );
    }

    #[tokio::test]
    async fn keep_alive_comments_go_only_to_quiet_streams() {
        let (socket, mut client) = connection().await;
        let mut io = ConnIo(socket.clone());
        let handed = socket.hand_off(0);
        io.flush().await.unwrap();
        let mut wakes = Vec::new();
        let now = Instant::now();
        socket.push_events(
            handed.generation,
            &events(&[(1, "job.queued")]),
            now,
            &mut wakes,
        );
        let sent = wire::chunk(&events(&[(1, "job.queued")])[0]).len();
        read_exactly(&mut client, sent).await;
        socket.push_comment(handed.generation, now + KEEP_ALIVE / 2, &mut wakes);
        nothing_more(&mut client).await;
        socket.push_comment(handed.generation, now + KEEP_ALIVE, &mut wakes);
        assert_eq!(
            read_exactly(&mut client, COMMENT_CHUNK.len()).await,
            COMMENT_CHUNK
        );
        assert!(wakes.is_empty(), "nothing was queued, so nothing to drain");
    }

    #[tokio::test]
    async fn a_failed_write_ends_the_stream_at_once() {
        let (socket, client) = connection().await;
        let mut io = ConnIo(socket.clone());
        let handed = socket.hand_off(0);
        io.flush().await.unwrap();
        client.set_zero_linger().unwrap();
        drop(client);
        // The reset is reported as an error on the socket, with nothing read.
        tokio::time::timeout(Duration::from_secs(2), socket.clone().failed())
            .await
            .expect("the socket reports the reset");
        let mut wakes = Vec::new();
        let events = events(&[(1, "job.queued"), (2, "job.started")]);
        socket.push_events(handed.generation, &events, Instant::now(), &mut wakes);
        let end = std::future::poll_fn(|cx| Poll::Ready(socket.poll_end(cx))).await;
        assert_eq!(end, Poll::Ready(End::Broken));
    }

    #[tokio::test]
    async fn other_bytes_where_the_end_of_the_body_was_written_close_the_connection() {
        let (socket, mut client) = connection().await;
        let mut io = ConnIo(socket.clone());
        let handed = socket.hand_off(0);
        io.flush().await.unwrap();
        let mut wakes = Vec::new();
        let events = events(&[(1, "job.canceled")]);
        socket.push_events(handed.generation, &events, Instant::now(), &mut wakes);
        let sent = wire::last_chunk(&events[0]);
        assert_eq!(read_exactly(&mut client, sent.len()).await, sent[..]);
        // Hyper writes something other than the end of the body it owes.
        let error = io.write_all(b"1\r\nX\r\n").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        // And nothing after that reaches the client either.
        assert!(io.write_all(END_CHUNK).await.is_err());
        socket.take_back(handed.generation);
        drop((io, handed, socket));
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut rest))
            .await
            .expect("the connection is closed")
            .unwrap();
        assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
    }

    /// A body of data frames and then its end.
    struct Frames(VecDeque<Bytes>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    /// The hub writes chunks and the end of a chunked body in the bytes
    /// hyper uses, and skips hyper's own end: if the hyper in Cargo.lock
    /// frames a body differently, this fails (and so would the skip, which
    /// then closes connections and counts framing mismatches).
    #[tokio::test]
    async fn hyper_ends_a_chunked_body_as_the_hub_does() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = events(&[(1, "job.queued"), (2, "job.succeeded")]);
        let texts: VecDeque<Bytes> = events.iter().map(wire::sse_text).cloned().collect();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |_| {
                let body = Frames(texts.clone());
                async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
                .unwrap();
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut response))
            .await
            .expect("the response ends")
            .unwrap();
        let at = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let head = String::from_utf8_lossy(&response[..at]).to_ascii_lowercase();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let body = &response[at + 4..];
        let expected = [
            &wire::chunk(&events[0])[..],
            &wire::last_chunk(&events[1])[..],
        ]
        .concat();
        assert_eq!(
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&expected)
        );
        assert!(body.ends_with(END_CHUNK));
    }
}
