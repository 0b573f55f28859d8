"""``aweber-job login``: the first authorization (docs/design.md §5).

``login`` runs AWeber's authorization-code flow from a terminal: it prints the authorize URL
(PKCE S256 for a public client, none for a confidential one, as AWeber demands), reads the code
or the whole redirect URL from the prompt, and exchanges it under the token file's lock. The
token file is reserved before the code is spent, so an unwritable directory costs nothing.
It never prints or logs a code, verifier or token: fingerprints only. ``revoke`` is
:mod:`job.commands.revoke`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
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
    warn_on_clock_skew,
)
from job.auth.tokens import TokenFile, fingerprint, format_expiry, new_token_file
from job.config import Settings
from job.errors import (
    EXIT_OK,
    ConfigError,
    JobError,
    ProtocolError,
    StorageError,
    TokenFileError,
    TokenNotSavedError,
    UsageError,
)
from job.logs import REDACTOR, utc_stamp
from job.run.keeper import resolve_client
from job.shutdown import Interrupted
from job.shutdown import current as current_shutdown
from job.stores.file.tokenfile import (
    Reservation,
    TokenLock,
    load_token_file,
    reserve_size_for,
    resolve_target,
    save_rotated_tokens,
)

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
    """``login``: authorize once and put the tokens where AWEBER_STORE keeps them; return the exit code (0)."""
    if settings.store_url is not None:
        # Not yet over the store's protocol: the database store's login is its own (login_connection).
        return login_connection(settings, session, code=code, redirect_uri=redirect_uri, scope=scope, force=force,
                                stdin=stdin, stdout=stdout)
    return run_login(settings, session, code=code, redirect_uri=redirect_uri, scope=scope, force=force,
                     stdin=stdin, stdout=stdout)


def run_login(
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
    """Authorize once and write the token file; return the exit code (0).

    Raises UsageError (64) for an existing token file without ``force``, a blank option, or a
    closed prompt; ConfigError (78) without a client id; StorageError (73) when the token file
    cannot be written (before the code is spent); the token-call errors (75, 76, 77) with no
    token file written.
    """
    path = settings.token_file
    _refuse_to_overwrite(path, force=force)
    existing = _load_existing(path, warn=True) if force else None
    client = _login_client(settings, existing)
    request = LoginRequest.parse(client, code=code, redirect_uri=redirect_uri, scope=scope)
    _prepare_directory(path)
    _check_writable(settings)
    auth_code, verifier = obtain_code(settings, client, request, code=code, stdin=stdin, stdout=stdout)
    redirect, scopes = request.redirect, request.scope

    answer, tokens = _exchange_and_save(
        settings, session, client, auth_code, redirect=redirect, verifier=verifier, scope=scopes, force=force
    )
    warn_on_clock_skew(answer)
    log.info(
        "authorized: wrote %s; refresh token %s, access token expires %s",
        path, fingerprint(tokens.refresh_token), format_expiry(tokens.expires_at, time.time()),
        extra={"refresh_token_after": fingerprint(tokens.refresh_token), "expires_at": tokens.expires_at},
    )
    _print_result(stdout, path, tokens)
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


def _refuse_to_overwrite(path: Path, *, force: bool) -> None:
    """Raise UsageError (64) when a token file is already there and ``force`` was not given."""
    if path.is_dir():
        raise TokenFileError(
            f"token file {path} is a directory, not a file", hint="set AWEBER_TOKEN_FILE to a file path"
        )
    if path.exists() and not force:
        existing = _load_existing(path, warn=False)
        if existing is not None and existing.oauth1 is not None:
            raise UsageError(
                f"token file {path} holds legacy OAuth 1.0a tokens; use --force to replace them with OAuth 2 "
                "tokens. The job cannot revoke OAuth 1.0a tokens: disconnect the old integration in AWeber"
            )
        raise UsageError(
            f"token file {path} exists; use --force to replace it. --force does not revoke its refresh token, "
            "which may still work: to end it, run aweber-job revoke first (that removes the file too)"
        )


def _load_existing(path: Path, *, warn: bool) -> TokenFile | None:
    """The token file ``--force`` replaces, when it is a valid one (its shape and client are kept)."""
    if not path.exists():
        return None
    try:
        tokens = load_token_file(path).tokens
    except TokenFileError as exc:
        if warn:
            log.warning("the token file will be replaced although it is not valid: %s", exc)
        return None
    REDACTOR.add(*tokens.secrets())
    return tokens


def _login_client(settings: Settings, existing: TokenFile | None) -> Client:
    """The client to authorize: the environment's, else the one a credentials.json file names."""
    if settings.client_id is None and (existing is None or existing.client_id is None):
        raise ConfigError(["AWEBER_CLIENT_ID is not set; login needs the app's client id (labs.aweber.com)"])
    return resolve_client(settings, existing)


