"""SIGKILL at random moments of ``aweber-job --connection NAME refresh`` on the PostgreSQL store: after every
kill the row loads and holds the live refresh token, or the next run names the earlier refresh whose answer
was lost (the one window no store can close: the stand-in rotated, the client died before saving)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.survival.conftest import StandInFactory
from tests.survival.harness import (
    SEED,
    TALLY,
    Workspace,
    assert_no_traceback,
    error_lines,
    killed_while_answer_in_flight,
    scaled,
)
from tests.survival.pg import PgJob, PgServer, pg_server, private_pg, token_hash
from tests.survival.report import KILL_PHASES

__all__ = ["pg_server", "private_pg"]  # fixtures, used by name

KILLS_PER_PROFILE = scaled(15, 75)
MAX_ITERATIONS_PER_PROFILE = scaled(50, 250)  # runs that finish before their kill do not count
SETTLE_SECONDS = 0.05
CALIBRATION_RUNS = 3


@dataclass(frozen=True)
class Profile:
    """The part of a refresh's lifetime to kill it in (fractions of a measured clean run)."""

    name: str
    earliest: float
    latest: float
    request_delay_seconds: float = 0.0


PROFILES = [
    Profile("pg refresh end to end", 0.30, 1.00),
    Profile("pg slow token endpoint", 0.30, 1.00, request_delay_seconds=0.15),
]


def measure_clean_run(job: PgJob) -> float:
    """Seconds a whole refresh takes from process start: the quickest of a few clean runs."""
    durations = []
    for n in range(CALIBRATION_RUNS):
        started = job.start(["refresh"], label=f"calibrate{n}")
        ran = job.finish(started, timeout=30)
        durations.append(time.monotonic() - started.started_at)
        assert ran.returncode == 0, ran.stderr
    return min(durations)


def phase_of(token_requests: int, saved: bool, rotated: bool) -> str:
    if saved:
        return KILL_PHASES[3]
    if token_requests == 0:
        return KILL_PHASES[0]
    return KILL_PHASES[2] if rotated else KILL_PHASES[1]


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_sigkill_never_corrupts_the_row_and_every_lost_answer_is_named(
    profile: Profile, pg_server: PgServer, start_standin: StandInFactory,
    new_workspace: Callable[..., Workspace],
) -> None:
    """Every SIGKILL leaves a row that loads and holds the live token, or a lost answer the next run names."""
    scenario = f"kill: {profile.name}"
    standin = start_standin(request_delay_seconds=profile.request_delay_seconds)
    control = standin.control
    job = PgJob(pg_server, new_workspace(standin), name="kill-me")
    job.seed()
    lifetime = measure_clean_run(job)
    TALLY.note(scenario, "clean run ms", int(lifetime * 1000))
    rng = random.Random(f"{SEED}:pg:{profile.name}")
    settle = SETTLE_SECONDS + profile.request_delay_seconds
    kills = 0
    for iteration in range(MAX_ITERATIONS_PER_PROFILE):
        if kills >= KILLS_PER_PROFILE:
            break
        live_before = control.live_refresh_tokens()
        token_before = job.stored_refresh_token()
        assert token_before in live_before
        control.reset_stats()
        started = job.start(["refresh"], label=f"kill{iteration}")
        time.sleep(max(0.0, started.started_at + lifetime * rng.uniform(profile.earliest, profile.latest)
                       - time.monotonic()))
        killed = started.kill()
        ran = job.finish(started, timeout=30)
        time.sleep(settle)
        with TALLY.attempt(scenario) as attempt:
            if killed:
                kills += 1
            else:
                assert ran.returncode == 0, ran.stderr
                TALLY.note(scenario, "finished before the kill")
            assert_no_traceback(ran)
            row = job.row()
            token_after = job.stored_refresh_token()  # the row loads: no corrupt row, ever
            live_after = control.live_refresh_tokens()
            saved = token_after != token_before
            if saved:
                # Saved: exactly one rotation, into the token the row now holds.
                assert live_after == (live_before - {token_before}) | {token_after}
                assert row.marker is None
            elif token_before in live_after:
                assert live_after == live_before  # nothing spent
            else:
                # The stand-in rotated and the row still holds the spent token: only when the answer was
                # still on its way when the kill came; and the next run must name that refresh.
                assert killed, "a run that finished left a spent token in the row"
                log = control.request_log()
                assert killed_while_answer_in_flight(log, started.killed_at), (
                    f"the live token is gone but the answer was not in flight at the kill: {log}")
                assert row.marker == token_hash(token_before), "a refresh was sent without its marker"
                assert_the_next_run_names_the_lost_answer(job, started.process.pid)
                attempt.mark_lost_answer()
            if killed:
                rotated = saved or token_before not in live_after
                TALLY.note(scenario, f"phase: {phase_of(standin.token_requests(), saved, rotated)}")
                if not saved and row.marker == token_hash(token_before):
                    TALLY.note(scenario, "marker left by the kill (the next run warns)")
            assert job.rescue_files() == []
            # A killed run may leave the room it reserved; the next run tidies it, so they never pile up.
            assert len(job.placeholders()) <= 1, job.placeholders()
        if attempt.outcome == "lost_answer":
            job.seed(force=True)
    assert kills >= KILLS_PER_PROFILE, f"only {kills} of the runs were still alive when the kill came"

    final = job.run(["refresh"], label="final")
    assert final.returncode == 0, final.stderr
    assert job.stored_refresh_token() in control.live_refresh_tokens()
    assert job.row().marker is None
    status = job.run(["status"], label="status")
    assert status.returncode == 0, status.stderr


def assert_the_next_run_names_the_lost_answer(job: PgJob, killed_pid: int) -> None:
    """Exit 77, one error line naming the earlier refresh of this connection (by the killed pid) and what to do."""
    before = job.row()
    invalid_before = job.ws.standin.invalid_grants()
    ran = job.run(["refresh"], label="after-lost-answer")
    assert ran.returncode == 77, ran.stderr
    assert_no_traceback(ran)
    lines = error_lines(ran.stderr)
    assert len(lines) == 1, ran.stderr
    line = lines[0]
    assert "invalid_grant" in line and f"--connection {job.name} login" in line, line
    assert ("an earlier run (host" in line and f"pid {killed_pid})" in line
            and f"began a refresh of connection '{job.name}'" in line and "never recorded its end" in line), line
    assert job.ws.standin.invalid_grants() == invalid_before + 1
    assert job.row().data == before.data
