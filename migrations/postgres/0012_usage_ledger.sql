-- The usage ledger (issue 24): one row per paid provider call, written as
-- soon as the call returns, before the step it belongs to is recorded, so
-- a call whose attempt was lost still counts. Rows outlive their job (a
-- paid call stays paid after retention deletes the job): no foreign key.
CREATE TABLE job_calls (
    id            bigserial        PRIMARY KEY,
    job_id        uuid             NOT NULL,
    tenant        text             NOT NULL,
    editor        text             NOT NULL,
    turn          integer          NOT NULL,
    kind          text             NOT NULL CHECK (kind IN ('editor', 'thinker', 'verifier')),
    seconds       double precision NOT NULL,
    input_tokens  bigint           NOT NULL,
    output_tokens bigint           NOT NULL,
    cost          double precision NOT NULL,
    currency      text             NOT NULL,
    created_at    timestamptz      NOT NULL
);
CREATE INDEX job_calls_job_idx ON job_calls (job_id);
CREATE INDEX job_calls_tenant_idx ON job_calls (tenant, created_at);
