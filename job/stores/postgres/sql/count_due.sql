-- How many connections a fleet run which began at since finds due: the conditions of claim_due.sql and
-- claim_retry.sql together.
SELECT count(*) FROM aweber_job.connections
WHERE revoked_at IS NULL AND NOT waiting_for_person AND tokens IS NOT NULL
  AND (claimed_at IS NULL OR claimed_at < to_timestamp(%(since)s::float8))
  AND (lease_holder IS NULL OR lease_until IS NULL OR lease_until <= now() OR lease_holder = ANY(%(dead)s))
  AND (coalesce(last_run_at, '-infinity'::timestamptz) <= to_timestamp(%(since)s::float8 - %(interval)s::float8)
       OR (last_exit_code = 75 AND next_run_at <= to_timestamp(%(since)s::float8)))
