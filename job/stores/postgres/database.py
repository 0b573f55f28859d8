"""The store's one autocommit database connection: the URL and its password, every statement's deadline,
and the mapping of the database's errors to the job's exit codes."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from job.errors import ConfigError, JobError, StorageError, TemporaryError, shorten
from job.logs import REDACTOR
from job.stores.postgres.common import (
    APPLICATION_NAME,
    CONNECT_TIMEOUT_SECONDS,
    LAST_TRY_SECONDS,
    LINK_OPTIONS,
    SESSION_SETTINGS,
    STATEMENT_TIMEOUT_SECONDS,
)
from job.stores.postgres.sql import load
from job.stores.postgres.watchdog import WATCHDOG

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


class Database:
    """One autocommit connection to the store's database, made on first use and made again after it breaks.

    Every statement is its own short transaction (:meth:`run`), so nothing is held open across an HTTP call,
    and every wait for an answer is bounded (:data:`WATCHDOG`).
    """

    def __init__(self, url: str, psycopg_module: Any) -> None:
        self.psycopg = psycopg_module
        self._url = url
        self._password = self._parse_url(url)
        # The open psycopg connection, or None (read by tests to reach the server's side of it).
        self.current: psycopg.Connection[Any] | None = None
        # When set and it gives a time (monotonic), every database wait ends by then: a stop's grace (SIGTERM).
        self.stop_cap: Callable[[], float | None] | None = None

    # ---- the URL, and never its password --------------------------------------------------------

    def _parse_url(self, url: str) -> str | None:
        """Register the password with the redactor and set :attr:`description` (the URL without it)."""

        try:  # best effort first, so even a URL psycopg cannot parse has its password registered
            early = urlsplit(url).password
        except ValueError:
            early = None
        REDACTOR.add(early)
        try:
            parts = self.psycopg.conninfo.conninfo_to_dict(url)
        except self.psycopg.Error:
            raise ConfigError(
                ["AWEBER_STORE is not a valid PostgreSQL URL (expected postgresql://user@host:port/database)"]
            ) from None
        # TCP liveness for every connection, unless the URL chose its own (a UNIX socket takes none).
        host_part = str(parts.get("host") or "")
        self._link_options = {} if host_part.startswith("/") or not host_part else {
            key: value for key, value in LINK_OPTIONS.items() if key not in parts}
        password = parts.get("password") or early
        REDACTOR.add(password)
        user = f"{parts['user']}@" if parts.get("user") else ""
        port = f":{parts['port']}" if parts.get("port") else ""
        host = parts.get("host") or "localhost"
        host = f"[{host}]" if ":" in host and not host.startswith("/") else host
        self.description = f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"
        return str(password) if password else None

    def reason(self, exc: BaseException) -> str:
        """The database's words as one short line, with the password and every known secret removed."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._password:
            text = text.replace(self._password, "[redacted]")
        return shorten(REDACTOR.redact(text))

    # ---- the connection ---------------------------------------------------------------------------

    def _cap(self) -> float | None:
        return self.stop_cap() if self.stop_cap is not None else None

    def connection(self, doing: str | None = None, deadline: float | None = None) -> psycopg.Connection[Any]:
        """The open database connection, made (again) when there is none; ``doing`` words a failure.

        Made within ``deadline`` (monotonic; default CONNECT_TIMEOUT_SECONDS from now). The server is
        asked to end a statement or a lock wait of its own that outlives a client's patience, and the
        kernel to give up on a peer that stops acknowledging (TCP_USER_TIMEOUT, keepalives), unless the
        URL sets these itself; the client's own bound on every wait is :data:`WATCHDOG`.
        """
        if self.current is None or self.current.closed or self.current.broken:
            self.drop()
            left = CONNECT_TIMEOUT_SECONDS if deadline is None else deadline - time.monotonic()
            cap = self._cap()
            if cap is not None and time.monotonic() >= cap:
                # The grace is nearly over: a new connection (2 s at least) would outlast it; what needed one
                # (recording the outcome, releasing the lease) is left to the lease running out.
                left = 0.0
            if left <= 0:
                raise TemporaryError(f"{doing or f'cannot connect to the store {self.description}'}: no time was "
                                     "left to connect to the database")
            try:
                self.current = self.psycopg.connect(
                    self._url, autocommit=True,
                    # libpq's (and psycopg's) shortest connect timeout is 2 s.
                    connect_timeout=max(2, min(CONNECT_TIMEOUT_SECONDS, math.ceil(left))),
                    application_name=APPLICATION_NAME, **self._link_options,
                )
                started = time.monotonic()
                with WATCHDOG.bounded(self.current.pgconn.socket, lambda: started + left):
                    self.current.execute(SESSION_SETTINGS)
            except self.psycopg.Error as exc:
                self.drop()
                raise self.error(exc, doing or f"cannot connect to the store {self.description}") from None
        assert self.current is not None
        return self.current

    def statement_deadline(self, began: float, until: float | None) -> Callable[[], float]:
        """When a statement begun at ``began`` must have its answer (monotonic): STATEMENT_TIMEOUT_SECONDS
        later, or ``until``, or the stop's cap (SIGTERM) when sooner, but never less than LAST_TRY_SECONDS
        after it began. A function: a stop that comes while the statement waits brings it closer."""

        def deadline() -> float:
            due = began + STATEMENT_TIMEOUT_SECONDS
            if until is not None:
                due = min(due, until)
            cap = self._cap()
            if cap is not None:
                due = min(due, cap)
            return max(due, began + LAST_TRY_SECONDS)

        return deadline

    @contextmanager
    def transaction(self, doing: str, seconds: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """The connection inside one transaction whose every wait ends ``seconds`` after it begins (default: a
        statement's deadline); a database error becomes the job's (see :meth:`error`), worded by ``doing``."""
        db = self.connection()
        began = time.monotonic()
        bound = self.statement_deadline(began, None) if seconds is None else (lambda: began + seconds)
        try:
            with WATCHDOG.bounded(db.pgconn.socket, bound), db.transaction():
                yield db
        except self.psycopg.Error as exc:
            raise self.error(exc, doing) from None

    def drop(self) -> None:
        """Close the connection (the next statement makes a new one)."""
        if self.current is not None:
            try:
                self.current.close()
            except Exception:  # closing a dead connection may fail in any way; it is gone
                log.debug("closing the store's database connection failed", exc_info=True)
            self.current = None

    def error(self, exc: BaseException, doing: str) -> JobError:
        """Map a psycopg error to the job's exit codes: one line, the reason without secrets."""
        reason = self.reason(exc)
        state = str(getattr(exc, "sqlstate", None) or "")
        if state == "25006":
            return StorageError(f"{doing}: the database is read-only ({reason})",
                                hint="a replica, or default_transaction_read_only; point AWEBER_STORE at the primary")
        if state in ("42501", "53100", "53200", "54000") or state.startswith("22"):
            return StorageError(f"{doing}: the database refused the write ({reason})")
        lowered = reason.lower()
        if not state and ("invalid" in lowered and ("connection option" in lowered or "port number" in lowered
                                                    or " value:" in lowered or "uri" in lowered)):
            # libpq refused the URL itself, before any network: no later try can succeed.
            return ConfigError([f"{doing}: AWEBER_STORE: {reason}"])
        if state.startswith("28") or state == "3D000" or (
            not state and ("authentication failed" in lowered or "does not exist" in lowered)
        ):
            return ConfigError([f"{doing}: {reason}"])
        if isinstance(exc, self.psycopg.OperationalError) or state[:2] in ("08", "57", "40", "53"):
            return TemporaryError(f"{doing}: {reason}")
        return StorageError(f"{doing}: {reason}")

    def run(self, sql: str, params: dict[str, Any] | None = None, *, doing: str,
            until: float | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction and return its rows (for a statement without rows, one row
        holding how many it changed).

        The answer must come by :meth:`statement_deadline` (``until``: a monotonic time that may bring it
        closer), else the connection is cut and TemporaryError (75) raised: nothing here waits unbounded.
        A connection that was already open and turns out broken (the server restarted, an idle timeout)
        is made again and the statement sent once more within the same deadline: every statement here
        may be repeated safely (fenced, or keyed on this holder).
        """
        began = time.monotonic()
        deadline = self.statement_deadline(began, until)
        for attempt in (1, 2):
            was_open = self.current is not None and not self.current.closed and not self.current.broken
            db = self.connection(doing, deadline())
            try:
                with WATCHDOG.bounded(db.pgconn.socket, deadline) as watch:
                    cursor = db.execute(sql, params)
                    return list(cursor.fetchall()) if cursor.description else [(cursor.rowcount,)]
            except self.psycopg.Error as exc:
                if watch.fired:
                    self.drop()
                    raise TemporaryError(
                        f"{doing}: the database did not answer within {time.monotonic() - began:.1f} s; "
                        "the connection was cut"
                    ) from None
                if attempt == 1 and was_open and (db.closed or db.broken) and time.monotonic() < deadline():
                    log.debug("the store's database connection broke (%s); connecting again", self.reason(exc))
                    self.drop()
                    continue
                if db.closed or db.broken:
                    self.drop()
                raise self.error(exc, doing) from None
        raise AssertionError("unreachable")

    def run_named(self, name: str, params: dict[str, Any] | None = None, *, doing: str,
                  until: float | None = None) -> list[tuple[Any, ...]]:
        """:meth:`run` the statement of ``sql/<name>.sql``."""
        return self.run(load(name), params, doing=doing, until=until)
