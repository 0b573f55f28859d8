"""Rescue files of the PostgreSQL store: where new tokens go when the database will not take them.

Before a refresh is sent, room for its rescue file is reserved (a placeholder written and fsynced) in
the first private directory that takes it: ``<state dir>/rescue``, else one in memory on another file
system (systemd's ``RUNTIME_DIRECTORY`` or ``/dev/shm/aweber-job-<uid>``, see
:func:`job.config.load_settings`). Nowhere: exit 73, nothing sent. After the refresh the save either
succeeds (the reservation is removed) or the new tokens go into that reserved file, renamed to

    <connection as a file-name part>.<UTC stamp>.from-<hash16 of the token they follow>.json

A long name is cut in the file name (file systems hold 255 bytes), so the file also carries the whole
name inside, under :data:`RESCUE_NAME_KEY`: every valid name is found again by ``run --all``.
"""

from __future__ import annotations

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

from job.errors import StorageError, TokenFileError
from job.pgstore.common import RESCUE_DIRECTORY, file_safe, name_from_file_safe
from job.store import Reservation, reserve_size_for, write_file_atomically
from job.tokens import TokenFile, parse_token_file

log = logging.getLogger(__name__)

RESCUE_NAME_KEY = "aweber_job_connection"
RESCUE_NAME = re.compile(r"^([A-Za-z0-9_%~-]+)\.(\d{8}T\d{6}(?:\.\d+)?Z)\.from-([0-9a-f]{16})\.json$")
# A reservation left by a process killed before it used it: ".<rescue name>.tmp-<12 hex>.from-<hash16>".
LEFT_RESERVATION = re.compile(r"^\.(.+\.json)\.tmp-[0-9a-f]{12}\.from-[0-9a-f]{16}$")


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


def rescue_document(tokens: TokenFile, name: str) -> TokenFile:
    """The tokens as a rescue file holds them: with the whole connection name inside."""
    return TokenFile(document={**tokens.document, RESCUE_NAME_KEY: name}, nested=tokens.nested,
                     oauth1=tokens.oauth1)


def without_rescue_name(tokens: TokenFile) -> tuple[TokenFile, str | None]:
    """The tokens without the name a rescue file carries, and that name (None: not a rescue file's)."""
    if RESCUE_NAME_KEY not in tokens.document:
        return tokens, None
    document = dict(tokens.document)
    name = document.pop(RESCUE_NAME_KEY)
    return TokenFile(document=document, nested=tokens.nested, oauth1=tokens.oauth1), \
        name if isinstance(name, str) else None


class RescueSlot:
    """Room reserved for one refresh's rescue file, proven before the refresh token is sent."""

    def __init__(self, reservation: Reservation, directory: Path, others: list[Path]) -> None:
        self._reservation = reservation
        self.directory = directory
        self._others = others

    @property
    def path(self) -> Path:
        return self._reservation.target

    def discard(self) -> None:
        """The save succeeded (or nothing was sent): the room is given back."""
        self._reservation.discard()

    def write(self, tokens: TokenFile, name: str) -> Path:
        """Put the new tokens into the reserved file (else a fresh file in any rescue directory); its path.

        Raises OSError when no copy could be written anywhere.
        """
        content = rescue_document(tokens, name).to_bytes()
        try:
            self._reservation.commit(content)
            return self.path
        except OSError as exc:
            first = exc
            log.error("the reserved rescue file %s could not be written (%s); trying a new one", self.path,
                      exc.strerror or exc)
        for directory in [self.directory, *self._others]:
            path = directory / self.path.name
            try:
                private_directory(directory)
                write_file_atomically(path, content)
            except OSError as exc:
                log.error("cannot write a rescue file in %s either: %s", directory, exc.strerror or exc)
                continue
            return path
        raise first


def reserve(directories: list[Path], name: str, tokens: TokenFile, spent: str, now: float) -> RescueSlot:
    """Reserve room for the rescue file of a refresh from the token hashing to ``spent``.

    StorageError (73) when no rescue directory takes it: the refresh token is then not sent.
    """
    stamp = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    file_name = f"{file_safe(name)}.{stamp}.from-{spent[:16]}.json"
    size = reserve_size_for(len(rescue_document(tokens, name).to_bytes()))
    refused: list[str] = []
    for index, directory in enumerate(directories):
        try:
            private_directory(directory)
            reservation = Reservation.create(directory / file_name, size, spent)
        except (OSError, StorageError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            refused.append(f"{directory} ({reason})")
            continue
        if refused:
            log.warning("the rescue directory %s cannot take a file; a rescue would go to %s, in memory (lost if the "
                        "machine restarts)", refused[0], directory)
        return RescueSlot(reservation, directory, directories[index + 1:])
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
            left = LEFT_RESERVATION.match(entry)
            if left:
                entry = _settle_left_reservation(directory, entry, left.group(1)) or ""
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
            left = LEFT_RESERVATION.match(entry)
            if left:  # tidied now: a placeholder nobody holds goes, tokens a dead process left are named
                entry = _settle_left_reservation(directory, entry, left.group(1)) or ""
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


def _settle_left_reservation(directory: Path, entry: str, target: str) -> str | None:
    """A reservation some process left: removed when it holds only its placeholder and nobody holds it;
    renamed to its rescue name (returned) when it holds tokens; left alone while its process lives."""
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
    finally:
        os.close(fd)
    try:
        if not content:
            os.unlink(path)
            return None
        os.rename(path, directory / target)
    except OSError:
        return None
    return target
