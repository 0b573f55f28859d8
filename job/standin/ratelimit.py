"""AWeber's API rate limit: at most N requests per account in any rolling window (docs/aweber-api.md §3).

Only admitted requests fill the window, so a client that hammers a refusing server is let in
again as soon as its oldest admitted request is ``window_seconds`` old — AWeber's "you will be
unable to make API requests for 60 seconds" for a client that stops and waits. The window runs
on a monotonic clock, not the injectable wall clock, so a frozen test clock cannot jam it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence


class RateLimiter:
    """A rolling-window request limit kept per bucket (here: per account)."""

    def __init__(
        self,
        limit: int | None,
        window_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError("the rate limit must be at least one request, or None for no limit")
        if window_seconds <= 0:
            raise ValueError("the rate-limit window must be positive")
        self.limit = limit
        self.window_seconds = window_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._admitted: dict[Hashable, deque[float]] = {}

    def admit(self, buckets: Sequence[Hashable]) -> bool:
        """Count one request against every bucket and return True, or return False if any bucket is full."""
        if self.limit is None:
            return True
        with self._lock:
            now = self._monotonic()
            windows = [self._admitted.setdefault(bucket, deque()) for bucket in buckets]
            for window in windows:
                while window and window[0] <= now - self.window_seconds:
                    window.popleft()
            if any(len(window) >= self.limit for window in windows):
                return False
            for window in windows:
                window.append(now)
            return True
