"""A loopback TCP proxy between job processes and a PostgreSQL server that breaks the database link on cue.

A test points the job's store URL at the proxy (:meth:`DbProxy.route`) and makes the link misbehave the way
a network or a server does, without touching the server itself:

- **hold**: stop forwarding, in one or both directions, closing nothing (a half-open connection, a
  partition, a paused server): the bytes wait in the proxy until :meth:`DbProxy.release`, or until the
  proxy is closed (then both sides are closed, the held bytes dropped);
- **cut**: close both sides at once (a FIN, or a RST with ``rst=True``), dropping what waits;
- **pause**: hold for some seconds, then forward everything that waited, in order;
- **refuse**: new connections are refused (``ECONNREFUSED``; the port stays reserved) or accepted and reset
  at once, until accepted again.

The cue (a :class:`Trigger`, made by :meth:`DbProxy.arm`) is one of: at once; a byte pattern seen for the
``nth`` time in one direction (counted over every connection since the trigger was armed; matched across
reads through a rolling window, so a statement split between TCP segments still matches); or ``after_bytes``
bytes in one direction of one connection (counted from when the trigger was armed). The action hits the
connection the cue was seen on (``scope="connection"``) or every connection (``scope="all"``: a hold or a
pause then also catches connections made while it lasts).

Where the cut falls: with a pattern, everything from the pattern's first byte still in the proxy is held or
dropped, so the message carrying it never arrives whole (the server never runs the statement) while what
came before it, even in the same TCP segment, goes on; with ``after_bytes``, the first N bytes pass. With
``forward=True`` the bytes carrying the cue flow on, and the action starts at the first bytes that come back
the other way: the server acted, the client never hears (PostgreSQL answers a statement once it has run it,
committed in autocommit; only a NOTICE or a result larger than its output buffer comes earlier).

The SQL text of a statement is in clear in PostgreSQL's Query and Parse messages as long as the link is not
encrypted, which :meth:`DbProxy.route` sees to (``sslmode=disable``, ``gssencmode=disable``). psycopg sends a
statement without parameters as one Query, one with parameters as Parse/Bind/Execute (placeholders as
``$1``); once the same SQL has run ``prepare_threshold`` times on one connection (5 by default) psycopg
prepares it, and from the 7th run on sends only its name: a pattern no longer sees it there.

What a hold cannot imitate: the proxy's kernel acknowledges every byte it reads, so for the client the link
is a server that stopped answering, never a host that vanished; TCP keepalives and ``tcp_user_timeout`` on
the client do not fire, and only a timeout of the client's own (psycopg's ``connect_timeout`` bounds the
whole login) ends the wait.

One thread per proxy moves every byte (non-blocking sockets and a selector); control calls from the test's
thread are handed to it and wait for it. Everything binds 127.0.0.1. With ``PgJob`` (tests/survival/pg.py),
whose ``store init`` has gone to the server directly::

    with DbProxy(pg_server.cluster.port) as proxy:
        job.url = proxy.route(job.url)  # every later process of this job goes through the proxy
        trigger = proxy.arm(b"UPDATE aweber_job.connections SET tokens", action="hold")
        started = job.start(["run"])
        assert trigger.wait(20)
        ...
        proxy.release()
"""

from __future__ import annotations

import contextlib
import math
import queue
import selectors
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Literal, TypeVar

Direction = Literal["to_server", "to_client"]
Sides = Literal["to_server", "to_client", "both"]
Action = Literal["hold", "cut", "pause"]
Scope = Literal["connection", "all"]

DIRECTIONS: tuple[Direction, Direction] = ("to_server", "to_client")
CHUNK = 65536
# Bytes waiting in one direction of one connection before the proxy stops reading that side (the sender's
# kernel buffers fill, as with a real stalled peer).
BUFFER_LIMIT = 1 << 20
# Bytes of each stream kept for seen(); a pattern after that many bytes of one stream is not counted.
TRANSCRIPT_LIMIT = 8 << 20
# The longest pattern a trigger can watch for: the rolling window per direction holds one byte fewer.
MAX_PATTERN = 4096
# The longest the proxy's thread sleeps when nothing happens, so it notices being closed.
TICK = 0.5
# How long a control call waits for the proxy's thread, and connecting to the server may take.
CALL_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0

