"""``aweber-job login``: the first authorization (docs/design.md §5), one command for every store.

``login`` runs AWeber's authorization-code flow from a terminal: it prints the authorize URL
(PKCE S256 for a public client, none for a confidential one, as AWeber demands), reads the code
or the whole redirect URL from the prompt, and exchanges it when the store is ready to keep the
tokens (the token file: under its lock, reserved before the code is spent, so an unwritable
directory costs nothing; see :mod:`job.stores.base`). It never prints or logs a code, verifier or
token: fingerprints only. ``revoke`` is :mod:`job.commands.revoke`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import secrets
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import requests

from job.auth.oauth import (
    DEFAULT_SCOPE,
    OOB_REDIRECT_URI,
    Client,
    TokenAnswer,
    TokenCall,
    authorize_url,
    exchange_code,
    make_pkce_pair,
    parse_pasted_code,
)
from job.auth.tokens import TokenFile, new_token_file
from job.config import Settings
from job.errors import (
    EXIT_OK,
    ConfigError,
    ProtocolError,
    UsageError,
)
from job.logs import REDACTOR
from job.run.keeper import resolve_client
from job.shutdown import Interrupted
from job.shutdown import current as current_shutdown
from job.stores import connection_store

log = logging.getLogger(__name__)


# ---- login --------------------------------------------------------------------------------------

def login(
    settings: Settings,
    session: requests.Session,
    *,
    code: str | None,
    redirect_uri: str | None,
    scope: str | None,
    force: bool,
    stdin: IO[str],
    stdout: IO[str],
) -> int:
    """Authorize once and put the tokens where AWEBER_STORE keeps them; return the exit code (0).

    Raises UsageError (64) for tokens already there without ``force``, a blank option, or a closed
    prompt; ConfigError (78) without a client id; StorageError (73) when the store cannot take the
    tokens (found before the code is spent); the token-call errors (75, 76, 77) with nothing saved.
    """
    store = connection_store(settings)
    try:
        existing = store.existing_for_login(force=force)
        client = _login_client(settings, existing)
        request = LoginRequest.parse(client, code=code, redirect_uri=redirect_uri, scope=scope)
        # Before a person approves the app: a store that cannot keep the tokens costs nothing yet.
        store.check_login_writable()
        auth_code, verifier = obtain_code(settings, client, request, code=code, stdin=stdin, stdout=stdout)

        def exchange(current: TokenFile | None) -> tuple[TokenAnswer, TokenFile]:
            return exchange_for_tokens(
                settings, session, client, auth_code, redirect=request.redirect, verifier=verifier,
                scope=request.scope, existing=current,
            )

        tokens = store.save_login(exchange, force=force)
    finally:
        store.close()
    store.report_login(tokens, stdout)
    return EXIT_OK


@dataclass(frozen=True)
class LoginRequest:
    """What the person is asked to approve: where AWeber sends them back, and the scopes."""

    redirect: str
    scope: str

    @classmethod
    def parse(cls, client: Client, *, code: str | None, redirect_uri: str | None, scope: str | None) -> LoginRequest:
        """Check the options before anything else happens; UsageError (64) for a blank one or a misplaced --code."""
        redirect = _option(redirect_uri, "--redirect-uri") or OOB_REDIRECT_URI
        scopes = " ".join((_option(scope, "--scope") or DEFAULT_SCOPE).split())
        if code is not None and client.is_public:
            raise UsageError(
                "--code cannot be used with a public client (no client secret): its code is bound to the "
                "PKCE challenge in the authorize URL this login prints; run aweber-job login without --code "
                "and paste the code at the prompt"
            )
        if code is not None and not code.strip():
            raise UsageError("--code is empty; give the authorization code or the whole redirect URL")
        return cls(redirect=redirect, scope=scopes)


def obtain_code(
    settings: Settings, client: Client, request: LoginRequest, *, code: str | None, stdin: IO[str], stdout: IO[str]
) -> tuple[str, str | None]:
    """The authorization code (from --code, or pasted after the printed URL) and the PKCE verifier, if any."""
    verifier, challenge = make_pkce_pair() if client.is_public else (None, None)
    REDACTOR.add(verifier)
    if code is not None:
        REDACTOR.add(code.strip())
        # No state was issued for a code given on the command line, so none can be checked: take
        # the code out of a pasted URL as it is (the same trust as a bare code).
        auth_code = parse_pasted_code(code, _state_in(code) or "")
    else:
        state = secrets.token_urlsafe(24)
        url = authorize_url(
            settings.authorize_url, client, redirect_uri=request.redirect, scope=request.scope, state=state,
            code_challenge=challenge,
        )
        _print_instructions(stdout, url, redirect=request.redirect, public=client.is_public)
        stopping = current_shutdown()
        try:
            # Nothing is spent while a person pastes: Ctrl-C, a closed terminal or SIGTERM end the wait at once.
            with stopping.interruptible() if stopping is not None else contextlib.nullcontext():
                pasted = _read_pasted(stdin, stdout)
        except Interrupted:
            raise KeyboardInterrupt from None
        REDACTOR.add(pasted)
        auth_code = parse_pasted_code(pasted, state)
    REDACTOR.add(auth_code)
    return auth_code, verifier


def _option(value: str | None, name: str) -> str | None:
    """An option's value, None when not given; a blank one is a usage error."""
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{name} is empty")
    return value.strip()


