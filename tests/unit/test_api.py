"""The API client against the stand-in AWeber on loopback: paging, pacing, retries, refresh, origin lock."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import pytest
import requests

from job.api.client import ApiClient, format_origin, origin_of
from job.config import load_settings
from job.errors import EXIT_AUTH, EXIT_TEMPORARY, ApiError, AuthError, RunTimeoutError, TemporaryError
from job.run.keeper import TokenKeeper
from job.standin import RETRY_LATER_403_MESSAGES, Fault, StandIn
from tests.support.jobs import FakeTime, JobFiles
from tests.support.recorder import Request, recording_server

ACCOUNT_ID = 1001
LIST_ID = 2002
SUBSCRIBERS = f"/1.0/accounts/{ACCOUNT_ID}/lists/{LIST_ID}/subscribers"
USER_AGENT = "aweber-job/test"


class FakeTokens:
    """A token source that never refreshes by itself and records forced refreshes."""

    def __init__(self, access_token: str) -> None:
        self.access_token = access_token
        self.refreshes: list[str] = []

    def authorize(
        self, method: str, url: str, params: Mapping[str, str | int] | None, *, leeway_seconds: float
    ) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    def refresh(self, reason: str) -> object:
        self.refreshes.append(reason)
        return None


def _session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


def _fake_tokens(standin: StandIn) -> FakeTokens:
    grant = standin.issue_tokens("cid-confidential")
    return FakeTokens(str(grant["access_token"]))


def _client(
    standin_or_url: StandIn | str,
    tokens: Any,
    *,
    fake_time: FakeTime | None = None,
    **overrides: Any,
) -> ApiClient:
    base_url = standin_or_url if isinstance(standin_or_url, str) else standin_or_url.api_url
    options: dict[str, Any] = {
        "rate_limit_per_minute": 120,
        "refresh_leeway_seconds": 300.0,
        "timeout_seconds": 5.0,
        "retry_deadline_seconds": 300.0,
    }
    if fake_time is not None:
        options.update(monotonic=fake_time.monotonic, sleep=fake_time.sleep)
    options.update(overrides)
    return ApiClient(_session(), base_url=base_url, tokens=tokens, **options)


def _add_list(standin: StandIn, size: int) -> None:
    standin.add_account(ACCOUNT_ID)
    standin.add_list(ACCOUNT_ID, LIST_ID, "Newsletter", size=size, seed=7)


def _api_count(standin: StandIn, key: str) -> int:
    api = standin.stats()["api"]
    assert isinstance(api, dict)
    return int(api.get(key, 0))


@pytest.fixture
def keeper(job: JobFiles) -> Iterator[TokenKeeper]:
    """A real TokenKeeper holding the lock on a real token file issued by the stand-in."""
    job.write_tokens()
    settings = load_settings(job.env())
    token_keeper = TokenKeeper(settings, _session())
    token_keeper.open()
    try:
        yield token_keeper
    finally:
        token_keeper.close()


@dataclass
class _RecordingServer:
    """A second loopback HTTP server: what it received, and the JSON it answers with."""

    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    answer: Any = field(default_factory=lambda: {"entries": []})


@pytest.fixture
def other_server() -> Iterator[_RecordingServer]:
    """A second loopback HTTP server that records what it receives."""
    holder: list[_RecordingServer] = []

    def record(request: Request) -> int:
        holder[0].seen.append({"path": request.path, "headers": request.headers})
        return 200

    with recording_server(record, body=lambda: json.dumps(holder[0].answer).encode(),
                          content_type="application/json") as server:
        holder.append(_RecordingServer(f"http://127.0.0.1:{server.server_address[1]}"))
        yield holder[0]


# ---- paging ------------------------------------------------------------------------------------

def test_walk_of_25000_entries_takes_250_requests_and_yields_each_once(standin: StandIn) -> None:
    """Walking a 25,000-entry list follows next_collection_link with ws.size=100: 250 requests, no repeats."""
    _add_list(standin, 25_000)
    # Pacing is tested on its own below; here it would only make the test wait.
    client = _client(standin, _fake_tokens(standin), rate_limit_per_minute=100_000)

    ids = [entry["id"] for entry in client.walk(SUBSCRIBERS)]

    assert len(ids) == 25_000
    assert len(set(ids)) == 25_000
    assert client.requests_made == 250
    assert _api_count(standin, "GET subscribers:200") == 250
    assert standin.stats()["requests_total"] == 250


def test_walk_is_lazy_and_keeps_a_given_page_size(standin: StandIn) -> None:
    """The walk sends nothing until iterated, and a ws.size given by the caller is kept for every page."""
    _add_list(standin, 120)
    client = _client(standin, _fake_tokens(standin))

    walk = client.walk(SUBSCRIBERS, {"ws.size": 50})
    assert client.requests_made == 0
    assert len(list(walk)) == 120

    sizes = [dict(entry["query"]).get("ws.size") for entry in standin.request_log()]  # type: ignore[call-overload]
    assert sizes == ["50", "50", "50"]


def _canned_page(standin: StandIn, start: int, next_query: str | None, entry_id: int) -> Fault:
    """A 200 collection page answered in place of the real one, whose next link carries ``next_query``."""
    page: dict[str, Any] = {"entries": [{"id": entry_id}], "start": start}
    if next_query is not None:
        page["next_collection_link"] = f"{standin.api_url}{SUBSCRIBERS.removeprefix('/1.0')}?{next_query}"
    return Fault(status=200, body=json.dumps(page).encode())


def test_next_links_that_loop_are_an_error_naming_the_path_only(standin: StandIn) -> None:
    """Pages whose next links go A -> B -> A raise ApiError at the first step back, naming the path and no query."""
    standin.inject(
        _canned_page(standin, 0, "ws.op=find&email=jo.secret%40example.com&ws.start=100&ws.size=100", 1),
        _canned_page(standin, 100, "ws.op=find&email=jo.secret%40example.com&ws.start=0&ws.size=100", 2),
        path=SUBSCRIBERS,
    )
    client = _client(standin, _fake_tokens(standin))

    walk = client.walk(SUBSCRIBERS, {"ws.op": "find", "email": "jo.secret@example.com"})
    assert [next(walk)["id"], next(walk)["id"]] == [1, 2]
    with pytest.raises(ApiError) as raised:
        next(walk)

    message = str(raised.value)
    assert message.startswith(f"GET {SUBSCRIBERS}: ")
    assert "ws.start=0 after ws.start=100" in message
    assert "secret" not in message and "example.com" not in message and "?" not in message
    assert raised.value.exit_code == 1
    assert client.requests_made == 2


def test_a_next_link_that_does_not_move_forward_is_an_error(standin: StandIn) -> None:
    """A next link to the same ws.start (other parameters changed) would never end: ApiError before it is sent."""
    standin.inject(_canned_page(standin, 100, "ws.start=100&ws.size=50", 1), path=SUBSCRIBERS)
    client = _client(standin, _fake_tokens(standin))

    with pytest.raises(ApiError) as raised:
        list(client.walk(SUBSCRIBERS, {"ws.start": 100}))

    assert "ws.start=100 after ws.start=100" in str(raised.value)
    assert client.requests_made == 1


def test_next_links_that_lost_the_find_parameters_get_them_back(standin: StandIn) -> None:
    """A stand-in dropping filters and sort from next links still yields the find's pages, in the fewest requests."""
    _add_list(standin, 1_000)
    list_ = standin.state.subscriber_list(ACCOUNT_ID, LIST_ID)
    assert list_ is not None
    cut = list_.get(700).subscribed_at
    params = {"ws.op": "find", "subscribed_after": date.fromtimestamp(cut).isoformat(), "sort_key": "subscribed_at",
              "sort_order": "asc", "status": "subscribed"}
    client = _client(standin, _fake_tokens(standin))
    expected = [entry["id"] for entry in client.walk(SUBSCRIBERS, params)]
    assert 200 < len(expected) <= 400
    standin.configure_api(next_links_drop_filters=True)
    standin.reset_stats()

    found = [entry["id"] for entry in client.walk(SUBSCRIBERS, params)]

    assert found == expected
    queries = [entry["query"] for entry in standin.request_log()]
    assert len(queries) == -(-len(expected) // 100)
    for number, query in enumerate(queries):
        assert isinstance(query, dict)
        assert {key: query[key] for key in params} == params
        assert query["ws.size"] == "100"
        assert query.get("ws.start", "0") == str(number * 100)


def test_a_next_link_that_changed_the_sort_is_held_to_what_was_asked(standin: StandIn) -> None:
    """A next link whose sort_order differs from the walk's is sent with the walk's, keeping its page."""
    _add_list(standin, 150)
    standin.inject(_canned_page(standin, 0, "ws.op=find&sort_order=desc&ws.start=100&ws.size=100", 1),
                   path=SUBSCRIBERS)
    client = _client(standin, _fake_tokens(standin))

    list(client.walk(SUBSCRIBERS, {"ws.op": "find", "sort_order": "asc"}))

    second = standin.request_log()[1]["query"]
    assert second == {"ws.op": "find", "sort_order": "asc", "ws.start": "100", "ws.size": "100"}


def test_get_sends_bearer_accept_user_agent_and_joins_relative_paths(other_server: _RecordingServer) -> None:
    """Requests carry the bearer token, Accept JSON and the session's User-Agent; paths go under the base."""
    other_server.answer = {"id": 1}
    client = _client(f"{other_server.url}/1.0", FakeTokens("access-token-abcdef"))

    assert client.get("accounts") == {"id": 1}
    assert client.get("/accounts/5", {"ws.op": "x"}) == {"id": 1}
    assert client.get("/1.0/accounts/6") == {"id": 1}

    paths = [seen["path"] for seen in other_server.seen]
    assert paths == ["/1.0/accounts", "/1.0/accounts/5?ws.op=x", "/1.0/accounts/6"]
    headers = other_server.seen[0]["headers"]
    assert headers["Authorization"] == "Bearer access-token-abcdef"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT


# ---- pacing and AWeber's rate limit -----------------------------------------------------------

def test_pacing_stays_under_the_servers_rolling_limit() -> None:
    """With the server allowing 10 requests per second, a 35-request walk paced at 10/s meets no 403."""
    server = StandIn({"cid-confidential": "secret-x"}, rate_limit_per_minute=10, rate_limit_window_seconds=1.0)
    with server:
        _add_list(server, 3_500)
        client = _client(server, _fake_tokens(server), rate_limit_per_minute=10, window_seconds=1.0)
        started = time.monotonic()

        count = sum(1 for _ in client.walk(SUBSCRIBERS))

        elapsed = time.monotonic() - started
        assert count == 3_500
        assert client.requests_made == 35
        assert client.rate_limited == 0
        assert server.stats()["rate_limited"] == 0
        # 35 requests at 10 per second need at least three full windows, and not much more.
        assert 3.0 <= elapsed < 10.0


def test_rate_limit_answer_is_waited_out_for_a_minute_and_retried(standin: StandIn) -> None:
    """A 403 "Rate Limit Error" makes the client wait 60 s (recorded, not slept) and repeat the request."""
    _add_list(standin, 150)
    standin.inject(Fault(status=403, message="Rate Limit Error"), path=SUBSCRIBERS)
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time)

    count = sum(1 for _ in client.walk(SUBSCRIBERS))

    assert count == 150
    assert fake_time.sleeps == [60.0]
    assert client.rate_limited == 1
    assert client.requests_made == 3


