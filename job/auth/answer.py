"""Reading a token endpoint's 2xx answer without losing the refresh token in it.

Pure: no I/O. Two steps, both total (they return, whatever the bytes):

- :func:`read_members` reads the top-level JSON object member by member, without recursion, so a
  member that nests thousands of levels deep (which makes ``json.loads`` raise RecursionError) is
  dropped on its own instead of sinking the whole answer; a value json cannot hold (a 5,000-digit
  integer) likewise. A body that stops being JSON part-way keeps the members read before the break.
- :func:`clean_answer` keeps only what can be saved and used: a refresh token that is real text,
  an access token that fits in an HTTP header, a bearer token type, a lifetime clamped to a sane
  range, a scope that is text. What it drops or clamps it names in a note (never the value).

The point of both: once the server has rotated, the refresh token in its answer is the only one
that still works. It is saved whenever it arrived whole, and only then may the run fail.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from job.auth.tokens import LONGEST_LIFETIME_SECONDS, json_kind

# A token answer is flat; a scope list nests one level. Members nesting deeper than this are dropped
# unread, which keeps json's recursive reader far from Python's recursion limit (about 1000).
MAX_MEMBER_NESTING = 32

_WHITESPACE = " \t\n\r"
# A JSON string from its opening quote to its closing one, escapes skipped (not yet checked).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_CONTAINER_TOKENS = re.compile(r'["\[\]{}]')
_SCALAR_END = re.compile(r"[\s,}\]]")
_CLOSERS = {"[": "]", "{": "}"}
_DECIMAL_SECONDS = re.compile(r"\s*\d{1,15}(\.\d{1,9})?\s*")

# Why the value of a member was not read.
TOO_DEEP = "nests too deeply"
UNREADABLE = "cannot be read as a JSON value"


@dataclass(frozen=True)
class Members:
    """The members of a JSON object read one by one; ``well_formed`` is False when the text broke off."""

    values: dict[str, Any] = field(repr=False)
    dropped: dict[str, str]
    well_formed: bool


def read_members(body: bytes) -> Members | None:
    """Read the top-level JSON object of ``body``; None when the body does not start as one.

    Bytes that are not UTF-8 become lone surrogates (never valid text, so never a usable token).
    """
    text = body.decode("utf-8", "surrogateescape")
    position = _skip_whitespace(text, 1 if text.startswith("\ufeff") else 0)
    if text[position:position + 1] != "{":
        return None
    values: dict[str, Any] = {}
    dropped: dict[str, str] = {}

    def broken() -> Members:
        return Members(values, dropped, well_formed=False)

    position = _skip_whitespace(text, position + 1)
    if text[position:position + 1] == "}":
        return Members(values, dropped, well_formed=not text[position + 1:].strip(_WHITESPACE))
    while True:
        quoted = _STRING.match(text, position)
        if quoted is None:
            return broken()
        try:
            name = json.loads(quoted.group(), strict=False)
        except ValueError:
            return broken()
        position = quoted.end()
        position = _skip_whitespace(text, position)
        if text[position:position + 1] != ":":
            return broken()
        start = _skip_whitespace(text, position + 1)
        extent = _value_extent(text, start)
        if extent is None:
            return broken()
        end, depth = extent
        values.pop(name, None)
        dropped.pop(name, None)
        if depth > MAX_MEMBER_NESTING:
            dropped[name] = TOO_DEEP
        else:
            try:
                values[name] = json.loads(text[start:end], strict=False)
            except (ValueError, RecursionError):
                dropped[name] = UNREADABLE
        position = _skip_whitespace(text, end)
        following = text[position:position + 1]
        if following == ",":
            position = _skip_whitespace(text, position + 1)
        elif following == "}":
            return Members(values, dropped, well_formed=not text[position + 1:].strip(_WHITESPACE))
        else:
            return broken()


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    return position


def _value_extent(text: str, start: int) -> tuple[int, int] | None:
    """Where the JSON value starting at ``start`` ends and how deep it nests; None when it does not end.

    Brackets are matched with an explicit stack, not by recursion, so any depth is measured safely.
    """
    first = text[start:start + 1]
    if not first:
        return None
    if first == '"':
        quoted = _STRING.match(text, start)
        return (quoted.end(), 0) if quoted else None
    if first not in _CLOSERS:
        found = _SCALAR_END.search(text, start)
        end = found.start() if found else len(text)
        return (end, 0) if end > start else None
    stack: list[str] = []
    deepest = 0
    position = start
    while True:
        found = _CONTAINER_TOKENS.search(text, position)
        if found is None:
            return None
        mark = found.group()
        if mark == '"':
            quoted = _STRING.match(text, found.start())
            if quoted is None:
                return None
            position = quoted.end()
        else:
            position = found.end()
            if mark in _CLOSERS:
                stack.append(_CLOSERS[mark])
                deepest = max(deepest, len(stack))
            elif not stack or stack.pop() != mark:
                return None
            elif not stack:
                return position, deepest


# ---- cleaning ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanAnswer:
    """What of a token answer can be saved and used.

    ``fields`` holds only saveable token fields (``access_token``, ``refresh_token``, ``token_type``,
    ``expires_in``, ``scope``), each of a type the token file accepts. ``refresh_problem`` says why
    a ``refresh_token`` member that is there cannot be used; ``unusable`` why this run cannot use the
    answer (no usable access token, another token type, broken JSON); ``notes`` what was dropped or
    clamped, naming fields, never values.
    """

    fields: dict[str, Any] = field(repr=False)
    refresh_problem: str | None = None
    unusable: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def refresh_token(self) -> str | None:
        value = self.fields.get("refresh_token")
        return value if isinstance(value, str) else None

    @property
    def access_token(self) -> str | None:
        value = self.fields.get("access_token")
        return value if isinstance(value, str) else None


def clean_answer(members: Members) -> CleanAnswer:
    """Keep what can be saved and used of ``members``; see :class:`CleanAnswer`."""
    values, dropped = members.values, members.dropped
    fields: dict[str, Any] = {}
    notes: list[str] = []
    unusable: list[str] = []
    refresh_problem = _keep_refresh_token(values, dropped, fields)
    _keep_access_token(values, dropped, fields, unusable)
    _keep_lifetime(values, dropped, fields, notes)
    _keep_scope(values, dropped, fields, notes)
    for name, why in dropped.items():
        if name not in ("access_token", "refresh_token", "token_type", "expires_in", "scope"):
            notes.append(f"member {_name(name)} {why}; it was ignored")

    if not members.well_formed:
        unusable.insert(0, "is not well-formed JSON (the members before the break were read)")
    if unusable:
        # Nothing of an answer this run cannot use goes in the file but the refresh token and scope.
        fields.pop("access_token", None)
        fields.pop("token_type", None)
        fields.pop("expires_in", None)
    return CleanAnswer(fields, refresh_problem, "; ".join(unusable) or None, tuple(notes))


def _keep_refresh_token(values: dict[str, Any], dropped: dict[str, str], fields: dict[str, Any]) -> str | None:
    """Keep a usable refresh token in ``fields``; return what is wrong with one that is there but unusable."""
    if "refresh_token" not in values and "refresh_token" not in dropped:
        return None
    refresh = values.get("refresh_token")
    if isinstance(refresh, str) and refresh and is_text(refresh):
        fields["refresh_token"] = refresh
        return None
    return f"has an unusable refresh_token ({_describe(values, dropped, 'refresh_token')})"


def _keep_access_token(values: dict[str, Any], dropped: dict[str, str], fields: dict[str, Any],
                       unusable: list[str]) -> None:
    """Keep a usable bearer access token (and its type) in ``fields``; say in ``unusable`` why not."""
    access = values.get("access_token")
    if isinstance(access, str) and fits_in_a_header(access):
        fields["access_token"] = access
    else:
        unusable.append("has no usable access_token")
    token_type = values.get("token_type")
    if "token_type" in dropped or (token_type is not None and not _is_bearer(token_type)):
        unusable.append("has a token_type other than bearer")
        fields.pop("access_token", None)
    elif token_type is not None:
        fields["token_type"] = token_type


def _keep_lifetime(values: dict[str, Any], dropped: dict[str, str], fields: dict[str, Any], notes: list[str]) -> None:
    """Keep a usable ``expires_in`` in ``fields``; note in ``notes`` what was odd about it."""
    if "expires_in" in values or "expires_in" in dropped:
        lifetime, note = _lifetime(values.get("expires_in"), "expires_in" in dropped)
        if lifetime is not None:
            fields["expires_in"] = lifetime
        if note:
            notes.append(note)


def _keep_scope(values: dict[str, Any], dropped: dict[str, str], fields: dict[str, Any], notes: list[str]) -> None:
    """Keep a scope that is text or a list of text in ``fields``; note in ``notes`` one that is not."""
    scope = values.get("scope")
    if "scope" in dropped:
        notes.append(f"scope {dropped['scope']}; it was not saved")
    elif scope is not None:
        if (isinstance(scope, str) and is_text(scope)) or (
            isinstance(scope, list) and all(isinstance(item, str) and is_text(item) for item in scope)
        ):
            fields["scope"] = scope
        else:
            notes.append(f"scope is not text or a list of text ({_kind(scope)}); it was not saved")


def is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode text (no lone surrogate), so it can be written as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fits_in_a_header(token: str) -> bool:
    """Whether ``token`` is non-empty visible ASCII, as a bearer token in an HTTP header must be (RFC 6750 §2.1)."""
    return bool(token) and all("!" <= character <= "~" for character in token)


def _is_bearer(token_type: object) -> bool:
    return isinstance(token_type, str) and token_type.lower() == "bearer"


def _lifetime(value: object, was_dropped: bool) -> tuple[int | float | None, str | None]:
    """The access token's lifetime in seconds, clamped, and a note when it was not taken as it came."""
    if was_dropped:
        return None, "expires_in cannot be read; the access token's lifetime is unknown"
    if isinstance(value, str) and _DECIMAL_SECONDS.fullmatch(value):
        value = float(value) if "." in value else int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"expires_in is not a number of seconds ({_kind(value)}); the access token's lifetime is unknown"
    if isinstance(value, float) and math.isnan(value):
        return None, "expires_in is NaN; the access token's lifetime is unknown"
    if value <= 0:
        return None, "expires_in is not positive; the access token's lifetime is unknown"
    if value > LONGEST_LIFETIME_SECONDS:
        shown = "Infinity" if value == math.inf else "more than a year"
        return LONGEST_LIFETIME_SECONDS, f"expires_in is {shown}; taken as {LONGEST_LIFETIME_SECONDS} s"
    return value, None


def _describe(values: dict[str, Any], dropped: dict[str, str], name: str) -> str:
    if name in dropped:
        return f"it {dropped[name]}"
    value = values.get(name)
    if isinstance(value, str) and value:
        return "it is not valid text"
    return _kind(value)


def _kind(value: object) -> str:
    """Name the JSON type of ``value`` for messages, without showing the value."""
    if isinstance(value, str) and not is_text(value):
        return "a string that is not valid text"
    return json_kind(value)


def _name(name: str) -> str:
    """A member name fit for a log line: quoted, escaped, and short."""
    shown = ascii(name)
    return shown if len(shown) <= 42 else shown[:40] + "…'"
