-- One row's value for store rotate-key, locked until its transaction ends.
SELECT tokens, encrypted FROM aweber_job.connections WHERE name = %(name)s FOR UPDATE
