//! SSE fan-out benchmark (not a test: run it by hand).
//!
//!     cargo bench --bench sse                       # 10,000 streams on one job
//!     BENCH_STREAMS=1000 BENCH_JOBS=10 cargo bench --bench sse
//!
//! Starts the real binary as ONE `api` process (no worker, so jobs stay
//! queued and idle) on a fresh Postgres database (DATABASE_URL, default the
//! local server), creates BENCH_JOBS jobs through the API, opens
//! BENCH_STREAMS concurrent `GET /v1/jobs/{id}/events` streams spread over
//! them (stream i watches job i mod BENCH_JOBS), then reports:
//! - idle DB cost: transactions per second in the bench database
//!   (`pg_stat_database`) while every stream is open and idle;
//! - fan-out latency: BENCH_EVENTS stored events written straight into
//!   `job_events` with their NOTIFY (one per watched job per round), then a
//!   `POST /v1/jobs/{id}/cancel` per job (the terminal `job.canceled`); per
//!   event, (arrival − first arrival) and (arrival − send) across streams;
//! - the `api` process's RSS (VmRSS, VmHWM), open fds and CPU.
//!
//! The client is deliberately lean: one raw TCP connection per stream, a
//! minimal HTTP/1.1 GET, a chunked-body decoder and a byte scanner for the
//! `id:`/`event:` lines of each frame; no HTTP client library per stream.
//! Arrivals are timed twice: by the kernel's receive timestamp on the
//! client socket (SO_TIMESTAMPNS: when the server's bytes got there, free of
//! the bench's own scheduling) and by when the bench's task read them. The
//! client shares the machine with the server; the bench prints the CPU the
//! api, the bench and everything else used during the event phase, and a
//! WARNING when other work took more than a fifth of the machine.
//!
//! It runs twice, once per `[http] sse_direct_writes` mode (hub writes,
//! then hyper's path), and ends with both modes' figures side by side.
//!
//! Knobs (environment):
//! - BENCH_MODES (both): `direct` or `hyper` runs only that mode;
//! - BENCH_STREAMS (10000), BENCH_JOBS (1), BENCH_EVENTS (5);
//! - BENCH_IDLE_SECS (20): the idle window; BENCH_BASELINE_SECS (10): the
//!   window with no stream open (0 skips it); BENCH_SETTLE_SECS (12): the
//!   pause between opening the streams and the idle window (PostgreSQL
//!   reports an idle backend's counters up to 10 s late, so the opening
//!   burst would otherwise be counted as idle cost);
//! - BENCH_CONNECT_PARALLEL (256): streams being opened at once;
//! - BENCH_OPEN_TIMEOUT_SECS (300), BENCH_EVENT_TIMEOUT_SECS (30);
//! - BENCH_EVENT_GAP_MS (1000): pause between events;
//! - BENCH_CLIENT_THREADS (2): the bench's own tokio worker threads;
//! - BENCH_CLIENT_SCHED (unset): `idle` puts the bench's threads under
//!   SCHED_IDLE as well, so they run only when the server leaves a core
//!   free (the api child is put back under the normal policy);
//! - BENCH_CLIENT_NICE (10): the bench's own scheduling niceness. The api
//!   process runs at 0 (the bench resets it when it starts the child), so
//!   the client, which in a deployment runs elsewhere, takes the CPU the
//!   server leaves rather than half of it. The kernel receive timestamps
//!   stay exact either way; the bench's own read times include its delay;
//! - BENCH_KEEP_DB=1 keeps the bench database afterwards.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TARGET_IDLE_TPS: f64 = 50.0;
const TARGET_FANOUT_P99: Duration = Duration::from_millis(100);
const TARGET_RSS_MB: f64 = 250.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The niceness the bench's threads run at (they inherit it from `main`).
fn client_nice() -> i32 {
    env_or("BENCH_CLIENT_NICE", 10)
}

/// Sets the calling thread's niceness (threads it creates inherit it).
fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: a plain libc call; `0` means the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the bench's threads run under SCHED_IDLE (BENCH_CLIENT_SCHED=idle):
/// they then get only the CPU the server leaves, as a client on another
/// machine would; plain `nice 10` still takes about a tenth of a busy core.
fn client_idle() -> bool {
    std::env::var("BENCH_CLIENT_SCHED").is_ok_and(|v| v == "idle")
}

/// Sets the calling thread's scheduling policy (threads it creates inherit it).
fn set_policy(policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain libc call; `0` means the calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() {
    if let Err(e) = set_nice(client_nice()) {
        eprintln!("warning: could not set the bench's niceness: {e}");
    }
    if client_idle() {
        if let Err(e) = set_policy(libc::SCHED_IDLE) {
            eprintln!("warning: could not put the bench under SCHED_IDLE: {e}");
        }
    }
    let threads: usize = env_or("BENCH_CLIENT_THREADS", 2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run());
}

// ---------------------------------------------------------------- limits

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; the `api` child
/// inherits it. Returns (soft, hard) after the change.
fn raise_nofile() -> (libc::rlim_t, libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a stack value.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            panic!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                eprintln!(
                    "warning: setrlimit(RLIMIT_NOFILE) failed: {}",
                    std::io::Error::last_os_error()
                );
            } else {
                lim = want;
            }
        }
    }
    (lim.rlim_cur, lim.rlim_max)
}

// ---------------------------------------------------------------- the api child

/// The `api` process: started by hand (not through `common::Service`) so
/// the bench knows its pid and controls its logging and shutdown.
struct Api {
    child: Child,
    addr: SocketAddr,
    /// The last log lines, for an error report when it dies.
    tail: Arc<Mutex<VecDeque<String>>>,
    /// WARN / ERROR lines counted so far, by level.
    warns: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    /// A few distinct warning messages (first occurrence each).
    samples: Arc<Mutex<Vec<String>>>,
}

