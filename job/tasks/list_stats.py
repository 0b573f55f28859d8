"""The ``list-stats`` task: each list's counts, one record per list per run, stamped with the time they were read.

AWeber's lists collection carries the counts (``total_subscribers``, ``total_subscribed_subscribers``,
``total_unsubscribed_subscribers``, ``total_unconfirmed_subscribers``,
``total_subscribers_subscribed_today`` and ``_yesterday``: docs/aweber-api.md §2.3), and every run
reads that collection anyway: the task costs no request of its own. ``captured_at`` is the run's
clock when the lists were read (UTC); "today" and "yesterday" are AWeber's days. The task state keeps
the last ``captured_at``: ``{"captured_at": "..."}``.
"""

from __future__ import annotations

from typing import Any

from job.tasks import TaskContext
from job.tasks.finds import Record, Sink
from job.tasks.lists import ListRef, Lists, scan_lists
from job.tasks.rows import RowWriter

COUNTS = (
    "total_subscribers", "total_subscribed_subscribers", "total_unsubscribed_subscribers",
    "total_unconfirmed_subscribers", "total_subscribers_subscribed_today", "total_subscribers_subscribed_yesterday",
)
FIELDS = ("account_id", "list_id", "list_name", "id", *COUNTS, "captured_at")


def list_record(ref: ListRef, captured_at: str) -> Record:
    """The record for one list: its ids, name and counts as the lists collection gave them, and the stamp."""
    record: Record = {"account_id": ref.account_id, "list_id": ref.list_id, "list_name": ref.name, "id": ref.list_id}
    for name in COUNTS:
        value = ref.entry.get(name)
        record[name] = value if isinstance(value, int) and not isinstance(value, bool) else None
    record["captured_at"] = captured_at
    return record


def read_list_stats(context: TaskContext, lists: Lists, state: dict[str, Any], sink: Sink) -> dict[str, Any]:
    """Write one record per list, then move ``state`` to this run's ``captured_at``; return the summary."""
    captured_at = lists.read_at.isoformat()
    context.counters["list_stats"] = 0
    for ref in lists.refs:
        sink.write(list_record(ref, captured_at))
        context.counters["list_stats"] += 1
    sink.flush()
    state["captured_at"] = captured_at
    sink.moved(state)
    context.log.info("%d list(s): counts as of %s", len(lists.refs), captured_at,
                     extra={"list_stats": len(lists.refs)})
    return {"accounts": lists.accounts, "lists": len(lists.refs), "list_stats": len(lists.refs),
            "requests": context.api.requests_made}


def list_stats(context: TaskContext) -> dict[str, Any]:
    """Report each list's subscriber counts, one row per list, at no request beyond reading the lists."""
    writer = RowWriter(context.output, context.output_format, FIELDS, context.connection)
    return read_list_stats(context, scan_lists(context), context.state, Sink(writer.write, context.flush_output))
