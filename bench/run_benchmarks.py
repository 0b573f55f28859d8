#!/usr/bin/env python
"""Benchmarks: aweber-job beside the usual requests-oauthlib script, against the stand-in on loopback.

One command runs everything and prints the results as markdown (the table in docs/benchmarks.md)::

    .venv/bin/python bench/run_benchmarks.py            # the full set: about 3 minutes on 2 cores
    .venv/bin/python bench/run_benchmarks.py --quick    # smaller lists: under a minute

The same markdown is written to ``bench/results/latest.md``; progress goes to stderr. Needs the
``bench`` extra (``pip install -e '.[bench]'``) for the baseline. Exit status 0 when every check
held, 1 when one did not (the results are written either way), 2 when something is missing.

What is measured:

* **requests and wall time** of one run over one list of N subscribers with k new (subscribed
  after ``--since``), each request delayed 20 ms by the stand-in as a stand-in for the network.
  Ours is the installed console script as a real process; its request count must equal the
  minimum ``1 refresh + 1 accounts + ceil(lists/100) list pages + Σ (1 + ceil((k−100)/99))`` find
  pages (100 on the first, 99 new on each later one, which begins with the last of the one before).
  The baseline (``bench/baseline_oauthlib.py``) walks every page of the list. Where
  walking the whole list with the delay would take minutes, the baseline runs with no delay and its
  wall time is *extrapolated* as measured + requests × 20 ms, and labelled so.
* **peak memory** (max RSS, from ``os.wait4`` in a lean launcher) of our run over 1,000,000 subscribers with many
  and with few new: at most 80 MB, and flat in the size of the work (within 10 %).
* **start-up**: ``aweber-job --help`` and ``aweber-job status`` against a bare ``python -c pass``
  (median of repeated runs, interleaved), target at most 1.5×; above it, where the time goes.
* **rate limit**: 600 API requests under 120 per window, the window scaled from 60 s to 1 s:
  our ``ApiClient`` paces itself and gets no 403; the baseline's way does not pace.

Old subscribers are at least three days older than ``--since`` and the new ones come after it,
so "new" means the same for both: the filter day our job asks for holds exactly the k new ones.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from job.standin import StandIn

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BASELINE_SCRIPT = REPO / "bench" / "baseline_oauthlib.py"
RESULTS_FILE = REPO / "bench" / "results" / "latest.md"

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret-4f9d2a"
ACCOUNT_ID = 1001
LIST_ID = 2001
DAY_SECONDS = 86_400
PAGE_SIZE = 100
LOOK_BACK = timedelta(hours=24)

NETWORK_DELAY_SECONDS = 0.02
MEMORY_LIMIT_BYTES = 80 * 1024 * 1024
MEMORY_FLATNESS = 0.10
STARTUP_TARGET_RATIO = 1.5
STDLIB_FLOOR_MODULES = "argparse, logging, json, hashlib, datetime, dataclasses, typing"
STDLIB_FLOOR = f"python -c 'import {STDLIB_FLOOR_MODULES}'"
# The speed runs pace at AWeber's own limit of 120 a minute, as a job alone on its account may (the
# default of 100 keeps room for other integrations, and would add a minute's wait to the 102 requests
# of the 10,000-new rows). The memory runs are not paced: a thousand pages would take eight minutes
# of waiting; the stand-in sets no limit there.
AWEBER_RATE_LIMIT_PER_MINUTE = 120
UNPACED_RATE_LIMIT = 1_000_000

RATE_LIMIT_PER_WINDOW = 120
RATE_LIMIT_WINDOW_SECONDS = 1.0
RATE_LIMIT_REQUESTS = 600

OURS_TIMEOUT_SECONDS = 300.0
BASELINE_TIMEOUT_SECONDS = 600.0


def find_pages(k: int) -> int:
    """Find pages for ``k`` subscribers: 100 on the first, 99 new on each later one (each begins with the last
    entry of the page before, so a list that shifted under the walk is noticed)."""
    return 1 + max(0, math.ceil((k - PAGE_SIZE) / (PAGE_SIZE - 1)))


def minimum_requests(new_per_list: Sequence[int]) -> int:
    """The fewest requests a run can make: refresh, accounts, list pages, and find pages per list."""
    lists = len(new_per_list)
    return 1 + 1 + max(1, math.ceil(lists / PAGE_SIZE)) + sum(find_pages(k) for k in new_per_list)


def walk_requests(list_sizes: Sequence[int]) -> int:
    """The requests of the baseline's walk: refresh, accounts, list pages, and every page of every list."""
    lists = len(list_sizes)
    return 1 + 1 + max(1, math.ceil(lists / PAGE_SIZE)) + sum(max(1, math.ceil(n / PAGE_SIZE)) for n in list_sizes)


