"""The token file on disk: loading it, the reservation made before a refresh, and the careful save of the
rotated tokens (the reservation, a fresh atomic write, else a rescue file beside it or in the fallback directory).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from job.auth.tokens import MAX_TOKEN_ANSWER_BYTES, MAX_TOKEN_FILE_BYTES, TokenFile, parse_token_file
from job.errors import StorageError, TokenFileError, TokenNotSavedError
from job.logs import utc_stamp
from job.stores.durable import (
    create_temp,
    describe_os_error,
    fsync_directory,
    give_to,
    owner_for,
    resolve_target,
    token_hash,
    unlink_quietly,
    write_all,
    write_file_atomically,
    write_new_file,
)
from job.stores.file.lock import TokenLock

log = logging.getLogger(__name__)

RESCUE_MARK = ".rescue-"
# A file system that turns read-only under a run (ext4 with errors=remount-ro after a disk error) refuses
# the token file, the reservation and the rescue file beside it alike. The last place a rescue file is
# written is then a private directory on another file system, in memory (systemd's RuntimeDirectory, or
# one under /dev/shm; see Settings.fallback_rescue_dir): it lasts until the machine restarts, and the
# next run puts it in place once the token file can be written again.
# A reservation's and a rescue file's name end with (the start of) the hash of the refresh token their
# content replaces, so the next run can tell they hold its successor even when the lock file's record is
# gone or could not be written.
FROM_MARK = ".from-"


# ---- loading ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadedTokens:
    """A token file as read from disk, with what an operator should be warned about."""

    tokens: TokenFile
    path: Path
    size_bytes: int
    mode: int
    owner_uid: int

    @property
    def readable_by_others(self) -> bool:
        return bool(self.mode & 0o077)


def load_token_file(path: Path) -> LoadedTokens:
    """Read and validate the token file; raise TokenFileError (exit 65) saying what and where."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise TokenFileError(
            f"token file {path} does not exist",
            hint="authorize first: aweber-job login, or set AWEBER_TOKEN_FILE",
        ) from None
    except OSError as exc:
        raise TokenFileError(f"cannot open token file {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise TokenFileError(f"token file {path} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(f"token file {path} is not a regular file")
        data = read_at_most(fd, MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise TokenFileError(
            f"token file {path} is {info.st_size} bytes, larger than any token file "
            f"({MAX_TOKEN_FILE_BYTES} bytes at most); is this the right file?"
        )
    tokens = parse_token_file(data, str(path))
    return LoadedTokens(
        tokens=tokens, path=path, size_bytes=len(data), mode=stat.S_IMODE(info.st_mode), owner_uid=info.st_uid
    )


def read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# ---- the reservation ----------------------------------------------------------------------------

def from_suffix(spent: str | None) -> str:
    """The name suffix saying which refresh token (by hash; None: none, a first authorization) is replaced."""
    return f"{FROM_MARK}{(spent or 'login')[:16]}"


class Reservation:
    """A temporary file beside the target, filled and fsynced before the refresh token is spent.

    Proving that the directory takes a file of the needed size (permissions, read-only mounts, a full
    disk, quotas) before the refresh means those failures cost nothing. After the refresh the new
    content is written into the same, already allocated file and renamed over the target.
    """

    def __init__(self, target: Path, fd: int, temp: Path) -> None:
        self.target = target
        self.temp = temp
        self._fd: int | None = fd
        # True once the temporary holds the new content, synced, but could not be renamed (and is kept).
        self.holds_content = False

    @classmethod
    def create(cls, token_file: Path, size_bytes: int, spent: str | None = None) -> Reservation:
        """Reserve ``size_bytes`` beside the token file for the successor of the refresh token hashing to
        ``spent`` (None: a first authorization); raise StorageError (exit 73) when it cannot."""
        target = resolve_target(token_file)
        fd = -1
        temp: Path | None = None
        try:
            fd, temp = create_temp(target, from_suffix(spent))
            # Held until the content is in: a run that finds it while this one lives (say, after the lock file
            # was removed under this run) knows not to touch it and not to refresh.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            give_to(fd, owner_for(target), temp)
            write_all(fd, b" " * size_bytes)
            os.fsync(fd)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            if temp is not None:
                unlink_quietly(temp)
            reason = describe_os_error(exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                reason += f" (it needs {size_bytes} bytes free in {target.parent})"
            raise StorageError(
                f"cannot write a new token file in {target.parent}: {reason}; the refresh token was not used"
            ) from exc
        return cls(target, fd, temp)

    def commit(self, content: bytes) -> None:
        """Write ``content`` into the reserved file and rename it over the target, durably."""
        if self._fd is None:
            raise StorageError(f"the reservation for {self.target} was already used")
        fd, self._fd = self._fd, None
        try:
            write_all(fd, content)
            os.ftruncate(fd, len(content))
            os.fsync(fd)
        except OSError:
            os.close(fd)
            unlink_quietly(self.temp)
            raise
        os.close(fd)
        try:
            os.replace(self.temp, self.target)
        except OSError:
            # The temporary now holds the only copy of the new tokens: keep it. The caller removes it
            # once a copy is saved elsewhere; if none can be, the next run puts it in place.
            self.holds_content = True
            raise
        fsync_directory(self.target.parent)

    def discard(self) -> None:
        """Remove the reserved file without touching the target."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        unlink_quietly(self.temp)


# ---- rescue files -------------------------------------------------------------------------------

def fallback_rescue_directory(path: Path, *, create: bool) -> Path | None:
    """``path``, the private directory for rescue files on another file system, or None when it is missing
    or not safe: it must be a real directory, the job's own, closed to others."""
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        return None
    return path


def fallback_prefix(target: Path) -> str:
    """The start of the fallback rescue files' names for ``target``: a hash of its path, then its name."""

    return f"{hashlib.sha256(os.fsencode(target)).hexdigest()[:16]}-{target.name}{RESCUE_MARK}"


def write_fallback_rescue(target: Path, content: bytes, now: float, spent: str | None, fallback: Path) -> Path:
    """Write a rescue file for ``target`` in the ``fallback`` directory; raise OSError when it cannot."""
    directory = fallback_rescue_directory(fallback, create=True)
    if directory is None:
        raise OSError(errno.EACCES, "not a private directory of the job's own", str(fallback))
    path = directory / f"{fallback_prefix(target)}{utc_stamp(now)}{from_suffix(spent)}"
    write_new_file(path, content)
    return path


def reserve_size_for(loaded_size: int) -> int:
    """Bytes to reserve: the current file plus room for the largest token answer we accept."""
    return loaded_size + MAX_TOKEN_ANSWER_BYTES + 4096


def rescue_path_for(token_file: Path, now: float, spent: str | None = None) -> Path:
    """``<token file>.rescue-<UTC timestamp>.from-<hash>`` in the same directory."""
    target = resolve_target(token_file)
    return target.with_name(f"{target.name}{RESCUE_MARK}{utc_stamp(now)}{from_suffix(spent)}")


def save_rotated_tokens(
    token_file: Path,
    tokens: TokenFile,
    reservation: Reservation | None,
    *,
    lock: TokenLock | None = None,
    spent: str | None = None,
    now: Callable[[], float] = time.time,
    attempts: int = 3,
    fallback: Path | None = None,
) -> None:
    """Save tokens that exist only in memory after a refresh, trying hard not to lose them.

    With ``lock``, first records in it that new tokens arrived (``spent`` is the hash of the refresh
    token they replace, None after ``login``), so the next run recognises whichever file they reach,
    and after the rename that they are saved. Order: the reservation; a fresh atomic write, retried; a
    rescue file beside the token file. Raises TokenNotSavedError (exit 73) with a CRITICAL-grade
    message naming every path tried.
    """
    content = tokens.to_bytes()
    target = resolve_target(token_file)
    new = token_hash(tokens.refresh_token)
    recorded = False
    if lock is not None:
        try:
            lock.record_received(spent, new)
            recorded = True
        except OSError as exc:
            # A stale record could name an older token as live; without one the next run keeps every whole file.
            log.error("cannot record the new tokens in %s (%s); saving them anyway", lock.path, describe_os_error(exc))
            lock.forget_record()
    errors: list[str] = []
    kept: Path | None = None
    if reservation is not None:
        try:
            reservation.commit(content)
        except OSError as exc:
            errors.append(f"{target}: {describe_os_error(exc)}")
            log.error("saving the rotated tokens to %s failed (%s); retrying", target, describe_os_error(exc))
            if reservation.holds_content:
                kept = reservation.temp
        else:
            if lock is not None:
                lock.record_saved(new)
            return
    for attempt in range(attempts):
        try:
            write_file_atomically(target, content, suffix=from_suffix(spent))
        except OSError as exc:
            errors.append(f"{target}: {describe_os_error(exc)}")
            if attempt + 1 < attempts:
                time.sleep(0.2 * (attempt + 1))
        else:
            if kept is not None:
                unlink_quietly(kept)
            if lock is not None:
                lock.record_saved(new)
            return
    rescue = rescue_path_for(token_file, now(), spent)
    try:
        write_new_file(rescue, content, owner_for(target))
        fsync_directory(rescue.parent)
    except OSError as exc:
        if kept is not None and os.path.exists(kept):
            raise TokenNotSavedError(
                f"the refresh succeeded but the new tokens could not be put in place: they are only in {kept}, "
                f"which could not be renamed over {target} ({errors[0].split(': ', 1)[-1]}), and no rescue "
                f"file could be written ({describe_os_error(exc)}). Leave that file alone: once "
                f"{target.parent} is writable again the next run puts it in place (or: mv {kept} {target})"
            ) from exc
        # Nothing beside the token file took the new tokens: the whole file system may have turned read-only.
        written: Path | None = None
        if fallback is not None:
            try:
                written = write_fallback_rescue(target, content, now(), spent, fallback)
            except OSError as fallback_exc:
                log.error("cannot write a rescue file in %s either: %s", fallback, describe_os_error(fallback_exc))
        if written is not None:
            raise TokenNotSavedError(
                f"the refresh succeeded but {target.parent} refused every write ({describe_os_error(exc)}: a file "
                f"system turned read-only?); the new tokens were saved to the rescue file {written}, on another "
                f"file system, in memory: it is gone if the machine restarts. Once {target} can be written again "
                f"the next run puts it in place (or: cp {written} {target})"
            ) from exc
        elsewhere = f" and a rescue file in {fallback}" if fallback is not None else ""
        raise TokenNotSavedError(
            "the refresh succeeded but the new tokens could not be saved anywhere: tried "
            f"{target}, the rescue file {rescue} ({describe_os_error(exc)}){elsewhere}. The old refresh token "
            "may no longer work; free space or fix permissions, then run: aweber-job login"
        ) from exc
    if kept is not None:
        unlink_quietly(kept)
    then = (
        f"once {target} can be written again the next run puts the rescue file in place (or: mv {rescue} {target})"
        if recorded else f"fix the problem, then move the rescue file into place: mv {rescue} {target}"
    )
    raise TokenNotSavedError(
        f"the refresh succeeded but {target} could not be written ({errors[-1].split(': ', 1)[-1]}); "
        f"the new tokens were saved to the rescue file {rescue}. The old refresh token may no longer "
        f"work: {then}"
    )