def test_rate_limit_beyond_the_deadline_is_a_temporary_failure(standin: StandIn) -> None:
    """When waiting out the rate limit would pass the retry deadline, the client gives up with exit 75."""
    _add_list(standin, 10)
    standin.inject(Fault(status=403, message="Rate Limit Error"), path=SUBSCRIBERS)
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time, retry_deadline_seconds=30.0)

    with pytest.raises(TemporaryError) as raised:
        list(client.walk(SUBSCRIBERS))

    assert raised.value.exit_code == EXIT_TEMPORARY
    assert "rate limit" in str(raised.value).lower()
    assert fake_time.sleeps == []
    assert client.requests_made == 1


@pytest.mark.parametrize("message", RETRY_LATER_403_MESSAGES)
def test_403_that_asks_for_a_backoff_is_retried_like_a_5xx(standin: StandIn, message: str) -> None:
    """AWeber's 403s that say to try again with exponential backoff are retried with backoff, not the 60 s wait."""
    standin.add_account(ACCOUNT_ID)
    standin.inject(Fault(status=403, message=message), Fault(status=403, message=message), path="/1.0/accounts")
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time)

    accounts = client.get("/accounts")

    assert [entry["id"] for entry in accounts["entries"]] == [ACCOUNT_ID]
    assert client.requests_made == 3
    assert client.rate_limited == 0
    # Backoff with jitter: the first wait within [0.5, 1] s, the second within [1, 2] s.
    assert len(fake_time.sleeps) == 2
    assert 0.5 <= fake_time.sleeps[0] <= 1.0 and 1.0 <= fake_time.sleeps[1] <= 2.0


