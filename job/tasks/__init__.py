"""The task protocol: a callable taking a :class:`TaskContext`, returning None or a small summary.

Tasks are found by name in the entry-point group ``aweber_job.tasks`` (the built-ins are
registered there too), by a ``package.module:callable`` path, or by a file, ``./mytask.py:callable``
(docs/tasks.md). Resolution happens before the
lock and the refresh, so a typo costs no token.

The state is saved when the task returns, and also when the run reaches ``AWEBER_RUN_TIMEOUT``
(the API client raises RunTimeoutError): a task should therefore move its state only past output
it has flushed (:meth:`TaskContext.flush_output`), so that what is saved then is true.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from job.errors import UsageError, shorten

if TYPE_CHECKING:
    from job.api.client import ApiClient
    from job.config import Settings

ENTRY_POINT_GROUP = "aweber_job.tasks"

# The built-ins, for an uninstalled checkout (``python -m job`` from a source tree) where entry
# points are not registered; installed copies find the same through the group.
BUILTIN_TASKS = {
    "new-subscribers": "job.tasks.new_subscribers:new_subscribers",
    "unsubscribes": "job.tasks.unsubscribes:unsubscribes",
    "list-stats": "job.tasks.list_stats:list_stats",
    "noop": "job.tasks.noop:noop",
}

# The tasks that are also streams (job/tasks/streams.py), in the order several of them run in one
# run (``--task new-subscribers,unsubscribes,list-stats``, in any order: the run and its state are the same).
STREAM_TASKS = ("new-subscribers", "unsubscribes", "list-stats")
# Imported by name when asked for, like every built-in: the streams module imports this package.
SEVERAL_STREAMS = "job.tasks.streams:several_streams"


@dataclass
class TaskContext:
    """What a task gets: the API, its persistent state, configuration, a logger, output, the clock.

    ``since`` is where a first run looks back to by the local clock (``--since``); ``look_back``
    is the ``--since`` duration when one was given, so that a task can count it back from a better
    idea of the present, such as the server's Date (``api.server_date``).
    """

    api: ApiClient
    state: dict[str, Any]
    settings: Settings
    log: logging.Logger
    output: IO[str]
    now: Callable[[], datetime]
    output_format: str = "jsonl"
    since: datetime | None = None
    look_back: timedelta | None = None
    # The connection's name when the store is a database (several connections' output may meet in one
    # file), for a ``connection`` field on every output line; None for the token file.
    connection: str | None = None
    counters: dict[str, int] = field(default_factory=dict)

    def flush_output(self) -> None:
        """Flush the output and, for a file, fsync it: call before moving a watermark."""
        self.output.flush()
        try:
            fileno = self.output.fileno()
        except (OSError, ValueError, AttributeError):
            return
        try:
            if not os.isatty(fileno):
                os.fsync(fileno)
        except OSError:
            pass  # pipes and sockets cannot be fsynced; flushing is all there is


TaskFunction = Callable[[TaskContext], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Task:
    """A resolved task: the name it was asked by and the callable."""

    name: str
    function: TaskFunction

    @property
    def state_name(self) -> str:
        """A file-name-safe form of the name, for the state file."""
        return "".join(c if c.isalnum() or c in "._-" else "_" for c in self.name)


@functools.lru_cache(maxsize=1)
def _registered() -> dict[str, str]:
    """Task name → ``module:attr`` from the entry-point group, with the built-ins as fallback.

    Read once per process: scanning every installed distribution's metadata costs milliseconds, which a
    fleet run would otherwise pay for each connection (half its CPU, measured with yappi).
    """
    found = dict(BUILTIN_TASKS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def _given_by(origin: str | None) -> str:
    return f" (given by {origin})" if origin and origin != "default" else ""


def _load(target: str, name: str, origin: str | None = None) -> TaskFunction:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name and Path(f"{module_name}.py").is_file():
            hint = f"; to load the file {module_name}.py here, give --task ./{module_name}.py:{attr}"
        raise UsageError(
            f"task {name!r}{_given_by(origin)} cannot be loaded from {target}: {type(exc).__name__}: {exc}{hint}"
        ) from None
    return _callable(obj, name, target, origin)


def _callable(obj: Any, name: str, target: str, origin: str | None) -> TaskFunction:
    """``obj`` as a task function; UsageError naming what it is when it cannot be called."""
    if not callable(obj):
        where = "" if target == name else f" ({target})"
        raise UsageError(
            f"task {name!r}{_given_by(origin)}{where} is not callable (its type is {type(obj).__name__}); "
            "a task is a function taking the context"
        )
    function: TaskFunction = obj
    return function


def is_task_file(name: str) -> bool:
    """Whether ``name`` names a task by file, ``PATH.py:callable`` (``./mytask.py:fn``, ``/opt/t/mytask.py:fn``)."""
    path, sep, attr = name.rpartition(":")
    return bool(sep and attr) and path.endswith(".py")


def _load_file(name: str, origin: str | None) -> Task:
    """The task ``PATH.py:callable``: the file loaded as a module of its own, the callable taken from it.

    The task is named by the file's absolute path, so its state is the same whichever working directory
    or spelling of the path a run is given (cron and a run by hand share it).
    """
    given, _, attr = name.rpartition(":")
    path = Path(given).expanduser()
    try:
        path = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise UsageError(f"task {name!r}{_given_by(origin)}: there is no file {given}") from None
    if not path.is_file():
        raise UsageError(f"task {name!r}{_given_by(origin)}: {given} is not a file")
    module_name = "aweber_job_task_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"task {name!r}{_given_by(origin)}: {given} cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - whatever the file does wrong, one line names it
            del sys.modules[module_name]
            raise UsageError(
                f"task {name!r}{_given_by(origin)}: loading {given} failed: {type(exc).__name__}: {shorten(exc)}"
            ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"task {name!r}{_given_by(origin)}: {given} defines no {attr}")
        obj = getattr(obj, part)
    return Task(f"{path}:{attr}", _callable(obj, name, name, origin))


def resolve_task(name: str, *, origin: str | None = None) -> Task:
    """Find a task by registered name, ``package.module:callable`` or ``PATH.py:callable``; UsageError (64)
    when unknown, missing or not callable.

    ``origin`` (``--task``, ``AWEBER_TASK in /etc/aweber-job/env``) is named in the error, so the
    operator knows which file or command line holds the name to fix.
    """
    registered = _registered()
    if name in registered:
        return Task(name, _load(registered[name], name, origin))
    if is_task_file(name):
        return _load_file(name, origin)
    if "," in name:
        return _several(name, origin)
    if ":" in name:
        return Task(name, _load(name, name, origin))
    known = ", ".join(sorted(registered))
    raise UsageError(
        f"unknown task {name!r}{_given_by(origin)}; known tasks: {known} "
        "(or give package.module:callable or ./file.py:callable)"
    )


def _several(name: str, origin: str | None) -> Task:
    """Several stream tasks in one run, ``new-subscribers,unsubscribes``: named in STREAM_TASKS order, so any
    spelling of one choice shares one state; UsageError (64) for anything else in the list."""
    parts = [part.strip() for part in name.split(",")]
    wrong = [part for part in parts if part not in STREAM_TASKS]
    if wrong:
        raise UsageError(
            f"task {name!r}{_given_by(origin)}: {wrong[0]!r} cannot run with others; a comma joins tasks of "
            f"{', '.join(STREAM_TASKS)} (docs/tasks.md)"
        )
    chosen = [task for task in STREAM_TASKS if task in parts]
    if len(chosen) == 1:
        return resolve_task(chosen[0], origin=origin)
    module_name, _, attr = SEVERAL_STREAMS.partition(":")
    factory: Callable[[list[str]], TaskFunction] = getattr(importlib.import_module(module_name), attr)
    return Task(",".join(chosen), factory(chosen))


# reST inline markup in docstrings: :role:`text`, ``literal``, `text`, **strong**, *emphasis*.
_REST_MARKUP = re.compile(r":[a-z:]+:`([^`]*)`|``([^`]*)``|`([^`]*)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")


def plain_text(line: str) -> str:
    """``line`` without reST inline markup, as a terminal should show it: ``run --task noop`` → run --task noop."""
    return _REST_MARKUP.sub(lambda match: next(group for group in match.groups() if group is not None), line)


def known_tasks() -> list[tuple[str, str]]:
    """(name, first docstring line as plain text) for every registered task."""
    rows = []
    for name, target in sorted(_registered().items()):
        try:
            doc = (_load(target, name).__doc__ or "").strip().splitlines()
        except UsageError as exc:
            doc = [f"(cannot be loaded: {exc})"]
        rows.append((name, plain_text(doc[0]) if doc else ""))
    return rows
