"""The ``unsubscribes`` task: report who left each list since the last run, in the order they left.

The same walk as ``new-subscribers`` (:mod:`job.tasks.finds`), over the list's find with
``status=unsubscribed``, ``unsubscribed_after`` (a day early enough for any reading of the filter)
and ``sort_key=unsubscribed_at`` (docs/aweber-api.md §2.6): one request per list when nobody left,
the exact cut by ``unsubscribed_at`` and id, the watermark moved only after the output is flushed.
A subscriber who left long after joining is found by the day they left. The task state::

    {"lists": {"<account>/<list>": {"unsubscribed_at": "<as AWeber wrote it>", "ids": [...]}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from job.tasks import TaskContext
from job.tasks.finds import FindSpec, Record, Sink, read_find_stream
from job.tasks.lists import ListRef, scan_lists
from job.tasks.new_subscribers import FIRST_FIELDS, IMPORT_FIELDS, subscriber_record
from job.tasks.rows import RowWriter

FIELDS = (*FIRST_FIELDS, "unsubscribed_at", "unsubscribe_method", *IMPORT_FIELDS)


def unsubscribe_record(ref: ListRef, entry: Mapping[str, Any]) -> Record:
    """The record for an unsubscribed subscriber's entry of the list ``ref``."""
    return subscriber_record(ref, entry, FIELDS)


SPEC = FindSpec(field="unsubscribed_at", after="unsubscribed_after", counter="unsubscribes",
                noun="unsubscribed", record=unsubscribe_record, filters={"status": "unsubscribed"},
                shown="unsubscribed")


def unsubscribes(context: TaskContext) -> dict[str, Any]:
    """Report the subscribers who unsubscribed from each list since the last run, in the order they left."""
    writer = RowWriter(context.output, context.output_format, FIELDS, context.connection)
    return read_find_stream(context, SPEC, scan_lists(context), context.state,
                            Sink(writer.write, context.flush_output))