def test_403_that_asks_for_a_backoff_ends_temporary_when_it_persists(standin: StandIn) -> None:
    """A "not accepting requests" 403 that lasts past the retry deadline is a temporary failure (exit 75)."""
    standin.inject(*[Fault(status=403, message=RETRY_LATER_403_MESSAGES[0])] * 30, path="/1.0/accounts")
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time, retry_deadline_seconds=20.0)

    with pytest.raises(TemporaryError) as raised:
        client.get("/accounts")

    assert raised.value.exit_code == EXIT_TEMPORARY
    assert "not accepting requests" in str(raised.value)
    assert client.requests_made >= 3


def test_other_403_is_not_retried(standin: StandIn) -> None:
    """A 403 with any other message (a suspended account) raises ApiError at once, carrying AWeber's type."""
    _add_list(standin, 10)
    standin.inject(Fault(status=403, message="Account Temporarily Suspended"), path=SUBSCRIBERS)
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time)

    with pytest.raises(ApiError) as raised:
        list(client.walk(SUBSCRIBERS))

    assert raised.value.status == 403
    assert raised.value.error_type == "ForbiddenError"
    assert "Account Temporarily Suspended" in str(raised.value)
    assert fake_time.sleeps == []
    assert client.requests_made == 1
    assert client.rate_limited == 0


