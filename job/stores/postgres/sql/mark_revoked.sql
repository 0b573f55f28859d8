-- After revoke: wipe the tokens; the fence moves, so no run writes them back.
UPDATE aweber_job.connections SET tokens = NULL, encrypted = false, sealed_with = NULL, access_expires_at = NULL, revoked_at = now(),
    refreshing_from = NULL, refreshing_by = NULL, refreshing_at = NULL,
    fence = fence + 1, lease_holder = NULL, lease_until = NULL, updated_at = now()
WHERE name = %(name)s RETURNING name
