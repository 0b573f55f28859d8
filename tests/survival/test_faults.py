"""Every kind of misbehaviour from the stand-in, on every request of a `run` (the token endpoint and each
API request of the task): the exit code docs/design.md §7 gives, and a token file that loads and holds the live
token — or, when no rotation happened or its answer was lost, is left as it was."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from job.standin import Fault
from tests.survival.conftest import StandInFactory
from tests.survival.harness import (
    ACCOUNT_ID,
    LIST_ID,
    TALLY,
    Workspace,
    answer_never_arrived,
    assert_no_traceback,
    error_lines,
    file_hash,
)

HTML_PAGE = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
FIFTY_MEGABYTES = 50_000_000

# Where in a run the fault strikes: the path prefix of the first request it applies to.
WHERE = {
    "token endpoint": "/oauth2/token",
    "GET accounts": "/1.0/accounts",
    "GET lists": f"/1.0/accounts/{ACCOUNT_ID}/lists",
    "GET find subscribers": f"/1.0/accounts/{ACCOUNT_ID}/lists/{LIST_ID}/subscribers",
}
API = ("GET accounts", "GET lists", "GET find subscribers")


@dataclass(frozen=True)
class Misbehaviour:
    """One kind of fault, the variables it needs, and the exit code docs/design.md §7 gives for it at each place."""

    name: str
    faults: tuple[Fault, ...]
    at_token: int
    at_api: int
    env: tuple[tuple[str, str], ...] = ()
    # At the token endpoint: the server rotates, then the answer never arrives whole; the words explaining it.
    explains_lost_answer: str = ""
    places: tuple[str, ...] = tuple(WHERE)
    # Words the job's stderr must hold (to show the fault did strike where it was meant to).
    words: str = ""


CONSUMED = "consumed by the request whose answer never arrived"

MISBEHAVIOURS = [
    Misbehaviour("connection reset before processing", (Fault(drop="before"),), 0, 0),
    Misbehaviour("answer lost after processing", (Fault(drop="after"),), 77, 0, explains_lost_answer=CONSUMED),
    Misbehaviour("delay past the read timeout", (Fault(delay_seconds=2.0),), 0, 0,
                 (("AWEBER_HTTP_TIMEOUT", "1"),)),
    Misbehaviour("5xx burst (500, 503)", (Fault(status=500), Fault(status=503)), 0, 0),
    Misbehaviour("503 until the retry deadline", tuple(Fault(status=503) for _ in range(40)), 75, 75,
                 (("AWEBER_RETRY_DEADLINE", "2"),)),
    Misbehaviour("429 with Retry-After", (Fault(status=429, retry_after="1"),), 0, 0),
    Misbehaviour("garbage body with 200",
                 (Fault(status=200, body=b"\x00\xff{{not json", content_type="application/json"),), 76, 1),
    Misbehaviour("truncated body", (Fault(truncate=True),), 77, 0, explains_lost_answer=CONSUMED),
    Misbehaviour("50 MB body with 200", (Fault(status=200, body_size=FIFTY_MEGABYTES),), 76, 1),
    Misbehaviour("HTML error page (502)", (Fault(status=502, body=HTML_PAGE, content_type="text/html"),), 0, 0),
    Misbehaviour("HTML page with 200", (Fault(status=200, body=HTML_PAGE, content_type="text/html"),), 76, 1),
    # The read timeout bounds each wait for bytes, not the whole answer: a slow answer that keeps coming
    # (~150 bytes 20 ms apart: 3 s against a 1 s timeout and a 2 s deadline) is read whole and used; a
    # pause between bytes longer than the timeout loses the answer at the token endpoint, and is retried
    # at the API (a GET is safe to repeat).
    Misbehaviour("slow answer, each byte within the read timeout", (Fault(drip_seconds=0.02),), 0, 0,
                 (("AWEBER_HTTP_TIMEOUT", "1"), ("AWEBER_RETRY_DEADLINE", "2")), places=("token endpoint",)),
    Misbehaviour("pause between bytes past the read timeout", (Fault(drip_seconds=1.5),), 77, 0,
                 (("AWEBER_HTTP_TIMEOUT", "1"),), explains_lost_answer=CONSUMED, places=("token endpoint",)),
    Misbehaviour("slow drip within the read timeout", (Fault(drip_seconds=0.001),), 77, 0,
                 (("AWEBER_HTTP_TIMEOUT", "0.5"),), places=API),
    Misbehaviour("drip pausing past the read timeout", (Fault(drip_seconds=0.7),), 77, 0,
                 (("AWEBER_HTTP_TIMEOUT", "0.5"),), places=API, words="stopped sending its answer"),
    Misbehaviour("401", (Fault(status=401),), 77, 0),
    Misbehaviour("404 with AWeber's envelope", (Fault(status=404, envelope=True, message="Not Found"),), 77, 1),
]

CASES = [(m, where) for m in MISBEHAVIOURS for where in m.places]


@pytest.mark.parametrize(("misbehaviour", "where"), CASES, ids=[f"{m.name} @ {w}" for m, w in CASES])
def test_fault_gives_the_spec_exit_code_and_keeps_the_token(
    misbehaviour: Misbehaviour, where: str, start_standin: StandInFactory, new_workspace: Callable[..., Workspace]
) -> None:
    """A fault at one request of a run ends it with the exit code of docs/design.md §7; the token file holds the
    live token, or is unchanged when nothing rotated or the rotated answer was lost (and then the message says
    so)."""
    at_token = where == "token endpoint"
    expected = misbehaviour.at_token if at_token else misbehaviour.at_api
    scenario = f"faults @ {'token endpoint' if at_token else 'API requests of the task'}"
    standin = start_standin(list_size=6)
    ws = new_workspace(standin)
    token_before = ws.seed_tokens()
    file_before = file_hash(ws.token_file)
    live_before = standin.control.live_refresh_tokens()
    standin.control.inject(*misbehaviour.faults, path=WHERE[where])
    ran = ws.run(["run"], ws.env(**dict(misbehaviour.env)), label="fault", timeout=90)
    TALLY.note(scenario, f"exit {ran.returncode}")
    with TALLY.attempt(scenario) as attempt:
        assert_no_traceback(ran)
        assert ran.returncode == expected, ran.stderr
        assert misbehaviour.words in ran.stderr
        lines = error_lines(ran.stderr)
        assert len(lines) == (0 if expected == 0 else 1), ran.stderr
        token_after = ws.file_refresh_token()
        live_after = standin.control.live_refresh_tokens()
        assert ws.temporaries() == []
        if expected == 0:
            assert token_after in live_after and token_after != token_before
            assert live_after == {token_after}
            assert ws.task_state() is not None  # the watermark moved
        elif at_token:
            assert file_hash(ws.token_file) == file_before
            assert ws.task_state() is None
            if token_before not in live_after:
                # The server rotated: only an answer its log shows undelivered may leave the file behind.
                log = standin.control.request_log()
                assert answer_never_arrived(log), f"the live token is gone but its answer was delivered: {log}"
                assert len(live_after) == 1
                # The run says so and what to do.
                assert misbehaviour.explains_lost_answer, ran.stderr
                assert misbehaviour.explains_lost_answer in lines[0], lines[0]
                assert "aweber-job login" in lines[0]
                attempt.mark_lost_answer()
            else:
                assert live_after == live_before
        else:
            # The task failed after the refresh: the tokens are saved, the watermark did not move.
            assert live_after == {token_after} and token_after != token_before
            assert ws.task_state() is None
