"""A private, throwaway PostgreSQL cluster for fault tests.

Fault tests of the PostgreSQL store must restart the server mid-run, make it read-only or make it
unreachable. Doing that to the machine's shared server (127.0.0.1:5432) would break every other test, so
each test module gets its own cluster: a data directory in a temporary directory, the installed server
binaries, TCP on 127.0.0.1 only (on a free port), its unix socket inside that temporary directory, trust
authentication, ``fsync`` on (the store's durability is under test) and small memory.

Root cannot run ``initdb`` or ``postgres``: as root both run as the ``postgres`` system user (the
directory is handed to it). The server is a child of this process, started through ``setpriv
--pdeathsig`` where available, so even a test process killed outright takes its server with it; a
normal exit, a failed test and an interrupted run are covered by the fixture finaliser and ``atexit``.

SQL goes through ``psql`` and ``pg_dump`` from the same installation, so the library needs no driver.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
SQL_TIMEOUT = 30.0
STOP_SIGNALS = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class ClusterError(RuntimeError):
    """The private cluster could not be made, started, stopped or queried (the message says which)."""


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: ``pg_config --bindir`` first, then Debian's layout."""
    candidates: list[str] = []
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for directory in candidates:
        if all(os.access(os.path.join(directory, name), os.X_OK) for name in ("initdb", "postgres", "psql")):
            return Path(directory)
    return None


def _version_key(path: str) -> int:
    """Sort /usr/lib/postgresql/<major>/bin by major version, newest first."""
    major = Path(path).parent.name
    return int(major) if major.isdigit() else -1