@dataclass(frozen=True)
class Scenario:
    """One list of ``list_size`` subscribers, ``new`` of them subscribed after the look-back instant."""

    list_size: int
    new: int

    @property
    def expected_ours(self) -> int:
        return minimum_requests([self.new])

    @property
    def expected_baseline(self) -> int:
        return walk_requests([self.list_size])


@dataclass
class Served:
    """A running stand-in set up for a scenario, and the ``--since`` both sides are given."""

    standin: StandIn
    scenario: Scenario
    since: str


@contextlib.contextmanager
def serving(
    scenario: Scenario,
    *,
    delay_seconds: float,
    rate_limit_per_window: int | None = None,
    window_seconds: float = 60.0,
) -> Iterator[Served]:
    """Start a stand-in holding the scenario's list and stop it afterwards.

    The old subscribers span 400 days up to three days before ``--since`` (24 hours ago); the new
    ones are spread between a minute after ``--since`` and a minute ago.
    """
    if scenario.new > scenario.list_size:
        raise ValueError("a list cannot have more new subscribers than subscribers")
    now = time.time()
    since = now - LOOK_BACK.total_seconds()
    standin = StandIn(
        {CLIENT_ID: CLIENT_SECRET},
        request_delay_seconds=delay_seconds,
        rate_limit_per_minute=rate_limit_per_window,
        rate_limit_window_seconds=window_seconds,
    )
    standin.start()
    try:
        yield _populated(standin, scenario, now, since)
    finally:
        standin.stop()


def _populated(standin: StandIn, scenario: Scenario, now: float, since: float) -> Served:
    standin.add_account(ACCOUNT_ID, company="Benchmark Company")
    standin.add_list(
        ACCOUNT_ID, LIST_ID, "Newsletter", size=scenario.list_size - scenario.new,
        start=now - 400 * DAY_SECONDS, end=since - 3 * DAY_SECONDS, seed=7,
    )
    _add_new_subscribers(standin, scenario.new, first=since + 60, last=now - 60)
    return Served(standin, scenario, datetime.fromtimestamp(since, timezone.utc).isoformat())


def _add_new_subscribers(standin: StandIn, count: int, *, first: float, last: float) -> None:
    step = (last - first) / max(count - 1, 1)
    batch = 10_000
    for offset in range(0, count, batch):
        entries = [
            {"email": f"new{i}@example.com", "name": f"New Subscriber {i}", "subscribed_at": round(first + i * step, 3)}
            for i in range(offset, min(offset + batch, count))
        ]
        standin.add_subscribers(ACCOUNT_ID, LIST_ID, entries)


# ---- running a measured child process --------------------------------------------------------------


@dataclass
class Measured:
    """One process run: wall time, exit code, peak RSS, stderr, and what the stand-in counted."""

    wall_seconds: float
    exit_code: int
    max_rss_bytes: int
    stderr: str
    timed_out: bool = False
    requests: int = 0
    api_requests: int = 0
    rate_limited: int = 0
    rows: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)


# A lean launcher forks and execs the measured command and reaps it with wait4. The kernel keeps in
# ru_maxrss the peak of the memory image a process had before exec, and subprocess forks (or vforks)
# from this process, which holds the stand-in and its lists: measured directly, every child would
# "peak" at this process's size. The launcher's own image is a bare interpreter, far below any child's.
_LAUNCHER = """
import json, os, sys, time
report, *argv = sys.argv[1:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(report, "w") as handle:
    figures = {"exit_code": os.waitstatus_to_exitcode(status), "max_rss_kb": usage.ru_maxrss, "seconds": seconds}
    json.dump(figures, handle)
"""


def spawn(argv: Sequence[str], *, env: dict[str, str], cwd: Path, timeout_seconds: float) -> Measured:
    """Run ``argv`` through the launcher: its wall time, exit code and own peak RSS; killed after the timeout.

    ``argv[0]`` must be a path to an executable.
    """
    with tempfile.TemporaryDirectory(prefix="spawn-") as scratch:
        report = Path(scratch) / "report.json"
        errors_path = Path(scratch) / "stderr"
        with open(errors_path, "wb") as errors:
            process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, str(report), *argv],
                env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                # Its own process group, so a timeout ends the launcher and the command together.
                start_new_session=True,
            )
            timed_out = False
            try:
                process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        text = errors_path.read_text(encoding="utf-8", errors="replace")
        try:
            figures = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            figures = {"exit_code": process.returncode, "max_rss_kb": 0, "seconds": float(timeout_seconds)}
    # Linux reports ru_maxrss in kilobytes.
    return Measured(float(figures["seconds"]), int(figures["exit_code"]), int(figures["max_rss_kb"]) * 1024,
                    text, timed_out)