T = TypeVar("T")


class Trigger:
    """One armed cue and its action; :meth:`wait` blocks until it has fired."""

    def __init__(self, *, pattern: bytes | None, after_bytes: int | None, nth: int, direction: Direction,
                 action: Action, sides: Sides, scope: Scope, forward: bool, seconds: float, rst: bool,
                 refuse: bool) -> None:
        """A trigger as :meth:`DbProxy.arm` describes it; it fires at most once."""
        self.pattern = pattern
        self.after_bytes = after_bytes
        self.nth = nth
        self.direction: Direction = direction
        self.action: Action = action
        self.sides: Sides = sides
        self.scope: Scope = scope
        self.forward = forward
        self.seconds = seconds
        self.rst = rst
        self.refuse = refuse
        self.matches = 0  # times the pattern was seen since arming
        self.connection: int | None = None  # the number of the connection it fired on (None: at once)
        self._bytes: dict[int, int] = {}  # after_bytes: bytes seen per connection since arming
        self._primed = False  # forward=True: the cue passed, the action waits for the answer
        self._fired = threading.Event()

    @property
    def fired(self) -> bool:
        """Whether the action has been applied."""
        return self._fired.is_set()

    @property
    def pending(self) -> bool:
        """Whether the cue is still being watched for (neither fired nor waiting for an answer)."""
        return not self._fired.is_set() and not self._primed

    def wait(self, timeout: float) -> bool:
        """Block until the trigger has fired or ``timeout`` seconds passed; whether it fired."""
        return self._fired.wait(timeout)


class _Pipe:
    """One direction of one connection: bytes read from ``source`` wait here until written to ``dest``."""

    def __init__(self, direction: Direction, source: socket.socket, dest: socket.socket) -> None:
        """An empty, flowing pipe."""
        self.direction: Direction = direction
        self.source = source
        self.dest = dest
        self.out = bytearray()  # free to go, in order
        self.held = bytearray()  # arrived while held; goes after ``out`` once released
        self.hold_until: float | None = None  # held while not None (math.inf: until released)
        self.eof: Literal["fin", "rst"] | None = None  # how the source ended, once it has
        self.eof_passed = False  # the end was passed on to ``dest``
        self.sent = 0  # bytes written to ``dest``
        self.transcript = bytearray()  # the first TRANSCRIPT_LIMIT bytes read, for seen()
        self.window = b""  # the last MAX_PATTERN - 1 bytes read, for patterns split between reads

    def admit(self, data: bytes) -> None:
        """Queue bytes read from the source: held when the pipe is held, else free to go."""
        (self.held if self.hold_until is not None else self.out).extend(data)

    def hold(self, until: float) -> None:
        """Hold what arrives from now until ``until`` (monotonic seconds; a longer hold already set wins)."""
        self.hold_until = until if self.hold_until is None else max(self.hold_until, until)

    def release(self) -> None:
        """Let what was held go, in order, and what arrives from now."""
        self.hold_until = None
        self.out.extend(self.held)
        self.held.clear()

    def waiting(self) -> int:
        """Bytes in the proxy for this direction."""
        return len(self.out) + len(self.held)


class _Link:
    """One client connection and the proxy's connection to the server for it."""

    def __init__(self, number: int, client: socket.socket, server: socket.socket) -> None:
        """Both sockets connected and non-blocking."""
        self.number = number
        self.client = client
        self.server = server
        self.pipes: dict[Direction, _Pipe] = {
            "to_server": _Pipe("to_server", client, server),
            "to_client": _Pipe("to_client", server, client),
        }
        self.primed: list[Trigger] = []  # forward=True triggers waiting for the answer on this connection
        self.closed = False


def _count(data: bytes | bytearray, pattern: bytes) -> int:
    """Occurrences of ``pattern`` in ``data``, overlapping ones each counted."""
    count, at = 0, data.find(pattern)
    while at >= 0:
        count, at = count + 1, data.find(pattern, at + 1)
    return count


