"""The stand-in AWeber as a loopback HTTP/1.1 server: request handling, faults on the wire, lifecycle.

Every request except ``/_control/`` ones goes through the same steps: read it whole, name it
for the ledger, take the next matching fault, wait (``request_delay_seconds`` plus the fault's
delay), then either drop the connection, send the fault's answer, or process the request and
deliver the real answer (possibly dripped, truncated or lost on purpose). Each request is counted
before its answer leaves, so whoever has read an answer finds the request in the counters.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from job.standin.api import DEFAULT_FILTER_DAY_OFFSET_HOURS, Api, ApiBehaviour
from job.standin.endpoints import Endpoints
from job.standin.faults import Fault, FaultQueue
from job.standin.ledger import Description, Ledger, describe
from job.standin.messages import Answer, Request, envelope, oauth_error
from job.standin.oauth import handle_authorize, handle_revoke, handle_token
from job.standin.oauth1 import OAuth1Grant, OAuth1Registry
from job.standin.ratelimit import RateLimiter
from job.standin.state import (
    DEFAULT_ACCESS_TOKEN_LIFETIME_SECONDS,
    DEFAULT_CLIENTS,
    DEFAULT_SCOPE,
    Account,
    State,
)
from job.standin.subscribers import SubscriberList

MAX_REQUEST_BODY_BYTES = 1024 * 1024
# An idle keep-alive connection is closed after this long, so handler threads do not pile up.
IDLE_CONNECTION_SECONDS = 120.0
DEFAULT_LIST_SPAN_SECONDS = 30 * 86_400
# What answers ``/_control/`` requests in process mode: given the stand-in, the request and the
# client's host. A hook rather than an import, so the control plane stays out of the package.
ControlHandler = Callable[["StandIn", Request, str], Answer]


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that remembers its open connections so stop() can cut them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], standin: StandIn) -> None:
        self.standin = standin
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """Shut down every open connection, so idle keep-alive clients cannot reach a stopped server."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the other side


