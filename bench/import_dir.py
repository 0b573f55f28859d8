#!/usr/bin/env python
"""How fast ``connections import --dir`` puts a directory of token files into a PostgreSQL store.

::

    .venv/bin/python bench/import_dir.py               # 10,000 token files
    .venv/bin/python bench/import_dir.py --files 1000

Needs the ``postgres`` extra and a PostgreSQL server (``--server``, default
``postgresql://postgres@127.0.0.1:5432/postgres``, trust auth): a throwaway database is created on it and
dropped at the end. The import never contacts AWeber, so the tokens are made-up strings and no stand-in runs.
Each file is a flat OAuth 2 token file; a task state file lies where a run of them keeps it
(``AWEBER_STATE_DIR``), so every file goes in with its state; the tokens are encrypted with a store key.

What is timed: the one ``aweber-job connections import --dir DIR`` process, start-up included. It is checked
before it counts: exit 0, every connection in the store with its task state, every file renamed. Prints one
line; exit status 0 when the goal held (10,000 files in 30 s, scaled to the number of files), 1 when it did not,
2 when something is missing or the import went wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
GOAL_SECONDS_PER_10000 = 30.0
STORE_KEY = "tY3ifhj1zMA0B5SBCwqc2V7LTh6r2_VlPExrXAwPXZU="  # a Fernet key made for benchmarks only


def make_files(directory: Path, count: int) -> None:
    """``count`` flat token files ``c00000.json``…, 0600, with made-up tokens."""
    expires_at = int(time.time()) + 7200
    for number in range(count):
        path = directory / f"c{number:05d}.json"
        document = {"access_token": f"bench-access-{number}-{secrets.token_hex(8)}",
                    "refresh_token": f"bench-refresh-{number}-{secrets.token_hex(8)}",
                    "token_type": "bearer", "expires_at": expires_at}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle)


def job_env(url: str, state_dir: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(state_dir.parent), "AWEBER_STORE": url,
            "AWEBER_STORE_KEY": STORE_KEY, "AWEBER_CLIENT_ID": "import-bench-client",
            "AWEBER_STATE_DIR": str(state_dir)}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "aweber-job"), *args], env=env, capture_output=True, text=True, check=False)


def measure(server: str, count: int, root: Path) -> float:
    """Import ``count`` files into a fresh database on ``server``; the seconds the import took (checked)."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = f"aweber_import_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = urlunsplit(urlsplit(server)._replace(path="/" + name))
    try:
        directory, state_dir = root / "tokens", root / "state"
        directory.mkdir()
        state_dir.mkdir()
        state = {"lists": {"100/201": {"subscribed_at": "2026-01-01 00:00:00-00:00", "ids": [1]}}}
        (state_dir / "new-subscribers.state.json").write_text(json.dumps(state), encoding="utf-8")
        make_files(directory, count)
        env = job_env(url, state_dir)
        init = run(["store", "init"], env)
        if init.returncode != 0:
            raise RuntimeError(f"store init failed: {init.stderr.strip()}")
        began = time.monotonic()
        result = run(["connections", "import", "--dir", str(directory)], env)
        seconds = time.monotonic() - began
        if result.returncode != 0:
            raise RuntimeError(f"the import exited {result.returncode}: {result.stderr.strip()[-500:]}")
        with psycopg.connect(url, autocommit=True) as db:
            row = db.execute("SELECT count(*), count(*) FILTER (WHERE task_state ? 'new-subscribers' AND encrypted) "
                             "FROM aweber_job.connections").fetchone()
        left = [entry for entry in os.listdir(directory) if entry.endswith(".json")]
        if row is None or row[0] != count or row[1] != count or left:
            raise RuntimeError(f"not every file went in: {row} in the store, {len(left)} files not renamed")
        return seconds
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=10_000, help="token files to import (default 10,000)")
    parser.add_argument("--server", default=SERVER_URL, help=f"PostgreSQL server URL (default {SERVER_URL})")
    args = parser.parse_args(argv)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        print("bench/import_dir.py needs the postgres extra: pip install -e '.[postgres]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="aweber-import-bench-") as root:
        try:
            seconds = measure(args.server, args.files, Path(root))
        except Exception as exc:  # noqa: BLE001 - one line, exit 2: the benchmark broke, no figure
            print(f"import_dir: {exc}", file=sys.stderr)
            return 2
    goal = GOAL_SECONDS_PER_10000 * args.files / 10_000
    met = seconds <= goal
    print(f"imported {args.files:,} token files in {seconds:.1f} s ({args.files / seconds:,.0f} files/s; "
          f"goal {goal:.1f} s: {'met' if met else 'NOT met'})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
