"""The new-subscribers task against the stand-in: minimal requests, watermarks, formats, filters, timestamps."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job.cli import main, make_session
from job.config import Settings, load_settings
from job.errors import EXIT_TEMPORARY, ApiError, RunTimeoutError
from job.run.single import RunOptions, RunOutcome, run_cycle
from job.standin import Fault, StandIn
from job.standin.days import format_timestamp
from job.tasks import TaskContext
from job.tasks.new_subscribers import FIELDS, Watermark, new_subscribers, parse_timestamp
from tests.support.days import EXTREME_ZONES, WATERMARK_DAY, midnights_between
from tests.support.jobs import FakeTime, JobFiles, run_job

DAY = 86_400
ACCOUNT = 100
LISTS = (201, 202, 203)


@pytest.fixture(autouse=True)
def _no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the test's own directory, so no .env file of the checkout is read."""
    monkeypatch.chdir(tmp_path)


def populate(standin: StandIn, lists: tuple[int, ...] = LISTS, *, size: int = 100_000, account: int = ACCOUNT) -> None:
    """An account whose lists hold ``size`` subscribers each, the latest three days old."""
    now = time.time()
    if standin.state.account(account) is None:
        standin.add_account(account)
    for seed, list_id in enumerate(lists):
        standin.add_list(account, list_id, f"List {list_id}", size=size,
                         start=now - 400 * DAY, end=now - 3 * DAY, seed=seed)


def add(standin: StandIn, list_id: int, count: int, *, at: float | None = None, step: float = 1.0,
        account: int = ACCOUNT, tag: str = "new") -> list[int]:
    """Append ``count`` subscribers to a list, ``step`` seconds apart from ``at`` (default: ten minutes ago)."""
    first = time.time() - 600 if at is None else at
    entries = [
        {"email": f"{tag}{i}.{list_id}@example.com", "name": f"New Person {i}", "subscribed_at": first + i * step}
        for i in range(count)
    ]
    return standin.add_subscribers(account, list_id, entries)


def run(job: JobFiles, *args: str, **env: str) -> tuple[int, list[dict[str, Any]], str]:
    """``aweber-job run ARGS`` in this process: exit code, JSON rows, raw output."""
    buffer = io.StringIO()
    code = main(["run", *args], environ=job.env(**env), stdout=buffer)
    text = buffer.getvalue()
    rows = [json.loads(line) for line in text.splitlines()] if "--format" not in args else []
    return code, rows, text


def api_counts(standin: StandIn) -> dict[str, int]:
    """The stand-in's API request counters, then zeroed for the next run."""
    counts: dict[str, int] = dict(standin.stats()["api"])  # type: ignore[call-overload]
    standin.reset_stats()
    return counts


def watermarks(job: JobFiles) -> dict[str, Any]:
    state = json.loads((job.token_file.parent / "new-subscribers.state.json").read_text(encoding="utf-8"))
    lists: dict[str, Any] = state["lists"]
    return lists


def test_requests_are_the_minimum_for_none_five_and_250_new_subscribers(job: JobFiles) -> None:
    """On three lists of 100,000: 0, 5 and 250 new cost 1, 1 and 3 finds a list, plus an accounts and a lists page."""
    populate(job.standin)
    job.write_tokens()
    code, rows, text = run(job)
    assert (code, text) == (0, "")
    assert api_counts(job.standin) == {"GET accounts:200": 1, "GET lists:200": 1, "GET find:200": 3}

    added = {list_id: add(job.standin, list_id, 5) for list_id in LISTS}
    code, rows, _ = run(job)
    assert code == 0
    assert [row["id"] for row in rows] == [i for list_id in LISTS for i in added[list_id]]
    assert api_counts(job.standin) == {"GET accounts:200": 1, "GET lists:200": 1, "GET find:200": 3}

    # k = 250, plus the 5 of the run before on the days asked: ceil(k/100) = 3 pages per list.
    added = {list_id: add(job.standin, list_id, 250, at=time.time() - 300) for list_id in LISTS}
    code, rows, _ = run(job)
    assert code == 0
    assert [row["id"] for row in rows] == [i for list_id in LISTS for i in added[list_id]]
    log = job.standin.request_log()
    assert api_counts(job.standin) == {"GET accounts:200": 1, "GET lists:200": 1, "GET find:200": 9}
    first_finds = [entry["query"] for entry in log if entry["label"] == "GET find" and "ws.start" not in entry["query"]]
    assert len(first_finds) == 3
    for query in first_finds:
        assert isinstance(query, dict)
        assert query["ws.op"] == "find"
        assert query["sort_key"] == "subscribed_at"
        assert query["sort_order"] == "asc"
        assert query["ws.size"] == "100"
        assert date.fromisoformat(query["subscribed_after"]) >= date.today() - timedelta(days=2)


