"""The ``new-subscribers`` task: report who joined each list since the last run, oldest first.

Per list it asks AWeber's ``ws.op=find`` for the subscribers ``subscribed_after`` a day early
enough for any reading of that filter (the day before the watermark's day at UTC-12: AWeber names
neither the zone of its filter days nor whether the named day is included), sorted by
``subscribed_at`` ascending, so the cost is ``max(1, ceil(k/100))`` requests where ``k`` counts
the subscribers returned for that day on — never a walk over the whole list. The day filter is
coarse; the exact cut is made here by comparing full timestamps, and the ids that share the
watermark's instant keep a subscriber who arrives in the same second from being lost or repeated.

The watermark per list lives in the task state::

    {"lists": {"<account>/<list>": {"subscribed_at": "<as AWeber wrote it>", "ids": [<ids at that instant>]}}}

It moves only after the list's output is flushed, and the runner saves the state only after the
task returns: a crash in between repeats those subscribers next run (at least once), never loses them.
A list with nothing new on its first run keeps the ``--since`` instant as its watermark, so the next
run looks back to there however long it comes after.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import IO, Any

from job.errors import ApiError, RunTimeoutError, shorten
from job.tasks import TaskContext

FIELDS = ("account_id", "list_id", "list_name", "id", "email", "name", "status", "subscribed_at")
PAGE_SIZE = 100
DEFAULT_LOOK_BACK = timedelta(hours=24)

# The earliest time zone in use (Baker Island, UTC-12): an instant's calendar day there is the
# earliest calendar day it falls on anywhere, and that day begins, in every zone from UTC-12 to
# UTC+14, at or before the instant.
EARLIEST_ZONE = timezone(timedelta(hours=-12))

# Lenient ISO 8601: 'T' or space; seconds and fraction optional; 'Z', '+hh:mm', '+hhmm', '+hh' or no
# offset (= UTC). AWeber's own examples show all of these shapes (API-FACTS §2.8).
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
    """

    subscribed_at: str
    instant: datetime
    ids: list[Any] = field(default_factory=list)
    inclusive: bool = False

    @classmethod
    def look_back(cls, since: datetime) -> Watermark:
        """The first run's starting point: ``since``, itself included."""
        written = since.astimezone(timezone.utc)
        return cls(written.isoformat(), written, [], inclusive=True)

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
        return cls(written, instant, list(ids))

    def filter_day(self) -> date:
        """The ``subscribed_after`` day to ask for: the day before the watermark's day at UTC-12.

        AWeber does not say in which zone its filter days begin, nor whether the named day itself
        is included (docs/aweber-api.md). The watermark's day at UTC-12 begins at or before it in
        every zone; asking for the day before keeps that day in even if the filter leaves the
        named day out. The exact cut is made on full timestamps and ids (:meth:`is_passed_by`).
        """
        return self.instant.astimezone(EARLIEST_ZONE).date() - timedelta(days=1)

    def is_passed_by(self, instant: datetime, subscriber_id: Any) -> bool:
        """Whether a subscriber at ``instant`` with ``subscriber_id`` comes after this watermark."""
        if instant != self.instant:
            return instant > self.instant
        return self.inclusive or _id_key(subscriber_id) not in {_id_key(known) for known in self.ids}

    def advance(self, written: str, instant: datetime, subscriber_id: Any) -> None:
        """Move to a reported subscriber, keeping every id that shares the latest instant."""
        if instant > self.instant or self.inclusive:
            self.subscribed_at, self.instant, self.ids, self.inclusive = written, instant, [], False
        if instant == self.instant and _id_key(subscriber_id) not in {_id_key(known) for known in self.ids}:
            self.ids.append(subscriber_id)

    def to_state(self) -> dict[str, Any]:
        return {"subscribed_at": self.subscribed_at, "ids": list(self.ids)}


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

    def __init__(self, output: IO[str], fmt: str) -> None:
        self.output = output
        self.csv: csv.DictWriter[str] | None = None
        self.header_pending = False
        if fmt == "csv":
            self.csv = csv.DictWriter(output, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
            # An output file appended to across runs gets one header; an empty run writes nothing at
            # all, so cron has nothing to mail.
            self.header_pending = not _has_content(output)

    def write(self, row: Mapping[str, Any]) -> None:
        if self.csv is None:
            self.output.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        if self.header_pending:
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
    since = context.since or (context.now() - DEFAULT_LOOK_BACK)
    writer = RowWriter(context.output, context.output_format)
    total = 0
    for ref in lists:
        saved = watermarks.get(ref.state_key)
        mark = Watermark.from_state(saved)
        if mark is None:
            if saved is not None:
                context.log.warning("list %s: the saved watermark is unreadable; looking back to %s",
                                    ref.list_id, since.isoformat())
            mark = Watermark.look_back(since)
        try:
            found = _report_list(context, ref, mark, writer)
        except RunTimeoutError:
            # The run is out of time mid-list: keep the rows already written, as after a whole list.
            context.flush_output()
            watermarks[ref.state_key] = mark.to_state()
            raise
        # At least once: the watermark moves only once the rows it covers are out of our hands.
        context.flush_output()
        watermarks[ref.state_key] = mark.to_state()
        context.log.info('list %s "%s": %d new', ref.list_id, ref.name, found,
                         extra={"account_id": ref.account_id, "list_id": ref.list_id, "new": found})
        total += found
    context.counters["new_subscribers"] = total
    return {
        "accounts": accounts,
        "lists": len(lists),
        "new_subscribers": total,
        "requests": context.api.requests_made,
    }


def _report_list(context: TaskContext, ref: ListRef, mark: Watermark, writer: RowWriter) -> int:
    """Write the list's subscribers past ``mark`` and advance ``mark`` over them; return how many."""
    params = {
        "ws.op": "find",
        "subscribed_after": mark.filter_day().isoformat(),
        "sort_key": "subscribed_at",
        "sort_order": "asc",
        "ws.size": str(PAGE_SIZE),
    }
    found = 0
    previous: tuple[datetime, str] | None = None
    # Streamed entry by entry: memory stays flat however many subscribers arrived.
    for entry in context.api.walk(ref.subscribers_link, params):
        written = entry.get("subscribed_at")
        instant = parse_timestamp(written)
        if instant is None or not isinstance(written, str):
            context.log.debug("list %s: skipping subscriber %s without a usable subscribed_at (%r)",
                              ref.list_id, entry.get("id"), written)
            continue
        subscriber_id = entry.get("id")
        if previous is not None and instant < previous[0]:
            # The cut below relies on the order asked for; out of order, "older than the
            # watermark" no longer means "already reported", so skipping would hide people.
            raise ApiError(
                f"list {ref.list_id}: the find sorted by subscribed_at went backwards, from {previous[1]} "
                f"to {shorten(written, 40)} at subscriber {shorten(subscriber_id, 20)}; stopped rather than "
                "skip anyone"
            )
        previous = instant, shorten(written, 40)
        if not mark.is_passed_by(instant, subscriber_id):
            continue
        writer.write({
            "account_id": ref.account_id,
            "list_id": ref.list_id,
            "list_name": ref.name,
            "id": subscriber_id,
            "email": entry.get("email"),
            "name": entry.get("name"),
            "status": entry.get("status"),
            "subscribed_at": written,
        })
        mark.advance(written, instant, subscriber_id)
        found += 1
    return found


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
