"""OAuth 2 at AWeber's token and revoke endpoints, through a passed-in ``requests`` session.

Three small steps, as in google-auth's client: build the request, send it (translating transport
errors into "not sent" or "sent, answer lost"), and classify the answer. Only the refresh and code
exchange are retried, and only for outcomes classified as transient; an answer that may have been
lost after the server acted on it is resent at most once (docs/design.md §4).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from job.auth.answer import clean_answer, read_members
from job.auth.tokens import MAX_TOKEN_ANSWER_BYTES
from job.errors import AuthError, JobError, ProtocolError, TemporaryError, shorten
from job.retries import call_with_retries, parse_retry_after

log = logging.getLogger(__name__)

OOB_REDIRECT_URI = "urn:ietf:wg:oauth:2.0:oob"
DEFAULT_SCOPE = "account.read list.read subscriber.read"
CLOCK_SKEW_WARNING_SECONDS = 300.0

# RFC 6749 §5.2 errors that mean "try again later" rather than "authorize again".
TRANSIENT_OAUTH_ERRORS = frozenset({"server_error", "temporarily_unavailable"})
TRANSIENT_STATUSES = frozenset({408, 429})

ACTIONS = {
    "invalid_grant": "authorize again: aweber-job login",
    "invalid_client": "check AWEBER_CLIENT_ID and the client secret",
    "unauthorized_client": "this client may not use this grant; check the app's settings at AWeber",
    "invalid_scope": "authorize again with the scopes the app is allowed: aweber-job login",
}


@dataclass(frozen=True)
class Client:
    """OAuth client identity: a confidential client has a secret, a public one uses PKCE."""

    client_id: str
    client_secret: str | None = field(default=None, repr=False)

    @property
    def is_public(self) -> bool:
        return not self.client_secret


@dataclass(frozen=True)
class TokenAnswer:
    """A token-endpoint answer worth saving, and when it arrived (Unix seconds).

    ``body`` holds only token fields the token file can take. ``unusable`` says why this run
    cannot use the answer although its refresh token must be saved (no usable access token, a
    token type other than bearer, broken JSON); None when it is usable.
    """

    body: Mapping[str, Any] = field(repr=False)
    received_at: float
    server_date: float | None = None
    unusable: str | None = None

    @property
    def rotated(self) -> bool:
        return isinstance(self.body.get("refresh_token"), str) and bool(self.body.get("refresh_token"))


class AnswerLostError(TemporaryError):
    """The request went out but no complete answer came back: the server may have acted on it."""


class NotResentError(TemporaryError):
    """An answer was lost and the one resend did not settle it: the request is not sent again (exit 75)."""

    retryable = False


class EndpointUnavailableError(TemporaryError):
    """The token endpoint answered with a transient error; ``detail`` names it (``HTTP 503 ...``)."""

    def __init__(
        self, message: str, *, hint: str | None = None, retry_after_seconds: float | None = None, detail: str = ""
    ) -> None:
        super().__init__(message, hint=hint, retry_after_seconds=retry_after_seconds)
        self.detail = detail or message


@dataclass(frozen=True)
class _Received:
    status: int
    headers: Mapping[str, str]
    body: bytes
    received_at: float


# ---- building requests ---------------------------------------------------------------------

def client_auth(client: Client, form: dict[str, str]) -> dict[str, str]:
    """Return headers for client authentication, adding ``client_id`` to ``form`` for public clients.

    Confidential: HTTP Basic ``client_id:client_secret`` (AWeber's preferred way). Public: no
    Authorization header; ``client_id`` in the body, as AWeber documents for PKCE clients.
    """
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
    }
    if client.is_public:
        form["client_id"] = client.client_id
    else:
        assert client.client_secret is not None
        pair = f"{client.client_id}:{client.client_secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return headers


def make_pkce_pair() -> tuple[str, str]:
    """Return a fresh PKCE (verifier, S256 challenge); the verifier is 64 URL-safe characters."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def authorize_url(
    base_url: str,
    client: Client,
    *,
    redirect_uri: str,
    scope: str,
    state: str,
    code_challenge: str | None,
) -> str:
    """The URL a person opens to approve the app (AWeber: no PKCE for confidential clients)."""
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
    }
    if code_challenge:
        params["code_challenge"] = code_challenge
        params["code_challenge_method"] = "S256"
    separator = "&" if urlsplit(base_url).query else "?"
    return base_url + separator + urlencode(params)


