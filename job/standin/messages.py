"""The stand-in's request and answer values, and the two error body shapes AWeber uses.

AWeber's REST API answers errors in its own envelope
``{"error": {"status", "message", "type", "documentation_url"}}`` (docs/aweber-api.md), while its
OAuth endpoints answer in the RFC 6749 §5.2 shape ``{"error", "error_description"}``, and so does
the token check in front of the API when an access token is expired or unknown
(``"error": "invalid_token"``, RFC 6750 §3.1).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

JSON_CONTENT_TYPE = "application/json"

# Error types per status from AWeber's Troubleshooting section (docs/aweber-api.md §4).
ENVELOPE_TYPES: Mapping[int, str] = {
    400: "BadRequestError",
    401: "UnauthorizedError",
    403: "ForbiddenError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    410: "BlockedError",
    413: "RequestEntityTooLargeError",
    415: "InvalidContentType",
    429: "TooManyRequestsError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}
_DOCUMENTATION_ANCHORS: Mapping[str, str] = {
    "BadRequestError": "badrequest",
    "WebServiceError": "badrequest",
    "MissingOAuthParametersError": "badrequest",
    "UnauthorizedError": "unauthorized",
    "ForbiddenError": "forbidden",
    "NotFoundError": "notfound",
    "MethodNotAllowedError": "methodnotallowed",
    "BlockedError": "blocked",
    "InternalServerError": "internalerror",
    "ServiceUnavailableError": "serviceunavailable",
}
DEFAULT_MESSAGES: Mapping[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Blocked Error",
    429: "Too Many Requests",
    500: "Something went wrong.",
    502: "Bad Gateway",
    503: "Failed to communicate with endpoint",
    504: "Gateway Timeout",
}

# The token answer must not be cached by anything in between (RFC 6749 §5.1).
NO_STORE_HEADERS = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))

_FILLER_CHUNK_BYTES = 64 * 1024
_FILLER_PREFIX = b'{"padding": "'
_FILLER_SUFFIX = b'"}'


@dataclass(frozen=True)
class Request:
    """An HTTP request as the route handlers see it; header names are lower case."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def query_value(self, name: str) -> str | None:
        """Return the last value of query parameter ``name``, or None."""
        found = None
        for key, value in self.query:
            if key == name:
                found = value
        return found

    def header(self, name: str) -> str | None:
        """Return header ``name`` (any case), or None."""
        return self.headers.get(name.lower())

    def media_type(self) -> str:
        """Return the Content-Type without parameters, lower case ("" when absent)."""
        return (self.header("content-type") or "").split(";")[0].strip().lower()

    def form_pairs(self) -> list[tuple[str, str]]:
        """Return the body parsed as application/x-www-form-urlencoded (empty on undecodable bytes)."""
        try:
            return parse_qsl(self.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return []


@dataclass(frozen=True)
class Answer:
    """What to send back: status, headers and a body held in memory or streamed as filler."""

    status: int
    body: bytes = b""
    content_type: str | None = JSON_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    # When set, the body is this many bytes of valid-looking JSON generated while sending,
    # so a 50 MB answer never sits in memory.
    filler_size: int | None = None
    # The OAuth error code or AWeber error type carried by the body, for the counters and the log.
    error: str | None = None

    def body_length(self) -> int:
        """Return the number of body bytes."""
        return self.filler_size if self.filler_size is not None else len(self.body)

    def chunks(self) -> Iterator[bytes]:
        """Yield the body in pieces."""
        if self.filler_size is None:
            if self.body:
                yield self.body
            return
        yield from _filler_chunks(self.filler_size)


def _filler_chunks(size: int) -> Iterator[bytes]:
    if size < len(_FILLER_PREFIX) + len(_FILLER_SUFFIX):
        yield b"x" * size
        return
    yield _FILLER_PREFIX
    remaining = size - len(_FILLER_PREFIX) - len(_FILLER_SUFFIX)
    chunk = b"x" * _FILLER_CHUNK_BYTES
    while remaining > 0:
        piece = chunk if remaining >= len(chunk) else chunk[:remaining]
        remaining -= len(piece)
        yield piece
    yield _FILLER_SUFFIX


def json_answer(
    status: int, value: object, *, headers: tuple[tuple[str, str], ...] = (), error: str | None = None
) -> Answer:
    """Return an answer whose body is ``value`` as JSON."""
    return Answer(status, json.dumps(value).encode("utf-8"), headers=headers, error=error)


def oauth_error(status: int, error: str, description: str, *, headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    """Return an RFC 6749 §5.2 error answer."""
    body = {"error": error, "error_description": description}
    return json_answer(status, body, headers=NO_STORE_HEADERS + headers, error=error)


def envelope_type(status: int) -> str:
    """Return AWeber's error type for a status."""
    return ENVELOPE_TYPES.get(status, "APIError")


def envelope(status: int, message: str | None = None, error_type: str | None = None) -> Answer:
    """Return an answer carrying AWeber's error envelope."""
    kind = error_type or envelope_type(status)
    anchor = _DOCUMENTATION_ANCHORS.get(kind, kind.lower())
    body = {
        "error": {
            "status": status,
            "message": message if message is not None else DEFAULT_MESSAGES.get(status, "Error"),
            "type": kind,
            "documentation_url": f"https://api.aweber.com/#{anchor}",
        }
    }
    return json_answer(status, body, error=kind)
