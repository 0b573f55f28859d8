"""The token half of a run: lock → load → reserve → refresh → save, and refreshes during the task.

:class:`TokenKeeper` holds the lock for the whole run and is the only thing that spends a refresh
token. The API client asks it for each request's ``Authorization`` header: a bearer token, refreshed
when it nears expiry or is refused, or, for a legacy OAuth 1.0a token file, a signature (those
tokens never expire, so there is nothing to refresh).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import requests

from job.auth.oauth import Client, TokenAnswer, TokenCall, refresh_tokens, warn_on_clock_skew
from job.auth.oauth1 import DISCONNECTED_HINT
from job.auth.tokens import TokenFile, assumed_lifetime, fingerprint, format_expiry, refresh_margin
from job.config import Settings
from job.errors import AuthError, ConfigError, ProtocolError
from job.logs import REDACTOR
from job.shutdown import Interrupted, Shutdown, StoppedError
from job.stores import connection_store
from job.stores.base import ConnectionStore

log = logging.getLogger(__name__)


def resolve_client(settings: Settings, tokens: TokenFile | None) -> Client:
    """The client from the environment, else from a ``credentials.json`` shaped token file."""
    client_id = settings.client_id or (tokens.client_id if tokens else None)
    if not client_id:
        raise ConfigError(["AWEBER_CLIENT_ID is not set (and the token file holds no client_id)"])
    if settings.client_secret is not None:
        secret: str | None = settings.client_secret.reveal()
    elif tokens is not None and settings.client_id in (None, tokens.client_id):
        secret = tokens.client_secret
    else:
        secret = None
    REDACTOR.add(secret)
    return Client(client_id=client_id, client_secret=secret)


@dataclass
class RefreshStats:
    """What the refreshes of this run cost, for logs and metrics."""

    refreshes: int = 0
    token_requests: int = 0
    last_refresh_seconds: float | None = None


@dataclass
class TokenKeeper:
    """Holds the store open (its lock or lease), the current tokens, and the one way to refresh and save them."""

    settings: Settings
    session: requests.Session
    # None: the store AWEBER_STORE names (the token file by default), for the configured connection.
    store: ConnectionStore[Any] = None  # type: ignore[assignment]
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    # The run's stop request (signals, the time limit): no refresh and no retry of one is sent after it.
    shutdown: Shutdown | None = None
    stats: RefreshStats = field(default_factory=RefreshStats)
    _open: bool = field(default=False, init=False, repr=False)
    _tokens: TokenFile | None = field(default=None, init=False, repr=False)
    _client: Client | None = field(default=None, init=False, repr=False)
    # Why AWeber may refuse the stored refresh token, as the store's record tells (for exit 77).
    _explanation: str | None = field(default=None, init=False, repr=False)
    # The record proves the stored refresh token spent: presenting it again could revoke the grant.
    _spent_for_sure: bool = field(default=False, init=False, repr=False)
    # When this run's last refresh answer arrived and the lifetime it gave (None: none usable).
    _refreshed_at: float | None = field(default=None, init=False, repr=False)
    _answer_lifetime: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.store is None:
            self.store = connection_store(self.settings)

    @property
    def where(self) -> str:
        return self.store.where

    @property
    def tokens(self) -> TokenFile:
        if self._tokens is None:
            raise RuntimeError("the tokens are not loaded")
        return self._tokens

    @property
    def access_token(self) -> str:
        return self.tokens.access_token

    def open(self) -> TokenKeeper:
        """Open the store: its lock or lease, then the tokens (steps 1–2).

        A stop signal cuts this short (StoppedError, 75): nothing is spent here, and what opening does
        besides waiting (putting back an earlier run's save) survives being cut short as it survives a kill.
        """
        if self.shutdown is None:
            opened = self.store.open()
        else:
            try:
                with self.shutdown.interruptible():
                    opened = self.store.open()
            except Interrupted:
                raise StoppedError(f"the run was asked to stop ({self.shutdown.reason}) while opening "
                                   f"{self.where}; nothing was sent") from None
        self._open = True
        try:
            self._explanation, self._spent_for_sure = opened.explanation, opened.spent_for_sure
            self._tokens = opened.tokens
            REDACTOR.add(*self._tokens.secrets())
            if self._tokens.oauth1 is None:
                # OAuth 1.0a files carry their own consumer key; no OAuth 2 client is involved.
                self._client = resolve_client(self.settings, self._tokens)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Release the lock or lease."""
        if self._open:
            self._open = False
            self.store.close()

    def __enter__(self) -> TokenKeeper:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def refresh(self, reason: str) -> TokenFile:
        """Reserve, refresh, save (steps 3–5); return the saved tokens.

        Raises StorageError (73) before anything is sent when the reservation or the lock file's record
        of the refresh cannot be written, the token-call errors (75, 76, 77) with the file untouched (an
        invalid_grant also says why, when the record shows an earlier run lost the answer),
        TokenNotSavedError (73) when saving fails, and ProtocolError (76) after saving when the answer
        carried a new refresh token but nothing this run can use.
        """
        if self._tokens is not None and self._tokens.oauth1 is not None:
            raise AuthError("OAuth 1.0a tokens cannot be refreshed", hint=DISCONNECTED_HINT)
        if self._client is None or self._tokens is None or not self._open:
            raise RuntimeError("open() the keeper before refreshing")
        if self._spent_for_sure and self._explanation:
            raise AuthError(
                f"the refresh token in {self.where} is spent: {self._explanation}; it was not sent again (a server "
                "that sees a spent token again may revoke the whole authorization)",
                hint="authorize again: aweber-job login --force",
            )
        if self.shutdown is not None:
            self.shutdown.check_may_send("the refresh")
        pending = self.store.begin_refresh(self._tokens)
        old_fingerprint = fingerprint(self._tokens.refresh_token)
        call = TokenCall(
            session=self.session,
            url=self.settings.token_url,
            timeout_seconds=self.settings.http_timeout_seconds,
            deadline_seconds=self.settings.retry_deadline_seconds,
            clock=self.clock,
            monotonic=self.monotonic,
            sleep=self._sleep_unless_stopped,
            before_send=self._before_send,
        )
        started = self.monotonic()
        log.debug("refreshing (%s); refresh token %s", reason, old_fingerprint)
        try:
            answer = refresh_tokens(call, self._client, self._tokens.refresh_token)
        except BaseException as exc:
            # Refused, or never sent: the token was not spent by this refresh.
            self.store.refresh_failed(pending, refused=isinstance(exc, AuthError) or call.attempts == 0)
            if isinstance(exc, AuthError) and self._explanation and "invalid_grant" in exc.message:
                raise AuthError(f"{exc.message}; {self._explanation}", hint=exc.hint) from exc
            raise
        finally:
            self.stats.token_requests += call.attempts
        self._explanation, self._spent_for_sure = None, False
        self._remember(answer)
        lifetime = answer.body.get("expires_in")
        self._refreshed_at = answer.received_at
        self._answer_lifetime = float(lifetime) if isinstance(lifetime, (int, float)) else None
        new_tokens = self._tokens.with_answer(answer.body, answer.received_at)
        self._tokens = new_tokens
        self.store.save(pending, new_tokens)
        self.stats.refreshes += 1
        self.stats.last_refresh_seconds = self.monotonic() - started
        if answer.unusable:
            raise ProtocolError(
                f"the token endpoint's answer to the refresh {answer.unusable}; the new refresh token was saved "
                f"({old_fingerprint} -> {fingerprint(new_tokens.refresh_token)}) in {self.where} and the next run "
                "will refresh again"
            )
        warn_on_clock_skew(answer)
        log.info(
            "token refreshed (%s): access token expires %s; refresh token %s -> %s%s",
            reason,
            format_expiry(new_tokens.expires_at, self.clock()),
            old_fingerprint,
            fingerprint(new_tokens.refresh_token),
            "" if answer.rotated else " (the server sent no new refresh token; the old one is kept)",
            extra={
                "expires_at": new_tokens.expires_at,
                "refresh_token_before": old_fingerprint,
                "refresh_token_after": fingerprint(new_tokens.refresh_token),
            },
        )
        return new_tokens

    def _before_send(self) -> None:
        """Right before each refresh request goes out: not after a stop; and the store proves its hold."""
        if self.shutdown is not None:
            self.shutdown.check_may_send("the refresh (or its retry)")
        self.store.confirm_before_send()

    def _sleep_unless_stopped(self, seconds: float) -> None:
        """A wait between refresh attempts, ended at once by a stop (the next send is then refused)."""
        if self.shutdown is None:
            self.sleep(seconds)
        elif self.shutdown.event.wait(seconds):
            return

    def _remember(self, answer: TokenAnswer) -> None:
        for key in ("access_token", "refresh_token"):
            value = answer.body.get(key)
            if isinstance(value, str):
                REDACTOR.add(value)

    @property
    def legacy_oauth1(self) -> bool:
        """Whether the token file holds OAuth 1.0a credentials (never refreshed)."""
        return self.tokens.oauth1 is not None

    def authorize(
        self, method: str, url: str, params: Mapping[str, str | int] | None, *, leeway_seconds: float
    ) -> dict[str, str]:
        """The ``Authorization`` header for one request, refreshing a bearer token that nears expiry.

        OAuth 1.0a signs ``method`` and ``url`` with ``params`` encoded into its query exactly as
        requests sends them, since the signature covers every query parameter.
        """
        self.store.keep_alive()
        credentials = self.tokens.oauth1
        if credentials is None:
            return {"Authorization": f"Bearer {self.ensure_fresh(leeway_seconds)}"}
        prepared = requests.Request(method, url, params=dict(params) if params else None).prepare()
        return credentials.sign(method, str(prepared.url))

    def ensure_fresh(self, leeway_seconds: float) -> str:
        """Return an access token good for at least ``leeway_seconds``, refreshing when it is not.

        Before this run has refreshed, the token file's expiry decides (unknown: refresh). After a
        refresh, at most one more per access-token lifetime: an answer without a usable lifetime,
        or with one shorter than the leeway, is taken to live AWeber's documented two hours, and
        each token is used for half its lifetime at least (see job.auth.tokens.assumed_lifetime).
        """
        now = self.clock()
        if self._refreshed_at is None:
            due = self.tokens.expires_within(leeway_seconds, now)
        else:
            lifetime = assumed_lifetime(self._answer_lifetime, leeway_seconds)
            due = now >= self._refreshed_at + lifetime - refresh_margin(lifetime, leeway_seconds)
        if due:
            self.refresh("the access token expires soon")
        return self.access_token
