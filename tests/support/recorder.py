"""A loopback HTTP server for tests that records every request and answers with queued statuses.

The monitoring ping and the Pushgateway tests, and the survival suite's secrets scan, each receive the job's
requests with one of these.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    """One request as it arrived."""

    method: str
    path: str  # with its query
    headers: dict[str, str]
    body: str  # decoded as UTF-8, undecodable bytes replaced
    raw: bytes = b""  # the body exactly as it arrived


@contextmanager
def recording_server(on_request: Callable[[Request], int], *, body: bytes | Callable[[], bytes] = b"",
                     content_type: str | None = None) -> Iterator[ThreadingHTTPServer]:
    """Serve on 127.0.0.1 until the block ends; each request goes to ``on_request``, whose status is sent with
    ``body`` (or what ``body()`` returns at that moment)."""

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            text = raw.decode("utf-8", errors="replace")
            status = on_request(Request(self.command, self.path, dict(self.headers), text, raw))
            answer = body() if callable(body) else body
            self.send_response(status)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if answer and self.command != "HEAD":
                self.wfile.write(answer)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


CHECK_PATH = "/ping/5f1c9a2e-0b7d-4c1e-9f5e-2d8a7b3c6e41"


@dataclass
class Ping:
    """One request the ping receiver saw."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: str
    raw: bytes = b""


@dataclass
class PingReceiver:
    """A healthchecks-like receiver on loopback that records every request."""

    server: ThreadingHTTPServer
    pings: list[Ping] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{CHECK_PATH}"

    def kinds(self) -> list[str]:
        """Each ping's path relative to the check: "start", "", "fail", ..."""
        return [p.path[len(CHECK_PATH):].lstrip("/") for p in self.pings]


@contextmanager
def ping_receiver() -> Iterator[PingReceiver]:
    """A ping receiver that answers 200 OK (or the statuses queued in ``statuses``) until the block ends."""
    holder: list[PingReceiver] = []

    def record(request: Request) -> int:
        rec = holder[0]
        parts = urlsplit(request.path)
        rec.pings.append(Ping(request.method, parts.path, parse_qs(parts.query), request.headers, request.body,
                              request.raw))
        return rec.statuses.pop(0) if rec.statuses else 200

    with recording_server(record, body=b"OK") as server:
        holder.append(PingReceiver(server))
        yield holder[0]
