"""Refresh on start against the stand-in over real HTTP: outcomes, retries, lost answers, races, kills,
and not one secret in anything the job prints."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from job.auth.oauth import Client, TokenCall, refresh_tokens
from job.config import load_settings
from job.errors import JobError
from job.run.keeper import TokenKeeper
from job.standin import Fault, StandIn
from job.stores.file.tokenfile import load_token_file
from tests.support.jobs import (
    CONFIDENTIAL_ID,
    CONFIDENTIAL_SECRET,
    PUBLIC_ID,
    REPO,
    FakeTime,
    JobFiles,
    invalid_grants,
    run_job,
    token_requests,
)


@dataclass
class Seen:
    """Every secret value a test saw in a token file, to scan the job's output for."""

    values: set[str] = field(default_factory=lambda: {CONFIDENTIAL_SECRET})

    def add_file(self, path: Path) -> None:
        if path.is_file():
            try:
                document = json.loads(path.read_text())
            except ValueError:
                return
            token = document.get("token", document)
            for key in ("access_token", "refresh_token"):
                if isinstance(token.get(key), str) and token[key]:
                    self.values.add(token[key])

    def assert_absent_from(self, text: str) -> None:
        for value in self.values:
            assert value not in text, "a secret reached the job's output"
        for marker in ("grant_type=", "refresh_token=", "Authorization: Basic", "client_secret="):
            assert marker not in text, f"a request body or header reached the job's output: {marker}"


def wait_for_token_requests(job: JobFiles, expected: int, timeout: float = 6) -> int:
    """The stand-in's token-request count once it reaches ``expected`` (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    count = token_requests(job.standin)
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = token_requests(job.standin)
    return count


def refresh(job: JobFiles, seen: Seen, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `aweber-job -vv refresh` and check its whole output for secrets."""
    seen.add_file(job.token_file)
    result = run_job(["-vv", "refresh", *args], job.env(**env))
    seen.add_file(job.token_file)
    seen.assert_absent_from(result.stdout + result.stderr)
    return result


@pytest.fixture
def seen() -> Seen:
    return Seen()


@dataclass(frozen=True)
class Case:
    name: str
    faults: tuple[Fault, ...]
    exit_code: int
    attempts: int
    changed: bool
    words: str = ""
    env: tuple[tuple[str, str], ...] = ()


