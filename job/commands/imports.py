"""``connections import``: token files into the PostgreSQL store, one (NAME FILE) or a directory of them (--dir).

Each file is imported under its own lock (a run on the old setup cannot refresh it meanwhile), after putting in
place a save an earlier run could not finish, with the task state a run of that file keeps (found by the run's
own rule, :func:`job.stores.file.store.state_file_of`, or named with ``--state``); then the file is renamed, so
one refresh token is never live in two places. A directory goes in by batches, one statement each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from job.auth.tokens import TokenFile, fingerprint
from job.config import CONNECTION_NAME, CONNECTION_NAME_RULE, Settings
from job.errors import (
    EXIT_CANT_WRITE,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_TEMPORARY,
    EXIT_TOKEN_FILE,
    EXIT_USAGE,
    JobError,
    StorageError,
    TemporaryError,
    TokenFileError,
    UsageError,
)
from job.logs import REDACTOR, utc_stamp
from job.stores.durable import TEMP_MARK, fsync_directory, resolve_target
from job.stores.file.lock import TokenLock
from job.stores.file.recovery import tidy_temp_files
from job.stores.file.store import TaskStateFile, state_file_of
from job.stores.file.tokenfile import RESCUE_MARK, load_token_file
from job.stores.postgres import PostgresStore, StateToImport

log = logging.getLogger(__name__)

# Token files a directory import puts in the store in one statement (one transaction), holding their locks.
BATCH_SIZE = 500
# The exit code of a directory import that refused files: the refusal that most needs a person first
# (as run --all orders them), then a name taken without --force, then what a later try may cure.
REFUSAL_ORDER = (EXIT_CONFIG, EXIT_CANT_WRITE, EXIT_TOKEN_FILE, EXIT_USAGE, EXIT_TEMPORARY)
STATE_SUFFIX = ".state.json"


def _check_name(name: str) -> None:
    if not CONNECTION_NAME.match(name):
        raise UsageError(f"connections import: NAME must be a connection name of {CONNECTION_NAME_RULE}, got {name!r}")


@dataclass(frozen=True)
class _FoundState:
    """A task state to import and the file it came from."""

    value: StateToImport
    path: Path


def _state_for(settings: Settings, token_file: Path, named: Path | None,
               cache: dict[Path, _FoundState | None] | None = None) -> _FoundState | None:
    """The task state that goes in with ``token_file``: the file named (``--state``, replacing a stored one), or
    the one a run of ``token_file`` with these settings keeps, when there is one. Read under the token file's lock.
    """
    task = settings.task
    if named is not None:
        path = Path(os.path.abspath(named))
        if not os.path.lexists(path):
            raise TokenFileError(f"task state file {path} (--state) does not exist")
        return _FoundState(StateToImport(task, TaskStateFile(path).load(), replace=True), path)
    path = state_file_of(token_file, settings, task)
    if cache is not None and path in cache:
        return cache[path]
    found = None
    if os.path.lexists(path):
        found = _FoundState(StateToImport(task, TaskStateFile(path).load()), path)
    if cache is not None:
        cache[path] = found
    return found


def _with_state(found: _FoundState | None, stated: bool) -> str:
    return f" with the state of task {found.value.task} from {found.path}" if found is not None and stated else ""


def _state_kept(name: str, found: _FoundState | None, stated: bool) -> None:
    if found is not None and not stated:
        log.warning("connection '%s' already holds a state of task %s: it was kept, and %s was not imported (name "
                    "it with --state to replace it)", name, found.value.task, found.path)


def import_one(settings: Settings, store: PostgresStore, name: str, path: Path, *, force: bool,
               state_file: Path | None, out: IO[str]) -> None:
    """Put the token file at ``path`` into the store as ``name`` with its task state, then rename it so it is never
    used twice."""
    _check_name(name)
    path = Path(os.path.abspath(path))
    # Taken or refused, an import leaves no lock file of its own beside a file it was given.
    with TokenLock(path, settings.lock_timeout_seconds, remove_if_created=True) as lock:
        tidy_temp_files(path, lock, settings.fallback_rescue_dir)
        tokens = load_token_file(path).tokens
        REDACTOR.add(*tokens.secrets())
        found = _state_for(settings, path, state_file)
        stamp = utc_stamp(time.time())
        target = resolve_target(path)
        state = found.value if found is not None else None
        try:
            stated = store.import_tokens(name, tokens, force=force, state=state)
        except (TemporaryError, StorageError) as exc:
            _after_an_uncertain_import(store, name, tokens, target, stamp, exc)
            stated = _state_held(store, name, state)
        renamed = _unused_name(target, f"{target.name}.imported-{stamp}")
        try:
            _move_durably(target, renamed)
        except OSError as exc:
            raise _not_renamed(path, name, target, renamed, exc) from exc
    _state_kept(name, found, stated)
    out.write(f"imported {path} as the connection {name!r} ({_kind(tokens)}){_with_state(found, stated)}; "
              f"the file is now {renamed}\n")


def _state_held(store: PostgresStore, name: str, state: Any) -> bool:
    """After an import whose answer was lost but whose tokens the store holds: whether it holds the state too. Only
    a message depends on it, so a store that cannot say is taken as not holding it: the file is renamed all the
    same, since the store holds its refresh token."""
    if state is None:
        return False
    try:
        return bool(store.task_state(name, state.task) == state.state)
    except JobError:
        return False


def _kind(tokens: TokenFile) -> str:
    return "OAuth 1.0a" if tokens.oauth1 is not None else f"refresh token {fingerprint(tokens.refresh_token)}"


def _not_renamed(path: Path, name: str, target: Path, renamed: Path, exc: OSError) -> StorageError:
    return StorageError(
        f"imported {path} as the connection {name!r}, but could not rename the file ({exc.strerror or exc}): "
        f"move it away now (mv {target} {renamed}), or a run on the old setup would spend the same "
        "refresh token as the store and lock one of them out"
    )


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
    aside = _move_aside(target, stamp, exc, f"the tokens of {target} as the connection {name!r}")
    raise StorageError(
        f"{exc.message}; the store may or may not have taken the tokens of {target} as the connection {name!r}, so "
        f"the file was moved aside to {aside}, where no run uses it",
        hint=f"once the store answers: aweber-job connections import {name} {aside} --force",
    ) from exc


def _move_aside(target: Path, stamp: str, exc: JobError, what: str) -> Path:
    """Rename ``target`` to ``<name>.import-uncertain-<stamp>``; StorageError saying what to do when it cannot."""
    aside = _unused_name(target, f"{target.name}.import-uncertain-{stamp}")
    try:
        _move_durably(target, aside)
    except OSError as rename_error:
        raise StorageError(
            f"{exc.message}; the store may have taken {what}, and the file could not be moved aside "
            f"({rename_error.strerror or rename_error}): move it away now (mv {target} {aside}) so that the same "
            "refresh token is not used from two places"
        ) from exc
    return aside


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


# ---- a directory ---------------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One token file of a batch, locked and loaded."""

    name: str
    path: Path
    target: Path
    tokens: TokenFile
    found: _FoundState | None


