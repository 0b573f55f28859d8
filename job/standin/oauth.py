"""AWeber's OAuth 2 endpoints: token (refresh and authorization-code grants), authorize and revoke.

Client authentication follows AWeber's documentation (docs/aweber-api.md §1.3): a confidential client
sends HTTP Basic ``client_id:client_secret`` (or both in the form body); a public client sends
``client_id`` in the body and never a secret (a Basic header with an empty password is also
accepted, as AWeber's revoke documentation describes). Public clients must use PKCE S256,
confidential clients must not. Errors have the RFC 6749 §5.2 shape.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import re
from urllib.parse import urlencode, urlsplit

from job.standin.messages import NO_STORE_HEADERS, Answer, Request, json_answer, oauth_error
from job.standin.state import Refused, State

OOB_REDIRECT_URI = "urn:ietf:wg:oauth:2.0:oob"

# The header that carries the code on the out-of-band page, so tests need not parse HTML.
CODE_HEADER = "X-Authorization-Code"

# AWeber's scopes (docs/aweber-api.md §1.7).
KNOWN_SCOPES = frozenset(
    {
        "account.read", "list.read", "list.write", "subscriber.read", "subscriber.write",
        "subscriber.read-extended", "email.read", "email.write", "landing-page.read",
    }
)

# RFC 7636 §4.1: 43-128 unreserved characters; the S256 challenge is 43 base64url characters.
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")
_FORM_TYPE = "application/x-www-form-urlencoded"
_UNAUTHORIZED_HEADERS = (("WWW-Authenticate", 'Basic realm="AWeber"'),)


class _Problem(Exception):
    """An OAuth error to answer with."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def answer(self) -> Answer:
        headers = _UNAUTHORIZED_HEADERS if self.status == 401 else ()
        return oauth_error(self.status, self.error, self.description, headers=headers)


def handle_token(state: State, request: Request) -> Answer:
    """Answer ``POST /oauth2/token`` (refresh_token and authorization_code grants)."""
    try:
        form = _read_form(request)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise _Problem(400, "invalid_request", "grant_type is required")
        client_id, public = _authenticate_client(state, request, form)
        if grant_type == "refresh_token":
            return _refresh(state, form, client_id)
        if grant_type == "authorization_code":
            return _exchange_code(state, form, client_id, public)
        raise _Problem(400, "unsupported_grant_type", "grant_type must be refresh_token or authorization_code")
    except _Problem as problem:
        return problem.answer()


def _refresh(state: State, form: dict[str, str], client_id: str) -> Answer:
    refresh_token = form.get("refresh_token")
    if not refresh_token:
        raise _Problem(400, "invalid_request", "refresh_token is required")
    try:
        grant = state.rotate_refresh_token(client_id, refresh_token)
    except Refused as refused:
        raise _Problem(400, "invalid_grant", str(refused)) from refused
    return json_answer(200, grant, headers=NO_STORE_HEADERS)


def _exchange_code(state: State, form: dict[str, str], client_id: str, public: bool) -> Answer:
    code, redirect_uri = form.get("code"), form.get("redirect_uri")
    if not code or not redirect_uri:
        raise _Problem(400, "invalid_request", "code and redirect_uri are required")
    verifier = form.get("code_verifier")
    if verifier:
        # Only the client knew it; a scan for leaks of the client's secrets must look for it too.
        state.note_received_secret(verifier)
    if not public and verifier is not None:
        raise _Problem(400, "invalid_request", "Confidential Client MUST NOT Use PKCE")
    if public and not verifier:
        raise _Problem(400, "invalid_request", "Public Client MUST Use PKCE: code_verifier is required")
    try:
        issued = state.take_code(code)
    except Refused as refused:
        raise _Problem(400, "invalid_grant", str(refused)) from refused
    if issued.client_id != client_id:
        raise _Problem(400, "invalid_grant", "the authorization code was issued to another client")
    if issued.redirect_uri != redirect_uri:
        raise _Problem(400, "invalid_grant", "redirect_uri does not match the one given at authorization")
    if public:
        if verifier is None or not _VERIFIER.fullmatch(verifier):
            raise _Problem(400, "invalid_grant", "code_verifier must be 43 to 128 characters [A-Za-z0-9-._~]")
        if not hmac.compare_digest(s256_challenge(verifier), issued.code_challenge or ""):
            raise _Problem(400, "invalid_grant", "code_verifier does not match the code_challenge")
    return json_answer(200, state.redeem_code(code, issued), headers=NO_STORE_HEADERS)


