"""Output rows: one JSON line, or one CSV row under a header written once, per record.

In JSON lines a record keeps its shape (``tags`` a list, ``custom_fields`` an object). CSV has no
such shapes, so a list or an object is written as its JSON text (``["vip","beta"]``,
``{"apple":"fuji"}``): one rule for both, and a tag holding a comma or a semicolon comes back whole.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Mapping, Sequence
from typing import IO, Any


class RowWriter:
    """Writes one row at a time as a JSON line or a CSV row (the CSV header before the first row).

    ``fields`` are the CSV columns, in order; ``connection`` (a database store's connection name) and,
    when several streams share the output, ``stream`` come first on every row.
    """

    def __init__(self, output: IO[str], fmt: str, fields: Sequence[str], connection: str | None = None, *,
                 with_stream: bool = False) -> None:
        self.output = output
        self.connection = connection
        self.with_stream = with_stream
        self.csv: csv.DictWriter[str] | None = None
        self.header_pending = False
        if fmt == "csv":
            leading = (("connection",) if connection is not None else ()) + (("stream",) if with_stream else ())
            self.csv = csv.DictWriter(output, fieldnames=(*leading, *fields), extrasaction="ignore",
                                      lineterminator="\n")
            # An output file appended to across runs gets one header; an empty run writes nothing at
            # all, so cron has nothing to mail.
            self.header_pending = True

    def write(self, row: Mapping[str, Any], stream: str | None = None) -> None:
        if self.with_stream:
            row = {"stream": stream, **row}
        if self.connection is not None:
            row = {"connection": self.connection, **row}
        if self.csv is None:
            self.output.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        flat = {key: _cell(value) for key, value in row.items()}
        # Output shared by several connections' runs (run --all) has a lock: one header for all of them.
        with getattr(self.output, "lock", contextlib.nullcontext()):
            if self.header_pending and not _has_content(self.output):
                self.csv.writeheader()
            self.header_pending = False
            self.csv.writerow(flat)


def _cell(value: Any) -> Any:
    """A CSV cell: lists and objects as their JSON text, anything else as it is."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def _has_content(output: IO[str]) -> bool:
    try:
        return output.seekable() and output.tell() > 0
    except (OSError, ValueError, AttributeError):
        return False
