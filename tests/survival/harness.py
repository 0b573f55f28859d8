"""What every survival scenario stands on: a stand-in AWeber in its own process, a job's files, real
``aweber-job`` processes, a ping receiver, the secrets every scenario saw, and the tally of outcomes.

The tally and the secrets are process-wide on purpose: the pytest session (and ``bench/survive.py``,
which runs it) reads them back at the end to print one table and to scan everything for secrets.
"""

from __future__ import annotations

import base64
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import pytest
import requests

from tests.support.jobs import job_environment, token_document
from tests.support.standin import StandInControl
from tests.survival.oracle import refresh_token_in, refresh_token_or_none

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID = "cid-survival"
CLIENT_SECRET = "survival-client-secret-5d1e8a"
PUBLIC_CLIENT_ID = "cid-survival-public"  # a PKCE client, for `aweber-job login` runs
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

# lost_answer: the server rotated and its answer never arrived whole (the job explains it);
# garbled_answer: the server rotated and its answer arrived, but held no readable refresh token;
# skipped: the scenario could not be set up on this machine (not tried, neither success nor failure).
OUTCOMES = ("survived", "lost_answer", "garbled_answer", "failed", "skipped")


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
        """Count one attempt of ``scenario`` that ended as ``outcome`` (one of OUTCOMES); a skipped one was
        not tried (this machine could not set it up) and counts only as skipped."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        row = self.row(scenario)
        with self._lock:
            row.tried += outcome != "skipped"
            row.outcomes[outcome] += 1

    def note(self, scenario: str, detail: str, count: int = 1) -> None:
        """Add to a detail counter of ``scenario`` (where kills landed, exit codes seen...)."""
        row = self.row(scenario)
        with self._lock:
            row.details[detail] += count

    @contextmanager
    def attempt(self, scenario: str) -> Iterator[Attempt]:
        """Count one attempt: skipped when the body skips, a failure when it raises anything else, else what
        the body marked (default survived)."""
        attempt = Attempt()
        try:
            yield attempt
        except pytest.skip.Exception:
            self.record(scenario, "skipped")
            raise
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
    """How the attempt in progress ended; a lost or garbled answer must be marked explicitly."""

    outcome: str = "survived"

    def mark_lost_answer(self) -> None:
        self.outcome = "lost_answer"

    def mark_garbled_answer(self) -> None:
        self.outcome = "garbled_answer"


TALLY = Tally()


# -- secrets ---------------------------------------------------------------------------------------


class Secrets:
    """Every secret value the suite handed out or read back, and where the job's output went."""

    def __init__(self) -> None:
        self.values: set[str] = {CLIENT_SECRET, *basic_credentials(CLIENT_ID, CLIENT_SECRET)}
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



def is_token_store_file(path: Path) -> bool:
    """The token file, its temporaries (a killed save's half-written file), rescue files (the token file's,
    and the database store's in ``<state dir>/rescue/``) and a token file kept after ``connections import``
    may hold tokens."""
    name = path.name
    if path.parent.name == "rescue" and name.endswith(".json"):
        return True
    return (name == "tokens.json" or ".tokens.json.tmp-" in name or ".rescue-" in name or ".imported-" in name
            or ".import-uncertain-" in name)


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def encoded_forms(value: str) -> dict[str, str]:
    """Every way a secret may show up, by name: as it is, JSON-escaped (ASCII or not), URL-encoded (quote with and
    without "/" kept, quote_plus), and base64 (standard and URL-safe, with and without padding)."""
    forms = {
        "raw": value,
        "JSON-escaped": json.dumps(value)[1:-1],
        "JSON-escaped, UTF-8 kept": json.dumps(value, ensure_ascii=False)[1:-1],
        "quote": quote(value, safe=""),
        "quote keeping /": quote(value),
        "quote_plus": quote_plus(value),
    }
    for name, encode in (("base64", base64.b64encode), ("urlsafe base64", base64.urlsafe_b64encode)):
        encoded = encode(value.encode("utf-8")).decode("ascii")
        forms[name] = encoded
        forms[f"{name} unpadded"] = encoded.rstrip("=")
    return forms


def basic_credentials(client_id: str, secret: str) -> list[str]:
    """The ``client_id:secret`` pairs of a Basic header (as they are, and form-encoded first as RFC 6749
    asks): their base64 holds neither part's own base64, so they are looked for in their own right."""
    return [f"{client_id}:{secret}", f"{quote_plus(client_id)}:{quote_plus(secret)}"]


class SecretScanner:
    """Finds any encoded form of any of ``values`` in a text, reporting fingerprints (never values)."""

    PREFIX = 6

    def __init__(self, values: Iterable[str]) -> None:
        self._by_prefix: dict[str, list[tuple[str, str]]] = {}
        for value in values:
            if len(value) < self.PREFIX:
                continue
            for form in set(encoded_forms(value).values()):
                self._by_prefix.setdefault(form[:self.PREFIX], []).append((form, fingerprint(value)))

    def find(self, text: str) -> list[str]:
        found: set[str] = set()
        by_prefix = self._by_prefix
        for i in range(len(text) - self.PREFIX + 1):
            candidates = by_prefix.get(text[i:i + self.PREFIX])
            if candidates:
                found.update(fp for form, fp in candidates if text.startswith(form, i))
        return sorted(found)


def find_secrets(text: str, values: Sequence[str]) -> list[str]:
    """The fingerprints (never the values) of the secrets found in ``text``, in any encoded form."""
    return SecretScanner(values).find(text)


SECRETS = Secrets()


# -- the ping receiver -----------------------------------------------------------------------------


# -- the stand-in as its own process ---------------------------------------------------------------


