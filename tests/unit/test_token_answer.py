"""Reading a token answer member by member: deep nesting, broken JSON, odd values; the refresh token survives."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job.auth.answer import MAX_MEMBER_NESTING, clean_answer, read_members
from job.auth.tokens import new_token_file, parse_token_file

REFRESH = "refresh-SECRET-0123456789"
ACCESS = "access-SECRET-0123456789"
GOOD = {"access_token": ACCESS, "refresh_token": REFRESH, "token_type": "bearer", "expires_in": 7200}


def members_of(body: bytes) -> dict[str, Any]:
    read = read_members(body)
    assert read is not None
    return read.values


@pytest.mark.parametrize(
    ("body", "values", "dropped", "well_formed"),
    [
        (b"{}", {}, {}, True),
        (b' \n{"a": 1}\n', {"a": 1}, {}, True),
        (b'\xef\xbb\xbf{"a": 1}', {"a": 1}, {}, True),
        (b'{"a": 1, "a": 2}', {"a": 2}, {}, True),
        (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b', "b": 2}', {"b": 2}, {"a": "nests too deeply"}, True),
        (b'{"a": ' + b"[" * (MAX_MEMBER_NESTING + 1) + b"]" * (MAX_MEMBER_NESTING + 1) + b"}", {},
         {"a": "nests too deeply"}, True),
        (b'{"a": ' + b"[" * MAX_MEMBER_NESTING + b"]" * MAX_MEMBER_NESTING + b"}",
         {"a": json.loads("[" * MAX_MEMBER_NESTING + "]" * MAX_MEMBER_NESTING)}, {}, True),
        (b'{"a": "x]}{[", "b": {"c": "\\"}"}}', {"a": "x]}{[", "b": {"c": '"}'}}, {}, True),
        (b'{"a": 1e999, "c": -Infinity}', {"a": math.inf, "c": -math.inf}, {}, True),
        (b'{"a": ' + b"9" * 5000 + b', "b": 2}', {"b": 2}, {"a": "cannot be read as a JSON value"}, True),
        (b'{"a": soon, "b": 2}', {"b": 2}, {"a": "cannot be read as a JSON value"}, True),
        (b'{"a": 1, "b": [1, 2', {"a": 1}, {}, False),
        (b'{"a": 1, "b": [1, 2}', {"a": 1}, {}, False),
        (b'{"a": 1, "b": "unterminated', {"a": 1}, {}, False),
        (b'{"a": 1} trailing', {"a": 1}, {}, False),
        (b'{"a": 1 "b": 2}', {"a": 1}, {}, False),
        (b'{"a": "\xff\xfe"}', {"a": "\udcff\udcfe"}, {}, True),
    ],
    ids=["empty", "whitespace", "byte order mark", "duplicate: last wins", "deep member skipped",
         "one level too deep", "deepest allowed", "brackets in strings", "non-finite numbers",
         "integer json cannot hold", "bare word", "cut off in an array", "mismatched bracket",
         "cut off in a string", "trailing garbage", "missing comma", "bytes that are not UTF-8"],
)
def test_members_are_read_one_by_one(
    body: bytes, values: dict[str, Any], dropped: dict[str, str], well_formed: bool
) -> None:
    """Each member is read on its own: one too deep or unreadable is dropped, a break keeps what came before."""
    read = read_members(body)
    assert read is not None
    assert read.values == values
    assert read.dropped == dropped
    assert read.well_formed is well_formed


@pytest.mark.parametrize("body", [b"", b"   ", b"[1]", b'"x"', b"null", b"<html>", b"\x00{}", b"[" * 100_000])
def test_what_is_not_an_object_is_none(body: bytes) -> None:
    """A body that does not start as a JSON object is not read at all."""
    assert read_members(body) is None


def test_nan_is_read_as_json_reads_it() -> None:
    """NaN, which Python's json accepts, is read into a float NaN (and left to the cleaner to judge)."""
    assert math.isnan(members_of(b'{"a": NaN}')["a"])


