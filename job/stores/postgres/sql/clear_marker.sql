-- A refresh that failed: clear its marker (fenced).
UPDATE aweber_job.connections SET refreshing_from = NULL, refreshing_by = NULL, refreshing_at = NULL, updated_at = now()
WHERE name = %(name)s AND fence = %(fence)s AND lease_holder = %(holder)s
