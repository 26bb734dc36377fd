//! The store conformance suite: every test runs against both backends.
//!
//! Postgres: `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! names a server on which each test creates, and afterwards drops, its own
//! database. An unreachable server fails the tests; they never skip.
//! SQLite: a file in a temporary folder per test.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use editthinker_core::{CallKind, LedgerEntry, ProviderCall, Tokens};
use editthinker_store::{
    event_type, ApiKeyRow, ChosenRecord, CreateCheck, EventRow, Fairness, IdempotentInsert, JobRow,
    JobStatus, Lease, NewApiKey, NewCall, NewCandidate, NewJob, NewTurn, Notice, PendingEditRecord,
    QueueStats, RefusalRecord, StopReason, Store, StoreError, DEFAULT_CURRENCY, MAX_LIVE_PAYLOAD,
};
use serde_json::{json, Value};
use uuid::Uuid;

mod harness {
    use std::sync::Arc;

    use editthinker_store::{PgStore, SqliteStore, Store};
    use sqlx::{Connection, Executor, PgConnection};

    const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    /// A fresh Postgres database holding a migrated store.
    pub struct PgDb {
        pub store: Arc<PgStore>,
        admin_url: String,
        name: String,
    }

    fn admin_url() -> String {
        std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
    }

    async fn admin(url: &str) -> PgConnection {
        PgConnection::connect(url).await.unwrap_or_else(|e| {
            panic!(
                "Postgres at {url} is unreachable ({e}). The conformance suite needs a \
                 server: start one or set DATABASE_URL."
            )
        })
    }

    pub async fn pg() -> PgDb {
        let db = pg_unmigrated().await;
        db.store.migrate().await.expect("migrations apply");
        db
    }

    /// A fresh, empty Postgres database.
    pub async fn pg_unmigrated() -> PgDb {
        let admin_url = admin_url();
        let name = format!("et_{}", uuid::Uuid::now_v7().simple());
        let mut conn = admin(&admin_url).await;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        conn.close().await.ok();
        let mut url = url::Url::parse(&admin_url).expect("DATABASE_URL is a URL");
        url.set_path(&name);
        let store = PgStore::connect(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("connecting to {name} failed: {e}"));
        PgDb {
            store: Arc::new(store),
            admin_url,
            name,
        }
    }

    impl PgDb {
        /// The test database's URL.
        pub fn url(&self) -> String {
            let mut url = url::Url::parse(&self.admin_url).expect("DATABASE_URL is a URL");
            url.set_path(&self.name);
            url.into()
        }

        /// Drops the database (after a passing test; a failed one keeps it
        /// for inspection).
        pub async fn cleanup(self) {
            let Self {
                store,
                admin_url,
                name,
            } = self;
            store.pool().close().await;
            drop(store);
            let mut conn = admin(&admin_url).await;
            conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await
                .unwrap_or_else(|e| panic!("DROP DATABASE {name} failed: {e}"));
        }
    }

    /// A migrated SQLite store in a temporary folder (kept alive by the
    /// returned guard).
    pub async fn sqlite() -> (Arc<SqliteStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        // A missing subfolder: connect creates it.
        let path = dir.path().join("sub/store.db");
        let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("sqlite connect");
        store.migrate().await.expect("migrations apply");
        assert!(path.is_file());
        (Arc::new(store), dir)
    }
}

/// Instantiates each suite function for both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = crate::harness::pg().await;
                    crate::$name(db.store.clone()).await;
                    db.cleanup().await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (store, _dir) = crate::harness::sqlite().await;
                    crate::$name(store).await;
                }
            )*
        }
    };
}

conformance!(
    ready_after_migrate,
    insert_get_list,
    claim_order,
    claim_sets_lease_and_writes_started,
    heartbeat_extends_and_reports_cancel,
    fencing_rejects_stale_leases,
    turns_round_trip,
    complete_fail_cancel,
    retry_later_requeues_then_fails,
    retry_later_with_cancel_requested_cancels,
    an_expired_lease_fences_writes_before_any_rescue,
    latest_event_ids_per_job,
    rescue_expired_requeues_then_fails,
    release_requeues_without_counting,
    request_cancel_in_every_state,
    events_after_is_strict_and_ordered,
    subscribe_sees_insert,
    concurrent_claims_are_exclusive,
    pending_edit_is_fenced_and_cleared_by_its_turn,
    refusal_is_stored_and_in_the_succeeded_event,
    live_events_reach_subscribers,
    jobs_are_listed_per_tenant,
    the_sandbox_flag_is_kept,
    the_active_jobs_limit_counts_queued_and_running_per_tenant,
    idempotency_keys_are_per_tenant,
    api_keys_are_stored_hashed_and_revocable,
    deliveries_carry_their_tenants_secret,
    queue_stats_count_queued_and_running_and_age_the_oldest_due,
    traceparent_is_stored_with_the_job,
    provider_text_is_cleaned_before_it_is_stored,
    refused_data_is_a_permanent_error,
    a_deep_queue_does_not_delay_another_tenant,
    without_fairness_claims_are_oldest_first,
    tenant_fair_order_matches_queue_position,
    a_job_is_fetched_only_for_its_tenant,
    the_usage_ledger_keeps_every_paid_call,
    candidates_are_recorded_one_by_one_and_the_choice_becomes_the_turn,
);

// ---- helpers ----------------------------------------------------------------

/// The tenant of the suite's jobs.
const T: &str = "default";

const LEASE: Duration = Duration::from_secs(60);

fn new_job(priority: i32, max_attempts: u32) -> NewJob {
    let id = Uuid::now_v7();
    NewJob {
        id,
        tenant: T.into(),
        active_limit: None,
        instruction: "make the sky purple".into(),
        editor: "kontext".into(),
        options: json!({"max_turns": 3}),
        metadata: json!({"client": "test", "n": [1, 2]}),
        source_key: format!("jobs/{id}/source.png"),
        source_mime: "image/png".into(),
        max_attempts,
        priority,
        webhook: None,
        deadline_seconds: None,
        traceparent: None,
        sandbox: false,
    }
}

async fn insert(store: &Arc<dyn Store>, priority: i32, max_attempts: u32) -> JobRow {
    store
        .insert_job(new_job(priority, max_attempts))
        .await
        .expect("insert_job")
}

async fn job(store: &Arc<dyn Store>, id: Uuid) -> JobRow {
    store
        .get_job(id)
        .await
        .expect("get_job")
        .expect("job exists")
}

async fn events(store: &Arc<dyn Store>, id: Uuid) -> Vec<EventRow> {
    store.events_after(id, 0).await.expect("events_after")
}

fn kinds(events: &[EventRow]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

/// Claims exactly one job and checks it is `expected`.
async fn claim_one(store: &Arc<dyn Store>, owner: &str, lease: Duration, expected: Uuid) -> Lease {
    let mut claimed = store
        .claim(owner, 1, lease, Fairness::Tenant)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "one job claimed");
    let c = claimed.pop().unwrap();
    assert_eq!(c.job.id, expected);
    c.lease
}

fn assert_lease_lost<T: std::fmt::Debug>(r: Result<T, StoreError>, id: Uuid) {
    match r {
        Err(StoreError::LeaseLost(got)) => assert_eq!(got, id),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

fn assert_finished_without_lease(job: &JobRow) {
    assert!(job.finished_at.is_some(), "finished_at set");
    assert_eq!(job.lease_owner, None, "lease cleared");
    assert_eq!(job.lease_expires_at, None, "lease cleared");
}

// ---- the suite ----------------------------------------------------------------

async fn ready_after_migrate(store: Arc<dyn Store>) {
    assert!(store.ready().await.unwrap());
    // Migrating again is a no-op.
    store.migrate().await.unwrap();
    assert!(store.ready().await.unwrap());
}

async fn insert_get_list(store: Arc<dyn Store>) {
    let before = Utc::now() - chrono::Duration::seconds(5);
    let mut ids = Vec::new();
    for i in 0..5 {
        let new = new_job(i, 3);
        let row = store.insert_job(new.clone()).await.unwrap();
        assert_eq!(row.id, new.id);
        assert_eq!(row.status, JobStatus::Queued);
        assert_eq!(row.instruction, new.instruction);
        assert_eq!(row.editor, new.editor);
        assert_eq!(row.options, new.options);
        assert_eq!(row.metadata, new.metadata);
        assert_eq!(row.source_key, new.source_key);
        assert_eq!(row.source_mime, new.source_mime);
        assert_eq!(row.attempt, 0);
        assert_eq!(row.max_attempts, 3);
        assert_eq!(row.priority, i);
        assert!(row.run_at >= before && row.created_at >= before);
        assert_eq!(row.lease_owner, None);
        assert!(!row.cancel_requested);
        assert_eq!(row.result_turn, None);
        assert_eq!(row.started_at, None);
        assert_eq!(row.finished_at, None);
        assert_eq!(
            job(&store, row.id).await,
            row,
            "get_job returns the inserted row"
        );

        let ev = events(&store, row.id).await;
        assert_eq!(kinds(&ev), [event_type::JOB_QUEUED]);
        assert_eq!(ev[0].data, json!({"status": "queued"}));
        assert_eq!(ev[0].job_id, row.id);
        ids.push(row.id);
    }
    assert_eq!(store.get_job(Uuid::now_v7()).await.unwrap(), None);

    // Newest first.
    let all = store.list_jobs(T, None, 100, None).await.unwrap();
    let listed: Vec<Uuid> = all.iter().map(|j| j.id).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);

    // Cursor pagination, exclusive.
    let page1 = store.list_jobs(T, None, 2, None).await.unwrap();
    assert_eq!(
        page1.iter().map(|j| j.id).collect::<Vec<_>>(),
        newest_first[..2]
    );
    let page2 = store
        .list_jobs(T, None, 2, Some(page1[1].id))
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|j| j.id).collect::<Vec<_>>(),
        newest_first[2..4]
    );
    let page3 = store
        .list_jobs(T, None, 2, Some(page2[1].id))
        .await
        .unwrap();
    assert_eq!(
        page3.iter().map(|j| j.id).collect::<Vec<_>>(),
        newest_first[4..]
    );
    let page4 = store
        .list_jobs(T, None, 2, Some(page3[0].id))
        .await
        .unwrap();
    assert!(page4.is_empty());

    // Status filter: claim the highest priority (the newest) job.
    let claimed = store.claim("w", 1, LEASE, Fairness::Tenant).await.unwrap();
    assert_eq!(claimed[0].job.id, ids[4]);
    let running = store
        .list_jobs(T, Some(JobStatus::Running), 10, None)
        .await
        .unwrap();
    assert_eq!(running.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[4]]);
    let queued = store
        .list_jobs(T, Some(JobStatus::Queued), 10, None)
        .await
        .unwrap();
    assert_eq!(
        queued.iter().map(|j| j.id).collect::<Vec<_>>(),
        newest_first[1..]
    );
    let queued_after = store
        .list_jobs(T, Some(JobStatus::Queued), 10, Some(ids[2]))
        .await
        .unwrap();
    assert_eq!(
        queued_after.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[1], ids[0]]
    );
    assert!(store
        .list_jobs(T, Some(JobStatus::Failed), 10, None)
        .await
        .unwrap()
        .is_empty());
}

