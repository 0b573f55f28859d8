-- The tokens of a rescue file, sealed: a connection that waited for a person is live again (fenced).
UPDATE aweber_job.connections SET tokens = %(tokens)s, encrypted = %(encrypted)s, sealed_with = %(sealed_with)s,
    access_expires_at = to_timestamp(%(expires_at)s::float8),
    account_id = coalesce(%(account_id)s, account_id),
    refreshing_from = NULL, refreshing_by = NULL, refreshing_at = NULL,
    waiting_for_person = false, temporary_failures = 0, updated_at = now()
WHERE name = %(name)s AND fence = %(fence)s AND lease_holder = %(holder)s
