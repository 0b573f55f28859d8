"""`aweber-job sandbox` as a person uses it: a real process serving the stand-in, its printed lines pasted into
.env, then login (approved over HTTP, the code read off the authorize page), run, status, revoke as real
processes against it, and a stop signal that ends it with 0."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tests.support.jobs import REPO, run_job

# What the sandbox seeds (the demo's lists): the subscribers of the last 24 hours, by list.
RECENT = {
    (4815162, "ada@example.com"), (4815162, "grace@example.org"), (4815162, "alan@example.net"),
    (4815163, "katherine@example.com"), (4815163, "edsger@example.org"),
}
NAMES = ("AWEBER_CLIENT_ID", "AWEBER_TOKEN_URL", "AWEBER_AUTHORIZE_URL", "AWEBER_REVOKE_URL", "AWEBER_API_URL")
LINE = re.compile(r"^(AWEBER_[A-Z_]+)=(\S+)$")


def start_sandbox(home: Path, *args: str, env_file: Path | None = None) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """``python -m job sandbox ARGS`` in ``home``; the process and the NAME=value lines it printed.

    ``env_file``: its stdout goes there, as the README's ``aweber-job sandbox > .env`` does.
    """
    out = open(env_file, "w") if env_file is not None else None  # the child writes it
    process = subprocess.Popen(
        [sys.executable, "-m", "job", "sandbox", *args], cwd=home, env=base_env(home), text=True,
        stdout=out or subprocess.PIPE, stderr=subprocess.PIPE,
    )
    if out is not None:
        out.close()
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while not any(line.startswith("AWEBER_TOKEN_FILE=") for line in lines) and time.monotonic() < deadline:
        if env_file is not None:
            lines = env_file.read_text(encoding="utf-8").splitlines(keepends=True)
            time.sleep(0.05)
            continue
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
    printed: dict[str, str] = {}
    for line in lines:
        match = LINE.match(line.rstrip("\n"))
        assert match, f"not a NAME=value line: {line!r}"
        printed[match.group(1)] = match.group(2)
    if "AWEBER_TOKEN_FILE" not in printed:
        process.kill()
        _, err = process.communicate(timeout=10)
        raise AssertionError(f"the sandbox printed {printed} and then: {err}")
    return process, printed


def base_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONPATH": str(REPO)}


def stop(process: subprocess.Popen[str], number: signal.Signals) -> tuple[int, str]:
    process.send_signal(number)
    _, err = process.communicate(timeout=30)
    return process.returncode, err


def login_as_a_person(home: Path) -> tuple[int, str, str]:
    """``aweber-job login`` in ``home`` (its .env): open the printed URL, read the code on the page, paste it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "job", "login"], cwd=home, env=base_env(home), text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    seen = []
    try:
        while line := process.stdout.readline():
            seen.append(line)
            if line.startswith("http://"):
                page = requests.get(line.strip(), timeout=10)
                assert page.status_code == 200, page.text
                # What a person reads on the page: the code, and nothing else in a <code> element.
                codes = re.findall(r"<code[^>]*>([^<]+)</code>", page.text)
                assert len(codes) == 1, page.text
                process.stdin.write(codes[0] + "\n")
                process.stdin.flush()
                break
        process.stdin.close()
        seen.append(process.stdout.read())
        err = process.stderr.read()
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, "".join(seen), err


def test_login_run_status_and_revoke_against_the_sandbox_then_sigterm_stops_it_with_0(tmp_path: Path) -> None:
    # As the README says: aweber-job sandbox > .env, then the commands in that directory.
    process, printed = start_sandbox(tmp_path, env_file=tmp_path / ".env")
    try:
        assert set(NAMES) <= set(printed) and "AWEBER_CLIENT_SECRET" not in printed
        assert all(urlsplit(printed[name]).hostname == "127.0.0.1" for name in NAMES[1:])

        code, out, err = login_as_a_person(tmp_path)
        assert code == 0, out + err
        token_file = tmp_path / "sandbox" / "tokens.json"
        assert token_file.is_file()
        # An absolute path: the crontab line runs the job from the user's home, not from here.
        assert printed["AWEBER_TOKEN_FILE"] == str(token_file)
        secrets = re.findall(r'"(?:access|refresh)_token": "([^"]+)"', token_file.read_text(encoding="utf-8"))
        assert len(secrets) == 2

        run = run_job(["run"], base_env(tmp_path), cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        rows = [json.loads(line) for line in run.stdout.splitlines()]
        assert {(row["list_id"], row["email"]) for row in rows} == RECENT and len(rows) == len(RECENT)

        status = run_job(["status"], base_env(tmp_path), cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert str(token_file) in status.stdout

        again = run_job(["run"], base_env(tmp_path), cwd=tmp_path)
        assert again.returncode == 0 and again.stdout == "", again.stderr

        revoke = run_job(["revoke"], base_env(tmp_path), cwd=tmp_path)
        assert revoke.returncode == 0, revoke.stderr
        assert not token_file.exists()
        after = run_job(["run"], base_env(tmp_path), cwd=tmp_path)
        assert after.returncode == 65, after.stderr  # no token file any more

        everything = out + err + run.stdout + run.stderr + status.stdout + status.stderr + revoke.stderr
        for secret in secrets:
            assert secret not in everything
    finally:
        returncode, sandbox_err = stop(process, signal.SIGTERM)
    assert returncode == 0, sandbox_err
    assert "Traceback" not in sandbox_err
    assert "Ctrl-C" in sandbox_err and "stopped" in sandbox_err


def test_a_confidential_sandbox_on_a_given_port_logs_in_with_its_secret_and_sigint_stops_it(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process, printed = start_sandbox(tmp_path, "--confidential", "--port", str(port))
    try:
        assert printed["AWEBER_TOKEN_URL"] == f"http://127.0.0.1:{port}/oauth2/token"
        assert printed["AWEBER_CLIENT_SECRET"]
        (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in printed.items()), encoding="utf-8")
        code, out, err = login_as_a_person(tmp_path)
        assert code == 0, out + err
        assert "confidential client" in out
        assert printed["AWEBER_CLIENT_SECRET"] not in out + err

        busy = run_job(["sandbox", "--port", str(port)], base_env(tmp_path), cwd=tmp_path)
        assert busy.returncode == 64 and f"127.0.0.1:{port}" in busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1
    finally:
        returncode, sandbox_err = stop(process, signal.SIGINT)
    assert returncode == 0, sandbox_err
    assert "Traceback" not in sandbox_err and "KeyboardInterrupt" not in sandbox_err