async fn claim_order(store: Arc<dyn Store>) {
    // Inserted in this order, so run_at increases a..e.
    let a = insert(&store, 0, 3).await.id;
    let b = insert(&store, 5, 3).await.id;
    let c = insert(&store, 0, 3).await.id;
    let d = insert(&store, 5, 3).await.id;
    let later = insert(&store, 10, 3).await.id;

    // Push `later` into the future: claim it and retry in an hour.
    let lease = claim_one(&store, "w", LEASE, later).await;
    let status = store
        .retry_later(
            &lease,
            "editor_unavailable",
            "503",
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Queued);

    // Priority first, then run_at; the not-yet-due job is skipped.
    assert_eq!(claim_one(&store, "w", LEASE, b).await.job_id, b);
    let rest = store.claim("w", 10, LEASE, Fairness::Tenant).await.unwrap();
    let order: Vec<Uuid> = rest.iter().map(|c| c.job.id).collect();
    assert_eq!(order, [d, a, c]);
    assert!(store
        .claim("w", 10, LEASE, Fairness::Tenant)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(job(&store, later).await.status, JobStatus::Queued);
    assert!(store
        .claim("w", 0, LEASE, Fairness::Tenant)
        .await
        .unwrap()
        .is_empty());
}

async fn claim_sets_lease_and_writes_started(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 3).await.id;
    let before = Utc::now() - chrono::Duration::seconds(5);
    let claimed = store
        .claim("worker-1", 5, LEASE, Fairness::Tenant)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!(
        c.lease,
        Lease {
            job_id: id,
            attempt: 1,
            owner: "worker-1".into()
        }
    );
    assert_eq!(c.job.status, JobStatus::Running);
    assert_eq!(c.job.attempt, 1);
    assert_eq!(c.job.lease_owner.as_deref(), Some("worker-1"));
    let expires = c.job.lease_expires_at.expect("lease expiry");
    assert!(expires > Utc::now() + chrono::Duration::seconds(50));
    assert!(expires < Utc::now() + chrono::Duration::seconds(70));
    let started = c.job.started_at.expect("started_at");
    assert!(started >= before);
    assert_eq!(
        job(&store, id).await,
        c.job,
        "the claimed row is what is stored"
    );

    let ev = events(&store, id).await;
    assert_eq!(
        kinds(&ev),
        [event_type::JOB_QUEUED, event_type::JOB_STARTED]
    );
    assert_eq!(ev[1].data, json!({"attempt": 1}));

    // A second claim keeps the first started_at.
    store
        .retry_later(&c.lease, "thinker_unavailable", "down", Duration::ZERO)
        .await
        .unwrap();
    let again = claim_one(&store, "worker-2", LEASE, id).await;
    assert_eq!(again.attempt, 2);
    let row = job(&store, id).await;
    assert_eq!(row.started_at, Some(started));
    assert_eq!(row.lease_owner.as_deref(), Some("worker-2"));
    let ev = events(&store, id).await;
    assert_eq!(ev.last().unwrap().data, json!({"attempt": 2}));
}

async fn heartbeat_extends_and_reports_cancel(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 3).await.id;
    let lease = claim_one(&store, "w", Duration::from_secs(10), id).await;
    let first = job(&store, id).await.lease_expires_at.unwrap();
    assert!(!store
        .heartbeat(&lease, Duration::from_secs(3600))
        .await
        .unwrap());
    let extended = job(&store, id).await.lease_expires_at.unwrap();
    assert!(extended > first + chrono::Duration::seconds(3000));

    store.request_cancel(id).await.unwrap();
    assert!(store.heartbeat(&lease, LEASE).await.unwrap());
    // Heartbeats write no events.
    assert_eq!(
        kinds(&events(&store, id).await),
        [event_type::JOB_QUEUED, event_type::JOB_STARTED]
    );
}

async fn fencing_rejects_stale_leases(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 3).await.id;
    let lease = claim_one(&store, "w1", Duration::ZERO, id).await;
    // The lease expired at once; rescue requeues, another worker claims.
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    let current = claim_one(&store, "w2", LEASE, id).await;
    assert_eq!(current.attempt, 2);
    let snapshot = job(&store, id).await;
    let n_events = events(&store, id).await.len();

    let wrong_owner = Lease {
        owner: "w1".into(),
        ..current.clone()
    };
    let wrong_attempt = Lease {
        attempt: 1,
        ..current.clone()
    };
    for stale in [&lease, &wrong_owner, &wrong_attempt] {
        assert_lease_lost(store.heartbeat(stale, LEASE).await, id);
        let turn = NewTurn {
            index: 1,
            instruction: "x".into(),
            image_key: "k".into(),
            image_mime: "image/png".into(),
            editor_ms: 1,
            provider_request_id: None,
        };
        assert_lease_lost(store.record_turn(stale, turn).await, id);
        assert_lease_lost(
            store
                .record_critique(stale, 1, &json!({}), 1, "raw", None)
                .await,
            id,
        );
        assert_lease_lost(
            store.complete(stale, 1, None, StopReason::MaxTurns).await,
            id,
        );
        assert_lease_lost(store.fail(stale, "c", "m").await, id);
        assert_lease_lost(store.retry_later(stale, "c", "m", Duration::ZERO).await, id);
        assert_lease_lost(store.mark_canceled(stale).await, id);
        assert_lease_lost(store.release(stale).await, id);
    }
    assert_eq!(
        job(&store, id).await,
        snapshot,
        "stale writes changed nothing"
    );
    assert_eq!(events(&store, id).await.len(), n_events);
    assert!(store.list_turns(id).await.unwrap().is_empty());

    // Once the job is finished even the current lease is spent.
    store
        .record_turn(
            &current,
            NewTurn {
                index: 1,
                instruction: "x".into(),
                image_key: "k".into(),
                image_mime: "image/png".into(),
                editor_ms: 1,
                provider_request_id: None,
            },
        )
        .await
        .unwrap();
    store
        .complete(&current, 1, None, StopReason::MaxTurns)
        .await
        .unwrap();
    assert_lease_lost(store.heartbeat(&current, LEASE).await, id);
    assert_lease_lost(store.fail(&current, "c", "m").await, id);
    assert_eq!(job(&store, id).await.status, JobStatus::Succeeded);

    // A lease for a job that does not exist.
    let ghost = Lease {
        job_id: Uuid::now_v7(),
        attempt: 1,
        owner: "w".into(),
    };
    assert_lease_lost(store.heartbeat(&ghost, LEASE).await, ghost.job_id);
}

async fn turns_round_trip(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 3).await.id;
    let lease = claim_one(&store, "w", LEASE, id).await;
    for index in 1..=2u32 {
        store
            .record_turn(
                &lease,
                NewTurn {
                    index,
                    instruction: format!("instruction {index}"),
                    image_key: format!("jobs/{id}/turns/{index}.png"),
                    image_mime: "image/png".into(),
                    editor_ms: 1000 + u64::from(index),
                    provider_request_id: None,
                },
            )
            .await
            .unwrap();
    }
    let critique = json!({"semantic": 7, "quality": 8, "overall": 7.5, "reasoning": "ok"});
    store
        .record_critique(&lease, 1, &critique, 250, "raw thinker output", None)
        .await
        .unwrap();
    store
        .record_critique(
            &lease,
            2,
            &json!({"error": "unparsable"}),
            30,
            "???",
            Some("no JSON"),
        )
        .await
        .unwrap();

    let turns = store.list_turns(id).await.unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0].job_id, id);
    assert_eq!(turns[0].index, 1);
    assert_eq!(turns[0].instruction, "instruction 1");
    assert_eq!(turns[0].image_key, format!("jobs/{id}/turns/1.png"));
    assert_eq!(turns[0].image_mime, "image/png");
    assert_eq!(turns[0].editor_ms, 1001);
    assert_eq!(turns[0].critique, Some(critique.clone()));
    assert_eq!(turns[0].thinker_ms, Some(250));
    assert_eq!(turns[0].raw_output.as_deref(), Some("raw thinker output"));
    assert_eq!(turns[0].parse_error, None);
    assert_eq!(turns[1].index, 2);
    assert_eq!(turns[1].parse_error.as_deref(), Some("no JSON"));
    assert!(store.list_turns(Uuid::now_v7()).await.unwrap().is_empty());
    // The one-query read of a job has the same job and turns; a running
    // job has no queue position, even when asked.
    let read = store
        .job_with_turns(id, T, true)
        .await
        .unwrap()
        .expect("the job");
    assert_eq!(read.job, job(&store, id).await);
    assert_eq!(read.turns, turns);
    assert_eq!(read.jobs_ahead, None);

    let ev = events(&store, id).await;
    assert_eq!(
        kinds(&ev),
        [
            event_type::JOB_QUEUED,
            event_type::JOB_STARTED,
            event_type::TURN_EDITED,
            event_type::TURN_EDITED,
            event_type::TURN_CRITIQUED,
            event_type::TURN_CRITIQUED,
        ]
    );
    assert_eq!(
        ev[2].data,
        json!({"turn": 1, "candidate": 0, "instruction": "instruction 1", "editor_ms": 1001})
    );
    assert_eq!(
        ev[4].data,
        json!({"turn": 1, "candidate": 0, "critique": critique, "thinker_ms": 250})
    );

    // A recorded turn is never replaced. The same write again (a retry
    // whose commit went unheard) is a no-op; another image is refused.
    let again = |key: &str| NewTurn {
        index: 2,
        instruction: "redo".into(),
        image_key: key.into(),
        image_mime: "image/webp".into(),
        editor_ms: 5,
        provider_request_id: None,
    };
    let before = store.list_turns(id).await.unwrap();
    store
        .record_turn(&lease, again(&before[1].image_key))
        .await
        .unwrap();
    assert!(matches!(
        store.record_turn(&lease, again("other-key")).await,
        Err(StoreError::TurnRecorded { index: 2, .. })
    ));
    assert_eq!(store.list_turns(id).await.unwrap(), before);
    assert_eq!(events(&store, id).await.len(), 6, "no event for a no-op");

    // A critique for a turn never recorded is refused.
    assert!(store
        .record_critique(&lease, 9, &json!({}), 1, "", None)
        .await
        .is_err());
}

