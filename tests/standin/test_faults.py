"""Injected faults: canned answers, delays, dropped connections, lost answers, drip, truncation, huge bodies,
odd answers around a real new grant."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
import requests

from job.standin import RETRY_LATER_403_MESSAGES, Fault, StandIn
from tests.standin.conftest import CONF_ID, bearer, refresh


def token_counts(server: StandIn) -> dict[str, int]:
    """The token endpoint counters."""
    counts: dict[str, int] = server.stats()["token"]  # type: ignore[assignment]
    return counts


def test_status_fault_answers_without_rotating(server: StandIn, http: requests.Session) -> None:
    """A 503 fault with Retry-After answers temporarily_unavailable and leaves the refresh token live."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    server.inject(Fault(status=503, retry_after="7"), path="/oauth2/token")
    answer = refresh(http, server, token)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "7"
    assert answer.json()["error"] == "temporarily_unavailable"
    assert server.live_refresh_tokens() == {token}
    assert refresh(http, server, token).status_code == 200
    assert token_counts(server) == {"refresh_token:503:temporarily_unavailable": 1, "refresh_token:200": 1}
    assert server.stats()["faults"] == {"status=503+retry_after": 1}


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault(status=400, oauth_error="invalid_grant"), {"error": "invalid_grant"}),
        (Fault(status=500), {"error": "server_error"}),
        (Fault(status=401, oauth_error="invalid_client", message="nope"),
         {"error": "invalid_client", "error_description": "nope"}),
        (Fault(status=400, envelope=True, message="Request does not have OAuth credentials."),
         {"error": {"status": 400, "type": "BadRequestError", "message": "Request does not have OAuth credentials.",
                    "documentation_url": "https://api.aweber.com/#badrequest"}}),
    ],
    ids=["invalid_grant", "500", "invalid_client with message", "AWeber envelope"],
)
def test_token_endpoint_fault_bodies(
    server: StandIn, http: requests.Session, fault: Fault, expected: dict[str, Any]
) -> None:
    """A status fault at the token endpoint answers an RFC 6749 body, or AWeber's envelope when asked."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    server.inject(fault)
    answer = refresh(http, server, token)
    assert answer.status_code == fault.status
    body = answer.json()
    assert {key: body[key] for key in expected} == expected


@pytest.mark.parametrize("message", RETRY_LATER_403_MESSAGES)
def test_api_403_that_asks_for_a_backoff_can_be_injected(
    server: StandIn, http: requests.Session, message: str
) -> None:
    """AWeber's "try again later" 403s come as a ForbiddenError envelope with AWeber's own message."""
    server.add_account(1)
    token = server.issue_tokens(CONF_ID)["access_token"]
    server.inject(Fault(status=403, message=message), path="/1.0/accounts")
    answer = http.get(f"{server.api_url}/accounts", headers=bearer(token), timeout=5)
    assert answer.status_code == 403
    assert answer.json()["error"] == {
        "status": 403, "message": message, "type": "ForbiddenError",
        "documentation_url": "https://api.aweber.com/#forbidden",
    }
    assert http.get(f"{server.api_url}/accounts", headers=bearer(token), timeout=5).status_code == 200


def test_api_status_fault_answers_the_envelope(server: StandIn, http: requests.Session) -> None:
    """A status fault on the API answers AWeber's envelope with the type for that status."""
    server.add_account(1)
    grant = server.issue_tokens(CONF_ID)
    server.inject(Fault(status=503), path="/1.0/")
    answer = http.get(f"{server.api_url}/accounts", headers=bearer(grant["access_token"]), timeout=5)
    assert answer.status_code == 503
    assert answer.json()["error"]["type"] == "ServiceUnavailableError"


def test_raw_body_fault_sends_bytes_and_content_type(server: StandIn, http: requests.Session) -> None:
    """A body fault sends those exact bytes with the given status and content type."""
    server.inject(Fault(status=200, body=b"<html>Service OK</html>", content_type="text/html"))
    answer = refresh(http, server, "anything")
    assert (answer.status_code, answer.content) == (200, b"<html>Service OK</html>")
    assert answer.headers["Content-Type"] == "text/html"


