-- One connection for status: its info (ConnectionInfo), its sealed tokens and its refresh marker.
SELECT name, account_id, extract(epoch FROM access_expires_at)::float8,
       extract(epoch FROM last_run_at)::float8, last_exit_code, extract(epoch FROM next_run_at)::float8,
       CASE WHEN lease_until > now() THEN lease_holder END, encrypted, revoked_at IS NOT NULL,
       tokens, refreshing_from, refreshing_by, extract(epoch FROM refreshing_at)::float8
FROM aweber_job.connections WHERE name = %(name)s