def _prepare_directory(path: Path) -> None:
    """Create the token file's directory (0700) when it is missing; StorageError (73) when it cannot."""
    directory = resolve_target(path).parent
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StorageError(
            f"cannot create the token file's directory {directory}: {exc.strerror or exc}",
            hint="check AWEBER_TOKEN_FILE; nothing was sent to AWeber",
        ) from exc


def _check_writable(settings: Settings) -> None:
    """Take the lock and reserve a token file once, so a person does not approve the app in vain.

    The real reservation is made again under the lock right before the code is exchanged.
    """
    with TokenLock(settings.token_file, settings.lock_timeout_seconds):
        try:
            Reservation.create(settings.token_file, reserve_size_for(0)).discard()
        except StorageError as exc:
            # The store speaks of a refresh token; here nothing at all has been asked of AWeber yet.
            message = exc.message.replace("the refresh token was not used", "nothing was sent to AWeber")
            raise StorageError(message, hint=exc.hint) from exc.__cause__


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


def _exchange_and_save(
    settings: Settings,
    session: requests.Session,
    client: Client,
    auth_code: str,
    *,
    redirect: str,
    verifier: str | None,
    scope: str,
    force: bool,
) -> tuple[TokenAnswer, TokenFile]:
    """Under the lock: reserve, exchange the code, save the new token file."""
    path = settings.token_file
    with TokenLock(path, settings.lock_timeout_seconds) as lock:
        # Looked at again under the lock: a file that appeared while the person was approving is
        # not overwritten silently, and --force keeps the shape of the file as it is now.
        _refuse_to_overwrite(path, force=force)
        existing = _load_existing(path, warn=False) if force else None
        current_size = len(existing.to_bytes()) if existing is not None else 0
        try:
            reservation = Reservation.create(path, reserve_size_for(current_size))
        except StorageError as exc:
            message = exc.message.replace("the refresh token was not used", "the code was not spent")
            raise StorageError(message, hint=exc.hint) from exc.__cause__
        try:
            answer, tokens = exchange_for_tokens(
                settings, session, client, auth_code, redirect=redirect, verifier=verifier, scope=scope,
                existing=existing,
            )
        except BaseException:
            reservation.discard()
            raise
        # Recorded in the lock file, so a temporary an earlier run left never wins over this authorization.
        save_rotated_tokens(path, tokens, reservation, lock=lock, fallback=settings.fallback_rescue_dir)
        if existing is not None and existing.oauth1 is not None:
            log.warning(
                "replaced the OAuth 1.0a token file with OAuth 2 tokens; the job cannot revoke OAuth 1.0a "
                "tokens: they stay valid until the old integration is disconnected in AWeber"
            )
        elif existing is not None:
            log.warning(
                # Whether AWeber ends the old grant when the app is authorized again is not documented
                # (docs/aweber-api.md), so the message promises neither way.
                "replaced the token file; its old refresh token %s was not revoked and may still work "
                "(AWeber may also end it by itself)",
                fingerprint(existing.refresh_token),
            )
        if answer.unusable:
            raise ProtocolError(
                f"the token endpoint's answer to the authorization code {answer.unusable}; the new refresh token "
                f"was saved ({fingerprint(tokens.refresh_token)}) in {path}, and the next run will refresh it "
                "(or now: aweber-job refresh)"
            )
    return answer, tokens


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


