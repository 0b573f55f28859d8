"""Faults to inject: one queued misbehaviour per request, for testing a client's error handling.

A fault either *replaces* the answer (``status`` set: the request is not processed at all, so no
token is rotated) or *disturbs the delivery* of the real answer (``drop="after"``, ``drip_seconds``,
``truncate``, ``retry_after``, ``delay_seconds``: the request is processed as usual first).
``drop="before"`` closes the connection before anything is processed. ``odd_answer`` processes the
request too, then answers the token request with one of the odd bodies of
:mod:`job.standin.odd_answers` built around the real new grant.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Literal

from job.standin.messages import Answer, envelope, oauth_error
from job.standin.odd_answers import ODD_ANSWERS, odd_body

OAUTH_KINDS = frozenset({"token", "revoke", "authorize"})

# AWeber's 403 messages that say to try again using an exponential backoff (its Troubleshooting
# section; docs/aweber-api.md), unlike "Rate Limit Error" (wait 60 s) and the other 403s (do not
# retry). Inject them as ``Fault(status=403, message=...)``.
RETRY_LATER_403_MESSAGES = (
    "This account is not accepting requests at this time",
    "Your request cannot be processed at this time",
)


@dataclass(frozen=True)
class Fault:
    """One misbehaviour for one request. Every field is optional; unset fields change nothing.

    Answer replacement (requires ``status``; at most one body field):

    - ``status``: answer with this HTTP status without processing the request. With no body
      field, an OAuth endpoint answers an RFC 6749 body (``server_error`` for 5xx,
      ``temporarily_unavailable`` for 503, ``invalid_request`` otherwise) and the API an
      AWeber envelope.
    - ``oauth_error``: the RFC 6749 ``error`` code to send, e.g. ``"invalid_grant"``.
    - ``envelope``: send AWeber's ``{"error": {...}}`` envelope even on an OAuth endpoint.
    - ``message``: the envelope ``message`` or the RFC 6749 ``error_description``.
    - ``body``: these raw bytes as the body (garbage, HTML, half a JSON document...).
    - ``body_size``: a body of this many bytes, generated while sending (e.g. 50 MB).
    - ``content_type``: the Content-Type for ``body``/``body_size`` (default application/json).

    Delivery (also valid without ``status``, then applied to the real answer):

    - ``retry_after``: a ``Retry-After`` header value, sent as given.
    - ``delay_seconds``: wait this long before processing/answering.
    - ``drop="before"``: close the connection without processing the request or answering.
    - ``drop="after"``: process the request fully (a refresh token IS rotated), then close the
      connection without answering: the lost answer.
    - ``drip_seconds``: send the body one byte at a time, pausing this long between bytes.
    - ``truncate``: announce the full Content-Length, send only the first half of the body, close.
    - ``odd_answer``: at the token endpoint, process the request fully (a refresh token IS rotated),
      then replace a 200 answer's body by the odd answer of that name (a key of
      :data:`job.standin.odd_answers.ODD_ANSWERS`) built around the new grant. Other answers (an
      ``invalid_grant``, say) and other endpoints are left as they are.
    """

    status: int | None = None
    oauth_error: str | None = None
    envelope: bool = False
    message: str | None = None
    body: bytes | None = None
    body_size: int | None = None
    content_type: str | None = None
    retry_after: str | None = None
    delay_seconds: float = 0.0
    drop: Literal["before", "after"] | None = None
    drip_seconds: float = 0.0
    truncate: bool = False
    odd_answer: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status}")
        body_fields = [
            name for name, used in (
                ("oauth_error", self.oauth_error is not None),
                ("envelope", self.envelope),
                ("body", self.body is not None),
                ("body_size", self.body_size is not None),
            ) if used
        ]
        if len(body_fields) > 1:
            raise ValueError(f"choose one body field, got {', '.join(body_fields)}")
        if (body_fields or self.message is not None) and self.status is None:
            raise ValueError("a body field or message needs a status")
        if self.content_type is not None and self.body is None and self.body_size is None:
            raise ValueError("content_type applies to body or body_size only")
        if self.body_size is not None and self.body_size < 0:
            raise ValueError("body_size must not be negative")
        if self.delay_seconds < 0 or self.drip_seconds < 0:
            raise ValueError("delay_seconds and drip_seconds must not be negative")
        if self.drop not in (None, "before", "after"):
            raise ValueError('drop is "before", "after" or None')
        if self.drop is not None and (self.status is not None or self.drip_seconds or self.truncate):
            raise ValueError("a dropped connection sends nothing: drop excludes status, drip and truncate")
        if self.odd_answer is not None:
            if self.odd_answer not in ODD_ANSWERS:
                raise ValueError(f"unknown odd answer {self.odd_answer!r}")
            if self.status is not None or self.drop is not None:
                raise ValueError("odd_answer changes the real answer: it excludes status and drop")

    def replaces_answer(self) -> bool:
        """Return whether the request is answered by this fault instead of being processed."""
        return self.status is not None

    def describe(self) -> str:
        """Return a short label for counters and the log, e.g. ``status=503+retry_after``."""
        parts = []
        if self.drop is not None:
            parts.append(f"drop={self.drop}")
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.oauth_error is not None:
            parts.append(f"oauth_error={self.oauth_error}")
        for name in ("envelope", "body", "body_size", "retry_after", "truncate"):
            if getattr(self, name) not in (None, False):
                parts.append(name)
        if self.odd_answer is not None:
            parts.append(f"odd_answer={self.odd_answer}")
        if self.delay_seconds:
            parts.append("delay")
        if self.drip_seconds:
            parts.append("drip")
        return "+".join(parts) or "none"

    def canned_answer(self, kind: str) -> Answer:
        """Return the answer that replaces the real one; only for a fault with a status."""
        if self.status is None:
            raise ValueError("only a fault with a status has its own answer")
        status = self.status
        content_type = self.content_type or "application/json"
        if self.body is not None:
            return Answer(status, self.body, content_type=content_type)
        if self.body_size is not None:
            return Answer(status, content_type=content_type, filler_size=self.body_size)
        if 200 <= status < 300:
            # A success status with nothing usable in it: an empty JSON object.
            return Answer(status, b"{}")
        if self.envelope or (kind not in OAUTH_KINDS and self.oauth_error is None):
            return envelope(status, self.message)
        code = self.oauth_error or _default_oauth_error(status)
        return oauth_error(status, code, self.message or f"injected {status} {code}")

    def disguise(self, answer: Answer) -> Answer:
        """Return the real token ``answer`` with its body replaced by this fault's odd answer.

        Only a 200 carrying a JSON object (a new grant) is changed; anything else is returned as it is.
        """
        if self.odd_answer is None or answer.status != 200 or answer.filler_size is not None:
            return answer
        try:
            grant = json.loads(answer.body)
        except ValueError:
            return answer
        if not isinstance(grant, dict):
            return answer
        return Answer(200, odd_body(self.odd_answer, grant), content_type=answer.content_type, headers=answer.headers)

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready mapping of the fields that are set; ``body`` goes as base64."""
        data: dict[str, object] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value != spec.default:
                data[spec.name] = value
        if self.body is not None:
            data.pop("body")
            data["body_base64"] = base64.b64encode(self.body).decode("ascii")
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Fault:
        """Build a fault from :meth:`to_json` output (``body`` may also be given as a UTF-8 string)."""
        given = dict(data)
        if "body_base64" in given:
            encoded = given.pop("body_base64")
            if not isinstance(encoded, str):
                raise ValueError("body_base64 must be a string")
            given["body"] = base64.b64decode(encoded)
        elif isinstance(given.get("body"), str):
            given["body"] = str(given["body"]).encode("utf-8")
        unknown = set(given) - {spec.name for spec in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        _check_types(given)
        return cls(**given)  # type: ignore[arg-type]


_FIELD_TYPES: Mapping[str, tuple[type, ...]] = {
    "status": (int,),
    "oauth_error": (str,),
    "envelope": (bool,),
    "message": (str,),
    "body": (bytes,),
    "body_size": (int,),
    "content_type": (str,),
    "retry_after": (str,),
    "delay_seconds": (int, float),
    "drop": (str,),
    "drip_seconds": (int, float),
    "truncate": (bool,),
    "odd_answer": (str,),
}


def _check_types(given: Mapping[str, object]) -> None:
    for name, value in given.items():
        if value is None:
            continue
        wanted = _FIELD_TYPES[name]
        # bool is an int in Python; a JSON true must not pass as a status or a size.
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            raise ValueError(f"fault field {name} has the wrong type")


def _default_oauth_error(status: int) -> str:
    if status == 503:
        return "temporarily_unavailable"
    if status >= 500:
        return "server_error"
    if status == 401:
        return "invalid_client"
    return "invalid_request"


class FaultQueue:
    """Faults waiting for requests, in the order injected; each is consumed by one request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: list[tuple[str | None, Fault]] = []

    def add(self, faults: Iterable[Fault], path: str | None = None) -> None:
        """Queue ``faults`` for the next requests whose path starts with ``path`` (any path when None)."""
        with self._lock:
            self._queued.extend((path, fault) for fault in faults)

    def take(self, path: str) -> Fault | None:
        """Remove and return the first queued fault that applies to ``path``, or None."""
        with self._lock:
            for position, (prefix, fault) in enumerate(self._queued):
                if prefix is None or path.startswith(prefix):
                    del self._queued[position]
                    return fault
            return None

    def pending(self) -> int:
        """Return how many faults are still queued."""
        with self._lock:
            return len(self._queued)

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._queued.clear()
