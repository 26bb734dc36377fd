-- The status the request that made a key's job was answered with (202, or
-- 200 when `Prefer: wait` saw the job finish): replays answer the same.
ALTER TABLE idempotency_keys ADD COLUMN response_status integer NOT NULL DEFAULT 202;
