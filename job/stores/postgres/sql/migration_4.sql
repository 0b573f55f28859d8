-- Schema version 4, claims that cost the same for the last connection of a run as for the first.
-- claimed_at: when the row was last claimed; a fleet run never claims a row again that it claimed since
-- it began (a connection given back unrecorded, after a stop, waits for the next run). The due rows are
-- found by two indexes, each a range scan in claim order: by last run (never run first), and the temporary
-- failures by when their backoff ends; they replace the index on last_run_at that left the never-run rows
-- to be sorted by name at every claim.
ALTER TABLE aweber_job.connections ADD COLUMN claimed_at timestamptz;
DROP INDEX IF EXISTS aweber_job.connections_due;
CREATE INDEX connections_due_by_last_run
    ON aweber_job.connections ((coalesce(last_run_at, '-infinity'::timestamptz)))
    WHERE revoked_at IS NULL AND NOT waiting_for_person AND tokens IS NOT NULL;
CREATE INDEX connections_due_to_retry ON aweber_job.connections (next_run_at)
    WHERE last_exit_code = 75 AND revoked_at IS NULL AND NOT waiting_for_person AND tokens IS NOT NULL;
