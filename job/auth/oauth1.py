"""Legacy OAuth 1.0a credentials: recognise them in a token file and sign API requests with them.

Integrations that AWeber authorized before it moved to OAuth 2 may keep their OAuth 1.0a tokens,
which never expire (docs/aweber-api.md). Their token file holds the consumer key and secret and the
access token and its secret, under the names AWeber's legacy library used; nothing in it ever
changes, so the job saves it as it came.

Requests are signed with HMAC-SHA1 in the ``Authorization: OAuth ...`` header by oauthlib, the
optional extra ``aweber-job[oauth1]``; it is imported only when a request is signed.

Pure but for that import: no I/O. Error messages name fields, never values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from job.errors import ConfigError, TokenFileError

# Each value, with the names it may go by: the first is the one AWeber's legacy library wrote,
# the second the one its examples used. Exactly one of each pair must be present.
CONSUMER_KEY = ("consumer_key",)
CONSUMER_SECRET = ("consumer_secret",)
ACCESS_TOKEN = ("access_token", "access_key")
TOKEN_SECRET = ("token_secret", "access_secret")
OAUTH1_FIELDS = (CONSUMER_KEY, CONSUMER_SECRET, ACCESS_TOKEN, TOKEN_SECRET)
# Present in a file only when it is OAuth 1: seeing any of them means the file means to be OAuth 1.
OAUTH1_MARKERS = ("consumer_key", "consumer_secret", "access_key", "token_secret", "access_secret")
# OAuth 2 fields that cannot share a file with OAuth 1 credentials.
OAUTH2_FIELDS = ("refresh_token", "token", "client_id", "client_secret", "expires_at", "expires_in")

EXTRA_MISSING = (
    "this token file holds OAuth 1.0a credentials, and signing them needs oauthlib, which is not installed"
)
EXTRA_HINT = "install the extra: pip install 'aweber-job[oauth1]'"
MIGRATE_HINT = "AWeber asks integrations to move to OAuth 2: aweber-job login --force"
DISCONNECTED_HINT = (
    "the customer may have disconnected the integration in AWeber, or the consumer key or secret is wrong; "
    "to authorize again, with OAuth 2: aweber-job login --force"
)


def looks_like_oauth1(document: Mapping[str, Any]) -> bool:
    """Whether a token file's JSON object means to hold OAuth 1.0a credentials."""
    return any(key in document for key in OAUTH1_MARKERS)


@dataclass(frozen=True)
class OAuth1Credentials:
    """The four values that sign an OAuth 1.0a request; ``repr`` shows none of them."""

    consumer_key: str
    consumer_secret: str
    access_token: str
    token_secret: str

    def __repr__(self) -> str:
        return "OAuth1Credentials(...)"

    def secrets(self) -> list[str]:
        """Every secret value, for redaction (the consumer key too: with the others it names the account)."""
        return [self.consumer_key, self.consumer_secret, self.access_token, self.token_secret]

    def sign(self, method: str, url: str) -> dict[str, str]:
        """The ``Authorization`` header for ``method url`` (the URL with its whole query), HMAC-SHA1.

        Raises ConfigError (78) naming the extra when oauthlib is not installed.
        """
        try:
            from oauthlib.oauth1 import SIGNATURE_HMAC_SHA1, Client
        except ImportError:
            raise ConfigError([f"{EXTRA_MISSING} ({EXTRA_HINT})"]) from None
        client = Client(
            self.consumer_key,
            client_secret=self.consumer_secret,
            resource_owner_key=self.access_token,
            resource_owner_secret=self.token_secret,
            signature_method=SIGNATURE_HMAC_SHA1,
        )
        _, headers, _ = client.sign(url, http_method=method)
        return {"Authorization": str(headers["Authorization"])}


def parse_oauth1(document: Mapping[str, Any], where: str) -> OAuth1Credentials:
    """Validate an OAuth 1.0a token file's object; raise TokenFileError (65) naming the field at fault."""
    mixed = [key for key in OAUTH2_FIELDS if key in document]
    if mixed:
        raise TokenFileError(
            f"token file {where} holds OAuth 1.0a fields and the OAuth 2 field '{mixed[0]}'; "
            "a token file is one or the other",
            hint="keep the OAuth 1.0a fields, or authorize with OAuth 2: aweber-job login --force",
        )
    values: list[str] = []
    for names in OAUTH1_FIELDS:
        present = [name for name in names if name in document]
        if not present:
            spelled = "' or '".join(names)
            raise TokenFileError(f"token file {where}: OAuth 1.0a field '{spelled}' is missing")
        if len(present) > 1:
            raise TokenFileError(
                f"token file {where}: both '{present[0]}' and '{present[1]}' are present; keep one"
            )
        value = document[present[0]]
        if not isinstance(value, str) or not value:
            raise TokenFileError(f"token file {where}: field '{present[0]}' must be a non-empty string")
        values.append(value)
    return OAuth1Credentials(*values)
