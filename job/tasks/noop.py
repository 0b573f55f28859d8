"""The ``noop`` task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from job.tasks import TaskContext


def noop(context: TaskContext) -> Mapping[str, Any] | None:
    """Do nothing: ``run --task noop`` is the same as ``refresh``."""
    return None
