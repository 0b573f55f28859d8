"""The database-link fault proxy (tests/survival/dbproxy.py) against a real PostgreSQL server: each way it
breaks the link, judged from the client (psycopg, or raw protocol bytes) and from the server (a second,
direct connection), never from the proxy's own account alone."""

from __future__ import annotations

import hashlib
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest

from tests.survival.dbproxy import Action, DbProxy

psycopg = pytest.importorskip("psycopg")

# How long a held call must stay blocked to count as held, and how long anything that should go through may take.
BLOCKED = 1.0
PROMPT = 5.0


class Background:
    """A call on a daemon thread, so a test can see it blocked without blocking itself."""

    started_calls: ClassVar[list[Background]] = []  # every call started, for the ``connect`` fixture's teardown

    def __init__(self, call: Callable[[], Any]) -> None:
        """Start ``call`` now."""
        Background.started_calls.append(self)
        self._call = call
        self._outcome: list[Any] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        try:
            self._outcome.append(("value", self._call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test by result()
            self._outcome.append(("error", exc))

    @property
    def running(self) -> bool:
        """Whether the call has not ended yet."""
        return self._thread.is_alive()

    def blocked_after(self, seconds: float) -> bool:
        """Wait ``seconds``; whether the call is still running then."""
        self._thread.join(seconds)
        return self._thread.is_alive()

    def result(self, timeout: float = PROMPT) -> Any:
        """The call's value (or its exception raised here) once it ends within ``timeout`` seconds."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still blocked after {timeout} s"
        kind, value = self._outcome[0]
        if kind == "error":
            raise value
        return value


Connect = Callable[[], Any]


@pytest.fixture
def proxy(pg_database: str) -> Iterator[DbProxy]:
    """A proxy to the test run's PostgreSQL server, closed after the test."""
    port = urlsplit(pg_database).port or 5432
    with DbProxy(port) as running:
        yield running


@pytest.fixture
def connect(proxy: DbProxy, pg_database: str) -> Iterator[Connect]:
    """Make psycopg connections (autocommit) to the test run's database through the proxy.

    Afterwards the proxy is closed first, which makes every call still blocked on a held connection fail,
    and the connections are closed only once no call runs: psycopg's close() under a call in progress on
    another thread crashes the process (the connection's memory is freed under it).
    """
    made: list[Any] = []
    Background.started_calls.clear()

    def make() -> Any:
        made.append(psycopg.connect(proxy.route(pg_database), autocommit=True, connect_timeout=5))
        return made[-1]

    yield make
    proxy.close()
    deadline = time.monotonic() + PROMPT
    stuck = [call for call in Background.started_calls if call.blocked_after(max(0.0, deadline - time.monotonic()))]
    Background.started_calls.clear()
    if stuck:
        pytest.fail(f"{len(stuck)} call(s) still blocked after the proxy closed; their connections are left open")
    for conn in made:
        conn.close()


@pytest.fixture
def table(pg_database: str) -> Iterator[str]:
    """A new table ``(id serial, v text)`` in the test run's database, dropped after the test."""
    name = f"dbproxy_{secrets.token_hex(6)}"
    with psycopg.connect(pg_database, autocommit=True, connect_timeout=5) as db:
        db.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, v text)")
    yield name
    with psycopg.connect(pg_database, autocommit=True, connect_timeout=5) as db:
        db.execute("SET lock_timeout = '10s'")  # a bound, should a connection left behind still hold a lock
        db.execute(f"DROP TABLE IF EXISTS {name}")


def values(url: str, table: str) -> list[str]:
    """The ``v`` column of ``table`` in insertion order, read over a direct connection (the server's view)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as db:
        return [row[0] for row in db.execute(f"SELECT v FROM {table} ORDER BY id")]  # noqa: S608 - a test table


def bounded(call: Callable[[], Any]) -> Any:
    """``call()``, failing after PROMPT seconds instead of hanging when the proxy holds what it should not."""
    return Background(call).result()


def ask(conn: Any, sql: str) -> Any:
    """The first row of ``sql`` through ``conn``, bounded client-side."""
    return bounded(lambda: conn.execute(sql).fetchone())


def insert(conn: Any, table: str, value: str) -> Any:
    """INSERT ``value`` as a literal, so the statement goes as one Query message holding ``VALUES ('value')``."""
    return conn.execute(f"INSERT INTO {table} (v) VALUES ('{value}')")  # noqa: S608 - a test table, test values


def wait_until(condition: Callable[[], bool], what: str, timeout: float = PROMPT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


# -- the protocol by hand, where the test must decide how the bytes are cut into TCP segments --

def startup_message(url: str) -> bytes:
    """PostgreSQL's StartupMessage (protocol 3.0) for ``url``'s user and database."""
    parts = urlsplit(url)
    body = struct.pack("!i", 196608) + b"user\0%s\0database\0%s\0\0" % (
        (parts.username or "postgres").encode(), parts.path.lstrip("/").encode())
    return struct.pack("!i", len(body) + 4) + body


def query_message(sql: bytes) -> bytes:
    """A simple-protocol Query message."""
    return b"Q" + struct.pack("!i", len(sql) + 5) + sql + b"\0"


def read_until_ready(sock: socket.socket, timeout: float) -> bytes:
    """What the server sent up to its ReadyForQuery (``socket.timeout`` when it stops short)."""
    sock.settimeout(timeout)
    received = b""
    while b"Z\0\0\0\x05" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {received!r}")
        received += chunk
    return received


def raw_session(proxy: DbProxy, url: str) -> socket.socket:
    """A socket through the proxy that has logged in (trust authentication) and is ready for a query."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=PROMPT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(startup_message(url))
    read_until_ready(sock, PROMPT)
    return sock


# -- hold ------------------------------------------------------------------------------------------

def test_a_held_link_blocks_a_statement_until_released(proxy: DbProxy, connect: Connect) -> None:
    """While the link is held a statement gets no answer, and once released it completes."""
    conn = connect()
    proxy.hold()
    query = Background(lambda: conn.execute("SELECT 1").fetchone())
    assert query.blocked_after(BLOCKED)
    proxy.release()
    assert query.result() == (1,)


def test_a_hold_of_answers_only_lets_the_statement_run(proxy: DbProxy, connect: Connect, pg_database: str,
                                                       table: str) -> None:
    """Holding only the server-to-client direction lets the server run a statement whose answer never comes."""
    conn = connect()
    proxy.hold("to_client")
    adding = Background(lambda: insert(conn, table, "one way"))
    wait_until(lambda: values(pg_database, table) == ["one way"], "the server ran the statement")
    assert adding.blocked_after(0.2)
    proxy.release()
    assert adding.result().rowcount == 1


def test_a_pattern_holds_that_statement_and_not_the_ones_before(proxy: DbProxy, connect: Connect, pg_database: str,
                                                                table: str) -> None:
    """A statement whose text matches is held before the server sees it, while earlier statements pass."""
    trigger = proxy.arm(b"VALUES ('second')", action="hold")
    conn = connect()
    bounded(lambda: insert(conn, table, "first"))
    assert not proxy.wait_fired(0.1)
    second = Background(lambda: insert(conn, table, "second"))
    assert second.blocked_after(BLOCKED)
    assert trigger.fired
    assert values(pg_database, table) == ["first"]
    assert proxy.seen(b"VALUES ('second')") == 1
    assert proxy.seen(b"VALUES ('second')", delivered=True) == 0
    proxy.release()
    second.result()
    assert values(pg_database, table) == ["first", "second"]


def test_a_pattern_split_between_segments_still_fires(proxy: DbProxy, pg_database: str) -> None:
    """A pattern cut in two by the TCP segments that carry it still fires, and the statement never runs."""
    sock = raw_session(proxy, pg_database)
    with sock:
        trigger = proxy.arm(b"SELECT 'split here'", action="hold")
        message = query_message(b"SELECT 'split here'")
        middle = message.index(b"split") + 2
        sock.sendall(message[:middle])
        time.sleep(0.2)  # the proxy reads the first part alone
        sock.sendall(message[middle:])
        assert trigger.wait(PROMPT)
        with pytest.raises(socket.timeout):
            read_until_ready(sock, BLOCKED)
        proxy.release()
        assert b"split here" in read_until_ready(sock, PROMPT)


@pytest.mark.parametrize("action", ["hold", "cut"])
def test_a_statement_sent_in_the_same_segment_before_the_cue_still_runs(proxy: DbProxy, pg_database: str,
                                                                         table: str, action: Action) -> None:
    """Two statements in one TCP segment: the one before the pattern reaches the server, the one carrying it not."""
    proxy.arm(b"VALUES ('second')", action=action)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=PROMPT) as sock:
        sock.sendall(startup_message(pg_database))
        read_until_ready(sock, PROMPT)
        sock.sendall(query_message(f"INSERT INTO {table} (v) VALUES ('first')".encode())  # noqa: S608 - test table
                     + query_message(f"INSERT INTO {table} (v) VALUES ('second')".encode()))  # noqa: S608
        wait_until(lambda: values(pg_database, table) != [], "the first statement ran")
        time.sleep(0.2)  # time enough for the second, had it been passed on
        assert values(pg_database, table) == ["first"]
        if action == "hold":
            proxy.release()
            wait_until(lambda: values(pg_database, table) == ["first", "second"], "the second ran once released")


