-- A run's end in one fenced statement: record it as record_run.sql does, with the one AWeber account the run
-- read when it knows it, and release the lease.
UPDATE aweber_job.connections SET last_run_at = now(), last_exit_code = %(code)s,
    waiting_for_person = %(code)s IN (77, 78),
    temporary_failures = CASE WHEN %(code)s = 75 THEN temporary_failures + 1 ELSE 0 END,
    next_run_at = now() + make_interval(secs => CASE
        WHEN %(code)s = 75
        THEN LEAST(%(interval)s, %(backoff)s * power(2, LEAST(GREATEST(temporary_failures + 1 - 1, 0), 16)))
        ELSE %(interval)s END),
    account_id = coalesce(%(account_id)s::bigint, account_id),
    lease_holder = NULL, lease_until = NULL, updated_at = now()
WHERE name = %(name)s AND fence = %(fence)s AND lease_holder = %(holder)s
