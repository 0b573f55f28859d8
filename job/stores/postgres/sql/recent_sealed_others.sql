-- The sealed values of the most recently updated encrypted rows but one connection's.
SELECT tokens FROM aweber_job.connections WHERE encrypted AND tokens IS NOT NULL AND name <> %(name)s
ORDER BY updated_at DESC, name LIMIT %(rows)s
