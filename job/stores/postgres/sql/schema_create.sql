-- The schema and its version table, before any migration.
CREATE SCHEMA IF NOT EXISTS aweber_job;
CREATE TABLE IF NOT EXISTS aweber_job.schema_version
    (version integer NOT NULL, upgraded_at timestamptz NOT NULL DEFAULT now())
