"""Lazy subscriber lists and filter days: the arithmetic agrees with a plain walk over small lists."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from job.standin.days import day_of, day_start_epoch, format_timestamp, parse_filter_day
from job.standin.subscribers import STATUSES, SubscriberList

BASE = 1_780_000_000


@st.composite
def lists(draw: st.DrawFn) -> SubscriberList:
    """Small lists: any size, seed and spread, plus a few appended subscribers."""
    size = draw(st.integers(0, 120))
    start = BASE + draw(st.integers(0, 10_000))
    end = start + draw(st.integers(0, 5_000))
    subscriber_list = SubscriberList(1, 2, "L", size=size, start=start, end=end, seed=draw(st.integers(0, 100)))
    moment = end
    entries = []
    for number in range(draw(st.integers(0, 6))):
        moment += draw(st.integers(0, 900))
        status = draw(st.sampled_from(STATUSES))
        entry: dict[str, object] = {"email": f"added{number % 3}@example.com", "subscribed_at": moment,
                                    "status": status}
        if status == "unsubscribed":
            entry["unsubscribed_at"] = moment + draw(st.integers(0, 900))
        entries.append(entry)
    subscriber_list.append(entries, default_time=moment)
    return subscriber_list


@settings(max_examples=150, deadline=None)
@given(
    subscriber_list=lists(),
    earliest=st.none() | st.integers(BASE - 100, BASE + 20_000),
    span=st.none() | st.integers(0, 20_000),
    status=st.none() | st.sampled_from(STATUSES),
    email_index=st.none() | st.integers(0, 200),
    unsubscribed_order=st.booleans(),
    descending=st.booleans(),
    start=st.integers(0, 130),
    size=st.integers(1, 100),
)
def test_selection_matches_a_walk(
    subscriber_list: SubscriberList,
    earliest: int | None,
    span: int | None,
    status: str | None,
    email_index: int | None,
    unsubscribed_order: bool,
    descending: bool,
    start: int,
    size: int,
) -> None:
    """Counting and paging a selection gives what filtering every subscriber one by one gives."""
    before = None if span is None else (earliest or BASE) + span
    everyone = [subscriber_list.get(index) for index in range(subscriber_list.total)]
    email = None
    if email_index is not None and everyone:
        email = everyone[email_index % len(everyone)].email
    expected = [
        subscriber.index for subscriber in everyone
        if (earliest is None or subscriber.subscribed_at >= earliest)
        and (before is None or subscriber.subscribed_at < before)
        and (status is None or subscriber.status == status)
        and (email is None or subscriber.email == email)
    ]
    if unsubscribed_order:
        expected.sort(key=lambda index: (everyone[index].unsubscribed_at is not None,
                                         everyone[index].unsubscribed_at or 0, index))
    if descending:
        expected.reverse()
    selection = subscriber_list.select(
        earliest=earliest, before=before, status=status, email=email, unsubscribed_order=unsubscribed_order
    )
    assert selection.count() == len(expected)
    assert selection.page(start, size, descending=descending) == expected[start:start + size]


def test_a_window_ending_among_the_generated_subscribers_holds_no_appended_one() -> None:
    """``before`` inside the generated part once sliced the appended ones with a negative end."""
    subscriber_list = SubscriberList(1, 2, "L", size=1, start=BASE, end=BASE, seed=0)
    subscriber_list.append([{"email": "late@example.com", "subscribed_at": BASE + 5}], default_time=BASE + 5)
    selection = subscriber_list.select(before=BASE)
    assert selection.count() == 0
    assert selection.page(0, 10, descending=False) == []


@settings(max_examples=60, deadline=None)
@given(subscriber_list=lists())
def test_generated_lists_are_time_ordered_and_counted(subscriber_list: SubscriberList) -> None:
    """Subscription times never decrease, ids are unique, and the status counts add up."""
    everyone = [subscriber_list.get(index) for index in range(subscriber_list.total)]
    times = [subscriber.subscribed_at for subscriber in everyone]
    assert times == sorted(times)
    assert len({subscriber.id for subscriber in everyone}) == len(everyone)
    counts = subscriber_list.count_by_status()
    assert counts == {status: sum(s.status == status for s in everyone) for status in STATUSES}
    for subscriber in everyone:
        assert subscriber_list.index_of_id(subscriber.id) == subscriber.index


def test_generated_subscribers_are_deterministic_and_spread_evenly() -> None:
    """The same parameters give the same subscribers; the first and last sit at start and end."""
    one = SubscriberList(1, 2, "L", size=1000, start=BASE, end=BASE + 999_000, seed=5)
    two = SubscriberList(1, 2, "L", size=1000, start=BASE, end=BASE + 999_000, seed=5)
    assert [one.get(i) for i in (0, 1, 500, 999)] == [two.get(i) for i in (0, 1, 500, 999)]
    assert (one.get(0).subscribed_at, one.get(999).subscribed_at) == (BASE, BASE + 999_000)
    assert one.get(500).subscribed_at == BASE + 500_000
    assert one.count_by_status()["unconfirmed"] == 25


def test_list_names_and_sizes_are_checked() -> None:
    """A list name longer than AWeber's 32 characters, or a negative size, is refused."""
    with pytest.raises(ValueError):
        SubscriberList(1, 2, "x" * 33, size=1, start=BASE, end=BASE, seed=0)
    with pytest.raises(ValueError):
        SubscriberList(1, 2, "ok", size=-1, start=BASE, end=BASE, seed=0)
    with pytest.raises(ValueError):
        SubscriberList(1, 2, "ok", size=1, start=BASE, end=BASE - 1, seed=0)


@pytest.mark.parametrize(
    ("text", "day"),
    [("2026-11-27", date(2026, 11, 27)), ("11-27-2026", date(2026, 11, 27)), ("2024-02-29", date(2024, 2, 29))],
)
def test_filter_days_parse_in_both_formats(text: str, day: date) -> None:
    """Filter days are YYYY-MM-DD or MM-DD-YYYY."""
    assert parse_filter_day(text) == day


@pytest.mark.parametrize("text", ["2026-11-31", "27-11-2026", "2026/11/27", "20261127", "2026-1-2", " 2026-11-27"])
def test_bad_filter_days_are_refused(text: str) -> None:
    """Anything else, or an impossible date, raises ValueError."""
    with pytest.raises(ValueError):
        parse_filter_day(text)


def test_timestamps_are_written_at_minus_five_hours() -> None:
    """Timestamps carry -05:00, with microseconds only when there is a fraction; days begin at 05:00 UTC."""
    start = day_start_epoch(date(2026, 11, 27))
    assert start % 86_400 == 5 * 3600
    assert format_timestamp(start) == "2026-11-27T00:00:00-05:00"
    assert format_timestamp(start + 0.5) == "2026-11-27T00:00:00.500000-05:00"
    assert day_of(start - 1) == date(2026, 11, 26)
    assert day_of(start) == date(2026, 11, 27)
