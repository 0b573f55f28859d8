#!/usr/bin/env python
"""How fast ``run --all`` runs the connections of a PostgreSQL store, beside a shell loop of single runs.

::

    .venv/bin/python bench/fleet.py            # 1,000 connections: about 2 minutes on 2 cores
    .venv/bin/python bench/fleet.py --full     # 10,000 connections: longer

Needs a PostgreSQL server (``--server``, default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust auth): a throwaway database is created on it and dropped at the end. The stand-in AWeber runs
as its own process (``python -m tests.support.standin``) and answers every request after a fixed latency
(``--latency``, default 50 ms: a stand-in for the network and AWeber's own time). The markdown
report goes to stdout and ``bench/results/fleet.md``; progress to stderr. Exit status 0 when every
goal held, 1 when one did not (the report is written either way), 2 when something is missing.

What is measured, every run checked first (each connection refreshed exactly once and recorded with
exit code 0, or the run is an error, not a figure):

* **the loop**: what an operator does without ``run --all``: a real ``sh`` loop of
  ``aweber-job --connection NAME run --task noop``, one process after another. Over 1,000
  connections that takes minutes, so a sample (``--sample``) is run and its rate extrapolated.
* **run --all**: ``aweber-job run --all --concurrency C --task noop`` in P processes at once
  (P = 1, 2, 4; C = 8, 16), all connections due at the start (``last_run_at`` cleared between runs).
* per run: connections per second and per hour per process; wall milliseconds per connection and
  CPU milliseconds per connection (user + system of the job processes, from ``os.wait4``); database
  transactions per connection (``pg_stat_database.xact_commit + xact_rollback`` of the benchmark's
  database before and after, read from the server's own database; the store runs each statement in
  its own autocommit transaction, so this counts its statements: round trips); peak RSS of the
  largest job process (``ru_maxrss`` from ``os.wait4``); the stand-in's CPU share (``/proc/PID/stat``)
  and the machine's (``/proc/stat``), to say what saturates.
* **the bound** set by the latency and the concurrency: each connection needs k requests (measured
  at the stand-in: k = 1 for ``noop``, its refresh), each taking the latency L, so C in flight run at
  most C / (k × L) connections a second per process.

Goals: one process at least 20× the loop; within 2× of the bound; P processes at least 0.8 × P times
one (linear) until the machine or the stand-in saturates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS_FILE = REPO / "bench" / "results" / "fleet.md"
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

CLIENT_ID = "fleet-bench-client"
CLIENT_SECRET = "fleet-bench-secret-7c41e0"
LATENCY_SECONDS = 0.05
LOOP_FACTOR_GOAL = 20.0
BOUND_FACTOR_GOAL = 2.0
LINEAR_GOAL = 0.8
# A process (or the stand-in) using this share of a core or more is saturated.
SATURATED_SHARE = 0.9
RUN_TIMEOUT_SECONDS = 900.0


def progress(message: str) -> None:
    print(f"[fleet] {message}", file=sys.stderr, flush=True)


# -- the pieces: stand-in process, database, job environment ----------------------------------------


class StandInProcess:
    """``python -m tests.support.standin`` with a per-request latency, driven through its control endpoints."""

    def __init__(self, directory: Path, latency: float) -> None:
        # The stand-in's process mode lives with the tests, not in the package; run from the repository.
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from tests.support.standin import StandInControl

        config = {"clients": {CLIENT_ID: CLIENT_SECRET}, "request_delay_seconds": latency}
        config_file = directory / "standin.json"
        config_file.write_text(json.dumps(config), encoding="utf-8")
        port_file = directory / "standin.port"
        self._log = open(directory / "standin.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.standin",
             "--port-file", str(port_file), "--config", str(config_file)],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the stand-in did not start; see {directory / 'standin.log'}")
            time.sleep(0.02)
        self.control = StandInControl(f"http://127.0.0.1:{int(port_file.read_text())}")
        self.urls = {key: str(value) for key, value in self.control.info().items() if key.endswith("_url")}

    def requests(self) -> tuple[int, int]:
        """(all requests, token requests) answered so far."""
        stats = self.control.stats()
        token = stats.get("token")
        tokens = sum(int(value) for value in token.values()) if isinstance(token, dict) else 0
        return int(str(stats["requests_total"])), tokens

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (``/proc/PID/stat`` fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """User + system CPU of every ``postgres`` process on this machine, with that of its ended children.

    The postmaster reaps the backends, so the CPU of those that ended (each job process's connection)
    is in its cutime and cstime (fields 16 and 17). 0 when the server is not on this machine.
    """
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text(encoding="ascii").rsplit(")", 1)
        except (OSError, ValueError):
            continue
        if head.split("(", 1)[-1] != "postgres":
            continue
        fields = tail.split()
        total += sum(int(value) for value in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, over all cores (``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(value) for value in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


class Database:
    """A throwaway database on the server, created at start and dropped (its connections ended first) at the end."""

    def __init__(self, server_url: str, *, prefix: str = "aweber_fleet_bench_") -> None:
        from urllib.parse import urlsplit, urlunsplit

        import psycopg

        self._psycopg = psycopg
        self._server_url = server_url
        self.name = f"{prefix}{secrets.token_hex(4)}"
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"CREATE DATABASE {self.name}")
        self.url = urlunsplit(urlsplit(server_url)._replace(path="/" + self.name))

    def execute(self, sql: str, params: Sequence[Any] | None = None, *, server: bool = False) -> list[tuple[Any, ...]]:
        """One statement on a fresh connection to this database (or, with ``server``, the server's own)."""
        with self._psycopg.connect(self._server_url if server else self.url, autocommit=True) as db:
            cursor = db.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def transactions(self) -> int:
        """Transactions committed or rolled back in this database so far, once the count stops moving.

        Read from the server's own database, so reading adds nothing to the count. A backend reports
        its counts when it ends (or now and then), so the value is read until two reads half a second
        apart agree.
        """
        sql = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s"
        last = -1
        for _ in range(20):
            value = int(self.execute(sql, (self.name,), server=True)[0][0])
            if value == last:
                return value
            last = value
            time.sleep(0.5)
        return last

    def drop(self) -> None:
        with self._psycopg.connect(self._server_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


@dataclass
class Setup:
    """Everything a run needs: the stand-in, the database, the job's environment and connection names."""

    standin: StandInProcess
    database: Database
    env: dict[str, str]
    names: list[str]
    logs: Path


def job_env(root: Path, standin: StandInProcess, database: Database, key: str) -> dict[str, str]:
    """The job's environment: the stand-in's URLs, the store (tokens encrypted, as in production)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "AWEBER_CLIENT_ID": CLIENT_ID,
        "AWEBER_CLIENT_SECRET": CLIENT_SECRET,
        "AWEBER_TOKEN_URL": standin.urls["token_url"],
        "AWEBER_AUTHORIZE_URL": standin.urls["authorize_url"],
        "AWEBER_REVOKE_URL": standin.urls["revoke_url"],
        "AWEBER_API_URL": standin.urls["api_url"],
        "AWEBER_STORE": database.url,
        "AWEBER_STORE_KEY": key,
        "AWEBER_STATE_DIR": str(root / "state"),
        "AWEBER_TOKEN_FILE": str(root / "state" / "tokens.json"),
    }


def import_connections(setup_env: dict[str, str], standin: StandInProcess, count: int) -> list[str]:
    """``count`` connections, each with tokens issued at the stand-in, put in the store by the job's own API."""
    from job.auth.tokens import parse_token_file
    from job.stores.postgres import PostgresStore

    store = PostgresStore(setup_env["AWEBER_STORE"], keys=[setup_env["AWEBER_STORE_KEY"]],
                          state_dir=Path(setup_env["AWEBER_STATE_DIR"]))
    names = [f"c{index:05d}" for index in range(count)]
    try:
        for name in names:
            grant = standin.control.issue_tokens(CLIENT_ID)
            document = {"access_token": grant["access_token"], "refresh_token": grant["refresh_token"],
                        "token_type": "bearer", "expires_in": 7200, "expires_at": time.time() + 7200}
            store.import_tokens(name, parse_token_file(json.dumps(document).encode(), name), force=False)
    finally:
        store.close()
    return names


@contextlib.contextmanager
def set_up(count: int, latency: float, server_url: str) -> Iterator[Setup]:
    """Stand-in, database with the schema and ``count`` connections; all of it gone afterwards."""
    from cryptography.fernet import Fernet

    root = Path(tempfile.mkdtemp(prefix="aweber-fleet-bench-"))
    standin = StandInProcess(root, latency)
    database: Database | None = None
    try:
        database = Database(server_url)
        env = job_env(root, standin, database, Fernet.generate_key().decode())
        init = subprocess.run([str(BIN / "aweber-job"), "store", "init"], env=env, capture_output=True,
                              text=True, check=False)
        if init.returncode != 0:
            raise RuntimeError(f"aweber-job store init failed: {init.stderr.strip()}")
        started = time.monotonic()
        names = import_connections(env, standin, count)
        progress(f"{count:,} connections issued and imported in {time.monotonic() - started:.1f} s")
        logs = root / "logs"
        logs.mkdir()
        yield Setup(standin, database, env, names, logs)
    finally:
        standin.stop()
        if database is not None:
            database.drop()
        shutil.rmtree(root, ignore_errors=True)


# -- one measured run --------------------------------------------------------------------------------


@dataclass
class Measured:
    """What one run of ``connections`` connections did, by ``processes`` processes."""

    label: str
    processes: int
    concurrency: int
    connections: int
    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    transactions: int
    requests: int
    standin_cpu_share: float
    postgres_cpu_seconds: float
    machine_cpu_share: float

    @property
    def per_second(self) -> float:
        return self.connections / self.wall_seconds

    @property
    def per_hour_per_process(self) -> float:
        return self.per_second * 3600 / self.processes

    @property
    def requests_per_connection(self) -> float:
        return self.requests / self.connections


def wait_with_usage(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float, int]:
    """Wait for ``process``: (exit code, user + system CPU seconds, max RSS bytes), from ``os.wait4``."""
    result: list[tuple[int, int, Any]] = []
    waiter = threading.Thread(target=lambda: result.append(os.wait4(process.pid, 0)), daemon=True)
    waiter.start()
    waiter.join(timeout)
    if not result:
        process.kill()
        waiter.join()
        raise RuntimeError(f"{process.args!r} did not finish within {timeout:.0f} s")
    _, status, usage = result[0]
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def reset_due(setup: Setup) -> None:
    """Every connection due now, as if none had run (the job's own columns; its leases are all released)."""
    setup.database.execute("UPDATE aweber_job.connections SET last_run_at = NULL, last_exit_code = NULL")


def check_all_ran(setup: Setup, names: Sequence[str], label: str, token_requests: int) -> None:
    """Each of ``names`` refreshed exactly once and recorded with exit code 0: else the figure means nothing."""
    rows = setup.database.execute(
        "SELECT count(*) FROM aweber_job.connections WHERE name = ANY(%s) AND last_exit_code = 0"
        " AND last_run_at IS NOT NULL", (list(names),))
    ok = int(rows[0][0])
    if ok != len(names) or token_requests != len(names):
        raise RuntimeError(f"{label}: {ok} of {len(names)} connections recorded exit code 0 and the stand-in "
                           f"answered {token_requests} refreshes (expected {len(names)}); logs in {setup.logs}")


def measure(setup: Setup, label: str, commands: list[list[str]], names: Sequence[str], *,
            processes: int, concurrency: int) -> Measured:
    """Start ``commands`` at once, wait for all, check the work was done, and return the figures."""
    reset_due(setup)
    transactions_before = setup.database.transactions()
    requests_before, tokens_before = setup.standin.requests()
    standin_cpu_before = setup.standin.cpu_seconds()
    postgres_before = postgres_cpu_seconds()
    busy_before, total_before = machine_busy_seconds()
    started = time.monotonic()
    running = []
    for number, command in enumerate(commands):
        with open(setup.logs / f"{label.replace(' ', '_')}.{number}.stderr", "wb") as err:
            running.append(subprocess.Popen(command, env=setup.env, cwd=REPO, stdout=subprocess.DEVNULL,
                                            stderr=err, stdin=subprocess.DEVNULL))
    usages = [wait_with_usage(process, RUN_TIMEOUT_SECONDS) for process in running]
    wall = time.monotonic() - started
    busy_after, total_after = machine_busy_seconds()
    standin_cpu = setup.standin.cpu_seconds() - standin_cpu_before
    requests_after, tokens_after = setup.standin.requests()
    failed = [code for code, _, _ in usages if code != 0]
    if failed:
        raise RuntimeError(f"{label}: exit codes {failed}; see {setup.logs}")
    transactions = setup.database.transactions() - transactions_before
    # Read once the backends have ended (their counts are in): the postmaster has reaped them by then.
    postgres_cpu = postgres_cpu_seconds() - postgres_before
    check_all_ran(setup, names, label, tokens_after - tokens_before)
    return Measured(
        label=label, processes=processes, concurrency=concurrency, connections=len(names), wall_seconds=wall,
        cpu_seconds=sum(cpu for _, cpu, _ in usages), peak_rss_bytes=max(rss for _, _, rss in usages),
        transactions=transactions, requests=requests_after - requests_before,
        standin_cpu_share=standin_cpu / wall, postgres_cpu_seconds=postgres_cpu,
        machine_cpu_share=(busy_after - busy_before) / max(total_after - total_before, 1e-9),
    )


def measure_loop(setup: Setup, sample: int) -> Measured:
    """A shell loop of single runs over the first ``sample`` connections, one process after another."""
    names = setup.names[:sample]
    script = 'for name in "$@"; do "$AWEBER_JOB" --connection "$name" run --task noop || exit $?; done'
    setup.env["AWEBER_JOB"] = str(BIN / "aweber-job")
    progress(f"loop: {len(names)} single runs, one after another")
    return measure(setup, "loop", [["sh", "-c", script, "sh", *names]], names, processes=1, concurrency=1)


def measure_fleet(setup: Setup, processes: int, concurrency: int) -> Measured:
    label = f"run --all {processes}x{concurrency}"
    progress(f"{label}: {len(setup.names):,} connections, {processes} process(es) x concurrency {concurrency}")
    command = [str(BIN / "aweber-job"), "run", "--all", "--concurrency", str(concurrency), "--task", "noop"]
    return measure(setup, label, [command] * processes, setup.names, processes=processes, concurrency=concurrency)


# -- the report --------------------------------------------------------------------------------------


def bound_per_second(row: Measured, latency: float) -> float:
    """What the latency allows: C in flight per process, each connection k requests of ``latency`` each."""
    return row.processes * row.concurrency / (row.requests_per_connection * latency)


def render(loop: Measured, rows: list[Measured], *, latency: float, count: int, sample: int,
           elapsed: float, command: str) -> tuple[str, bool]:
    """The markdown report and whether every goal held."""
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, PostgreSQL on 127.0.0.1, stand-in latency {latency * 1000:.0f} ms a "
        f"request; `{command}` ({elapsed:.0f} s for the whole run). Task `noop`: k = "
        f"{rows[0].requests_per_connection:.2f} request(s) per connection (its refresh), counted at the stand-in.",
        "",
        "| how | processes × concurrency | connections | wall | connections/s | per hour per process "
        "| wall ms/connection | CPU ms/connection: job | : PostgreSQL | DB transactions/connection | peak RSS/process "
        "| bound (C/(k×L)) | of bound | stand-in CPU | machine CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    loop_rate = loop.per_second
    extrapolated = count / loop_rate
    lines.append(
        f"| shell loop of `--connection NAME run` | 1 × 1 | {loop.connections:,} (sample) | {loop.wall_seconds:.1f} s "
        f"→ {extrapolated:.0f} s for {count:,}* | {loop_rate:.2f} | {loop_rate * 3600:,.0f} "
        f"| {1000 / loop_rate:.0f} | {1000 * loop.cpu_seconds / loop.connections:.0f} "
        f"| {1000 * loop.postgres_cpu_seconds / loop.connections:.1f} "
        f"| {loop.transactions / loop.connections:.1f} | {loop.peak_rss_bytes / 2**20:.1f} MB "
        f"| {bound_per_second(loop, latency):.0f}/s | {loop_rate / bound_per_second(loop, latency):.0%} "
        f"| {loop.standin_cpu_share:.0%} | {loop.machine_cpu_share:.0%} |"
    )
    for row in rows:
        bound = bound_per_second(row, latency)
        lines.append(
            f"| `run --all` | {row.processes} × {row.concurrency} | {row.connections:,} | {row.wall_seconds:.1f} s "
            f"| {row.per_second:.0f} | {row.per_hour_per_process:,.0f} | {1000 / row.per_second:.1f} "
            f"| {1000 * row.cpu_seconds / row.connections:.1f} "
            f"| {1000 * row.postgres_cpu_seconds / row.connections:.1f} "
            f"| {row.transactions / row.connections:.1f} "
            f"| {row.peak_rss_bytes / 2**20:.1f} MB | {bound:.0f}/s | {row.per_second / bound:.0%} "
            f"| {row.standin_cpu_share:.0%} | {row.machine_cpu_share:.0%} |"
        )
    lines += [
        "",
        f"\\* extrapolated from the sample of {sample:,}: {count:,} ÷ the sample's rate. Stand-in CPU is a share "
        "of one core (it is one Python process); machine CPU is a share of all cores (the job, the stand-in and "
        "PostgreSQL share them). DB transactions: `pg_stat_database` xact_commit + xact_rollback of the "
        "benchmark's database over the run (every store statement is its own autocommit transaction).",
        "",
    ]
    goal_lines, all_met = goals(loop, rows, latency)
    return "\n".join(lines + goal_lines) + "\n", all_met


def goals(loop: Measured, rows: list[Measured], latency: float) -> tuple[list[str], bool]:
    """Each goal, met or not, with the figures it rests on."""
    lines = ["**Goals:**", ""]
    all_met = True
    for concurrency in sorted({row.concurrency for row in rows}):
        by_processes = {row.processes: row for row in rows if row.concurrency == concurrency}
        one = by_processes.get(1)
        if one is None:
            continue
        factor = one.per_second / loop.per_second
        near = one.per_second * BOUND_FACTOR_GOAL >= bound_per_second(one, latency)
        share = one.per_second / bound_per_second(one, latency)
        lines.append(f"- concurrency {concurrency}, one process: {factor:.0f}× the loop (goal ≥ "
                     f"{LOOP_FACTOR_GOAL:.0f}×): {'met' if factor >= LOOP_FACTOR_GOAL else 'NOT met'}; {share:.0%} "
                     f"of the bound (goal ≥ {1 / BOUND_FACTOR_GOAL:.0%}): {'met' if near else 'NOT met'}")
        all_met &= factor >= LOOP_FACTOR_GOAL and near
        for processes, row in sorted(by_processes.items()):
            if processes == 1:
                continue
            scale = row.per_second / one.per_second
            linear = scale >= LINEAR_GOAL * processes
            saturated = saturation(row)
            lines.append(f"  - {processes} processes: {scale:.2f}× one process (linear goal ≥ "
                         f"{LINEAR_GOAL * processes:.1f}×): {'met' if linear else 'NOT met'}"
                         + (f"; saturated: {saturated}" if saturated else ""))
            all_met &= linear or bool(saturated)
    return lines, all_met


def saturation(row: Measured) -> str:
    """What was saturated during ``row``: the machine's cores, the stand-in's one core, or nothing."""
    found = []
    if row.machine_cpu_share >= SATURATED_SHARE:
        found.append(f"the machine's cores ({row.machine_cpu_share:.0%} busy)")
    if row.standin_cpu_share >= SATURATED_SHARE:
        found.append(f"the stand-in ({row.standin_cpu_share:.0%} of its core)")
    return " and ".join(found)


# -- main --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark run --all against a shell loop of single runs.")
    parser.add_argument("--full", action="store_true", help="10,000 connections (default 1,000)")
    parser.add_argument("--connections", type=int, help="how many connections (overrides --full)")
    parser.add_argument("--sample", type=int, default=100, help="single runs in the loop's sample (default 100)")
    parser.add_argument("--latency", type=float, default=LATENCY_SECONDS, help="seconds per request (default 0.05)")
    parser.add_argument("--processes", default="1,2,4", help="process counts (default 1,2,4)")
    parser.add_argument("--concurrency", default="8,16", help="concurrency per process (default 8,16)")
    parser.add_argument("--server", default=SERVER_URL, help=f"PostgreSQL server (default {SERVER_URL})")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help="where the markdown goes too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    count = args.connections or (10_000 if args.full else 1_000)
    sample = min(args.sample, count)
    processes = [int(value) for value in args.processes.split(",")]
    concurrencies = [int(value) for value in args.concurrency.split(",")]
    if not (BIN / "aweber-job").exists():
        progress(f"no console script at {BIN / 'aweber-job'}: pip install -e '.[postgres]'")
        return 2
    started = time.monotonic()
    try:
        with set_up(count, args.latency, args.server) as setup:
            loop = measure_loop(setup, sample)
            rows = [measure_fleet(setup, p, c) for c in concurrencies for p in processes]
    except ImportError as exc:
        progress(f"missing: {exc}; pip install -e '.[postgres]'")
        return 2
    command = "python bench/fleet.py" + ("".join(f" {arg}" for arg in argv) if argv else "")
    report, all_met = render(loop, rows, latency=args.latency, count=count, sample=sample,
                             elapsed=time.monotonic() - started, command=command)
    print(report, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
