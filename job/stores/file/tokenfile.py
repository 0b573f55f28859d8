"""The token file on disk: the lock and its record, loading, the reservation, atomic durable saves,
and putting in place the new tokens of a save an earlier run could not finish.

Every write of the job (token file, rescue file, task state, metrics) goes through
:func:`write_file_atomically` or a :class:`Reservation`: a temporary file in the same directory,
created 0600 with ``O_CREAT|O_EXCL|O_NOFOLLOW``, written, fsynced, renamed over the target, then the
directory fsynced. A crash at any point leaves the old file or the new one, never a mix. Only the
token file's path may be a symlink (its target is replaced, the link kept); every other file the job
writes is opened without following links.

Which file holds the live refresh token is decided by content, never by modification times: the lock
file holds a one-line record of the last refresh (see :class:`Record` and docs/design.md), written
under the lock before the request is sent, when the answer arrives (before its tokens are written
anywhere) and after the rename.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from job.auth.tokens import MAX_TOKEN_ANSWER_BYTES, MAX_TOKEN_FILE_BYTES, TokenFile, parse_token_file
from job.errors import LockBusyError, StorageError, TokenFileError, TokenNotSavedError

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"
RESCUE_MARK = ".rescue-"
LOCK_POLL_SECONDS = 0.1
# The lock file holds one short line; anything longer is not ours and is not read further.
MAX_LOCK_FILE_BYTES = 4096
# What CIFS, some FUSE file systems and WSL shares answer to fsync on a directory: the rename is done,
# the file system just cannot promise its durability that way.
UNSYNCABLE_DIRECTORY_ERRNOS = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
_directories_said_unsyncable: set[str] = set()
# A file system that turns read-only under a run (ext4 with errors=remount-ro after a disk error) refuses
# the token file, the reservation and the rescue file beside it alike. The last place a rescue file is
# written is then a private directory on another file system, in memory (systemd's RuntimeDirectory, or
# one under /dev/shm; see Settings.fallback_rescue_dir): it lasts until the machine restarts, and the
# next run puts it in place once the token file can be written again.
# A reservation's and a rescue file's name end with (the start of) the hash of the refresh token their
# content replaces, so the next run can tell they hold its successor even when the lock file's record is
# gone or could not be written.
FROM_MARK = ".from-"


def resolve_target(path: Path) -> Path:
    """The file a save replaces: a symlinked token path replaces the link's target, keeping the link."""
    return Path(os.path.realpath(path))


def lock_path_for(path: Path) -> Path:
    """``<token file>.lock``, beside the real file, so a link and its target share one lock."""
    target = resolve_target(path)
    return target.with_name(target.name + ".lock")


def token_hash(refresh_token: str) -> str:
    """The full SHA-256 of a refresh token, as the lock file's record names it (its first 8 hex are the fingerprint)."""
    import hashlib  # on use: `status` and `--help` start faster without it

    return hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()


