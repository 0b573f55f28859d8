"""The stand-in's REST API: authentication, rate limit, validation, pagination, find over lazy lists."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from job.standin import StandIn
from job.standin.days import day_start_epoch
from tests.standin.conftest import CLIENTS, CONF_ID, FakeClock, bearer, refresh

ACCOUNT = 123
LIST = 456
DAY0 = date(2026, 1, 1)
DAY0_START = day_start_epoch(DAY0)
MILLION = 1_000_000
LIST_BASE_ID = LIST * 10_000_000


@pytest.fixture
def token(server: StandIn) -> str:
    """A live access token of the confidential client, with account 123 and a 250-subscriber list 456."""
    server.add_account(ACCOUNT)
    server.add_list(ACCOUNT, LIST, "Newsletter", size=250, start=DAY0_START, end=DAY0_START + 249 * 3600, seed=1)
    return str(server.issue_tokens(CONF_ID)["access_token"])


def get(http: requests.Session, url: str, token: str, **params: Any) -> requests.Response:
    """GET with the bearer token."""
    return http.get(url, params=params, headers=bearer(token), timeout=10)


def walk(http: requests.Session, url: str, token: str, **params: Any) -> Iterator[dict[str, Any]]:
    """Yield each page of a collection, following next_collection_link."""
    page: dict[str, Any] = get(http, url, token, **params).json()
    yield page
    while "next_collection_link" in page:
        page = http.get(page["next_collection_link"], headers=bearer(token), timeout=10).json()
        yield page


# -- authentication -------------------------------------------------------------------------------


def test_unknown_token_is_401_invalid_token_from_the_token_layer(server: StandIn, http: requests.Session) -> None:
    """An access token the stand-in never issued answers 401 in RFC 6750's shape, as AWeber's token layer does."""
    answer = get(http, f"{server.api_url}/accounts", "never-issued")
    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid_token", "error_description": "Invalid token."}
    assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="AWeber", error="invalid_token"')
    assert server.stats()["api"] == {"GET accounts:401:invalid_token": 1}


def test_expired_tokens_are_401_until_refreshed(server: StandIn, http: requests.Session, token: str) -> None:
    """expire_access_tokens makes issued tokens answer 401; a refreshed token works."""
    grant = server.issue_tokens(CONF_ID)
    server.expire_access_tokens()
    assert get(http, f"{server.api_url}/accounts", token).status_code == 401
    fresh = refresh(http, server, str(grant["refresh_token"])).json()["access_token"]
    assert get(http, f"{server.api_url}/accounts", fresh).status_code == 200


def test_tokens_expire_by_the_injected_clock(http: requests.Session) -> None:
    """An access token lives access_token_lifetime_seconds by the stand-in's clock."""
    clock = FakeClock()
    with StandIn(clients=CLIENTS, clock=clock, access_token_lifetime_seconds=100) as server:
        server.add_account(1)
        grant = server.issue_tokens(CONF_ID)
        assert grant["expires_in"] == 100
        clock.advance(99)
        assert get(http, f"{server.api_url}/accounts", str(grant["access_token"])).status_code == 200
        clock.advance(1)
        answer = get(http, f"{server.api_url}/accounts", str(grant["access_token"]))
    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid_token", "error_description": "Access token expired."}


def test_disconnected_client_gets_401_even_after_refresh(server: StandIn, http: requests.Session, token: str) -> None:
    """After the customer disconnects the integration, refresh works but the API keeps answering 401."""
    grant = server.issue_tokens(CONF_ID)
    server.revoke_all_access_tokens(disconnect=True)
    assert get(http, f"{server.api_url}/accounts", token).status_code == 401
    fresh = refresh(http, server, str(grant["refresh_token"])).json()["access_token"]
    assert get(http, f"{server.api_url}/accounts", fresh).status_code == 401
    server.reconnect()
    assert get(http, f"{server.api_url}/accounts", fresh).status_code == 200
    server.disconnect(CONF_ID)
    assert get(http, f"{server.api_url}/accounts", fresh).status_code == 401


def test_missing_credentials_are_a_400_like_aweber(server: StandIn, http: requests.Session) -> None:
    """A request without any token answers AWeber's 400 MissingOAuthParametersError."""
    answer = http.get(f"{server.api_url}/accounts", timeout=5)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "MissingOAuthParametersError"


