"""One run (docs/design.md §1): resolve the task, lock, load, reserve, refresh, save, task, save its state.

The caller passes a :class:`RunOutcome` to fill as the run goes, so monitoring can report what a
failed run did too.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Protocol

import requests

from job import progress
from job.api.client import ApiClient
from job.api.pacing import Pacer
from job.config import Settings, parse_look_back_seconds
from job.errors import (
    EXIT_OK,
    ConfigError,
    JobError,
    RunTimeoutError,
    StorageError,
    TaskError,
    TaskStoppedError,
    UsageError,
)
from job.run.keeper import TokenKeeper
from job.shutdown import Shutdown
from job.stores import connection_store
from job.stores.base import ConnectionStore
from job.stores.file.lock import lock_path_for
from job.stores.file.store import state_file_for
from job.tasks import Task, TaskContext, resolve_task

log = logging.getLogger(__name__)



DEFAULT_SINCE = "24h"
EARLIEST_SINCE = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class RunOptions:
    """What ``run`` was asked to do; ``task=None`` means refresh only.

    ``task`` is a name to resolve, or a task already made (the Singer tap's, job/run/singer.py).
    ``task_origin`` says where the task's name came from (``--task``, ``AWEBER_TASK in …``), for the
    message about a name that is not known; ``since=None`` means ``--since`` was not given.
    """

    task: str | Task | None
    output: str | None = None
    fmt: str = "jsonl"
    since: str | None = None
    task_origin: str | None = None


@dataclass
class RunOutcome:
    """What a run did, filled in as it goes (for the exit code, logs, pings and metrics)."""

    exit_code: int = EXIT_OK
    task: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    refreshes: int = 0
    refresh_seconds: float | None = None
    token_requests: int = 0
    api_requests: int = 0
    access_expires_at: float | None = None
    new_subscribers: int | None = None
    # The one AWeber account the task read, when it read exactly one (recorded by a database store).
    account_id: int | None = None
    # 403 rate-limit answers from AWeber, and seconds spent waiting for the pacer (AWEBER_RATE_LIMIT).
    rate_limited: int = 0
    pacing_wait_seconds: float = 0.0
    # Whether the run held the connection (its lock or lease): a run turned away before that did not run it.
    held_connection: bool = False

    @property
    def http_requests(self) -> int:
        return self.token_requests + self.api_requests


class TaskState(Protocol):
    """Where a task's state comes from and goes to: the store's (a run), or the orchestrator's (the Singer tap,
    whose state travels in ``--state`` and STATE messages). ``save`` is called only after the output is flushed."""

    def load(self, task_name: str) -> dict[str, Any]: ...

    def save(self, task_name: str, state: dict[str, Any]) -> None: ...

    def location(self, task_name: str) -> str: ...


class _StoreState:
    """The task state kept by the connection's store (the state file, or the database's row)."""

    def __init__(self, store: ConnectionStore[Any]) -> None:
        self._store = store

    def load(self, task_name: str) -> dict[str, Any]:
        return self._store.load_state(task_name)

    def save(self, task_name: str, state: dict[str, Any]) -> None:
        self._store.save_state(task_name, state)

    def location(self, task_name: str) -> str:
        return self._store.state_location(task_name)


def since_duration(value: str) -> timedelta | None:
    """The ``--since`` value as a duration (``24h``, ``7d``...), or None when it is a date."""
    seconds = parse_look_back_seconds(value)
    return timedelta(seconds=seconds) if seconds is not None else None


def parse_since(value: str, now: datetime) -> datetime:
    """``24h``, ``90m``, ``7d``, ``2w``, a date ``2026-11-01`` or an ISO date-time → an aware UTC instant.

    UsageError (64) for anything else, a moment in the future, or one before 1970 (no subscriber is
    that old, and the filter days computed from it would fall off the calendar).
    """
    try:
        duration = since_duration(value)
        if duration is not None:
            if duration <= timedelta(0):
                raise UsageError(f"--since must be a positive duration, got {value!r}")
            when = now - duration
        else:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise UsageError(
            f"--since takes a duration such as 24h, 7d, 90m or a date such as 2026-11-01, got {value!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if when > now:
        raise UsageError(f"--since {value!r} is in the future")
    if when < EARLIEST_SINCE:
        raise UsageError(f"--since {value!r} is before {EARLIEST_SINCE.date().isoformat()}; no subscriber is that old")
    return when.astimezone(timezone.utc)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same resolved path, or (both existing) the same device and inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return False


def own_file_collision(path: Path, settings: Settings, task_name: str | None) -> tuple[str, Path] | None:
    """Which of the job's own files ``path`` is (what it is called, and its path), or None.

    The token file, its lock, and the state files of ``task_name`` and of the configured task: a
    metrics or output file written there would destroy the tokens or the task's watermark.
    """
    own: list[tuple[str, Path]] = [
        ("token file", settings.token_file),
        ("lock file", lock_path_for(settings.token_file)),
    ]
    for name in dict.fromkeys(n for n in (task_name, settings.task) if n):
        own.append(("task state file", state_file_for(settings.state_dir, name)))
    for label, own_path in own:
        if _same_file(path, own_path):
            return label, own_path
    return None


def check_own_files(settings: Settings, *, output: str | None, task_name: str | None) -> None:
    """Raise ConfigError (78) when AWEBER_METRICS_FILE or ``--output`` is one of the job's own files.

    Checked before the lock is taken, so such a mistake costs nothing.
    """
    problems = []
    named = [("AWEBER_METRICS_FILE", settings.metrics_file)]
    if output and output != "-":
        named.append(("--output", Path(output)))
    for option, path in named:
        if path is None:
            continue
        collision = own_file_collision(path, settings, task_name)
        if collision is not None:
            label, own_path = collision
            problems.append(f"{option} {os.path.normpath(path)} is the {label} {own_path}; give it a path of its own")
    if problems:
        raise ConfigError(problems)


def _open_output(path: str | None, stdout: IO[str]) -> tuple[IO[str], bool]:
    """The task's output stream: stdout, or ``path`` opened for appending (created 0600, never through a link)."""
    if not path or path == "-":
        return stdout, False
    _create_output_directory(Path(path).parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        return open(fd, "a", encoding="utf-8", newline=""), True
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ELOOP:
            reason = "it is a symbolic link, and the job does not follow links for the files it writes"
        raise StorageError(f"cannot open the output file {path}: {reason}; nothing was sent to AWeber") from exc


def _create_output_directory(directory: Path) -> None:
    """Create the missing directories above the output file, each 0700; StorageError (73) when it cannot.

    A crontab line copied with only its paths edited should work on its first day: the report holds
    subscribers' addresses, so every directory made for it is private to the job's user.
    """
    missing: list[Path] = []
    while not os.path.lexists(directory):
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for level in reversed(missing):
        try:
            os.mkdir(level, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: it is there, which is all the output needs
        except OSError as exc:
            raise StorageError(
                f"cannot create the output file's directory {level}: {exc.strerror or exc}; nothing was sent to AWeber"
            ) from exc
        log.info("created the directory %s (mode 0700) for the output file", level)


def run_cycle(
    settings: Settings,
    session: requests.Session,
    options: RunOptions,
    *,
    stdout: IO[str],
    outcome: RunOutcome | None = None,
    store: ConnectionStore[Any] | None = None,
    shutdown: Shutdown | None = None,
    pacer_for: Callable[[str], Pacer] | None = None,
    task_state: TaskState | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RunOutcome:
    """Run the cycle; raise JobError subclasses for the CLI to map to exit codes.

    The task's API requests, and every wait between them, end at ``AWEBER_RUN_TIMEOUT`` after this
    call began, or when ``shutdown`` is asked for (a signal: job.shutdown); then the output so far is
    flushed and the task state saved as the task left it (RunTimeoutError, exit 75), so the next run
    continues from there. A stop before the refresh sends nothing (StoppedError, 75).

    ``task_state`` is where the task's state comes from and goes to; by default the store's.
    """
    run_started = monotonic()
    outcome = outcome if outcome is not None else RunOutcome()
    # Everything that can be checked without the token is checked first, so mistakes cost nothing.
    task = _task_of(options)
    now = datetime.fromtimestamp(clock(), tz=timezone.utc)
    since = parse_since(options.since or DEFAULT_SINCE, now) if task else None
    outcome.task = task.name if task else None
    check_own_files(settings, output=options.output if task else None, task_name=task.name if task else None)
    output, close_output = _open_output(options.output, stdout) if task else (stdout, False)
    store = store if store is not None else connection_store(settings, shutdown=shutdown)
    states: TaskState = task_state if task_state is not None else _StoreState(store)
    keeper = TokenKeeper(settings, session, store, clock=clock, monotonic=monotonic, sleep=sleep, shutdown=shutdown)
    try:
        with keeper:
            outcome.held_connection = True
            state = states.load(task.name) if task else {}
            if state and options.since is not None and task is not None and task_state is None:
                # An operator who asked for a look-back and got none would otherwise not know why.
                log.info(
                    "--since %s is used only where task %s has no saved state: it continues from %s",
                    options.since, task.name, states.location(task.name),
                )
            if keeper.legacy_oauth1:
                log.info("the token file holds OAuth 1.0a tokens, which do not expire: nothing to refresh")
            else:
                progress.current().update(phase="refreshing the tokens")
                try:
                    keeper.refresh("refresh on start")
                finally:
                    _copy_refresh_stats(keeper, outcome)
            if task is None:
                return outcome
            progress.current().update(phase=f"task {task.name}")
            api = ApiClient.from_settings(
                session, settings, keeper, clock=clock, monotonic=monotonic, sleep=sleep, run_started=run_started,
                shutdown=shutdown, pacer_for=pacer_for,
            )
            context = TaskContext(
                api=api,
                state=state,
                settings=settings,
                log=logging.getLogger(f"job.task.{task.state_name}"),
                output=output,
                now=lambda: datetime.fromtimestamp(clock(), tz=timezone.utc),
                output_format=options.fmt,
                since=since,
                look_back=since_duration(options.since or DEFAULT_SINCE),
                connection=store.connection if settings.store_url is not None else None,
            )
            try:
                summary = task.function(context)
            except TaskStoppedError as exc:
                # The task stopped where its own trouble began, with its state true to that point.
                context.flush_output()
                states.save(task.name, context.state)
                raise TaskStoppedError(
                    f"task {task.name} stopped: {exc.message}; its state is saved as far as it got, and the next "
                    "run continues from there", hint=exc.hint,
                ) from None
            except RunTimeoutError as exc:
                # Out of time, not failed: what was done is kept (a task moves its state only past
                # output it has flushed), so the next run picks up where this one stopped.
                context.flush_output()
                states.save(task.name, context.state)
                raise RunTimeoutError(
                    f"{exc.message}; the output so far is flushed and the task state saved: "
                    "the next run continues from there"
                ) from None
            except JobError:
                raise
            except Exception as exc:
                raise TaskError(f"task {task.name} failed: {type(exc).__name__}: {exc}") from exc
            finally:
                outcome.api_requests = api.requests_made
                outcome.rate_limited = api.rate_limited
                outcome.pacing_wait_seconds = api.pacing_wait_seconds
                _copy_refresh_stats(keeper, outcome)
                outcome.new_subscribers = context.counters.get("new_subscribers")
                outcome.account_id = context.counters.get("account_id")
            context.flush_output()
            states.save(task.name, context.state)
            outcome.summary = dict(summary or {})
            return outcome
    finally:
        if close_output:
            output.close()


def _task_of(options: RunOptions) -> Task | None:
    """The task to run: None for a refresh only, the task given, or the one its name resolves to (UsageError, 64)."""
    if isinstance(options.task, Task):
        return options.task
    return resolve_task(options.task, origin=options.task_origin) if options.task else None


def _copy_refresh_stats(keeper: TokenKeeper, outcome: RunOutcome) -> None:
    outcome.refreshes = keeper.stats.refreshes
    outcome.refresh_seconds = keeper.stats.last_refresh_seconds
    outcome.token_requests = keeper.stats.token_requests
    try:
        outcome.access_expires_at = keeper.tokens.expires_at
    except RuntimeError:
        pass
