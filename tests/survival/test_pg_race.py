"""16 real ``aweber-job --connection NAME run`` processes started together on ONE connection of the PostgreSQL
store, round after round: the lease serialises them, nobody spends a refresh token twice (no invalid_grant),
nobody reports a subscriber twice, and the tokens left are live."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.survival.harness import (
    ACCOUNT_ID,
    LIST_ID,
    SEED,
    TALLY,
    StandInProcess,
    Workspace,
    assert_no_traceback,
    error_lines,
    scaled,
    standin_config,
)
from tests.survival.pg import PgJob, PgServer, pg_server, private_pg

__all__ = ["pg_server", "private_pg"]  # fixtures, used by name

PROCESSES_PER_ROUND = 16
ROUNDS = scaled(3, 10)
NEW_SUBSCRIBERS_PER_ROUND = 4
# Short waits give up (exit 75) while another run holds the lease; long ones wait their turn.
LOCK_TIMEOUTS = ("0", "0.5", "60", "60")
SCENARIO = "race (pg): 16 runs on one connection at once, each process"
ROUND_SCENARIO = "race (pg): after each round, live tokens, no invalid_grant, no duplicate"


@dataclass
class Arena:
    standin: StandInProcess
    job: PgJob
    added: set[int] = field(default_factory=set)
    reported: Counter[int] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def arena(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    standin = StandInProcess(tmp_path_factory.mktemp("standin"), standin_config(list_size=0))
    try:
        job = PgJob(pg_server, Workspace(tmp_path_factory.mktemp("pg-race"), standin), name="shared")
        job.seed()
        yield Arena(standin, job)
    finally:
        standin.stop()


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_runs_started_together_on_one_connection_never_spend_a_token_twice(arena: Arena, round_number: int) -> None:
    """Exits 0 or 75 (a lease busy past a short wait, only), no invalid_grant, one refresh per run that
    succeeded, the stored token the one live token, every new subscriber reported exactly once."""
    job, control = arena.job, arena.standin.control
    rng = random.Random(f"{SEED}:pg-race:{round_number}")
    entries = [{"email": f"pgrace.{round_number}.{n}@example.com", "name": f"Race {n}"}
               for n in range(NEW_SUBSCRIBERS_PER_ROUND)]
    arena.added.update(control.add_subscribers(ACCOUNT_ID, LIST_ID, entries))
    control.reset_stats()
    timeouts = [rng.choice(LOCK_TIMEOUTS) for _ in range(PROCESSES_PER_ROUND)]
    started = [job.start(["run"], label=f"race{round_number}", AWEBER_LOCK_TIMEOUT=timeout) for timeout in timeouts]
    results = [job.finish(process, timeout=120) for process in started]

    succeeded = 0
    for timeout, ran in zip(timeouts, results, strict=True):
        TALLY.note(SCENARIO, f"exit {ran.returncode}")
        with TALLY.attempt(SCENARIO):
            assert_no_traceback(ran)
            assert ran.returncode in (0, 75), ran.stderr
            if ran.returncode == 75:
                assert timeout != "60", ran.stderr
                lines = error_lines(ran.stderr)
                assert len(lines) == 1 and f"connection '{job.name}' is in use by host" in lines[0], ran.stderr
                continue
            succeeded += 1
            for line in ran.stdout.splitlines():
                arena.reported[int(json.loads(line)["id"])] += 1

    with TALLY.attempt(ROUND_SCENARIO):
        assert arena.standin.invalid_grants() == 0
        assert succeeded > 0
        assert arena.standin.token_requests() == succeeded  # one refresh per run that held the lease
        assert control.live_refresh_tokens() == {job.stored_refresh_token()}
        row = job.row()
        assert row.marker is None and row.lease_holder is None
        assert {i for i, n in arena.reported.items() if n > 1} == set()
        assert set(arena.reported) == arena.added


def test_after_the_races_one_more_refresh_succeeds(arena: Arena) -> None:
    job = arena.job
    ran = job.run(["refresh"], label="after-races")
    assert ran.returncode == 0, ran.stderr
    assert arena.standin.control.live_refresh_tokens() == {job.stored_refresh_token()}
    assert arena.standin.invalid_grants() == 0
