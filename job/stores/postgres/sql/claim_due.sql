-- Claim up to limit connections that a fleet run which began at since finds due by their last run:
-- never run, or last run at least the interval before the run began. Live, not waiting for a person, its
-- lease free, run out or held by a dead process of this host (dead), and not claimed since the run began.
-- One range scan of connections_due_by_last_run, in its order: a connection this run (or any other since
-- it began) finished has a later last run and lies outside the range, so no list of done names is needed.
-- FOR UPDATE SKIP LOCKED re-reads a row another process changed after the snapshot and judges it afresh.
WITH due AS (
    SELECT name, lease_holder AS was_held_by FROM aweber_job.connections
    WHERE revoked_at IS NULL AND NOT waiting_for_person AND tokens IS NOT NULL
      AND coalesce(last_run_at, '-infinity'::timestamptz) <= to_timestamp(%(since)s::float8 - %(interval)s::float8)
      AND (claimed_at IS NULL OR claimed_at < to_timestamp(%(since)s::float8))
      AND (lease_holder IS NULL OR lease_until IS NULL OR lease_until <= now() OR lease_holder = ANY(%(dead)s))
    ORDER BY coalesce(last_run_at, '-infinity'::timestamptz)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE aweber_job.connections AS c
SET fence = c.fence + 1, lease_holder = %(holder)s, lease_until = now() + make_interval(secs => %(lease)s),
    claimed_at = now(), updated_at = now()
FROM due WHERE c.name = due.name
RETURNING c.name, c.fence, c.tokens, c.encrypted, c.refreshing_from, c.refreshing_by,
          extract(epoch FROM c.refreshing_at)::float8, c.task_state, due.was_held_by