async fn complete_fail_cancel(store: Arc<dyn Store>) {
    let ok = insert(&store, 2, 3).await.id;
    let bad = insert(&store, 1, 3).await.id;
    let stop = insert(&store, 0, 3).await.id;
    let claimed = store.claim("w", 3, LEASE, Fairness::Tenant).await.unwrap();
    let lease: HashMap<Uuid, Lease> = claimed.into_iter().map(|c| (c.job.id, c.lease)).collect();

    store
        .complete(&lease[&ok], 2, None, StopReason::MaxTurns)
        .await
        .unwrap();
    let row = job(&store, ok).await;
    assert_eq!(row.status, JobStatus::Succeeded);
    assert_eq!(row.result_turn, Some(2));
    assert_eq!(row.error_code, None);
    assert_finished_without_lease(&row);
    let ev = events(&store, ok).await;
    assert_eq!(ev.last().unwrap().kind, event_type::JOB_SUCCEEDED);
    assert_eq!(
        settled(&ev.last().unwrap().data),
        json!({"result_turn": 2, "stop_reason": "max_turns"})
    );
    assert_eq!(row.stop_reason, Some(StopReason::MaxTurns));

    store
        .fail(&lease[&bad], "invalid_image", "not a PNG")
        .await
        .unwrap();
    let row = job(&store, bad).await;
    assert_eq!(row.status, JobStatus::Failed);
    assert_eq!(row.error_code.as_deref(), Some("invalid_image"));
    assert_eq!(row.error_message.as_deref(), Some("not a PNG"));
    assert_eq!(row.stop_reason, Some(StopReason::Failed));
    assert_finished_without_lease(&row);
    let ev = events(&store, bad).await;
    assert_eq!(ev.last().unwrap().kind, event_type::JOB_FAILED);
    assert_eq!(
        settled(&ev.last().unwrap().data),
        json!({"code": "invalid_image", "message": "not a PNG"})
    );

    store.mark_canceled(&lease[&stop]).await.unwrap();
    let row = job(&store, stop).await;
    assert_eq!(row.status, JobStatus::Canceled);
    assert_finished_without_lease(&row);
    let ev = events(&store, stop).await;
    assert_eq!(ev.last().unwrap().kind, event_type::JOB_CANCELED);
    assert_eq!(settled(&ev.last().unwrap().data), json!({}));

    // Finished jobs are never claimed again.
    assert!(store
        .claim("w", 10, LEASE, Fairness::Tenant)
        .await
        .unwrap()
        .is_empty());
}

async fn retry_later_requeues_then_fails(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 2).await.id;

    let lease = claim_one(&store, "w", LEASE, id).await;
    let status = store
        .retry_later(&lease, "editor_unavailable", "503 twice", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Queued);
    let row = job(&store, id).await;
    assert_eq!(row.status, JobStatus::Queued);
    assert_eq!(row.attempt, 1);
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert_eq!(row.finished_at, None);
    assert_eq!(row.error_code.as_deref(), Some("editor_unavailable"));
    assert_eq!(row.error_message.as_deref(), Some("503 twice"));
    // Requeueing writes `job.retrying`, in the same transaction.
    let ev = events(&store, id).await;
    assert_eq!(
        kinds(&ev),
        [
            event_type::JOB_QUEUED,
            event_type::JOB_STARTED,
            event_type::JOB_RETRYING
        ]
    );
    assert_retrying(
        &ev[2].data,
        1,
        "transient",
        Some("editor_unavailable"),
        row.run_at,
    );
    assert_lease_lost(store.heartbeat(&lease, LEASE).await, id);

    // The last attempt fails for good.
    let lease = claim_one(&store, "w", LEASE, id).await;
    assert_eq!(lease.attempt, 2);
    let status = store
        .retry_later(&lease, "editor_unavailable", "503 again", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Failed);
    let row = job(&store, id).await;
    assert_eq!(row.status, JobStatus::Failed);
    assert_eq!(row.error_code.as_deref(), Some("editor_unavailable"));
    assert_finished_without_lease(&row);
    let ev = events(&store, id).await;
    assert_eq!(
        kinds(&ev),
        [
            event_type::JOB_QUEUED,
            event_type::JOB_STARTED,
            event_type::JOB_RETRYING,
            event_type::JOB_STARTED,
            event_type::JOB_FAILED
        ]
    );
    assert_eq!(
        settled(&ev[4].data),
        json!({"code": "editor_unavailable", "message": "503 again"})
    );

    // A delayed retry is not claimable before its run_at.
    let other = insert(&store, 0, 5).await.id;
    let lease = claim_one(&store, "w", LEASE, other).await;
    store
        .retry_later(&lease, "thinker_unavailable", "x", Duration::from_secs(600))
        .await
        .unwrap();
    let row = job(&store, other).await;
    assert!(row.run_at > Utc::now() + chrono::Duration::seconds(500));
    assert!(row.run_at < Utc::now() + chrono::Duration::seconds(700));
    assert!(store
        .claim("w", 10, LEASE, Fairness::Tenant)
        .await
        .unwrap()
        .is_empty());
}

/// A `job.retrying` payload (contract): the attempt that ended, why, the
/// failure's code, and when the job may run again.
fn assert_retrying(
    data: &serde_json::Value,
    attempt: u32,
    reason: &str,
    code: Option<&str>,
    run_at: chrono::DateTime<Utc>,
) {
    assert_eq!(data["attempt"], attempt, "{data}");
    assert_eq!(data["reason"], reason, "{data}");
    assert_eq!(data["code"].as_str(), code, "{data}");
    let at: chrono::DateTime<Utc> = data["run_at"].as_str().unwrap().parse().unwrap();
    assert!(
        (at - run_at).num_milliseconds().abs() <= 1,
        "run_at {at} vs row {run_at}"
    );
}

