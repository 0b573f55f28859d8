-- The database's clock when a fleet run begins: what is due is judged as of then.
SELECT extract(epoch FROM now())::float8