def _describe_os_error(exc: OSError) -> str:
    """A short reason for an OSError, with the mount hint where it applies."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EBUSY, errno.EXDEV):
        reason += " — the token file looks like a single-file bind mount: mount the directory, not the file"
    return reason


def _format_time(at: float | None) -> str:
    if at is None:
        return "at an unknown time"
    from datetime import datetime, timezone

    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- ownership ----------------------------------------------------------------------------------

def _owner_for(path: Path) -> tuple[int, int] | None:
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


def _give_to(fd: int, owner: tuple[int, int] | None, path: Path) -> None:
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


def _trusted_owners(target: Path) -> set[int]:
    """Who may own a file the job adopts: the user it runs as, root, and the token file's owner (root and
    that owner could replace the token file itself anyway, so trusting them gives nothing away)."""
    owners = {os.geteuid(), 0}
    try:
        owners.add(os.stat(target).st_uid)
    except OSError:
        pass
    return owners


# ---- the lock and its record -------------------------------------------------------------------

RECORD_STATES = ("refreshing", "refresh-failed", "received", "saved")


@dataclass(frozen=True)
class Record:
    """The lock file's record of the last refresh, kept with the holder's pid on one JSON line.

    ``{"pid", "state", "from", "to", "by", "at"}``: ``pid`` is the run holding (or last holding) the
    lock; ``by`` and ``at`` are the run that recorded the state and when; ``from``/``to`` are the full
    SHA-256 hex of refresh tokens (never a token):

    - ``refreshing`` from X: a refresh with X is being sent; nothing has come back yet;
    - ``refresh-failed`` from X: that refresh ended without new tokens (the answer may have been lost);
    - ``received`` X -> N: an answer with N arrived; written before N is written anywhere;
    - ``saved`` N: the token file holds N.

    ``from`` is null for ``login``, which spends no refresh token.
    """

    state: str
    spent: str | None = None
    new: str | None = None
    by: int | None = None
    at: float | None = None

    @property
    def live(self) -> str | None:
        """The hash of the refresh token this record says is the live one."""
        return self.new if self.state in ("received", "saved") else self.spent

    def line(self, holder: int, now: float) -> bytes:
        """The lock file's line: ``holder`` holds the lock; a record made now is by it and dated ``now``."""
        document: dict[str, object] = {"pid": holder, "state": self.state}
        if self.spent is not None:
            document["from"] = self.spent
        if self.new is not None:
            document["to"] = self.new
        document["by"] = self.by if self.by is not None else holder
        document["at"] = self.at if self.at is not None else round(now, 3)
        return (json.dumps(document, separators=(", ", ": ")) + "\n").encode("ascii")


