"""The live progress line: on a terminal (a real pseudo-terminal), never under a pipe, never a secret."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time

from job.progress import MAX_WIDTH, Progress
from tests.support.jobs import REPO, JobFiles

ACCOUNT = 100
LIST = 201
DAY = 86_400
CLEAR = "\r\x1b[2K"


def populate(job: JobFiles) -> None:
    now = time.time()
    job.standin.add_account(ACCOUNT)
    job.standin.add_list(ACCOUNT, LIST, "Weekly Letter", size=300, start=now - 5 * DAY, end=now - 60)
    job.standin.set_request_delay(0.3)  # slow enough that the line is drawn between requests


def run_on_a_terminal(args: list[str], env: dict[str, str], *, columns: int | None = None) -> tuple[int, str, str]:
    """Run the job with stderr on a pseudo-terminal (``columns`` wide); return (exit code, what the terminal got,
    stdout)."""
    primary, secondary = pty.openpty()
    if columns is not None:
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    # stdout to a file: a pipe nobody reads until the end would fill up and stall the run.
    out = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-m", "job", *args], env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                               stdout=out, stderr=secondary)
    os.close(secondary)
    seen = bytearray()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal's other end closed with the process
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    os.close(primary)
    code = process.wait(timeout=10)
    out.seek(0)
    stdout = out.read().decode()
    out.close()
    return code, seen.decode("utf-8", errors="replace"), stdout


def test_a_run_on_a_terminal_shows_what_it_is_doing_on_one_line(job: JobFiles) -> None:
    populate(job)
    grant = job.write_tokens()
    code, terminal, stdout = run_on_a_terminal(["run", "--since", "7d"], job.env())
    assert code == 0, terminal
    assert CLEAR in terminal
    assert "list 1 of 1 (Weekly Letter)" in terminal
    assert "new subscribers" in terminal and "requests" in terminal
    assert "refreshing the tokens" in terminal
    # The report itself is untouched: 300 JSON lines on stdout, no control characters.
    assert len(stdout.splitlines()) == 300 and "\x1b" not in stdout
    # Log lines still arrive whole, each on a line of its own, and the line is erased at the end.
    assert "token refreshed" in terminal
    assert terminal.rstrip("\r\n").endswith(CLEAR) or terminal.endswith("\n")
    for secret in (str(grant["refresh_token"]), str(grant["access_token"]), "conf-secret-7f3a9c1e5b"):
        assert secret not in terminal


def test_the_line_says_what_the_stream_counts(job: JobFiles) -> None:
    """--task unsubscribes counts people who left: the line says so, never "new subscribers"."""
    populate(job)
    job.write_tokens()
    code, terminal, _ = run_on_a_terminal(["run", "--task", "unsubscribes", "--since", "7d"], job.env())
    assert code == 0, terminal
    assert "list 1 of 1 (Weekly Letter)" in terminal
    assert "0 unsubscribed" in terminal and "new subscribers" not in terminal


def test_under_a_pipe_there_is_no_progress_line(job: JobFiles) -> None:
    populate(job)
    job.write_tokens()
    result = subprocess.run([sys.executable, "-m", "job", "run", "--since", "7d"], env=job.env(), cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert "list 1 of" not in result.stderr


def test_quiet_and_json_logs_on_a_terminal_show_no_line(job: JobFiles) -> None:
    populate(job)
    job.write_tokens()
    code, terminal, _ = run_on_a_terminal(["-q", "run", "--since", "7d"], job.env())
    assert code == 0 and "\x1b" not in terminal and "list 1 of" not in terminal
    code, terminal, _ = run_on_a_terminal(["--log-format", "json", "run", "--since", "7d"], job.env())
    assert code == 0 and "\x1b" not in terminal and "list 1 of" not in terminal


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_line_counts_down_a_wait_and_fits_a_terminal() -> None:
    clock = Clock()
    stream = io.StringIO()
    line = Progress(stream, monotonic=clock)
    try:
        line.update(list_index=2, list_count=5, list_name="Newsletter", found=312)
        line.waiting(60, "pacing before GET /x")
        clock.now += 23
        assert line.text() == ("aweber-job: list 2 of 5 (Newsletter), 312 new subscribers, "
                               "pacing before GET /x: 37 s left")
        line.update(list_name="A list whose name goes on and on " * 4)
        assert len(line.text()) == MAX_WIDTH and line.text().endswith("…), 312 new subscribers, pacing before GET /x: "
                                                                      "37 s left")
        line.done_waiting()
        assert "left" not in line.text()
        line.update(fleet_done=30, fleet_due=200, fleet_running=8, fleet_failing=1)
        clock.now += 37  # a minute since the start
        assert line.text() == "aweber-job: run --all: 30 of 200 due done, 8 running, 1 failing, 30/min"
    finally:
        line.close()
    assert stream.getvalue().endswith(CLEAR)


def drawn_lines(terminal: str) -> list[str]:
    """Each progress line as drawn: the text after each clear, up to the next carriage return or newline."""
    return [segment.split("\r")[0].split("\n")[0] for segment in terminal.split(CLEAR)[1:]]


def test_the_line_fits_a_narrow_terminal(job: JobFiles) -> None:
    """On a terminal 50 columns wide, no line drawn is wider than 49 (a wider one wraps, and \\r cannot clear it)."""
    populate(job)
    job.write_tokens()
    code, terminal, _ = run_on_a_terminal(["run", "--since", "7d"], job.env(), columns=50)
    assert code == 0, terminal
    lines = [line for line in drawn_lines(terminal) if line and ": info: " not in line]
    assert any("list 1 of 1" in line for line in lines), lines
    assert max(len(line) for line in lines) <= 49, lines


def test_a_wait_keeps_its_countdown_on_a_narrow_line() -> None:
    """Cut to the terminal's width, the line gives up the list's name first, and never the countdown of a wait."""
    clock = Clock()
    columns = [80]
    line = Progress(io.StringIO(), monotonic=clock, columns=lambda: columns[0])
    try:
        line.update(list_index=2, list_count=5, list_name="A list whose name goes on and on and on and on", found=312)
        line.waiting(60, "rate limit")
        clock.now += 23
        assert line.text() == "aweber-job: list 2 of 5 (A list w…), 312 new subscribers, rate limit: 37 s left"
        assert len(line.text()) == 79
        columns[0] = 60
        assert line.text() == "aweber-job: list 2 of 5, 312 new su…, rate limit: 37 s left"
        columns[0] = 20
        assert line.text() == "aweber-job: rate li…"
    finally:
        line.close()


def test_rereading_the_day_before_the_watermark_says_so(job: JobFiles) -> None:
    """A run reads from the day before the watermark: the line says it is skipping subscribers older than --since
    (a first run) or that an earlier run saw, rather than only "0 new subscribers"."""
    populate(job)
    job.write_tokens()
    code, terminal, stdout = run_on_a_terminal(["run", "--since", "2d"], job.env(), columns=200)
    assert code == 0 and 0 < len(stdout.splitlines()) < 300
    assert any(re.search(r"skipping \d+ older than --since$", line) for line in drawn_lines(terminal)), terminal
    code, terminal, stdout = run_on_a_terminal(["run"], job.env(), columns=200)
    assert code == 0, terminal
    assert stdout == ""
    assert any("0 new subscribers, skipping " in line and line.endswith(" an earlier run already saw")
               for line in drawn_lines(terminal)), terminal
