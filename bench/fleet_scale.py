#!/usr/bin/env python
"""``run --all`` at scale: does the last tenth of a run cost what the first did?

::

    .venv/bin/python bench/fleet_scale.py                          # 100,000 connections, --task noop
    .venv/bin/python bench/fleet_scale.py --connections 10000 --task new-subscribers

The store is filled with ``--connections`` connections (tokens issued by the stand-in in batches, sealed
with the store's key by the job's own code, inserted a thousand a transaction), then one ``run --all``
(``--processes`` × ``--concurrency``) runs every one of them against the stand-in AWeber at ``--latency``
a request. Every connection must be refreshed exactly once and recorded with exit code 0, or the run is
an error, not a figure.

Reported beside the rate of the whole run:

* **the rate over each tenth** of the run, from the times PostgreSQL recorded each connection's run
  (``last_run_at``): tenth k is the connections ranked k·n/10 … (k+1)·n/10 by that time;
* **the job's and PostgreSQL's CPU per connection, per tenth**: sampled every ``--every`` seconds from
  ``/proc`` (the job processes' user + system time; every ``postgres`` process's, with its reaped
  children), interpolated at the tenths' boundaries;
* **the claim statement's time** at the start and near the end: the due query of ``sql/claim_due.sql``
  as of the run's start, without its ``FOR UPDATE`` (so it takes no row from the run), timed by
  ``EXPLAIN ANALYZE`` at each sample;
* **statements per connection**: the benchmark database's transactions (the store runs each statement
  in its own autocommit transaction), less the sampler's own;
* **peak memory** of each job process (``ru_maxrss``).

With ``--task new-subscribers`` every connection reads one list with a few subscribers of the last day (the
stand-in serves the same account to all, so the per-account pacing, ``AWEBER_RATE_LIMIT``, is lifted: in life
each connection is an account of its own).

Goals: at least 28 connections a second (100,000 an hour); the last
tenth's rate at least 0.8 of the first's. Exit 0 when both held, 1 when not, 2 when something is missing.
The markdown report goes to stdout and ``bench/results/fleet-scale.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.fleet import (  # noqa: E402
    BIN,
    CLIENT_ID,
    SERVER_URL,
    Database,
    StandInProcess,
    job_env,
    postgres_cpu_seconds,
    process_cpu_seconds,
    progress,
    wait_with_usage,
)

RESULTS_FILE = REPO / "bench" / "results" / "fleet-scale.md"
RATE_GOAL = 100_000 / 3600
LAST_TENTH_GOAL = 0.8
BATCH = 1_000
LIST_ID = 11
ACCOUNT_ID = 1


@dataclass
class Sample:
    at: float
    done: int
    job_cpu: float
    postgres_cpu: float
    claim_ms: float


@dataclass
class Run:
    connections: int
    wall: float
    samples: list[Sample] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)
    started_db: float = 0.0
    transactions: int = 0
    sampler_transactions: int = 0
    requests: int = 0
    peak_rss: list[int] = field(default_factory=list)
    job_cpu: float = 0.0
    postgres_cpu: float = 0.0


def fill(database: Database, env: dict[str, str], standin: StandInProcess, count: int) -> None:
    """``count`` connections, their tokens issued by the stand-in and sealed by the store's own code."""
    import psycopg

    from job.auth.tokens import parse_token_file
    from job.stores.postgres import PostgresStore

    store = PostgresStore(env["AWEBER_STORE"], keys=[env["AWEBER_STORE_KEY"]], state_dir=Path(env["AWEBER_STATE_DIR"]))
    statement = ("INSERT INTO aweber_job.connections (name, tokens, encrypted, sealed_with, access_expires_at) "
                 "VALUES (%(name)s, %(tokens)s, %(encrypted)s, %(sealed_with)s, to_timestamp(%(expires_at)s::float8))")
    started = time.monotonic()
    try:
        with psycopg.connect(database.url) as db:
            for first in range(0, count, BATCH):
                grants = standin.control.issue_token_batch(CLIENT_ID, min(BATCH, count - first))
                rows = []
                for offset, grant in enumerate(grants):
                    name = f"c{first + offset:06d}"
                    document = {"access_token": grant["access_token"], "refresh_token": grant["refresh_token"],
                                "token_type": "bearer", "expires_in": 7200, "expires_at": time.time() + 7200}
                    tokens = parse_token_file(json.dumps(document).encode(), name)
                    rows.append({"name": name, **store.crypto.seal(name, tokens)})
                with db.cursor() as cursor:
                    cursor.executemany(statement, rows)
                db.commit()
                if (first // BATCH) % 10 == 9:
                    progress(f"filled {first + len(grants):,} of {count:,}")
            db.execute("ANALYZE aweber_job.connections")
            db.commit()
    finally:
        store.close()
    progress(f"{count:,} connections issued, sealed and stored in {time.monotonic() - started:.1f} s")


def due_query() -> str:
    """The SELECT of sql/claim_due.sql, without FOR UPDATE: what a claim reads, taking nothing."""
    text = (REPO / "job" / "stores" / "postgres" / "sql" / "claim_due.sql").read_text(encoding="utf-8")
    body = text[text.index("WITH due AS (") + len("WITH due AS ("):]
    return body[:body.index("FOR UPDATE SKIP LOCKED")]


class Sampler:
    """Every ``every`` seconds: connections done, the job's and PostgreSQL's CPU, one timed due query."""

    def __init__(self, database: Database, pids: list[int], since: float, every: float) -> None:
        import psycopg

        self._db = psycopg.connect(database.url, autocommit=True)
        self._pids = pids
        self._since = since
        self._every = every
        self.samples: list[Sample] = []
        self.transactions = 0
        self._stop = threading.Event()
        self._query = "EXPLAIN (ANALYZE, FORMAT JSON) " + due_query()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._db.close()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self._sample()

    def _sample(self) -> None:
        cpu = 0.0
        for pid in self._pids:
            try:
                cpu += process_cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                return  # a process ended: its CPU is no longer readable, the last sample stands
        ((done,),) = self._db.execute(
            "SELECT count(*) FROM aweber_job.connections WHERE last_run_at >= to_timestamp(%s)", (self._since,)
        ).fetchall()
        params = {"limit": 8, "interval": 86_400.0, "since": self._since, "dead": []}
        ((plan,),) = self._db.execute(self._query, params).fetchall()
        self.transactions += 2
        self.samples.append(Sample(time.monotonic(), int(done), cpu, postgres_cpu_seconds(),
                                   float(plan[0]["Execution Time"])))


def run_all(database: Database, env: dict[str, str], standin: StandInProcess, count: int, *, processes: int,
            concurrency: int, task: str, every: float, logs: Path) -> Run:
    ((since,),) = database.execute("SELECT extract(epoch FROM now())::float8")
    transactions_before = database.transactions()
    requests_before, tokens_before = standin.requests()
    postgres_before = postgres_cpu_seconds()
    command = [str(BIN / "aweber-job"), "run", "--all", "--concurrency", str(concurrency), "--task", task]
    started = time.monotonic()
    running = []
    for number in range(processes):
        with open(logs / f"run-all.{number}.stderr", "wb") as err:
            running.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                            stdin=subprocess.DEVNULL))
    sampler = Sampler(database, [process.pid for process in running], float(since), every)
    sampler.start()
    try:
        usages = [wait_with_usage(process, 4 * 3600) for process in running]
    finally:
        sampler.stop()
    wall = time.monotonic() - started
    failed = [code for code, _, _ in usages if code != 0]
    if failed:
        raise RuntimeError(f"run --all: exit codes {failed}; see {logs}")
    requests_after, tokens_after = standin.requests()
    rows = database.execute("SELECT extract(epoch FROM last_run_at)::float8 FROM aweber_job.connections "
                            "WHERE last_exit_code = 0 AND last_run_at >= to_timestamp(%s) ORDER BY 1", (since,))
    if len(rows) != count or tokens_after - tokens_before != count:
        raise RuntimeError(f"{len(rows)} of {count} connections recorded exit code 0 and the stand-in answered "
                           f"{tokens_after - tokens_before} refreshes (expected {count}); logs in {logs}")
    return Run(
        connections=count, wall=wall, samples=sampler.samples, finished_at=[float(row[0]) for row in rows],
        started_db=float(since), transactions=database.transactions() - transactions_before,
        sampler_transactions=sampler.transactions, requests=requests_after - requests_before,
        peak_rss=[rss for _, _, rss in usages], job_cpu=sum(cpu for _, cpu, _ in usages),
        postgres_cpu=postgres_cpu_seconds() - postgres_before,
    )


