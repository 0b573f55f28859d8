"""What the stand-in knows: OAuth clients, tokens, authorization codes, accounts and their lists.

Token rules, as docs/aweber-api.md §1.6 leads us to assume for AWeber:

* an access token lives ``access_token_lifetime_seconds`` (AWeber: two hours) by the injected clock;
* every refresh token works exactly once: a refresh answers a new access token *and* a new
  refresh token and kills the one presented. Presenting a spent token is refused
  (``invalid_grant``) but does not revoke the chain it belonged to, so whoever holds the newest
  token keeps working — unless ``reuse_detection`` is on: then presenting a spent refresh token
  revokes the whole grant (every refresh and access token descended from the same authorization),
  as OAuth 2.1 servers that detect refresh-token replay do. AWeber documents neither;
* revoking a refresh token also kills the access tokens of the same grant (RFC 7009 §2.1);
* a "disconnected" client (the customer removed the integration from their account) can still
  refresh, but none of its access tokens — old or new — is accepted by the API.
"""

from __future__ import annotations

import secrets
import string
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from job.standin.subscribers import SubscriberList

# A public client (PKCE, no secret) is the kind a demo can run without configuration.
DEFAULT_CLIENTS: Mapping[str, str | None] = {"demo-client": None}
DEFAULT_SCOPE = "account.read list.read subscriber.read"
DEFAULT_ACCESS_TOKEN_LIFETIME_SECONDS = 7200
AUTHORIZATION_CODE_LIFETIME_SECONDS = 600

# AWeber's tokens in its documented traces are 32 letters and digits (docs/aweber-api.md §1.5).
_TOKEN_ALPHABET = string.ascii_letters + string.digits
_TOKEN_CHARS = 32


class Refused(Exception):
    """The request names a token or code that the stand-in does not accept; the text says why."""


@dataclass
class AccessToken:
    """A live access token's bookkeeping (never its value)."""

    client_id: str
    scope: str
    grant_id: int
    expires_at: float


@dataclass(frozen=True)
class RefreshToken:
    """A live refresh token's bookkeeping (never its value)."""

    client_id: str
    scope: str
    grant_id: int


@dataclass(frozen=True)
class AuthorizationCode:
    """An issued authorization code and what it was issued for."""

    client_id: str
    redirect_uri: str
    scope: str
    code_challenge: str | None
    expires_at: float


@dataclass
class Account:
    """An AWeber customer account and its lists, by id."""

    id: int
    company: str
    lists: dict[int, SubscriberList] = field(default_factory=dict)


def new_token() -> str:
    """Return a fresh random token or code."""
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(_TOKEN_CHARS))


