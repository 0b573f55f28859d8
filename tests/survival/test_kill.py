"""SIGKILL at random moments of real runs against a stand-in process whose refresh tokens work once:
after every kill the token file loads and holds the live refresh token, or the next run explains
why not (the lost-answer window: the server rotated, the client died before saving)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from job.standin import Fault
from tests.survival.conftest import StandInFactory
from tests.survival.harness import (
    ACCOUNT_ID,
    LIST_ID,
    SEED,
    TALLY,
    Workspace,
    assert_no_traceback,
    error_lines,
    file_hash,
    killed_while_answer_in_flight,
    scaled,
)
from tests.survival.oracle import refresh_token_or_none
from tests.survival.report import KILL_PHASES

KILLS_PER_PROFILE = scaled(25, 125)
MAX_ITERATIONS_PER_PROFILE = scaled(80, 400)  # runs that finish before their kill do not count
# A killed client's request may still be processed by the stand-in afterwards (a server does not know
# its client died); wait that long before reading the stand-in's state.
SETTLE_SECONDS = 0.05


@dataclass(frozen=True)
class Profile:
    """A way of running, and the part of its lifetime to kill it in (fractions of a measured clean run)."""

    name: str
    command: str
    earliest: float
    latest: float
    request_delay_seconds: float = 0.0
    drip_seconds: float = 0.0


# The windows are fractions of how long a clean run of the same profile takes on this machine right
# now, so the kills land in the same phases on a fast laptop and on a loaded CI runner.
PROFILES = [
    Profile("start, lock, load, reserve", "refresh", 0.05, 0.70),
    Profile("refresh end to end", "refresh", 0.40, 0.95),
    Profile("slow token endpoint", "refresh", 0.30, 0.95, request_delay_seconds=0.15),
    Profile("token answer dripping", "refresh", 0.15, 0.95, drip_seconds=0.002),
    Profile("run: whole cycle", "run", 0.20, 0.95),
    Profile("run: task and state save", "run", 0.50, 0.95),
    Profile("run: slow API", "run", 0.20, 0.95, request_delay_seconds=0.05),
    Profile("run: token answer dripping", "run", 0.10, 0.95, drip_seconds=0.002),
]
CALIBRATION_RUNS = 3


def measure_clean_run(ws: Workspace, command: str, env: dict[str, str]) -> float:
    """Seconds a whole run of ``command`` takes from process start: the quickest of a few clean runs."""
    durations = []
    for n in range(CALIBRATION_RUNS):
        started = ws.start([command], env, label=f"calibrate{n}")
        ran = started.finish(timeout=30)
        durations.append(time.monotonic() - started.started_at)
        assert ran.returncode == 0, ran.stderr
    return min(durations)


def new_subscribers(standin_control: object, count: int, serial: int) -> None:
    """Append ``count`` subscribers now, so every run has something new for the task to report."""
    entries = [{"email": f"kill.{serial}.{n}@example.com", "name": f"Kill {serial} {n}"} for n in range(count)]
    standin_control.add_subscribers(ACCOUNT_ID, LIST_ID, entries)  # type: ignore[attr-defined]


def phase_of(ws: Workspace, token_requests: int, api_requests: int, saved: bool, rotated: bool,
             state_changed: bool) -> str:
    """Where in the run the kill landed, judged from what the stand-in saw and what is on disk."""
    if state_changed:
        return KILL_PHASES[5]
    if saved:
        return KILL_PHASES[4] if api_requests else KILL_PHASES[3]
    if token_requests == 0:
        return KILL_PHASES[0]
    return KILL_PHASES[2] if rotated else KILL_PHASES[1]


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_sigkill_anywhere_never_loses_the_refresh_token(
    profile: Profile, start_standin: StandInFactory, new_workspace: Callable[..., Workspace]
) -> None:
    """Every SIGKILL leaves a token file that loads and holds the live token, or a lost answer the next run explains."""
    scenario = f"kill: {profile.name}"
    standin = start_standin(request_delay_seconds=profile.request_delay_seconds)
    control = standin.control
    if profile.drip_seconds:
        control.inject(*[Fault(drip_seconds=profile.drip_seconds)] * (MAX_ITERATIONS_PER_PROFILE * 3),
                       path="/oauth2/token")
    ws = new_workspace(standin)
    ws.seed_tokens()
    env = ws.env()
    settle = SETTLE_SECONDS + profile.request_delay_seconds
    lifetime = measure_clean_run(ws, profile.command, env)
    TALLY.note(scenario, "clean run ms", int(lifetime * 1000))
    rng = random.Random(f"{SEED}:{profile.name}")
    kills = 0
    for iteration in range(MAX_ITERATIONS_PER_PROFILE):
        if kills >= KILLS_PER_PROFILE:
            break
        new_subscribers(control, 2, iteration)
        live_before = control.live_refresh_tokens()
        token_before = ws.file_refresh_token()
        assert token_before in live_before
        state_before = ws.task_state_bytes()
        control.reset_stats()
        delay = lifetime * rng.uniform(profile.earliest, profile.latest)
        started = ws.start([profile.command], env, label=f"kill{iteration}")
        time.sleep(max(0.0, started.started_at + delay - time.monotonic()))
        killed = started.kill()
        ran = started.finish(timeout=30)
        time.sleep(settle)
        with TALLY.attempt(scenario) as attempt:
            if not killed:
                # It finished before the moment came: a whole run, which must have succeeded.
                assert ran.returncode == 0, ran.stderr
                TALLY.note(scenario, "finished before the kill")
            else:
                kills += 1
            assert_no_traceback(ran)
            # The token file loads the way the job loads it (a stray temporary is never it) ...
            token_after = ws.file_refresh_token()
            live_after = control.live_refresh_tokens()
            state = ws.task_state()  # ... and the task state always parses.
            state_changed = ws.task_state_bytes() != state_before
            if state_changed:
                assert state is not None and isinstance(state.get("lists"), dict)
            token_requests, api_requests = standin.token_requests(), standin.api_requests()
            saved = token_after != token_before
            orphans = live_after - live_before
            if saved:
                # Saved: exactly one rotation, into the token the file now holds.
                assert live_after == (live_before - {token_before}) | {token_after}
            elif token_before in live_after:
                # Nothing spent: the server's tokens are as they were.
                assert live_after == live_before
            else:
                # The server rotated and the file still holds the spent token: the kill came after the answer.
                assert killed, "a run that finished left a spent token in the file"
                assert len(orphans) == 1 and live_after == (live_before - {token_before}) | orphans
                if orphans & temporaries_holding_tokens(ws):
                    # The new tokens reached their temporary before the rename: the next run puts them in place.
                    assert_the_next_run_recovers_the_interrupted_save(ws, orphans)
                    TALLY.note(scenario, "new tokens written, rename killed: recovered by the next run")
                else:
                    # The lost-answer window, and only it: the stand-in's log shows one rotation whose
                    # answer was still on its way when the kill came. Anything else is a lost token.
                    log = control.request_log()
                    assert killed_while_answer_in_flight(log, started.killed_at, profile.drip_seconds), (
                        f"the live token is gone but the answer was not in flight at the kill: {log}")
                    assert_the_next_run_explains_the_lost_answer(ws)
                    attempt.mark_lost_answer()
            if killed:
                rotated = saved or token_before not in live_after
                phase = phase_of(ws, token_requests, api_requests, saved, rotated, state_changed)
                TALLY.note(scenario, f"phase: {phase}")
            leftovers = ws.temporaries()
            if leftovers:
                TALLY.note(scenario, "temporaries left by a kill (removed by the next run)", len(leftovers))
        if attempt.outcome == "lost_answer":
            ws.seed_tokens()
    assert kills >= KILLS_PER_PROFILE, f"only {kills} of the runs were still alive when the kill came"

    # After all that, a plain run works, leaves no temporaries and holds the one token it was given.
    final = ws.run([profile.command], env, label="final")
    assert final.returncode == 0, final.stderr
    assert ws.temporaries() == []
    assert ws.file_refresh_token() in control.live_refresh_tokens()
    ws.task_state()


def temporaries_holding_tokens(ws: Workspace) -> set[str]:
    """The refresh tokens of the temporaries that hold a whole, valid token file (by the suite's own rules;
    blanks of a reservation or a write the kill cut short hold none)."""
    return {token for temp in ws.temporaries() if (token := refresh_token_or_none(temp)) is not None}


def assert_the_next_run_recovers_the_interrupted_save(ws: Workspace, orphans: set[str]) -> None:
    """The run after a kill between write and rename refreshes with the saved-but-not-renamed token."""
    invalid_before = ws.standin.invalid_grants()
    ran = ws.run(["refresh"], label="after-interrupted-save")
    assert ran.returncode == 0, ran.stderr
    assert_no_traceback(ran)
    assert "put the tokens an interrupted run saved" in ran.stderr
    assert ws.standin.invalid_grants() == invalid_before
    live = ws.standin.control.live_refresh_tokens()
    assert ws.file_refresh_token() in live and not orphans & live
    assert ws.temporaries() == []


def assert_the_next_run_explains_the_lost_answer(ws: Workspace) -> None:
    """The run after a lost answer exits 77 saying what happened and what to do, and changes nothing: AWeber
    refused the spent token (invalid_grant), or, when the lock file's record shows the answer had reached
    the killed run, the job says so without presenting the spent token at all."""
    before = file_hash(ws.token_file)
    invalid_before = ws.standin.invalid_grants()
    ran = ws.run(["refresh"], label="after-lost-answer")
    assert ran.returncode == 77, ran.stderr
    assert_no_traceback(ran)
    lines = error_lines(ran.stderr)
    assert len(lines) == 1, ran.stderr
    assert "aweber-job login" in lines[0], lines[0]
    if "it was not sent again" in lines[0]:
        assert "received new tokens and was killed before writing them" in lines[0], lines[0]
        assert ws.standin.invalid_grants() == invalid_before
    else:
        assert "invalid_grant" in lines[0], lines[0]
        assert ws.standin.invalid_grants() == invalid_before + 1
    assert file_hash(ws.token_file) == before
