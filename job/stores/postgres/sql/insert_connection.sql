-- A new connection with its sealed tokens; nothing when the name is taken.
INSERT INTO aweber_job.connections (name, tokens, encrypted, sealed_with, access_expires_at, account_id)
VALUES (%(name)s, %(tokens)s, %(encrypted)s, %(sealed_with)s, to_timestamp(%(expires_at)s::float8),
        %(account_id)s)
ON CONFLICT (name) DO NOTHING RETURNING name