# ---- retries and refusals ---------------------------------------------------------------------

def test_5xx_then_success_is_retried(standin: StandIn) -> None:
    """Two 5xx answers are retried with backoff, and the third attempt's answer is returned."""
    standin.add_account(ACCOUNT_ID)
    standin.inject(Fault(status=503), Fault(status=500), path="/1.0/accounts")
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time)

    accounts = client.get("/accounts")

    assert [entry["id"] for entry in accounts["entries"]] == [ACCOUNT_ID]
    assert client.requests_made == 3
    assert len(fake_time.sleeps) == 2


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_waited_as_told(standin: StandIn, status: int) -> None:
    """A 503 (or a 429, should AWeber ever send one) with Retry-After is retried after that many seconds."""
    standin.add_account(ACCOUNT_ID)
    standin.inject(Fault(status=status, retry_after="7"), path="/1.0/accounts")
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time)

    client.get("/accounts")

    assert fake_time.sleeps == [7.0]


def test_persistent_5xx_ends_in_a_temporary_failure(standin: StandIn) -> None:
    """5xx answers until the deadline raise TemporaryError (exit 75) naming the path and status."""
    standin.inject(*[Fault(status=502)] * 20, path="/1.0/accounts")
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time, retry_deadline_seconds=20.0)

    with pytest.raises(TemporaryError) as raised:
        client.get("/accounts")

    assert raised.value.exit_code == EXIT_TEMPORARY
    assert "/1.0/accounts" in str(raised.value) and "502" in str(raised.value)
    assert sum(fake_time.sleeps) <= 20.0
    assert client.requests_made >= 2


def test_read_timeout_is_retried(standin: StandIn) -> None:
    """An answer slower than the read timeout is abandoned and the GET is sent again."""
    standin.add_account(ACCOUNT_ID)
    standin.inject(Fault(delay_seconds=1.0), path="/1.0/accounts")
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time, timeout_seconds=0.3)

    accounts = client.get("/accounts")

    assert accounts["entries"][0]["id"] == ACCOUNT_ID
    assert client.requests_made == 2
    assert len(fake_time.sleeps) == 1


def test_a_slow_but_steady_answer_is_read_whole(standin: StandIn) -> None:
    """The read timeout is a limit between bytes: an answer dripping over 1.5 s under a 0.5 s timeout is used."""
    body = json.dumps({"entries": [{"id": ACCOUNT_ID}], "start": 0, "total_size": 1}).encode()
    standin.inject(Fault(status=200, body=body, drip_seconds=0.03), path="/1.0/accounts")
    fake_time = FakeTime()
    # The real monotonic clock: the answer's own time is what is being tested.
    client = _client(standin, _fake_tokens(standin), sleep=fake_time.sleep, timeout_seconds=0.5)
    started = time.monotonic()

    accounts = client.get("/accounts")

    assert time.monotonic() - started > 1.0  # it did drip for longer than the timeout
    assert accounts["entries"] == [{"id": ACCOUNT_ID}]
    assert client.requests_made == 1
    assert fake_time.sleeps == []


def test_an_answer_that_stalls_past_the_read_timeout_is_retried(standin: StandIn) -> None:
    """Bytes that stop coming for longer than the read timeout abandon the answer, and the GET is sent again."""
    standin.add_account(ACCOUNT_ID)
    standin.inject(Fault(drip_seconds=0.8), path="/1.0/accounts")
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time, timeout_seconds=0.3)

    accounts = client.get("/accounts")

    assert accounts["entries"][0]["id"] == ACCOUNT_ID
    assert client.requests_made == 2
    assert len(fake_time.sleeps) == 1


