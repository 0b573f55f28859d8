"""``run --all`` on the PostgreSQL store, as real processes against the stand-in in its own process and a
private cluster: several processes sharing hundreds of connections, SIGTERM and SIGKILL in the middle of a
fleet run, and the database restarted under one. What each connection's row holds is judged by the suite's
own rules (tests/survival/oracle.py) and by what the stand-in says is live, never by the job's loader.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg

from tests.survival.conftest import StandInFactory
from tests.survival.harness import (
    CLIENT_ID,
    SECRETS,
    TALLY,
    Ran,
    Started,
    Workspace,
    assert_no_traceback,
    error_lines,
)
from tests.survival.oracle import token_document
from tests.survival.pg import PG_OUTPUTS, ROLE, PgServer, pg_server, private_pg, token_hash

__all__ = ["pg_server", "private_pg"]  # fixtures, used by name

CONCURRENCY = 8
GRACE_SECONDS = 5.0
# How long after the grace a stopped process may take to exit: the interpreter's own shutdown.
EXIT_MARGIN_SECONDS = 2.0
# Slow enough that a fleet run has work in flight whenever it is interrupted, fast enough for the suite.
SLOW_AWEBER_SECONDS = 0.25
DATABASE_DOWN_SECONDS = 1.5


@dataclass(frozen=True)
class Stored:
    """One connection's row as the suite reads it."""

    token: str | None = field(repr=False)  # None: the row does not hold a valid token file (corrupt)
    marker: str | None
    holder: str | None
    lease_live: bool
    exit_code: int | None
    ran: bool


class Fleet:
    """Many connections in one new database of the private cluster, run by ``run --all`` processes."""

    def __init__(self, server: PgServer, ws: Workspace, count: int) -> None:
        self.server = server
        self.ws = ws
        self.database = f"fleet_{secrets.token_hex(6)}"
        server.sql(f'CREATE DATABASE "{self.database}" OWNER {ROLE}', "postgres")
        self.url = server.url(self.database)
        init = self._keep(ws.run(["store", "init"], self.env(), label="store-init"))
        assert init.returncode == 0, init.stderr
        self.names = [f"c{index:04d}" for index in range(count)]
        self._seed()

    def _seed(self) -> None:
        """Live pairs issued at the stand-in, written straight into the table (what ``connections import``
        stores; importing hundreds one process at a time would take minutes)."""
        rows = []
        for name in self.names:
            grant = self.ws.standin.control.issue_tokens(CLIENT_ID)
            SECRETS.add_grant(grant)
            document = {"access_token": grant["access_token"], "refresh_token": grant["refresh_token"],
                        "token_type": "bearer", "expires_in": 7200, "expires_at": time.time() + 7200}
            rows.append((name, json.dumps(document).encode("utf-8"), document["expires_at"]))
        with psycopg.connect(self.url, autocommit=True) as db, db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO aweber_job.connections (name, tokens, encrypted, access_expires_at) "
                "VALUES (%s, %s, false, to_timestamp(%s))", rows)

    # -- processes --

    def env(self, **overrides: str) -> dict[str, str]:
        return self.ws.env(**{"AWEBER_STORE": self.url, "AWEBER_SHUTDOWN_GRACE": str(GRACE_SECONDS), **overrides})

    def _keep(self, ran: Ran) -> Ran:
        PG_OUTPUTS.append((f"{ran.args} -> {ran.returncode}", ran.stdout + ran.stderr))
        return ran

    def start(self, label: str, *, task: str = "noop", **env: str) -> Started:
        args = ["run", "--all", "--concurrency", str(CONCURRENCY), "--task", task]
        return self.ws.start(args, self.env(**env), label=label)

    def finish(self, started: Started, *, timeout: float = 120) -> Ran:
        ran = self._keep(started.finish(timeout=timeout))
        assert_no_traceback(ran)
        return ran

    def run(self, label: str, **env: str) -> Ran:
        return self.finish(self.start(label, **env))

    # -- the rows --

    def rows(self) -> dict[str, Stored]:
        with psycopg.connect(self.url, autocommit=True) as db:
            found = db.execute(
                """SELECT name, tokens, refreshing_from, lease_holder, coalesce(lease_until > now(), false),
                          last_exit_code, last_run_at IS NOT NULL
                   FROM aweber_job.connections""").fetchall()
        stored = {}
        for name, data, marker, holder, lease_live, code, ran in found:
            fields = token_document(bytes(data)) if data is not None else None
            token = None if fields is None else str(fields["refresh_token"])
            SECRETS.add(token)
            stored[name] = Stored(token, marker, holder, lease_live, code, ran)
        assert sorted(stored) == self.names
        return stored

    def count(self, condition: str) -> int:
        with psycopg.connect(self.url, autocommit=True) as db:
            row = db.execute(f"SELECT count(*) FROM aweber_job.connections WHERE {condition}").fetchone()  # noqa: S608 - the suite's own SQL
        return int(row[0]) if row else 0

    def wait_until(self, what: str, condition: str, at_least: int, *, timeout: float = 60) -> None:
        """Poll the table until ``at_least`` rows meet the SQL ``condition`` (the run got that far)."""
        deadline = time.monotonic() + timeout
        while self.count(condition) < at_least:
            assert time.monotonic() < deadline, f"the fleet run never reached {what}"
            time.sleep(0.05)

    def assert_nothing_lost(self, rows: dict[str, Stored], *, leases_released: bool = True) -> None:
        """Every row loads and holds a refresh token the stand-in still accepts; no lease is left live."""
        corrupt = [name for name, row in rows.items() if row.token is None]
        assert not corrupt, f"rows that do not hold a valid token file: {corrupt}"
        live = self.ws.standin.control.live_refresh_tokens()
        spent = [name for name, row in rows.items() if row.token not in live]
        assert not spent, f"connections whose stored refresh token is no longer live: {spent}"
        held = [name for name, row in rows.items() if row.lease_live]
        assert not held or not leases_released, f"leases still held after every process ended: {held}"


