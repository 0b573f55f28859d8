"""Rolling-window pacing: at most so many requests in any window, across threads (docs/design.md §6).

Its own module because a fleet run shares one pacer per AWeber account between the clients of that
account's connections, and builds them without needing the rest of the client.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable

# How often a client waits to re-check a pacer whose every slot is a request still in flight.
PACER_POLL_SECONDS = 0.05
# AWeber blocks a rate-limited account for 60 s (docs/aweber-api.md §3); the rolling window is a minute.
DEFAULT_WINDOW_SECONDS = 60.0
_ACCOUNT_PATH = re.compile(r"^/accounts/(\d+)(?:/|$)")


def account_of(path: str) -> str | None:
    """The key of the AWeber account a request path (below the base path) counts against, if any:
    AWeber's limit is per account, so a shared pacer is picked by this key."""
    match = _ACCOUNT_PATH.match(path)
    return f"account {match.group(1)}" if match else None


class Pacer:
    """At most ``limit`` requests in any rolling ``window``: one client's, or shared by the clients of one
    AWeber account (its rate limit is per account, whatever the integration), across threads.

    A request takes a slot before it is sent and gives it back, stamped, when it finished: times are
    taken when a request *finished*, which is no earlier than the server saw it, so the server never
    counts more than the limit in any window either; requests in flight count too, so clients that
    share the pacer cannot all pass the check at once.
    """

    def __init__(self, limit: int, window_seconds: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("rate_limit_per_minute must be at least 1")
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self.limit = limit
        self.window_seconds = window_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # When each of the last ``limit`` requests finished: O(limit) memory whatever the run.
        self._finished: collections.deque[float] = collections.deque(maxlen=limit)
        self._in_flight = 0

    def try_take(self) -> float:
        """Take a slot and return 0, or return how long to wait before trying again."""
        with self._lock:
            now = self._monotonic()
            while self._finished and self._finished[0] + self.window_seconds <= now:
                self._finished.popleft()
            if len(self._finished) + self._in_flight < self.limit:
                self._in_flight += 1
                return 0.0
            if self._finished:
                return max(self._finished[0] + self.window_seconds - now, 0.001)
            return PACER_POLL_SECONDS  # every slot is a request in flight: one ends soon

    def give_back(self) -> None:
        """The request that took a slot has finished (answered or failed)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            self._finished.append(self._monotonic())