async fn an_expired_lease_fences_writes_before_any_rescue(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 3).await.id;
    let lease = claim_one(&store, "frozen", Duration::from_millis(200), id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Nobody rescued it yet, but the lease is over: no write goes through.
    assert_eq!(job(&store, id).await.status, JobStatus::Running);
    assert_lease_lost(store.heartbeat(&lease, LEASE).await, id);
    let turn = NewTurn {
        index: 1,
        instruction: "late".into(),
        image_key: "late".into(),
        image_mime: "image/png".into(),
        editor_ms: 1,
        provider_request_id: None,
    };
    assert!(matches!(
        store.record_turn(&lease, turn).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.complete(&lease, 1, None, StopReason::MaxTurns).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(store.list_turns(id).await.unwrap().is_empty());
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
}

async fn latest_event_ids_per_job(store: Arc<dyn Store>) {
    let a = insert(&store, 0, 3).await.id;
    let b = insert(&store, 0, 3).await.id;
    let never = Uuid::now_v7();
    store.request_cancel(a).await.unwrap();
    let mut latest = store.latest_event_ids(&[a, b, never]).await.unwrap();
    latest.sort();
    let last_of = |evs: Vec<editthinker_store::EventRow>| evs.last().unwrap().id;
    let mut expected = vec![
        (a, last_of(events(&store, a).await)),
        (b, last_of(events(&store, b).await)),
    ];
    expected.sort();
    assert_eq!(latest, expected);
    assert!(store.latest_event_ids(&[]).await.unwrap().is_empty());
}

async fn retry_later_with_cancel_requested_cancels(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 5).await.id;
    let lease = claim_one(&store, "w", LEASE, id).await;
    store.request_cancel(id).await.unwrap();
    let status = store
        .retry_later(&lease, "editor_unavailable", "x", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Canceled);
    let row = job(&store, id).await;
    assert_eq!(row.status, JobStatus::Canceled);
    assert_finished_without_lease(&row);
    assert_eq!(
        events(&store, id).await.last().unwrap().kind,
        event_type::JOB_CANCELED
    );
}

async fn rescue_expired_requeues_then_fails(store: Arc<dyn Store>) {
    let id = insert(&store, 1, 2).await.id;
    let alive = insert(&store, 0, 2).await.id;
    assert_eq!(store.rescue_expired().await.unwrap(), 0);

    claim_one(&store, "dead", Duration::ZERO, id).await;
    claim_one(&store, "alive", LEASE, alive).await;
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    let row = job(&store, id).await;
    assert_eq!(row.status, JobStatus::Queued);
    assert_eq!(row.attempt, 1, "the lost attempt counts");
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert_eq!(row.finished_at, None);
    assert!(row.run_at <= Utc::now(), "due at once");
    let ev = events(&store, id).await;
    assert_eq!(
        kinds(&ev),
        [
            event_type::JOB_QUEUED,
            event_type::JOB_STARTED,
            event_type::JOB_RETRYING
        ],
    );
    assert_retrying(
        &ev[2].data,
        1,
        "lease_expired",
        Some("lease_expired"),
        row.run_at,
    );
    assert_eq!(job(&store, alive).await.status, JobStatus::Running);

    // Second and last attempt expires too: failed for good.
    let lease = claim_one(&store, "dead", Duration::ZERO, id).await;
    assert_eq!(lease.attempt, 2);
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    let row = job(&store, id).await;
    assert_eq!(row.status, JobStatus::Failed);
    assert_eq!(row.error_code.as_deref(), Some("lease_expired"));
    assert_finished_without_lease(&row);
    let ev = events(&store, id).await;
    let last = ev.last().unwrap();
    assert_eq!(last.kind, event_type::JOB_FAILED);
    assert_eq!(last.data["code"], "lease_expired");
    assert!(last.data["message"].is_string());
    assert_eq!(store.rescue_expired().await.unwrap(), 0);
    assert_eq!(job(&store, alive).await.status, JobStatus::Running);
}

async fn release_requeues_without_counting(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 1).await.id;
    let lease = claim_one(&store, "w", LEASE, id).await;
    store.release(&lease).await.unwrap();
    let row = job(&store, id).await;
    assert_eq!(row.status, JobStatus::Queued);
    assert_eq!(row.attempt, 0);
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert!(row.run_at <= Utc::now());
    let ev = events(&store, id).await;
    assert_eq!(
        kinds(&ev),
        [
            event_type::JOB_QUEUED,
            event_type::JOB_STARTED,
            event_type::JOB_RETRYING
        ]
    );
    assert_retrying(&ev[2].data, 1, "released", None, row.run_at);
    assert_lease_lost(store.heartbeat(&lease, LEASE).await, id);
    // Claimable again at once, with the attempt not spent.
    let again = claim_one(&store, "w2", LEASE, id).await;
    assert_eq!(again.attempt, 1);
}

async fn request_cancel_in_every_state(store: Arc<dyn Store>) {
    // Queued: canceled at once.
    let queued = insert(&store, 0, 3).await.id;
    let row = store.request_cancel(queued).await.unwrap();
    assert_eq!(row.status, JobStatus::Canceled);
    assert!(row.finished_at.is_some());
    assert_eq!(job(&store, queued).await, row);
    let ev = events(&store, queued).await;
    assert_eq!(
        kinds(&ev),
        [event_type::JOB_QUEUED, event_type::JOB_CANCELED]
    );
    assert_eq!(settled(&ev[1].data), json!({}));
    assert!(store
        .claim("w", 10, LEASE, Fairness::Tenant)
        .await
        .unwrap()
        .is_empty());

    // Running: flagged; the worker cancels.
    let running = insert(&store, 0, 3).await.id;
    let lease = claim_one(&store, "w", LEASE, running).await;
    let row = store.request_cancel(running).await.unwrap();
    assert_eq!(row.status, JobStatus::Running);
    assert!(row.cancel_requested);
    assert_eq!(row.finished_at, None);
    assert_eq!(
        kinds(&events(&store, running).await),
        [event_type::JOB_QUEUED, event_type::JOB_STARTED]
    );
    // Asking twice is harmless.
    assert!(
        store
            .request_cancel(running)
            .await
            .unwrap()
            .cancel_requested
    );
    assert!(store.heartbeat(&lease, LEASE).await.unwrap());
    store.mark_canceled(&lease).await.unwrap();
    assert_eq!(job(&store, running).await.status, JobStatus::Canceled);

    // Finished: conflict.
    for id in [queued, running] {
        match store.request_cancel(id).await {
            Err(StoreError::Conflict { id: got, status }) => {
                assert_eq!(got, id);
                assert_eq!(status, JobStatus::Canceled);
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
    }
    let done = insert(&store, 0, 3).await.id;
    let lease = claim_one(&store, "w", LEASE, done).await;
    store.fail(&lease, "x", "y").await.unwrap();
    assert!(matches!(
        store.request_cancel(done).await,
        Err(StoreError::Conflict {
            status: JobStatus::Failed,
            ..
        })
    ));

    // Missing.
    let ghost = Uuid::now_v7();
    match store.request_cancel(ghost).await {
        Err(StoreError::NotFound(got)) => assert_eq!(got, ghost),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

async fn events_after_is_strict_and_ordered(store: Arc<dyn Store>) {
    let a = insert(&store, 1, 3).await.id;
    let b = insert(&store, 0, 3).await.id;
    let claimed = store.claim("w", 2, LEASE, Fairness::Tenant).await.unwrap();
    assert_eq!(claimed.len(), 2);
    store
        .complete(&claimed[0].lease, 0, None, StopReason::MaxTurns)
        .await
        .unwrap();

    let ev = events(&store, a).await;
    assert_eq!(
        kinds(&ev),
        [
            event_type::JOB_QUEUED,
            event_type::JOB_STARTED,
            event_type::JOB_SUCCEEDED
        ]
    );
    assert!(ev.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert!(ev.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    assert!(ev.iter().all(|e| e.job_id == a), "only this job's events");

    let after_first = store.events_after(a, ev[0].id).await.unwrap();
    assert_eq!(after_first, ev[1..]);
    let after_last = store.events_after(a, ev[2].id).await.unwrap();
    assert!(after_last.is_empty());
    assert_eq!(store.events_after(a, -1).await.unwrap(), ev);

    let evb = events(&store, b).await;
    assert_eq!(
        kinds(&evb),
        [event_type::JOB_QUEUED, event_type::JOB_STARTED]
    );
    // Ids are global: b's queued event sits between a's.
    assert!(evb[0].id > ev[0].id && evb[0].id < ev[1].id);
    assert!(store
        .events_after(Uuid::now_v7(), 0)
        .await
        .unwrap()
        .is_empty());
}

async fn subscribe_sees_insert(store: Arc<dyn Store>) {
    let mut rx = store.subscribe();
    let id = insert(&store, 0, 3).await.id;
    let expected = events(&store, id).await[0].id;
    let notice = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await.expect("notice channel open") {
                Notice::Event { job_id, .. } if job_id != id => continue,
                Notice::Resync => continue,
                n => return n,
            }
        }
    })
    .await
    .expect("a notice within 10 s");
    assert_eq!(
        notice,
        Notice::Event {
            job_id: id,
            event_id: expected,
            kind: event_type::JOB_QUEUED.into()
        }
    );

    // Claims notify too.
    claim_one(&store, "w", LEASE, id).await;
    let next = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notice within 10 s")
        .unwrap();
    match next {
        Notice::Event { job_id, kind, .. } => {
            assert_eq!(job_id, id);
            assert_eq!(kind, event_type::JOB_STARTED);
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Concurrent claimers never get the same job (`FOR UPDATE SKIP LOCKED` on
/// Postgres, `BEGIN IMMEDIATE` on SQLite).
async fn concurrent_claims_are_exclusive(store: Arc<dyn Store>) {
    let mut ids = HashSet::new();
    for i in 0..200 {
        ids.insert(insert(&store, i % 3, 3).await.id);
    }
    let mut claimers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        claimers.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            let mut got = Vec::new();
            loop {
                let batch = store
                    .claim(&owner, 3, LEASE, Fairness::Tenant)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return got;
                }
                for c in batch {
                    assert_eq!(c.lease.owner, owner);
                    assert_eq!(c.lease.attempt, 1);
                    got.push(c.job.id);
                }
            }
        }));
    }
    let mut seen = HashSet::new();
    for c in claimers {
        for id in c.await.unwrap() {
            assert!(seen.insert(id), "job {id} claimed twice");
        }
    }
    assert_eq!(seen, ids, "every job claimed exactly once");
    for id in ids {
        let ev = events(&store, id).await;
        assert_eq!(
            kinds(&ev),
            [event_type::JOB_QUEUED, event_type::JOB_STARTED],
            "one job.started per job"
        );
    }
}

// ---- Postgres only -------------------------------------------------------------

mod postgres_only {
    use std::sync::Arc;
    use std::time::Duration;

    use editthinker_store::{Notice, Store};
    use sqlx::Executor;

    use crate::harness;

    /// A dropped LISTEN connection is reported as `Resync`, and notices
    /// flow again afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listener_loss_sends_resync() {
        let db = harness::pg().await;
        let store: Arc<dyn Store> = db.store.clone();
        let mut rx = store.subscribe();
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND query ILIKE 'LISTEN%') t",
        )
        .fetch_one(db.store.pool())
        .await
        .unwrap();
        assert_eq!(killed, 1, "one LISTEN connection per store");
        let notice = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("Resync within 15 s")
            .unwrap();
        assert_eq!(notice, Notice::Resync);

        let id = crate::insert(&store, 0, 3).await.id;
        let notice = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match rx.recv().await.unwrap() {
                    Notice::Event { job_id, .. } if job_id == id => return,
                    _ => continue,
                }
            }
        })
        .await;
        assert!(notice.is_ok(), "notices flow after reconnecting");
        // Keep the pool usable for cleanup.
        db.store.pool().execute("SELECT 1").await.unwrap();
        db.cleanup().await;
    }
}

// ---- connecting ------------------------------------------------------------------

