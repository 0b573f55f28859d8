"""``run --all``: every due connection in the database store, each once, N at a time, shared by many processes.

The main thread claims due connections in batches, only as many as there are free workers, so no
lease waits on a queue; each worker runs the same cycle as ``--connection NAME run`` on a connection
already claimed, records its outcome, and frees it. Processes on other machines claim the rest
(``FOR UPDATE SKIP LOCKED``; see :meth:`job.stores.postgres.PostgresStore.claim_due`). The run ends when
nothing is due that this run has not done.

SIGTERM, SIGINT or SIGHUP (a Kubernetes pod being stopped, systemd stopping the unit, Ctrl-C, a closed
terminal), and ``AWEBER_RUN_TIMEOUT`` reached, take the one path of :mod:`job.shutdown`: no more claims;
no refresh begins and no retry of one is sent, and a connection claimed but not yet refreshed is
released unspent; every task's requests and waits end at once (its state saved, its output flushed);
a refresh already sent is waited for and saved, or its rescue file written, before the grace ends;
leases are released; the process exits within ``AWEBER_SHUTDOWN_GRACE`` seconds, with 75 when work
was left undone.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from job import progress
from job.api.pacing import Pacer
from job.config import Settings
from job.errors import (
    EXIT_AUTH,
    EXIT_CANT_WRITE,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_PROTOCOL,
    EXIT_TASK_FAILED,
    EXIT_TEMPORARY,
    EXIT_TOKEN_FILE,
    JobError,
    StoreKeyError,
    naming_the_connection,
)
from job.logs import REDACTOR, naming_connection
from job.run.single import RunOptions, RunOutcome, run_cycle
from job.shutdown import Shutdown, StoppedError

log = logging.getLogger(__name__)

# Which failure most needs a person, first: the exit code of a fleet run that had several.
EXIT_PRIORITY = (EXIT_AUTH, EXIT_CONFIG, EXIT_CANT_WRITE, EXIT_TOKEN_FILE, EXIT_PROTOCOL, EXIT_TASK_FAILED,
                 EXIT_TEMPORARY)
DEFAULT_CONCURRENCY = 4
# How often the main thread looks up from its workers, so a SIGTERM is acted on promptly.
SIGNAL_POLL_SECONDS = 0.2
MAX_CONCURRENCY = 64


def fleet_exit_code(codes: list[int]) -> int:
    """0 when every connection succeeded; else the code of the failure that most needs a person."""
    failed = {code for code in codes if code != EXIT_OK}
    for code in EXIT_PRIORITY:
        if code in failed:
            return code
    return min(failed) if failed else EXIT_OK


@dataclass
class FleetOutcome(RunOutcome):
    """A fleet run: its own exit code, and what each connection's run did (for lines, metrics, pings)."""

    connections: dict[str, RunOutcome] = field(default_factory=dict)
    stopped: bool = False