def test_the_nth_sighting_fires_on_the_connection_it_was_seen_on(proxy: DbProxy, connect: Connect) -> None:
    """The trigger counts sightings over all connections and cuts only the one carrying the nth."""
    proxy.arm(b"SELECT 'counted'", nth=3, action="cut")
    first, second = connect(), connect()
    assert ask(first, "SELECT 'counted'") == ("counted",)
    assert ask(first, "SELECT 'counted'") == ("counted",)
    with pytest.raises(psycopg.OperationalError):
        ask(second, "SELECT 'counted'")
    assert ask(first, "SELECT 'counted'") == ("counted",)
    assert ask(first, "SELECT 2") == (2,)


def test_a_hold_on_every_connection_also_holds_new_ones(proxy: DbProxy, connect: Connect) -> None:
    """A cue on one connection with scope "all" holds every open connection and those made afterwards."""
    proxy.arm(b"SELECT 'everyone'", action="hold", scope="all")
    cue, other = connect(), connect()
    held = [
        Background(lambda: cue.execute("SELECT 'everyone'").fetchone()),
        Background(lambda: other.execute("SELECT 'other'").fetchone()),
    ]
    assert proxy.wait_fired(PROMPT)

    def connect_and_select() -> Any:
        return connect().execute("SELECT 'new'").fetchone()

    held.append(Background(connect_and_select))
    time.sleep(BLOCKED)
    assert [call.running for call in held] == [True, True, True]
    proxy.release()
    assert [call.result() for call in held] == [("everyone",), ("other",), ("new",)]


