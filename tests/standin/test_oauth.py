"""The stand-in's OAuth 2 endpoints: refresh rotation, client authentication, PKCE code flow, revoke."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from job.standin import StandIn
from tests.standin.conftest import CLIENTS, CONF_ID, CONF_SECRET, OOB, PUBLIC_ID, FakeClock, bearer, refresh


def make_verifier() -> tuple[str, str]:
    """Return a PKCE verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize(http: requests.Session, server: StandIn, **params: str) -> requests.Response:
    """GET the authorize endpoint without following redirects."""
    query = {"response_type": "code", "scope": "account.read list.read subscriber.read", "state": "st4te"}
    query.update(params)
    return http.get(server.authorize_url, params=query, allow_redirects=False, timeout=5)


def public_code(http: requests.Session, server: StandIn) -> tuple[str, str]:
    """Run the public client's authorize step out of band; return (code, verifier)."""
    verifier, challenge = make_verifier()
    answer = authorize(
        http, server, client_id=PUBLIC_ID, redirect_uri=OOB,
        code_challenge=challenge, code_challenge_method="S256",
    )
    assert answer.status_code == 200
    return answer.headers["X-Authorization-Code"], verifier


def exchange_public(http: requests.Session, server: StandIn, code: str, verifier: str | None) -> requests.Response:
    """Exchange a code as the public client."""
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": OOB, "client_id": PUBLIC_ID}
    if verifier is not None:
        data["code_verifier"] = verifier
    return http.post(server.token_url, data=data, timeout=5)


# -- refresh --------------------------------------------------------------------------------------


def test_refresh_answers_a_new_pair_with_no_store(server: StandIn, http: requests.Session) -> None:
    """A refresh answers a new access and refresh token, bearer, 7200 s, not cacheable, with a Date."""
    grant = server.issue_tokens(CONF_ID)
    answer = refresh(http, server, str(grant["refresh_token"]))
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 7200
    assert body["refresh_token"] != grant["refresh_token"] and body["access_token"] != grant["access_token"]
    assert answer.headers["Cache-Control"] == "no-store"
    assert "Date" in answer.headers


def test_each_refresh_token_works_once(server: StandIn, http: requests.Session) -> None:
    """Refresh tokens rotate: the second use of one is invalid_grant while its successor stays live."""
    first = str(server.issue_tokens(CONF_ID)["refresh_token"])
    second = refresh(http, server, first).json()["refresh_token"]
    reused = refresh(http, server, first)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert server.live_refresh_tokens() == {second}
    assert refresh(http, server, second).status_code == 200


def test_reuse_detection_is_off_by_default(server: StandIn, http: requests.Session) -> None:
    """Without reuse detection a replayed refresh token is refused, and the grant it belonged to lives on."""
    first = str(server.issue_tokens(CONF_ID)["refresh_token"])
    second = refresh(http, server, first).json()["refresh_token"]
    assert refresh(http, server, first).json()["error"] == "invalid_grant"
    assert server.live_refresh_tokens() == {second}
    assert server.reuse_stats() == {"spent_refresh_tokens_presented": 1, "grants_revoked_for_reuse": 0}


def test_reuse_detection_revokes_the_whole_grant(server: StandIn, http: requests.Session) -> None:
    """With reuse detection on, a replayed refresh token revokes every token of its grant; other grants live on."""
    server.add_account(1)
    server.set_reuse_detection(True)
    other = server.issue_tokens(CONF_ID)
    first = str(server.issue_tokens(CONF_ID)["refresh_token"])
    rotated = refresh(http, server, first).json()
    replayed = refresh(http, server, first)
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_grant"
    assert "reuse detected" in replayed.json()["error_description"]
    assert server.live_refresh_tokens() == {other["refresh_token"]}
    assert refresh(http, server, rotated["refresh_token"]).json()["error"] == "invalid_grant"
    accounts = f"{server.api_url}/accounts"
    assert http.get(accounts, headers=bearer(rotated["access_token"]), timeout=5).status_code == 401
    assert http.get(accounts, headers=bearer(other["access_token"]), timeout=5).status_code == 200
    assert server.reuse_stats() == {"spent_refresh_tokens_presented": 1, "grants_revoked_for_reuse": 1}


