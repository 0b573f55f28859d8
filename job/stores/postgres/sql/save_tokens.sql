-- The tokens a refresh received, sealed; clears the marker and renews the lease (fenced).
UPDATE aweber_job.connections SET tokens = %(tokens)s, encrypted = %(encrypted)s, sealed_with = %(sealed_with)s,
    access_expires_at = to_timestamp(%(expires_at)s::float8),
    account_id = coalesce(%(account_id)s, account_id),
    refreshing_from = NULL, refreshing_by = NULL, refreshing_at = NULL,
    lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
WHERE name = %(name)s AND fence = %(fence)s AND lease_holder = %(holder)s