def unavailable_reason() -> str | None:
    """Why a private cluster cannot be made here, or None when it can."""
    if find_bindir() is None:
        return "no PostgreSQL server binaries (initdb, postgres, psql) in pg_config --bindir or /usr/lib/postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' system user to run the server as"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (start() retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateCluster:
    """One throwaway cluster: ``initdb`` on construction, then start/stop/restart at will, cleanup() at the end."""

    def __init__(self, *, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise ClusterError(unavailable_reason() or "no PostgreSQL server binaries")
        self.bindir = found
        self.root = Path(tempfile.mkdtemp(prefix="aweber-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port = free_port()
        self._server: subprocess.Popen[bytes] | None = None
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        atexit.register(self.cleanup)
        try:
            self._initdb()
        except BaseException:
            self.cleanup()
            raise

    # -- the server's life -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where to connect: the superuser, over TCP, to the default database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """The connection URL for one database of this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._server is not None and self._server.poll() is None

    def start(self) -> None:
        """Start the server and wait (at most START_TIMEOUT) until it accepts connections."""
        if self.running:
            return
        for _attempt in range(3):
            self._spawn()
            if self._wait_ready():
                return
            if "TCP/IP socket" not in self.log_tail() or self._server is None or self._server.poll() is None:
                break
            self.port = free_port()  # another process took the port between probe and bind: try another
            self._write_port()
        log = self.log_tail()
        self._kill_everything()
        raise ClusterError(f"private PostgreSQL in {self.data} did not start within {START_TIMEOUT:.0f} s: {log}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends connections and checkpoints; ``immediate`` is a crash (recovery on start)."""
        if mode not in STOP_SIGNALS:
            raise ValueError(f"stop mode must be one of {sorted(STOP_SIGNALS)}, not {mode!r}")
        server = self._server
        if server is None or server.poll() is not None:
            self._server = None
            return
        server.send_signal(STOP_SIGNALS[mode])
        try:
            server.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill_everything()
            raise ClusterError(f"private PostgreSQL in {self.data} did not stop ({mode}) within "
                               f"{STOP_TIMEOUT:.0f} s; killed it") from None
        self._server = None

    def restart(self, mode: str = "fast") -> None:
        """Stop (every open connection is cut) and start again on the same port, data kept."""
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        """Stop the server (immediately), kill any process left in the data directory, remove the directory."""
        atexit.unregister(self.cleanup)
        with contextlib.suppress(ClusterError):
            self.stop("immediate")
        self._kill_everything()
        shutil.rmtree(self.root, ignore_errors=True)

    def processes(self) -> list[int]:
        """Pids of every process working in this data directory (every postgres process chdirs into it)."""
        wanted = {str(self.data), f"{self.data} (deleted)"}  # the second once the directory is removed
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "cwd") in wanted:
                        pids.append(int(entry.name))
        return pids

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's log, for error messages (the log holds no secrets: trust auth)."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            return " | ".join(text[-lines:])
        return "(no server log)"

    def __enter__(self) -> PrivateCluster:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.cleanup()

    # -- SQL -----------------------------------------------------------------------------------------------

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run SQL with psql and return its unaligned output; ClusterError (with psql's message) if it fails."""
        result = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.url_for(database), "-c", statement],
            capture_output=True, text=True, timeout=SQL_TIMEOUT, check=False, env=self._client_env(),
        )
        if result.returncode != 0:
            raise ClusterError(f"psql on {self.url_for(database)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str) -> str:
        """Create a database and return its URL."""
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def set_read_only(self, database: str, on: bool) -> None:
        """Make NEW connections to one database read-only (writes fail with SQLSTATE 25006).

        Connections already open keep their mode; use set_read_only_everywhere() to reach them too.
        """
        value = "on" if on else "off"
        self.sql(f'ALTER DATABASE "{database}" SET default_transaction_read_only = {value}')

    def set_read_only_everywhere(self, on: bool) -> None:
        """Make every database read-only, connections already open included, from their next transaction.

        ALTER SYSTEM + pg_reload_conf(): open connections take the new default when they next read a command
        (a transaction already under way keeps its mode; a connection that SET the value itself keeps its
        own, and so does a database given its own value by set_read_only()). Returns once a new connection
        sees the new value, so the server has reloaded and signalled every open connection.
        """
        value = "on" if on else "off"
        self.sql(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
        self.sql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + START_TIMEOUT
        while self.sql("SHOW default_transaction_read_only") != value:
            if time.monotonic() > deadline:
                raise ClusterError(f"private PostgreSQL in {self.data} did not reload its configuration")
            time.sleep(0.02)

    def pg_dump(self, database: str) -> bytes:
        """A plain-SQL dump of one database (to compare what a run left behind)."""
        result = subprocess.run(
            [str(self.bindir / "pg_dump"), "--no-owner", "-d", self.url_for(database)],
            capture_output=True, timeout=SQL_TIMEOUT, check=False, env=self._client_env(),
        )
        if result.returncode != 0:
            raise ClusterError(f"pg_dump of {self.url_for(database)} failed: "
                               f"{result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    # -- the parts ---------------------------------------------------------------------------------------

    def _as_server_user(self, argv: list[str], *, pdeathsig: bool = False) -> list[str]:
        """The command line that runs argv as the server's user (postgres when we are root)."""
        setpriv = shutil.which("setpriv")
        if setpriv:
            prefix = [setpriv]
            if self._owner is not None:
                prefix += [f"--reuid={self._owner.pw_uid}", f"--regid={self._owner.pw_gid}", "--init-groups"]
            if pdeathsig:
                prefix += ["--pdeathsig=QUIT"]  # SIGQUIT to the postmaster: immediate shutdown of all of it
            return [*prefix, "--", *argv]
        if self._owner is not None:
            return ["runuser", "-u", self._owner.pw_name, "--", *argv]
        return argv

    def _server_env(self) -> dict[str, str]:
        """A clean environment for the server: no PG* variables from the test run, C locale."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}

    def _client_env(self) -> dict[str, str]:
        """psql/pg_dump see only the URL they are given, never a PGPASSWORD or service file of the machine."""
        return {**self._server_env(), "PGCONNECT_TIMEOUT": "5"}

    def _initdb(self) -> None:
        """Make the data directory (as the server's user) and write our settings into its configuration."""
        if self._owner is not None:
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        result = subprocess.run(
            self._as_server_user([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                  "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"]),
            capture_output=True, text=True, timeout=120, check=False, env=self._server_env(), cwd=self.root,
        )
        if result.returncode != 0:
            raise ClusterError(f"initdb of {self.data} failed: {result.stderr.strip()[-500:]}")
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                "\n# private throwaway cluster for tests\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
                "shared_buffers = 16MB\nmax_connections = 30\nmax_wal_size = 64MB\n"
                "logging_collector = off\n"
                "include_if_exists = 'port.conf'\n"
            )
        self._write_port()

    def _write_port(self) -> None:
        """The port lives in its own small file so a retry can change it without touching the rest."""
        port_conf = self.data / "port.conf"
        port_conf.write_text(f"port = {self.port}\n", encoding="utf-8")
        if self._owner is not None:
            os.chown(port_conf, self._owner.pw_uid, self._owner.pw_gid)

    def _spawn(self) -> None:
        """Start postgres as our child, its output appended to server.log."""
        with self.log_path.open("ab") as log:
            self._server = subprocess.Popen(
                self._as_server_user([str(self.bindir / "postgres"), "-D", str(self.data)], pdeathsig=True),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._server_env(),
                cwd=self.root,
            )

    def _wait_ready(self) -> bool:
        """Wait for postmaster.pid to say 'ready' (what pg_ctl -w watches); False if the server died or hung."""
        deadline = time.monotonic() + START_TIMEOUT
        pidfile = self.data / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._server is None or self._server.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                lines = pidfile.read_text(encoding="utf-8").splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return True
            time.sleep(0.02)
        return False

    def _kill_everything(self) -> None:
        """SIGKILL what is left of our server (its own processes only, found by their working directory)."""
        if self._server is not None and self._server.poll() is None:
            self._server.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._server.wait(timeout=STOP_TIMEOUT)
        self._server = None
        deadline = time.monotonic() + STOP_TIMEOUT
        while (pids := self.processes()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivateCluster]:
    """A started private cluster for one test module, removed afterwards whatever the tests did.

    Skips when no server binaries are installed, unless AWEBER_TEST_POSTGRES=require, which fails instead.
    """
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("AWEBER_TEST_POSTGRES") == "require":
            pytest.fail(f"AWEBER_TEST_POSTGRES=require but {reason}")
        pytest.skip(reason)
    cluster = PrivateCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()
