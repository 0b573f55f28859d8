-- Whether any connection holds tokens.
SELECT EXISTS (SELECT FROM aweber_job.connections WHERE tokens IS NOT NULL)
