//! Retention through the real binary (issue 9): a finished job whose
//! `finished_at` is moved two days back (the test's clock) is deleted with
//! its rows and blobs by the `serve` process's sweep; a recent one stays;
//! an orphaned blob folder older than the grace period goes, a fresh one
//! stays.

use std::time::Duration;

use crate::common::*;
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(30);

/// Moves a job's `finished_at` two days into the past.
async fn age_job(env: &TestEnv, id: &str) {
    match env.backend {
        Backend::Postgres => {
            let mut db = sqlx::PgConnection::connect(&env.database_url)
                .await
                .unwrap();
            sqlx::query(
                "UPDATE jobs SET finished_at = finished_at - interval '2 days' WHERE id = $1::uuid",
            )
            .bind(id)
            .execute(&mut db)
            .await
            .unwrap();
        }
        Backend::Sqlite => {
            let mut db = sqlx::SqliteConnection::connect(&env.database_url)
                .await
                .unwrap();
            // Times are microseconds since the epoch.
            sqlx::query("UPDATE jobs SET finished_at = finished_at - 172800000000 WHERE id = ?1")
                .bind(id)
                .execute(&mut db)
                .await
                .unwrap();
        }
    }
}

/// Rows of `table` that belong to job `id`.
async fn rows_of(env: &TestEnv, table: &str, id: &str) -> i64 {
    match env.backend {
        Backend::Postgres => {
            let mut db = sqlx::PgConnection::connect(&env.database_url)
                .await
                .unwrap();
            sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {table} WHERE job_id = $1::uuid"
            ))
            .bind(id)
            .fetch_one(&mut db)
            .await
            .unwrap()
        }
        Backend::Sqlite => {
            let mut db = sqlx::SqliteConnection::connect(&env.database_url)
                .await
                .unwrap();
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE job_id = ?1"))
                .bind(id)
                .fetch_one(&mut db)
                .await
                .unwrap()
        }
    }
}

async fn retention_deletes_old_jobs_and_orphaned_blobs(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    thinker.on("keep me", said(9, 9, "keep me"));
    let backends = backends_config(&thinker, &editor, env.dir.path());
    let config = env.config(
        "serve",
        &format!("[retention]\ndays = 1\nsweep_interval_seconds = 1\norphan_interval_seconds = 1\n{backends}"),
    );
    let service = Service::start("serve", &config);
    let body = || job_body(&png(16, 16, [1, 2, 3]), "keep me", json!({"max_turns": 1}));
    let old = create_job(&service, body()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let recent = create_job(&service, body()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for id in [&old, &recent] {
        let job = wait_for_job(&service, id, LIMIT, is_terminal).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        let finished =
            chrono::DateTime::parse_from_rfc3339(job["finished_at"].as_str().unwrap()).unwrap();
        let expires =
            chrono::DateTime::parse_from_rfc3339(job["expires_at"].as_str().unwrap()).unwrap();
        assert_eq!(expires - finished, chrono::Duration::days(1), "{job:#}");
    }
    let folders = env.dir.path().join("blobs").join("jobs");
    assert!(
        folders.join(&old).join("turns").is_dir(),
        "turn images stored"
    );
    assert!(rows_of(&env, "job_events", &old).await > 0);

    // Source blobs whose create never made a job: one from two hours ago,
    // one from now (its job row may still be on its way).
    let two_hours_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 7200;
    let orphan = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        two_hours_ago,
        0,
    ))
    .to_string();
    let fresh_orphan = Uuid::now_v7().to_string();
    for id in [&orphan, &fresh_orphan] {
        std::fs::create_dir_all(folders.join(id)).unwrap();
        std::fs::write(folders.join(id).join("source.png"), png(4, 4, [0, 0, 0])).unwrap();
    }

    // Two days pass for one of the jobs.
    age_job(&env, &old).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (status, _) = get_json(&service.url(&format!("/v1/jobs/{old}"))).await;
        if status == 404 && !folders.join(&orphan).exists() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweep did not delete the old job ({status}) and the orphan"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!folders.join(&old).exists(), "the old job's blobs are gone");
    for table in ["turns", "job_events"] {
        assert_eq!(rows_of(&env, table, &old).await, 0, "{table}");
    }
    let (status, job) = get_json(&service.url(&format!("/v1/jobs/{recent}"))).await;
    assert_eq!(status, 200, "{job:#}");
    assert!(folders.join(&recent).join("turns").is_dir());
    assert!(
        folders.join(&fresh_orphan).exists(),
        "within the grace period"
    );
}

crate::both_backends!(retention_deletes_old_jobs_and_orphaned_blobs);
