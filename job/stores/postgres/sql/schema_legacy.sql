-- Whether values from before binding are still accepted.
SELECT bool_or(legacy_values) FROM aweber_job.schema_version
