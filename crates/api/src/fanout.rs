//! Per-process fan-out of job events to SSE streams (docs/architecture.md §4).
//!
//! One [`EventHub`] per API process listens to the store's notices. When a
//! notice names a job that has subscribers, the hub reads that job's new
//! rows once and hands them to every subscriber of the job through a
//! bounded per-job broadcast: the cost of an event is one query per
//! process, whatever the number of streams. A subscriber that falls behind
//! the broadcast re-reads from the table itself and never slows the others.
//! A lost LISTEN connection, lag on the notice channel and a slow timer
//! (the safety net) make the hub compare, in one query, the newest stored
//! event of every watched job with what it has delivered.
//!
//! A stream that has sent its replay is handed to the hub
//! ([`Subscription::hand_off`]): from then on the hub's writer threads
//! write the job's events straight to its socket (crates/api/src/direct.rs),
//! and the stream's own task wakes only when the stream ends or lags.
//!
//! The hub carries typed events (crates/api/src/stream_event.rs), shared by
//! every stream of a job; it never frames them: the writers do, through
//! crates/api/src/wire.rs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use editthinker_store::{EventRow, Notice, Store};

use crate::direct::{End, HandedStream, Socket, Work, Writers};
use crate::stream_event::{StreamEvent, KEEP_ALIVE};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Messages buffered per job; a subscriber further behind than this
/// re-reads from the table.
const FEED_CAPACITY: usize = 64;

/// How often the hub checks, in one query, that no event of a watched job
/// went unannounced (a NOTIFY lost with a connection).
pub const SAFETY_NET_EVERY: Duration = Duration::from_secs(15);

/// What a subscriber of one job receives: events shared by every stream
/// of the job (and the hub's writers), so each is read and rendered once
/// per process, whatever the number of streams.
#[derive(Debug, Clone)]
pub enum Feed {
    /// New stored events of the job, in id order (may repeat ids already
    /// seen: the subscriber drops those).
    Rows(Arc<[StreamEvent]>),
    /// A live, unstored event (`turn.thinking`).
    Live(Arc<StreamEvent>),
}

struct JobFeed {
    sender: broadcast::Sender<Feed>,
    /// Handed-off streams, by writer shard.
    direct: Vec<Vec<HandedStream>>,
    /// Highest event id read and broadcast for this job.
    delivered: i64,
    /// A read of this job's rows is under way.
    reading: bool,
    /// Another notice came while reading: read again afterwards.
    again: bool,
}

impl JobFeed {
    /// Whether any stream of the job is handed off.
    fn has_direct(&self) -> bool {
        self.direct.iter().any(|streams| !streams.is_empty())
    }
}

/// Shards of the job feeds, by job: a job's subscribe, fan-out and
/// unsubscribe lock only its shard, so no lock is held over every job's
/// subscribers while one job's events go out.
struct Feeds {
    shards: Box<[Mutex<HashMap<Uuid, JobFeed>>]>,
}

/// Feed shards: many more than cores, so two busy jobs rarely share one.
const FEED_SHARDS: usize = 64;