def test_after_bytes_passes_exactly_that_many(proxy: DbProxy, pg_database: str) -> None:
    """With ``after_bytes`` N the server gets the first N bytes of the stream and no more until released."""
    startup = startup_message(pg_database)
    proxy.arm(after_bytes=8, action="hold")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=PROMPT) as sock:
        sock.sendall(startup)
        with pytest.raises(socket.timeout):
            read_until_ready(sock, BLOCKED)
        assert proxy.seen(startup[:8], delivered=True) == 1
        assert proxy.seen(startup[:9], delivered=True) == 0
        proxy.release()
        assert read_until_ready(sock, PROMPT).startswith(b"R")  # authentication, then ReadyForQuery


# -- the statement forwarded, the answer not ---------------------------------------------------------

def test_forward_runs_the_statement_and_holds_its_answer(proxy: DbProxy, connect: Connect, pg_database: str,
                                                         table: str) -> None:
    """With ``forward=True`` the server runs and commits the statement while its answer waits in the proxy."""
    trigger = proxy.arm(b"VALUES ('acted')", action="hold", forward=True)
    conn = connect()
    adding = Background(lambda: insert(conn, table, "acted"))
    assert trigger.wait(PROMPT)
    assert values(pg_database, table) == ["acted"]
    assert adding.blocked_after(BLOCKED)
    proxy.release()
    assert adding.result().rowcount == 1


def test_forward_then_cut_commits_but_the_client_sees_a_lost_connection(proxy: DbProxy, connect: Connect,
                                                                        pg_database: str, table: str) -> None:
    """A forwarded statement cut at its answer is committed by the server while the client gets an error."""
    proxy.arm(b"VALUES ('lost answer')", action="cut", forward=True)
    conn = connect()
    with pytest.raises(psycopg.OperationalError):
        bounded(lambda: insert(conn, table, "lost answer"))
    assert conn.broken
    assert values(pg_database, table) == ["lost answer"]


# -- cut -------------------------------------------------------------------------------------------

