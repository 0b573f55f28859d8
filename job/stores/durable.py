"""Atomic durable writes, the one way every file of the job is written (token file, rescue files, task state,
metrics), and the hash that names a refresh token.

A temporary file in the same directory, created 0600 with ``O_CREAT|O_EXCL|O_NOFOLLOW``, written,
fsynced, renamed over the target, then the directory fsynced: a crash at any point leaves the old file
or the new one, never a mix. Only the token file's path may be a symlink (its target is replaced, the
link kept, see :func:`resolve_target`); every other file the job writes is opened without following links.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"
# What CIFS, some FUSE file systems and WSL shares answer to fsync on a directory: the rename is done,
# the file system just cannot promise its durability that way.
UNSYNCABLE_DIRECTORY_ERRNOS = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
_directories_said_unsyncable: set[str] = set()


def resolve_target(path: Path) -> Path:
    """The file a save replaces: a symlinked token path replaces the link's target, keeping the link."""
    return Path(os.path.realpath(path))


def token_hash(refresh_token: str) -> str:
    """The full SHA-256 of a refresh token, as the lock file's record names it (its first 8 hex are the fingerprint)."""

    return hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()


def describe_os_error(exc: OSError) -> str:
    """A short reason for an OSError, with the mount hint where it applies."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EBUSY, errno.EXDEV):
        reason += " — the token file looks like a single-file bind mount: mount the directory, not the file"
    return reason


# ---- ownership ----------------------------------------------------------------------------------

def owner_for(path: Path) -> tuple[int, int] | None:
    """The owner and group a file the job writes at ``path`` keeps: those of the regular file there now,
    else those of its directory. Only root can give a file away, so only a run as root asks; None otherwise.

    ``sudo aweber-job refresh`` over a service user's token file must not leave a root-owned file the
    service cannot read.
    """
    if os.geteuid() != 0:
        return None
    try:
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode):
            return info.st_uid, info.st_gid
    except OSError:
        pass
    try:
        info = os.stat(path.parent)
    except OSError:
        return None
    return info.st_uid, info.st_gid


def give_to(fd: int, owner: tuple[int, int] | None, path: Path) -> None:
    """fchown ``fd`` to ``owner`` when it differs; a refusal is a warning, the save goes on."""
    if owner is None:
        return
    info = os.fstat(fd)
    if (info.st_uid, info.st_gid) == owner:
        return
    try:
        os.fchown(fd, *owner)
    except OSError as exc:
        log.warning(
            "cannot give %s to uid %d, gid %d (%s); it stays owned by uid %d",
            path, owner[0], owner[1], exc.strerror or exc, info.st_uid,
        )


def trusted_owners(target: Path) -> set[int]:
    """Who may own a file the job adopts: the user it runs as, root, and the token file's owner (root and
    that owner could replace the token file itself anyway, so trusting them gives nothing away)."""
    owners = {os.geteuid(), 0}
    try:
        owners.add(os.stat(target).st_uid)
    except OSError:
        pass
    return owners


# ---- writing ------------------------------------------------------------------------------------

def fsync_directory(directory: Path) -> None:
    """fsync ``directory`` so a rename in it is durable; a file system that cannot is warned about once."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in UNSYNCABLE_DIRECTORY_ERRNOS:
            raise
        # The rename already happened: the save stands. Failing the run would only push the new tokens
        # into a rescue file on the same file system, which cannot fsync its directory either.
        if str(directory) not in _directories_said_unsyncable:
            _directories_said_unsyncable.add(str(directory))
            log.warning(
                "the file system of %s cannot fsync a directory (%s): files are renamed into place, but a power "
                "cut right after a save could undo it; a local file system is safer for the token file",
                directory, exc.strerror or exc,
            )
    finally:
        os.close(fd)


def create_temp(target: Path, suffix: str = "") -> tuple[int, Path]:
    """Create ``.<name>.tmp-<random><suffix>`` beside ``target``, 0600 from the start (never chmod later)."""
    for _ in range(10):
        temp = target.with_name(f".{target.name}{TEMP_MARK}{os.urandom(6).hex()}{suffix}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        return fd, temp
    raise FileExistsError(errno.EEXIST, "could not find a free temporary name", str(target.parent))


def write_all(fd: int, content: bytes, offset: int = 0) -> None:
    view = memoryview(content)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def write_new_file(path: Path, content: bytes, owner: tuple[int, int] | None = None) -> None:
    """Create ``path`` 0600 (never over an existing file, never through a link), write ``content`` and fsync
    it; a failure leaves no part of it behind and raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    _fill_and_close(fd, path, content, owner, path)


def _fill_and_close(fd: int, written: Path, content: bytes, owner: tuple[int, int] | None, named: Path, *,
                    mode: int = 0o600) -> None:
    """Give the new file ``fd`` (at ``written``) its owner and mode, write ``content``, fsync and close it; on
    OSError close it, remove ``written`` and raise. ``named``: the path owner errors speak of."""
    try:
        give_to(fd, owner, named)
        if mode != 0o600:
            os.fchmod(fd, mode)
        write_all(fd, content)
        os.fsync(fd)
    except OSError:
        os.close(fd)
        unlink_quietly(written)
        raise
    os.close(fd)


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _replace_durably(temp: Path, target: Path) -> None:
    try:
        os.replace(temp, target)
    except OSError:
        unlink_quietly(temp)
        raise
    fsync_directory(target.parent)


def write_file_atomically(path: Path, content: bytes, *, mode: int = 0o600, suffix: str = "") -> None:
    """Write ``content`` to ``path`` atomically and durably, mode 0600; raise OSError on failure.

    ``path`` itself is replaced: a symlink there is replaced by the file, never followed (callers
    that mean a link's target, as for the token file, resolve it first). Another ``mode`` (only for
    files without secrets, e.g. metrics another user reads) is set exactly, whatever the umask, on
    the still-empty temporary file. Run as root, the file keeps the owner of the one it replaces.
    """
    fd, temp = create_temp(path, suffix)
    _fill_and_close(fd, temp, content, owner_for(path), path, mode=mode)
    _replace_durably(temp, path)