@pytest.mark.parametrize(
    ("change", "saved", "unusable", "note"),
    [
        ({"expires_in": 10**400}, {"expires_in": 365 * 86400}, None, "expires_in is more than a year"),
        ({"expires_in": math.inf}, {"expires_in": 365 * 86400}, None, "expires_in is Infinity"),
        ({"expires_in": math.nan}, {}, None, "expires_in is NaN"),
        ({"expires_in": -5}, {}, None, "expires_in is not positive"),
        ({"expires_in": "7200"}, {"expires_in": 7200}, None, None),
        ({"expires_in": "soon"}, {}, None, "expires_in is not a number of seconds (a string)"),
        ({"expires_in": True}, {}, None, "expires_in is not a number of seconds (a boolean)"),
        ({"expires_in": None}, {}, None, "expires_in is not a number of seconds (null)"),
        ({"scope": "a b"}, {"scope": "a b", "expires_in": 7200}, None, None),
        ({"scope": ["a", "b"]}, {"scope": ["a", "b"], "expires_in": 7200}, None, None),
        ({"scope": {"a": 1}}, {"expires_in": 7200}, None, "scope is not text or a list of text (an object)"),
        ({"scope": [1, None]}, {"expires_in": 7200}, None, "scope is not text or a list of text (an array)"),
        ({"scope": "a \ud800"}, {"expires_in": 7200}, None, "(a string that is not valid text)"),
        ({"token_type": "Bearer"}, {"expires_in": 7200}, None, None),
        ({"token_type": "mac"}, {}, "has a token_type other than bearer", None),
        ({"token_type": 5}, {}, "has a token_type other than bearer", None),
        ({"access_token": ""}, {}, "has no usable access_token", None),
        ({"access_token": 12345}, {}, "has no usable access_token", None),
        ({"access_token": "a\ud800"}, {}, "has no usable access_token", None),
        ({"access_token": "has space"}, {}, "has no usable access_token", None),
        ({"access_token": "caf\u00e9"}, {}, "has no usable access_token", None),
    ],
)
def test_odd_fields_are_dropped_or_clamped_and_the_refresh_token_kept(
    change: dict[str, Any], saved: dict[str, Any], unusable: str | None, note: str | None
) -> None:
    """Each odd field is clamped or left out, with a note naming the field; the refresh token is always kept."""
    body = json.dumps({**GOOD, **change}).encode()
    read = read_members(body)
    assert read is not None
    answer = clean_answer(read)
    assert answer.refresh_token == REFRESH
    assert answer.refresh_problem is None
    assert answer.unusable == unusable
    for key in ("expires_in", "scope"):
        assert answer.fields.get(key) == saved.get(key)
    if unusable is None:
        assert answer.access_token == (change.get("access_token") or ACCESS)
    else:
        assert "access_token" not in answer.fields and "expires_in" not in answer.fields
    notes = " ".join(answer.notes)
    if note is None:
        assert notes == ""
    else:
        assert note in notes
    for secret in (REFRESH, ACCESS, "soon", "\ud800", "mac"):
        assert secret not in notes


@pytest.mark.parametrize(
    ("refresh", "problem"),
    [("", "an empty string"), (5, "a number"), ([REFRESH], "an array"), ("a\ud800", "not valid text"),
     (None, "null")],
)
def test_a_refresh_token_that_cannot_be_used_is_named(refresh: object, problem: str) -> None:
    """A refresh_token member that is not non-empty valid text is a problem to report, not a token to save."""
    read = read_members(json.dumps({**GOOD, "refresh_token": refresh}).encode())
    assert read is not None
    answer = clean_answer(read)
    assert answer.refresh_token is None
    assert answer.refresh_problem is not None and problem in answer.refresh_problem


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@given(
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=6),
    refresh=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1),
)
def test_any_answer_with_a_refresh_token_gives_a_file_that_loads(extra: dict[str, Any], refresh: str) -> None:
    """Whatever else an answer holds, its refresh token comes out of it and the file built from it loads again."""
    document = {**extra, "refresh_token": refresh}
    read = read_members(json.dumps(document).encode())
    assert read is not None
    answer = clean_answer(read)
    assert answer.refresh_token == refresh
    again = parse_token_file(new_token_file(answer.fields, received_at=1.8e9).to_bytes(), "t.json")
    assert again.refresh_token == refresh


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    """No body makes the reader or the cleaner raise."""
    read = read_members(data)
    if read is not None:
        clean_answer(read)
