"""The stand-in's find for unsubscribes (status, unsubscribed_* day filters, sort by unsubscribed_at), the
fields a subscriber entry carries, and the list counts: as AWeber documents them, with the same switchable
readings of the day filters as for subscribed_after."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
import requests

from job.standin import StandIn
from job.standin.days import day_start_epoch
from tests.standin.conftest import CONF_ID, FakeClock, bearer

ACCOUNT = 123
LIST = 456
DAY0_START = day_start_epoch(date(2026, 1, 1))
HOUR = 3600


@pytest.fixture
def token(server: StandIn) -> str:
    """A live access token, with account 123 and a 50-subscriber list 456 (generated ones never unsubscribe)."""
    server.add_account(ACCOUNT)
    server.add_list(ACCOUNT, LIST, "Newsletter", size=50, start=DAY0_START, end=DAY0_START + 49 * HOUR, seed=1)
    return str(server.issue_tokens(CONF_ID)["access_token"])


def find(http: requests.Session, server: StandIn, token: str, **params: str) -> list[dict[str, Any]]:
    """The entries of one find page on list 456."""
    url = f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}/subscribers"
    answer = http.get(url, params={"ws.op": "find", **params}, headers=bearer(token), timeout=10)
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, Any]] = answer.json()["entries"]
    return entries


def test_a_subscriber_who_unsubscribes_later_is_found_by_the_day_of_unsubscribing_in_that_order(
    server: StandIn, http: requests.Session, token: str
) -> None:
    """Three who joined in January and left in March, out of joining order: the find by unsubscribed_after and
    sort_key=unsubscribed_at returns those who left on or after the day, ordered by when they left."""
    joined = DAY0_START + 100 * HOUR
    ids = server.add_subscribers(ACCOUNT, LIST, [
        {"email": f"p{number}@example.com", "subscribed_at": joined + number} for number in range(4)
    ])
    march = day_start_epoch(date(2026, 3, 10))
    server.unsubscribe(ACCOUNT, LIST, ids[0], at=march + 5 * HOUR)
    server.unsubscribe(ACCOUNT, LIST, ids[1], at=march + 1 * HOUR, method="api: unsubscribe")
    server.unsubscribe(ACCOUNT, LIST, ids[2], at=march - 30 * HOUR)

    found = find(http, server, token, status="unsubscribed", unsubscribed_after="2026-03-10",
                 sort_key="unsubscribed_at", sort_order="asc")

    assert [entry["id"] for entry in found] == [ids[1], ids[0]]
    assert [entry["unsubscribe_method"] for entry in found] == ["api: unsubscribe", "unsubscribe link"]
    assert found[0]["unsubscribed_at"] == "2026-03-10T01:00:00-05:00"
    assert all(entry["status"] == "unsubscribed" for entry in found)
    everyone_who_left = find(http, server, token, status="unsubscribed", sort_key="unsubscribed_at")
    assert [entry["id"] for entry in everyone_who_left] == [ids[2], ids[1], ids[0]]
    before = find(http, server, token, unsubscribed_before="2026-03-09")
    assert [entry["id"] for entry in before] == [ids[2]]
    # Without a sort key, the order added.
    assert [entry["id"] for entry in find(http, server, token, unsubscribed_at="2026-03-10")] == [ids[0], ids[1]]


def test_unsubscribing_moves_the_lists_counts(server: StandIn, http: requests.Session, token: str) -> None:
    """total_unsubscribed_subscribers and total_subscribed_subscribers follow an unsubscribe; the total stays."""
    url = f"{server.api_url}/accounts/{ACCOUNT}/lists/{LIST}"
    before = http.get(url, headers=bearer(token), timeout=10).json()
    (added,) = server.add_subscribers(ACCOUNT, LIST, [
        {"email": "x@example.com", "subscribed_at": DAY0_START + 60 * HOUR},
    ])
    server.unsubscribe(ACCOUNT, LIST, added, at=DAY0_START + 70 * HOUR)
    after = http.get(url, headers=bearer(token), timeout=10).json()
    assert after["total_subscribers"] == before["total_subscribers"] + 1 == 51
    assert after["total_unsubscribed_subscribers"] == before["total_unsubscribed_subscribers"] + 1 == 1
    assert after["total_subscribed_subscribers"] == before["total_subscribed_subscribers"]


def test_what_cannot_unsubscribe_is_refused_changing_nothing(server: StandIn, token: str) -> None:
    """Generated subscribers, unknown ids, a second unsubscribe, a time before joining, an unknown method:
    ValueError, and the subscriber stays as it was."""
    (added,) = server.add_subscribers(ACCOUNT, LIST, [
        {"email": "y@example.com", "subscribed_at": DAY0_START + 60 * HOUR},
    ])
    generated = LIST * 10_000_000 + 3
    for subscriber_id, at, method in ((generated, None, "unsubscribe link"), (999, None, "unsubscribe link"),
                                      (added, DAY0_START, "unsubscribe link"), (added, None, "rage quit")):
        with pytest.raises(ValueError):
            server.unsubscribe(ACCOUNT, LIST, subscriber_id, at=at, method=method)
    subscriber_list = server.state.subscriber_list(ACCOUNT, LIST)
    assert subscriber_list is not None
    assert subscriber_list.count_by_status()["unsubscribed"] == 0
    server.unsubscribe(ACCOUNT, LIST, added)
    with pytest.raises(ValueError, match="already"):
        server.unsubscribe(ACCOUNT, LIST, added)
    assert subscriber_list.count_by_status()["unsubscribed"] == 1


@pytest.mark.parametrize(
    ("offset_hours", "exclusive", "expected"),
    [
        # The subscriber left at 2026-11-27T11:30Z: the 26th at UTC-12, the 27th at UTC, the 28th at UTC+14.
        (-12, False, {"at 11-26": True, "at 11-27": False, "after 11-26": True, "after 11-27": False,
                      "before 11-26": True, "before 11-25": False}),
        (14, False, {"at 11-28": True, "at 11-27": False, "after 11-28": True, "after 11-29": False,
                     "before 11-28": True, "before 11-27": False}),
        (-5, False, {"at 11-27": True, "after 11-27": True, "after 11-28": False, "before 11-27": True}),
        (0, True, {"at 11-27": True, "after 11-26": True, "after 11-27": False,
                   "before 11-28": True, "before 11-27": False}),
        (-12, True, {"at 11-26": True, "after 11-25": True, "after 11-26": False,
                     "before 11-27": True, "before 11-26": False}),
        (14, True, {"at 11-28": True, "after 11-27": True, "after 11-28": False,
                    "before 11-29": True, "before 11-28": False}),
    ],
    ids=["utc-12", "utc+14", "utc-5", "utc exclusive", "utc-12 exclusive", "utc+14 exclusive"],
)
def test_unsubscribed_day_filters_follow_the_chosen_zone_and_inclusiveness(
    server: StandIn, http: requests.Session, token: str, offset_hours: float, exclusive: bool,
    expected: dict[str, bool],
) -> None:
    """unsubscribed_at/_after/_before days start at the configured offset, and exclusive after/before leave the
    named day out, exactly as for the subscribed_* filters; the subscribing day plays no part."""
    (subscriber_id,) = server.add_subscribers(ACCOUNT, LIST, [
        {"email": "edge@example.com", "subscribed_at": DAY0_START + 60 * HOUR},
    ])
    server.unsubscribe(ACCOUNT, LIST, subscriber_id, at=1_795_779_000)  # 2026-11-27T11:30:00Z
    server.configure_api(filter_day_offset_hours=offset_hours, exclusive_day_filters=exclusive)
    names = {"at": "unsubscribed_at", "after": "unsubscribed_after", "before": "unsubscribed_before"}

    found = {}
    for case in expected:
        which, day = case.split()
        entries = find(http, server, token, status="unsubscribed", **{names[which]: f"2026-{day}"})
        found[case] = subscriber_id in [entry["id"] for entry in entries]

    assert found == expected


def test_find_entries_carry_the_fields_an_import_wants(server: StandIn, http: requests.Session, token: str) -> None:
    """tags stay a list, custom_fields an object; ad_tracking, subscription_method, verified_at, misc_notes,
    is_verified and the list's name and link come with every find entry."""
    moment = DAY0_START + 60 * HOUR
    (added,) = server.add_subscribers(ACCOUNT, LIST, [
        {"email": "ada@example.com", "name": "Ada", "subscribed_at": moment, "tags": ["vip", "beta"],
         "custom_fields": {"apple": "fuji", "pear": ""}, "ad_tracking": "spring", "misc_notes": "met at the fair",
         "subscription_method": "webform"},
    ])
    (entry,) = find(http, server, token, email="ada@example.com")
    assert entry["id"] == added
    assert entry["tags"] == ["vip", "beta"]
    assert entry["custom_fields"] == {"apple": "fuji", "pear": ""}
    assert (entry["ad_tracking"], entry["subscription_method"], entry["misc_notes"]) == (
        "spring", "webform", "met at the fair")
    assert entry["verified_at"] == entry["subscribed_at"] == "2026-01-03T12:00:00-05:00"
    assert entry["list_name"] == "Newsletter" and entry["list_link"].endswith(f"/accounts/{ACCOUNT}/lists/{LIST}")


