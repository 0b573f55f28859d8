"""``aweber-job state show`` and ``state rewind``: the task's saved state, read or set back, for either store.

``show`` reads the state as a run would load it (no lock, no network: the state is replaced atomically,
so a read sees one whole version) and prints, per list, the watermark and what else it holds; ``--json``
prints the state as saved. The state holds subscriber ids and times, never a token.

``rewind --since 24h|7d|DATE [--list ID]`` sets the watermarks of ``new-subscribers`` back, so the next
run reports every subscriber from that moment on again (at least once, as always; never fewer). It takes
the hold a run takes — the token file's lock, or the connection's lease in the PostgreSQL store — so it
cannot interleave with a run, and saves through the store's own task-state save (atomic and durable,
fenced in the database). A watermark already at or before that moment is left alone: a rewind never
moves one forward. Of a list's state it rewrites the watermark, clears the ids at it and the
subscribers reported ahead of the server's clock (they come again), and keeps the rest (the ids
reported without a date, which no moment can place).
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime, timezone
from typing import IO, Any

from job.config import Settings
from job.errors import EXIT_OK, TokenFileError, UsageError
from job.run.single import parse_since
from job.stores import connection_store
from job.tasks.watermark import Watermark

log = logging.getLogger("job")

REWOUND_AWAY = ("ids", "ahead")


def run_state_command(settings: Settings, args: argparse.Namespace, out: IO[str]) -> int:
    """``state show`` or ``state rewind``; the exit code (0), or a JobError carrying its own."""
    task = getattr(args, "state_task", None) or settings.task
    if args.state_action == "show":
        return _show(settings, task, out, as_json=args.json)
    return _rewind(settings, task, args.rewind_since, args.rewind_list, out)


def _show(settings: Settings, task: str, out: IO[str], *, as_json: bool) -> int:
    store = connection_store(settings)
    try:
        state = store.load_state(task)
        where = store.state_location(task)
    finally:
        store.close()
    if as_json:
        out.write(json.dumps(state, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    elif not state:
        out.write(f"task {task}: no saved state yet; the first run looks back --since (24h by default)\n")
    else:
        out.write(f"task {task}: {where}\n")
        out.writelines(_describe(state))
    out.flush()
    return EXIT_OK


def _describe(state: dict[str, Any]) -> list[str]:
    """Readable lines for a task state: each list's watermark and counts, then any other key as JSON."""
    lines = []
    lists = state.get("lists")
    if isinstance(lists, dict):
        for key in sorted(lists, key=_list_order):
            value = lists[key]
            mark = Watermark.from_state(value)
            if mark is None:
                lines.append(f"  list {key}: watermark unreadable ({_short_json(value)}); the next run looks back "
                             "--since\n")
                continue
            extras = [f"{len(mark.ids)} id(s) at that instant"]
            if mark.ahead:
                extras.append(f"{len(mark.ahead)} reported ahead of the server's clock")
            if mark.undated:
                extras.append(f"{len(mark.undated)} reported without a date")
            others = sorted(set(value) - {mark.field, "ids", "ahead", "undated"})
            extras += [f"{name}={_short_json(value[name])}" for name in others]
            lines.append(f"  list {key}: watermark {mark.written} ({'; '.join(extras)})\n")
    for name in sorted(set(state) - {"lists"}):
        lines.append(f"  {name}: {_short_json(state[name])}\n")
    return lines


def _list_order(key: str) -> tuple[int, str]:
    return len(key), key


def _short_json(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rewind(settings: Settings, task: str, since_text: str, list_id: str | None, out: IO[str]) -> int:
    since = parse_since(since_text, datetime.now(timezone.utc))
    if list_id is not None and not list_id.strip():
        raise UsageError("--list is empty; give a list id (aweber-job state show lists them)")
    store = connection_store(settings)
    try:
        # The hold a run takes: a run waits for this one (or this one for it), never both at once.
        store.hold()
        state = store.load_state(task)
        where = store.state_location(task)
        lists = _watermarks(state, task, where)
        chosen = _chosen(lists, list_id)
        moved = []
        for key in chosen:
            before = _rewound(lists, key, since)
            if before is not None:
                moved.append((key, before))
        if moved:
            store.save_state(task, state)
    finally:
        store.close()
    at = since.isoformat()
    for key in chosen:
        previous = dict(moved).get(key)
        if previous is None:
            kept = Watermark.from_state(lists[key])
            out.write(f"list {key}: left at {kept.written if kept else None}, already at or before {at}\n")
        else:
            out.write(f"list {key}: watermark {previous} -> {at}; the next run reports its subscribers from then on\n")
    out.flush()
    log.info("state of task %s: %d of %d list(s) set back to %s", task, len(moved), len(chosen), at,
             extra={"task": task, "rewound": len(moved), "since": at})
    return EXIT_OK


def _watermarks(state: dict[str, Any], task: str, where: str) -> dict[str, Any]:
    """The state's ``lists``: UsageError (64) when there is no state yet, TokenFileError (65) when it is not one."""
    if not state:
        raise UsageError(
            f"task {task} has no saved state yet ({where}): nothing to rewind",
            hint="a first run looks back as far as run --since says (24h by default)",
        )
    lists = state.get("lists")
    if "lists" not in state:
        raise UsageError(f"the state of task {task} holds no watermarks ('lists'); state rewind knows those of "
                         "new-subscribers only")
    if not isinstance(lists, dict) or not lists:
        raise TokenFileError(f"the state of task {task} ({where}) has no list watermarks in 'lists'",
                             hint="move it away (or set it to {}) to start again from --since")
    return lists


def _chosen(lists: dict[str, Any], list_id: str | None) -> list[str]:
    """The keys (``account/list``) to rewind: every one, or those of ``--list ID`` (the list's id or its key)."""
    keys = sorted(lists, key=_list_order)
    if list_id is None:
        return keys
    wanted = list_id.strip()
    chosen = [key for key in keys if wanted in (key, key.rpartition("/")[2])]
    if not chosen:
        known = ", ".join(key.rpartition("/")[2] for key in keys)
        raise UsageError(f"--list {wanted}: the task state holds no such list; it holds {known}")
    return chosen


def _rewound(lists: dict[str, Any], key: str, since: datetime) -> str | None:
    """Set the list's watermark back to ``since`` in place; what it was, or None when it stays (already earlier)."""
    value = lists[key]
    mark = Watermark.from_state(value)
    if mark is not None and mark.instant <= since:
        return None
    kept = {name: item for name, item in value.items() if name not in REWOUND_AWAY} if isinstance(value, dict) else {}
    # No ids at the new instant: a subscriber exactly then is reported too.
    lists[key] = {**kept, mark.field if mark is not None else "subscribed_at": since.isoformat(), "ids": []}
    return mark.written if mark is not None else "(unreadable)"
