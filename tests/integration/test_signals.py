# ruff: noqa: F811
"""Every signal that ends the job takes one graceful path, for single runs and ``run --all`` alike.

Real processes get real signals at a known phase (the stand-in holds the token answer, or a page of the
task; the database refuses the save); what they lost is judged by the stand-in's record of live refresh
tokens and its count of invalid_grant answers, never by the job's own words.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from job.standin import Fault
from tests.integration.test_connections_cli import db_job  # noqa: F401 - the fixture is used by name
from tests.integration.test_fleet import add_failover, drop_failover, import_connections, stored
from tests.support.jobs import REPO, JobFiles, invalid_grants, run_job, token_requests

ACCOUNT = 100
LIST = 201
DAY = 86_400
GRACE = 5.0
# How long past the grace a process may take to exit: interpreter start and teardown on a busy machine.
EXIT_MARGIN = 3.0
TOKEN_PATH = "/oauth2/token"
STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "job", *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def lock_record(job: JobFiles) -> str:
    try:
        return Path(f"{job.token_file}.lock").read_text()
    except OSError:
        return ""


def markers(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT count(*) FROM aweber_job.connections WHERE refreshing_from IS NOT NULL").fetchone()
    assert row is not None
    return int(row[0])


def signal_and_wait(process: subprocess.Popen[str], signals: list[signal.Signals]) -> tuple[float, str, str]:
    """Send the signals (0.2 s apart) and return how long the process took to exit after the first, and its output."""
    sent = time.monotonic()
    for number, sig in enumerate(signals):
        if number:
            time.sleep(0.2)
        process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=60)
    return time.monotonic() - sent, stdout, stderr


# ---- a single run, the token file --------------------------------------------------------------------

@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_a_stop_signal_while_the_refresh_answer_is_held_keeps_the_new_tokens(job: JobFiles,
                                                                              sig: signal.Signals) -> None:
    """TERM, INT or HUP while AWeber holds the answer to the refresh: the answer is waited for and saved."""
    job.write_tokens()
    job.standin.inject(Fault(delay_seconds=2.5), path=TOKEN_PATH)
    process = start(["run", "--task", "noop"], job.env(AWEBER_SHUTDOWN_GRACE=str(GRACE)))
    wait_for(lambda: '"refreshing"' in lock_record(job), "the refresh began")
    time.sleep(0.5)  # recorded, then sent: the stand-in holds the answer now
    took, _, stderr = signal_and_wait(process, [sig])
    assert process.returncode in (0, 75), stderr
    assert took < 2.5 + GRACE + EXIT_MARGIN
    assert job.read_tokens()["refresh_token"] in job.standin.live_refresh_tokens(), "the new token was lost"
    assert token_requests(job.standin) == 1 and invalid_grants(job.standin) == 0
    assert "Traceback" not in stderr


def test_a_second_signal_does_not_abandon_the_refresh_in_flight(job: JobFiles) -> None:
    """TERM then INT while the refresh answer is held: still waited for and saved."""
    job.write_tokens()
    job.standin.inject(Fault(delay_seconds=2.5), path=TOKEN_PATH)
    process = start(["run", "--task", "noop"], job.env(AWEBER_SHUTDOWN_GRACE=str(GRACE)))
    wait_for(lambda: '"refreshing"' in lock_record(job), "the refresh began")
    time.sleep(0.5)  # recorded, then sent: the stand-in holds the answer now
    _, _, stderr = signal_and_wait(process, [signal.SIGTERM, signal.SIGINT])
    assert process.returncode in (0, 75), stderr
    assert "again: already stopping" in stderr
    assert job.read_tokens()["refresh_token"] in job.standin.live_refresh_tokens(), "the new token was lost"
    assert invalid_grants(job.standin) == 0


def test_sigterm_while_waiting_for_the_lock_sends_nothing(job: JobFiles) -> None:
    """SIGTERM while the run waits for another run's lock: exit 75 at once, nothing sent, the token file as it was."""
    import fcntl

    before = job.write_tokens()["refresh_token"]
    lock = os.open(f"{job.token_file}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        process = start(["run", "--task", "noop"], job.env(AWEBER_LOCK_TIMEOUT="30", AWEBER_SHUTDOWN_GRACE="5"))
        time.sleep(1.5)  # started, and waiting for the lock
        took, _, stderr = signal_and_wait(process, [signal.SIGTERM])
    finally:
        os.close(lock)
    assert process.returncode == 75, stderr
    assert took < EXIT_MARGIN
    assert token_requests(job.standin) == 0
    assert job.read_tokens()["refresh_token"] == before


def populate(job: JobFiles, count: int) -> None:
    now = time.time()
    job.standin.add_account(ACCOUNT)
    job.standin.add_list(ACCOUNT, LIST, "Newsletter", size=10, start=now - 400 * DAY, end=now - 3 * DAY)
    job.standin.add_subscribers(ACCOUNT, LIST, [
        {"email": f"s{i}@example.com", "subscribed_at": now - 3600 + i} for i in range(count)])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_during_the_task_keeps_its_output_and_state_so_nothing_is_reported_twice(
    job: JobFiles, sig: signal.Signals, tmp_path: Path,
) -> None:
    """A stop while the task waits for its second page: exit 75, the first page's subscribers written and
    covered by the saved state; the next run reports exactly the rest (150 in all, none twice)."""
    populate(job, 150)
    job.write_tokens()
    subscribers = f"/1.0/accounts/{ACCOUNT}/lists/{LIST}/subscribers"
    job.standin.inject(Fault(), Fault(delay_seconds=20), path=subscribers)
    output = tmp_path / "out.jsonl"
    env = job.env(AWEBER_SHUTDOWN_GRACE=str(GRACE), AWEBER_HTTP_TIMEOUT="30")
    process = start(["run", "--output", str(output)], env)
    wait_for(lambda: output.exists() and output.stat().st_size > 0, "the first page was written")
    time.sleep(0.3)
    took, _, stderr = signal_and_wait(process, [sig])
    assert process.returncode == 75, stderr
    assert took < GRACE + EXIT_MARGIN
    first = [json.loads(line)["email"] for line in output.read_text().splitlines()]
    assert 0 < len(first) < 150, stderr
    again = run_job(["run", "--output", str(output)], job.env())
    assert again.returncode == 0, again.stderr
    emails = [json.loads(line)["email"] for line in output.read_text().splitlines()]
    assert sorted(emails) == sorted(f"s{i}@example.com" for i in range(150)), "a subscriber missed or twice"
    assert invalid_grants(job.standin) == 0


# ---- the database store ------------------------------------------------------------------------------

def test_sigterm_while_a_single_connections_save_retries_writes_the_rescue_file_in_time(db_job: JobFiles) -> None:
    """`--connection NAME run` whose save the database refuses: SIGTERM ends the retries in time for the rescue
    file (exit 73 within the grace), and the next run puts it back."""
    import_connections(db_job, 1)
    url = db_job.env()["AWEBER_STORE"]
    add_failover(url)
    process = start(["--connection", "c000", "run", "--task", "noop"], db_job.env(AWEBER_SHUTDOWN_GRACE=str(GRACE)))
    wait_for(lambda: token_requests(db_job.standin) == 1, "the refresh was answered")
    time.sleep(1.0)  # the save is retrying
    took, _, stderr = signal_and_wait(process, [signal.SIGTERM])
    assert process.returncode == 73, stderr
    assert took < GRACE + EXIT_MARGIN
    rescues = list((db_job.root / "state" / "rescue").glob("c000.*.json"))
    assert len(rescues) == 1 and str(rescues[0]) in stderr
    drop_failover(url)
    after = run_job(["--connection", "c000", "run", "--task", "noop"], db_job.env())
    assert after.returncode == 0, after.stderr
    assert invalid_grants(db_job.standin) == 0
    assert stored(url)["c000"][0] in db_job.standin.live_refresh_tokens()


def test_run_all_sends_no_retry_of_a_refresh_after_sigterm(db_job: JobFiles) -> None:
    """The token endpoint answers 503 with Retry-After: 2 and SIGTERM comes: the retry is never sent, the run
    exits at once with 75, and the connection is given back unspent, due for the next run."""
    import_connections(db_job, 1)
    url = db_job.env()["AWEBER_STORE"]
    db_job.standin.inject(Fault(status=503, retry_after="2"), path=TOKEN_PATH)
    process = start(["run", "--all", "--task", "noop"], db_job.env(AWEBER_SHUTDOWN_GRACE=str(GRACE)))
    wait_for(lambda: token_requests(db_job.standin) == 1, "the first refresh attempt was answered")
    time.sleep(0.5)
    took, _, stderr = signal_and_wait(process, [signal.SIGTERM])
    time.sleep(2.0)  # past the Retry-After: a retry, had it gone out, would have reached the stand-in by now
    assert process.returncode == 75, stderr
    assert took < EXIT_MARGIN
    assert token_requests(db_job.standin) == 1, "a refresh was retried after SIGTERM"
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT lease_holder, last_run_at, waiting_for_person FROM aweber_job.connections").fetchone()
    assert row == (None, None, False), "not given back unspent and due"
    again = run_job(["run", "--all", "--task", "noop"], db_job.env())
    assert again.returncode == 0, again.stderr
    assert stored(url)["c000"][0] in db_job.standin.live_refresh_tokens()


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGHUP], [signal.SIGTERM, signal.SIGINT]],
                         ids=lambda s: "+".join(x.name for x in s))
