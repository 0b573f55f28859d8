"""The suite's own rules for what the job must accept, written out here so a broken loader or settings
parser in the job cannot vouch for itself: the survival checks never ask the job's code what is valid.

Token file (docs/design.md, the store): UTF-8 JSON, at most 1 MiB, holding an object whose every string,
field names included, is valid text (no lone surrogate from a ``\\uD800``-``\\uDFFF`` escape). Flat shape:
``refresh_token`` a non-empty string; ``access_token`` a string; ``expires_at`` and ``expires_in``
finite numbers (not booleans); ``token_type`` a string; ``scope`` a string or a list. Optional fields
may be absent or null. Nested shape (``credentials.json``: ``token`` present, ``access_token`` not at
the top): ``token`` an object holding the flat fields; ``client_id`` and ``client_secret`` strings
(or null) when present. Anything else is refused with exit 65.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MAX_TOKEN_FILE_BYTES = 1024 * 1024


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _flat_problem(fields: dict[str, Any]) -> str | None:
    refresh = fields.get("refresh_token")
    if not isinstance(refresh, str) or refresh == "":
        return "refresh_token must be a non-empty string"
    if "access_token" not in fields or not isinstance(fields["access_token"], str):
        return "access_token must be a string"
    for key in ("expires_at", "expires_in"):
        if fields.get(key) is not None and not _is_number(fields[key]):
            return f"{key} must be a finite number"
    if fields.get("token_type") is not None and not isinstance(fields["token_type"], str):
        return "token_type must be a string"
    if fields.get("scope") is not None and not isinstance(fields["scope"], (str, list)):
        return "scope must be a string or a list"
    return None


def _all_text(document: object) -> bool:
    """Whether every string in ``document`` (names too) can be written as UTF-8."""
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def token_document(data: bytes) -> dict[str, Any] | None:
    """The flat token fields of valid token-file bytes; None when the job must refuse them (exit 65)."""
    if len(data) > MAX_TOKEN_FILE_BYTES:
        return None
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or not _all_text(document):
        return None
    if "token" in document and "access_token" not in document:
        inner = document["token"]
        if not isinstance(inner, dict):
            return None
        for key in ("client_id", "client_secret"):
            if document.get(key) is not None and not isinstance(document[key], str):
                return None
    else:
        inner = document
    return None if _flat_problem(inner) else inner


def token_bytes_valid(data: bytes) -> bool:
    """Whether the job must accept these token-file bytes."""
    return token_document(data) is not None


def refresh_token_in(path: Path) -> str:
    """The refresh token of the token file at ``path``; AssertionError when it is not a valid token file."""
    data = path.read_bytes()
    fields = token_document(data)
    if fields is None:
        raise AssertionError(f"{path} is not a valid token file")
    return str(fields["refresh_token"])


def refresh_token_or_none(path: Path) -> str | None:
    """The refresh token of the file at ``path`` when it is a valid token file, else None."""
    try:
        fields = token_document(path.read_bytes())
    except OSError:
        return None
    return None if fields is None else str(fields["refresh_token"])


# -- settings a `.env` file or the environment may vary (docs/design.md, configuration) -------------------
#
# Each value is stripped; an empty one counts as unset. Seconds: a finite number (as Python's float()
# reads it) of at least 0, and for AWEBER_HTTP_TIMEOUT at least 0.001. AWEBER_RATE_LIMIT: a whole number
# (as int() reads it) of at least 1. AWEBER_LOG_FORMAT: text or json, any case. AWEBER_ACCOUNT_ID: decimal
# digits, above 0. AWEBER_LIST_IDS: comma-separated such ids. AWEBER_TASK and AWEBER_CLIENT_SECRET: any
# text (`refresh` runs no task). AWEBER_RUN_TIMEOUT: ASCII digits, maybe with a fraction, then maybe one
# unit letter (s, m, h, d or w, any case; none means seconds), spaces allowed around each part, and more
# than zero seconds in all. Anything else is refused with exit 78.

_MINIMUM_SECONDS = {"AWEBER_LOCK_TIMEOUT": 0.0, "AWEBER_REFRESH_LEEWAY": 0.0, "AWEBER_HTTP_TIMEOUT": 0.001}


def _positive_id(text: str) -> bool:
    return text.isdecimal() and int(text) > 0


def _positive_duration(text: str) -> bool:
    number = text.rstrip()
    if number[-1:].lower() in ("s", "m", "h", "d", "w"):
        number = number[:-1].rstrip()
    whole, _, fraction = number.strip().partition(".")
    if not whole or not all(c in "0123456789" for c in whole + fraction) or (number.count(".") and not fraction):
        return False
    return float(number) > 0


def setting_refused(name: str, raw: str) -> bool:
    """Whether the value ``raw`` of the variable ``name`` must be refused (exit 78)."""
    value = raw.strip()
    if not value:
        return False
    if name in _MINIMUM_SECONDS:
        try:
            seconds = float(value)
        except ValueError:
            return True
        return not math.isfinite(seconds) or seconds < _MINIMUM_SECONDS[name]
    if name == "AWEBER_RUN_TIMEOUT":
        return not _positive_duration(value)
    if name == "AWEBER_RATE_LIMIT":
        try:
            return int(value) < 1
        except ValueError:
            return True
    if name == "AWEBER_LOG_FORMAT":
        return value.lower() not in ("text", "json")
    if name == "AWEBER_ACCOUNT_ID":
        return not _positive_id(value)
    if name == "AWEBER_LIST_IDS":
        return not all(_positive_id(item.strip()) for item in value.split(","))
    return False
