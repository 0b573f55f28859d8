-- Whether a connection was revoked (no row: it is not in the store).
SELECT revoked_at IS NOT NULL FROM aweber_job.connections WHERE name = %(name)s
