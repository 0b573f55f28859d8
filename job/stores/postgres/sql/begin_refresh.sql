-- The marker of a refresh about to spend the refresh token whose hash is spent; renews the lease (fenced).
UPDATE aweber_job.connections SET refreshing_from = %(spent)s, refreshing_by = %(holder)s, refreshing_at = now(),
    lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
WHERE name = %(name)s AND fence = %(fence)s AND lease_holder = %(holder)s
