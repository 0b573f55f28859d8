"""``aweber-job revoke`` (docs/design.md §5): end the connection's tokens at AWeber, then in the store.

One command for every store (:mod:`job.stores.base`): under the store's hold (the token file's lock,
a connection's lease), so no run refreshes the tokens meanwhile, the refresh token is posted to the
revoke endpoint, and only once AWeber has accepted does the store end them (the token file is removed,
a connection is marked revoked). The access token is revoked afterwards, best effort. Nothing ever
prints or logs a token: fingerprints only.
"""

from __future__ import annotations

import logging
import time

import requests

from job.auth.oauth import Client, TokenCall, revoke_token
from job.auth.tokens import TokenFile, fingerprint
from job.config import Settings
from job.errors import EXIT_OK, JobError, UsageError
from job.logs import REDACTOR
from job.run.keeper import resolve_client
from job.stores import connection_store

log = logging.getLogger(__name__)

# The best-effort revocation of the access token (after the refresh token is gone) must not keep
# an operator waiting for the whole retry deadline: the access token dies within two hours anyway.
ACCESS_TOKEN_REVOKE_DEADLINE_SECONDS = 15.0


def run_revoke(settings: Settings, session: requests.Session) -> int:
    """Revoke the refresh token at AWeber, then end the tokens in the store; return the exit code (0).

    The store ends them only after AWeber accepted (2xx); any error keeps them and raises the
    token-call error (75, 76, 77). A legacy OAuth 1.0a token is a UsageError (64): those tokens
    cannot be revoked by the job.
    """
    store = connection_store(settings)
    try:
        # A save an earlier run could not finish holds the live refresh token: revoke that one, not the spent.
        revocable = store.open_for_revoke()
        tokens = revocable.tokens
        REDACTOR.add(*tokens.secrets())
        client = revoke_refresh_token(settings, session, tokens, where=revocable.where, kept=revocable.kept)
        revoked = store.mark_revoked()
    finally:
        store.close()
    access_note = revoke_access_token(settings, session, client, tokens)
    log.info(
        "revoked the refresh token %s at AWeber%s and %s",
        fingerprint(tokens.refresh_token), access_note, revoked.done, extra=revoked.extra,
    )
    return EXIT_OK


def revoke_refresh_token(
    settings: Settings, session: requests.Session, tokens: TokenFile, *, where: str, kept: str
) -> Client:
    """Revoke ``tokens``' refresh token at AWeber; return the client, for the access token after.

    ``where`` names the tokens and ``kept`` says they were kept, in the messages of a refusal. A
    legacy OAuth 1.0a token is a UsageError (64): those tokens cannot be revoked by the job.
    """
    if tokens.oauth1 is not None:
        raise UsageError(
            f"{where} holds OAuth 1.0a tokens, which the job cannot revoke (AWeber offers no "
            f"endpoint for it); {kept}",
            hint="disconnect the integration in the AWeber account to end them",
        )
    client = resolve_client(settings, tokens)
    call = TokenCall(
        session=session,
        url=settings.revoke_url,
        timeout_seconds=settings.http_timeout_seconds,
        deadline_seconds=settings.retry_deadline_seconds,
    )
    try:
        revoke_token(call, client, tokens.refresh_token, hint="refresh_token")
    except JobError as exc:
        # oauth.py words its messages for the token endpoint; this answer came from the revoke endpoint.
        message = exc.message.replace("the token endpoint", "the revoke endpoint")
        raise type(exc)(f"{message}; {kept}", hint=exc.hint) from None
    return client


def revoke_access_token(settings: Settings, session: requests.Session, client: Client, tokens: TokenFile) -> str:
    """Revoke the access token too, when it may still be alive; return a note for the log line.

    AWeber's revoke endpoint takes either token; whether revoking the refresh token also ends its
    access tokens is not documented (docs/aweber-api.md §1.1), so an operator's "revoke" asks for both.
    """
    access = tokens.access_token
    expired = tokens.expires_at is not None and tokens.expires_at <= time.time()
    if not access or expired:
        return ""
    call = TokenCall(
        session=session,
        url=settings.revoke_url,
        timeout_seconds=settings.http_timeout_seconds,
        deadline_seconds=min(settings.retry_deadline_seconds, ACCESS_TOKEN_REVOKE_DEADLINE_SECONDS),
    )
    try:
        revoke_token(call, client, access, hint="access_token")
    except JobError as exc:
        log.warning(
            "the access token %s could not be revoked (%s); it stops working when it expires",
            fingerprint(access), exc,
        )
        return ""
    return f" (and the access token {fingerprint(access)})"
