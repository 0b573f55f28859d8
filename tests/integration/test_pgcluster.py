"""The private cluster the PostgreSQL fault tests stand on does what they rely on.

It starts and takes writes, a restart cuts open connections but keeps the data, read-only refuses
writes with SQLSTATE 25006 (new connections, or open ones too), a stopped server refuses at once, and
nothing — no process, no directory — outlives it, even when the test process is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pgcluster import ClusterError, PrivateCluster, private_pg, unavailable_reason

psycopg = pytest.importorskip("psycopg")

REPO = Path(__file__).resolve().parents[2]
__all__ = ["private_pg"]  # the fixture is used by name below


@pytest.fixture
def table(private_pg: PrivateCluster) -> Iterator[str]:
    """A fresh table with one committed row, in the module's cluster; the server left running afterwards."""
    with psycopg.connect(private_pg.url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS kept; CREATE TABLE kept (value text)")
        conn.execute("INSERT INTO kept VALUES ('before')")
    yield "kept"
    if not private_pg.running:
        private_pg.start()


def rows(url: str) -> list[str]:
    """The values in the test table, read on a new connection."""
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT value FROM kept ORDER BY value")]


def test_it_listens_on_loopback_only_with_its_socket_in_its_own_directory(private_pg: PrivateCluster) -> None:
    """TCP on 127.0.0.1 at the URL's port, the unix socket beside the data, fsync on, trust for postgres."""
    assert private_pg.url == f"postgresql://postgres@127.0.0.1:{private_pg.port}/postgres"
    assert private_pg.port != 5432
    with psycopg.connect(private_pg.url) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('listen_addresses', 'fsync', 'unix_socket_directories', 'port')").fetchall())
    assert settings == {"listen_addresses": "127.0.0.1", "fsync": "on", "port": str(private_pg.port),
                        "unix_socket_directories": str(private_pg.root)}
    assert (private_pg.root / f".s.PGSQL.{private_pg.port}").is_socket()
    assert not Path(f"/var/run/postgresql/.s.PGSQL.{private_pg.port}").exists()


def test_restart_cuts_an_open_connection_and_keeps_the_data(private_pg: PrivateCluster, table: str) -> None:
    """A connection open across the restart fails; a new one works and sees what was committed."""
    old = psycopg.connect(private_pg.url, autocommit=True)
    try:
        old.execute("INSERT INTO kept VALUES ('committed')")
        private_pg.restart()
        with pytest.raises(psycopg.OperationalError):
            old.execute("SELECT 1")
    finally:
        old.close()
    assert rows(private_pg.url) == ["before", "committed"]


def test_an_immediate_stop_is_a_crash_that_loses_nothing_committed(private_pg: PrivateCluster, table: str) -> None:
    """stop('immediate') skips the checkpoint; recovery on start replays the committed row from the WAL."""
    with psycopg.connect(private_pg.url, autocommit=True) as conn:
        conn.execute("INSERT INTO kept VALUES ('crash')")
    private_pg.stop("immediate")
    assert "database system was interrupted" not in private_pg.log_tail(20)
    private_pg.start()
    assert "database system was interrupted" in private_pg.log_tail(20)
    assert rows(private_pg.url) == ["before", "crash"]


def test_a_read_only_database_refuses_writes_on_new_connections(private_pg: PrivateCluster) -> None:
    """set_read_only(db): new connections fail writes with 25006; a connection opened before keeps writing."""
    url = private_pg.create_database("ro_new")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (value text)")
    opened_before = psycopg.connect(url, autocommit=True)
    try:
        private_pg.set_read_only("ro_new", True)
        with psycopg.connect(url, autocommit=True) as conn, pytest.raises(psycopg.Error) as refused:
            conn.execute("INSERT INTO kept VALUES ('refused')")
        assert refused.value.sqlstate == "25006"
        opened_before.execute("INSERT INTO kept VALUES ('old connection')")
    finally:
        opened_before.close()
    private_pg.set_read_only("ro_new", False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO kept VALUES ('writable again')")
    assert rows(url) == ["old connection", "writable again"]


def test_read_only_everywhere_reaches_connections_already_open(private_pg: PrivateCluster) -> None:
    """set_read_only_everywhere(): an open connection's next write fails with 25006; off again, it writes."""
    url = private_pg.create_database("ro_all")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (value text)")
        try:
            private_pg.set_read_only_everywhere(True)
            with pytest.raises(psycopg.Error) as refused:
                conn.execute("INSERT INTO kept VALUES ('refused')")
            assert refused.value.sqlstate == "25006"
        finally:
            private_pg.set_read_only_everywhere(False)
        conn.execute("INSERT INTO kept VALUES ('writable again')")
    assert rows(url) == ["writable again"]


def test_a_stopped_server_refuses_connections_at_once(private_pg: PrivateCluster, table: str) -> None:
    """After stop() a connection attempt is refused in well under a second, not left to time out."""
    private_pg.stop()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="refused"):
        psycopg.connect(private_pg.url, connect_timeout=10)
    assert time.monotonic() - started < 2
    assert private_pg.processes() == []


def test_pg_dump_returns_what_the_database_holds(private_pg: PrivateCluster, table: str) -> None:
    """pg_dump(db) is a plain-SQL dump that holds the table and its rows."""
    with psycopg.connect(private_pg.url, autocommit=True) as conn:
        conn.execute("INSERT INTO kept VALUES ('dumped-row-7')")
    dump = private_pg.pg_dump("postgres")
    assert b"CREATE TABLE public.kept" in dump
    assert b"dumped-row-7" in dump


def test_sql_errors_name_the_database_and_the_cause(private_pg: PrivateCluster) -> None:
    """A failing statement raises ClusterError with psql's message and the database's URL."""
    with pytest.raises(ClusterError, match=r"/nowhere failed: .*does not exist"):
        private_pg.sql("SELECT 1", "nowhere")
    with pytest.raises(ValueError, match="stop mode"):
        private_pg.stop("gentle")


def test_cleanup_leaves_no_process_and_no_directory() -> None:
    """cleanup() of a running cluster: every process of its data directory gone, the directory removed."""
    with PrivateCluster() as cluster:
        pids = _processes_in(cluster.data)
        assert len(pids) >= 2  # the postmaster and its background processes
        root = cluster.root
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    assert _processes_in(cluster.data) == []
    assert not root.exists()
    cluster.cleanup()  # a second cleanup (the atexit one, say) is harmless


CHILD = """
import sys, time
from tests.support.pgcluster import PrivateCluster
cluster = PrivateCluster()
cluster.start()
print(cluster.data, flush=True)
if sys.argv[1] == "hang":
    time.sleep(60)
"""


def _processes_in(data: Path) -> list[int]:
    """Pids whose working directory is data, removed or not (read here, not through the code under test)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") in (str(data), f"{data} (deleted)"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _wait_gone(data: Path, seconds: float = 10) -> list[int]:
    """Wait until no process works in data; return whatever is still there at the deadline."""
    deadline = time.monotonic() + seconds
    while (left := _processes_in(data)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize("ending", ["exit", "hang"])
def test_no_server_outlives_the_test_process(ending: str) -> None:
    """A process that forgets cleanup() (atexit does it) or is SIGKILLed (pdeathsig) leaves no server."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, ending], cwd=REPO, stdout=subprocess.PIPE, text=True)
    data = Path("")
    try:
        assert child.stdout is not None
        data = Path(child.stdout.readline().strip())
        assert data.name == "data", "the child did not start its cluster"
        if ending == "hang":
            assert _processes_in(data), "the server should be running before the kill"
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert _wait_gone(data) == []
        if ending == "exit":
            assert not data.parent.exists()
    finally:
        if child.poll() is None:
            child.kill()
        for pid in _processes_in(data) if data.name == "data" else []:
            os.kill(pid, signal.SIGKILL)
        if data.name == "data":
            shutil.rmtree(data.parent, ignore_errors=True)


def test_this_machine_can_run_a_private_cluster() -> None:
    """Where the suite is required to use PostgreSQL, a missing server is a failure, not a skip."""
    if os.environ.get("AWEBER_TEST_POSTGRES") != "require":
        pytest.skip("AWEBER_TEST_POSTGRES is not 'require'")
    assert unavailable_reason() is None
