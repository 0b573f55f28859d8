"""The token file: the default store, one connection (``default``).

:mod:`job.stores.file.tokenfile` keeps the file safe (atomic durable writes, the lock and its record, the
reservation, the recovery survey, the careful save); :mod:`job.stores.file.store` says which of its steps a
run takes when, in the words of the store protocol (:mod:`job.stores.base`).
"""