def test_connections_are_kept_alive_between_requests(standin: StandIn) -> None:
    """Reading answers as they arrive still hands the connection back: three GETs use one TCP connection."""
    standin.add_account(ACCOUNT_ID)
    session = _session()
    client = ApiClient(session, base_url=standin.api_url, tokens=_fake_tokens(standin), rate_limit_per_minute=120,
                       refresh_leeway_seconds=300.0, timeout_seconds=5.0, retry_deadline_seconds=300.0)

    for _ in range(3):
        client.get("/accounts")

    pools = session.get_adapter(standin.api_url).poolmanager.pools
    assert [pools[key].num_connections for key in pools.keys()] == [1]


def test_connection_refused_is_retried_then_temporary() -> None:
    """An API that cannot be reached is retried within the deadline, then TemporaryError (exit 75)."""
    with StandIn() as gone:
        url = gone.api_url
    fake_time = FakeTime()
    client = _client(url, FakeTokens("access-token-abcdef"), fake_time=fake_time, retry_deadline_seconds=10.0)

    with pytest.raises(TemporaryError):
        client.get("/accounts")

    assert client.requests_made >= 2
    assert fake_time.sleeps


def test_ws_size_500_raises_web_service_error(standin: StandIn) -> None:
    """AWeber's 400 WebServiceError for ws.size=500 becomes ApiError with its type and message, not retried."""
    _add_list(standin, 10)
    client = _client(standin, _fake_tokens(standin))

    with pytest.raises(ApiError) as raised:
        list(client.walk(SUBSCRIBERS, {"ws.size": 500}))

    assert raised.value.status == 400
    assert raised.value.error_type == "WebServiceError"
    assert "ws.size" in str(raised.value)
    assert SUBSCRIBERS in str(raised.value)
    assert client.requests_made == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=200, body=b"<html>not json</html>", content_type="text/html"),
        Fault(status=200, body=b"\xff\xfe garbage"),
    ],
    ids=["html", "bytes"],
)
def test_2xx_that_is_not_json_raises_api_error(standin: StandIn, fault: Fault) -> None:
    """A success status whose body is not JSON is an ApiError, not a crash."""
    standin.inject(fault, path="/1.0/accounts")
    client = _client(standin, _fake_tokens(standin))

    with pytest.raises(ApiError, match="not JSON"):
        client.get("/accounts")


def test_huge_error_body_is_not_read_whole(standin: StandIn) -> None:
    """A 400 with a 50 MB body is reported from the first bytes only, quickly."""
    standin.inject(Fault(status=400, body_size=50 * 1024 * 1024), path="/1.0/accounts")
    client = _client(standin, _fake_tokens(standin))
    started = time.monotonic()

    with pytest.raises(ApiError) as raised:
        client.get("/accounts")

    assert raised.value.status == 400
    assert len(str(raised.value)) < 400
    assert time.monotonic() - started < 5


def test_page_that_is_not_a_collection_raises_api_error(standin: StandIn) -> None:
    """A walk over something without an entries list raises ApiError instead of yielding nonsense."""
    standin.inject(Fault(status=200, body=b'{"id": 3}'), path="/1.0/accounts")
    client = _client(standin, _fake_tokens(standin))

    with pytest.raises(ApiError, match="not a collection"):
        list(client.walk("/accounts"))


def test_server_date_is_the_date_of_the_latest_answer() -> None:
    """The client remembers the Date header of the latest answer, a refusal's too, by the server's own clock."""
    server_clock = [1_795_000_000.0]
    with StandIn({"cid-confidential": "secret-x"}, clock=lambda: server_clock[0]) as server:
        server.add_account(ACCOUNT_ID)
        client = _client(server, _fake_tokens(server))
        assert client.server_date is None

        client.get("/accounts")
        assert client.server_date == datetime.fromtimestamp(1_795_000_000, timezone.utc)

        server_clock[0] += 90.7
        server.inject(Fault(status=404, envelope=True), path="/1.0/accounts")
        with pytest.raises(ApiError):
            client.get("/accounts")
        assert client.server_date == datetime.fromtimestamp(1_795_000_090, timezone.utc)


# ---- the run's time limit ----------------------------------------------------------------------

def test_a_pacing_wait_that_would_pass_the_run_limit_stops_the_run(standin: StandIn) -> None:
    """Pacing waits while the run limit allows; a wait that would end past it raises RunTimeoutError unslept."""
    standin.add_account(ACCOUNT_ID)
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time, rate_limit_per_minute=1,
                     run_timeout_seconds=90.0)

    client.get("/accounts")
    client.get("/accounts")  # waits 60 s: the run is then 60 s old, within its 90
    with pytest.raises(RunTimeoutError) as raised:
        client.get("/accounts")  # would wait until 120 s

    assert fake_time.sleeps == [60.0]
    assert client.requests_made == 2
    assert raised.value.exit_code == EXIT_TEMPORARY
    assert "AWEBER_RUN_TIMEOUT (90s)" in str(raised.value) and "GET /1.0/accounts" in str(raised.value)


