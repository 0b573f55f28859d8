"""Legacy OAuth 1.0a for the stand-in: registered credentials and signature checks on API requests.

AWeber's legacy API took requests signed with OAuth 1.0a HMAC-SHA1 (docs/aweber-api.md); its
access tokens never expire. The stand-in verifies such requests with oauthlib's own server side
(:class:`oauthlib.oauth1.ResourceEndpoint`) against the credentials registered here, and refuses a
bad signature, an unknown consumer or token, a reused nonce and a stale timestamp (oauthlib allows
600 s either way, by the real clock). oauthlib is imported when the first signed request arrives.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from job.standin.messages import Request

# Legacy AWeber keys and tokens were short strings of letters and digits.
_ALPHABET = string.ascii_letters + string.digits
_KEY_CHARS = 24
# oauthlib's default timestamp window; said here so a message can name it.
TIMESTAMP_LIFETIME_SECONDS = 600


def _new_value() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(_KEY_CHARS))


@dataclass(frozen=True)
class OAuth1Grant:
    """One registered set of legacy credentials, shaped like the token file AWeber's library wrote."""

    consumer_key: str
    consumer_secret: str
    access_token: str
    token_secret: str

    def as_token_file(self) -> dict[str, str]:
        return {
            "consumer_key": self.consumer_key,
            "consumer_secret": self.consumer_secret,
            "access_token": self.access_token,
            "token_secret": self.token_secret,
        }