@dataclass
class _Tally:
    """What a directory import did so far: files imported, with state, refused (by exit code)."""

    imported: int = 0
    with_state: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    state_files: dict[Path, int] = field(default_factory=dict)

    def refuse(self, path: Path, exc: JobError) -> None:
        where = "" if str(path) in str(exc) else f"{path}: "
        log.error("%snot imported: %s", where, exc, extra={"exit_code": exc.exit_code})
        self.refused[exc.exit_code] = self.refused.get(exc.exit_code, 0) + 1

    def exit_code(self) -> int:
        for code in REFUSAL_ORDER:
            if code in self.refused:
                return code
        return max(self.refused, default=EXIT_OK)


def token_files_in(directory: Path) -> list[str]:
    """The names of the token files a directory import takes: ``NAME.json``, sorted (every importer locks in one
    order), without task state files (``<task>.state.json``: a run's state beside its token file) and hidden files.
    """
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise TokenFileError(f"cannot read the directory {directory}: {exc.strerror or exc}") from exc
    found = []
    for name in sorted(names):
        if not name.endswith(".json") or name.startswith("."):
            continue
        if name.endswith(STATE_SUFFIX):
            log.info("%s is a task state file, not a token file: it goes in with the token files it belongs to",
                     directory / name)
            continue
        found.append(name)
    return found


