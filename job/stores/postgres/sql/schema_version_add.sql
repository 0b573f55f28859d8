-- Record the version reached in a new store.
INSERT INTO aweber_job.schema_version (version) VALUES (%(version)s)