def test_other_authorization_schemes_are_401(server: StandIn, http: requests.Session, token: str) -> None:
    """Only the Bearer scheme authenticates API requests; another scheme gets AWeber's envelope, not invalid_token."""
    answer = http.get(f"{server.api_url}/accounts", headers={"Authorization": f"Token {token}"}, timeout=5)
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "UnauthorizedError"


# -- rate limit -----------------------------------------------------------------------------------


def test_rate_limit_is_a_403_without_retry_after(http: requests.Session) -> None:
    """Past the limit in the window the API answers 403 "Rate Limit Error", and again after the window passes."""
    with StandIn(clients=CLIENTS, rate_limit_per_minute=3, rate_limit_window_seconds=0.5) as server:
        server.add_account(1)
        token = str(server.issue_tokens(CONF_ID)["access_token"])
        statuses = [get(http, f"{server.api_url}/accounts", token).status_code for _ in range(3)]
        limited = get(http, f"{server.api_url}/accounts", token)
        time.sleep(0.55)
        after_window = get(http, f"{server.api_url}/accounts", token).status_code
        stats = server.stats()
    assert statuses == [200, 200, 200]
    assert limited.status_code == 403
    assert limited.json() == {"error": {
        "status": 403, "message": "Rate Limit Error", "type": "ForbiddenError",
        "documentation_url": "https://api.aweber.com/#forbidden",
    }}
    assert "Retry-After" not in limited.headers
    assert after_window == 200
    assert stats["rate_limited"] == 1
    assert stats["api"] == {"GET accounts:200": 4, "GET accounts:403:ForbiddenError": 1}


def test_rate_limit_is_kept_per_account(http: requests.Session) -> None:
    """One account's requests do not use up another account's allowance."""
    with StandIn(clients=CLIENTS, rate_limit_per_minute=2) as server:
        server.add_account(1)
        server.add_account(2)
        token = str(server.issue_tokens(CONF_ID)["access_token"])
        first = [get(http, f"{server.api_url}/accounts/1/lists", token).status_code for _ in range(3)]
        other = get(http, f"{server.api_url}/accounts/2/lists", token).status_code
    assert (first, other) == ([200, 200, 403], 200)