def parse_pasted_code(pasted: str, expected_state: str) -> str:
    """Return the authorization code from a pasted code or a whole redirect URL (state checked)."""
    text = pasted.strip()
    if not text:
        raise AuthError("no authorization code was given")
    if "://" in text or text.startswith("?") or "code=" in text:
        query = urlsplit(text).query if "://" in text else text.lstrip("?")
        params = parse_qs(query)
        if "error" in params:
            raise AuthError(f"the authorization was refused: {params['error'][0]}")
        codes = params.get("code")
        if not codes or not codes[0]:
            raise AuthError("the pasted URL holds no 'code' parameter")
        states = params.get("state")
        if not states or not secrets.compare_digest(states[0], expected_state):
            raise AuthError(
                "the pasted URL's state does not match the one this login sent; "
                "start again with a fresh aweber-job login and use the URL it prints"
            )
        return codes[0]
    return text


# ---- sending -------------------------------------------------------------------------------

def _read_body(response: requests.Response) -> bytes:
    """Read at most MAX_TOKEN_ANSWER_BYTES + 1 bytes.

    There is no cap on the total time: the session's timeout bounds each read (the wait for the
    next bytes), so a slow answer that keeps coming is read to its end. It carries the rotated
    refresh token; dropping it for being slow would spend the token for nothing.
    """
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=8192):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_TOKEN_ANSWER_BYTES:
            break
    return b"".join(chunks)


def _send(
    session: requests.Session,
    url: str,
    form: dict[str, str],
    headers: dict[str, str],
    timeout_seconds: float,
    clock: Callable[[], float],
) -> _Received:
    """POST the form once; raise TemporaryError (not sent) or AnswerLostError (sent, no answer)."""
    try:
        response = session.post(
            url, data=form, headers=headers, timeout=timeout_seconds, allow_redirects=False, stream=True
        )
    except (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError) as exc:
        raise TemporaryError(f"could not connect to the token endpoint ({type(exc).__name__})") from None
    except requests.exceptions.ConnectionError as exc:
        if _failed_before_sending(exc):
            raise TemporaryError("could not connect to the token endpoint (connection refused or failed)") from None
        raise AnswerLostError("the connection to the token endpoint broke before an answer came") from None
    except requests.exceptions.Timeout:
        raise AnswerLostError("the token endpoint did not answer in time") from None
    except requests.exceptions.RequestException as exc:
        raise TemporaryError(f"the request to the token endpoint failed ({type(exc).__name__})") from None
    try:
        body = _read_body(response)
    except requests.exceptions.RequestException:
        raise AnswerLostError("the token endpoint's answer was cut off") from None
    finally:
        response.close()
    return _Received(response.status_code, dict(response.headers), body, clock())


