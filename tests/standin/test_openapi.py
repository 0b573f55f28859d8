"""The stand-in's API answers validate against AWeber's published OpenAPI description (openapi-subset.yml)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml  # type: ignore[import-untyped]
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_core.validation.response.exceptions import ResponseValidationError
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from job.standin import StandIn
from job.standin.days import day_start_epoch
from tests.standin.conftest import CLIENTS, CONF_ID, bearer

# A verbatim copy of the part of AWeber's published OpenAPI description the job uses, kept beside the
# tests so a clean clone checks against it (no skip: a missing file is a failure).
SPEC_PATH = Path(__file__).resolve().parent / "aweber" / "openapi-subset.yml"
SPEC_SERVER = "https://api.aweber.com"

pytestmark = [
    # openapi-core cannot check oauth2 security schemes and says so; the token is checked by the stand-in.
    pytest.mark.filterwarnings("ignore:Unsupported scheme type"),
]

ACCOUNT = 123
LIST = 456
START = day_start_epoch(date(2026, 3, 1))


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    """AWeber's OpenAPI subset, loaded once."""
    return OpenAPI.from_file_path(str(SPEC_PATH))


@pytest.fixture(scope="module")
def spec_document() -> dict[str, Any]:
    """The raw OpenAPI document, for validating bodies against a named schema."""
    document: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return document


@pytest.fixture
def populated() -> Iterator[tuple[StandIn, str]]:
    """A stand-in with a 250-subscriber list plus appended subscribers that use every optional field."""
    with StandIn(clients=CLIENTS) as server:
        server.add_account(ACCOUNT, company="Example Company")
        server.add_list(ACCOUNT, LIST, "Weekly Newsletter", size=250, start=START, end=START + 86_400 * 5, seed=7)
        server.add_list(ACCOUNT, 457, "Empty")
        server.add_subscribers(ACCOUNT, LIST, [
            {"email": "ada@example.com", "name": "Ada", "subscribed_at": START + 86_400 * 6.5,
             "tags": ["vip", "beta"], "custom_fields": {"apple": "fuji"}, "ad_tracking": "spring",
             "misc_notes": "from the fair", "subscription_method": "webform"},
            {"email": "bob@example.com", "subscribed_at": START + 86_400 * 7, "status": "unconfirmed"},
            {"email": "eve@example.com", "subscribed_at": START + 86_400 * 7, "status": "unsubscribed",
             "unsubscribed_at": START + 86_400 * 8, "unsubscribe_method": "api: unsubscribe"},
        ])
        yield server, str(server.issue_tokens(CONF_ID)["access_token"])


def validate(openapi: OpenAPI, response: requests.Response) -> None:
    """Validate a stand-in request and its response as if they had been made to api.aweber.com."""
    prepared = response.request.copy()
    parts = urlsplit(str(prepared.url))
    prepared.url = f"{SPEC_SERVER}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    openapi.validate_request(RequestsOpenAPIRequest(prepared))
    openapi.validate_response(RequestsOpenAPIRequest(prepared), RequestsOpenAPIResponse(response))


def validate_schema(document: dict[str, Any], value: object, schema_name: str) -> None:
    """Validate ``value`` against components/schemas/<schema_name>, formats included."""
    # A root $ref makes the whole document the resolution scope, so the schema's own $refs resolve.
    schema = {**document, "$ref": f"#/components/schemas/{schema_name}"}
    errors = list(OAS30Validator(schema, format_checker=oas30_format_checker).iter_errors(value))
    assert errors == [], errors


def get(server: StandIn, token: str, path: str, **params: str) -> requests.Response:
    """GET an API path on the stand-in."""
    return requests.get(f"{server.api_url}{path}", params=params, headers=bearer(token), timeout=10)


SUCCESSES = [
    ("/accounts", {}, "Accounts", "Account"),
    ("/accounts", {"ws.size": "1", "ws.start": "0"}, "Accounts", "Account"),
    ("/accounts/123/lists", {}, "Lists", "List"),
    ("/accounts/123/lists", {"ws.op": "find", "name": "Empty"}, "Lists", "List"),
    ("/accounts/123/lists/456/subscribers", {}, "Subscribers", "Subscriber"),
    ("/accounts/123/lists/456/subscribers", {"ws.start": "200", "sort_order": "desc"}, "Subscribers", "Subscriber"),
    ("/accounts/123/lists/456/subscribers", {"ws.op": "find", "subscribed_after": "2026-03-06",
                                             "sort_key": "subscribed_at"}, "FindSubscribers", "SubscriberFind"),
    ("/accounts/123/lists/456/subscribers", {"ws.op": "find", "status": "unconfirmed", "ws.size": "3",
                                             "ws.start": "3"}, "FindSubscribers", "SubscriberFind"),
    ("/accounts/123/lists/456/subscribers", {"ws.op": "find", "sort_key": "unsubscribed_at",
                                             "sort_order": "desc"}, "FindSubscribers", "SubscriberFind"),
    ("/accounts/123/lists/456/subscribers", {"ws.op": "find", "status": "unsubscribed",
                                             "unsubscribed_after": "2026-03-08", "sort_key": "unsubscribed_at",
                                             "sort_order": "asc"}, "FindSubscribers", "SubscriberFind"),
    ("/accounts/123/lists/457/subscribers", {"ws.op": "find"}, "FindSubscribers", "SubscriberFind"),
]


