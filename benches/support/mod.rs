//! What more than one benchmark uses: knobs from the environment, the load
//! average, latency percentiles and `pgbench` as the yardstick measured in
//! the same run (benches/queue.rs, benches/api.rs).

#![allow(dead_code)] // each bench uses its own part

use std::path::PathBuf;
use std::time::Duration;

/// A numeric knob from the environment, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The 1-minute load average, to tell a quiet machine from a busy one.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Prints p50, p95, p99 and max of `samples` on one line.
pub fn percentiles(label: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        println!("{label:<22} n=0");
        return;
    }
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{label:<22} n={:<5} p50={:>8.2?} p95={:>8.2?} p99={:>8.2?} max={:>8.2?}",
        samples.len(),
        at(0.50),
        at(0.95),
        at(0.99),
        samples[samples.len() - 1]
    );
}

/// Which built-in pgbench script a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgbenchMode {
    /// `-S`: one indexed SELECT per transaction.
    SelectOnly,
    /// `-N`: one UPDATE, one SELECT and one INSERT per transaction (the
    /// TPC-B-like script without its contended teller and branch updates).
    SimpleUpdate,
}

impl PgbenchMode {
    /// The pgbench flag.
    pub fn flag(self) -> &'static str {
        match self {
            Self::SelectOnly => "-S",
            Self::SimpleUpdate => "-N",
        }
    }
}

/// One `pgbench` run's settings and result.
#[derive(Debug, Clone)]
pub struct Pgbench {
    pub mode: PgbenchMode,
    pub tps: f64,
    pub scale: usize,
    pub clients: usize,
    pub threads: usize,
    pub seconds: usize,
}

impl Pgbench {
    /// The settings, as printed beside the figure.
    pub fn settings(&self) -> String {
        format!(
            "scale {}, -c {} -j {} -T {}, same server, same run",
            self.scale, self.clients, self.threads, self.seconds
        )
    }
}

/// Finds pgbench: $PGBENCH, then PATH, then /usr/bin.
fn find_pgbench() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PGBENCH") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("pgbench"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/bin/pgbench");
        p.is_file().then_some(p)
    })
}

/// Runs a command with a time limit; returns stdout, or why it failed.
async fn run_limited(
    cmd: &mut tokio::process::Command,
    limit: Duration,
    what: &str,
) -> Result<String, String> {
    cmd.kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("{what}: no answer within {limit:?}"))?
        .map_err(|e| format!("{what}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{what}: {}: {}", out.status, tail.join(" | ")));
    }
    Ok(stdout)
}

/// `pgbench -i` into a fresh database on the same server, then one run per
/// mode in `modes` with `clients` clients; the database is dropped
/// afterwards ([`PgbenchDb`] lists the knobs).
pub async fn pgbench(modes: &[PgbenchMode], clients: usize) -> Result<Vec<Pgbench>, String> {
    let db = PgbenchDb::init().await?;
    let mut runs = Vec::new();
    for &mode in modes {
        match db.run(mode, clients).await {
            Ok(run) => runs.push(run),
            Err(why) => {
                db.drop_database().await;
                return Err(why);
            }
        }
    }
    db.drop_database().await;
    Ok(runs)
}

/// A pgbench database on the bench's server, initialised once so that
/// runs can be interleaved with other measurements. Knobs: BENCH_PGBENCH=0
/// skips pgbench; PGBENCH (path), BENCH_PGBENCH_SCALE (1),
/// BENCH_PGBENCH_THREADS (2), BENCH_PGBENCH_SECONDS (10, or what the
/// caller passes to [`PgbenchDb::init_for`]).
pub struct PgbenchDb {
    bin: PathBuf,
    url: String,
    scale: usize,
    threads: usize,
    seconds: usize,
}

impl PgbenchDb {
    /// `pgbench -i` into a fresh database, runs of 10 s by default.
    pub async fn init() -> Result<Self, String> {
        Self::init_for(10).await
    }

    /// The same, runs of `default_seconds` unless BENCH_PGBENCH_SECONDS
    /// says otherwise.
    pub async fn init_for(default_seconds: usize) -> Result<Self, String> {
        if std::env::var("BENCH_PGBENCH").is_ok_and(|v| v == "0") {
            return Err("BENCH_PGBENCH=0".into());
        }
        let Some(bin) = find_pgbench() else {
            return Err("pgbench not found (set PGBENCH, or install postgresql-client)".into());
        };
        let db = Self {
            bin,
            url: crate::common::fresh_postgres_database().await,
            scale: env_or("BENCH_PGBENCH_SCALE", 1),
            threads: env_or("BENCH_PGBENCH_THREADS", 2),
            seconds: env_or("BENCH_PGBENCH_SECONDS", default_seconds),
        };
        let init = run_limited(
            tokio::process::Command::new(&db.bin)
                .args(["-i", "-q", "-s", &db.scale.to_string()])
                .arg(&db.url),
            Duration::from_secs(300),
            "pgbench -i",
        )
        .await;
        match init {
            Ok(_) => Ok(db),
            Err(why) => {
                db.drop_database().await;
                Err(why)
            }
        }
    }

    /// One run of `mode` with `clients` clients.
    pub async fn run(&self, mode: PgbenchMode, clients: usize) -> Result<Pgbench, String> {
        let what = format!("pgbench {}", mode.flag());
        let out = run_limited(
            tokio::process::Command::new(&self.bin)
                .args([
                    mode.flag(),
                    "-c",
                    &clients.to_string(),
                    "-j",
                    &self.threads.to_string(),
                    "-T",
                    &self.seconds.to_string(),
                ])
                .arg(&self.url),
            Duration::from_secs(self.seconds as u64 + 120),
            &what,
        )
        .await?;
        // "tps = 1579.091916 (without initial connection time)"
        let tps = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("tps = "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|tps| *tps > 0.0)
            .ok_or_else(|| format!("{what}: no `tps = ` line in its output:\n{out}"))?;
        Ok(Pgbench {
            mode,
            tps,
            scale: self.scale,
            clients,
            threads: self.threads,
            seconds: self.seconds,
        })
    }

    /// Drops the database (best effort).
    pub async fn drop_database(self) {
        drop_database(&self.url).await;
    }
}

/// Drops a database made by `fresh_postgres_database` (best effort).
pub async fn drop_database(url: &str) {
    use sqlx::Connection;
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    let admin = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
        if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
        {
            eprintln!("dropping {name}: {e}");
        }
    }
}
