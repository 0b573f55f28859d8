-- An import with --force: the new tokens, sealed; the connection is live again (fenced). The task state the
-- import brings replaces the stored state of that task only when asked (replace_state) or when there is none,
-- so a later import of a rescue file never takes the watermark back. Returns whether the state went in.
UPDATE aweber_job.connections AS c SET tokens = %(tokens)s, encrypted = %(encrypted)s, sealed_with = %(sealed_with)s,
    access_expires_at = to_timestamp(%(expires_at)s::float8),
    account_id = coalesce(%(account_id)s, c.account_id),
    task_state = CASE WHEN %(task_state)s::jsonb IS NOT NULL AND (%(replace_state)s OR NOT (prior.task_state ? %(task)s))
                      THEN c.task_state || jsonb_build_object(%(task)s::text, %(task_state)s::jsonb)
                      ELSE c.task_state END,
    refreshing_from = NULL, refreshing_by = NULL, refreshing_at = NULL, revoked_at = NULL,
    waiting_for_person = false, temporary_failures = 0, updated_at = now()
FROM (SELECT task_state FROM aweber_job.connections WHERE name = %(name)s) AS prior
WHERE c.name = %(name)s AND c.fence = %(fence)s AND c.lease_holder = %(holder)s
RETURNING %(task_state)s::jsonb IS NOT NULL AND (%(replace_state)s OR NOT (prior.task_state ? %(task)s))
