"""Timestamps and filter days as the stand-in shows them: everything at the fixed offset -05:00.

AWeber does not document which time zone its day filters (``subscribed_after``,
``subscribed_before``, ``subscribed_at``) use for the day boundary (docs/aweber-api.md §2.4).
AWeber is a US company and the timestamps in its own examples carry US Eastern offsets
(``2015-10-13T16:19:20-04:00``), so the stand-in picks one rule and keeps it everywhere:

* every timestamp it emits is written with the fixed offset ``-05:00`` (Eastern Standard Time,
  no daylight-saving switch, so the rule is the same on every day of the year);
* a filter day ``D`` means the 24 hours from ``D 00:00:00-05:00`` up to, not including,
  ``D+1 00:00:00-05:00``.

A client that derives filter days from UTC timestamps is therefore up to five hours off around
midnight, exactly the kind of mismatch it must survive against the real service, where the zone
is unknown: it should filter by day with a margin and compare full timestamps itself. The zone of
the filter days (any offset from -12 to +14 hours), and whether ``subscribed_after`` and
``subscribed_before`` include the named day, are switches (:class:`job.standin.api.ApiBehaviour`),
so a client can be tested against every reading.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

AWEBER_OFFSET = timezone(timedelta(hours=-5))

SECONDS_PER_DAY = 86_400

# AWeber's find operation accepts both 'YYYY-MM-DD' and 'MM-DD-YYYY' (docs/aweber-api.md §2.4).
_ISO_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_US_DAY = re.compile(r"(\d{2})-(\d{2})-(\d{4})")


def format_timestamp(epoch_seconds: float) -> str:
    """Return ``epoch_seconds`` as ISO 8601 at -05:00, with microseconds only when there is a fraction."""
    moment = datetime.fromtimestamp(epoch_seconds, AWEBER_OFFSET)
    if moment.microsecond:
        return moment.isoformat(timespec="microseconds")
    return moment.isoformat(timespec="seconds")


def parse_filter_day(text: str) -> date:
    """Parse a find-filter day written ``YYYY-MM-DD`` or ``MM-DD-YYYY``; raise ValueError otherwise."""
    iso = _ISO_DAY.fullmatch(text)
    if iso:
        year, month, day = (int(part) for part in iso.groups())
    else:
        us = _US_DAY.fullmatch(text)
        if not us:
            raise ValueError(f"not a day in YYYY-MM-DD or MM-DD-YYYY form: {text!r}")
        month, day, year = (int(part) for part in us.groups())
    return date(year, month, day)


def day_start_epoch(day: date, zone: timezone = AWEBER_OFFSET) -> int:
    """Return the Unix time at which ``day`` begins at the stand-in's offset (or in ``zone``)."""
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())


def day_of(epoch_seconds: float) -> date:
    """Return the day, at the stand-in's offset, that contains ``epoch_seconds``."""
    return datetime.fromtimestamp(epoch_seconds, AWEBER_OFFSET).date()