def test_lists_carry_todays_and_yesterdays_counts_by_the_clock() -> None:
    """total_subscribers_subscribed_today and _yesterday count by the stand-in's clock and day."""
    clock = FakeClock(day_start_epoch(date(2026, 5, 10)) + 10 * HOUR)
    with StandIn(clients={CONF_ID: "s"}, clock=clock) as server, requests.Session() as http:
        server.add_account(ACCOUNT)
        server.add_list(ACCOUNT, LIST, "Daily", size=0)
        today = day_start_epoch(date(2026, 5, 10))
        server.add_subscribers(ACCOUNT, LIST, [
            {"email": f"d{number}@example.com", "subscribed_at": at}
            for number, at in enumerate((today - 30 * HOUR, today - 2 * HOUR, today - HOUR, today + HOUR))
        ])
        token = str(server.issue_tokens(CONF_ID)["access_token"])
        (entry,) = http.get(f"{server.api_url}/accounts/{ACCOUNT}/lists", headers=bearer(token),
                            timeout=10).json()["entries"]
    assert entry["total_subscribers"] == 4
    assert entry["total_subscribers_subscribed_today"] == 1
    assert entry["total_subscribers_subscribed_yesterday"] == 2
    assert entry["total_subscribed_subscribers"] == 4 and entry["total_unsubscribed_subscribers"] == 0