impl Api {
    fn start(config: &Path, mode: SseMode) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_editthinker"));
        // SAFETY: only an async-signal-safe libc call between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                // Back to the normal policy and priority (a raise needs
                // root or CAP_SYS_NICE; without it the api keeps the bench's).
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
                libc::setpriority(libc::PRIO_PROCESS, 0, 0);
                Ok(())
            });
        }
        let mut child = command
            .arg("api")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn,editthinker::roles=info")
            .env("NO_COLOR", "1")
            .env("EDITTHINKER_METRICS__LISTEN", "127.0.0.1:0")
            .env(mode.env().0, mode.env().1)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the editthinker binary");
        let stderr = child.stderr.take().unwrap();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let warns = Arc::new(Mutex::new(BTreeMap::new()));
        let samples = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let (tail, warns, samples) = (tail.clone(), warns.clone(), samples.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening addr=").nth(1) {
                        if let Some(addr) = rest
                            .split_whitespace()
                            .next()
                            .and_then(|a| a.parse::<SocketAddr>().ok())
                        {
                            let _ = tx.send(addr);
                        }
                    }
                    let level = if line.contains(" ERROR ") {
                        Some("ERROR")
                    } else if line.contains(" WARN ") {
                        Some("WARN")
                    } else {
                        None
                    };
                    if let Some(level) = level {
                        *warns.lock().unwrap().entry(level).or_default() += 1;
                        let mut s = samples.lock().unwrap();
                        // One sample per distinct message (text after the level).
                        let key = line.split(level).nth(1).unwrap_or(&line).to_string();
                        let key: String = key.chars().take(60).collect();
                        if s.len() < 8 && !s.iter().any(|l| l.contains(&key)) {
                            eprintln!("[api] {line}");
                            s.push(line.clone());
                        }
                    }
                    let mut t = tail.lock().unwrap();
                    if t.len() == 40 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
                panic!(
                    "the api process did not report a listening address within 60 s \
                     (exit: {status:?}); last log lines:\n{}",
                    tail.join("\n")
                );
            }
        };
        Self {
            child,
            addr,
            tail,
            warns,
            samples,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Panics with the last log lines when the process has exited.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            std::thread::sleep(Duration::from_millis(200)); // let the log reader catch up
            let tail: Vec<String> = self.tail.lock().unwrap().iter().cloned().collect();
            panic!(
                "the api process died ({status}); last log lines:\n{}",
                tail.join("\n")
            );
        }
    }

    /// SIGTERM, a bounded wait, then SIGKILL.
    fn stop(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("had already exited ({status})");
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!("stopped on SIGTERM ({status})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        "did not stop within 15 s of SIGTERM; killed".into()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What /proc says about a process.
#[derive(Debug, Clone, Copy, Default)]
struct ProcStats {
    rss_kb: u64,
    hwm_kb: u64,
    threads: u64,
    fds: u64,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

fn proc_stats(pid: u32) -> ProcStats {
    let mut s = ProcStats::default();
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let num = || {
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("VmRSS:") {
                s.rss_kb = num();
            } else if line.starts_with("VmHWM:") {
                s.hwm_kb = num();
            } else if line.starts_with("Threads:") {
                s.threads = num();
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        s.fds = dir.count() as u64;
    }
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 (1-based) of the whole line.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            s.cpu_ticks = get(11) + get(12);
        }
    }
    s
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time (user + system) this bench process has used.
fn self_cpu() -> Duration {
    // SAFETY: getrusage fills a zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Busy CPU time of the whole machine (all CPUs), from /proc/stat.
fn machine_busy() -> Duration {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice: busy =
    // user + nice + system + irq + softirq + steal (guest time is already in
    // user and nice; steal is CPU the hypervisor gave to someone else).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum();
    Duration::from_secs_f64(busy as f64 / clock_ticks())
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

// ---------------------------------------------------------------- database stats

/// Samples `pg_stat_database` through a connection to the admin database,
/// so the sampler's own transactions are not counted in the bench database
/// (nothing to subtract). `pg_stat_force_next_flush()` would not help here:
/// it flushes only the calling backend's counters, not the api's; the bench
/// waits out the flush delay instead (see BENCH_SETTLE_SECS).
struct StatSampler {
    conn: PgConnection,
    db: String,
}

impl StatSampler {
    async fn connect(db: &str) -> Self {
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("connecting to {admin} for pg_stat_database: {e}"));
        Self {
            conn,
            db: db.to_string(),
        }
    }

    /// xact_commit + xact_rollback of the bench database.
    async fn xacts(&mut self) -> i64 {
        // A fresh snapshot each time (stats_fetch_consistency may cache).
        let _ = sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut self.conn)
            .await;
        sqlx::query(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&self.db)
        .fetch_one(&mut self.conn)
        .await
        .map(|r| r.get::<i64, _>(0))
        .expect("reading pg_stat_database")
    }

    /// Backends connected to the bench database.
    async fn backends(&mut self) -> i64 {
        sqlx::query("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
            .bind(&self.db)
            .fetch_one(&mut self.conn)
            .await
            .map(|r| r.get::<i64, _>(0))
            .unwrap_or(-1)
    }
}

/// Transactions per second over a window: the plain delta, and the slope of
/// a least-squares fit through one sample a second (less sensitive to the
/// delay with which backends flush their counters, up to ~1 s when busy and
/// up to 10 s when idle in PostgreSQL 15+).
struct TxRate {
    delta_per_s: f64,
    slope_per_s: f64,
    window: Duration,
    total: i64,
    cpu_percent: f64,
}

async fn measure_tx(sampler: &mut StatSampler, api: &mut Api, secs: u64, label: &str) -> TxRate {
    let t0 = Instant::now();
    let cpu0 = proc_stats(api.pid()).cpu_ticks;
    let mut samples = vec![(0.0, sampler.xacts().await)];
    for i in 1..=secs {
        tokio::time::sleep_until((t0 + Duration::from_secs(i)).into()).await;
        api.check_alive();
        samples.push((t0.elapsed().as_secs_f64(), sampler.xacts().await));
    }
    let window = t0.elapsed();
    let cpu1 = proc_stats(api.pid()).cpu_ticks;
    let (first, last) = (samples[0].1, samples[samples.len() - 1].1);
    let n = samples.len() as f64;
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    let rate = TxRate {
        delta_per_s: (last - first) as f64 / window.as_secs_f64(),
        slope_per_s: if sxx > 0.0 { sxy / sxx } else { 0.0 },
        window,
        total: last - first,
        cpu_percent: (cpu1 - cpu0) as f64 / clock_ticks() / window.as_secs_f64() * 100.0,
    };
    let series: Vec<String> = samples
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).to_string())
        .collect();
    println!(
        "{label:<28} {} tx in {:.1?}: {:.1} tx/s (fit {:.1} tx/s); api CPU {:.1}%; per second: {}",
        rate.total,
        rate.window,
        rate.delta_per_s,
        rate.slope_per_s,
        rate.cpu_percent,
        series.join(" ")
    );
    rate
}

// ---------------------------------------------------------------- the lean SSE client

/// What a stream task reports.
enum Msg {
    /// Response head read: 200 and `text/event-stream`.
    Opened,
    /// The stream failed (connect, head, read); it is over.
    Failed { phase: &'static str, error: String },
    /// A frame with an `id:` arrived (stored event), completed by the read
    /// that `stamp` describes.
    Frame {
        stream: usize,
        id: i64,
        terminal: bool,
        stamp: Stamp,
    },
    /// The server ended the stream (EOF or the last chunk).
    Closed { after_terminal: bool },
}

/// When a read returned, and when the kernel received its data.
#[derive(Clone, Copy)]
struct Stamp {
    /// The read returned (monotonic).
    at: Instant,
    /// The read returned (wall clock, since the epoch).
    wall: Duration,
    /// The kernel's receive timestamp of the data (SO_TIMESTAMPNS, wall
    /// clock): on loopback, the moment the server's write reached this
    /// socket, free of the bench client's own scheduling delay.
    rx: Option<Duration>,
}

fn wall_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Asks the kernel for receive timestamps on a socket.
fn enable_rx_timestamps(fd: std::os::fd::RawFd) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// One non-blocking recvmsg: the bytes read and the kernel's receive
/// timestamp, when it gave one.
fn recv_stamped(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<Duration>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer in it outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut rx = None;
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                rx = Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, rx))
}

/// Incremental decoder for a chunked body.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
    size: u64,
}