def test_a_cut_fails_the_clients_next_statement(proxy: DbProxy, connect: Connect) -> None:
    """After a cut psycopg raises OperationalError and marks the connection broken, and a new one works."""
    conn = connect()
    assert ask(conn, "SELECT 1") == (1,)
    assert proxy.open_connections() == 1
    proxy.cut_all()
    assert proxy.open_connections() == 0
    with pytest.raises(psycopg.OperationalError):
        ask(conn, "SELECT 1")
    assert conn.broken
    assert ask(connect(), "SELECT 1") == (1,)
    assert (proxy.accepted, proxy.open_connections()) == (2, 1)


@pytest.mark.parametrize("rst", [False, True])
def test_a_cut_closes_with_a_fin_or_a_reset(proxy: DbProxy, pg_database: str, rst: bool) -> None:
    """A cut ends the client's stream with a FIN, or with a RST when asked."""
    with raw_session(proxy, pg_database) as sock:
        proxy.cut_all(rst=rst)
        sock.settimeout(PROMPT)
        if rst:
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
        else:
            assert sock.recv(1) == b""


# -- pause -----------------------------------------------------------------------------------------

def test_a_pause_delivers_a_large_statement_whole_and_in_order_afterwards(proxy: DbProxy, connect: Connect,
                                                                          pg_database: str, table: str) -> None:
    """A statement sent during a pause, larger than the proxy buffers, arrives intact once the pause ends."""
    payload = secrets.token_hex(1_500_000)  # 3 MB: many reads, and more than the proxy keeps before pushing back
    conn = connect()
    proxy.pause(1.0)
    adding = Background(lambda: insert(conn, table, payload))
    assert adding.blocked_after(0.5)
    assert values(pg_database, table) == []
    adding.result()
    assert time.monotonic() - adding.started >= 1.0
    with psycopg.connect(pg_database, autocommit=True, connect_timeout=5) as db:
        stored = db.execute(f"SELECT md5(v) FROM {table}").fetchone()  # noqa: S608 - a test table
    assert stored == (hashlib.md5(payload.encode()).hexdigest(),)  # noqa: S324 - a checksum, as the server's


def test_a_pause_on_a_pattern_delays_only_that_statement(proxy: DbProxy, connect: Connect) -> None:
    """A pause cued by a statement delays it for the given seconds and then lets it complete."""
    proxy.arm(b"SELECT 'later'", action="pause", seconds=1.0)
    conn = connect()
    started = time.monotonic()
    assert ask(conn, "SELECT 'now'") == ("now",)
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    assert ask(conn, "SELECT 'later'") == ("later",)
    assert 1.0 <= time.monotonic() - started < PROMPT


# -- refuse ----------------------------------------------------------------------------------------

def test_refusing_fails_new_connections_until_accepting_again(proxy: DbProxy, connect: Connect) -> None:
    """While refusing, connecting fails (refused, or reset) and open connections go on; afterwards it works."""
    before = connect()
    proxy.refuse()
    with pytest.raises(psycopg.OperationalError, match="refused"):
        connect()
    proxy.refuse(reset=True)
    with pytest.raises(psycopg.OperationalError, match=r"reset|closed the connection"):  # which: a matter of timing
        connect()
    assert ask(before, "SELECT 'still open'") == ("still open",)
    proxy.refuse(False)
    assert ask(connect(), "SELECT 1") == (1,)


def test_a_cut_that_refuses_leaves_no_way_back(proxy: DbProxy, connect: Connect) -> None:
    """A cue with ``refuse=True`` cuts the connection and refuses the reconnection that follows at once."""
    proxy.arm(b"SELECT 'last'", action="cut", refuse=True)
    conn = connect()
    with pytest.raises(psycopg.OperationalError):
        ask(conn, "SELECT 'last'")
    with pytest.raises(psycopg.OperationalError, match="refused"):
        connect()


# -- close -----------------------------------------------------------------------------------------

def test_closing_the_proxy_ends_held_connections_and_its_thread(pg_database: str) -> None:
    """Closing the proxy closes a held connection (the client gets an error) and stops the proxy's thread."""
    proxy = DbProxy(urlsplit(pg_database).port or 5432)
    conn = psycopg.connect(proxy.route(pg_database), autocommit=True, connect_timeout=5)
    proxy.hold()
    query = Background(lambda: conn.execute("SELECT 1"))
    assert query.blocked_after(0.3)
    proxy.close()
    with pytest.raises(psycopg.OperationalError):
        query.result()
    conn.close()  # only now: closing under the call would crash
    assert not [thread for thread in threading.enumerate() if thread.name == f"dbproxy-{proxy.port}"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=PROMPT).close()
    with pytest.raises(RuntimeError):
        proxy.hold()
