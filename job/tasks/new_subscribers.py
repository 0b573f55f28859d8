"""The ``new-subscribers`` task: report who joined each list since the last run, oldest first.

Per list it asks AWeber's ``ws.op=find`` for the subscribers ``subscribed_after`` a day early
enough for any reading of that filter (the day before the watermark's day at UTC-12: AWeber names
neither the zone of its filter days nor whether the named day is included), sorted by
``subscribed_at`` ascending, so the cost is one request per page of 100 (each page after the first
overlapping the one before by one entry) for the ``k`` subscribers returned for that day on — never
a walk over the whole list. The day filter is
coarse; the exact cut is made here by comparing full timestamps, and the ids that share the
watermark's instant keep a subscriber who arrives in the same second from being lost or repeated.

The watermark per list lives in the task state::

    {"lists": {"<account>/<list>": {"subscribed_at": "<as AWeber wrote it>", "ids": [<ids at that instant>],
                                    "ahead": [{"id": ..., "subscribed_at": ...}]   (only when needed)}}}

It moves only after the list's output is flushed, and the runner saves the state only after the
task returns (or when the run reaches its time limit): a crash in between repeats those subscribers
next run (at least once), never loses them. A list with nothing new on its first run keeps the
``--since`` instant as its watermark, so the next run looks back to there however long it comes after.

A wrong clock must hide nobody, so the watermark never passes the newest ``subscribed_at`` the API
returned, nor the server's ``Date`` (:attr:`job.api.client.ApiClient.server_date`) when that is earlier:
a first run looks back from min(local now, server Date); a look-back with nothing new is pulled back
to the server's Date; a subscriber dated past it is reported but kept in ``ahead`` rather than
moving the watermark (with one warning per list); a saved watermark far past the server's Date
(written by a fast clock) is replaced by the look-back. See docs/design.md.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import IO, Any

from job import progress
from job.errors import ApiError, CollectionShiftedError, RunTimeoutError, TemporaryError, shorten
from job.tasks import TaskContext

FIELDS = ("account_id", "list_id", "list_name", "id", "email", "name", "status", "subscribed_at")
PAGE_SIZE = 100
DEFAULT_LOOK_BACK = timedelta(hours=24)
# An HTTP Date has whole seconds.
DATE_RESOLUTION = timedelta(seconds=1)
# A local clock this far ahead of the server's is worth a line in the log.
CLOCK_SKEW_NOTICE = timedelta(minutes=5)

# The earliest time zone in use (Baker Island, UTC-12): an instant's calendar day there is the
# earliest calendar day it falls on anywhere, and that day begins, in every zone from UTC-12 to
# UTC+14, at or before the instant.
EARLIEST_ZONE = timezone(timedelta(hours=-12))

# Lenient ISO 8601: 'T' or space; seconds and fraction optional; 'Z', '+hh:mm', '+hhmm', '+hh' or no
# offset (= UTC). AWeber's own examples show all of these shapes (docs/aweber-api.md §2.5).
_TIMESTAMP = re.compile(
    r"""\s*(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})
        (?:[Tt\s](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?)?
        \s*(?P<offset>[Zz]|[+-]\d{2}(?::?\d{2})?)?\s*""",
    re.VERBOSE,
)


def parse_timestamp(value: object) -> datetime | None:
    """Parse an AWeber timestamp into an aware datetime kept in the offset it was written with.

    Returns None for anything that is not a timestamp (None, "", garbage, impossible dates).
    """
    if not isinstance(value, str):
        return None
    match = _TIMESTAMP.fullmatch(value)
    if not match:
        return None
    parts = match.groupdict()
    fraction = (parts["fraction"] or "")[:6].ljust(6, "0")
    try:
        return datetime(
            int(parts["year"]), int(parts["month"]), int(parts["day"]),
            int(parts["hour"] or 0), int(parts["minute"] or 0), int(parts["second"] or 0),
            int(fraction), tzinfo=_zone(parts["offset"]),
        )
    except ValueError:
        return None


def _zone(offset: str | None) -> timezone:
    if not offset or offset in ("Z", "z"):
        return timezone.utc
    sign = -1 if offset[0] == "-" else 1
    digits = offset[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


@dataclass
class Watermark:
    """The latest ``subscribed_at`` reported for a list, as written, and the ids that share that instant.

    ``inclusive`` marks the first run's look-back instant: a subscriber exactly at it is new.

    The watermark never moves past the server's present (its latest ``Date``): a subscriber who
    joins later must still come after it. A subscriber a broken clock dates past that is reported
    but kept in ``ahead`` (by id and time) instead, which keeps it from being reported twice; once
    the server's present has passed it, the watermark moves over it like over any other.
    """

    subscribed_at: str
    instant: datetime
    ids: list[Any] = field(default_factory=list)
    inclusive: bool = False
    ahead: dict[tuple[str, datetime], tuple[Any, str]] = field(default_factory=dict)
    # Ids reported without a readable subscribed_at (nothing to cut them by), newest last, at most UNDATED_KEPT.
    undated: list[Any] = field(default_factory=list)

    @classmethod
    def look_back(cls, since: datetime, ahead: Mapping[tuple[str, datetime], tuple[Any, str]] | None = None
                  ) -> Watermark:
        """The first run's starting point: ``since``, itself included."""
        written = since.astimezone(timezone.utc)
        return cls(written.isoformat(), written, [], inclusive=True, ahead=dict(ahead or {}))

    @classmethod
    def from_state(cls, value: object) -> Watermark | None:
        """The watermark saved in the state, or None when it is missing or unreadable."""
        if not isinstance(value, Mapping):
            return None
        written = value.get("subscribed_at")
        instant = parse_timestamp(written)
        ids = value.get("ids", [])
        if instant is None or not isinstance(written, str) or not isinstance(ids, list):
            return None
        mark = cls(written, instant, list(ids))
        undated = value.get("undated")
        if isinstance(undated, list):
            mark.undated = undated[-UNDATED_KEPT:]
        saved_ahead = value.get("ahead")
        for item in saved_ahead if isinstance(saved_ahead, list) else []:
            item_written = item.get("subscribed_at") if isinstance(item, Mapping) else None
            when = parse_timestamp(item_written)
            if isinstance(item, Mapping) and isinstance(item_written, str) and when is not None:
                mark.ahead[_id_key(item.get("id")), when] = (item.get("id"), item_written)
        return mark

    def filter_day(self) -> date:
        """The ``subscribed_after`` day to ask for: the day before the watermark's day at UTC-12.

        AWeber does not say in which zone its filter days begin, nor whether the named day itself
        is included (docs/aweber-api.md). The watermark's day at UTC-12 begins at or before it in
        every zone; asking for the day before keeps that day in even if the filter leaves the
        named day out. The exact cut is made on full timestamps and ids (:meth:`is_passed_by`).
        """
        return self.instant.astimezone(EARLIEST_ZONE).date() - timedelta(days=1)

    def is_passed_by(self, instant: datetime, subscriber_id: Any) -> bool:
        """Whether a subscriber at ``instant`` with ``subscriber_id`` comes after this watermark (is new)."""
        if instant < self.instant or self.was_reported_ahead(instant, subscriber_id):
            return False
        if instant > self.instant:
            return True
        return self.inclusive or _id_key(subscriber_id) not in {_id_key(known) for known in self.ids}

    def was_reported_undated(self, subscriber_id: Any) -> bool:
        """Whether this subscriber was reported without a readable ``subscribed_at``."""
        return _id_key(subscriber_id) in {_id_key(known) for known in self.undated}

    def note_undated(self, subscriber_id: Any) -> None:
        """Remember a subscriber reported without a readable ``subscribed_at``."""
        self.undated = [*self.undated, subscriber_id][-UNDATED_KEPT:]

    def was_reported_ahead(self, instant: datetime, subscriber_id: Any) -> bool:
        """Whether this subscriber was reported while dated past the server's present."""
        return (_id_key(subscriber_id), instant) in self.ahead

    def advance(self, written: str, instant: datetime, subscriber_id: Any, *, server_date: datetime | None) -> None:
        """Move to a reported subscriber, keeping every id that shares the latest instant.

        A subscriber dated after ``server_date`` (the server's present, when known) does not move
        the watermark; it is kept in ``ahead`` instead.
        """
        if server_date is not None and instant > server_date:
            self.ahead[_id_key(subscriber_id), instant] = (subscriber_id, written)
            return
        if instant > self.instant or self.inclusive:
            self.subscribed_at, self.instant, self.ids, self.inclusive = written, instant, [], False
        if instant == self.instant and _id_key(subscriber_id) not in {_id_key(known) for known in self.ids}:
            self.ids.append(subscriber_id)

    def pull_back_to(self, moment: datetime) -> bool:
        """Move back to ``moment`` if the watermark is later; return whether it moved.

        No id is kept: nothing at or after ``moment`` counts as reported but what ``ahead`` holds.
        """
        if self.instant <= moment:
            return False
        written = moment.astimezone(timezone.utc)
        self.subscribed_at, self.instant, self.ids = written.isoformat(), written, []
        return True

    def to_state(self) -> dict[str, Any]:
        """The watermark for the task state, ``ahead`` only while it holds subscribers past the watermark."""
        ids = list(self.ids)
        for (key, when), (subscriber_id, _) in self.ahead.items():
            # Caught up by the watermark: the ids at its own instant keep such a subscriber out now.
            if when == self.instant and key not in {_id_key(known) for known in ids}:
                ids.append(subscriber_id)
        state: dict[str, Any] = {"subscribed_at": self.subscribed_at, "ids": ids}
        ahead = [{"id": subscriber_id, "subscribed_at": written}
                 for (_, when), (subscriber_id, written) in self.ahead.items() if when > self.instant]
        if ahead:
            state["ahead"] = ahead
        if self.undated:
            state["undated"] = list(self.undated)
        return state


def _id_key(value: Any) -> str:
    return str(value)


@dataclass(frozen=True)
class ListRef:
    """A list to scan: where it lives and what it is called."""

    account_id: Any
    list_id: Any
    name: str
    subscribers_link: str

    @property
    def state_key(self) -> str:
        return f"{self.account_id}/{self.list_id}"


class RowWriter:
    """Writes one report row at a time as a JSON line or a CSV row (the CSV header before the first row)."""

    def __init__(self, output: IO[str], fmt: str, connection: str | None = None) -> None:
        self.output = output
        self.connection = connection
        self.csv: csv.DictWriter[str] | None = None
        self.header_pending = False
        if fmt == "csv":
            fields = FIELDS if connection is None else ("connection", *FIELDS)
            self.csv = csv.DictWriter(output, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
            # An output file appended to across runs gets one header; an empty run writes nothing at
            # all, so cron has nothing to mail.
            self.header_pending = True

    def write(self, row: Mapping[str, Any]) -> None:
        if self.connection is not None:
            row = {"connection": self.connection, **row}
        if self.csv is None:
            self.output.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        # Output shared by several connections' runs (run --all) has a lock: one header for all of them.
        with getattr(self.output, "lock", contextlib.nullcontext()):
            if self.header_pending and not _has_content(self.output):
                self.csv.writeheader()
            self.header_pending = False
            self.csv.writerow(row)


def _has_content(output: IO[str]) -> bool:
    try:
        return output.seekable() and output.tell() > 0
    except (OSError, ValueError, AttributeError):
        return False


def new_subscribers(context: TaskContext) -> dict[str, Any]:
    """Report the subscribers who joined each list since the last run, oldest first (the default task)."""
    lists, accounts = _lists_to_scan(context)
    watermarks = context.state.setdefault("lists", {})
    if not isinstance(watermarks, dict):
        context.log.warning("the task state's 'lists' is not an object; starting again from --since")
        watermarks = context.state["lists"] = {}
    since = _first_run_since(context)
    writer = RowWriter(context.output, context.output_format, context.connection)
    # Counted as rows go out, so a run stopped by its time limit still reports what it found.
    context.counters["new_subscribers"] = 0
    total = 0
    live = progress.current()
    for index, ref in enumerate(lists, 1):
        live.update(list_index=index, list_count=len(lists), list_name=ref.name,
                    found=context.counters["new_subscribers"], skipped=None)
        saved = watermarks.get(ref.state_key)
        mark = Watermark.from_state(saved)
        if mark is None:
            if saved is not None:
                context.log.warning("list %s: the saved watermark is unreadable; looking back to %s",
                                    ref.list_id, since.isoformat())
            mark = Watermark.look_back(since)
        elif _is_far_past_server_date(context, mark):
            # Only a wrong clock writes a watermark in the server's future, and it would hide everyone
            # who joins until then; when it was written is unknown, so the list starts over.
            context.log.warning(
                "list %s: the saved watermark %s is after the server's Date (%s), so a wrong clock wrote it; "
                "looking back to %s instead", ref.list_id, shorten(mark.subscribed_at, 40),
                _server_date_text(context), since.isoformat(),
            )
            undated = mark.undated
            mark = Watermark.look_back(since, ahead=mark.ahead)
            mark.undated = undated
        else:
            _pull_back_to_server_date(context, mark)
        try:
            found = _report_list(context, ref, mark, writer)
        except RunTimeoutError:
            # The run is out of time mid-list: keep the rows already written, as after a whole list.
            context.flush_output()
            watermarks[ref.state_key] = mark.to_state()
            raise
        # A first run's look-back must not end up past the server's present either (its Date may
        # not have been known when the look-back was taken).
        _pull_back_to_server_date(context, mark)
        # At least once: the watermark moves only once the rows it covers are out of our hands.
        context.flush_output()
        watermarks[ref.state_key] = mark.to_state()
        context.log.info('list %s "%s": %d new', ref.list_id, ref.name, found,
                         extra={"account_id": ref.account_id, "list_id": ref.list_id, "new": found})
        total += found
    return {
        "accounts": accounts,
        "lists": len(lists),
        "new_subscribers": total,
        "requests": context.api.requests_made,
    }


def _first_run_since(context: TaskContext) -> datetime:
    """Where a list without a watermark starts: ``--since``, counted from the server's present when it is earlier.

    The look-back is taken from min(local now, the server's Date): a local clock that runs fast
    must not set a first watermark in the future, which would hide everyone who joins until then.
    """
    local_now = context.now()
    server_now = context.api.server_date
    base = local_now if server_now is None else min(local_now, server_now)
    if server_now is not None and local_now - server_now > CLOCK_SKEW_NOTICE:
        context.log.info("the local clock is %d s ahead of the server's Date; the look-back of a first run "
                         "counts from the server's", (local_now - server_now).total_seconds())
    if context.look_back is not None:
        return base - context.look_back
    if context.since is not None:
        return min(context.since, base)
    return base - DEFAULT_LOOK_BACK


def _pull_back_to_server_date(context: TaskContext, mark: Watermark) -> bool:
    """Pull ``mark`` back to the latest server Date if it is past it; return whether it moved."""
    server_now = context.api.server_date
    return server_now is not None and mark.pull_back_to(server_now)


def _is_far_past_server_date(context: TaskContext, mark: Watermark) -> bool:
    """Whether ``mark`` is further past the latest server Date than clocks at AWeber could disagree."""
    server_now = context.api.server_date
    return server_now is not None and mark.instant - server_now > CLOCK_SKEW_NOTICE


def _server_date_text(context: TaskContext) -> str:
    server_now = context.api.server_date
    return "unknown" if server_now is None else server_now.isoformat()


# Subscribers reported without a readable subscribed_at are remembered by id, the newest this many.
UNDATED_KEPT = 1000

# How often a list that keeps changing under the walk is read again from its last row before giving up.
SHIFTED_RETRIES = 3


def _report_list(context: TaskContext, ref: ListRef, mark: Watermark, writer: RowWriter) -> int:
    """Write the list's subscribers past ``mark`` and advance ``mark`` over them; return how many.

    Pages are addressed by offset: a subscriber who leaves the list between two pages moves every later
    one up a place, and one would be skipped. The walk notices (each page overlaps the one before), and
    the list is read again from the last row written, which the watermark has already moved to.
    """
    written = [0]
    for attempt in range(SHIFTED_RETRIES + 1):
        try:
            _walk_list(context, ref, mark, writer, written)
            break
        except CollectionShiftedError as exc:
            if attempt == SHIFTED_RETRIES:
                raise TemporaryError(
                    f"list {ref.list_id}: it kept changing while it was read ({exc.message}); stopped, and the "
                    "next run reads it again (rows already written may come again)"
                ) from None
            context.log.info("list %s changed while it was read; reading on from the last subscriber reported",
                             ref.list_id)
    return written[0]


def _walk_list(context: TaskContext, ref: ListRef, mark: Watermark, writer: RowWriter, written: list[int]) -> None:
    """One find over the list from ``mark``'s day, counting the rows it writes in ``written``; see
    :func:`_report_list`."""
    params = {
        "ws.op": "find",
        "subscribed_after": mark.filter_day().isoformat(),
        "sort_key": "subscribed_at",
        "sort_order": "asc",
        "ws.size": str(PAGE_SIZE),
    }
    previous: tuple[datetime, str] | None = None
    warned_ahead = False
    skipped = 0
    # What the skipped ones are, in the words of a person watching the progress line.
    skipped_why = "older than --since" if mark.inclusive else "an earlier run already saw"
    # Streamed entry by entry: memory stays flat however many subscribers arrived.
    for entry in context.api.walk(ref.subscribers_link, params, overlap=True):
        subscribed_at = entry.get("subscribed_at")
        instant = parse_timestamp(subscribed_at)
        subscriber_id = entry.get("id")
        if instant is None or not isinstance(subscribed_at, str):
            # Nothing to cut by: report it once (remembered by id) rather than hide it, and leave the
            # watermark where it is.
            if not mark.was_reported_undated(subscriber_id):
                writer.write(_row(ref, entry))
                mark.note_undated(subscriber_id)
                written[0] += 1
                context.counters["new_subscribers"] += 1
                context.log.warning(
                    "list %s: subscriber %s has no subscribed_at the job can read (%s); reported once, by id",
                    ref.list_id, shorten(subscriber_id, 20), shorten(repr(subscribed_at), 40),
                )
            continue
        written_at = subscribed_at
        if previous is not None and instant < previous[0]:
            # The cut below relies on the order asked for; out of order, "older than the
            # watermark" no longer means "already reported", so skipping would hide people.
            raise ApiError(
                f"list {ref.list_id}: the find sorted by subscribed_at went backwards, from {previous[1]} "
                f"to {shorten(written_at, 40)} at subscriber {shorten(subscriber_id, 20)}; stopped rather than "
                "skip anyone"
            )
        previous = instant, shorten(written_at, 40)
        if mark.was_reported_ahead(instant, subscriber_id):
            # Reported by an earlier run while dated past the server's present: not again, but the
            # watermark moves over it once the server's present has passed it.
            mark.advance(written_at, instant, subscriber_id, server_date=context.api.server_date)
            continue
        if not mark.is_passed_by(instant, subscriber_id):
            # The find starts a day early (see filter_day): a person watching should see why no one is new yet.
            skipped += 1
            progress.current().update(skipped=(skipped, skipped_why))
            continue
        writer.write(_row(ref, entry))
        server_now = context.api.server_date
        mark.advance(written_at, instant, subscriber_id, server_date=server_now)
        written[0] += 1
        context.counters["new_subscribers"] += 1
        progress.current().update(found=context.counters["new_subscribers"])
        # The Date header has whole seconds: a subscriber within that second is no sign of trouble.
        if server_now is not None and instant - server_now >= DATE_RESOLUTION and not warned_ahead:
            warned_ahead = True
            context.log.warning(
                "list %s: subscriber %s is dated %s, after the server's Date (%s); reported, but the watermark "
                "stays at or before the server's Date (a clock at AWeber may be wrong)",
                ref.list_id, shorten(subscriber_id, 20), shorten(written_at, 40), server_now.isoformat(),
            )


def _row(ref: ListRef, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The report row for a subscriber entry of the list ``ref``."""
    return {
        "account_id": ref.account_id,
        "list_id": ref.list_id,
        "list_name": ref.name,
        "id": entry.get("id"),
        "email": entry.get("email"),
        "name": entry.get("name"),
        "status": entry.get("status"),
        "subscribed_at": entry.get("subscribed_at"),
    }


def _lists_to_scan(context: TaskContext) -> tuple[list[ListRef], int]:
    """The lists of the configured (or every) account, filtered by AWEBER_LIST_IDS; and the account count."""
    settings = context.settings
    wanted = {str(list_id) for list_id in settings.list_ids}
    refs: list[ListRef] = []
    accounts = 0
    for account_id, lists_link in _accounts(context):
        accounts += 1
        for entry in context.api.walk(lists_link, {"ws.size": str(PAGE_SIZE)}):
            list_id = entry.get("id")
            if wanted and str(list_id) not in wanted:
                continue
            link = entry.get("subscribers_collection_link")
            if not isinstance(link, str) or not link:
                link = f"accounts/{account_id}/lists/{list_id}/subscribers"
            name = entry.get("name")
            refs.append(ListRef(account_id, list_id, name if isinstance(name, str) else "", link))
    missing = wanted - {str(ref.list_id) for ref in refs}
    if missing:
        context.log.warning("AWEBER_LIST_IDS names lists that do not exist in the account(s) scanned: %s",
                            ", ".join(sorted(missing, key=lambda text: (len(text), text))))
    return refs, accounts


def _accounts(context: TaskContext) -> Iterator[tuple[Any, str]]:
    """(account id, lists collection link) for AWEBER_ACCOUNT_ID, or for every account the token sees."""
    if context.settings.account_id is not None:
        configured = context.settings.account_id
        yield configured, f"accounts/{configured}/lists"
        return
    for entry in context.api.walk("accounts", {"ws.size": str(PAGE_SIZE)}):
        account_id = entry.get("id")
        link = entry.get("lists_collection_link")
        yield account_id, link if isinstance(link, str) and link else f"accounts/{account_id}/lists"