def test_rows_carry_the_fields_oldest_first(job: JobFiles) -> None:
    """Each row has the contract's fields, subscribed_at exactly as AWeber wrote it, oldest first."""
    populate(job.standin, (201,), size=1000)
    job.write_tokens()
    ids = add(job.standin, 201, 3, at=time.time() - 900.5, step=60.25)
    code, rows, _ = run(job)
    assert code == 0
    assert [row["id"] for row in rows] == ids
    assert set(FIELDS) <= set(rows[0])
    assert rows[0]["account_id"] == ACCOUNT
    assert rows[0]["list_id"] == 201
    assert rows[0]["list_name"] == "List 201"
    assert rows[0]["email"] == "new0.201@example.com"
    assert rows[0]["name"] == "New Person 0"
    assert rows[0]["status"] == "subscribed"
    assert rows[0]["subscribed_at"].endswith("-05:00") and "." in rows[0]["subscribed_at"]
    instants = [parse_timestamp(row["subscribed_at"]) for row in rows]
    assert instants == sorted(instants)  # type: ignore[type-var]


def test_subscribers_sharing_the_watermark_instant_are_neither_lost_nor_repeated(job: JobFiles) -> None:
    """Subscribers who arrive later at the watermark's exact instant are reported once, the earlier ones never again."""
    populate(job.standin, (201,), size=1000)
    job.write_tokens()
    instant = time.time() - 300.25
    first = add(job.standin, 201, 1, at=instant, step=0, tag="a")
    assert [row["id"] for row in run(job)[1]] == first

    same = add(job.standin, 201, 2, at=instant, step=0, tag="b")
    code, rows, _ = run(job)
    assert code == 0
    assert [row["id"] for row in rows] == same
    mark = watermarks(job)[f"{ACCOUNT}/201"]
    assert sorted(mark["ids"]) == sorted(first + same)
    assert parse_timestamp(mark["subscribed_at"]) == datetime.fromtimestamp(instant, timezone.utc)

    assert run(job)[1] == []

    later = add(job.standin, 201, 2, at=instant, step=1, tag="c")
    code, rows, _ = run(job)
    assert [row["id"] for row in rows] == later
    mark = watermarks(job)[f"{ACCOUNT}/201"]
    assert mark["ids"] == [later[1]]
    assert mark["subscribed_at"] == rows[-1]["subscribed_at"]


def test_first_run_looks_back_as_far_as_since(job: JobFiles) -> None:
    """Without a watermark a run reports what arrived within --since; an empty first run still records a watermark."""
    populate(job.standin, (201,), size=1000)
    job.write_tokens()
    old = add(job.standin, 201, 1, at=time.time() - 30 * 3600, tag="old")
    recent = add(job.standin, 201, 1, at=time.time() - 3600, tag="recent")
    assert [row["id"] for row in run(job)[1]] == recent

    populate(job.standin, (202,), size=1000)
    code, rows, _ = run(job, "--since", "2d")
    assert (code, rows) == (0, [])  # list 201 has its watermark; 202's generated subscribers are 3 days old
    assert f"{ACCOUNT}/202" in watermarks(job)
    assert old  # reported by no run: it is older than the first run's 24 hours


def test_csv_output_has_a_header_once_and_nothing_when_nothing_is_new(job: JobFiles, tmp_path: Path) -> None:
    """--format csv writes a header and escaped rows, one header per appended file, and nothing for an empty run."""
    populate(job.standin, (201,), size=1000)
    job.write_tokens()
    job.standin.add_subscribers(ACCOUNT, 201, [
        {"email": "quote@example.com", "name": 'Smith, "Jo"', "subscribed_at": time.time() - 120},
    ])
    add(job.standin, 201, 2, at=time.time() - 60)
    code, _, text = run(job, "--format", "csv")
    assert code == 0
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ()) == FIELDS
    rows = list(reader)
    assert [row["email"] for row in rows] == ["quote@example.com", "new0.201@example.com", "new1.201@example.com"]
    assert rows[0]["name"] == 'Smith, "Jo"'
    assert rows[0]["list_name"] == "List 201"

    assert run(job, "--format", "csv")[2] == ""

    output = tmp_path / "new.csv"
    add(job.standin, 201, 1, at=time.time() - 30, tag="x")
    assert run(job, "--format", "csv", "--output", str(output))[0] == 0
    add(job.standin, 201, 1, at=time.time() - 20, tag="y")
    assert run(job, "--format", "csv", "--output", str(output))[0] == 0
    lines = output.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(FIELDS)
    assert len(lines) == 3
    assert [row["email"] for row in csv.DictReader(io.StringIO("\n".join(lines)))] == [
        "x0.201@example.com", "y0.201@example.com",
    ]