def connections_run(ran: Ran) -> int:
    """How many connections a ``run --all`` process says it ran (its closing line)."""
    found = re.findall(r"run --all: (\d+) connections? run", ran.stderr)
    assert len(found) == 1, ran.stderr[-2000:]
    return int(found[0])


def test_three_processes_refresh_two_hundred_connections_each_exactly_once(
    pg_server: PgServer, start_standin: StandInFactory, new_workspace: Callable[..., Workspace],
) -> None:
    """3 processes × 8 at once on 200 connections: each refreshed once, none twice, no invalid_grant."""
    standin = start_standin()
    fleet = Fleet(pg_server, new_workspace(standin, ping=False), 200)
    before = fleet.rows()
    scenario = "fleet: 3 processes x 8 share 200 connections"
    with TALLY.attempt(scenario):
        started = [fleet.start(f"share{n}") for n in range(3)]
        results = [fleet.finish(process) for process in started]
        assert [ran.returncode for ran in results] == [0, 0, 0], [ran.stderr[-1000:] for ran in results]
        shares = sorted(connections_run(ran) for ran in results)
        TALLY.note(scenario, f"connections per process {'/'.join(map(str, shares))}")
        assert sum(shares) == 200, f"the processes ran {shares} connections: some ran twice or not at all"
        # 200 refreshes in all and every stored token is new and live: each connection exactly once.
        assert standin.token_requests() == 200
        assert standin.invalid_grants() == 0
        after = fleet.rows()
        fleet.assert_nothing_lost(after)
        assert all(after[name].token != before[name].token for name in fleet.names), "a connection was not refreshed"
        assert {row.exit_code for row in after.values()} == {0}

    with TALLY.attempt("fleet: the next run --all finds nothing due"):
        again = fleet.run("nothing-due")
        assert again.returncode == 0, again.stderr
        assert connections_run(again) == 0
        assert standin.token_requests() == 200, "a connection run within its interval was refreshed again"

    with TALLY.attempt("fleet: AWEBER_RUN_INTERVAL=0 runs every connection again"):
        every = fleet.run("interval-0", AWEBER_RUN_INTERVAL="0")
        assert every.returncode == 0, every.stderr
        assert standin.token_requests() == 400 and standin.invalid_grants() == 0
        rows = fleet.rows()
        fleet.assert_nothing_lost(rows)
        assert {row.token for row in rows.values()} == standin.control.live_refresh_tokens()


