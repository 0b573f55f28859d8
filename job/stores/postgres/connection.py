"""One connection as a ConnectionStore: the lease it holds, fenced writes, the marker, rescue files."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from job.auth.tokens import TokenFile, fingerprint, format_expiry
from job.errors import JobError, StorageError, TemporaryError, TokenFileError, TokenNotSavedError, UsageError
from job.logs import REDACTOR, utc_stamp
from job.shutdown import LAST_SAVE_TRY_SECONDS, boottime
from job.stores.base import Opened, Revocable, Revoked
from job.stores.durable import fsync_directory, token_hash
from job.stores.postgres import rescue
from job.stores.postgres.common import (
    BACKOFF_FIRST_SECONDS,
    SAVE_RETRY_FIRST_SECONDS,
    SAVE_RETRY_MAX_SECONDS,
    PendingRefresh,
    describe_holder,
    utc,
)
from job.stores.postgres.leases import not_found

if TYPE_CHECKING:
    from job.stores.base import Exchange
    from job.stores.postgres.status import ConnectionStatus
    from job.stores.postgres.store import PostgresStore

log = logging.getLogger(__name__)

_UNREAD = object()  # the task states were not read with the claim


class PostgresConnection:
    """One connection as a :class:`job.stores.base.ConnectionStore`: lease, fenced writes, marker, rescue files."""

    def __init__(
        self, store: PostgresStore, name: str, *, wait: bool = True, owns_store: bool = False,
        claimed: tuple[Any, ...] | None = None, finish_on_close: bool = False,
    ) -> None:
        self._store = store
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
        # A clock that keeps counting while the machine sleeps or the process is stopped: the lease runs on
        # the database's clock, which does too.
        self._monotonic: Callable[[], float] = boottime
        # When this run last proved, with the database, that the lease is its own (on _monotonic's clock).
        self._confirmed_at: float | None = None
        self._task_states: Any = _UNREAD

    # -- fenced writes --

    def _params(self, **extra: Any) -> dict[str, Any]:
        if self._fence is None:
            raise RuntimeError(f"{self.where} is not open")
        return {"name": self.connection, "fence": self._fence, "holder": self._store.holder,
                "lease": self._store.lease_seconds, **extra}

    def _fenced_update(self, statement: str, doing: str, *, until: float | None = None, **params: Any) -> bool:
        """One fenced UPDATE (``sql/<statement>.sql``); whether it matched (False: the lease was lost to another
        holder).

        ``until``: a monotonic time by which the answer must have come (else TemporaryError, 75).
        """
        rows = self._store.database.run_named(
            statement, self._params(**params), doing=f"{doing} {self.where}", until=until,
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
        row, self._claimed = self._claimed or self._store.leases.claim(self.connection, wait=self._wait), None
        self._fence, data, encrypted, spent, by, at = row[:6]
        # The task states came with the claim: the task's first load_state costs no statement.
        self._task_states = row[6] if len(row) > 6 else _UNREAD
        self._renewed_at = self._monotonic()
        try:
            tokens = self._store.crypto.unseal(self.connection, data, encrypted)
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
        """Hold room for a rescue file, then record the marker in one committed fenced UPDATE: the proof that both
        the store and, should it fail after the refresh, a rescue file take writes now. StorageError (73) when no
        rescue room can be held; nothing is sent then."""
        spent = token_hash(tokens.refresh_token)
        slot = self._store.rescue_slot(self.connection, rescue.needed_bytes(tokens))
        started = self._monotonic()
        done = self._fenced_update(
            "begin_refresh", "cannot record the start of a refresh of", spent=spent,
        )
        if not done:
            raise self._lease_lost("recording the start of a refresh of")
        self._renewed_at = self._confirmed_at = started
        return PendingRefresh(spent=spent, slot=slot)

    def longest_send_seconds(self) -> float:
        """How long after its last confirmation this run may still send a refresh: the lease must outlast the
        request and the save that follow it, by a margin."""
        return self._store.lease_seconds - self._store.refresh_tail_seconds

    def confirm_before_send(self) -> None:
        """Right before a refresh request (or its retry) is sent: prove the lease is still this run's.

        Twice: with the database (a fenced UPDATE that also renews the lease; refused when another run took the
        connection over), and by this run's own clock since that statement began (a run stopped — SIGSTOP, a
        VM paused — for longer than the lease allows gives the claim up). Either failing raises
        TemporaryError (75), and the refresh token is not sent.
        """
        started = self._monotonic()
        if not self._fenced_update("renew_lease", "cannot confirm the lease of"):
            raise self._lease_lost("confirming the lease before sending the refresh of")
        self._renewed_at = self._confirmed_at = started
        self._check_confirmation_fresh()

    def _check_confirmation_fresh(self) -> None:
        if self._confirmed_at is None:
            return
        elapsed = self._monotonic() - self._confirmed_at
        if elapsed > self.longest_send_seconds():
            raise TemporaryError(
                f"the lease of {self.where} was last confirmed {elapsed:.0f} s ago (this process was stopped or the "
                "machine paused): another run may have taken the connection over; the refresh token was not sent",
                hint="nothing was spent; the next run refreshes",
            )

    def refresh_failed(self, pending: Any, *, refused: bool) -> None:
        """Clear the marker; a database that is gone is only logged (the marker then explains the next run)."""
        try:
            self._fenced_update("clear_marker", "cannot clear the refresh marker of")
        except JobError as exc:
            log.warning("%s", exc)

    def save(self, pending: Any, tokens: TokenFile) -> None:
        """Write the new tokens (fenced), retrying until the save deadline — or, after a stop was asked for, until
        the grace leaves just time for a rescue file; then the rescue file reserved for it and exit 73.

        Every attempt is bounded (job.stores.postgres.watchdog), so a database that holds a statement without answering
        cannot keep the new tokens from their rescue file.
        """
        assert isinstance(pending, PendingRefresh)
        sealed = self._store.crypto.seal(self.connection, tokens)
        began = time.monotonic()
        deadline = began + self._store.save_deadline_seconds
        pause = SAVE_RETRY_FIRST_SECONDS
        while True:
            cap = self._store.stop_cap() if self._store.stop_cap is not None else None
            if cap is not None:
                deadline = min(deadline, max(cap, began + LAST_SAVE_TRY_SECONDS))
            try:
                if self._fenced_update("save_tokens",
                                       "cannot save the new tokens of", until=deadline, **sealed):
                    self._renewed_at = self._monotonic()
                    log.info("saved refresh token %s for %s", fingerprint(tokens.refresh_token), self.where)
                    return
                why = "its lease was lost: another run took the connection over, so its tokens were not overwritten"
                break
            except JobError as exc:
                why = f"it could not be written for {time.monotonic() - began:.0f} s: {exc.message}"
                cap = self._store.stop_cap() if self._store.stop_cap is not None else None
                if cap is not None:
                    # Asked to stop while this attempt waited: the rescue file now, while the grace leaves time.
                    why = f"the run was asked to stop and it could not be written before then: {exc.message}"
                    deadline = min(deadline, max(cap, began + LAST_SAVE_TRY_SECONDS))
                if time.monotonic() + pause >= deadline:
                    break
                log.warning("%s; retrying", exc.message)
                self._pause(pause)
                pause = min(pause * 2, SAVE_RETRY_MAX_SECONDS)
        raise self._rescue(tokens, pending, why)

    def _pause(self, seconds: float) -> None:
        """Sleep between save attempts, cut short when a stop is asked for meanwhile (its cap decides then)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._store.stop_cap is not None and self._store.stop_cap() is not None:
                return
            self._store.sleep(min(left, 0.1))

    def _rescue_directories(self) -> list[Path]:
        return rescue.rescue_directories(self._store.state_dir, self._store.fallback_rescue_dir)

    def _rescue(self, tokens: TokenFile, pending: PendingRefresh, why: str) -> TokenNotSavedError:
        slot = pending.slot
        if slot is None:  # pragma: no cover - begin_refresh always reserves one
            raise RuntimeError("a save without a rescue reservation")
        self._store.rescue_slot_used(slot)
        try:
            path = slot.write(tokens, self.connection, pending.spent, self._store.clock())
            self._give_to_the_state_directorys_owner(path.parent, path)
        except OSError as exc:
            return TokenNotSavedError(
                f"the refresh of {self.where} succeeded but the store did not take the new tokens ({why}), and "
                f"no rescue file could be written in {slot.directory} ({exc.strerror or exc}): the new refresh token "
                f"is lost; authorize again: aweber-job --connection {self.connection} login"
            )
        in_memory = path.parent != self._rescue_directories()[0]
        where = " (in memory: it is lost if the machine restarts)" if in_memory else ""
        return TokenNotSavedError(
            f"the refresh of {self.where} succeeded but the store did not take the new tokens ({why}); they "
            f"were saved to the rescue file {path}{where}. The next run of this connection on this machine puts them "
            "in place when they follow the stored refresh token"
        )

    def _give_to_the_state_directorys_owner(self, *paths: Path) -> None:
        """Run as root over a service's state directory (``sudo aweber-job …``), hand the rescue directory and
        file to that directory's owner: the service's next run must be able to read and put them back."""
        if os.geteuid() != 0 or not Path(paths[0]).is_relative_to(self._store.state_dir):
            return
        owner = os.stat(self._store.state_dir)
        if owner.st_uid == 0:
            return
        for path in paths:
            os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)

    def hold(self) -> None:
        """The connection's lease alone (a revoked one too): its tokens are neither unsealed nor needed."""
        self._fence = self._store.leases.claim(self.connection, wait=self._wait, allow_revoked=True)[0]
        self._renewed_at = self._monotonic()

    def load_state(self, task_name: str) -> dict[str, Any]:
        whole, self._task_states = self._task_states, _UNREAD
        if whole is _UNREAD:
            if self._fence is None:
                # Read outside a run (state show): a store without the schema says to run store init (78).
                self._store.schema.ready()
            rows = self._store.database.run_named(
                "load_task_state", {"name": self.connection, "task": task_name},
                doing=f"cannot read the state of task {task_name} of {self.where}",
            )
            if not rows:
                raise not_found(self._store.description, self.connection)
            whole = rows[0][1]
        state = whole.get(task_name) if isinstance(whole, dict) else None
        if not isinstance(whole, dict) or not isinstance(state, (dict, type(None))):
            # Only a hand edit makes it so; starting over from --since would report subscribers twice.
            raise TokenFileError(
                f"the task state of {self.where} is not a JSON object"
                + ("" if not isinstance(whole, dict) else f" for task {task_name}"),
                hint="set it right in the database (task_state = '{}' starts every task over from --since)",
            )
        return state or {}

    def save_state(self, task_name: str, state: dict[str, Any]) -> None:
        self._task_states = _UNREAD
        done = self._fenced_update(
            "save_task_state",
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
            if self._fenced_update("renew_lease", "cannot renew the lease of"):
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

    def finish(self, exit_code: int | None, interval_seconds: float, *, account_id: int | None = None) -> None:
        """Record how the run ended and release the lease, in one fenced statement; then close.

        ``exit_code`` None: the run never held the connection, so there is nothing to record.
        """
        fence = self._fence
        if fence is not None and exit_code is not None:
            try:
                recorded = self._fenced_update(
                    "finish", "cannot record the run of",
                    code=exit_code, interval=float(interval_seconds), backoff=BACKOFF_FIRST_SECONDS,
                    account_id=account_id if account_id is not None and 0 < account_id < 2**63 else None,
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
                self._store.leases.release(self.connection, fence)
            except JobError as exc:
                log.debug("%s", exc)
        if self._owns_store:
            self._store.close()

    # -- rescue files --

    def _rescue_files(self) -> list[rescue.Found]:
        """This connection's rescue files in every rescue directory, oldest first."""
        try:
            return rescue.find(self._rescue_directories(), self.connection)
        except OSError as exc:
            # It may hold the successor of the stored refresh token: spending that token could revoke the grant.
            raise StorageError(
                f"cannot read the rescue directory {exc.filename or self._rescue_directories()[0]} "
                f"({exc.strerror or exc}), which may hold newer tokens of {self.where}; the stored refresh token "
                "was not sent",
                hint="give it back to the user the job runs as (or run the job as its owner)",
            ) from exc

    def _read_rescue(self, path: Path) -> TokenFile | None:
        tokens = rescue.read(path, self.connection)
        if tokens is not None:
            REDACTOR.add(*tokens.secrets())
        return tokens

    def _put_back_rescues(self, tokens: TokenFile) -> tuple[TokenFile, bool]:
        """Put in place a rescue file that holds the successor of the stored refresh token; tidy the rest."""
        put_back = False
        for found in self._rescue_files():
            path, from16 = found.path, found.from16
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
                if not self._fenced_update("put_rescued", "cannot put the rescued tokens into",
                                           **self._store.crypto.seal(self.connection, rescued)):
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

    # -- the commands on one connection outside a run (status, revoke) --

    def status(self) -> ConnectionStatus:
        """The connection as the store keeps it, read without claiming the lease; never contacts AWeber."""
        from job.stores.postgres.status import ConnectionStatus

        return ConnectionStatus(self._store.read(self.connection), self._store.description)

    def open_for_revoke(self) -> Revocable:
        """Claim the lease and load the tokens, as for a run: no run refreshes them while they are revoked."""
        tokens = self.open().tokens
        where = f"connection '{self.connection}'"
        return Revocable(tokens=tokens, where=where, kept=f"{where} was kept in the store")

    def mark_revoked(self) -> Revoked:
        """Mark the connection revoked (its tokens wiped); the mark moves the fence, so a run that held it before
        cannot write the revoked tokens back."""
        self._store.mark_revoked(self.connection)
        name = self.connection
        return Revoked(done=f"marked the connection '{name}' revoked (aweber-job connections remove {name} deletes it)")

    # -- login of this connection --

    # What existing_for_login found, for save_login: whether a row is replaced, and the tokens --force replaces.
    _login_replaces = False
    _login_existing: TokenFile | None = None

    def existing_for_login(self, *, force: bool) -> TokenFile | None:
        """UsageError (64) for a live connection of this name without ``force`` (a revoked one is always replaced);
        else the tokens ``force`` replaces."""
        try:
            view = self._store.read(self.connection)
        except TokenFileError:
            view = None
        self._login_replaces = view is not None
        if view is not None and not view.info.revoked and not force:
            raise UsageError(
                f"connection '{self.connection}' is already in the store {self._store.description}; use --force to "
                f"replace it (that does not revoke its refresh token: aweber-job --connection {self.connection} "
                "revoke first ends it)"
            )
        existing = view.tokens if view is not None and force else None
        if existing is not None:
            REDACTOR.add(*existing.secrets())
        self._login_existing = existing
        return existing

    def check_login_writable(self) -> None:
        self._store.check_writable()

    def save_login(self, exchange: Exchange, *, force: bool) -> TokenFile:
        """Spend the code, then put the tokens in the store; tokens the store then refuses go to a 0600 rescue file
        that ``connections import`` puts in place."""
        _, tokens = exchange(self._login_existing)
        try:
            self._store.put_tokens(self.connection, tokens, replace=self._login_replaces)
        except JobError as exc:
            raise self._login_rescue(tokens, exc) from exc
        return tokens

    def _login_rescue(self, tokens: TokenFile, cause: JobError) -> TokenNotSavedError:
        """Keep the tokens of an authorization the store refused in a 0600 rescue file, and say how to import it."""
        from job.stores.durable import write_file_atomically
        from job.stores.postgres.common import RESCUE_DIRECTORY, file_safe

        name = self.connection
        stamp = utc_stamp(time.time())
        path = self._store.state_dir / RESCUE_DIRECTORY / f"{file_safe(name)}.{stamp}.login.json"
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_file_atomically(path, tokens.to_bytes())
        except OSError as exc:
            return TokenNotSavedError(
                f"authorized, but the store did not take the tokens of connection '{name}' ({cause.message}) and "
                f"the rescue file {path} could not be written ({exc.strerror or exc}); run the login again once the "
                "store takes writes"
            )
        return TokenNotSavedError(
            f"authorized, but the store did not take the tokens of connection '{name}' ({cause.message}); they "
            f"were saved to the rescue file {path}. Once the store takes writes: aweber-job connections import "
            f"{name} {path}" + " (with --force if the connection is there)"
        )

    def report_login(self, tokens: TokenFile, out: IO[str]) -> None:
        name, description = self.connection, self._store.description
        log.info(
            "authorized: connection '%s' in the store %s; refresh token %s, access token expires %s",
            name, description, fingerprint(tokens.refresh_token), format_expiry(tokens.expires_at, time.time()),
            extra={"refresh_token_after": fingerprint(tokens.refresh_token), "expires_at": tokens.expires_at},
        )
        out.write(
            f"\nAuthorized. Connection '{name}' in {description} ({tokens.shape} shape, "
            f"{'encrypted' if self._store.crypto.encrypts else 'NOT encrypted: set AWEBER_STORE_KEY'}).\n"
            f"  refresh token {fingerprint(tokens.refresh_token)}, access token {fingerprint(tokens.access_token)} "
            f"expires {format_expiry(tokens.expires_at, time.time())}\n"
            f"Next: aweber-job --connection {name} run   (or run --all for every due connection)\n"
        )
        out.flush()
