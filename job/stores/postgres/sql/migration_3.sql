-- Schema version 3, sealed values bound to their connection. sealed_with: the fingerprint of the key that
-- sealed a row, so a value that fails its check under that very key is known to be damaged, not sealed
-- with a key that is not given. legacy_values: whether values written before binding (unbound
-- ciphertext, plain rows while a key is set) are still accepted: only in a store that held connections
-- when it was upgraded, until store rotate-key has bound them all.
ALTER TABLE aweber_job.connections ADD COLUMN sealed_with text;
ALTER TABLE aweber_job.schema_version ADD COLUMN legacy_values boolean NOT NULL DEFAULT false;
UPDATE aweber_job.schema_version
    SET legacy_values = EXISTS (SELECT FROM aweber_job.connections WHERE tokens IS NOT NULL);