def test_a_rate_limit_wait_past_the_run_limit_stops_the_run(standin: StandIn) -> None:
    """AWeber's 60 s rate-limit wait is not begun when it would end past the run limit."""
    standin.add_account(ACCOUNT_ID)
    standin.inject(Fault(status=403, message="Rate Limit Error"), path="/1.0/accounts")
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time, run_timeout_seconds=30.0)

    with pytest.raises(RunTimeoutError):
        client.get("/accounts")

    assert fake_time.sleeps == []
    assert client.requests_made == 1


def test_retries_stop_at_the_run_limit(standin: StandIn) -> None:
    """Backoff between 5xx retries stops at the run limit even though the retry deadline is further."""
    standin.inject(*[Fault(status=503)] * 30, path="/1.0/accounts")
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time, run_timeout_seconds=5.0,
                     retry_deadline_seconds=300.0)

    with pytest.raises(RunTimeoutError):
        client.get("/accounts")

    assert 0 < sum(fake_time.sleeps) <= 5.0
    assert client.requests_made == len(fake_time.sleeps) + 1


def test_nothing_is_sent_once_the_run_limit_has_passed(standin: StandIn) -> None:
    """A run already past its limit sends no request at all."""
    standin.add_account(ACCOUNT_ID)
    fake_time = FakeTime()
    client = _client(standin, _fake_tokens(standin), fake_time=fake_time, run_timeout_seconds=50.0,
                     run_started=fake_time.now - 50.0)

    with pytest.raises(RunTimeoutError):
        client.get("/accounts")

    assert client.requests_made == 0
    assert standin.stats()["requests_total"] == 0


def test_a_slow_answer_is_given_up_at_the_run_limit(standin: StandIn) -> None:
    """An answer that takes longer than the time the run has left is abandoned when the run's time is up."""
    standin.add_account(ACCOUNT_ID)
    standin.inject(Fault(delay_seconds=4.0), path="/1.0/accounts")
    client = _client(standin, _fake_tokens(standin), timeout_seconds=30.0, run_timeout_seconds=1.0)
    started = time.monotonic()

    with pytest.raises(RunTimeoutError):
        client.get("/accounts")

    assert time.monotonic() - started < 3.0


def test_a_drip_that_never_ends_is_stopped_by_the_run_limit(standin: StandIn) -> None:
    """A body whose bytes keep coming within the read timeout, but would take hours, ends at the run limit."""
    standin.inject(Fault(status=200, body_size=1_000_000, drip_seconds=0.005), path="/1.0/accounts")
    client = _client(standin, _fake_tokens(standin), timeout_seconds=5.0, run_timeout_seconds=1.5)
    started = time.monotonic()

    with pytest.raises(RunTimeoutError) as raised:
        client.get("/accounts")

    assert 1.4 < time.monotonic() - started < 4.0
    assert "reading the answer to GET /1.0/accounts" in str(raised.value)


# ---- tokens -------------------------------------------------------------------------------------

def test_access_token_expired_mid_walk_is_refreshed_once_and_saved(
    standin: StandIn, job: JobFiles, keeper: TokenKeeper
) -> None:
    """A 401 between pages refreshes once, rewrites the token file with the live rotated token, and goes on."""
    _add_list(standin, 300)
    old_refresh = job.read_tokens()["refresh_token"]
    client = _client(standin, keeper)

    walk = client.walk(SUBSCRIBERS)
    first_page = [next(walk) for _ in range(100)]
    standin.expire_access_tokens()
    rest = list(walk)

    assert len({entry["id"] for entry in first_page + rest}) == 300
    assert keeper.stats.refreshes == 1
    saved = job.read_tokens()
    assert saved["refresh_token"] != old_refresh
    assert standin.live_refresh_tokens() == {saved["refresh_token"]}
    assert saved["access_token"] == keeper.access_token
    assert (job.token_file.stat().st_mode & 0o777) == 0o600
    assert _api_count(standin, "GET subscribers:401:invalid_token") == 1
    assert client.requests_made == 4


