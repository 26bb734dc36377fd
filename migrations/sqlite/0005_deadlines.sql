-- See the Postgres migration of the same name.
ALTER TABLE jobs ADD COLUMN deadline_at INTEGER;
CREATE INDEX jobs_deadline_idx ON jobs (deadline_at)
    WHERE status = 'queued' AND deadline_at IS NOT NULL;