def _is_hash(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def parse_lock_file(data: bytes) -> tuple[int | None, Record | None]:
    """The holder's pid and the record in a lock file's bytes; a bare ``<pid>`` line (older versions) has no record."""
    first = data.split(b"\n", 1)[0].strip()
    if first.isdigit():
        return int(first), None
    try:
        document = json.loads(first.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, None
    if not isinstance(document, dict):
        return None, None
    raw_pid = document.get("pid")
    pid = raw_pid if isinstance(raw_pid, int) and not isinstance(raw_pid, bool) and raw_pid > 0 else None
    state = document.get("state")
    spent, new, at = document.get("from"), document.get("to"), document.get("at")
    if state not in RECORD_STATES or (spent is not None and not _is_hash(spent)) or (
        new is not None and not _is_hash(new)
    ):
        return pid, None
    needed = spent if state in ("refreshing", "refresh-failed") else new
    if needed is None:
        return pid, None
    when = float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None
    raw_by = document.get("by")
    by = raw_by if isinstance(raw_by, int) and not isinstance(raw_by, bool) and raw_by > 0 else pid
    return pid, Record(state=str(state), spent=spent, new=new, by=by, at=when)


def _record_distrust(info: os.stat_result, path: Path, target: Path) -> str | None:
    """Why a lock file's record cannot be trusted (another user could have written it), or None."""
    if info.st_uid not in _trusted_owners(target):
        return f"the lock file {path} is owned by uid {info.st_uid}, not by the user the job runs as"
    if info.st_mode & 0o022:
        return f"the lock file {path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def read_record(token_file: Path) -> tuple[int | None, Record | None, str | None]:
    """The lock file's pid and record, read without the lock (for ``status``), and why the record is not trusted."""
    path = lock_path_for(token_file)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None, None, None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, None, f"the lock file {path} is not a regular file"
        pid, record = parse_lock_file(os.pread(fd, MAX_LOCK_FILE_BYTES, 0))
    except OSError:
        return None, None, None
    finally:
        os.close(fd)
    problem = _record_distrust(info, path, resolve_target(token_file))
    return pid, (None if problem else record), problem


class TokenLock:
    """An exclusive ``flock`` on ``<token file>.lock`` held for the whole run, and the record kept in it.

    The kernel releases the lock when the process dies, so there is no stale-lock eviction. The file
    holds one line: the holder's pid (so a waiting run can name it) and the record of the last refresh
    (:class:`Record`), which the next run reads under the lock to tell which file holds the live
    refresh token. It is opened without following links and, unless made with ``remove_if_created``
    (:meth:`remove_if_created`), never deleted.
    """

    def __init__(
        self,
        token_file: Path,
        timeout_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        remove_if_created: bool = False,
    ) -> None:
        self.path = lock_path_for(token_file)
        self._target = resolve_target(token_file)
        self.timeout_seconds = timeout_seconds
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._fd: int | None = None
        # The record as found when the lock was taken (None: none, an older version's, or not trusted).
        self.found: Record | None = None
        self.distrust: str | None = None
        self._current: Record | None = None
        self._before_refresh: Record | None = None
        # Whether the file last opened (the one held, once acquired) was created by this lock.
        self.created = False
        self._remove_if_created = remove_if_created

    def _open(self) -> int:
        nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
        self.created = False
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
        except FileExistsError:
            existing = self._open_existing(nofollow)
            if existing is None:
                # Removed since it was seen (a holder that made it removes it on release): make it anew.
                return self._open()
            fd = existing
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise TokenFileError(
                    f"token file directory {self.path.parent} does not exist",
                    hint="check AWEBER_TOKEN_FILE, or authorize first: aweber-job login",
                ) from exc
            raise StorageError(
                f"cannot create the lock file {self.path}: {_describe_os_error(exc)}; nothing was sent to AWeber"
            ) from exc
        else:
            self.created = True
            _give_to(fd, _owner_for(self._target), self.path)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StorageError(f"the lock file {self.path} is not a regular file; nothing was sent to AWeber")
        return fd

    def _open_existing(self, flags: int) -> int | None:
        """The existing lock file opened, or None when it is gone."""
        try:
            return os.open(self.path, os.O_RDWR | flags)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            if exc.errno == errno.ELOOP:
                raise StorageError(
                    f"the lock file {self.path} is a symbolic link; the job does not follow links for the files "
                    "it writes; nothing was sent to AWeber",
                    hint=f"remove it: rm {self.path}",
                ) from exc
            # A read-only directory can still be locked through an existing lock file.
            try:
                return os.open(self.path, os.O_RDONLY | flags)
            except FileNotFoundError:
                return None
            except OSError:
                raise StorageError(
                    f"cannot open the lock file {self.path}: {_describe_os_error(exc)}; nothing was sent to AWeber"
                ) from exc

    def holder_pid(self) -> int | None:
        """The pid written by the current holder, if readable."""
        pid, _, _ = read_record(self._target)
        return pid

    def acquire(self) -> None:
        """Take the lock, waiting up to the timeout; raise LockBusyError (exit 75) naming the holder."""
        fd = self._open()
        deadline = self._clock() + self.timeout_seconds
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if self._still_the_lock_file(fd):
                    break
                # Removed or replaced since it was opened (by hand, or by a cleanup): a lock on a file no
                # longer at the path excludes nobody. Lock whatever is there now.
                os.close(fd)
                fd = self._open()
                continue
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise StorageError(f"cannot lock {self.path}: {_describe_os_error(exc)}") from exc
            pid = self.holder_pid()
            holder = f"pid {pid}" if pid else "another process"
            if self._clock() >= deadline:
                os.close(fd)
                raise LockBusyError(
                    f"another aweber-job run ({holder}) holds the lock {self.path}; "
                    f"gave up after {self.timeout_seconds:g} s",
                    hint="try again later, or raise AWEBER_LOCK_TIMEOUT",
                )
            if not announced:
                log.info(
                    "waiting up to %g s for the lock %s held by %s",
                    self.timeout_seconds, self.path, holder,
                )
                announced = True
            self._sleep(min(LOCK_POLL_SECONDS, max(0.0, deadline - self._clock())))
        self._fd = fd
        try:
            info = os.fstat(fd)
            _, found = parse_lock_file(os.pread(fd, MAX_LOCK_FILE_BYTES, 0))
        except OSError:
            info, found = None, None
        self.distrust = _record_distrust(info, self.path, self._target) if info is not None else None
        self.found = self._current = None if self.distrust else found
        try:
            self._write(self._current, durable=False)  # our pid, the record kept as it was
        except OSError:
            pass  # The pid is only for messages; a read-only lock file still locks.

    def _still_the_lock_file(self, fd: int) -> bool:
        """Whether ``fd`` is the file at the lock path now (same device and inode, not a link)."""
        try:
            held, there = os.fstat(fd), os.lstat(self.path)
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)

    def _write(self, record: Record | None, *, durable: bool) -> None:
        if self._fd is None:
            raise OSError(errno.EBADF, "the lock is not held")
        pid, now = os.getpid(), self._wall_clock()
        line = record.line(pid, now) if record is not None else f'{{"pid": {pid}}}\n'.encode("ascii")
        _write_all(self._fd, line)
        # A crash between the two leaves the new line first and old bytes after it; only the first line counts.
        os.ftruncate(self._fd, len(line))
        if durable:
            os.fsync(self._fd)
        self._current = record

    def record_refreshing(self, spent: str) -> None:
        """Record, durably, that a refresh with the token hashing to ``spent`` is about to be sent.

        Part of proving the save can happen: raises StorageError (exit 73) when the record cannot be written.
        """
        self._before_refresh = self._current
        try:
            if self._fd is not None and not self._still_the_lock_file(self._fd):
                raise OSError(errno.ESTALE, "it was removed or replaced while this run held the lock")
            self._write(Record("refreshing", spent=spent), durable=True)
        except OSError as exc:
            raise StorageError(
                f"cannot write the lock file {self.path}: {_describe_os_error(exc)}; the refresh token was not used"
            ) from exc

    def record_refresh_ended(self, spent: str, *, refused: bool) -> None:
        """The refresh from ``spent`` ended without new tokens (best effort).

        Refused by the server: the token was not spent by this request, so the record goes back to what
        it said before (an earlier run's story stays told). Otherwise the answer may have been lost.
        """
        try:
            if refused:
                self._write(self._before_refresh, durable=True)
            else:
                self._write(Record("refresh-failed", spent=spent), durable=True)
        except OSError as exc:
            log.debug("cannot update the lock file %s: %s", self.path, exc)

    def record_received(self, spent: str | None, new: str) -> None:
        """Record, durably, that new tokens (hashing to ``new``) arrived; raise OSError when it cannot."""
        self._write(Record("received", spent=spent, new=new), durable=True)

    def record_saved(self, new: str) -> None:
        """Record that the token file holds ``new`` (best effort: a stale 'received' still names the right file)."""
        try:
            self._write(Record("saved", new=new), durable=True)
        except OSError as exc:
            log.debug("cannot update the lock file %s: %s", self.path, exc)

    def forget_record(self) -> None:
        """Leave no record (best effort): the next run then decides by content and keeps every whole temporary."""
        try:
            self._write(None, durable=True)
        except OSError as exc:
            log.debug("cannot update the lock file %s: %s", self.path, exc)

    def remove_if_created(self) -> None:
        """Delete the lock file while still holding it, when this lock created it and it holds no record.

        For commands that leave no lock file behind (``connections import``). A file that was there before
        may be another program's, and a record tells the next run which file is live: both stay. Deleting
        under the lock is safe: a run waiting on this file finds it gone once it gets the lock, and locks
        whatever is at the path then. Best effort: a file left behind costs only a directory entry.
        """
        if self._fd is None or not self.created or self._current is not None:
            return
        try:
            # Only the file held: one put there since (removed by hand, made again) is another run's lock.
            if self._still_the_lock_file(self._fd):
                os.unlink(self.path)
        except OSError as exc:
            log.debug("cannot remove the lock file %s: %s", self.path, exc)

    def release(self) -> None:
        """Release the lock (closing the descriptor releases the flock); the file stays."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> TokenLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._remove_if_created:
            self.remove_if_created()
        self.release()


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
        data = _read_at_most(fd, MAX_TOKEN_FILE_BYTES + 1)
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


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# ---- writing ------------------------------------------------------------------------------------

def _fsync_directory(directory: Path) -> None:
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


def _from(spent: str | None) -> str:
    """The name suffix saying which refresh token (by hash; None: none, a first authorization) is replaced."""
    return f"{FROM_MARK}{(spent or 'login')[:16]}"


def _create_temp(target: Path, suffix: str = "") -> tuple[int, Path]:
    """Create ``.<name>.tmp-<random><suffix>`` beside ``target``, 0600 from the start (never chmod later)."""
    for _ in range(10):
        temp = target.with_name(f".{target.name}{TEMP_MARK}{os.urandom(6).hex()}{suffix}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        return fd, temp
    raise FileExistsError(errno.EEXIST, "could not find a free temporary name", str(target.parent))


def _write_all(fd: int, content: bytes, offset: int = 0) -> None:
    view = memoryview(content)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


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
            fd, temp = _create_temp(target, _from(spent))
            # Held until the content is in: a run that finds it while this one lives (say, after the lock file
            # was removed under this run) knows not to touch it and not to refresh.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _give_to(fd, _owner_for(target), temp)
            _write_all(fd, b" " * size_bytes)
            os.fsync(fd)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            if temp is not None:
                _unlink_quietly(temp)
            reason = _describe_os_error(exc)
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
            _write_all(fd, content)
            os.ftruncate(fd, len(content))
            os.fsync(fd)
        except OSError:
            os.close(fd)
            _unlink_quietly(self.temp)
            raise
        os.close(fd)
        try:
            os.replace(self.temp, self.target)
        except OSError:
            # The temporary now holds the only copy of the new tokens: keep it. The caller removes it
            # once a copy is saved elsewhere; if none can be, the next run puts it in place.
            self.holds_content = True
            raise
        _fsync_directory(self.target.parent)

    def discard(self) -> None:
        """Remove the reserved file without touching the target."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        _unlink_quietly(self.temp)


def _write_new_file(path: Path, content: bytes, owner: tuple[int, int] | None = None) -> None:
    """Create ``path`` 0600 (never over an existing file, never through a link), write ``content`` and fsync
    it; a failure leaves no part of it behind and raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _give_to(fd, owner, path)
        _write_all(fd, content)
        os.fsync(fd)
    except OSError:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)


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


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _replace_durably(temp: Path, target: Path) -> None:
    try:
        os.replace(temp, target)
    except OSError:
        _unlink_quietly(temp)
        raise
    _fsync_directory(target.parent)


def write_file_atomically(path: Path, content: bytes, *, mode: int = 0o600, suffix: str = "") -> None:
    """Write ``content`` to ``path`` atomically and durably, mode 0600; raise OSError on failure.

    ``path`` itself is replaced: a symlink there is replaced by the file, never followed (callers
    that mean a link's target, as for the token file, resolve it first). Another ``mode`` (only for
    files without secrets, e.g. metrics another user reads) is set exactly, whatever the umask, on
    the still-empty temporary file. Run as root, the file keeps the owner of the one it replaces.
    """
    fd, temp = _create_temp(path, suffix)
    try:
        _give_to(fd, _owner_for(path), path)
        if mode != 0o600:
            os.fchmod(fd, mode)
        _write_all(fd, content)
        os.fsync(fd)
    except OSError:
        os.close(fd)
        _unlink_quietly(temp)
        raise
    os.close(fd)
    _replace_durably(temp, path)


# ---- what earlier runs left beside the token file -----------------------------------------------

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
        data = _read_at_most(fd, reserve_size_for(MAX_TOKEN_FILE_BYTES) + 1).rstrip(b" ")
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


def _fallback_prefix(target: Path) -> str:
    """The start of the fallback rescue files' names for ``target``: a hash of its path, then its name."""
    import hashlib

    return f"{hashlib.sha256(os.fsencode(target)).hexdigest()[:16]}-{target.name}{RESCUE_MARK}"


def _fallback_rescues(target: Path, fallback: Path | None) -> list[FoundFile | Untrusted]:
    """The rescue files for ``target`` in the fallback directory, oldest first."""
    directory = fallback_rescue_directory(fallback, create=False) if fallback is not None else None
    if directory is None:
        return []
    prefix = _fallback_prefix(target)
    try:
        names = sorted(name for name in os.listdir(directory) if name.startswith(prefix))
    except OSError:
        return []
    found: list[FoundFile | Untrusted] = []
    for name in names:
        found.append(_read_found(directory / name, "rescue file", {os.geteuid()}))
    return found


def _write_fallback_rescue(target: Path, content: bytes, now: float, spent: str | None, fallback: Path) -> Path:
    """Write a rescue file for ``target`` in the ``fallback`` directory; raise OSError when it cannot."""
    directory = fallback_rescue_directory(fallback, create=True)
    if directory is None:
        raise OSError(errno.EACCES, "not a private directory of the job's own", str(fallback))
    path = directory / f"{_fallback_prefix(target)}{_stamp(now)}{_from(spent)}"
    _write_new_file(path, content)
    return path


def survey_token_directory(token_file: Path, record: Record | None, fallback: Path | None = None) -> Survey:
    """Decide, by content and the lock file's ``record``, what to do with what lies beside the token file.

    With a record naming the live refresh token (``received``/``saved``) and a file that holds it, that
    file is the live one, and whole temporaries holding other tokens are stale. Otherwise (no record,
    an older version's lock file, or a record no file matches) nothing whole is deleted: a temporary is
    put in place only when its content says it is newer (a later ``expires_at`` than the token file's).
    Modification times are never looked at. Reads only; :func:`tidy_temp_files` acts on the result.
    """
    target = resolve_target(token_file)
    survey = Survey(target=target, record=record, current=_read_current(target))
    try:
        survey.directory_mode = stat.S_IMODE(os.stat(target.parent).st_mode)
        names = sorted(os.listdir(target.parent))
    except OSError:
        names = []
    owners = _trusted_owners(target)
    temps: list[FoundFile] = []
    for name in names:
        if name.startswith(f".{target.name}{TEMP_MARK}"):
            kind = "temporary"
        elif name.startswith(f"{target.name}{RESCUE_MARK}"):
            kind = "rescue file"
        else:
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

    current = survey.current
    current_hash = current.refresh_hash if current is not None else None
    whole = [*temps, *survey.rescues]
    if record is not None and record.state in ("received", "saved"):
        readable = (current,) if current is not None and current.tokens is not None else ()
        holders = [f for f in (*readable, *whole) if f.refresh_hash == record.live]
        if holders:
            live = holders[0]
            survey.recover = None if live is current else live
            survey.stale = [t for t in temps if t is not live]
            survey.rescues = [r for r in survey.rescues if r is not live]
            survey.resolved = True
            return survey

    # A reservation or rescue file names the refresh token its content replaced: when the token file still
    # holds that one, or the record says it was being spent, the file holds its successor — whatever the
    # record could (not) say, and even if the same failing disk left the token file empty.
    spent_known = {h[:16] for h in (current_hash, record.spent if record is not None else None) if h}
    children = [f for f in whole if f.parent in spent_known and f.refresh_hash != current_hash]
    if children:
        survey.recover = children[-1]
        survey.rescues = [r for r in survey.rescues if r is not survey.recover]
        survey.kept = [(t, "another file holds the successor of the token file's tokens") for t in temps
                       if t is not survey.recover]
        return survey

    # No record names a file that is here: decide by content, and delete nothing whole.
    if current is None:
        survey.kept = [(t, "the token file does not exist") for t in temps]
    elif current.tokens is None:
        survey.kept = [(t, "the token file cannot be read; it may be all that is left") for t in temps]
    else:
        # Temporaries an older version left carry no lineage in their names: newer content wins.
        newer = [
            t for t in temps
            if t.parent is None and t.refresh_hash != current_hash and t.expires_at is not None
            and current.expires_at is not None and t.expires_at > current.expires_at
        ]
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
            survey.undecided = [f for f in whole if f.refresh_hash != current_hash]
    if survey.recover is None and current is not None and current.tokens is not None and record is not None:
        survey.note, survey.explanation = _what_the_record_tells(record, current)
        survey.spent_for_sure = (
            record.state == "received" and record.spent is not None and record.spent == current_hash
        )
    return survey


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


def tidy_temp_files(token_file: Path, lock: TokenLock, fallback: Path | None = None) -> TempCleanup:
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
    survey = survey_token_directory(token_file, lock.found, fallback)
    for path in (*survey.blank, *(f.path for f in (*survey.stale, *(k for k, _ in survey.kept))),
                 *((survey.recover.path,) if survey.recover is not None else ())):
        if _in_use(path):
            raise LockBusyError(
                f"another aweber-job run is saving tokens beside {survey.target} ({path} is in use), although this "
                f"run holds the lock {lock.path}: was the lock file removed while that run held it? Nothing was sent",
                hint="try again when that run has ended; never remove the lock file",
            )
    target = survey.target
    warning = survey.directory_warning()
    if warning:
        log.warning("%s", warning)
    for untrusted in survey.untrusted:
        log.warning(
            "ignored %s: %s; the job neither uses nor removes files it did not make: look at it, then remove it",
            untrusted.path, untrusted.reason,
        )
    if survey.undecided:
        names = ", ".join(f"{f.path} (refresh token {f.fingerprint})" for f in survey.undecided)
        current = survey.current.fingerprint if survey.current is not None else "none"
        raise StorageError(
            f"cannot tell which file holds the live refresh token: {target} (refresh token {current}) or {names}; "
            "the lock file's record that would say is missing or does not match the token file (deleted, or the "
            "token file restored from a backup?). Nothing was sent to AWeber",
            hint=f"move the newest into place (mv FILE {target}) or remove the ones you know are stale, then run "
            "again; aweber-job status shows each",
        )
    recovered = survey.recover
    if recovered is not None:
        try:
            if recovered.path.parent == target.parent:
                os.replace(recovered.path, target)
                _fsync_directory(target.parent)
            else:
                # A fallback rescue file lives on another file system: copy it in, then remove it.
                assert recovered.tokens is not None
                write_file_atomically(target, recovered.tokens.to_bytes())
                _unlink_quietly(recovered.path)
        except OSError as exc:
            raise StorageError(
                f"{recovered.path} holds newer tokens than {target}, saved by an interrupted run, and cannot be "
                f"moved into place: {_describe_os_error(exc)}; the refresh token was not used",
                hint=f"fix the problem and run again, or move it by hand: mv {recovered.path} {target}",
            ) from exc
        log.warning(
            "put the tokens an interrupted run saved in %s in place of %s (refresh token %s)",
            recovered.path, target, recovered.fingerprint,
        )
        if recovered.refresh_hash is not None:
            lock.record_saved(recovered.refresh_hash)
    live = recovered or survey.current
    for stale in survey.stale:
        try:
            os.unlink(stale.path)
        except OSError as exc:
            log.warning("cannot remove %s: %s", stale.path, exc.strerror or exc)
            continue
        log.warning(
            "removed %s: it held refresh token %s, older than the live one (%s) in %s",
            stale.path, stale.fingerprint, live.fingerprint if live else "unknown", target,
        )
    removed = 0
    for blank in survey.blank:
        try:
            os.unlink(blank)
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d temporary file(s) left beside %s by an interrupted run", removed, target)
    for kept, reason in survey.kept:
        log.warning(
            "kept %s: it holds a whole token file (refresh token %s) and %s; remove it once you know it is stale",
            kept.path, kept.fingerprint, reason,
        )
    if survey.note:
        log.warning("%s", survey.note)
    return TempCleanup(recovered.path if recovered else None, removed, survey.explanation, survey.spent_for_sure)


def reserve_size_for(loaded_size: int) -> int:
    """Bytes to reserve: the current file plus room for the largest token answer we accept."""
    return loaded_size + MAX_TOKEN_ANSWER_BYTES + 4096


def _stamp(now: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def rescue_path_for(token_file: Path, now: float, spent: str | None = None) -> Path:
    """``<token file>.rescue-<UTC timestamp>.from-<hash>`` in the same directory."""
    target = resolve_target(token_file)
    return target.with_name(f"{target.name}{RESCUE_MARK}{_stamp(now)}{_from(spent)}")


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
            log.error("cannot record the new tokens in %s (%s); saving them anyway", lock.path, _describe_os_error(exc))
            lock.forget_record()
    errors: list[str] = []
    kept: Path | None = None
    if reservation is not None:
        try:
            reservation.commit(content)
        except OSError as exc:
            errors.append(f"{target}: {_describe_os_error(exc)}")
            log.error("saving the rotated tokens to %s failed (%s); retrying", target, _describe_os_error(exc))
            if reservation.holds_content:
                kept = reservation.temp
        else:
            if lock is not None:
                lock.record_saved(new)
            return
    for attempt in range(attempts):
        try:
            write_file_atomically(target, content, suffix=_from(spent))
        except OSError as exc:
            errors.append(f"{target}: {_describe_os_error(exc)}")
            if attempt + 1 < attempts:
                time.sleep(0.2 * (attempt + 1))
        else:
            if kept is not None:
                _unlink_quietly(kept)
            if lock is not None:
                lock.record_saved(new)
            return
    rescue = rescue_path_for(token_file, now(), spent)
    try:
        _write_new_file(rescue, content, _owner_for(target))
        _fsync_directory(rescue.parent)
    except OSError as exc:
        if kept is not None and os.path.exists(kept):
            raise TokenNotSavedError(
                f"the refresh succeeded but the new tokens could not be put in place: they are only in {kept}, "
                f"which could not be renamed over {target} ({errors[0].split(': ', 1)[-1]}), and no rescue "
                f"file could be written ({_describe_os_error(exc)}). Leave that file alone: once "
                f"{target.parent} is writable again the next run puts it in place (or: mv {kept} {target})"
            ) from exc
        # Nothing beside the token file took the new tokens: the whole file system may have turned read-only.
        written: Path | None = None
        if fallback is not None:
            try:
                written = _write_fallback_rescue(target, content, now(), spent, fallback)
            except OSError as fallback_exc:
                log.error("cannot write a rescue file in %s either: %s", fallback, _describe_os_error(fallback_exc))
        if written is not None:
            raise TokenNotSavedError(
                f"the refresh succeeded but {target.parent} refused every write ({_describe_os_error(exc)}: a file "
                f"system turned read-only?); the new tokens were saved to the rescue file {written}, on another "
                f"file system, in memory: it is gone if the machine restarts. Once {target} can be written again "
                f"the next run puts it in place (or: cp {written} {target})"
            ) from exc
        elsewhere = f" and a rescue file in {fallback}" if fallback is not None else ""
        raise TokenNotSavedError(
            "the refresh succeeded but the new tokens could not be saved anywhere: tried "
            f"{target}, the rescue file {rescue} ({_describe_os_error(exc)}){elsewhere}. The old refresh token "
            "may no longer work; free space or fix permissions, then run: aweber-job login"
        ) from exc
    if kept is not None:
        _unlink_quietly(kept)
    then = (
        f"once {target} can be written again the next run puts the rescue file in place (or: mv {rescue} {target})"
        if recorded else f"fix the problem, then move the rescue file into place: mv {rescue} {target}"
    )
    raise TokenNotSavedError(
        f"the refresh succeeded but {target} could not be written ({errors[-1].split(': ', 1)[-1]}); "
        f"the new tokens were saved to the rescue file {rescue}. The old refresh token may no longer "
        f"work: {then}"
    )
