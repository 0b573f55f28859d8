"""Rescue files of the PostgreSQL store: where new tokens go when the database will not take them.

Before a refresh is sent, room for a rescue file must be held (a placeholder written and fsynced) in the
first private directory that takes it: ``<state dir>/rescue``, else one in memory on another file
system (systemd's ``RUNTIME_DIRECTORY`` or ``/dev/shm/aweber-job-<uid>``, see
:func:`job.config.load_settings`). Nowhere: exit 73, nothing sent. The room is a hidden file
``.reserve-<random>``, held (``flock``) by one database connection of the process and used for one
refresh after another: proven once, it costs a connection nothing more. When a save fails after a
refresh the new tokens go into it, and it is renamed to

    <connection as a file-name part>.<UTC stamp>.from-<hash16 of the token they follow>.json

A long name is cut in the file name (file systems hold 255 bytes), so the file also carries the whole
name, and the hash of the token it follows, inside (:data:`RESCUE_NAME_KEY`, :data:`RESCUE_FOLLOWS_KEY`):
every valid name is found again by ``run --all``, and a reserved file a killed process filled but could
not rename is named rightly by the next run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from job.auth.tokens import MAX_TOKEN_ANSWER_BYTES, TokenFile, parse_token_file
from job.errors import StorageError, TokenFileError
from job.stores.durable import fsync_directory, write_file_atomically
from job.stores.postgres.common import RESCUE_DIRECTORY, file_safe, name_from_file_safe

log = logging.getLogger(__name__)

RESCUE_NAME_KEY = "aweber_job_connection"
RESCUE_FOLLOWS_KEY = "aweber_job_follows"
RESCUE_NAME = re.compile(r"^([A-Za-z0-9_%~-]+)\.(\d{8}T\d{6}(?:\.\d+)?Z)\.from-([0-9a-f]{16})\.json$")
# The room a process holds for rescue files (left behind only by a process that was killed).
RESERVED = re.compile(r"^\.reserve-[0-9a-f]{12}$")
# Room for the tokens a rescue file holds beyond the largest token answer the job accepts.
RESERVE_EXTRA_BYTES = 16 * 1024


@dataclass(frozen=True)
class Found:
    """One rescue file: its stamp (for order), path, and the start of the hash of the token it follows."""

    stamp: str
    path: Path
    from16: str


def rescue_directories(state_dir: Path, fallback: Path | None) -> list[Path]:
    """Where rescue files go, in order of preference (the second in memory, on another file system)."""
    directories = [state_dir / RESCUE_DIRECTORY]
    if fallback is not None:
        directories.append(fallback / RESCUE_DIRECTORY)
    return directories


def private_directory(path: Path) -> Path:
    """``path`` made (0700) or checked: a real directory of this user, closed to others. One of the user's own
    that others may enter is closed (with a warning); anything else raises OSError saying why."""
    try:
        os.makedirs(path.parent, mode=0o700, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory (a link, or a file)", str(path))
    if info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"owned by uid {info.st_uid}, not by this user", str(path))
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700, follow_symlinks=False)
        log.warning("rescue directory %s was open to others (mode %04o); closed it (0700): rescue files hold live "
                    "tokens", path, stat.S_IMODE(info.st_mode))
    return path


def rescue_document(tokens: TokenFile, name: str, spent: str) -> TokenFile:
    """The tokens as a rescue file holds them: with the whole connection name, and what they follow, inside."""
    return TokenFile(document={**tokens.document, RESCUE_NAME_KEY: name, RESCUE_FOLLOWS_KEY: spent[:16]},
                     nested=tokens.nested, oauth1=tokens.oauth1)


def without_rescue_name(tokens: TokenFile) -> tuple[TokenFile, str | None]:
    """The tokens without what a rescue file carries about them, and the connection's name (None: not a
    rescue file's)."""
    if RESCUE_NAME_KEY not in tokens.document and RESCUE_FOLLOWS_KEY not in tokens.document:
        return tokens, None
    document = dict(tokens.document)
    name = document.pop(RESCUE_NAME_KEY, None)
    document.pop(RESCUE_FOLLOWS_KEY, None)
    return TokenFile(document=document, nested=tokens.nested, oauth1=tokens.oauth1), \
        name if isinstance(name, str) else None


def needed_bytes(tokens: TokenFile) -> int:
    """Room a rescue file of the successor of ``tokens`` may need."""
    return len(tokens.to_bytes()) + MAX_TOKEN_ANSWER_BYTES + RESERVE_EXTRA_BYTES


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def rescue_name(name: str, spent: str, now: float) -> str:
    return f"{file_safe(name)}.{_stamp(now)}.from-{spent[:16]}.json"


