"""The survival suite on the PostgreSQL store: a private cluster whose job role must give a password, one
database per connection, and the connection run by real ``aweber-job --connection NAME`` processes.

Faults (restart, stop, read-only) are done to the private cluster only (tests/support/pgcluster.py), never to the
machine's shared server. The job's role authenticates with scram-sha-256, so the password in the URL is
really sent and really needed, and it joins the secrets every output is scanned for. What the row holds
is judged by the suite's own rules (tests/survival/oracle.py, decrypting with ``cryptography`` directly
when a key is set), never by the job's loader.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import secrets
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.pgcluster import PrivateCluster, private_pg
from tests.survival.harness import SECRETS, Ran, Started, Workspace
from tests.survival.oracle import token_document

__all__ = ["private_pg"]  # a test module that imports the fixtures here gets the cluster fixture too

ROLE = "aweber_job_runner"
TABLE = "aweber_job.connections"

# Every output of a job process run on the PostgreSQL store, for tests/survival/test_pg_secrets.py.
PG_OUTPUTS: list[tuple[str, str]] = []


@dataclass
class PgServer:
    """The private cluster and the password of the role the job logs in as."""

    cluster: PrivateCluster
    password: str

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.cluster.port}/{database}"

    def sql(self, statement: str, database: str) -> str:
        """As the superuser (trust, so psql and pg_dump need no password)."""
        return self.cluster.sql(statement, database)


def _drivers_missing() -> str | None:
    missing = [name for name in ("psycopg", "cryptography") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: pip install -e '.[test,postgres]'"
    return None


@pytest.fixture(scope="module")
def pg_server(private_pg: PrivateCluster) -> PgServer:
    """The module's private cluster, with a role that must log in with a password (scram-sha-256)."""
    reason = _drivers_missing()
    if reason is not None:
        if os.environ.get("AWEBER_TEST_POSTGRES") == "require":
            pytest.fail(f"AWEBER_TEST_POSTGRES=require but {reason}")
        pytest.skip(reason)
    password = "pg-pw-" + secrets.token_urlsafe(16)
    hba = private_pg.data / "pg_hba.conf"
    # The first matching line wins: the job's role over TCP needs its password, the superuser stays trusted.
    hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text(encoding="utf-8"),
                   encoding="utf-8")
    private_pg.sql("SELECT pg_reload_conf()")
    private_pg.sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")
    SECRETS.add(password)
    server = PgServer(private_pg, password)
    without = server.url("postgres").replace(f":{password}@", "@")
    refused = subprocess.run([str(private_pg.bindir / "psql"), "-X", "-w", "-d", without, "-c", "SELECT 1"],
                             capture_output=True, text=True, timeout=30, check=False,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert refused.returncode != 0, "the job's role logs in without its password: the password would prove nothing"
    return server


def fernet_key() -> str:
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode("ascii")
    SECRETS.add(key)
    return key


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Row:
    """One connection's row as the suite reads it (the tokens decrypted by the suite itself)."""

    data: bytes | None = field(repr=False)  # never in a failure message: it holds tokens
    encrypted: bool
    marker: str | None
    fence: int
    lease_holder: str | None
    whole: str = field(repr=False)  # the row as JSON text, to compare before and after

    def refresh_token(self) -> str | None:
        """The refresh token when the stored bytes are a valid token file by the suite's rules, else None."""
        if self.data is None:
            return None
        fields = token_document(self.data)
        return None if fields is None else str(fields["refresh_token"])


class PgJob:
    """One connection, alone in a new database of the private cluster, and the workspace that runs it."""

    def __init__(self, server: PgServer, ws: Workspace, *, name: str = "customer-1", key: str | None = None,
                 beside: PgJob | None = None) -> None:
        """A new database with the schema, or with ``beside`` another connection in that one's database."""
        self.server = server
        self.ws = ws
        self.name = name
        self.key = key
        self.database = beside.database if beside is not None else f"job_{secrets.token_hex(6)}"
        self.url = server.url(self.database)
        if beside is None:
            server.sql(f'CREATE DATABASE "{self.database}" OWNER {ROLE}', "postgres")
            ran = self.admin(["store", "init"], label="store-init")
            assert ran.returncode == 0, ran.stderr

    # -- processes --

    def env(self, **overrides: str) -> dict[str, str]:
        extra = {"AWEBER_STORE": self.url}
        if self.key is not None:
            extra["AWEBER_STORE_KEY"] = self.key
        return self.ws.env(**{**extra, **overrides})

    def _keep(self, ran: Ran) -> Ran:
        PG_OUTPUTS.append((f"{ran.args} -> {ran.returncode}", ran.stdout + ran.stderr))
        return ran

    def admin(self, args: Sequence[str], *, label: str = "admin", **env: str) -> Ran:
        """A command of the store as a whole (``store init``, ``connections ...``)."""
        return self._keep(self.ws.run(list(args), self.env(**env), label=label))

    def start(self, args: Sequence[str], *, label: str = "job", **env: str) -> Started:
        return self.ws.start(["--connection", self.name, *args], self.env(**env), label=label)

    def finish(self, started: Started, *, timeout: float = 120) -> Ran:
        return self._keep(started.finish(timeout=timeout))

    def run(self, args: Sequence[str], *, label: str = "job", timeout: float = 120, **env: str) -> Ran:
        return self.finish(self.start(args, label=label, **env), timeout=timeout)

    def seed(self, *, force: bool = False) -> str:
        """Issue a live pair at the stand-in and import it as the connection; return its refresh token."""
        token = self.ws.seed_tokens()
        args = ["connections", "import", self.name, str(self.ws.token_file)] + (["--force"] if force else [])
        ran = self.admin(args, label="import")
        assert ran.returncode == 0, ran.stderr
        return token

    # -- the row --

    def row(self) -> Row:
        out = self.server.sql(
            f"""SELECT coalesce(encode(tokens, 'hex'), '-'), encrypted, coalesce(refreshing_from, '-'), fence,
                       coalesce(lease_holder, '-'), row_to_json(c)::text
                FROM {TABLE} c WHERE name = '{self.name}'""", self.database)  # noqa: S608 - names the suite chose
        assert out, f"connection {self.name} is not in the database"
        data, encrypted, marker, fence, holder, whole = out.split("|", 5)
        raw = None if data == "-" else bytes.fromhex(data)
        if raw is not None and encrypted == "t":
            raw = self.decrypt(raw)
        return Row(raw, encrypted == "t", None if marker == "-" else marker, int(fence),
                   None if holder == "-" else holder, whole)

    def decrypt(self, sealed: bytes) -> bytes | None:
        """The token file an encrypted row holds (None when the key does not open it, or it is not bound to this
        connection: a corrupt row). A sealed value is the line ``aweber-job/bound <sha256 of the name>``, then the
        token file."""
        from cryptography.fernet import Fernet, InvalidToken

        assert self.key is not None, "an encrypted row but no key was given"
        try:
            plain = Fernet(self.key.encode("ascii")).decrypt(sealed)
        except InvalidToken:
            return None
        bound = b"aweber-job/bound " + hashlib.sha256(self.name.encode("utf-8")).hexdigest().encode("ascii") + b"\n"
        return plain[len(bound):] if plain.startswith(bound) else None

    def stored_refresh_token(self) -> str:
        """The refresh token the row holds; AssertionError when the row does not load (a corrupt row)."""
        token = self.row().refresh_token()
        assert token is not None, f"connection {self.name} holds no valid token file: a corrupt row"
        SECRETS.add(token)
        return token

    def wait_for(self, what: str, condition: str, *, timeout: float = 20) -> None:
        """Poll the row until the SQL ``condition`` holds (the run reached that point)."""
        deadline = time.monotonic() + timeout
        query = f"SELECT {condition} FROM {TABLE} WHERE name = '{self.name}'"  # noqa: S608 - the suite's own SQL
        while self.server.sql(query, self.database) != "t":
            assert time.monotonic() < deadline, f"the run never reached {what}"
            time.sleep(0.02)

    def rescue_dir(self) -> Path:
        return self.ws.state_dir / "rescue"

    def rescue_files(self) -> list[Path]:
        """The files in the rescue directory that hold anything: a reservation a killed run left holds only its
        placeholder (spaces) and is not one; see :meth:`placeholders`."""
        return [path for path in self._rescue_entries() if path not in self.placeholders()]

    def placeholders(self) -> list[Path]:
        """Reserved rescue files that hold nothing yet (a hidden temporary of spaces only)."""
        return [path for path in self._rescue_entries()
                if path.name.startswith(".") and not path.read_bytes().strip()]

    def _rescue_entries(self) -> list[Path]:
        directory = self.rescue_dir()
        return sorted(directory.iterdir()) if directory.exists() else []
