"""What every survival scenario stands on: a stand-in AWeber in its own process, a job's files, real
``aweber-job`` processes, a ping receiver, the secrets every scenario saw, and the tally of outcomes.

The tally and the secrets are process-wide on purpose: the pytest session (and ``bench/survive.py``,
which runs it) reads them back at the end to print one table and to scan everything for secrets.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from job.standin import StandInControl
from tests.survival.oracle import refresh_token_in, refresh_token_or_none

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID = "cid-survival"
CLIENT_SECRET = "survival-client-secret-5d1e8a"
ACCOUNT_ID = 1
LIST_ID = 11
TASK_STATE_NAME = "new-subscribers.state.json"

# Longer soak runs: `bench/survive.py --soak` sets SURVIVAL_SOAK=1; the seed can be moved too.
SOAK = os.environ.get("SURVIVAL_SOAK") == "1"
SEED = int(os.environ.get("SURVIVAL_SEED", "20261128"))


def scaled(ci: int, soak: int) -> int:
    """``ci`` in the CI suite, ``soak`` in soak mode."""
    return soak if SOAK else ci


# -- the tally -------------------------------------------------------------------------------------

OUTCOMES = ("survived", "lost_answer", "failed")


@dataclass
class Row:
    """One scenario's counts: attempts, how each ended, and free-form detail counters."""

    tried: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    details: Counter[str] = field(default_factory=Counter)


class Tally:
    """Counts of what was tried and how it ended, per scenario, in the order scenarios first appear."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self._lock = threading.Lock()

    def row(self, scenario: str) -> Row:
        with self._lock:
            return self.rows.setdefault(scenario, Row())

    def record(self, scenario: str, outcome: str) -> None:
        """Count one attempt of ``scenario`` that ended as ``outcome`` (one of OUTCOMES)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        row = self.row(scenario)
        with self._lock:
            row.tried += 1
            row.outcomes[outcome] += 1

    def note(self, scenario: str, detail: str, count: int = 1) -> None:
        """Add to a detail counter of ``scenario`` (where kills landed, exit codes seen...)."""
        row = self.row(scenario)
        with self._lock:
            row.details[detail] += count

    @contextmanager
    def attempt(self, scenario: str) -> Iterator[Attempt]:
        """Count one attempt: a failure when the body raises, else what the body marked (default survived)."""
        attempt = Attempt()
        try:
            yield attempt
        except BaseException:
            self.record(scenario, "failed")
            raise
        self.record(scenario, attempt.outcome)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                name: {"tried": row.tried, **{o: row.outcomes[o] for o in OUTCOMES}, "details": dict(row.details)}
                for name, row in self.rows.items()
            }


@dataclass
class Attempt:
    """How the attempt in progress ended; a lost answer must be marked explicitly."""

    outcome: str = "survived"

    def mark_lost_answer(self) -> None:
        self.outcome = "lost_answer"


TALLY = Tally()


# -- secrets ---------------------------------------------------------------------------------------


class Secrets:
    """Every secret value the suite handed out or read back, and where the job's output went."""

    def __init__(self) -> None:
        self.values: set[str] = {CLIENT_SECRET}
        self.scan_roots: set[Path] = set()
        self.outputs: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def add(self, *values: object) -> None:
        with self._lock:
            for value in values:
                if isinstance(value, str) and len(value) >= 6:
                    self.values.add(value)

    def add_grant(self, grant: Mapping[str, object]) -> None:
        self.add(grant.get("access_token"), grant.get("refresh_token"))

    def add_token_file(self, path: Path) -> None:
        """Remember the tokens in a token or rescue file (whatever shape), if it parses."""
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return
        if isinstance(document, dict):
            token = document.get("token", document)
            if isinstance(token, dict):
                self.add(token.get("access_token"), token.get("refresh_token"))
            self.add(document.get("client_secret"))

    def add_output(self, where: str, text: str) -> None:
        with self._lock:
            self.outputs.append((where, text))

    def add_root(self, path: Path) -> None:
        with self._lock:
            self.scan_roots.add(path)


SECRETS = Secrets()


def is_token_store_file(path: Path) -> bool:
    """The token file, its temporaries (a killed save's half-written file) and rescue files may hold tokens."""
    name = path.name
    return name == "tokens.json" or ".tokens.json.tmp-" in name or ".rescue-" in name


