"""The database link misbehaving, and the process signalled, at every phase of a run of the PostgreSQL store.

A loopback proxy (tests/survival/dbproxy.py) stands between the job and the private cluster and holds,
cuts or pauses the link when a given statement passes: the save held before the server sees it, or after
the server committed it and before the job hears; the marker committed and the process then stopped past
its lease. Signals come as a table: TERM, INT and HUP at each phase, for ``--connection NAME run`` and
``run --all``. What was lost is counted against the stand-in's record (live refresh tokens, invalid_grant
answers), never taken from the job's words.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from job.standin import Fault
from tests.survival.dbproxy import DbProxy
from tests.survival.harness import ACCOUNT_ID, TALLY, assert_no_traceback
from tests.survival.pg import PgJob, PgServer, pg_server, private_pg
from tests.survival.test_pg_faults import new_job

__all__ = ["new_job", "pg_server", "private_pg"]  # fixtures, used by name

GRACE_SECONDS = 5.0
# Past the grace, a process may take this long to end: interpreter teardown on a busy machine.
EXIT_MARGIN_SECONDS = 3.0
SAVE = b"UPDATE aweber_job.connections SET tokens = $"
MARKER = b"SET refreshing_from = $"
MARKER_SET = "refreshing_from IS NOT NULL"


@pytest.fixture
def proxy(pg_server: PgServer) -> Iterator[DbProxy]:
    with DbProxy(pg_server.cluster.port) as running:
        yield running


def args_for(mode: str) -> list[str]:
    """The command line of a run of the job's connection: by name, or as the one due connection of run --all."""
    return ["run", "--task", "noop"] if mode == "single" else ["run", "--all", "--task", "noop"]


def start_run(job: PgJob, mode: str, url: str, **env: str) -> object:
    """Start the run with the store URL ``url`` (through the proxy, or not)."""
    environment = job.env(AWEBER_STORE=url, AWEBER_SHUTDOWN_GRACE=str(GRACE_SECONDS), **env)
    if mode == "single":
        return job.ws.start(["--connection", job.name, *args_for(mode)], environment, label=f"{mode}-stopped")
    return job.ws.start(args_for(mode), environment, label=f"{mode}-stopped")


def assert_nothing_lost(job: PgJob, *, label: str) -> None:
    """The next run, over a healthy link, succeeds: the stored (or rescued) token was live, none was spent twice."""
    invalid_before = job.ws.standin.invalid_grants()
    ran = job.run(["run", "--task", "noop"], label=label, AWEBER_RUN_INTERVAL="0")
    assert ran.returncode == 0, ran.stderr
    assert_no_traceback(ran)
    assert job.ws.standin.invalid_grants() == invalid_before == 0
    assert job.stored_refresh_token() in job.ws.standin.control.live_refresh_tokens()
    assert job.rescue_files() == []


# -- 1. a save whose answer never comes ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["single", "fleet"])
@pytest.mark.parametrize("forward", [False, True], ids=["save held before the server", "save done, answer held"])
def test_a_save_the_link_holds_is_rescued_before_the_grace_ends(new_job: Callable[..., PgJob], proxy: DbProxy,
                                                                 mode: str, forward: bool) -> None:
    """The link holds the save silently (no refusal, no reset) and SIGTERM comes: the new tokens reach a rescue
    file and the process exits 73 within the grace; the next run puts them in place (or finds them stored)."""
    scenario = f"pg link: {mode}, {'answer to the save held' if forward else 'save held'}, SIGTERM"
    job = new_job()
    with TALLY.attempt(scenario):
        trigger = proxy.arm(SAVE, action="hold", forward=forward, scope="all")  # a partition: new links too
        started = start_run(job, mode, proxy.route(job.url))
        assert trigger.wait(30), "the save never reached the link"
        time.sleep(1.0)  # held: the job waits on a statement that is not answered
        signalled = time.monotonic()
        started.process.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        ran = job.finish(started)  # type: ignore[arg-type]
        took = time.monotonic() - signalled
        assert ran.returncode == 73, ran.stderr
        assert took <= GRACE_SECONDS + EXIT_MARGIN_SECONDS, f"exited {took:.1f} s after SIGTERM"
        (rescue,) = job.rescue_files()
        assert str(rescue) in ran.stderr
        proxy.release()
        assert_nothing_lost(job, label=f"{mode}-after")