mod connecting {
    use editthinker_store::{connect, StoreError};

    use crate::harness;

    #[tokio::test]
    async fn postgres_not_ready_until_migrated() {
        let db = harness::pg_unmigrated().await;
        assert!(!editthinker_store::Store::ready(&*db.store).await.unwrap());
        editthinker_store::Store::migrate(&*db.store).await.unwrap();
        assert!(editthinker_store::Store::ready(&*db.store).await.unwrap());
        db.cleanup().await;
    }

    #[tokio::test]
    async fn sqlite_not_ready_until_migrated_and_creates_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.db");
        let store = connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        assert!(path.is_file(), "file and folders created");
        assert!(!store.ready().await.unwrap());
        store.migrate().await.unwrap();
        assert!(store.ready().await.unwrap());
    }

    #[tokio::test]
    async fn sqlite_in_memory_works() {
        let store = connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let id = crate::insert(&store, 0, 1).await.id;
        assert_eq!(crate::job(&store, id).await.id, id);
        let claimed = store
            .claim("w", 1, crate::LEASE, editthinker_store::Fairness::Tenant)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
    }

    #[tokio::test]
    async fn postgres_url_dispatches_to_postgres() {
        let db = harness::pg().await;
        let url = db.url();
        let store = connect(&url).await.unwrap();
        assert!(store.ready().await.unwrap());
        drop(store);
        db.cleanup().await;
    }

    #[tokio::test]
    async fn unknown_scheme_is_rejected() {
        assert!(matches!(
            connect("mysql://x/y").await,
            Err(StoreError::BadUrl(_))
        ));
    }
}

/// The provider request of an edit in flight survives a lost lease and a
/// requeue, is written only under the lease, and is cleared when the turn
/// it was for is recorded (with the provider id on the turn).
async fn pending_edit_is_fenced_and_cleared_by_its_turn(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 3).await.id;
    let lease = claim_one(&store, "w1", LEASE, id).await;
    let pending = PendingEditRecord {
        turn: 1,
        candidate: None,
        instruction: "make the sky purple".into(),
        request: json!({"id": "req-1", "data": {"polling_url": "https://p/1"}}),
    };
    let stale = Lease {
        owner: "other".into(),
        ..lease.clone()
    };
    assert_lease_lost(store.record_pending_edit(&stale, &pending).await, id);
    assert_eq!(job(&store, id).await.pending_edit, None);
    store.record_pending_edit(&lease, &pending).await.unwrap();

    // The worker dies: the next claim sees the request it must poll.
    store.release(&lease).await.unwrap();
    let mut claimed = store.claim("w2", 1, LEASE, Fairness::Tenant).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = claimed.pop().unwrap();
    let stored: PendingEditRecord =
        serde_json::from_value(c.job.pending_edit.clone().expect("pending edit kept")).unwrap();
    assert_eq!(stored, pending);

    store
        .record_turn(
            &c.lease,
            NewTurn {
                index: 1,
                instruction: "make the sky purple".into(),
                image_key: "k1".into(),
                image_mime: "image/png".into(),
                editor_ms: 9,
                provider_request_id: Some("req-1".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(job(&store, id).await.pending_edit, None);
    let turns = store.list_turns(id).await.unwrap();
    assert_eq!(turns[0].provider_request_id.as_deref(), Some("req-1"));
}

/// A turn of several candidates: a candidate's provider request is kept
/// on its own row, its edit and critique are recorded as they finish (with
/// their events, fenced by the lease, a retried write a no-op), and the
/// choice copies the candidate into `turns` and writes `turn.chosen`.
async fn candidates_are_recorded_one_by_one_and_the_choice_becomes_the_turn(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 3).await.id;
    let lease = claim_one(&store, "w1", LEASE, id).await;
    let candidate = |index: u32, key: &str| NewCandidate {
        turn: 1,
        index,
        instruction: "add a hat".into(),
        seed: Some(1000 + i64::from(index)),
        image_key: key.into(),
        image_mime: "image/png".into(),
        editor_ms: 10 + u64::from(index),
        provider_request_id: None,
    };
    let pending = PendingEditRecord {
        turn: 1,
        candidate: Some(1),
        instruction: "add a hat".into(),
        request: json!({"id": "req-c1", "data": {}}),
    };
    store.record_pending_edit(&lease, &pending).await.unwrap();
    assert_eq!(
        job(&store, id).await.pending_edit,
        None,
        "kept on the candidate's row"
    );
    let stale = Lease {
        owner: "other".into(),
        ..lease.clone()
    };
    assert_lease_lost(store.record_candidate(&stale, candidate(0, "c0")).await, id);
    store
        .record_candidate(&lease, candidate(0, "c0"))
        .await
        .unwrap();
    // A retried write of the same candidate is a no-op; another image is refused.
    store
        .record_candidate(&lease, candidate(0, "c0"))
        .await
        .unwrap();
    assert!(store
        .record_candidate(&lease, candidate(0, "other"))
        .await
        .is_err());
    let rows = store.list_candidates(id).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].index, rows[0].image_key.as_deref()),
        (0, Some("c0"))
    );
    assert_eq!(rows[0].seed, Some(1000));
    assert_eq!(rows[1].image_key, None);
    assert_eq!(rows[1].pending_request.as_ref().unwrap()["id"], "req-c1");

    // The pending candidate lands: its request is cleared.
    store
        .record_candidate(
            &lease,
            NewCandidate {
                provider_request_id: Some("req-c1".into()),
                ..candidate(1, "c1")
            },
        )
        .await
        .unwrap();
    let critique =
        |score: f64| json!({"critique": {"semantic": score, "quality": score}, "satisfied": false});
    assert!(
        store
            .record_candidate_critique(&lease, 1, 2, &critique(1.0), 5, "raw", None)
            .await
            .is_err(),
        "no critique for a candidate never edited"
    );
    store
        .record_candidate_critique(&lease, 1, 0, &critique(4.0), 5, "raw 0", None)
        .await
        .unwrap();
    store
        .record_candidate_critique(&lease, 1, 1, &critique(7.0), 6, "raw 1", None)
        .await
        .unwrap();
    let rows = store.list_candidates(id).await.unwrap();
    assert_eq!(rows[1].pending_request, None);
    assert_eq!(rows[1].provider_request_id.as_deref(), Some("req-c1"));
    assert_eq!(
        rows[1].critique.as_ref().unwrap()["critique"]["semantic"],
        7.0
    );
    assert_eq!(rows[1].raw_output.as_deref(), Some("raw 1"));

    // No turn yet: the job JSON read has no candidates to show.
    let read = store.job_with_turns(id, T, false).await.unwrap().unwrap();
    assert!(read.turns.is_empty() && read.candidates.is_empty());
    let chosen = ChosenRecord {
        turn: 1,
        candidate: 1,
        score: Some(7.0),
        by: editthinker_core::RankBy::Thinker,
    };
    store.record_chosen(&lease, &chosen).await.unwrap();
    store.record_chosen(&lease, &chosen).await.unwrap();
    assert!(
        store
            .record_chosen(
                &lease,
                &ChosenRecord {
                    candidate: 0,
                    ..chosen
                }
            )
            .await
            .is_err(),
        "a turn chooses once"
    );
    let turns = store.list_turns(id).await.unwrap();
    assert_eq!(turns.len(), 1);
    let turn = &turns[0];
    assert_eq!(
        (turn.chosen, turn.image_key.as_str(), turn.editor_ms),
        (Some(1), "c1", 11)
    );
    assert_eq!(turn.critique.as_ref().unwrap()["critique"]["semantic"], 7.0);
    assert_eq!(turn.thinker_ms, Some(6));
    let read = store
        .job_with_turns(id, "default", false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.candidates.len(), 2);

    let events = events(&store, id).await;
    let turn_events: Vec<(&str, Value)> = events
        .iter()
        .filter(|e| e.kind.starts_with("turn."))
        .map(|e| (e.kind.as_str(), e.data.clone()))
        .collect();
    assert_eq!(
        turn_events.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [
            "turn.edited",
            "turn.edited",
            "turn.critiqued",
            "turn.critiqued",
            "turn.chosen"
        ]
    );
    assert_eq!(turn_events[1].1["candidate"], 1);
    assert_eq!(turn_events[3].1["candidate"], 1);
    assert_eq!(
        turn_events[4].1,
        json!({"turn": 1, "candidate": 1, "score": 7.0, "by": "thinker"})
    );
}

async fn refusal_is_stored_and_in_the_succeeded_event(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 3).await.id;
    let lease = claim_one(&store, "w", LEASE, id).await;
    let refusal = RefusalRecord {
        turn: 2,
        instruction: "refined".into(),
        reason: "Request Moderated".into(),
        kind: "refused".into(),
    };
    store
        .complete(&lease, 1, Some(&refusal), StopReason::MaxTurns)
        .await
        .unwrap();
    let row = job(&store, id).await;
    assert_eq!(row.status, JobStatus::Succeeded);
    let stored: RefusalRecord = serde_json::from_value(row.refusal.expect("refusal")).unwrap();
    assert_eq!(stored, refusal);
    let last = events(&store, id).await.pop().unwrap();
    assert_eq!(last.kind, event_type::JOB_SUCCEEDED);
    assert_eq!(last.data["result_turn"], 1);
    assert_eq!(last.data["refusal"]["reason"], "Request Moderated");
    assert_eq!(last.data["refusal"]["turn"], 2);

    // Without a refusal, the event has none.
    let other = insert(&store, 0, 3).await.id;
    let lease = claim_one(&store, "w", LEASE, other).await;
    store
        .complete(&lease, 1, None, StopReason::MaxTurns)
        .await
        .unwrap();
    assert_eq!(job(&store, other).await.refusal, None);
    let last = events(&store, other).await.pop().unwrap();
    assert!(last.data.get("refusal").is_none(), "{}", last.data);
}