def test_account_id_and_list_ids_limit_what_is_scanned(job: JobFiles, capsys: pytest.CaptureFixture[str]) -> None:
    """AWEBER_ACCOUNT_ID skips the accounts request; AWEBER_LIST_IDS scans only those lists, naming missing ones."""
    populate(job.standin, (201, 202), size=1000, account=ACCOUNT)
    populate(job.standin, (401, 402), size=1000, account=300)
    job.write_tokens()
    for account, list_id in ((ACCOUNT, 201), (ACCOUNT, 202), (300, 401), (300, 402)):
        add(job.standin, list_id, 1, account=account)

    code, rows, _ = run(job, AWEBER_ACCOUNT_ID="300")
    assert code == 0
    assert sorted((row["account_id"], row["list_id"]) for row in rows) == [(300, 401), (300, 402)]
    assert api_counts(job.standin) == {"GET lists:200": 1, "GET find:200": 2}

    capsys.readouterr()
    code, rows, _ = run(job, AWEBER_LIST_IDS="202,999")
    assert code == 0
    assert [(row["account_id"], row["list_id"]) for row in rows] == [(ACCOUNT, 202)]
    assert api_counts(job.standin) == {"GET accounts:200": 1, "GET lists:200": 2, "GET find:200": 1}
    err = capsys.readouterr().err
    assert "999" in err and "warning" in err
    assert 'list 202 "List 202": 1 new' in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2015-10-13T16:19:20-04:00", datetime(2015, 10, 13, 16, 19, 20, tzinfo=timezone(timedelta(hours=-4)))),
        ("2017-10-13T10:41:43.300889-04:00",
         datetime(2017, 10, 13, 10, 41, 43, 300889, tzinfo=timezone(timedelta(hours=-4)))),
        ("2015-10-13T16:19:53", datetime(2015, 10, 13, 16, 19, 53, tzinfo=timezone.utc)),
        ("2015-10-13T16:19:53Z", datetime(2015, 10, 13, 16, 19, 53, tzinfo=timezone.utc)),
        ("2015-10-13 16:19:53+0000", datetime(2015, 10, 13, 16, 19, 53, tzinfo=timezone.utc)),
        ("2015-10-13T16:19:53.3+05:30",
         datetime(2015, 10, 13, 16, 19, 53, 300000, tzinfo=timezone(timedelta(hours=5, minutes=30)))),
        ("2015-10-13T16:19:53.123456789-05:00",
         datetime(2015, 10, 13, 16, 19, 53, 123456, tzinfo=timezone(timedelta(hours=-5)))),
        ("2015-10-13T16:19", datetime(2015, 10, 13, 16, 19, tzinfo=timezone.utc)),
        ("2015-10-13", datetime(2015, 10, 13, tzinfo=timezone.utc)),
        ("", None),
        ("   ", None),
        (None, None),
        (1444767560, None),
        ("yesterday", None),
        ("2015-13-01T00:00:00", None),
        ("2015-02-30T00:00:00Z", None),
    ],
)
def test_timestamps_parse_leniently(text: object, expected: datetime | None) -> None:
    """AWeber's timestamp shapes parse with or without offset or fraction (no offset is UTC); anything else is None."""
    parsed = parse_timestamp(text)
    assert parsed == expected
    if expected is not None and parsed is not None:
        assert parsed.utcoffset() == expected.utcoffset()


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)),
       st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_isoformat_round_trips_keeping_its_offset(moment: datetime, offset_minutes: int) -> None:
    """Any ISO 8601 timestamp Python writes, with or without an offset, parses back to the same instant and offset."""
    zone = timezone(timedelta(minutes=offset_minutes))
    aware = moment.replace(tzinfo=zone)
    assert (parsed := parse_timestamp(aware.isoformat())) == aware
    assert parsed.utcoffset() == aware.utcoffset()
    assert parse_timestamp(moment.isoformat()) == moment.replace(tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("written", "day"),
    [
        # 04:30 UTC on the 28th: the 27th at UTC-12, so the 26th is asked for.
        ("2026-11-27T23:30:00-05:00", date(2026, 11, 26)),
        # 11:59 UTC on the 28th is still the 27th at UTC-12; at 12:00 UTC it is the 28th there.
        ("2026-11-28T11:59:59Z", date(2026, 11, 26)),
        ("2026-11-28T12:00:00Z", date(2026, 11, 27)),
        # Written at UTC+14 (the 29th there), it is 09:30 UTC on the 28th: the 27th at UTC-12.
        ("2026-11-29T00:30:00+14:00", date(2026, 11, 26)),
    ],
)
def test_filter_day_is_the_day_before_the_watermarks_day_at_utc_minus_12(written: str, day: date) -> None:
    """The day asked for is the one before the earliest calendar day the watermark falls on anywhere."""
    mark = Watermark.from_state({"subscribed_at": written, "ids": [1]})
    assert mark is not None
    assert mark.filter_day() == day


