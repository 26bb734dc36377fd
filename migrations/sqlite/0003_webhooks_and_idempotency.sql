-- Webhooks and idempotent create (issue 9); see the Postgres migration of
-- the same name for the meaning of each table and column.
ALTER TABLE jobs ADD COLUMN webhook TEXT;

CREATE TABLE webhook_deliveries (
    id               TEXT    PRIMARY KEY NOT NULL,
    job_id           TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event_id         INTEGER NOT NULL,
    type             TEXT    NOT NULL,
    url              TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_status_code INTEGER,
    last_error       TEXT,
    next_attempt_at  INTEGER,
    locked_until     INTEGER,
    delivered_at     INTEGER,
    created_at       INTEGER NOT NULL
);

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_job_idx ON webhook_deliveries (job_id, event_id);

CREATE TABLE idempotency_keys (
    key            TEXT    PRIMARY KEY NOT NULL,
    request_digest TEXT    NOT NULL,
    job_id         TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at     INTEGER NOT NULL
);