def test_success_status_without_body_is_an_empty_object(server: StandIn, http: requests.Session) -> None:
    """A 200 fault with no body field answers {} — a success that carries no token."""
    server.inject(Fault(status=200))
    assert refresh(http, server, "anything").json() == {}


def test_huge_body_is_streamed_whole(server: StandIn, http: requests.Session) -> None:
    """A body_size fault streams exactly that many bytes, announced in Content-Length."""
    size = 50_000_000
    server.inject(Fault(status=200, body_size=size))
    with refresh_stream(http, server) as answer:
        assert int(answer.headers["Content-Length"]) == size
        received = sum(len(chunk) for chunk in answer.iter_content(1 << 20))
    assert received == size


def refresh_stream(http: requests.Session, server: StandIn) -> requests.Response:
    """POST a refresh and return the streamed response."""
    data = {"grant_type": "refresh_token", "refresh_token": "x"}
    return http.post(server.token_url, data=data, auth=(CONF_ID, "the-secret"), stream=True, timeout=10)


def test_delay_holds_the_answer(server: StandIn, http: requests.Session) -> None:
    """delay_seconds holds the request; a client that times out first has still spent its refresh token."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    server.inject(Fault(delay_seconds=0.3))
    with pytest.raises(requests.exceptions.ReadTimeout):
        refresh(http, server, token, timeout=0.1)
    deadline = time.monotonic() + 5
    while token in server.live_refresh_tokens() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert token not in server.live_refresh_tokens()
    (live,) = server.live_refresh_tokens()
    server.inject(Fault(delay_seconds=0.2))
    started = time.monotonic()
    with requests.Session() as fresh:
        assert refresh(fresh, server, live).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_drop_before_closes_without_processing(server: StandIn, http: requests.Session) -> None:
    """drop="before" closes the connection unanswered and the refresh token stays live."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    server.inject(Fault(drop="before"), path="/oauth2/token")
    with pytest.raises(requests.exceptions.ConnectionError):
        refresh(http, server, token)
    assert server.live_refresh_tokens() == {token}
    assert token_counts(server) == {"refresh_token:dropped": 1}
    assert server.request_log()[-1]["outcome"] == "dropped_before"


def test_drop_after_rotates_then_loses_the_answer(server: StandIn, http: requests.Session) -> None:
    """drop="after" rotates the refresh token, then closes: the client errs and its token is already spent."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    server.inject(Fault(drop="after"), path="/oauth2/token")
    with pytest.raises(requests.exceptions.ConnectionError):
        refresh(http, server, token)
    live = server.live_refresh_tokens()
    assert token not in live and len(live) == 1
    assert token_counts(server) == {"refresh_token:200:lost": 1}
    with requests.Session() as fresh:
        assert refresh(fresh, server, token).json()["error"] == "invalid_grant"
    assert server.stats()["dropped"] == 1


def test_truncated_answer_is_processed_but_incomplete(server: StandIn, http: requests.Session) -> None:
    """truncate announces the full length, sends half and closes; the refresh token was rotated."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    server.inject(Fault(truncate=True), path="/oauth2/token")
    with pytest.raises(requests.exceptions.RequestException):
        refresh(http, server, token)
    assert token not in server.live_refresh_tokens()
    assert token_counts(server) == {"refresh_token:200:lost": 1}


def test_drip_sends_the_body_slowly(server: StandIn, http: requests.Session) -> None:
    """drip_seconds sends the body a byte at a time: whole but slow, or a read timeout for an impatient client."""
    server.inject(Fault(status=200, body=b'{"a": 1}', drip_seconds=0.02))
    started = time.monotonic()
    assert refresh(http, server, "x").json() == {"a": 1}
    assert time.monotonic() - started >= 0.02 * 7
    server.inject(Fault(status=200, body=b"{}  ", drip_seconds=0.5))
    with requests.Session() as fresh, pytest.raises(requests.exceptions.RequestException):
        refresh(fresh, server, "x", timeout=0.2)


