"""The commands of the PostgreSQL store: ``store`` and ``connections``.

Imported only when ``AWEBER_STORE`` is a database URL; the store itself is :mod:`job.stores.postgres`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import IO

from job.auth.tokens import TokenFile, fingerprint
from job.config import Settings
from job.errors import (
    EXIT_OK,
    JobError,
    StorageError,
    TemporaryError,
    TokenFileError,
    UsageError,
)
from job.logs import REDACTOR, one_line, utc_stamp
from job.stores.durable import fsync_directory, resolve_target
from job.stores.file.lock import TokenLock
from job.stores.file.recovery import tidy_temp_files
from job.stores.file.tokenfile import load_token_file
from job.stores.postgres import ConnectionInfo, PostgresStore
from job.stores.postgres.status import row_of

log = logging.getLogger(__name__)


def run_store_command(settings: Settings, args: argparse.Namespace, out: IO[str]) -> int:
    """``store init|rotate-key`` and ``connections list|import|remove``."""
    store = PostgresStore.from_settings(settings)
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
            _import(settings, store, args.name, Path(args.file), force=args.force, out=out)
        else:
            store.remove(args.name, force=args.force)
            log.info("removed the connection %r from the store", args.name)
    finally:
        store.close()
    out.flush()
    return EXIT_OK


def _list(infos: list[ConnectionInfo], out: IO[str], *, as_json: bool) -> None:
    rows = [row_of(info) for info in infos]
    if as_json:
        out.write(json.dumps(rows) + "\n")
        return
    columns = ("name", "account_id", "access_expires_at", "last_run_at", "last_exit_code", "next_run_at",
               "lease_holder")
    # A name or holder written into the table by hand may hold a newline: escaped, each row stays one line.
    table = [[("revoked" if key == "lease_holder" and row["revoked"] and not row[key] else
               "-" if row[key] is None else one_line(str(row[key]))) for key in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in table]) for i, c in enumerate(columns)]
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for line in table:
        out.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n")


def _import(settings: Settings, store: PostgresStore, name: str, path: Path, *, force: bool, out: IO[str]) -> None:
    """Put the token file at ``path`` into the store as ``name``, then rename it so it is never used twice.

    Under the file's own lock (a run on the old setup cannot refresh it meanwhile), after putting in
    place a save an earlier run could not finish, so what is imported is the live refresh token.
    """
    from job.config import CONNECTION_NAME, CONNECTION_NAME_RULE

    if not CONNECTION_NAME.match(name):
        raise UsageError(f"connections import: NAME must be a connection name of {CONNECTION_NAME_RULE}, got {name!r}")
    path = Path(os.path.abspath(path))
    # Taken or refused, an import leaves no lock file of its own beside a file it was given.
    with TokenLock(path, settings.lock_timeout_seconds, remove_if_created=True) as lock:
        tidy_temp_files(path, lock, settings.fallback_rescue_dir)
        tokens = load_token_file(path).tokens
        REDACTOR.add(*tokens.secrets())
        stamp = utc_stamp(time.time())
        target = resolve_target(path)
        try:
            store.import_tokens(name, tokens, force=force)
        except (TemporaryError, StorageError) as exc:
            _after_an_uncertain_import(store, name, tokens, target, stamp, exc)
        renamed = _unused_name(target, f"{target.name}.imported-{stamp}")
        try:
            _move_durably(target, renamed)
        except OSError as exc:
            raise StorageError(
                f"imported {path} as the connection {name!r}, but could not rename the file ({exc.strerror or exc}): "
                f"move it away now (mv {target} {renamed}), or a run on the old setup would spend the same "
                "refresh token as the store and lock one of them out"
            ) from exc
    kind = "OAuth 1.0a" if tokens.oauth1 is not None else f"refresh token {fingerprint(tokens.refresh_token)}"
    out.write(f"imported {path} as the connection {name!r} ({kind}); the file is now {renamed}\n")


def _after_an_uncertain_import(store: PostgresStore, name: str, tokens: TokenFile, target: Path, stamp: str,
                               exc: JobError) -> None:
    """The store's answer to the import never came (a link cut, a stop): it may have taken the tokens.

    Returns when the store is seen to hold them (the import goes on: the file is renamed). Raises the
    error as it is when the store is seen not to hold them (the file stays, live). When the store cannot
    be asked, the file is renamed aside all the same: one refresh token live in two places would be spent
    by one and presented again by the other, which can make AWeber revoke the grant.
    """
    try:
        held = store.read(name).tokens
    except TokenFileError:
        raise exc from None  # the store answers, and has no such connection: nothing was imported
    except JobError:
        held = None  # the store cannot be asked
    else:
        if held is not None and held.refresh_token == tokens.refresh_token:
            log.info("the store's answer to the import was lost, but connection '%s' holds the imported tokens", name)
            return
        raise exc
    aside = _unused_name(target, f"{target.name}.import-uncertain-{stamp}")
    try:
        _move_durably(target, aside)
    except OSError as rename_error:
        raise StorageError(
            f"{exc.message}; the store may have taken the tokens of {target} as the connection {name!r}, and the file "
            f"could not be moved aside ({rename_error.strerror or rename_error}): move it away now (mv {target} "
            f"{aside}) so that the same refresh token is not used from two places"
        ) from exc
    raise StorageError(
        f"{exc.message}; the store may or may not have taken the tokens of {target} as the connection {name!r}, so "
        f"the file was moved aside to {aside}, where no run uses it",
        hint=f"once the store answers: aweber-job connections import {name} {aside} --force",
    ) from exc


def _move_durably(target: Path, to: Path) -> None:
    """Rename ``target`` to ``to`` beside it and make the rename durable; OSError when it cannot."""
    os.rename(target, to)
    fsync_directory(target.parent)


def _unused_name(target: Path, name: str) -> Path:
    """``name`` beside ``target``, or ``name-2``, ``-3``... when taken: a rename must never replace a file
    kept by an earlier import (two imports in one second), which may hold the only copy of live tokens.

    Free of races with other imports of the same file: the caller holds that file's lock.
    """
    candidate, number = target.with_name(name), 1
    while os.path.lexists(candidate):
        number += 1
        candidate = target.with_name(f"{name}-{number}")
    return candidate
