-- Claim up to limit due connections for a fleet run. Due: live, not waiting for a person, its lease
-- free, run out or held by a dead process of this host, and never run or last run longer ago than the
-- interval (after a temporary failure, than its backoff: 5 min, 10, 20 ... up to the interval). The
-- UPDATE checks the conditions again: a row another process changed after the snapshot is judged afresh.
WITH due AS (
    SELECT name, lease_holder AS was_held_by FROM aweber_job.connections
    WHERE revoked_at IS NULL AND NOT waiting_for_person AND tokens IS NOT NULL
      AND (lease_holder IS NULL OR lease_until IS NULL OR lease_until <= now() OR lease_holder = ANY(%(dead)s))
      AND (last_run_at IS NULL OR last_run_at <= now() - make_interval(secs => CASE
           WHEN last_exit_code = 75
           THEN LEAST(%(interval)s, %(backoff)s * power(2, LEAST(GREATEST(temporary_failures - 1, 0), 16)))
           ELSE %(interval)s END))
      AND name <> ALL(%(skip)s)
    ORDER BY last_run_at NULLS FIRST, name
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE aweber_job.connections AS c
SET fence = c.fence + 1, lease_holder = %(holder)s, lease_until = now() + make_interval(secs => %(lease)s),
    updated_at = now()
FROM due WHERE c.name = due.name
  AND revoked_at IS NULL AND NOT waiting_for_person AND tokens IS NOT NULL
  AND (lease_holder IS NULL OR lease_until IS NULL OR lease_until <= now() OR lease_holder = ANY(%(dead)s))
  AND (last_run_at IS NULL OR last_run_at <= now() - make_interval(secs => CASE
       WHEN last_exit_code = 75
       THEN LEAST(%(interval)s, %(backoff)s * power(2, LEAST(GREATEST(temporary_failures - 1, 0), 16)))
       ELSE %(interval)s END))
RETURNING c.name, c.fence, c.tokens, c.encrypted, c.refreshing_from, c.refreshing_by,
          extract(epoch FROM c.refreshing_at)::float8, due.was_held_by