class LockedOutput:
    """The shared standard output of the workers: each write lands whole, never inside another's line.

    Tasks write one whole line (or CSV row) per call. ``lock`` is held across the CSV header check
    and its first row (see job.tasks.new_subscribers.RowWriter), so one header is written in all.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.lock = threading.RLock()
        self._written = 0

    def write(self, text: str) -> int:
        with self.lock:
            written = self._stream.write(text)
            self._written += len(text)
            return written

    def flush(self) -> None:
        with self.lock:
            self._stream.flush()

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        """How much has been written (with what the stream held before): a CSV header goes out once."""
        with self.lock:
            try:
                before = self._stream.tell() if self._stream.seekable() else 0
            except (OSError, ValueError, AttributeError):
                before = 0
            return max(before, self._written)

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _DaemonPool:
    """``size`` daemon threads running the calls submitted, each giving a Future.

    Not ThreadPoolExecutor: the interpreter joins its threads before the process may exit, so a refresh
    still waiting on AWeber when the shutdown grace ran out would hold the process past the grace (and
    into the SIGKILL the grace is there to avoid). A daemon thread ends with the process; what it left
    unfinished is named by the next run (the refresh marker), and its lease is taken over at once.
    """

    def __init__(self, size: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]
                                       | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True) for n in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, function: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((future, function, args))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, function, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it, as an executor does
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel what has not started; each thread ends after its call in flight (or with the process)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)


class _Workers(threading.local):
    """Per worker thread: its own database connection (store) and HTTP session."""

    store: Any = None
    session: Any = None


class FleetRun:
    """One ``run --all``: claims, workers, outcomes, and the SIGTERM handling around them."""

    def __init__(
        self,
        settings: Settings,
        options: RunOptions,
        *,
        concurrency: int,
        stdout: IO[str],
        make_session: Callable[[], Any],
        outcome: FleetOutcome,
        shutdown: Shutdown | None = None,
    ) -> None:
        from job.stores.postgres import PostgresStore

        self.settings = settings
        self.options = options
        self.concurrency = concurrency
        self.output = LockedOutput(stdout)
        self.make_session = make_session
        self.outcome = outcome
        self.shutdown = shutdown if shutdown is not None else Shutdown(settings.shutdown_grace_seconds)
        self.shutdown.announce = self._announce_stop
        self.stop = self.shutdown.event
        self._store_class = PostgresStore
        self._claimer = PostgresStore.from_settings(settings)
        self._claimer.stop_cap = self.shutdown.cap
        self._workers = _Workers()
        self._all_workers: list[tuple[Any, Any]] = []
        self._workers_lock = threading.Lock()
        self._store_error: int | None = None
        self._in_flight = 0
        self._due_at_start: int | None = None
        self._claiming = True
        self._since: float | None = None  # when this run began, by the store's clock
        self._failing = 0  # connections done that did not end 0
        self._pacers: dict[str, Pacer] = {}
        self._pacers_lock = threading.Lock()

    # -- stopping ------------------------------------------------------------------------------------

    def _announce_stop(self, reason: str) -> None:
        log.warning(
            "%s: claiming no more connections; finishing the %d in flight within %g s (a refresh already sent is "
            "saved; none is begun)", reason, self._in_flight, self.settings.shutdown_grace_seconds,
        )

    def _check_run_time(self, started: float) -> None:
        """At AWEBER_RUN_TIMEOUT the run stops as at SIGTERM: nothing new claimed, the runs in flight wound up."""
        limit = self.settings.run_timeout_seconds
        if limit is not None and time.monotonic() - started >= limit and self.shutdown.request("AWEBER_RUN_TIMEOUT"):
            self._announce_stop(f"AWEBER_RUN_TIMEOUT ({limit:g} s) reached")

    # -- the run -------------------------------------------------------------------------------------

    def run(self) -> FleetOutcome:
        with self.shutdown.handling_signals():
            try:
                # Keys that open nothing are the store's trouble: found one connection at a time, they would set
                # every connection waiting for a person. Stop before anything is claimed.
                self._claimer.check_keys()
            except JobError:
                self._claimer.close()
                raise
            return self._run()

    def _run(self) -> FleetOutcome:
        started = time.monotonic()
        self._put_back_local_rescues()
        if isinstance(progress.current(), progress.Progress):  # a terminal: worth one count
            try:
                self._due_at_start = self._claimer.count_due(self.settings.run_interval_seconds,
                                                             since=self._run_began())
            except JobError:
                self._due_at_start = None
        executor = _DaemonPool(self.concurrency, "connection")
        futures: dict[concurrent.futures.Future[RunOutcome], str] = {}
        try:
            while True:
                self._check_run_time(started)
                free = self.concurrency - len(futures)
                if free > 0 and self._claiming and not self.stop.is_set():
                    batch = self._claim(free)
                    if not batch:
                        self._claiming = False  # nothing due that this run has not done
                    for name, row in batch:
                        futures[executor.submit(self._run_one, name, row)] = name
                self._in_flight = len(futures)
                if not futures:
                    # Stopped before anything more could be claimed (a signal, the time limit): work may be left.
                    self.outcome.stopped = self.outcome.stopped or self.shutdown.requested
                    break
                if self.stop.is_set():
                    self._wait_for_the_rest(futures)
                    break
                finished, _ = concurrent.futures.wait(
                    futures, timeout=SIGNAL_POLL_SECONDS, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in finished:
                    self._record(futures.pop(future), future.result())  # _run_one never raises
                self._show(len(futures))
        finally:
            self.stop.set()
            executor.shutdown()
            self._claimer.close()
        self._finish(futures)
        return self.outcome

    def _put_back_local_rescues(self) -> None:
        """Put in place the rescue files this machine holds, first, whether or not their connections are due.

        Such a connection may wait for a person: another machine spent the token the rescue file
        follows and got invalid_grant. Opening it puts the rescue back and makes it live again.
        """
        for name in self._claimer.rescued_connections():
            try:
                connection = self._claimer.connection(name, wait=False, claimed=None)
                connection.open()
                connection.close()
            except JobError as exc:
                log.warning("connection '%s': the rescue file this machine holds for it was not put back now: %s",
                            name, exc, extra={"connection": name})

    def _record(self, name: str, result: RunOutcome) -> None:
        self.outcome.connections[name] = result
        if result.exit_code != EXIT_OK:
            self._failing += 1

    def _show(self, running: int) -> None:
        """The live line on a terminal: connections done, running, failing, and the rate.

        Counted as results come in: a sum over every result here, at each one, made a run quadratic.
        """
        progress.current().update(fleet_done=len(self.outcome.connections), fleet_running=running,
                                  fleet_due=self._due_at_start, fleet_failing=self._failing)

    def _wait_for_the_rest(self, futures: dict[concurrent.futures.Future[RunOutcome], str]) -> bool:
        """After a stop: wait for the runs in flight up to the grace; False when some are still running."""
        deadline = time.monotonic() + (self.shutdown.seconds_left() or 0.0)
        self.outcome.stopped = True
        while futures:
            left = deadline - time.monotonic()
            if left <= 0:
                for name in futures.values():
                    log.error("connection '%s': still running when the shutdown grace ran out; its lease runs "
                              "out by itself, and the next run names a refresh it may have left unfinished", name)
                return False
            finished, _ = concurrent.futures.wait(futures, timeout=left,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                name = futures.pop(future)
                self._record(name, future.result())
        return True

    def _run_began(self) -> float:
        """When this run began by the store's clock: what is due is judged as of then, by every claim."""
        if self._since is None:
            self._since = self._claimer.run_start()
        return self._since

    def _claim(self, free: int) -> list[tuple[str, Any]]:
        try:
            return self._claimer.claim_due(free, self.settings.run_interval_seconds, since=self._run_began())
        except JobError as exc:
            # The store is gone (restart, failover): what runs finishes; the rest waits for the next run.
            log.error("cannot claim due connections: %s; the runs in flight finish, the rest waits for the next run",
                      exc)
            self._store_error = exc.exit_code
            return []

    def _worker(self) -> tuple[Any, Any]:
        if self._workers.store is None:
            # The claims were made in the name of this process: its workers write under the same holder.
            self._workers.store = self._store_class.from_settings(self.settings, holder=self._claimer.holder)
            self._workers.store.stop_cap = self.shutdown.cap
            self._workers.session = self.make_session()
            with self._workers_lock:
                self._all_workers.append((self._workers.store, self._workers.session))
        return self._workers.store, self._workers.session

    def pacer_for(self, key: str) -> Pacer:
        """One pacer per AWeber account (or per connection until its account is known)."""
        with self._pacers_lock:
            pacer = self._pacers.get(key)
            if pacer is None:
                pacer = self._pacers[key] = Pacer(self.settings.rate_limit_per_minute, 60.0)
            return pacer

    def _run_one(self, name: str, row: Any) -> RunOutcome:
        """The cycle of one claimed connection, then its outcome recorded in the store.

        Never raises: whatever goes wrong is this connection's outcome, and the others run on.
        """
        # This connection's tokens are forgotten by the log redactor once it is done: a line then costs the same
        # for the last connection as for the first.
        with REDACTOR.scope(), naming_connection(name):
            return self._run_connection(name, row)

    def _run_connection(self, name: str, row: Any) -> RunOutcome:
        outcome = RunOutcome()
        try:
            store, session = self._worker()
            connection = store.connection(name, claimed=row, finish_on_close=True)
        except Exception as exc:  # noqa: BLE001 - one connection's trouble must not end the others
            outcome.exit_code = exc.exit_code if isinstance(exc, JobError) else EXIT_TASK_FAILED
            log.error("connection '%s': cannot be run: %s", name, exc, extra={"connection": name})
            return outcome
        settings = dataclasses.replace(self.settings, connection=name)
        record = True
        try:
            # LockedOutput is duck-typed: what tasks call on a stream is there, the rest is the stream's own.
            run_cycle(settings, session, self.options, stdout=self.output,  # type: ignore[arg-type]
                      outcome=outcome, store=connection, shutdown=self.shutdown, pacer_for=self.pacer_for)
        except StoppedError as exc:
            # Claimed just before the stop and not refreshed: given back as it was, due for the next run.
            record = outcome.refreshes != 0
            outcome.exit_code = exc.exit_code
            log.warning("connection '%s': %s", name, exc, extra={"exit_code": exc.exit_code, "connection": name})
        except JobError as exc:
            exc = naming_the_connection(exc, name)
            outcome.exit_code = exc.exit_code
            # A key not given is not this connection's fault: left due, not waiting for a person.
            record = not isinstance(exc, StoreKeyError)
            outcome.summary = {"error": str(exc)}
            level = logging.CRITICAL if type(exc).__name__ == "TokenNotSavedError" else logging.ERROR
            log.log(level, "connection '%s': %s", name, exc, extra={"exit_code": exc.exit_code, "connection": name})
        except Exception as exc:
            outcome.exit_code = EXIT_TASK_FAILED
            log.error("connection '%s': unexpected error: %s: %s", name, type(exc).__name__, exc,
                      extra={"connection": name})
            log.debug("where it happened", exc_info=True)
        finally:
            # Recorded and released in one statement: released first, another process could find the
            # connection free and not yet run, and run it a second time.
            connection.finish(outcome.exit_code if record else None, self.settings.run_interval_seconds,
                              account_id=outcome.account_id)
        if outcome.exit_code == EXIT_OK:
            log.info("connection '%s': ok (%d refresh%s, %d API requests%s)", name, outcome.refreshes,
                     "" if outcome.refreshes == 1 else "es", outcome.api_requests,
                     "" if outcome.new_subscribers is None else f", {outcome.new_subscribers} new subscribers",
                     extra={"connection": name, "exit_code": 0})
        return outcome

    def _finish(self, unfinished: dict[concurrent.futures.Future[RunOutcome], str]) -> None:
        codes = [result.exit_code for result in self.outcome.connections.values()]
        if self._store_error is not None:
            codes.append(self._store_error)
        if self.outcome.stopped or unfinished:
            codes.append(EXIT_TEMPORARY)  # stopped before the work was done: the next run does the rest
        self.outcome.exit_code = fleet_exit_code(codes)
        # Every connection runs the same task: the run's pings and metrics name it.
        self.outcome.task = next((result.task for result in self.outcome.connections.values() if result.task), None)
        for result in self.outcome.connections.values():
            self.outcome.refreshes += result.refreshes
            self.outcome.token_requests += result.token_requests
            self.outcome.api_requests += result.api_requests
            self.outcome.rate_limited += result.rate_limited
            self.outcome.pacing_wait_seconds += result.pacing_wait_seconds
            if result.new_subscribers is not None:
                self.outcome.new_subscribers = (self.outcome.new_subscribers or 0) + result.new_subscribers
        ran = len(self.outcome.connections)
        failed = self._failing
        log.info(
            "run --all: %d connection%s run, %d failed%s%s", ran, "" if ran == 1 else "s", failed,
            "; the store could not be reached for more" if self._store_error is not None else "",
            f"; stopped ({self.shutdown.reason})" if self.outcome.stopped else "",
            extra={"exit_code": self.outcome.exit_code},
        )
        if not unfinished:
            for store, session in self._all_workers:
                store.close()
                session.close()


def run_all(
    settings: Settings, options: RunOptions, *, concurrency: int, stdout: IO[str],
    make_session: Callable[[], Any], outcome: FleetOutcome, shutdown: Shutdown | None = None,
) -> FleetOutcome:
    """Run every due connection of the database store; see the module docstring."""
    return FleetRun(settings, options, concurrency=concurrency, stdout=stdout, make_session=make_session,
                    outcome=outcome, shutdown=shutdown).run()
