-- Schema version 2, fleet runs (run --all): which connections wait for a person (77, 78: not retried
-- until their tokens change), how many temporary failures in a row (for the backoff), and an index for
-- the query that finds the due ones.
ALTER TABLE aweber_job.connections ADD COLUMN waiting_for_person boolean NOT NULL DEFAULT false;
ALTER TABLE aweber_job.connections ADD COLUMN temporary_failures integer NOT NULL DEFAULT 0;
CREATE INDEX connections_due ON aweber_job.connections (last_run_at NULLS FIRST)
    WHERE revoked_at IS NULL AND NOT waiting_for_person;