#[derive(Default, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    /// Chunk extensions, up to the line's end.
    Ext,
    Data,
    /// The CRLF after a chunk's data.
    DataEnd,
    Done,
}

impl Chunked {
    /// Feeds raw bytes; calls `out` with decoded body bytes.
    fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(&[u8])) -> Result<(), String> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size | ChunkState::Ext => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.state = if self.size == 0 {
                            ChunkState::Done
                        } else {
                            ChunkState::Data
                        };
                    } else if self.state == ChunkState::Size {
                        match (b as char).to_digit(16) {
                            Some(d) => self.size = self.size * 16 + d as u64,
                            None if b == b';' || b == b'\r' || b == b' ' => {
                                self.state = ChunkState::Ext
                            }
                            None => return Err(format!("bad chunk size byte {b:#x}")),
                        }
                    }
                }
                ChunkState::Data => {
                    let n = (self.size as usize).min(input.len());
                    out(&input[..n]);
                    input = &input[n..];
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                }
                ChunkState::DataEnd => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
                ChunkState::Done => return Ok(()),
            }
        }
        Ok(())
    }
}

/// Scans an SSE body for frames, keeping only each line's first bytes.
#[derive(Default)]
struct SseScanner {
    line: Vec<u8>,
    id: Option<i64>,
    terminal: bool,
}

const LINE_KEEP: usize = 64;

impl SseScanner {
    /// Feeds body bytes; calls `frame(id, terminal)` for each complete frame
    /// that carried an `id:`.
    fn feed(&mut self, data: &[u8], frame: &mut impl FnMut(i64, bool)) {
        for &b in data {
            if b == b'\n' {
                let mut line = &self.line[..];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                if line.is_empty() {
                    if let Some(id) = self.id.take() {
                        frame(id, self.terminal);
                    }
                    self.terminal = false;
                } else if let Some(v) = line.strip_prefix(b"id:") {
                    self.id = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                } else if let Some(v) = line.strip_prefix(b"event:") {
                    let v = v.trim_ascii();
                    self.terminal =
                        v == b"job.succeeded" || v == b"job.failed" || v == b"job.canceled";
                }
                self.line.clear();
            } else if self.line.len() < LINE_KEEP {
                self.line.push(b);
            }
        }
    }
}

