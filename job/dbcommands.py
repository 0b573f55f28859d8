"""The commands of the PostgreSQL store: ``store``, ``connections``, and ``status``/``revoke`` on one connection.

Imported only when ``AWEBER_STORE`` is a database URL; the store itself is :mod:`job.pgstore`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import requests

from job.config import Settings
from job.errors import EXIT_OK, JobError, StorageError, UsageError
from job.logs import REDACTOR
from job.pgstore import ConnectionInfo, PostgresStore
from job.store import TokenLock, _fsync_directory, load_token_file, resolve_target, tidy_temp_files
from job.tokens import fingerprint, format_expiry

log = logging.getLogger(__name__)


def run_store_command(settings: Settings, args: argparse.Namespace, out: IO[str]) -> int:
    """``store init|rotate-key`` and ``connections list|import|remove``."""
    store = PostgresStore.from_settings(settings)
    try:
        if args.command == "store":
            if args.store_action == "init":
                version = store.init_schema()
                out.write(f"schema version {version} in {store.describe()}\n")
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


def _iso(at: float | None) -> str | None:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if at is not None else None


def _row(info: ConnectionInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "account_id": info.account_id,
        "access_expires_at": _iso(info.access_expires_at),
        "last_run_at": _iso(info.last_run_at),
        "last_exit_code": info.last_exit_code,
        "next_run_at": _iso(info.next_run_at),
        "lease_holder": info.lease_holder,
        "encrypted": info.encrypted,
        "revoked": info.revoked,
    }


def _list(infos: list[ConnectionInfo], out: IO[str], *, as_json: bool) -> None:
    rows = [_row(info) for info in infos]
    if as_json:
        out.write(json.dumps(rows) + "\n")
        return
    columns = ("name", "account_id", "access_expires_at", "last_run_at", "last_exit_code", "next_run_at",
               "lease_holder")
    table = [[("revoked" if key == "lease_holder" and row["revoked"] and not row[key] else
               "-" if row[key] is None else str(row[key])) for key in columns] for row in rows]
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
    with TokenLock(path, settings.lock_timeout_seconds) as lock:
        tidy_temp_files(path, lock, settings.fallback_rescue_dir)
        tokens = load_token_file(path).tokens
        REDACTOR.add(*tokens.secrets())
        store.import_tokens(name, tokens, force=force)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = resolve_target(path)
        renamed = target.with_name(f"{target.name}.imported-{stamp}")
        try:
            os.rename(target, renamed)
            _fsync_directory(target.parent)
        except OSError as exc:
            raise StorageError(
                f"imported {path} as the connection {name!r}, but could not rename the file ({exc.strerror or exc}): "
                f"move it away now (mv {target} {renamed}), or a run on the old setup would spend the same "
                "refresh token as the store and lock one of them out"
            ) from exc
    kind = "OAuth 1.0a" if tokens.oauth1 is not None else f"refresh token {fingerprint(tokens.refresh_token)}"
    out.write(f"imported {path} as the connection {name!r} ({kind}); the file is now {renamed}\n")


def record_run(settings: Settings, exit_code: int) -> None:
    """Record the outcome of a run of the configured connection (for ``connections list`` and ``run --all``)."""
    try:
        store = PostgresStore.from_settings(settings)
        try:
            store.record_run(settings.connection, exit_code, settings.run_interval_seconds)
        finally:
            store.close()
    except JobError as exc:
        log.warning("could not record the run of the connection %r in the store: %s", settings.connection, exc)


def connection_status(settings: Settings, out: IO[str], *, as_json: bool) -> int:
    """``status`` for a connection in the store: fingerprints, expiry, lease and marker; no network to AWeber."""
    store = PostgresStore.from_settings(settings)
    try:
        view = store.read(settings.connection)
    finally:
        store.close()
    now = time.time()
    info = view.info
    report: dict[str, Any] = {"connection": info.name, "store": store.describe(), **_row(info)}
    warnings: list[str] = []
    tokens = view.tokens
    if tokens is not None:
        REDACTOR.add(*tokens.secrets())
        report["shape"] = tokens.shape
        report["oauth1"] = tokens.oauth1 is not None
        report["access_token_fingerprint"] = fingerprint(tokens.access_token) if tokens.access_token else None
        if tokens.oauth1 is None:
            report["refresh_token_fingerprint"] = fingerprint(tokens.refresh_token)
            report["expires_in_seconds"] = (
                round(tokens.expires_at - now, 1) if tokens.expires_at is not None else None
            )
            report["scope"] = tokens.scope
    if not info.encrypted and not info.revoked:
        warnings.append("the tokens are stored unencrypted: set AWEBER_STORE_KEY, then run aweber-job store rotate-key")
    if view.marker:
        warnings.append(view.marker)
    report["warnings"] = warnings
    if as_json:
        out.write(json.dumps(report, sort_keys=True) + "\n")
    else:
        lines = [f"{'connection:':<15} {info.name} in {store.describe()}"]
        if tokens is not None and tokens.oauth1 is None:
            lines += [
                f"{'shape:':<15} {tokens.shape}",
                f"{'access token:':<15} sha256:{report['access_token_fingerprint']}",
                f"{'refresh token:':<15} sha256:{report['refresh_token_fingerprint']}",
                f"{'access expires:':<15} "
                + (format_expiry(tokens.expires_at, now) if tokens.expires_at is not None else "unknown"),
            ]
        elif tokens is not None:
            lines.append(f"{'shape:':<15} OAuth 1.0a: the tokens do not expire")
        for key in ("account_id", "last_run_at", "last_exit_code", "next_run_at", "lease_holder"):
            if report.get(key) is not None:
                lines.append(f"{key.replace('_', ' ') + ':':<15} {report[key]}")
        lines.append(f"{'encrypted:':<15} {'yes' if info.encrypted else 'no'}")
        if info.revoked:
            lines.append(f"{'revoked:':<15} yes (aweber-job connections remove {info.name})")
        lines += [f"warning:        {w}" for w in warnings]
        out.write("\n".join(lines) + "\n")
    out.flush()
    return EXIT_OK


def revoke_connection(settings: Settings, session: requests.Session) -> int:
    """Revoke the connection's refresh token at AWeber, then mark it revoked in the store (its tokens wiped)."""
    from job.login import revoke_tokens

    store = PostgresStore.from_settings(settings)
    try:
        connection = store.connection(settings.connection)
        opened = connection.open()
        try:
            tokens = opened.tokens
            REDACTOR.add(*tokens.secrets())
            where = f"the connection {settings.connection!r}"
            note = revoke_tokens(settings, session, tokens, where=where, kept=f"{where} was kept in the store")
            store.mark_revoked(settings.connection, fence_of=connection)
        finally:
            connection.close()
    finally:
        store.close()
    log.info(
        "revoked the refresh token %s at AWeber%s and marked the connection %r revoked "
        "(aweber-job connections remove %s deletes it)",
        fingerprint(tokens.refresh_token), note, settings.connection, settings.connection,
    )
    return EXIT_OK


__all__ = ["asdict", "connection_status", "record_run", "revoke_connection", "run_store_command"]
