"""Legacy OAuth 1.0a token files: recognised, kept as they came, shown, and used by every command."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from job.auth.tokens import parse_token_file
from job.errors import TokenFileError
from job.standin import StandIn
from tests.support.jobs import JobFiles, run_job, token_requests

ACCOUNT = 100
LIST = 201
DAY = 86_400
STATE_FILE = "new-subscribers.state.json"


def sha8(value: str) -> str:
    """The first 8 hex digits of SHA-256, written out here rather than taken from the job."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:8]


def write_oauth1(job: JobFiles, **rename: str) -> dict[str, str]:
    """Register OAuth 1.0a credentials at the stand-in and write them as the token file; return the file's object.

    ``rename`` maps a field to the other name AWeber's examples used (access_token -> access_key...).
    """
    credentials: dict[str, str] = job.standin.add_oauth1_credentials().as_token_file()
    document = {rename.get(key, key): value for key, value in credentials.items()}
    job.token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    job.token_file.write_text(json.dumps(document, indent=4) + "\n", encoding="utf-8")
    os.chmod(job.token_file, 0o600)
    return credentials


def legacy_env(job: JobFiles) -> dict[str, str]:
    """The environment of an OAuth 1.0a operator: no OAuth 2 client at all."""
    env = job.env()
    del env["AWEBER_CLIENT_ID"], env["AWEBER_CLIENT_SECRET"]
    env["AWEBER_STATE_DIR"] = str(job.root / "state")
    return env


def populate(standin: StandIn) -> list[str]:
    """One list of older subscribers and three from the last hour; return the new ones' emails."""
    now = time.time()
    standin.add_account(ACCOUNT)
    standin.add_list(ACCOUNT, LIST, "Newsletter", size=200, start=now - 90 * DAY, end=now - 3 * DAY)
    emails = [f"new{i}@example.com" for i in range(3)]
    standin.add_subscribers(ACCOUNT, LIST, [
        {"email": email, "subscribed_at": now - 600 + i} for i, email in enumerate(emails)
    ])
    return emails


