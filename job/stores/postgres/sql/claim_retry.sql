-- Claim up to limit connections whose last run failed for a while (75) and whose backoff (next_run_at:
-- 5 min, 10, 20 … never later than the interval) ended before the fleet run began at since. The other
-- conditions are those of claim_due.sql; one range scan of connections_due_to_retry.
WITH due AS (
    SELECT name, lease_holder AS was_held_by FROM aweber_job.connections
    WHERE last_exit_code = 75 AND revoked_at IS NULL AND NOT waiting_for_person AND tokens IS NOT NULL
      AND next_run_at <= to_timestamp(%(since)s::float8)
      AND (claimed_at IS NULL OR claimed_at < to_timestamp(%(since)s::float8))
      AND (lease_holder IS NULL OR lease_until IS NULL OR lease_until <= now() OR lease_holder = ANY(%(dead)s))
    ORDER BY next_run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE aweber_job.connections AS c
SET fence = c.fence + 1, lease_holder = %(holder)s, lease_until = now() + make_interval(secs => %(lease)s),
    claimed_at = now(), updated_at = now()
FROM due WHERE c.name = due.name
RETURNING c.name, c.fence, c.tokens, c.encrypted, c.refreshing_from, c.refreshing_by,
          extract(epoch FROM c.refreshing_at)::float8, c.task_state, due.was_held_by
