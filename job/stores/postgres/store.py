"""The connections table of one database: schema, claims, administration (see the package docstring)."""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job.auth.tokens import TokenFile, fingerprint, parse_token_file
from job.errors import (
    AuthError,
    ConfigError,
    JobError,
    LockBusyError,
    StorageError,
    StoreKeyError,
    TemporaryError,
    TokenFileError,
    UsageError,
    shorten,
)
from job.logs import REDACTOR
from job.shutdown import current as current_shutdown
from job.stores.durable import token_hash
from job.stores.postgres import rescue
from job.stores.postgres.common import (
    ADVISORY_LOCK_KEY,
    APPLICATION_NAME,
    BACKOFF_FIRST_SECONDS,
    BOUND,
    CONNECT_TIMEOUT_SECONDS,
    DUE_AFTER,
    FENCED,
    INFO_COLUMNS,
    LAST_TRY_SECONDS,
    LEASE,
    LEASE_POLL_SECONDS,
    LINK_OPTIONS,
    MIGRATIONS,
    NO_MARKER,
    NO_SCHEMA_HINT,
    RECORD_RUN,
    SCHEMA,
    SCHEMA_VERSION,
    SEAL_COLUMNS,
    SESSION_SETTINGS,
    STATEMENT_TIMEOUT_SECONDS,
    ConnectionInfo,
    ConnectionView,
    binding,
    check_name,
    describe_holder,
    fernet_damage,
    import_psycopg,
    split_holder,
    utc,
)
from job.stores.postgres.connection import PostgresConnection
from job.stores.postgres.watchdog import WATCHDOG

if TYPE_CHECKING:
    import psycopg
    from cryptography.fernet import MultiFernet

    from job.config import Settings

log = logging.getLogger(__name__)

# A lease lasts at least this long (and longer when a refresh may take longer: see from_settings).
DEFAULT_LEASE_SECONDS = 900.0
LEASE_MARGIN_SECONDS = 60.0
# A connection a fleet run may claim now: live, not waiting for a person, free (or held by a process
# on this host that no longer exists: %(dead)s, see PostgresStore.claim_due), and due.
DUE = (
    "revoked_at IS NULL AND NOT waiting_for_person AND tokens IS NOT NULL"
    " AND (lease_holder IS NULL OR lease_until IS NULL OR lease_until <= now() OR lease_holder = ANY(%(dead)s))"
    " AND (last_run_at IS NULL OR last_run_at <= now() - make_interval(secs => CASE"
    " WHEN last_exit_code = 75 THEN " + DUE_AFTER.format(failures="temporary_failures") + " ELSE %(interval)s END))"
)
# How long a save after a refresh keeps trying the database before the tokens go to a rescue file.
DEFAULT_SAVE_DEADLINE_SECONDS = 60.0
# How long `store init` may take, waiting for another machine's init included.
ADMIN_TIMEOUT_SECONDS = 120.0
# A refresh request's longest answer when the settings are not known (connect + read, 30 s each).
DEFAULT_REFRESH_TAIL_SECONDS = 60.0

# 9999-12-31T23:59:59Z: a later expiry (a hand-edited file) cannot go in a timestamptz column as a time.
LAST_TIMESTAMP = 253_402_300_799.0

# How many of the most recently updated encrypted rows check_keys (and the diagnosis of a value that fails
# its check) look at: enough to see past a damaged row or two, few enough to cost nothing.
ROWS_TO_TRY = 5
# What a sealed_with column may hold (a key fingerprint); anything else, written by hand, is ignored.
KEY_FINGERPRINT = re.compile(r"[0-9a-f]{8}")


