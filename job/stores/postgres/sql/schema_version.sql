-- The store's schema version (NULL: none recorded).
SELECT max(version) FROM aweber_job.schema_version
