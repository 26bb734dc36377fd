-- Candidates per turn (issue 24): a turn with several candidates records
-- each one here as soon as its provider request is accepted (a pending
-- row: `pending_request` set, no image), its edit finishes (`image_key`)
-- and its critique is made, so a resumed turn buys only the candidates it
-- lacks. The chosen one is then copied into `turns`, whose `chosen` names
-- it (NULL for one-candidate turns, which never use this table).
CREATE TABLE turn_candidates (
    job_id              uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    turn_idx            integer     NOT NULL,
    idx                 integer     NOT NULL,
    instruction         text        NOT NULL,
    seed                bigint,
    pending_request     jsonb,
    provider_request_id text,
    image_key           text,
    image_mime          text,
    editor_ms           bigint,
    critique            jsonb,
    thinker_ms          bigint,
    raw_output          text,
    parse_error         text,
    created_at          timestamptz NOT NULL,
    PRIMARY KEY (job_id, turn_idx, idx)
);
ALTER TABLE turns ADD COLUMN chosen integer;
