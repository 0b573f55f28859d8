-- Every value is bound: the store stops accepting values from before binding.
UPDATE aweber_job.schema_version SET legacy_values = false WHERE legacy_values