class RescueSlot:
    """Room held for rescue files: a private file of ``size`` bytes, written and fsynced, under ``flock``."""

    def __init__(self, directory: Path, path: Path, fd: int, size: int, others: list[Path]) -> None:
        self.directory = directory
        self.path = path
        self.size = size
        self._fd: int | None = fd
        self._others = others

    def usable(self, size: int) -> bool:
        """Whether the room is still there (its file not removed) and large enough."""
        if self._fd is None or size > self.size:
            return False
        try:
            return os.fstat(self._fd).st_nlink > 0
        except OSError:
            return False

    def discard(self) -> None:
        """Give the room back (the process is done with the database)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def write(self, tokens: TokenFile, name: str, spent: str, now: float) -> Path:
        """Put the new tokens into the room and rename it to their rescue file (else a fresh file in any rescue
        directory); return its path. The room is used up. OSError when no copy could be written anywhere."""
        content = rescue_document(tokens, name, spent).to_bytes()
        file_name = rescue_name(name, spent, now)
        target = self.directory / file_name
        fd, self._fd = self._fd, None
        first: OSError | None = None
        if fd is not None:
            try:
                os.pwrite(fd, content, 0)
                os.ftruncate(fd, len(content))
                os.fsync(fd)
                held, there = os.fstat(fd), os.lstat(self.path)
                if (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino):
                    # Something else stands at the room's name now: renaming it would keep that, not the tokens.
                    raise OSError(errno.ESTALE, "the reserved file was replaced", str(self.path))
                os.rename(self.path, target)
                fsync_directory(self.directory)
                return target
            except OSError as exc:
                first = exc
                log.error("the rescue file %s could not be written in its reserved room (%s); trying a new one",
                          target, exc.strerror or exc)
            finally:
                os.close(fd)
        for directory in [self.directory, *self._others]:
            path = directory / file_name
            try:
                private_directory(directory)
                write_file_atomically(path, content)
            except OSError as exc:
                log.error("cannot write a rescue file in %s either: %s", directory, exc.strerror or exc)
                first = first or exc
                continue
            return path
        raise first or OSError(errno.EIO, "no rescue directory", str(self.directory))


def reserve(directories: list[Path], name: str, size: int) -> RescueSlot:
    """Hold room for rescue files of ``size`` bytes in the first rescue directory that takes it.

    StorageError (73) when none does: the refresh of connection ``name`` is then not sent.
    """
    refused: list[str] = []
    for index, directory in enumerate(directories):
        path = directory / f".reserve-{os.urandom(6).hex()}"
        fd = -1
        try:
            private_directory(directory)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(fd, b" " * size, 0)
            os.fsync(fd)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
            reason = exc.strerror or str(exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                reason += f" (it needs {size} bytes)"
            refused.append(f"{directory} ({reason})")
            continue
        if refused:
            log.warning("the rescue directory %s cannot take a file; a rescue would go to %s, in memory (lost if the "
                        "machine restarts)", refused[0], directory)
        return RescueSlot(directory, path, fd, size, directories[index + 1:])
    raise StorageError(
        f"no rescue file could be reserved for connection '{name}' (tried {', '.join(refused)}): if the store "
        "refused the save after the refresh, the new tokens would be lost; the refresh token was not sent",
        hint="make the state directory writable (AWEBER_STATE_DIR), or free space in it",
    )


def find(directories: list[Path], name: str) -> list[Found]:
    """The rescue files of connection ``name`` in every rescue directory, oldest first.

    A reservation whose process died after it wrote the tokens but before the rename is renamed now;
    one that holds only its placeholder is removed. OSError when a directory exists but cannot be read.
    """
    safe = file_safe(name)
    found: list[Found] = []
    for directory in directories:
        try:
            entries = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue  # nothing there can hold a rescue file
        for entry in entries:
            if RESERVED.match(entry):
                entry = _settle_left_reservation(directory, entry) or ""
            match = RESCUE_NAME.match(entry)
            if match and match.group(1) == safe:
                found.append(Found(match.group(2), directory / entry, match.group(3)))
    return sorted(found, key=lambda item: (item.stamp, str(item.path)))


def names(directories: list[Path]) -> set[str]:
    """The connections this machine holds rescue files for; a cut name is read from inside its file."""
    found: set[str] = set()
    for directory in directories:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue  # none, or unreadable: opening such a connection says which
        for entry in entries:
            if RESERVED.match(entry):  # tidied now: room nobody holds goes, tokens a dead process left are named
                entry = _settle_left_reservation(directory, entry) or ""
            match = RESCUE_NAME.match(entry)
            if not match:
                continue
            name = name_from_file_safe(match.group(1))
            if name is None:
                name = _name_inside(directory / entry)
            if name is not None:
                found.add(name)
    return found


def read(path: Path, name: str) -> TokenFile | None:
    """A rescue file's tokens (without the name inside), or None (with a warning) for one the job did not
    make, cannot read, or that names another connection."""
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            log.warning("rescue file %s is not a 0600 file of this user; left alone", path)
            return None
        tokens, inside = without_rescue_name(parse_token_file(path.read_bytes(), f"rescue file {path}"))
    except (OSError, TokenFileError) as exc:
        log.warning("rescue file %s cannot be read (%s); left alone", path,
                    exc.strerror if isinstance(exc, OSError) else exc)
        return None
    if inside is not None and inside != name:
        log.warning("rescue file %s holds the tokens of another connection; left alone", path)
        return None
    return tokens


def _name_inside(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            value = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    name = value.get(RESCUE_NAME_KEY) if isinstance(value, dict) else None
    return name if isinstance(name, str) else None


def _settle_left_reservation(directory: Path, entry: str) -> str | None:
    """Room some process held: removed when it holds only its placeholder and nobody holds it; renamed to its
    rescue file's name (returned) when a process died after filling it; left alone while its process lives."""
    path = directory / entry
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return None  # its process is alive and may still use it
        content = os.read(fd, 1 << 20).strip()
        info = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        if not content:
            os.unlink(path)
            return None
        value = json.loads(content)
        name = value.get(RESCUE_NAME_KEY) if isinstance(value, dict) else None
        follows = value.get(RESCUE_FOLLOWS_KEY) if isinstance(value, dict) else None
        if not isinstance(name, str) or not isinstance(follows, str) or not re.fullmatch(r"[0-9a-f]{16}", follows):
            return None  # not the job's: left for a person
        target = rescue_name(name, follows, info.st_mtime)
        os.rename(path, directory / target)
    except (OSError, ValueError):
        return None
    return target