def import_dir(settings: Settings, store: PostgresStore, directory: Path, *, force: bool, out: IO[str]) -> int:
    """Import every ``NAME.json`` of ``directory`` as connection NAME, by batches; one line for each file refused.

    Returns 0 when every file went in, else the exit code of the refusal that most needs a person
    (:data:`REFUSAL_ORDER`). A store that fails is raised as it is, once the batch it failed in is settled.
    """
    directory = Path(os.path.abspath(directory))
    if not os.path.isdir(directory):
        raise TokenFileError(f"connections import --dir: {directory} is not a directory")
    names = token_files_in(directory)
    tally = _Tally()
    if not names:
        out.write(f"no token files (NAME.json) in {directory}: nothing imported\n")
        return EXIT_OK
    states: dict[Path, _FoundState | None] = {}
    try:
        for start in range(0, len(names), BATCH_SIZE):
            _import_batch(settings, store, directory, names[start:start + BATCH_SIZE], force=force, out=out,
                          tally=tally, states=states)
    except JobError as exc:
        exc.message = f"{exc.message} (stopped after importing {tally.imported} of {len(names)} token files)"
        raise
    for path, count in tally.state_files.items():
        if count > 1:
            log.info("the task state file %s went in with %d connections: a run of each of their token files with "
                     "these settings reads it; each uses only its own account's lists", path, count)
    refused = sum(tally.refused.values())
    out.write(f"imported {tally.imported} of {len(names)} token files from {directory} "
              f"({tally.with_state} with task state)"
              + (f"; {refused} refused, each named above\n" if refused else "\n"))
    return tally.exit_code()


def _import_batch(settings: Settings, store: PostgresStore, directory: Path, names: Sequence[str], *, force: bool,
                  out: IO[str], tally: _Tally, states: dict[Path, _FoundState | None]) -> None:
    """One batch: lock every file, list the directory once (under the locks), tidy and load each, one statement
    for the new connections, then the renames and one fsync of each directory."""
    # The batch's secrets are masked in every line until it ends: a line then costs the batch's, not every file's.
    with REDACTOR.scope(), contextlib.ExitStack() as locks:
        locked: list[tuple[str, Path, TokenLock]] = []
        for file_name in names:
            path = directory / file_name
            try:
                _check_name(file_name[:-len(".json")])
                lock = TokenLock(path, settings.lock_timeout_seconds, remove_if_created=True)
                lock.acquire()
            except JobError as exc:
                tally.refuse(path, exc)
                continue
            locks.push(lock)
            locked.append((file_name[:-len(".json")], path, lock))
        # Listed once all are locked: no run of these files can leave a temporary or rescue file after this.
        listing = [name for name in os.listdir(directory) if TEMP_MARK in name or RESCUE_MARK in name]
        entries: list[_Entry] = []
        for name, path, lock in locked:
            target = resolve_target(path)
            try:
                tidy_temp_files(path, lock, settings.fallback_rescue_dir,
                                listing=listing if target.parent == directory else None)
                tokens = load_token_file(path).tokens
                REDACTOR.add(*tokens.secrets())
                entries.append(_Entry(name, path, target, tokens, _state_for(settings, path, None, states)))
            except JobError as exc:
                tally.refuse(path, exc)
        if entries:
            _store_batch(store, entries, force=force, out=out, tally=tally)


