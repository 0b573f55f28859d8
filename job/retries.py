"""The one retry policy: retry only errors marked retryable, with jittered exponential backoff,
honouring Retry-After, bounded by attempts and by a deadline measured on an injected clock.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from job.errors import JobError

log = logging.getLogger(__name__)

T = TypeVar("T")

INITIAL_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
MAX_ATTEMPTS = 10


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, JobError) and exc.retryable


class _WaitBackoffOrRetryAfter(wait_base):
    """Full-jitter exponential backoff, but never less than the server's Retry-After."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __call__(self, retry_state: RetryCallState) -> float:
        attempt = retry_state.attempt_number
        ceiling = min(MAX_BACKOFF_SECONDS, INITIAL_BACKOFF_SECONDS * 2 ** (attempt - 1))
        backoff: float = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(exc, "retry_after_seconds", None)
        if isinstance(retry_after, (int, float)):
            return float(retry_after)
        return backoff


class _StopAtDeadline(stop_base):
    """Stop when the next wait would end past the deadline (so a Retry-After beyond it is not slept)."""

    def __init__(self, deadline_seconds: float, clock: Callable[[], float], started: float) -> None:
        self._deadline = deadline_seconds
        self._clock = clock
        self._started = started

    def __call__(self, retry_state: RetryCallState) -> bool:
        elapsed = self._clock() - self._started
        return elapsed + retry_state.upcoming_sleep > self._deadline


def call_with_retries(
    attempt: Callable[[], T],
    *,
    deadline_seconds: float,
    what: str,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    max_attempts: int = MAX_ATTEMPTS,
    rng: random.Random | None = None,
) -> T:
    """Call ``attempt`` until it succeeds or raises a non-retryable error, within the bounds.

    The last retryable error is re-raised as it is when the bounds are reached.
    """

    started = clock()

    def announce(retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        # Said once, with the first retry: how long a person watching a stuck run should expect it to try.
        bounds = ""
        if retry_state.attempt_number == 1:
            left = max(deadline_seconds - (clock() - started), 0.0)
            bounds = f"; it keeps trying for up to {left:.0f} s more, {max_attempts} attempts in all"
        log.warning(
            "%s failed (%s); retrying in %.1f s (attempt %d)%s",
            what, exc, retry_state.upcoming_sleep, retry_state.attempt_number + 1, bounds,
        )

    retrying = Retrying(
        retry=retry_if_exception(_is_retryable),
        wait=_WaitBackoffOrRetryAfter(rng or random.Random()),
        stop=stop_after_attempt(max_attempts) | _StopAtDeadline(deadline_seconds, clock, started),
        sleep=sleep,
        before_sleep=announce,
        reraise=True,
    )
    return retrying(attempt)