# -- validation and routing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "error_type", "message"),
    [
        ({"ws.size": "101"}, "WebServiceError", 'Maximum for "ws.size" parameter is 100.'),
        ({"ws.size": "0"}, "WebServiceError", 'Minimum for "ws.size" parameter is 1.'),
        ({"ws.start": "-1"}, "WebServiceError", 'Minimum for "ws.start" parameter is 0.'),
        ({"ws.size": "ten"}, "WebServiceError", '"ws.size" parameter must be an integer.'),
        ({"ws.start": "1.5"}, "WebServiceError", '"ws.start" parameter must be an integer.'),
        ({"sort_order": "up"}, "WebServiceError", None),
        ({"ws.op": "find", "sort_key": "email"}, "WebServiceError", None),
        ({"ws.op": "find", "subscribed_after": "2026-13-01"}, "BadRequestError", None),
        ({"ws.op": "find", "subscribed_before": "yesterday"}, "BadRequestError", None),
        ({"ws.op": "find", "status": "gone"}, "BadRequestError", None),
        ({"ws.op": "search"}, "BadRequestError", None),
        ({"ws.op": "find", "ws.show": "everything"}, "BadRequestError", None),
        ({"ws.op": "find", "city": "Chalfont"}, "BadRequestError", None),
    ],
)
def test_invalid_parameters_are_400(
    server: StandIn, http: requests.Session, token: str, params: dict[str, str], error_type: str, message: str | None
) -> None:
    """Invalid paging and sorting is a 400 WebServiceError, invalid search input a 400 BadRequestError."""
    answer = get(http, f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers", token, **params)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["status"], error["type"]) == (400, error_type)
    if message is not None:
        assert error["message"] == message


def test_paging_is_validated_on_every_collection(server: StandIn, http: requests.Session, token: str) -> None:
    """Accounts and lists validate ws.size too."""
    for url in (f"{server.api_url}/accounts", f"{server.api_url}/accounts/{ACCOUNT}/lists"):
        assert get(http, url, token, **{"ws.size": "101"}).json()["error"]["type"] == "WebServiceError"


def test_empty_find_values_count_as_omitted(server: StandIn, http: requests.Session, token: str) -> None:
    """An empty filter value is ignored, as AWeber documents."""
    url = f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers"
    answer = get(http, url, token, **{"ws.op": "find", "subscribed_after": "", "status": "", "ws.show": "total_size"})
    assert answer.json() == 250


@pytest.mark.parametrize(
    ("method", "path", "status", "error_type"),
    [
        ("GET", "/accounts/999/lists", 404, "NotFoundError"),
        ("GET", "/accounts/123/lists/999/subscribers", 404, "NotFoundError"),
        ("GET", "/accounts/abc", 404, "NotFoundError"),
        ("GET", "/accounts/123/lists/456/subscribers/1", 404, "NotFoundError"),
        ("GET", "/nothing/here", 404, "NotFoundError"),
        ("POST", "/accounts/123/lists", 405, "MethodNotAllowedError"),
        ("DELETE", "/accounts/123/lists/456/subscribers", 405, "MethodNotAllowedError"),
    ],
)
def test_unknown_resources_and_methods(
    server: StandIn, http: requests.Session, token: str, method: str, path: str, status: int, error_type: str
) -> None:
    """Unknown accounts, lists and paths answer 404 NotFoundError; other methods 405."""
    answer = http.request(method, f"{server.api_url}{path}", headers=bearer(token), timeout=5)
    assert answer.status_code == status
    assert answer.json()["error"]["type"] == error_type


def test_single_resources_match_their_collection_entries(server: StandIn, http: requests.Session, token: str) -> None:
    """GET on an account, list or subscriber self_link answers the same entry as its collection."""
    account = get(http, f"{server.api_url}/accounts", token).json()["entries"][0]
    listed = get(http, account["lists_collection_link"], token).json()["entries"][0]
    subscriber = get(http, listed["subscribers_collection_link"], token).json()["entries"][7]
    for entry in (account, listed, subscriber):
        assert get(http, entry["self_link"], token).json() == entry


def test_lists_are_sorted_by_id_and_findable_by_name(server: StandIn, http: requests.Session, token: str) -> None:
    """The lists collection is sorted by id; ws.op=find matches a name or unique list id."""
    for list_id, name in ((9, "Nine"), (3, "Three"), (500, "Five hundred")):
        server.add_list(ACCOUNT, list_id, name)
    url = f"{server.api_url}/accounts/{ACCOUNT}/lists"
    assert [entry["id"] for entry in get(http, url, token).json()["entries"]] == [3, 9, LIST, 500]
    found = get(http, url, token, **{"ws.op": "find", "name": "awlist9"}).json()
    assert [entry["name"] for entry in found["entries"]] == ["Nine"]
    assert "total_size_link" in found and "total_size" not in found


def test_keep_alive_serves_several_requests_on_one_connection(server: StandIn, token: str) -> None:
    """HTTP/1.1 keep-alive with exact Content-Length: one connection carries several requests."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for _ in range(3):
            connection.request("GET", "/1.0/accounts", headers=bearer(token))
            answer = connection.getresponse()
            assert answer.status == 200 and answer.getheader("Connection") != "close"
            assert len(answer.read()) == int(answer.getheader("Content-Length") or -1)
    finally:
        connection.close()


def test_control_endpoints_are_off_by_default(server: StandIn, http: requests.Session) -> None:
    """Without a control handler, /_control/ paths do not exist."""
    assert http.get(f"{server.base_url}/_control/stats", timeout=5).status_code == 404


# -- pagination -----------------------------------------------------------------------------------


def test_walking_next_links_visits_every_subscriber_once(server: StandIn, http: requests.Session, token: str) -> None:
    """A 250-subscriber list is three pages; next/prev links appear exactly where they should."""
    pages = list(walk(http, f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers", token))
    assert [len(page["entries"]) for page in pages] == [100, 100, 50]
    assert [page["start"] for page in pages] == [0, 100, 200]
    assert ["prev_collection_link" in page for page in pages] == [False, True, True]
    assert ["next_collection_link" in page for page in pages] == [True, True, False]
    assert all(page["total_size"] == 250 for page in pages)
    ids = [entry["id"] for page in pages for entry in page["entries"]]
    assert ids == [LIST_BASE_ID + index for index in range(250)]
    assert pages[1]["prev_collection_link"].startswith(server.api_url)
    assert pages[1]["self_link"].endswith("?ws.start=100&ws.size=100")


def test_links_keep_the_query_and_set_the_page(server: StandIn, http: requests.Session, token: str) -> None:
    """Links keep every query parameter (descending order, find) and set ws.start/ws.size."""
    pages = list(walk(http, f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers", token,
                      **{"ws.op": "find", "sort_order": "desc", "ws.size": "40"}))
    ids = [entry["id"] for page in pages for entry in page["entries"]]
    assert ids == [LIST_BASE_ID + index for index in reversed(range(250))]
    assert len(pages) == 7
    assert pages[0]["next_collection_link"].endswith("?ws.op=find&sort_order=desc&ws.size=40&ws.start=40")
    assert pages[0]["total_size_link"].endswith("?ws.op=find&sort_order=desc&ws.show=total_size")
    assert http.get(pages[0]["total_size_link"], headers=bearer(token), timeout=5).json() == 250


# -- find on a lazy list --------------------------------------------------------------------------


@pytest.fixture
def million(server: StandIn, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[int]]:
    """A 1,000,000-subscriber list, one subscriber a minute from DAY0; returns (token, generate-call counter)."""
    server.add_account(1)
    big = server.add_list(1, LIST, "Big", size=MILLION, start=DAY0_START, end=DAY0_START + 60 * (MILLION - 1))
    calls = [0]
    generate = big._generate

    def counting_generate(index: int) -> Any:
        calls[0] += 1
        return generate(index)

    monkeypatch.setattr(big, "_generate", counting_generate)
    return str(server.issue_tokens(CONF_ID)["access_token"]), calls


def find(http: requests.Session, server: StandIn, token: str, **params: Any) -> Any:
    """Run a list find on the big list."""
    answer = get(http, f"{server.api_url}/accounts/1/lists/{LIST}/subscribers", token, **{"ws.op": "find", **params})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_find_by_day_on_a_million_subscribers_without_a_walk(
    server: StandIn, http: requests.Session, million: tuple[str, list[int]]
) -> None:
    """Day filters on a million-subscriber list answer exact ranges while generating only the page shown."""
    token, calls = million
    day100 = (DAY0 + timedelta(days=100)).isoformat()
    assert find(http, server, token, subscribed_at=day100, **{"ws.show": "total_size"}) == 1440
    page = find(http, server, token, subscribed_at=day100, sort_key="subscribed_at")
    assert [entry["id"] for entry in page["entries"]] == [LIST_BASE_ID + 144_000 + i for i in range(100)]
    assert page["entries"][0]["subscribed_at"] == "2026-04-11T00:00:00-05:00"
    assert page["entries"][0]["list_name"] == "Big" and page["entries"][0]["list_link"].endswith(f"/lists/{LIST}")
    window = {"subscribed_after": (DAY0 + timedelta(days=600)).isoformat(),
              "subscribed_before": (DAY0 + timedelta(days=601)).isoformat()}
    assert find(http, server, token, **window, **{"ws.show": "total_size"}) == 2 * 1440
    newest = find(http, server, token, subscribed_after=(DAY0 + timedelta(days=694)).isoformat(), sort_order="desc")
    assert newest["entries"][0]["id"] == LIST_BASE_ID + MILLION - 1
    assert find(http, server, token, subscribed_after="2028-01-01", **{"ws.show": "total_size"}) == 0
    assert calls[0] <= 200


def test_status_and_email_filters_without_a_walk(
    server: StandIn, http: requests.Session, million: tuple[str, list[int]]
) -> None:
    """Status filters are counted arithmetically and email is a lookup, even on a million subscribers."""
    token, calls = million
    day100 = "04-11-2026"
    unconfirmed = find(http, server, token, subscribed_at=day100, status="unconfirmed")
    assert len(unconfirmed["entries"]) == 36
    assert all(entry["status"] == "unconfirmed" and not entry["is_verified"] for entry in unconfirmed["entries"])
    assert find(http, server, token, status="subscribed", **{"ws.show": "total_size"}) == MILLION * 39 // 40
    third_page = find(http, server, token, status="subscribed", **{"ws.start": "200000"})
    assert third_page["entries"][0]["id"] == LIST_BASE_ID + 205_129
    email = third_page["entries"][5]["email"]
    found = find(http, server, token, email=email)
    assert [entry["email"] for entry in found["entries"]] == [email]
    assert calls[0] <= 400


def test_day_boundaries_are_at_minus_five_hours(server: StandIn, http: requests.Session, token: str) -> None:
    """Filter days run from 00:00 to 24:00 at -05:00, in either date format."""
    moment = day_start_epoch(date(2026, 11, 27)) - 1800  # 2026-11-26T23:30:00-05:00, 04:30 UTC on the 27th
    (subscriber_id,) = server.add_subscribers(ACCOUNT, LIST, [{"email": "late@example.com", "subscribed_at": moment}])
    url = f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers"

    def ids(**params: str) -> list[int]:
        return [entry["id"] for entry in get(http, url, token, **{"ws.op": "find", **params}).json()["entries"]]

    assert ids(subscribed_at="2026-11-26") == [subscriber_id]
    assert ids(subscribed_at="11-26-2026") == [subscriber_id]
    assert ids(subscribed_at="2026-11-27") == []
    assert ids(subscribed_after="2026-11-27") == []
    assert ids(subscribed_before="2026-11-26", subscribed_after="2026-11-26") == [subscriber_id]
    entry = get(http, f"{url}/{subscriber_id}", token).json()
    assert entry["subscribed_at"] == "2026-11-26T23:30:00-05:00"


@pytest.mark.parametrize(
    ("offset_hours", "exclusive", "expected"),
    [
        # The subscriber joined at 2026-11-27T11:30Z: the 26th at UTC-12, the 27th at UTC, the 28th at UTC+14.
        (-12, False, {"at 11-26": True, "at 11-27": False, "after 11-26": True, "after 11-27": False,
                      "before 11-26": True, "before 11-25": False}),
        (14, False, {"at 11-28": True, "at 11-27": False, "after 11-28": True, "after 11-29": False,
                     "before 11-28": True, "before 11-27": False}),
        (0, True, {"at 11-27": True, "after 11-26": True, "after 11-27": False,
                   "before 11-28": True, "before 11-27": False}),
        (-12, True, {"at 11-26": True, "after 11-25": True, "after 11-26": False,
                     "before 11-27": True, "before 11-26": False}),
        (14, True, {"at 11-28": True, "after 11-27": True, "after 11-28": False,
                    "before 11-29": True, "before 11-28": False}),
    ],
    ids=["utc-12", "utc+14", "utc exclusive", "utc-12 exclusive", "utc+14 exclusive"],
)
def test_filter_days_follow_the_chosen_zone_and_inclusiveness(
    server: StandIn, http: requests.Session, token: str, offset_hours: float, exclusive: bool,
    expected: dict[str, bool],
) -> None:
    """Filter days start at the configured offset; exclusive after/before leave the named day out, "at" never."""
    moment = 1_795_779_000  # 2026-11-27T11:30:00Z
    (subscriber_id,) = server.add_subscribers(ACCOUNT, LIST, [{"email": "edge@example.com", "subscribed_at": moment}])
    url = f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers"
    settings = server.configure_api(filter_day_offset_hours=offset_hours, exclusive_day_filters=exclusive)
    assert (settings["filter_day_offset_hours"], settings["exclusive_day_filters"]) == (offset_hours, exclusive)
    names = {"at": "subscribed_at", "after": "subscribed_after", "before": "subscribed_before"}

    found = {}
    for case in expected:
        which, day = case.split()
        # Newest first: the subscriber comes before the list's 250 older ones, on the first page.
        answer = get(http, url, token, **{"ws.op": "find", names[which]: f"2026-{day}", "sort_order": "desc"})
        found[case] = subscriber_id in [entry["id"] for entry in answer.json()["entries"]]

    assert found == expected


@pytest.mark.parametrize("settings", [{"filter_day_offset_hours": 14.5}, {"filter_day_offset_hours": -12.25},
                                      {"exclusive_day_filters": "yes"}, {"next_links_drop_filters": 1}])
def test_api_switches_refuse_bad_values(server: StandIn, settings: dict[str, Any]) -> None:
    """Offsets outside UTC-12..UTC+14 and non-boolean switches raise ValueError, changing nothing."""
    before = server.configure_api()
    with pytest.raises(ValueError):
        server.configure_api(**settings)
    assert server.configure_api() == before == {
        "filter_day_offset_hours": -5.0, "exclusive_day_filters": False, "next_links_drop_filters": False,
    }


# -- appended subscribers -------------------------------------------------------------------------


def test_appended_subscribers_follow_the_generated_ones(server: StandIn, http: requests.Session, token: str) -> None:
    """Added subscribers get new ids after the generated ones and are found by day, email and status."""
    later = DAY0_START + 400 * 3600
    ids = server.add_subscribers(ACCOUNT, LIST, [
        {"email": "a@example.com", "name": "A", "subscribed_at": later},
        {"email": "b@example.com", "subscribed_at": later, "status": "unconfirmed"},
        {"email": "c@example.com", "subscribed_at": later + 0.25, "status": "unsubscribed",
         "unsubscribed_at": later + 10},
    ])
    assert ids == [LIST_BASE_ID + 250, LIST_BASE_ID + 251, LIST_BASE_ID + 252]
    url = f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers"
    plain = get(http, url, token, sort_order="desc", **{"ws.size": "3"}).json()
    assert [entry["id"] for entry in plain["entries"]] == list(reversed(ids))
    assert plain["total_size"] == 253
    assert plain["entries"][0]["subscribed_at"] == "2026-01-17T16:00:00.250000-05:00"
    day = "2026-01-17"
    found = get(http, url, token, **{"ws.op": "find", "subscribed_after": day}).json()["entries"]
    assert [entry["id"] for entry in found] == ids
    by_status = get(http, url, token, **{"ws.op": "find", "status": "unsubscribed"}).json()["entries"]
    assert [(entry["email"], entry["unsubscribe_method"]) for entry in by_status] == [
        ("c@example.com", "unsubscribe link")
    ]
    by_email = get(http, url, token, **{"ws.op": "find", "email": "b@example.com"}).json()["entries"]
    assert [entry["id"] for entry in by_email] == [ids[1]]
    listed = get(http, f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}", token).json()
    assert listed["total_unsubscribed_subscribers"] == 1 and listed["total_subscribers"] == 253


def test_sorting_by_unsubscribed_at_puts_the_never_unsubscribed_first(
    server: StandIn, http: requests.Session, token: str
) -> None:
    """sort_key=unsubscribed_at orders by that time, subscribers without one first (as SQL sorts NULLs)."""
    later = DAY0_START + 400 * 3600
    out_last, out_first = server.add_subscribers(ACCOUNT, LIST, [
        {"email": "x@example.com", "subscribed_at": later, "status": "unsubscribed", "unsubscribed_at": later + 50},
        {"email": "y@example.com", "subscribed_at": later, "status": "unsubscribed", "unsubscribed_at": later + 5},
    ])
    url = f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers"
    params = {"ws.op": "find", "sort_key": "unsubscribed_at", "sort_order": "desc", "ws.size": "3"}
    entries = get(http, url, token, **params).json()["entries"]
    assert [entry["id"] for entry in entries] == [out_last, out_first, LIST_BASE_ID + 249]


def test_adding_a_subscriber_back_in_time_is_refused(server: StandIn, token: str) -> None:
    """add_subscribers raises ValueError, adding nothing, when a subscriber would precede the list's latest."""
    with pytest.raises(ValueError, match="before the list's latest"):
        server.add_subscribers(ACCOUNT, LIST, [
            {"email": "ok@example.com", "subscribed_at": DAY0_START + 300 * 3600},
            {"email": "old@example.com", "subscribed_at": DAY0_START},
        ])
    with pytest.raises(ValueError):
        server.add_subscribers(ACCOUNT, LIST, [{"email": "not-an-address"}])
    with pytest.raises(ValueError):
        server.add_subscribers(ACCOUNT, LIST, [{"email": "ok@example.com", "colour": "blue"}])
    assert server.state.subscriber_list(ACCOUNT, LIST) is not None
    assert server.state.subscriber_list(ACCOUNT, LIST).total == 250  # type: ignore[union-attr]


def test_next_links_can_be_made_to_drop_filters_and_sort(server: StandIn, http: requests.Session, token: str) -> None:
    """With next_links_drop_filters a find's next link keeps only ws.start and ws.size; self links are untouched."""
    url = f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers"
    params = {"ws.op": "find", "subscribed_after": "2026-01-02", "sort_key": "subscribed_at", "sort_order": "desc",
              "status": "subscribed", "ws.size": "50"}
    kept = get(http, url, token, **params).json()
    assert dict(parse_qsl(urlsplit(kept["next_collection_link"]).query)) == {**params, "ws.start": "50"}

    server.configure_api(next_links_drop_filters=True)
    page = get(http, url, token, **params).json()
    assert dict(parse_qsl(urlsplit(page["next_collection_link"]).query)) == {"ws.start": "50", "ws.size": "50"}
    assert dict(parse_qsl(urlsplit(page["self_link"]).query)) == {**params, "ws.start": "0"}
    assert page["entries"] == kept["entries"]

    server.configure_api(next_links_drop_filters=False)
    again = get(http, url, token, **params).json()
    assert again["next_collection_link"] == kept["next_collection_link"]