/// Live events go to subscribers (through NOTIFY on Postgres) and are not
/// stored; oversized ones are refused.
async fn live_events_reach_subscribers(store: Arc<dyn Store>) {
    let id = insert(&store, 0, 3).await.id;
    let mut rx = store.subscribe();
    let data = json!({"turn": 1, "delta": "looking at the sky"});
    store
        .publish_live(id, event_type::TURN_THINKING, data.clone())
        .await
        .unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await.expect("notice channel open") {
                n @ Notice::Live { .. } => return n,
                _ => continue,
            }
        }
    })
    .await
    .expect("a live notice within 10 s");
    assert_eq!(
        notice,
        Notice::Live {
            job_id: id,
            kind: event_type::TURN_THINKING.into(),
            data
        }
    );
    assert_eq!(
        kinds(&events(&store, id).await),
        vec![event_type::JOB_QUEUED]
    );
    let huge = json!({"delta": "x".repeat(MAX_LIVE_PAYLOAD)});
    assert!(matches!(
        store
            .publish_live(id, event_type::TURN_THINKING, huge)
            .await,
        Err(StoreError::LiveTooLarge(_))
    ));
}

// ---- tenants -----------------------------------------------------------------

fn job_of(tenant: &str) -> NewJob {
    NewJob {
        tenant: tenant.into(),
        ..new_job(0, 3)
    }
}

async fn the_sandbox_flag_is_kept(store: Arc<dyn Store>) {
    let real = store.insert_job(job_of("acme")).await.unwrap();
    let sandbox = store
        .insert_job(NewJob {
            sandbox: true,
            ..job_of("acme")
        })
        .await
        .unwrap();
    assert!(!real.sandbox);
    assert!(sandbox.sandbox, "the inserted row says sandbox");
    let read = store
        .job_with_turns(sandbox.id, "acme", false)
        .await
        .unwrap();
    assert!(read.unwrap().job.sandbox, "a read of the job says sandbox");
    let claimed = store.claim("w", 2, LEASE, Fairness::Tenant).await.unwrap();
    assert_eq!(
        claimed.iter().filter(|c| c.job.sandbox).count(),
        1,
        "a claim carries the flag to the worker"
    );
}

async fn jobs_are_listed_per_tenant(store: Arc<dyn Store>) {
    let a = store.insert_job(job_of("acme")).await.unwrap();
    let b = store.insert_job(job_of("globex")).await.unwrap();
    assert_eq!(a.tenant, "acme");
    assert_eq!(store.get_job(b.id).await.unwrap().unwrap().tenant, "globex");
    let listed = |jobs: Vec<JobRow>| jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(
        listed(store.list_jobs("acme", None, 10, None).await.unwrap()),
        [a.id]
    );
    assert_eq!(
        listed(
            store
                .list_jobs("globex", Some(JobStatus::Queued), 10, None)
                .await
                .unwrap()
        ),
        [b.id]
    );
    assert!(store
        .list_jobs("initech", None, 10, None)
        .await
        .unwrap()
        .is_empty());
}

async fn the_active_jobs_limit_counts_queued_and_running_per_tenant(store: Arc<dyn Store>) {
    let limited = |tenant: &str| NewJob {
        active_limit: Some(2),
        ..job_of(tenant)
    };
    store.insert_job(limited("acme")).await.unwrap();
    store.insert_job(limited("acme")).await.unwrap();
    // Another tenant's jobs do not count.
    store.insert_job(limited("globex")).await.unwrap();
    // The check before a create says how many are active.
    match store.check_create("globex", Some(2), None).await.unwrap() {
        CreateCheck::Proceed { active_jobs } => assert_eq!(active_jobs, Some(1)),
        other => panic!("expected to proceed, got {other:?}"),
    }
    match store.check_create("globex", None, None).await.unwrap() {
        CreateCheck::Proceed { active_jobs } => assert_eq!(active_jobs, None),
        other => panic!("expected to proceed, got {other:?}"),
    }
    assert!(matches!(
        store.check_create("acme", Some(2), None).await,
        Err(StoreError::ActiveJobsLimit { limit: 2, .. })
    ));
    match store.insert_job(limited("acme")).await {
        Err(StoreError::ActiveJobsLimit { tenant, limit }) => {
            assert_eq!((tenant.as_str(), limit), ("acme", 2));
        }
        other => panic!("expected the limit, got {other:?}"),
    }
    // Running jobs count; finished ones free their place.
    let claimed = store.claim("w", 10, LEASE, Fairness::Tenant).await.unwrap();
    let acme: Vec<_> = claimed.iter().filter(|c| c.job.tenant == "acme").collect();
    assert_eq!(acme.len(), 2);
    assert!(store.insert_job(limited("acme")).await.is_err());
    store
        .fail(&acme[0].lease, "boom", "failed for the test")
        .await
        .unwrap();
    store.insert_job(limited("acme")).await.unwrap();
    assert!(store.insert_job(limited("acme")).await.is_err());
    // Concurrent creates never overshoot the limit (on Postgres, each
    // insert counts under the tenant's lock in the same statement).
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .insert_job(NewJob {
                    active_limit: Some(3),
                    ..job_of("initech")
                })
                .await
                .is_ok()
        }));
    }
    let mut created = 0;
    for task in tasks {
        created += usize::from(task.await.unwrap());
    }
    assert_eq!(created, 3);
}

async fn idempotency_keys_are_per_tenant(store: Arc<dyn Store>) {
    let first = store
        .insert_job_idempotent(job_of("acme"), "key-1", "digest")
        .await
        .unwrap();
    let IdempotentInsert::Created(first) = first else {
        panic!("first use creates");
    };
    // The same key from another tenant is another key.
    let other = store
        .insert_job_idempotent(job_of("globex"), "key-1", "other digest")
        .await
        .unwrap();
    let IdempotentInsert::Created(other) = other else {
        panic!("another tenant's key creates");
    };
    assert_ne!(first.id, other.id);
    match store
        .insert_job_idempotent(job_of("acme"), "key-1", "digest")
        .await
        .unwrap()
    {
        IdempotentInsert::Replayed { job, status } => {
            assert_eq!(job.id, first.id);
            assert_eq!(status, 202, "a replay repeats 202 by default");
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    // The first answer was 200 (`Prefer: wait` saw the job finish): its
    // replays say 200 too, and so does the pre-insert check.
    store
        .record_idempotent_status("acme", "key-1", 200)
        .await
        .unwrap();
    match store
        .insert_job_idempotent(job_of("acme"), "key-1", "digest")
        .await
        .unwrap()
    {
        IdempotentInsert::Replayed { status, .. } => assert_eq!(status, 200),
        other => panic!("expected a replay, got {other:?}"),
    }
    match store
        .check_create("acme", None, Some(("key-1", "digest")))
        .await
        .unwrap()
    {
        CreateCheck::Answered(answer) => match *answer {
            IdempotentInsert::Replayed { status, .. } => assert_eq!(status, 200),
            other => panic!("expected a replay, got {other:?}"),
        },
        other => panic!("expected a replay, got {other:?}"),
    }
    assert!(matches!(
        store
            .insert_job_idempotent(job_of("globex"), "key-1", "digest")
            .await
            .unwrap(),
        IdempotentInsert::KeyReused
    ));
}

async fn api_keys_are_stored_hashed_and_revocable(store: Arc<dyn Store>) {
    let new = |tenant: &str, hash: &str| NewApiKey {
        id: Uuid::now_v7(),
        tenant: tenant.into(),
        label: Some("ci".into()),
        key_hash: hash.into(),
        prefix: "et_abcd".into(),
    };
    let a = store.insert_api_key(new("acme", "h1")).await.unwrap();
    let b = store.insert_api_key(new("globex", "h2")).await.unwrap();
    assert_eq!(a.tenant, "acme");
    assert_eq!(a.label.as_deref(), Some("ci"));
    assert_eq!(a.revoked_at, None);
    // A hash names one key.
    assert!(store.insert_api_key(new("acme", "h1")).await.is_err());
    let found: Option<ApiKeyRow> = store.find_api_key("h2").await.unwrap();
    assert_eq!(found.map(|k| k.id), Some(b.id));
    assert_eq!(store.find_api_key("nope").await.unwrap(), None);
    assert!(store.revoke_api_key(a.id).await.unwrap());
    assert!(!store.revoke_api_key(a.id).await.unwrap());
    assert!(!store.revoke_api_key(Uuid::now_v7()).await.unwrap());
    assert_eq!(store.find_api_key("h1").await.unwrap(), None);
    let all = store.list_api_keys().await.unwrap();
    assert_eq!(all.iter().map(|k| k.id).collect::<Vec<_>>(), [a.id, b.id]);
    assert!(all[0].revoked_at.is_some());
}

async fn deliveries_carry_their_tenants_secret(store: Arc<dyn Store>) {
    let with_hook = |tenant: &str| NewJob {
        webhook: Some(json!({"url": "https://example.com/hook", "events": ["job.queued"]})),
        ..job_of(tenant)
    };
    assert_eq!(store.tenant_webhook_secret("acme").await.unwrap(), None);
    store
        .set_tenant_webhook_secret("acme", "whsec_one")
        .await
        .unwrap();
    store
        .set_tenant_webhook_secret("acme", "whsec_two")
        .await
        .unwrap();
    assert_eq!(
        store
            .tenant_webhook_secret("acme")
            .await
            .unwrap()
            .as_deref(),
        Some("whsec_two")
    );
    let a = store.insert_job(with_hook("acme")).await.unwrap();
    let b = store.insert_job(with_hook("globex")).await.unwrap();
    let due = store
        .claim_deliveries(10, Duration::from_secs(30))
        .await
        .unwrap();
    let secret_of: HashMap<Uuid, Option<String>> = due
        .iter()
        .map(|d| (d.delivery.job_id, d.tenant_secret.clone()))
        .collect();
    assert_eq!(secret_of[&a.id].as_deref(), Some("whsec_two"));
    assert_eq!(secret_of[&b.id], None);
}

async fn queue_stats_count_queued_and_running_and_age_the_oldest_due(store: Arc<dyn Store>) {
    assert_eq!(store.queue_stats().await.unwrap(), QueueStats::default());
    let first = insert(&store, 0, 3).await.id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    insert(&store, 0, 3).await;
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats.queued, stats.running), (2, 0));
    assert!(
        stats.oldest_due_age >= Duration::from_millis(250) && stats.oldest_due_age < LEASE,
        "{stats:?}"
    );
    let lease = claim_one(&store, "w", LEASE, first).await;
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats.queued, stats.running), (1, 1));
    assert!(
        stats.oldest_due_age < Duration::from_millis(250),
        "{stats:?}"
    );
    // Finished jobs are not in the queue.
    store.fail(&lease, "x", "y").await.unwrap();
    assert_eq!(store.queue_stats().await.unwrap().running, 0);
}

