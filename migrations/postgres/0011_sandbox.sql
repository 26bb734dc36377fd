-- Whether the job runs on a sandbox (test-mode) editor or thinker: fixed at
-- creation, shown as the job's `sandbox` field (docs/api.md).
ALTER TABLE jobs ADD COLUMN sandbox boolean NOT NULL DEFAULT false;