@pytest.mark.parametrize(("path", "params", "collection", "entry"), SUCCESSES)
def test_collections_validate(
    openapi: OpenAPI,
    spec_document: dict[str, Any],
    populated: tuple[StandIn, str],
    path: str,
    params: dict[str, str],
    collection: str,
    entry: str,
) -> None:
    """Accounts, lists, subscribers and find answers validate, and their entries match the precise schema."""
    server, token = populated
    response = get(server, token, path, **params)
    assert response.status_code == 200
    validate(openapi, response)
    body = response.json()
    validate_schema(spec_document, body, collection)
    for item in body["entries"]:
        validate_schema(spec_document, item, entry)
    if entry == "SubscriberFind":
        assert all({"list_link", "list_name"} <= set(item) for item in body["entries"])


def test_total_size_answer_validates(openapi: OpenAPI, populated: tuple[StandIn, str]) -> None:
    """ws.show=total_size answers a bare integer, which the description allows."""
    server, token = populated
    response = get(server, token, "/accounts/123/lists/456/subscribers", **{"ws.op": "find", "ws.show": "total_size"})
    assert response.json() == 253
    validate(openapi, response)


ERRORS = [
    ("/accounts/123/lists/456/subscribers", {"ws.size": "101"}, 400, "WebServiceError"),
    ("/accounts/123/lists/456/subscribers", {"ws.op": "find", "sort_key": "name"}, 400, "WebServiceError"),
    ("/accounts/123/lists/456/subscribers", {"ws.op": "find", "subscribed_after": "2026-02-30"}, 400,
     "BadRequestError"),
    ("/accounts", {"ws.start": "-1"}, 400, "WebServiceError"),
    ("/accounts/123/lists", {"ws.size": "0"}, 400, "WebServiceError"),
    ("/accounts/999/lists", {}, 404, "NotFoundError"),
    ("/accounts/123/lists/999/subscribers", {}, 404, "NotFoundError"),
]


@pytest.mark.parametrize(("path", "params", "status", "error_type"), ERRORS)
def test_error_envelopes_validate(
    openapi: OpenAPI,
    spec_document: dict[str, Any],
    populated: tuple[StandIn, str],
    path: str,
    params: dict[str, str],
    status: int,
    error_type: str,
) -> None:
    """400 and 404 answers are AWeber envelopes that validate against the description."""
    server, token = populated
    response = get(server, token, path, **params)
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type
    validate_response_only(openapi, response)
    validate_schema(spec_document, response.json(), "EndpointError")


def validate_response_only(openapi: OpenAPI, response: requests.Response) -> None:
    """Validate only the response: the request itself was deliberately invalid."""
    prepared = response.request.copy()
    parts = urlsplit(str(prepared.url))
    prepared.url = f"{SPEC_SERVER}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    openapi.validate_response(RequestsOpenAPIRequest(prepared), RequestsOpenAPIResponse(response))


@pytest.mark.parametrize("path", ["/accounts", "/accounts/123/lists", "/accounts/123/lists/456/subscribers"])
def test_401_validates(openapi: OpenAPI, populated: tuple[StandIn, str], path: str) -> None:
    """The 401 for an unknown or expired token (RFC 6750's invalid_token) validates against the description."""
    server, _ = populated
    response = get(server, "not-a-live-token", path)
    assert response.status_code == 401
    validate(openapi, response)
    server.expire_access_tokens()
    expired = get(server, populated[1], path)
    assert expired.status_code == 401
    assert expired.json()["error"] == "invalid_token"
    validate(openapi, expired)


@pytest.mark.parametrize(
    ("path", "params"),
    [("/accounts", {}), ("/accounts/1/lists", {}), ("/accounts/1/lists/2/subscribers", {"ws.op": "find"})],
)
def test_rate_limit_403_validates(openapi: OpenAPI, path: str, params: dict[str, str]) -> None:
    """The 403 "Rate Limit Error" validates as ForbiddenError / RateLimitOrSubscriberPermission."""
    with StandIn(clients=CLIENTS, rate_limit_per_minute=1) as server:
        server.add_account(1)
        server.add_list(1, 2, "List", size=3)
        token = str(server.issue_tokens(CONF_ID)["access_token"])
        assert get(server, token, path, **params).status_code == 200
        response = get(server, token, path, **params)
    assert response.status_code == 403
    validate(openapi, response)


def test_validation_catches_a_wrong_answer(openapi: OpenAPI, populated: tuple[StandIn, str]) -> None:
    """The check has teeth: a subscriber entry with a null name or a bad timestamp fails validation."""
    server, token = populated
    response = get(server, token, "/accounts/123/lists/456/subscribers")
    response._content = b'{"entries": [{"id": 1, "name": null, "subscribed_at": "yesterday"}]}'
    with pytest.raises(ResponseValidationError):
        validate(openapi, response)