def test_a_first_runs_filter_day_comes_from_since_and_bad_state_is_none() -> None:
    """A first run's watermark is --since itself, with its filter day by the same rule; unreadable state is None."""
    look_back = Watermark.look_back(datetime(2026, 11, 28, 6, 0, tzinfo=timezone.utc))
    assert look_back.filter_day() == date(2026, 11, 26)
    assert look_back.is_passed_by(datetime(2026, 11, 28, 6, 0, tzinfo=timezone.utc), 5)
    assert Watermark.from_state({"subscribed_at": "", "ids": []}) is None
    assert Watermark.from_state("garbage") is None


class CannedApi:
    """A narrow seam for answers the stand-in never sends (empty timestamps, no Date header): canned pages by path.

    ``dates`` gives the server's Date that comes with the answer for a path; without one, none comes.
    """

    def __init__(self, pages: dict[str, list[dict[str, Any]]], dates: dict[str, datetime] | None = None) -> None:
        self.pages = pages
        self.dates = dates or {}
        self.requests_made = 0
        self.server_date: datetime | None = None

    def walk(
        self, url_or_path: str, params: dict[str, Any] | None = None, *, overlap: bool = False
    ) -> Iterator[dict[str, Any]]:
        self.requests_made += 1
        self.server_date = self.dates.get(url_or_path, self.server_date)
        yield from self.pages[url_or_path]


def canned_context(
    api: CannedApi, output: io.StringIO, tmp_path: Path, *, state: dict[str, Any] | None = None
) -> TaskContext:
    """A task context around the canned API, on 2026-11-28 at noon UTC, looking back a day."""
    return TaskContext(
        api=api,  # type: ignore[arg-type]
        state=state if state is not None else {},
        settings=Settings(client_id="c", client_secret=None, client_secret_source=None,
                          token_file=tmp_path / "tokens.json", state_dir=tmp_path),
        log=logging.getLogger("test"),
        output=output,
        now=lambda: datetime(2026, 11, 28, 12, tzinfo=timezone.utc),
        since=datetime(2026, 11, 27, 12, tzinfo=timezone.utc),
    )


def test_entries_without_a_usable_timestamp_are_reported_once_not_fatal(tmp_path: Path) -> None:
    """Entries with empty, missing or garbled subscribed_at values are reported (never hidden) and remembered
    by id, without moving the watermark; offset-less timestamps count as UTC."""
    api = CannedApi({
        "accounts": [{"id": 1}],
        "accounts/1/lists": [{"id": 2, "name": "L"}],
        "accounts/1/lists/2/subscribers": [
            {"id": 10, "email": "a@example.com", "subscribed_at": ""},
            {"id": 11, "email": "b@example.com", "subscribed_at": None},
            {"id": 12, "email": "c@example.com"},
            {"id": 13, "email": "d@example.com", "subscribed_at": "soon"},
            {"id": 14, "email": "e@example.com", "subscribed_at": "2026-11-28T09:00:00"},
            {"id": 15, "email": "f@example.com", "subscribed_at": "2026-11-28T09:00:00.5Z"},
        ],
    })
    output = io.StringIO()
    context = canned_context(api, output, tmp_path)
    summary = new_subscribers(context)
    assert [json.loads(line)["id"] for line in output.getvalue().splitlines()] == [10, 11, 12, 13, 14, 15]
    assert summary == {"accounts": 1, "lists": 1, "new_subscribers": 6, "requests": 3}
    assert context.counters["new_subscribers"] == 6
    assert context.state["lists"]["1/2"] == {
        "subscribed_at": "2026-11-28T09:00:00.5Z", "ids": [15], "undated": [10, 11, 12, 13],
    }
    again = io.StringIO()
    new_subscribers(canned_context(api, again, tmp_path, state=context.state))
    assert again.getvalue() == ""


