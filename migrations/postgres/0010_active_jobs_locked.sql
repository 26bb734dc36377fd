-- The tenant's active jobs (queued or running), counted after taking the
-- tenant's lock in the advisory-lock namespace `lock_space` (held to the
-- end of the transaction; the namespace is ACTIVE_LIMIT_LOCK in
-- crates/store/src/postgres.rs).
--
-- A create calls it inside its one INSERT statement: a VOLATILE function's
-- query takes its own snapshot, after the lock is granted, so the count
-- includes every job that a concurrent create for the same tenant
-- committed before releasing the lock. Without the function, the lock had
-- to be taken by a statement of its own, inside an explicit transaction:
-- four round trips (BEGIN, lock, insert, COMMIT) instead of one.
CREATE FUNCTION editthinker_active_jobs_locked(lock_space integer, tenant_id text)
    RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_space, hashtext(tenant_id));
    RETURN (SELECT count(*) FROM jobs
            WHERE tenant = tenant_id AND status IN ('queued', 'running'));
END
$$;