def rows(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# ---- the token file ------------------------------------------------------------------------------

@pytest.mark.parametrize("token_name, secret_name", [
    ("access_token", "token_secret"), ("access_key", "access_secret"),
    ("access_token", "access_secret"), ("access_key", "token_secret"),
])
def test_each_naming_of_the_oauth1_fields_is_recognised_and_kept_as_it_came(token_name: str, secret_name: str) -> None:
    """The names of AWeber's legacy library and of its examples both load, and the file serialises unchanged."""
    document = {"consumer_key": "ck", "consumer_secret": "cs", token_name: "at", secret_name: "ts", "note": "kept"}
    tokens = parse_token_file(json.dumps(document).encode(), "t.json")
    assert tokens.shape == "oauth1"
    assert tokens.oauth1 is not None and tokens.oauth1.access_token == "at" and tokens.oauth1.token_secret == "ts"
    assert json.loads(tokens.to_bytes()) == document
    assert set(tokens.secrets()) == {"ck", "cs", "at", "ts"}


@pytest.mark.parametrize("document, named", [
    ({"consumer_key": "ck", "consumer_secret": "cs", "access_token": "at"}, "'token_secret' or 'access_secret'"),
    ({"consumer_key": "ck", "access_key": "at", "token_secret": "ts"}, "'consumer_secret' is missing"),
    ({"consumer_secret": "cs", "access_token": "at", "token_secret": "ts"}, "'consumer_key' is missing"),
    ({"consumer_key": "ck", "consumer_secret": "cs", "token_secret": "ts"}, "'access_token' or 'access_key'"),
    ({"consumer_key": "ck", "consumer_secret": "cs", "access_token": "at", "token_secret": "ts",
      "refresh_token": "rt"}, "OAuth 2 field 'refresh_token'"),
    ({"consumer_key": "ck", "consumer_secret": "cs", "access_token": "at", "token_secret": "ts",
      "token": {"access_token": "x", "refresh_token": "y"}}, "OAuth 2 field 'token'"),
    ({"consumer_key": "ck", "consumer_secret": "cs", "access_token": "at", "access_key": "ak",
      "token_secret": "ts"}, "both 'access_token' and 'access_key'"),
    ({"consumer_key": "ck", "consumer_secret": "", "access_token": "at", "token_secret": "ts"},
     "'consumer_secret' must be a non-empty string"),
])
def test_a_half_or_mixed_oauth1_file_is_a_65_naming_the_field(document: dict[str, Any], named: str) -> None:
    """A file missing an OAuth 1.0a field, or mixing in an OAuth 2 one, is refused naming that field, not a value."""
    with pytest.raises(TokenFileError) as caught:
        parse_token_file(json.dumps(document).encode(), "/etc/aweber/t.json")
    assert caught.value.exit_code == 65
    assert named in str(caught.value) and "/etc/aweber/t.json" in str(caught.value)
    assert not any(value in str(caught.value) for value in ("ck", "cs", "at", "ts", "rt"))


def test_status_shows_oauth1_fingerprints_and_the_way_to_oauth2(job: JobFiles) -> None:
    """`status` says the tokens do not expire, shows fingerprints only, and names `aweber-job login`."""
    credentials = write_oauth1(job, access_token="access_key", token_secret="access_secret")
    result = run_job(["status"], legacy_env(job))
    assert result.returncode == 0, result.stderr
    assert "OAuth 1.0a: the tokens do not expire" in result.stdout
    assert f"sha256:{sha8(credentials['access_token'])}" in result.stdout
    assert f"sha256:{sha8(credentials['consumer_key'])}" in result.stdout
    assert "aweber-job login" in result.stdout and "OAuth 2" in result.stdout
    assert "AWEBER_CLIENT_ID" not in result.stdout  # an OAuth 1.0a operator needs no OAuth 2 client
    for value in credentials.values():
        assert value not in result.stdout + result.stderr
    as_json = json.loads(run_job(["status", "--json"], legacy_env(job)).stdout)
    assert as_json["shape"] == "oauth1" and as_json["oauth1"] is True and as_json["expires_at"] is None


# ---- run, refresh, revoke, login --------------------------------------------------------------

def test_run_reports_new_subscribers_with_no_token_request(job: JobFiles) -> None:
    """A run with OAuth 1.0a credentials signs its API requests, reports the new subscribers, and never
    calls the token endpoint; the token file is left byte for byte as it was and the watermark is saved."""
    emails = populate(job.standin)
    write_oauth1(job)
    before = job.token_file.read_bytes()
    result = run_job(["run", "--task", "new-subscribers", "--since", "1h"], legacy_env(job))
    assert result.returncode == 0, result.stderr
    assert [row["email"] for row in rows(result.stdout)] == emails
    assert token_requests(job.standin) == 0
    assert job.token_file.read_bytes() == before
    assert result.stderr.count("OAuth 1.0a tokens, which do not expire: nothing to refresh") == 1
    assert (job.root / "state" / STATE_FILE).is_file()

    again = run_job(["run", "--task", "new-subscribers"], legacy_env(job))
    assert again.returncode == 0, again.stderr
    assert rows(again.stdout) == [] and token_requests(job.standin) == 0


def test_a_wrong_consumer_secret_is_77_and_writes_nothing(job: JobFiles) -> None:
    """A file whose consumer secret AWeber does not know: exit 77 with the disconnect hint, no refresh,
    the token file byte-identical and no task state written."""
    populate(job.standin)
    write_oauth1(job)
    document = json.loads(job.token_file.read_text(encoding="utf-8"))
    document["consumer_secret"] = "not-the-secret"
    job.token_file.write_text(json.dumps(document), encoding="utf-8")
    before = job.token_file.read_bytes()
    result = run_job(["run", "--task", "new-subscribers"], legacy_env(job))
    assert result.returncode == 77, result.stderr
    assert "disconnected the integration" in result.stderr and "aweber-job login" in result.stderr
    assert token_requests(job.standin) == 0
    assert job.token_file.read_bytes() == before
    assert not (job.root / "state" / STATE_FILE).exists()
    assert sorted(p.name for p in job.token_file.parent.iterdir()) == sorted(["tokens.json", "tokens.json.lock"])


def test_a_disconnected_integration_is_77(job: JobFiles) -> None:
    """When the customer disconnected the integration, the 401 ends the run with 77 and no refresh attempt."""
    populate(job.standin)
    credentials = write_oauth1(job)
    job.standin.oauth1.disconnect(credentials["consumer_key"])
    result = run_job(["run", "--task", "new-subscribers"], legacy_env(job))
    assert result.returncode == 77, result.stderr
    assert "cannot be refreshed" in result.stderr and token_requests(job.standin) == 0
    # One line that says which request was refused and why, and no promise of a refresh that cannot be.
    assert "refreshing" not in result.stderr, result.stderr
    (line,) = [text for text in result.stderr.splitlines() if ": error: " in text]
    assert "GET /1.0/accounts" in line and "HTTP 401" in line, line


def test_refresh_says_there_is_nothing_to_refresh(job: JobFiles) -> None:
    """`refresh` with OAuth 1.0a tokens exits 0, says so once, and sends nothing."""
    write_oauth1(job)
    result = run_job(["refresh"], legacy_env(job))
    assert result.returncode == 0, result.stderr
    assert "nothing to refresh" in result.stderr
    assert job.standin.stats()["requests_total"] == 0


def test_revoke_refuses_with_64_and_keeps_the_file(job: JobFiles) -> None:
    """`revoke` cannot end OAuth 1.0a tokens: exit 64, pointing at AWeber, the file kept, nothing sent."""
    write_oauth1(job)
    before = job.token_file.read_bytes()
    result = run_job(["revoke"], legacy_env(job))
    assert result.returncode == 64, result.stderr
    assert "OAuth 1.0a" in result.stderr and "disconnect the integration" in result.stderr
    assert job.token_file.read_bytes() == before
    assert job.standin.stats()["requests_total"] == 0


def test_login_force_replaces_oauth1_tokens_with_oauth2_ones(job: JobFiles) -> None:
    """`login --force` is the way to OAuth 2: the OAuth 1.0a file becomes a flat OAuth 2 token file."""
    from tests.integration.test_login import approve, code_from

    write_oauth1(job)
    params = {"response_type": "code", "client_id": job.client_id, "redirect_uri": "urn:ietf:wg:oauth:2.0:oob",
              "scope": "account.read list.read subscriber.read", "state": "s"}
    url = requests.Request("GET", job.standin.authorize_url, params=params).prepare().url
    code = code_from(approve(str(url)))
    refused = run_job(["login", "--code", code], job.env())
    assert refused.returncode == 64  # no silent overwrite
    # The way out it names must work for OAuth 1.0a tokens, which `revoke` cannot end.
    assert "revoke first" not in refused.stderr and "--force" in refused.stderr, refused.stderr
    assert "OAuth 1.0a" in refused.stderr and "disconnect" in refused.stderr, refused.stderr
    result = run_job(["login", "--force", "--code", code], job.env())
    assert result.returncode == 0, result.stderr
    document = json.loads(job.token_file.read_text(encoding="utf-8"))
    assert document["refresh_token"] in job.standin.live_refresh_tokens()
    assert not {"consumer_key", "consumer_secret", "token_secret"} & set(document)
    assert "OAuth 1.0a" in result.stderr
    assert run_job(["status"], job.env()).stdout.count("OAuth 1.0a") == 0


def test_a_missing_oauthlib_is_78_naming_the_extra(job: JobFiles, tmp_path: Path) -> None:
    """Without oauthlib, a run with an OAuth 1.0a file exits 78 naming `aweber-job[oauth1]` and sends nothing."""
    blocker = tmp_path / "blocked"
    (blocker / "oauthlib").mkdir(parents=True)
    (blocker / "oauthlib" / "__init__.py").write_text("raise ImportError('blocked for the test')\n", encoding="utf-8")
    populate(job.standin)
    write_oauth1(job)
    env = {**legacy_env(job), "PYTHONPATH": str(blocker)}
    result = run_job(["run", "--task", "new-subscribers"], env)
    assert result.returncode == 78, result.stderr
    assert "aweber-job[oauth1]" in result.stderr
    assert job.standin.stats()["requests_total"] == 0


def test_no_oauth1_secret_reaches_output_logs_or_state_at_vv(job: JobFiles) -> None:
    """At -vv, a run, a refresh, status and a refused revoke show none of the consumer key, consumer
    secret, access token or token secret on stdout, stderr or in the state file (fingerprints only)."""
    populate(job.standin)
    credentials = write_oauth1(job)
    env = legacy_env(job)
    results = [
        run_job(["-vv", "run", "--task", "new-subscribers", "--since", "1h"], env),
        run_job(["-vv", "refresh"], env),
        run_job(["-vv", "status"], env),
        run_job(["-vv", "revoke"], env),
    ]
    assert [r.returncode for r in results] == [0, 0, 0, 64], [r.stderr for r in results]
    everything = "".join(r.stdout + r.stderr for r in results)
    everything += (job.root / "state" / STATE_FILE).read_text(encoding="utf-8")
    assert "HTTP/1.1" in everything or "urllib3" in everything  # -vv really showed the HTTP lines
    for name, value in credentials.items():
        assert value not in everything, name
    assert not re.search(r"oauth_signature=", everything)
    assert sha8(credentials["access_token"]) in everything


def test_demo_oauth1_shows_the_legacy_path() -> None:
    """`aweber-job demo --oauth1` passes, with no token request and the token file unchanged."""
    result = run_job(["demo", "--oauth1"], {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo OK" in result.stdout and "OAuth 1.0a HMAC-SHA1" in result.stdout
    assert result.stdout.count("requests: 0 to the token endpoint") == 2