CASES = [
    Case("200", (), 0, 1, True, "refresh token"),
    Case("408 then 200", (Fault(status=408),), 0, 2, True, "retrying"),
    Case("429 Retry-After then 200", (Fault(status=429, retry_after="1"),), 0, 2, True, "retrying in 1.0 s"),
    Case("500 then 200", (Fault(status=500),), 0, 2, True, "retrying"),
    Case("503 then 200", (Fault(status=503),), 0, 2, True, "temporarily_unavailable"),
    Case("server_error in a 400", (Fault(status=400, oauth_error="server_error"),), 0, 2, True, "retrying"),
    Case("503 until the deadline", tuple(Fault(status=503) for _ in range(30)), 75, -1, False,
         "unavailable", (("AWEBER_RETRY_DEADLINE", "3"),)),
    Case("400 invalid_grant", (Fault(status=400, oauth_error="invalid_grant"),), 77, 1, False,
         "authorize again: aweber-job login"),
    Case("401 invalid_client", (Fault(status=401, oauth_error="invalid_client"),), 77, 1, False,
         "check AWEBER_CLIENT_ID and the client secret"),
    Case("400 AWeber envelope", (Fault(status=400, envelope=True, message="Request does not have OAuth credentials."),),
         77, 1, False, "BadRequestError"),
    Case("403 unauthorized_client", (Fault(status=403, oauth_error="unauthorized_client"),), 77, 1, False,
         "unauthorized_client"),
    Case("200 garbage", (Fault(status=200, body=b"<html>Service OK</html>", content_type="text/html"),),
         76, 1, False, "may have been spent"),
    Case("200 without access_token", (Fault(status=200, body=b'{"token_type": "bearer"}'),), 76, 1, False,
         "no usable access_token"),
    Case("200 mac token", (Fault(status=200, body=b'{"access_token": "abcdefgh", "token_type": "mac"}'),),
         76, 1, False, "other than bearer"),
    Case("50 MB body", (Fault(status=200, body_size=50_000_000),), 76, 1, False, "more than"),
    Case("400 whose JSON nests too deeply", (Fault(status=400, body=b'{"error": ' + b"[" * 5000 + b"]" * 5000 + b"}"),),
         77, 1, False, "HTTP 400"),
    Case("200 that is a deeply nested array", (Fault(status=200, body=b"[" * 5000 + b"]" * 5000),), 76, 1, False,
         "not a JSON object"),
    Case("read timeout then answer", (Fault(delay_seconds=3),), 0, 2, True, "resending once",
         (("AWEBER_HTTP_TIMEOUT", "1"),)),
    Case("dropped before processing", (Fault(drop="before"),), 0, 2, True, "resending once"),
    # ~150 bytes 20 ms apart: three seconds in all, but never a second without a byte.
    Case("slow answer, each byte within the read timeout", (Fault(drip_seconds=0.02),), 0, 1, True,
         "refresh token", (("AWEBER_HTTP_TIMEOUT", "1"),)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_token_endpoint_outcomes(job: JobFiles, seen: Seen, case: Case) -> None:
    """Each answer is retried or not as docs/design.md §4 says, with the right exit code; the file changes only
    on success."""
    job.write_tokens()
    before = job.token_file.read_bytes()
    old_refresh = json.loads(before)["refresh_token"]
    job.standin.inject(*case.faults, path="/oauth2/token")
    result = refresh(job, seen, **dict(case.env))
    assert result.returncode == case.exit_code, result.stderr
    if case.attempts >= 0:
        # A delayed request is counted when the stand-in finishes it, which may be after the job exits.
        assert wait_for_token_requests(job, case.attempts) == case.attempts
    else:
        assert token_requests(job.standin) >= 2
    assert case.words in result.stderr
    assert "Traceback" not in result.stderr
    if case.changed:
        saved = json.loads(job.token_file.read_text())
        assert saved["refresh_token"] in job.standin.live_refresh_tokens()
        assert saved["refresh_token"] != old_refresh
        assert saved["expires_at"] == pytest.approx(time.time() + 7200, abs=30)
    else:
        assert job.token_file.read_bytes() == before
    if result.returncode != 0:
        assert len([line for line in result.stderr.splitlines() if ": error:" in line]) == 1


# The longest access-token lifetime the job believes (a year); a longer or infinite one is clamped to it.
LONGEST_LIFETIME = 365 * 86400


@dataclass(frozen=True)
class Odd:
    """What a run must make of one odd answer that carries the new refresh token (or, for garbage, none)."""

    name: str
    exit_code: int
    saved: bool  # the new refresh token is in the file afterwards
    expires_in: float | None = None  # what the file then says (None: no expires_in and no expires_at)
    words: tuple[str, ...] = ()  # words stderr must hold


SAVED_AND_UNUSABLE = ("the new refresh token was saved", "the next run will refresh again")
SPENT = ("may have been spent",)

ODD_ANSWERS = [
    Odd("expires_in_huge", 0, True, LONGEST_LIFETIME, ("expires_in",)),
    Odd("expires_in_overflow", 0, True, LONGEST_LIFETIME, ("expires_in",)),
    Odd("expires_in_nan", 0, True, None, ("expires_in",)),
    Odd("expires_in_negative", 0, True, None, ("expires_in",)),
    Odd("expires_in_zero", 0, True, None, ("expires_in",)),
    Odd("expires_in_string", 0, True, 7200),
    Odd("expires_in_word", 0, True, None, ("expires_in",)),
    Odd("expires_in_short", 0, True, 30),
    Odd("expires_in_missing", 0, True, None),
    Odd("scope_object", 0, True, 7200, ("scope",)),
    Odd("scope_non_strings", 0, True, 7200, ("scope",)),
    Odd("scope_lone_surrogate", 0, True, 7200, ("scope",)),
    Odd("scope_deeply_nested", 0, True, 7200, ("scope", "nests too deeply")),
    Odd("lone_surrogate_in_unknown_member", 0, True, 7200),
    Odd("invalid_utf8_in_unknown_member", 0, True, 7200),
    Odd("deep_nesting_in_unknown_member", 0, True, 7200, ("'extra'", "nests too deeply")),
    Odd("deep_nesting_before_the_tokens", 0, True, 7200, ("'extra'", "nests too deeply")),
    Odd("deep_object_nesting", 0, True, 7200, ("'extra'", "nests too deeply")),
    Odd("unknown_members_of_every_shape", 0, True, 7200),
    Odd("duplicate_members", 0, True, 7200),
    Odd("token_type_mac", 76, True, None, ("other than bearer", *SAVED_AND_UNUSABLE)),
    Odd("token_type_number", 76, True, None, ("other than bearer", *SAVED_AND_UNUSABLE)),
    Odd("token_type_lone_surrogate", 76, True, None, ("other than bearer", *SAVED_AND_UNUSABLE)),
    Odd("access_token_missing", 76, True, None, ("no usable access_token", *SAVED_AND_UNUSABLE)),
    Odd("access_token_empty", 76, True, None, ("no usable access_token", *SAVED_AND_UNUSABLE)),
    Odd("access_token_number", 76, True, None, ("no usable access_token", *SAVED_AND_UNUSABLE)),
    Odd("access_token_lone_surrogate", 76, True, None, ("no usable access_token", *SAVED_AND_UNUSABLE)),
    Odd("access_token_deeply_nested", 76, True, None, ("no usable access_token", *SAVED_AND_UNUSABLE)),
    Odd("broken_json_after_the_tokens", 76, True, None, ("not well-formed JSON", *SAVED_AND_UNUSABLE)),
    Odd("garbage", 76, False, words=("not a JSON object", *SPENT)),
    Odd("json_without_tokens", 76, False, words=SPENT),
    Odd("refresh_token_only_in_a_broken_string", 76, False, words=SPENT),
]


@pytest.mark.parametrize("odd", ODD_ANSWERS, ids=[o.name for o in ODD_ANSWERS])
def test_a_refresh_token_that_arrived_is_saved_whatever_else_the_answer_holds(
    job: JobFiles, seen: Seen, odd: Odd
) -> None:
    """A rotated answer with odd fields: the new refresh token is saved in a file that loads, then the run may fail
    (76, saying so), and the next run succeeds; an answer without a refresh token leaves the file as it was."""
    job.write_tokens()
    before = job.token_file.read_bytes()
    job.standin.inject(Fault(odd_answer=odd.name), path="/oauth2/token")
    started = time.time()
    result = refresh(job, seen)
    assert result.returncode == odd.exit_code, result.stderr
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr
    for words in odd.words:
        assert words in result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error:" in line]
    assert len(errors) == (0 if odd.exit_code == 0 else 1), result.stderr
    assert token_requests(job.standin) == 1
    (live,) = job.standin.live_refresh_tokens()
    if not odd.saved:
        assert job.token_file.read_bytes() == before
        again = refresh(job, seen)
        assert again.returncode == 77, again.stderr
        return
    loaded = load_token_file(job.token_file).tokens
    assert loaded.refresh_token == live
    saved = job.read_tokens()
    if odd.expires_in is None:
        assert "expires_in" not in saved and "expires_at" not in saved
    else:
        assert saved["expires_in"] == odd.expires_in
        assert saved["expires_at"] == pytest.approx(started + odd.expires_in, abs=30)
    assert "scope" not in saved  # no usable scope came, and the file had none
    assert saved["token_type"] == "bearer"
    if odd.exit_code != 0:
        assert saved["access_token"] == ""
    again = refresh(job, seen)
    assert again.returncode == 0, again.stderr
    assert job.read_tokens()["refresh_token"] in job.standin.live_refresh_tokens()


def test_answer_without_refresh_token_keeps_the_old_one(job: JobFiles, seen: Seen) -> None:
    """A 200 with only an access token: the new access token is saved and the old refresh token kept."""
    job.write_tokens()
    old = job.read_tokens()
    job.standin.inject(Fault(status=200, body=b'{"access_token": "fresh-access-0001", "expires_in": 7200}'),
                       path="/oauth2/token")
    seen.values.add("fresh-access-0001")
    result = refresh(job, seen)
    assert result.returncode == 0, result.stderr
    saved = job.read_tokens()
    assert saved["refresh_token"] == old["refresh_token"]
    assert saved["access_token"] == "fresh-access-0001"
    assert "the old one is kept" in result.stderr


def test_connection_refused_is_temporary(job: JobFiles, seen: Seen) -> None:
    """Nothing listening at the token URL: retried within the deadline, then exit 75, file untouched."""
    job.write_tokens()
    before = job.token_file.read_bytes()
    result = refresh(job, seen, AWEBER_TOKEN_URL="http://127.0.0.1:9/oauth2/token", AWEBER_RETRY_DEADLINE="2")
    assert result.returncode == 75, result.stderr
    assert "could not connect" in result.stderr
    assert job.token_file.read_bytes() == before


def test_retrying_the_token_url_says_once_how_long_it_will_keep_trying(job: JobFiles, seen: Seen) -> None:
    """An unreachable token URL is retried up to AWEBER_RETRY_DEADLINE: the first retry's line says how long that is,
    and only that line does."""
    job.write_tokens()
    result = refresh(job, seen, AWEBER_TOKEN_URL="http://127.0.0.1:9/oauth2/token", AWEBER_RETRY_DEADLINE="3")
    assert result.returncode == 75, result.stderr
    retries = [line for line in result.stderr.splitlines() if "retrying in" in line]
    assert len(retries) >= 2, result.stderr
    assert re.search(r"\(attempt 2\); it keeps trying for up to [23] s more, 10 attempts in all$", retries[0]), retries
    assert all("keeps trying" not in line for line in retries[1:])


def test_lost_answer_then_invalid_grant_explains_the_consumed_token(job: JobFiles, seen: Seen) -> None:
    """The stand-in rotates then drops the connection; the one resend gets invalid_grant: exit 77, explained."""
    job.write_tokens()
    before = job.token_file.read_bytes()
    job.standin.inject(Fault(drop="after"), path="/oauth2/token")
    result = refresh(job, seen)
    assert result.returncode == 77, result.stderr
    assert "most likely consumed by the request whose answer never arrived" in result.stderr
    assert "aweber-job login" in result.stderr
    assert token_requests(job.standin) == 2
    assert job.token_file.read_bytes() == before


def sends_of(standin: StandIn, refresh_token: str) -> int:
    """How many token requests reached the stand-in carrying ``refresh_token`` (counted by fingerprint)."""
    wanted = hashlib.sha256(refresh_token.encode()).hexdigest()[:8]
    return sum(1 for entry in standin.request_log() if entry.get("refresh_token_fingerprint") == wanted)


def refresh_in_process(standin: StandIn, refresh_token: str, fake: FakeTime, deadline: float) -> JobError:
    """Refresh once through TokenCall against the stand-in; return the error it ends with."""
    with requests.Session() as session:
        call = TokenCall(session=session, url=standin.token_url, timeout_seconds=5, deadline_seconds=deadline,
                         monotonic=fake.monotonic, sleep=fake.sleep)
        with pytest.raises(JobError) as caught:
            refresh_tokens(call, Client(CONFIDENTIAL_ID, CONFIDENTIAL_SECRET), refresh_token)
    return caught.value


def test_a_request_whose_answer_was_lost_is_resent_once_whatever_the_deadline(standin: StandIn) -> None:
    """Every answer lost, a 120 s retry deadline: one refresh token is sent twice in all, then exit 75, explained."""
    token = str(standin.issue_tokens(CONFIDENTIAL_ID)["refresh_token"])
    standin.inject(*[Fault(drop="after") for _ in range(50)], path="/oauth2/token")
    fake = FakeTime(0.0)
    error = refresh_in_process(standin, token, fake, deadline=120)
    assert sends_of(standin, token) == 2
    assert error.exit_code == 75
    assert "may have been used by the request whose answer was lost" in error.message
    assert "not sent again" in error.message
    assert fake.now < 120


def test_after_a_lost_answer_a_transient_answer_to_the_resend_ends_the_refresh(standin: StandIn) -> None:
    """Lost, then 503 to the resend: no third send of the same refresh token; exit 75 naming both."""
    token = str(standin.issue_tokens(CONFIDENTIAL_ID)["refresh_token"])
    standin.inject(Fault(drop="after"), Fault(status=503), path="/oauth2/token")
    error = refresh_in_process(standin, token, FakeTime(0.0), deadline=120)
    assert sends_of(standin, token) == 2
    assert error.exit_code == 75
    assert "503" in error.message and "answer was lost" in error.message


def test_with_reuse_detection_a_spent_token_is_never_presented_twice(standin: StandIn) -> None:
    """A server that revokes a grant on replay: after a lost answer the job presents the spent token once, no more."""
    standin.set_reuse_detection(True)
    token = str(standin.issue_tokens(CONFIDENTIAL_ID)["refresh_token"])
    standin.inject(*[Fault(drop="after") for _ in range(50)], path="/oauth2/token")
    error = refresh_in_process(standin, token, FakeTime(0.0), deadline=120)
    assert standin.reuse_stats()["spent_refresh_tokens_presented"] <= 1
    assert sends_of(standin, token) == 2
    assert error.exit_code == 75


def test_invalid_grant_after_a_500_says_the_500_may_have_consumed_the_token(job: JobFiles, seen: Seen) -> None:
    """A 500, then invalid_grant on the retry: exit 77, and the message says the 500 may have spent the token."""
    job.write_tokens()
    job.standin.inject(Fault(status=500), Fault(status=400, oauth_error="invalid_grant"), path="/oauth2/token")
    result = refresh(job, seen)
    assert result.returncode == 77, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if ": error:" in line]
    assert "HTTP 500" in line and "may have consumed the refresh token" in line
    assert "aweber-job login" in line


@pytest.mark.parametrize("odd_answer", ["expires_in_missing", "expires_in_nan", "expires_in_short"])
def test_a_run_refreshes_once_when_the_answer_gives_no_usable_lifetime(
    job: JobFiles, seen: Seen, odd_answer: str
) -> None:
    """No expires_in, NaN, or one shorter than the leeway: the run refreshes on start only, not before each request."""
    job.standin.add_account(1)
    job.standin.add_list(1, 11, "Newsletter", size=250, seed=3)
    job.write_tokens()
    # Every refresh of the run would get the same answer.
    job.standin.inject(*[Fault(odd_answer=odd_answer) for _ in range(10)], path="/oauth2/token")
    seen.add_file(job.token_file)
    result = run_job(["run", "--since", "60d"], job.env(AWEBER_REFRESH_LEEWAY="300"))
    seen.add_file(job.token_file)
    seen.assert_absent_from(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr
    api: dict[str, int] = job.standin.stats()["api"]  # type: ignore[assignment]
    assert sum(api.values()) >= 4
    assert token_requests(job.standin) == 1
    assert job.standin.live_refresh_tokens() == {job.read_tokens()["refresh_token"]}


class SteppedClock:
    """A wall clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("odd_answer", "leeway", "quiet_until", "due_at"),
    [
        # A usable lifetime longer than the leeway: refresh when less than the leeway is left.
        (None, 300, 6899, 6901),
        ("expires_in_string", 300, 6899, 6901),
        # No usable lifetime, or one shorter than the leeway: AWeber's documented 7200 s is assumed.
        ("expires_in_missing", 300, 6899, 6901),
        ("expires_in_nan", 300, 6899, 6901),
        ("expires_in_negative", 300, 6899, 6901),
        ("expires_in_short", 300, 6899, 6901),
        # A leeway longer than the lifetime: each access token is used for half its lifetime at least.
        (None, 10_000, 3599, 3601),
        ("expires_in_missing", 10_000, 3599, 3601),
    ],
)
def test_one_refresh_per_access_token_lifetime(
    job: JobFiles, odd_answer: str | None, leeway: float, quiet_until: float, due_at: float
) -> None:
    """After a refresh, ensure_fresh leaves the new access token alone until it is due, then refreshes once."""
    job.write_tokens()
    clock = SteppedClock()
    keeper = TokenKeeper(load_settings(job.env()), requests.Session(), clock=clock).open()
    try:
        if odd_answer:
            job.standin.inject(Fault(odd_answer=odd_answer), path="/oauth2/token")
        keeper.refresh("refresh on start")
        started = clock.now
        for offset in (0, 1, quiet_until / 2, quiet_until):
            clock.now = started + offset
            keeper.ensure_fresh(leeway)
        assert token_requests(job.standin) == 1
        clock.now = started + due_at
        keeper.ensure_fresh(leeway)
        keeper.ensure_fresh(leeway)
        assert token_requests(job.standin) == 2
    finally:
        keeper.close()
    assert job.standin.live_refresh_tokens() == {job.read_tokens()["refresh_token"]}


def test_public_client_refreshes_with_client_id_in_the_body(job: JobFiles, seen: Seen) -> None:
    """A public client sends client_id in the body and no Authorization header."""
    job.client_id = PUBLIC_ID
    job.write_tokens()
    result = refresh(job, seen)
    assert result.returncode == 0, result.stderr
    token_calls = [e for e in job.standin.request_log() if e["kind"] == "token"]
    assert [e["client_auth"] for e in token_calls] == ["public"]
    assert job.read_tokens()["refresh_token"] in job.standin.live_refresh_tokens()


def test_credentials_json_shape_supplies_the_client_and_is_kept(job: JobFiles, seen: Seen) -> None:
    """AWeber's credentials.json shape: client id and secret come from the file; the shape is kept."""
    job.write_tokens(shape="credentials.json")
    env = job.env()
    del env["AWEBER_CLIENT_ID"], env["AWEBER_CLIENT_SECRET"]
    result = run_job(["-vv", "refresh"], env)
    seen.add_file(job.token_file)
    seen.assert_absent_from(result.stderr + result.stdout)
    assert result.returncode == 0, result.stderr
    document = json.loads(job.token_file.read_text())
    assert set(document) == {"client_id", "client_secret", "token"}
    assert document["token"]["refresh_token"] in job.standin.live_refresh_tokens()


def test_clock_skew_is_warned_about(tmp_path: Path, seen: Seen) -> None:
    """A server Date fifteen minutes ahead of the local clock gives a warning; the refresh still succeeds."""
    skewed = StandIn(clients={CONFIDENTIAL_ID: CONFIDENTIAL_SECRET}, clock=lambda: time.time() + 900)
    with skewed:
        job = JobFiles(root=tmp_path, standin=skewed)
        job.write_tokens()
        result = refresh(job, seen)
    assert result.returncode == 0, result.stderr
    # The Date header has one-second granularity, so the skew reads 899 or 900 s.
    assert re.search(r"the local clock is (899|900) s behind the token endpoint's", result.stderr)


def test_no_clock_skew_warning_when_clocks_agree(job: JobFiles, seen: Seen) -> None:
    """With agreeing clocks there is no skew warning."""
    job.write_tokens()
    result = refresh(job, seen)
    assert result.returncode == 0, result.stderr
    assert "local clock" not in result.stderr


@pytest.mark.parametrize("count", [2, 16])
def test_many_refreshes_started_together_never_spend_a_token_twice(job: JobFiles, count: int) -> None:
    """N processes at once on one token file: all exit 0, zero invalid_grant, the file holds the live token."""
    job.write_tokens()
    env = job.env(AWEBER_LOCK_TIMEOUT="120")
    processes = [
        subprocess.Popen([sys.executable, "-m", "job", "refresh"], env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    results = [(p.wait(timeout=180), p.stderr.read() if p.stderr else "") for p in processes]
    for process in processes:
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()
    assert [code for code, _ in results] == [0] * count, [err for _, err in results]
    assert invalid_grants(job.standin) == 0
    assert token_requests(job.standin) == count
    assert job.standin.live_refresh_tokens() == {job.read_tokens()["refresh_token"]}


def _start_refresh(job: JobFiles, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "job", "-v", "refresh"], env=job.env(**env), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(process: subprocess.Popen[str], words: str) -> None:
    """Read the process's stderr until a line with ``words`` appears."""
    assert process.stderr is not None
    for line in process.stderr:
        if words in line:
            return
    raise AssertionError(f"the job never logged {words!r}")


def test_killed_while_waiting_for_the_token_endpoint_then_the_next_run_succeeds(job: JobFiles) -> None:
    """SIGKILL while the token endpoint has not acted: the old refresh token still works next run."""
    job.write_tokens()
    before = job.token_file.read_bytes()
    job.standin.inject(Fault(delay_seconds=2, drop="before"), path="/oauth2/token")
    process = _start_refresh(job)
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)
    assert job.token_file.read_bytes() == before
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    assert job.read_tokens()["refresh_token"] in job.standin.live_refresh_tokens()


def test_killed_after_the_server_rotated_fails_next_run_with_77_and_a_clear_message(job: JobFiles) -> None:
    """SIGKILL while the rotated answer trickles in: the file is intact; the next run says to log in again."""
    job.write_tokens()
    before = job.token_file.read_bytes()
    job.standin.inject(Fault(drip_seconds=0.05), path="/oauth2/token")
    process = _start_refresh(job, AWEBER_HTTP_TIMEOUT="30")
    _wait_for_line(process, "refreshing (refresh on start)")
    # The stand-in rotates at once, then drips its ~150-byte answer over ~7 s: kill in the middle.
    time.sleep(1.5)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)
    assert job.token_file.read_bytes() == before
    result = run_job(["refresh"], job.env())
    assert result.returncode == 77, result.stderr
    assert "invalid_grant" in result.stderr and "aweber-job login" in result.stderr
    assert json.loads(job.token_file.read_bytes()) == json.loads(before)
