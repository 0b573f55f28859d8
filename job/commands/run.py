"""``aweber-job run`` and ``refresh``: one connection's cycle, or ``run --all`` for every due one, with monitoring.

Also the pieces every command that talks to AWeber shares: the HTTP session and the one line an
error ends in.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from job import __version__
from job.config import Settings
from job.errors import EXIT_TASK_FAILED, JobError, TokenNotSavedError, UsageError, naming_the_connection

if TYPE_CHECKING:
    import requests

    from job.run.monitor import Monitor
    from job.run.single import RunOptions, TaskState
    from job.shutdown import Shutdown

log = logging.getLogger("job")


def make_session() -> requests.Session:
    """One HTTP session for the run, naming the job in its User-Agent."""
    import requests  # on use: help, status and the examples start (and work) without it

    session = requests.Session()
    session.headers["User-Agent"] = f"aweber-job/{__version__} (+python-requests {requests.__version__})"
    return session


def report(exc: JobError) -> None:
    """One line on stderr for the operator; CRITICAL when fresh tokens exist only in memory."""
    level = logging.CRITICAL if isinstance(exc, TokenNotSavedError) else logging.ERROR
    log.log(level, "%s", exc, extra={"exit_code": exc.exit_code})


def report_unexpected(exc: Exception) -> None:
    """An unexpected bug still ends in one line (never a traceback for the operator); -v shows where."""
    log.error("unexpected error: %s: %s", type(exc).__name__, exc)
    log.debug("where it happened", exc_info=True)


def run_command(
    settings: Settings, args: argparse.Namespace, out: IO[str], origin_of: Callable[[str], str],
    shutdown: Shutdown, *, refresh_only: bool,
) -> int:
    """The whole cycle of docs/design.md §1 (or steps 1–5 for ``refresh``), with monitoring around it.

    ``origin_of`` names where a variable's value came from (the environment or the env file).
    """
    from job.run.monitor import Monitor
    from job.run.single import RunOptions

    task_option = getattr(args, "task", None)
    if task_option:
        task_origin = "--task"
    elif settings.source.get("AWEBER_TASK"):
        task_origin = f"AWEBER_TASK in {origin_of('AWEBER_TASK')}"
    else:
        task_origin = "default"
    options = RunOptions(
        task=None if refresh_only else (task_option or settings.task),
        task_origin=task_origin,
        output=getattr(args, "output", None),
        fmt=getattr(args, "format", None) or "jsonl",
        since=getattr(args, "since", None),
    )
    session = make_session()
    monitor = Monitor(settings, session)
    if getattr(args, "all", False) or getattr(args, "concurrency", None) is not None:
        return _run_all(settings, args, options, out, monitor, shutdown)
    return run_single(settings, options, out, shutdown, session=session, monitor=monitor)


def run_single(settings: Settings, options: RunOptions, out: IO[str], shutdown: Shutdown, *,
               session: requests.Session | None = None, monitor: Monitor | None = None,
               task_state: TaskState | None = None) -> int:
    """One connection's cycle with monitoring around it; ``task_state`` where the task's state lives (default:
    the store's). The exit code; every error has been reported in one line."""
    from job.run.monitor import Monitor
    from job.run.single import RunOutcome, run_cycle
    from job.stores import connection_store

    session = session if session is not None else make_session()
    monitor = monitor if monitor is not None else Monitor(settings, session)
    outcome = RunOutcome()
    # The database store records the outcome and releases the lease in one statement after the run (finish).
    store = connection_store(settings, finish_on_close=True, shutdown=shutdown)
    with shutdown.handling_signals():
        monitor.start()
        try:
            run_cycle(settings, session, options, stdout=out, outcome=outcome, store=store, shutdown=shutdown,
                      task_state=task_state)
        except JobError as exc:
            report(naming_the_connection(exc, settings.named_connection))
            outcome.exit_code = exc.exit_code
        except Exception as exc:  # noqa: BLE001 - an unexpected bug still ends in one line and exit 1
            report_unexpected(exc)
            outcome.exit_code = EXIT_TASK_FAILED
        # A run turned away (another holds the lease, the store is down) ran nothing worth recording.
        store.finish(outcome.exit_code if outcome.held_connection else None, settings.run_interval_seconds,
                     account_id=outcome.account_id)
        # One connection of the database store: its own Pushgateway group, so runs of others do not replace it.
        monitor.finish(outcome, connection=settings.named_connection)
    return outcome.exit_code


def _run_all(settings: Settings, args: argparse.Namespace, options: RunOptions, out: IO[str], monitor: Monitor,
             shutdown: Shutdown) -> int:
    """``run --all``: every due connection, once (job/run/fleet.py), with one start and one end ping."""
    from job.run.fleet import DEFAULT_CONCURRENCY, MAX_CONCURRENCY, FleetOutcome, run_all

    if not getattr(args, "all", False):
        raise UsageError("--concurrency goes with run --all")
    concurrency = args.concurrency if args.concurrency is not None else DEFAULT_CONCURRENCY
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be 1 to {MAX_CONCURRENCY}, got {concurrency}")
    if getattr(args, "connection", None) is not None:
        raise UsageError("run --all runs every due connection; --connection names one: give one or the other")
    outcome = FleetOutcome()
    monitor.start()
    try:
        if settings.store_url is None:
            # The token file is the one connection: --all runs it, as a plain run would.
            from job.run.single import run_cycle

            with shutdown.handling_signals():
                run_cycle(settings, make_session(), options, stdout=out, outcome=outcome, shutdown=shutdown)
        else:
            run_all(settings, options, concurrency=concurrency, stdout=out, make_session=make_session,
                    outcome=outcome, shutdown=shutdown)
    except JobError as exc:
        report(exc)
        outcome.exit_code = exc.exit_code
    except Exception as exc:  # noqa: BLE001 - an unexpected bug still ends in one line and exit 1
        report_unexpected(exc)
        outcome.exit_code = EXIT_TASK_FAILED
    monitor.finish(outcome)
    return outcome.exit_code


