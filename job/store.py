"""The token file on disk: the lock beside it, loading, the reservation, atomic durable saves.

Every write of the job (token file, rescue file, task state, metrics) goes through
:func:`write_file_atomically` or a :class:`Reservation`: a temporary file in the same directory,
created 0600 with ``O_CREAT|O_EXCL``, written, fsynced, renamed over the target, then the directory
fsynced. A crash at any point leaves the old file or the new one, never a mix.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from job.errors import LockBusyError, StorageError, TokenFileError, TokenNotSavedError
from job.tokens import MAX_TOKEN_ANSWER_BYTES, MAX_TOKEN_FILE_BYTES, TokenFile, parse_token_file

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"
LOCK_POLL_SECONDS = 0.1


def resolve_target(path: Path) -> Path:
    """The file a save replaces: a symlinked token path replaces the link's target, keeping the link."""
    return Path(os.path.realpath(path))


def lock_path_for(path: Path) -> Path:
    """``<token file>.lock``, beside the real file, so a link and its target share one lock."""
    target = resolve_target(path)
    return target.with_name(target.name + ".lock")


def _describe_os_error(exc: OSError) -> str:
    """A short reason for an OSError, with the mount hint where it applies."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EBUSY, errno.EXDEV):
        reason += " — the token file looks like a single-file bind mount: mount the directory, not the file"
    return reason


class TokenLock:
    """An exclusive ``flock`` on ``<token file>.lock`` held for the whole run.

    The kernel releases it when the process dies, so there is no stale-lock eviction. The holder's
    pid is written into the file only so that a waiting run can name it.
    """

    def __init__(
        self,
        token_file: Path,
        timeout_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = lock_path_for(token_file)
        self.timeout_seconds = timeout_seconds
        self._clock = clock
        self._sleep = sleep
        self._fd: int | None = None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise TokenFileError(
                    f"token file directory {self.path.parent} does not exist",
                    hint="check AWEBER_TOKEN_FILE, or authorize first: aweber-job login",
                ) from exc
            # A read-only directory can still be locked through an existing lock file.
            try:
                return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise StorageError(
                    f"cannot create the lock file {self.path}: {_describe_os_error(exc)}; "
                    "nothing was sent to AWeber"
                ) from exc

    def holder_pid(self) -> int | None:
        """The pid written by the current holder, if readable."""
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def acquire(self) -> None:
        """Take the lock, waiting up to the timeout; raise LockBusyError (exit 75) naming the holder."""
        fd = self._open()
        deadline = self._clock() + self.timeout_seconds
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
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
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass  # The pid is only for messages; a read-only lock file still locks.

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
        self.release()


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
        chunks: list[bytes] = []
        remaining = MAX_TOKEN_FILE_BYTES + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
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


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(target: Path) -> tuple[int, Path]:
    """Create ``.<name>.tmp-<random>`` beside ``target``, 0600 from the start (never chmod later)."""
    for _ in range(10):
        temp = target.with_name(f".{target.name}{TEMP_MARK}{os.urandom(6).hex()}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
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
    def create(cls, token_file: Path, size_bytes: int) -> Reservation:
        """Reserve ``size_bytes`` beside the token file; raise StorageError (exit 73) when it cannot."""
        target = resolve_target(token_file)
        fd = -1
        temp: Path | None = None
        try:
            fd, temp = _create_temp(target)
            _write_all(fd, b" " * size_bytes)
            os.fsync(fd)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            if temp is not None:
                _unlink_quietly(temp)
            raise StorageError(
                f"cannot write a new token file in {target.parent}: {_describe_os_error(exc)}; "
                "the refresh token was not used"
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


def write_file_atomically(path: Path, content: bytes, *, mode: int = 0o600) -> None:
    """Write ``content`` to ``path`` atomically and durably, mode 0600; raise OSError on failure.

    Another ``mode`` (only for files without secrets, e.g. metrics another user reads) is set
    exactly, whatever the umask, on the still-empty temporary file.
    """
    target = resolve_target(path)
    fd, temp = _create_temp(target)
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        _write_all(fd, content)
        os.fsync(fd)
    except OSError:
        os.close(fd)
        _unlink_quietly(temp)
        raise
    os.close(fd)
    _replace_durably(temp, target)


@dataclass(frozen=True)
class TempCleanup:
    """What :func:`tidy_temp_files` did: the temporary put in place, if any, and how many it removed."""

    recovered: Path | None
    removed: int


def _complete_token_file(path: Path) -> tuple[TokenFile, int] | None:
    """The tokens and mtime of a temporary that holds a whole token file, else None (blank, half-written)."""
    try:
        info = os.stat(path)
        # A reservation is larger than its content until the final truncate; a kill can come before it.
        if not stat.S_ISREG(info.st_mode) or info.st_size > reserve_size_for(MAX_TOKEN_FILE_BYTES):
            return None
        return parse_token_file(path.read_bytes(), str(path)), info.st_mtime_ns
    except (OSError, TokenFileError):
        return None


@dataclass(frozen=True)
class _TempSurvey:
    temps: list[Path]
    newest: Path | None  # the newest complete temporary newer than the token file, if any
    keep: set[Path]  # complete temporaries kept because the token file cannot be read


def _survey_temp_files(target: Path) -> _TempSurvey:
    prefix = f".{target.name}{TEMP_MARK}"
    try:
        temps = [target.parent / name for name in os.listdir(target.parent) if name.startswith(prefix)]
    except OSError:
        temps = []
    if not temps:
        return _TempSurvey([], None, set())
    current = _complete_token_file(target)
    newer: list[tuple[int, Path]] = []
    keep: set[Path] = set()
    for temp in temps:
        complete = _complete_token_file(temp)
        if complete is None:
            continue
        tokens, mtime_ns = complete
        if current is None:
            keep.add(temp)
        elif tokens.refresh_token != current[0].refresh_token and mtime_ns > current[1]:
            newer.append((mtime_ns, temp))
    return _TempSurvey(temps, max(newer)[1] if newer else None, keep)


def pending_save(token_file: Path) -> Path | None:
    """The temporary whose newer tokens the next run will put in place (see :func:`tidy_temp_files`)."""
    return _survey_temp_files(resolve_target(token_file)).newest


def rescue_files(token_file: Path) -> list[Path]:
    """Rescue files beside the token file, oldest first: each is a save that failed."""
    target = resolve_target(token_file)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return sorted(target.parent / name for name in names if name.startswith(f"{target.name}.rescue-"))


def tidy_temp_files(token_file: Path) -> TempCleanup:
    """Deal with the temporaries earlier runs left beside the token file; call only under the lock.

    A run killed, or refused by the disk, after writing its new tokens into its temporary file and
    before renaming it over the token file leaves the only copy of the live refresh token there. A
    temporary that holds a whole token file with another refresh token, written after the token file
    was last saved, is that copy: it is renamed into place (the newest, if several). The others
    (a reservation's blanks, half-written content, tokens older than the file) are removed. While the
    token file itself cannot be read, complete temporaries are kept: they may be all there is.

    Raises StorageError (exit 73) when a newer copy exists but cannot be moved into place; a refresh
    with the token file's spent token would only fail.
    """
    target = resolve_target(token_file)
    survey = _survey_temp_files(target)
    recovered = survey.newest
    if recovered is not None:
        try:
            os.replace(recovered, target)
            _fsync_directory(target.parent)
        except OSError as exc:
            raise StorageError(
                f"{recovered} holds newer tokens than {target}, saved by an interrupted run, and cannot be "
                f"moved into place: {_describe_os_error(exc)}; the refresh token was not used",
                hint=f"fix the problem and run again, or move it by hand: mv {recovered} {target}",
            ) from exc
    removed = 0
    for temp in survey.temps:
        if temp == recovered or temp in survey.keep:
            continue
        try:
            os.unlink(temp)
            removed += 1
        except OSError:
            pass
    return TempCleanup(recovered, removed)


def reserve_size_for(loaded_size: int) -> int:
    """Bytes to reserve: the current file plus room for the largest token answer we accept."""
    return loaded_size + MAX_TOKEN_ANSWER_BYTES + 4096


def rescue_path_for(token_file: Path, now: float) -> Path:
    """``<token file>.rescue-<UTC timestamp>`` in the same directory."""
    from datetime import datetime, timezone

    target = resolve_target(token_file)
    stamp = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return target.with_name(f"{target.name}.rescue-{stamp}")


def save_rotated_tokens(
    token_file: Path,
    tokens: TokenFile,
    reservation: Reservation | None,
    *,
    now: Callable[[], float] = time.time,
    attempts: int = 3,
) -> None:
    """Save tokens that exist only in memory after a refresh, trying hard not to lose them.

    Order: the reservation; a fresh atomic write, retried; a rescue file beside the token file.
    Raises TokenNotSavedError (exit 73) with a CRITICAL-grade message naming every path tried.
    """
    content = tokens.to_bytes()
    target = resolve_target(token_file)
    errors: list[str] = []
    kept: Path | None = None
    if reservation is not None:
        try:
            reservation.commit(content)
            return
        except OSError as exc:
            errors.append(f"{target}: {_describe_os_error(exc)}")
            log.error("saving the rotated tokens to %s failed (%s); retrying", target, _describe_os_error(exc))
            if reservation.holds_content:
                kept = reservation.temp
    for attempt in range(attempts):
        try:
            write_file_atomically(target, content)
        except OSError as exc:
            errors.append(f"{target}: {_describe_os_error(exc)}")
            if attempt + 1 < attempts:
                time.sleep(0.2 * (attempt + 1))
        else:
            if kept is not None:
                _unlink_quietly(kept)
            return
    rescue = rescue_path_for(token_file, now())
    try:
        fd = os.open(rescue, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_directory(rescue.parent)
    except OSError as exc:
        if kept is not None and os.path.exists(kept):
            raise TokenNotSavedError(
                f"the refresh succeeded but the new tokens could not be put in place: they are only in {kept}, "
                f"which could not be renamed over {target} ({errors[0].split(': ', 1)[-1]}), and no rescue "
                f"file could be written ({_describe_os_error(exc)}). Leave that file alone: once "
                f"{target.parent} is writable again the next run puts it in place (or: mv {kept} {target})"
            ) from exc
        raise TokenNotSavedError(
            "the refresh succeeded but the new tokens could not be saved anywhere: tried "
            f"{target} and the rescue file {rescue} ({_describe_os_error(exc)}). The old refresh token "
            "may no longer work; free space or fix permissions, then run: aweber-job login"
        ) from exc
    if kept is not None:
        _unlink_quietly(kept)
    raise TokenNotSavedError(
        f"the refresh succeeded but {target} could not be written ({errors[-1].split(': ', 1)[-1]}); "
        f"the new tokens were saved to the rescue file {rescue}. The old refresh token may no longer "
        f"work: fix the problem, then move the rescue file into place: mv {rescue} {target}"
    )
