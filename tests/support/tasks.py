"""Tasks the tests run by ``package.module:callable`` path: the built-in task with trouble after it, and a lister."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from job.tasks import TaskContext
from job.tasks.new_subscribers import new_subscribers

# Written into the state directory by a test: "fail" or "hang" (used once, then removed).
TROUBLE_FILE = "trouble"
# Written by the task when it hangs: the output is flushed, the state is not saved yet.
READY_FILE = "output-flushed"
HANG_SECONDS = 60


def new_subscribers_then_trouble(context: TaskContext) -> dict[str, Any]:
    """Run new-subscribers, then fail or hang as the state directory's trouble file says (once)."""
    summary = new_subscribers(context)
    trouble_file = context.settings.state_dir / TROUBLE_FILE
    try:
        trouble = trouble_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return summary
    trouble_file.unlink()
    if trouble == "fail":
        raise RuntimeError("injected failure after the output was flushed")
    if trouble == "hang":
        (context.settings.state_dir / READY_FILE).write_text(str(os.getpid()), encoding="utf-8")
        time.sleep(HANG_SECONDS)
    return summary


def list_accounts(context: TaskContext) -> dict[str, Any]:
    """Write one JSON line per account the token sees."""
    count = 0
    for entry in context.api.walk("accounts"):
        context.output.write(json.dumps({"account_id": entry.get("id")}) + "\n")
        count += 1
    return {"accounts": count}
