"""The streams: what each built-in reading of AWeber yields, described for a Singer tap and runnable alone or together.

``STREAMS`` maps a stream's name to its :class:`Stream`: the task that runs it on its own
(``aweber-job run --task unsubscribes``), its record's JSON Schema (draft 7, as Singer uses it), its key
properties and its replication key. :meth:`Stream.run` runs one stream against a given state and hands
each record to a callback: the contract a tap builds on. :func:`several_streams` is the task behind
``--task new-subscribers,unsubscribes,list-stats``: the accounts and lists are read once, every stream
keeps its own state, and each output line names its stream.

Records keep AWeber's field names and always carry ``id``, ``list_id`` and ``account_id``
(``list_stats``: ``id`` is the list's). Timestamps are as AWeber wrote them: ISO 8601 with an offset,
or without one (UTC) in some of AWeber's own examples (docs/aweber-api.md §2.5).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from job.tasks import TaskContext
from job.tasks import list_stats as list_stats_task
from job.tasks import new_subscribers as new_subscribers_task
from job.tasks import unsubscribes as unsubscribes_task
from job.tasks.finds import FindSpec, Record, Sink, read_find_stream
from job.tasks.lists import Lists, scan_lists
from job.tasks.rows import RowWriter

JsonSchema = Mapping[str, Any]


def _text(*, fmt: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["null", "string"]}
    if fmt is not None:
        schema["format"] = fmt
    return schema


_ID = {"type": ["integer"]}
_COUNT = {"type": ["null", "integer"], "minimum": 0}
_SUBSCRIBER_PROPERTIES: dict[str, Any] = {
    "account_id": _ID,
    "list_id": _ID,
    "list_name": _text(),
    "id": _ID,
    "email": _text(),
    "name": _text(),
    "status": _text(),
    "subscribed_at": _text(fmt="date-time"),
    "tags": {"type": ["null", "array"], "items": {"type": "string"}},
    "custom_fields": {"type": ["null", "object"], "additionalProperties": {"type": ["null", "string"]}},
    "ad_tracking": _text(),
    "subscription_method": _text(),
    "verified_at": _text(fmt="date-time"),
    "misc_notes": _text(),
}
_UNSUBSCRIBE_PROPERTIES = {
    **_SUBSCRIBER_PROPERTIES,
    "unsubscribed_at": _text(fmt="date-time"),
    "unsubscribe_method": _text(),
}
_LIST_STATS_PROPERTIES = {
    "account_id": _ID,
    "list_id": _ID,
    "list_name": _text(),
    "id": _ID,
    **{name: _COUNT for name in list_stats_task.COUNTS},
    "captured_at": {"type": ["string"], "format": "date-time"},
}


def _schema(properties: Mapping[str, Any], fields: Sequence[str]) -> JsonSchema:
    """An object schema with ``properties`` in the order of ``fields`` (the CSV columns)."""
    assert set(properties) == set(fields), "a stream's schema and its fields differ"
    return {"type": "object", "properties": {name: properties[name] for name in fields}}


@dataclass(frozen=True)
class Stream:
    """One stream: its name (Singer's ``stream``), the task that runs it alone, its record's JSON Schema, its key
    properties and its replication key (None: a full snapshot every run)."""

    name: str
    task: str
    schema: JsonSchema
    key_properties: tuple[str, ...]
    replication_key: str | None

    @property
    def fields(self) -> tuple[str, ...]:
        """The record's fields in order: the CSV columns."""
        return tuple(self.schema["properties"])

    def run(
        self,
        context: TaskContext,
        state: dict[str, Any],
        write: Callable[[Record], None],
        *,
        flush: Callable[[], None] | None = None,
        checkpoint: Callable[[dict[str, Any]], None] | None = None,
        lists: Lists | None = None,
    ) -> dict[str, Any]:
        """Run the stream once from ``state``, handing each record to ``write``; return the summary.

        The contract, for a Singer tap or any other caller:

        - ``context`` gives the API, settings, log, clock and look-back (``since``, ``look_back``: used for a list
          the state does not know yet); its ``output``, ``output_format`` and ``state`` are not used.
        - ``state`` is this stream's own state — ``{}`` the first time, then what an earlier run left in it —
          and is changed in place; it stays JSON. Give each stream its own dict (a tap's bookmark).
        - ``write(record)`` is called once per record, in order (per list, oldest first by the replication key),
          with a fresh dict matching :attr:`schema`: no ``stream`` or ``connection`` field.
        - ``flush()`` (default ``context.flush_output``) is called before the state moves past records
          written: when it returns, they must be out of the caller's hands (written and flushed).
        - ``checkpoint(state)``, when given, is called each time the state has moved (after a list, and for
          ``list_stats`` once at the end), after ``flush()``: the moment to save the state or emit a Singer
          STATE message. The state it is given never covers a record whose ``write`` has not returned.
        - ``lists`` is the run's accounts and lists when already read (several streams share one read);
          None reads them (one request for the accounts unless AWEBER_ACCOUNT_ID, one per account for lists).
        - Errors are the task's: ``RunTimeoutError`` (run time limit or a stop) after ``flush()`` and a last
          ``checkpoint`` of the state as far as it is true; ``ApiError``, ``TemporaryError``, ``AuthError``…
          leave the state as last checkpointed and should not be saved past it.
        """
        sink = Sink(write, context.flush_output if flush is None else flush, checkpoint)
        chosen = scan_lists(context) if lists is None else lists
        spec = _FINDS.get(self.name)
        if spec is not None:
            return read_find_stream(context, spec, chosen, state, sink)
        return list_stats_task.read_list_stats(context, chosen, state, sink)


_FINDS: Mapping[str, FindSpec] = MappingProxyType({
    "subscribers": new_subscribers_task.SPEC,
    "unsubscribes": unsubscribes_task.SPEC,
})

STREAMS: Mapping[str, Stream] = MappingProxyType({
    "subscribers": Stream(
        "subscribers", "new-subscribers", _schema(_SUBSCRIBER_PROPERTIES, new_subscribers_task.FIELDS),
        ("id", "list_id"), "subscribed_at",
    ),
    "unsubscribes": Stream(
        "unsubscribes", "unsubscribes", _schema(_UNSUBSCRIBE_PROPERTIES, unsubscribes_task.FIELDS),
        ("id", "list_id"), "unsubscribed_at",
    ),
    "list_stats": Stream(
        "list_stats", "list-stats", _schema(_LIST_STATS_PROPERTIES, list_stats_task.FIELDS),
        ("list_id", "captured_at"), "captured_at",
    ),
})

BY_TASK: Mapping[str, Stream] = MappingProxyType({stream.task: stream for stream in STREAMS.values()})


def several_streams(tasks: Sequence[str]) -> Callable[[TaskContext], dict[str, Any]]:
    """The task that runs the streams of ``tasks`` (task names, as ``--task`` gives them) in one run.

    The accounts and lists are read once; the streams run in :data:`STREAMS` order, each from its own
    state under ``state["streams"][<stream name>]``; every output line carries ``stream`` (after
    ``connection``, when there is one). A CSV has one header: ``stream`` and every stream's columns.
    """
    streams = [BY_TASK[task] for task in tasks]

    def run(context: TaskContext) -> dict[str, Any]:
        lists = scan_lists(context)
        fields = tuple(dict.fromkeys(name for stream in streams for name in stream.fields))
        writer = RowWriter(context.output, context.output_format, fields, context.connection, with_stream=True)
        states = _object(context, context.state, "streams")
        summary: dict[str, Any] = {"accounts": lists.accounts, "lists": len(lists.refs)}
        for stream in streams:
            result = stream.run(context, _object(context, states, stream.name),
                                functools.partial(writer.write, stream=stream.name), lists=lists)
            summary.update((key, value) for key, value in result.items() if key not in ("accounts", "lists"))
        summary["requests"] = context.api.requests_made
        return summary

    run.__doc__ = f"Report the streams {', '.join(stream.name for stream in streams)} in one run."
    return run


def _object(context: TaskContext, parent: dict[str, Any], key: str) -> dict[str, Any]:
    """``parent[key]`` as a dict, set to ``{}`` (with a warning) when it is something else."""
    value = parent.setdefault(key, {})
    if not isinstance(value, dict):
        context.log.warning("the task state's %r is not an object; that stream starts again from --since", key)
        value = parent[key] = {}
    return value