def test_sigterm_stops_claiming_finishes_in_flight_work_and_leaves_nothing_behind(
    pg_server: PgServer, start_standin: StandInFactory, new_workspace: Callable[..., Workspace],
) -> None:
    """SIGTERM with tasks and refreshes in flight: exit 75 within the grace, every token live, no lease held."""
    scenario = "fleet: SIGTERM in the middle"
    standin = start_standin()
    fleet = Fleet(pg_server, new_workspace(standin, ping=False), 80)
    standin.control.set_request_delay(SLOW_AWEBER_SECONDS)
    with TALLY.attempt(scenario):
        # The default task makes several API requests per connection: SIGTERM finds requests in flight.
        started = fleet.start("sigterm", task="new-subscribers", AWEBER_RATE_LIMIT="100000")
        fleet.wait_until("its first finished connections", "last_run_at IS NOT NULL", CONCURRENCY)
        in_flight = fleet.count("lease_until > now()")
        started.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        ran = fleet.finish(started, timeout=GRACE_SECONDS + 30)
        took = time.monotonic() - signalled
        TALLY.note(scenario, f"exit {ran.returncode}")
        assert took <= GRACE_SECONDS + EXIT_MARGIN_SECONDS, f"exited {took:.1f} s after SIGTERM"
        assert ran.returncode in (75, 0), ran.stderr[-2000:]
        assert "SIGTERM: claiming no more connections" in ran.stderr
        rows = fleet.rows()
        fleet.assert_nothing_lost(rows)
        done = [name for name, row in rows.items() if row.ran]
        stopped = [name for name, row in rows.items() if row.exit_code == 75]
        TALLY.note(scenario, "connections in flight at the SIGTERM", in_flight)
        TALLY.note(scenario, "connections stopped (75, state saved)", len(stopped))
        assert len(done) < len(fleet.names), "the run finished before the SIGTERM: nothing was tested"
        # Tasks in flight stop at their next request or wait (their state saved), not at their end.
        assert stopped, "no task in flight was stopped by the SIGTERM"
        assert ran.returncode == 75
        assert standin.invalid_grants() == 0

    with TALLY.attempt("fleet: the run after a SIGTERM completes the rest"):
        standin.control.set_request_delay(0)
        never_run = [name for name, row in rows.items() if not row.ran]
        requests_before = standin.token_requests()
        rest = fleet.run("after-sigterm", task="new-subscribers", AWEBER_RATE_LIMIT="100000")
        assert rest.returncode == 0, rest.stderr[-2000:]
        # The connections never run are run now; those stopped wait for their (short) backoff.
        assert standin.token_requests() - requests_before == len(never_run) == connections_run(rest)
        every = fleet.run("after-sigterm-all", AWEBER_RUN_INTERVAL="0")
        assert every.returncode == 0, every.stderr[-2000:]
        assert standin.invalid_grants() == 0
        rows = fleet.rows()
        fleet.assert_nothing_lost(rows)
        assert {row.exit_code for row in rows.values()} == {0}


