"""The ``new-subscribers`` task: report who joined each list since the last run, oldest first.

Per list one find (``subscribed_after`` a day early enough for any reading of that filter, sorted by
``subscribed_at``), cut exactly by timestamp and id, the watermark moved only after the output is
flushed: :mod:`job.tasks.finds` holds that walk, which the ``unsubscribes`` task shares, and
:mod:`job.tasks.watermark` the watermark. The task state::

    {"lists": {"<account>/<list>": {"subscribed_at": "<as AWeber wrote it>", "ids": [<ids at that instant>],
                                    "ahead": [{"id": ..., "subscribed_at": ...}]   (only when needed)}}}

Unconfirmed subscribers are reported too (they are on the list, and AWeber counts them there). A row
keeps AWeber's field names: the columns of earlier versions first, in their order, then the fields an
import wants that the find already returns (AWeber's Subscriber entry; ``list_name`` comes with every
find entry, changelog 1.0.33).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from job.tasks import TaskContext
from job.tasks.finds import FindSpec, Record, Sink, read_find_stream
from job.tasks.lists import ListRef, scan_lists
from job.tasks.rows import RowWriter
from job.tasks.timestamps import parse_timestamp
from job.tasks.watermark import Watermark

# The columns crontab users parse, in their order: never reorder, only add after them.
FIRST_FIELDS = ("account_id", "list_id", "list_name", "id", "email", "name", "status", "subscribed_at")
# What an import wants besides, as AWeber's Subscriber entry names it.
IMPORT_FIELDS = ("tags", "custom_fields", "ad_tracking", "subscription_method", "verified_at", "misc_notes")
FIELDS = (*FIRST_FIELDS, *IMPORT_FIELDS)

__all__ = ["FIELDS", "SPEC", "Watermark", "new_subscribers", "parse_timestamp", "subscriber_record"]


def subscriber_record(ref: ListRef, entry: Mapping[str, Any], fields: tuple[str, ...] = FIELDS) -> Record:
    """The record for a subscriber entry of the list ``ref``: ``fields`` in order, a field AWeber left out as None.

    ``tags`` stays a list and ``custom_fields`` an object (an empty one when AWeber sends none).
    """
    record: Record = {}
    for name in fields:
        if name == "account_id":
            record[name] = ref.account_id
        elif name == "list_id":
            record[name] = ref.list_id
        elif name == "list_name":
            record[name] = ref.name
        else:
            record[name] = entry.get(name)
    if "tags" in record and not isinstance(record["tags"], list):
        record["tags"] = []
    if "custom_fields" in record and not isinstance(record["custom_fields"], dict):
        record["custom_fields"] = {}
    return record


SPEC = FindSpec(field="subscribed_at", after="subscribed_after", counter="new_subscribers",
                noun="new", record=subscriber_record)


def new_subscribers(context: TaskContext) -> dict[str, Any]:
    """Report the subscribers who joined each list since the last run, oldest first (the default task)."""
    writer = RowWriter(context.output, context.output_format, FIELDS, context.connection)
    return read_find_stream(context, SPEC, scan_lists(context), context.state,
                            Sink(writer.write, context.flush_output))