/// One stream: connect, GET, read the head, then scan frames until the
/// server ends the stream or `stop` fires.
async fn stream_task(
    stream: usize,
    addr: SocketAddr,
    path: String,
    permits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Msg>,
    stop: CancellationToken,
) {
    let fail = |phase: &'static str, error: String| {
        let _ = tx.send(Msg::Failed { phase, error });
    };
    let permit = tokio::select! {
        p = permits.acquire_owned() => p.expect("semaphore open"),
        _ = stop.cancelled() => return,
    };
    let mut sock =
        match tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return fail("connect", e.to_string()),
            Err(_) => return fail("connect", "timed out after 30 s".into()),
        };
    let _ = sock.set_nodelay(true);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    if let Err(e) = sock.write_all(request.as_bytes()).await {
        return fail("request", e.to_string());
    }
    // The head, bounded in size and time.
    let mut buf = vec![0u8; 2048];
    let mut head = Vec::with_capacity(512);
    let head_deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let body_start = loop {
        let read = tokio::select! {
            r = tokio::time::timeout_at(head_deadline, sock.read(&mut buf)) => r,
            _ = stop.cancelled() => return,
        };
        match read {
            Ok(Ok(0)) => return fail("head", "connection closed before the response head".into()),
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return fail("head", e.to_string()),
            Err(_) => return fail("head", "no response head within 120 s".into()),
        }
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if head.len() > 16 * 1024 {
            return fail("head", "response head over 16 KiB".into());
        }
    };
    let head_text = String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase();
    let status = head_text
        .split_whitespace()
        .nth(1)
        .unwrap_or("?")
        .to_string();
    if status != "200" {
        return fail("head", format!("HTTP status {status}"));
    }
    if !head_text.contains("content-type: text/event-stream") {
        return fail("head", "not text/event-stream".into());
    }
    let chunked = head_text.contains("transfer-encoding: chunked");
    let _ = tx.send(Msg::Opened);
    drop(permit);

    let mut body = Body {
        chunked,
        decoder: Chunked::default(),
        scanner: SseScanner::default(),
        seen_terminal: false,
    };
    let ended = |body: &Body| {
        let _ = tx.send(Msg::Closed {
            after_terminal: body.seen_terminal,
        });
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let stamped = enable_rx_timestamps(fd);
    let stamp = Stamp {
        at: Instant::now(),
        wall: wall_now(),
        rx: None,
    };
    match body.process(&head[body_start..], stamp, stream, &tx) {
        Ok(true) => return ended(&body),
        Ok(false) => {}
        Err(e) => return fail("body", e),
    }
    drop(head);
    loop {
        let read = tokio::select! {
            r = read_stamped(&sock, fd, stamped, &mut buf) => r,
            _ = stop.cancelled() => return,
        };
        let (at, wall) = (Instant::now(), wall_now());
        match read {
            Ok((0, _)) => return ended(&body),
            Ok((n, rx)) => match body.process(&buf[..n], Stamp { at, wall, rx }, stream, &tx) {
                Ok(true) => return ended(&body),
                Ok(false) => {}
                Err(e) => return fail("body", e),
            },
            Err(e) => return fail("body", e.to_string()),
        }
    }
}

/// Reads what is there, with the kernel's receive timestamp when enabled.
async fn read_stamped(
    sock: &TcpStream,
    fd: std::os::fd::RawFd,
    stamped: bool,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<Duration>)> {
    loop {
        sock.readable().await?;
        let r = sock.try_io(tokio::io::Interest::READABLE, || {
            if stamped {
                recv_stamped(fd, buf)
            } else {
                // SAFETY: reading into a live buffer of its own length.
                let n = unsafe {
                    libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok((n as usize, None))
                }
            }
        });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// A stream's body decoding state.
struct Body {
    chunked: bool,
    decoder: Chunked,
    scanner: SseScanner,
    seen_terminal: bool,
}

impl Body {
    /// Decodes raw bytes and reports each complete frame; returns whether
    /// the body ended (the last chunk).
    fn process(
        &mut self,
        data: &[u8],
        stamp: Stamp,
        stream: usize,
        tx: &mpsc::UnboundedSender<Msg>,
    ) -> Result<bool, String> {
        let seen = &mut self.seen_terminal;
        let mut on_frame = |id, terminal| {
            *seen |= terminal;
            let _ = tx.send(Msg::Frame {
                stream,
                id,
                terminal,
                stamp,
            });
        };
        if self.chunked {
            let scanner = &mut self.scanner;
            self.decoder
                .feed(data, &mut |d| scanner.feed(d, &mut on_frame))?;
            Ok(self.decoder.state == ChunkState::Done)
        } else {
            self.scanner.feed(data, &mut on_frame);
            Ok(false)
        }
    }
}

// ---------------------------------------------------------------- collection

/// One measured event: one stored event per watched job, sent at once.
struct Round {
    label: String,
    /// Send time per job index.
    sent: Vec<(Instant, Duration)>,
    /// Event id → job index (empty for the cancel round, matched by `terminal`).
    ids: HashMap<i64, usize>,
    terminal: bool,
    /// Streams open when it was sent.
    expected: usize,
    /// (arrival, job index) per stream that got it.
    arrivals: Vec<(Stamp, usize)>,
}

struct Collector {
    rx: mpsc::UnboundedReceiver<Msg>,
    jobs: usize,
    opened: usize,
    /// Streams that failed before their response head.
    failed: usize,
    /// Streams that failed after it.
    broken: usize,
    failures: BTreeMap<String, usize>,
    /// Streams that got at least one frame (the replay of `job.queued`).
    replayed: Vec<bool>,
    replayed_count: usize,
    closed: usize,
    closed_after_terminal: usize,
    closed_early: usize,
    rounds: Vec<Round>,
    /// Frames with ids we did not write (the replay, or anything else).
    other_frames: usize,
}

impl Collector {
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Opened => self.opened += 1,
            Msg::Failed { phase, error } => {
                if phase == "body" {
                    self.broken += 1;
                } else {
                    self.failed += 1;
                }
                *self
                    .failures
                    .entry(format!("{phase}: {error}"))
                    .or_default() += 1;
            }
            Msg::Frame {
                stream,
                id,
                terminal,
                stamp,
            } => {
                if !self.replayed[stream] {
                    self.replayed[stream] = true;
                    self.replayed_count += 1;
                }
                let job = stream % self.jobs;
                let round = self.rounds.iter_mut().rev().find(|r| {
                    if r.terminal {
                        terminal
                    } else {
                        r.ids.get(&id) == Some(&job)
                    }
                });
                match round {
                    Some(r) => r.arrivals.push((stamp, job)),
                    None => self.other_frames += 1,
                }
            }
            Msg::Closed { after_terminal } => {
                self.closed += 1;
                if after_terminal {
                    self.closed_after_terminal += 1;
                } else {
                    self.closed_early += 1;
                }
            }
        }
    }

    /// Handles messages until `done` holds or `deadline` passes; checks the
    /// api process twice a second. Returns whether `done` held.
    async fn pump_until(
        &mut self,
        api: &mut Api,
        deadline: Instant,
        done: impl Fn(&Self) -> bool,
    ) -> bool {
        let mut last_check = Instant::now();
        loop {
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
            }
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if now - last_check > Duration::from_millis(500) {
                api.check_alive();
                last_check = now;
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            if let Ok(Some(msg)) = tokio::time::timeout(wait, self.rx.recv()).await {
                self.handle(msg);
            }
        }
    }

    /// Streams still open: opened, not failed afterwards, not closed.
    fn live(&self) -> usize {
        self.opened.saturating_sub(self.closed + self.broken)
    }
}

