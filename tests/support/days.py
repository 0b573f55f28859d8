"""Day filters read in any zone: the instants a test puts its watermarks beside."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

# The extreme zones AWeber's day filters might be read in, and a watermark day well in the past, after which
# every extreme zone's midnight falls.
EXTREME_ZONES = (-12, -5, 0, 14)
WATERMARK_DAY = datetime(2026, 3, 14, tzinfo=timezone.utc)


def midnights_between(earliest: float, latest: float) -> list[float]:
    """Every midnight at UTC-12, -05, 00 and +14 that falls within [earliest, latest], as Unix seconds."""
    found = []
    day = datetime.fromtimestamp(earliest, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    for days in range(-2, 4):
        for hours in EXTREME_ZONES:
            # Midnight at UTC+h is h hours before midnight UTC of the same date.
            moment = (day + timedelta(days=days) - timedelta(hours=hours)).timestamp()
            if earliest <= moment <= latest:
                found.append(moment)
    return found