def _close(sock: socket.socket, *, rst: bool) -> None:
    """Close a socket, with a RST instead of a FIN when ``rst`` (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class DbProxy:
    """A TCP proxy on 127.0.0.1 to a server on 127.0.0.1, breaking the link on cue (see the module docstring)."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        """Listen on a free port of 127.0.0.1 and forward every connection to ``upstream_host:upstream_port``."""
        self.upstream = (upstream_host, upstream_port)
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        # Bound to the same port, never listening: keeps the port ours while refusing (SO_REUSEPORT, same user).
        self._reserve = self._bind(self.port)
        self._refusing: Literal["refuse", "reset"] | None = None
        self._links: list[_Link] = []  # every connection ever made, closed ones kept for seen()
        self._triggers: list[Trigger] = []
        self._new_holds: dict[Direction, float] = {}  # holds of scope "all": new connections get them too
        self._registered: dict[socket.socket, int] = {}
        self._calls: queue.SimpleQueue[tuple[Callable[[], object], list[object], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._closing = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self.accepted = 0  # connections accepted and forwarded so far
        self._thread = threading.Thread(target=self._loop, name=f"dbproxy-{self.port}", daemon=True)
        self._thread.start()

    # -- the test's side ---------------------------------------------------------------------------

    def __enter__(self) -> DbProxy:
        """The proxy itself; it is closed on leaving the block."""
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Close the proxy."""
        self.close()

    def route(self, url: str) -> str:
        """``url`` (``postgresql://…``) pointed at the proxy, with TLS and GSS encryption off so patterns can match."""
        parts = urllib.parse.urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        query = [(key, value) for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
                 if key not in ("sslmode", "gssencmode", "host", "hostaddr", "port")]
        query += [("sslmode", "disable"), ("gssencmode", "disable")]
        return urllib.parse.urlunsplit((parts.scheme, f"{userinfo}{at}127.0.0.1:{self.port}", parts.path,
                                        urllib.parse.urlencode(query), parts.fragment))

    def arm(self, pattern: bytes | None = None, *, after_bytes: int | None = None, nth: int = 1,
            direction: Direction = "to_server", action: Action = "hold", sides: Sides = "both",
            scope: Scope = "connection", forward: bool = False, seconds: float = 0.0, rst: bool = False,
            refuse: bool = False) -> Trigger:
        """Watch ``direction`` for the cue (none: at once, on every connection) and then act; return the trigger.

        ``pattern``: fires the ``nth`` time it is seen (all connections counted). ``after_bytes``: fires in
        the connection whose stream has carried that many bytes since arming. ``action``: "hold" (until
        :meth:`release`), "pause" (``seconds``, then everything flows on) or "cut" (``rst``: with a RST).
        ``sides``: the directions a hold or pause stops. ``forward``: the cue passes and the action starts
        with the first bytes back the other way. ``refuse``: also refuse new connections from then on.
        """
        if pattern is not None and after_bytes is not None:
            raise ValueError("a trigger watches for a pattern or a byte count, not both")
        if pattern is not None and not 0 < len(pattern) <= MAX_PATTERN:
            raise ValueError(f"a pattern has 1 to {MAX_PATTERN} bytes")
        if after_bytes is not None and after_bytes < 0:
            raise ValueError("after_bytes cannot be negative")
        if nth < 1:
            raise ValueError("nth counts from 1")
        if action == "pause" and seconds <= 0:
            raise ValueError("a pause needs seconds > 0")
        if forward and pattern is None and after_bytes is None:
            raise ValueError("forward=True needs a cue to forward")
        trigger = Trigger(pattern=pattern, after_bytes=after_bytes, nth=nth, direction=direction, action=action,
                          sides=sides, scope=scope, forward=forward, seconds=seconds, rst=rst, refuse=refuse)

        def add() -> None:
            if pattern is None and after_bytes is None:
                self._fire(trigger, None)
            else:
                self._triggers.append(trigger)

        self._call(add)
        return trigger

    def hold(self, sides: Sides = "both") -> Trigger:
        """Hold every connection, and every new one, in ``sides`` at once, until :meth:`release`."""
        return self.arm(action="hold", sides=sides)

    def pause(self, seconds: float, sides: Sides = "both") -> Trigger:
        """Hold every connection, and every new one, in ``sides`` for ``seconds``, then let everything flow."""
        return self.arm(action="pause", seconds=seconds, sides=sides)

    def cut_all(self, *, rst: bool = False) -> Trigger:
        """Close both sides of every open connection at once (with a RST when ``rst``)."""
        return self.arm(action="cut", rst=rst)

    def release(self) -> None:
        """End every hold and pause: what waited is forwarded, in order; triggers still armed stay armed."""
        def release() -> None:
            self._new_holds.clear()
            for link in self._open_links():
                for pipe in link.pipes.values():
                    pipe.release()
                self._settle(link)

        self._call(release)

    def refuse(self, on: bool = True, *, reset: bool = False) -> None:
        """Refuse new connections (``reset``: accept and reset each at once) while ``on``; accept again when not."""
        self._call(lambda: self._set_refusing(("reset" if reset else "refuse") if on else None))

    def seen(self, pattern: bytes, direction: Direction = "to_server", *, delivered: bool = False) -> int:
        """Times ``pattern`` came in ``direction`` over all connections (``delivered``: and was passed on)."""
        def count() -> int:
            total = 0
            for link in self._links:
                pipe = link.pipes[direction]
                total += _count(pipe.transcript[:pipe.sent] if delivered else pipe.transcript, pattern)
            return total

        return self._call(count)

    def open_connections(self) -> int:
        """Connections through the proxy not yet closed."""
        return self._call(lambda: len(self._open_links()))

    def wait_fired(self, timeout: float) -> bool:
        """Block until every trigger armed so far has fired, or ``timeout`` seconds passed; whether all fired."""
        deadline = time.monotonic() + timeout
        return all(trigger.wait(max(0.0, deadline - time.monotonic())) for trigger in list(self._triggers))

    def close(self) -> None:
        """Close every connection (both sides, held bytes dropped) and the listener; stop the thread."""
        self._closing = True
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(CALL_TIMEOUT)

    # -- plumbing -------------------------------------------------------------------------------------

    def _call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the proxy's thread and return what it returns (or raise what it raised)."""
        if self._closing or not self._thread.is_alive():
            raise RuntimeError("the proxy is closed")
        result: list[object] = []
        done = threading.Event()
        self._calls.put((function, result, done))
        self._wake()
        if not done.wait(CALL_TIMEOUT):
            raise TimeoutError("the proxy's thread did not answer")
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]  # type: ignore[return-value]

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake is pending anyway) or closed (the loop ended)
            self._wake_w.send(b"!")

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    def _listen(self, port: int) -> socket.socket:
        sock = self._bind(port)
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def _set_refusing(self, mode: Literal["refuse", "reset"] | None) -> None:
        """Stop or start listening: while refusing outright, no socket listens on the port."""
        self._refusing = mode
        if mode == "refuse" and self._listener is not None:
            self._selector.unregister(self._listener)
            _close(self._listener, rst=False)
            self._listener = None
        elif mode != "refuse" and self._listener is None:
            self._listener = self._listen(self.port)
            self._selector.register(self._listener, selectors.EVENT_READ, None)

    def _open_links(self) -> list[_Link]:
        return [link for link in self._links if not link.closed]

    # -- the proxy's thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        """Move bytes until closed; every wait is bounded by TICK or the next end of a pause."""
        try:
            while not self._closing:
                for key, mask in self._selector.select(self._next_wake()):
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif key.fileobj is self._listener:
                        self._accept()
                    elif isinstance(key.data, _Link) and not key.data.closed:
                        self._on_ready(key.data, key.fileobj, mask)  # type: ignore[arg-type]
                self._run_calls()
                self._expire()
        finally:
            for link in self._open_links():
                self._cut(link, rst=False)
            for sock in (self._listener, self._reserve, self._wake_r, self._wake_w):
                if sock is not None:
                    _close(sock, rst=False)
            self._selector.close()
            while not self._calls.empty():  # a call that raced with close(): let its caller go
                _, result, done = self._calls.get()
                result.append(RuntimeError("the proxy is closed"))
                done.set()

    def _next_wake(self) -> float:
        """Seconds until the nearest end of a pause, at most TICK."""
        ends = [pipe.hold_until for link in self._open_links() for pipe in link.pipes.values()
                if pipe.hold_until is not None]
        ends += self._new_holds.values()
        return max(0.0, min([TICK, *(end - time.monotonic() for end in ends)]))

    def _run_calls(self) -> None:
        while not self._calls.empty():
            function, result, done = self._calls.get()
            try:
                result.append(function())
            except Exception as exc:  # noqa: BLE001 - handed to the caller, which raises it
                result.append(exc)
            done.set()

    def _expire(self) -> None:
        """End the pauses whose time is up."""
        now = time.monotonic()
        for direction, end in list(self._new_holds.items()):
            if end <= now:
                del self._new_holds[direction]
        for link in self._open_links():
            expired = [pipe for pipe in link.pipes.values() if pipe.hold_until is not None and pipe.hold_until <= now]
            for pipe in expired:
                pipe.release()
            if expired:
                self._settle(link)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except OSError:  # the client gave up before it was accepted
            return
        if self._refusing == "reset":
            _close(client, rst=True)
            return
        try:
            server = socket.create_connection(self.upstream, timeout=CONNECT_TIMEOUT)
        except OSError:  # the server is down: the client sees its connection reset
            _close(client, rst=True)
            return
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.accepted += 1
        link = _Link(len(self._links) + 1, client, server)
        self._links.append(link)
        for direction, end in self._new_holds.items():
            link.pipes[direction].hold(end)
        self._settle(link)

    def _on_ready(self, link: _Link, sock: socket.socket, mask: int) -> None:
        """Write what may go to ``sock``, read what it sent, then pass on ends and update interest."""
        outgoing = link.pipes["to_client" if sock is link.client else "to_server"]
        incoming = link.pipes["to_server" if sock is link.client else "to_client"]
        if mask & selectors.EVENT_WRITE:
            self._flush(link, outgoing)
        if mask & selectors.EVENT_READ and not link.closed:
            try:
                data = sock.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:  # reset by the peer (or another failure, which ends the connection the same way)
                incoming.eof = "rst"
                data = None
            if data == b"":
                incoming.eof = "fin"
            elif data:
                self._on_data(link, incoming, data)
        self._settle(link)

    def _on_data(self, link: _Link, pipe: _Pipe, data: bytes) -> None:
        """Record, match and queue bytes read for ``pipe``; fire what they cue, where they cue it."""
        if len(pipe.transcript) < TRANSCRIPT_LIMIT:
            pipe.transcript.extend(data[:TRANSCRIPT_LIMIT - len(pipe.transcript)])
        answered = [trigger for trigger in link.primed if trigger.direction != pipe.direction]
        for trigger in answered:  # the answer to a forwarded cue: the action starts before its first byte
            link.primed.remove(trigger)
            self._fire(trigger, link)
            if link.closed:
                return
        cues = sorted(self._match(link, pipe, data), key=lambda cue: cue[0])
        pipe.window = (pipe.window + data)[-(MAX_PATTERN - 1):]
        start = 0
        for split, trigger in cues:
            if trigger.forward:
                trigger._primed = True
                link.primed.append(trigger)
                continue
            pipe.admit(data[start:split])
            start = split
            self._flush(link, pipe)  # what came before the cue goes before the action (a cut drops what waits)
            self._fire(trigger, link)
            if link.closed:
                return
        pipe.admit(data[start:])

    def _match(self, link: _Link, pipe: _Pipe, data: bytes) -> Iterable[tuple[int, Trigger]]:
        """The triggers ``data`` fires, each with the offset in ``data`` where its action starts."""
        for trigger in self._triggers:
            if not trigger.pending or trigger.direction != pipe.direction:
                continue
            if trigger.pattern is not None:
                buffer = pipe.window + data
                at = buffer.find(trigger.pattern)
                while at >= 0:
                    if at + len(trigger.pattern) > len(pipe.window):  # ends in the new bytes: not counted before
                        trigger.matches += 1
                        if trigger.matches == trigger.nth:
                            yield max(0, at - len(pipe.window)), trigger
                            break
                    at = buffer.find(trigger.pattern, at + 1)
            elif trigger.after_bytes is not None:
                before = trigger._bytes.get(link.number, 0)
                trigger._bytes[link.number] = before + len(data)
                if before + len(data) >= trigger.after_bytes:
                    yield max(0, trigger.after_bytes - before), trigger

    def _fire(self, trigger: Trigger, link: _Link | None) -> None:
        """Apply ``trigger``'s action to ``link`` (or to every connection) and mark it fired."""
        trigger.connection = None if link is None else link.number
        if trigger.refuse:  # first: a client that sees the cut must find the door already shut
            self._set_refusing("refuse")
        targets = self._open_links() if link is None or trigger.scope == "all" else [link]
        if trigger.action == "cut":
            for target in targets:
                self._cut(target, rst=trigger.rst)
        else:
            end = math.inf if trigger.action == "hold" else time.monotonic() + trigger.seconds
            sides = DIRECTIONS if trigger.sides == "both" else (trigger.sides,)
            for target in targets:
                for direction in sides:
                    target.pipes[direction].hold(end)
            if link is None or trigger.scope == "all":
                for direction in sides:
                    self._new_holds[direction] = max(self._new_holds.get(direction, end), end)
        trigger._fired.set()

    def _flush(self, link: _Link, pipe: _Pipe) -> None:
        """Write what is free to go in ``pipe`` as far as the destination takes it."""
        while pipe.out and not link.closed:
            try:
                written = pipe.dest.send(pipe.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the destination is gone: so is the connection
                self._cut(link, rst=True)
                return
            del pipe.out[:written]
            pipe.sent += written

    def _settle(self, link: _Link) -> None:
        """Flush both directions, pass on ends that are due, close the connection once both ended."""
        for pipe in link.pipes.values():
            self._flush(link, pipe)
            if link.closed:
                return
            if pipe.eof is not None and not pipe.eof_passed and pipe.hold_until is None and not pipe.waiting():
                if pipe.eof == "rst":  # a reset cannot be passed on half-way: the whole connection goes
                    self._cut(link, rst=True)
                    return
                with contextlib.suppress(OSError):
                    pipe.dest.shutdown(socket.SHUT_WR)
                pipe.eof_passed = True
        if all(pipe.eof_passed for pipe in link.pipes.values()):
            self._cut(link, rst=False)
            return
        for sock, incoming, outgoing in ((link.client, link.pipes["to_server"], link.pipes["to_client"]),
                                         (link.server, link.pipes["to_client"], link.pipes["to_server"])):
            events = 0
            if incoming.eof is None and incoming.waiting() < BUFFER_LIMIT:
                events |= selectors.EVENT_READ
            if outgoing.out:
                events |= selectors.EVENT_WRITE
            self._interest(sock, events, link)

    def _interest(self, sock: socket.socket, events: int, link: _Link) -> None:
        """Register, change or drop what the selector watches ``sock`` for."""
        current = self._registered.get(sock, 0)
        if events == current:
            return
        if not events:
            self._selector.unregister(sock)
            del self._registered[sock]
        elif not current:
            self._selector.register(sock, events, link)
            self._registered[sock] = events
        else:
            self._selector.modify(sock, events, link)
            self._registered[sock] = events

    def _cut(self, link: _Link, *, rst: bool) -> None:
        """Close both sides of ``link`` and drop what waits in it."""
        link.closed = True
        link.primed.clear()
        for sock in (link.client, link.server):
            if self._registered.pop(sock, 0):
                self._selector.unregister(sock)
            _close(sock, rst=rst)
        for pipe in link.pipes.values():
            pipe.out.clear()
            pipe.held.clear()