class _Handler(BaseHTTPRequestHandler):
    """Turns one HTTP request into a :class:`Request`, and an :class:`Answer` into bytes."""

    protocol_version = "HTTP/1.1"
    server_version = "AWeberStandIn/1.0"
    # Headers and body go out in separate sends; with Nagle's algorithm the body would wait for the
    # client's delayed ACK (40 ms on Linux) on every keep-alive request. Real servers do not stall so.
    disable_nagle_algorithm = True
    timeout = IDLE_CONNECTION_SECONDS
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes the whole request line, query included; see _log_line instead.
        return

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header follows the injected clock, so tests can simulate clock skew.
        return formatdate(self.server.standin.clock() if timestamp is None else timestamp, usegmt=True)

    def _serve(self) -> None:
        standin = self.server.standin
        request = self._read_request()
        if request is None:
            return
        if request.path.startswith("/_control/"):
            if standin.control_handler is not None:
                self._send(standin.control_handler(standin, request, self.client_address[0]))
            else:
                self._send(envelope(404, "Not Found", "NotFoundError"))
            return

        description = describe(request)
        fault = standin.faults.take(request.path)
        delay = standin.request_delay_seconds + (fault.delay_seconds if fault else 0.0)
        if delay:
            time.sleep(delay)
        if fault is not None and fault.drop == "before":
            self._finish(request, description, fault, None, "dropped_before")
            self.close_connection = True
            return

        if fault is not None and fault.replaces_answer():
            answer = fault.canned_answer(description.kind)
        else:
            answer = standin.answer(request, description)
            if fault is not None and description.kind == "token":
                answer = fault.disguise(answer)
        if fault is not None and fault.retry_after is not None:
            answer = dataclasses.replace(answer, headers=(*answer.headers, ("Retry-After", fault.retry_after)))

        if fault is not None and fault.drop == "after":
            self._finish(request, description, fault, answer, "dropped_after")
            self.close_connection = True
            return
        truncate = fault is not None and fault.truncate
        drip_seconds = fault.drip_seconds if fault is not None else 0.0
        # Counted before sending, so a client that has its answer always finds it in stats().
        self._finish(request, description, fault, answer, "truncated" if truncate else "answered")
        self._send(answer, truncate=truncate, drip_seconds=drip_seconds)

    def _read_request(self) -> Request | None:
        """Read the body and return the request, or answer 4xx/5xx and return None."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            self._send(envelope(411, "A Content-Length is required."))
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_REQUEST_BODY_BYTES:
            self.close_connection = True
            self._send(envelope(413, "Request body too large or Content-Length invalid."))
            return None
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        return Request(
            method=self.command,
            path=parts.path or "/",
            query=tuple(parse_qsl(parts.query, keep_blank_values=True)),
            headers=headers,
            body=body,
        )

    def _send(self, answer: Answer, *, truncate: bool = False, drip_seconds: float = 0.0) -> None:
        length = answer.body_length()
        try:
            self.send_response(answer.status)
            if answer.content_type is not None:
                self.send_header("Content-Type", answer.content_type)
            for name, value in answer.headers:
                self.send_header(name, value)
            # A truncated answer still announces the whole body: the client sees it end early.
            self.send_header("Content-Length", str(max(length, 1) if truncate else length))
            if truncate:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            budget = length // 2 if truncate else length
            for chunk in answer.chunks():
                piece = chunk[:budget]
                budget -= len(piece)
                if drip_seconds:
                    for byte_number in range(len(piece)):
                        self.wfile.write(piece[byte_number:byte_number + 1])
                        time.sleep(drip_seconds)
                elif piece:
                    self.wfile.write(piece)
                if budget <= 0:
                    break
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            # The client gave up (it may be testing its own timeouts); nothing to deliver to.
            self.close_connection = True

    def _finish(
        self,
        request: Request,
        description: Description,
        fault: Fault | None,
        answer: Answer | None,
        outcome: str,
    ) -> None:
        standin = self.server.standin
        status = answer.status if answer is not None else None
        standin.ledger.record(
            request,
            description,
            status=status,
            error=answer.error if answer is not None else None,
            fault=fault.describe() if fault is not None else None,
            outcome=outcome,
            time=standin.clock(),
        )
        if standin.verbose:
            # Method, path and status only: queries and bodies may carry codes and tokens.
            shown = "-" if status is None else str(status)
            print(f"standin: {request.method} {request.path} {shown} {outcome}", file=sys.stderr, flush=True)


class StandIn(Endpoints):
    """A stand-in AWeber on 127.0.0.1: OAuth endpoints, the REST API, faults, counters.

    ``clients`` maps client id to secret (None for a public PKCE client); by default one public
    client, ``"demo-client"``. Tokens expire by ``clock`` after ``access_token_lifetime_seconds``.
    ``rate_limit_per_minute`` API requests are admitted per account in any rolling
    ``rate_limit_window_seconds`` (None: no limit); ``request_delay_seconds`` is added to every
    request. ``verbose`` prints method, path and status of each request to stderr.
    ``control_handler``, when given, answers every ``/_control/`` request (given the stand-in, the
    request and the client's address); without it those paths do not exist. Process mode passes
    the JSON control plane (``tests/support/standin``), which the demo never needs.
    ``reuse_detection`` makes a spent refresh token, presented again, revoke its whole grant.
    ``filter_day_offset_hours``, ``exclusive_day_filters`` and ``next_links_drop_filters``, the
    :class:`ApiBehaviour` switches (also settable later with :meth:`configure_api`), choose among
    the readings of what AWeber leaves undocumented.
    """

    def __init__(
        self,
        clients: Mapping[str, str | None] | None = None,
        *,
        access_token_lifetime_seconds: int = DEFAULT_ACCESS_TOKEN_LIFETIME_SECONDS,
        rate_limit_per_minute: int | None = None,
        rate_limit_window_seconds: float = 60.0,
        request_delay_seconds: float = 0.0,
        clock: Callable[[], float] = time.time,
        verbose: bool = False,
        control_handler: ControlHandler | None = None,
        port: int = 0,
        reuse_detection: bool = False,
        filter_day_offset_hours: float = DEFAULT_FILTER_DAY_OFFSET_HOURS,
        exclusive_day_filters: bool = False,
        next_links_drop_filters: bool = False,
    ) -> None:
        if request_delay_seconds < 0:
            raise ValueError("request_delay_seconds must not be negative")
        self.clock = clock
        self.request_delay_seconds = request_delay_seconds
        self.verbose = verbose
        self.control_handler = control_handler
        self.state = State(
            DEFAULT_CLIENTS if clients is None else clients,
            access_token_lifetime_seconds=access_token_lifetime_seconds,
            clock=clock,
            reuse_detection=reuse_detection,
        )
        self.oauth1 = OAuth1Registry()
        self.api_behaviour = ApiBehaviour()
        self.api_behaviour.update(
            filter_day_offset_hours=filter_day_offset_hours,
            exclusive_day_filters=exclusive_day_filters,
            next_links_drop_filters=next_links_drop_filters,
        )
        self.faults = FaultQueue()
        self.ledger = Ledger()
        self.limiter = RateLimiter(rate_limit_per_minute, rate_limit_window_seconds)
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._api: Api | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> StandIn:
        """Bind 127.0.0.1 (an ephemeral port by default) and serve in a daemon thread; return self."""
        if self._server is not None:
            raise RuntimeError("the stand-in is already running")
        server = _Server(("127.0.0.1", self._port), self)
        self._server = server
        self._api = Api(
            self.state, self.limiter, self.ledger, self.api_url, oauth1=self.oauth1, behaviour=self.api_behaviour
        )
        self._thread = threading.Thread(
            # A short poll interval lets stop() return quickly; idle polling costs nothing measurable.
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="aweber-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.cut_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> StandIn:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (only while running)."""
        if self._server is None:
            raise RuntimeError("the stand-in is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def set_request_delay(self, seconds: float) -> None:
        """Add ``seconds`` to every later AWeber request (not the control endpoints): a slow AWeber, now."""
        if seconds < 0:
            raise ValueError("request_delay_seconds must not be negative")
        self.request_delay_seconds = float(seconds)

    # -- tokens -----------------------------------------------------------------------------------

    def issue_tokens(self, client_id: str, scope: str = DEFAULT_SCOPE) -> dict[str, object]:
        """Register a live token pair for ``client_id`` and return it like a token endpoint answer."""
        return self.state.issue_tokens(client_id, scope)

    def live_refresh_tokens(self) -> set[str]:
        """Return the refresh tokens that would currently be accepted."""
        return self.state.live_refresh_tokens()

    def issued_secrets(self) -> list[str]:
        """Return every token and code this stand-in issued, every PKCE verifier it received and every OAuth 1.0a
        secret it registered (for secret scans)."""
        return self.state.issued_secrets() + self.oauth1.secrets()

    def add_oauth1_credentials(
        self,
        consumer_key: str | None = None,
        consumer_secret: str | None = None,
        access_token: str | None = None,
        token_secret: str | None = None,
    ) -> OAuth1Grant:
        """Register legacy OAuth 1.0a credentials (missing values generated); the API then accepts
        requests they sign. ``grant.as_token_file()`` is what the job's token file would hold."""
        return self.oauth1.register(consumer_key, consumer_secret, access_token, token_secret)

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expired (401 on use); refreshing still works."""
        self.state.expire_access_tokens()

    def revoke_all_access_tokens(self, *, disconnect: bool = False) -> None:
        """Forget every access token (401 on use); with ``disconnect`` even refreshed ones get 401."""
        self.state.revoke_all_access_tokens(disconnect=disconnect)

    def disconnect(self, client_id: str | None = None) -> None:
        """Simulate the customer disconnecting the integration: refresh still works, the API answers 401."""
        self.state.disconnect(client_id)

    def reconnect(self, client_id: str | None = None) -> None:
        """Undo :meth:`disconnect`."""
        self.state.reconnect(client_id)

    def set_reuse_detection(self, enabled: bool) -> None:
        """Switch refresh-token reuse detection on or off (off by default).

        On: a spent refresh token presented again revokes its whole grant, as OAuth 2.1 servers do.
        """
        with self.state.lock:
            self.state.reuse_detection = enabled

    def reuse_stats(self) -> dict[str, int]:
        """Return how often a spent refresh token was presented, and how many grants that revoked."""
        return self.state.reuse_stats()

    # -- accounts and lists ---------------------------------------------------------------------

    def add_account(self, account_id: int, *, company: str | None = None) -> Account:
        """Add a customer account."""
        return self.state.add_account(account_id, company)

    def add_list(
        self,
        account_id: int,
        list_id: int,
        name: str = "Newsletter",
        *,
        size: int = 0,
        start: float | None = None,
        end: float | None = None,
        seed: int = 0,
    ) -> SubscriberList:
        """Add a list of ``size`` generated subscribers spread evenly over [start, end] (Unix seconds).

        ``end`` defaults to now and ``start`` to 30 days before ``end``.
        """
        end_seconds = int(self.clock() if end is None else end)
        start_seconds = int(end_seconds - DEFAULT_LIST_SPAN_SECONDS if start is None else start)
        return self.state.add_list(
            account_id, list_id, name, size=size, start=start_seconds, end=end_seconds, seed=seed
        )

    def add_subscribers(
        self, account_id: int, list_id: int, entries: Sequence[Mapping[str, object]]
    ) -> list[int]:
        """Append subscribers (``email`` required; ``name``, ``subscribed_at``, ``status``... optional).

        Returns their ids. Raises ValueError if one would be subscribed before the list's latest.
        """
        return self.state.add_subscribers(account_id, list_id, entries)

    def unsubscribe(
        self, account_id: int, list_id: int, subscriber_id: int, *, at: float | None = None,
        method: str = "unsubscribe link",
    ) -> None:
        """Unsubscribe an appended subscriber at ``at`` (Unix seconds, default now) by ``method``, as a person
        does long after joining; raises ValueError, changing nothing, when that cannot be."""
        self.state.unsubscribe(account_id, list_id, subscriber_id, at, method)

    # -- behaviour, faults and counters -----------------------------------------------------------

    def configure_api(
        self,
        *,
        filter_day_offset_hours: float | None = None,
        exclusive_day_filters: bool | None = None,
        next_links_drop_filters: bool | None = None,
    ) -> dict[str, object]:
        """Change the :class:`ApiBehaviour` switches given (None leaves one as it is); return them all.

        Raises ValueError, changing nothing, on a bad value.
        """
        self.api_behaviour.update(
            filter_day_offset_hours=filter_day_offset_hours,
            exclusive_day_filters=exclusive_day_filters,
            next_links_drop_filters=next_links_drop_filters,
        )
        return self.api_behaviour.to_json()

    def inject(self, *faults: Fault, path: str | None = None) -> None:
        """Queue faults for the next requests whose path starts with ``path`` (any path when None)."""
        self.faults.add(faults, path)

    def stats(self) -> dict[str, object]:
        """Return the request counters; see :mod:`job.standin.ledger` for the structure."""
        return self.ledger.stats()

    def request_log(self) -> list[dict[str, object]]:
        """Return one dict per request (method, path, redacted query, status, ...), oldest first."""
        return self.ledger.request_log()

    def reset_stats(self) -> None:
        """Zero the counters and empty the request log."""
        self.ledger.reset()

    # -- answering ------------------------------------------------------------------------------

    def answer(self, request: Request, description: Description) -> Answer:
        """Process a request for real and return its answer."""
        try:
            if description.kind == "token":
                return handle_token(self.state, request)
            if description.kind == "authorize":
                return handle_authorize(self.state, request)
            if description.kind == "revoke":
                return handle_revoke(self.state, request)
            if description.kind == "api":
                if self._api is None:
                    raise RuntimeError("the stand-in is not running")
                return self._api.handle(request)
            return envelope(404, "Not Found", "NotFoundError")
        except Exception as error:  # noqa: BLE001 - a bug here must become a 500, not a hung client
            # Type and frames only: an exception's message could quote a token or a code.
            frames = "".join(traceback.format_tb(error.__traceback__))
            print(f"standin: internal error {type(error).__name__}\n{frames}", file=sys.stderr, flush=True)
            if description.kind in ("token", "authorize", "revoke"):
                return oauth_error(500, "server_error", "An internal server error has occurred")
            return envelope(500)
