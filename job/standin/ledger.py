"""Request counters and the request log: what tests and benchmarks read back after a run.

Neither ever holds a token, secret, authorization code or PKCE verifier: requests are described
by kind, label, grant type and *how* the client authenticated, and sensitive query values are
replaced by ``"<redacted>"``. A refresh request's log entry names the refresh token it presented by
its fingerprint (the first 8 hex digits of its SHA-256), so a test can count how often one token
was sent.

``stats()`` returns (all keys always present, JSON-serialisable)::

    {
      "requests_total": 12,        # every request except /_control/ ones
      "rate_limited": 1,           # 403 "Rate Limit Error" answers from the rate limit itself
      "dropped": 1,                # connections closed without a (complete) answer
      "token":     {"refresh_token:200": 3, "refresh_token:400:invalid_grant": 1},
      "authorize": {"authorize:302": 1},
      "revoke":    {"revoke:200": 1},
      "api":       {"GET accounts:200": 1, "GET find:200": 4, "GET find:403:ForbiddenError": 1},
      "other":     {"GET other:404:NotFoundError": 1},
      "faults":    {"drop=after": 1, "status=503+retry_after": 2},
    }

A counter key is ``<label>:<status>[:<error>][:lost]``: ``label`` is the grant type at the token
endpoint, ``authorize``/``revoke``, or ``<METHOD> <resource>`` for the API (resources:
``accounts``, ``account``, ``lists``, ``find_lists``, ``list``, ``subscribers``, ``find``,
``subscriber``, ``other``); ``error`` is the OAuth error code or AWeber error type; ``:lost`` marks
an answer that was produced but not delivered whole (``drop="after"`` or ``truncate``).
A connection dropped before processing counts as ``<label>:dropped``.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter, deque
from dataclasses import dataclass

from job.standin.messages import Request

KINDS = ("token", "authorize", "revoke", "api", "other")

# Query parameters whose values are secrets or one-time credentials.
SENSITIVE_KEYS = frozenset({"code", "code_verifier", "access_token", "refresh_token", "client_secret", "token"})

# Enough for long benchmark runs without growing without bound.
MAX_LOG_ENTRIES = 100_000

_GRANT_LABEL_CHARS = 40
_API_RESOURCES = (
    (re.compile(r"/1\.0/accounts/?"), "accounts"),
    (re.compile(r"/1\.0/accounts/[^/]+"), "account"),
    (re.compile(r"/1\.0/accounts/[^/]+/lists/?"), "lists"),
    (re.compile(r"/1\.0/accounts/[^/]+/lists/[^/]+"), "list"),
    (re.compile(r"/1\.0/accounts/[^/]+/lists/[^/]+/subscribers/?"), "subscribers"),
    (re.compile(r"/1\.0/accounts/[^/]+/lists/[^/]+/subscribers/[^/]+"), "subscriber"),
)


@dataclass(frozen=True)
class Description:
    """How a request is named in the counters and the log."""

    kind: str
    label: str
    grant_type: str | None = None
    client_auth: str | None = None
    refresh_token_fingerprint: str | None = None


def describe(request: Request) -> Description:
    """Name a request by endpoint kind and label, without looking at any secret."""
    path = request.path
    if path in ("/oauth2/token", "/oauth2/revoke"):
        form = dict(request.form_pairs())
        auth = _client_auth(request, form)
        if path == "/oauth2/revoke":
            return Description("revoke", "revoke", None, auth)
        grant = form.get("grant_type") or "-"
        presented = form.get("refresh_token")
        return Description(
            "token", grant[:_GRANT_LABEL_CHARS], grant[:_GRANT_LABEL_CHARS], auth,
            token_fingerprint(presented) if presented else None,
        )
    if path == "/oauth2/authorize":
        return Description("authorize", "authorize")
    if path == "/1.0" or path.startswith("/1.0/"):
        return Description("api", f"{request.method} {_api_resource(request)}")
    return Description("other", f"{request.method} other")


def token_fingerprint(token: str) -> str:
    """The first 8 hex digits of the SHA-256 of ``token``: enough to tell tokens apart, never the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _client_auth(request: Request, form: dict[str, str]) -> str:
    if (request.header("authorization") or "").lower().startswith("basic "):
        return "basic"
    if "client_secret" in form:
        return "body"
    if "client_id" in form:
        return "public"
    return "none"


def _api_resource(request: Request) -> str:
    for pattern, name in _API_RESOURCES:
        if pattern.fullmatch(request.path):
            if request.query_value("ws.op") == "find" and name in ("lists", "subscribers"):
                return "find_lists" if name == "lists" else "find"
            return name
    return "other"


class Ledger:
    """Thread-safe counters and log of the requests a stand-in has seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._total = 0
        self._rate_limited = 0
        self._dropped = 0
        self._counts: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
        self._faults: Counter[str] = Counter()
        self._log: deque[dict[str, object]] = deque(maxlen=MAX_LOG_ENTRIES)

    def record(
        self,
        request: Request,
        description: Description,
        *,
        status: int | None,
        error: str | None,
        fault: str | None,
        outcome: str,
        time: float,
    ) -> None:
        """Count one request. ``outcome`` is ``answered``, ``dropped_before``, ``dropped_after`` or ``truncated``."""
        if outcome == "dropped_before":
            key = f"{description.label}:dropped"
        else:
            key = f"{description.label}:{status}"
            if error:
                key += f":{error}"
            if outcome in ("dropped_after", "truncated"):
                key += ":lost"
        entry: dict[str, object] = {
            "time": time,
            "method": request.method,
            "path": request.path,
            "query": _redacted_query(request),
            "kind": description.kind,
            "label": description.label,
            "status": status if outcome != "dropped_before" else None,
            "error": error,
            "grant_type": description.grant_type,
            "client_auth": description.client_auth,
            "refresh_token_fingerprint": description.refresh_token_fingerprint,
            "fault": fault,
            "outcome": outcome,
        }
        with self._lock:
            self._total += 1
            self._counts[description.kind][key] += 1
            if fault is not None:
                self._faults[fault] += 1
            if outcome != "answered":
                self._dropped += 1
            self._log.append(entry)

    def note_rate_limited(self) -> None:
        """Count one "Rate Limit Error" answer."""
        with self._lock:
            self._rate_limited += 1

    def stats(self) -> dict[str, object]:
        """Return the counters (see the module docstring for the structure)."""
        with self._lock:
            result: dict[str, object] = {
                "requests_total": self._total,
                "rate_limited": self._rate_limited,
                "dropped": self._dropped,
            }
            for kind in KINDS:
                result[kind] = dict(sorted(self._counts[kind].items()))
            result["faults"] = dict(sorted(self._faults.items()))
            return result

    def request_log(self) -> list[dict[str, object]]:
        """Return the logged requests, oldest first (copies)."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    def reset(self) -> None:
        """Zero the counters and empty the log."""
        with self._lock:
            self._reset()


def _redacted_query(request: Request) -> dict[str, str]:
    return {key: "<redacted>" if key in SENSITIVE_KEYS else value for key, value in request.query}
