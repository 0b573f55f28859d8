"""`aweber-job login` and `revoke` against the stand-in: both client kinds, refusals, --force, secrets."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

from job.auth.oauth import make_pkce_pair
from job.auth.tokens import parse_token_file
from job.cli import main
from job.standin import Fault, StandIn
from job.stores.file.lock import TokenLock
from tests.support.jobs import (
    CONFIDENTIAL_ID,
    CONFIDENTIAL_SECRET,
    PUBLIC_ID,
    REPO,
    JobFiles,
    run_job,
    token_requests,
)

OOB = "urn:ietf:wg:oauth:2.0:oob"
CALLBACK = "https://localhost/callback"
PROCESS_TIMEOUT_SECONDS = 60


@dataclass
class Finished:
    """What a login process printed and how it ended."""

    returncode: int
    stdout: str
    stderr: str
    url: str | None

    @property
    def printed(self) -> str:
        return self.stdout + self.stderr


def login_interactively(
    args: list[str], env: dict[str, str], respond: Callable[[str], str]
) -> Finished:
    """Run ``python -m job ARGS`` and, once it prints the authorize URL, paste ``respond(url)`` at its prompt."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "job", *args],
            env=env, cwd=REPO, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
        )
        assert process.stdin is not None and process.stdout is not None
        seen: list[str] = []
        url: str | None = None
        try:
            while line := process.stdout.readline():
                seen.append(line)
                if line.startswith(("http://", "https://")):
                    url = line.strip()
                    break
            if url is not None:
                process.stdin.write(respond(url) + "\n")
            process.stdin.close()
            # Read through the same buffered stream that readline() used, so nothing is skipped.
            seen.append(process.stdout.read())
            process.wait(timeout=PROCESS_TIMEOUT_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        errors.seek(0)
        return Finished(process.returncode, "".join(seen), errors.read(), url)


def approve(url: str) -> requests.Response:
    """Open the authorize URL as a browser would, without following the redirect (the stand-in approves at once)."""
    return requests.get(url, allow_redirects=False, timeout=5)


def code_from(answer: requests.Response) -> str:
    """The authorization code of an approval: the OOB page's header, or the redirect's ``code``."""
    if answer.status_code == 302:
        return parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Authorization-Code"]


def paste_code(url: str) -> str:
    """Approve and answer the prompt with the bare code."""
    return code_from(approve(url))


def paste_redirect(url: str) -> str:
    """Approve and answer the prompt with the whole redirect URL."""
    answer = approve(url)
    assert answer.status_code == 302, answer.text
    return answer.headers["Location"]


def challenge_for(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def own_code(standin: StandIn, client_id: str, *, challenge: str | None = None) -> str:
    """A code the test obtains itself (not from the job's URL), out of band."""
    params = {
        "response_type": "code", "client_id": client_id, "redirect_uri": OOB,
        "scope": "account.read list.read subscriber.read", "state": "test-state",
    }
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    return code_from(approve(standin.authorize_url + "?" + urlencode(params)))


def public_job(tmp_path: Path, standin: StandIn) -> JobFiles:
    return JobFiles(root=tmp_path, standin=standin, client_id=PUBLIC_ID)


def assert_valid_flat_file(job: JobFiles) -> dict[str, object]:
    """The token file is 0600, flat, valid, and its refresh token is live at the stand-in."""
    mode = stat.S_IMODE(os.stat(job.token_file).st_mode)
    assert mode == 0o600, oct(mode)
    data = job.token_file.read_bytes()
    tokens = parse_token_file(data, str(job.token_file))
    assert tokens.shape == "flat"
    document: dict[str, object] = json.loads(data)
    assert document["token_type"] == "bearer"
    assert document["scope"] == "account.read list.read subscriber.read"
    assert isinstance(document["expires_at"], float)
    assert job.standin.live_refresh_tokens() == {tokens.refresh_token}
    return document


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# ---- both client kinds complete login ------------------------------------------------------------


@pytest.mark.parametrize("client_id", [PUBLIC_ID, CONFIDENTIAL_ID])
def test_login_through_the_prompt_writes_a_token_file_that_run_uses(
    tmp_path: Path, standin: StandIn, client_id: str
) -> None:
    """Each client kind approves the printed URL, pastes the code, gets a 0600 flat file, and `run` then works."""
    job = JobFiles(root=tmp_path, standin=standin, client_id=client_id)
    result = login_interactively(["login"], job.env(), paste_code)
    assert result.returncode == 0, result.printed
    assert result.url is not None
    query = query_of(result.url)
    assert query["redirect_uri"] == OOB
    assert (f'If AWeber answers "Invalid redirect URI", the app at labs.aweber.com must have {OOB} registered '
            "exactly as written") in result.stdout
    assert query["scope"] == "account.read list.read subscriber.read"
    assert len(query["state"]) >= 32
    if client_id == PUBLIC_ID:
        assert query["code_challenge_method"] == "S256"
        assert len(query["code_challenge"]) == 43
    else:
        assert "code_challenge" not in query and "code_challenge_method" not in query
    assert stat.S_IMODE(os.stat(job.token_file.parent).st_mode) == 0o700
    assert_valid_flat_file(job)
    assert f"Token file {job.token_file}" in result.stdout
    assert "systemctl enable --now aweber-job.timer" in result.stdout
    assert "crontab.example" in result.stdout
    log = standin.request_log()
    exchange = [e for e in log if e["grant_type"] == "authorization_code"]
    assert [e["client_auth"] for e in exchange] == ["public" if client_id == PUBLIC_ID else "basic"]

    run = run_job(["run", "--task", "noop"], job.env())
    assert run.returncode == 0, run.stderr
    assert_valid_flat_file(job)


def test_login_accepts_the_whole_redirect_url_and_checks_its_state(tmp_path: Path, standin: StandIn) -> None:
    """With a registered redirect URI the person pastes the whole redirected address, and login succeeds."""
    job = public_job(tmp_path, standin)
    result = login_interactively(["login", "--redirect-uri", CALLBACK], job.env(), paste_redirect)
    assert result.returncode == 0, result.printed
    assert result.url is not None and query_of(result.url)["redirect_uri"] == CALLBACK
    assert "copy the whole address" in result.stdout
    assert_valid_flat_file(job)
    assert run_job(["refresh"], job.env()).returncode == 0


def test_login_with_code_option_for_a_confidential_client(job: JobFiles) -> None:
    """A confidential client may pass the code on the command line; no URL or prompt is printed then."""
    code = own_code(job.standin, CONFIDENTIAL_ID)
    result = run_job(["login", "--code", code], job.env())
    assert result.returncode == 0, result.stderr
    assert "Open this URL" not in result.stdout
    assert_valid_flat_file(job)


# ---- refusals: nothing written ------------------------------------------------------------------


def test_a_pasted_url_with_the_wrong_state_is_refused_and_the_code_not_spent(tmp_path: Path, standin: StandIn) -> None:
    """A redirect URL whose state is not the one this login sent is refused before any token request."""

    def forged(url: str) -> str:
        location = urlsplit(paste_redirect(url))
        query = {k: v[0] for k, v in parse_qs(location.query).items()}
        query["state"] = "someone-elses-state"
        return urlunsplit(location._replace(query=urlencode(query)))

    job = public_job(tmp_path, standin)
    result = login_interactively(["login", "--redirect-uri", CALLBACK], job.env(), forged)
    assert result.returncode == 77
    assert "state does not match" in result.stderr
    assert not job.token_file.exists()
    assert token_requests(standin) == 0


def test_a_reused_code_is_refused(job: JobFiles) -> None:
    """A code that was already exchanged is refused with invalid_grant (exit 77) and no file is written."""
    code = own_code(job.standin, CONFIDENTIAL_ID)
    first = requests.post(
        job.standin.token_url,
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": OOB},
        auth=(CONFIDENTIAL_ID, CONFIDENTIAL_SECRET), timeout=5,
    )
    assert first.status_code == 200
    result = run_job(["login"], job.env(), input_text=code + "\n")
    assert result.returncode == 77
    assert "invalid_grant" in result.stderr and "already used" in result.stderr
    assert "aweber-job login" in result.stderr
    assert not job.token_file.exists()
    assert not list(job.token_file.parent.glob(".tokens.json.tmp-*"))


def test_a_code_from_another_challenge_fails_the_verifier_check(tmp_path: Path, standin: StandIn) -> None:
    """A public client's code made for another PKCE challenge is refused: this login's verifier does not fit."""
    job = public_job(tmp_path, standin)
    other_verifier, _ = make_pkce_pair()
    code = own_code(standin, PUBLIC_ID, challenge=challenge_for(other_verifier))
    result = run_job(["login"], job.env(), input_text=code + "\n")
    assert result.returncode == 77
    assert "code_verifier does not match" in result.stderr
    assert not job.token_file.exists()


def test_a_confidential_client_sending_pkce_is_refused_by_the_server(standin: StandIn) -> None:
    """AWeber refuses PKCE from a confidential client at the authorize step and at the token endpoint."""
    verifier, challenge = make_pkce_pair()
    params = {
        "response_type": "code", "client_id": CONFIDENTIAL_ID, "redirect_uri": OOB,
        "scope": "account.read", "state": "s", "code_challenge": challenge, "code_challenge_method": "S256",
    }
    refused = approve(standin.authorize_url + "?" + urlencode(params))
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_request"
    assert "MUST NOT Use PKCE" in refused.json()["error_description"]

    code = own_code(standin, CONFIDENTIAL_ID)
    answer = requests.post(
        standin.token_url,
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": OOB, "code_verifier": verifier},
        auth=(CONFIDENTIAL_ID, CONFIDENTIAL_SECRET), timeout=5,
    )
    assert answer.status_code == 400
    assert "MUST NOT Use PKCE" in answer.json()["error_description"]
    assert standin.live_refresh_tokens() == set()


def test_an_answer_without_a_refresh_token_writes_nothing(job: JobFiles) -> None:
    """A code exchange answered without a refresh token is unusable for a batch job: exit 76, no file."""
    job.standin.inject(
        Fault(status=200, body=b'{"access_token": "a-lonely-access-token", "token_type": "bearer"}'),
        path="/oauth2/token",
    )
    code = own_code(job.standin, CONFIDENTIAL_ID)
    result = run_job(["login"], job.env(), input_text=code + "\n")
    assert result.returncode == 76
    assert "no refresh_token" in result.stderr
    assert not job.token_file.exists()
    assert not list(job.token_file.parent.glob(".tokens.json.tmp-*"))


@pytest.mark.parametrize(
    ("odd_answer", "exit_code"),
    [("deep_nesting_before_the_tokens", 0), ("expires_in_overflow", 0), ("scope_lone_surrogate", 0),
     ("access_token_missing", 76), ("token_type_mac", 76)],
)
def test_a_code_exchange_keeps_the_refresh_token_whatever_else_the_answer_holds(
    job: JobFiles, odd_answer: str, exit_code: int
) -> None:
    """Login saves the refresh token of an odd answer in a file that loads; exit 76 only when no access token
    can be used, saying the refresh token was saved; a refresh afterwards succeeds."""
    job.standin.inject(Fault(odd_answer=odd_answer), path="/oauth2/token")
    code = own_code(job.standin, CONFIDENTIAL_ID)
    result = run_job(["login"], job.env(), input_text=code + "\n")
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr
    if exit_code:
        assert "the new refresh token was saved" in result.stderr
    tokens = parse_token_file(job.token_file.read_bytes(), "t.json")
    assert job.standin.live_refresh_tokens() == {tokens.refresh_token}
    assert run_job(["refresh"], job.env()).returncode == 0
    assert job.standin.live_refresh_tokens() == {job.read_tokens()["refresh_token"]}


def test_code_option_is_refused_for_a_public_client(tmp_path: Path, standin: StandIn) -> None:
    """A public client cannot take --code: the code must come from this login's PKCE challenge."""
    job = public_job(tmp_path, standin)
    out = io.StringIO()
    code = main(["login", "--code", "abc123def456"], job.env(), stdout=out, stdin=io.StringIO(""))
    assert code == 64
    assert not job.token_file.exists()
    assert token_requests(standin) == 0


def test_input_that_ends_before_a_code_is_a_usage_error(tmp_path: Path, standin: StandIn) -> None:
    """End of input at the prompt ends login with exit 64 and nothing sent to the token endpoint."""
    job = public_job(tmp_path, standin)
    out = io.StringIO()
    code = main(["login"], job.env(), stdout=out, stdin=io.StringIO("\n  \n"))
    assert code == 64
    assert "Open this URL" in out.getvalue()
    assert not job.token_file.exists()
    assert token_requests(standin) == 0


def test_login_without_a_client_id_is_a_configuration_error(job: JobFiles) -> None:
    """No AWEBER_CLIENT_ID: exit 78 naming the variable, before any URL is printed."""
    env = job.env()
    del env["AWEBER_CLIENT_ID"]
    result = run_job(["login"], env, input_text="")
    assert result.returncode == 78
    assert "AWEBER_CLIENT_ID" in result.stderr
    assert result.stdout == ""


def test_an_unwritable_token_location_fails_before_the_url(job: JobFiles) -> None:
    """A token file whose directory cannot be created ends with exit 73 before a URL is printed."""
    blocker = job.root / "not-a-directory"
    blocker.write_text("a file\n")
    env = job.env(AWEBER_TOKEN_FILE=str(blocker / "tokens.json"))
    result = run_job(["login"], env, input_text="")
    assert result.returncode == 73
    assert "nothing was sent to AWeber" in result.stderr
    assert result.stdout == ""


def test_login_waits_for_a_running_job_and_gives_up(job: JobFiles) -> None:
    """While another run holds the lock, login gives up after the lock timeout (exit 75) before printing a URL."""
    job.token_file.parent.mkdir(parents=True, mode=0o700)
    with TokenLock(job.token_file, 5):
        result = run_job(["login"], job.env(AWEBER_LOCK_TIMEOUT="1"), input_text="")
    assert result.returncode == 75
    assert "holds the lock" in result.stderr
    assert result.stdout == ""


# ---- an existing token file ---------------------------------------------------------------------


def test_an_existing_token_file_is_not_replaced_without_force(job: JobFiles) -> None:
    """login refuses (exit 64) to overwrite a token file without --force, before printing a URL."""
    job.write_tokens()
    before = job.token_file.read_bytes()
    result = run_job(["login"], job.env(), input_text="")
    assert result.returncode == 64
    assert "exists; use --force" in result.stderr
    assert "aweber-job revoke" in result.stderr
    # Whether AWeber ends the old grant when the app is authorized again is not documented: no promise either way.
    assert "stays valid" not in result.stderr
    assert "does not revoke its refresh token, which may still work" in result.stderr
    assert result.stdout == ""
    assert job.token_file.read_bytes() == before
    assert job.standin.stats()["authorize"] == {}


def test_force_replaces_an_existing_token_file(job: JobFiles) -> None:
    """With --force the file is replaced by the new authorization; the old refresh token is not revoked."""
    grant = job.write_tokens()
    old_refresh = str(grant["refresh_token"])
    result = login_interactively(["login", "--force"], job.env(), paste_code)
    assert result.returncode == 0, result.printed
    new_refresh = job.read_tokens()["refresh_token"]
    assert new_refresh != old_refresh
    assert job.standin.live_refresh_tokens() == {old_refresh, new_refresh}
    warnings = [line for line in result.stderr.splitlines() if ": warning: " in line]
    assert len(warnings) == 1 and "was not revoked and may still work" in warnings[0]
    assert "stays valid" not in result.stderr
    assert stat.S_IMODE(os.stat(job.token_file).st_mode) == 0o600


def test_force_keeps_the_credentials_json_shape(job: JobFiles) -> None:
    """Replacing AWeber's credentials.json shape keeps that shape and the keys around the token."""
    job.write_tokens(shape="credentials.json")
    result = login_interactively(["login", "--force"], job.env(), paste_code)
    assert result.returncode == 0, result.printed
    document = json.loads(job.token_file.read_text())
    assert document["client_id"] == CONFIDENTIAL_ID
    assert document["client_secret"] == CONFIDENTIAL_SECRET
    assert parse_token_file(job.token_file.read_bytes(), "t").shape == "credentials.json"
    assert job.standin.live_refresh_tokens() >= {document["token"]["refresh_token"]}
    assert run_job(["refresh"], job.env()).returncode == 0


# ---- revoke -------------------------------------------------------------------------------------


def test_revoke_kills_the_tokens_and_removes_the_file(job: JobFiles) -> None:
    """An accepted revocation removes the token file; the refresh and access tokens are dead at the server."""
    grant = job.write_tokens()
    result = run_job(["revoke"], job.env())
    assert result.returncode == 0, result.stderr
    assert not job.token_file.exists()
    assert str(grant["refresh_token"]) not in job.standin.live_refresh_tokens()
    refresh = requests.post(
        job.standin.token_url, data={"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]},
        auth=(CONFIDENTIAL_ID, CONFIDENTIAL_SECRET), timeout=5,
    )
    assert refresh.json()["error"] == "invalid_grant"
    api = requests.get(
        job.standin.api_url + "/accounts", headers={"Authorization": f"Bearer {grant['access_token']}"}, timeout=5
    )
    assert api.status_code == 401
    assert "revoked the refresh token" in result.stderr
    assert job.standin.stats()["revoke"] == {"revoke:200": 2}
    assert run_job(["run", "--task", "noop"], job.env()).returncode == 65


def test_revoke_as_a_public_client(tmp_path: Path, standin: StandIn) -> None:
    """A public client revokes with its client_id in the body and no secret."""
    job = public_job(tmp_path, standin)
    grant = job.write_tokens()
    result = run_job(["revoke"], job.env())
    assert result.returncode == 0, result.stderr
    assert not job.token_file.exists()
    assert str(grant["refresh_token"]) not in standin.live_refresh_tokens()
    assert {e["client_auth"] for e in standin.request_log() if e["kind"] == "revoke"} == {"public"}


@pytest.mark.parametrize(
    ("faults", "exit_code", "words"),
    [
        ([Fault(status=401, oauth_error="invalid_client")], 77, "invalid_client"),
        ([Fault(status=500)] * 6, 75, "unavailable"),
    ],
    ids=["invalid_client", "server_error"],
)
def test_a_refused_revocation_keeps_the_file(job: JobFiles, faults: list[Fault], exit_code: int, words: str) -> None:
    """When AWeber does not accept the revocation the token file stays, untouched, with the matching exit code."""
    grant = job.write_tokens()
    before = job.token_file.read_bytes()
    job.standin.inject(*faults, path="/oauth2/revoke")
    result = run_job(["revoke"], job.env(AWEBER_RETRY_DEADLINE="1"))
    assert result.returncode == exit_code, result.stderr
    assert words in result.stderr
    assert "was kept" in result.stderr
    assert job.token_file.read_bytes() == before
    assert str(grant["refresh_token"]) in job.standin.live_refresh_tokens()


def test_revoke_without_a_token_file_says_so(job: JobFiles) -> None:
    """Nothing to revoke: exit 65 and no request to AWeber."""
    job.token_file.parent.mkdir(parents=True, mode=0o700)
    result = run_job(["revoke"], job.env())
    assert result.returncode == 65
    assert "does not exist" in result.stderr
    assert job.standin.stats()["requests_total"] == 0


# ---- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_id", [PUBLIC_ID, CONFIDENTIAL_ID])
def test_no_code_verifier_or_token_is_ever_printed(tmp_path: Path, standin: StandIn, client_id: str) -> None:
    """At -vv, login, a run and revoke print no code, PKCE verifier, token or client secret on stdout or stderr."""
    job = JobFiles(root=tmp_path, standin=standin, client_id=client_id)
    codes: list[str] = []

    def remember(url: str) -> str:
        location = paste_redirect(url)
        codes.append(parse_qs(urlsplit(location).query)["code"][0])
        return location

    printed: list[str] = []
    login = login_interactively(["-vv", "login", "--redirect-uri", CALLBACK], job.env(), remember)
    assert login.returncode == 0, login.printed
    printed.append(login.printed)
    secrets_seen = set(codes)
    secrets_seen.update(str(job.read_tokens()[k]) for k in ("access_token", "refresh_token"))
    run = run_job(["-vv", "run", "--task", "noop"], job.env())
    assert run.returncode == 0, run.stderr
    printed.append(run.stdout + run.stderr)
    secrets_seen.update(str(job.read_tokens()[k]) for k in ("access_token", "refresh_token"))
    revoke = run_job(["-vv", "revoke"], job.env())
    assert revoke.returncode == 0, revoke.stderr
    printed.append(revoke.stdout + revoke.stderr)
    if client_id == CONFIDENTIAL_ID:
        secrets_seen.add(CONFIDENTIAL_SECRET)

    everything = "\n".join(printed)
    assert "urllib3" in everything or "HTTP/1.1" in everything  # -vv really showed the HTTP lines
    for secret in secrets_seen:
        assert secret not in everything
    # The verifier never leaves the process; anything shaped like one must not hash to the printed challenge.
    assert login.url is not None
    challenge = query_of(login.url).get("code_challenge")
    if challenge is not None:
        for candidate in re.findall(r"[A-Za-z0-9\-._~]{43,128}", everything):
            assert challenge_for(candidate) != challenge
