-- Jobs, their turns, and the event log (DESIGN.md §5–§7).

CREATE TABLE jobs (
    id               uuid        PRIMARY KEY,
    status           text        NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    instruction      text        NOT NULL,
    editor           text        NOT NULL,
    options          jsonb       NOT NULL,
    metadata         jsonb       NOT NULL,
    source_key       text        NOT NULL,
    source_mime      text        NOT NULL,
    attempt          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    priority         integer     NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL,
    lease_owner      text,
    lease_expires_at timestamptz,
    heartbeat_at     timestamptz,
    cancel_requested boolean     NOT NULL DEFAULT false,
    result_turn      integer,
    error_code       text,
    error_message    text,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz
);

-- The claim scans queued, due jobs in (priority DESC, run_at, id) order; a
-- partial index keeps finished jobs out of it.
CREATE INDEX jobs_claim_idx ON jobs (priority DESC, run_at, id) WHERE status = 'queued';
-- Rescue looks for running jobs by lease expiry.
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE status = 'running';
-- Listing is newest first (id is a UUIDv7), optionally by status.
CREATE INDEX jobs_status_id_idx ON jobs (status, id DESC);

CREATE TABLE turns (
    job_id      uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx         integer     NOT NULL,
    instruction text        NOT NULL,
    image_key   text        NOT NULL,
    image_mime  text        NOT NULL,
    editor_ms   bigint      NOT NULL,
    critique    jsonb,
    thinker_ms  bigint,
    raw_output  text,
    parse_error text,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (job_id, idx)
);

CREATE TABLE job_events (
    id         bigserial   PRIMARY KEY,
    job_id     uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    type       text        NOT NULL,
    data       jsonb       NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE INDEX job_events_job_idx ON job_events (job_id, id);
