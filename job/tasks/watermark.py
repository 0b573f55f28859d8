"""A list's watermark for a find stream: the latest timestamp reported, the ids that share it, and what a wrong
clock or a missing timestamp made the stream remember.

One class serves every stream that reads a list's find by a day filter: ``new-subscribers`` keeps
``subscribed_at``, ``unsubscribes`` keeps ``unsubscribed_at``. The state a watermark saves names its
field, so ``state show`` and ``state rewind`` read either::

    {"subscribed_at": "<as AWeber wrote it>", "ids": [<ids at that instant>],
     "ahead": [{"id": ..., "subscribed_at": ...}]   (only when needed),
     "undated": [<ids reported without a readable time>]   (only when needed)}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from job.tasks.timestamps import EARLIEST_ZONE, parse_timestamp

# The timestamp fields a watermark may be kept by, in the order a saved one is recognised.
TIMESTAMP_FIELDS = ("subscribed_at", "unsubscribed_at")

# Subscribers reported without a readable timestamp are remembered by id, the newest this many.
UNDATED_KEPT = 1000


def _id_key(value: Any) -> str:
    return str(value)


@dataclass
class Watermark:
    """The latest ``field`` (``subscribed_at``…) reported for a list, as written, and the ids that share that instant.

    ``inclusive`` marks the first run's look-back instant: a subscriber exactly at it is new.

    The watermark never moves past the server's present (its latest ``Date``): a subscriber who
    joins later must still come after it. A subscriber a broken clock dates past that is reported
    but kept in ``ahead`` (by id and time) instead, which keeps it from being reported twice; once
    the server's present has passed it, the watermark moves over it like over any other.
    """

    written: str
    instant: datetime
    ids: list[Any] = dataclass_field(default_factory=list)
    inclusive: bool = False
    ahead: dict[tuple[str, datetime], tuple[Any, str]] = dataclass_field(default_factory=dict)
    # Ids reported without a readable timestamp (nothing to cut them by), newest last, at most UNDATED_KEPT.
    undated: list[Any] = dataclass_field(default_factory=list)
    # The entry field the watermark follows, and the key it is saved under.
    field: str = "subscribed_at"

    @classmethod
    def look_back(cls, since: datetime, ahead: Mapping[tuple[str, datetime], tuple[Any, str]] | None = None,
                  *, field: str = "subscribed_at") -> Watermark:
        """The first run's starting point: ``since``, itself included."""
        written = since.astimezone(timezone.utc)
        return cls(written.isoformat(), written, [], inclusive=True, ahead=dict(ahead or {}), field=field)

    @classmethod
    def from_state(cls, value: object, field: str | None = None) -> Watermark | None:
        """The watermark saved in the state, or None when it is missing or unreadable.

        ``field`` is the timestamp key to read; None takes the first of TIMESTAMP_FIELDS the state holds.
        """
        if not isinstance(value, Mapping):
            return None
        if field is None:
            field = next((name for name in TIMESTAMP_FIELDS if name in value), TIMESTAMP_FIELDS[0])
        written = value.get(field)
        instant = parse_timestamp(written)
        ids = value.get("ids", [])
        if instant is None or not isinstance(written, str) or not isinstance(ids, list):
            return None
        mark = cls(written, instant, list(ids), field=field)
        undated = value.get("undated")
        if isinstance(undated, list):
            mark.undated = undated[-UNDATED_KEPT:]
        saved_ahead = value.get("ahead")
        for item in saved_ahead if isinstance(saved_ahead, list) else []:
            item_written = item.get(field) if isinstance(item, Mapping) else None
            when = parse_timestamp(item_written)
            if isinstance(item, Mapping) and isinstance(item_written, str) and when is not None:
                mark.ahead[_id_key(item.get("id")), when] = (item.get("id"), item_written)
        return mark

    def filter_day(self) -> date:
        """The ``*_after`` day to ask for: the day before the watermark's day at UTC-12.

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
        """Whether this subscriber was reported without a readable timestamp."""
        return _id_key(subscriber_id) in {_id_key(known) for known in self.undated}

    def note_undated(self, subscriber_id: Any) -> None:
        """Remember a subscriber reported without a readable timestamp."""
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
            self.written, self.instant, self.ids, self.inclusive = written, instant, [], False
        if instant == self.instant and _id_key(subscriber_id) not in {_id_key(known) for known in self.ids}:
            self.ids.append(subscriber_id)

    def pull_back_to(self, moment: datetime) -> bool:
        """Move back to ``moment`` if the watermark is later; return whether it moved.

        No id is kept: nothing at or after ``moment`` counts as reported but what ``ahead`` holds.
        """
        if self.instant <= moment:
            return False
        written = moment.astimezone(timezone.utc)
        self.written, self.instant, self.ids = written.isoformat(), written, []
        return True

    def to_state(self) -> dict[str, Any]:
        """The watermark for the task state, ``ahead`` only while it holds subscribers past the watermark."""
        ids = list(self.ids)
        for (key, when), (subscriber_id, _) in self.ahead.items():
            # Caught up by the watermark: the ids at its own instant keep such a subscriber out now.
            if when == self.instant and key not in {_id_key(known) for known in ids}:
                ids.append(subscriber_id)
        state: dict[str, Any] = {self.field: self.written, "ids": ids}
        ahead = [{"id": subscriber_id, self.field: written}
                 for (_, when), (subscriber_id, written) in self.ahead.items() if when > self.instant]
        if ahead:
            state["ahead"] = ahead
        if self.undated:
            state["undated"] = list(self.undated)
        return state
