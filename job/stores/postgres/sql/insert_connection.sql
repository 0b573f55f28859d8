-- A new connection with its sealed tokens (and, from an import, its task state); nothing when the name is taken.
INSERT INTO aweber_job.connections (name, tokens, encrypted, sealed_with, access_expires_at, account_id, task_state)
VALUES (%(name)s, %(tokens)s, %(encrypted)s, %(sealed_with)s, to_timestamp(%(expires_at)s::float8),
        %(account_id)s, coalesce(%(task_state)s::jsonb, '{}'::jsonb))
ON CONFLICT (name) DO NOTHING RETURNING name