def ours_command() -> list[str]:
    """The installed console script, or ``python -m job`` where it is not installed."""
    script = BIN / "aweber-job"
    return [str(script)] if script.exists() else [sys.executable, "-m", "job"]


def _base_env(home: Path) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    return env


def _count_requests(measured: Measured, standin: StandIn) -> None:
    stats: dict[str, Any] = standin.stats()
    measured.stats = stats
    measured.requests = int(stats["requests_total"])
    measured.api_requests = sum(stats["api"].values())
    measured.rate_limited = int(stats["rate_limited"])


def _count_lines(path: Path) -> int | None:
    try:
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def write_job_tokens(served: Served, path: Path) -> None:
    """A valid flat token file for our job (it refreshes on start whatever the expiry says)."""
    grant = served.standin.issue_tokens(CLIENT_ID)
    document = {
        "access_token": grant["access_token"],
        "refresh_token": grant["refresh_token"],
        "token_type": "bearer",
        "expires_in": 7200,
        "expires_at": time.time() + 7200,
    }
    _write_private(path, document)


def _write_private(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(document, indent=2) + "\n")


def job_env(served: Served, home: Path, *, rate_limit: int | None = None) -> dict[str, str]:
    """The environment our job runs with against the stand-in (no .env file is read)."""
    standin = served.standin
    env = _base_env(home)
    env.update({
        "AWEBER_CLIENT_ID": CLIENT_ID,
        "AWEBER_CLIENT_SECRET": CLIENT_SECRET,
        "AWEBER_TOKEN_FILE": str(home / "state" / "tokens.json"),
        "AWEBER_TOKEN_URL": standin.token_url,
        "AWEBER_AUTHORIZE_URL": standin.authorize_url,
        "AWEBER_REVOKE_URL": standin.revoke_url,
        "AWEBER_API_URL": standin.api_url,
    })
    if rate_limit is not None:
        env["AWEBER_RATE_LIMIT"] = str(rate_limit)
    return env


def run_ours(served: Served, home: Path, *, output: str | None = None, rate_limit: int | None = None) -> Measured:
    """Run ``aweber-job --quiet run --since ... --output ...`` as a real process; count its requests and rows."""
    home.mkdir(parents=True, exist_ok=True)
    env = job_env(served, home, rate_limit=rate_limit)
    write_job_tokens(served, Path(env["AWEBER_TOKEN_FILE"]))
    output_path = output or str(home / "new-subscribers.jsonl")
    argv = [*ours_command(), "--quiet", "run", "--since", served.since, "--output", output_path]
    served.standin.reset_stats()
    measured = spawn(argv, env=env, cwd=home, timeout_seconds=OURS_TIMEOUT_SECONDS)
    _count_requests(measured, served.standin)
    measured.rows = None if output is not None else _count_lines(Path(output_path))
    return measured


