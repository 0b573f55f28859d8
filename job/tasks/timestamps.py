"""AWeber's timestamps, read leniently (docs/aweber-api.md §2.5), and the earliest zone a filter day can begin in."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

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
