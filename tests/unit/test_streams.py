"""The streams against the stand-in: subscribers' import fields, unsubscribes read like new subscribers (none twice,
none missed, every reading of the day filters), list stats at no request of their own, the registry's schemas, and
the runner contract a tap builds on."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator, FormatChecker

from job.cli import main
from job.config import load_settings
from job.errors import UsageError
from job.standin import StandIn
from job.standin.days import format_timestamp
from job.tasks import TaskContext, resolve_task
from job.tasks.streams import STREAMS, Stream
from tests.support.days import EXTREME_ZONES, WATERMARK_DAY, midnights_between
from tests.support.jobs import JobFiles

DAY = 86_400
HOUR = 3600
ACCOUNT = 100
OLD_COLUMNS = ["account_id", "list_id", "list_name", "id", "email", "name", "status", "subscribed_at"]


@pytest.fixture(autouse=True)
def _no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the test's own directory, so no .env file of the checkout is read."""
    monkeypatch.chdir(tmp_path)


def lists_of(standin: StandIn, *list_ids: int, size: int = 1000) -> None:
    """Lists whose ``size`` generated subscribers are 400 to 100 days old."""
    now = time.time()
    if standin.state.account(ACCOUNT) is None:
        standin.add_account(ACCOUNT)
    for seed, list_id in enumerate(list_ids):
        standin.add_list(ACCOUNT, list_id, f"List {list_id}", size=size, start=now - 400 * DAY, end=now - 100 * DAY,
                         seed=seed)


def joined(standin: StandIn, list_id: int, count: int, *, at: float, tag: str = "p") -> list[int]:
    """``count`` subscribers who joined at ``at``, a second apart."""
    return standin.add_subscribers(ACCOUNT, list_id, [
        {"email": f"{tag}{i}.{list_id}@example.com", "name": f"Person {i}", "subscribed_at": at + i}
        for i in range(count)
    ])


def run(job: JobFiles, *args: str, **env: str) -> tuple[int, str]:
    """``aweber-job run ARGS`` in this process: exit code and output."""
    buffer = io.StringIO()
    code = main(["run", *args], environ=job.env(**env), stdout=buffer)
    return code, buffer.getvalue()


def rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def api_counts(standin: StandIn) -> dict[str, int]:
    """The stand-in's API request counters, then zeroed."""
    counts: dict[str, int] = dict(standin.stats()["api"])  # type: ignore[call-overload]
    standin.reset_stats()
    return counts


