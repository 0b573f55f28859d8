-- Schema version 1: the connections table.
CREATE TABLE aweber_job.connections (
    name text PRIMARY KEY,
    tokens bytea,
    encrypted boolean NOT NULL DEFAULT false,
    access_expires_at timestamptz,
    account_id bigint,
    task_state jsonb NOT NULL DEFAULT '{}'::jsonb,
    last_run_at timestamptz,
    last_exit_code integer,
    next_run_at timestamptz,
    lease_holder text,
    lease_until timestamptz,
    fence bigint NOT NULL DEFAULT 0,
    refreshing_from text,
    refreshing_by text,
    refreshing_at timestamptz,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (tokens IS NOT NULL OR revoked_at IS NOT NULL)
);
