-- Whether the store still accepts values from before binding (schema version 3's legacy_values).
SELECT coalesce(bool_or(legacy_values), false) FROM aweber_job.schema_version
