"""The token file's value: both shapes, validation messages, merging a refresh answer, round trips."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job.auth.tokens import MAX_TOKEN_FILE_BYTES, fingerprint, new_token_file, parse_token_file
from job.errors import TokenFileError

SECRET_ACCESS = "access-SECRET-value-123"
SECRET_REFRESH = "refresh-SECRET-value-456"


def flat(**extra: Any) -> dict[str, Any]:
    return {"access_token": SECRET_ACCESS, "refresh_token": SECRET_REFRESH, "token_type": "bearer", **extra}


BAD_FILES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "is empty"),
    ("whitespace", b"  \n", "is empty"),
    ("truncated", b'{"access_token": "abc", "refresh_', "not valid JSON"),
    ("not utf-8", b'{"access_token": "\xff\xfe"}', "not UTF-8"),
    ("array", b"[1, 2]", "must hold a JSON object, found an array"),
    ("string", b'"token"', "found a string"),
    ("no refresh", json.dumps({"access_token": SECRET_ACCESS}).encode(), "'refresh_token' is missing"),
    ("empty refresh", json.dumps(flat(refresh_token="")).encode(), "non-empty string, found an empty string"),
    ("numeric refresh", json.dumps(flat(refresh_token=12345)).encode(), "found a number"),
    ("null access", json.dumps(flat(access_token=None)).encode(), "'access_token' must be a string, found null"),
    ("no access", json.dumps({"refresh_token": SECRET_REFRESH}).encode(), "'access_token' is missing"),
    ("string expiry", json.dumps(flat(expires_at="tomorrow")).encode(), "'expires_at' must be a number"),
    ("bool expiry", json.dumps(flat(expires_at=True)).encode(), "found a boolean"),
    ("infinite expiry", json.dumps(flat(expires_at=float("inf"))).encode(), "found Infinity"),
    ("overflowing expiry", b'{"access_token": "a", "refresh_token": "r", "expires_at": 1e999}', "found Infinity"),
    ("minus infinite expiry", json.dumps(flat(expires_in=float("-inf"))).encode(), "found -Infinity"),
    ("NaN expiry", json.dumps(flat(expires_at=float("nan"))).encode(), "found NaN"),
    ("nested not object", json.dumps({"token": [1]}).encode(), "'token' must be an object"),
    (
        "nested bad refresh",
        json.dumps({"client_id": "x", "token": {"access_token": SECRET_ACCESS, "refresh_token": 5}}).encode(),
        "'token.refresh_token'",
    ),
    ("too large", b"{" + b" " * (MAX_TOKEN_FILE_BYTES + 1) + b"}", "larger than any token file"),
    # json reads a \uD800-\uDFFF escape without its pair into a lone surrogate, which no UTF-8 file can hold.
    ("lone surrogate in refresh", b'{"access_token": "a", "refresh_token": "\\ud800' + SECRET_REFRESH.encode() + b'"}',
     "field 'refresh_token' is not valid text"),
    ("lone surrogate in nested access",
     b'{"client_id": "x", "token": {"access_token": "\\udfff", "refresh_token": "r"}}',
     "field 'token.access_token' is not valid text"),
    ("lone surrogate in an unknown list", b'{"access_token": "a", "refresh_token": "r", "note": ["x", "\\udc00"]}',
     "field 'note[1]' is not valid text"),
    ("lone surrogate in a field name", b'{"access_token": "a", "refresh_token": "r", "\\udfff\\n": 1}',
     "is not valid text"),
]


@pytest.mark.parametrize(("name", "data", "expected"), BAD_FILES, ids=[row[0] for row in BAD_FILES])
def test_bad_token_files_are_refused_with_a_message_naming_what_is_wrong(name: str, data: bytes, expected: str) -> None:
    """Each malformed file raises exit-65 TokenFileError whose message says what and where, never a value."""
    with pytest.raises(TokenFileError) as caught:
        parse_token_file(data, "/etc/aweber/tokens.json")
    message = str(caught.value)
    assert caught.value.exit_code == 65
    assert expected in message
    assert "/etc/aweber/tokens.json" in message
    assert SECRET_ACCESS not in message and SECRET_REFRESH not in message
    assert "\n" not in message


def test_flat_shape_is_parsed_and_kept_with_unknown_keys() -> None:
    """A flat file keeps its shape and keys the job does not know through a refresh."""
    data = json.dumps(flat(expires_at=100.5, custom={"keep": True})).encode()
    tokens = parse_token_file(data, "t.json")
    assert tokens.shape == "flat"
    updated = tokens.with_answer({"access_token": "new-access", "refresh_token": "new-refresh", "expires_in": 7200},
                                 received_at=1000.0)
    saved = json.loads(updated.to_bytes())
    assert saved["custom"] == {"keep": True}
    assert saved["access_token"] == "new-access" and saved["refresh_token"] == "new-refresh"
    assert saved["expires_at"] == 8200.0 and saved["expires_in"] == 7200
    assert updated.to_bytes().endswith(b"}\n")


def test_credentials_json_shape_is_parsed_and_kept() -> None:
    """AWeber's example credentials.json keeps client_id, client_secret and the nested token on save."""
    document = {"client_id": "cid", "client_secret": "csecret", "token": flat(expires_at=5.0), "note": "x"}
    tokens = parse_token_file(json.dumps(document).encode(), "credentials.json")
    assert tokens.shape == "credentials.json"
    assert tokens.client_id == "cid" and tokens.client_secret == "csecret"
    updated = tokens.with_answer({"access_token": "a2", "refresh_token": "r2", "expires_in": 60}, received_at=10.0)
    saved = json.loads(updated.to_bytes())
    assert set(saved) == {"client_id", "client_secret", "token", "note"}
    assert saved["token"]["refresh_token"] == "r2" and saved["token"]["expires_at"] == 70.0


