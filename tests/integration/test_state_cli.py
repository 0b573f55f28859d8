"""`aweber-job state show` and `state rewind` as real processes, with the token file and with a PostgreSQL store:
after a rewind a run reports again exactly the subscribers the stand-in holds from that moment on; the rewind
waits for the run's lock or lease; bad input is one line and its exit code."""

from __future__ import annotations

import fcntl
import json
import subprocess
import time
from datetime import datetime, timezone

import psycopg
import pytest

from job.standin import StandIn
from tests.support.jobs import JobFiles, run_job

ACCOUNT = 700
NEWS, SALES = 7001, 7002
HOUR = 3600.0
DAY = 86_400.0
KEY = "tY3ifhj1zMA0B5SBCwqc2V7LTh6r2_VlPExrXAwPXZU="  # a Fernet key made for these tests only

# (list, hours ago, email): the subscribers the stand-in holds, oldest first per list.
PEOPLE = (
    (NEWS, 240.0, "n-10d@example.com"), (NEWS, 144.0, "n-6d@example.com"), (NEWS, 72.0, "n-3d@example.com"),
    (NEWS, 30.0, "n-30h@example.com"), (NEWS, 2.0, "n-2h@example.com"),
    (SALES, 120.0, "s-5d@example.com"), (SALES, 1.0, "s-1h@example.com"),
)


def seed(standin: StandIn) -> float:
    """The account, its two lists and PEOPLE; the moment they were counted back from."""
    now = time.time()
    standin.add_account(ACCOUNT)
    for list_id, name in ((NEWS, "News"), (SALES, "Sales")):
        standin.add_list(ACCOUNT, list_id, name, size=0)
        standin.add_subscribers(ACCOUNT, list_id, [
            {"email": email, "name": email, "subscribed_at": round(now - hours * HOUR, 3)}
            for lid, hours, email in PEOPLE if lid == list_id
        ])
    return now


def held_since(now: float, hours: float, lists: tuple[int, ...] = (NEWS, SALES)) -> set[tuple[int, str]]:
    """What the stand-in holds of ``lists`` from ``hours`` before ``now`` on (counted from PEOPLE, not the job)."""
    return {(lid, email) for lid, ago, email in PEOPLE if lid in lists and ago <= hours}


def reported(job: JobFiles, *args: str) -> set[tuple[int, str]]:
    result = run_job([*args, "run"], job.env())
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    found = {(row["list_id"], row["email"]) for row in rows}
    assert len(found) == len(rows), "a subscriber was reported twice in one run"
    return found


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    returncode, stderr = result.returncode, result.stderr
    assert returncode == code, stderr
    # One line says what is wrong (an info line may say what was waited for before it).
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("aweber-job: info:")]
    assert len(lines) == 1 and lines[0].startswith("aweber-job: error:"), stderr
    for word in words:
        assert word in lines[0], stderr


@pytest.fixture
def file_job(job: JobFiles) -> tuple[JobFiles, float]:
    now = seed(job.standin)
    job.write_tokens()
    return job, now


