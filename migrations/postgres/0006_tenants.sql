-- Tenants, API keys and per-tenant limits (issue 10).
--
-- jobs.tenant: who owns the job (and so its events, images, deliveries).
--   Rows from before tenants belong to 'default', the tenant of auth mode
--   "none".
-- idempotency_keys: a key is unique per tenant, not globally.
-- tenants: tenants that have settings of their own (today: a webhook
--   secret overriding the server's). A tenant needs no row to own jobs
--   (gateway mode names tenants the database has never seen).
-- api_keys: bearer keys, stored as the SHA-256 of the key (keys are 256
--   random bits, so a fast hash is enough); `prefix` is the first
--   characters, to tell keys apart in listings.
ALTER TABLE jobs ADD COLUMN tenant text NOT NULL DEFAULT 'default';
CREATE INDEX jobs_tenant_idx ON jobs (tenant, id DESC);
-- The active-jobs limit counts these on every create.
CREATE INDEX jobs_tenant_active_idx ON jobs (tenant)
    WHERE status IN ('queued', 'running');

ALTER TABLE idempotency_keys ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (tenant, key);

CREATE TABLE tenants (
    name           text        PRIMARY KEY,
    webhook_secret text,
    created_at     timestamptz NOT NULL
);

CREATE TABLE api_keys (
    id         uuid        PRIMARY KEY,
    tenant     text        NOT NULL,
    label      text,
    key_hash   text        NOT NULL UNIQUE,
    prefix     text        NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