/// p50 / p99 / max of a set of durations.
#[derive(Clone, Copy)]
struct Pcts {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn pcts(mut v: Vec<Duration>) -> Option<Pcts> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    Some(Pcts {
        p50: at(0.50),
        p99: at(0.99),
        max: v[v.len() - 1],
    })
}

fn fmt_d(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn fmt_p(p: Option<Pcts>) -> String {
    match p {
        Some(p) => format!(
            "{:>9} {:>9} {:>9}",
            fmt_d(p.p50),
            fmt_d(p.p99),
            fmt_d(p.max)
        ),
        None => format!("{:>9} {:>9} {:>9}", "-", "-", "-"),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

/// A process's niceness, from /proc (field 19 of `stat`).
fn niceness_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name may hold spaces: count fields after its ')'.
            let rest = stat.rsplit_once(')')?.1;
            rest.split_whitespace().nth(16).map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------- the run

/// The figures compared across modes.
struct Summary {
    mode: SseMode,
    opened: usize,
    idle_tps: f64,
    idle_cpu_percent: f64,
    /// Worst and median per-event p99 spread (kernel receive timestamps).
    rx_p99_worst: Option<Duration>,
    rx_p99_median: Option<Duration>,
    /// Worst per-event p99 of (kernel receive − send).
    since_send_p99_worst: Option<Duration>,
    missing: usize,
    api_ms_per_event: f64,
    rss_mb: f64,
    hwm_mb: f64,
    busy_machine: bool,
}

/// Runs the bench once per mode in BENCH_MODES (`both`, the default,
/// `direct` or `hyper`), each on a fresh database and api process, then
/// prints their figures side by side.
async fn run() {
    let (soft, hard) = raise_nofile();
    println!("RLIMIT_NOFILE: soft {soft}, hard {hard} (the api process inherits it)");
    let modes = match std::env::var("BENCH_MODES").as_deref() {
        Ok("direct") => vec![SseMode::Direct],
        Ok("hyper") => vec![SseMode::Hyper],
        _ => vec![SseMode::Direct, SseMode::Hyper],
    };
    let mut summaries = Vec::new();
    for mode in modes {
        println!();
        println!(
            "======== [http] sse_direct_writes = {} ========",
            mode.env().1
        );
        summaries.push(run_mode(mode, soft).await);
    }
    println!();
    println!("Both modes, side by side (each on its own fresh database and api process):");
    print!("{:<44}", "figure");
    for s in &summaries {
        print!(" {:>22}", format!("sse_direct_writes={}", s.mode.env().1));
    }
    println!();
    let row = |name: &str, f: &dyn Fn(&Summary) -> String| {
        print!("{name:<44}");
        for s in &summaries {
            print!(" {:>22}", f(s));
        }
        println!();
    };
    let d = |d: Option<Duration>| d.map_or("-".to_owned(), fmt_d);
    row("streams opened", &|s| s.opened.to_string());
    row("DB tx/s, idle with streams", &|s| {
        format!("{:.1}", s.idle_tps)
    });
    row("api CPU, idle with streams", &|s| {
        format!("{:.1} %", s.idle_cpu_percent)
    });
    row(
        "fan-out p99 after first (rx), worst",
        &|s| d(s.rx_p99_worst),
    );
    row("fan-out p99 after first (rx), median", &|s| {
        d(s.rx_p99_median)
    });
    row("rx − send p99, worst event", &|s| {
        d(s.since_send_p99_worst)
    });
    row("stream × event deliveries missing", &|s| {
        s.missing.to_string()
    });
    row("api CPU per event (event phase)", &|s| {
        format!("{:.0} ms", s.api_ms_per_event)
    });
    row("api VmRSS, idle with streams", &|s| {
        format!("{:.1} MB", s.rss_mb)
    });
    row("api VmHWM (peak) at the end", &|s| {
        format!("{:.1} MB", s.hwm_mb)
    });
    row("other load during the event phase", &|s| {
        if s.busy_machine {
            "BUSY (see above)"
        } else {
            "quiet"
        }
        .to_owned()
    });
}

async fn run_mode(mode: SseMode, soft: libc::rlim_t) -> Summary {
    let streams: usize = env_or("BENCH_STREAMS", 10_000);
    let jobs: usize = env_or::<usize>("BENCH_JOBS", 1).clamp(1, streams.max(1));
    let events: usize = env_or("BENCH_EVENTS", 5);
    let idle_secs: u64 = env_or("BENCH_IDLE_SECS", 20);
    let baseline_secs: u64 = env_or("BENCH_BASELINE_SECS", 10);
    let parallel: usize = env_or::<usize>("BENCH_CONNECT_PARALLEL", 256).max(1);
    let open_timeout = Duration::from_secs(env_or("BENCH_OPEN_TIMEOUT_SECS", 300));
    let event_timeout = Duration::from_secs(env_or("BENCH_EVENT_TIMEOUT_SECS", 30));
    let event_gap = Duration::from_millis(env_or("BENCH_EVENT_GAP_MS", 1000));
    let settle = Duration::from_secs(env_or("BENCH_SETTLE_SECS", 12));
    let keep_db = std::env::var("BENCH_KEEP_DB").is_ok_and(|v| v == "1");

    let need = streams as libc::rlim_t + 256;
    if soft < need {
        eprintln!(
            "warning: RLIMIT_NOFILE {soft} is below the {need} descriptors {streams} streams need \
             in each process; expect connect/accept failures"
        );
    }

    let env = TestEnv::new(Backend::Postgres).await;
    let db_name = env
        .database_url
        .rsplit_once('/')
        .map(|(_, n)| n.to_string())
        .unwrap();
    env.migrate();
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    let backends = backends_config(&thinker, &editor, env.dir.path());
    // One tenant opens every stream: no per-tenant stream limit.
    let backends = format!("{backends}\n[limits]\nmax_streams_per_tenant = 0\n");
    let mut api = Api::start(&env.config("api", &backends), mode);
    let pid = api.pid();
    println!(
        "api pid {pid} at {}; database {db_name}; {streams} streams over {jobs} job(s)",
        api.addr
    );
    println!(
        "niceness: bench client {}{}, api {}",
        client_nice(),
        if client_idle() {
            " under SCHED_IDLE"
        } else {
            ""
        },
        niceness_of(pid)
    );

    // Jobs, all queued and idle (no worker).
    let client = reqwest::Client::new();
    let image = png(16, 16, [0, 0, 0]);
    let body = job_body(&image, "make it brighter", json!({"max_turns": 1}));
    let mut ids: Vec<Uuid> = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let resp = client
            .post(api.url("/v1/jobs"))
            .json(&body)
            .send()
            .await
            .expect("POST /v1/jobs");
        let status = resp.status();
        let job: serde_json::Value = resp.json().await.unwrap_or_default();
        assert_eq!(status, 202, "creating a job: {job}");
        ids.push(job["id"].as_str().unwrap().parse().unwrap());
    }

    let mut sampler = StatSampler::connect(&db_name).await;
    let idle0 = proc_stats(pid);
    println!(
        "api before streams: VmRSS {:.1} MB, VmHWM {:.1} MB, {} threads, {} fds",
        mb(idle0.rss_kb),
        mb(idle0.hwm_kb),
        idle0.threads,
        idle0.fds
    );
    let baseline = if baseline_secs > 0 {
        tokio::time::sleep(settle).await;
        Some(measure_tx(&mut sampler, &mut api, baseline_secs, "idle, no streams").await)
    } else {
        None
    };

    // Open the streams.
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(parallel));
    let mut collector = Collector {
        rx,
        jobs,
        opened: 0,
        failed: 0,
        broken: 0,
        failures: BTreeMap::new(),
        replayed: vec![false; streams],
        replayed_count: 0,
        closed: 0,
        closed_after_terminal: 0,
        closed_early: 0,
        rounds: Vec::new(),
        other_frames: 0,
    };
    let open_started = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for i in 0..streams {
        let path = format!("/v1/jobs/{}/events", ids[i % jobs]);
        tasks.push(tokio::spawn(stream_task(
            i,
            api.addr,
            path,
            permits.clone(),
            tx.clone(),
            stop.clone(),
        )));
    }
    drop(tx);
    let all_open = collector
        .pump_until(&mut api, open_started + open_timeout, |c| {
            c.opened + c.failed >= streams
        })
        .await;
    let open_time = open_started.elapsed();
    println!(
        "opened {}/{streams} streams in {open_time:.2?} ({} failed{})",
        collector.opened,
        collector.failed,
        if all_open {
            ""
        } else {
            ", open phase timed out"
        }
    );
    for (what, n) in &collector.failures {
        println!("  {n} × {what}");
    }
    // Every open stream first gets the replay of `job.queued`.
    let replay_deadline = Instant::now() + Duration::from_secs(60);
    let replays_done = collector
        .pump_until(&mut api, replay_deadline, |c| c.replayed_count >= c.opened)
        .await;
    println!(
        "replay received on {}/{} open streams{}",
        collector.replayed_count,
        collector.opened,
        if replays_done {
            ""
        } else {
            " (gave up waiting after 60 s)"
        }
    );
    // Let the open burst's queries and their statistics settle: an idle
    // backend reports pending counters up to 10 s late (PostgreSQL 15+,
    // PGSTAT_IDLE_INTERVAL), which would land in the idle window.
    collector
        .pump_until(&mut api, Instant::now() + settle, |_| false)
        .await;
    let backends_idle = sampler.backends().await;
    let idle = measure_tx(
        &mut sampler,
        &mut api,
        idle_secs,
        &format!("idle, {} streams", collector.live()),
    )
    .await;
    let idle_stats = proc_stats(pid);
    println!(
        "api idle with {} streams: VmRSS {:.1} MB, VmHWM {:.1} MB, {} threads, {} fds; {} backends on the bench database",
        collector.live(),
        mb(idle_stats.rss_kb),
        mb(idle_stats.hwm_kb),
        idle_stats.threads,
        idle_stats.fds,
        backends_idle
    );

    // Fan-out: stored events written straight into the table, with their NOTIFY.
    let mut writer = PgConnection::connect(&env.database_url)
        .await
        .expect("connecting to the bench database");
    let fanout_started = Instant::now();
    let (api_cpu0, self_cpu0, busy0) = (proc_stats(pid).cpu_ticks, self_cpu(), machine_busy());
    for round in 0..events {
        while let Ok(msg) = collector.rx.try_recv() {
            collector.handle(msg);
        }
        let expected = collector.live();
        let sent = (Instant::now(), wall_now());
        let rows = sqlx::query(
            "WITH ins AS ( \
               INSERT INTO job_events (job_id, type, data, created_at) \
               SELECT j, 'job.queued', jsonb_build_object('bench_seq', $2::int), now() \
               FROM unnest($1::uuid[]) AS j RETURNING id, job_id, type) \
             SELECT id, job_id, pg_notify('editthinker_events', job_id::text || ',' || id || ',' || type) \
             FROM ins",
        )
        .bind(&ids[..])
        .bind(round as i32)
        .fetch_all(&mut writer)
        .await
        .expect("writing bench events");
        let by_job: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let event_ids: HashMap<i64, usize> = rows
            .iter()
            .map(|r| (r.get::<i64, _>("id"), by_job[&r.get::<Uuid, _>("job_id")]))
            .collect();
        collector.rounds.push(Round {
            label: format!("job.queued #{}", round + 1),
            sent: vec![sent; jobs],
            ids: event_ids,
            terminal: false,
            expected,
            arrivals: Vec::with_capacity(expected),
        });
        let got = collector
            .pump_until(&mut api, sent.0 + event_timeout, |c| {
                c.rounds.last().unwrap().arrivals.len() >= expected
            })
            .await;
        if !got {
            let n = collector.rounds.last().unwrap().arrivals.len();
            println!(
                "event {}: only {n}/{expected} streams got it within {event_timeout:?}",
                round + 1
            );
        }
        collector
            .pump_until(&mut api, Instant::now() + event_gap, |_| false)
            .await;
    }

    // The terminal event: cancel each (queued) job through the API.
    let expected = collector.live();
    collector.rounds.push(Round {
        label: "job.canceled".into(),
        sent: Vec::new(),
        ids: HashMap::new(),
        terminal: true,
        expected,
        arrivals: Vec::with_capacity(expected),
    });
    // The cancels concurrently (64 at a time), so that with several jobs the
    // spread is mostly the server's, not the bench's sequential requests.
    let cancel_started = Instant::now();
    let cancels = ids.iter().enumerate().map(|(job, id)| {
        let request = client
            .post(api.url(&format!("/v1/jobs/{id}/cancel")))
            .send();
        async move {
            // When this job's cancel actually starts (64 run at a time).
            let started = (Instant::now(), wall_now());
            match request.await {
                Ok(resp) if resp.status().is_success() => {}
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    println!("cancel {id}: HTTP {status}: {text}");
                }
                Err(e) => println!("cancel {id}: {e}"),
            }
            (job, started)
        }
    });
    let mut sent = vec![(cancel_started, wall_now()); jobs];
    let done: Vec<(usize, (Instant, Duration))> = futures::StreamExt::collect(
        futures::StreamExt::buffer_unordered(futures::stream::iter(cancels), 64),
    )
    .await;
    for (job, started) in done {
        sent[job] = started;
    }
    collector.rounds.last_mut().unwrap().sent = sent;
    let got = collector
        .pump_until(&mut api, cancel_started + event_timeout, |c| {
            c.rounds.last().unwrap().arrivals.len() >= expected
        })
        .await;
    if !got {
        let n = collector.rounds.last().unwrap().arrivals.len();
        println!("job.canceled: only {n}/{expected} streams got it within {event_timeout:?}");
    }
    // After the terminal event every stream must end.
    let ended = collector
        .pump_until(&mut api, Instant::now() + Duration::from_secs(30), |c| {
            c.live() == 0
        })
        .await;
    let after = proc_stats(pid);
    let fanout_wall = fanout_started.elapsed();
    let fanout_api_cpu = (after.cpu_ticks - api_cpu0) as f64 / clock_ticks();
    let fanout_self_cpu = (self_cpu() - self_cpu0).as_secs_f64();
    let fanout_busy = (machine_busy().saturating_sub(busy0)).as_secs_f64();
    let backends_after = sampler.backends().await;

    // Shut down: the client first, then the api process.
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    drop(writer);
    // Give the server a moment to close its side of the ended connections.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = proc_stats(pid);
    let warns = api.warns.lock().unwrap().clone();
    let samples = api.samples.lock().unwrap().clone();
    let stopped = api.stop();

    // ------------------------------------------------------------ report
    println!();
    println!(
        "SSE fan-out: {streams} streams over {jobs} job(s) on one api process; client and server share this machine ({} CPUs)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "Per event, over the streams that got it: spread = arrival − first arrival; send = the bench's write \
         (INSERT + NOTIFY, or POST cancel).\n\
         rx = the kernel's receive timestamp on the client socket (when the server's bytes arrived); \
         read = when the bench's task read them (adds the bench's own scheduling delay)."
    );
    println!(
        "{:<16} {:>6}  {:>29}  {:>29}  {:>29}  {:>9}",
        "event",
        "got",
        "spread (rx): p50 p99 max",
        "spread (read): p50 p99 max",
        "rx − send: p50 p99 max",
        "read−rx p99"
    );
    let mut rx_p99s: Vec<Duration> = Vec::new();
    let mut since_send_p99s: Vec<Duration> = Vec::new();
    let mut read_p99s: Vec<Duration> = Vec::new();
    let mut missing_total = 0usize;
    let mut unstamped = 0usize;
    for r in &collector.rounds {
        let sent_of = |job: usize| r.sent[job.min(r.sent.len().saturating_sub(1))];
        let rx: Vec<Duration> = r.arrivals.iter().filter_map(|a| a.0.rx).collect();
        unstamped += r.arrivals.len() - rx.len();
        let rx_spread = rx
            .iter()
            .min()
            .map(|f| rx.iter().map(|t| t.saturating_sub(*f)).collect::<Vec<_>>())
            .and_then(pcts);
        let read_spread = r
            .arrivals
            .iter()
            .map(|a| a.0.at)
            .min()
            .map(|f| r.arrivals.iter().map(|a| a.0.at - f).collect::<Vec<_>>())
            .and_then(pcts);
        let rx_since_send: Vec<Duration> = r
            .arrivals
            .iter()
            .filter_map(|(s, job)| s.rx.map(|rx| rx.saturating_sub(sent_of(*job).1)))
            .collect();
        let read_lag: Vec<Duration> = r
            .arrivals
            .iter()
            .filter_map(|(s, _)| s.rx.map(|rx| s.wall.saturating_sub(rx)))
            .collect();
        if let Some(p) = rx_spread {
            rx_p99s.push(p.p99);
        }
        if let Some(p) = read_spread {
            read_p99s.push(p.p99);
        }
        missing_total += r.expected.saturating_sub(r.arrivals.len());
        println!(
            "{:<16} {:>6}  {}  {}  {}  {:>9}",
            r.label,
            r.arrivals.len(),
            fmt_p(rx_spread),
            fmt_p(read_spread),
            fmt_p({
                let p = pcts(rx_since_send);
                since_send_p99s.extend(p.as_ref().map(|p| p.p99));
                p
            }),
            pcts(read_lag).map_or("-".into(), |p| fmt_d(p.p99))
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let others = (fanout_busy - fanout_api_cpu - fanout_self_cpu).max(0.0);
    let busy_machine = others > 0.2 * cores * fanout_wall.as_secs_f64();
    if busy_machine {
        println!(
            "WARNING: other processes (or the hypervisor) used {others:.1} of the {:.1} CPU-seconds available during the event phase; \
             the latency figures are inflated: rerun on a quiet machine",
            cores * fanout_wall.as_secs_f64()
        );
    }
    if jobs > 1 {
        println!(
            "note: with {jobs} jobs the job.canceled spread includes the spread of the {jobs} cancel requests \
             themselves (64 at a time); its rx − send is per job, from that job's request"
        );
    }
    if unstamped > 0 {
        println!("note: {unstamped} arrivals had no kernel receive timestamp");
    }
    println!(
        "streams: {} opened in {open_time:.2?}, {} failed to open, {} broke after opening, {} ended after the terminal event, {} ended early, {} still open at the end{}",
        collector.opened,
        collector.failed,
        collector.broken,
        collector.closed_after_terminal,
        collector.closed_early,
        collector.live(),
        if ended { "" } else { " (waited 30 s)" }
    );
    let per_event = (collector.rounds.len().max(1)) as f64;
    println!(
        "CPU during the event phase ({:.1?}, gaps included): api {fanout_api_cpu:.2} s ({:.0} ms per event), \
         bench client {fanout_self_cpu:.2} s, everything else on the machine {:.2} s",
        fanout_wall,
        fanout_api_cpu / per_event * 1e3,
        (fanout_busy - fanout_api_cpu - fanout_self_cpu).max(0.0)
    );
    if collector.other_frames > collector.opened {
        println!(
            "note: {} frames with ids the bench did not write (expected one replay per stream)",
            collector.other_frames
        );
    }
    println!(
        "api after the streams ended: VmRSS {:.1} MB, VmHWM {:.1} MB, {} fds ({} fds 2 s after the client closed its sockets); {} backends on the bench database; {stopped}",
        mb(after.rss_kb),
        mb(after.hwm_kb),
        after.fds,
        settled.fds,
        backends_after
    );
    if warns.is_empty() {
        println!("api log: no WARN or ERROR lines");
    } else {
        println!("api log: {warns:?}; first distinct ones:");
        for s in &samples {
            println!("  {s}");
        }
    }

    println!();
    println!(
        "{:<40} {:>16} {:>12}  result",
        "figure", "measured", "target"
    );
    if let Some(b) = &baseline {
        println!(
            "{:<40} {:>16} {:>12}",
            "DB tx/s, idle, no streams",
            format!("{:.1}", b.delta_per_s),
            "-"
        );
    }
    println!(
        "{:<40} {:>16} {:>12}  {}",
        format!("DB tx/s, idle, {} streams", collector.opened),
        format!("{:.1}", idle.delta_per_s),
        format!("< {TARGET_IDLE_TPS}"),
        verdict(idle.delta_per_s < TARGET_IDLE_TPS)
    );
    println!(
        "{:<40} {:>16} {:>12}",
        "api CPU, idle with streams",
        format!("{:.1} %", idle.cpu_percent),
        "-"
    );
    for (what, p99s) in [("kernel rx", &rx_p99s), ("bench read", &read_p99s)] {
        let worst = p99s.iter().max().copied();
        let median = pcts(p99s.clone()).map(|p| p.p50);
        match (worst, median) {
            (Some(worst), Some(median)) => {
                println!(
                    "{:<40} {:>16} {:>12}  {}",
                    format!("fan-out p99 after first, {what}, worst"),
                    fmt_d(worst),
                    "< 100 ms",
                    verdict(worst < TARGET_FANOUT_P99 && missing_total == 0)
                );
                println!(
                    "{:<40} {:>16} {:>12}  {}",
                    format!("fan-out p99 after first, {what}, median"),
                    fmt_d(median),
                    "< 100 ms",
                    verdict(median < TARGET_FANOUT_P99 && missing_total == 0)
                );
            }
            _ => println!(
                "{:<40} {:>16} {:>12}  MISSED",
                format!("fan-out p99 after first, {what}"),
                "no arrivals",
                "< 100 ms"
            ),
        }
    }
    if missing_total > 0 {
        println!(
            "{:<40} {:>16} {:>12}  MISSED",
            "stream × event deliveries missing", missing_total, "0"
        );
    }
    println!(
        "{:<40} {:>16} {:>12}  {}",
        format!("api VmRSS, idle, {} streams", collector.opened),
        format!("{:.1} MB", mb(idle_stats.rss_kb)),
        format!("< {TARGET_RSS_MB} MB"),
        verdict(mb(idle_stats.rss_kb) < TARGET_RSS_MB)
    );
    println!(
        "{:<40} {:>16} {:>12}",
        "api VmHWM (peak) at the end",
        format!("{:.1} MB", mb(after.hwm_kb)),
        "-"
    );

    if busy_machine {
        println!("(latency figures taken while other processes were busy: see the WARNING above)");
    }

    if !keep_db {
        drop(sampler);
        drop_database(&db_name).await;
    }
    drop(editor);
    drop(thinker);
    Summary {
        mode,
        opened: collector.opened,
        idle_tps: idle.delta_per_s,
        idle_cpu_percent: idle.cpu_percent,
        rx_p99_worst: rx_p99s.iter().max().copied(),
        rx_p99_median: pcts(rx_p99s.clone()).map(|p| p.p50),
        since_send_p99_worst: since_send_p99s.iter().max().copied(),
        missing: missing_total,
        api_ms_per_event: fanout_api_cpu / per_event * 1e3,
        rss_mb: mb(idle_stats.rss_kb),
        hwm_mb: mb(after.hwm_kb),
        busy_machine,
    }
}

/// Drops the bench database (best effort).
async fn drop_database(name: &str) {
    let admin = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if let Ok(mut conn) = PgConnection::connect(&admin).await {
        if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
        {
            eprintln!("dropping {name}: {e}");
        }
    }
}