def test_the_run_time_limit_keeps_the_rows_written_and_the_next_run_continues(job: JobFiles) -> None:
    """Stopped by AWEBER_RUN_TIMEOUT mid-list: rows out are kept, the watermark covers them, the rest come next run."""
    populate(job.standin, (201,), size=0)  # only new subscribers: the first find page is 100 of them
    job.write_tokens()
    added = add(job.standin, 201, 250, at=time.time() - 900)
    # One request a minute and 150 s: accounts, then lists and the first find page after a minute each;
    # the second page would start at 180 s.
    settings = load_settings(job.env(AWEBER_RATE_LIMIT="1", AWEBER_RUN_TIMEOUT="150"))
    fake_time = FakeTime(5000.0)
    output = io.StringIO()

    outcome = RunOutcome()
    with pytest.raises(RunTimeoutError) as raised:
        run_cycle(settings, make_session(), RunOptions(task="new-subscribers"), stdout=output, outcome=outcome,
                  monotonic=fake_time.monotonic, sleep=fake_time.sleep)

    assert fake_time.sleeps == [60.0, 60.0]
    assert raised.value.exit_code == EXIT_TEMPORARY
    message = str(raised.value)
    assert "AWEBER_RUN_TIMEOUT (150s)" in message and "the next run continues" in message
    rows = [json.loads(line) for line in output.getvalue().splitlines()]
    assert [row["id"] for row in rows] == added[:100]
    assert outcome.new_subscribers == 100
    mark = watermarks(job)[f"{ACCOUNT}/201"]
    assert (mark["subscribed_at"], mark["ids"]) == (rows[-1]["subscribed_at"], [added[99]])

    code, rows, _ = run(job)
    assert code == 0
    assert [row["id"] for row in rows] == added[100:]


