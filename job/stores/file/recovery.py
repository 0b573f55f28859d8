"""What earlier runs left beside the token file, and what the next run under the lock does with it: the
survey of the token directory (temporaries, rescue files, fallback rescue files) and the tidy-up that acts on it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from job.auth.tokens import MAX_TOKEN_FILE_BYTES, TokenFile, parse_token_file
from job.errors import LockBusyError, StorageError, TokenFileError
from job.stores.durable import (
    TEMP_MARK,
    describe_os_error,
    fsync_directory,
    resolve_target,
    token_hash,
    trusted_owners,
    unlink_quietly,
    write_file_atomically,
)
from job.stores.file.lock import Record, TokenLock
from job.stores.file.tokenfile import (
    FROM_MARK,
    RESCUE_MARK,
    fallback_prefix,
    fallback_rescue_directory,
    load_token_file,
    read_at_most,
    reserve_size_for,
)

log = logging.getLogger(__name__)


def _format_time(at: float | None) -> str:
    if at is None:
        return "at an unknown time"

    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _in_use(path: Path) -> bool:
    """Whether a live run holds ``path``'s flock (a reservation it is still filling)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    finally:
        os.close(fd)
    return False


@dataclass(frozen=True)
class FoundFile:
    """A token file, temporary or rescue file the job may adopt; ``tokens`` None: no whole token file in it."""

    path: Path
    kind: str
    tokens: TokenFile | None
    refresh_hash: str | None
    # For a fallback rescue file: the first 16 hex digits of the hash of the refresh token it replaced.
    parent: str | None = None

    @property
    def expires_at(self) -> float | None:
        return self.tokens.expires_at if self.tokens is not None else None

    @property
    def fingerprint(self) -> str:
        return self.refresh_hash[:8] if self.refresh_hash else "none"


@dataclass(frozen=True)
class Untrusted:
    """A file under one of the job's names that the job did not make: ignored, never moved or removed."""

    path: Path
    reason: str


@dataclass
class Survey:
    """What lies beside the token file and what the next run under the lock does with each.

    ``recover`` is put in place of the token file; ``stale`` (whole temporaries with older tokens) and
    ``blank`` (reservations, half-written files) are removed; ``kept`` are whole temporaries left
    alone, each with the reason; ``untrusted`` are ignored. ``note`` is what went wrong before, for a
    warning; ``explanation`` is why AWeber would refuse the token file's refresh token, for exit 77.
    """

    target: Path
    record: Record | None
    current: FoundFile | None
    recover: FoundFile | None = None
    stale: list[FoundFile] = field(default_factory=list)
    blank: list[Path] = field(default_factory=list)
    kept: list[tuple[FoundFile, str]] = field(default_factory=list)
    untrusted: list[Untrusted] = field(default_factory=list)
    rescues: list[FoundFile] = field(default_factory=list)
    # True when the record named the live refresh token and a file here holds it: the rescues are older.
    resolved: bool = False
    # Whole files with other tokens than the token file's that neither the record nor their names place.
    undecided: list[FoundFile] = field(default_factory=list)
    # The record proves the token file's refresh token was spent (its answer arrived and was lost since).
    spent_for_sure: bool = False
    note: str | None = None
    explanation: str | None = None
    directory_mode: int | None = None

    @property
    def directory_writable_by_others(self) -> bool:
        return self.directory_mode is not None and bool(self.directory_mode & 0o022)

    def directory_warning(self) -> str | None:
        if not self.directory_writable_by_others:
            return None
        directory = self.target.parent
        return (
            f"the token file's directory {directory} is writable by group or others (mode {self.directory_mode:04o}): "
            f"another user could plant or remove files there; chmod go-w {directory}"
        )