def find_secrets(text: str, values: Sequence[str]) -> list[str]:
    """The fingerprints (never the values) of the secrets found in ``text``."""
    return [hashlib.sha256(v.encode()).hexdigest()[:8] for v in values if v in text]


# -- the ping receiver -----------------------------------------------------------------------------


class PingReceiver:
    """A healthchecks-style endpoint on loopback that keeps every ping's path and body."""

    def __init__(self) -> None:
        self.pings: list[tuple[str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                receiver.pings.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/ping/survival"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the stand-in as its own process ---------------------------------------------------------------


def standin_config(
    *,
    list_size: int = 40,
    request_delay_seconds: float = 0.0,
    extra_lists: Sequence[int] = (),
) -> dict[str, Any]:
    """A stand-in with one confidential client and one account whose list spans the last three days."""
    now = time.time()
    lists = [
        {"id": list_id, "name": f"List {list_id}", "size": list_size, "start": now - 3 * 86400, "end": now - 60,
         "seed": list_id}
        for list_id in (LIST_ID, *extra_lists)
    ]
    return {
        "clients": {CLIENT_ID: CLIENT_SECRET},
        "request_delay_seconds": request_delay_seconds,
        "accounts": [{"id": ACCOUNT_ID, "company": "Survival Testing", "lists": lists}],
    }


class StandInProcess:
    """``python -m job.standin`` started with a config file, driven through StandInControl."""

    def __init__(self, directory: Path, config: Mapping[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        config_file = directory / "standin.json"
        config_file.write_text(json.dumps(config), encoding="utf-8")
        port_file = directory / "port"
        self._log = open(directory / "standin.log", "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "job.standin", "--port-file", str(port_file), "--config", str(config_file)],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the stand-in did not start; see {directory / 'standin.log'}")
            time.sleep(0.02)
        self.base_url = f"http://127.0.0.1:{int(port_file.read_text())}"
        self.control = StandInControl(self.base_url)

    def stop(self) -> None:
        if self.process.poll() is None:
            # Everything it ever issued goes into the end-of-suite scan of the job's output and files.
            SECRETS.add(*self.control.issued_secrets())
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def invalid_grants(self) -> int:
        counts: dict[str, int] = self.control.stats()["token"]  # type: ignore[assignment]
        return sum(n for key, n in counts.items() if "invalid_grant" in key)

    def token_requests(self) -> int:
        counts: dict[str, int] = self.control.stats()["token"]  # type: ignore[assignment]
        return sum(counts.values())

    def api_requests(self) -> int:
        counts: dict[str, int] = self.control.stats()["api"]  # type: ignore[assignment]
        return sum(counts.values())


# -- one job's files and its processes ---------------------------------------------------------------


@dataclass
class Ran:
    """What a finished process did."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class Workspace:
    """A job's directory (token file, state, logs) pointed at a stand-in process."""

    def __init__(self, root: Path, standin: StandInProcess, *, ping_url: str | None = None) -> None:
        self.root = root
        self.standin = standin
        self.ping_url = ping_url
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.root / "metrics").mkdir(exist_ok=True)
        self._count = 0
        SECRETS.add_root(root)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def token_file(self) -> Path:
        return self.state_dir / "tokens.json"

    @property
    def task_state_file(self) -> Path:
        return self.state_dir / TASK_STATE_NAME

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def env(self, **overrides: str) -> dict[str, str]:
        base = self.standin.base_url
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "AWEBER_CLIENT_ID": CLIENT_ID,
            "AWEBER_CLIENT_SECRET": CLIENT_SECRET,
            "AWEBER_TOKEN_FILE": str(self.token_file),
            "AWEBER_TOKEN_URL": f"{base}/oauth2/token",
            "AWEBER_AUTHORIZE_URL": f"{base}/oauth2/authorize",
            "AWEBER_REVOKE_URL": f"{base}/oauth2/revoke",
            "AWEBER_API_URL": f"{base}/1.0",
            "AWEBER_LOCK_TIMEOUT": "10",
            "AWEBER_HTTP_TIMEOUT": "5",
            "AWEBER_RETRY_DEADLINE": "5",
            "AWEBER_METRICS_FILE": str(self.root / "metrics" / "aweber-job.prom"),
        }
        if self.ping_url:
            env["AWEBER_PING_URL"] = self.ping_url
        env.update(overrides)
        return env

    def seed_tokens(self, *, expires_in: float = 7200) -> str:
        """Issue a live token pair at the stand-in, write it as the token file; return the refresh token."""
        grant = self.standin.control.issue_tokens(CLIENT_ID)
        SECRETS.add_grant(grant)
        document = {
            "access_token": grant["access_token"],
            "refresh_token": grant["refresh_token"],
            "token_type": "bearer",
            "expires_in": 7200,
            "expires_at": time.time() + expires_in,
        }
        temporary = self.token_file.with_name("seed.tmp")
        temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.token_file)
        return str(grant["refresh_token"])

    def file_refresh_token(self) -> str:
        """The refresh token in the token file, checked by the suite's own rules (tests/survival/oracle.py, never
        the job's loader); raises AssertionError when the file is not a valid token file."""
        SECRETS.add_token_file(self.token_file)
        return refresh_token_in(self.token_file)

    def temporaries(self) -> list[Path]:
        return sorted(self.state_dir.glob(".tokens.json.tmp-*"))

    def rescue_files(self) -> list[Path]:
        return sorted(self.state_dir.glob("tokens.json.rescue-*"))

    def task_state(self) -> dict[str, Any] | None:
        """The task state as JSON, None when absent; raises when it does not parse as an object."""
        if not self.task_state_file.exists():
            return None
        value = json.loads(self.task_state_file.read_text(encoding="utf-8"))
        if not isinstance(value, dict):
            raise AssertionError(f"{self.task_state_file} is not a JSON object")
        return value

    def task_state_bytes(self) -> bytes | None:
        return self.task_state_file.read_bytes() if self.task_state_file.exists() else None

    def _log_paths(self, label: str) -> tuple[Path, Path]:
        self._count += 1
        stem = f"{self._count:04d}-{label}"
        return self.logs / f"{stem}.out", self.logs / f"{stem}.err"

    def start(self, args: Sequence[str], env: Mapping[str, str], *, label: str = "job",
              preexec: Any = None) -> Started:
        """Start ``python -m job ARGS`` with its stdout and stderr going to files under ``logs/``."""
        out_path, err_path = self._log_paths(label)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "job", *args], env=dict(env), cwd=REPO, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, preexec_fn=preexec,
            )
        return Started(list(args), process, out_path, err_path, time.monotonic())

    def run(self, args: Sequence[str], env: Mapping[str, str] | None = None, *, label: str = "job",
            timeout: float = 60, preexec: Any = None) -> Ran:
        """Run ``python -m job ARGS`` to the end and return what it did."""
        started = self.start(args, env if env is not None else self.env(), label=label, preexec=preexec)
        return started.finish(timeout=timeout)


