-- Crash-safe asynchronous edits and visible refusals (issue 4).
--
-- jobs.pending_edit: the provider request of the edit in flight
--   ({"turn", "instruction", "request": {"id", "data"}}), written before
--   the worker waits for it and cleared when the turn is recorded, so a
--   resumed job polls the same request instead of paying for a new one.
-- jobs.refusal: the editor refused a refined instruction, which ended the
--   loop ({"turn", "instruction", "reason"}).
-- turns.provider_request_id: the provider's id for the turn's edit.
ALTER TABLE jobs ADD COLUMN pending_edit jsonb;
ALTER TABLE jobs ADD COLUMN refusal jsonb;
ALTER TABLE turns ADD COLUMN provider_request_id text;