def test_a_save_the_link_holds_is_cut_by_its_statement_deadline_without_any_signal(
    new_job: Callable[..., PgJob], proxy: DbProxy,
) -> None:
    """No signal: the held save is cut at the statement deadline and tried again over a new connection, which
    the link lets through: the run succeeds, and nothing waits unbounded."""
    job = new_job()
    with TALLY.attempt("pg link: save held once, no signal"):
        trigger = proxy.arm(SAVE, action="hold")
        started = job.ws.start(["--connection", job.name, "run", "--task", "noop"],
                               job.env(AWEBER_STORE=proxy.route(job.url)), label="held-once")
        assert trigger.wait(30)
        began = time.monotonic()
        ran = job.finish(started, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert 5 < time.monotonic() - began < 30, "the held statement was not cut at its deadline"
        assert "did not answer within" in ran.stderr
        assert job.stored_refresh_token() in job.ws.standin.control.live_refresh_tokens()
        assert job.ws.standin.invalid_grants() == 0


# -- 2. a run stopped past its lease ------------------------------------------------------------------

def test_a_run_stopped_past_its_lease_after_its_marker_sends_no_spent_token(new_job: Callable[..., PgJob],
                                                                            proxy: DbProxy) -> None:
    """Run A commits its marker and is stopped (SIGSTOP) until its lease ends; run B takes over and refreshes;
    A resumes: it confirms its lease before sending, finds it lost, and sends nothing (no invalid_grant)."""
    job = new_job()
    with TALLY.attempt("pg lease: run stopped past its lease after its marker"):
        trigger = proxy.arm(MARKER, action="hold", forward=True)  # committed; A has not heard yet
        stalled = job.ws.start(["--connection", job.name, "run", "--task", "noop"],
                               job.env(AWEBER_STORE=proxy.route(job.url)), label="stalled")
        assert trigger.wait(30), "the marker never reached the link"
        stalled.process.send_signal(signal.SIGSTOP)
        try:
            proxy.release()  # the answer waits in A's socket
            job.server.sql("UPDATE aweber_job.connections SET lease_until = now() - interval '1 second'",
                           job.database)  # A's lease has run out, as after a long pause
            other = job.run(["run", "--task", "noop"], label="took-over")
            assert other.returncode == 0, other.stderr
        finally:
            stalled.process.send_signal(signal.SIGCONT)
        ran = job.finish(stalled)
        assert ran.returncode == 75, ran.stderr
        assert "lease lost" in ran.stderr
        assert job.ws.standin.token_requests() == 1, "the stalled run sent its refresh token"
        assert job.ws.standin.invalid_grants() == 0
        assert_nothing_lost(job, label="after-stall")


# -- 3. signals at every phase, as a table ------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    """Where the run is held when the signal comes, and what the run may end with."""

    name: str
    exits: tuple[int, ...]


PHASES = {
    "claimed, marker not yet written": Phase("claimed", (75,)),
    "refresh in flight": Phase("in flight", (0, 75)),
    "save held by the link": Phase("save held", (73,)),
    "save retrying, database refusing": Phase("save retrying", (73,)),
    "task running": Phase("task", (75,)),
}
SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
CASES = [(phase, mode, SIGNALS[(number + (mode == "fleet")) % 3])
         for number, phase in enumerate(PHASES) for mode in ("single", "fleet")]


def waiting_for(trigger: object, what: str, then_seconds: float = 0.0) -> Callable[[], None]:
    def wait() -> None:
        assert trigger.wait(30), f"{what} never reached the link"  # type: ignore[attr-defined]
        time.sleep(then_seconds)

    return wait


def hold_at(phase: str, job: PgJob, proxy: DbProxy) -> tuple[str, Callable[[], None]]:
    """Arrange for the run to be held at ``phase``; return the store URL to run with and a wait for the phase."""
    control = job.ws.standin.control
    if phase == "claimed, marker not yet written":
        return proxy.route(job.url), waiting_for(proxy.arm(MARKER, action="hold"), "the marker")
    if phase == "refresh in flight":
        control.inject(Fault(delay_seconds=2.0), path="/oauth2/token")
        return job.url, lambda: job.wait_for("the start of its refresh", MARKER_SET)
    if phase == "save held by the link":
        return proxy.route(job.url), waiting_for(proxy.arm(SAVE, action="hold", scope="all"), "the save")
    if phase == "save retrying, database refusing":
        # The save's connection is cut and every new one refused: the save retries until it is stopped.
        return proxy.route(job.url), waiting_for(proxy.arm(SAVE, action="cut", refuse=True), "the save", 0.5)
    control.inject(Fault(delay_seconds=20.0), path=f"/1.0/accounts/{ACCOUNT_ID}/lists")

    def task_running() -> None:
        job.wait_for("the save of the new tokens", "refreshing_from IS NULL AND fence >= 1")
        deadline = time.monotonic() + 30
        while job.ws.standin.token_requests() < 1 or job.ws.standin.api_requests() < 1:
            assert time.monotonic() < deadline, "the task never began"
            time.sleep(0.02)

    return job.url, task_running


@pytest.mark.parametrize(("phase", "mode", "sig"), CASES,
                         ids=[f"{p} - {m} - {s.name}" for p, m, s in CASES])
def test_a_signal_at_any_phase_loses_no_token_and_spends_none_twice(new_job: Callable[..., PgJob], proxy: DbProxy,
                                                                    phase: str, mode: str,
                                                                    sig: signal.Signals) -> None:
    """The run ends within the grace with the phase's exit code; the next run succeeds with the stored or
    rescued token; no invalid_grant anywhere."""
    job = new_job()
    scenario = f"pg signals: {sig.name} at {PHASES[phase].name} ({mode})"
    with TALLY.attempt(scenario):
        url, reached = hold_at(phase, job, proxy)
        task = "noop" if phase != "task running" else "new-subscribers"
        environment = job.env(AWEBER_STORE=url, AWEBER_SHUTDOWN_GRACE=str(GRACE_SECONDS), AWEBER_HTTP_TIMEOUT="30")
        args = ["run", "--task", task] if mode == "single" else ["run", "--all", "--task", task]
        if mode == "single":
            args = ["--connection", job.name, *args]
        started = job.ws.start(args, environment, label="signalled")
        reached()
        signalled = time.monotonic()
        started.process.send_signal(sig)
        ran = job.finish(started)
        took = time.monotonic() - signalled
        assert ran.returncode in PHASES[phase].exits, ran.stderr
        assert took <= GRACE_SECONDS + 2.0 + EXIT_MARGIN_SECONDS, f"exited {took:.1f} s after {sig.name}"
        assert_no_traceback(ran)
        proxy.release()
        proxy.refuse(False)
        assert job.ws.standin.invalid_grants() == 0
        assert_nothing_lost(job, label="after-signal")
