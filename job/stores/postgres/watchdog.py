"""Every wait on the database ends by a deadline, whatever the link does.

A statement whose answer never comes (a half-open connection, a partition, a paused server, a proxy
that holds the bytes) blocks psycopg forever: a server-side ``statement_timeout`` cannot fire on a
server that is not running, and TCP's own timeouts see nothing wrong while the other end's kernel
acknowledges. So each statement is armed here with a deadline; one thread per process watches them
all, and cuts the socket of a statement that outlives its deadline (``shutdown(2)``: the blocked read
returns at once, psycopg raises, the connection is dropped and made again for the next statement).
A deadline is a function, evaluated again as time goes on, so a stop asked for while a statement
waits (SIGTERM) shortens the wait already under way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

# How often the watch looks at the deadlines again, for those that a stop moved closer.
RECHECK_SECONDS = 0.2


@dataclass
class _Armed:
    deadline: Callable[[], float]
    fd: int
    fired: bool = False


class Watchdog:
    """Cuts the database socket of a statement still running at its deadline (monotonic seconds)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._condition = threading.Condition()
        self._armed: dict[int, _Armed] = {}
        self._next_id = 0
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def bounded(self, fd: int, deadline: Callable[[], float]) -> Iterator[_Armed]:
        """While the block runs, the socket ``fd`` is cut once ``deadline()`` has passed; the yielded
        record's ``fired`` tells afterwards whether it was."""
        armed = _Armed(deadline, fd)
        with self._condition:
            self._next_id += 1
            key = self._next_id
            idle = not self._armed
            self._armed[key] = armed
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="database-deadlines", daemon=True)
                self._thread.start()
            if idle:
                # Only an idle watch sleeps without a timeout; a busy one looks again within RECHECK_SECONDS,
                # long before any deadline (a second at least), so waking it for each statement costs for nothing.
                self._condition.notify()
        try:
            yield armed
        finally:
            with self._condition:
                self._armed.pop(key, None)

    def _watch(self) -> None:
        while True:
            with self._condition:
                while not self._armed:
                    self._condition.wait()
                now = self._monotonic()
                soonest = now + RECHECK_SECONDS
                for armed in list(self._armed.values()):
                    if armed.fired:
                        continue
                    due = armed.deadline()
                    if due <= now:
                        armed.fired = True
                        _cut(armed.fd)
                    else:
                        soonest = min(soonest, due)
                self._condition.wait(max(0.001, soonest - now))


def _cut(fd: int) -> None:
    """Shut the socket down in both directions: a read blocked on it returns at once, on every thread."""
    try:
        duplicate = os.dup(fd)
    except OSError:
        return  # already closed: nothing waits on it
    try:
        with socket.socket(fileno=duplicate) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        log.debug("cutting a database connection past its deadline: %s", exc)


WATCHDOG = Watchdog()
