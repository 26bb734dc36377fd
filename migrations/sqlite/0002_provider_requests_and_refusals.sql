-- Crash-safe asynchronous edits and visible refusals (issue 4); see the
-- Postgres migration of the same name for the meaning of each column.
-- JSON columns are TEXT.
ALTER TABLE jobs ADD COLUMN pending_edit TEXT;
ALTER TABLE jobs ADD COLUMN refusal TEXT;
ALTER TABLE turns ADD COLUMN provider_request_id TEXT;
