-- Why a succeeded job stopped (issue 9): satisfied, max_turns, refusal,
-- invalid_refinement or deadline. Failed and canceled jobs leave it NULL:
-- their reason follows from the status (crates/store/src/model.rs,
-- `stop_reason`).
ALTER TABLE jobs ADD COLUMN stop_reason text;