def test_when_the_grace_runs_out_the_process_exits_and_the_next_run_names_what_it_left(
    pg_server: PgServer, start_standin: StandInFactory, new_workspace: Callable[..., Workspace],
) -> None:
    """Refreshes that outlast the shutdown grace (AWeber answers in 6 s, the grace is 1 s): the process exits
    at the grace all the same, with 75; each refresh it left is named by the next run, which takes over the
    leases at once (their holder is gone) and loses nothing else."""
    scenario = "fleet: SIGTERM, refreshes outlast the grace"
    grace, slow = 1.0, 6.0
    standin = start_standin()
    fleet = Fleet(pg_server, new_workspace(standin, ping=False), 2 * CONCURRENCY)
    standin.control.set_request_delay(slow)
    with TALLY.attempt(scenario) as attempt:
        started = fleet.start("grace-runs-out", AWEBER_SHUTDOWN_GRACE=str(grace), AWEBER_HTTP_TIMEOUT="30",
                              AWEBER_RETRY_DEADLINE="30")
        fleet.wait_until("refreshes in flight", "refreshing_from IS NOT NULL", CONCURRENCY)
        started.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        ran = fleet.finish(started, timeout=60)
        took = time.monotonic() - signalled
        assert took <= grace + EXIT_MARGIN_SECONDS, f"exited {took:.1f} s after SIGTERM, past the grace"
        assert ran.returncode == 75, ran.stderr[-2000:]
        assert len(re.findall(r"still running when the shutdown grace ran out", ran.stderr)) == CONCURRENCY
        pid = started.process.pid
        time.sleep(slow + 0.5)  # the stand-in answers (and rotates) what the process had sent
        rows = fleet.rows()
        assert not [name for name, row in rows.items() if row.token is None], "a corrupt row"
        live = standin.control.live_refresh_tokens()
        left = sorted(name for name, row in rows.items() if row.token not in live)
        TALLY.note(scenario, "refreshes left in flight at the grace", len(left))
        assert 0 < len(left) <= CONCURRENCY
        if left:
            attempt.mark_lost_answer()

        standin.control.set_request_delay(0)
        after = fleet.run("after-grace")
        assert after.returncode == 77, after.stderr[-2000:]
        assert standin.invalid_grants() == len(left)
        assert_each_lost_answer_named(error_lines(after.stderr), left, pid)
        rows_after = fleet.rows()
        live = standin.control.live_refresh_tokens()
        assert all(row.exit_code == 0 and row.token in live for name, row in rows_after.items() if name not in left)
        assert not [name for name, row in rows_after.items() if row.lease_live]


def test_sigkill_loses_at_most_the_refreshes_in_flight_and_the_next_run_names_each(
    pg_server: PgServer, start_standin: StandInFactory, new_workspace: Callable[..., Workspace],
) -> None:
    """SIGKILL mid-fleet: no corrupt row, at most CONCURRENCY answers lost and each one named by the next
    run, and the killed process's leases taken over at once on this host (its pid is gone)."""
    scenario = "kill: fleet run mid-way"
    standin = start_standin()
    fleet = Fleet(pg_server, new_workspace(standin, ping=False), 80)
    standin.control.set_request_delay(SLOW_AWEBER_SECONDS)
    with TALLY.attempt(scenario) as attempt:
        started = fleet.start("sigkill")
        fleet.wait_until("its first finished connections", "last_run_at IS NOT NULL", 2 * CONCURRENCY)
        assert started.kill(), "the fleet run ended before the SIGKILL"
        fleet.finish(started, timeout=30)
        pid = started.process.pid
        # The stand-in still answers (and rotates) the requests the dead process had sent: let them land.
        time.sleep(SLOW_AWEBER_SECONDS + 0.5)
        rows = fleet.rows()
        corrupt = [name for name, row in rows.items() if row.token is None]
        assert not corrupt, f"rows that do not hold a valid token file: {corrupt}"
        live = standin.control.live_refresh_tokens()
        lost = sorted(name for name, row in rows.items() if row.token not in live)
        held = sorted(name for name, row in rows.items() if row.lease_live and f":{pid}:" in (row.holder or ""))
        TALLY.note(scenario, "answers lost (rotated, never saved)", len(lost))
        TALLY.note(scenario, "leases left by the killed process", len(held))
        assert held, "the killed process held no lease: the kill came after the work"
        assert len(lost) <= CONCURRENCY, f"lost {len(lost)} answers with {CONCURRENCY} in flight: {lost}"
        for name in lost:
            assert rows[name].marker == token_hash(str(rows[name].token)), f"{name}: refreshed without its marker"
        if lost:
            attempt.mark_lost_answer()

        standin.control.set_request_delay(0)
        standin.control.reset_stats()
        after = fleet.run("after-sigkill")
        assert after.returncode == (77 if lost else 0), after.stderr[-2000:]
        assert standin.invalid_grants() == len(lost)
        for name in held:
            assert f"connection '{name}': its lease was held by host" in after.stderr, (
                f"{name}: the lease of the dead process was not taken over")
        assert_each_lost_answer_named(error_lines(after.stderr), lost, pid)
        rows_after = fleet.rows()
        live = standin.control.live_refresh_tokens()
        for name, row in rows_after.items():
            if name in lost:
                assert row.exit_code == 77 and row.token == rows[name].token
            else:
                assert row.exit_code == 0 and row.token in live, f"{name}: {row}"
        assert not [name for name, row in rows_after.items() if row.lease_live]


