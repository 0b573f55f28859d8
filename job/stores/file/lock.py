"""The token file's lock, ``<token file>.lock``, and the record of the last refresh kept in it.

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
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from job.errors import LockBusyError, StorageError, TokenFileError
from job.stores.durable import describe_os_error, give_to, owner_for, resolve_target, trusted_owners, write_all

log = logging.getLogger(__name__)

LOCK_POLL_SECONDS = 0.1
# The lock file holds one short line; anything longer is not ours and is not read further.
MAX_LOCK_FILE_BYTES = 4096


def lock_path_for(path: Path) -> Path:
    """``<token file>.lock``, beside the real file, so a link and its target share one lock."""
    target = resolve_target(path)
    return target.with_name(target.name + ".lock")


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
    if info.st_uid not in trusted_owners(target):
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
                f"cannot create the lock file {self.path}: {describe_os_error(exc)}; nothing was sent to AWeber"
            ) from exc
        else:
            self.created = True
            give_to(fd, owner_for(self._target), self.path)
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
                    f"cannot open the lock file {self.path}: {describe_os_error(exc)}; nothing was sent to AWeber"
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
                    raise StorageError(f"cannot lock {self.path}: {describe_os_error(exc)}") from exc
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
        write_all(self._fd, line)
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
                f"cannot write the lock file {self.path}: {describe_os_error(exc)}; the refresh token was not used"
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

