"""The AWeber REST client that tasks get: pacing, retries, refresh-on-401, pagination (docs/design.md §6).

One ``requests`` session, passed in. Every request carries the ``Authorization`` header its token
source gives (a bearer token, or a legacy OAuth 1.0a signature), asks for JSON, has connect and
read timeouts, and is paced so that at most ``rate_limit_per_minute`` requests fall in any rolling
window. The credentials go only to the scheme, host and port of
the API base URL: a link in a response that points anywhere else is refused before anything is
sent. Collections are walked page by page through ``next_collection_link`` as a generator.

Quirks, from docs/aweber-api.md: AWeber's rate limit answers HTTP 403 (not 429) with
``error.message`` "Rate Limit Error" and no Retry-After, and blocks the account for 60 s; two
other 403s ("not accepting requests", "cannot be processed" at this time) ask for a retry with
exponential backoff and get the same retries as a 5xx; the rest (suspended account, missing
permission) must not be retried. An expired or disconnected access token answers 401, in RFC
6750's shape rather than the error envelope.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import requests
import urllib3

from job import progress
from job.api.pacing import DEFAULT_WINDOW_SECONDS, Pacer, account_of
from job.api.pages import CollectionWalk
from job.config import format_duration
from job.errors import ApiError, AuthError, JobError, RunTimeoutError, TemporaryError, shorten
from job.retries import call_with_retries, parse_retry_after
from job.shutdown import Interrupted, Shutdown

if TYPE_CHECKING:
    from job.config import Settings

log = logging.getLogger(__name__)

# A page of 100 subscribers is about 100 KB; anything near this is not an AWeber answer.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# Only the error envelope is wanted from a refusal; the rest of a large body is not read.
MAX_ERROR_BODY_BYTES = 64 * 1024
# Statuses worth another try besides 5xx: request timeout, and 429 should AWeber ever send it.
TRANSIENT_STATUSES = frozenset({408, 429})
# The words of AWeber's 403s that ask to be retried with backoff (see is_retry_later_answer).
_RETRY_LATER_PHRASES = ("not accepting requests at this time", "cannot be processed at this time")
_READ_CHUNK_BYTES = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}

REAUTHORIZE_HINT = "authorize again: aweber-job login"


class TokenSource(Protocol):
    """Where the client gets each request's authorization; :class:`job.run.keeper.TokenKeeper` is one."""

    def authorize(
        self, method: str, url: str, params: Mapping[str, str | int] | None, *, leeway_seconds: float
    ) -> dict[str, str]:
        """Return the ``Authorization`` header for this request: a bearer token good for
        ``leeway_seconds`` more (refreshed and saved if needed), or an OAuth 1.0a signature."""
        ...

    def refresh(self, reason: str) -> object:
        """Refresh now, whatever the expiry says (after a 401); AuthError when there is no way to."""
        ...


class _Unauthorized(JobError):
    """The API answered 401; handled by :meth:`ApiClient._get_json` (refresh once, then AuthError)."""

    exit_code = AuthError.exit_code

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class _NotRetried(JobError):
    """Carries an error from the token source through the retry loop so it is not retried twice."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.error = error


Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin:
    """Return ``(scheme, host, port)`` of an absolute URL, lower-cased, with the default port filled in.

    Raises ValueError for a URL without a host or with a bad port.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("no host")
    port = parts.port
    if port is None:
        port = _DEFAULT_PORTS.get(scheme, 0)
    return scheme, host, port


def format_origin(origin: Origin) -> str:
    """``scheme://host:port``, with IPv6 hosts in brackets."""
    scheme, host, port = origin
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    """The error's kind and message from either of AWeber's error bodies, when the body is one.

    The REST API's envelope ``{"error": {"type", "message", ...}}`` gives ``error.type`` and
    ``error.message``; the token layer's RFC 6750 answer to an expired or unknown access token,
    ``{"error": "invalid_token", "error_description": "..."}``, gives the code and the description
    (docs/aweber-api.md). Both are shortened to one line.
    """
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, None
    error = value.get("error") if isinstance(value, dict) else None
    kind: object
    message: object
    if isinstance(error, str) and isinstance(value, dict):
        kind, message = error, value.get("error_description")
    elif isinstance(error, dict):
        kind, message = error.get("type"), error.get("message")
    else:
        return None, None
    return (
        shorten(kind, 60) if isinstance(kind, str) and kind else None,
        shorten(message) if isinstance(message, str) and message else None,
    )


