-- See the Postgres migration of the same name.
CREATE TABLE job_calls (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        TEXT    NOT NULL,
    tenant        TEXT    NOT NULL,
    editor        TEXT    NOT NULL,
    turn          INTEGER NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('editor', 'thinker', 'verifier')),
    seconds       REAL    NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost          REAL    NOT NULL,
    currency      TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE INDEX job_calls_job_idx ON job_calls (job_id);
CREATE INDEX job_calls_tenant_idx ON job_calls (tenant, created_at);