def test_token_near_expiry_is_refreshed_before_the_request(
    standin: StandIn, job: JobFiles
) -> None:
    """An access token with less than the leeway left is refreshed before sending, so the API sees no 401."""
    standin.add_account(ACCOUNT_ID)
    job.write_tokens(expires_in=60)
    keeper = TokenKeeper(load_settings(job.env()), _session()).open()
    try:
        client = _client(standin, keeper, refresh_leeway_seconds=300.0)
        client.get("/accounts")
        client.get("/accounts")
    finally:
        keeper.close()

    assert keeper.stats.refreshes == 1
    assert standin.live_refresh_tokens() == {job.read_tokens()["refresh_token"]}
    assert _api_count(standin, "GET accounts:200") == 2
    assert _api_count(standin, "GET accounts:401:invalid_token") == 0


def test_401_that_survives_a_refresh_is_an_auth_error(
    standin: StandIn, job: JobFiles, keeper: TokenKeeper
) -> None:
    """When the account disconnected the integration, one refresh is tried and then AuthError (exit 77)."""
    standin.add_account(ACCOUNT_ID)
    standin.disconnect()
    client = _client(standin, keeper)

    with pytest.raises(AuthError) as raised:
        client.get("/accounts")

    assert raised.value.exit_code == EXIT_AUTH
    text = str(raised.value)
    assert "disconnected this integration" in text
    assert "aweber-job login" in text
    assert keeper.stats.refreshes == 1
    assert client.requests_made == 2
    # The refresh still rotated and saved the token, so the file stays usable after re-connecting.
    assert standin.live_refresh_tokens() == {job.read_tokens()["refresh_token"]}
    assert keeper.access_token not in text


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        # AWeber's token layer answers an expired or unknown access token in RFC 6750's shape.
        ({"error": "invalid_token", "error_description": "The access token expired"},
         "HTTP 401 invalid_token: The access token expired"),
        # Other 401s (an inactive account, a bad consumer key) come in AWeber's error envelope.
        ({"error": {"status": 401, "message": "Invalid account.", "type": "UnauthorizedError"}},
         "HTTP 401 UnauthorizedError: Invalid account."),
    ],
    ids=["rfc6750", "envelope"],
)
def test_401_bodies_of_both_shapes_are_quoted_in_the_auth_error(
    standin: StandIn, body: dict[str, Any], shown: str
) -> None:
    """A 401 that survives the refresh names AWeber's error code and description, in either body shape."""
    answer = Fault(status=401, body=json.dumps(body).encode())
    standin.inject(answer, answer, path="/1.0/accounts")
    client = _client(standin, FakeTokens("access-token-abcdef"))

    with pytest.raises(AuthError) as raised:
        client.get("/accounts")

    assert shown in str(raised.value)


def test_a_long_401_description_is_shortened_to_one_line(standin: StandIn) -> None:
    """An invalid_token description of a kilobyte over several lines is quoted shortened, on one line."""
    description = "The access token is invalid.\n" + "x" * 1000
    answer = Fault(status=401, body=json.dumps({"error": "invalid_token", "error_description": description}).encode())
    standin.inject(answer, answer, path="/1.0/accounts")
    client = _client(standin, FakeTokens("access-token-abcdef"))

    with pytest.raises(AuthError) as raised:
        client.get("/accounts")

    text = str(raised.value)
    assert "invalid_token: The access token is invalid. xxx" in text
    assert "\n" not in text and len(text) < 500


def test_401_with_a_fake_token_source_refreshes_exactly_once(standin: StandIn) -> None:
    """The client asks its token source for one forced refresh per request that keeps answering 401."""
    standin.add_account(ACCOUNT_ID)
    tokens = FakeTokens("not-a-live-token-123")
    client = _client(standin, tokens)

    with pytest.raises(AuthError):
        client.get("/accounts")

    assert tokens.refreshes == ["the API answered 401"]
    assert client.requests_made == 2


# ---- the token goes to the API's own origin only ------------------------------------------------

def test_next_link_to_another_server_is_refused_without_sending(
    standin: StandIn, other_server: _RecordingServer
) -> None:
    """A next_collection_link on another port is refused, and that server receives nothing at all."""
    foreign = f"{other_server.url}/1.0/accounts/{ACCOUNT_ID}/lists/{LIST_ID}/subscribers?ws.start=100"
    page = {"entries": [{"id": 1}], "start": 0, "next_collection_link": foreign}
    standin.inject(Fault(status=200, body=json.dumps(page).encode()), path=SUBSCRIBERS)
    client = _client(standin, _fake_tokens(standin))

    walk = client.walk(SUBSCRIBERS)
    assert next(walk) == {"id": 1}
    with pytest.raises(ApiError) as raised:
        next(walk)

    assert str(raised.value) == f"refusing to send the token to {other_server.url}"
    assert other_server.seen == []
    assert client.requests_made == 1


