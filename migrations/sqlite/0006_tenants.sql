-- See the Postgres migration of the same name.
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE INDEX jobs_tenant_idx ON jobs (tenant, id DESC);
CREATE INDEX jobs_tenant_active_idx ON jobs (tenant)
    WHERE status IN ('queued', 'running');

-- SQLite cannot change a primary key: rebuild the table.
CREATE TABLE idempotency_keys_by_tenant (
    tenant         TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    request_digest TEXT    NOT NULL,
    job_id         TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
);
INSERT INTO idempotency_keys_by_tenant (tenant, key, request_digest, job_id, created_at)
    SELECT 'default', key, request_digest, job_id, created_at FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_by_tenant RENAME TO idempotency_keys;

CREATE TABLE tenants (
    name           TEXT    PRIMARY KEY NOT NULL,
    webhook_secret TEXT,
    created_at     INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT    PRIMARY KEY NOT NULL,
    tenant     TEXT    NOT NULL,
    label      TEXT,
    key_hash   TEXT    NOT NULL UNIQUE,
    prefix     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
