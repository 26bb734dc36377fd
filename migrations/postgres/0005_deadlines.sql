-- Job deadlines (issue 9): creation time + options.deadline_seconds, NULL
-- without one. The sweep looks for queued jobs past theirs.
ALTER TABLE jobs ADD COLUMN deadline_at timestamptz;
CREATE INDEX jobs_deadline_idx ON jobs (deadline_at)
    WHERE status = 'queued' AND deadline_at IS NOT NULL;
