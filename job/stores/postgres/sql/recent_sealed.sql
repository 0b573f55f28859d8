-- The most recently updated encrypted rows, and the key fingerprint each was sealed with.
SELECT name, tokens, sealed_with FROM aweber_job.connections WHERE encrypted AND tokens IS NOT NULL
ORDER BY updated_at DESC, name LIMIT %(rows)s
