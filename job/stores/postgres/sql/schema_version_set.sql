-- Record the version reached, in place: a migration records in that row (legacy_values).
UPDATE aweber_job.schema_version SET version = %(version)s, upgraded_at = now()
