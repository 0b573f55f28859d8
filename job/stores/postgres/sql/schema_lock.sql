-- store init on several machines at once: they take turns (the key is "aweberjb" in ASCII).
SELECT pg_advisory_xact_lock(%(key)s)