@dataclass
class Started:
    """A job process in flight, writing to two files."""

    args: list[str]
    process: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    started_at: float

    def kill(self) -> bool:
        """SIGKILL the process if it still runs; return whether it was running."""
        if self.process.poll() is not None:
            return False
        self.process.send_signal(signal.SIGKILL)
        return True

    def finish(self, *, timeout: float = 60) -> Ran:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        stdout = self.out_path.read_text(encoding="utf-8", errors="replace")
        stderr = self.err_path.read_text(encoding="utf-8", errors="replace")
        SECRETS.add_output(f"{self.args} -> {code}", stdout + stderr)
        return Ran(self.args, code, stdout, stderr)


def error_lines(stderr: str) -> list[str]:
    """The job's error and critical lines."""
    return [line for line in stderr.splitlines() if ": error:" in line or ": critical:" in line]


def assert_no_traceback(ran: Ran) -> None:
    assert "Traceback" not in ran.stderr, ran.stderr[-2000:]
    assert "Traceback" not in ran.stdout, ran.stdout[-2000:]


def token_file_loads(path: Path) -> bool:
    """Whether ``path`` is a valid token file by the suite's own rules (never the job's loader)."""
    return refresh_token_or_none(path) is not None


def file_hash(path: Path) -> str | None:
    """SHA-256 of a regular file's bytes; a symlink's target, ``"dir"`` or ``"fifo"`` otherwise; None when absent."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return f"symlink to {os.readlink(path)}"
    if stat.S_ISDIR(info.st_mode):
        return "dir"
    if not stat.S_ISREG(info.st_mode):
        return f"special file {stat.S_IFMT(info.st_mode):o}"
    return hashlib.sha256(path.read_bytes()).hexdigest()