def _failed_before_sending(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether a connection error happened before the request could reach the server."""
    text = repr(exc.args[0]) if exc.args else repr(exc)
    markers = ("NewConnectionError", "Failed to establish", "NameResolutionError", "Connection refused")
    return any(marker in text for marker in markers)


# ---- classifying ---------------------------------------------------------------------------

def _json_object(body: bytes) -> dict[str, Any] | None:
    """The members of an error answer's JSON object (never raising, however deep it nests), or None."""
    members = read_members(body)
    return members.values if members is not None else None


def _server_date(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Date") or headers.get("date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def classify_token_answer(received: _Received, *, what: str) -> TokenAnswer:
    """Turn a token-endpoint answer into a TokenAnswer or raise the error class it belongs to.

    2xx carrying a refresh token, or a usable bearer access token → a TokenAnswer to save (its
    ``unusable`` says when this run cannot go on with it); 408, 429, 5xx and OAuth
    ``server_error``/``temporarily_unavailable`` → TemporaryError; other 4xx → AuthError (exit 77);
    a 2xx without either (or a 3xx) → ProtocolError (exit 76).
    """
    status = received.status
    if 200 <= status < 300:
        return _usable_token(received, what=what)
    if 300 <= status < 400:
        raise ProtocolError(f"the token endpoint answered {what} with a redirect (HTTP {status})")
    body = _json_object(received.body)
    retry_after = parse_retry_after(received.headers.get("Retry-After"), received.received_at)
    oauth_error = body.get("error") if body else None
    transient_error = isinstance(oauth_error, str) and oauth_error in TRANSIENT_OAUTH_ERRORS
    if status in TRANSIENT_STATUSES or status >= 500 or transient_error:
        detail = f"HTTP {status}" + (f" {oauth_error}" if isinstance(oauth_error, str) else "")
        raise EndpointUnavailableError(
            f"the token endpoint is unavailable ({detail})", detail=detail, retry_after_seconds=retry_after
        )
    if isinstance(oauth_error, str):
        description = body.get("error_description") if body else None
        message = f"the token endpoint refused {what}: {oauth_error}"
        if isinstance(description, str) and description:
            message += f" ({shorten(description)})"
        raise AuthError(message, hint=ACTIONS.get(oauth_error, "check the client settings, then: aweber-job login"))
    if isinstance(oauth_error, dict):
        # AWeber's own envelope: {"error": {"status", "message", "type", "documentation_url"}}.
        kind = oauth_error.get("type") or "Error"
        message = oauth_error.get("message") or ""
        raise AuthError(
            f"the token endpoint refused {what}: HTTP {status} {shorten(kind, 60)}: {shorten(message)}",
            hint="check AWEBER_CLIENT_ID and the client secret, then: aweber-job login",
        )
    raise AuthError(
        f"the token endpoint refused {what}: HTTP {status}",
        hint="check the client settings and AWEBER_TOKEN_URL, then: aweber-job login",
    )


def _usable_token(received: _Received, *, what: str) -> TokenAnswer:
    """The answer to save from a 2xx, or ProtocolError (76) when no refresh token can be had from it.

    A refresh token that arrived whole is always returned for saving, however odd the rest: the
    server has spent the old one. What this run cannot use is said in ``unusable``.
    """
    spent = "the refresh token may have been spent" if what == "the refresh" else "the code may have been spent"
    if len(received.body) > MAX_TOKEN_ANSWER_BYTES:
        raise ProtocolError(
            f"the token endpoint answered {what} with more than {MAX_TOKEN_ANSWER_BYTES} bytes; {spent}"
        )
    members = read_members(received.body)
    if members is None:
        raise ProtocolError(f"the token endpoint answered {what} with something that is not a JSON object; {spent}")
    answer = clean_answer(members)
    for note in answer.notes:
        log.warning("the token endpoint's answer to %s: %s", what, note)
    if answer.refresh_problem:
        raise ProtocolError(f"the token endpoint's answer to {what} {answer.refresh_problem}; {spent}")
    if answer.refresh_token is None and answer.unusable:
        raise ProtocolError(f"the token endpoint's answer to {what} {answer.unusable}; {spent}")
    return TokenAnswer(
        body=answer.fields,
        received_at=received.received_at,
        server_date=_server_date(received.headers),
        unusable=answer.unusable,
    )


# ---- the calls ------------------------------------------------------------------------------

@dataclass
class TokenCall:
    """One token-endpoint exchange with its bounds and collaborators."""

    session: requests.Session
    url: str
    timeout_seconds: float
    deadline_seconds: float
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    attempts: int = 0
    # Called right before each request goes out (the first, a retry, the one resend); raising stops the call
    # there, with nothing more sent: a stop was asked for, or the lease of the connection is not proven.
    before_send: Callable[[], None] | None = None

    def post(self, form: dict[str, str], client: Client, *, what: str, consumed_hint: str) -> TokenAnswer:
        """Send ``form`` with retries for transient outcomes, and at most one resend after a lost answer.

        Once an answer is lost the server may have spent the refresh token (or code); presenting a
        spent one again can make a server revoke the whole grant. So after a lost answer ``form`` is
        sent once more and never again, whatever the retry deadline: a resend lost too, or answered
        with a transient error, ends the call with NotResentError (75).
        """
        lost: AnswerLostError | None = None
        unavailable: str | None = None
        next_run = "the next run will tell; if it fails with invalid_grant, run: aweber-job login"

        def attempt() -> TokenAnswer:
            nonlocal lost, unavailable
            resend = lost is not None
            if self.before_send is not None:
                try:
                    self.before_send()
                except JobError as exc:
                    if lost is None:
                        raise
                    raise NotResentError(
                        f"{lost}, and it was not resent ({exc.message}): {consumed_hint} may have been used by the "
                        "request whose answer was lost",
                        hint=next_run,
                    ) from None
            body = dict(form)
            headers = client_auth(client, body)
            self.attempts += 1
            try:
                received = _send(self.session, self.url, body, headers, self.timeout_seconds, self.clock)
            except AnswerLostError as exc:
                if lost is not None:
                    raise NotResentError(
                        f"{lost}, and the answer to the one resend was lost too ({exc}); not sent again: "
                        f"{consumed_hint} may have been used by the request whose answer was lost",
                        hint=next_run,
                    ) from None
                lost = exc
                log.warning("%s; resending once (the server may already have acted on it)", exc)
                raise
            # A TemporaryError from _send means nothing reached the server: a resend still pending stays so.
            try:
                return classify_token_answer(received, what=what)
            except EndpointUnavailableError as exc:
                if lost is not None and resend:
                    raise NotResentError(
                        f"{lost}; the one resend was answered {exc.detail}; not sent again: {consumed_hint} may "
                        "have been used by the request whose answer was lost",
                        hint=next_run,
                    ) from None
                unavailable = unavailable or exc.detail
                raise
            except AuthError as exc:
                if "invalid_grant" not in exc.message:
                    raise
                if resend:
                    raise AuthError(
                        f"the token endpoint refused {what} with invalid_grant after an earlier answer was lost: "
                        f"{consumed_hint} was most likely consumed by the request whose answer never arrived",
                        hint="authorize again: aweber-job login",
                    ) from None
                if unavailable:
                    # A server may fail after it has spent the token (a 500 from a step after the rotation).
                    raise AuthError(
                        f"the token endpoint refused {what} with invalid_grant after an earlier attempt was "
                        f"answered {unavailable}: that attempt may have consumed {consumed_hint} before it failed",
                        hint="authorize again: aweber-job login",
                    ) from None
                raise

        try:
            return call_with_retries(
                attempt,
                deadline_seconds=self.deadline_seconds,
                what=f"{what} at the token endpoint",
                clock=self.monotonic,
                sleep=self.sleep,
            )
        except AnswerLostError as exc:
            # The deadline came before the one resend: the server may have acted on the lost request all the same.
            raise TemporaryError(
                f"{exc}, and the retry deadline passed before it could be resent; {consumed_hint} may have been "
                "used by the request whose answer was lost",
                hint=next_run,
            ) from None


def refresh_tokens(call: TokenCall, client: Client, refresh_token: str) -> TokenAnswer:
    """Exchange ``refresh_token`` for new tokens (docs/design.md §4)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return call.post(form, client, what="the refresh", consumed_hint="the refresh token")


def exchange_code(
    call: TokenCall, client: Client, code: str, *, redirect_uri: str, code_verifier: str | None
) -> TokenAnswer:
    """Exchange an authorization code (and the PKCE verifier for public clients) for tokens."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if code_verifier:
        form["code_verifier"] = code_verifier
    return call.post(form, client, what="the authorization code", consumed_hint="the authorization code")


def revoke_token(call: TokenCall, client: Client, token: str, *, hint: str = "refresh_token") -> None:
    """Revoke ``token`` at the revoke endpoint; raise AuthError/TemporaryError when AWeber refuses."""

    def attempt() -> None:
        form = {"token": token, "token_type_hint": hint}
        headers = client_auth(client, form)
        try:
            received = _send(call.session, call.url, form, headers, call.timeout_seconds, call.clock)
        except AnswerLostError as exc:
            raise TemporaryError(f"{exc}; the token may or may not be revoked") from None
        if not 200 <= received.status < 300:
            classify_token_answer(received, what="the revocation")  # raises the error class it belongs to

    call_with_retries(
        attempt, deadline_seconds=call.deadline_seconds, what="the revocation", clock=call.monotonic, sleep=call.sleep
    )


def clock_skew_seconds(answer: TokenAnswer) -> float | None:
    """Local clock minus the server's Date header, or None when the server sent no date."""
    if answer.server_date is None:
        return None
    return answer.received_at - answer.server_date


def warn_on_clock_skew(answer: TokenAnswer) -> None:
    """Warn when the local clock and the server's differ by more than five minutes."""
    skew = clock_skew_seconds(answer)
    if skew is not None and abs(skew) > CLOCK_SKEW_WARNING_SECONDS:
        direction = "ahead of" if skew > 0 else "behind"
        log.warning(
            "the local clock is %.0f s %s the token endpoint's; token expiry times may be off (check NTP)",
            abs(skew), direction,
        )
