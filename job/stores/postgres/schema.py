"""The store's schema: its migrations (``sql/migration_<version>.sql``), ``store init``, and the check that a
store speaks this code's version."""

from __future__ import annotations

import logging
import time

from job.errors import ConfigError
from job.stores.postgres.common import ADVISORY_LOCK_KEY, NO_SCHEMA_HINT, SCHEMA_VERSION
from job.stores.postgres.database import Database
from job.stores.postgres.sql import load
from job.stores.postgres.watchdog import WATCHDOG

log = logging.getLogger(__name__)

# How long `store init` may take, waiting for another machine's init included.
ADMIN_TIMEOUT_SECONDS = 120.0

# Each version's statements, applied in order inside init_schema's one transaction.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    version: (load(f"migration_{version}"),) for version in range(1, SCHEMA_VERSION + 1)
}


class Schema:
    """The schema of one store's database: made or upgraded by :meth:`init`, checked once by :meth:`ready`."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._checked = False

    def init(self) -> int:
        """Create or upgrade the schema in one transaction under an advisory lock; return its version.

        Idempotent, and safe when several machines run it at once: the lock makes them take turns, and
        each finds the work done by the one before.
        """
        description = self._database.description
        # Another machine's init may hold the advisory lock for a while; a link that holds bytes may not.
        with self._database.transaction(f"cannot set up the schema of the store {description}",
                                        ADMIN_TIMEOUT_SECONDS) as db:
            db.execute(load("schema_lock"), {"key": ADVISORY_LOCK_KEY})
            db.execute(load("schema_create"))
            row = db.execute(load("schema_version")).fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            self._refuse_newer(current)
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
            legacy = False
            if current < SCHEMA_VERSION:
                # Updated in place, not replaced: a migration records in that row (legacy_values).
                if not db.execute(load("schema_version_set"), {"version": SCHEMA_VERSION}).rowcount:
                    db.execute(load("schema_version_add"), {"version": SCHEMA_VERSION})
                legacy_row = db.execute(load("schema_legacy")).fetchone()
                legacy = bool(legacy_row and legacy_row[0])
        if current < SCHEMA_VERSION:
            log.info("the store %s now has schema version %d (it had %s)", description, SCHEMA_VERSION,
                     current or "none")
        if legacy:
            log.warning("the tokens already in the store %s are not bound to their connections: they are accepted "
                        "until aweber-job store rotate-key (with the store keys) binds them", description)
        self._checked = True
        return SCHEMA_VERSION

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise ConfigError([
                f"the store {self._database.description} has schema version {version}, newer than version "
                f"{SCHEMA_VERSION} that this aweber-job knows: upgrade aweber-job on this machine"
            ])

    def ready(self) -> None:
        """Check once that the schema is there and is the version this code speaks."""
        if self._checked:
            return
        database = self._database
        psycopg = database.psycopg
        undefined = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)
        try:
            db = database.connection()
            began = time.monotonic()
            with WATCHDOG.bounded(db.pgconn.socket, database.statement_deadline(began, None)):
                rows = db.execute(load("schema_version")).fetchall()
        except undefined:
            raise ConfigError([f"the store {database.description} has no schema: {NO_SCHEMA_HINT}"]) from None
        except psycopg.Error as exc:
            raise database.error(exc, f"cannot read the store {database.description}") from None
        version = rows[0][0] if rows and rows[0][0] is not None else 0
        if version == 0:
            raise ConfigError([f"the store {database.description} has no schema: {NO_SCHEMA_HINT}"])
        self._refuse_newer(version)
        if version < SCHEMA_VERSION:
            raise ConfigError([
                f"the store {database.description} has schema version {version}, older than version "
                f"{SCHEMA_VERSION} that this aweber-job needs: {NO_SCHEMA_HINT}"
            ])
        self._checked = True
