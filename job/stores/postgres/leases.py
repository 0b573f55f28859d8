"""Leases: the claim of one connection (waiting for a live holder, taking over a dead one), the claims of a fleet
run (``claim_due``), and their release."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from job.errors import AuthError, LockBusyError, TokenFileError
from job.stores.postgres.common import (
    LEASE_POLL_SECONDS,
    check_name,
    describe_holder,
    split_holder,
    utc,
)
from job.stores.postgres.database import Database
from job.stores.postgres.schema import Schema

log = logging.getLogger(__name__)

# How long a scan for the leases of dead processes of this host serves the claims of a fleet run.
DEAD_HOLDER_SCAN_SECONDS = 30.0


def pid_space() -> str:
    """Which pids this process sees: the kernel's boot id and the pid namespace ("?" when unknown)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()[:8]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except (OSError, UnicodeDecodeError):
        return "?"
    return f"{boot}-{namespace}"


def not_found(description: str, name: str) -> TokenFileError:
    """The error for a connection ``name`` that the store ``description`` does not hold."""
    return TokenFileError(
        f"connection '{name}' is not in the store {description}",
        hint=f"authorize it: aweber-job --connection {name} login, or bring a token file: "
             f"aweber-job connections import {name} FILE",
    )


class Leases:
    """The leases one holder (``host:pid:random``) takes and gives back in one store."""

    def __init__(
        self, database: Database, schema: Schema, *, host: str, holder: str, lease_seconds: float,
        lock_timeout_seconds: float, clock: Callable[[], float], sleep: Callable[[float], None],
    ) -> None:
        self._database = database
        self._schema = schema
        self.host = host
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.lock_timeout_seconds = lock_timeout_seconds
        self._clock = clock
        self._sleep = sleep
        self._dead: tuple[float, list[str]] | None = None  # the last scan for dead holders: when, and what

    def holder_is_dead(self, holder: str) -> bool:
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

    def claim(self, name: str, *, wait: bool, allow_revoked: bool = False) -> tuple[Any, ...]:
        """Take the lease of ``name`` (fence + 1) and return the row; wait for a live holder up to the limit.

        Returns (fence, tokens, encrypted, refreshing_from, refreshing_by, refreshing_at epoch, task_state).
        """
        check_name(name)
        self._schema.ready()
        description = self._database.description
        deadline = self._clock() + self.lock_timeout_seconds
        dead: list[str] = []
        while True:
            rows = self._database.run_named(
                "claim",
                {"name": name, "holder": self.holder, "lease": self.lease_seconds, "dead": dead,
                 "allow_revoked": allow_revoked},
                doing=f"cannot claim connection '{name}' in the store {description}",
            )
            if rows and len(rows[0]) > 1:
                return rows[0]
            found = self._database.run_named(
                "claim_refused", {"name": name},
                doing=f"cannot read connection '{name}' in the store {description}",
            )
            if not found:
                raise not_found(description, name)
            holder, until, live, revoked_at = found[0]
            if revoked_at is not None and not allow_revoked:
                raise AuthError(
                    f"connection '{name}' in the store {description} was revoked at {utc(revoked_at)}",
                    hint=f"authorize it again: aweber-job --connection {name} login",
                )
            if holder and live and holder not in dead and self.holder_is_dead(holder):
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

    def release(self, name: str, fence: int) -> None:
        """Give back the lease of ``name`` taken with ``fence`` (fenced: a lease since taken over stays)."""
        self._database.run_named(
            "release", {"name": name, "fence": fence, "holder": self.holder},
            doing=f"cannot release connection '{name}' in the store {self._database.description}",
        )

    def run_start(self) -> float:
        """The database's clock now (epoch seconds): a fleet run judges what is due as of when it began."""
        self._schema.ready()
        rows = self._database.run_named(
            "run_start", {}, doing=f"cannot read the clock of the store {self._database.description}",
        )
        return float(rows[0][0])

    def count_due(self, interval_seconds: float, *, since: float) -> int:
        """How many connections a fleet run that began at ``since`` finds due (for its live line on a terminal)."""
        self._schema.ready()
        rows = self._database.run_named(
            "count_due", {"interval": float(interval_seconds), "since": since, "dead": self._dead_holders()},
            doing=f"cannot count the due connections in the store {self._database.description}",
        )
        return int(rows[0][0])

    def claim_due(self, limit: int, interval_seconds: float, *, since: float) -> list[tuple[str, Any]]:
        """Claim up to ``limit`` connections due for a fleet run that began at ``since``; return (name, row) pairs.

        Due: never run, or last run at least the interval before ``since``, or, after a temporary failure, its
        backoff over by ``since``; not revoked, not waiting for a person, its lease free, run out, or held by
        a process of this host that no longer exists (as in :meth:`claim`); and not claimed since ``since``.
        A connection finished since the run began has a later last run and is not due, so the run never
        takes one twice and no list of done names travels. Each kind is one range scan of its index
        (sql/claim_due.sql, sql/claim_retry.sql): the cost of a claim does not grow with the connections done.
        ``FOR UPDATE SKIP LOCKED`` lets many processes claim at once, each taking rows no other is taking;
        each claim is the same committed lease and fence as a single run's.
        """
        self._schema.ready()
        dead = self._dead_holders()
        params = {"limit": limit, "interval": float(interval_seconds), "since": since, "holder": self.holder,
                  "lease": self.lease_seconds, "dead": dead}
        doing = f"cannot claim due connections in the store {self._database.description}"
        rows = self._database.run_named("claim_due", params, doing=doing)
        if len(rows) < limit:
            params["limit"] = limit - len(rows)
            rows += self._database.run_named("claim_retry", params, doing=doing)
        claimed = []
        for row in rows:
            if len(row) < 9:
                continue
            if row[8] in dead:
                log.warning("connection '%s': its lease was held by %s, which is no longer running; taken over",
                            row[0], describe_holder(row[8]))
            claimed.append((row[0], row[1:8]))
        return claimed

    def _dead_holders(self) -> list[str]:
        """The holders of unexpired leases that are processes of this host no longer running.

        The same rule as :meth:`claim`: a fleet run killed on this machine (SIGKILL, OOM) leaves its
        leases behind, and without this its connections would wait for the lease to run out (15 min).
        Scanned at most every DEAD_HOLDER_SCAN_SECONDS, not at every claim: a fleet run claims once a
        connection, and a process that died a few seconds ago leaves no more than a few leases.
        """
        now = self._clock()
        if self._dead is not None and now - self._dead[0] < DEAD_HOLDER_SCAN_SECONDS:
            return self._dead[1]
        rows = self._database.run_named(
            "dead_holders", {"prefix": f"{self.host}:"},
            doing=f"cannot read the leases in the store {self._database.description}",
        )
        dead = [row[0] for row in rows if isinstance(row[0], str) and self.holder_is_dead(row[0])]
        self._dead = (now, dead)
        return dead