def test_reuse_detection_can_be_switched_off_again(server: StandIn, http: requests.Session) -> None:
    """Switched off, a replay no longer revokes anything."""
    server.set_reuse_detection(True)
    server.set_reuse_detection(False)
    first = str(server.issue_tokens(CONF_ID)["refresh_token"])
    second = refresh(http, server, first).json()["refresh_token"]
    refresh(http, server, first)
    assert server.live_refresh_tokens() == {second}


def test_refresh_token_of_another_client_is_invalid_grant(server: StandIn, http: requests.Session) -> None:
    """A refresh token issued to the public client is refused to the confidential one, and stays live."""
    token = str(server.issue_tokens(PUBLIC_ID)["refresh_token"])
    answer = refresh(http, server, token)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert token in server.live_refresh_tokens()


def test_confidential_client_may_send_credentials_in_the_body(server: StandIn, http: requests.Session) -> None:
    """client_id and client_secret in the form body authenticate a confidential client, as AWeber allows."""
    token = server.issue_tokens(CONF_ID)["refresh_token"]
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": CONF_ID, "client_secret": CONF_SECRET}
    assert http.post(server.token_url, data=data, timeout=5).status_code == 200
    assert server.request_log()[-1]["client_auth"] == "body"


def test_public_client_refreshes_with_client_id_in_the_body(server: StandIn, http: requests.Session) -> None:
    """A public client sends client_id in the body and no secret."""
    token = str(server.issue_tokens(PUBLIC_ID)["refresh_token"])
    answer = refresh(http, server, token, client_id=PUBLIC_ID, secret=None)
    assert answer.status_code == 200
    assert server.request_log()[-1]["client_auth"] == "public"


def test_public_client_may_use_basic_with_an_empty_password(server: StandIn, http: requests.Session) -> None:
    """Basic auth with a blank password is accepted for a public client, as AWeber's revoke docs describe."""
    token = str(server.issue_tokens(PUBLIC_ID)["refresh_token"])
    assert refresh(http, server, token, client_id=PUBLIC_ID, secret="").status_code == 200