def tenth_rates(run: Run) -> list[float]:
    """Connections a second over each tenth of the run, by the times the database recorded."""
    times = [run.started_db, *run.finished_at]
    n = run.connections
    rates = []
    for k in range(10):
        first, last = k * n // 10, (k + 1) * n // 10
        seconds = times[last] - times[first]
        rates.append((last - first) / seconds if seconds > 0 else float("inf"))
    return rates


def at_done(samples: Sequence[Sample], done: float, pick: str) -> float:
    """A sample's value (job_cpu or postgres_cpu) interpolated where ``done`` connections were done."""
    for before, after in itertools.pairwise(samples):
        if before.done <= done <= after.done and after.done > before.done:
            share = (done - before.done) / (after.done - before.done)
            return float(getattr(before, pick) + share * (getattr(after, pick) - getattr(before, pick)))
    return float(getattr(samples[-1] if done >= samples[-1].done else samples[0], pick))


def tenth_cpu(run: Run, pick: str) -> list[float | None]:
    """CPU milliseconds per connection over each tenth (None where the samples do not reach)."""
    samples = [s for s in run.samples if s.done > 0 or s is run.samples[0]]
    values: list[float | None] = []
    for k in range(10):
        first, last = k * run.connections / 10, (k + 1) * run.connections / 10
        if not samples or samples[-1].done < last * 0.98:
            values.append(None)
            continue
        values.append(1000 * (at_done(samples, last, pick) - at_done(samples, first, pick)) / (last - first))
    return values


