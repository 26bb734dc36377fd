//! The API's hot paths against `pgbench` as the yardstick (not a test: run
//! it by hand).
//!
//!     cargo bench --bench api
//!     BENCH_API_CONNECTIONS=64 BENCH_API_SECONDS=10 BENCH_API_ROUNDS=5 cargo bench --bench api
//!
//! Starts the real binary as an `api` process (no worker) on a fresh
//! Postgres database, behind `[auth] mode = "gateway"`: each request names
//! one of BENCH_API_TENANTS (1000) tenants in `X-Tenant-Id`, so the default
//! limits stay on (100 active jobs and 50 requests per second per tenant)
//! and no tenant reaches them. A wrk-like closed loop drives it: each of
//! BENCH_API_CONNECTIONS (32) keep-alive connections sends its next request
//! when it has read the last answer, for BENCH_API_SECONDS (5) per phase.
//! Before the rounds, a worker runs BENCH_API_FINISHED (200) jobs to the
//! end (two turns each, with an instant fake editor and thinker) and is
//! stopped. Each of BENCH_API_ROUNDS (3) rounds then runs, one after the
//! other:
//!
//! 1. `POST /v1/jobs` with a 64×64 PNG (JSON, base64): the jobs stay
//!    queued, so the queue deepens round by round;
//! 2. `pgbench -N` on the same server, as many clients as connections;
//! 3. `GET /v1/jobs/{id}` of every job queued so far, chosen at random: the
//!    read with its queue position;
//! 4. `GET /v1/jobs/{id}` of the finished jobs;
//! 5. `pgbench -S`, likewise.
//!
//! Each yardstick runs right beside the phases it measures (the service
//! idle meanwhile), because this machine's speed drifts by a third within
//! a minute; a round prints its rates, the database transactions per
//! request (`pg_stat_database.xact_commit`) and its ratios (GETs of `-S`,
//! POSTs of `-N`); the summary prints latency percentiles over every round
//! and each ratio's median (benches/support/mod.rs lists pgbench's knobs).
//! The image folder is on tmpfs (`/dev/shm`) unless BENCH_API_BLOBS=disk.
//!
//! Everything shares the machine's cores (load, service, Postgres and
//! pgbench alike), which is why the ratios, not the rates, travel between
//! machines.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sqlx::Connection;
use support::{env_or, load_average, percentiles, PgbenchDb, PgbenchMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() {
    let load_before = load_average();
    let connections = env_or("BENCH_API_CONNECTIONS", 32);
    let seconds = Duration::from_secs(env_or("BENCH_API_SECONDS", 5) as u64);
    let rounds = env_or("BENCH_API_ROUNDS", 3).max(1);
    let tenants = env_or("BENCH_API_TENANTS", 1000).max(1);
    let finished = env_or("BENCH_API_FINISHED", 200);

    let env = TestEnv::new(Backend::Postgres).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    // Never satisfied: every finished job has both turns.
    *thinker.state.fallback.lock().unwrap() = said(5, 5, "try again");
    env.migrate();
    let backends = format!(
        "{}\n[auth]\nmode = \"gateway\"\n",
        backends_config(&thinker, &editor, env.dir.path())
    );
    // Blobs on tmpfs unless asked otherwise: on the development machine's
    // ext4, creating a job's folder and source file cost more CPU than the
    // rest of the create (the inode allocator's `recently_deleted` scans),
    // which measures the disk, not the service (docs/benchmarks.md).
    let blob_dir = match std::env::var("BENCH_API_BLOBS").as_deref() {
        Ok("disk") => tempfile::tempdir_in(env.dir.path()).unwrap(),
        _ if std::path::Path::new("/dev/shm").is_dir() => tempfile::tempdir_in("/dev/shm").unwrap(),
        _ => tempfile::tempdir_in(env.dir.path()).unwrap(),
    };
    let blob_url = format!("file://{}", blob_dir.path().display());
    println!("blobs                  {blob_url}");
    let quiet = [
        ("RUST_LOG", "warn,editthinker::roles=info"),
        ("EDITTHINKER_BLOB_URL", blob_url.as_str()),
    ];
    let api = Service::start_with_env("api", &env.config("api", &backends), &quiet);
    let addr = api.addr.expect("the api role listens");

    let image = png(64, 64, [0, 0, 0]);
    let create_body = job_body(&image, "make it brighter", json!({"max_turns": 2})).to_string();

    // Jobs run to the end by a worker, then the worker stops.
    let finished_ids = {
        let worker_env = [quiet[0], quiet[1], ("EDITTHINKER_WORKER__CONCURRENCY", "8")];
        let worker =
            Service::start_with_env("worker", &env.config("worker", &backends), &worker_env);
        let client = reqwest::Client::new();
        let mut ids = Vec::with_capacity(finished);
        for n in 0..finished {
            let resp = client
                .post(api.url("/v1/jobs"))
                .header("x-tenant-id", tenant(n, tenants))
                .header("content-type", "application/json")
                .body(create_body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            let job: Value = resp.json().await.unwrap();
            ids.push((n, job["id"].as_str().unwrap().to_string()));
        }
        for (n, id) in &ids {
            let job = wait_until(&client, &api, *n, tenants, id).await;
            assert_eq!(job["status"], "succeeded", "{job}");
            assert_eq!(job["turns"].as_array().map(Vec::len), Some(2), "{job}");
        }
        drop(worker);
        ids
    };
    let mut stats = XactCounter::new(&env.database_url).await;
    // The yardstick's database, made now so each round can run pgbench
    // right beside the phases it measures.
    let yardstick = match PgbenchDb::init_for(seconds.as_secs() as usize).await {
        Ok(db) => Some(db),
        Err(why) => {
            println!("pgbench                skipped: {why}");
            None
        }
    };
    println!(
        "api bench              {connections} connections, {} s per phase, {rounds} rounds, {tenants} tenants (gateway mode, default limits), Postgres, api role only",
        seconds.as_secs()
    );

    let finished_ids = Arc::new(finished_ids);
    let mut queued: Vec<(usize, String)> = Vec::new();
    let mut all = Phases::default();
    let mut ratios = Ratios::default();
    for round in 1..=rounds {
        let post = post_phase(addr, connections, seconds, tenants, &create_body).await;
        let post_xacts = stats.since_last().await;
        assert!(
            !post.created.is_empty(),
            "no create succeeded: {:?}",
            post.load
        );
        queued.extend(post.created);
        let write = yardstick_run(&yardstick, PgbenchMode::SimpleUpdate, connections).await;
        stats.since_last().await;
        let get_queued = get_phase(
            addr,
            connections,
            seconds,
            tenants,
            Arc::new(queued.clone()),
            "\"queue_position\":",
        )
        .await;
        let get_queued_xacts = stats.since_last().await;
        let get_finished = get_phase(
            addr,
            connections,
            seconds,
            tenants,
            finished_ids.clone(),
            "\"succeeded\"",
        )
        .await;
        let get_finished_xacts = stats.since_last().await;
        let select = yardstick_run(&yardstick, PgbenchMode::SelectOnly, connections).await;
        stats.since_last().await;

        let percent = |rate: f64, yardstick: Option<f64>| {
            yardstick.map_or_else(|| "?".into(), |tps| format!("{:.0} %", 100.0 * rate / tps))
        };
        let tps = |t: Option<f64>| t.map_or_else(|| "?".into(), |t| format!("{t:.0}"));
        println!(
            "round {round}: POST {:.0} req/s ({:.2} xact/req) ÷ -N {} tps = {}; GET queued (of {}) {:.0} req/s ({:.2}), GET finished {:.0} req/s ({:.2}) ÷ -S {} tps = {}, {}",
            post.load.rate(),
            per_request(post_xacts, &post.load),
            tps(write),
            percent(post.load.rate(), write),
            queued.len(),
            get_queued.rate(),
            per_request(get_queued_xacts, &get_queued),
            get_finished.rate(),
            per_request(get_finished_xacts, &get_finished),
            tps(select),
            percent(get_queued.rate(), select),
            percent(get_finished.rate(), select),
        );
        if let (Some(write), Some(select)) = (write, select) {
            ratios.post.push(post.load.rate() / write);
            ratios.get_queued.push(get_queued.rate() / select);
            ratios.get_finished.push(get_finished.rate() / select);
        }
        all.post.add(post.load);
        all.get_queued.add(get_queued);
        all.get_finished.add(get_finished);
    }
    drop(api);
    stats.close().await;
    if let Some(db) = yardstick {
        db.drop_database().await;
    }

    all.post.print("POST /v1/jobs (64×64)");
    all.get_queued.print("GET queued");
    all.get_finished.print("GET finished (2 turns)");
    ratios.print(rounds);
    println!(
        "machine                {} CPUs; 1-min load average {load_before} before, {} after (other work on the machine skews every figure)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
}

/// One pgbench run of the yardstick, `None` (and why, printed) when it
/// cannot run.
async fn yardstick_run(db: &Option<PgbenchDb>, mode: PgbenchMode, clients: usize) -> Option<f64> {
    match db.as_ref()?.run(mode, clients).await {
        Ok(run) => Some(run.tps),
        Err(why) => {
            println!("pgbench {}             failed: {why}", mode.flag());
            None
        }
    }
}

/// What a POST phase created, and its load figures.
struct PostPhase {
    load: LoadResult,
    created: Vec<(usize, String)>,
}

/// A phase of `POST /v1/jobs`, spread over the tenants; the jobs stay
/// queued.
async fn post_phase(
    addr: SocketAddr,
    connections: usize,
    length: Duration,
    tenants: usize,
    body: &str,
) -> PostPhase {
    let created = Arc::new(std::sync::Mutex::new(Vec::<(usize, String)>::new()));
    let load = {
        let created = created.clone();
        let body = body.to_string();
        run_load(
            addr,
            connections,
            length,
            move |seq| {
                let n = seq % tenants;
                (n, post_request(&tenant(n, tenants), &body))
            },
            move |n, status, body| {
                if status != 202 {
                    return false;
                }
                let job: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                let Some(id) = job["id"].as_str() else {
                    return false;
                };
                created.lock().unwrap().push((n, id.to_string()));
                true
            },
        )
        .await
    };
    let created = std::mem::take(&mut *created.lock().unwrap());
    PostPhase { load, created }
}

/// Database transactions per request of a phase.
fn per_request(xacts: Option<f64>, load: &LoadResult) -> f64 {
    xacts.map_or(f64::NAN, |x| x / (load.ok + load.failed).max(1) as f64)
}

/// The three measured phases, over every round.
#[derive(Default)]
struct Phases {
    post: LoadResult,
    get_queued: LoadResult,
    get_finished: LoadResult,
}

/// Each round's rate over its yardstick, measured right beside it.
#[derive(Default)]
struct Ratios {
    post: Vec<f64>,
    get_queued: Vec<f64>,
    get_finished: Vec<f64>,
}

impl Ratios {
    fn print(&self, rounds: usize) {
        for (label, of, values, target) in [
            ("GET queued ÷ -S", "-S", &self.get_queued, 0.40),
            ("GET finished ÷ -S", "-S", &self.get_finished, 0.40),
            ("POST ÷ -N", "-N", &self.post, 0.60),
        ] {
            let Some(median) = median(values) else {
                println!("{label:<22} ? (pgbench did not run)");
                continue;
            };
            let each: Vec<String> = values.iter().map(|r| format!("{:.0}", r * 100.0)).collect();
            println!(
                "{label:<22} median {:.0} % of {of} over {rounds} rounds (each: {} %; target ≥ {:.0} %: {})",
                median * 100.0,
                each.join(", "),
                target * 100.0,
                if median >= target { "met" } else { "NOT met" }
            );
        }
    }
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The tenant of request or job `n`.
fn tenant(n: usize, tenants: usize) -> String {
    format!("bench-{}", n % tenants)
}

/// Spreads consecutive sequence numbers over the picked ids (a
/// multiplicative hash), so connections do not read the same job in step.
fn scatter(seq: usize) -> usize {
    (seq as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29) as usize
}

fn body_has(body: &[u8], needle: &str) -> bool {
    body.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn post_request(tenant: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: bench\r\nx-tenant-id: {tenant}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get_request(tenant: &str, id: &str) -> Vec<u8> {
    format!("GET /v1/jobs/{id} HTTP/1.1\r\nhost: bench\r\nx-tenant-id: {tenant}\r\n\r\n")
        .into_bytes()
}

/// A phase of `GET /v1/jobs/{id}` over `jobs` (tenant, id), picked at
/// random; an answer counts when it is 200 and holds `expect`.
async fn get_phase(
    addr: SocketAddr,
    connections: usize,
    length: Duration,
    tenants: usize,
    jobs: Arc<Vec<(usize, String)>>,
    expect: &'static str,
) -> LoadResult {
    run_load(
        addr,
        connections,
        length,
        move |seq| {
            let (n, id) = &jobs[scatter(seq) % jobs.len()];
            (*n, get_request(&tenant(*n, tenants), id))
        },
        move |_, status, body| status == 200 && body_has(body, expect),
    )
    .await
}

/// Polls a job until it is finished (two minutes at most).
async fn wait_until(
    client: &reqwest::Client,
    api: &Service,
    n: usize,
    tenants: usize,
    id: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job: Value = client
            .get(api.url(&format!("/v1/jobs/{id}")))
            .header("x-tenant-id", tenant(n, tenants))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if is_terminal(&job) || Instant::now() > deadline {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one phase of load measured.
#[derive(Debug, Default)]
struct LoadResult {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    first_failure: Option<String>,
}

impl LoadResult {
    /// Answers that passed their check, per second.
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Adds `other`'s answers, time and latencies to these.
    fn add(&mut self, other: LoadResult) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    fn print(&self, label: &str) {
        println!(
            "{label:<22} {:>8.1} req/s over every round ({} ok, {} failed{})",
            self.rate(),
            self.ok,
            self.failed,
            self.first_failure
                .as_deref()
                .map(|f| format!("; first failure: {f}"))
                .unwrap_or_default()
        );
        percentiles(&format!("  {label}"), self.latencies.clone());
    }
}

/// A closed loop over `connections` keep-alive connections for `length`:
/// `request(seq)` gives the next request (and a tag passed to `check`),
/// `check(tag, status, body)` whether its answer counts as a success.
async fn run_load<R, C>(
    addr: SocketAddr,
    connections: usize,
    length: Duration,
    request: R,
    check: C,
) -> LoadResult
where
    R: Fn(usize) -> (usize, Vec<u8>) + Send + Sync + 'static,
    C: Fn(usize, u16, &[u8]) -> bool + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let check = Arc::new(check);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let stop = started + length;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (request, check, next) = (request.clone(), check.clone(), next.clone());
        tasks.spawn(async move {
            let mut result = LoadResult::default();
            let mut conn = HttpConn::open(addr).await;
            while Instant::now() < stop {
                let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (tag, bytes) = request(seq);
                let sent = Instant::now();
                match conn.exchange(&bytes).await {
                    Ok((status, body)) => {
                        result.latencies.push(sent.elapsed());
                        if check(tag, status, &body) {
                            result.ok += 1;
                        } else {
                            result.failed += 1;
                            result.first_failure.get_or_insert_with(|| {
                                format!("{status} {}", String::from_utf8_lossy(&body))
                            });
                        }
                    }
                    Err(e) => {
                        result.failed += 1;
                        result.first_failure.get_or_insert_with(|| e.to_string());
                        conn = HttpConn::open(addr).await;
                    }
                }
            }
            result
        });
    }
    let mut total = LoadResult::default();
    while let Some(part) = tasks.join_next().await {
        total.add(part.expect("a load task panicked"));
    }
    // The connections ran side by side: the phase took the wall time.
    total.elapsed = started.elapsed();
    total
}

/// One keep-alive HTTP/1.1 connection that reads answers with a
/// `content-length` (every answer of the routes measured here has one).
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connecting to the api");
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends one request and reads its answer: the status and the body.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        use std::io::{Error, ErrorKind};
        self.stream.write_all(request).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| Error::new(ErrorKind::InvalidData, "head is not UTF-8"))?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no status"))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no content-length"))?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        Ok((status, self.buf[head_end..head_end + length].to_vec()))
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Committed transactions of the bench's database, between phases.
struct XactCounter {
    conn: sqlx::PgConnection,
    name: String,
    last: Option<i64>,
}

impl XactCounter {
    async fn new(url: &str) -> Self {
        let conn = sqlx::PgConnection::connect(url).await.unwrap();
        let name = url.rsplit_once('/').unwrap().1.to_string();
        let mut counter = Self {
            conn,
            name,
            last: None,
        };
        counter.last = counter.read().await;
        counter
    }

    /// Transactions committed since the last call (this counter's own
    /// reads included: two per phase, negligible beside thousands).
    async fn since_last(&mut self) -> Option<f64> {
        let now = self.read().await;
        let delta = now.zip(self.last).map(|(now, last)| (now - last) as f64);
        self.last = now;
        delta
    }

    async fn read(&mut self) -> Option<i64> {
        // Backends publish their counters when idle, at most once a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut self.conn)
            .await
            .ok()?;
        sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(&self.name)
            .fetch_one(&mut self.conn)
            .await
            .ok()
    }

    async fn close(self) {
        let _ = self.conn.close().await;
    }
}
