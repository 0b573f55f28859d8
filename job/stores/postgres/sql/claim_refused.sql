-- Why a claim took nothing: who holds the lease and until when, and whether the connection was revoked.
SELECT lease_holder, extract(epoch FROM lease_until)::float8, lease_until > now(),
       extract(epoch FROM revoked_at)::float8
FROM aweber_job.connections WHERE name = %(name)s
