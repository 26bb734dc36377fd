-- See the Postgres migration of the same name.
CREATE INDEX jobs_fair_claim_idx ON jobs (priority, tenant, run_at, id) WHERE status = 'queued';