def assert_each_lost_answer_named(lines: Sequence[str], lost: Sequence[str], pid: int) -> None:
    """One error line per lost answer, naming invalid_grant, the connection, the killed pid and the way out."""
    for name in lost:
        mine = [line for line in lines if f"connection '{name}'" in line]
        assert len(mine) == 1, (name, lines)
        line = mine[0]
        assert "invalid_grant" in line and f"--connection {name} login" in line, line
        assert (f"pid {pid})" in line and f"began a refresh of connection '{name}'" in line
                and "never recorded its end" in line), line
    named = {name for name in re.findall(r"connection '([^']+)'", "\n".join(lines))}
    assert named <= set(lost), f"errors for connections that lost nothing: {sorted(named - set(lost))}"


def test_a_database_restart_during_a_fleet_run_loses_nothing(
    pg_server: PgServer, start_standin: StandInFactory, new_workspace: Callable[..., Workspace],
) -> None:
    """The database restarted mid-fleet: the run finishes or exits 75, every stored token stays live, and
    the next run completes everything with no invalid_grant."""
    scenario = "fleet: database restarted mid-run"
    standin = start_standin()
    fleet = Fleet(pg_server, new_workspace(standin, ping=False), 80)
    standin.control.set_request_delay(SLOW_AWEBER_SECONDS)
    with TALLY.attempt(scenario):
        started = fleet.start("db-restart")
        fleet.wait_until("its first finished connections", "last_run_at IS NOT NULL", CONCURRENCY)
        before_restart = fleet.count("last_run_at IS NOT NULL")
        assert started.process.poll() is None, "the fleet run ended before the restart: nothing was tested"
        # Down long enough that the refreshes in flight come back to a database that is not there: their
        # saves must wait for it (retrying), not give up.
        pg_server.cluster.stop("fast")
        time.sleep(DATABASE_DOWN_SECONDS)
        pg_server.cluster.start()
        TALLY.note(scenario, "connections run before the restart", before_restart)
        ran = fleet.finish(started)
        TALLY.note(scenario, f"exit {ran.returncode}")
        assert ran.returncode in (0, 75), ran.stderr[-2000:]
        rows = fleet.rows()
        rescue = fleet.ws.state_dir / "rescue"
        assert not rescue.exists() or not list(rescue.iterdir()), "the saves gave up: tokens went to rescue files"
        # A lease whose release the restart cut off stays behind; the next run takes it over (dead pid).
        fleet.assert_nothing_lost(rows, leases_released=False)
        TALLY.note(scenario, "leases the restart left behind", sum(row.lease_live for row in rows.values()))
        assert standin.invalid_grants() == 0

        standin.control.set_request_delay(0)
        every = fleet.run("after-restart", AWEBER_RUN_INTERVAL="0")
        assert every.returncode == 0, every.stderr[-2000:]
        assert standin.invalid_grants() == 0
        rows = fleet.rows()
        fleet.assert_nothing_lost(rows)
        assert {row.exit_code for row in rows.values()} == {0}
        assert {row.token for row in rows.values()} == standin.control.live_refresh_tokens()