def test_faults_are_consumed_in_order_and_only_on_their_path(server: StandIn, http: requests.Session) -> None:
    """Each fault serves one matching request, in the order injected; other paths pass untouched."""
    server.add_account(1)
    grant = server.issue_tokens(CONF_ID)
    server.inject(Fault(status=500), Fault(status=502), path="/oauth2/token")
    assert http.get(f"{server.api_url}/accounts", headers=bearer(grant["access_token"]), timeout=5).status_code == 200
    token = str(grant["refresh_token"])
    assert [refresh(http, server, token).status_code for _ in range(3)] == [500, 502, 200]
    assert server.faults.pending() == 0


def test_request_delay_applies_to_every_request(http: requests.Session) -> None:
    """request_delay_seconds slows every request, as simulated network latency."""
    with StandIn(request_delay_seconds=0.1) as server:
        started = time.monotonic()
        http.get(f"{server.api_url}/accounts", timeout=5)
        http.get(f"{server.api_url}/accounts", timeout=5)
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize(
    "fields",
    [
        {"body": b"x"},
        {"message": "m"},
        {"status": 500, "oauth_error": "server_error", "envelope": True},
        {"status": 500, "drop": "after"},
        {"drop": "before", "truncate": True},
        {"status": 99},
        {"delay_seconds": -1},
        {"content_type": "text/plain", "status": 200},
        {"drop": "sideways"},
        {"odd_answer": "no-such-answer"},
        {"odd_answer": "garbage", "status": 200},
        {"odd_answer": "garbage", "drop": "after"},
    ],
    ids=["body without status", "message without status", "two bodies", "status and drop", "drop and truncate",
         "bad status", "negative delay", "content type without body", "unknown drop", "unknown odd answer",
         "odd answer and status", "odd answer and drop"],
)
def test_contradictory_faults_are_refused(fields: dict[str, Any]) -> None:
    """A fault whose fields contradict each other raises ValueError when built."""
    with pytest.raises(ValueError):
        Fault(**fields)


@pytest.mark.parametrize(
    "fault",
    [
        Fault(),
        Fault(status=503, retry_after="Wed, 21 Oct 2026 07:28:00 GMT", delay_seconds=0.5),
        Fault(status=200, body=b"\x00\xffgarbage", content_type="application/octet-stream"),
        Fault(drop="after"),
        Fault(status=200, body_size=10, drip_seconds=0.1, truncate=True),
        Fault(status=400, oauth_error="invalid_grant", message="gone"),
        Fault(odd_answer="expires_in_overflow", delay_seconds=0.1),
    ],
)
def test_faults_round_trip_through_json(fault: Fault) -> None:
    """Fault.to_json and Fault.from_json are inverse, so faults can be sent to another process."""
    assert Fault.from_json(fault.to_json()) == fault


def test_fault_from_json_rejects_unknown_fields_and_wrong_types() -> None:
    """A fault spec with an unknown field or a wrongly typed one raises ValueError."""
    with pytest.raises(ValueError):
        Fault.from_json({"stauts": 500})
    with pytest.raises(ValueError):
        Fault.from_json({"status": True})
    with pytest.raises(ValueError):
        Fault.from_json({"status": "500"})


# What each odd answer must hold, written out here rather than read from the stand-in: the raw JSON text
# of the member that is odd (checked in the bytes, since json cannot read some of them back faithfully).
ODD_MEMBER_TEXT = {
    "expires_in_huge": b'"expires_in": 1' + b"0" * 400 + b"}",
    "expires_in_overflow": b'"expires_in": 1e999',
    "expires_in_nan": b'"expires_in": NaN',
    "expires_in_negative": b'"expires_in": -7200',
    "expires_in_string": b'"expires_in": "7200"',
    "expires_in_word": b'"expires_in": "soon"',
    "scope_lone_surrogate": b'"scope": "account.read \\ud800 list.read"',
    "token_type_mac": b'"token_type": "mac"',
    "access_token_lone_surrogate": b'"access_token": "abc\\ud800def"',
    "invalid_utf8_in_unknown_member": b'"note": "\xff\xfe"',
    "deep_nesting_in_unknown_member": b'"extra": ' + b"[" * 5000 + b"]" * 5000,
}


