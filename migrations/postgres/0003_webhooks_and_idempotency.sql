-- Webhooks and idempotent create (issue 9).
--
-- jobs.webhook: where and which events to deliver ({"url", "events": [...]}),
--   NULL for a job without a webhook.
-- webhook_deliveries: the outbox. A row is written in the transaction that
--   stores the event it announces, so a delivery exists exactly when its
--   event does; the delivery loop claims due rows with a short lock
--   (locked_until) and records each attempt's outcome. Its id is the
--   Standard Webhooks `webhook-id`, stable across retries.
-- idempotency_keys: an `Idempotency-Key` and a digest of the request it
--   created `job_id` for.
ALTER TABLE jobs ADD COLUMN webhook jsonb;

CREATE TABLE webhook_deliveries (
    id               uuid        PRIMARY KEY,
    job_id           uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event_id         bigint      NOT NULL,
    type             text        NOT NULL,
    url              text        NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text,
    next_attempt_at  timestamptz,
    locked_until     timestamptz,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL
);

-- The delivery loop looks for pending rows by due time.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_job_idx ON webhook_deliveries (job_id, event_id);

CREATE TABLE idempotency_keys (
    key            text        PRIMARY KEY,
    request_digest text        NOT NULL,
    -- Checked at commit: the key is claimed first (serializing concurrent
    -- creates with one key), then the job is inserted.
    job_id         uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE
        DEFERRABLE INITIALLY DEFERRED,
    created_at     timestamptz NOT NULL
);
