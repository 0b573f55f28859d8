"""The token endpoint rotates, then answers 200 with odd fields beside the new refresh token (or with pure
garbage): real `aweber-job run` processes against the stand-in in its own process, with reuse detection on.
Whenever the new refresh token arrived whole, the token file loads and holds it, and the next run exits 0.
When no refresh token arrived at all, the run says the old one may have been spent, and the next run can only
be refused: that is its own outcome in the tally, not a lost answer (the answer did arrive)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from job.standin import Fault
from tests.survival.harness import (
    TALLY,
    StandInProcess,
    Workspace,
    assert_no_traceback,
    error_lines,
    file_hash,
    standin_config,
)

SCENARIO = "odd token answers (rotated, then a 200 with odd fields)"


@dataclass(frozen=True)
class OddAnswer:
    """One odd answer and what a run must make of it, written out here (not read from the stand-in)."""

    name: str
    exit_code: int  # of the run that gets it
    carries_refresh_token: bool = True


ODD_ANSWERS = [
    *(OddAnswer(name, 0) for name in (
        "expires_in_huge", "expires_in_overflow", "expires_in_nan", "expires_in_negative", "expires_in_zero",
        "expires_in_string", "expires_in_word", "expires_in_short", "expires_in_missing",
        "scope_object", "scope_non_strings", "scope_lone_surrogate", "scope_deeply_nested",
        "lone_surrogate_in_unknown_member", "invalid_utf8_in_unknown_member",
        "deep_nesting_in_unknown_member", "deep_nesting_before_the_tokens", "deep_object_nesting",
        "unknown_members_of_every_shape", "duplicate_members",
    )),
    # Nothing this run can use (no usable access token, another token type, broken JSON): saved, then 76.
    *(OddAnswer(name, 76) for name in (
        "token_type_mac", "token_type_number", "token_type_lone_surrogate",
        "access_token_missing", "access_token_empty", "access_token_number", "access_token_lone_surrogate",
        "access_token_deeply_nested", "broken_json_after_the_tokens",
    )),
    *(OddAnswer(name, 76, carries_refresh_token=False) for name in (
        "garbage", "json_without_tokens", "refresh_token_only_in_a_broken_string",
    )),
]


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandInProcess]:
    """One stand-in process for every odd answer (each case has its own grant), refusing replayed tokens."""
    config = standin_config(list_size=6)
    config["reuse_detection"] = True
    process = StandInProcess(tmp_path_factory.mktemp("standin"), config)
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("odd", ODD_ANSWERS, ids=[odd.name for odd in ODD_ANSWERS])
def test_a_refresh_token_that_arrived_survives_an_odd_answer(
    odd: OddAnswer, standin: StandInProcess, new_workspace: Callable[..., Workspace]
) -> None:
    """A run that gets the odd answer keeps the new refresh token in a token file that loads; the next run exits 0.
    An answer with no refresh token in it leaves the file as it was and says the old token may have been spent."""
    control = standin.control
    ws = new_workspace(standin)
    seeded = ws.seed_tokens()
    file_before = file_hash(ws.token_file)
    replays_before = control.reuse_stats()["spent_refresh_tokens_presented"]
    control.inject(Fault(odd_answer=odd.name), path="/oauth2/token")
    ran = ws.run(["run"], label="odd-answer", timeout=60)
    TALLY.note(SCENARIO, f"exit {ran.returncode}")
    with TALLY.attempt(SCENARIO) as attempt:
        assert_no_traceback(ran)
        assert "unexpected error" not in ran.stderr
        assert ran.returncode == odd.exit_code, ran.stderr
        lines = error_lines(ran.stderr)
        assert len(lines) == (0 if odd.exit_code == 0 else 1), ran.stderr
        assert ws.temporaries() == []
        live = control.live_refresh_tokens()
        assert seeded not in live  # the stand-in rotated in every case
        if odd.carries_refresh_token:
            assert ws.file_refresh_token() in live  # loads as the job loads it, and holds the live token
            if odd.exit_code:
                assert "the new refresh token was saved" in lines[0] and "next run" in lines[0]
                assert ws.task_state() is None
            again = ws.run(["run"], label="after-odd-answer", timeout=60)
            TALLY.note(SCENARIO, f"next run exit {again.returncode}")
            assert again.returncode == 0, again.stderr
            assert ws.file_refresh_token() in control.live_refresh_tokens()
            assert ws.task_state() is not None
            # Neither run ever presented a spent refresh token (a replay would have revoked the grant).
            assert control.reuse_stats()["spent_refresh_tokens_presented"] == replays_before
        else:
            assert file_hash(ws.token_file) == file_before
            assert "may have been spent" in lines[0]
            # The only token the job holds was spent by the request whose garbled answer told nothing.
            again = ws.run(["run"], label="after-garbled-answer", timeout=60)
            TALLY.note(SCENARIO, f"next run exit {again.returncode}")
            assert again.returncode == 77, again.stderr
            assert "aweber-job login" in again.stderr
            attempt.mark_garbled_answer()