def state_of(job: JobFiles, task: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((job.token_file.parent / f"{task}.state.json").read_text(encoding="utf-8"))
    return state


def valid(stream: str, record: dict[str, Any]) -> None:
    """``record`` matches the stream's JSON Schema, formats included."""
    errors = list(Draft7Validator(STREAMS[stream].schema, format_checker=FormatChecker()).iter_errors(record))
    assert errors == [], errors


# -- subscribers: the fields an import wants ------------------------------------------------------------------


def test_subscriber_rows_carry_the_import_fields_after_the_old_columns(job: JobFiles) -> None:
    """JSON lines keep tags a list and custom_fields an object; CSV keeps the old columns first and in order, then
    the new ones, lists and objects as JSON text; every row matches the subscribers schema."""
    lists_of(job.standin, 201)
    job.write_tokens()
    now = time.time()
    job.standin.add_subscribers(ACCOUNT, 201, [
        {"email": "ada@example.com", "name": "Ada", "subscribed_at": now - 120, "tags": ["vip", "a;b,c"],
         "custom_fields": {"apple": "fuji"}, "ad_tracking": "spring", "misc_notes": "met at the fair",
         "subscription_method": "webform"},
        {"email": "bob@example.com", "subscribed_at": now - 60, "status": "unconfirmed"},
    ])
    code, text = run(job, "--since", "1h")
    assert code == 0
    ada, bob = rows(text)
    assert list(ada)[:8] == OLD_COLUMNS and "stream" not in ada
    assert ada["tags"] == ["vip", "a;b,c"] and ada["custom_fields"] == {"apple": "fuji"}
    assert (ada["ad_tracking"], ada["subscription_method"], ada["misc_notes"]) == ("spring", "webform",
                                                                                   "met at the fair")
    assert ada["verified_at"] == ada["subscribed_at"]
    assert (bob["status"], bob["verified_at"], bob["tags"], bob["custom_fields"]) == ("unconfirmed", None, [], {})
    for record in (ada, bob):
        valid("subscribers", record)

    job.standin.add_subscribers(ACCOUNT, 201, [
        {"email": "cy@example.com", "subscribed_at": time.time() - 30, "tags": ["x"], "custom_fields": {"k": "v"}},
    ])
    code, text = run(job, "--format", "csv")
    assert code == 0
    reader = csv.DictReader(io.StringIO(text))
    assert list(reader.fieldnames or [])[:8] == OLD_COLUMNS
    assert list(reader.fieldnames or [])[8:] == ["tags", "custom_fields", "ad_tracking", "subscription_method",
                                                 "verified_at", "misc_notes"]
    (cy,) = list(reader)
    assert (cy["email"], json.loads(cy["tags"]), json.loads(cy["custom_fields"])) == ("cy@example.com", ["x"],
                                                                                      {"k": "v"})


# -- unsubscribes -------------------------------------------------------------------------------------------------


def test_unsubscribes_come_once_each_across_runs_at_one_request_a_list_when_none_left(job: JobFiles) -> None:
    """Subscribers who joined long ago and leave between runs are reported by the run after they leave, once, in the
    order they left; a run with nobody leaving costs one find a list; the rows match the schema."""
    lists_of(job.standin, 201, 202)
    job.write_tokens()
    now = time.time()
    members = {list_id: joined(job.standin, list_id, 6, at=now - 30 * DAY) for list_id in (201, 202)}

    code, text = run(job, "--task", "unsubscribes")
    assert (code, text) == (0, "")
    assert api_counts(job.standin) == {"GET accounts:200": 1, "GET lists:200": 1, "GET find:200": 2}

    job.standin.unsubscribe(ACCOUNT, 201, members[201][3], at=now - 300)
    job.standin.unsubscribe(ACCOUNT, 201, members[201][0], at=now - 200, method="api: unsubscribe")
    job.standin.unsubscribe(ACCOUNT, 202, members[202][5], at=now - 100)
    code, text = run(job, "--task", "unsubscribes")
    assert code == 0
    first = rows(text)
    assert [row["id"] for row in first] == [members[201][3], members[201][0], members[202][5]]
    assert [row["unsubscribe_method"] for row in first] == ["unsubscribe link", "api: unsubscribe",
                                                            "unsubscribe link"]
    assert all(row["status"] == "unsubscribed" and "stream" not in row for row in first)
    for record in first:
        valid("unsubscribes", record)
    mark = state_of(job, "unsubscribes")["lists"][f"{ACCOUNT}/201"]
    assert (mark["unsubscribed_at"], mark["ids"]) == (first[1]["unsubscribed_at"], [members[201][0]])

    job.standin.reset_stats()
    code, text = run(job, "--task", "unsubscribes")
    assert (code, text) == (0, "")
    assert api_counts(job.standin) == {"GET accounts:200": 1, "GET lists:200": 1, "GET find:200": 2}

    # Two leave in the same second as the watermark, and one later: only they come.
    same = format_timestamp(now - 200)
    job.standin.unsubscribe(ACCOUNT, 201, members[201][1], at=now - 200)
    job.standin.unsubscribe(ACCOUNT, 201, members[201][2], at=now - 10)
    code, text = run(job, "--task", "unsubscribes")
    assert code == 0
    assert [row["id"] for row in rows(text)] == [members[201][1], members[201][2]]
    assert rows(text)[0]["unsubscribed_at"] == same
    assert run(job, "--task", "unsubscribes") == (0, "")


def test_unsubscribes_first_run_looks_back_as_far_as_since(job: JobFiles) -> None:
    """Without a watermark, the unsubscribes of the --since window come, the older ones not."""
    lists_of(job.standin, 201)
    job.write_tokens()
    now = time.time()
    members = joined(job.standin, 201, 2, at=now - 60 * DAY)
    job.standin.unsubscribe(ACCOUNT, 201, members[0], at=now - 30 * HOUR)
    job.standin.unsubscribe(ACCOUNT, 201, members[1], at=now - HOUR)
    code, text = run(job, "--task", "unsubscribes")
    assert code == 0
    assert [row["id"] for row in rows(text)] == [members[1]]




@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
@pytest.mark.parametrize("offset_hours", EXTREME_ZONES, ids=[f"UTC{h:+d}" for h in EXTREME_ZONES])
def test_every_unsubscribe_past_the_watermark_is_found_whatever_zone_and_reading_the_day_filters_use(
    job: JobFiles, offset_hours: int, exclusive: bool
) -> None:
    """Unsubscribe watermarks a second either side of midnight in each extreme zone miss none who left after them,
    and report none who left at or before them, at one find a list."""
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
            joined_at = watermark - 90 * DAY
            job.standin.add_list(ACCOUNT, list_id, f"List {list_id}", size=0, start=joined_at, end=joined_at)
            ids = joined(job.standin, list_id, len(moments), at=joined_at)
            for subscriber_id, moment in zip(ids, moments, strict=True):
                job.standin.unsubscribe(ACCOUNT, list_id, subscriber_id, at=moment)
            state["lists"][f"{ACCOUNT}/{list_id}"] = {"unsubscribed_at": format_timestamp(watermark), "ids": [ids[2]]}
            expected += ids[3:]
    job.write_tokens()
    (job.token_file.parent / "unsubscribes.state.json").write_text(json.dumps(state), encoding="utf-8")

    code, text = run(job, "--task", "unsubscribes")

    assert code == 0
    assert [row["id"] for row in rows(text)] == expected
    assert api_counts(job.standin)["GET find:200"] == len(state["lists"])


# -- list stats ---------------------------------------------------------------------------------------------------


def test_list_stats_are_one_row_a_list_at_no_request_of_their_own(job: JobFiles) -> None:
    """Each list's counts, as the test put subscribers in, one row a list stamped with the run's time, for the
    accounts and lists requests alone."""
    job.standin.add_account(ACCOUNT)
    now = time.time()
    for list_id in (201, 202):
        job.standin.add_list(ACCOUNT, list_id, f"List {list_id}", size=0, start=now - 9 * DAY, end=now - 9 * DAY)
    job.standin.add_subscribers(ACCOUNT, 201, [
        {"email": "a@example.com", "subscribed_at": now - 5 * DAY},
        {"email": "b@example.com", "subscribed_at": now - 5 * DAY, "status": "unconfirmed"},
        {"email": "c@example.com", "subscribed_at": now - 4 * DAY, "status": "unsubscribed"},
        {"email": "d@example.com", "subscribed_at": now - 60},
    ])
    job.write_tokens()
    before = datetime.now(timezone.utc)

    code, text = run(job, "--task", "list-stats")

    assert code == 0
    assert api_counts(job.standin) == {"GET accounts:200": 1, "GET lists:200": 1}
    first, second = rows(text)
    assert (first["id"], first["list_id"], first["account_id"], first["list_name"]) == (201, 201, ACCOUNT, "List 201")
    assert (first["total_subscribers"], first["total_subscribed_subscribers"], first["total_unsubscribed_subscribers"],
            first["total_unconfirmed_subscribers"]) == (4, 2, 1, 1)
    assert first["total_subscribers_subscribed_today"] + first["total_subscribers_subscribed_yesterday"] >= 1
    assert second["total_subscribers"] == 0 and second["list_id"] == 202
    stamp = datetime.fromisoformat(first["captured_at"])
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(timezone.utc) and second["captured_at"] == first[
        "captured_at"]
    assert state_of(job, "list-stats") == {"captured_at": first["captured_at"]}
    for record in (first, second):
        valid("list_stats", record)


# -- several streams in one run -------------------------------------------------------------------------------


def test_the_spelling_of_several_streams_picks_one_task_and_refuses_the_rest() -> None:
    """Any order and repeats of stream tasks name one task (one state); another task in the list is exit 64."""
    assert resolve_task("list-stats, unsubscribes,new-subscribers").name == "new-subscribers,unsubscribes,list-stats"
    assert resolve_task("unsubscribes,new-subscribers").name == "new-subscribers,unsubscribes"
    assert resolve_task("unsubscribes,unsubscribes").name == "unsubscribes"
    for wrong in ("new-subscribers,noop", "new-subscribers,", "new-subscribers,tests.support.tasks:trouble"):
        with pytest.raises(UsageError) as raised:
            resolve_task(wrong, origin="--task")
        assert raised.value.exit_code == 64


def test_several_streams_share_one_read_of_the_lists_and_keep_their_own_state_in_csv(job: JobFiles) -> None:
    """CSV of two streams: one header (stream, then each stream's columns), every row naming its stream."""
    lists_of(job.standin, 201)
    job.write_tokens()
    now = time.time()
    (member,) = joined(job.standin, 201, 1, at=now - 20 * DAY)
    (newcomer,) = joined(job.standin, 201, 1, at=now - 600, tag="n")
    job.standin.unsubscribe(ACCOUNT, 201, member, at=now - 300)

    code, text = run(job, "--task", "unsubscribes,list-stats", "--format", "csv")

    assert code == 0
    reader = csv.DictReader(io.StringIO(text))
    assert (reader.fieldnames or [])[0] == "stream"
    found = [(row["stream"], row["id"]) for row in reader]
    assert found == [("unsubscribes", str(member)), ("list_stats", "201")]
    state = state_of(job, "unsubscribes_list-stats")
    assert set(state["streams"]) == {"unsubscribes", "list_stats"}
    assert newcomer  # joined, but new-subscribers is not among the streams asked


# -- the runner contract ------------------------------------------------------------------------------------------


def test_a_stream_run_checkpoints_only_state_that_covers_records_written_and_flushed(job: JobFiles) -> None:
    """Stream.run hands each record to the callback, flushes before each checkpoint, and the state it checkpoints
    is one a second run continues from: nothing again, nothing lost."""
    lists_of(job.standin, 201, 202)
    job.write_tokens()
    now = time.time()
    added = {list_id: joined(job.standin, list_id, 3, at=now - 900, tag=f"c{list_id}") for list_id in (201, 202)}
    events: list[tuple[str, Any]] = []
    stream: Stream = STREAMS["subscribers"]
    state: dict[str, Any] = {}

    def checkpoint(current: dict[str, Any]) -> None:
        events.append(("state", json.loads(json.dumps(current))))

    context = stream_context(job)
    summary = stream.run(context, state, lambda record: events.append(("record", record["id"])),
                         flush=lambda: events.append(("flush", None)), checkpoint=checkpoint)

    assert summary["new_subscribers"] == 6
    kinds = [kind for kind, _ in events]
    assert kinds == ["record"] * 3 + ["flush", "state"] + ["record"] * 3 + ["flush", "state"]
    assert [value for kind, value in events if kind == "record"] == added[201] + added[202]
    after_first = events[4][1]["lists"]
    assert list(after_first) == [f"{ACCOUNT}/201"] and after_first[f"{ACCOUNT}/201"]["ids"] == [added[201][2]]
    assert events[-1][1] == state

    again: list[Any] = []
    later = joined(job.standin, 202, 1, at=time.time() - 5, tag="late")
    stream.run(context, state, again.append, flush=lambda: None)
    assert [record["id"] for record in again] == later


def stream_context(job: JobFiles) -> TaskContext:
    """A context as a tap would build it: the job's API client over a fresh refresh, no output of its own."""
    from job.api.client import ApiClient
    from job.cli import make_session
    from job.run.keeper import TokenKeeper
    from job.stores import connection_store

    settings = load_settings(job.env())
    session = make_session()
    store = connection_store(settings)
    keeper = TokenKeeper(settings, session, store)
    keeper.__enter__()
    keeper.refresh("test")
    api = ApiClient.from_settings(session, settings, keeper)
    job_contexts.append(keeper)
    return TaskContext(api=api, state={}, settings=settings, log=logging.getLogger("test"), output=io.StringIO(),
                       now=lambda: datetime.now(timezone.utc), since=datetime.now(timezone.utc) - timedelta(days=1))


job_contexts: list[Any] = []


@pytest.fixture(autouse=True)
def _release_keepers() -> Any:
    yield
    while job_contexts:
        job_contexts.pop().__exit__(None, None, None)