def test_odd_answer_rotates_and_carries_the_new_refresh_token(server: StandIn, http: requests.Session) -> None:
    """An odd-answer fault processes the refresh (the old token is spent) and its 200 body carries the new live one."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    server.inject(Fault(odd_answer="expires_in_overflow"), path="/oauth2/token")
    answer = refresh(http, server, token)
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"
    body = json.loads(answer.content)  # Python's json reads 1e999 as infinity
    assert body["expires_in"] == float("inf")
    assert body["token_type"] == "bearer"
    assert server.live_refresh_tokens() == {body["refresh_token"]}
    assert token not in server.live_refresh_tokens()
    assert server.stats()["faults"] == {"odd_answer=expires_in_overflow": 1}


@pytest.mark.parametrize("name", sorted(ODD_MEMBER_TEXT))
def test_odd_answers_hold_the_odd_member_beside_the_new_refresh_token(
    server: StandIn, http: requests.Session, name: str
) -> None:
    """Each listed odd answer holds its odd member as raw JSON text and the new live refresh token."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    server.inject(Fault(odd_answer=name), path="/oauth2/token")
    answer = refresh(http, server, token)
    assert answer.status_code == 200
    assert ODD_MEMBER_TEXT[name] in answer.content
    (live,) = server.live_refresh_tokens()
    assert f'"refresh_token": "{live}"'.encode() in answer.content


def test_deep_nesting_breaks_a_recursive_json_reader(server: StandIn, http: requests.Session) -> None:
    """The deep-nesting odd answer is valid JSON that Python's json module cannot read: RecursionError."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    server.inject(Fault(odd_answer="deep_nesting_before_the_tokens"), path="/oauth2/token")
    answer = refresh(http, server, token)
    with pytest.raises(RecursionError):
        json.loads(answer.content)
    assert len(answer.content) < 64 * 1024


@pytest.mark.parametrize("name", ["garbage", "json_without_tokens", "refresh_token_only_in_a_broken_string"])
def test_garbage_odd_answers_spend_the_token_and_carry_no_usable_one(
    server: StandIn, http: requests.Session, name: str
) -> None:
    """The garbage odd answers rotate all the same, but no complete new refresh token is in their body."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    server.inject(Fault(odd_answer=name), path="/oauth2/token")
    answer = refresh(http, server, token)
    assert answer.status_code == 200
    (live,) = server.live_refresh_tokens()
    assert live != token
    assert f'"{live}"'.encode() not in answer.content


def test_odd_answer_leaves_a_refused_refresh_and_the_api_alone(server: StandIn, http: requests.Session) -> None:
    """An odd-answer fault changes only a 200 from the token endpoint: invalid_grant and API answers pass through."""
    server.add_account(1)
    grant = server.issue_tokens(CONF_ID)
    server.inject(Fault(odd_answer="garbage"))
    refused = refresh(http, server, "not-a-live-token")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    server.inject(Fault(odd_answer="garbage"))
    accounts = http.get(f"{server.api_url}/accounts", headers=bearer(grant["access_token"]), timeout=5)
    assert accounts.status_code == 200 and accounts.json()["entries"][0]["id"] == 1


def test_the_request_log_names_the_presented_refresh_token_by_fingerprint(
    server: StandIn, http: requests.Session
) -> None:
    """A refresh request's log entry holds the SHA-256 prefix of the refresh token it presented, never the token."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    refresh(http, server, token)
    refresh(http, server, token)
    entries = [entry for entry in server.request_log() if entry["kind"] == "token"]
    expected = hashlib.sha256(token.encode()).hexdigest()[:8]
    assert [entry["refresh_token_fingerprint"] for entry in entries] == [expected, expected]
    assert token not in json.dumps(server.request_log())
