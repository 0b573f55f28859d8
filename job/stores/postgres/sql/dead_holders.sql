-- The holders of unexpired leases that name this host (prefix): the candidates for dead processes.
SELECT DISTINCT lease_holder FROM aweber_job.connections
WHERE lease_until > now() AND starts_with(lease_holder, %(prefix)s)