def _read_found(path: Path, kind: str, owners: set[int]) -> FoundFile | Untrusted:
    """Read a temporary or rescue file without following links, or say why it is not the job's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Untrusted(path, "it is a symbolic link")
        return Untrusted(path, f"it cannot be read ({exc.strerror or exc})")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Untrusted(path, "it is not a regular file")
        if info.st_uid not in owners:
            return Untrusted(path, f"it is owned by uid {info.st_uid}, not by the user the job runs as")
        if stat.S_IMODE(info.st_mode) != 0o600:
            return Untrusted(path, f"its mode is {stat.S_IMODE(info.st_mode):04o}, not 0600")
        # A kill before a reservation's final truncate leaves the content followed by blanks.
        data = read_at_most(fd, reserve_size_for(MAX_TOKEN_FILE_BYTES) + 1).rstrip(b" ")
    except OSError as exc:
        return Untrusted(path, f"it cannot be read ({exc.strerror or exc})")
    finally:
        os.close(fd)
    try:
        tokens = parse_token_file(data, str(path))
    except TokenFileError:
        return FoundFile(path, kind, None, None)
    parent = path.name.rsplit(FROM_MARK, 1)[1] if FROM_MARK in path.name else None
    return FoundFile(path, kind, tokens, token_hash(tokens.refresh_token), parent)


def _read_current(target: Path) -> FoundFile | None:
    """The token file as a FoundFile (tokens None when unreadable), or None when it does not exist."""
    try:
        tokens = load_token_file(target).tokens
    except TokenFileError:
        return FoundFile(target, "token file", None, None) if os.path.lexists(target) else None
    return FoundFile(target, "token file", tokens, token_hash(tokens.refresh_token))


def _fallback_rescues(target: Path, fallback: Path | None) -> list[FoundFile | Untrusted]:
    """The rescue files for ``target`` in the fallback directory, oldest first."""
    directory = fallback_rescue_directory(fallback, create=False) if fallback is not None else None
    if directory is None:
        return []
    prefix = fallback_prefix(target)
    try:
        names = sorted(name for name in os.listdir(directory) if name.startswith(prefix))
    except OSError:
        return []
    found: list[FoundFile | Untrusted] = []
    for name in names:
        found.append(_read_found(directory / name, "rescue file", {os.geteuid()}))
    return found


def survey_token_directory(token_file: Path, record: Record | None, fallback: Path | None = None, *,
                           listing: Sequence[str] | None = None) -> Survey:
    """Decide, by content and the lock file's ``record``, what to do with what lies beside the token file.

    With a record naming the live refresh token (``received``/``saved``) and a file that holds it, that
    file is the live one, and whole temporaries holding other tokens are stale. Otherwise (no record,
    an older version's lock file, or a record no file matches) nothing whole is deleted: a temporary is
    put in place only when its content says it is newer (a later ``expires_at`` than the token file's).
    Modification times are never looked at. Reads only; :func:`tidy_temp_files` acts on the result.
    ``listing``: the names in the token file's directory, listed under its lock (every name that may be a
    temporary or rescue file of it, at least), so an import of many files lists their directory once.
    """
    target = resolve_target(token_file)
    survey = Survey(target=target, record=record, current=_read_current(target))
    temps = _gather(survey, fallback, listing)
    if _settled_by_record(survey, temps) or _settled_by_lineage(survey, temps):
        return survey
    _decide_by_content(survey, temps)
    _tell_what_the_record_says(survey)
    return survey


def _kind_of(target: Path, name: str) -> str | None:
    """Which of the job's files beside ``target`` the name ``name`` is, or None when it is none of them."""
    if name.startswith(f".{target.name}{TEMP_MARK}"):
        return "temporary"
    if name.startswith(f"{target.name}{RESCUE_MARK}"):
        return "rescue file"
    return None


def _gather(survey: Survey, fallback: Path | None, listing: Sequence[str] | None = None) -> list[FoundFile]:
    """Sort what lies beside the token file (and in the fallback directory) into the survey; return the whole
    temporaries."""
    target = survey.target
    try:
        survey.directory_mode = stat.S_IMODE(os.stat(target.parent).st_mode)
        names = sorted(os.listdir(target.parent) if listing is None else listing)
    except OSError:
        names = []
    owners = trusted_owners(target)
    temps: list[FoundFile] = []
    for name in names:
        kind = _kind_of(target, name)
        if kind is None:
            continue
        found = _read_found(target.parent / name, kind, owners)
        if isinstance(found, Untrusted):
            survey.untrusted.append(found)
        elif kind == "rescue file":
            if found.tokens is not None:
                survey.rescues.append(found)
        elif found.tokens is None:
            survey.blank.append(found.path)
        else:
            temps.append(found)
    for found in _fallback_rescues(target, fallback):
        if isinstance(found, Untrusted):
            survey.untrusted.append(found)
        elif found.tokens is not None:
            survey.rescues.append(found)
    return temps


def _current_hash(survey: Survey) -> str | None:
    """The hash of the token file's refresh token, None when it is missing or unreadable."""
    return survey.current.refresh_hash if survey.current is not None else None


def _settled_by_record(survey: Survey, temps: list[FoundFile]) -> bool:
    """Whether the record names the live refresh token and a file here holds it (the survey then says so)."""
    record, current = survey.record, survey.current
    if record is None or record.state not in ("received", "saved"):
        return False
    readable = (current,) if current is not None and current.tokens is not None else ()
    holders = [f for f in (*readable, *temps, *survey.rescues) if f.refresh_hash == record.live]
    if not holders:
        return False
    live = holders[0]
    survey.recover = None if live is current else live
    survey.stale = [t for t in temps if t is not live]
    survey.rescues = [r for r in survey.rescues if r is not live]
    survey.resolved = True
    return True


def _settled_by_lineage(survey: Survey, temps: list[FoundFile]) -> bool:
    """Whether a reservation or rescue file names a refresh token known to be spent (the survey then puts it in
    place).

    A reservation or rescue file names the refresh token its content replaced: when the token file still
    holds that one, or the record says it was being spent, the file holds its successor — whatever the
    record could (not) say, and even if the same failing disk left the token file empty.
    """
    record, current_hash = survey.record, _current_hash(survey)
    spent_known = {h[:16] for h in (current_hash, record.spent if record is not None else None) if h}
    children = [f for f in (*temps, *survey.rescues) if f.parent in spent_known and f.refresh_hash != current_hash]
    if not children:
        return False
    survey.recover = children[-1]
    survey.rescues = [r for r in survey.rescues if r is not survey.recover]
    survey.kept = [(t, "another file holds the successor of the token file's tokens") for t in temps
                   if t is not survey.recover]
    return True


def _newer(found: FoundFile, current: FoundFile) -> bool:
    """Whether a temporary an older version left (no lineage in its name) holds other, newer tokens than the
    token file's."""
    return (
        found.parent is None and found.refresh_hash != current.refresh_hash and found.expires_at is not None
        and current.expires_at is not None and found.expires_at > current.expires_at
    )


def _decide_by_content(survey: Survey, temps: list[FoundFile]) -> None:
    """No record names a file that is here: decide by content, and delete nothing whole."""
    current, record = survey.current, survey.record
    if current is None:
        survey.kept = [(t, "the token file does not exist") for t in temps]
        return
    if current.tokens is None:
        survey.kept = [(t, "the token file cannot be read; it may be all that is left") for t in temps]
        return
    current_hash = current.refresh_hash
    # Temporaries an older version left carry no lineage in their names: newer content wins.
    newer = [t for t in temps if _newer(t, current)]
    survey.recover = max(newer, key=lambda t: t.expires_at or 0.0) if newer else None
    survey.kept = [
        (t, "it is not newer than the token file, and no record in the lock file says which is live")
        for t in temps if t is not survey.recover
    ]
    # Whole files with other tokens that nothing places: older, if the record agrees that the token file
    # holds the tokens last saved; otherwise (no record, or one the token file contradicts: a restore
    # from a backup) one of them may be the live one, and refreshing with the token file's could spend
    # a dead token — which a server may answer by revoking the whole grant.
    agrees = record is not None and current_hash is not None and current_hash in (record.spent, record.live)
    if survey.recover is None and not agrees:
        survey.undecided = [f for f in (*temps, *survey.rescues) if f.refresh_hash != current_hash]


def _tell_what_the_record_says(survey: Survey) -> None:
    """With nothing to put in place, note what the record says went wrong with the token file's refresh token."""
    current, record = survey.current, survey.record
    if survey.recover is None and current is not None and current.tokens is not None and record is not None:
        survey.note, survey.explanation = _what_the_record_tells(record, current)
        survey.spent_for_sure = (
            record.state == "received" and record.spent is not None and record.spent == current.refresh_hash
        )


def _what_the_record_tells(record: Record, current: FoundFile) -> tuple[str | None, str | None]:
    """A warning and an exit-77 explanation for a record whose live token the token file does not hold."""
    who = f"the last run to refresh (pid {record.by or 'unknown'}, {_format_time(record.at)})"
    fp = current.fingerprint
    if record.state == "refreshing" and current.refresh_hash == record.spent:
        return (
            f"{who} was stopped while its refresh of refresh token {fp} was in flight: AWeber may have rotated it "
            "and the answer been lost; if this refresh fails with invalid_grant, that is why",
            f"{who} was stopped while its refresh of this refresh token was in flight, so AWeber most likely "
            "rotated it and the answer, with the new refresh token, was lost",
        )
    if record.state == "refresh-failed" and current.refresh_hash == record.spent:
        return None, f"{who} ended its refresh of this refresh token without new tokens; AWeber may have rotated it"
    if record.state == "received" and current.refresh_hash == record.spent:
        said = (
            f"{who} received new tokens and was killed before writing them (their refresh token was "
            f"{(record.new or '')[:8]})"
        )
        return (
            f"{said}; the token file still holds the spent refresh token {fp}, so this refresh will most likely "
            "fail with invalid_grant",
            f"{said}, so this refresh token was already spent",
        )
    if record.live is not None and current.refresh_hash != record.live:
        live = record.live[:8]
        return (
            f"the token file holds refresh token {fp}, not {live} that {who} last worked with: it was replaced or "
            "restored from a backup since; if this refresh fails with invalid_grant, the file is older than that",
            f"the token file was replaced or restored since {who} worked with refresh token {live}, so it may hold "
            "a spent refresh token",
        )
    return None, None


@dataclass(frozen=True)
class TempCleanup:
    """What :func:`tidy_temp_files` did: the file put in place, if any, how many blanks it removed, and why
    AWeber may refuse the token file's refresh token (for the exit-77 message), if the record says."""

    recovered: Path | None
    removed: int
    explanation: str | None = None
    spent_for_sure: bool = False


def tidy_temp_files(token_file: Path, lock: TokenLock, fallback: Path | None = None, *,
                    listing: Sequence[str] | None = None) -> TempCleanup:
    """Deal with what earlier runs left beside the token file, as :func:`survey_token_directory` decides; call
    only under ``lock``.

    A run killed, or refused by the disk, after writing its new tokens and before renaming them over
    the token file leaves the only copy of the live refresh token in its temporary (or rescue file):
    that file is renamed into place, with a warning. Stale whole temporaries are removed with a warning
    naming each; blank or half-written ones quietly. Files the job did not make are named and left alone.

    Raises StorageError (exit 73) when the live copy cannot be moved into place; a refresh with the
    token file's spent token would only fail.
    """
    if lock.distrust:
        log.warning("%s: its record is not used (another user could have written it)", lock.distrust)
    survey = survey_token_directory(token_file, lock.found, fallback, listing=listing)
    _refuse_files_in_use(survey, lock)
    _warn_about_strangers(survey)
    _refuse_undecided(survey)
    recovered = survey.recover
    if recovered is not None:
        _put_in_place(recovered, survey.target, lock)
    _remove_stale(survey, recovered or survey.current)
    removed = _remove_blanks(survey)
    for kept, reason in survey.kept:
        log.warning(
            "kept %s: it holds a whole token file (refresh token %s) and %s; remove it once you know it is stale",
            kept.path, kept.fingerprint, reason,
        )
    if survey.note:
        log.warning("%s", survey.note)
    return TempCleanup(recovered.path if recovered else None, removed, survey.explanation, survey.spent_for_sure)


def _refuse_files_in_use(survey: Survey, lock: TokenLock) -> None:
    """Raise LockBusyError when a live run still holds a file the tidy-up would move or remove."""
    for path in (*survey.blank, *(f.path for f in (*survey.stale, *(k for k, _ in survey.kept))),
                 *((survey.recover.path,) if survey.recover is not None else ())):
        if _in_use(path):
            raise LockBusyError(
                f"another aweber-job run is saving tokens beside {survey.target} ({path} is in use), although this "
                f"run holds the lock {lock.path}: was the lock file removed while that run held it? Nothing was sent",
                hint="try again when that run has ended; never remove the lock file",
            )


def _warn_about_strangers(survey: Survey) -> None:
    """Warn about a directory others may write to and about files under the job's names it did not make."""
    warning = survey.directory_warning()
    if warning:
        log.warning("%s", warning)
    for untrusted in survey.untrusted:
        log.warning(
            "ignored %s: %s; the job neither uses nor removes files it did not make: look at it, then remove it",
            untrusted.path, untrusted.reason,
        )


def _refuse_undecided(survey: Survey) -> None:
    """Raise StorageError when whole files with other tokens than the token file's cannot be placed."""
    if not survey.undecided:
        return
    target = survey.target
    names = ", ".join(f"{f.path} (refresh token {f.fingerprint})" for f in survey.undecided)
    current = survey.current.fingerprint if survey.current is not None else "none"
    raise StorageError(
        f"cannot tell which file holds the live refresh token: {target} (refresh token {current}) or {names}; "
        "the lock file's record that would say is missing or does not match the token file (deleted, or the "
        "token file restored from a backup?). Nothing was sent to AWeber",
        hint=f"move the newest into place (mv FILE {target}) or remove the ones you know are stale, then run "
        "again; aweber-job status shows each",
    )


def _put_in_place(recovered: FoundFile, target: Path, lock: TokenLock) -> None:
    """Put the file holding the live tokens in place of the token file and record it; StorageError when it cannot."""
    try:
        if recovered.path.parent == target.parent:
            os.replace(recovered.path, target)
            fsync_directory(target.parent)
        else:
            # A fallback rescue file lives on another file system: copy it in, then remove it.
            assert recovered.tokens is not None
            write_file_atomically(target, recovered.tokens.to_bytes())
            unlink_quietly(recovered.path)
    except OSError as exc:
        raise StorageError(
            f"{recovered.path} holds newer tokens than {target}, saved by an interrupted run, and cannot be "
            f"moved into place: {describe_os_error(exc)}; the refresh token was not used",
            hint=f"fix the problem and run again, or move it by hand: mv {recovered.path} {target}",
        ) from exc
    log.warning(
        "put the tokens an interrupted run saved in %s in place of %s (refresh token %s)",
        recovered.path, target, recovered.fingerprint,
    )
    if recovered.refresh_hash is not None:
        lock.record_saved(recovered.refresh_hash)


def _remove_stale(survey: Survey, live: FoundFile | None) -> None:
    """Remove whole temporaries older than the ``live`` file, naming each."""
    for stale in survey.stale:
        try:
            os.unlink(stale.path)
        except OSError as exc:
            log.warning("cannot remove %s: %s", stale.path, exc.strerror or exc)
            continue
        log.warning(
            "removed %s: it held refresh token %s, older than the live one (%s) in %s",
            stale.path, stale.fingerprint, live.fingerprint if live else "unknown", survey.target,
        )


def _remove_blanks(survey: Survey) -> int:
    """Remove the blank and half-written temporaries quietly; return how many went."""
    removed = 0
    for blank in survey.blank:
        try:
            os.unlink(blank)
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d temporary file(s) left beside %s by an interrupted run", removed, survey.target)
    return removed