def _login_client(settings: Settings, existing: TokenFile | None) -> Client:
    """The client to authorize: the environment's, else the one a credentials.json file names."""
    if settings.client_id is None and (existing is None or existing.client_id is None):
        raise ConfigError(["AWEBER_CLIENT_ID is not set; login needs the app's client id (labs.aweber.com)"])
    return resolve_client(settings, existing)


def _state_in(pasted: str) -> str | None:
    """The ``state`` of a pasted redirect URL, if it has one."""
    text = pasted.strip()
    query = urlsplit(text).query if "://" in text else text.lstrip("?")
    states = parse_qs(query).get("state")
    return states[0] if states else None


def _print_instructions(out: IO[str], url: str, *, redirect: str, public: bool) -> None:
    """Tell the person what to open, approve and paste back."""
    kind = "public client: PKCE" if public else "confidential client"
    if redirect == OOB_REDIRECT_URI:
        after = "AWeber then shows an authorization code: copy it and paste it below."
    else:
        after = (
            f"Your browser is then sent to {redirect}?code=...&state=... (the page itself may not load):\n"
            "copy the whole address from the browser's address bar and paste it below."
        )
    out.write(
        f"Open this URL in a browser, sign in to AWeber and approve the app ({kind}):\n\n"
        f"{url}\n\n"
        f"{after}\n"
        "The code works once and only for a few minutes.\n"
        f'If AWeber answers "Invalid redirect URI", the app at labs.aweber.com must have {redirect} registered '
        "exactly as written (or log in with --redirect-uri and the URI it has).\n\n"
        "Authorization code or redirect URL: "
    )
    out.flush()


def _read_pasted(stdin: IO[str], out: IO[str]) -> str:
    """The first non-blank line from the prompt; UsageError (64) when the input ends first."""
    while True:
        line = stdin.readline()
        if not line:
            out.write("\n")
            out.flush()
            raise UsageError(
                "no authorization code: the input ended before one was pasted",
                hint="run aweber-job login in a terminal and paste the code at the prompt",
            )
        if line.strip():
            return line.strip()
        out.write("Authorization code or redirect URL: ")
        out.flush()


def exchange_for_tokens(
    settings: Settings,
    session: requests.Session,
    client: Client,
    auth_code: str,
    *,
    redirect: str,
    verifier: str | None,
    scope: str,
    existing: TokenFile | None,
) -> tuple[TokenAnswer, TokenFile]:
    """Spend the code at the token endpoint; the answer and the tokens to save (in ``existing``'s shape).

    ProtocolError (76) when the answer holds no refresh token: the job could never refresh it.
    """
    stopping = current_shutdown()
    call = TokenCall(
        session=session,
        url=settings.token_url,
        timeout_seconds=settings.http_timeout_seconds,
        deadline_seconds=settings.retry_deadline_seconds,
        # After a stop the code is not sent (nor sent again); an exchange already sent is waited for and saved.
        before_send=(lambda: stopping.check_may_send("the authorization code")) if stopping is not None else None,
    )
    answer = exchange_code(call, client, auth_code, redirect_uri=redirect, code_verifier=verifier)
    for key in ("access_token", "refresh_token"):
        value = answer.body.get(key)
        if isinstance(value, str):
            REDACTOR.add(value)
    tokens = _build_token_file(answer, existing, client, scope)
    if not tokens.token.get("refresh_token"):
        raise ProtocolError(
            "the token endpoint's answer to the authorization code has no refresh_token; "
            "the job could not refresh later, so nothing was saved; the code is spent: run aweber-job login again"
        )
    return answer, tokens


def _build_token_file(answer: TokenAnswer, existing: TokenFile | None, client: Client, scope: str) -> TokenFile:
    """The new token file: flat, or AWeber's credentials.json shape when that is what it replaces.

    The token fields are always fresh (a new authorization owes nothing to the old one's scope or
    expiry); in the credentials.json shape the keys around ``token`` are kept, with the client
    identity updated when a different client authorized.
    """
    body: dict[str, Any] = dict(answer.body)
    # RFC 6749 §5.1: a response without "scope" means the scope requested was granted.
    body.setdefault("scope", scope)
    fresh = new_token_file(body, answer.received_at)
    if existing is None or not existing.nested:
        return fresh
    document = copy.deepcopy(existing.document)
    document["token"] = fresh.document
    if existing.client_id not in (None, client.client_id):
        document["client_id"] = client.client_id
        if client.client_secret:
            document["client_secret"] = client.client_secret
        else:
            document.pop("client_secret", None)
    return TokenFile(document=document, nested=True)


