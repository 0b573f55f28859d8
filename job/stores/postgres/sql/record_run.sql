-- What a finished run records: when, how it ended, when it is due again (a temporary failure, 75,
-- sooner and backing off; 77 and 78 wait for a person).
UPDATE aweber_job.connections SET last_run_at = now(), last_exit_code = %(code)s,
    waiting_for_person = %(code)s IN (77, 78),
    temporary_failures = CASE WHEN %(code)s = 75 THEN temporary_failures + 1 ELSE 0 END,
    next_run_at = now() + make_interval(secs => CASE
        WHEN %(code)s = 75
        THEN LEAST(%(interval)s, %(backoff)s * power(2, LEAST(GREATEST(temporary_failures + 1 - 1, 0), 16)))
        ELSE %(interval)s END)
WHERE name = %(name)s
