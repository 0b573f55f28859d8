"""Shared fixtures: the stand-in AWeber on loopback, token files, the job's environment, real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from job.standin import StandIn

CONFIDENTIAL_ID = "cid-confidential"
CONFIDENTIAL_SECRET = "conf-secret-7f3a9c1e5b"
PUBLIC_ID = "cid-public"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A stand-in AWeber on 127.0.0.1 with one confidential and one public client."""
    server = StandIn(clients={CONFIDENTIAL_ID: CONFIDENTIAL_SECRET, PUBLIC_ID: None})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class JobFiles:
    """A temporary home for one job: token file, state, and the environment that points at them."""

    root: Path
    standin: StandIn
    client_id: str = CONFIDENTIAL_ID
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def token_file(self) -> Path:
        return self.root / "state" / "tokens.json"

    def env(self, **overrides: str) -> dict[str, str]:
        """The variables a run needs (no .env file, nothing from the real environment but PATH/HOME)."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "AWEBER_CLIENT_ID": self.client_id,
            "AWEBER_TOKEN_FILE": str(self.token_file),
            "AWEBER_TOKEN_URL": self.standin.token_url,
            "AWEBER_AUTHORIZE_URL": self.standin.authorize_url,
            "AWEBER_REVOKE_URL": self.standin.revoke_url,
            "AWEBER_API_URL": self.standin.api_url,
            "AWEBER_LOCK_TIMEOUT": "5",
            "AWEBER_HTTP_TIMEOUT": "5",
            "AWEBER_RETRY_DEADLINE": "10",
        }
        if self.client_id == CONFIDENTIAL_ID:
            env["AWEBER_CLIENT_SECRET"] = CONFIDENTIAL_SECRET
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def write_tokens(self, *, shape: str = "flat", expires_in: float = 7200, **extra: Any) -> dict[str, Any]:
        """Issue live tokens at the stand-in and write them as a token file; return the grant."""
        grant = self.standin.issue_tokens(self.client_id)
        token = {
            "access_token": grant["access_token"],
            "refresh_token": grant["refresh_token"],
            "token_type": "bearer",
            "expires_in": 7200,
            "expires_at": time.time() + expires_in,
            **extra,
        }
        document: dict[str, Any] = token
        if shape == "credentials.json":
            document = {"client_id": self.client_id, "client_secret": CONFIDENTIAL_SECRET, "token": token}
        self.token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.token_file.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        os.chmod(self.token_file, 0o600)
        return grant

    def read_tokens(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.token_file.read_text(encoding="utf-8"))
        return document.get("token", document) if "token" in document else document


@pytest.fixture
def job(tmp_path: Path, standin: StandIn) -> JobFiles:
    """Files and environment for one job against the stand-in, confidential client."""
    return JobFiles(root=tmp_path, standin=standin)


def run_job(
    args: list[str],
    env: Mapping[str, str],
    *,
    input_text: str | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m job ARGS`` as a real process and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "job", *args],
        env=dict(env),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        check=False,
    )


def token_requests(server: Any) -> int:
    """How many requests reached the stand-in's token endpoint (whatever their outcome)."""
    counts: dict[str, int] = server.stats()["token"]
    return sum(counts.values())


def invalid_grants(server: Any) -> int:
    """How many token-endpoint answers were invalid_grant."""
    counts: dict[str, int] = server.stats()["token"]
    return sum(n for key, n in counts.items() if "invalid_grant" in key)


class FakeTime:
    """A monotonic clock that only moves when the recording sleep is called."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# ---- PostgreSQL: a throwaway database on a real server, for the PostgreSQL connection store -------
# The server is AWEBER_TEST_POSTGRES_URL (default: loopback, user postgres, trust auth). When it cannot
# be reached the tests that need it are skipped with the reason, or fail when AWEBER_TEST_POSTGRES=require
# (as in CI). One database per test run; each test gets it with the job's schema dropped (about 2 ms, where
# a fresh database per test takes about 140 ms).

PG_SERVER_URL = os.environ.get("AWEBER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _with_dbname(url: str, dbname: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of a database made for this test run (aweber_job_test_<random>), dropped at its end."""
    import secrets

    try:
        admin = _pg_admin(PG_SERVER_URL)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server is the reason to skip
        reason = f"no PostgreSQL server at {PG_SERVER_URL.split('@')[-1]}: {str(exc).strip().splitlines()[0]}"
        if os.environ.get("AWEBER_TEST_POSTGRES") == "require":
            pytest.fail(reason + " (AWEBER_TEST_POSTGRES=require)")
        pytest.skip(reason)
    name = f"aweber_job_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield _with_dbname(PG_SERVER_URL, name)
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The test run's database, read-write and without the job's schema (dropped if a test made it)."""
    dbname = pg_database.rsplit("/", 1)[-1]
    with _pg_admin(PG_SERVER_URL) as admin:
        admin.execute(f"ALTER DATABASE {dbname} RESET default_transaction_read_only")
        admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
    with _pg_admin(pg_database) as db:
        db.execute("DROP SCHEMA IF EXISTS aweber_job CASCADE")
    return pg_database
