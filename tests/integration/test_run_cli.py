"""`aweber-job run` and `tasks` as real processes: failing and killed tasks, task lookup, unknown tasks."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from job.standin import StandIn
from tests.support.jobs import REPO, JobFiles, run_job, token_requests
from tests.support.tasks import READY_FILE, TROUBLE_FILE

ACCOUNT = 100
LIST = 201
DAY = 86_400
TROUBLED_TASK = "tests.support.tasks:new_subscribers_then_trouble"
TROUBLED_STATE = "tests.support.tasks_new_subscribers_then_trouble.state.json"


def populate(standin: StandIn) -> None:
    """One account, one list of 1,000 subscribers from last year to three days ago."""
    now = time.time()
    standin.add_account(ACCOUNT)
    standin.add_list(ACCOUNT, LIST, "Newsletter", size=1000, start=now - 400 * DAY, end=now - 3 * DAY)


def add(standin: StandIn, count: int, tag: str, *, minutes_ago: float = 10) -> list[int]:
    """Append ``count`` subscribers a second apart, from ``minutes_ago`` on."""
    first = time.time() - minutes_ago * 60
    return standin.add_subscribers(ACCOUNT, LIST, [
        {"email": f"{tag}{i}@example.com", "subscribed_at": first + i} for i in range(count)
    ])


def ids_of(stdout: str) -> list[Any]:
    return [json.loads(line)["id"] for line in stdout.splitlines()]


def state_file(job: JobFiles) -> Path:
    return job.token_file.parent / TROUBLED_STATE


def assert_tokens_saved_and_live(job: JobFiles, before: str) -> None:
    """The token file holds a rotated refresh token that the stand-in accepts."""
    saved = job.read_tokens()["refresh_token"]
    assert saved != before
    assert job.standin.live_refresh_tokens() == {saved}


def test_a_failing_task_exits_1_with_tokens_saved_and_the_watermark_unmoved(job: JobFiles) -> None:
    """A task raising after its output exits 1 with rotated tokens saved; the next run repeats its subscribers."""
    populate(job.standin)
    job.write_tokens()
    first = add(job.standin, 2, "a")
    result = run_job(["run", "--task", TROUBLED_TASK], job.env())
    assert result.returncode == 0, result.stderr
    assert ids_of(result.stdout) == first
    saved_state = state_file(job).read_bytes()

    second = add(job.standin, 3, "b", minutes_ago=5)
    (job.token_file.parent / TROUBLE_FILE).write_text("fail")
    before = job.read_tokens()["refresh_token"]
    result = run_job(["run", "--task", TROUBLED_TASK], job.env())
    assert result.returncode == 1
    assert "injected failure" in result.stderr
    assert ids_of(result.stdout) == second
    assert_tokens_saved_and_live(job, before)
    assert state_file(job).read_bytes() == saved_state

    result = run_job(["run", "--task", TROUBLED_TASK], job.env())
    assert result.returncode == 0, result.stderr
    assert ids_of(result.stdout) == second


def test_a_run_killed_after_its_output_repeats_those_subscribers_next_time(job: JobFiles) -> None:
    """SIGKILL between the flushed output and the state save loses nothing: the next run repeats them."""
    populate(job.standin)
    job.write_tokens()
    added = add(job.standin, 4, "k")
    state_dir = job.token_file.parent
    (state_dir / TROUBLE_FILE).write_text("hang")
    before = job.read_tokens()["refresh_token"]
    process = subprocess.Popen(
        [sys.executable, "-m", "job", "run", "--task", TROUBLED_TASK],
        env=job.env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (state_dir / READY_FILE).exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the task never reported its output flushed"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert ids_of(stdout) == added
    assert not state_file(job).exists()
    assert_tokens_saved_and_live(job, before)

    result = run_job(["run", "--task", TROUBLED_TASK], job.env())
    assert result.returncode == 0, result.stderr
    assert ids_of(result.stdout) == added
    result = run_job(["run", "--task", TROUBLED_TASK], job.env())
    assert (result.returncode, result.stdout) == (0, "")


def test_a_task_from_a_dotted_path_runs(job: JobFiles) -> None:
    """--task package.module:callable loads that callable and gives it the API."""
    job.standin.add_account(ACCOUNT)
    job.standin.add_account(300)
    job.write_tokens()
    result = run_job(["run", "--task", "tests.support.tasks:list_accounts"], job.env())
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{"account_id": ACCOUNT}, {"account_id": 300}]


def test_the_built_in_tasks_are_installed_entry_points_and_run_by_name(job: JobFiles) -> None:
    """noop and new-subscribers are registered in the aweber_job.tasks group, and AWEBER_TASK=noop runs by that name."""
    registered = {ep.name: ep.value for ep in entry_points(group="aweber_job.tasks")}
    assert registered["new-subscribers"] == "job.tasks.new_subscribers:new_subscribers"
    assert registered["noop"] == "job.tasks.noop:noop"
    job.write_tokens()
    result = run_job(["run"], job.env(AWEBER_TASK="noop"))
    assert (result.returncode, result.stdout) == (0, "")
    assert token_requests(job.standin) == 1
    assert job.standin.stats()["api"] == {}


def test_an_unknown_task_exits_64_before_the_token_endpoint_is_contacted(job: JobFiles) -> None:
    """A misspelt task name costs no refresh token: exit 64, the known tasks listed, zero token requests."""
    grant = job.write_tokens()
    result = run_job(["run", "--task", "new-subscriber"], job.env())
    assert result.returncode == 64
    assert "new-subscribers" in result.stderr and "noop" in result.stderr
    assert token_requests(job.standin) == 0
    assert job.standin.stats()["requests_total"] == 0
    assert job.read_tokens()["refresh_token"] == grant["refresh_token"]
    assert grant["refresh_token"] in job.standin.live_refresh_tokens()


def test_tasks_lists_both_built_ins_with_their_descriptions() -> None:
    """`aweber-job tasks` prints one line per task: name, then the first line of its docstring as plain text."""
    result = run_job(["tasks"], {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert lines["new-subscribers"].startswith("Report the subscribers who joined each list since the last run")
    # The docstring says ``run --task noop``; a terminal shows the words, not the reST markup.
    assert lines["noop"] == "Do nothing: run --task noop is the same as refresh."
    assert "`" not in result.stdout


def test_output_into_a_missing_directory_creates_it_private(job: JobFiles) -> None:
    """--output under directories that do not exist yet creates them 0700 (said at info) and the file 0600."""
    populate(job.standin)
    job.write_tokens()
    added = add(job.standin, 2, "o")
    target = job.root / "reports" / "aweber" / "new.jsonl"
    result = run_job(["run", "--output", str(target)], job.env())
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert ids_of(target.read_text(encoding="utf-8")) == added
    for directory in (job.root / "reports", job.root / "reports" / "aweber"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert f"info: created the directory {directory}" in result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_misspelled_variable_is_named_with_the_closest_known_one(job: JobFiles) -> None:
    """An unknown AWEBER_ name, in the env file or the environment, gets a warning naming where it is and the
    known name it is closest to, and never its value."""
    job.write_tokens()
    env_file = job.root / "job.env"
    env_file.write_text("AWEBER_CLIENT_SECERT=typo-secret-value-31f\naweber_task=noop\n", encoding="utf-8")
    result = run_job(["--env-file", str(env_file), "status"], job.env(AWEBER_LOCK_TIMOUT="5", AWEBER_ZZZ="1"))
    assert result.returncode == 0, result.stderr
    warnings = sorted(line for line in result.stderr.splitlines() if ": warning: " in line)
    assert warnings == sorted([
        f"aweber-job: warning: AWEBER_CLIENT_SECERT (in {env_file}) is not a variable aweber-job reads; "
        "did you mean AWEBER_CLIENT_SECRET?",
        f"aweber-job: warning: aweber_task (in {env_file}) is not a variable aweber-job reads; "
        "did you mean AWEBER_TASK?",
        "aweber-job: warning: AWEBER_LOCK_TIMOUT (in the environment) is not a variable aweber-job reads; "
        "did you mean AWEBER_LOCK_TIMEOUT?",
        "aweber-job: warning: AWEBER_ZZZ (in the environment) is not a variable aweber-job reads "
        "(.env.example lists every one)",
    ])
    assert "typo-secret-value-31f" not in result.stdout + result.stderr


@pytest.mark.parametrize("argv", [
    ["--task", "noop", "status"],
    ["--since", "7d", "status"],
    ["--output", "out.jsonl", "tasks"],
    ["--format", "csv", "refresh"],
    ["--since", "7d", "login"],
])
def test_run_options_before_another_command_are_a_usage_error(job: JobFiles, argv: list[str]) -> None:
    """A run option given to another command is exit 64 naming the option and the command, before any token is used."""
    grant = job.write_tokens()
    result = run_job(argv, job.env())
    assert result.returncode == 64, result.stderr
    assert result.stderr.splitlines() == [
        f"aweber-job: error: {argv[0]} is an option of run, not of {argv[2]} (see: aweber-job run --help)"]
    assert result.stdout == ""
    assert job.standin.stats()["requests_total"] == 0
    assert job.read_tokens()["refresh_token"] == grant["refresh_token"]


def test_run_options_before_run_still_apply(job: JobFiles) -> None:
    """`aweber-job --task noop run` runs noop: run options may stand before the command they belong to."""
    job.write_tokens()
    result = run_job(["--task", "noop", "run"], job.env())
    assert (result.returncode, result.stdout) == (0, "")
    assert job.standin.stats()["api"] == {}


def test_since_is_said_to_be_unused_when_the_task_has_saved_state(job: JobFiles) -> None:
    """--since on a run whose task already has state logs an info line naming the state file it continues from."""
    populate(job.standin)
    job.write_tokens()
    add(job.standin, 1, "s")
    state = job.token_file.parent / "new-subscribers.state.json"
    first = run_job(["run", "--since", "7d"], job.env())
    assert first.returncode == 0, first.stderr
    assert "--since" not in first.stderr
    second = run_job(["run", "--since", "30d"], job.env())
    assert second.returncode == 0, second.stderr
    said = (f"aweber-job: info: --since 30d is used only where task new-subscribers has no saved state: "
            f"it continues from {state} (move that file away to start again from --since)")
    assert said in second.stderr.splitlines()


@pytest.mark.parametrize("where", ["--task", "environment", "env file"])
def test_an_unknown_task_says_where_its_name_came_from(job: JobFiles, where: str) -> None:
    """A misspelt task name is exit 64 naming its source: --task, AWEBER_TASK in the environment or in the env file."""
    job.write_tokens()
    env_file = job.root / "job.env"
    env_file.write_text("AWEBER_TASK=new-subscriber\n" if where == "env file" else "", encoding="utf-8")
    argv = ["--env-file", str(env_file), "run"]
    env = job.env()
    if where == "--task":
        argv += ["--task", "new-subscriber"]
    elif where == "environment":
        env["AWEBER_TASK"] = "new-subscriber"
    result = run_job(argv, env)
    assert result.returncode == 64
    source = {"--task": "--task", "environment": "AWEBER_TASK in the environment",
              "env file": f"AWEBER_TASK in {env_file}"}[where]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"aweber-job: error: unknown task 'new-subscriber' (given by {source}); known tasks: ")
    assert token_requests(job.standin) == 0


def test_secrets_readable_by_every_user_get_a_warning(job: JobFiles) -> None:
    """An env file or a secret file that holds the client secret and that every user can read is named in a warning."""
    job.write_tokens()
    env_file = job.root / "aweber.env"
    env_file.write_text(f"AWEBER_CLIENT_SECRET={job.env()['AWEBER_CLIENT_SECRET']}\n", encoding="utf-8")
    os.chmod(env_file, 0o644)
    env = job.env()
    del env["AWEBER_CLIENT_SECRET"]
    loose = run_job(["--env-file", str(env_file), "status"], env)
    assert loose.returncode == 0, loose.stderr
    assert f"{env_file}" in loose.stderr and "chmod 600" in loose.stderr

    os.chmod(env_file, 0o600)
    tight = run_job(["--env-file", str(env_file), "status"], env)
    assert tight.returncode == 0 and "chmod" not in tight.stderr, tight.stderr

    secret_file = job.root / "client-secret"
    secret_file.write_text(job.env()["AWEBER_CLIENT_SECRET"] + "\n", encoding="utf-8")
    os.chmod(secret_file, 0o604)
    from_file = run_job(["status"], {**env, "AWEBER_CLIENT_SECRET_FILE": str(secret_file)})
    assert from_file.returncode == 0, from_file.stderr
    assert f"{secret_file}" in from_file.stderr and "chmod 600" in from_file.stderr

    # A file without the secret in it may be world-readable: nothing to say.
    plain = job.root / "plain.env"
    plain.write_text("AWEBER_LOCK_TIMEOUT=5\n", encoding="utf-8")
    os.chmod(plain, 0o644)
    quiet = run_job(["--env-file", str(plain), "status"], job.env())
    assert "chmod" not in quiet.stderr, quiet.stderr


@pytest.mark.parametrize("since", ["99999999d", "800000d", "0001-01-01", "0001-01-02T12:00:00Z", "1969-12-31"])
def test_a_since_too_far_back_is_a_usage_error_before_anything_is_spent(job: JobFiles, since: str) -> None:
    """A --since further back than any subscriber (or than dates go) is exit 64 in one line, no token spent."""
    job.write_tokens()
    before = job.token_file.read_bytes()
    result = run_job(["run", "--since", since], job.env())
    assert result.returncode == 64, result.stderr
    assert "--since" in result.stderr and "Error:" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert token_requests(job.standin) == 0
    assert job.token_file.read_bytes() == before
