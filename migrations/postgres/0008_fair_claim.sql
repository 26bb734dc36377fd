-- The tenant-fair claim ranks each queued job among its tenant's queued
-- jobs of the same priority: this index gives that ranking in order, with
-- no sort (and jobs_ahead's ranking within one priority).
CREATE INDEX jobs_fair_claim_idx ON jobs (priority, tenant, run_at, id) WHERE status = 'queued';