def test_answer_without_refresh_token_keeps_the_old_one() -> None:
    """RFC 6749 §6: when the server sends no new refresh token, the old one stays."""
    tokens = parse_token_file(json.dumps(flat()).encode(), "t.json")
    updated = tokens.with_answer({"access_token": "a2", "expires_in": 7200}, received_at=0.0)
    assert updated.refresh_token == SECRET_REFRESH
    assert updated.access_token == "a2"


def test_new_token_file_from_a_code_exchange_is_flat_and_valid() -> None:
    """login's answer becomes a flat file that parses again."""
    tokens = new_token_file({"access_token": "a", "refresh_token": "r", "expires_in": 7200}, received_at=50.0)
    again = parse_token_file(tokens.to_bytes(), "t.json")
    assert again.shape == "flat" and again.refresh_token == "r" and again.expires_at == 7250.0


def test_repr_never_shows_tokens() -> None:
    """The TokenFile repr holds no secret, so an accidental log of it leaks nothing."""
    tokens = parse_token_file(json.dumps(flat()).encode(), "t.json")
    assert SECRET_ACCESS not in repr(tokens) and SECRET_REFRESH not in repr(tokens)


def test_fingerprint_is_eight_hex_digits_of_sha256() -> None:
    """Fingerprints are stable, short and not the secret."""
    assert fingerprint("abc") == "ba7816bf"


token_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**9), 10**9), st.text(max_size=20))


@given(
    access=st.text(max_size=80),
    refresh=token_text,
    expires_at=st.one_of(st.none(), st.floats(min_value=0, max_value=4e9)),
    extra=st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k not in {"access_token",
                          "refresh_token", "expires_at", "expires_in", "token_type", "scope", "token"}),
                          json_scalars, max_size=4),
    nested=st.booleans(),
)
def test_round_trip_keeps_every_field(
    access: str, refresh: str, expires_at: float | None, extra: dict[str, Any], nested: bool
) -> None:
    """Parsing what we serialise gives back the same document, in either shape."""
    token: dict[str, Any] = {"access_token": access, "refresh_token": refresh, **extra}
    if expires_at is not None:
        token["expires_at"] = expires_at
    document: dict[str, Any] = {"client_id": "c", "token": token} if nested else token
    parsed = parse_token_file(json.dumps(document).encode(), "t.json")
    again = parse_token_file(parsed.to_bytes(), "t.json")
    assert again.document == document
    assert again.nested == nested
    assert again.refresh_token == refresh


@given(st.binary(max_size=200))
def test_arbitrary_bytes_either_parse_or_raise_token_file_error(data: bytes) -> None:
    """No input makes the parser raise anything but TokenFileError."""
    try:
        parse_token_file(data, "t.json")
    except TokenFileError:
        pass


def test_escapes_that_make_valid_text_are_accepted() -> None:
    """A surrogate pair escape is one character and an escaped backslash before "ud800" is plain text: both load."""
    data = b'{"access_token": "a", "refresh_token": "r", "note": "\\ud83d\\ude00", "path": "\\\\ud800"}'
    tokens = parse_token_file(data, "t.json")
    assert tokens.document["note"] == "\U0001F600" and tokens.document["path"] == "\\ud800"


def test_a_document_holding_a_lone_surrogate_is_still_written_whole() -> None:
    """Serialising a document with a lone surrogate escapes it rather than raising, so a save never fails on it."""
    tokens = parse_token_file(json.dumps(flat()).encode(), "t.json")
    updated = tokens.with_answer({"access_token": "a2", "refresh_token": "r2", "scope": "s \ud800"}, received_at=0.0)
    assert json.loads(updated.to_bytes()) == updated.document
    assert fingerprint("r\ud800") != fingerprint("r")


def test_an_answer_without_an_access_token_leaves_an_empty_one_and_no_expiry() -> None:
    """Merging an answer that brought only a refresh token gives a file that loads, with no access token."""
    tokens = parse_token_file(json.dumps(flat(expires_at=99.0, expires_in=7200)).encode(), "t.json")
    updated = tokens.with_answer({"refresh_token": "r2", "expires_in": 7200}, received_at=0.0)
    again = parse_token_file(updated.to_bytes(), "t.json")
    assert again.refresh_token == "r2" and again.access_token == ""
    assert again.expires_at is None and "expires_in" not in again.token


@pytest.mark.parametrize(
    "expires_in", [10**400, float("inf"), float("nan"), -1, 0, True, "7200"],
    ids=["10**400", "inf", "nan", "negative", "zero", "boolean", "string"],
)
def test_an_expires_in_the_file_cannot_hold_is_dropped_or_clamped(expires_in: object) -> None:
    """A lifetime that is not a positive number of at most a year never reaches the file as it came."""
    tokens = parse_token_file(json.dumps(flat()).encode(), "t.json")
    updated = tokens.with_answer({"access_token": "a2", "expires_in": expires_in}, received_at=0.0)
    again = parse_token_file(updated.to_bytes(), "t.json")
    assert again.expires_at is None or 0 < again.expires_at <= 365 * 86400