def run_baseline(
    served: Served, home: Path, *, retry_scale: float | None = None, timeout_seconds: float = BASELINE_TIMEOUT_SECONDS
) -> Measured:
    """Run the baseline script as its own process, its token marked expired so it refreshes once at start."""
    home.mkdir(parents=True, exist_ok=True)
    grant = served.standin.issue_tokens(CLIENT_ID)
    credentials = home / "credentials.json"
    _write_private(credentials, {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "token": {
            "access_token": grant["access_token"],
            "refresh_token": grant["refresh_token"],
            "token_type": "bearer",
            "expires_in": 7200,
            "expires_at": time.time() - 60,
        },
    })
    output_path = home / "baseline.jsonl"
    env = _base_env(home)
    # requests-oauthlib refuses plain http without it; the stand-in is on loopback.
    env["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
    argv = [
        sys.executable, str(BASELINE_SCRIPT), "--credentials", str(credentials),
        "--token-url", served.standin.token_url, "--api-url", served.standin.api_url,
        "--since", served.since, "--output", str(output_path),
    ]
    if retry_scale is not None:
        argv += ["--rate-limit-retry", repr(retry_scale)]
    served.standin.reset_stats()
    measured = spawn(argv, env=env, cwd=home, timeout_seconds=timeout_seconds)
    _count_requests(measured, served.standin)
    measured.rows = _count_lines(output_path)
    return measured


# ---- 1. requests and wall time ---------------------------------------------------------------------


@dataclass
class SpeedResult:
    """One scenario: our run, the baseline's, and how the baseline's time was obtained."""

    scenario: Scenario
    ours: Measured
    baseline: Measured | None
    baseline_mode: str  # "measured" or "extrapolated"

    @property
    def ours_matches(self) -> bool:
        return self.ours.exit_code == 0 and self.ours.requests == self.scenario.expected_ours

    @property
    def baseline_seconds(self) -> float | None:
        if self.baseline is None:
            return None
        if self.baseline_mode == "extrapolated":
            return self.baseline.wall_seconds + self.baseline.requests * NETWORK_DELAY_SECONDS
        return self.baseline.wall_seconds


def measure_speed(scenario: Scenario, workdir: Path, *, baseline_mode: str | None) -> SpeedResult:
    """Our run and the baseline's over the same stand-in with the network delay (baseline: maybe without)."""
    with serving(scenario, delay_seconds=NETWORK_DELAY_SECONDS) as served:
        ours = run_ours(served, workdir / "ours", rate_limit=AWEBER_RATE_LIMIT_PER_MINUTE)
        baseline = None
        if baseline_mode is not None:
            if baseline_mode == "extrapolated":
                served.standin.request_delay_seconds = 0.0
            baseline = run_baseline(served, workdir / "baseline")
    return SpeedResult(scenario, ours, baseline, baseline_mode or "skipped")


# ---- 2. peak memory ------------------------------------------------------------------------------


def measure_memory(scenario: Scenario, workdir: Path) -> Measured:
    """Our run over the scenario with output to /dev/null and no delay, for its peak RSS."""
    with serving(scenario, delay_seconds=0.0) as served:
        return run_ours(served, workdir, output=os.devnull, rate_limit=UNPACED_RATE_LIMIT)


# ---- 3. start-up ---------------------------------------------------------------------------------


@dataclass
class StartupResult:
    """Median wall times of the three commands and, above target, where the imports go."""

    runs: int
    medians: dict[str, float]
    import_costs: list[tuple[str, float]] = field(default_factory=list)

    def ratio(self, name: str) -> float:
        return self.medians[name] / self.medians["python -c pass"]


def measure_startup(workdir: Path, runs: int) -> StartupResult:
    """Run each command ``runs`` times, interleaved, and keep the medians."""
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "tokens.json"
    _write_private(token_file, {
        "access_token": "startup-access", "refresh_token": "startup-refresh",
        "token_type": "bearer", "expires_in": 7200, "expires_at": time.time() + 7200,
    })
    env = _base_env(workdir)
    env["AWEBER_TOKEN_FILE"] = str(token_file)
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "aweber-job --help": [*ours_command(), "--help"],
        "aweber-job status": [*ours_command(), "status"],
        # For scale: only the standard-library modules that status itself needs, and nothing else.
        STDLIB_FLOOR: [sys.executable, "-c", "import " + STDLIB_FLOOR_MODULES],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():  # warm the page cache once
        subprocess.run(argv, env=env, cwd=workdir, capture_output=True, check=False, timeout=60)
    for _ in range(runs):
        for name, argv in commands.items():
            started = time.perf_counter()
            done = subprocess.run(argv, env=env, cwd=workdir, capture_output=True, check=False, timeout=60)
            times[name].append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"{name} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    result = StartupResult(runs, {name: statistics.median(values) for name, values in times.items()})
    if max(result.ratio("aweber-job --help"), result.ratio("aweber-job status")) > STARTUP_TARGET_RATIO:
        result.import_costs = import_costs(env, workdir)
    return result


_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def _imports(argv: Sequence[str], env: dict[str, str], cwd: Path) -> list[tuple[int, str, float]]:
    """``-X importtime`` of a command: (nesting level, module, cumulative ms) in printed order; fastest of three."""
    runs: list[list[tuple[int, str, float]]] = []
    for _ in range(3):
        done = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, cwd=cwd,
                              capture_output=True, text=True, check=False, timeout=60)
        entries = []
        for line in done.stderr.splitlines():
            match = _IMPORT_LINE.match(line)
            if match:
                entries.append((len(match.group(3)) // 2, match.group(4), int(match.group(2)) / 1000))
        runs.append(entries)
    return min(runs, key=lambda entries: sum(ms for level, _, ms in entries if level == 0))


@dataclass
class _ImportNode:
    name: str
    ms: float
    children: list[_ImportNode]


def import_costs(env: dict[str, str], cwd: Path, *, depth: int = 3, minimum_ms: float = 0.5) -> list[tuple[str, float]]:
    """What ``status`` imports beyond a bare start-up, as an indented tree of the modules costing ``minimum_ms``+."""
    bare = {name for _, name, _ in _imports(["-c", "pass"], env, cwd)}
    # -X importtime prints a module after everything it imports: rebuild the tree from that order.
    pending: dict[int, list[_ImportNode]] = {}
    for level, name, ms in _imports(["-m", "job", "status"], env, cwd):
        node = _ImportNode(name, ms, pending.pop(level + 1, []))
        pending.setdefault(level, []).append(node)
    rows: list[tuple[str, float]] = []

    def emit(node: _ImportNode, level: int) -> None:
        if node.ms < minimum_ms or level >= depth:
            return
        rows.append(("  " * level + node.name, node.ms))
        for child in node.children:
            emit(child, level + 1)

    for root in pending.get(0, []):
        if root.name not in bare:
            emit(root, 0)
    return rows


# ---- 4. rate limit ---------------------------------------------------------------------------------


@dataclass
class RateLimitRun:
    """One walk of 600 API requests under the scaled limit."""

    label: str
    api_requests: int
    rate_limited: int
    finished: bool
    seconds: float


def _rate_limit_scenario() -> Scenario:
    # accounts (1) + lists (1) + subscriber pages: 600 API requests in all.
    return Scenario((RATE_LIMIT_REQUESTS - 2) * PAGE_SIZE, 0)


def measure_rate_limit_ours(workdir: Path) -> RateLimitRun:
    """Our ApiClient, built as the runner builds it but with the window scaled to 1 s, walking 600 pages."""
    from job.api.client import ApiClient
    from job.cli import make_session
    from job.config import load_settings
    from job.run.keeper import TokenKeeper

    with serving(_rate_limit_scenario(), delay_seconds=0.0, rate_limit_per_window=RATE_LIMIT_PER_WINDOW,
                 window_seconds=RATE_LIMIT_WINDOW_SECONDS) as served:
        workdir.mkdir(parents=True, exist_ok=True)
        env = job_env(served, workdir, rate_limit=RATE_LIMIT_PER_WINDOW)
        write_job_tokens(served, Path(env["AWEBER_TOKEN_FILE"]))
        settings = load_settings(env)
        session = make_session()
        with session, TokenKeeper(settings, session) as keeper:
            keeper.refresh("refresh on start")
            api = ApiClient.from_settings(session, settings, keeper, window_seconds=RATE_LIMIT_WINDOW_SECONDS)
            served.standin.reset_stats()
            started = time.perf_counter()
            for account in api.walk("accounts"):
                for listed in api.walk(account["lists_collection_link"]):
                    for _ in api.walk(listed["subscribers_collection_link"]):
                        pass
            elapsed = time.perf_counter() - started
        stats: dict[str, Any] = served.standin.stats()
        return RateLimitRun("ours: `ApiClient` pacing", api.requests_made, int(stats["rate_limited"]), True, elapsed)


def measure_rate_limit_baseline(workdir: Path, *, with_retry: bool) -> RateLimitRun:
    """The baseline's walk of the same 600 pages under the same limit: without, then with AWeber's retry helper."""
    with serving(_rate_limit_scenario(), delay_seconds=0.0, rate_limit_per_window=RATE_LIMIT_PER_WINDOW,
                 window_seconds=RATE_LIMIT_WINDOW_SECONDS) as served:
        scale = RATE_LIMIT_WINDOW_SECONDS / 60.0 if with_retry else None
        measured = run_baseline(served, workdir, retry_scale=scale, timeout_seconds=120.0)
    summary = _last_json_line(measured.stderr)
    label = ("baseline + AWeber's `get_with_retry` (2^i s, scaled)" if with_retry
             else "baseline: `get_collection` + `raise_for_status`")
    seconds = float(summary.get("seconds", measured.wall_seconds))
    return RateLimitRun(label, measured.api_requests, measured.rate_limited, measured.exit_code == 0, seconds)


def _last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {}


# ---- the report ------------------------------------------------------------------------------------


def _mb(value: int) -> str:
    return f"{value / (1024 * 1024):,.1f} MB"


def _ratio(theirs: float, ours: float) -> str:
    value = theirs / ours if ours else math.inf
    return f"{value:,.0f}×" if value >= 10 else f"{value:.1f}×"


def _count(value: int) -> str:
    return f"{value:,}"


@dataclass
class Report:
    """Everything measured, and the checks that failed."""

    quick: bool
    speed: list[SpeedResult] = field(default_factory=list)
    memory: list[tuple[Scenario, Measured]] = field(default_factory=list)
    startup: StartupResult | None = None
    rate_limit: list[RateLimitRun] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self) -> str:
        lines: list[str] = []
        lines += [
            "```sh",
            ".venv/bin/pip install -q -e '.[bench]'    # requests-oauthlib, for the baseline",
            ".venv/bin/python bench/run_benchmarks.py    # about 3 minutes; --quick: smaller lists, under a minute",
            "```",
            "",
            f"Measured {datetime.now(timezone.utc).strftime('%Y-%m-%d')} on {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, against the stand-in on loopback "
            f"({self.seconds:.0f} s for the whole run{' with --quick' if self.quick else ''}). "
            "Baseline: `bench/baseline_oauthlib.py`, AWeber's own Python example approach (requests-oauthlib "
            "`OAuth2Session` with auto-refresh, `get_collection` over every subscriber, filtered on the client).",
            "",
        ]
        lines += self._speed_lines()
        lines += self._memory_lines()
        lines += self._startup_lines()
        lines += self._rate_limit_lines()
        if self.failures:
            lines += ["", "**Checks that failed:**", ""] + [f"- {failure}" for failure in self.failures]
        return "\n".join(lines) + "\n"

    def _speed_lines(self) -> list[str]:
        lines = [
            f"**One run, one list, {NETWORK_DELAY_SECONDS * 1000:.0f} ms per request** (requests counted by the "
            "stand-in; ours must equal the minimum 1 refresh + 1 accounts + 1 list page + 1 + ⌈(new−100)/99⌉ finds):",
            "",
            "| subscribers | new | requests: ours (minimum) | requests: baseline | ratio "
            "| wall time: ours | wall time: baseline | ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        extrapolated = False
        for result in self.speed:
            scenario, ours, baseline = result.scenario, result.ours, result.baseline
            match = "✓" if result.ours_matches else "✗"
            ours_requests = f"{_count(ours.requests)} ({_count(scenario.expected_ours)} {match})"
            if baseline is None or result.baseline_seconds is None:
                base_requests = f"{_count(scenario.expected_baseline)} (computed)"
                base_time = "not run"
                ratio_requests = _ratio(scenario.expected_baseline, ours.requests)
                ratio_time = "—"
            else:
                base_requests = _count(baseline.requests)
                seconds = result.baseline_seconds
                mark = "*" if result.baseline_mode == "extrapolated" else ""
                extrapolated = extrapolated or bool(mark)
                base_time = f"{seconds:,.1f} s{mark}" if not baseline.timed_out else "timed out"
                ratio_requests = _ratio(baseline.requests, ours.requests)
                ratio_time = _ratio(seconds, ours.wall_seconds)
            lines.append(
                f"| {_count(scenario.list_size)} | {_count(scenario.new)} | {ours_requests} | {base_requests} "
                f"| {ratio_requests} | {ours.wall_seconds:.2f} s | {base_time} | {ratio_time} |"
            )
        lines.append("")
        if extrapolated:
            lines.append(
                "\\* extrapolated: the baseline walked that list with no delay, and its wall time is the measured "
                f"time + requests × {NETWORK_DELAY_SECONDS * 1000:.0f} ms "
                "(walking it with the delay would take minutes)."
            )
        biggest = max(self.speed, key=lambda r: (r.scenario.list_size, r.scenario.new), default=None)
        if biggest is not None:
            base_api = biggest.scenario.expected_baseline - 1
            ours_api = biggest.scenario.expected_ours - 1
            lines.append(
                f"Wall times are whole processes, start-up included. At AWeber's real limit of 120 requests a minute, "
                f"the baseline's {_count(base_api)} API requests for the {_count(biggest.scenario.list_size)} list "
                f"cannot take less than {base_api / 120:,.0f} minutes; ours are {_count(ours_api)}."
            )
        lines.append("")
        return lines

    def _memory_lines(self) -> list[str]:
        if not self.memory:
            return []
        lines = [
            "**Peak memory (max RSS) of our run** over one list, output to /dev/null (target: at most "
            f"{MEMORY_LIMIT_BYTES // (1024 * 1024)} MB, and within {MEMORY_FLATNESS:.0%} of the run with few new):",
            "",
            "| subscribers | new | find requests | peak RSS |",
            "|---:|---:|---:|---:|",
        ]
        for scenario, measured in self.memory:
            lines.append(
                f"| {_count(scenario.list_size)} | {_count(scenario.new)} | {_count(measured.requests - 3)} "
                f"| {_mb(measured.max_rss_bytes)} |"
            )
        if len(self.memory) == 2:
            big, small = self.memory[0][1].max_rss_bytes, self.memory[1][1].max_rss_bytes
            lines += ["", f"Difference: {(big - small) / small:+.1%}."]
        walked = [r for r in self.speed if r.baseline is not None and r.scenario.list_size >= 100_000]
        if walked:
            largest = max(walked, key=lambda r: r.scenario.list_size)
            assert largest.baseline is not None
            lines.append(
                f"For comparison, the baseline's walk of the {_count(largest.scenario.list_size)} list peaked at "
                f"{_mb(largest.baseline.max_rss_bytes)} (AWeber's `get_collection` keeps every entry)."
            )
        lines.append("")
        return lines

    def _startup_lines(self) -> list[str]:
        if self.startup is None:
            return []
        startup = self.startup
        lines = [
            f"**Start-up** (median of {startup.runs} runs each, interleaved; target at most "
            f"{STARTUP_TARGET_RATIO}× a bare `python -c pass`):",
            "",
            "| command | median | ratio |",
            "|---|---:|---:|",
        ]
        for name, seconds in startup.medians.items():
            lines.append(f"| `{name}` | {seconds * 1000:.1f} ms | {startup.ratio(name):.2f}× |")
        if STDLIB_FLOOR in startup.medians:
            lines += ["", "The last row imports only the standard-library modules `status` itself uses, "
                      f"none of the job: {startup.ratio(STDLIB_FLOOR):.2f}× before any work is done."]
        if startup.import_costs:
            lines += ["", "What `status` imports beyond a bare start-up (cumulative ms, `-X importtime`, "
                      "best of three; indented: the costliest modules each one pulls in):", "", "```"]
            lines += [f"{ms:7.1f}  {name}" for name, ms in startup.import_costs]
            lines.append("```")
        lines.append("")
        return lines

    def _rate_limit_lines(self) -> list[str]:
        if not self.rate_limit:
            return []
        ideal = RATE_LIMIT_REQUESTS / RATE_LIMIT_PER_WINDOW * RATE_LIMIT_WINDOW_SECONDS
        floor = ideal - RATE_LIMIT_WINDOW_SECONDS
        lines = [
            f"**Rate limit:** {RATE_LIMIT_REQUESTS} API requests under {RATE_LIMIT_PER_WINDOW} per rolling window, "
            f"the window scaled from 60 s to {RATE_LIMIT_WINDOW_SECONDS:g} s (so 5 minutes become {ideal:g} s; "
            f"the first {RATE_LIMIT_PER_WINDOW} go at once, so {floor:g} s is the floor):",
            "",
            f"| client | API requests | 403 Rate Limit answers | finished | elapsed | elapsed ÷ {ideal:g} s |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for run in self.rate_limit:
            finished = "yes" if run.finished else f"no: stopped by the first 403, after {run.seconds:.2f} s"
            elapsed = f"{run.seconds:.2f} s" if run.finished else "—"
            share = f"{run.seconds / ideal:.2f}" if run.finished else "—"
            lines.append(
                f"| {run.label} | {_count(run.api_requests)} | {run.rate_limited} | {finished} | {elapsed} | {share} |"
            )
        lines.append("")
        return lines


def check(report: Report) -> None:
    """Record every target that was missed."""
    for result in report.speed:
        scenario = result.scenario
        where = f"{_count(scenario.list_size)} subscribers, {_count(scenario.new)} new"
        if not result.ours_matches:
            report.failures.append(
                f"{where}: ours made {result.ours.requests} requests (exit {result.ours.exit_code}), "
                f"the minimum is {scenario.expected_ours}"
            )
        if result.ours.rows is not None and result.ours.rows != scenario.new:
            report.failures.append(f"{where}: ours reported {result.ours.rows} rows, not {scenario.new}")
        if result.baseline is not None and result.baseline.rows != scenario.new:
            report.failures.append(f"{where}: the baseline reported {result.baseline.rows} rows, not {scenario.new}")
    for scenario, measured in report.memory:
        where = f"memory, {_count(scenario.list_size)} subscribers, {_count(scenario.new)} new"
        if measured.exit_code != 0 or measured.requests != scenario.expected_ours:
            report.failures.append(f"{where}: exit {measured.exit_code}, {measured.requests} requests "
                                   f"(minimum {scenario.expected_ours})")
        if measured.max_rss_bytes > MEMORY_LIMIT_BYTES:
            report.failures.append(f"{where}: peak RSS {_mb(measured.max_rss_bytes)} is over the limit")
    if len(report.memory) == 2:
        big, small = report.memory[0][1].max_rss_bytes, report.memory[1][1].max_rss_bytes
        if big > small * (1 + MEMORY_FLATNESS):
            report.failures.append(f"memory grows with the work: {_mb(big)} against {_mb(small)}")
    if report.startup is not None:
        for name in ("aweber-job --help", "aweber-job status"):
            if report.startup.ratio(name) > STARTUP_TARGET_RATIO:
                report.failures.append(
                    f"start-up: `{name}` is {report.startup.ratio(name):.2f}× a bare start-up (importing only the "
                    f"standard-library modules status needs is {report.startup.ratio(STDLIB_FLOOR):.2f}×)"
                )
    for run in report.rate_limit[:1]:
        if run.rate_limited or run.api_requests != RATE_LIMIT_REQUESTS:
            report.failures.append(f"rate limit: ours got {run.rate_limited} 403s in {run.api_requests} requests")


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def speed_plan(quick: bool) -> list[tuple[Scenario, str]]:
    """(scenario, baseline mode) for each speed case; more new than the list holds is left out."""
    sizes = (1_000, 100_000) if quick else (1_000, 100_000, 1_000_000)
    # Walking a whole list of this size or more with the delay would take minutes: extrapolate.
    extrapolate_from = 100_000 if quick else 1_000_000
    plan = []
    for size in sizes:
        for new in (0, 100, 10_000):
            if new <= size:
                plan.append((Scenario(size, new), "extrapolated" if size >= extrapolate_from else "measured"))
    return plan


def run_all(quick: bool, workdir: Path) -> Report:
    """Run every benchmark and return the report with its checks."""
    report = Report(quick)
    started = time.perf_counter()
    for number, (scenario, mode) in enumerate(speed_plan(quick)):
        _progress(f"speed: {_count(scenario.list_size)} subscribers, {_count(scenario.new)} new")
        result = measure_speed(scenario, workdir / f"speed-{number}", baseline_mode=mode)
        report.speed.append(result)
        base = result.baseline
        _progress(f"  ours {result.ours.requests} requests {result.ours.wall_seconds:.2f} s; baseline "
                  f"{base.requests if base else '-'} requests {result.baseline_seconds or 0:.1f} s ({mode})")
    many = 10_000 if quick else 100_000
    for new in (many, 1_000):
        scenario = Scenario(1_000_000, new)
        _progress(f"memory: {_count(scenario.list_size)} subscribers, {_count(new)} new")
        measured = measure_memory(scenario, workdir / f"memory-{new}")
        report.memory.append((scenario, measured))
        _progress(f"  peak RSS {_mb(measured.max_rss_bytes)}, {measured.requests} requests, "
                  f"{measured.wall_seconds:.1f} s")
    _progress("start-up")
    report.startup = measure_startup(workdir / "startup", runs=7 if quick else 21)
    _progress("rate limit")
    report.rate_limit.append(measure_rate_limit_ours(workdir / "rate-ours"))
    report.rate_limit.append(measure_rate_limit_baseline(workdir / "rate-plain", with_retry=False))
    report.rate_limit.append(measure_rate_limit_baseline(workdir / "rate-retry", with_retry=True))
    report.seconds = time.perf_counter() - started
    check(report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print the markdown, write it to bench/results/latest.md; return the exit status."""
    parser = argparse.ArgumentParser(description="Benchmarks: aweber-job beside the usual requests-oauthlib script.")
    parser.add_argument("--quick", action="store_true", help="smaller lists and fewer repetitions (under 2 minutes)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("requests_oauthlib") is None:
        print("the baseline needs requests-oauthlib: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="aweber-bench-") as scratch:
        report = run_all(args.quick, Path(scratch))
    text = report.markdown()
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(text, encoding="utf-8")
    print(text, end="")
    _progress(f"written to {RESULTS_FILE.relative_to(REPO)}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
