"""The token file behind the store seam (:mod:`job.stores.base`): the default, one connection, ``default``.

Everything that keeps the token file safe lives in :mod:`job.stores.file.lock`, :mod:`job.stores.file.recovery`
and :mod:`job.stores.file.tokenfile`; this class only says, in the seam's words, which of their steps the cycle
takes when: the lock and the tidy-up on open, the reservation and the lock file's record before a refresh, the
careful save after it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from job.auth.tokens import TokenFile, fingerprint, format_expiry
from job.config import DEFAULT_CONNECTION, state_dir_for
from job.errors import StorageError, TaskError, TokenFileError
from job.stores.base import Opened, Revocable, Revoked
from job.stores.durable import fsync_directory, resolve_target, token_hash, write_file_atomically
from job.stores.file.lock import TokenLock
from job.stores.file.recovery import tidy_temp_files
from job.stores.file.tokenfile import Reservation, load_token_file, reserve_size_for, save_rotated_tokens

if TYPE_CHECKING:
    from job.config import Settings
    from job.stores.base import Exchange
    from job.stores.file.status import StatusReport

log = logging.getLogger(__name__)


def state_file_for(state_dir: Path, task_name: str) -> Path:
    """``<state dir>/<task>.state.json``, the task's name made safe for a file name."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in task_name)
    return state_dir / f"{safe}.state.json"


def state_file_of(token_file: Path, settings: Settings, task_name: str) -> Path:
    """The state file of ``task_name`` that a run of ``token_file`` with ``settings`` reads and writes: the
    run's own rule (:func:`job.config.state_dir_for`, :func:`state_file_for`), for ``connections import``."""
    return state_file_for(state_dir_for(token_file, settings.source), task_name)


@dataclass
class _FilePending:
    """A refresh under way: the reservation made for its tokens and the hash of the token it spends."""

    reservation: Reservation
    spent: str