def test_a_drip_that_never_ends_stops_the_real_process_at_the_run_time_limit(job: JobFiles) -> None:
    """A find answer dripping for hours ends the run at AWEBER_RUN_TIMEOUT: exit 75, one line; the next run goes on."""
    populate(job.standin, (201,), size=1000)
    job.write_tokens()
    added = add(job.standin, 201, 3)
    job.standin.inject(Fault(drip_seconds=0.2), path=f"/1.0/accounts/{ACCOUNT}/lists/201/subscribers")
    started = time.monotonic()

    ran = run_job(["run"], job.env(AWEBER_RUN_TIMEOUT="2", AWEBER_HTTP_TIMEOUT="5"), cwd=job.root)

    assert time.monotonic() - started < 15
    assert ran.returncode == EXIT_TEMPORARY, ran.stderr
    assert ran.stdout == ""
    errors = [line for line in ran.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, ran.stderr
    assert "AWEBER_RUN_TIMEOUT (2s)" in errors[0] and "the next run continues" in errors[0]
    assert f"{ACCOUNT}/201" in watermarks(job)

    code, rows, _ = run(job)
    assert code == 0
    assert [row["id"] for row in rows] == added


def test_next_links_that_drop_the_find_parameters_hide_no_subscriber(job: JobFiles) -> None:
    """When AWeber's next links lose the filters and sort, all 250 new subscribers still come, in 3 finds."""
    populate(job.standin, (201,), size=1000)
    job.write_tokens()
    job.standin.configure_api(next_links_drop_filters=True)
    added = add(job.standin, 201, 250, at=time.time() - 900)

    code, rows, _ = run(job)

    assert code == 0
    assert [row["id"] for row in rows] == added
    assert api_counts(job.standin)["GET find:200"] == 3


def test_subscribed_at_going_backwards_is_an_error_not_a_silent_skip(tmp_path: Path) -> None:
    """A find sorted ascending whose subscribed_at goes back is an ApiError naming the list, not skipped rows."""
    api = CannedApi({
        "accounts": [{"id": 1}],
        "accounts/1/lists": [{"id": 2, "name": "L"}],
        "accounts/1/lists/2/subscribers": [
            {"id": 10, "email": "a@example.com", "subscribed_at": "2026-11-28T09:00:00Z"},
            {"id": 11, "email": "b@example.com", "subscribed_at": "2026-11-28T10:00:00Z"},
            {"id": 12, "email": "c@example.com", "subscribed_at": "2026-11-28T09:30:00Z"},
        ],
    })
    output = io.StringIO()
    context = canned_context(api, output, tmp_path)

    with pytest.raises(ApiError) as raised:
        new_subscribers(context)

    message = str(raised.value)
    assert "list 2" in message and "12" in message and "backwards" in message
    assert raised.value.exit_code == 1


HOUR = 3600


@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
@pytest.mark.parametrize("offset_hours", EXTREME_ZONES, ids=[f"UTC{h:+d}" for h in EXTREME_ZONES])
def test_every_subscriber_past_the_watermark_is_found_whatever_zone_and_reading_the_day_filters_use(
    job: JobFiles, offset_hours: int, exclusive: bool
) -> None:
    """Watermarks a second either side of midnight in each extreme zone miss none of the subscribers after them."""
    job.standin.configure_api(filter_day_offset_hours=offset_hours, exclusive_day_filters=exclusive)
    job.standin.add_account(ACCOUNT)
    state: dict[str, Any] = {"lists": {}}
    expected: list[int] = []
    list_id = 300
    for zone in EXTREME_ZONES:
        for side in (-1, 1):
            list_id += 1
            watermark = (WATERMARK_DAY - timedelta(hours=zone)).timestamp() + side
            after = sorted({watermark + 1, *[
                moment + delta
                for moment in midnights_between(watermark + 1, watermark + 50 * HOUR) for delta in (-1, 0, 1)
                if moment + delta > watermark
            ]})
            moments = [watermark - 30 * HOUR, watermark - 1, watermark, *after]
            job.standin.add_list(ACCOUNT, list_id, f"List {list_id}", size=0, start=moments[0], end=moments[0])
            ids = job.standin.add_subscribers(ACCOUNT, list_id, [
                {"email": f"s{number}.{list_id}@example.com", "subscribed_at": moment}
                for number, moment in enumerate(moments)
            ])
            # The watermark: the subscriber at `watermark`, as AWeber wrote its time, already reported.
            state["lists"][f"{ACCOUNT}/{list_id}"] = {"subscribed_at": format_timestamp(watermark), "ids": [ids[2]]}
            expected += ids[3:]
    job.write_tokens()
    state_file = job.token_file.parent / "new-subscribers.state.json"
    state_file.write_text(json.dumps(state), encoding="utf-8")

    code, rows, _ = run(job)

    assert code == 0
    assert [row["id"] for row in rows] == expected
    # Each list's new ones plus the few before the watermark on the day asked fit on one page.
    assert api_counts(job.standin)["GET find:200"] == len(state["lists"])


YEAR = timedelta(days=365)


def test_a_first_run_under_a_fast_clock_keeps_a_watermark_the_next_correct_run_sees_past(job: JobFiles) -> None:
    """A local clock a year fast looks back from the server's Date, so neither its run nor the next hides anyone."""
    populate(job.standin, (201,), size=1000)
    job.write_tokens()
    first = add(job.standin, 201, 2, at=time.time() - 3600, tag="first")
    fast = io.StringIO()
    settings = load_settings(job.env())

    run_cycle(settings, make_session(), RunOptions(task="new-subscribers"), stdout=fast,
              clock=lambda: time.time() + YEAR.total_seconds())

    assert [json.loads(line)["id"] for line in fast.getvalue().splitlines()] == first
    mark = parse_timestamp(watermarks(job)[f"{ACCOUNT}/201"]["subscribed_at"])
    assert mark is not None and mark.timestamp() <= time.time()
    later = add(job.standin, 201, 1, at=time.time() - 1, tag="later")
    code, rows, _ = run(job)
    assert code == 0
    assert [row["id"] for row in rows] == later


def test_a_first_run_with_nothing_new_under_a_fast_clock_keeps_no_watermark_in_the_future(job: JobFiles) -> None:
    """With nothing new, the look-back watermark a fast clock wrote is at or before the server's Date."""
    populate(job.standin, (201,), size=1000)
    job.write_tokens()
    settings = load_settings(job.env())
    run_cycle(settings, make_session(), RunOptions(task="new-subscribers", since="2h"), stdout=io.StringIO(),
              clock=lambda: time.time() + YEAR.total_seconds())

    mark = parse_timestamp(watermarks(job)[f"{ACCOUNT}/201"]["subscribed_at"])
    assert mark is not None and mark.timestamp() <= time.time() - 2 * 3600 + 5
    arrived = add(job.standin, 201, 1, at=time.time() - 1)
    assert [row["id"] for row in run(job)[1]] == arrived


def test_the_look_back_watermark_is_clamped_to_the_find_answers_date(tmp_path: Path) -> None:
    """When only the find answer carries a Date, a fast clock's look-back watermark is pulled back to it."""
    server_now = datetime(2026, 11, 28, 12, tzinfo=timezone.utc)
    api = CannedApi({"accounts": [{"id": 1}], "accounts/1/lists": [{"id": 2, "name": "L"}],
                     "accounts/1/lists/2/subscribers": []},
                    dates={"accounts/1/lists/2/subscribers": server_now})
    context = canned_context(api, io.StringIO(), tmp_path)
    context.now = lambda: server_now + YEAR
    context.since, context.look_back = server_now + YEAR - timedelta(hours=24), timedelta(hours=24)

    new_subscribers(context)

    mark = parse_timestamp(context.state["lists"]["1/2"]["subscribed_at"])
    assert mark is not None and mark <= server_now


def test_a_saved_watermark_far_past_the_servers_date_is_taken_as_wrong(
    job: JobFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    """A watermark a year ahead (left by a fast clock) is replaced by the look-back from --since, with a warning."""
    populate(job.standin, (201,), size=1000)
    job.write_tokens()
    ahead = datetime.fromtimestamp(time.time(), timezone.utc) + YEAR
    state_file = job.token_file.parent / "new-subscribers.state.json"
    state_file.write_text(json.dumps({"lists": {f"{ACCOUNT}/201": {"subscribed_at": ahead.isoformat(), "ids": [1]}}}))
    arrived = add(job.standin, 201, 1, at=time.time() - 1)
    capsys.readouterr()

    code, rows, _ = run(job)

    assert code == 0
    assert [row["id"] for row in rows] == arrived
    err = capsys.readouterr().err
    assert "list 201" in err and "after the server's Date" in err and "warning" in err


def test_a_subscriber_dated_in_the_future_is_reported_once_without_moving_the_watermark_past_the_date(
    job: JobFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    """Subscribers a broken server dates ahead are reported once, warned about once, and do not move the watermark."""
    populate(job.standin, (201,), size=1000)
    job.write_tokens()
    now = time.time()
    normal = add(job.standin, 201, 1, at=now - 60, tag="normal")
    future = add(job.standin, 201, 2, at=now + 30 * DAY, tag="future")
    capsys.readouterr()

    code, rows, _ = run(job)

    assert code == 0
    assert [row["id"] for row in rows] == normal + future
    mark = watermarks(job)[f"{ACCOUNT}/201"]
    assert (mark["ids"], parse_timestamp(mark["subscribed_at"])) == (normal, parse_timestamp(rows[0]["subscribed_at"]))
    err = capsys.readouterr().err
    assert err.count("after the server's Date") == 1 and "list 201" in err

    code, rows, _ = run(job)
    assert (code, rows) == (0, [])
    assert "after the server's Date" not in capsys.readouterr().err


def test_subscribers_reported_ahead_of_the_watermark_are_forgotten_once_it_passes_them() -> None:
    """The ids kept for subscribers dated past the server's Date stay only while the watermark is behind them."""
    noon = datetime(2026, 11, 28, 12, tzinfo=timezone.utc)
    mark = Watermark.from_state({"subscribed_at": noon.isoformat(), "ids": [1]})
    assert mark is not None
    late = noon + timedelta(hours=5)
    mark.advance(late.isoformat(), late, 7, server_date=noon + timedelta(hours=1))
    assert mark.instant == noon
    assert not mark.is_passed_by(late, 7) and mark.is_passed_by(late, 8)
    saved = Watermark.from_state(mark.to_state())
    assert saved is not None and not saved.is_passed_by(late, 7)

    later = noon + timedelta(hours=6)
    saved.advance(later.isoformat(), later, 9, server_date=later)
    assert saved.to_state() == {"subscribed_at": later.isoformat(), "ids": [9]}


def test_a_subscriber_reported_ahead_is_passed_over_once_the_servers_date_reaches_it(tmp_path: Path) -> None:
    """Dated past the server's Date, b is reported and kept aside; a later run moves over b without reporting it."""
    noon = datetime(2026, 11, 28, 12, tzinfo=timezone.utc)
    a = {"id": 1, "email": "a@example.com", "subscribed_at": "2026-11-28T11:00:00Z"}
    b = {"id": 2, "email": "b@example.com", "subscribed_at": "2026-11-28T15:00:00Z"}
    c = {"id": 3, "email": "c@example.com", "subscribed_at": "2026-11-28T15:30:00Z"}
    pages = {"accounts": [{"id": 1}], "accounts/1/lists": [{"id": 2, "name": "L"}]}
    first = CannedApi({**pages, "accounts/1/lists/2/subscribers": [a, b]}, dates={"accounts": noon})
    output = io.StringIO()
    context = canned_context(first, output, tmp_path)

    new_subscribers(context)

    assert [json.loads(line)["id"] for line in output.getvalue().splitlines()] == [1, 2]
    assert context.state["lists"]["1/2"] == {
        "subscribed_at": "2026-11-28T11:00:00Z", "ids": [1],
        "ahead": [{"id": 2, "subscribed_at": "2026-11-28T15:00:00Z"}],
    }

    caught_up = CannedApi({**pages, "accounts/1/lists/2/subscribers": [a, b]},
                          dates={"accounts": noon + timedelta(hours=4)})
    output = io.StringIO()
    again = canned_context(caught_up, output, tmp_path)
    again.state = context.state

    new_subscribers(again)

    assert output.getvalue() == ""
    assert again.state["lists"]["1/2"] == {"subscribed_at": "2026-11-28T15:00:00Z", "ids": [2]}

    later = CannedApi({**pages, "accounts/1/lists/2/subscribers": [b, c]},
                      dates={"accounts": noon + timedelta(hours=4)})
    output = io.StringIO()
    last = canned_context(later, output, tmp_path)
    last.state = again.state

    new_subscribers(last)

    assert [json.loads(line)["id"] for line in output.getvalue().splitlines()] == [3]
    assert last.state["lists"]["1/2"] == {"subscribed_at": "2026-11-28T15:30:00Z", "ids": [3]}


def test_a_subscriber_removed_while_the_list_is_read_hides_no_one(
    job: JobFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One subscriber leaves the list between the find's first and second page, so every later one moves up a
    place: the job notices the shift and reads on from its last row, so nobody is skipped."""
    from job.standin.subscribers import Selection

    populate(job.standin, (LISTS[0],), size=1_000)
    job.write_tokens()
    assert run(job)[0] == 0
    added = add(job.standin, LISTS[0], 150)
    leaving = added[5]
    served: list[int] = []
    original_page = Selection.page

    def page(self: Selection, start: int, size: int, *, descending: bool = False) -> list[int]:
        # From the second page served on, the subscriber who left is gone and everyone after moves up.
        positions = original_page(self, 0, start + size + 1, descending=descending)
        if served:
            gone = job.standin.state.subscriber_list(ACCOUNT, LISTS[0])
            assert gone is not None
            positions = [p for p in positions if gone.get(p).id != leaving]
        served.append(start)
        return positions[start:start + size]

    monkeypatch.setattr(Selection, "page", page)
    code, rows, _ = run(job)
    assert code == 0
    monkeypatch.setattr(Selection, "page", original_page)
    code, later, _ = run(job)
    assert code == 0
    reported = [row["id"] for row in rows + later]
    assert sorted(reported) == sorted(added), "a subscriber was skipped or reported twice"


def test_a_subscriber_without_a_usable_subscribed_at_is_reported_once_with_a_warning(
    job: JobFiles, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A subscriber whose subscribed_at cannot be read is reported (not silently skipped), with a warning, and
    not again by the next run; the others are reported as usual."""
    from job.standin.api import Api

    populate(job.standin, (LISTS[0],), size=1_000)
    job.write_tokens()
    assert run(job)[0] == 0
    added = add(job.standin, LISTS[0], 3)
    original_entry = Api._subscriber_entry

    def entry(self: Api, *args: Any, **kwargs: Any) -> dict[str, object]:
        value = original_entry(self, *args, **kwargs)
        if value["id"] == added[1]:
            value["subscribed_at"] = "2026-11-30at 09:00"
        return value

    monkeypatch.setattr(Api, "_subscriber_entry", entry)
    capsys.readouterr()
    code, rows, _ = run(job)
    assert code == 0
    assert sorted(row["id"] for row in rows) == sorted(added)
    warnings = [line for line in capsys.readouterr().err.splitlines() if ": warning: " in line]
    assert any(str(added[1]) in line and "subscribed_at" in line for line in warnings), warnings
    code, again, _ = run(job)
    assert (code, again) == (0, [])