impl Feeds {
    fn new() -> Self {
        Self {
            shards: (0..FEED_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// The shard of `job`, locked. Job ids (v7) end in random bits.
    fn of(&self, job: Uuid) -> MutexGuard<'_, HashMap<Uuid, JobFeed>> {
        let shard = (job.as_u64_pair().1 as usize) % self.shards.len();
        self.shards[shard].lock().expect("hub lock")
    }

    /// Every shard in turn, each locked only while `f` runs on it.
    fn each(&self, mut f: impl FnMut(&mut HashMap<Uuid, JobFeed>)) {
        for shard in self.shards.iter() {
            f(&mut shard.lock().expect("hub lock"));
        }
    }
}

/// The result of one read, handed back to the pump.
struct ReadDone {
    job: Uuid,
    rows: Result<Vec<EventRow>, String>,
}

/// The per-process event fan-out.
pub struct EventHub {
    store: Arc<dyn Store>,
    /// Fires on shutdown: the hub then drops every feed, which ends every
    /// stream (streams need no shutdown watch of their own, which would be
    /// one more shared waiter list touched by every stream at every event).
    shutdown: CancellationToken,
    feeds: Feeds,
    reads: mpsc::UnboundedSender<ReadDone>,
    writers: Writers,
}

/// One stream's hold on a job's feed; dropping it unsubscribes, and the
/// last one out removes the job from the hub.
pub struct Subscription {
    hub: Arc<EventHub>,
    job: Uuid,
    receiver: Option<broadcast::Receiver<Feed>>,
    /// The socket the hub writes this stream to, once handed off.
    direct: Option<HandedStream>,
}

impl Subscription {
    /// Hands the stream to the hub: its events go straight to `socket`,
    /// starting after stored event `last`. Refused (false) while messages
    /// for this subscriber are still buffered: it sends those first.
    pub fn hand_off(&mut self, socket: &Arc<Socket>, last: i64) -> bool {
        let mut feeds = self.hub.feeds.of(self.job);
        let Some(feed) = feeds.get_mut(&self.job) else {
            return false;
        };
        if self.receiver.as_ref().is_none_or(|r| !r.is_empty()) {
            return false;
        }
        // Under the job's lock: every read from now on reaches the socket,
        // and none before it is lost (the receiver was empty).
        let handed = socket.hand_off(last);
        feed.direct[socket.shard(self.hub.writers.count())].push(handed.clone());
        self.receiver = None;
        self.direct = Some(handed);
        editthinker_core::metrics::sse_handoff();
        true
    }

    /// A new subscription to the same job from stored event `after` on.
    pub fn renew(&self, after: i64) -> Subscription {
        self.hub.subscribe(self.job, after)
    }

    /// The next message, or `Err(Lagged)` when this subscriber fell behind
    /// and must re-read from the table.
    pub async fn recv(&mut self) -> Result<Feed, broadcast::error::RecvError> {
        self.receiver
            .as_mut()
            .expect("present until drop")
            .recv()
            .await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let direct = self.direct.take();
        let shards = self.hub.writers.count();
        let mut feeds = self.hub.feeds.of(self.job);
        if let Some(feed) = feeds.get_mut(&self.job) {
            if let Some(handed) = &direct {
                let streams = &mut feed.direct[handed.socket.shard(shards)];
                if let Some(at) = streams
                    .iter()
                    .position(|s| Arc::ptr_eq(&s.socket, &handed.socket))
                {
                    streams.swap_remove(at);
                }
            }
            if feed.sender.receiver_count() == 0 && !feed.has_direct() {
                feeds.remove(&self.job);
            }
        }
        if let Some(handed) = direct {
            // Work already queued for it finds another generation, or none.
            handed.socket.take_back(handed.generation);
        }
    }
}

impl EventHub {
    /// Starts the hub's pump on the current runtime; it stops with `shutdown`.
    pub fn start(store: Arc<dyn Store>, shutdown: CancellationToken) -> Arc<Self> {
        // Subscribe before anything can watch a job, so no notice is missed.
        let notices = store.subscribe();
        editthinker_core::metrics::sse_registered();
        let (reads, done) = mpsc::unbounded_channel();
        let hub = Arc::new(Self {
            store,
            shutdown: shutdown.clone(),
            feeds: Feeds::new(),
            reads,
            writers: Writers::start(),
        });
        tokio::spawn(pump(hub.clone(), notices, done, shutdown));
        hub
    }

    /// Watches `job`'s events from now on. `after` is the subscriber's
    /// cursor: a job watched for the first time is read from there.
    pub fn subscribe(self: &Arc<Self>, job: Uuid, after: i64) -> Subscription {
        let mut feeds = self.feeds.of(job);
        if self.shutdown.is_cancelled() {
            // Shutting down: a feed that is closed from the start.
            return Subscription {
                hub: self.clone(),
                job,
                receiver: Some(broadcast::channel(1).0.subscribe()),
                direct: None,
            };
        }
        let shards = self.writers.count();
        let feed = feeds.entry(job).or_insert_with(|| JobFeed {
            sender: broadcast::channel(FEED_CAPACITY).0,
            direct: vec![Vec::new(); shards],
            delivered: after,
            reading: false,
            again: false,
        });
        Subscription {
            hub: self.clone(),
            job,
            receiver: Some(feed.sender.subscribe()),
            direct: None,
        }
    }

    /// Hands work made by `work` to the writer threads for the job's
    /// handed-off streams (called under the job's lock, so the order of
    /// reads holds).
    fn write_direct(&self, feed: &JobFeed, work: impl Fn(Vec<HandedStream>) -> Work) {
        for (shard, sockets) in feed.direct.iter().enumerate() {
            if !sockets.is_empty() {
                self.writers.send(shard, work(sockets.clone()));
            }
        }
    }

    /// A keep-alive comment to every handed-off stream that has been quiet
    /// for [`KEEP_ALIVE`].
    fn comment(&self) {
        let mut per_writer: Vec<Vec<HandedStream>> = vec![Vec::new(); self.writers.count()];
        self.feeds.each(|feeds| {
            for feed in feeds.values() {
                for (writer, streams) in feed.direct.iter().enumerate() {
                    per_writer[writer].extend(streams.iter().cloned());
                }
            }
        });
        for (writer, sockets) in per_writer.into_iter().enumerate() {
            if !sockets.is_empty() {
                self.writers.send(writer, Work::Comment(sockets));
            }
        }
    }

    /// How many jobs have subscribers (for tests and metrics).
    pub fn watched_jobs(&self) -> usize {
        let mut watched = 0;
        self.feeds.each(|feeds| watched += feeds.len());
        watched
    }

    /// Reads `job`'s rows after what was delivered, unless a read is under
    /// way (then it reads once more when that one is done).
    fn read(self: &Arc<Self>, job: Uuid) {
        let after = {
            let mut feeds = self.feeds.of(job);
            let Some(feed) = feeds.get_mut(&job) else {
                return;
            };
            if feed.reading {
                feed.again = true;
                return;
            }
            feed.reading = true;
            feed.delivered
        };
        let hub = self.clone();
        tokio::spawn(async move {
            let rows = hub
                .store
                .events_after(job, after)
                .await
                .map_err(|e| e.to_string());
            let _ = hub.reads.send(ReadDone { job, rows });
        });
    }

    fn read_done(self: &Arc<Self>, done: ReadDone) {
        let again = {
            let mut feeds = self.feeds.of(done.job);
            let Some(feed) = feeds.get_mut(&done.job) else {
                return;
            };
            feed.reading = false;
            match done.rows {
                Ok(rows) => {
                    if let Some(last) = rows.last() {
                        feed.delivered = feed.delivered.max(last.id);
                        // No receivers left is fine: the entry goes soon.
                        let events: Arc<[StreamEvent]> =
                            rows.iter().map(StreamEvent::stored).collect();
                        self.write_direct(feed, |streams| Work::Events(events.clone(), streams));
                        let _ = feed.sender.send(Feed::Rows(events));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, job_id = %done.job, "reading events failed");
                    // Try again at the next notice or safety-net pass.
                }
            }
            std::mem::take(&mut feed.again)
        };
        if again {
            self.read(done.job);
        }
    }

    fn live(&self, job: Uuid, kind: String, data: serde_json::Value) {
        let feeds = self.feeds.of(job);
        if let Some(feed) = feeds.get(&job) {
            let event = Arc::new(StreamEvent::live(job, &kind, data));
            if feed.has_direct() {
                self.write_direct(feed, |streams| Work::Live(event.clone(), streams));
            }
            let _ = feed.sender.send(Feed::Live(event));
        }
    }

    /// One query for the newest event of every watched job; reads the jobs
    /// that have more than was delivered.
    async fn catch_up(self: &Arc<Self>) {
        let mut watched: Vec<(Uuid, i64)> = Vec::new();
        self.feeds
            .each(|feeds| watched.extend(feeds.iter().map(|(id, f)| (*id, f.delivered))));
        if watched.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = watched.iter().map(|(id, _)| *id).collect();
        match self.store.latest_event_ids(&ids).await {
            Ok(latest) => {
                let delivered: HashMap<Uuid, i64> = watched.into_iter().collect();
                for (job, newest) in latest {
                    if delivered.get(&job).is_some_and(|d| newest > *d) {
                        self.read(job);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "event safety-net check failed"),
        }
    }
}

/// Runs [`EventHub::catch_up`] as its own task.
fn spawn_catch_up(hub: &Arc<EventHub>) {
    let hub = hub.clone();
    tokio::spawn(async move { hub.catch_up().await });
}

async fn pump(
    hub: Arc<EventHub>,
    mut notices: broadcast::Receiver<Notice>,
    mut done: mpsc::UnboundedReceiver<ReadDone>,
    shutdown: CancellationToken,
) {
    let mut notices_open = true;
    let mut safety_net = tokio::time::interval(SAFETY_NET_EVERY);
    safety_net.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One timer for the keep-alive comments of every handed-off stream:
    // each gets one once it has been quiet for KEEP_ALIVE (so at most a
    // third of that late).
    let every = KEEP_ALIVE / 3;
    let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Closes every subscriber's feed and ends every handed-off
                // stream: their bodies end.
                hub.feeds.each(|feeds| {
                    for handed in feeds.values().flat_map(|f| f.direct.iter().flatten()) {
                        handed.socket.finish(End::Shutdown);
                    }
                    feeds.clear();
                });
                return;
            }
            _ = keep_alive.tick() => hub.comment(),
            Some(read) = done.recv() => hub.read_done(read),
            // The catch-up query runs beside the pump, so the fan-out of
            // every other job's notices and reads goes on meanwhile.
            _ = safety_net.tick() => spawn_catch_up(&hub),
            notice = notices.recv(), if notices_open => match notice {
                Ok(Notice::Event { job_id, event_id, .. }) => {
                    let behind = hub
                        .feeds
                        .of(job_id)
                        .get(&job_id)
                        .is_some_and(|f| event_id > f.delivered);
                    if behind {
                        hub.read(job_id);
                    }
                }
                Ok(Notice::Live { job_id, kind, data }) => hub.live(job_id, kind, data),
                Ok(Notice::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    spawn_catch_up(&hub);
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The store stopped sending notices: only the safety net is left.
                    notices_open = false;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use editthinker_store::{NewJob, SqliteStore};
    use tokio::sync::broadcast::error::RecvError;

    use super::*;

    async fn store_with_job() -> (Arc<dyn Store>, Uuid) {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::connect("sqlite::memory:").await.unwrap());
        store.migrate().await.unwrap();
        let id = Uuid::now_v7();
        store
            .insert_job(NewJob {
                id,
                tenant: editthinker_store::DEFAULT_TENANT.into(),
                active_limit: None,
                instruction: "i".into(),
                editor: "e".into(),
                options: serde_json::json!({}),
                metadata: serde_json::json!({}),
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
        (store, id)
    }

    #[tokio::test]
    async fn one_read_reaches_every_subscriber_of_the_job() {
        let (store, id) = store_with_job().await;
        let hub = EventHub::start(store.clone(), CancellationToken::new());
        let mut a = hub.subscribe(id, 0);
        let mut b = hub.subscribe(id, 0);
        let other = hub.subscribe(Uuid::now_v7(), 0);
        assert_eq!(hub.watched_jobs(), 2);
        store.request_cancel(id).await.unwrap();
        for sub in [&mut a, &mut b] {
            let Feed::Rows(rows) = sub.recv().await.unwrap() else {
                panic!("stored rows expected");
            };
            let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
            assert_eq!(kinds, ["job.queued", "job.canceled"]);
        }
        // The last subscriber of a job takes it off the hub.
        drop(other);
        assert_eq!(hub.watched_jobs(), 1);
        drop((a, b));
        assert_eq!(hub.watched_jobs(), 0);
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_without_holding_up_the_others() {
        let (store, id) = store_with_job().await;
        let hub = EventHub::start(store.clone(), CancellationToken::new());
        let mut slow = hub.subscribe(id, 0);
        let mut fast = hub.subscribe(id, 0);
        let total = FEED_CAPACITY * 2;
        for n in 0..total {
            store
                .publish_live(id, "turn.thinking", serde_json::json!({"n": n}))
                .await
                .unwrap();
            // The fast one keeps up (skipping the stored rows the first
            // safety-net pass delivers); the slow one never reads.
            loop {
                match fast.recv().await {
                    Ok(Feed::Live(_)) => break,
                    Ok(Feed::Rows(_)) => {}
                    Err(e) => panic!("the fast subscriber lagged at event {n}: {e}"),
                }
            }
        }
        // The slow one is told it fell behind (it then re-reads the table).
        assert!(matches!(slow.recv().await, Err(RecvError::Lagged(_))));
    }

    #[tokio::test]
    async fn a_job_subscribes_while_another_jobs_feeds_are_locked() {
        let (store, id) = store_with_job().await;
        let hub = EventHub::start(store, CancellationToken::new());
        // A job in another shard than `id`'s.
        let shard = |job: Uuid| job.as_u64_pair().1 as usize % FEED_SHARDS;
        let other = std::iter::repeat_with(Uuid::now_v7)
            .find(|job| shard(*job) != shard(id))
            .unwrap();
        let held = hub.feeds.of(other);
        let (done, subscribed) = std::sync::mpsc::channel();
        let subscriber = hub.clone();
        std::thread::spawn(move || {
            let subscription = subscriber.subscribe(id, 0);
            let _ = done.send(subscription.job);
        });
        let job = subscribed
            .recv_timeout(Duration::from_secs(5))
            .expect("subscribing waits for no other job's lock");
        assert_eq!(job, id);
        drop(held);
    }
}