def s256_challenge(verifier: str) -> str:
    """Return the PKCE S256 code challenge for ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def handle_authorize(state: State, request: Request) -> Answer:
    """Answer ``GET /oauth2/authorize``: approve at once and hand out a code."""
    try:
        if request.method != "GET":
            raise _Problem(405, "invalid_request", "the authorize endpoint takes GET")
        if request.query_value("response_type") != "code":
            raise _Problem(400, "unsupported_response_type", "response_type must be code")
        client_id = request.query_value("client_id") or ""
        if not state.is_known_client(client_id):
            raise _Problem(400, "invalid_request", "Invalid client id")
        redirect_uri = request.query_value("redirect_uri") or ""
        if not _is_acceptable_redirect(redirect_uri):
            raise _Problem(400, "invalid_request", "Invalid redirect URI")
        scope = request.query_value("scope") or ""
        unknown = sorted(set(scope.split()) - KNOWN_SCOPES)
        if unknown:
            raise _Problem(400, "invalid_scope", f"unknown scopes: {' '.join(unknown)}")
        challenge = request.query_value("code_challenge")
        method = request.query_value("code_challenge_method")
        if state.client_secret(client_id) is None:
            if not challenge:
                raise _Problem(400, "invalid_request", "Public Client MUST Use PKCE")
            if method != "S256":
                raise _Problem(400, "invalid_request", "code_challenge_method must be S256 (SHA256 only)")
            if not _CHALLENGE.fullmatch(challenge):
                raise _Problem(400, "invalid_request", "code_challenge must be 43 base64url characters")
        elif challenge is not None or method is not None:
            raise _Problem(400, "invalid_request", "Confidential Client MUST NOT Use PKCE")
    except _Problem as problem:
        return problem.answer()

    code = state.create_code(client_id, redirect_uri, scope, challenge)
    if redirect_uri == OOB_REDIRECT_URI:
        page = (
            "<!DOCTYPE html>\n<html><head><title>Authorization code</title></head><body>\n"
            "<p>Copy this authorization code and paste it into the application:</p>\n"
            f"<p><code id=\"authorization-code\">{html.escape(code)}</code></p>\n</body></html>\n"
        )
        return Answer(
            200, page.encode("utf-8"), content_type="text/html; charset=utf-8",
            headers=((CODE_HEADER, code), *NO_STORE_HEADERS),
        )
    params = {"code": code}
    state_value = request.query_value("state")
    if state_value is not None:
        params["state"] = state_value
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return Answer(302, content_type=None, headers=(("Location", redirect_uri + separator + urlencode(params)),))


def _is_acceptable_redirect(redirect_uri: str) -> bool:
    if redirect_uri == OOB_REDIRECT_URI:
        return True
    parts = urlsplit(redirect_uri)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.fragment


def handle_revoke(state: State, request: Request) -> Answer:
    """Answer ``POST /oauth2/revoke`` (RFC 7009): the token is dead afterwards."""
    try:
        form = _read_form(request)
        client_id, _ = _authenticate_client(state, request, form)
        token = form.get("token")
        if not token:
            raise _Problem(400, "invalid_request", "token is required")
        try:
            state.revoke_token(client_id, token)
        except Refused as refused:
            raise _Problem(400, "invalid_request", str(refused)) from refused
    except _Problem as problem:
        return problem.answer()
    # AWeber documents no body for a successful revoke ("The token has been deleted").
    return Answer(200, content_type=None, headers=NO_STORE_HEADERS)


def _read_form(request: Request) -> dict[str, str]:
    if request.method != "POST":
        raise _Problem(405, "invalid_request", "this endpoint takes POST")
    if request.media_type() != _FORM_TYPE:
        raise _Problem(400, "invalid_request", f"the body must be {_FORM_TYPE}")
    form: dict[str, str] = {}
    for key, value in request.form_pairs():
        # RFC 6749 §3.2: request parameters must not be included more than once.
        if key in form:
            raise _Problem(400, "invalid_request", f"parameter {key} is given more than once")
        form[key] = value
    return form


def _authenticate_client(state: State, request: Request, form: dict[str, str]) -> tuple[str, bool]:
    """Return (client_id, is_public) or raise the RFC 6749 error for bad client authentication."""
    basic = _basic_credentials(request.header("authorization"))
    body_id, body_secret = form.get("client_id"), form.get("client_secret")
    if basic is not None:
        if body_secret is not None:
            raise _Problem(400, "invalid_request", "use one client authentication method, not Basic and the body")
        if body_id is not None and body_id != basic[0]:
            raise _Problem(401, "invalid_client", "client_id in the body differs from the Authorization header")
        client_id: str | None = basic[0]
        secret: str | None = basic[1]
    else:
        client_id, secret = body_id, body_secret
    if not client_id:
        raise _Problem(401, "invalid_client", "client authentication is required")
    if not state.is_known_client(client_id):
        raise _Problem(401, "invalid_client", "unknown client")
    expected = state.client_secret(client_id)
    if expected is None:
        if secret:
            raise _Problem(401, "invalid_client", "public clients MUST NOT include secrets")
        return client_id, True
    if secret is None or not hmac.compare_digest(secret.encode("utf-8"), expected.encode("utf-8")):
        raise _Problem(401, "invalid_client", "client authentication failed")
    return client_id, False


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise _Problem(401, "invalid_client", "client authentication must use HTTP Basic")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as error:
        raise _Problem(401, "invalid_client", "malformed Basic credentials") from error
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _Problem(401, "invalid_client", "malformed Basic credentials")
    # RFC 6749 §2.3.1 form-encodes both parts first, but common clients (requests' HTTPBasicAuth)
    # do not; AWeber's ids and secrets are alphanumeric, so the raw values are taken as they are.
    return client_id, secret
