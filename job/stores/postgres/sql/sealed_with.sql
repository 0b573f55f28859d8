-- The fingerprint of the key that sealed a connection's value (NULL: sealed before schema version 3).
SELECT sealed_with FROM aweber_job.connections WHERE name = %(name)s
