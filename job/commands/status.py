"""``aweber-job status``: what the store keeps for the connection, without touching the network.

One command for every store: each shows what it keeps its own way (the token file and its lock:
:mod:`job.stores.file.status`; a connection in the database: :mod:`job.stores.postgres.status`).
Shows fingerprints, never tokens.
"""

from __future__ import annotations

from typing import IO

from job.config import Settings
from job.stores import connection_store
from job.stores.file.status import StatusReport, collect_status, render_status

__all__ = ["StatusReport", "collect_status", "render_status", "run_status"]


def run_status(settings: Settings, out: IO[str], *, as_json: bool) -> int:
    """Print the status of the configured connection; its exit code (65 for a token file that does not load)."""
    store = connection_store(settings)
    try:
        view = store.status()
    finally:
        store.close()
    out.write(view.render(as_json=as_json))
    out.flush()
    return view.exit_code