@pytest.mark.parametrize(
    ("client_id", "secret", "body_extra", "description"),
    [
        (CONF_ID, "wrong-secret", {}, "client authentication failed"),
        ("nobody", "x", {}, "unknown client"),
        (PUBLIC_ID, None, {"client_secret": "sneaky"}, "public clients MUST NOT include secrets"),
        (CONF_ID, None, {}, "client authentication failed"),
        (None, None, {}, "client authentication is required"),
    ],
    ids=["wrong secret", "unknown client", "public with secret", "confidential without secret", "anonymous"],
)
def test_bad_client_authentication_is_invalid_client(
    server: StandIn,
    http: requests.Session,
    client_id: str | None,
    secret: str | None,
    body_extra: dict[str, str],
    description: str,
) -> None:
    """Bad client authentication answers 401 invalid_client, and the refresh token is not spent."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    data = {"grant_type": "refresh_token", "refresh_token": token, **body_extra}
    auth = None
    if secret is not None and client_id is not None:
        auth = (client_id, secret)
    elif client_id is not None:
        data["client_id"] = client_id
    answer = http.post(server.token_url, data=data, auth=auth, timeout=5)
    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid_client", "error_description": description}
    assert "WWW-Authenticate" in answer.headers
    assert token in server.live_refresh_tokens()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"refresh_token": "x"}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "password", "username": "u", "password": "p"}, "unsupported_grant_type"),
        ({"grant_type": "refresh_token", "refresh_token": "never-issued"}, "invalid_grant"),
        ({"grant_type": "authorization_code", "redirect_uri": OOB}, "invalid_request"),
    ],
    ids=["no grant_type", "no refresh_token", "password grant", "unknown token", "no code"],
)
def test_token_endpoint_errors_have_the_rfc_6749_shape(
    server: StandIn, http: requests.Session, data: dict[str, str], error: str
) -> None:
    """Missing parameters, unknown grants and unknown tokens answer 400 with an RFC 6749 body."""
    answer = http.post(server.token_url, data=data, auth=(CONF_ID, CONF_SECRET), timeout=5)
    assert answer.status_code == 400
    assert answer.json()["error"] == error
    assert isinstance(answer.json()["error_description"], str)


def test_token_endpoint_refuses_json_bodies_repeats_and_get(server: StandIn, http: requests.Session) -> None:
    """Only a form-encoded POST without repeated parameters is accepted."""
    token = str(server.issue_tokens(CONF_ID)["refresh_token"])
    as_json = http.post(
        server.token_url, json={"grant_type": "refresh_token", "refresh_token": token},
        auth=(CONF_ID, CONF_SECRET), timeout=5,
    )
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    repeated = http.post(
        server.token_url, data=[("grant_type", "refresh_token"), ("refresh_token", token), ("refresh_token", token)],
        auth=(CONF_ID, CONF_SECRET), timeout=5,
    )
    assert repeated.status_code == 400 and "more than once" in repeated.json()["error_description"]
    assert http.get(server.token_url, timeout=5).status_code == 405
    assert token in server.live_refresh_tokens()


# -- authorization code ---------------------------------------------------------------------------


def test_public_client_code_exchange_with_pkce(server: StandIn, http: requests.Session) -> None:
    """Authorize out of band with S256, exchange code and verifier, and the access token works."""
    server.add_account(123)
    code, verifier = public_code(http, server)
    answer = exchange_public(http, server, code, verifier)
    assert answer.status_code == 200
    tokens = answer.json()
    assert tokens["refresh_token"] in server.live_refresh_tokens()
    assert http.get(f"{server.api_url}/accounts", headers=bearer(tokens["access_token"]), timeout=5).status_code == 200


def test_out_of_band_page_shows_the_code(server: StandIn, http: requests.Session) -> None:
    """The oob redirect answers a small HTML page with the code, and the code in X-Authorization-Code."""
    _, challenge = make_verifier()
    answer = authorize(
        http, server, client_id=PUBLIC_ID, redirect_uri=OOB, code_challenge=challenge, code_challenge_method="S256"
    )
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.headers["X-Authorization-Code"] in answer.text


def test_confidential_client_code_flow_redirects_with_code_and_state(server: StandIn, http: requests.Session) -> None:
    """A confidential client is redirected with code and state, and exchanges the code with Basic auth."""
    answer = authorize(http, server, client_id=CONF_ID, redirect_uri="https://localhost/callback?x=1")
    assert answer.status_code == 302
    location = urlsplit(answer.headers["Location"])
    query = parse_qs(location.query)
    assert (location.netloc, location.path, query["x"], query["state"]) == ("localhost", "/callback", ["1"], ["st4te"])
    data = {"grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": "https://localhost/callback?x=1"}
    exchanged = http.post(server.token_url, data=data, auth=(CONF_ID, CONF_SECRET), timeout=5)
    assert exchanged.status_code == 200 and exchanged.json()["token_type"] == "bearer"


@pytest.mark.parametrize(
    ("client_id", "extra", "description"),
    [
        (PUBLIC_ID, {}, "Public Client MUST Use PKCE"),
        (PUBLIC_ID, {"code_challenge": "a" * 43, "code_challenge_method": "plain"},
         "code_challenge_method must be S256"),
        (PUBLIC_ID, {"code_challenge": "a" * 43}, "code_challenge_method must be S256"),
        (PUBLIC_ID, {"code_challenge": "short", "code_challenge_method": "S256"}, "code_challenge must be 43"),
        (CONF_ID, {"code_challenge": "a" * 43, "code_challenge_method": "S256"},
         "Confidential Client MUST NOT Use PKCE"),
        ("nobody", {}, "Invalid client id"),
        (CONF_ID, {"redirect_uri": "ftp://example.com/"}, "Invalid redirect URI"),
        (CONF_ID, {"response_type": "token"}, "response_type must be code"),
        (CONF_ID, {"scope": "everything"}, "unknown scopes: everything"),
    ],
    ids=["public without PKCE", "plain method", "no method", "bad challenge", "confidential with PKCE",
         "unknown client", "bad redirect", "implicit flow", "unknown scope"],
)
def test_authorize_refusals(
    server: StandIn, http: requests.Session, client_id: str, extra: dict[str, str], description: str
) -> None:
    """The authorize endpoint refuses what AWeber refuses, with a 400 that says why."""
    params = {"client_id": client_id, "redirect_uri": OOB, **extra}
    answer = authorize(http, server, **params)
    assert answer.status_code == 400
    assert description in answer.json()["error_description"]


def test_a_code_works_once_and_its_reuse_revokes_the_grant(server: StandIn, http: requests.Session) -> None:
    """A second exchange of the same code is invalid_grant and kills the tokens issued for it (RFC 6749 §4.1.2)."""
    code, verifier = public_code(http, server)
    tokens = exchange_public(http, server, code, verifier).json()
    again = exchange_public(http, server, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert tokens["refresh_token"] not in server.live_refresh_tokens()


@pytest.mark.parametrize(
    ("verifier_kind", "status", "error"),
    [("wrong", 400, "invalid_grant"), ("missing", 400, "invalid_request"), ("malformed", 400, "invalid_grant")],
)
def test_pkce_verifier_must_match(
    server: StandIn, http: requests.Session, verifier_kind: str, status: int, error: str
) -> None:
    """A wrong or malformed code_verifier is invalid_grant; a missing one is invalid_request."""
    code, _ = public_code(http, server)
    verifier = {"wrong": make_verifier()[0], "missing": None, "malformed": "too-short"}[verifier_kind]
    answer = exchange_public(http, server, code, verifier)
    assert answer.status_code == status and answer.json()["error"] == error


def test_confidential_client_must_not_send_a_verifier(server: StandIn, http: requests.Session) -> None:
    """A confidential client sending code_verifier is refused: AWeber forbids PKCE for confidential clients."""
    code = parse_qs(urlsplit(
        authorize(http, server, client_id=CONF_ID, redirect_uri="https://localhost").headers["Location"]
    ).query)["code"][0]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": "https://localhost",
            "code_verifier": make_verifier()[0]}
    answer = http.post(server.token_url, data=data, auth=(CONF_ID, CONF_SECRET), timeout=5)
    assert answer.status_code == 400
    assert answer.json()["error_description"] == "Confidential Client MUST NOT Use PKCE"


def test_redirect_uri_must_match_the_authorize_step(server: StandIn, http: requests.Session) -> None:
    """Exchanging a code with another redirect_uri is invalid_grant."""
    code, verifier = public_code(http, server)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": "https://elsewhere.example",
            "client_id": PUBLIC_ID, "code_verifier": verifier}
    answer = http.post(server.token_url, data=data, timeout=5)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_codes_expire_after_ten_minutes(http: requests.Session) -> None:
    """A code older than ten minutes by the stand-in's clock is invalid_grant."""
    clock = FakeClock()
    with StandIn(clients=CLIENTS, clock=clock) as server:
        code, verifier = public_code(http, server)
        clock.advance(601)
        answer = exchange_public(http, server, code, verifier)
    assert answer.status_code == 400 and "expired" in answer.json()["error_description"]


