"""The token file's value: parse and validate its shapes, merge a refresh answer, serialise.

Pure: no I/O. Three shapes are accepted and each is kept when saved again (docs/design.md §3):

- flat: ``{"access_token", "refresh_token", "token_type"?, "expires_in"?, "expires_at"?, ...}``,
  what requests-oauthlib and Authlib write;
- AWeber's example ``credentials.json``: ``{"client_id", "client_secret", "token": {flat}}``;
- legacy OAuth 1.0a credentials, which never change (:mod:`job.auth.oauth1`).

Error messages name the field and the file, never a value.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from job.auth.oauth1 import OAuth1Credentials, looks_like_oauth1, parse_oauth1
from job.errors import TokenFileError
from job.logs import fingerprint as fingerprint  # what the job logs of a secret; kept here beside the tokens
from job.logs import utc_time

# Token fields a refresh answer replaces; anything else in the file is kept as it was.
TOKEN_FIELDS = ("access_token", "refresh_token", "token_type", "expires_in", "expires_at", "scope")

# A token file larger than this is not a token file (and reading it whole would be unwise).
MAX_TOKEN_FILE_BYTES = 1024 * 1024

# The largest token-endpoint answer accepted; a larger one is unusable (exit 76). A real answer is
# a few hundred bytes. Reservations are sized from it, so a saved file always fits.
MAX_TOKEN_ANSWER_BYTES = 64 * 1024

# AWeber's access tokens live two hours (expires_in 7200, see docs/aweber-api.md). When an answer
# gives no usable lifetime, the job assumes this one rather than refreshing before every request.
ASSUMED_LIFETIME_SECONDS = 7200

# No access token lives longer than this; a longer lifetime in an answer (even 1e999, which json
# reads as infinity) is clamped to it, so expires_at is always a date the job can print.
LONGEST_LIFETIME_SECONDS = 365 * 86400


def assumed_lifetime(expires_in: float | None, leeway_seconds: float) -> float:
    """How long an access token just received is taken to live, for deciding when to refresh it.

    The answer's ``expires_in`` when it is known and longer than the leeway; otherwise (none given,
    or so short that the token would be refreshed before every request) at least AWeber's
    documented lifetime, ASSUMED_LIFETIME_SECONDS. A token that really dies sooner is refused
    with a 401, and the API client then refreshes once.
    """
    if expires_in is None:
        return float(ASSUMED_LIFETIME_SECONDS)
    if expires_in <= leeway_seconds:
        return float(max(expires_in, ASSUMED_LIFETIME_SECONDS))
    return float(expires_in)


def refresh_margin(lifetime_seconds: float, leeway_seconds: float) -> float:
    """How long before the assumed end of a lifetime to refresh: the leeway, but at most half the lifetime.

    So every access token is used for half its lifetime at least, whatever the leeway.
    """
    return min(leeway_seconds, lifetime_seconds / 2)


def format_expiry(expires_at: float | None, now: float) -> str:
    """``2026-11-28T19:40:00Z (in 7199 s)``, or ``unknown``."""
    if expires_at is None:
        return "unknown"
    stamp = utc_time(expires_at)
    left = expires_at - now
    relative = f"in {left:.0f} s" if left >= 0 else f"{-left:.0f} s ago"
    return f"{stamp} ({relative})"


def json_kind(value: object) -> str:
    """Name the JSON type of ``value`` for messages, without showing the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        # json reads NaN, Infinity and -Infinity (and 1e999) into floats; "a number" would mislead.
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if value == "" else "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@dataclass(frozen=True)
class TokenFile:
    """A loaded token file: the whole JSON document and where its token fields live."""

    document: dict[str, Any] = field(repr=False)
    nested: bool
    # Set for a legacy OAuth 1.0a file: nothing to refresh, requests are signed with these.
    oauth1: OAuth1Credentials | None = field(default=None, repr=False)

    @property
    def token(self) -> Mapping[str, Any]:
        """The flat token fields (the document itself, or its ``token`` object)."""
        inner = self.document["token"] if self.nested else self.document
        assert isinstance(inner, dict)
        return inner

    @property
    def shape(self) -> str:
        """``"credentials.json"`` for AWeber's nested example shape, ``"oauth1"``, else ``"flat"``."""
        if self.oauth1 is not None:
            return "oauth1"
        return "credentials.json" if self.nested else "flat"

    @property
    def access_token(self) -> str:
        if self.oauth1 is not None:
            return self.oauth1.access_token
        return str(self.token["access_token"])

    @property
    def refresh_token(self) -> str:
        """The refresh token; empty for OAuth 1.0a, which has none."""
        return str(self.token.get("refresh_token", ""))

    @property
    def expires_at(self) -> float | None:
        """Access-token expiry in Unix seconds, or None when the file does not say."""
        value = self.token.get("expires_at")
        return float(value) if value is not None else None

    @property
    def scope(self) -> str | None:
        value = self.token.get("scope")
        if isinstance(value, list):
            return " ".join(str(v) for v in value)
        return value if isinstance(value, str) else None

    @property
    def client_id(self) -> str | None:
        """The client id stored in a ``credentials.json`` shaped file, if any."""
        value = self.document.get("client_id") if self.nested else None
        return value if isinstance(value, str) and value else None

    @property
    def client_secret(self) -> str | None:
        """The client secret stored in a ``credentials.json`` shaped file, if any."""
        value = self.document.get("client_secret") if self.nested else None
        return value if isinstance(value, str) and value else None

    def expires_within(self, seconds: float, now: float) -> bool:
        """Whether the access token expires within ``seconds`` of ``now`` (unknown expiry: yes)."""
        expires_at = self.expires_at
        return expires_at is None or expires_at - now < seconds

    def secrets(self) -> list[str]:
        """Every secret value the file holds, for redaction."""
        if self.oauth1 is not None:
            return self.oauth1.secrets()
        values = [self.access_token, self.refresh_token]
        if self.client_secret:
            values.append(self.client_secret)
        return [v for v in values if v]

    def with_answer(self, answer: Mapping[str, Any], received_at: float) -> TokenFile:
        """Return a copy with the token fields of a token-endpoint ``answer`` merged in.

        The refresh token is kept when the answer carries none (RFC 6749 §6); ``expires_at`` is
        ``received_at + expires_in`` (a lifetime that is not a positive number of at most
        LONGEST_LIFETIME_SECONDS is left out: clamp it before). An answer without an access token
        leaves an empty one, and no expiry. Keys the job does not know are kept.
        """
        document = copy.deepcopy(self.document)
        inner = document["token"] if self.nested else document
        access = answer.get("access_token")
        inner["access_token"] = access if isinstance(access, str) else ""
        new_refresh = answer.get("refresh_token")
        if isinstance(new_refresh, str) and new_refresh:
            inner["refresh_token"] = new_refresh
        token_type = answer.get("token_type")
        if not isinstance(token_type, str) or not token_type:
            token_type = inner.get("token_type") or "bearer"
        inner["token_type"] = token_type
        expires_in = answer.get("expires_in")
        if (
            isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool)
            and 0 < expires_in <= LONGEST_LIFETIME_SECONDS and isinstance(access, str) and access
        ):
            inner["expires_in"] = expires_in
            inner["expires_at"] = round(received_at + float(expires_in), 3)
        else:
            # No lifetime given: forget the old expiry rather than keep a wrong one.
            inner.pop("expires_in", None)
            inner.pop("expires_at", None)
        if "scope" in answer:
            inner["scope"] = answer["scope"]
        return TokenFile(document=document, nested=self.nested)

    def to_bytes(self) -> bytes:
        """Serialise as UTF-8 JSON with a trailing newline."""
        text = json.dumps(self.document, indent=2, ensure_ascii=False) + "\n"
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate somewhere (json reads "\ud800" into one) cannot be UTF-8: escape every
            # non-ASCII character instead. Nothing is lost, and parse_token_file reads it back the same.
            return (json.dumps(self.document, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def new_token_file(answer: Mapping[str, Any], received_at: float) -> TokenFile:
    """Build a flat token file from a code-exchange ``answer`` (first authorization)."""
    base = TokenFile(document={"access_token": "", "refresh_token": ""}, nested=False)
    return base.with_answer(answer, received_at)


def parse_token_file(data: bytes, where: str) -> TokenFile:
    """Parse and validate token file bytes; ``where`` names the file in messages.

    Raises TokenFileError (exit 65) saying what is wrong and where, never showing a value.
    """
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise TokenFileError(
            f"token file {where} is {len(data)} bytes, larger than any token file "
            f"({MAX_TOKEN_FILE_BYTES} bytes at most); is this the right file?"
        )
    if not data.strip():
        raise TokenFileError(
            f"token file {where} is empty",
            hint="restore it from a backup or a rescue file, or authorize again: aweber-job login",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"token file {where} is not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        # json's own words end with "at" ("Unterminated string starting at"): the place follows them once.
        what = exc.msg[:1].lower() + exc.msg[1:]
        what = what if what.endswith(" at") else f"{what} at"
        raise TokenFileError(
            f"token file {where} is not valid JSON: {what} line {exc.lineno}, column {exc.colno}",
            hint="restore it from a backup or a rescue file, or authorize again: aweber-job login",
        ) from None
    except RecursionError:
        # json gives up on deep nesting this way, not with JSONDecodeError; no token file nests.
        raise TokenFileError(f"token file {where} is not a token file: its JSON nests too deeply") from None
    if not isinstance(document, dict):
        raise TokenFileError(f"token file {where} must hold a JSON object, found {json_kind(document)}")
    # Decoded UTF-8 holds no surrogates; only a \uD800-\uDFFF escape without its pair makes one.
    if "\\u" in text:
        _refuse_lone_surrogates(document, where)
    if looks_like_oauth1(document):
        return TokenFile(document=document, nested=False, oauth1=parse_oauth1(document, where))

    nested = "token" in document and "access_token" not in document
    prefix = "token." if nested else ""
    if nested:
        inner = document["token"]
        if not isinstance(inner, dict):
            raise TokenFileError(f"token file {where}: field 'token' must be an object, found {json_kind(inner)}")
        for key in ("client_id", "client_secret"):
            if key in document and document[key] is not None and not isinstance(document[key], str):
                raise TokenFileError(
                    f"token file {where}: field '{key}' must be a string, found {json_kind(document[key])}"
                )
    else:
        inner = document
    _validate_token_fields(inner, where, prefix)
    return TokenFile(document=document, nested=nested)


def _refuse_lone_surrogates(document: dict[str, Any], where: str) -> None:
    """Raise TokenFileError naming a field whose name or value holds a lone surrogate.

    json reads such an escape into a string no UTF-8 file, hash, request or database can take; refused
    here, every store and command gets one clear exit 65 instead of an encoding error later.
    """
    pending: list[tuple[str, object]] = [("", document)]  # a stack: json may nest near the recursion limit
    while pending:
        path, value = pending.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                inner = f"{path}.{_shown(key)}" if path else _shown(key)
                if not _is_text(key):
                    raise TokenFileError(
                        f"token file {where}: the name of field '{inner}' is not valid text: {_LONE_SURROGATE}"
                    )
                pending.append((inner, item))
        elif isinstance(value, list):
            pending.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
        elif isinstance(value, str) and not _is_text(value):
            raise TokenFileError(f"token file {where}: field '{path}' is not valid text: {_LONE_SURROGATE}")


_LONE_SURROGATE = "it holds a \\uD800-\\uDFFF escape without its pair, which cannot be written as UTF-8"


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    """A field name fit for a one-line message: escaped where not printable ASCII, and short."""
    shown = name if name.isascii() and name.isprintable() else ascii(name)[1:-1]
    return shown if len(shown) <= 40 else shown[:39] + "…"


def _validate_token_fields(inner: Mapping[str, Any], where: str, prefix: str) -> None:
    """Check the flat token fields; raise TokenFileError naming the first field at fault."""
    refresh = inner.get("refresh_token")
    if "refresh_token" not in inner:
        raise TokenFileError(
            f"token file {where}: field '{prefix}refresh_token' is missing",
            hint="without it the job cannot refresh; authorize again: aweber-job login",
        )
    if not isinstance(refresh, str) or not refresh:
        raise TokenFileError(
            f"token file {where}: field '{prefix}refresh_token' must be a non-empty string, found {json_kind(refresh)}"
        )
    if "access_token" not in inner:
        raise TokenFileError(f"token file {where}: field '{prefix}access_token' is missing")
    if not isinstance(inner["access_token"], str):
        raise TokenFileError(
            f"token file {where}: field '{prefix}access_token' must be a string, "
            f"found {json_kind(inner['access_token'])}"
        )
    for key in ("expires_at", "expires_in"):
        if key in inner and inner[key] is not None:
            value = inner[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TokenFileError(
                    f"token file {where}: field '{prefix}{key}' must be a number (Unix seconds), "
                    f"found {json_kind(value)}"
                )
    if "token_type" in inner and inner["token_type"] is not None and not isinstance(inner["token_type"], str):
        raise TokenFileError(
            f"token file {where}: field '{prefix}token_type' must be a string, found {json_kind(inner['token_type'])}"
        )
    if "scope" in inner and inner["scope"] is not None and not isinstance(inner["scope"], (str, list)):
        raise TokenFileError(
            f"token file {where}: field '{prefix}scope' must be a string or a list, found {json_kind(inner['scope'])}"
        )
