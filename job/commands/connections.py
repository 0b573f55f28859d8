"""The commands of the PostgreSQL store: ``store``, ``connections``, and ``status``/``revoke`` on one connection.

Imported only when ``AWEBER_STORE`` is a database URL; the store itself is :mod:`job.stores.postgres`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import requests

from job.auth.tokens import TokenFile, fingerprint, format_expiry
from job.config import Settings
from job.errors import (
    EXIT_OK,
    JobError,
    StorageError,
    TemporaryError,
    TokenFileError,
    TokenNotSavedError,
    UsageError,
)
from job.logs import REDACTOR, one_line
from job.stores.durable import fsync_directory as _fsync_directory
from job.stores.durable import resolve_target
from job.stores.file.lock import TokenLock
from job.stores.file.recovery import tidy_temp_files
from job.stores.file.tokenfile import load_token_file
from job.stores.postgres import ConnectionInfo, PostgresStore

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
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = resolve_target(path)
        try:
            store.import_tokens(name, tokens, force=force)
        except (TemporaryError, StorageError) as exc:
            _after_an_uncertain_import(store, name, tokens, target, stamp, exc)
        renamed = _unused_name(target, f"{target.name}.imported-{stamp}")
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
        os.rename(target, aside)
        _fsync_directory(target.parent)
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


def connection_status(settings: Settings, out: IO[str], *, as_json: bool) -> int:
    """``status`` for a connection in the store: fingerprints, expiry, lease and marker; no network to AWeber."""
    store = PostgresStore.from_settings(settings)
    try:
        view = store.read(settings.connection)
    finally:
        store.close()
    now = time.time()
    info = view.info
    report: dict[str, Any] = {"connection": info.name, "store": store.description, **_row(info)}
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
        lines = [f"{'connection:':<15} {info.name} in {store.description}"]
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
    """Revoke the connection's refresh token at AWeber, then mark it revoked in the store (its tokens wiped).

    Under the connection's lease, so no run refreshes it meanwhile; the mark moves the fence, so a run
    that held it before cannot write the revoked tokens back. The access token is revoked afterwards,
    best effort, as for the token file.
    """
    from job.commands.login import revoke_access_token, revoke_refresh_token

    name = settings.connection
    store = PostgresStore.from_settings(settings)
    try:
        connection = store.connection(name)
        tokens = connection.open().tokens
        try:
            REDACTOR.add(*tokens.secrets())
            where = f"connection '{name}'"
            client = revoke_refresh_token(settings, session, tokens, where=where, kept=f"{where} was kept in the store")
            store.mark_revoked(name)
        finally:
            connection.close()
    finally:
        store.close()
    note = revoke_access_token(settings, session, client, tokens)
    log.info(
        "revoked the refresh token %s at AWeber%s and marked the connection '%s' revoked "
        "(aweber-job connections remove %s deletes it)",
        fingerprint(tokens.refresh_token), note, name, name,
    )
    return EXIT_OK


def login_connection(
    settings: Settings,
    session: requests.Session,
    *,
    code: str | None,
    redirect_uri: str | None,
    scope: str | None,
    force: bool,
    stdin: IO[str],
    stdout: IO[str],
) -> int:
    """``--connection NAME login``: authorize once and put the tokens in the store as NAME.

    As for the token file: an existing connection is replaced only with ``force`` (a revoked one
    always), the store must take writes before the code is spent, and tokens the store then refuses
    go to a 0600 rescue file that ``connections import`` puts in place.
    """
    from job.commands.login import LoginRequest, _login_client, exchange_for_tokens, obtain_code

    name = settings.connection
    store = PostgresStore.from_settings(settings)
    try:
        try:
            view = store.read(name)
        except TokenFileError:
            view = None
        if view is not None and not view.info.revoked and not force:
            raise UsageError(
                f"connection '{name}' is already in the store {store.description}; use --force to replace it "
                f"(that does not revoke its refresh token: aweber-job --connection {name} revoke first ends it)"
            )
        existing = view.tokens if view is not None and force else None
        if existing is not None:
            REDACTOR.add(*existing.secrets())
        client = _login_client(settings, existing)
        request = LoginRequest.parse(client, code=code, redirect_uri=redirect_uri, scope=scope)
        store.check_writable()
        auth_code, verifier = obtain_code(settings, client, request, code=code, stdin=stdin, stdout=stdout)
        _, tokens = exchange_for_tokens(
            settings, session, client, auth_code, redirect=request.redirect, verifier=verifier,
            scope=request.scope, existing=existing,
        )
        try:
            store.put_tokens(name, tokens, replace=view is not None)
        except JobError as exc:
            raise _login_rescue(settings, name, tokens, exc) from exc
    finally:
        store.close()
    log.info(
        "authorized: connection '%s' in the store %s; refresh token %s, access token expires %s",
        name, store.description, fingerprint(tokens.refresh_token), format_expiry(tokens.expires_at, time.time()),
        extra={"refresh_token_after": fingerprint(tokens.refresh_token), "expires_at": tokens.expires_at},
    )
    stdout.write(
        f"\nAuthorized. Connection '{name}' in {store.description} ({tokens.shape} shape, "
        f"{'encrypted' if settings.store_keys else 'NOT encrypted: set AWEBER_STORE_KEY'}).\n"
        f"  refresh token {fingerprint(tokens.refresh_token)}, access token {fingerprint(tokens.access_token)} "
        f"expires {format_expiry(tokens.expires_at, time.time())}\n"
        f"Next: aweber-job --connection {name} run   (or run --all for every due connection)\n"
    )
    stdout.flush()
    return EXIT_OK


def _login_rescue(settings: Settings, name: str, tokens: TokenFile, cause: JobError) -> TokenNotSavedError:
    """Keep the tokens of an authorization the store refused in a 0600 rescue file, and say how to import it."""
    from job.stores.durable import write_file_atomically
    from job.stores.postgres import RESCUE_DIRECTORY, file_safe

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = settings.state_dir / RESCUE_DIRECTORY / f"{file_safe(name)}.{stamp}.login.json"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_file_atomically(path, tokens.to_bytes())
    except OSError as exc:
        return TokenNotSavedError(
            f"authorized, but the store did not take the tokens of connection '{name}' ({cause.message}) and the "
            f"rescue file {path} could not be written ({exc.strerror or exc}); run the login again once the store "
            "takes writes"
        )
    return TokenNotSavedError(
        f"authorized, but the store did not take the tokens of connection '{name}' ({cause.message}); they were "
        f"saved to the rescue file {path}. Once the store takes writes: aweber-job connections import {name} {path}"
        + " (with --force if the connection is there)"
    )