# -- revoke ---------------------------------------------------------------------------------------


def test_revoking_a_refresh_token_kills_it_and_its_access_tokens(server: StandIn, http: requests.Session) -> None:
    """After revoke the refresh token is invalid_grant and the grant's access token answers 401."""
    server.add_account(1)
    grant = server.issue_tokens(CONF_ID)
    answer = http.post(server.revoke_url, data={"token": grant["refresh_token"], "token_type_hint": "refresh_token"},
                       auth=(CONF_ID, CONF_SECRET), timeout=5)
    assert answer.status_code == 200 and answer.content == b""
    assert refresh(http, server, str(grant["refresh_token"])).json()["error"] == "invalid_grant"
    assert http.get(f"{server.api_url}/accounts", headers=bearer(grant["access_token"]), timeout=5).status_code == 401


def test_public_client_revokes_an_access_token(server: StandIn, http: requests.Session) -> None:
    """A public client revokes with client_id in the body; the access token then answers 401."""
    server.add_account(1)
    grant = server.issue_tokens(PUBLIC_ID)
    answer = http.post(server.revoke_url, data={"token": grant["access_token"], "client_id": PUBLIC_ID}, timeout=5)
    assert answer.status_code == 200
    assert http.get(f"{server.api_url}/accounts", headers=bearer(grant["access_token"]), timeout=5).status_code == 401
    assert grant["refresh_token"] in server.live_refresh_tokens()


