-- Renew the lease (fenced): matches no row once another run has taken the connection over.
UPDATE aweber_job.connections SET lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
WHERE name = %(name)s AND fence = %(fence)s AND lease_holder = %(holder)s
