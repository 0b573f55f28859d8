"""The seam between the run cycle and whatever holds a connection's tokens and task state.

The cycle (:mod:`job.run.keeper`, :mod:`job.run.single`) speaks only to a :class:`ConnectionStore`; which one
is behind it is decided once, from ``AWEBER_STORE``: the token file (:class:`job.stores.file.store.FileStore`,
the default) or a PostgreSQL database (:mod:`job.stores.postgres`). Like a storage driver behind a
repository interface, each store keeps its own guarantees inside these few calls, in the order the
cycle makes them::

    open()                       exclusive hold (lock or lease), tidy what an earlier run left, load
    begin_refresh(tokens)        prove the save (and a rescue) can happen, record that a refresh starts; nothing sent
    confirm_before_send()        right before each refresh request: prove the hold is still this run's
    refresh_failed(p, refused)   the refresh sent nothing usable back: undo what begin_refresh reserved
    save(p, new_tokens)          durably, or a rescue file and TokenNotSavedError (73)
    keep_alive()                 called before each API request: renew the hold when it nears its end
    load_state(task) / save_state(task, state)
    close()                      release the hold
    finish(exit_code, interval)  after a run: record how it ended (the database store) and release the hold

The commands that act on one connection outside a run use the same store:

    hold()                       the run's hold alone, tokens not loaded: to change the task state (state rewind)
    status()                     what is kept, read without taking the hold and without the network
    open_for_revoke()            the hold and the live tokens, with the words a refused revoke uses
    mark_revoked()               after AWeber accepted the revoke: end the tokens in the store
    existing_for_login(force)    refuse to replace tokens without --force; the tokens --force replaces
    check_login_writable()       prove the save can happen before a person approves the app
    save_login(exchange, force)  spend the code (exchange) and keep what it brought, durably or in a rescue file
    report_login(tokens, out)    say what was kept where, and what to do next

A store raises only :class:`job.errors.JobError` subclasses, so the exit codes stay the cycle's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

from job.auth.tokens import TokenFile
from job.config import DEFAULT_CONNECTION

if TYPE_CHECKING:
    # requests comes with it: the stores that never log in (status, a run) need not load it.
    from job.auth.oauth import TokenAnswer

__all__ = ["DEFAULT_CONNECTION", "ConnectionStore", "Exchange", "Opened", "Revocable", "Revoked", "StatusView"]

# login's exchange of the authorization code, given the tokens it replaces (their shape is kept): AWeber's
# answer and the tokens to keep. A store calls it once it is ready to keep them (under its lock).
Exchange = Callable[["TokenFile | None"], "tuple[TokenAnswer, TokenFile]"]


@dataclass(frozen=True)
class Opened:
    """What :meth:`ConnectionStore.open` found.

    ``explanation`` says why AWeber may refuse the refresh token (an earlier run's answer was lost),
    for the message of an ``invalid_grant``; ``spent_for_sure`` means the store proves that token was
    spent already, so it must not be sent again.
    """

    tokens: TokenFile
    explanation: str | None = None
    spent_for_sure: bool = False


@dataclass(frozen=True)
class Revocable:
    """What :meth:`ConnectionStore.open_for_revoke` found: the live tokens, and how a refused revoke names them.

    ``where`` names the tokens (``token file PATH``) and ``kept`` says they were kept, in the message
    of a revoke AWeber refused.
    """

    tokens: TokenFile
    where: str
    kept: str


@dataclass(frozen=True)
class Revoked:
    """What :meth:`ConnectionStore.mark_revoked` did, for the last words of the revoke's log line."""

    done: str
    #: Fields the log line carries for machines (``--log-format json``).
    extra: dict[str, Any] = field(default_factory=dict)


class StatusView(Protocol):
    """What ``status`` shows of a store, and the exit code it ends with."""

    @property
    def exit_code(self) -> int: ...

    def render(self, *, as_json: bool) -> str:
        """Human lines, or one JSON object with ``as_json``; ends with a newline."""
        ...


# What begin_refresh prepared for one refresh (a reservation, a claim), handed back to save or
# refresh_failed; each store has its own.
PendingSave = TypeVar("PendingSave")


class ConnectionStore(Protocol[PendingSave]):
    """One connection's tokens and task state; see the module docstring for the order of calls."""

    #: Where the tokens live, for messages: the token file's path, or ``connection 'acme'``.
    where: str
    #: The name of the connection (``default`` for the token file).
    connection: str

    def open(self) -> Opened: ...

    def begin_refresh(self, tokens: TokenFile) -> PendingSave: ...

    def confirm_before_send(self) -> None:
        """Raise (nothing is sent then) unless this run still holds the connection, with time for the request."""
        ...

    def refresh_failed(self, pending: PendingSave, *, refused: bool) -> None: ...

    def save(self, pending: PendingSave, tokens: TokenFile) -> None: ...

    def keep_alive(self) -> None: ...

    def load_state(self, task_name: str) -> dict[str, Any]: ...

    def hold(self) -> None:
        """Take the hold a run takes (lock or lease; waited for as a run waits) without loading the tokens, so the
        task state can be changed outside a run; close() releases it."""
        ...

    def save_state(self, task_name: str, state: dict[str, Any]) -> None: ...

    def state_location(self, task_name: str) -> str:
        """Where the task's state is kept, and how to start it again, for a message."""
        ...

    def close(self) -> None: ...

    def finish(self, exit_code: int | None, interval_seconds: float, *, account_id: int | None = None) -> None:
        """After a run: record how it ended (``exit_code`` None: it never held the connection) and the one AWeber
        account it read, if it knows it, then close."""
        ...

    def status(self) -> StatusView:
        """What the store keeps for this connection, read without taking the hold; never contacts AWeber."""
        ...

    def open_for_revoke(self) -> Revocable:
        """Take the hold and load the live tokens to revoke (close() releases them)."""
        ...

    def mark_revoked(self) -> Revoked:
        """AWeber accepted the revoke of the refresh token: end the tokens in the store, under the hold."""
        ...

    def existing_for_login(self, *, force: bool) -> TokenFile | None:
        """UsageError (64) when the store holds live tokens and ``force`` is not given; else the tokens
        ``force`` replaces (None when there are none worth keeping the shape of)."""
        ...

    def check_login_writable(self) -> None:
        """StorageError (73) unless the store takes writes now: nothing has been asked of AWeber yet."""
        ...

    def save_login(self, exchange: Exchange, *, force: bool) -> TokenFile:
        """Spend the code (``exchange``) when the tokens can be kept, and keep them; the tokens kept.

        When the store refuses them after all, they go to a rescue file (TokenNotSavedError, 73).
        """
        ...

    def report_login(self, tokens: TokenFile, out: IO[str]) -> None:
        """Log and print what the login kept where, and what to run next."""
        ...