def test_run_all_keeps_every_refresh_in_flight_whatever_signal_stops_it(db_job: JobFiles,
                                                                        signals: list[signal.Signals]) -> None:
    """Ctrl-C, a closed terminal, or TERM then INT while four refreshes wait for their answers: all four are
    saved, the run exits 75 within the grace, no token is lost and none is sent twice."""
    names = import_connections(db_job, 8)
    url = db_job.env()["AWEBER_STORE"]
    db_job.standin.inject(*[Fault(delay_seconds=1.5)] * 4, path=TOKEN_PATH)
    process = start(["run", "--all", "--concurrency", "4", "--task", "noop"],
                    db_job.env(AWEBER_SHUTDOWN_GRACE=str(GRACE)))
    wait_for(lambda: markers(url) == 4, "four refreshes began")
    took, _, stderr = signal_and_wait(process, signals)
    assert process.returncode == 75, stderr
    assert took < 1.5 + GRACE + EXIT_MARGIN
    assert markers(url) == 0
    live = db_job.standin.live_refresh_tokens()
    assert all(stored(url)[name][0] in live for name in names), "a token was lost"
    assert invalid_grants(db_job.standin) == 0
    assert token_requests(db_job.standin) == 4, "a refresh began after the stop"


def test_run_all_stops_at_its_time_limit_as_at_sigterm(db_job: JobFiles) -> None:
    """AWEBER_RUN_TIMEOUT bounds run --all: no connection is claimed after it, the ones in flight are saved,
    and the run exits 75 soon after."""
    names = import_connections(db_job, 12)
    url = db_job.env()["AWEBER_STORE"]
    db_job.standin.inject(*[Fault(delay_seconds=1.0)] * 12, path=TOKEN_PATH)
    started = time.monotonic()
    result = run_job(["run", "--all", "--concurrency", "2", "--task", "noop"],
                     db_job.env(AWEBER_RUN_TIMEOUT="2", AWEBER_SHUTDOWN_GRACE=str(GRACE)))
    took = time.monotonic() - started
    assert result.returncode == 75, result.stderr
    assert took < 2 + 1.0 + EXIT_MARGIN, f"took {took:.1f} s"
    assert "AWEBER_RUN_TIMEOUT" in result.stderr
    refreshed = token_requests(db_job.standin)
    assert 2 <= refreshed <= 6, f"{refreshed} refreshes in a 2 s limit with 2 at a time, 1 s each"
    live = db_job.standin.live_refresh_tokens()
    assert all(stored(url)[name][0] in live for name in names)
    assert invalid_grants(db_job.standin) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stop_while_login_waits_for_the_pasted_code_ends_it_at_once(job: JobFiles, sig: signal.Signals) -> None:
    """Ctrl-C (or SIGTERM) at login's prompt: nothing has been spent, so the wait ends at once (130), nothing sent."""
    process = subprocess.Popen([sys.executable, "-m", "job", "login"], env=job.env(), cwd=REPO, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)  # started, printed the URL, waiting for the paste
    took, _, stderr = signal_and_wait(process, [sig])
    assert process.returncode == 130, stderr
    assert took < EXIT_MARGIN
    assert token_requests(job.standin) == 0
    assert not job.token_file.exists()
