"""The Singer tap's run (docs/singer.md): tasks' output lines as RECORD messages, their state as STATE messages.

The tap is one run of the job (job/run/single.py): the same hold, refresh on start and careful save of the
rotated tokens. Only the task differs: :func:`tap_task` reads the accounts and lists once and runs each selected
stream (job/tasks/streams.py, the same reading ``run --task`` does) with every record it yields going out as a
RECORD of that stream, and the task state is the orchestrator's, not the store's: :class:`SingerState` takes
it from ``--state`` and hands it back as STATE messages — after each list a stream has finished, once its
records are flushed, and at the end when the task returned, reached the run's time limit or was stopped;
never past a failure. So a STATE never claims a record that was not written.

Singer's state has one bookmark per stream (``{"bookmarks": {STREAM: …}}``); a stream's bookmark is its task's
own state, unchanged, so the task's guarantees (at least once, none repeated across runs) carry over.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import IO, Any

from job.errors import TokenFileError, shorten
from job.tasks import Task, TaskContext
from job.tasks.lists import scan_lists
from job.tasks.streams import STREAMS
from job.tasks.timestamps import parse_timestamp

log = logging.getLogger(__name__)

TAP_TASK = "singer-tap"
# A bookmark this far past the local clock was not written by a run of this machine's clock nor AWeber's.
FUTURE_TOLERANCE = timedelta(minutes=5)
STATE_WHERE = "the state given with --state"


@dataclass(frozen=True)
class SingerStream:
    """A kind of record the tap emits: its name, the task whose output lines are its records, its JSON
    Schema, the properties that identify a record and the one its bookmark follows."""

    name: str
    task: str
    schema: Mapping[str, Any]
    key_properties: tuple[str, ...]
    replication_key: str | None

    @property
    def properties(self) -> Mapping[str, Any]:
        found: Mapping[str, Any] = self.schema.get("properties", {})
        return found

    @property
    def automatic(self) -> tuple[str, ...]:
        """The properties always emitted: the keys and the replication key."""
        return (*self.key_properties, *([self.replication_key] if self.replication_key else []))


@dataclass(frozen=True)
class Selected:
    """A stream the catalog selected, and the properties of it to emit (in the schema's order)."""

    stream: SingerStream
    fields: tuple[str, ...]

    def schema(self) -> dict[str, Any]:
        """The stream's schema with only the selected properties."""
        schema = dict(self.stream.schema)
        schema["properties"] = {name: self.stream.properties[name] for name in self.fields}
        return schema


class MessageWriter:
    """Singer messages, one JSON object a line (ASCII), on the tap's standard output."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self.records = 0

    def write(self, message: Mapping[str, Any]) -> None:
        self._out.write(json.dumps(message, sort_keys=False) + "\n")

    def schema(self, selected: Selected) -> None:
        stream = selected.stream
        message: dict[str, Any] = {"type": "SCHEMA", "stream": stream.name, "schema": selected.schema(),
                                   "key_properties": list(stream.key_properties)}
        if stream.replication_key:
            message["bookmark_properties"] = [stream.replication_key]
        self.write(message)

    def record(self, stream: str, record: Mapping[str, Any], extracted: datetime) -> None:
        self.write({"type": "RECORD", "stream": stream, "record": record,
                    "time_extracted": _rfc3339(extracted)})
        self.records += 1

    def state(self, value: Mapping[str, Any]) -> None:
        self.write({"type": "STATE", "value": value})

    def flush(self) -> None:
        self._out.flush()


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class RecordOutput:
    """Each record of a stream goes out as one RECORD, with the selected properties only, and date-time
    properties in RFC 3339."""

    def __init__(self, writer: MessageWriter, selected: Selected, now: Callable[[], datetime],
                 task_log: logging.Logger) -> None:
        self._writer = writer
        self._selected = selected
        self._now = now
        self._log = task_log
        self._dates = tuple(name for name in selected.fields
                            if selected.stream.properties[name].get("format") == "date-time")
        self._warned: set[str] = set()

    def emit(self, row: Mapping[str, Any]) -> None:
        record = {name: row.get(name) for name in self._selected.fields}
        for name in self._dates:
            record[name] = self._date_time(name, record[name])
        self._writer.record(self._selected.stream.name, record, self._now())

    def _date_time(self, name: str, value: Any) -> str | None:
        if value is None:
            return None
        instant = parse_timestamp(value)
        if instant is None:
            if name not in self._warned:
                self._warned.add(name)
                self._log.warning("stream %s: %s %s is not a date and time; emitted as null",
                                  self._selected.stream.name, name, shorten(repr(value), 40))
            return None
        return _rfc3339(instant)


class SingerState:
    """The task state of a tap run: the orchestrator's, from ``--state``, handed back as STATE messages.

    The run (job/run/single.py) saves it only after flushing the output, so each STATE follows the records
    it covers; the store's own task state is neither read nor written.
    """

    def __init__(self, initial: Mapping[str, Any], writer: MessageWriter) -> None:
        self._initial = copy.deepcopy(dict(initial))
        self._writer = writer

    def load(self, task_name: str) -> dict[str, Any]:
        return copy.deepcopy(self._initial)

    def save(self, task_name: str, state: dict[str, Any]) -> None:
        self._writer.state(copy.deepcopy(state))
        self._writer.flush()

    def location(self, task_name: str) -> str:
        return STATE_WHERE


def tap_task(selected: Sequence[Selected], writer: MessageWriter) -> Task:
    """The run's task: a SCHEMA for every selected stream, then each stream's records as RECORDs, with a STATE
    after every list a stream finishes (its records flushed first)."""

    def tap(context: TaskContext) -> dict[str, Any]:
        """Emit the selected streams as Singer messages."""
        bookmarks = context.state.setdefault("bookmarks", {})
        for chosen in selected:
            writer.schema(chosen)
        writer.flush()
        if not selected:
            return {"streams": 0, "records": 0}
        if context.settings.account_id is None:
            _check_accounts(context, bookmarks, selected)
        lists = scan_lists(context)

        def checkpoint(_: dict[str, Any]) -> None:
            writer.state(copy.deepcopy(context.state))
            writer.flush()

        for chosen in selected:
            name = chosen.stream.name
            if not isinstance(bookmarks.get(name), dict):
                bookmarks[name] = {}
            task_log = logging.getLogger(f"job.task.{chosen.stream.task}")
            stream_context = dataclasses.replace(context, connection=None, log=task_log)
            output = RecordOutput(writer, chosen, context.now, task_log)
            before = writer.records
            STREAMS[name].run(stream_context, bookmarks[name], output.emit, flush=writer.flush,
                              checkpoint=checkpoint, lists=lists)
            context.log.info("stream %s: %d records", name, writer.records - before)
        return {"streams": len(selected), "records": writer.records}

    return Task(TAP_TASK, tap)


# -- the state given with --state ------------------------------------------------------------------------


def check_state(state: object, streams: Mapping[str, SingerStream], *, account_id: int | None,
                list_ids: Sequence[int], now: datetime) -> dict[str, Any]:
    """The state given with ``--state``, checked before anything is spent; TokenFileError (65) when it is not a
    Singer state, holds a bookmark of another account or list than the config names, or one in the future."""
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise TokenFileError("the state (--state) must be a JSON object")
    bookmarks = state.get("bookmarks", {})
    if not isinstance(bookmarks, dict):
        raise TokenFileError("the state (--state): 'bookmarks' must be an object")
    for name, bookmark in bookmarks.items():
        stream = streams.get(name)
        if stream is None:
            continue  # a stream of another version of the tap: handed back as it came
        if not isinstance(bookmark, dict):
            raise TokenFileError(f"the state (--state): the bookmark of stream {name} must be an object")
        for key, mark in _list_marks(name, bookmark):
            _check_list_mark(name, key, mark, stream, account_id=account_id, list_ids=list_ids, now=now)
    return state


def _list_marks(name: str, bookmark: Mapping[str, Any]) -> list[tuple[str, object]]:
    """The per-list watermarks of a bookmark (``{"lists": {"ACCOUNT/LIST": …}}``), as (key, watermark)."""
    lists = bookmark.get("lists", {})
    if not isinstance(lists, dict):
        raise TokenFileError(f"the state (--state): the bookmark of stream {name} has 'lists' that is not an object")
    return list(lists.items())


def _check_list_mark(name: str, key: str, mark: object, stream: SingerStream, *, account_id: int | None,
                     list_ids: Sequence[int], now: datetime) -> None:
    where = f"the state (--state): stream {name}, list {shorten(key, 40)}"
    account, _, list_id = key.partition("/")
    if not (account.isdecimal() and list_id.isdecimal()):
        raise TokenFileError(f"{where}: a list's key is ACCOUNT/LIST, two numbers")
    if account_id is not None and int(account) != account_id:
        raise TokenFileError(
            f"{where}: the state is of account {account}, and the config's account_id is {account_id}; "
            "give the state of this account's runs, or none"
        )
    if list_ids and int(list_id) not in list_ids:
        raise TokenFileError(
            f"{where}: list {list_id} is not among the config's list_ids ({', '.join(map(str, list_ids))}); "
            "give the state of runs of these lists, or none"
        )
    if not isinstance(mark, dict):
        raise TokenFileError(f"{where}: the bookmark must be an object")
    value = mark.get(stream.replication_key) if stream.replication_key else None
    instant = parse_timestamp(value)
    if instant is None:
        raise TokenFileError(f"{where}: {stream.replication_key} {shorten(repr(value), 40)} is not a date and time")
    if instant - now > FUTURE_TOLERANCE:
        raise TokenFileError(
            f"{where}: the bookmark {stream.replication_key} {shorten(value, 40)} is in the future (this machine's "
            f"clock says {_rfc3339(now)}); no run wrote it, and it would hide everyone who joins until then"
        )


def _check_accounts(context: TaskContext, bookmarks: Mapping[str, Any], selected: Sequence[Selected]) -> None:
    """With no account_id in the config: TokenFileError (65) when the state names an account the token does not
    reach, before any record is written (the tokens are saved; no STATE follows, so the state stays as given)."""
    named: set[str] = set()
    for chosen in selected:
        bookmark = bookmarks.get(chosen.stream.name)
        lists = bookmark.get("lists") if isinstance(bookmark, dict) else None
        if isinstance(lists, dict):
            named.update(key.partition("/")[0] for key in lists)
    if not named:
        return
    reached = {str(entry.get("id")) for entry in context.api.walk("accounts", {"ws.size": "100"})}
    foreign = sorted(named - reached)
    if foreign:
        raise TokenFileError(
            f"the state (--state) holds bookmarks of account {', '.join(foreign)}, which these tokens do not reach "
            f"(they reach {', '.join(sorted(reached)) or 'no account'}); give the state of this connection's runs, "
            "or none (the tokens are saved; no record was written)"
        )