async fn traceparent_is_stored_with_the_job(store: Arc<dyn Store>) {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut traced = new_job(0, 3);
    traced.traceparent = Some(traceparent.into());
    let row = store.insert_job(traced).await.unwrap();
    assert_eq!(row.traceparent.as_deref(), Some(traceparent));
    assert_eq!(
        job(&store, row.id).await.traceparent.as_deref(),
        Some(traceparent)
    );
    assert_eq!(insert(&store, 0, 3).await.traceparent, None);
}

// ---- provider text and error classes -------------------------------------------

/// NUL, ESC and RIGHT-TO-LEFT OVERRIDE: Postgres refuses the first, and
/// none of them may reach a reader.
const DIRTY: &str = "a\u{0}b\u{1b}[31mc\u{202e}d";
const CLEANED: &str = "ab[31mcd";

async fn provider_text_is_cleaned_before_it_is_stored(store: Arc<dyn Store>) {
    use editthinker_core::text::{MAX_PROVIDER_MESSAGE_CHARS, TRUNCATION_MARK};

    let id = insert(&store, 0, 3).await.id;
    let lease = claim_one(&store, "w", LEASE, id).await;
    store
        .record_turn(
            &lease,
            NewTurn {
                index: 1,
                instruction: format!("instruction {DIRTY}"),
                image_key: format!("jobs/{id}/turns/1.png"),
                image_mime: "image/png".into(),
                editor_ms: 10,
                provider_request_id: None,
            },
        )
        .await
        .expect("a turn whose instruction holds NUL is recorded");
    let critique = json!({"reasoning": DIRTY, format!("k{DIRTY}"): [DIRTY, 1]});
    store
        .record_critique(&lease, 1, &critique, 5, DIRTY, Some(DIRTY))
        .await
        .expect("a critique holding NUL is recorded");
    let turns = store.list_turns(id).await.unwrap();
    assert_eq!(turns[0].instruction, format!("instruction {CLEANED}"));
    let cleaned = json!({"reasoning": CLEANED, format!("k{CLEANED}"): [CLEANED, 1]});
    assert_eq!(turns[0].critique, Some(cleaned.clone()));
    assert_eq!(turns[0].raw_output.as_deref(), Some(CLEANED));
    assert_eq!(turns[0].parse_error.as_deref(), Some(CLEANED));
    let ev = events(&store, id).await;
    let edited = ev
        .iter()
        .find(|e| e.kind == event_type::TURN_EDITED)
        .unwrap();
    assert_eq!(edited.data["instruction"], format!("instruction {CLEANED}"));
    let critiqued = ev
        .iter()
        .find(|e| e.kind == event_type::TURN_CRITIQUED)
        .unwrap();
    assert_eq!(critiqued.data["critique"], cleaned);

    // An editor's 100 KB error page is kept capped, in the row and the event.
    let page = format!("{DIRTY}{}", "e".repeat(100 * 1024));
    let status = store
        .retry_later(&lease, "editor_error", &page, Duration::ZERO)
        .await
        .expect("retry_later");
    assert_eq!(status, JobStatus::Queued);
    let row = job(&store, id).await;
    let message = row.error_message.expect("error kept");
    assert_eq!(message.chars().count(), MAX_PROVIDER_MESSAGE_CHARS);
    assert!(message.starts_with(CLEANED), "{}", &message[..20]);
    assert!(message.ends_with(TRUNCATION_MARK));

    let lease = claim_one(&store, "w", LEASE, id).await;
    store
        .fail(&lease, "editor_error", &format!("failed: {DIRTY}"))
        .await
        .expect("fail with NUL in its message");
    let row = job(&store, id).await;
    assert_eq!(
        row.error_message.as_deref(),
        Some(&*format!("failed: {CLEANED}"))
    );
    let ev = events(&store, id).await;
    let failed = ev.last().unwrap();
    assert_eq!(failed.kind, event_type::JOB_FAILED);
    assert_eq!(failed.data["message"], format!("failed: {CLEANED}"));

    // A live event is cleaned too.
    let mut rx = store.subscribe();
    store
        .publish_live(id, event_type::TURN_THINKING, json!({"delta": DIRTY}))
        .await
        .expect("publish_live with NUL");
    let data = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Notice::Live { data, .. } = rx.recv().await.expect("notice channel open") {
                return data;
            }
        }
    })
    .await
    .expect("a live notice within 10 s");
    assert_eq!(data, json!({"delta": CLEANED}));
}

/// A write the database refuses for its data (here a duplicate key) is a
/// permanent error, the same class on both backends.
async fn refused_data_is_a_permanent_error(store: Arc<dyn Store>) {
    let job = new_job(0, 3);
    store.insert_job(job.clone()).await.unwrap();
    let err = store.insert_job(job).await.expect_err("duplicate id");
    assert!(matches!(err, StoreError::Data(_)), "{err:?}");
    assert!(!err.is_transient());
}

mod error_classes {
    use editthinker_store::{Store, StoreError};
    use uuid::Uuid;

    use crate::harness;

    fn assert_data(e: sqlx::Error) {
        let e = StoreError::from(e);
        assert!(matches!(e, StoreError::Data(_)), "{e:?}");
        assert!(!e.is_transient());
    }

    /// A NUL in a text column and `\u0000` in a jsonb one (the thinker
    /// answer that was retried for ever) are refused data, not an outage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_refused_text_is_data_and_a_closed_pool_is_transient() {
        let db = harness::pg().await;
        let pool = db.store.pool().clone();
        let e = sqlx::query("UPDATE jobs SET instruction = $1 WHERE id = $2")
            .bind("a\u{0}b")
            .bind(Uuid::now_v7())
            .execute(&pool)
            .await
            .expect_err("NUL in text");
        assert_data(e);
        let e = sqlx::query("SELECT $1::text::jsonb")
            .bind(r#"{"reasoning": "a\u0000b"}"#)
            .execute(&pool)
            .await
            .expect_err("\\u0000 in jsonb");
        assert_data(e);
        let e = sqlx::query("SELECT repeat('x', 3)::varchar(2)::int")
            .execute(&pool)
            .await
            .expect_err("not a number");
        assert_data(e);
        // A statement the database does not know is neither.
        let e = StoreError::from(
            sqlx::query("SELECT * FROM no_such_table")
                .execute(&pool)
                .await
                .expect_err("no table"),
        );
        assert!(matches!(e, StoreError::Database(_)), "{e:?}");
        assert!(!e.is_transient());

        pool.close().await;
        let e = db
            .store
            .get_job(Uuid::now_v7())
            .await
            .expect_err("pool closed");
        assert!(e.is_transient(), "{e:?}");
        db.cleanup().await;
    }

    /// A terminated connection (admin shutdown) is transient.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_terminated_connection_is_transient() {
        let db = harness::pg().await;
        let mut conn = db.store.pool().acquire().await.unwrap();
        let e = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
            .execute(&mut *conn)
            .await
            .expect_err("own backend terminated");
        let e = StoreError::from(e);
        assert!(e.is_transient(), "{e:?}");
        drop(conn);
        db.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_refused_data_is_data_and_a_closed_pool_is_transient() {
        let (store, _dir) = harness::sqlite().await;
        let pool = store.pool().clone();
        let e = sqlx::query("INSERT INTO jobs (id) VALUES (NULL)")
            .execute(&pool)
            .await
            .expect_err("NOT NULL");
        assert_data(e);
        pool.close().await;
        let e = store
            .get_job(Uuid::now_v7())
            .await
            .expect_err("pool closed");
        assert!(e.is_transient(), "{e:?}");
    }
}

// ---- fair share between tenants ------------------------------------------------

/// The worker concurrency the fairness bound is stated for.
const CONCURRENCY: usize = 4;

/// Queues `n` jobs for `tenant`; returns their ids in queue order.
async fn queue_jobs(store: &Arc<dyn Store>, tenant: &str, priority: i32, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let job = NewJob {
            priority,
            ..job_of(tenant)
        };
        ids.push(store.insert_job(job).await.expect("insert_job").id);
    }
    ids
}

/// Claims one job at a time until `id` is claimed; returns how many claims
/// that took (giving up after `max`).
async fn claims_until(store: &Arc<dyn Store>, id: Uuid, fairness: Fairness, max: usize) -> usize {
    for n in 1..=max {
        let claimed = store.claim("w", 1, LEASE, fairness).await.expect("claim");
        assert_eq!(claimed.len(), 1, "claim {n} takes one job");
        if claimed[0].job.id == id {
            return n;
        }
    }
    panic!("{id} not claimed within {max} claims");
}

