-- An UPDATE that matches no row: refused all the same by a read-only transaction or a standby.
UPDATE aweber_job.schema_version SET version = version WHERE false
