-- The sealed tokens of the connections named (an import whose answer was lost: did they go in?).
SELECT name, tokens, encrypted FROM aweber_job.connections WHERE name = ANY(%(names)s::text[])
