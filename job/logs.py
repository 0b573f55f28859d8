"""Logging to stderr as text or JSON lines, with every known secret redacted at the last step.

Code logs fingerprints, never secrets. As a second line of defence every handler runs each final
line through :class:`Redactor`, which knows every secret value the run has seen (tokens, client
secret, codes, verifiers) and replaces any occurrence with its fingerprint — third-party loggers
(urllib3, requests) included. A bounded tail of the redacted lines is kept for the failure ping.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import sys
import threading
import time
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

from job import progress

if TYPE_CHECKING:
    from collections.abc import Iterator

# Lines of log kept for the monitoring ping's failure body.
TAIL_LINES = 40
# Secrets shorter than this are not redacted as substrings (they would match ordinary text).
MIN_SECRET_LENGTH = 6

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def fingerprint(secret: str) -> str:
    """Return the first 8 hex digits of the SHA-256 of ``secret``: safe to log, enough to compare."""

    # surrogatepass: a token that is not valid text still gets a fingerprint instead of an exception.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def utc_time(at: float) -> str:
    """A moment as the job shows it to people and in JSON: ``2026-11-28T19:40:00Z``."""

    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_stamp(at: float) -> str:
    """A moment in a file name the job makes: ``20261128T194000Z`` (no colons, sorts by time)."""

    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def one_line(text: str) -> str:
    """``text`` with every character that is not printable (newlines, ``\\r``, escapes, ``\\u2028``...)
    written as repr writes it, so whatever a message interpolates cannot split or restyle a line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class Redactor:
    """Replaces every registered secret value in a string with ``[redacted:<fingerprint>]``.

    A secret registered inside :meth:`scope` (one connection of a fleet run, in its worker thread) is
    forgotten when the last scope that registered it ends, unless it was also registered outside any
    scope: the cost of a line stays that of the connections in flight, not of every one done so far.
    """

    def __init__(self) -> None:
        # Each form a secret may take in a line, with the fingerprint of the secret itself.
        self._secrets: dict[str, str] = {}
        # The forms, longest first (a secret inside a longer one is masked by the longer), made again on the first
        # line after a change: an import of many token files registers thousands, one at a time.
        self._ordered: list[tuple[str, str]] = []
        self._stale = False
        self._lock = threading.Lock()
        self._permanent: set[str] = set()
        self._scoped: dict[str, int] = {}
        self._local = threading.local()

    def add(self, *values: str | None) -> None:
        """Register secret values; empty and very short ones are ignored."""
        scope: set[str] | None = getattr(self._local, "scope", None)
        with self._lock:
            changed = False
            for value in values:
                if not value or len(value) < MIN_SECRET_LENGTH:
                    continue
                if scope is None:
                    self._permanent.add(value)
                elif value not in scope:
                    scope.add(value)
                    self._scoped[value] = self._scoped.get(value, 0) + 1
                # A text log line shows the secret's control characters escaped: mask that form too.
                for shown in (value, one_line(value)):
                    if shown not in self._secrets:
                        self._secrets[shown] = fingerprint(value)
                        changed = True
            if changed:
                self._reorder()

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Secrets registered by this thread inside the block are forgotten after it (see the class docstring)."""
        outer = getattr(self._local, "scope", None)
        mine: set[str] = set()
        self._local.scope = mine
        try:
            yield
        finally:
            self._local.scope = outer
            with self._lock:
                for value in mine:
                    left = self._scoped.get(value, 0) - 1
                    if left > 0:
                        self._scoped[value] = left
                        continue
                    self._scoped.pop(value, None)
                    if value not in self._permanent:
                        for shown in (value, one_line(value)):
                            self._secrets.pop(shown, None)
                self._reorder()

    def known(self) -> int:
        """How many forms of secrets are registered now."""
        return len(self._secrets)

    def _reorder(self) -> None:
        """Note a change (under the lock): the order is made again when a line next needs it."""
        self._stale = True

    def _in_order(self) -> list[tuple[str, str]]:
        if self._stale:
            with self._lock:
                if self._stale:
                    self._ordered = sorted(self._secrets.items(), key=lambda item: len(item[0]), reverse=True)
                    self._stale = False
        return self._ordered

    def redact(self, text: str) -> str:
        ordered = self._in_order()
        for secret, secret_print in ordered:
            if secret in text:
                text = text.replace(secret, f"[redacted:{secret_print}]")
        return text


REDACTOR = Redactor()


class TextFormatter(logging.Formatter):
    """``aweber-job: level: message`` — what cron mails and the journal show.

    Structured fields are left to the JSON format: the messages already say them in words. One record is
    one line (a traceback at -v excepted): a connection name or server text in a message is escaped.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = f"aweber-job: {record.levelname.lower()}: {one_line(record.getMessage())}"
        if record.exc_info and record.levelno <= logging.DEBUG:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``msg``, ``logger`` and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "logger": record.name,
        }
        payload.update(_extra_fields(record))
        if record.exc_info and record.levelno <= logging.DEBUG:
            payload["exc"] = self.formatException(record.exc_info)
        # json escapes every C0 control; these three line breaks (to str.splitlines and others) it leaves.
        line = json.dumps(payload, default=str, ensure_ascii=False)
        return line.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class RedactingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that redacts each final line and keeps a tail of them."""

    def __init__(self, stream: IO[str], redactor: Redactor, tail: collections.deque[str]) -> None:
        super().__init__(stream)
        self.redactor = redactor
        self.tail = tail

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.redact(super().format(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            self.tail.append(line)
            # On a terminal the live progress line is cleared first and drawn again after.
            live = progress.current()
            with live.lock:
                live.clear()
                self.stream.write(line + "\n")
                self.flush()
                live.redraw()
        except Exception:  # noqa: BLE001 - logging must never end the run
            self.handleError(record)


class TailHandler(logging.Handler):
    """Keeps the redacted tail even for lines below the console level (for the failure ping)."""

    def __init__(self, redactor: Redactor, tail: collections.deque[str], formatter: logging.Formatter) -> None:
        super().__init__(logging.INFO)
        self.redactor = redactor
        self.tail = tail
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.tail.append(self.redactor.redact(self.format(record)))
        except Exception:  # noqa: BLE001 - logging must never end the run
            self.handleError(record)


LOG_TAIL: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)


# The connection a thread of ``run --all`` is running: its task's log lines name it (the text format shows no
# fields), and carry it as the ``connection`` field in JSON.
_RUNNING = threading.local()


@contextlib.contextmanager
def naming_connection(name: str) -> Iterator[None]:
    """Inside the block, every log line of a task (loggers ``job.task.*``) of this thread names connection ``name``."""
    outer = getattr(_RUNNING, "name", None)
    _RUNNING.name = name
    try:
        yield
    finally:
        _RUNNING.name = outer


class _NamingTheConnection(logging.Filter):
    """On each handler: a task's record made inside :func:`naming_connection` names that connection. A filter, not a
    record factory: it runs after a record's ``extra`` is applied, so a task that names a connection itself keeps
    its own; the second handler finds the record named already."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = getattr(_RUNNING, "name", None)
        if name is not None and record.name.startswith("job.task.") and not hasattr(record, "connection"):
            record.connection = name
            if isinstance(record.msg, str):
                record.msg = f"connection '{name.replace('%', '%%')}': {record.msg}"
        return True


def configure_logging(
    *, verbosity: int = 0, quiet: bool = False, fmt: str = "text", stream: IO[str] | None = None
) -> None:
    """Send logs to stderr: WARNING with ``quiet``, INFO by default, DEBUG with ``-v``.

    ``-vv`` also lets urllib3's connection lines through (still redacted).
    """
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    LOG_TAIL.clear()
    level = logging.WARNING if quiet else (logging.DEBUG if verbosity >= 1 else logging.INFO)
    console = RedactingHandler(stream or sys.stderr, REDACTOR, collections.deque(maxlen=TAIL_LINES))
    console.setFormatter(formatter)
    console.setLevel(level)
    console.addFilter(_NamingTheConnection())
    root.addHandler(console)
    # The ping's tail keeps INFO lines even under --quiet, so a failure report has context.
    tail = TailHandler(REDACTOR, LOG_TAIL, formatter)
    tail.addFilter(_NamingTheConnection())
    root.addHandler(tail)
    root.setLevel(min(level, logging.INFO))
    third_party = logging.DEBUG if verbosity >= 2 else logging.WARNING
    for name in ("urllib3", "requests"):
        logging.getLogger(name).setLevel(third_party)
    logging.captureWarnings(True)
