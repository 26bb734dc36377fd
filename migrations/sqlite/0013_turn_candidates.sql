-- Candidates per turn (issue 24); see the Postgres migration of the same
-- name for the meaning of each column. JSON columns are TEXT.
CREATE TABLE turn_candidates (
    job_id              TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    turn_idx            INTEGER NOT NULL,
    idx                 INTEGER NOT NULL,
    instruction         TEXT    NOT NULL,
    seed                INTEGER,
    pending_request     TEXT,
    provider_request_id TEXT,
    image_key           TEXT,
    image_mime          TEXT,
    editor_ms           INTEGER,
    critique            TEXT,
    thinker_ms          INTEGER,
    raw_output          TEXT,
    parse_error         TEXT,
    created_at          INTEGER NOT NULL,
    PRIMARY KEY (job_id, turn_idx, idx)
);
ALTER TABLE turns ADD COLUMN chosen INTEGER;
