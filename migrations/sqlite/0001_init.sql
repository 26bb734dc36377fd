-- Jobs, their turns, and the event log (DESIGN.md §5–§7).
-- Ids are hyphenated lowercase UUID text (sorts like UUIDv7 time order);
-- times are INTEGER microseconds since the Unix epoch (UTC), so they compare
-- and sort as numbers; JSON columns are TEXT.

CREATE TABLE jobs (
    id               TEXT    PRIMARY KEY NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    instruction      TEXT    NOT NULL,
    editor           TEXT    NOT NULL,
    options          TEXT    NOT NULL,
    metadata         TEXT    NOT NULL,
    source_key       TEXT    NOT NULL,
    source_mime      TEXT    NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    heartbeat_at     INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result_turn      INTEGER,
    error_code       TEXT,
    error_message    TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
);

CREATE INDEX jobs_claim_idx ON jobs (status, priority DESC, run_at, id);
CREATE INDEX jobs_lease_idx ON jobs (status, lease_expires_at);
CREATE INDEX jobs_status_id_idx ON jobs (status, id DESC);

CREATE TABLE turns (
    job_id      TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    instruction TEXT    NOT NULL,
    image_key   TEXT    NOT NULL,
    image_mime  TEXT    NOT NULL,
    editor_ms   INTEGER NOT NULL,
    critique    TEXT,
    thinker_ms  INTEGER,
    raw_output  TEXT,
    parse_error TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
);

CREATE TABLE job_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    type       TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE INDEX job_events_job_idx ON job_events (job_id, id);
