-- One task's state, merged into the connection's task_state (fenced).
UPDATE aweber_job.connections SET task_state = task_state || jsonb_build_object(%(task)s::text, %(state)s::jsonb), updated_at = now()
WHERE name = %(name)s AND fence = %(fence)s AND lease_holder = %(holder)s