@pytest.mark.parametrize(
    ("data", "auth", "status", "error"),
    [
        ({}, (CONF_ID, CONF_SECRET), 400, "invalid_request"),
        ({"token": "whatever"}, (CONF_ID, "wrong"), 401, "invalid_client"),
        ({"token": "whatever", "client_id": PUBLIC_ID, "client_secret": "x"}, None, 401, "invalid_client"),
    ],
    ids=["no token", "wrong secret", "public with secret"],
)
def test_revoke_errors(
    server: StandIn, http: requests.Session, data: dict[str, str], auth: tuple[str, str] | None, status: int, error: str
) -> None:
    """Revoke refuses a missing token and bad client authentication in the RFC 6749 shape."""
    answer = http.post(server.revoke_url, data=data, auth=auth, timeout=5)
    assert answer.status_code == status and answer.json()["error"] == error


def test_revoking_an_unknown_token_succeeds(server: StandIn, http: requests.Session) -> None:
    """An unknown token is revoked without complaint (RFC 7009 §2.2)."""
    answer = http.post(server.revoke_url, data={"token": "never-issued"}, auth=(CONF_ID, CONF_SECRET), timeout=5)
    assert answer.status_code == 200


def test_no_secret_reaches_the_log_stats_or_stderr(capfd: pytest.CaptureFixture[str], http: requests.Session) -> None:
    """Tokens, the client secret, codes and verifiers never appear in the request log, the stats or verbose output."""
    with StandIn(clients=CLIENTS, verbose=True) as server:
        server.add_account(1)
        grant = server.issue_tokens(CONF_ID)
        rotated = refresh(http, server, str(grant["refresh_token"])).json()
        code, verifier = public_code(http, server)
        exchanged = exchange_public(http, server, code, verifier).json()
        http.get(f"{server.api_url}/accounts", params={"access_token": rotated["access_token"]}, timeout=5)
        http.post(server.revoke_url, data={"token": rotated["refresh_token"]}, auth=(CONF_ID, CONF_SECRET), timeout=5)
        recorded = json.dumps([server.request_log(), server.stats()])
    printed = capfd.readouterr()
    assert "standin: POST /oauth2/token 200" in printed.err
    secrets_used = [CONF_SECRET, code, verifier, *grant.values(), *rotated.values(), *exchanged.values()]
    for value in secrets_used:
        if isinstance(value, str) and len(value) > 6:
            assert value not in recorded
            assert value not in printed.out + printed.err


def test_an_internal_error_is_a_500_that_does_not_print_its_message(
    server: StandIn, http: requests.Session, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A bug while answering becomes 500 server_error; stderr names the exception type but not its text."""
    def broken(client_id: str, refresh_token: str) -> dict[str, object]:
        raise KeyError(refresh_token)

    monkeypatch.setattr(server.state, "rotate_refresh_token", broken)
    answer = refresh(http, server, "tok-that-must-not-leak")
    assert answer.status_code == 500 and answer.json()["error"] == "server_error"
    printed = capfd.readouterr().err
    assert "internal error KeyError" in printed
    assert "tok-that-must-not-leak" not in printed