class State:
    """All mutable state of one stand-in; every method takes ``lock`` so handlers can share it."""

    def __init__(
        self,
        clients: Mapping[str, str | None],
        *,
        access_token_lifetime_seconds: int,
        clock: Callable[[], float],
        reuse_detection: bool = False,
    ) -> None:
        if not clients:
            raise ValueError("at least one client is needed")
        if access_token_lifetime_seconds <= 0:
            raise ValueError("access_token_lifetime_seconds must be positive")
        self.lock = threading.RLock()
        self.clock = clock
        self.access_token_lifetime_seconds = access_token_lifetime_seconds
        self._clients = dict(clients)
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self.reuse_detection = reuse_detection
        # Spent refresh tokens and the grant each belonged to, so a replay can revoke that grant.
        self._spent_refresh: dict[str, int] = {}
        self._spent_presented = 0
        self._grants_revoked_for_reuse = 0
        self._codes: dict[str, AuthorizationCode] = {}
        self._redeemed_codes: dict[str, int] = {}
        self._disconnected: set[str] = set()
        self._next_grant_id = 1
        self._accounts: dict[int, Account] = {}
        # Every token and code ever handed out, for tests that scan the job's output for secrets.
        self._issued: list[str] = []

    # -- clients ------------------------------------------------------------------------------

    def is_known_client(self, client_id: str) -> bool:
        """Return whether ``client_id`` is registered."""
        return client_id in self._clients

    def client_secret(self, client_id: str) -> str | None:
        """Return the client's secret, or None for a public client."""
        return self._clients[client_id]

    # -- tokens -------------------------------------------------------------------------------

    def issue_tokens(self, client_id: str, scope: str = DEFAULT_SCOPE) -> dict[str, object]:
        """Register a new access/refresh token pair and return it shaped like a token endpoint answer."""
        with self.lock:
            if client_id not in self._clients:
                raise ValueError(f"unknown client id {client_id!r}")
            grant_id = self._next_grant_id
            self._next_grant_id += 1
            return self._issue(client_id, scope, grant_id)

    def _issue(self, client_id: str, scope: str, grant_id: int) -> dict[str, object]:
        access_token, refresh_token = new_token(), new_token()
        self._access[access_token] = AccessToken(
            client_id, scope, grant_id, self.clock() + self.access_token_lifetime_seconds
        )
        self._refresh[refresh_token] = RefreshToken(client_id, scope, grant_id)
        self._issued += (access_token, refresh_token)
        return {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "token_type": "bearer",
            "expires_in": self.access_token_lifetime_seconds,
        }

    def rotate_refresh_token(self, client_id: str, refresh_token: str) -> dict[str, object]:
        """Spend ``refresh_token`` and return a new pair; raise Refused when it is not live for this client."""
        with self.lock:
            held = self._refresh.get(refresh_token)
            if held is None:
                spent_grant = self._spent_refresh.get(refresh_token)
                if spent_grant is not None:
                    self._spent_presented += 1
                    if self.reuse_detection:
                        self._revoke_grant(spent_grant)
                        self._grants_revoked_for_reuse += 1
                        raise Refused(
                            "the refresh token was already used; reuse detected, every token of this grant is revoked"
                        )
                    raise Refused("the refresh token was already used; each refresh token works once")
                raise Refused("the refresh token is unknown or was revoked")
            if held.client_id != client_id:
                raise Refused("the refresh token was issued to another client")
            del self._refresh[refresh_token]
            self._spent_refresh[refresh_token] = held.grant_id
            return self._issue(client_id, held.scope, held.grant_id)

    def access_token_problem(self, access_token: str) -> str | None:
        """Return why the API refuses ``access_token``, or None when it is accepted."""
        with self.lock:
            held = self._access.get(access_token)
            if held is None:
                return "Invalid token."
            if held.client_id in self._disconnected:
                return "Invalid token: the account has disconnected this application."
            if self.clock() >= held.expires_at:
                return "Access token expired."
            return None

    def revoke_token(self, client_id: str, token: str) -> None:
        """Kill a refresh or access token of ``client_id``; unknown tokens are ignored (RFC 7009 §2.2)."""
        with self.lock:
            refresh = self._refresh.get(token)
            access = self._access.get(token)
            owner = refresh.client_id if refresh else access.client_id if access else None
            if owner is None:
                return
            if owner != client_id:
                raise Refused("the token was issued to another client")
            if refresh is not None:
                del self._refresh[token]
                self._drop_grant_access_tokens(refresh.grant_id)
            if access is not None:
                del self._access[token]

    def reuse_stats(self) -> dict[str, int]:
        """Return how often a spent refresh token was presented, and how many grants that revoked."""
        with self.lock:
            return {
                "spent_refresh_tokens_presented": self._spent_presented,
                "grants_revoked_for_reuse": self._grants_revoked_for_reuse,
            }

    def issued_secrets(self) -> list[str]:
        """Return every access token, refresh token and authorization code issued, live or not, and every
        PKCE verifier a client sent: the values a leak scan of the client's output looks for."""
        with self.lock:
            return list(self._issued)

    def note_received_secret(self, value: str) -> None:
        """Count a secret a client sent (a PKCE verifier) among :meth:`issued_secrets`."""
        with self.lock:
            self._issued.append(value)

    def live_refresh_tokens(self) -> set[str]:
        """Return the refresh tokens that a refresh request would currently accept."""
        with self.lock:
            return set(self._refresh)

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expired; later ones live normally."""
        with self.lock:
            for held in self._access.values():
                held.expires_at = float("-inf")

    def revoke_all_access_tokens(self, *, disconnect: bool = False) -> None:
        """Forget every access token; with ``disconnect`` also disconnect every client."""
        with self.lock:
            self._access.clear()
            if disconnect:
                self._disconnected.update(self._clients)

    def disconnect(self, client_id: str | None = None) -> None:
        """Refuse every access token of ``client_id`` (all clients when None), even freshly refreshed ones."""
        with self.lock:
            if client_id is None:
                self._disconnected.update(self._clients)
            elif client_id in self._clients:
                self._disconnected.add(client_id)
            else:
                raise ValueError(f"unknown client id {client_id!r}")

    def reconnect(self, client_id: str | None = None) -> None:
        """Undo :meth:`disconnect` for ``client_id`` (all clients when None)."""
        with self.lock:
            if client_id is None:
                self._disconnected.clear()
            else:
                self._disconnected.discard(client_id)

    def _drop_grant_access_tokens(self, grant_id: int) -> None:
        for token in [token for token, held in self._access.items() if held.grant_id == grant_id]:
            del self._access[token]

    # -- authorization codes ------------------------------------------------------------------

    def create_code(self, client_id: str, redirect_uri: str, scope: str, code_challenge: str | None) -> str:
        """Issue a one-time authorization code."""
        with self.lock:
            code = new_token()
            self._issued.append(code)
            self._codes[code] = AuthorizationCode(
                client_id, redirect_uri, scope, code_challenge,
                self.clock() + AUTHORIZATION_CODE_LIFETIME_SECONDS,
            )
            return code

    def take_code(self, code: str) -> AuthorizationCode:
        """Consume ``code`` and return what it was issued for; raise Refused for a bad, used or expired code.

        A code presented a second time also revokes the tokens issued for it (RFC 6749 §4.1.2).
        """
        with self.lock:
            issued = self._codes.pop(code, None)
            if issued is None:
                grant_id = self._redeemed_codes.get(code)
                if grant_id is not None:
                    self._revoke_grant(grant_id)
                    raise Refused("the authorization code was already used")
                raise Refused("the authorization code is unknown")
            if self.clock() >= issued.expires_at:
                raise Refused("the authorization code has expired")
            return issued

    def redeem_code(self, code: str, issued: AuthorizationCode) -> dict[str, object]:
        """Issue the tokens for an accepted code and remember the grant in case the code comes back."""
        with self.lock:
            grant_id = self._next_grant_id
            self._next_grant_id += 1
            self._redeemed_codes[code] = grant_id
            return self._issue(issued.client_id, issued.scope, grant_id)

    def _revoke_grant(self, grant_id: int) -> None:
        for token in [token for token, held in self._refresh.items() if held.grant_id == grant_id]:
            del self._refresh[token]
        self._drop_grant_access_tokens(grant_id)

    # -- accounts and lists ---------------------------------------------------------------------

    def add_account(self, account_id: int, company: str | None = None) -> Account:
        """Add a customer account."""
        with self.lock:
            if account_id in self._accounts:
                raise ValueError(f"account {account_id} exists already")
            if account_id < 0:
                raise ValueError("account ids are non-negative")
            account = Account(account_id, company if company is not None else f"Example Company {account_id}")
            self._accounts[account_id] = account
            return account

    def add_list(
        self,
        account_id: int,
        list_id: int,
        name: str,
        *,
        size: int,
        start: int,
        end: int,
        seed: int,
    ) -> SubscriberList:
        """Add a list of ``size`` generated subscribers to an account."""
        with self.lock:
            account = self.account(account_id)
            if account is None:
                raise ValueError(f"no account {account_id}")
            if any(list_id in other.lists for other in self._accounts.values()):
                raise ValueError(f"list {list_id} exists already")
            if list_id < 0:
                raise ValueError("list ids are non-negative")
            subscriber_list = SubscriberList(account_id, list_id, name, size=size, start=start, end=end, seed=seed)
            account.lists[list_id] = subscriber_list
            return subscriber_list

    def add_subscribers(
        self, account_id: int, list_id: int, entries: Sequence[Mapping[str, object]]
    ) -> list[int]:
        """Append subscribers to a list and return their ids."""
        with self.lock:
            subscriber_list = self.subscriber_list(account_id, list_id)
            if subscriber_list is None:
                raise ValueError(f"no list {list_id} in account {account_id}")
            return subscriber_list.append(entries, default_time=self.clock())

    def unsubscribe(
        self, account_id: int, list_id: int, subscriber_id: int, at: float | None = None,
        method: str = "unsubscribe link",
    ) -> None:
        """Unsubscribe an appended subscriber at ``at`` (Unix seconds; now by the clock when None)."""
        with self.lock:
            subscriber_list = self.subscriber_list(account_id, list_id)
            if subscriber_list is None:
                raise ValueError(f"no list {list_id} in account {account_id}")
            subscriber_list.unsubscribe(subscriber_id, self.clock() if at is None else at, method)

    def account(self, account_id: int) -> Account | None:
        """Return the account with this id, or None."""
        return self._accounts.get(account_id)

    def accounts(self) -> list[Account]:
        """Return every account, by id."""
        with self.lock:
            return [self._accounts[key] for key in sorted(self._accounts)]

    def subscriber_list(self, account_id: int, list_id: int) -> SubscriberList | None:
        """Return the list ``list_id`` of account ``account_id``, or None."""
        account = self._accounts.get(account_id)
        return None if account is None else account.lists.get(list_id)