/// Finding 12: tenant A's 200 queued jobs must not push B's new one back
/// more than a bounded number of claims.
async fn a_deep_queue_does_not_delay_another_tenant(store: Arc<dyn Store>) {
    queue_jobs(&store, "tenant-a", 0, 200).await;
    let b = queue_jobs(&store, "tenant-b", 0, 1).await[0];
    let ahead = store.jobs_ahead(b).await.unwrap().expect("queued");
    assert!(
        ahead < (CONCURRENCY * 2) as u64,
        "queue position {}",
        ahead + 1
    );
    let n = claims_until(&store, b, Fairness::Tenant, 201).await;
    assert!(n <= CONCURRENCY * 2, "B's job took {n} claims");
    assert_eq!(n as u64, ahead + 1, "queue position matches the claim");
}

/// With fairness off the claim order is plain age: B's job comes last.
async fn without_fairness_claims_are_oldest_first(store: Arc<dyn Store>) {
    queue_jobs(&store, "tenant-a", 0, 200).await;
    let b = queue_jobs(&store, "tenant-b", 0, 1).await[0];
    assert_eq!(claims_until(&store, b, Fairness::None, 201).await, 201);
}

/// Priority still comes first, tenants take turns within it, each tenant's
/// own jobs keep their order, and `jobs_ahead` predicts every claim.
async fn tenant_fair_order_matches_queue_position(store: Arc<dyn Store>) {
    let a = queue_jobs(&store, "tenant-a", 0, 3).await;
    let b = queue_jobs(&store, "tenant-b", 0, 2).await;
    let urgent = queue_jobs(&store, "tenant-a", 5, 1).await;
    let c = queue_jobs(&store, "tenant-c", 0, 1).await;
    let expected = [urgent[0], a[0], b[0], c[0], a[1], b[1], a[2]];
    let tenant_of = |id: &Uuid| {
        if a.contains(id) || urgent.contains(id) {
            "tenant-a"
        } else if b.contains(id) {
            "tenant-b"
        } else {
            "tenant-c"
        }
    };
    for (i, id) in expected.iter().enumerate() {
        assert_eq!(
            store.jobs_ahead(*id).await.unwrap(),
            Some(i as u64),
            "jobs ahead of claim {i}"
        );
        // The job read computes the same position in its one query, and
        // only when asked.
        let read = |position| store.job_with_turns(*id, tenant_of(id), position);
        let with = read(true).await.unwrap().expect("the job");
        assert_eq!(
            with.jobs_ahead,
            Some(i as u64),
            "read position of claim {i}"
        );
        assert!(with.turns.is_empty());
        assert_eq!(read(false).await.unwrap().unwrap().jobs_ahead, None);
    }
    // The whole-queue ranking agrees, and its limit keeps the front.
    let ranked = store.queue_positions(100).await.unwrap();
    let predicted: Vec<(Uuid, u64)> = expected
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i as u64))
        .collect();
    assert_eq!(ranked, predicted);
    assert_eq!(store.queue_positions(2).await.unwrap(), predicted[..2]);
    let mut order = Vec::new();
    while let Some(c) = store
        .claim("w", 1, LEASE, Fairness::Tenant)
        .await
        .unwrap()
        .pop()
    {
        order.push(c.job.id);
    }
    assert_eq!(order, expected);
    // Running jobs count: B (2 running) goes before A (3 running), though
    // A queued first.
    let again = queue_jobs(&store, "tenant-a", 0, 2).await;
    let other = queue_jobs(&store, "tenant-b", 0, 1).await;
    let ranked = store.queue_positions(100).await.unwrap();
    for (id, ahead) in &ranked {
        assert_eq!(store.jobs_ahead(*id).await.unwrap(), Some(*ahead));
    }
    let ranked: Vec<Uuid> = ranked.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ranked, [other[0], again[0], again[1]]);
    let batch: Vec<Uuid> = store
        .claim("w", 10, LEASE, Fairness::Tenant)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.job.id)
        .collect();
    assert_eq!(batch, [other[0], again[0], again[1]]);
}

/// `get_job_for_tenant`: the owner gets the row, another tenant gets what
/// a missing id gets.
async fn a_job_is_fetched_only_for_its_tenant(store: Arc<dyn Store>) {
    let id = store.insert_job(job_of("owner")).await.unwrap().id;
    let row = store
        .get_job_for_tenant(id, "owner")
        .await
        .unwrap()
        .expect("the owner sees its job");
    assert_eq!(row, job(&store, id).await);
    assert_eq!(store.get_job_for_tenant(id, "other").await.unwrap(), None);
    assert_eq!(store.get_job_for_tenant(id, "").await.unwrap(), None);
    let read = store.job_with_turns(id, "owner", true).await.unwrap();
    assert_eq!(read.map(|r| (r.job, r.jobs_ahead)), Some((row, Some(0))));
    assert_eq!(store.job_with_turns(id, "other", true).await.unwrap(), None);
    assert_eq!(
        store
            .job_with_turns(Uuid::now_v7(), "owner", true)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_job_for_tenant(Uuid::now_v7(), "owner")
            .await
            .unwrap(),
        None
    );
}

/// A terminal event's data without its `usage`, which must be that of a
/// job without paid calls.
fn settled(data: &serde_json::Value) -> serde_json::Value {
    let zero = serde_json::to_value(editthinker_core::Usage::zero(DEFAULT_CURRENCY)).unwrap();
    assert_eq!(data["usage"], zero, "{data}");
    let mut data = data.clone();
    data.as_object_mut().unwrap().remove("usage");
    data
}

fn paid(kind: CallKind, turn: u32, seconds: f64, tokens: (u64, u64), cost: f64) -> NewCall {
    NewCall {
        entry: LedgerEntry {
            call: ProviderCall {
                kind,
                turn,
                seconds,
                tokens: Tokens {
                    input: tokens.0,
                    output: tokens.1,
                },
            },
            cost,
        },
        currency: "EUR".into(),
    }
}

/// The usage ledger (issue 24): every call is kept, also one recorded after
/// its attempt lost the lease; a job's terminal event carries its sums; a
/// tenant's usage is summed by editor over a period and never shows another
/// tenant's calls.
async fn the_usage_ledger_keeps_every_paid_call(store: Arc<dyn Store>) {
    let started = Utc::now() - chrono::Duration::seconds(1);
    let id = insert(&store, 0, 3).await.id;
    let empty = store.job_calls(id).await.unwrap();
    assert!(empty.entries.is_empty());
    assert_eq!(empty.currency, DEFAULT_CURRENCY);

    let first = claim_one(&store, "w1", LEASE, id).await;
    store
        .record_call(id, &paid(CallKind::Editor, 1, 1.5, (0, 0), 0.04))
        .await
        .unwrap();
    store
        .record_call(id, &paid(CallKind::Thinker, 1, 2.0, (1000, 200), 0.0036))
        .await
        .unwrap();
    // The attempt is given back; its calls stay paid, and a call its
    // worker records late (the lease already gone) still counts.
    store.release(&first).await.unwrap();
    store
        .record_call(id, &paid(CallKind::Thinker, 1, 1.0, (1000, 100), 0.0028))
        .await
        .unwrap();
    let second = claim_one(&store, "w2", LEASE, id).await;
    store
        .record_call(id, &paid(CallKind::Editor, 2, 0.5, (0, 0), 0.04))
        .await
        .unwrap();
    store
        .complete(&second, 1, None, StopReason::MaxTurns)
        .await
        .unwrap();

    let ledger = store.job_calls(id).await.unwrap();
    assert_eq!(ledger.entries.len(), 4);
    assert_eq!(ledger.currency, "EUR");
    assert_eq!(ledger.entries[2].call.tokens.output, 100);
    let (total, turns) = ledger.summarize();
    assert_eq!((total.editor_calls, total.thinker_calls), (2, 2));
    assert_eq!(total.editor_seconds, 2.0);
    assert_eq!(
        (total.thinker_input_tokens, total.thinker_output_tokens),
        (2000, 300)
    );
    assert_eq!(total.cost, 0.0864);
    assert_eq!(turns[&2].editor_calls, 1);

    // The terminal event carries the same sums.
    let done = events(&store, id).await.pop().unwrap();
    assert_eq!(done.kind, event_type::JOB_SUCCEEDED);
    assert_eq!(done.data["usage"], serde_json::to_value(&total).unwrap());

    // Another tenant's job, and a job canceled while queued (no calls).
    let other = store
        .insert_job(NewJob {
            tenant: "acme".into(),
            editor: "openai".into(),
            ..new_job(0, 3)
        })
        .await
        .unwrap()
        .id;
    store
        .record_call(other, &paid(CallKind::Editor, 1, 3.0, (0, 0), 0.25))
        .await
        .unwrap();
    let queued = insert(&store, 0, 3).await.id;
    store.request_cancel(queued).await.unwrap();
    let canceled = events(&store, queued).await.pop().unwrap();
    assert_eq!(canceled.kind, event_type::JOB_CANCELED);
    assert_eq!(canceled.data["usage"]["editor_calls"], 0);
    // No calls of its own: the currency of the latest call recorded.
    assert_eq!(canceled.data["usage"]["currency"], "EUR");

    let until = Utc::now() + chrono::Duration::seconds(1);
    let mine = store.tenant_usage(T, started, until).await.unwrap();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].editor, "kontext");
    assert_eq!(mine[0].usage, total);
    let theirs = store.tenant_usage("acme", started, until).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(
        (theirs[0].editor.as_str(), theirs[0].usage.cost),
        ("openai", 0.25)
    );
    // Outside the period: nothing.
    let before = store
        .tenant_usage(T, started - chrono::Duration::hours(1), started)
        .await
        .unwrap();
    assert!(before.is_empty());
    // A call for a job that no longer exists records nothing.
    store
        .record_call(Uuid::now_v7(), &paid(CallKind::Editor, 1, 1.0, (0, 0), 1.0))
        .await
        .unwrap();
    assert_eq!(
        store.tenant_usage(T, started, until).await.unwrap()[0].usage,
        total
    );
}
