-- Give the lease back (fenced).
UPDATE aweber_job.connections SET lease_holder = NULL, lease_until = NULL
WHERE name = %(name)s AND fence = %(fence)s AND lease_holder = %(holder)s
