"""Tasks given by file (`--task ./mytask.py:fn`), and the webhook example task, as real processes against the
stand-in and a real loopback receiver."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from job.standin import StandIn
from tests.support.jobs import REPO, JobFiles, run_job
from tests.support.recorder import Request, recording_server

ACCOUNT = 100
LIST = 201
DAY = 86_400
WEBHOOK_TASK = f"{REPO / 'examples' / 'webhook.py'}:deliver"
CONSOLE_SCRIPT = Path(sys.executable).parent / "aweber-job"

MYTASK = '''
import json

NOT_A_FUNCTION = 42


def fn(context):
    """Write one line naming the accounts."""
    ids = [entry.get("id") for entry in context.api.walk("accounts")]
    context.output.write(json.dumps({"accounts": ids}) + "\\n")
    return {"accounts": len(ids)}
'''


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


@pytest.fixture
def mytask(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    path = folder / "mytask.py"
    path.write_text(MYTASK, encoding="utf-8")
    return path


@pytest.mark.parametrize("spelling", ["relative", "absolute"])
def test_a_task_file_next_to_the_working_directory_runs(job: JobFiles, mytask: Path, spelling: str) -> None:
    """--task ./mytask.py:fn (and the absolute path) loads the file as a module, without PYTHONPATH."""
    job.standin.add_account(ACCOUNT)
    job.write_tokens()
    given = "./mytask.py:fn" if spelling == "relative" else f"{mytask}:fn"
    result = run_job(["run", "--task", given], job.env(), cwd=mytask.parent)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{"accounts": [ACCOUNT]}]


def test_a_task_file_keeps_one_state_whatever_the_spelling_of_its_path(job: JobFiles, mytask: Path) -> None:
    """The state of a task file is named by its absolute path: a run by hand (./mytask.py) and one from cron (the
    absolute path) share it."""
    job.standin.add_account(ACCOUNT)
    job.write_tokens()
    assert run_job(["run", "--task", "./mytask.py:fn"], job.env(), cwd=mytask.parent).returncode == 0
    assert run_job(["run", "--task", f"{mytask.parent}/../tasks/mytask.py:fn"], job.env()).returncode == 0
    states = sorted(path.name for path in job.token_file.parent.glob("*.state.json"))
    assert len(states) == 1, states
    assert "mytask.py_fn" in states[0]


@pytest.mark.parametrize(("given", "said"), [
    ("./missing.py:fn", "task './missing.py:fn' (given by --task): there is no file ./missing.py"),
    ("./mytask.py:nothing", "task './mytask.py:nothing' (given by --task): ./mytask.py defines no nothing"),
    ("./mytask.py:NOT_A_FUNCTION",
     "task './mytask.py:NOT_A_FUNCTION' (given by --task) is not callable (its type is int); "
     "a task is a function taking the context"),
])
def test_a_task_file_that_cannot_give_the_task_is_one_line_and_exit_64(job: JobFiles, mytask: Path, given: str,
                                                                      said: str) -> None:
    """A missing file, a file without the callable, or one whose name is not callable: one line, 64, no token spent."""
    job.write_tokens()
    before = job.read_tokens()["refresh_token"]
    result = run_job(["run", "--task", given], job.env(), cwd=mytask.parent)
    assert result.returncode == 64, result.stderr
    assert error_lines(result.stderr) == [f"aweber-job: error: {said}"]
    assert result.stderr.count("\n") == 1
    assert job.read_tokens()["refresh_token"] == before


def test_a_task_file_that_fails_to_load_is_one_line_and_exit_64(job: JobFiles, mytask: Path) -> None:
    """A file that raises while it is loaded (a syntax error) is named in one line, exit 64."""
    mytask.write_text("def fn(context:\n", encoding="utf-8")
    job.write_tokens()
    result = run_job(["run", "--task", "./mytask.py:fn"], job.env(), cwd=mytask.parent)
    assert result.returncode == 64, result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith("aweber-job: error: task './mytask.py:fn' (given by --task): loading ./mytask.py failed: "
                           "SyntaxError: ")


def test_a_module_name_with_a_file_of_that_name_here_says_how_to_give_the_file(job: JobFiles, mytask: Path) -> None:
    """--task mytask:fn from the console script (no PYTHONPATH) fails, naming the ./mytask.py:fn spelling."""
    job.write_tokens()
    result = subprocess.run([str(CONSOLE_SCRIPT), "run", "--task", "mytask:fn"], env=job.env(), cwd=mytask.parent,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 64, result.stderr
    [line] = error_lines(result.stderr)
    assert "No module named 'mytask'" in line
    assert line.endswith("; to load the file mytask.py here, give --task ./mytask.py:fn")


# ---- the webhook example ------------------------------------------------------------------------------------


def populate(standin: StandIn, count: int) -> list[int]:
    """One list with old subscribers, and ``count`` new ones a second apart from ten minutes ago."""
    now = time.time()
    standin.add_account(ACCOUNT)
    standin.add_list(ACCOUNT, LIST, "Newsletter", size=50, start=now - 400 * DAY, end=now - 3 * DAY)
    first = now - 600
    return standin.add_subscribers(ACCOUNT, LIST, [
        {"email": f"new{i}@example.com", "subscribed_at": first + i} for i in range(count)
    ])


class Receiver:
    """Accepts deliveries (200) until ``accept_left`` reaches 0, then answers ``refusal``; records what it took."""

    def __init__(self) -> None:
        self.accepted: list[int] = []
        self.refused: list[int] = []
        self.accept_left: int | None = None
        self.refusal = 500
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> int:
        subscriber = json.loads(request.body)["id"]
        assert request.headers["Idempotency-Key"] == f"{ACCOUNT}/{LIST}/{subscriber}"
        with self.lock:
            if self.accept_left is not None and self.accept_left <= 0:
                self.refused.append(subscriber)
                return self.refusal
            if self.accept_left is not None:
                self.accept_left -= 1
            self.accepted.append(subscriber)
            return 200


SECRET_PATH = "/hooks/T0-secret-path-5c2e91"
SECRET_PASSWORD = "hook-pass-9d2f7a"


def webhook_url(port: int) -> str:
    return f"http://hookuser:{SECRET_PASSWORD}@127.0.0.1:{port}{SECRET_PATH}?sig=query-secret-41b8"


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("k", [0, 3])
def test_webhook_a_5xx_stops_the_run_and_the_next_delivers_the_rest_each_once(job: JobFiles, k: int) -> None:
    """The receiver accepts k subscribers, then answers 503: exit 75. The next run, accepted, delivers from the first
    refused one on. Every subscriber reaches the receiver accepted exactly once overall; a third run sends nothing."""
    ids = populate(job.standin, 7)
    job.write_tokens()
    receiver = Receiver()
    receiver.accept_left, receiver.refusal = k, 503
    with recording_server(receiver) as server:
        env = job.env(WEBHOOK_URL=webhook_url(server.server_address[1]))
        first = run_job(["-vv", "run", "--task", WEBHOOK_TASK], env)
        assert first.returncode == 75, first.stderr
        assert receiver.accepted == ids[:k]
        assert receiver.refused == [ids[k]]
        [line] = error_lines(first.stderr)
        assert f"answered HTTP 503 for subscriber {ids[k]}; {k} delivered before it" in line
        receiver.accept_left = None
        second = run_job(["run", "--task", WEBHOOK_TASK], env)
        assert second.returncode == 0, second.stderr
        third = run_job(["run", "--task", WEBHOOK_TASK], env)
        assert third.returncode == 0, third.stderr
    assert receiver.accepted == ids
    assert Counter(receiver.accepted) == Counter(dict.fromkeys(ids, 1))
    for result in (first, second, third):
        for secret in (SECRET_PASSWORD, SECRET_PATH, "T0-secret-path-5c2e91", "query-secret-41b8"):
            assert secret not in result.stderr + result.stdout


def test_webhook_unreachable_stops_with_nothing_delivered_then_delivers_everyone_once(job: JobFiles) -> None:
    """Nothing listens at the URL: exit 75 in one line naming only scheme and host; the next run, with a receiver
    there, delivers every subscriber once."""
    ids = populate(job.standin, 4)
    job.write_tokens()
    port = unused_port()
    env = job.env(WEBHOOK_URL=webhook_url(port))
    first = run_job(["-vv", "run", "--task", WEBHOOK_TASK], env)
    assert first.returncode == 75, first.stderr
    [line] = error_lines(first.stderr)
    assert f"the webhook at http://127.0.0.1 could not be reached (ConnectionError) for subscriber {ids[0]}" in line
    for secret in (SECRET_PASSWORD, "T0-secret-path-5c2e91", "query-secret-41b8"):
        assert secret not in first.stderr + first.stdout
    receiver = Receiver()
    with recording_server(receiver) as server:
        env = job.env(WEBHOOK_URL=webhook_url(server.server_address[1]))
        second = run_job(["run", "--task", WEBHOOK_TASK], env)
    assert second.returncode == 0, second.stderr
    assert receiver.accepted == ids


def test_webhook_without_its_url_is_a_configuration_error(job: JobFiles) -> None:
    """No WEBHOOK_URL: exit 78, one line naming it."""
    populate(job.standin, 1)
    job.write_tokens()
    result = run_job(["run", "--task", WEBHOOK_TASK], job.env())
    assert result.returncode == 78, result.stderr
    [line] = error_lines(result.stderr)
    assert "WEBHOOK_URL is not set" in line


def test_webhook_over_plain_http_to_another_host_is_a_configuration_error(job: JobFiles) -> None:
    """Its credentials and the subscribers' addresses would cross the network in the clear: exit 78, nothing sent,
    the password named nowhere."""
    populate(job.standin, 1)
    job.write_tokens()
    result = run_job(["run", "--task", WEBHOOK_TASK],
                     job.env(WEBHOOK_URL=f"http://hookuser:{SECRET_PASSWORD}@hooks.example.com/in"))
    assert result.returncode == 78, result.stderr
    [line] = error_lines(result.stderr)
    assert "WEBHOOK_URL must use https" in line
    assert SECRET_PASSWORD not in result.stderr + result.stdout
