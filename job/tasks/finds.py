"""The walk every find stream shares: a list's find from a watermark's day, cut exactly, the watermark moved after.

A :class:`FindSpec` says which timestamp a stream follows (``subscribed_at`` for new subscribers,
``unsubscribed_at`` for unsubscribes), which day filter and extra filters its find sends, and how an
entry becomes a record. Per list the stream asks AWeber's ``ws.op=find`` for the entries
``<prefix>_after`` a day early enough for any reading of that filter (the day before the
watermark's day at UTC-12: AWeber names neither the zone of its filter days nor whether the named
day is included), sorted by that timestamp ascending, so the cost is one request per page of 100
(each page after the first overlapping the one before by one entry) for the ``k`` entries returned
for that day on — never a walk over the whole list. The day filter is coarse; the exact cut is made
here by comparing full timestamps, and the ids that share the watermark's instant keep an entry
that arrives in the same second from being lost or repeated (:mod:`job.tasks.watermark`).

The watermark per list lives in the stream's state, ``{"lists": {"<account>/<list>": {...}}}``. It
moves only after the list's records are flushed: a crash in between repeats those records next
run (at least once), never loses them. A list with nothing new on its first run keeps the
``--since`` instant as its watermark, so the next run looks back to there however long it comes after.

A wrong clock must hide nobody, so the watermark never passes the newest timestamp the API
returned, nor the server's ``Date`` (:attr:`job.api.client.ApiClient.server_date`) when that is earlier:
a first run looks back from min(local now, server Date); a look-back with nothing new is pulled back
to the server's Date; an entry dated past it is reported but kept in ``ahead`` rather than
moving the watermark (with one warning per list); a saved watermark far past the server's Date
(written by a fast clock) is replaced by the look-back. See docs/design.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime, timedelta
from typing import Any

from job import progress
from job.errors import ApiError, CollectionShiftedError, RunTimeoutError, TemporaryError, shorten
from job.tasks import TaskContext
from job.tasks.lists import PAGE_SIZE, ListRef, Lists
from job.tasks.timestamps import parse_timestamp
from job.tasks.watermark import Watermark

DEFAULT_LOOK_BACK = timedelta(hours=24)
# An HTTP Date has whole seconds.
DATE_RESOLUTION = timedelta(seconds=1)
# A local clock this far ahead of the server's is worth a line in the log.
CLOCK_SKEW_NOTICE = timedelta(minutes=5)
# How often a list that keeps changing under the walk is read again from its last row before giving up.
SHIFTED_RETRIES = 3

Record = dict[str, Any]


@dataclass(frozen=True)
class FindSpec:
    """What makes one find stream: the timestamp it follows, the find's filters, and its records.

    ``field`` is the entry's timestamp (also the sort key and the watermark's key); ``after`` the day
    filter sent (``subscribed_after``); ``filters`` any other find parameters (``status``); ``counter``
    the name its count goes under in ``context.counters``; ``noun`` how a log line names what it found
    (``3 new``), and ``shown`` the live line on a terminal (``3 new subscribers``); ``record`` turns a list and
    an entry into the record written.
    """

    field: str
    after: str
    counter: str
    noun: str
    record: Callable[[ListRef, Mapping[str, Any]], Record]
    filters: Mapping[str, str] = dataclass_field(default_factory=dict)
    shown: str = "new subscribers"

    def params(self, mark: Watermark) -> dict[str, str]:
        """The find's parameters from ``mark``'s day on."""
        return {"ws.op": "find", self.after: mark.filter_day().isoformat(), **self.filters,
                "sort_key": self.field, "sort_order": "asc", "ws.size": str(PAGE_SIZE)}


@dataclass
class Sink:
    """Where a find stream's records go and when its state may move.

    ``write`` takes each record in order; ``flush`` makes the records written so far safe (written out,
    fsynced, handed over) and is called before the state moves past them; ``checkpoint``, when given, is
    called with the whole state each time it has moved (after ``flush``), so a caller may save or emit it.
    """

    write: Callable[[Record], None]
    flush: Callable[[], None]
    checkpoint: Callable[[dict[str, Any]], None] | None = None

    def moved(self, state: dict[str, Any]) -> None:
        if self.checkpoint is not None:
            self.checkpoint(state)


def read_find_stream(context: TaskContext, spec: FindSpec, lists: Lists, state: dict[str, Any],
                     sink: Sink) -> dict[str, Any]:
    """Write each list's entries past its watermark in ``state``, oldest first, moving each watermark after a flush.

    Returns the summary (accounts, lists, the count under ``spec.counter``, requests).
    """
    watermarks = state.setdefault("lists", {})
    if not isinstance(watermarks, dict):
        context.log.warning("the task state's 'lists' is not an object; starting again from --since")
        watermarks = state["lists"] = {}
    since = first_run_since(context)
    # Counted as rows go out, so a run stopped by its time limit still reports what it found.
    context.counters[spec.counter] = 0
    total = 0
    live = progress.current()
    for index, ref in enumerate(lists.refs, 1):
        live.update(list_index=index, list_count=len(lists.refs), list_name=ref.name,
                    found=context.counters[spec.counter], found_what=spec.shown, skipped=None)
        mark = _starting_mark(context, spec, ref, watermarks.get(ref.state_key), since)
        try:
            found = _report_list(context, spec, ref, mark, sink)
        except RunTimeoutError:
            # The run is out of time mid-list: keep the rows already written, as after a whole list.
            sink.flush()
            watermarks[ref.state_key] = mark.to_state()
            sink.moved(state)
            raise
        # A first run's look-back must not end up past the server's present either (its Date may
        # not have been known when the look-back was taken).
        _pull_back_to_server_date(context, mark)
        # At least once: the watermark moves only once the rows it covers are out of our hands.
        sink.flush()
        watermarks[ref.state_key] = mark.to_state()
        sink.moved(state)
        context.log.info('list %s "%s": %d %s', ref.list_id, ref.name, found, spec.noun,
                         extra={"account_id": ref.account_id, "list_id": ref.list_id, spec.counter: found})
        total += found
    return {"accounts": lists.accounts, "lists": len(lists.refs), spec.counter: total,
            "requests": context.api.requests_made}


def _starting_mark(context: TaskContext, spec: FindSpec, ref: ListRef, saved: object, since: datetime) -> Watermark:
    """The list's saved watermark, or the look-back from ``since`` when there is none or it cannot be right."""
    mark = Watermark.from_state(saved, spec.field)
    if mark is None:
        if saved is not None:
            context.log.warning("list %s: the saved watermark is unreadable; looking back to %s",
                                ref.list_id, since.isoformat())
        return Watermark.look_back(since, field=spec.field)
    if _is_far_past_server_date(context, mark):
        # Only a wrong clock writes a watermark in the server's future, and it would hide everyone
        # who arrives until then; when it was written is unknown, so the list starts over.
        context.log.warning(
            "list %s: the saved watermark %s is after the server's Date (%s), so a wrong clock wrote it; "
            "looking back to %s instead", ref.list_id, shorten(mark.written, 40),
            _server_date_text(context), since.isoformat(),
        )
        undated = mark.undated
        mark = Watermark.look_back(since, ahead=mark.ahead, field=spec.field)
        mark.undated = undated
        return mark
    _pull_back_to_server_date(context, mark)
    return mark


