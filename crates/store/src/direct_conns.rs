//! A few Postgres connections for the API's hottest single statements (a
//! job read, a create), handed out without a ping.
//!
//! sqlx's pool pings every connection it takes back (a `Sync` round trip,
//! in a task of its own) before another caller may have it: on a read that
//! is one query, as many round trips and Postgres wake-ups as the query's
//! own (docs/benchmarks.md, "api"). Here a connection goes back as it is
//! once its statement finished; only one whose caller stopped midway (an
//! error, or a request dropped while it waited) is pinged before its next
//! use, which drains what the server still had to say, and is reconnected
//! when the ping fails. Like the pool's, a connection that sat idle for a
//! while (a server restart in between would have closed it) is pinged too.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::StoreResult;

/// How many direct connections a store keeps (on top of its pool).
pub(crate) const DIRECT_CONNECTIONS: usize = 8;

/// The connections; each opens on first use.
pub(crate) struct DirectConnections {
    options: PgConnectOptions,
    ping_idle_after: Duration,
    slots: Vec<Arc<Mutex<Slot>>>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    conn: Option<PgConnection>,
    /// The last user finished its statement: nothing is left to read.
    clean: bool,
    last_used: Option<Instant>,
}

/// One connection, held until dropped. Call [`Direct::finished`] once its
/// statement returned; a guard dropped without it makes the next user ping
/// first.
pub(crate) struct Direct {
    slot: OwnedMutexGuard<Slot>,
}

impl DirectConnections {
    /// `count` connections made with `options`, opened lazily; one idle
    /// for `ping_idle_after` or longer is pinged before use.
    pub(crate) fn new(options: PgConnectOptions, count: usize, ping_idle_after: Duration) -> Self {
        Self {
            options,
            ping_idle_after,
            slots: (0..count.max(1)).map(|_| Arc::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A free connection, else the next one in turn once it is free.
    pub(crate) async fn acquire(&self) -> StoreResult<Direct> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.slots.len();
        let free = (0..n).find_map(|i| self.slots[(start + i) % n].clone().try_lock_owned().ok());
        let mut slot = match free {
            Some(slot) => slot,
            None => self.slots[start % n].clone().lock_owned().await,
        };
        let fresh = slot
            .last_used
            .is_some_and(|at| at.elapsed() < self.ping_idle_after);
        let trusted = slot.clean && fresh;
        let reusable = match slot.conn.as_mut() {
            Some(_) if trusted => true,
            Some(conn) => conn.ping().await.is_ok(),
            None => false,
        };
        if !reusable {
            slot.conn = None;
            slot.conn = Some(self.options.connect().await?);
        }
        slot.clean = false;
        Ok(Direct { slot })
    }
}

impl Direct {
    /// The statement returned: the connection may be handed out as it is.
    pub(crate) fn finished(mut self) {
        self.slot.clean = true;
        self.slot.last_used = Some(Instant::now());
    }
}

impl Deref for Direct {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.slot
            .conn
            .as_ref()
            .expect("a handed-out slot is connected")
    }
}

impl DerefMut for Direct {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.slot
            .conn
            .as_mut()
            .expect("a handed-out slot is connected")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test server (scripts/test sets DATABASE_URL); unreachable, the
    /// tests fail.
    fn options() -> PgConnectOptions {
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
            .parse()
            .unwrap()
    }

    async fn backend_pid(conn: &mut PgConnection) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_finished_connection_is_reused_as_it_is() {
        let conns = DirectConnections::new(options(), 1, Duration::from_secs(60));
        let mut conn = conns.acquire().await.unwrap();
        let pid = backend_pid(&mut conn).await;
        conn.finished();
        let mut again = conns.acquire().await.unwrap();
        assert_eq!(backend_pid(&mut again).await, pid);
    }

    /// A use dropped mid-statement leaves the server's answer unread: the
    /// next user pings first, which drains it, and reads its own answer.
    #[tokio::test]
    async fn an_interrupted_use_is_drained_before_the_next() {
        let conns = DirectConnections::new(options(), 1, Duration::from_secs(60));
        {
            let mut conn = conns.acquire().await.unwrap();
            let slow =
                sqlx::query_scalar::<_, i32>("SELECT 41 FROM pg_sleep(0.3)").fetch_one(&mut *conn);
            assert!(tokio::time::timeout(Duration::from_millis(50), slow)
                .await
                .is_err());
        }
        let mut conn = conns.acquire().await.unwrap();
        let answer: i32 = sqlx::query_scalar("SELECT 42")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(answer, 42);
        conn.finished();
    }

    /// A connection the server closed while it sat idle is pinged, found
    /// dead and replaced.
    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_replaced() {
        let conns = DirectConnections::new(options(), 1, Duration::from_millis(100));
        let mut conn = conns.acquire().await.unwrap();
        let pid = backend_pid(&mut conn).await;
        conn.finished();
        let mut admin = options().connect().await.unwrap();
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert!(ended);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut conn = conns.acquire().await.unwrap();
        assert_ne!(backend_pid(&mut conn).await, pid);
    }

    /// Busy connections make the next caller wait for one, not fail.
    #[tokio::test]
    async fn callers_beyond_the_connections_wait_their_turn() {
        let conns = Arc::new(DirectConnections::new(
            options(),
            2,
            Duration::from_secs(60),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..8i32 {
            let conns = conns.clone();
            tasks.spawn(async move {
                let mut conn = conns.acquire().await.unwrap();
                let echoed: i32 = sqlx::query_scalar("SELECT $1 FROM pg_sleep(0.02)")
                    .bind(n)
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
                conn.finished();
                assert_eq!(echoed, n);
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    }
}