def standin_config(
    *,
    list_size: int = 40,
    request_delay_seconds: float = 0.0,
    extra_lists: Sequence[int] = (),
) -> dict[str, Any]:
    """A stand-in with a confidential and a public client and one account whose list spans the last three days."""
    now = time.time()
    lists = [
        {"id": list_id, "name": f"List {list_id}", "size": list_size, "start": now - 3 * 86400, "end": now - 60,
         "seed": list_id}
        for list_id in (LIST_ID, *extra_lists)
    ]
    return {
        "clients": {CLIENT_ID: CLIENT_SECRET, PUBLIC_CLIENT_ID: None},
        "request_delay_seconds": request_delay_seconds,
        "accounts": [{"id": ACCOUNT_ID, "company": "Survival Testing", "lists": lists}],
    }


class StandInProcess:
    """``python -m tests.support.standin`` started with a config file, driven through StandInControl."""

    def __init__(self, directory: Path, config: Mapping[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        config_file = directory / "standin.json"
        config_file.write_text(json.dumps(config), encoding="utf-8")
        port_file = directory / "port"
        self._log = open(directory / "standin.log", "wb")  # closed in stop()
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
        env = job_environment(home=self.root, token_file=self.token_file, base_url=self.standin.base_url,
                              client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lock_timeout="10", retry_deadline="5")
        env["AWEBER_METRICS_FILE"] = str(self.root / "metrics" / "aweber-job.prom")
        if self.ping_url:
            env["AWEBER_PING_URL"] = self.ping_url
        env.update(overrides)
        return env

    def seed_tokens(self, *, expires_in: float = 7200) -> str:
        """Issue a live token pair at the stand-in, write it as the token file; return the refresh token."""
        grant = self.standin.control.issue_tokens(CLIENT_ID)
        SECRETS.add_grant(grant)
        document = token_document(grant, expires_in=expires_in)
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

    def login(self, *, public: bool, args: Sequence[str] = (), label: str = "login") -> Ran:
        """Run ``python -m job [ARGS] login`` as a person would: once it prints the authorize URL, approve it at
        the stand-in and paste the code at the prompt (a public client uses PKCE, a confidential one its
        secret). Its output joins the scanned outputs; the code and any verifier are among the stand-in's
        issued secrets."""
        env = self.env(AWEBER_CLIENT_ID=PUBLIC_CLIENT_ID) if public else self.env()
        if public:
            env.pop("AWEBER_CLIENT_SECRET")
        out_path, err_path = self._log_paths(label)
        with open(err_path, "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "job", *args, "login"], env=env, cwd=REPO, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            )
            assert process.stdin is not None and process.stdout is not None
            seen: list[str] = []
            try:
                while line := process.stdout.readline():
                    seen.append(line)
                    if line.startswith(("http://", "https://")):
                        approval = requests.get(line.strip(), allow_redirects=False, timeout=10)
                        if approval.status_code == 302:
                            code = parse_qs(urlsplit(approval.headers["Location"]).query)["code"][0]
                        else:
                            code = approval.headers["X-Authorization-Code"]
                        process.stdin.write(code + "\n")
                        break
                process.stdin.close()
                seen.append(process.stdout.read())
                code_returned = process.wait(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        stdout = "".join(seen)
        out_path.write_text(stdout, encoding="utf-8")
        stderr = err_path.read_text(encoding="utf-8", errors="replace")
        SECRETS.add_output(f"{[*args, 'login']} -> {code_returned}", stdout + stderr)
        return Ran([*args, "login"], code_returned, stdout, stderr)

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
    killed_at: float | None = None  # wall-clock time of the SIGKILL, comparable with the stand-in's log

    def kill(self) -> bool:
        """SIGKILL the process if it still runs; return whether it was running."""
        if self.process.poll() is not None:
            return False
        self.killed_at = time.time()
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


# -- lost answers, from the stand-in's request log -------------------------------------------------------

# The job holds a token answer only once it has read, parsed and written it to its temporary; on a
# loaded two-core machine that can take this long after the stand-in produced the answer.
IN_FLIGHT_GRACE_SECONDS = 0.5
# A token answer's body is a few hundred bytes; a dripping one takes this many bytes' worth of drips.
TOKEN_ANSWER_BYTES_AT_MOST = 1024


def rotations(request_log: Sequence[Mapping[str, object]]) -> list[Mapping[str, object]]:
    """The refresh requests the stand-in answered with new tokens (it rotated), oldest first."""
    return [entry for entry in request_log
            if entry.get("kind") == "token" and entry.get("grant_type") == "refresh_token"
            and entry.get("status") == 200]


def answer_never_arrived(request_log: Sequence[Mapping[str, object]]) -> bool:
    """Whether the stand-in rotated exactly once and did not deliver that answer whole (dropped after
    processing, truncated, or dripped: the client's read timeout may end it first)."""
    rotated = rotations(request_log)
    if len(rotated) != 1:
        return False
    entry = rotated[0]
    return entry.get("outcome") in ("dropped_after", "truncated") or "drip" in str(entry.get("fault") or "")


def killed_while_answer_in_flight(request_log: Sequence[Mapping[str, object]], killed_at: float | None,
                                  drip_seconds: float = 0.0) -> bool:
    """Whether the stand-in rotated exactly once and the SIGKILL came before the job can have held that
    answer: before the stand-in produced it (a server does not know its client died) or within the grace
    above after it, plus the drip's time for a dripping answer."""
    rotated = rotations(request_log)
    if killed_at is None or len(rotated) != 1:
        return False
    answered_at = float(rotated[0]["time"])  # type: ignore[arg-type]
    in_flight = IN_FLIGHT_GRACE_SECONDS + drip_seconds * TOKEN_ANSWER_BYTES_AT_MOST
    return killed_at <= answered_at + in_flight


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