def _store_batch(store: PostgresStore, entries: list[_Entry], *, force: bool, out: IO[str], tally: _Tally) -> None:
    stamp = utc_stamp(time.time())
    batch = [(e.name, e.tokens, e.found.value if e.found is not None else None) for e in entries]
    try:
        added = store.import_many(batch)
    except (TemporaryError, StorageError) as exc:
        added = _after_an_uncertain_batch(store, entries, stamp, exc)
    done: list[tuple[_Entry, bool]] = []
    try:
        for entry in entries:
            if entry.name in added:
                done.append((entry, entry.found is not None))
            elif not force:
                tally.refuse(entry.path, UsageError(
                    f"connection '{entry.name}' is already in the store {store.description}; its tokens were left "
                    "as they are and the file stays (import again with --force to replace them)"))
            else:
                try:
                    done.append((entry, _replace(store, entry, stamp)))
                except JobError as exc:  # that file's refusal (kept, or moved aside, as the error says)
                    tally.refuse(entry.path, exc)
    finally:
        # The files the store took are renamed whatever else happened: none may stay live beside the store's copy.
        _rename_batch(done, stamp, out, tally)


def _replace(store: PostgresStore, entry: _Entry, stamp: str) -> bool:
    """``--force`` for a name the store holds: its tokens (and state) replaced; whether the state went in."""
    state = entry.found.value if entry.found is not None else None
    try:
        stated = store.import_tokens(entry.name, entry.tokens, force=True, state=state)
    except (TemporaryError, StorageError) as exc:
        _after_an_uncertain_import(store, entry.name, entry.tokens, entry.target, stamp, exc)
        stated = _state_held(store, entry.name, state)
    _state_kept(entry.name, entry.found, stated)
    return stated


def _after_an_uncertain_batch(store: PostgresStore, entries: list[_Entry], stamp: str, exc: JobError) -> set[str]:
    """The answer to a batch's statement never came. It is one transaction: when every name of the batch is in the
    store now, it committed, and the names holding these very tokens are the ones it added. When one is missing, it
    did not: the error is raised, every file stays. When the store cannot be asked, every file is moved aside."""
    try:
        held, present = store.holding([(entry.name, entry.tokens) for entry in entries])
    except JobError:
        stuck = 0
        for entry in entries:
            try:
                aside = _move_aside(entry.target, stamp, exc, f"the tokens of {entry.target}")
            except StorageError as not_moved:  # it says which file and how to move it by hand
                log.error("%s", not_moved.message)
                stuck += 1
                continue
            log.error("%s moved aside to %s: once the store answers, import it: aweber-job connections import %s %s "
                      "--force", entry.target, aside, entry.name, aside)
        raise StorageError(
            f"{exc.message}; the store may or may not have taken the {len(entries)} token files of this batch, so "
            "each was moved aside, as named above, where no run uses it"
            + (f" ({stuck} could not be moved: move them away by hand, as named above)" if stuck else "")
        ) from exc
    if any(entry.name not in present for entry in entries):
        raise exc
    log.info("the store's answer to an import of %d token files was lost, but it holds them", len(held))
    return held


def _rename_batch(done: list[tuple[_Entry, bool]], stamp: str, out: IO[str], tally: _Tally) -> None:
    """Rename every file the store took; then one fsync of each directory makes the renames durable."""
    renamed: dict[Path, list[tuple[_Entry, bool, Path]]] = {}
    for entry, stated in done:
        to = _unused_name(entry.target, f"{entry.target.name}.imported-{stamp}")
        try:
            os.rename(entry.target, to)
        except OSError as exc:
            tally.refuse(entry.path, _not_renamed(entry.path, entry.name, entry.target, to, exc))
            continue
        renamed.setdefault(entry.target.parent, []).append((entry, stated, to))
    for parent, files in renamed.items():
        try:
            fsync_directory(parent)
        except OSError as exc:
            for entry, _, to in files:
                tally.refuse(entry.path, StorageError(
                    f"imported {entry.path} as the connection {entry.name!r} and renamed it to {to}, but the rename "
                    f"could not be made durable ({exc.strerror or exc}): a power cut now could bring the file back; "
                    "run sync, and remove it if it comes back"))
            continue
        for entry, stated, to in files:
            tally.imported += 1
            if stated and entry.found is not None:
                tally.with_state += 1
                tally.state_files[entry.found.path] = tally.state_files.get(entry.found.path, 0) + 1
            out.write(f"imported {entry.path} as the connection {entry.name!r} ({_kind(entry.tokens)})"
                      f"{_with_state(entry.found, stated)}; the file is now {to}\n")