def _print_result(out: IO[str], path: Path, tokens: TokenFile) -> None:
    """Say what was written and what to do next."""
    try:
        mode = f"mode {stat.S_IMODE(os.stat(path).st_mode):04o}"
    except OSError:
        mode = "mode unknown"
    scope = tokens.scope or "not stated"
    out.write(
        "\n"
        f"Authorized. Token file {path} ({tokens.shape} shape, {mode}).\n"
        f"  refresh token {fingerprint(tokens.refresh_token)}, access token {fingerprint(tokens.access_token)} "
        f"expires {format_expiry(tokens.expires_at, time.time())}\n"
        f"  scope: {scope}\n"
        "\n"
        "Next, with the same configuration:\n"
        "  aweber-job run                           one run now, to check (or: aweber-job refresh)\n"
        "  systemctl enable --now aweber-job.timer  a daily run under systemd, or\n"
        "  the line in crontab.example              a daily run from cron (use one, not both)\n"
        "Each run rotates the refresh token and saves it in the token file: keep that file, and do not "
        "copy it to a second machine that also runs the job.\n"
    )
    out.flush()


# ---- login of a connection in the PostgreSQL store ---------------------------------------------

def login_connection(
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
    """``--connection NAME login``: authorize once and put the tokens in the store as NAME.

    As for the token file: an existing connection is replaced only with ``force`` (a revoked one
    always), the store must take writes before the code is spent, and tokens the store then refuses
    go to a 0600 rescue file that ``connections import`` puts in place.
    """
    from job.stores.postgres import PostgresStore

    name = settings.connection
    store = PostgresStore.from_settings(settings)
    try:
        try:
            view = store.read(name)
        except TokenFileError:
            view = None
        if view is not None and not view.info.revoked and not force:
            raise UsageError(
                f"connection '{name}' is already in the store {store.description}; use --force to replace it "
                f"(that does not revoke its refresh token: aweber-job --connection {name} revoke first ends it)"
            )
        existing = view.tokens if view is not None and force else None
        if existing is not None:
            REDACTOR.add(*existing.secrets())
        client = _login_client(settings, existing)
        request = LoginRequest.parse(client, code=code, redirect_uri=redirect_uri, scope=scope)
        store.check_writable()
        auth_code, verifier = obtain_code(settings, client, request, code=code, stdin=stdin, stdout=stdout)
        _, tokens = exchange_for_tokens(
            settings, session, client, auth_code, redirect=request.redirect, verifier=verifier,
            scope=request.scope, existing=existing,
        )
        try:
            store.put_tokens(name, tokens, replace=view is not None)
        except JobError as exc:
            raise _login_rescue(settings, name, tokens, exc) from exc
    finally:
        store.close()
    log.info(
        "authorized: connection '%s' in the store %s; refresh token %s, access token expires %s",
        name, store.description, fingerprint(tokens.refresh_token), format_expiry(tokens.expires_at, time.time()),
        extra={"refresh_token_after": fingerprint(tokens.refresh_token), "expires_at": tokens.expires_at},
    )
    stdout.write(
        f"\nAuthorized. Connection '{name}' in {store.description} ({tokens.shape} shape, "
        f"{'encrypted' if settings.store_keys else 'NOT encrypted: set AWEBER_STORE_KEY'}).\n"
        f"  refresh token {fingerprint(tokens.refresh_token)}, access token {fingerprint(tokens.access_token)} "
        f"expires {format_expiry(tokens.expires_at, time.time())}\n"
        f"Next: aweber-job --connection {name} run   (or run --all for every due connection)\n"
    )
    stdout.flush()
    return EXIT_OK


def _login_rescue(settings: Settings, name: str, tokens: TokenFile, cause: JobError) -> TokenNotSavedError:
    """Keep the tokens of an authorization the store refused in a 0600 rescue file, and say how to import it."""
    from job.stores.file.tokenfile import write_file_atomically
    from job.stores.postgres import RESCUE_DIRECTORY, file_safe

    stamp = utc_stamp(time.time())
    path = settings.state_dir / RESCUE_DIRECTORY / f"{file_safe(name)}.{stamp}.login.json"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_file_atomically(path, tokens.to_bytes())
    except OSError as exc:
        return TokenNotSavedError(
            f"authorized, but the store did not take the tokens of connection '{name}' ({cause.message}) and the "
            f"rescue file {path} could not be written ({exc.strerror or exc}); run the login again once the store "
            "takes writes"
        )
    return TokenNotSavedError(
        f"authorized, but the store did not take the tokens of connection '{name}' ({cause.message}); they were "
        f"saved to the rescue file {path}. Once the store takes writes: aweber-job connections import {name} {path}"
        + " (with --force if the connection is there)"
    )
