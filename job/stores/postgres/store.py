"""The connections table of one database: the facade that commands and runs call (see the package docstring).

Each of its jobs is a part of its own: the database connection (:mod:`.database`), the schema (:mod:`.schema`),
encryption (:mod:`.crypto`) and leases (:mod:`.leases`); their statements are in ``sql/``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job.auth.tokens import TokenFile, fingerprint
from job.errors import ConfigError, UsageError
from job.shutdown import current as current_shutdown
from job.stores.durable import token_hash
from job.stores.postgres import rescue
from job.stores.postgres.common import (
    BACKOFF_FIRST_SECONDS,
    ConnectionInfo,
    ConnectionView,
    check_name,
    describe_holder,
    import_psycopg,
    utc,
)
from job.stores.postgres.connection import PostgresConnection
from job.stores.postgres.crypto import Crypto
from job.stores.postgres.database import Database
from job.stores.postgres.leases import Leases, not_found, pid_space
from job.stores.postgres.schema import Schema

if TYPE_CHECKING:
    from job.config import Settings

log = logging.getLogger(__name__)

# A lease lasts at least this long (and longer when a refresh may take longer: see from_settings).
DEFAULT_LEASE_SECONDS = 900.0
LEASE_MARGIN_SECONDS = 60.0
# How long a save after a refresh keeps trying the database before the tokens go to a rescue file.
DEFAULT_SAVE_DEADLINE_SECONDS = 60.0
# A refresh request's longest answer when the settings are not known (connect + read, 30 s each).
DEFAULT_REFRESH_TAIL_SECONDS = 60.0


@dataclass(frozen=True)
class StateToImport:
    """A task's state brought in with a token file (``connections import``): the task, its state, and whether
    it replaces a state of that task the connection already holds (only when named on the command line)."""

    task: str
    state: dict[str, Any]
    replace: bool = False


def _json(value: object) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


class PostgresStore:
    """The connections table of one database: administration calls, and :meth:`connection` for a run.

    Its parts are public for :class:`PostgresConnection`: :attr:`database` (every statement), :attr:`crypto`
    (sealing and opening tokens) and :attr:`leases` (claims and releases), with :attr:`clock` and
    :attr:`sleep`, the time the store's waits are measured and spent in.
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
        self.database = Database(url, import_psycopg())
        self.description = self.database.description
        self.schema = Schema(self.database)
        self.crypto = Crypto(keys, self.database, self.schema)
        self.state_dir = Path(state_dir)
        self.save_deadline_seconds = save_deadline_seconds
        self.fallback_rescue_dir = fallback_rescue_dir
        # How long the lease must still last when a refresh request goes out: its longest answer and the save
        # after it, with a margin (see PostgresConnection.confirm_before_send).
        self.refresh_tail_seconds = min(
            refresh_tail_seconds if refresh_tail_seconds is not None
            else DEFAULT_REFRESH_TAIL_SECONDS + save_deadline_seconds + LEASE_MARGIN_SECONDS,
            lease_seconds / 2,
        )
        self.clock = clock
        self.sleep = sleep
        host = f"{socket.gethostname()}/{pid_space()}"
        self.leases = Leases(
            self.database, self.schema, host=host, holder=holder or f"{host}:{os.getpid()}:{secrets.token_hex(4)}",
            lease_seconds=lease_seconds, lock_timeout_seconds=lock_timeout_seconds, clock=clock, sleep=sleep,
        )
        # Room held for rescue files, proven once and used by one refresh after another (job.stores.postgres.rescue).
        self._rescue_slot: rescue.RescueSlot | None = None

    @property
    def host(self) -> str:
        """This machine as lease holders name it: host name, boot and pid namespace."""
        return self.leases.host

    @property
    def holder(self) -> str:
        """Who this store's leases name: ``host:pid:random``."""
        return self.leases.holder

    @property
    def lease_seconds(self) -> float:
        """How long a lease lasts from each claim or renewal."""
        return self.leases.lease_seconds

    @property
    def lock_timeout_seconds(self) -> float:
        """How long a claim waits for a live holder."""
        return self.leases.lock_timeout_seconds

    @property
    def stop_cap(self) -> Callable[[], float | None] | None:
        """When set and it gives a time (monotonic), every database wait ends by then: a stop's grace (SIGTERM)."""
        return self.database.stop_cap

    @stop_cap.setter
    def stop_cap(self, cap: Callable[[], float | None] | None) -> None:
        self.database.stop_cap = cap

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

    def close(self) -> None:
        """Close the database connection (a lease still held simply runs out) and give back the rescue room."""
        self.database.drop()
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


    def init_schema(self) -> int:
        """Create or upgrade the schema (see :meth:`Schema.init`); return its version."""
        return self.schema.init()

    def check_keys(self) -> None:
        """Prove the keys given open this store (see :meth:`Crypto.check_keys`)."""
        self.crypto.check_keys()

    def rotate_key(self) -> int:
        """Seal every connection anew with the first key (see :meth:`Crypto.rotate_key`); return how many."""
        return self.crypto.rotate_key()

    def run_start(self) -> float:
        """When a fleet run begins, by the database's clock (see :meth:`Leases.run_start`)."""
        return self.leases.run_start()

    def count_due(self, interval_seconds: float, *, since: float) -> int:
        """How many connections a fleet run that began at ``since`` finds due (see :meth:`Leases.count_due`)."""
        return self.leases.count_due(interval_seconds, since=since)

    def claim_due(self, limit: int, interval_seconds: float, *, since: float) -> list[tuple[str, Any]]:
        """Claim up to ``limit`` due connections for a fleet run (see :meth:`Leases.claim_due`)."""
        return self.leases.claim_due(limit, interval_seconds, since=since)

    # ---- administration ----------------------------------------------------------------------------

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
        self.schema.ready()
        rows = self.database.run_named("list_connections", doing=f"cannot list the store {self.description}")
        return [ConnectionInfo(*row) for row in rows]

    def read(self, name: str) -> ConnectionView:
        """The connection's info, tokens and refresh marker, without taking its lease (for ``status``)."""
        check_name(name)
        self.schema.ready()
        rows = self.database.run_named(
            "read_connection", {"name": name}, doing=f"cannot read connection '{name}' in the store {self.description}",
        )
        if not rows:
            raise not_found(self.description, name)
        info = ConnectionInfo(*rows[0][:9])
        data, spent, by, at = rows[0][9:]
        tokens = self.crypto.unseal(name, data, info.encrypted) if data is not None else None
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
        self.schema.ready()
        self.database.run_named("check_writable", doing=f"cannot write to the store {self.description}")

    def import_tokens(self, name: str, tokens: TokenFile, *, force: bool, state: StateToImport | None = None) -> bool:
        """Put a token file's tokens in the store as connection ``name``; an existing one only with ``force``.

        ``state``: a task state that goes in with the tokens, in the same statement. Into an existing connection
        only when it holds no state of that task or ``state.replace`` says so. Returns whether it went in.
        """
        return self._store_tokens(name, tokens, overwrite=force, action="import", state=state)

    def put_tokens(self, name: str, tokens: TokenFile, *, replace: bool) -> None:
        """Store the tokens a ``login`` just received; an existing connection only with ``replace``."""
        self._store_tokens(name, tokens, overwrite=replace, action="login")

    def _store_tokens(self, name: str, tokens: TokenFile, *, overwrite: bool, action: str,
                      state: StateToImport | None = None) -> bool:
        check_name(name)
        self.schema.ready()
        sealed = {"name": name, **self.crypto.seal(name, tokens)}
        rows = self.database.run_named(
            "insert_connection", {**sealed, "task_state": None if state is None else _json({state.task: state.state})},
            doing=f"cannot add connection '{name}' to the store {self.description}",
        )
        if rows and rows[0][0] == name:
            log.info("connection '%s' added to the store %s (refresh token %s)", name, self.description,
                     fingerprint(tokens.refresh_token))
            return state is not None
        if not overwrite:
            raise UsageError(
                f"connection '{name}' is already in the store {self.description}; its tokens were left as they are",
                hint=f"to replace them, run the {action} again with --force",
            )
        fence = self.leases.claim(name, wait=False, allow_revoked=True)[0]
        try:
            if state is None:
                self.database.run_named(
                    "replace_tokens", {**sealed, "fence": fence, "holder": self.holder},
                    doing=f"cannot replace the tokens of connection '{name}' in the store {self.description}",
                )
                stated = False
            else:
                replaced = self.database.run_named(
                    "import_replace", {**sealed, "fence": fence, "holder": self.holder, "task": state.task,
                                       "task_state": _json(state.state), "replace_state": state.replace},
                    doing=f"cannot replace the tokens of connection '{name}' in the store {self.description}",
                )
                stated = bool(replaced and replaced[0][0])
        finally:
            self.leases.release(name, fence)
        log.info("connection '%s' in the store %s now holds refresh token %s", name, self.description,
                 fingerprint(tokens.refresh_token))
        return stated

    def import_many(self, batch: Sequence[tuple[str, TokenFile, StateToImport | None]]) -> set[str]:
        """Add new connections, each with its tokens and task state, in one statement (one transaction): the
        names added; a name already in the store is left as it is (the caller decides about it)."""
        self.schema.ready()
        columns: dict[str, list[Any]] = {key: [] for key in
                                         ("names", "tokens", "encrypted", "sealed_with", "expires_at", "account_ids",
                                          "task_states")}
        for name, tokens, state in batch:
            check_name(name)
            sealed = self.crypto.seal(name, tokens)
            columns["names"].append(name)
            columns["tokens"].append(sealed["tokens"])
            columns["encrypted"].append(sealed["encrypted"])
            columns["sealed_with"].append(sealed["sealed_with"])
            columns["expires_at"].append(sealed["expires_at"])
            columns["account_ids"].append(sealed["account_id"])
            columns["task_states"].append(None if state is None else _json({state.task: state.state}))
        rows = self.database.run_named(
            "insert_connections", columns,
            doing=f"cannot add {len(batch)} connections to the store {self.description}",
        )
        return {row[0] for row in rows}

    def holding(self, batch: Sequence[tuple[str, TokenFile]]) -> tuple[set[str], set[str]]:
        """Which of these connections the store holds with exactly these tokens, and which it holds at all (an
        import whose answer was lost)."""
        self.schema.ready()
        wanted = {name: tokens for name, tokens in batch}
        rows = self.database.run_named(
            "read_tokens_many", {"names": list(wanted)},
            doing=f"cannot read {len(wanted)} connections in the store {self.description}",
        )
        held, present = set(), set()
        for name, data, encrypted in rows:
            present.add(name)
            if data is not None and name in wanted and \
                    self.crypto.unseal(name, data, encrypted).refresh_token == wanted[name].refresh_token:
                held.add(name)
        return held, present

    def task_state(self, name: str, task: str) -> object:
        """The state of ``task`` connection ``name`` holds (None when none), read without its lease."""
        rows = self.database.run_named("load_task_state", {"name": name, "task": task},
                                       doing=f"cannot read connection '{name}' in the store {self.description}")
        return rows[0][0] if rows else None

    def remove(self, name: str, *, force: bool) -> None:
        """Delete a revoked connection (any, with ``force``), never one a live run holds."""
        check_name(name)
        self.schema.ready()
        rows = self.database.run_named("is_revoked", {"name": name},
                                       doing=f"cannot read connection '{name}' in the store {self.description}")
        if not rows:
            raise not_found(self.description, name)
        if not rows[0][0] and not force:
            raise UsageError(
                f"connection '{name}' still holds live tokens; revoke them first: aweber-job --connection {name} "
                "revoke (or remove it anyway with --force, leaving its grant alive at AWeber)"
            )
        fence = self.leases.claim(name, wait=False, allow_revoked=True)[0]
        self.database.run_named("remove_connection", {"name": name, "fence": fence, "holder": self.holder},
                                doing=f"cannot remove connection '{name}' from the store {self.description}")
        log.info("connection '%s' removed from the store %s", name, self.description)

    def mark_revoked(self, name: str) -> None:
        """After ``revoke``: wipe the tokens and set revoked_at; the fence moves, so no run writes them back."""
        check_name(name)
        self.schema.ready()
        rows = self.database.run_named(
            "mark_revoked", {"name": name},
            doing=f"cannot mark connection '{name}' revoked in the store {self.description}",
        )
        if not rows or rows[0][0] != name:
            raise not_found(self.description, name)

    def record_run(self, name: str, exit_code: int, interval_seconds: float) -> None:
        """Note when the connection last ran, how it ended, and when it is due next.

        A success or a failure a later run may not repeat is due again an interval later; a temporary
        one (75) sooner, backing off: 5 min, 10, 20 … up to the interval; one that needs a person (77,
        78) waits until its tokens change (login, import) or a run by hand succeeds.
        """
        check_name(name)
        self.schema.ready()
        rows = self.database.run_named(
            "record_run",
            {"name": name, "code": exit_code, "interval": float(interval_seconds), "backoff": BACKOFF_FIRST_SECONDS},
            doing=f"cannot record the run of connection '{name}' in the store {self.description}",
        )
        if rows[0][0] == 0:
            log.warning("connection '%s' is no longer in the store %s: its run was not recorded", name,
                        self.description)

    def rescued_connections(self) -> list[str]:
        """The connections this machine holds rescue files for (in its rescue directories), by name."""
        return sorted(rescue.names(rescue.rescue_directories(self.state_dir, self.fallback_rescue_dir)))

