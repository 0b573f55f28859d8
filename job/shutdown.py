"""The one way a run stops when asked: SIGTERM, SIGINT, SIGHUP (and a second one), or its time limit.

A signal never ends the process where it stands: a refresh token in flight would die with it. It sets
one flag that every part of a run looks at before it starts something that cannot be undone:

- no refresh begins, and no attempt or retry of one is sent (the keeper and the token call ask
  :meth:`Shutdown.check_may_send` right before each send); a connection claimed but not yet
  refreshed is given back unspent;
- a refresh whose request is already out is waited for and its tokens saved; the save gives up on the
  store in time to write a rescue file before the grace ends (:meth:`Shutdown.cap`);
- a task's API requests and waits end at once (the run's time limit does the same); its output so far
  is flushed and the state that covers it saved, so the next run neither repeats nor skips anything;
- the process exits within ``AWEBER_SHUTDOWN_GRACE`` seconds with 75 (try again later).

A second signal changes nothing but the log: the path is already the fastest one that loses nothing.
Only a request whose abandonment loses nothing (an API GET in the main thread, inside
:meth:`Shutdown.interruptible`) is cut short by the signal itself.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from job.errors import RunTimeoutError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A save still retrying when a stop came gives up this long before the grace ends, to write its rescue file.
RESCUE_MARGIN_SECONDS = 3.0
# However late it is, a save after a refresh gets this long with the store before it falls back to a rescue file.
LAST_SAVE_TRY_SECONDS = 2.0


class StoppedError(RunTimeoutError):
    """The run was asked to stop before something irreversible (a refresh) was sent: nothing spent (75).

    A RunTimeoutError: met in the middle of a task (a refresh the task needed), the task's output so far is
    flushed and its state saved, as when the run's time limit ends it.
    """


class Interrupted(BaseException):
    """Raised in the main thread by a stop signal inside :meth:`Shutdown.interruptible` (not an Exception:
    no library on the way may swallow it)."""


def boottime() -> float:
    """Seconds on a clock that never goes back and keeps counting while the machine is suspended."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux: the monotonic clock is the best there is
        return time.monotonic()


_CURRENT: list[Shutdown] = []


def current() -> Shutdown | None:
    """The stop request whose signal handlers are installed now (innermost), or None."""
    return _CURRENT[-1] if _CURRENT else None


class Shutdown:
    """Whether, since when and why the run was asked to stop; installed as the handler of the stop signals."""

    def __init__(self, grace_seconds: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.grace_seconds = grace_seconds
        self.event = threading.Event()
        self.reason: str | None = None
        self._monotonic = monotonic
        self._requested_at: float | None = None
        self._interruptible_thread: int | None = None
        self._lock = threading.Lock()
        # Says what stopping means where it happens (a fleet run counts what it finishes); else a general line.
        self.announce: Callable[[str], None] | None = None

    # -- asking -------------------------------------------------------------------------------------

    def request(self, reason: str) -> bool:
        """Ask the run to stop (idempotent); True the first time."""
        with self._lock:
            if self._requested_at is not None:
                return False
            self._requested_at = self._monotonic()
            self.reason = reason
        self.event.set()
        return True

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def seconds_left(self) -> float | None:
        """Seconds of the grace left; None when no stop was asked for."""
        if self._requested_at is None:
            return None
        return self.grace_seconds - (self._monotonic() - self._requested_at)

    def cap(self, margin_seconds: float = RESCUE_MARGIN_SECONDS) -> float | None:
        """The monotonic time by which a wait must end to leave ``margin_seconds`` of the grace; None: no stop."""
        if self._requested_at is None:
            return None
        return self._requested_at + max(0.0, self.grace_seconds - margin_seconds)

    def check_may_send(self, what: str) -> None:
        """Raise StoppedError when a stop was asked for: ``what`` (a refresh, its retry) is not sent."""
        if self.requested:
            raise StoppedError(
                f"the run was asked to stop ({self.reason}) before {what} was sent; nothing was spent",
                hint="the next run refreshes as usual",
            )

    # -- signals ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[Shutdown]:
        """Route TERM, INT and HUP to :meth:`request` while the block runs (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous: dict[signal.Signals, Any] = {}
        for stop_signal in STOP_SIGNALS:
            previous[stop_signal] = signal.signal(stop_signal, self._on_signal)
        _CURRENT.append(self)
        try:
            yield self
        finally:
            _CURRENT.remove(self)
            for stop_signal, handler in previous.items():
                signal.signal(stop_signal, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.request(name):
            if self.announce is not None:
                self.announce(name)
            else:
                log.warning(
                    "%s: stopping: nothing new is started; a refresh already sent is waited for and saved; "
                    "exiting within %g s", name, self.grace_seconds,
                )
        else:
            left = self.seconds_left() or 0.0
            log.warning("%s again: already stopping (%s), %.0f s of the grace left; a refresh in flight is "
                        "still saved first", name, self.reason, max(0.0, left))
        if self._interruptible_thread == threading.get_ident():
            raise Interrupted

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Inside the block, a stop signal raises :class:`Interrupted` in this thread at once (main thread only:
        for a request whose answer can be given up without losing anything)."""
        if threading.current_thread() is not threading.main_thread() or self._interruptible_thread is not None:
            yield
            return
        self._interruptible_thread = threading.get_ident()
        try:
            if self.requested:
                raise Interrupted
            yield
        finally:
            self._interruptible_thread = None
