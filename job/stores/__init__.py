"""Where a connection's tokens and task state are kept: the protocol every run speaks (:mod:`job.stores.base`),
the token file (:mod:`job.stores.file`) and the PostgreSQL store (:mod:`job.stores.postgres`), and
:func:`connection_store`, which picks one from ``AWEBER_STORE``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from job.stores.base import ConnectionStore

if TYPE_CHECKING:
    from job.config import Settings
    from job.shutdown import Shutdown


def connection_store(
    settings: Settings, *, connection: str | None = None, wait: bool = True, finish_on_close: bool = False,
    shutdown: Shutdown | None = None,
) -> ConnectionStore[Any]:
    """The store ``AWEBER_STORE`` names, for ``connection`` (default: the configured one).

    The PostgreSQL store is imported only here, so a token-file install never loads its driver. With
    ``shutdown``, the database store's waits end within its grace once a stop is asked for.
    """
    if settings.store_url is None:
        from job.stores.file.store import FileStore

        return FileStore(
            settings.token_file, settings.state_dir, lock_timeout_seconds=settings.lock_timeout_seconds,
            fallback_rescue_dir=settings.fallback_rescue_dir, settings=settings,
        )
    from job.stores.postgres import PostgresStore

    database = PostgresStore.from_settings(settings)
    if shutdown is not None:
        database.stop_cap = shutdown.cap
    store: ConnectionStore[Any] = database.connection(
        connection or settings.connection, wait=wait, owns_store=True, finish_on_close=finish_on_close
    )
    return store