class OAuth1Registry:
    """Consumers, access tokens and seen nonces; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._consumers: dict[str, str] = {}
        # access token -> (consumer key, token secret)
        self._tokens: dict[str, tuple[str, str]] = {}
        self._disconnected: set[str] = set()
        self._nonces: set[tuple[str, str, str, str]] = set()
        self._issued: list[str] = []

    def register(
        self,
        consumer_key: str | None = None,
        consumer_secret: str | None = None,
        access_token: str | None = None,
        token_secret: str | None = None,
    ) -> OAuth1Grant:
        """Register a consumer (kept if known) and an access token for it; missing values are generated."""
        with self._lock:
            key = consumer_key or _new_value()
            known_secret = self._consumers.get(key)
            if known_secret is not None and consumer_secret is not None and consumer_secret != known_secret:
                raise ValueError("the consumer key is registered with another secret")
            secret = consumer_secret or known_secret or _new_value()
            token = access_token or _new_value()
            if token in self._tokens:
                raise ValueError("the access token is already registered")
            grant = OAuth1Grant(key, secret, token, token_secret or _new_value())
            self._consumers[key] = secret
            self._tokens[token] = (key, grant.token_secret)
            self._issued += (key, secret, token, grant.token_secret)
            return grant

    def disconnect(self, consumer_key: str | None = None) -> None:
        """The customer removed the integration: its tokens are refused (all consumers when None)."""
        with self._lock:
            self._disconnected.update([consumer_key] if consumer_key else self._consumers)

    def reconnect(self, consumer_key: str | None = None) -> None:
        """Undo :meth:`disconnect`."""
        with self._lock:
            self._disconnected.difference_update([consumer_key] if consumer_key else list(self._disconnected))

    def secrets(self) -> list[str]:
        """Every key, secret and token registered, for secret scans."""
        with self._lock:
            return list(self._issued)

    def problem(self, request: Request, host: str) -> str | None:
        """Why the API refuses this OAuth-signed request, or None when its signature checks out."""
        try:
            from oauthlib.oauth1 import ResourceEndpoint
        except ImportError:
            return "The stand-in cannot check OAuth 1.0a signatures: oauthlib is not installed."
        uri = f"http://{host}{request.path}"
        if request.query:
            uri += "?" + urlencode(request.query)
        validator = _validator(self)
        endpoint = ResourceEndpoint(validator)
        valid, checked = endpoint.validate_protected_resource_request(
            uri, http_method=request.method, headers={"Authorization": request.header("authorization") or ""}
        )
        if valid:
            return None
        reason: str | None = validator.reason
        if reason is not None:
            return reason
        if checked is None:
            return "Invalid OAuth 1.0a Authorization header."
        timestamp = str(getattr(checked, "timestamp", "") or "")
        if timestamp.isdigit() and abs(int(timestamp) - _now()) > TIMESTAMP_LIFETIME_SECONDS:
            return "Invalid OAuth 1.0a request: the timestamp is stale."
        return "Invalid OAuth 1.0a request: the signature does not match."

    # -- what the validator reads ------------------------------------------------------------

    def _consumer_secret(self, key: str) -> str | None:
        with self._lock:
            return self._consumers.get(key)

    def _token(self, token: str) -> tuple[str, str] | None:
        with self._lock:
            return self._tokens.get(token)

    def _is_disconnected(self, key: str) -> bool:
        with self._lock:
            return key in self._disconnected

    def _first_use(self, nonce_key: tuple[str, str, str, str]) -> bool:
        with self._lock:
            if nonce_key in self._nonces:
                return False
            self._nonces.add(nonce_key)
            return True


def _now() -> float:

    return time.time()


def _validator(registry: OAuth1Registry) -> Any:
    """A RequestValidator backed by ``registry`` that remembers why it refused."""
    from oauthlib.oauth1 import RequestValidator

    dummy_secret = "dummy-secret-" + _new_value()

    class Validator(RequestValidator):  # type: ignore[misc]
        enforce_ssl = False  # the stand-in speaks plain HTTP on loopback
        reason: str | None = None

        def refuse(self, reason: str) -> bool:
            if self.reason is None:
                self.reason = reason
            return False

        def check_client_key(self, client_key: str) -> bool:
            return 0 < len(client_key) <= 200 and set(client_key) <= self.safe_characters

        def check_access_token(self, request_token: str) -> bool:
            return 0 < len(request_token) <= 200 and set(request_token) <= self.safe_characters

        @property
        def dummy_client(self) -> str:
            return "dummyclient"

        @property
        def dummy_access_token(self) -> str:
            return "dummytoken"

        def validate_timestamp_and_nonce(
            self, client_key: str, timestamp: str, nonce: str, request: Any,
            request_token: str | None = None, access_token: str | None = None,
        ) -> bool:
            if registry._first_use((client_key, timestamp, nonce, access_token or "")):
                return True
            return self.refuse("Invalid OAuth 1.0a request: the nonce was already used.")

        def validate_client_key(self, client_key: str, request: Any) -> bool:
            if registry._consumer_secret(client_key) is None:
                return self.refuse("Invalid OAuth 1.0a request: unknown consumer key.")
            return True

        def validate_access_token(self, client_key: str, token: str, request: Any) -> bool:
            held = registry._token(token)
            if held is None or held[0] != client_key:
                return self.refuse("Invalid token.")
            if registry._is_disconnected(client_key):
                return self.refuse("Invalid token: the account has disconnected this application.")
            return True

        def validate_realms(self, client_key: str, token: str, request: Any, uri: str | None = None,
                            realms: Any = None) -> bool:
            return True

        def get_client_secret(self, client_key: str, request: Any) -> str:
            return registry._consumer_secret(client_key) or dummy_secret

        def get_access_token_secret(self, client_key: str, token: str, request: Any) -> str:
            held = registry._token(token)
            return held[1] if held is not None and held[0] == client_key else dummy_secret

    return Validator()


def grant_from_mapping(value: Mapping[str, object]) -> dict[str, str | None]:
    """The keyword arguments of :meth:`OAuth1Registry.register` from a JSON object; ValueError on bad input."""
    known = ("consumer_key", "consumer_secret", "access_token", "token_secret")
    unknown = set(value) - set(known)
    if unknown:
        raise ValueError(f"unknown oauth1 keys: {', '.join(sorted(unknown))}")
    result: dict[str, str | None] = {}
    for key in known:
        item = value.get(key)
        if item is not None and (not isinstance(item, str) or not item):
            raise ValueError(f"{key} must be a non-empty string")
        result[key] = item
    return result
