"""One live line on a terminal saying what a long run is doing; nothing at all anywhere else.

Shown only when stderr is a terminal and the output is not ``-q`` or ``--log-format json`` (the CLI
decides, :func:`activate`): under cron, systemd or a pipe, stderr stays exactly the log lines. Code
anywhere reports through :func:`current`, which is a do-nothing object when no line is shown, so a
report costs one attribute lookup. The line is cleared before each log line and drawn again after it
(job.logs), and a ticker redraws it while a wait counts down. It holds counts, list names and
durations: never a token, a code or a URL's query.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import IO, Any

# At most this often is the line redrawn for a change; a countdown ticks once a second.
REDRAW_SECONDS = 0.1
TICK_SECONDS = 0.5
# The longest line drawn: a terminal wraps a longer one, and \r then no longer clears it.
MAX_WIDTH = 100


class NoProgress:
    """What :func:`current` returns when no line is shown: every report does nothing."""

    lock: AbstractContextManager[Any] = nullcontext()

    def update(self, **fields: Any) -> None:
        pass

    def waiting(self, seconds: float, why: str) -> None:
        pass

    def done_waiting(self) -> None:
        pass

    def clear(self) -> None:
        pass

    def redraw(self) -> None:
        pass


class Progress(NoProgress):
    """The live line on ``stream`` (a terminal)."""

    def __init__(self, stream: IO[str], *, monotonic: Any = time.monotonic) -> None:
        self._stream = stream
        self._monotonic = monotonic
        self.lock = threading.RLock()
        self._fields: dict[str, Any] = {}
        self._wait_until: float | None = None
        self._wait_why = ""
        self._shown = ""
        self._drawn_at = 0.0
        self._started = monotonic()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._ticker.start()

    # -- reports --------------------------------------------------------------------------------------

    def update(self, **fields: Any) -> None:
        with self.lock:
            self._fields.update(fields)
            if self._monotonic() - self._drawn_at >= REDRAW_SECONDS:
                self._draw()

    def waiting(self, seconds: float, why: str) -> None:
        with self.lock:
            self._wait_until = self._monotonic() + seconds
            self._wait_why = why
            self._draw()

    def done_waiting(self) -> None:
        with self.lock:
            self._wait_until = None
            self._draw()

    # -- drawing --------------------------------------------------------------------------------------

    def text(self) -> str:
        """The line as it would be drawn now."""
        fields = self._fields
        parts: list[str] = []
        if "fleet_done" in fields:
            # A fleet run's connections report their lists and waits too: its own counts say more.
            elapsed = max(self._monotonic() - self._started, 0.001)
            due = f" of {fields['fleet_due']} due" if fields.get("fleet_due") is not None else ""
            line = (f"aweber-job: run --all: {fields['fleet_done']}{due} done, "
                    f"{fields.get('fleet_running', 0)} running, {fields.get('fleet_failing', 0)} failing, "
                    f"{fields['fleet_done'] / elapsed * 60:.0f}/min")
            return line[:MAX_WIDTH]
        else:
            if fields.get("phase"):
                parts.append(str(fields["phase"]))
            if fields.get("list_count"):
                parts.append(f"list {fields.get('list_index', 0)} of {fields['list_count']} "
                             f"({fields.get('list_name', '')})")
            if fields.get("requests") is not None:
                parts.append(f"{fields['requests']} requests")
            if fields.get("found") is not None:
                parts.append(f"{fields['found']} new subscribers")
        if self._wait_until is not None:
            left = max(0.0, self._wait_until - self._monotonic())
            parts.append(f"{self._wait_why}: {left:.0f} s left")
        line = "aweber-job: " + ", ".join(parts) if parts else ""
        return line if len(line) <= MAX_WIDTH else line[: MAX_WIDTH - 1] + "…"

    def _draw(self) -> None:
        line = self.text()
        self._drawn_at = self._monotonic()
        if line == self._shown:
            return
        self._write("\r\x1b[2K" + line)
        self._shown = line

    def clear(self) -> None:
        """Erase the line (before a log line is written)."""
        if self._shown:
            self._write("\r\x1b[2K")
            self._shown = ""

    def redraw(self) -> None:
        """Draw the line again (after a log line)."""
        self._draw()

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a terminal that went away: the run goes on without its line

    def _tick(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            with self.lock:
                if self._wait_until is not None or "fleet_done" in self._fields:
                    self._draw()

    def close(self) -> None:
        """Stop the ticker and erase the line."""
        self._stop.set()
        with self.lock:
            self.clear()


_CURRENT: NoProgress = NoProgress()


def current() -> NoProgress:
    """The live line, or the do-nothing stand-in for it."""
    return _CURRENT


def activate(stream: IO[str]) -> Progress:
    """Show the line on ``stream`` from now on (the CLI checks that it is a terminal)."""
    global _CURRENT
    progress = Progress(stream)
    _CURRENT = progress
    return progress


def deactivate() -> None:
    """Erase the line and stop showing it."""
    global _CURRENT
    progress, _CURRENT = _CURRENT, NoProgress()
    if isinstance(progress, Progress):
        progress.close()
