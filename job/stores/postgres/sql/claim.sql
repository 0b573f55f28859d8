-- Take the lease of one connection (fence + 1): free, run out, already this holder's, or held by a
-- process of this host that no longer exists (dead).
UPDATE aweber_job.connections
SET fence = fence + 1, lease_holder = %(holder)s, lease_until = now() + make_interval(secs => %(lease)s),
    claimed_at = now(),
    updated_at = now()
WHERE name = %(name)s AND (revoked_at IS NULL OR %(allow_revoked)s)
  AND (lease_holder IS NULL OR lease_until IS NULL OR lease_until <= now()
       OR lease_holder = %(holder)s OR lease_holder = ANY(%(dead)s))
RETURNING fence, tokens, encrypted, refreshing_from, refreshing_by,
          extract(epoch FROM refreshing_at)::float8, task_state
