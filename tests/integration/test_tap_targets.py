"""The tap piped into real Singer targets, and run by a real Meltano with the shipped examples/meltano/meltano.yml.

Two runs with the state handed over as an orchestrator hands it (the last STATE the target echoes, or
Meltano's own state), and what lands is checked against the subscribers the test added to the stand-in.
The targets and Meltano live in venvs of their own (tests/support/singer.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from job.standin import StandIn
from tests.integration.test_tap import ACCOUNT, LIST, OTHER_LIST, populate, tap_env, write_config
from tests.support.jobs import CONFIDENTIAL_ID, CONFIDENTIAL_SECRET, REPO, JobFiles, token_requests
from tests.support.singer import tool


def pipe(job: JobFiles, tap_args: list[str], target: list[str], *, cwd: Path) -> tuple[str, str]:
    """``aweber-job tap ARGS | TARGET``, both real processes; return the target's stdout and the tap's stderr."""
    tap = subprocess.Popen([sys.executable, "-m", "job", "tap", *tap_args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=tap_env(job), cwd=REPO)
    assert tap.stdout is not None
    loaded = subprocess.run(target, stdin=tap.stdout, capture_output=True, text=True, timeout=120, cwd=cwd,
                            check=False, env={"PATH": os.environ.get("PATH", ""), "HOME": str(job.root)})
    tap.stdout.close()
    _, tap_err = tap.communicate(timeout=60)
    assert tap.returncode == 0, tap_err.decode()
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    return loaded.stdout, tap_err.decode()


def echoed_state(target_stdout: str) -> dict[str, Any]:
    """The last state a target echoed on its stdout (one JSON object a line), as orchestrators keep it."""
    lines = [line for line in target_stdout.splitlines() if line.strip()]
    assert lines, "the target echoed no state"
    state: dict[str, Any] = json.loads(lines[-1])
    return state


def add_later(standin: StandIn) -> list[str]:
    """Two more subscribers, one on each list, joined seconds ago."""
    now = time.time()
    standin.add_subscribers(ACCOUNT, LIST, [{"email": "later.a@example.com", "subscribed_at": now - 5}])
    standin.add_subscribers(ACCOUNT, OTHER_LIST, [{"email": "later.b@example.com", "subscribed_at": now - 4}])
    return ["later.a@example.com", "later.b@example.com"]


def test_target_jsonl_two_runs_with_the_echoed_state_load_each_subscriber_once(job: JobFiles) -> None:
    bin_dir = tool("target-jsonl")
    recent = populate(job.standin, lists=(LIST, OTHER_LIST))
    job.write_tokens()
    out = job.root / "out"
    out.mkdir()
    target_config = job.root / "target.json"
    target_config.write_text(json.dumps({"destination_path": str(out), "do_timestamp_file": False}))
    target = [str(bin_dir / "target-jsonl"), "--config", str(target_config)]
    config = str(write_config(job))
    first, _ = pipe(job, ["--config", config], target, cwd=job.root)
    state_file = job.root / "state.json"
    state_file.write_text(json.dumps(echoed_state(first)))
    later = add_later(job.standin)
    pipe(job, ["--config", config, "--state", str(state_file)], target, cwd=job.root)
    rows = [json.loads(line) for line in (out / "subscribers.jsonl").read_text().splitlines()]
    assert sorted(row["email"] for row in rows) == sorted(recent + later)
    assert token_requests(job.standin) == 2


def test_target_postgres_two_runs_load_only_what_is_new(job: JobFiles, pg_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    bin_dir = tool("sdk-targets")
    recent = populate(job.standin, lists=(LIST, OTHER_LIST))
    job.write_tokens()
    target_config = job.root / "target.json"
    target_config.write_text(json.dumps({"sqlalchemy_url": pg_url.replace("postgresql://", "postgresql+psycopg://"),
                                         "default_target_schema": "aweber_tap", "load_method": "append-only"}))
    target = [str(bin_dir / "target-postgres"), "--config", str(target_config)]
    config = str(write_config(job))
    first, _ = pipe(job, ["--config", config], target, cwd=job.root)
    with psycopg.connect(pg_url, autocommit=True) as db:
        loaded_first = db.execute("SELECT email, list_id, account_id FROM aweber_tap.subscribers").fetchall()
    assert sorted(row[0] for row in loaded_first) == sorted(recent)
    state_file = job.root / "state.json"
    state_file.write_text(json.dumps(echoed_state(first)))
    later = add_later(job.standin)
    pipe(job, ["--config", config, "--state", str(state_file)], target, cwd=job.root)
    with psycopg.connect(pg_url, autocommit=True) as db:
        rows = db.execute("SELECT email, list_id, account_id, subscribed_at FROM aweber_tap.subscribers").fetchall()
        db.execute("DROP SCHEMA aweber_tap CASCADE")
    assert sorted(row[0] for row in rows) == sorted(recent + later), "a subscriber missing or loaded twice"
    assert {(row[0], row[1]) for row in rows if row[0].startswith("later")} == {
        ("later.a@example.com", LIST), ("later.b@example.com", OTHER_LIST)}
    assert all(row[2] == ACCOUNT and row[3] is not None for row in rows)


def test_target_csv_gets_the_selected_stream(job: JobFiles) -> None:
    bin_dir = tool("sdk-targets")
    recent = populate(job.standin)
    job.write_tokens()
    out = job.root / "csv"
    out.mkdir()
    target_config = job.root / "target.json"
    target_config.write_text(json.dumps({"output_path": str(out), "file_naming_scheme": "{stream_name}.csv"}))
    pipe(job, ["--config", str(write_config(job))], [str(bin_dir / "target-csv"), "--config", str(target_config)],
         cwd=job.root)
    import csv

    with open(out / "subscribers.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["email"] for row in rows) == sorted(recent)


@pytest.mark.slow
def test_meltano_runs_the_shipped_project_twice_with_its_own_state(job: JobFiles, tmp_path: Path) -> None:
    bin_dir = tool("meltano")
    recent = populate(job.standin)
    job.write_tokens()
    project = REPO / "examples" / "meltano"
    out = tmp_path / "meltano-out"
    base = job.standin.base_url
    # Meltano installs the plugins with the machine's own package-index settings (pip's and uv's, which live in
    # the environment and the home directory), so it gets the real environment, less anything of the job's.
    env = {
        **{name: value for name, value in os.environ.items()
           if not name.startswith(("AWEBER_", "TAP_AWEBER_", "TARGET_", "MELTANO_"))},
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        # Meltano's own files (its database, the plugins' venvs) go to the test's directory, not the checkout.
        "MELTANO_SYS_DIR_ROOT": str(tmp_path / ".meltano"),
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
        "TAP_AWEBER_CLIENT_ID": CONFIDENTIAL_ID,
        "TAP_AWEBER_CLIENT_SECRET": CONFIDENTIAL_SECRET,
        "TAP_AWEBER_TOKEN_FILE": str(job.token_file),
        "TAP_AWEBER_TOKEN_URL": f"{base}/oauth2/token",
        "TAP_AWEBER_API_URL": f"{base}/1.0",
        "TAP_AWEBER_START_DATE": "2020-01-01T00:00:00Z",
        "TARGET_JSONL_DESTINATION_PATH": str(out),
        "TARGET_JSONL_DO_TIMESTAMP_FILE": "false",
    }
    out.mkdir()

    def meltano(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(bin_dir / "meltano"), *args], cwd=project, env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        return done

    try:
        meltano("install")
        meltano("run", "tap-aweber", "target-jsonl")
        first = [json.loads(line)["email"] for line in (out / "subscribers.jsonl").read_text().splitlines()]
        later = add_later_to_one(job.standin)
        meltano("run", "tap-aweber", "target-jsonl")
    finally:
        shutil.rmtree(project / "plugins", ignore_errors=True)
        shutil.rmtree(project / "output", ignore_errors=True)
    emails = [json.loads(line)["email"] for line in (out / "subscribers.jsonl").read_text().splitlines()]
    old = [f"old{i}.{LIST}@example.com" for i in range(2)]
    assert sorted(first) == sorted(old + recent)
    assert sorted(emails) == sorted(old + recent + later)
    assert token_requests(job.standin) >= 2


def add_later_to_one(standin: StandIn) -> list[str]:
    standin.add_subscribers(ACCOUNT, LIST, [{"email": "later.a@example.com", "subscribed_at": time.time() - 5}])
    return ["later.a@example.com"]
