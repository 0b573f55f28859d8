"""The commands of the PostgreSQL store: ``store`` and ``connections``.

Imported only when ``AWEBER_STORE`` is a database URL; the store itself is :mod:`job.stores.postgres`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import IO

from job.config import Settings
from job.errors import EXIT_OK, UsageError
from job.logs import one_line
from job.stores.postgres import ConnectionInfo, PostgresStore
from job.stores.postgres.status import row_of


def run_store_command(settings: Settings, args: argparse.Namespace, out: IO[str]) -> int:
    """``store init|rotate-key`` and ``connections list|import|remove``; the exit code (an import of a directory
    that refused files is not 0)."""
    store = PostgresStore.from_settings(settings)
    code = EXIT_OK
    try:
        if args.command == "store":
            if args.store_action == "init":
                version = store.init_schema()
                out.write(f"schema version {version} in {store.description}\n")
            else:
                count = store.rotate_key()
                out.write(f"re-encrypted {count} connection{'s' if count != 1 else ''} with the first key\n")
        elif args.connections_action == "list":
            _list(store.list_connections(), out, as_json=args.json)
        elif args.connections_action == "import":
            code = _import(settings, store, args, out)
        else:
            store.remove(args.name, force=args.force)  # which says so
    finally:
        store.close()
    out.flush()
    return code


def _import(settings: Settings, store: PostgresStore, args: argparse.Namespace, out: IO[str]) -> int:
    """``connections import NAME FILE [--state FILE]`` or ``connections import --dir DIR``."""
    from job.commands.imports import import_dir, import_one

    if args.dir is not None:
        if args.name is not None or args.state is not None:
            raise UsageError("connections import --dir DIR takes every NAME.json in DIR (each with the task state a "
                             "run of it keeps): give no NAME, FILE or --state with it")
        return import_dir(settings, store, Path(args.dir), force=args.force, out=out)
    if args.name is None or args.file is None:
        raise UsageError("connections import needs NAME FILE, or --dir DIR")
    import_one(settings, store, args.name, Path(args.file), force=args.force,
               state_file=Path(args.state) if args.state is not None else None, out=out)
    return EXIT_OK


def _list(infos: list[ConnectionInfo], out: IO[str], *, as_json: bool) -> None:
    rows = [row_of(info) for info in infos]
    if as_json:
        out.write(json.dumps(rows) + "\n")
        return
    columns = ("name", "state", "account_id", "access_expires_at", "last_run_at", "last_exit_code", "next_run_at",
               "lease_holder")
    for row in rows:
        row["state"] = ("revoked" if row["revoked"] else "needs a person" if row["waiting_for_person"] else "ok")
    # A name or holder written into the table by hand may hold a newline: escaped, each row stays one line.
    table = [["-" if row[key] is None else one_line(str(row[key])) for key in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in table]) for i, c in enumerate(columns)]
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for line in table:
        out.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n")
