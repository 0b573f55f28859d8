-- One row's value sealed anew by store rotate-key.
UPDATE aweber_job.connections SET tokens = %(tokens)s, encrypted = true, sealed_with = %(sealed_with)s,
    updated_at = now() WHERE name = %(name)s