def pid_space() -> str:
    """Which pids this process sees: the kernel's boot id and the pid namespace ("?" when unknown)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()[:8]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except (OSError, UnicodeDecodeError):
        return "?"
    return f"{boot}-{namespace}"


class PostgresStore:
    """The connections table of one database: administration calls, and :meth:`connection` for a run.

    It holds one autocommit database connection, made on first use and made again after it breaks;
    every statement is its own short transaction, so nothing is held open across an HTTP call.
    """

    def __init__(
        self,
        url: str,
        *,
        keys: Sequence[str] = (),
        state_dir: Path,
        lock_timeout_seconds: float = 60.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        save_deadline_seconds: float = DEFAULT_SAVE_DEADLINE_SECONDS,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        holder: str | None = None,
        fallback_rescue_dir: Path | None = None,
        refresh_tail_seconds: float | None = None,
    ) -> None:
        self._psycopg = import_psycopg()
        self._url = url
        self._password = self._parse_url(url)
        self._keys = [key.strip() for key in keys if key and key.strip()]
        REDACTOR.add(*self._keys)
        self._fingerprints = [fingerprint(key) for key in self._keys]
        self._multi = self._make_fernet()
        self.state_dir = Path(state_dir)
        self.lock_timeout_seconds = lock_timeout_seconds
        self.lease_seconds = lease_seconds
        self.save_deadline_seconds = save_deadline_seconds
        self.fallback_rescue_dir = fallback_rescue_dir
        # How long the lease must still last when a refresh request goes out: its longest answer and the save
        # after it, with a margin (see PostgresConnection.confirm_before_send).
        self.refresh_tail_seconds = min(
            refresh_tail_seconds if refresh_tail_seconds is not None
            else DEFAULT_REFRESH_TAIL_SECONDS + save_deadline_seconds + LEASE_MARGIN_SECONDS,
            lease_seconds / 2,
        )
        self._clock = clock
        self._sleep = sleep
        self.host = f"{socket.gethostname()}/{pid_space()}"
        self.holder = holder or f"{self.host}:{os.getpid()}:{secrets.token_hex(4)}"
        self._db: psycopg.Connection[Any] | None = None
        self._schema_checked = False
        # When set and it gives a time (monotonic), every database wait ends by then: a stop's grace (SIGTERM).
        self.stop_cap: Callable[[], float | None] | None = None
        # Room held for rescue files, proven once and used by one refresh after another (job.stores.postgres.rescue).
        self._rescue_slot: rescue.RescueSlot | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, holder: str | None = None) -> PostgresStore:
        """The store ``AWEBER_STORE`` names, with the configured keys, state directory and limits.

        The lease outlasts the longest refresh (its retries until AWEBER_RETRY_DEADLINE, one more
        read, then the save's own retries), so a live run is never taken over in the middle of one.
        """
        if settings.store_url is None:
            raise ConfigError(["AWEBER_STORE is 'file': there is no database store"])
        save_deadline = DEFAULT_SAVE_DEADLINE_SECONDS
        # One request: connect and read timeouts (each up to AWEBER_HTTP_TIMEOUT), then the save's retries.
        tail = 2 * settings.http_timeout_seconds + save_deadline + LEASE_MARGIN_SECONDS
        longest_refresh = settings.retry_deadline_seconds + tail
        store = cls(
            settings.store_url.reveal(),
            keys=[key.reveal() for key in settings.store_keys],
            state_dir=settings.state_dir,
            lock_timeout_seconds=settings.lock_timeout_seconds,
            # By construction the lease outlasts the longest refresh request and its save after the last
            # confirmation: a run that sends in time is never taken over before it has saved.
            lease_seconds=max(DEFAULT_LEASE_SECONDS, longest_refresh + LEASE_MARGIN_SECONDS, 2 * tail),
            save_deadline_seconds=save_deadline,
            holder=holder,
            fallback_rescue_dir=settings.fallback_rescue_dir,
            refresh_tail_seconds=tail,
        )
        stopping = current_shutdown()
        if stopping is not None:
            # Whatever command made it (a login, an import...), its waits end within the stop's grace.
            store.stop_cap = stopping.cap
        return store

    # ---- the URL, and never its password --------------------------------------------------------

    def _parse_url(self, url: str) -> str | None:
        """Register the password with the redactor and set :attr:`description` (the URL without it)."""
        from urllib.parse import urlsplit

        try:  # best effort first, so even a URL psycopg cannot parse has its password registered
            early = urlsplit(url).password
        except ValueError:
            early = None
        REDACTOR.add(early)
        try:
            parts = self._psycopg.conninfo.conninfo_to_dict(url)
        except self._psycopg.Error:
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

    def _reason(self, exc: BaseException) -> str:
        """The database's words as one short line, with the password and every known secret removed."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._password:
            text = text.replace(self._password, "[redacted]")
        return shorten(REDACTOR.redact(text))

    # ---- encryption ------------------------------------------------------------------------------

    def _make_fernet(self) -> MultiFernet | None:
        if not self._keys:
            return None
        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError:
            raise ConfigError(
                ["a store key is set but cryptography is not installed: pip install 'aweber-job[postgres]'"]
            ) from None
        fernets = []
        for number, key in enumerate(self._keys, 1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                raise ConfigError([
                    f"store key #{number} (fingerprint {fingerprint(key)}) is not a Fernet key: 32 url-safe "
                    "base64-encoded bytes; make one with: python3 -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'"
                ]) from None
        return MultiFernet(fernets)

    def _seal(self, name: str, tokens: TokenFile) -> dict[str, Any]:
        """The columns that hold ``tokens`` of connection ``name``: bound to it and encrypted with keys[0]
        when keys are given, else plain."""
        content = tokens.to_bytes()
        REDACTOR.add(*tokens.secrets())
        account = tokens.document.get("account_id")
        expires_at = tokens.expires_at
        return {
            "tokens": self._sealed(name, content) if self._multi is not None else content,
            "encrypted": self._multi is not None,
            "sealed_with": self._fingerprints[0] if self._multi is not None else None,
            # The plain columns only inform `list`: a value a column cannot hold is left out, never refused.
            "expires_at": expires_at if expires_at is not None and 0 <= expires_at < LAST_TIMESTAMP else None,
            "account_id": account if isinstance(account, int) and not isinstance(account, bool)
            and 0 < account < 2**63 else None,
        }

    def _sealed(self, name: str, content: bytes) -> bytes:
        assert self._multi is not None
        return self._multi.encrypt(binding(name) + content)

    def _unseal(self, name: str, data: bytes, encrypted: bool) -> TokenFile:
        """Open (see :meth:`_opened`) and parse; whatever is wrong names the connection."""
        tokens = parse_token_file(self._opened(name, bytes(data), encrypted), f"connection '{name}' in the store")
        REDACTOR.add(*tokens.secrets())
        return tokens

    def _opened(self, name: str, data: bytes, encrypted: bool, *, rotating: bool = False) -> bytes:
        """The token file a row holds, once it is proven to be this connection's.

        With keys, only a value sealed for this connection opens; a plain row, or ciphertext not bound to
        any connection, only while the store still accepts legacy values (then with a warning), and a
        plain row also when ``rotating`` (``store rotate-key`` is how a store gets encrypted).
        """
        where = f"connection '{name}' in the store {self.description}"
        if not encrypted:
            if self._multi is not None and not rotating:
                self._legacy(name, "is stored unencrypted although a store key is set", plain=True)
            return data
        if self._multi is None:
            raise StoreKeyError([f"{where} is encrypted but no store key is given (AWEBER_STORE_KEY)"])
        from cryptography.fernet import InvalidToken

        try:
            content = self._multi.decrypt(data)
        except InvalidToken:
            raise self._unopened(name, data) from None
        bound = binding(name)
        if content.startswith(bound):
            return content[len(bound):]
        if content.startswith(BOUND):
            raise ConfigError([
                f"{where} holds tokens sealed for another connection (copied from another row?): refused; "
                + self._replace_hint(name)
            ])
        self._legacy(name, "holds tokens sealed without being bound to their connection", plain=False,
                     quiet=rotating)
        return content

    def _legacy(self, name: str, what: str, *, plain: bool, quiet: bool = False) -> None:
        """Accept a value from before binding while the store allows it (warning), else refuse it (78)."""
        where = f"connection '{name}' in the store {self.description}"
        if self._legacy_accepted():
            if not quiet:
                log.warning("%s %s; accepted only until the store's values are bound: run aweber-job store "
                            "rotate-key", where, what)
            return
        if plain:
            # Anyone who can write to the table could have put it there; not the connection's fault when the
            # key was only just set, so a fleet run leaves it due (StoreKeyError) until rotate-key.
            raise StoreKeyError([
                f"{where} {what}: refused, since anyone who can write to the table could have put it there; if it "
                "was imported or authorized without AWEBER_STORE_KEY, encrypt it: aweber-job store rotate-key"
            ])
        raise ConfigError([
            f"{where} {what} (written by hand, or copied from a row of an older aweber-job?): refused; "
            + self._replace_hint(name)
        ])

    @staticmethod
    def _replace_hint(name: str) -> str:
        return (f"replace its tokens: aweber-job connections import {name} FILE --force, or remove it "
                f"(aweber-job connections remove {name} --force) and authorize it again")

    def _legacy_accepted(self) -> bool:
        """Whether the store still accepts values from before binding (read when one is met: rotate-key, on
        any machine, may have just ended it)."""
        rows = self._run(f"SELECT coalesce(bool_or(legacy_values), false) FROM {SCHEMA}.schema_version",
                         doing=f"cannot read the store {self.description}")
        return bool(rows and rows[0][0])

    def _unopened(self, name: str, data: bytes) -> JobError:
        """Why no key opens the value of ``name``: damaged (78, the connection's), or sealed with a key not
        given (StoreKeyError, the keys')."""
        where = f"connection '{name}' in the store {self.description}"
        broken = fernet_damage(data)
        if broken is not None:
            return ConfigError([f"{where} holds a damaged encrypted value ({broken}): {self._replace_hint(name)}"])
        given = self._given()
        sealed_with = self._sealed_with(name)
        if sealed_with in self._fingerprints:
            return ConfigError([
                f"{where} holds a damaged encrypted value: it fails its integrity check under store key "
                f"{sealed_with}, which sealed it; {self._replace_hint(name)}"
            ])
        if sealed_with is not None:
            return StoreKeyError([
                f"{where} was sealed with store key {sealed_with}, which is not among the {given}: give that key "
                "too (AWEBER_STORE_KEY, after the first)"
            ])
        if self._another_opens(name):
            return ConfigError([
                f"{where} holds a damaged encrypted value: it fails its integrity check under every store key, "
                f"while the same keys open other connections of the store; {self._replace_hint(name)}"
            ])
        return StoreKeyError([f"{where} is encrypted with a key that is not among the {given}"])

    def _given(self) -> str:
        """The keys given, as messages name them: how many, and their fingerprints."""
        return f"{len(self._keys)} store key(s) given (fingerprints {', '.join(self._fingerprints)})"

    def _sealed_with(self, name: str) -> str | None:
        """The fingerprint of the key that sealed ``name`` (None: not recorded, sealed before schema version 3)."""
        rows = self._run(f"SELECT sealed_with FROM {SCHEMA}.connections WHERE name = %(name)s", {"name": name},
                         doing=f"cannot read connection '{name}' in the store {self.description}")
        value = rows[0][0] if rows else None
        return value if isinstance(value, str) and KEY_FINGERPRINT.fullmatch(value) else None

    def _opens(self, data: Any) -> bool:
        """Whether a key given opens ``data`` (its integrity check only)."""
        from cryptography.fernet import InvalidToken

        if self._multi is None or data is None:
            return False
        try:
            self._multi.decrypt(bytes(data))
        except InvalidToken:
            return False
        return True

    def _another_opens(self, name: str) -> bool:
        """Whether the keys open another of the most recently updated encrypted rows: then they are right."""
        rows = self._run(
            f"""SELECT tokens FROM {SCHEMA}.connections WHERE encrypted AND tokens IS NOT NULL AND name <> %(name)s
                ORDER BY updated_at DESC, name LIMIT {ROWS_TO_TRY}""",
            {"name": name}, doing=f"cannot read the store {self.description}",
        )
        return any(self._opens(row[0]) for row in rows)

    def check_keys(self) -> None:
        """Prove the keys given open this store: StoreKeyError (78) naming the store when they cannot.

        A fleet run calls it before it claims anything: a wrong or missing key is the store's trouble, and
        found one connection at a time it would set every connection waiting for a person. The keys fail
        when a row is encrypted and none is given, or when the most recently updated encrypted rows open
        with none of them — a row that is merely damaged (broken as a Fernet token, or sealed by a key given)
        is passed over. Only fingerprints of keys are named.
        """
        self._ready()
        rows = self._run(
            f"""SELECT name, tokens, sealed_with FROM {SCHEMA}.connections WHERE encrypted AND tokens IS NOT NULL
                ORDER BY updated_at DESC, name LIMIT {ROWS_TO_TRY}""",
            doing=f"cannot read the store {self.description}",
        )
        if not rows:
            if self._multi is not None and not self._legacy_accepted() and self._run(
                f"SELECT EXISTS (SELECT FROM {SCHEMA}.connections WHERE tokens IS NOT NULL)",
                doing=f"cannot read the store {self.description}",
            )[0][0]:
                raise StoreKeyError([
                    f"the store {self.description} holds only unencrypted connections but a store key is given: "
                    "encrypt them with aweber-job store rotate-key (or unset AWEBER_STORE_KEY)"
                ])
            return
        if self._multi is None:
            raise StoreKeyError([
                f"the store {self.description} holds encrypted connections but no store key is given: set "
                "AWEBER_STORE_KEY"
            ])
        tried: list[str] = []
        for name, data, sealed_with in rows:
            if self._opens(data):
                return
            value = bytes(data)
            if fernet_damage(value) is not None or sealed_with in self._fingerprints:
                continue  # damaged, not a question of keys: the next row tells
            if isinstance(sealed_with, str) and KEY_FINGERPRINT.fullmatch(sealed_with):
                raise StoreKeyError([
                    f"the {self._given()} do not open the store {self.description}: connection '{name}', one of "
                    f"the most recently updated, was sealed with store key {sealed_with}; give that key too "
                    "(AWEBER_STORE_KEY, the newest first)"
                ])
            tried.append(name)
        if tried:
            raise StoreKeyError([
                f"the {self._given()} open none of the most recently updated encrypted connections of the store "
                f"{self.description} ({', '.join(repr(n) for n in tried)}): give the keys it was sealed with "
                "(AWEBER_STORE_KEY, the newest first)"
            ])

    # ---- the database connection -----------------------------------------------------------------

    def _connection(self, doing: str | None = None, deadline: float | None = None) -> psycopg.Connection[Any]:
        """The open database connection, made (again) when there is none; ``doing`` words a failure.

        Made within ``deadline`` (monotonic; default CONNECT_TIMEOUT_SECONDS from now). The server is
        asked to end a statement or a lock wait of its own that outlives a client's patience, and the
        kernel to give up on a peer that stops acknowledging (TCP_USER_TIMEOUT, keepalives), unless the
        URL sets these itself; the client's own bound on every wait is :data:`WATCHDOG`.
        """
        if self._db is None or self._db.closed or self._db.broken:
            self._drop_connection()
            left = CONNECT_TIMEOUT_SECONDS if deadline is None else deadline - time.monotonic()
            cap = self.stop_cap() if self.stop_cap is not None else None
            if cap is not None and time.monotonic() >= cap:
                # The grace is nearly over: a new connection (2 s at least) would outlast it; what needed one
                # (recording the outcome, releasing the lease) is left to the lease running out.
                left = 0.0
            if left <= 0:
                raise TemporaryError(f"{doing or f'cannot connect to the store {self.description}'}: no time was "
                                     "left to connect to the database")
            try:
                self._db = self._psycopg.connect(
                    self._url, autocommit=True,
                    # libpq's (and psycopg's) shortest connect timeout is 2 s.
                    connect_timeout=max(2, min(CONNECT_TIMEOUT_SECONDS, math.ceil(left))),
                    application_name=APPLICATION_NAME, **self._link_options,
                )
                started = time.monotonic()
                with WATCHDOG.bounded(self._db.pgconn.socket, lambda: started + left):
                    self._db.execute(SESSION_SETTINGS)
            except self._psycopg.Error as exc:
                self._drop_connection()
                raise self._error(exc, doing or f"cannot connect to the store {self.description}") from None
        assert self._db is not None
        return self._db

    def _statement_deadline(self, began: float, until: float | None) -> Callable[[], float]:
        """When a statement begun at ``began`` must have its answer (monotonic): STATEMENT_TIMEOUT_SECONDS
        later, or ``until``, or the stop's cap (SIGTERM) when sooner, but never less than LAST_TRY_SECONDS
        after it began. A function: a stop that comes while the statement waits brings it closer."""

        def deadline() -> float:
            due = began + STATEMENT_TIMEOUT_SECONDS
            if until is not None:
                due = min(due, until)
            cap = self.stop_cap() if self.stop_cap is not None else None
            if cap is not None:
                due = min(due, cap)
            return max(due, began + LAST_TRY_SECONDS)

        return deadline

    def _drop_connection(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except Exception:  # closing a dead connection may fail in any way; it is gone
                log.debug("closing the store's database connection failed", exc_info=True)
            self._db = None

    def close(self) -> None:
        """Close the database connection (a lease still held simply runs out) and give back the rescue room."""
        self._drop_connection()
        if self._rescue_slot is not None:
            self._rescue_slot.discard()
            self._rescue_slot = None

    def rescue_slot(self, name: str, size: int) -> rescue.RescueSlot:
        """Room for a rescue file of ``size`` bytes, held already or reserved now; StorageError (73) when none can
        be (the refresh of connection ``name`` is then not sent)."""
        if self._rescue_slot is not None and self._rescue_slot.usable(size):
            return self._rescue_slot
        if self._rescue_slot is not None:
            self._rescue_slot.discard()
            self._rescue_slot = None
        self._rescue_slot = rescue.reserve(rescue.rescue_directories(self.state_dir, self.fallback_rescue_dir),
                                           name, size)
        return self._rescue_slot

    def rescue_slot_used(self, slot: rescue.RescueSlot) -> None:
        """``slot`` is about to hold a rescue file: the next refresh needs new room."""
        if self._rescue_slot is slot:
            self._rescue_slot = None

    def _error(self, exc: BaseException, doing: str) -> JobError:
        """Map a psycopg error to the job's exit codes: one line, the reason without secrets."""
        reason = self._reason(exc)
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
        if isinstance(exc, self._psycopg.OperationalError) or state[:2] in ("08", "57", "40", "53"):
            return TemporaryError(f"{doing}: {reason}")
        return StorageError(f"{doing}: {reason}")

    def _run(self, sql: str, params: dict[str, Any] | None = None, *, doing: str,
             until: float | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction and return its rows (none for an UPDATE without RETURNING).

        The answer must come by :meth:`_statement_deadline` (``until``: a monotonic time that may bring it
        closer), else the connection is cut and TemporaryError (75) raised: nothing here waits unbounded.
        A connection that was already open and turns out broken (the server restarted, an idle timeout)
        is made again and the statement sent once more within the same deadline: every statement here
        may be repeated safely (fenced, or keyed on this holder).
        """
        began = time.monotonic()
        deadline = self._statement_deadline(began, until)
        for attempt in (1, 2):
            was_open = self._db is not None and not self._db.closed and not self._db.broken
            db = self._connection(doing, deadline())
            try:
                with WATCHDOG.bounded(db.pgconn.socket, deadline) as watch:
                    cursor = db.execute(sql, params)
                    return list(cursor.fetchall()) if cursor.description else [(cursor.rowcount,)]
            except self._psycopg.Error as exc:
                if watch.fired:
                    self._drop_connection()
                    raise TemporaryError(
                        f"{doing}: the database did not answer within {time.monotonic() - began:.1f} s; "
                        "the connection was cut"
                    ) from None
                if attempt == 1 and was_open and (db.closed or db.broken) and time.monotonic() < deadline():
                    log.debug("the store's database connection broke (%s); connecting again", self._reason(exc))
                    self._drop_connection()
                    continue
                if db.closed or db.broken:
                    self._drop_connection()
                raise self._error(exc, doing) from None
        raise AssertionError("unreachable")

    # ---- schema ------------------------------------------------------------------------------------

    def init_schema(self) -> int:
        """Create or upgrade the schema in one transaction under an advisory lock; return its version.

        Idempotent, and safe when several machines run it at once: the lock makes them take turns, and
        each finds the work done by the one before.
        """
        db = self._connection()
        doing = f"cannot set up the schema of the store {self.description}"
        began = time.monotonic()
        try:
            # Another machine's init may hold the advisory lock for a while; a link that holds bytes may not.
            with WATCHDOG.bounded(db.pgconn.socket, lambda: began + ADMIN_TIMEOUT_SECONDS), db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                db.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                db.execute(
                    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version "
                    "(version integer NOT NULL, upgraded_at timestamptz NOT NULL DEFAULT now())"
                )
                row = db.execute(f"SELECT max(version) FROM {SCHEMA}.schema_version").fetchone()
                current = int(row[0]) if row and row[0] is not None else 0
                self._refuse_newer(current)
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[version]:
                        db.execute(statement)
                legacy = False
                if current < SCHEMA_VERSION:
                    # Updated in place, not replaced: a migration records in that row (legacy_values).
                    if not db.execute(f"UPDATE {SCHEMA}.schema_version SET version = %s, upgraded_at = now()",
                                      (SCHEMA_VERSION,)).rowcount:
                        db.execute(f"INSERT INTO {SCHEMA}.schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
                    legacy_row = db.execute(f"SELECT bool_or(legacy_values) FROM {SCHEMA}.schema_version").fetchone()
                    legacy = bool(legacy_row and legacy_row[0])
        except self._psycopg.Error as exc:
            raise self._error(exc, doing) from None
        if current < SCHEMA_VERSION:
            log.info("the store %s now has schema version %d (it had %s)", self.description, SCHEMA_VERSION,
                     current or "none")
        if legacy:
            log.warning("the tokens already in the store %s are not bound to their connections: they are accepted "
                        "until aweber-job store rotate-key (with the store keys) binds them", self.description)
        self._schema_checked = True
        return SCHEMA_VERSION

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise ConfigError([
                f"the store {self.description} has schema version {version}, newer than version "
                f"{SCHEMA_VERSION} that this aweber-job knows: upgrade aweber-job on this machine"
            ])

    def _ready(self) -> None:
        """Check once that the schema is there and is the version this code speaks."""
        if self._schema_checked:
            return
        undefined = (self._psycopg.errors.UndefinedTable, self._psycopg.errors.InvalidSchemaName)
        try:
            db = self._connection()
            began = time.monotonic()
            with WATCHDOG.bounded(db.pgconn.socket, self._statement_deadline(began, None)):
                rows = db.execute(f"SELECT max(version) FROM {SCHEMA}.schema_version").fetchall()
        except undefined:
            raise ConfigError([f"the store {self.description} has no schema: {NO_SCHEMA_HINT}"]) from None
        except self._psycopg.Error as exc:
            raise self._error(exc, f"cannot read the store {self.description}") from None
        version = rows[0][0] if rows and rows[0][0] is not None else 0
        if version == 0:
            raise ConfigError([f"the store {self.description} has no schema: {NO_SCHEMA_HINT}"])
        self._refuse_newer(version)
        if version < SCHEMA_VERSION:
            raise ConfigError([
                f"the store {self.description} has schema version {version}, older than version {SCHEMA_VERSION} "
                f"that this aweber-job needs: {NO_SCHEMA_HINT}"
            ])
        self._schema_checked = True

    # ---- leases ------------------------------------------------------------------------------------

    def _holder_is_dead(self, holder: str) -> bool:
        """Whether ``holder`` is a process on this host that no longer exists (its lease can be taken now)."""
        host, pid = split_holder(holder)
        # Only where this process sees the holder's pids: the same machine, boot and pid namespace (two
        # containers may share a hostname, and a pid means another process in another namespace).
        if pid is None or host != self.host or self.host.endswith("/?") or pid <= 0 or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # EPERM: it exists, under another user
        return False

    def _claim(self, name: str, *, wait: bool, allow_revoked: bool = False) -> tuple[Any, ...]:
        """Take the lease of ``name`` (fence + 1) and return the row; wait for a live holder up to the limit.

        Returns (fence, tokens, encrypted, refreshing_from, refreshing_by, refreshing_at epoch).
        """
        check_name(name)
        self._ready()
        deadline = self._clock() + self.lock_timeout_seconds
        dead: list[str] = []
        while True:
            rows = self._run(
                f"""UPDATE {SCHEMA}.connections
                    SET fence = fence + 1, lease_holder = %(holder)s, lease_until = {LEASE}, updated_at = now()
                    WHERE name = %(name)s AND (revoked_at IS NULL OR %(allow_revoked)s)
                      AND (lease_holder IS NULL OR lease_until IS NULL OR lease_until <= now()
                           OR lease_holder = %(holder)s OR lease_holder = ANY(%(dead)s))
                    RETURNING fence, tokens, encrypted, refreshing_from, refreshing_by,
                              extract(epoch FROM refreshing_at)::float8""",
                {"name": name, "holder": self.holder, "lease": self.lease_seconds, "dead": dead,
                 "allow_revoked": allow_revoked},
                doing=f"cannot claim connection '{name}' in the store {self.description}",
            )
            if rows and len(rows[0]) > 1:
                return rows[0]
            found = self._run(
                f"""SELECT lease_holder, extract(epoch FROM lease_until)::float8, lease_until > now(),
                           extract(epoch FROM revoked_at)::float8
                    FROM {SCHEMA}.connections WHERE name = %(name)s""",
                {"name": name}, doing=f"cannot read connection '{name}' in the store {self.description}",
            )
            if not found:
                raise self._not_found(name)
            holder, until, live, revoked_at = found[0]
            if revoked_at is not None and not allow_revoked:
                raise AuthError(
                    f"connection '{name}' in the store {self.description} was revoked at {utc(revoked_at)}",
                    hint=f"authorize it again: aweber-job --connection {name} login",
                )
            if holder and live and holder not in dead and self._holder_is_dead(holder):
                log.warning("connection '%s': its lease is held by %s, which is no longer running; taking it over",
                            name, describe_holder(holder))
                dead.append(holder)
                continue
            if not live:
                continue  # freed between the two statements: claim again at once
            if not wait or self._clock() >= deadline:
                waited = "" if not wait else f"; waited {self.lock_timeout_seconds:.0f} s"
                raise LockBusyError(
                    f"connection '{name}' is in use by {describe_holder(holder)} (its lease runs until "
                    f"{utc(until)}){waited}",
                    hint="another run of it is still going; try again later",
                )
            self._sleep(max(0.0, min(LEASE_POLL_SECONDS, deadline - self._clock())))

    def _release(self, name: str, fence: int) -> None:
        self._run(
            f"UPDATE {SCHEMA}.connections SET lease_holder = NULL, lease_until = NULL WHERE {FENCED}",
            {"name": name, "fence": fence, "holder": self.holder},
            doing=f"cannot release connection '{name}' in the store {self.description}",
        )

    def _not_found(self, name: str) -> TokenFileError:
        return TokenFileError(
            f"connection '{name}' is not in the store {self.description}",
            hint=f"authorize it: aweber-job --connection {name} login, or bring a token file: "
                 f"aweber-job connections import {name} FILE",
        )

    # ---- administration ------------------------------------------------------------------------------

    def connection(
        self, name: str, *, wait: bool = True, owns_store: bool = False, claimed: tuple[Any, ...] | None = None,
        finish_on_close: bool = False,
    ) -> PostgresConnection:
        """The :class:`job.stores.base.ConnectionStore` of one connection; nothing happens until ``open()``.

        ``owns_store``: closing the connection closes this store too (a run that made the store for it).
        ``claimed``: the row :meth:`claim_due` claimed for it, so ``open()`` does not claim again.
        ``finish_on_close``: the lease outlives ``close()`` until :meth:`PostgresConnection.finish`.
        A claimed connection's name came from the table, so it is not held to the rules for names typed in.
        After a stop was asked for, every wait and the save's retries end by :attr:`stop_cap`.
        """
        return PostgresConnection(self, name if claimed is not None else check_name(name), wait=wait,
                                  owns_store=owns_store, claimed=claimed, finish_on_close=finish_on_close)

    def list_connections(self) -> list[ConnectionInfo]:
        self._ready()
        rows = self._run(f"SELECT {INFO_COLUMNS} FROM {SCHEMA}.connections ORDER BY name",
                         doing=f"cannot list the store {self.description}")
        return [ConnectionInfo(*row) for row in rows]

    def read(self, name: str) -> ConnectionView:
        """The connection's info, tokens and refresh marker, without taking its lease (for ``status``)."""
        check_name(name)
        self._ready()
        rows = self._run(
            f"""SELECT {INFO_COLUMNS}, tokens, refreshing_from, refreshing_by,
                       extract(epoch FROM refreshing_at)::float8
                FROM {SCHEMA}.connections WHERE name = %(name)s""",
            {"name": name}, doing=f"cannot read connection '{name}' in the store {self.description}",
        )
        if not rows:
            raise self._not_found(name)
        info = ConnectionInfo(*rows[0][:9])
        data, spent, by, at = rows[0][9:]
        tokens = self._unseal(name, data, info.encrypted) if data is not None else None
        marker = None
        if spent:
            current = tokens is not None and token_hash(tokens.refresh_token) == spent
            marker = (f"a refresh from {'the stored' if current else 'an older'} refresh token "
                      f"(sha256 {spent[:8]}) began at {utc(at)} by {describe_holder(by or '?')}")
            if info.lease_holder is None:
                marker += " and never recorded its end"
        return ConnectionView(info=info, tokens=tokens, marker=marker)

    def check_writable(self) -> None:
        """Prove the store takes writes now (before a login spends its code): StorageError (73) when read-only.

        An UPDATE that matches no row is refused all the same by a read-only transaction or a standby.
        """
        self._ready()
        self._run(f"UPDATE {SCHEMA}.schema_version SET version = version WHERE false",
                  doing=f"cannot write to the store {self.description}")

    def import_tokens(self, name: str, tokens: TokenFile, *, force: bool) -> None:
        """Put a token file's tokens in the store as connection ``name``; an existing one only with ``force``."""
        self._store_tokens(name, tokens, overwrite=force, action="import")

    def put_tokens(self, name: str, tokens: TokenFile, *, replace: bool) -> None:
        """Store the tokens a ``login`` just received; an existing connection only with ``replace``."""
        self._store_tokens(name, tokens, overwrite=replace, action="login")

    def _store_tokens(self, name: str, tokens: TokenFile, *, overwrite: bool, action: str) -> None:
        check_name(name)
        self._ready()
        sealed = {"name": name, **self._seal(name, tokens)}
        rows = self._run(
            f"""INSERT INTO {SCHEMA}.connections (name, tokens, encrypted, sealed_with, access_expires_at, account_id)
                VALUES (%(name)s, %(tokens)s, %(encrypted)s, %(sealed_with)s, to_timestamp(%(expires_at)s::float8),
                        %(account_id)s)
                ON CONFLICT (name) DO NOTHING RETURNING name""",
            sealed, doing=f"cannot add connection '{name}' to the store {self.description}",
        )
        if rows and rows[0][0] == name:
            log.info("connection '%s' added to the store %s (refresh token %s)", name, self.description,
                     fingerprint(tokens.refresh_token))
            return
        if not overwrite:
            raise UsageError(
                f"connection '{name}' is already in the store {self.description}; its tokens were left as they are",
                hint=f"to replace them, run the {action} again with --force",
            )
        fence = self._claim(name, wait=False, allow_revoked=True)[0]
        try:
            self._run(
                f"""UPDATE {SCHEMA}.connections SET {SEAL_COLUMNS}, {NO_MARKER}, revoked_at = NULL,
                        waiting_for_person = false, temporary_failures = 0,
                        updated_at = now() WHERE {FENCED}""",
                {**sealed, "fence": fence, "holder": self.holder},
                doing=f"cannot replace the tokens of connection '{name}' in the store {self.description}",
            )
        finally:
            self._release(name, fence)
        log.info("connection '%s' in the store %s now holds refresh token %s", name, self.description,
                 fingerprint(tokens.refresh_token))

    def remove(self, name: str, *, force: bool) -> None:
        """Delete a revoked connection (any, with ``force``), never one a live run holds."""
        check_name(name)
        self._ready()
        rows = self._run(f"SELECT revoked_at IS NOT NULL FROM {SCHEMA}.connections WHERE name = %(name)s",
                         {"name": name}, doing=f"cannot read connection '{name}' in the store {self.description}")
        if not rows:
            raise self._not_found(name)
        if not rows[0][0] and not force:
            raise UsageError(
                f"connection '{name}' still holds live tokens; revoke them first: aweber-job --connection {name} "
                "revoke (or remove it anyway with --force, leaving its grant alive at AWeber)"
            )
        fence = self._claim(name, wait=False, allow_revoked=True)[0]
        self._run(f"DELETE FROM {SCHEMA}.connections WHERE {FENCED}",
                  {"name": name, "fence": fence, "holder": self.holder},
                  doing=f"cannot remove connection '{name}' from the store {self.description}")
        log.info("connection '%s' removed from the store %s", name, self.description)

    def mark_revoked(self, name: str) -> None:
        """After ``revoke``: wipe the tokens and set revoked_at; the fence moves, so no run writes them back."""
        check_name(name)
        self._ready()
        rows = self._run(
            f"""UPDATE {SCHEMA}.connections SET tokens = NULL, encrypted = false, sealed_with = NULL,
                    access_expires_at = NULL,
                    revoked_at = now(), {NO_MARKER}, fence = fence + 1, lease_holder = NULL,
                    lease_until = NULL, updated_at = now()
                WHERE name = %(name)s RETURNING name""",
            {"name": name}, doing=f"cannot mark connection '{name}' revoked in the store {self.description}",
        )
        if not rows or rows[0][0] != name:
            raise self._not_found(name)

    def record_run(self, name: str, exit_code: int, interval_seconds: float) -> None:
        """Note when the connection last ran, how it ended, and when it is due next.

        A success or a failure a later run may not repeat is due again an interval later; a temporary
        one (75) sooner, backing off: 5 min, 10, 20 … up to the interval; one that needs a person (77,
        78) waits until its tokens change (login, import) or a run by hand succeeds.
        """
        check_name(name)
        self._ready()
        rows = self._run(
            f"""UPDATE {SCHEMA}.connections SET {RECORD_RUN}
                WHERE name = %(name)s""",
            {"name": name, "code": exit_code, "interval": float(interval_seconds), "backoff": BACKOFF_FIRST_SECONDS},
            doing=f"cannot record the run of connection '{name}' in the store {self.description}",
        )
        if rows[0][0] == 0:
            log.warning("connection '%s' is no longer in the store %s: its run was not recorded", name,
                        self.description)

    def rescued_connections(self) -> list[str]:
        """The connections this machine holds rescue files for (in its rescue directories), by name."""
        return sorted(rescue.names(rescue.rescue_directories(self.state_dir, self.fallback_rescue_dir)))

    def count_due(self, interval_seconds: float) -> int:
        """How many connections are due now (for the live line of a fleet run on a terminal)."""
        self._ready()
        rows = self._run(
            f"SELECT count(*) FROM {SCHEMA}.connections WHERE {DUE}",
            {"interval": float(interval_seconds), "backoff": BACKOFF_FIRST_SECONDS},
            doing=f"cannot count the due connections in the store {self.description}",
        )
        return int(rows[0][0])

    def claim_due(self, limit: int, interval_seconds: float, *, skip: Sequence[str] = ()) -> list[tuple[str, Any]]:
        """Claim up to ``limit`` due connections for a fleet run; return (name, claimed row) pairs.

        Due: never run, or last run longer ago than the interval (after a temporary failure, than its
        backoff), not revoked, not waiting for a person, its lease free, run out, or held by a process of
        this host that no longer exists (as in :meth:`_claim`). ``FOR UPDATE SKIP
        LOCKED`` lets many processes claim at once, each taking rows no other is taking; each claim is
        the same committed lease and fence as a single run's. ``skip``: the names this run has done.
        """
        self._ready()
        dead = self._dead_holders()
        # The conditions are checked again by the UPDATE: a row another process changed after this
        # statement's snapshot is re-read and judged afresh, so a connection just claimed, run and
        # released elsewhere is not run again here.
        rows = self._run(
            f"""WITH due AS (
                    SELECT name, lease_holder AS was_held_by FROM {SCHEMA}.connections
                    WHERE {DUE} AND name <> ALL(%(skip)s)
                    ORDER BY last_run_at NULLS FIRST, name
                    LIMIT %(limit)s
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE {SCHEMA}.connections AS c
                SET fence = c.fence + 1, lease_holder = %(holder)s, lease_until = {LEASE}, updated_at = now()
                FROM due WHERE c.name = due.name AND {DUE}
                RETURNING c.name, c.fence, c.tokens, c.encrypted, c.refreshing_from, c.refreshing_by,
                          extract(epoch FROM c.refreshing_at)::float8, due.was_held_by""",
            {"limit": limit, "interval": float(interval_seconds), "skip": list(skip), "holder": self.holder,
             "lease": self.lease_seconds, "backoff": BACKOFF_FIRST_SECONDS, "dead": dead},
            doing=f"cannot claim due connections in the store {self.description}",
        )
        claimed = []
        for row in rows:
            if len(row) < 8:
                continue
            if row[7] in dead:
                log.warning("connection '%s': its lease was held by %s, which is no longer running; taken over",
                            row[0], describe_holder(row[7]))
            claimed.append((row[0], row[1:7]))
        return claimed

    def _dead_holders(self) -> list[str]:
        """The holders of unexpired leases that are processes of this host no longer running.

        The same rule as :meth:`_claim`: a fleet run killed on this machine (SIGKILL, OOM) leaves its
        leases behind, and without this its connections would wait for the lease to run out (15 min).
        """
        rows = self._run(
            f"""SELECT DISTINCT lease_holder FROM {SCHEMA}.connections
                WHERE lease_until > now() AND starts_with(lease_holder, %(prefix)s)""",
            {"prefix": f"{self.host}:"},
            doing=f"cannot read the leases in the store {self.description}",
        )
        return [row[0] for row in rows if isinstance(row[0], str) and self._holder_is_dead(row[0])]

    def rotate_key(self) -> int:
        """Seal every connection anew with the first key, bound to it (plain ones get encrypted); return how many.

        Each row in its own short transaction under ``SELECT … FOR UPDATE``, so runs are held up for
        one row at most. Once every row is sealed and bound, the store stops accepting values from before
        binding (schema version 3): a row stops the rotation, naming its connection, when no key opens it
        or it is bound to another connection.
        """
        if self._multi is None:
            raise ConfigError(["rotating the store key needs at least one store key (the new one first)"])
        self._ready()
        names = [row[0] for row in self._run(
            f"SELECT name FROM {SCHEMA}.connections WHERE tokens IS NOT NULL ORDER BY name",
            doing=f"cannot list the store {self.description}")]
        count = 0
        plain: list[str] = []
        for name in names:
            done, was_plain = self._rotate_one(name)
            count += done
            if was_plain:
                plain.append(name)
        if plain:
            # Anyone who can write to the table can write a plain row: name them, for an operator to recognise.
            shown = ", ".join(repr(name) for name in plain[:10]) + (f" and {len(plain) - 10} more" if len(plain) > 10
                                                                   else "")
            log.warning("%d connection(s) in the store %s were stored unencrypted and are now encrypted: %s",
                        len(plain), self.description, shown)
        self._run(f"UPDATE {SCHEMA}.schema_version SET legacy_values = false WHERE legacy_values",
                  doing=f"cannot record in the store {self.description} that its values are bound")
        log.info("sealed %d connection(s) in the store %s with the first store key, each bound to its connection",
                 count, self.description)
        return count

    def _rotate_one(self, name: str) -> tuple[int, bool]:
        """Seal one row anew; return (1 when it held tokens, whether they were plain)."""
        db = self._connection()
        began = time.monotonic()
        try:
            with WATCHDOG.bounded(db.pgconn.socket, self._statement_deadline(began, None)), db.transaction():
                row = db.execute(
                    f"SELECT tokens, encrypted FROM {SCHEMA}.connections WHERE name = %s FOR UPDATE",
                    (name,)).fetchone()
                if row is None or row[0] is None:
                    return 0, False
                content = self._opened(name, bytes(row[0]), row[1], rotating=True)
                parse_token_file(content, f"connection '{name}' in the store")  # never seal what no run can use
                db.execute(f"UPDATE {SCHEMA}.connections SET tokens = %s, encrypted = true, sealed_with = %s, "
                           "updated_at = now() WHERE name = %s",
                           (self._sealed(name, content), self._fingerprints[0], name))
        except self._psycopg.Error as exc:
            raise self._error(exc, f"cannot re-encrypt connection '{name}' in the store {self.description}") from None
        return 1, not row[1]