def first_run_since(context: TaskContext) -> datetime:
    """Where a list without a watermark starts: ``--since``, counted from the server's present when it is earlier.

    The look-back is taken from min(local now, the server's Date): a local clock that runs fast
    must not set a first watermark in the future, which would hide everyone who arrives until then.
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


def _report_list(context: TaskContext, spec: FindSpec, ref: ListRef, mark: Watermark, sink: Sink) -> int:
    """Write the list's entries past ``mark`` and advance ``mark`` over them; return how many.

    Pages are addressed by offset: an entry that leaves the find between two pages moves every later
    one up a place, and one would be skipped. The walk notices (each page overlaps the one before), and
    the list is read again from the last row written, which the watermark has already moved to.
    """
    walk = _ListWalk(context, spec, ref, mark, sink)
    for attempt in range(SHIFTED_RETRIES + 1):
        try:
            walk.run()
            break
        except CollectionShiftedError as exc:
            if attempt == SHIFTED_RETRIES:
                raise TemporaryError(
                    f"list {ref.list_id}: it kept changing while it was read ({exc.message}); stopped, and the "
                    "next run reads it again (rows already written may come again)"
                ) from None
            context.log.info("list %s changed while it was read; reading on from the last one reported",
                             ref.list_id)
    return walk.written


class _ListWalk:
    """One list's find, from ``mark``'s day: writes what is past the watermark and moves the watermark over it."""

    def __init__(self, context: TaskContext, spec: FindSpec, ref: ListRef, mark: Watermark, sink: Sink) -> None:
        self.context, self.spec, self.ref, self.mark, self.sink = context, spec, ref, mark, sink
        self.written = 0
        self.warned_ahead = False

    def run(self) -> None:
        """One find over the list (again after a shift, from where the watermark now is)."""
        context, spec, ref, mark = self.context, self.spec, self.ref, self.mark
        previous: tuple[datetime, str] | None = None
        skipped = 0
        # What the skipped ones are, in the words of a person watching the progress line.
        skipped_why = "older than --since" if mark.inclusive else "an earlier run already saw"
        # Streamed entry by entry: memory stays flat however many entries arrived.
        for entry in context.api.walk(ref.subscribers_link, spec.params(mark), overlap=True):
            written_at = entry.get(spec.field)
            instant = parse_timestamp(written_at)
            entry_id = entry.get("id")
            if instant is None or not isinstance(written_at, str):
                self._undated(entry, entry_id, written_at)
                continue
            if previous is not None and instant < previous[0]:
                # The cut below relies on the order asked for; out of order, "older than the
                # watermark" no longer means "already reported", so skipping would hide people.
                raise ApiError(
                    f"list {ref.list_id}: the find sorted by {spec.field} went backwards, from {previous[1]} "
                    f"to {shorten(written_at, 40)} at subscriber {shorten(entry_id, 20)}; stopped rather than "
                    "skip anyone"
                )
            previous = instant, shorten(written_at, 40)
            if mark.was_reported_ahead(instant, entry_id):
                # Reported by an earlier run while dated past the server's present: not again, but the
                # watermark moves over it once the server's present has passed it.
                mark.advance(written_at, instant, entry_id, server_date=context.api.server_date)
                continue
            if not mark.is_passed_by(instant, entry_id):
                # The find starts a day early (see filter_day): a person watching should see why no one is new yet.
                skipped += 1
                progress.current().update(skipped=(skipped, skipped_why))
                continue
            self._write(entry, entry_id, written_at, instant)

    def _write(self, entry: Mapping[str, Any], entry_id: Any, written_at: str, instant: datetime) -> None:
        context, mark = self.context, self.mark
        self.sink.write(self.spec.record(self.ref, entry))
        server_now = context.api.server_date
        mark.advance(written_at, instant, entry_id, server_date=server_now)
        self._count()
        # The Date header has whole seconds: an entry within that second is no sign of trouble.
        if server_now is not None and instant - server_now >= DATE_RESOLUTION and not self.warned_ahead:
            self.warned_ahead = True
            context.log.warning(
                "list %s: subscriber %s is dated %s, after the server's Date (%s); reported, but the watermark "
                "stays at or before the server's Date (a clock at AWeber may be wrong)",
                self.ref.list_id, shorten(entry_id, 20), shorten(written_at, 40), server_now.isoformat(),
            )

    def _undated(self, entry: Mapping[str, Any], entry_id: Any, written_at: object) -> None:
        """Nothing to cut by: report it once (remembered by id) rather than hide it, and leave the watermark."""
        if self.mark.was_reported_undated(entry_id):
            return
        self.sink.write(self.spec.record(self.ref, entry))
        self.mark.note_undated(entry_id)
        self._count()
        self.context.log.warning(
            "list %s: subscriber %s has no %s the job can read (%s); reported once, by id",
            self.ref.list_id, shorten(entry_id, 20), self.spec.field, shorten(repr(written_at), 40),
        )

    def _count(self) -> None:
        self.written += 1
        counters = self.context.counters
        counters[self.spec.counter] += 1
        progress.current().update(found=counters[self.spec.counter])