@pytest.mark.parametrize(
    "link",
    [
        "https://127.0.0.1:{port}/1.0/accounts",  # another scheme
        "http://localhost:{port}/1.0/accounts",  # another host name for the same address
        "http://127.0.0.2:{port}/1.0/accounts",  # another host
        "http://127.0.0.1:{port}@evil.example/1.0/accounts",  # userinfo trick
        "//evil.example/1.0/accounts",  # scheme-relative
        "http://127.0.0.1:{port}.evil.example/1.0/accounts",  # bad port
    ],
)
def test_urls_off_the_api_origin_are_refused(standin: StandIn, link: str) -> None:
    """Any URL whose scheme, host or port differs from the base URL's is refused before sending."""
    client = _client(standin, _fake_tokens(standin))

    with pytest.raises(ApiError, match="refusing"):
        client.get(link.format(port=standin.port))

    assert client.requests_made == 0
    assert standin.stats()["requests_total"] == 0


def test_absolute_url_on_the_api_origin_is_accepted(standin: StandIn) -> None:
    """A self_link on the API's own origin (explicit or default port spelled out) is followed."""
    standin.add_account(ACCOUNT_ID)
    client = _client(standin, _fake_tokens(standin))

    accounts = client.get(f"{standin.api_url}/accounts")

    assert accounts["entries"][0]["id"] == ACCOUNT_ID


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://api.aweber.com/1.0", ("https", "api.aweber.com", 443)),
        ("https://API.aweber.com:443/1.0/x", ("https", "api.aweber.com", 443)),
        ("http://127.0.0.1:8080/", ("http", "127.0.0.1", 8080)),
        ("http://[::1]:9/", ("http", "::1", 9)),
    ],
)
def test_origin_of_fills_in_default_ports(url: str, origin: tuple[str, str, int]) -> None:
    """Origins compare scheme, lower-cased host and port, with 80/443 filled in."""
    assert origin_of(url) == origin


def test_format_origin_brackets_ipv6() -> None:
    """An IPv6 origin is written with brackets, as in a URL."""
    assert format_origin(("http", "::1", 9)) == "http://[::1]:9"


def test_no_token_in_logs_or_errors_through_retries_and_refresh(
    standin: StandIn, job: JobFiles, keeper: TokenKeeper, caplog: pytest.LogCaptureFixture
) -> None:
    """Retries, a 401 refresh and a refused origin log and raise nothing that holds a token."""
    standin.add_account(ACCOUNT_ID)
    first_access = keeper.access_token
    first_refresh = keeper.tokens.refresh_token
    standin.inject(Fault(status=503), path="/1.0/accounts")
    standin.expire_access_tokens()
    fake_time = FakeTime()
    client = _client(standin, keeper, fake_time=fake_time)

    with caplog.at_level(logging.DEBUG):
        client.get("/accounts")
        with pytest.raises(ApiError) as raised:
            client.get("http://127.0.0.1:1/1.0/accounts")

    secrets = {first_access, first_refresh, keeper.access_token, keeper.tokens.refresh_token}
    text = caplog.text + str(raised.value)
    assert keeper.stats.refreshes == 1
    assert "GET /1.0/accounts" in caplog.text
    assert not [secret for secret in secrets if secret in text]


def test_clients_of_one_account_share_its_pacer_and_other_requests_do_not(standin: StandIn) -> None:
    """Requests under /accounts/<id> from two connections' clients count against one window for that
    account (AWeber's limit is per account); a request outside any account uses the client's own."""
    from job.api.pacing import Pacer

    _add_list(standin, 10)
    fake_time = FakeTime()
    pacers: dict[str, Pacer] = {}

    def pacer_for(key: str) -> Pacer:
        return pacers.setdefault(key, Pacer(2, 60.0, fake_time.monotonic))

    first = _client(standin, _fake_tokens(standin), fake_time=fake_time, rate_limit_per_minute=2, pacer_for=pacer_for)
    second = _client(standin, _fake_tokens(standin), fake_time=fake_time, rate_limit_per_minute=2, pacer_for=pacer_for)
    first.get(f"/accounts/{ACCOUNT_ID}/lists")
    second.get(f"/accounts/{ACCOUNT_ID}/lists")
    assert fake_time.sleeps == []
    second.get("/accounts")  # not under one account: the second client's own pacer, which is empty
    assert fake_time.sleeps == []
    first.get(f"/accounts/{ACCOUNT_ID}/lists")  # the account's third request within a minute waits
    assert fake_time.sleeps == [60.0]
    assert list(pacers) == [f"account {ACCOUNT_ID}"]
