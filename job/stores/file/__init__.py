"""The token file: the default store, one connection (``default``).

:mod:`job.stores.file.lock` (the lock and its record), :mod:`job.stores.file.recovery` (what earlier runs left,
and the tidy-up) and :mod:`job.stores.file.tokenfile` (loading, the reservation, the careful save) keep the file
safe, on :mod:`job.stores.durable`'s atomic durable writes; :mod:`job.stores.file.store` says which of their
steps a run takes when, in the words of the store protocol (:mod:`job.stores.base`).
"""
