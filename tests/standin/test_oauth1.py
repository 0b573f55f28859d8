"""The stand-in's legacy OAuth 1.0a checks: signed API requests are verified, and every bad one is a 401."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA1, Client

from job.standin import StandIn
from job.standin.oauth1 import OAuth1Grant
from tests.standin.test_process import start_process, wait_for_port
from tests.support.standin import StandInControl, standin_from_config

ACCOUNT = 123
LIST = 456


@pytest.fixture
def legacy(server: StandIn) -> tuple[StandIn, OAuth1Grant]:
    """A running stand-in with one account, one list and a registered set of OAuth 1.0a credentials."""
    server.add_account(ACCOUNT)
    server.add_list(ACCOUNT, LIST, size=3)
    return server, server.add_oauth1_credentials()


def signed(grant: OAuth1Grant, url: str, *, consumer_secret: str | None = None, timestamp: str | None = None,
           nonce: str | None = None) -> dict[str, str]:
    """The Authorization header oauthlib's client makes for GET ``url`` (HMAC-SHA1), with overrides."""
    client = Client(
        grant.consumer_key,
        client_secret=consumer_secret if consumer_secret is not None else grant.consumer_secret,
        resource_owner_key=grant.access_token,
        resource_owner_secret=grant.token_secret,
        signature_method=SIGNATURE_HMAC_SHA1,
        timestamp=timestamp,
        nonce=nonce,
    )
    _, headers, _ = client.sign(url, http_method="GET")
    return {"Authorization": headers["Authorization"]}


def subscribers_url(server: StandIn) -> str:
    return f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers?ws.op=find&ws.size=2&status=subscribed"


def refusal(answer: requests.Response) -> str:
    """AWeber's envelope message of a 401 answer."""
    assert answer.status_code == 401, answer.text
    error = answer.json()["error"]
    assert error["type"] == "UnauthorizedError"
    return str(error["message"])


def test_a_correctly_signed_request_with_query_parameters_is_answered(legacy: tuple[StandIn, OAuth1Grant]) -> None:
    """A GET signed with the registered credentials, query included in the signature, gets its collection."""
    server, grant = legacy
    url = subscribers_url(server)
    answer = requests.get(url, headers=signed(grant, url), timeout=5)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["entries"]) == 2


def test_a_wrong_consumer_secret_is_refused_as_a_bad_signature(legacy: tuple[StandIn, OAuth1Grant]) -> None:
    """A signature made with another consumer secret is a 401 that says the signature does not match."""
    server, grant = legacy
    url = subscribers_url(server)
    message = refusal(requests.get(url, headers=signed(grant, url, consumer_secret="not-the-secret"), timeout=5))
    assert "signature" in message


def test_a_signature_for_other_query_parameters_is_refused(legacy: tuple[StandIn, OAuth1Grant]) -> None:
    """Changing a query parameter after signing breaks the signature: 401."""
    server, grant = legacy
    url = subscribers_url(server)
    headers = signed(grant, url)
    assert "signature" in refusal(requests.get(url.replace("ws.size=2", "ws.size=3"), headers=headers, timeout=5))


def test_a_reused_nonce_is_refused(legacy: tuple[StandIn, OAuth1Grant]) -> None:
    """The same nonce and timestamp twice: the first is answered, the replay is a 401 naming the nonce."""
    server, grant = legacy
    url = subscribers_url(server)
    headers = signed(grant, url)
    assert requests.get(url, headers=headers, timeout=5).status_code == 200
    assert "nonce" in refusal(requests.get(url, headers=headers, timeout=5))


def test_a_stale_timestamp_is_refused(legacy: tuple[StandIn, OAuth1Grant]) -> None:
    """A request signed an hour ago is a 401 naming the timestamp, however good its signature."""
    server, grant = legacy
    url = subscribers_url(server)
    stale = str(int(time.time()) - 3600)
    assert "timestamp" in refusal(requests.get(url, headers=signed(grant, url, timestamp=stale), timeout=5))


def test_an_unknown_token_and_a_disconnected_integration_are_refused(legacy: tuple[StandIn, OAuth1Grant]) -> None:
    """Credentials never registered, or of a disconnected integration, are 401s that say so."""
    server, grant = legacy
    url = subscribers_url(server)
    stranger = OAuth1Grant(grant.consumer_key, grant.consumer_secret, "unknownToken123", "whatever")
    assert refusal(requests.get(url, headers=signed(stranger, url), timeout=5)) == "Invalid token."
    server.oauth1.disconnect(grant.consumer_key)
    assert "disconnected" in refusal(requests.get(url, headers=signed(grant, url), timeout=5))
    server.oauth1.reconnect(grant.consumer_key)
    assert requests.get(url, headers=signed(grant, url), timeout=5).status_code == 200


def test_credentials_come_from_the_json_config(tmp_path: Path) -> None:
    """An ``oauth1`` entry in the JSON config registers those exact credentials."""
    values = {"consumer_key": "AkConsumerKey01", "consumer_secret": "cs", "access_token": "AgToken01",
              "token_secret": "ts"}
    config = {"accounts": [{"id": ACCOUNT, "lists": [{"id": LIST, "size": 1}]}], "oauth1": [values]}
    with standin_from_config(json.loads(json.dumps(config))) as server:
        url = subscribers_url(server)
        grant = OAuth1Grant(**values)
        assert requests.get(url, headers=signed(grant, url), timeout=5).status_code == 200
        assert set(values.values()) <= set(server.issued_secrets())
    with pytest.raises(ValueError, match="unknown oauth1 keys"):
        standin_from_config({"oauth1": [{**values, "refresh_token": "x"}]})


def test_credentials_come_from_the_control_api(tmp_path: Path) -> None:
    """A stand-in process registers OAuth 1.0a credentials through ``/_control/oauth1-credentials``."""
    config = {"accounts": [{"id": ACCOUNT, "lists": [{"id": LIST, "size": 1}]}]}
    process, port_file = start_process(tmp_path, config)
    try:
        control = StandInControl(f"http://127.0.0.1:{wait_for_port(process, port_file)}")
        values = control.add_oauth1_credentials(consumer_key="AkFromControl")
        assert values["consumer_key"] == "AkFromControl" and set(values) == {
            "consumer_key", "consumer_secret", "access_token", "token_secret"}
        grant = OAuth1Grant(**{key: str(value) for key, value in values.items()})
        url = f"{control.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers"
        assert requests.get(url, headers=signed(grant, url), timeout=5).status_code == 200
    finally:
        process.kill()
        process.communicate(timeout=10)