def render(run: Run, args: argparse.Namespace, command: str, fill_seconds: float) -> tuple[str, bool]:
    rates = tenth_rates(run)
    job = tenth_cpu(run, "job_cpu")
    pg = tenth_cpu(run, "postgres_cpu")
    rate = run.connections / run.wall
    ratio = rates[-1] / rates[0]
    claims = [s for s in run.samples if s.done < run.connections * 0.98]
    statements = (run.transactions - run.sampler_transactions) / run.connections

    def ms(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    lines = [
        f"# run --all at {run.connections:,} connections",
        "",
        f"`{command}` — {args.processes} process(es) × concurrency {args.concurrency}, `--task {args.task}`, "
        f"the stand-in at {args.latency * 1000:.0f} ms a request; the store filled in {fill_seconds:.0f} s.",
        "",
        "| connections | wall | per second | per hour | requests / connection | statements / connection "
        "| job CPU / connection | PostgreSQL CPU / connection | peak RSS per process |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {run.connections:,} | {run.wall:.0f} s | {rate:.1f} | {rate * 3600:,.0f} | "
        f"{run.requests / run.connections:.2f} | {statements:.2f} | {1000 * run.job_cpu / run.connections:.1f} ms | "
        f"{1000 * run.postgres_cpu / run.connections:.1f} ms | {max(run.peak_rss) / 2**20:.0f} MB |",
        "",
        "Each tenth of the run (connections ranked by when the database recorded their run):",
        "",
        "| tenth | " + " | ".join(str(k + 1) for k in range(10)) + " |",
        "|---|" + "---:|" * 10,
        "| connections / s | " + " | ".join(f"{value:.1f}" for value in rates) + " |",
        "| job CPU ms / connection | " + " | ".join(ms(value) for value in job) + " |",
        "| PostgreSQL CPU ms / connection | " + " | ".join(ms(value) for value in pg) + " |",
        "",
        f"Claim (the due query, EXPLAIN ANALYZE): {claims[0].claim_ms:.2f} ms at the start, "
        f"{claims[-1].claim_ms:.2f} ms at {100 * claims[-1].done / run.connections:.0f}% done "
        f"({len(run.samples)} samples)." if claims else "Claim: no sample before the end.",
        "",
    ]
    met = rate >= RATE_GOAL and ratio >= LAST_TENTH_GOAL
    lines.append(f"- {'Met' if rate >= RATE_GOAL else 'Not met'}: at least 100,000 connections an hour "
                 f"({rate * 3600:,.0f}).")
    lines.append(f"- {'Met' if ratio >= LAST_TENTH_GOAL else 'Not met'}: the last tenth at least 0.8 of the first "
                 f"({ratio:.2f}).")
    return "\n".join(lines) + "\n", met


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="run --all over a large store, measured by tenths.")
    parser.add_argument("--connections", type=int, default=100_000, help="how many (default 100,000)")
    parser.add_argument("--processes", type=int, default=1, help="run --all processes (default 1)")
    parser.add_argument("--concurrency", type=int, default=16, help="per process (default 16)")
    parser.add_argument("--task", default="noop", choices=("noop", "new-subscribers"), help="default noop")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request (default 0.05)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples (default 2)")
    parser.add_argument("--server", default=SERVER_URL, help=f"PostgreSQL server (default {SERVER_URL})")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help="where the markdown goes too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import shutil
    import tempfile

    args = parse_args(argv)
    if not (BIN / "aweber-job").exists():
        progress(f"no console script at {BIN / 'aweber-job'}: pip install -e '.[postgres]'")
        return 2
    from cryptography.fernet import Fernet

    root = Path(tempfile.mkdtemp(prefix="aweber-fleet-scale-"))
    standin = StandInProcess(root, args.latency)
    database: Database | None = None
    try:
        database = Database(args.server, prefix="aweber_fleet_scale_")
        env = job_env(root, standin, database, Fernet.generate_key().decode())
        init = subprocess.run([str(BIN / "aweber-job"), "store", "init"], env=env, capture_output=True, text=True,
                              check=False)
        if init.returncode != 0:
            raise RuntimeError(f"aweber-job store init failed: {init.stderr.strip()}")
        if args.task == "new-subscribers":
            # Every connection's account has one list with a few subscribers who joined in the last day. The
            # stand-in serves that one account to every connection, where in life each connection is a customer
            # account of its own: the pacing per account (AWEBER_RATE_LIMIT, 100 requests a minute) would make
            # the whole fleet share one account's budget, so it is lifted here.
            env["AWEBER_RATE_LIMIT"] = "1000000"
            standin.control.add_account(ACCOUNT_ID)
            now = time.time()
            standin.control.add_list(ACCOUNT_ID, LIST_ID, size=3, start=now - 86_400, end=now - 60, seed=7)
        started = time.monotonic()
        fill(database, env, standin, args.connections)
        fill_seconds = time.monotonic() - started
        logs = root / "logs"
        logs.mkdir()
        progress(f"run --all {args.processes}x{args.concurrency} --task {args.task} over {args.connections:,}")
        run = run_all(database, env, standin, args.connections, processes=args.processes,
                      concurrency=args.concurrency, task=args.task, every=args.every, logs=logs)
    except ImportError as exc:
        progress(f"missing: {exc}; pip install -e '.[postgres]'")
        return 2
    finally:
        standin.stop()
        if database is not None:
            database.drop()
        shutil.rmtree(root, ignore_errors=True)
    command = "python bench/fleet_scale.py" + "".join(f" {arg}" for arg in (argv or []))
    report, met = render(run, args, command, fill_seconds)
    print(report, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
