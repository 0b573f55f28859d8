-- The connections that hold tokens, by name.
SELECT name FROM aweber_job.connections WHERE tokens IS NOT NULL ORDER BY name