def _describe(status: int, kind: str | None, message: str | None) -> str:
    text = f"HTTP {status}"
    if kind:
        text += f" {kind}"
    if message:
        text += f": {message}"
    return text


def is_rate_limit_answer(status: int, message: str | None) -> bool:
    """Whether an answer is AWeber's rate-limit refusal: 403 whose message says "rate limit" (KB-RATE)."""
    return status == 403 and message is not None and "rate limit" in message.lower()


def is_retry_later_answer(status: int, message: str | None) -> bool:
    """Whether an answer is one of AWeber's 403s that say to try again using an exponential backoff.

    "This account is not accepting requests at this time" and "Your request cannot be processed at
    this time" (AWeber's Troubleshooting section, docs/aweber-api.md); matched on those words, not
    the exact text.
    """
    if status != 403 or message is None:
        return False
    words = " ".join(message.lower().split())
    return any(phrase in words for phrase in _RETRY_LATER_PHRASES)


class ApiClient:
    """The AWeber API through one session: paced, retried, refreshed, origin-locked, time-limited.

    ``requests_made`` counts HTTP requests actually sent; ``rate_limited`` counts 403 "Rate Limit
    Error" answers received; ``pacing_wait_seconds`` is the time spent waiting for the pacer (the
    metrics show both, so a limit set too low, or shared with another integration, is visible).
    With ``run_timeout_seconds``, nothing runs past ``run_started`` (the
    monotonic time the run began; default: now) plus that many seconds: no request is sent, no
    wait (pacing, rate limit, retry backoff) is begun that would end later, connect and read
    timeouts are cut to the time left, and an answer still arriving then is abandoned. Any of these
    raises RunTimeoutError.
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        base_url: str,
        tokens: TokenSource,
        rate_limit_per_minute: int,
        refresh_leeway_seconds: float,
        timeout_seconds: float,
        retry_deadline_seconds: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        run_timeout_seconds: float | None = None,
        run_started: float | None = None,
        pacer: Pacer | None = None,
        stop: threading.Event | None = None,
        pacer_for: Callable[[str], Pacer] | None = None,
        shutdown: Shutdown | None = None,
    ) -> None:
        if rate_limit_per_minute < 1:
            raise ValueError("rate_limit_per_minute must be at least 1")
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        parts = urlsplit(base_url)
        if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL with a host")
        self._session = session
        self._origin = origin_of(base_url)
        self._base_url = base_url.rstrip("/")
        self._base_path = parts.path.rstrip("/")
        self._tokens = tokens
        self._rate_limit = rate_limit_per_minute
        self._leeway_seconds = refresh_leeway_seconds
        self._timeout_seconds = timeout_seconds
        self._deadline_seconds = retry_deadline_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._window_seconds = window_seconds
        self._run_timeout_seconds = run_timeout_seconds
        # The run's time limit as an instant on the monotonic clock (None: no limit).
        self._run_deadline: float | None = None
        if run_timeout_seconds is not None:
            self._run_deadline = (monotonic() if run_started is None else run_started) + run_timeout_seconds
        self.pacer = pacer if pacer is not None else Pacer(rate_limit_per_minute, window_seconds, monotonic)
        # The pacer of each AWeber account, shared with the other connections of a fleet run: a request
        # under /accounts/<id> counts against that account's limit; any other against ``pacer``.
        self._pacer_for = pacer_for
        # Set when the whole run is asked to stop (SIGTERM during run --all): every request and wait
        # ends as the run's time limit would end it, so the task saves its state and the lease is freed.
        self._stop = shutdown.event if shutdown is not None else stop
        # A GET in the main thread is cut short by a stop signal itself (its answer can be given up).
        self._shutdown = shutdown
        self.requests_made = 0
        self.rate_limited = 0
        self.pacing_wait_seconds = 0.0
        self._server_date: datetime | None = None

    # ---- public -------------------------------------------------------------------------------

    @property
    def server_date(self) -> datetime | None:
        """The ``Date`` of the latest API answer that carried one (UTC, whole seconds); None before.

        The server's clock, for what must not depend on the local one: a watermark is never moved
        past it, and a first run looks back from it when the local clock is ahead.
        """
        return self._server_date

    @classmethod
    def from_settings(
        cls, session: requests.Session, settings: Settings, tokens: TokenSource, **options: Any
    ) -> ApiClient:
        """A client configured as the settings say (URL, rate limit, leeway, timeouts, run time limit);
        ``options`` adds the clock seams, the run's start or a scaled rate-limit window."""
        options.setdefault("run_timeout_seconds", settings.run_timeout_seconds)
        return cls(
            session,
            base_url=settings.api_url,
            tokens=tokens,
            rate_limit_per_minute=settings.rate_limit_per_minute,
            refresh_leeway_seconds=settings.refresh_leeway_seconds,
            timeout_seconds=settings.http_timeout_seconds,
            retry_deadline_seconds=settings.retry_deadline_seconds,
            **options,
        )

    def get(self, url_or_path: str, params: Mapping[str, str | int] | None = None) -> Any:
        """GET a resource and return its JSON.

        Raises ApiError (refused, or not JSON), AuthError (401 after a refresh), TemporaryError
        (network, 5xx or rate limit after retries), or the token source's errors.
        """
        return self._get_json(self.resolve(url_or_path), params)

    def walk(
        self, url_or_path: str, params: Mapping[str, str | int] | None = None, *, overlap: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Yield the entries of a collection, page after page through ``next_collection_link``.

        With ``overlap`` each next page is asked from one entry earlier, and must begin with the last
        entry of the page before (by id); it is not yielded twice. Pages are addressed by offset, so an
        entry that leaves (or joins) the collection before the offset between two requests shifts every
        later one by a place, and one would be skipped unseen: the walk then raises
        CollectionShiftedError, for the caller to read on from what it has. This costs one request in
        every 99 pages.

        The first request asks for ``ws.size=100`` unless ``params`` or the URL set it. Only one
        page is held at a time. A next link is not trusted to keep what the walk asked for: every
        parameter of the first request (``ws.op``, filters, sort...) is sent again with the link's
        ``ws.start``/``ws.size``, so pages stay those of the same find. Raises as :meth:`get`, and
        ApiError for a page that is not a collection or a next link whose ``ws.start`` does not move
        forward (a loop, or a walk that would never end); errors name the path, never the query.
        """
        url = self.resolve(url_or_path)
        path = self._path(url)
        walk = CollectionWalk(url, params, path, overlap=overlap)
        page = self._get_json(url, walk.query)
        while True:
            for entry in walk.entries(page):
                if not isinstance(entry, dict):
                    raise ApiError(f"GET {path}: a collection entry is not an object")
                walk.last_id = entry.get("id")
                yield entry
            following = walk.next_url(page, self.resolve)
            if following is None:
                return
            # Only one page is held at a time.
            del page
            page = self._get_json(following, None)

    def resolve(self, url_or_path: str) -> str:
        """An absolute URL on the API's own origin; ApiError for any other origin, before anything is sent.

        A relative path is joined to the base URL (``lists`` and ``/lists`` both go under it; a path
        that already starts with the base path, such as ``/1.0/accounts``, is taken as it is).
        """
        parts = urlsplit(url_or_path)
        if parts.scheme or parts.netloc:
            try:
                origin = origin_of(url_or_path)
            except ValueError:
                raise ApiError("refusing to send the token to a URL without a valid host") from None
            if parts.username is not None or parts.password is not None:
                raise ApiError("refusing a URL with credentials in it") from None
            if origin != self._origin:
                raise ApiError(f"refusing to send the token to {shorten(format_origin(origin), 120)}")
            return url_or_path.split("#", 1)[0]
        path = url_or_path.split("#", 1)[0]
        if self._base_path and (path == self._base_path or path.startswith(self._base_path + "/")):
            return format_origin(self._origin) + path
        return f"{self._base_url}/{path.lstrip('/')}"

    # ---- one GET with its retries and its one refresh ----------------------------------------

    def _get_json(self, url: str, params: Mapping[str, str | int] | None) -> Any:
        path = self._path(url)
        refreshed = False
        while True:
            try:
                return call_with_retries(
                    lambda: self._attempt(url, params),
                    deadline_seconds=self._deadline_seconds,
                    what=f"GET {path}",
                    clock=self._monotonic,
                    sleep=lambda seconds: self._wait(seconds, f"waiting to retry GET {path}"),
                )
            except _NotRetried as carried:
                raise carried.error from carried.error.__cause__
            except _Unauthorized as refused:
                if refreshed:
                    raise AuthError(
                        f"the API answered 401 to GET {path} again after a refresh ({refused.detail}): "
                        "the account may have disconnected this integration",
                        hint=REAUTHORIZE_HINT,
                    ) from None
                log.info("the API answered 401 to GET %s (%s)", path, refused.detail)
                try:
                    self._tokens.refresh("the API answered 401")
                except AuthError as exc:
                    # Refused, or nothing to refresh (legacy OAuth 1.0a): say which request was refused.
                    raise AuthError(
                        f"the API answered 401 to GET {path} ({refused.detail}); {exc.message}", hint=exc.hint
                    ) from None
                refreshed = True

    def _attempt(self, url: str, params: Mapping[str, str | int] | None) -> Any:
        """Send one GET and classify the answer; raise what the retry policy needs to see."""
        path = self._path(url)
        self._check_run_time(f"before GET {path}")
        try:
            authorization = self._tokens.authorize("GET", url, params, leeway_seconds=self._leeway_seconds)
        except JobError as exc:
            # The token endpoint's own retries are done; do not repeat them here.
            raise _NotRetried(exc) from exc
        pacer = self._pacer_of(path)
        self._pace(path, pacer)
        try:
            self._check_run_time(f"before GET {path}")
            headers = {**authorization, "Accept": "application/json"}
            self.requests_made += 1
            status, response_headers, body = self._send(url, params, headers, path)
        finally:
            pacer.give_back()
            progress.current().update(requests=self.requests_made)
        log.debug("GET %s -> HTTP %d (%d bytes)", path, status, len(body))
        if 200 <= status < 300:
            if len(body) > MAX_ANSWER_BYTES:
                raise ApiError(f"GET {path}: the answer is larger than {MAX_ANSWER_BYTES} bytes", status=status)
            try:
                return json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise ApiError(f"GET {path}: HTTP {status}, but the answer is not JSON", status=status) from None
        kind, message = _error_fields(body)
        detail = _describe(status, kind, message)
        if 300 <= status < 400:
            raise ApiError(f"GET {path}: HTTP {status} redirect, not followed", status=status)
        if status == 401:
            raise _Unauthorized(f"GET {path}: {detail}", detail)
        if is_rate_limit_answer(status, message):
            self.rate_limited += 1
            raise TemporaryError(
                f"GET {path}: AWeber's rate limit was reached ({detail})",
                hint="the job paces itself to AWEBER_RATE_LIMIT; another integration may share the account's limit",
                retry_after_seconds=self._window_seconds,
            )
        if is_retry_later_answer(status, message):
            raise TemporaryError(f"GET {path}: AWeber asks to try again later ({detail})")
        if status >= 500 or status in TRANSIENT_STATUSES:
            retry_after = parse_retry_after(response_headers.get("Retry-After"), self._clock())
            raise TemporaryError(f"GET {path}: the API is unavailable ({detail})", retry_after_seconds=retry_after)
        raise ApiError(f"GET {path}: the API refused the request ({detail})", status=status, error_type=kind)

    def _send(
        self, url: str, params: Mapping[str, str | int] | None, headers: dict[str, str], path: str
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One GET on the wire; transport failures become TemporaryError (retried: a GET is safe to repeat).

        RunTimeoutError instead when the run's time limit is what cut the request short.
        """
        timeout_seconds = self._timeout_seconds
        left = self._run_seconds_left()
        if left is not None:
            timeout_seconds = max(0.001, min(timeout_seconds, left))
        interruptible = self._shutdown.interruptible() if self._shutdown is not None else contextlib.nullcontext()
        try:
            with interruptible:
                return self._get(url, params, headers, path, timeout_seconds)
        except Interrupted:
            raise self._out_of_run_time(f"waiting for the answer to GET {path}") or RunTimeoutError(
                f"the run was asked to stop, waiting for the answer to GET {path}") from None

    def _get(
        self, url: str, params: Mapping[str, str | int] | None, headers: dict[str, str], path: str,
        timeout_seconds: float,
    ) -> tuple[int, Mapping[str, str], bytes]:
        try:
            response = self._session.get(
                url,
                params=dict(params) if params else None,
                headers=headers,
                timeout=(timeout_seconds, timeout_seconds),
                allow_redirects=False,
                stream=True,
            )
        except requests.exceptions.RequestException as exc:
            out_of_time = self._out_of_run_time(f"waiting for the answer to GET {path}")
            if out_of_time is not None:
                raise out_of_time from None
            if isinstance(exc, requests.exceptions.Timeout):
                raise TemporaryError(f"GET {path}: the API did not answer in time") from None
            if isinstance(exc, requests.exceptions.ConnectionError):
                raise TemporaryError(f"GET {path}: could not reach the API ({type(exc).__name__})") from None
            raise ApiError(f"GET {path}: the request could not be made ({type(exc).__name__})") from None
        self._note_server_date(response.headers.get("Date"))
        try:
            limit = MAX_ANSWER_BYTES if 200 <= response.status_code < 300 else MAX_ERROR_BODY_BYTES
            body = self._read_body(response, limit, path)
        except (urllib3.exceptions.ReadTimeoutError, requests.exceptions.Timeout, TimeoutError):
            out_of_time = self._out_of_run_time(f"reading the answer to GET {path}")
            if out_of_time is not None:
                raise out_of_time from None
            raise TemporaryError(
                f"GET {path}: the API stopped sending its answer for more than {self._timeout_seconds:g} s"
            ) from None
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, HTTPException, OSError) as exc:
            raise TemporaryError(f"GET {path}: the answer was cut off ({type(exc).__name__})") from None
        finally:
            response.close()
        return response.status_code, response.headers, body

    def _read_body(self, response: requests.Response, limit: int, path: str) -> bytes:
        """Read the body as it arrives, at most ``limit + 1`` bytes.

        The read timeout bounds each wait for the next bytes, not the whole body: a slow answer that
        keeps coming is read to its end (it is an answer, and asking again would only repeat it),
        unless the run's time limit comes first (RunTimeoutError), which is what ends a drip that
        would never finish.
        """
        raw = response.raw
        # urllib3 2's read1 returns whatever has arrived; read(n) would wait for n bytes.
        read = getattr(raw, "read1", None) or raw.read
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            self._check_run_time(f"reading the answer to GET {path}")
            chunk = read(_READ_CHUNK_BYTES, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def _note_server_date(self, value: str | None) -> None:
        """Remember an answer's ``Date`` header; one that does not parse is ignored."""
        if not value:
            return
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return
        if when.tzinfo is None:  # "-0000": UTC, offset unknown (RFC 5322)
            when = when.replace(tzinfo=timezone.utc)
        self._server_date = when.astimezone(timezone.utc)

    # ---- pacing -------------------------------------------------------------------------------

    def _pacer_of(self, path: str) -> Pacer:
        """The pacer a request to ``path`` counts against: its account's when shared, else this client's."""
        if self._pacer_for is not None:
            account = account_of(path[len(self._base_path):] if path.startswith(self._base_path) else path)
            if account is not None:
                return self._pacer_for(account)
        return self.pacer

    def _pace(self, path: str, pacer: Pacer) -> None:
        """Wait until the pacer has a slot for one more request (see :class:`Pacer`), and take it."""
        while True:
            wait_seconds = pacer.try_take()
            if wait_seconds <= 0:
                return
            log.debug("pacing: waiting %.2f s to stay within %d requests per %.0f s",
                      wait_seconds, pacer.limit, pacer.window_seconds)
            self._wait(wait_seconds, f"pacing before GET {path}")
            self.pacing_wait_seconds += wait_seconds

    # ---- the run's time limit -----------------------------------------------------------------

    def _run_seconds_left(self) -> float | None:
        return None if self._run_deadline is None else self._run_deadline - self._monotonic()

    def _out_of_run_time(self, doing: str, wait_seconds: float = 0.0) -> RunTimeoutError | None:
        """The error to raise if the run's time is up, or would be before ``wait_seconds`` pass; else None."""
        if self._stop is not None and self._stop.is_set():
            reason = (self._shutdown.reason if self._shutdown is not None else None) or "SIGTERM"
            return RunTimeoutError(f"the run was asked to stop ({reason}), {doing}")
        left = self._run_seconds_left()
        if left is None or (left > 0 and wait_seconds <= left):
            return None
        limit = format_duration(self._run_timeout_seconds or 0.0)
        return RunTimeoutError(f"the run reached its time limit, AWEBER_RUN_TIMEOUT ({limit}), {doing}")

    def _check_run_time(self, doing: str, wait_seconds: float = 0.0) -> None:
        """Raise RunTimeoutError if the run's time is up, or would be before ``wait_seconds`` pass."""
        error = self._out_of_run_time(doing, wait_seconds)
        if error is not None:
            raise error

    def _wait(self, seconds: float, doing: str) -> None:
        """Sleep ``seconds``, unless that would end past the run's time limit (RunTimeoutError, unslept)."""
        self._check_run_time(doing, seconds)
        if seconds >= 1 and self._stop is None:
            live = progress.current()
            live.waiting(seconds, doing)
            try:
                self._sleep(seconds)
            finally:
                live.done_waiting()
            return
        if self._stop is not None:
            # A stop request ends the wait at once; the check after it says why.
            if self._stop.wait(seconds):
                self._check_run_time(doing)
            return
        self._sleep(seconds)

    def _path(self, url: str) -> str:
        """The URL's path for messages: no query (it may hold filters such as an email address)."""
        return shorten(urlsplit(url).path or "/", 120)
