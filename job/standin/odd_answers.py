"""Ready-made odd token answers, for the ``odd_answer`` fault.

The stand-in processes the request as usual (a refresh token IS rotated, a code IS redeemed), then
answers 200 with one of these bodies instead of its plain one. Each body is built from the real new
grant, so every one of them except the garbage ones carries the new, valid ``refresh_token`` beside
something odd: values JSON allows but Python cannot hold (``1e999``, a 401-digit integer), values
the job should not trust (a negative lifetime, a lone surrogate, a ``mac`` token type), nesting deep
enough to make a recursive JSON reader give up, unknown members of every shape. A client that
throws such an answer away has lost the only refresh token that still works.

The bodies are written as raw JSON text on purpose: ``json.dumps`` cannot write most of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

# Deep enough that Python's json module raises RecursionError (its limit is about 1000), small enough
# to stay far below any sane cap on a token answer's size (10 KB).
DEEP_NESTING_LEVELS = 5000

_DEEP = "[" * DEEP_NESTING_LEVELS + "]" * DEEP_NESTING_LEVELS
_LONE_SURROGATE = '"\\ud800"'

Grant = Mapping[str, object]


def _body(grant: Grant, changes: Mapping[str, str | None], *, first: str = "", tail: str = "}") -> bytes:
    """The grant as JSON text with ``changes`` (member name -> raw JSON text, None to leave it out).

    ``first`` is raw text put before the grant's members; ``tail`` ends the object.
    """
    members = {name: json.dumps(value) for name, value in grant.items()}
    for name, raw in changes.items():
        if raw is None:
            members.pop(name, None)
        else:
            members[name] = raw
    text = ", ".join(f"{json.dumps(name)}: {raw}" for name, raw in members.items())
    return ("{" + first + text + tail).encode("utf-8")


def _change(name: str, raw: str | None) -> Callable[[Grant], bytes]:
    """The grant with member ``name`` set to the raw JSON text ``raw`` (None: left out)."""
    return lambda grant: _body(grant, {name: raw})


def _refresh_token_only(grant: Grant) -> str:
    return json.dumps(grant["refresh_token"])


ODD_ANSWERS: Mapping[str, Callable[[Grant], bytes]] = {
    # The access token's lifetime.
    "expires_in_huge": _change("expires_in", "1" + "0" * 400),
    "expires_in_overflow": _change("expires_in", "1e999"),
    "expires_in_nan": _change("expires_in", "NaN"),
    "expires_in_negative": _change("expires_in", "-7200"),
    "expires_in_zero": _change("expires_in", "0"),
    "expires_in_string": _change("expires_in", '"7200"'),
    "expires_in_word": _change("expires_in", '"soon"'),
    "expires_in_short": _change("expires_in", "30"),
    "expires_in_missing": _change("expires_in", None),
    # The scope.
    "scope_object": _change("scope", '{"account": "read", "list": ["read"]}'),
    "scope_non_strings": _change("scope", '[1, true, null, {"a": "b"}]'),
    "scope_lone_surrogate": _change("scope", '"account.read \\ud800 list.read"'),
    "scope_deeply_nested": _change("scope", _DEEP),
    # Text that is not text.
    "lone_surrogate_in_unknown_member": lambda grant: _body(
        grant, {"note": _LONE_SURROGATE}, first='"\\udfff": 1, '
    ),
    "invalid_utf8_in_unknown_member": lambda grant: _body(grant, {}, tail=', "note": "@@"}').replace(
        b"@@", b"\xff\xfe"
    ),
    # Nesting deep enough to break a recursive reader, anywhere.
    "deep_nesting_in_unknown_member": _change("extra", _DEEP),
    "deep_nesting_before_the_tokens": lambda grant: _body(grant, {}, first=f'"extra": {_DEEP}, '),
    "deep_object_nesting": _change("extra", '{"a": ' * DEEP_NESTING_LEVELS + "1" + "}" * DEEP_NESTING_LEVELS),
    # Unknown members of every shape.
    "unknown_members_of_every_shape": lambda grant: _body(
        grant,
        {
            "id_token": "null",
            "": '""',
            "nested": '{"a": [1, {"b": [true, false, null]}], "c": {}}',
            "big": "1e999",
            "not_a_number": "NaN",
            "minus_infinity": "-Infinity",
            "huge_integer": "9" * 5000,
            "float": "1.5e308",
            "list": "[]",
        },
    ),
    "duplicate_members": lambda grant: _body(grant, {}, first='"refresh_token": "an-older-value", '),
    # What makes the answer unusable for this run (but the new refresh token is in it all the same).
    "token_type_mac": _change("token_type", '"mac"'),
    "token_type_number": _change("token_type", "5"),
    "token_type_lone_surrogate": _change("token_type", _LONE_SURROGATE),
    "access_token_missing": _change("access_token", None),
    "access_token_empty": _change("access_token", '""'),
    "access_token_number": _change("access_token", "12345"),
    "access_token_lone_surrogate": _change("access_token", '"abc\\ud800def"'),
    "access_token_deeply_nested": _change("access_token", _DEEP),
    "broken_json_after_the_tokens": lambda grant: _body(grant, {}, tail=', "extra": [1, 2'),
    # Nothing usable at all: no refresh token arrives (the one sent WAS spent all the same).
    "garbage": lambda grant: b"\x00\xff<!DOCTYPE html><title>OK</title>{{ not json",
    "json_without_tokens": lambda grant: b'{"status": "ok"}',
    "refresh_token_only_in_a_broken_string": lambda grant: (
        '{"access_token": "x", "refresh_token": ' + _refresh_token_only(grant)[:-1]
    ).encode("utf-8"),
}


def odd_body(name: str, grant: Grant) -> bytes:
    """Return the odd answer ``name`` built around ``grant`` (the answer the stand-in would have sent)."""
    try:
        build = ODD_ANSWERS[name]
    except KeyError:
        raise ValueError(f"unknown odd answer {name!r}; known: {', '.join(sorted(ODD_ANSWERS))}") from None
    return build(grant)
