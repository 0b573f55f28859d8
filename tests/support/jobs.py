"""A job's home for tests: its files and environment against the in-thread stand-in, and real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job.standin import StandIn

CONFIDENTIAL_ID = "cid-confidential"
CONFIDENTIAL_SECRET = "conf-secret-7f3a9c1e5b"
PUBLIC_ID = "cid-public"
REPO = Path(__file__).resolve().parents[2]


def job_environment(*, home: Path, token_file: Path, base_url: str, client_id: str, client_secret: str | None,
                    lock_timeout: str = "5", retry_deadline: str = "10") -> dict[str, str]:
    """The variables a run needs against a stand-in at ``base_url`` (no .env file, nothing from the real
    environment but PATH); every builder of a job's home in the suite starts from this."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "AWEBER_CLIENT_ID": client_id,
        "AWEBER_TOKEN_FILE": str(token_file),
        "AWEBER_TOKEN_URL": f"{base_url}/oauth2/token",
        "AWEBER_AUTHORIZE_URL": f"{base_url}/oauth2/authorize",
        "AWEBER_REVOKE_URL": f"{base_url}/oauth2/revoke",
        "AWEBER_API_URL": f"{base_url}/1.0",
        "AWEBER_LOCK_TIMEOUT": lock_timeout,
        "AWEBER_HTTP_TIMEOUT": "5",
        "AWEBER_RETRY_DEADLINE": retry_deadline,
    }
    if client_secret is not None:
        env["AWEBER_CLIENT_SECRET"] = client_secret
    return env


def token_document(grant: Mapping[str, Any], *, expires_in: float = 7200, **extra: Any) -> dict[str, Any]:
    """A flat token file's content for a grant the stand-in issued, its access token good for ``expires_in``."""
    return {
        "access_token": grant["access_token"],
        "refresh_token": grant["refresh_token"],
        "token_type": "bearer",
        "expires_in": 7200,
        "expires_at": time.time() + expires_in,
        **extra,
    }


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
        secret = CONFIDENTIAL_SECRET if self.client_id == CONFIDENTIAL_ID else None
        env = job_environment(home=self.root, token_file=self.token_file, base_url=self.standin.base_url,
                              client_id=self.client_id, client_secret=secret)
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def write_tokens(self, *, shape: str = "flat", expires_in: float = 7200, **extra: Any) -> dict[str, Any]:
        """Issue live tokens at the stand-in and write them as a token file; return the grant."""
        grant = self.standin.issue_tokens(self.client_id)
        token = token_document(grant, expires_in=expires_in, **extra)
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
