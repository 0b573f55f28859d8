"""A closed or broken standard output, with real processes: one plain error line, never a traceback or
Python's "Exception ignored" at exit; `run` keeps the rotated tokens and does not move the watermark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from job.standin import StandIn
from tests.support.jobs import REPO, JobFiles

ACCOUNT = 100
LIST = 201
STATE = "new-subscribers.state.json"


def populate(standin: StandIn, new: int) -> None:
    """One account, one list of old subscribers, and ``new`` who joined in the last hour."""
    now = time.time()
    standin.add_account(ACCOUNT)
    standin.add_list(ACCOUNT, LIST, "Newsletter", size=100, start=now - 90 * 86_400, end=now - 3 * 86_400)
    standin.add_subscribers(ACCOUNT, LIST, [
        {"email": f"reader{i}@example.com", "name": f"Reader Number {i}", "subscribed_at": now - 3600 + i}
        for i in range(new)
    ])


def run_with_closed_stdout(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m job ARGS >&-``: file descriptor 1 closed, as a careless wrapper script leaves it."""
    command = " ".join([sys.executable, "-m", "job", *args]) + " >&-"
    return subprocess.run(["/bin/sh", "-c", command], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=False)


def run_into_a_pipe_nobody_reads(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m job ARGS`` writing into a pipe whose reading end is already closed: every write is EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "job", *args], env=env, cwd=REPO, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)


def assert_one_plain_error_line(stderr: str, *words: str) -> None:
    """The error is one `aweber-job: error:` line with ``words``; nothing from Python's innards."""
    errors = [line for line in stderr.splitlines() if ": error:" in line]
    assert len(errors) == 1, stderr
    for word in words:
        assert word in errors[0], stderr
    for noise in ("Traceback", "Exception ignored", "BrokenPipeError", "AttributeError", "unexpected error"):
        assert noise not in stderr, stderr


@pytest.mark.parametrize("command", ["tasks", "status"])
def test_a_command_whose_stdout_is_closed_says_so_and_exits_1(job: JobFiles, command: str) -> None:
    """`aweber-job tasks >&-` and `status >&-` end with one line saying standard output is closed, exit 1."""
    job.write_tokens()
    result = run_with_closed_stdout([command], job.env())
    assert result.returncode == 1
    assert_one_plain_error_line(result.stderr, "cannot write to standard output: it is closed")


@pytest.mark.parametrize("how", ["closed", "broken pipe"])
def test_run_with_nowhere_to_write_exits_1_with_tokens_saved_and_watermark_unmoved(job: JobFiles, how: str) -> None:
    """`run` whose stdout is closed or a broken pipe exits 1 with one line; the rotated tokens are saved and live,
    and no task state is written, so the next run reports the same subscribers."""
    populate(job.standin, 3)
    before = job.write_tokens()["refresh_token"]
    if how == "closed":
        result = run_with_closed_stdout(["run"], job.env())
        reason = "it is closed"
    else:
        result = run_into_a_pipe_nobody_reads(["run"], job.env())
        reason = "broken pipe"
    assert result.returncode == 1
    assert_one_plain_error_line(result.stderr, "cannot write the task's output to standard output", reason,
                                "the tokens are saved")
    saved = job.read_tokens()["refresh_token"]
    assert saved != before and job.standin.live_refresh_tokens() == {saved}
    assert not (job.token_file.parent / STATE).exists()

    again = subprocess.run([sys.executable, "-m", "job", "run"], env=job.env(), cwd=REPO, capture_output=True,
                           text=True, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["email"] for line in again.stdout.splitlines()] == [
        f"reader{i}@example.com" for i in range(3)]


def test_run_piped_into_head_ends_with_one_plain_line(job: JobFiles) -> None:
    """`aweber-job run | head -1` with more output than a pipe holds: head prints one row, the job exits 1 with
    one plain line and the watermark unmoved."""
    populate(job.standin, 1500)
    job.write_tokens()
    script = f'{sys.executable} -m job run | head -1; echo "job exit ${{PIPESTATUS[0]}}" >&2'
    result = subprocess.run(["/bin/bash", "-c", script], env=job.env(), cwd=REPO, capture_output=True, text=True,
                            timeout=120, check=False)
    assert json.loads(result.stdout)["email"] == "reader0@example.com"
    assert result.stderr.splitlines()[-1] == "job exit 1", result.stderr
    assert_one_plain_error_line(result.stderr, "broken pipe")
    assert not (job.token_file.parent / STATE).exists()


def test_run_with_output_to_a_file_needs_no_stdout(job: JobFiles) -> None:
    """`run --output FILE >&-` writes nothing to stdout, so a closed stdout does not matter: exit 0."""
    populate(job.standin, 2)
    job.write_tokens()
    target = job.root / "new.jsonl"
    result = run_with_closed_stdout(["-q", "run", "--output", str(target)], job.env())
    assert (result.returncode, result.stderr) == (0, "")
    assert len(target.read_text(encoding="utf-8").splitlines()) == 2
