"""One live line on a terminal saying what a long run is doing; nothing at all anywhere else.

Shown only when stderr is a terminal and the output is not ``-q`` or ``--log-format json`` (the CLI
decides, :func:`activate`): under cron, systemd or a pipe, stderr stays exactly the log lines. Code
anywhere reports through :func:`current`, which is a do-nothing object when no line is shown, so a
report costs one attribute lookup. The line is cleared before each log line and drawn again after it
(job.logs), and a ticker redraws it while a wait counts down. It holds counts, list names and
durations: never a token, a code or a URL's query.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import IO, Any

# At most this often is the line redrawn for a change; a countdown ticks once a second.
REDRAW_SECONDS = 0.1
TICK_SECONDS = 0.5
# The longest line drawn when the terminal's width is unknown; on a terminal, one column less than its width:
# a terminal wraps a longer line, and \r then no longer clears it.
MAX_WIDTH = 100
# Narrower than this the line is cut anyway.
MIN_WIDTH = 20


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

    def __init__(self, stream: IO[str], *, monotonic: Any = time.monotonic,
                 columns: Callable[[], int | None] | None = None) -> None:
        self._stream = stream
        self._columns = columns if columns is not None else self._terminal_columns
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

    def _terminal_columns(self) -> int | None:
        """The width of the terminal the line is drawn on, read at each draw (it may be resized); None unknown."""
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return None
        return columns if columns > 0 else None

    def width(self) -> int:
        """The longest line to draw now."""
        columns = self._columns()
        return MAX_WIDTH if columns is None else max(columns - 1, MIN_WIDTH)

    def text(self) -> str:
        """The line as it would be drawn now, cut to the terminal's width; a countdown is kept whole at its end."""
        fields = self._fields
        width = self.width()
        if "fleet_done" in fields:
            # A fleet run's connections report their lists and waits too: its own counts say more.
            elapsed = max(self._monotonic() - self._started, 0.001)
            due = f" of {fields['fleet_due']} due" if fields.get("fleet_due") is not None else ""
            line = (f"aweber-job: run --all: {fields['fleet_done']}{due} done, "
                    f"{fields.get('fleet_running', 0)} running, {fields.get('fleet_failing', 0)} failing, "
                    f"{fields['fleet_done'] / elapsed * 60:.0f}/min")
            return _cut(line, width)
        countdown = ""
        if self._wait_until is not None:
            left = max(0.0, self._wait_until - self._monotonic())
            countdown = f"{self._wait_why}: {left:.0f} s left"
        name = str(fields.get("list_name", ""))
        head = self._parts(name)
        natural = len(head) + (len(countdown) + 2 if countdown else 0)
        keep = len(name) - (natural - width) - 1
        if natural > width and name:
            # Too long: the list's name gives way first (all of it if it must), then the rest (_fit).
            head = self._parts(name[:keep] + "…" if keep >= 1 else "")
        return self._fit(head, countdown, width)

    def _parts(self, name: str) -> str:
        """The line's words but the countdown, with the list's name as given ("" when there are none)."""
        fields = self._fields
        parts: list[str] = []
        if fields.get("phase"):
            parts.append(str(fields["phase"]))
        if fields.get("list_count"):
            named = f" ({name})" if name else ""
            parts.append(f"list {fields.get('list_index', 0)} of {fields['list_count']}{named}")
        if fields.get("requests") is not None:
            parts.append(f"{fields['requests']} requests")
        if fields.get("found") is not None:
            parts.append(f"{fields['found']} {fields.get('found_what') or 'new subscribers'}")
        if fields.get("skipped"):
            # The walk starts a day before the watermark, so a list's first pages may hold only those.
            count, why = fields["skipped"]
            parts.append(f"skipping {count} {why}")
        return "aweber-job: " + ", ".join(parts) if parts else ""

    @staticmethod
    def _fit(head: str, countdown: str, width: int) -> str:
        """``head`` and ``countdown`` on one line of at most ``width``, the countdown kept whole at its end."""
        if not head and not countdown:
            return ""
        if not countdown:
            return _cut(head, width)
        if not head:
            return _cut("aweber-job: " + countdown, width)
        line = f"{head}, {countdown}"
        if len(line) <= width:
            return line
        # What is being waited for, and how long still, matters most: the rest gives way to it.
        room = width - len(countdown) - 2
        if room < len("aweber-job: …"):
            return _cut("aweber-job: " + countdown, width)
        return f"{_cut(head, room)}, {countdown}"

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


def _cut(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


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