def test_rewind_with_the_token_file_reports_again_from_that_moment_and_no_earlier(
    file_job: tuple[JobFiles, float],
) -> None:
    job, now = file_job
    assert reported(job) == held_since(now, 24)
    assert reported(job) == set()

    state_file = job.token_file.parent / "new-subscribers.state.json"
    shown = run_job(["state", "show"], job.env())
    assert shown.returncode == 0, shown.stderr
    assert f"{ACCOUNT}/{NEWS}" in shown.stdout and f"{ACCOUNT}/{SALES}" in shown.stdout
    as_json = run_job(["state", "show", "--json"], job.env())
    assert json.loads(as_json.stdout) == json.loads(state_file.read_text(encoding="utf-8"))

    # One list, four days back: its subscribers of the last four days come again, the other list's do not.
    rewind = run_job(["state", "rewind", "--since", "4d", "--list", str(NEWS)], job.env())
    assert rewind.returncode == 0, rewind.stderr
    assert reported(job) == held_since(now, 4 * 24, (NEWS,))
    assert reported(job) == set()

    # Every list, to a date-time given in RFC 3339 between two subscribers (5.5 days ago).
    moment = datetime.fromtimestamp(now - 5.5 * DAY, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rewind = run_job(["state", "rewind", "--since", moment], job.env())
    assert rewind.returncode == 0, rewind.stderr
    assert reported(job) == held_since(now, 5.5 * 24)
    assert reported(job) == set()

    # A rewind never moves a watermark forward: a later moment leaves both lists where they are.
    before = state_file.read_bytes()
    later = run_job(["state", "rewind", "--since", "1h"], job.env())
    assert later.returncode == 0, later.stderr
    assert state_file.read_bytes() == before
    # A date: midnight UTC of that day.
    day = datetime.fromtimestamp(now - 8 * DAY, tz=timezone.utc)
    assert run_job(["state", "rewind", "--since", day.strftime("%Y-%m-%d")], job.env()).returncode == 0
    cut = (now - day.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()) / HOUR
    assert reported(job) == held_since(now, cut)


def test_rewind_waits_for_the_runs_lock_and_gives_up_with_75_changing_nothing(
    file_job: tuple[JobFiles, float],
) -> None:
    job, now = file_job
    assert reported(job) == held_since(now, 24)
    state_file = job.token_file.parent / "new-subscribers.state.json"
    before = state_file.read_bytes()
    lock_file = job.token_file.with_name("tokens.json.lock")
    with open(lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a run holds it
        busy = run_job(["state", "rewind", "--since", "7d"], job.env(AWEBER_LOCK_TIMEOUT="1"))
    one_line_error(busy, 75)
    assert state_file.read_bytes() == before
    assert run_job(["state", "rewind", "--since", "7d"], job.env()).returncode == 0
    assert state_file.read_bytes() != before


def test_bad_input_to_state_rewind_is_one_line_with_its_exit_code(file_job: tuple[JobFiles, float]) -> None:
    job, _ = file_job
    one_line_error(run_job(["state", "rewind", "--since", "7d"], job.env()), 64, "no saved state")
    assert run_job(["state", "show"], job.env()).stdout.startswith("task new-subscribers: no saved state")
    assert reported(job)
    state_file = job.token_file.parent / "new-subscribers.state.json"
    before = state_file.read_bytes()
    one_line_error(run_job(["state", "rewind", "--since", "7d", "--list", "999"], job.env()), 64, "--list 999",
                   str(NEWS))
    one_line_error(run_job(["state", "rewind", "--since", "yesterday"], job.env()), 64, "'yesterday'")
    one_line_error(run_job(["state", "rewind", "--since", "2999-01-01"], job.env()), 64, "future")
    one_line_error(run_job(["state", "rewind", "--since", "2026-02-30"], job.env()), 64, "2026-02-30")
    one_line_error(run_job(["state", "rewind"], job.env()), 64, "--since")
    assert state_file.read_bytes() == before
    state_file.write_text("[1, 2", encoding="utf-8")
    one_line_error(run_job(["state", "rewind", "--since", "7d"], job.env()), 65, str(state_file))
    one_line_error(run_job(["state", "show"], job.env()), 65, str(state_file))


# ---- the PostgreSQL store: the same under the connection's lease --------------------------------


@pytest.fixture
def db_job(job: JobFiles, pg_url: str) -> tuple[JobFiles, float, str]:
    """A connection 'acme' in a PostgreSQL store (encrypted), its tokens live at the stand-in."""
    now = seed(job.standin)
    job.extra_env.update(AWEBER_STORE=pg_url, AWEBER_STORE_KEY=KEY, AWEBER_STATE_DIR=str(job.root / "state"))
    one_line_error(run_job(["--connection", "acme", "state", "show"], job.env()), 78, "store init")
    assert run_job(["store", "init"], job.env()).returncode == 0
    job.write_tokens()
    imported = run_job(["connections", "import", "acme", str(job.token_file)], job.env())
    assert imported.returncode == 0, imported.stderr
    return job, now, pg_url


def test_rewind_with_a_postgresql_store_reports_again_from_that_moment_under_the_lease(
    db_job: tuple[JobFiles, float, str],
) -> None:
    job, now, url = db_job
    acme = ("--connection", "acme")
    one_line_error(run_job([*acme, "state", "rewind", "--since", "7d"], job.env()), 64, "no saved state")
    assert reported(job, *acme) == held_since(now, 24)
    assert reported(job, *acme) == set()

    shown = run_job([*acme, "state", "show"], job.env())
    assert shown.returncode == 0 and f"{ACCOUNT}/{SALES}" in shown.stdout, shown.stderr
    rewind = run_job([*acme, "state", "rewind", "--since", "6.5d", "--list", str(SALES)], job.env())
    assert rewind.returncode == 0, rewind.stderr
    assert reported(job, *acme) == held_since(now, 156, (SALES,))
    rewind = run_job([*acme, "state", "rewind", "--since", "7d"], job.env())
    assert rewind.returncode == 0, rewind.stderr
    assert reported(job, *acme) == held_since(now, 7 * 24)

    # Another live holder of the lease (a run on another host): the rewind waits, then 75, state unchanged.
    with psycopg.connect(url, autocommit=True) as db:
        state_before = db.execute("SELECT task_state FROM aweber_job.connections WHERE name = 'acme'").fetchone()
        db.execute("UPDATE aweber_job.connections SET lease_holder = 'elsewhere/x-1:4242:abcd', "
                   "lease_until = now() + interval '10 minutes' WHERE name = 'acme'")
        busy = run_job([*acme, "state", "rewind", "--since", "9d"], job.env(AWEBER_LOCK_TIMEOUT="1"))
        one_line_error(busy, 75, "acme")
        state_after = db.execute("SELECT task_state FROM aweber_job.connections WHERE name = 'acme'").fetchone()
        assert state_after == state_before
    unknown = run_job(["--connection", "globex", "state", "show"], job.env())
    one_line_error(unknown, 65, "globex")
