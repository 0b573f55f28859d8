"""One connection as a ConnectionStore: the lease it holds, fenced writes, the marker, rescue files."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job.backend import Opened
from job.errors import JobError, StorageError, TemporaryError, TokenFileError, TokenNotSavedError
from job.logs import REDACTOR
from job.pgstore.common import (
    FENCED,
    LEASE,
    NO_MARKER,
    RESCUE_DIRECTORY,
    SAVE_RETRY_FIRST_SECONDS,
    SAVE_RETRY_MAX_SECONDS,
    SCHEMA,
    SEAL_COLUMNS,
    PendingRefresh,
    describe_holder,
    file_safe,
    fsync_directory,
    utc,
)
from job.store import token_hash, write_file_atomically
from job.tokens import TokenFile, fingerprint, parse_token_file

if TYPE_CHECKING:
    from job.pgstore.store import PostgresStore

log = logging.getLogger(__name__)


class PostgresConnection:
    """One connection as a :class:`job.backend.ConnectionStore`: lease, fenced writes, marker, rescue files."""

    def __init__(
        self, store: PostgresStore, name: str, *, wait: bool = True, owns_store: bool = False,
        claimed: tuple[Any, ...] | None = None, finish_on_close: bool = False,
        save_cap: Callable[[], float | None] | None = None,
    ) -> None:
        self._store = store
        self._save_cap = save_cap
        self._owns_store = owns_store
        self._claimed = claimed
        # The lease is kept past close() for finish(), which records the outcome and releases it at
        # once: released first, the connection would look free and not yet run to other processes.
        self._finish_on_close = finish_on_close
        self.connection = name
        self.where = f"connection '{name}' in {store.description}"
        self._wait = wait
        self._fence: int | None = None
        self._renewed_at = 0.0
        self._monotonic = time.monotonic

    # -- fenced writes --

    def _params(self, **extra: Any) -> dict[str, Any]:
        if self._fence is None:
            raise RuntimeError(f"{self.where} is not open")
        return {"name": self.connection, "fence": self._fence, "holder": self._store.holder,
                "lease": self._store.lease_seconds, **extra}

    def _fenced_update(self, assignments: str, doing: str, **params: Any) -> bool:
        """One fenced UPDATE; whether it matched (False: the lease was lost to another holder)."""
        rows = self._store._run(
            f"UPDATE {SCHEMA}.connections SET {assignments}, updated_at = now() WHERE {FENCED}",
            self._params(**params), doing=f"{doing} {self.where}",
        )
        return bool(rows[0][0])

    def _lease_lost(self, doing: str) -> TemporaryError:
        return TemporaryError(
            f"lease lost: {doing} {self.where} was refused, another run has taken the connection over",
            hint="its lease ran out (the run stalled longer than the lease, or the machine was paused); "
                 "nothing was overwritten",
        )

    # -- the protocol --

    def open(self) -> Opened:
        """Claim the lease, load the tokens, put back this machine's rescue files, and read the marker."""
        row, self._claimed = self._claimed or self._store._claim(self.connection, wait=self._wait), None
        self._fence, data, encrypted, spent, by, at = row
        self._renewed_at = self._monotonic()
        try:
            tokens = self._store._unseal(self.connection, data, encrypted)
            tokens, put_back = self._put_back_rescues(tokens)
            explanation = None
            if spent and not put_back and spent == token_hash(tokens.refresh_token):
                explanation = (
                    f"an earlier run ({describe_holder(by or '?')}) began a refresh of connection "
                    f"'{self.connection}' with this refresh token at {utc(at)} and never recorded its end "
                    "(killed, or its database connection dropped): AWeber may have rotated it then; if that run "
                    "kept the new tokens in a rescue file on its host, the next run of this connection there puts "
                    "them back"
                )
                log.warning("%s", explanation)
            return Opened(tokens=tokens, explanation=explanation, spent_for_sure=False)
        except BaseException:
            self.close()
            raise

    def begin_refresh(self, tokens: TokenFile) -> PendingRefresh:
        """Record the marker in one committed fenced UPDATE: the proof the store takes writes now."""
        pending = PendingRefresh(spent=token_hash(tokens.refresh_token))
        done = self._fenced_update(
            f"refreshing_from = %(spent)s, refreshing_by = %(holder)s, refreshing_at = now(), lease_until = {LEASE}",
            "cannot record the start of a refresh of", spent=pending.spent,
        )
        if not done:
            raise self._lease_lost("recording the start of a refresh of")
        self._renewed_at = self._monotonic()
        return pending

    def refresh_failed(self, pending: Any, *, refused: bool) -> None:
        """Clear the marker; a database that is gone is only logged (the marker then explains the next run)."""
        try:
            self._fenced_update(NO_MARKER, "cannot clear the refresh marker of")
        except JobError as exc:
            log.warning("%s", exc)

    def save(self, pending: Any, tokens: TokenFile) -> None:
        """Write the new tokens (fenced), retrying until the save deadline; else a rescue file and exit 73."""
        assert isinstance(pending, PendingRefresh)
        sealed = self._store._seal(self.connection, tokens)
        deadline = self._store._clock() + self._store.save_deadline_seconds
        pause = SAVE_RETRY_FIRST_SECONDS
        while True:
            try:
                if self._fenced_update(f"{SEAL_COLUMNS}, {NO_MARKER}, lease_until = {LEASE}",
                                       "cannot save the new tokens of", **sealed):
                    self._renewed_at = self._monotonic()
                    log.info("saved refresh token %s for %s", fingerprint(tokens.refresh_token), self.where)
                    return
                why = "its lease was lost: another run took the connection over, so its tokens were not overwritten"
                break
            except JobError as exc:
                why = f"it could not be written for {self._store.save_deadline_seconds:g} s: {exc.message}"
                cap = self._save_cap() if self._save_cap is not None else None
                if cap is not None and cap < deadline:
                    deadline = cap
                    why = f"the run was asked to stop and it could not be written before then: {exc.message}"
                if self._store._clock() + pause > deadline:
                    break
                log.warning("%s; retrying", exc.message)
                self._store._sleep(pause)
                pause = min(pause * 2, SAVE_RETRY_MAX_SECONDS)
        raise self._rescue(tokens, pending.spent, why)

    def _rescue(self, tokens: TokenFile, spent: str, why: str) -> TokenNotSavedError:
        directory = self._store.state_dir / RESCUE_DIRECTORY
        now = self._store._clock()
        stamp = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = directory / f"{file_safe(self.connection)}.{stamp}.from-{spent[:16]}.json"
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_file_atomically(path, tokens.to_bytes())
            self._give_to_the_state_directorys_owner(directory, path)
        except OSError as exc:
            return TokenNotSavedError(
                f"the refresh of {self.where} succeeded but the store did not take the new tokens ({why}), and "
                f"the rescue file {path} could not be written ({exc.strerror or exc}): the new refresh token "
                f"is lost; authorize again: aweber-job --connection {self.connection} login"
            )
        return TokenNotSavedError(
            f"the refresh of {self.where} succeeded but the store did not take the new tokens ({why}); they "
            f"were saved to the rescue file {path}. The next run of this connection on this machine puts them "
            "in place when they follow the stored refresh token"
        )

    def _give_to_the_state_directorys_owner(self, *paths: Path) -> None:
        """Run as root over a service's state directory (``sudo aweber-job …``), hand the rescue directory and
        file to that directory's owner: the service's next run must be able to read and put them back."""
        if os.geteuid() != 0:
            return
        owner = os.stat(self._store.state_dir)
        if owner.st_uid == 0:
            return
        for path in paths:
            os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)

    def load_state(self, task_name: str) -> dict[str, Any]:
        rows = self._store._run(
            f"SELECT task_state -> %(task)s, task_state FROM {SCHEMA}.connections WHERE name = %(name)s",
            {"name": self.connection, "task": task_name},
            doing=f"cannot read the state of task {task_name} of {self.where}",
        )
        state = rows[0][0] if rows else None
        whole = rows[0][1] if rows else None
        if not isinstance(whole, dict) or not isinstance(state, (dict, type(None))):
            # Only a hand edit makes it so; starting over from --since would report subscribers twice.
            raise TokenFileError(
                f"the task state of {self.where} is not a JSON object"
                + ("" if not isinstance(whole, dict) else f" for task {task_name}"),
                hint="set it right in the database (task_state = '{}' starts every task over from --since)",
            )
        return state or {}

    def save_state(self, task_name: str, state: dict[str, Any]) -> None:
        done = self._fenced_update(
            "task_state = task_state || jsonb_build_object(%(task)s::text, %(state)s::jsonb)",
            f"cannot save the state of task {task_name} of", task=task_name, state=json.dumps(state),
        )
        if not done:
            raise self._lease_lost(f"saving the state of task {task_name} of")

    def state_location(self, task_name: str) -> str:
        return f"the state of task {task_name} kept with {self.where}"

    def keep_alive(self) -> None:
        """Renew the lease once more than half of it has passed; otherwise costs nothing.

        A failure is only logged: the lease then runs out, and the next fenced write proves or refuses.
        """
        if self._fence is None:
            return
        now = self._monotonic()
        if now - self._renewed_at <= self._store.lease_seconds / 2:
            return
        try:
            if self._fenced_update(f"lease_until = {LEASE}", "cannot renew the lease of"):
                self._renewed_at = now
            else:
                log.debug("the lease of %s was lost; the next write will be refused", self.where)
        except JobError as exc:
            log.debug("%s", exc)

    def close(self) -> None:
        """Release the lease (fenced); a dead database is ignored: the lease runs out by itself.

        With ``finish_on_close`` the lease is kept for :meth:`finish`.
        """
        if self._finish_on_close:
            return
        self._release()

    def finish(self, exit_code: int | None, interval_seconds: float) -> None:
        """Record how the run ended and release the lease, in one fenced statement; then close.

        ``exit_code`` None: the run never held the connection, so there is nothing to record.
        """
        fence = self._fence
        if fence is not None and exit_code is not None:
            try:
                from job.pgstore.store import BACKOFF_FIRST_SECONDS, RECORD_RUN

                recorded = self._fenced_update(
                    f"{RECORD_RUN}, lease_holder = NULL, lease_until = NULL", "cannot record the run of",
                    code=exit_code, interval=float(interval_seconds), backoff=BACKOFF_FIRST_SECONDS,
                )
                if recorded:
                    self._fence = None
                else:
                    log.debug("the lease of %s was lost: the run that took it over records its own outcome",
                              self.where)
            except JobError as exc:
                log.warning("the outcome of %s could not be recorded: %s", self.where, exc)
        self._finish_on_close = False
        self._release()

    def _release(self) -> None:
        if self._fence is not None:
            fence, self._fence = self._fence, None
            try:
                self._store._release(self.connection, fence)
            except JobError as exc:
                log.debug("%s", exc)
        if self._owns_store:
            self._store.close()

    # -- rescue files --

    def _rescue_files(self) -> list[tuple[str, Path, str]]:
        """This connection's rescue files as (stamp, path, from-hash16), oldest first."""
        directory = self._store.state_dir / RESCUE_DIRECTORY
        pattern = re.compile(
            rf"^{re.escape(file_safe(self.connection))}\.(\d{{8}}T\d{{6}}(?:\.\d+)?Z)\.from-([0-9a-f]{{16}})\.json$"
        )
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            # It may hold the successor of the stored refresh token: spending that token could revoke the grant.
            raise StorageError(
                f"cannot read the rescue directory {directory} ({exc.strerror or exc}), which may hold newer tokens "
                f"of {self.where}; the stored refresh token was not sent",
                hint=f"give {directory} back to the user the job runs as (or run the job as its owner)",
            ) from exc
        found = []
        for entry in names:
            match = pattern.match(entry)
            if match:
                found.append((match.group(1), directory / entry, match.group(2)))
        return sorted(found)

    def _read_rescue(self, path: Path) -> TokenFile | None:
        """A rescue file's tokens, or None (with a warning) for one the job did not make or cannot read."""
        import stat

        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
                log.warning("rescue file %s is not a 0600 file of this user; left alone", path)
                return None
            tokens = parse_token_file(path.read_bytes(), f"rescue file {path}")
        except (OSError, TokenFileError) as exc:
            log.warning("rescue file %s cannot be read (%s); left alone", path,
                        exc.strerror if isinstance(exc, OSError) else exc)
            return None
        REDACTOR.add(*tokens.secrets())
        return tokens

    def _put_back_rescues(self, tokens: TokenFile) -> tuple[TokenFile, bool]:
        """Put in place a rescue file that holds the successor of the stored refresh token; tidy the rest."""
        put_back = False
        for _stamp, path, from16 in self._rescue_files():
            stored = token_hash(tokens.refresh_token)
            rescued = self._read_rescue(path)
            if rescued is None:
                if from16 == stored[:16]:
                    # Its name says it holds the successor of the stored token, which is then spent.
                    raise StorageError(
                        f"the rescue file {path} holds the successor of the refresh token of {self.where}, but this "
                        "run cannot use it (see the warning above); the stored refresh token, spent, was not sent",
                        hint=f"make it a 0600 file of the user the job runs as, or import it: aweber-job "
                             f"connections import {self.connection} {path} --force",
                    )
                continue
            if token_hash(rescued.refresh_token) == stored:
                self._unlink(path)
                log.info("removed rescue file %s: the store already holds its tokens", path)
            elif from16 == stored[:16]:
                # New tokens: a connection that waited for a person (another host spent the old one) is live again.
                if not self._fenced_update(f"{SEAL_COLUMNS}, {NO_MARKER}, waiting_for_person = false, "
                                           "temporary_failures = 0", "cannot put the rescued tokens into",
                                           **self._store._seal(self.connection, rescued)):
                    raise self._lease_lost("putting rescued tokens into")
                self._unlink(path)
                log.info("put the tokens of rescue file %s into %s (refresh token %s) and removed the file",
                         path, self.where, fingerprint(rescued.refresh_token))
                tokens, put_back = rescued, True
            else:
                log.warning(
                    "rescue file %s holds refresh token %s, which does not follow the one %s holds (%s): left "
                    "alone; if it is newer, import it: aweber-job connections import %s %s --force; else delete it",
                    path, fingerprint(rescued.refresh_token), self.where, fingerprint(tokens.refresh_token),
                    self.connection, path,
                )
        return tokens, put_back

    @staticmethod
    def _unlink(path: Path) -> None:
        os.unlink(path)
        fsync_directory(path.parent)