class FileStore:
    """The token file and the task state files beside it (docs/design.md §3–§5)."""

    connection = DEFAULT_CONNECTION

    def __init__(
        self,
        token_file: Path,
        state_dir: Path,
        *,
        lock_timeout_seconds: float,
        fallback_rescue_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        settings: Settings | None = None,
    ) -> None:
        self.path = token_file
        # Only status reads it: where the client id and secret come from.
        self._settings = settings
        self.state_dir = state_dir
        self.where = str(token_file)
        self._lock_timeout = lock_timeout_seconds
        self._fallback = fallback_rescue_dir
        self._clock = clock
        self._lock: TokenLock | None = None
        self._revoking: TokenFile | None = None

    def open(self) -> Opened:
        """Take the lock, put in place what an earlier run could not finish, load the token file."""
        self._lock = TokenLock(self.path, self._lock_timeout)
        self._lock.acquire()
        try:
            tidied = tidy_temp_files(self.path, self._lock, self._fallback)
            loaded = load_token_file(self.path)
        except BaseException:
            self.close()
            raise
        if loaded.readable_by_others:
            log.warning(
                "token file %s is readable by group or others (mode %04o); it will be saved as 0600",
                self.path, loaded.mode,
            )
        return Opened(tokens=loaded.tokens, explanation=tidied.explanation, spent_for_sure=tidied.spent_for_sure)

    def begin_refresh(self, tokens: TokenFile) -> _FilePending:
        """Reserve room for the new tokens, then record in the lock file that a refresh starts."""
        lock = self._held()
        spent = token_hash(tokens.refresh_token)
        reservation = Reservation.create(self.path, reserve_size_for(len(tokens.to_bytes())), spent)
        try:
            lock.record_refreshing(spent)
        except StorageError:
            reservation.discard()
            raise
        return _FilePending(reservation, spent)

    def confirm_before_send(self) -> None:
        """Nothing to prove: the lock is the kernel's, held as long as this process lives (even stopped)."""

    def refresh_failed(self, pending: _FilePending, *, refused: bool) -> None:
        pending.reservation.discard()
        self._held().record_refresh_ended(pending.spent, refused=refused)

    def save(self, pending: _FilePending, tokens: TokenFile) -> None:
        save_rotated_tokens(
            self.path, tokens, pending.reservation, lock=self._held(), spent=pending.spent, now=self._clock,
            fallback=self._fallback,
        )

    def keep_alive(self) -> None:
        """Nothing to renew: the lock is held as long as the process lives."""

    def hold(self) -> None:
        """The token file's lock alone: no tidy-up and no token file needed to change the task state."""
        self._lock = TokenLock(self.path, self._lock_timeout)
        self._lock.acquire()

    def load_state(self, task_name: str) -> dict[str, Any]:
        return TaskStateFile(state_file_for(self.state_dir, task_name)).load()

    def save_state(self, task_name: str, state: dict[str, Any]) -> None:
        TaskStateFile(state_file_for(self.state_dir, task_name)).save(state)

    def state_location(self, task_name: str) -> str:
        """Where the task's state is kept, for the message that tells how to start it again."""
        return f"{state_file_for(self.state_dir, task_name)} (move that file away to start again from --since)"

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def finish(self, exit_code: int | None, interval_seconds: float, *, account_id: int | None = None) -> None:
        """Nothing to record: the token file keeps no history of runs, and the timer or cron says when to run."""
        self.close()

    def status(self) -> StatusReport:
        """The token file, its lock and what lies beside it, read without the lock (job.stores.file.status)."""
        from job.stores.file.status import collect_status

        if self._settings is None:
            raise RuntimeError("status needs the store made from the settings (job.stores.connection_store)")
        return collect_status(self._settings)

    def open_for_revoke(self) -> Revocable:
        """Under the lock, the live tokens: a save an earlier run could not finish is put in place first."""
        self._lock = TokenLock(self.path, self._lock_timeout)
        self._lock.acquire()
        try:
            tidy_temp_files(self.path, self._lock, self._fallback)
            tokens = load_token_file(self.path).tokens
        except BaseException:
            self.close()
            raise
        self._revoking = tokens
        return Revocable(tokens=tokens, where=f"token file {self.path}", kept=f"the token file {self.path} was kept")

    def mark_revoked(self) -> Revoked:
        """Remove the token file (a symlink's target; the link stays) and make the removal durable."""
        self._held()
        if self._revoking is None:
            raise RuntimeError("open_for_revoke() the store first")
        refresh_fp = fingerprint(self._revoking.refresh_token)
        target = resolve_target(self.path)
        try:
            os.unlink(target)
            fsync_directory(target.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(
                f"the refresh token {refresh_fp} was revoked at AWeber, but the token file {target} could not be "
                f"removed: {exc.strerror or exc}; its tokens no longer work, remove it by hand"
            ) from exc
        return Revoked(done=f"removed the token file {self.path}", extra={"refresh_token": refresh_fp})

    def existing_for_login(self, *, force: bool) -> TokenFile | None:
        """UsageError (64) for a token file already there without ``force``; else the one ``force`` replaces."""
        from job.stores.file.login import load_existing, refuse_to_overwrite

        refuse_to_overwrite(self.path, force=force)
        return load_existing(self.path, warn=True) if force else None

    def check_login_writable(self) -> None:
        """Create the token file's directory (0700) when missing, then take the lock and reserve a token file once."""
        from job.stores.file.login import check_writable, prepare_directory

        prepare_directory(self.path)
        check_writable(self.path, self._lock_timeout)

    def save_login(self, exchange: Exchange, *, force: bool) -> TokenFile:
        """Under the lock: look again, reserve, spend the code, save the new token file."""
        from job.auth.oauth import warn_on_clock_skew
        from job.stores.file.login import save_login

        answer, tokens = save_login(
            self.path, exchange, lock_timeout_seconds=self._lock_timeout, fallback=self._fallback, force=force
        )
        warn_on_clock_skew(answer)
        return tokens

    def report_login(self, tokens: TokenFile, out: IO[str]) -> None:
        from job.stores.file.login import print_result

        log.info(
            "authorized: wrote %s; refresh token %s, access token expires %s",
            self.path, fingerprint(tokens.refresh_token), format_expiry(tokens.expires_at, time.time()),
            extra={"refresh_token_after": fingerprint(tokens.refresh_token), "expires_at": tokens.expires_at},
        )
        print_result(out, self.path, tokens)

    def _held(self) -> TokenLock:
        if self._lock is None:
            raise RuntimeError("open() the store first")
        return self._lock


class TaskStateFile:
    """A task's persistent JSON state in ``<state dir>/<task>.state.json``, saved atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        """The saved state, or {} on a first run; TokenFileError (65) names a corrupt file or a link."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise TokenFileError(
                    f"task state file {self.path} is a symbolic link; the job neither reads nor writes its own "
                    "files through links",
                    hint="replace the link with the file itself",
                ) from exc
            raise StorageError(f"cannot read task state {self.path}: {exc.strerror or exc}") from exc
        try:
            with open(fd, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise StorageError(f"cannot read task state {self.path}: {exc.strerror or exc}") from exc
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            value = None
        if not isinstance(value, dict):
            raise TokenFileError(
                f"task state file {self.path} is not a JSON object",
                hint="move it away to start again from --since",
            )
        return value

    def save(self, state: dict[str, Any]) -> None:
        """Write the state atomically and durably; StorageError (73) when it cannot."""
        content = state_bytes(state)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_file_atomically(self.path, content)
        except OSError as exc:
            raise StorageError(
                f"cannot save task state {self.path}: {exc.strerror or exc}; the tokens are saved, "
                "and the next run repeats this run's work"
            ) from exc


def state_bytes(state: dict[str, Any]) -> bytes:
    """A task's state as the UTF-8 JSON a store keeps; TaskError (1) when the task left something else."""
    try:
        return (json.dumps(state, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TaskError(f"the task's state is not JSON-serialisable: {exc}") from exc
