-- Many new connections in one statement (connections import --dir): sealed tokens and task state for each;
-- nothing for a name that is taken. Returns the names added.
INSERT INTO aweber_job.connections (name, tokens, encrypted, sealed_with, access_expires_at, account_id, task_state)
SELECT u.name, u.tokens, u.encrypted, u.sealed_with, to_timestamp(u.expires_at), u.account_id,
       coalesce(u.task_state::jsonb, '{}'::jsonb)
FROM unnest(%(names)s::text[], %(tokens)s::bytea[], %(encrypted)s::boolean[], %(sealed_with)s::text[],
            %(expires_at)s::float8[], %(account_ids)s::bigint[], %(task_states)s::text[])
     AS u(name, tokens, encrypted, sealed_with, expires_at, account_id, task_state)
ON CONFLICT (name) DO NOTHING RETURNING name
