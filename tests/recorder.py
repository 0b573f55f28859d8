"""A loopback HTTP server for tests that records every request and answers with queued statuses.

The monitoring ping and the Pushgateway tests each receive the job's requests with one of these.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    """One request as it arrived."""

    method: str
    path: str  # with its query
    headers: dict[str, str]
    body: str


@contextmanager
def recording_server(on_request: Callable[[Request], int], *, body: bytes = b"") -> Iterator[ThreadingHTTPServer]:
    """Serve on 127.0.0.1 until the block ends; each request goes to ``on_request``, whose status is sent."""

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            text = self.rfile.read(length).decode("utf-8") if length else ""
            status = on_request(Request(self.command, self.path, dict(self.headers), text))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

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
