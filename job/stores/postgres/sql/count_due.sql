-- How many connections are due now: the conditions of claim_due.sql.
SELECT count(*) FROM aweber_job.connections
WHERE revoked_at IS NULL AND NOT waiting_for_person AND tokens IS NOT NULL
  AND (lease_holder IS NULL OR lease_until IS NULL OR lease_until <= now() OR lease_holder = ANY(%(dead)s))
  AND (last_run_at IS NULL OR last_run_at <= now() - make_interval(secs => CASE
       WHEN last_exit_code = 75
       THEN LEAST(%(interval)s, %(backoff)s * power(2, LEAST(GREATEST(temporary_failures - 1, 0), 16)))
       ELSE %(interval)s END))
