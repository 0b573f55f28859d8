-- Every connection as connections list shows it (ConnectionInfo): nothing secret.
SELECT name, account_id, extract(epoch FROM access_expires_at)::float8,
       extract(epoch FROM last_run_at)::float8, last_exit_code, extract(epoch FROM next_run_at)::float8,
       CASE WHEN lease_until > now() THEN lease_holder END, encrypted, revoked_at IS NOT NULL, waiting_for_person
FROM aweber_job.connections ORDER BY name
