"""`aweber-job status`: no network, fingerprints not secrets, warnings an operator needs, --json for machines."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from job.auth.tokens import fingerprint
from tests.integration.test_store import lock_held_by_another_process
from tests.support.jobs import CONFIDENTIAL_SECRET, run_job

ACCESS = "status-access-token-9f8e7d"
REFRESH = "status-refresh-token-1a2b3c"


def write(path: Path, document: dict[str, object], mode: int = 0o600) -> None:
    path.write_text(json.dumps(document))
    os.chmod(path, mode)


def env_for(path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(path.parent),
        "AWEBER_TOKEN_FILE": str(path),
        "AWEBER_CLIENT_ID": "cid",
        "AWEBER_CLIENT_SECRET": CONFIDENTIAL_SECRET,
        # Unreachable on purpose: status must not need the network.
        "AWEBER_TOKEN_URL": "http://127.0.0.1:9/oauth2/token",
    }


def test_status_shows_fingerprints_expiry_and_mode_never_secrets(tmp_path: Path) -> None:
    """The human report names the file, shape, fingerprints and expiry; no token or secret appears."""
    path = tmp_path / "tokens.json"
    write(path, {"access_token": ACCESS, "refresh_token": REFRESH, "expires_at": time.time() + 3600,
                 "scope": "account.read list.read"})
    result = run_job(["-vv", "status"], env_for(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert str(path) in out
    assert fingerprint(REFRESH) in out and fingerprint(ACCESS) in out
    assert "in 3" in out  # "in 3599 s" give or take
    assert "0600" in out and "flat" in out
    assert "lock:" in out and "(free)" in out
    for secret in (ACCESS, REFRESH, CONFIDENTIAL_SECRET):
        assert secret not in result.stdout + result.stderr


def test_status_json_is_one_object_with_the_same_facts(tmp_path: Path) -> None:
    """--json prints one parseable object with fingerprints, expiry and warnings."""
    path = tmp_path / "tokens.json"
    expires_at = time.time() - 60
    write(path, {"client_id": "cid", "client_secret": "file-secret-xyz",
                 "token": {"access_token": ACCESS, "refresh_token": REFRESH, "expires_at": expires_at}},
          mode=0o644)
    result = run_job(["status", "--json"], env_for(path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["shape"] == "credentials.json"
    assert report["refresh_token_fingerprint"] == fingerprint(REFRESH)
    assert report["expired"] is True and report["expires_at"] == expires_at
    assert report["mode"] == "0644"
    assert any("readable by group or others" in w for w in report["warnings"])
    for secret in (ACCESS, REFRESH, "file-secret-xyz", CONFIDENTIAL_SECRET):
        assert secret not in result.stdout + result.stderr


def test_status_of_a_bad_file_exits_65_and_says_why(tmp_path: Path) -> None:
    """A token file that does not load: exit 65, the problem in the report, JSON too."""
    path = tmp_path / "tokens.json"
    path.write_text('{"access_token": "x"}')
    result = run_job(["status", "--json"], env_for(path))
    assert result.returncode == 65
    report = json.loads(result.stdout)
    assert report["ok"] is False and "'refresh_token' is missing" in report["error"]


def test_status_names_the_lock_holder(tmp_path: Path) -> None:
    """While another process holds the lock, status shows its pid."""
    path = tmp_path / "tokens.json"
    write(path, {"access_token": ACCESS, "refresh_token": REFRESH})
    with lock_held_by_another_process(path, 30) as holder:
        result = run_job(["status", "--json"], env_for(path))
    assert json.loads(result.stdout)["lock_holder_pid"] == holder.pid


def test_status_points_at_newer_tokens_left_by_a_save_that_could_not_finish(tmp_path: Path) -> None:
    """After a CRITICAL, status says where the new tokens are: a waiting temporary (no record: its later expiry
    says it is newer, whatever the mtimes) and any rescue file."""
    path = tmp_path / "tokens.json"
    write(path, {"access_token": ACCESS, "refresh_token": REFRESH, "expires_at": time.time() + 60})
    newer_refresh = "status-newer-refresh-token-77aa"
    waiting = tmp_path / ".tokens.json.tmp-00aa11bb22cc"
    write(waiting, {"access_token": "status-newer-access-token-88bb", "refresh_token": newer_refresh,
                    "expires_at": time.time() + 7200})
    earlier = path.stat().st_mtime - 5
    os.utime(waiting, (earlier, earlier))
    rescue = tmp_path / "tokens.json.rescue-20261128T030000Z"
    write(rescue, {"access_token": ACCESS, "refresh_token": REFRESH})
    result = run_job(["status"], env_for(path))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert any(str(waiting) in w and "the next run puts it in place" in w for w in warnings), result.stdout
    assert any(f"mv {rescue} {path}" in w for w in warnings), result.stdout
    assert newer_refresh not in result.stdout + result.stderr
    assert waiting.exists() and rescue.exists()  # status only looks


def test_status_ignores_temporaries_that_hold_nothing_newer(tmp_path: Path) -> None:
    """A reservation's blanks, or a whole temporary with older tokens than the record names, are not news."""
    path = tmp_path / "tokens.json"
    blank = tmp_path / ".tokens.json.tmp-blank0000000"
    blank.write_bytes(b" " * 4096)
    os.chmod(blank, 0o600)
    older = tmp_path / ".tokens.json.tmp-older0000000"
    write(older, {"access_token": "status-old-access-token-1", "refresh_token": "status-old-refresh-token-1"})
    write(path, {"access_token": ACCESS, "refresh_token": REFRESH})
    later = path.stat().st_mtime + 60
    os.utime(older, (later, later))
    write_record(path, {"state": "saved", "to": sha256_hex(REFRESH)})
    result = run_job(["status"], env_for(path))
    assert result.returncode == 0, result.stderr
    assert "warning:" not in result.stdout, result.stdout


def test_status_names_a_whole_temporary_it_cannot_judge_without_a_record(tmp_path: Path) -> None:
    """No record and no later expiry: the temporary is kept by the next run, and status says so."""
    path = tmp_path / "tokens.json"
    write(path, {"access_token": ACCESS, "refresh_token": REFRESH, "expires_at": time.time() + 3600})
    other = tmp_path / ".tokens.json.tmp-other0000000"
    write(other, {"access_token": "status-other-access-1", "refresh_token": "status-other-refresh-1",
                  "expires_at": time.time() + 60})
    result = run_job(["status"], env_for(path))
    assert any(str(other) in w and "keeps" in w for w in warnings_of(result.stdout)), result.stdout
    assert json.loads(run_job(["status", "--json"], env_for(path)).stdout)["pending_file"] is None

def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def write_record(path: Path, record: dict[str, object]) -> None:
    """The lock file as a run that ended after writing ``record`` leaves it."""
    lock = path.with_name(path.name + ".lock")
    lock.write_text(json.dumps({"pid": 999999, "at": time.time(), **record}) + "\n")
    os.chmod(lock, 0o600)


def warnings_of(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("warning:")]


def test_status_points_at_the_temporary_the_record_names_whatever_its_mtime(tmp_path: Path) -> None:
    """The lock file's record names the tokens a temporary holds: status says the next run puts it in place,
    even though the temporary is older than the token file by mtime."""
    path = tmp_path / "tokens.json"
    write(path, {"access_token": ACCESS, "refresh_token": REFRESH})
    newer_refresh = "status-newer-refresh-token-99cc"
    waiting = tmp_path / ".tokens.json.tmp-00aa11bb22dd"
    write(waiting, {"access_token": "status-newer-access-token-99dd", "refresh_token": newer_refresh})
    earlier = path.stat().st_mtime - 600
    os.utime(waiting, (earlier, earlier))
    write_record(path, {"state": "received", "from": sha256_hex(REFRESH), "to": sha256_hex(newer_refresh)})
    result = run_job(["status", "--json"], env_for(path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pending_file"] == str(waiting)
    assert any(str(waiting) in w and "the next run puts it in place" in w for w in report["warnings"]), report
    assert newer_refresh not in result.stdout + result.stderr


def test_status_says_when_a_run_died_with_its_refresh_in_flight(tmp_path: Path) -> None:
    """The record says a refresh from the token file's refresh token was sent and nothing came back."""
    path = tmp_path / "tokens.json"
    write(path, {"access_token": ACCESS, "refresh_token": REFRESH})
    write_record(path, {"state": "refreshing", "from": sha256_hex(REFRESH)})
    result = run_job(["status"], env_for(path))
    assert result.returncode == 0, result.stderr
    assert any("in flight" in w and "invalid_grant" in w for w in warnings_of(result.stdout)), result.stdout


def test_status_names_temporaries_it_does_not_trust(tmp_path: Path) -> None:
    """A temporary that is a symlink or readable by others is named as ignored, never as tokens to use."""
    path = tmp_path / "tokens.json"
    write(path, {"access_token": ACCESS, "refresh_token": REFRESH, "expires_at": time.time() + 60})
    elsewhere = tmp_path / "elsewhere.json"
    write(elsewhere, {"access_token": "a", "refresh_token": "r", "expires_at": time.time() + 99_999})
    link = tmp_path / ".tokens.json.tmp-11111111aaaa"
    link.symlink_to(elsewhere)
    loose = tmp_path / ".tokens.json.tmp-22222222bbbb"
    write(loose, {"access_token": "a", "refresh_token": "r", "expires_at": time.time() + 99_999}, mode=0o644)
    result = run_job(["status", "--json"], env_for(path))
    report = json.loads(result.stdout)
    assert sorted(report["untrusted_files"]) == sorted([str(link), str(loose)])
    assert report["pending_file"] is None
    for planted in (link, loose):
        assert any(str(planted) in w and "ignored" in w for w in report["warnings"]), report["warnings"]


def test_status_calls_a_rescue_file_older_once_the_record_names_the_live_tokens(tmp_path: Path) -> None:
    """The record says the token file holds the live tokens: a rescue file with others is older, not to move in."""
    path = tmp_path / "tokens.json"
    write(path, {"access_token": ACCESS, "refresh_token": REFRESH})
    rescue = tmp_path / "tokens.json.rescue-20261128T030000Z"
    write(rescue, {"access_token": "status-rescued-access-1", "refresh_token": "status-rescued-refresh-1"})
    write_record(path, {"state": "saved", "to": sha256_hex(REFRESH)})
    result = run_job(["status"], env_for(path))
    said = [w for w in warnings_of(result.stdout) if str(rescue) in w]
    assert len(said) == 1 and "older tokens" in said[0] and "mv " not in said[0], result.stdout


OLD_VERSION_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
time.sleep(30)
"""


def test_a_lock_held_by_an_older_version_is_still_named(tmp_path: Path) -> None:
    """A lock file holding just "<pid>" (as older versions write it): status and a waiting run name that pid."""
    path = tmp_path / "tokens.json"
    write(path, {"access_token": ACCESS, "refresh_token": REFRESH})
    holder = subprocess.Popen([sys.executable, "-c", OLD_VERSION_HOLDER, str(path) + ".lock"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        report = json.loads(run_job(["status", "--json"], env_for(path)).stdout)
        waited = run_job(["refresh"], {**env_for(path), "AWEBER_LOCK_TIMEOUT": "0.2"})
    finally:
        holder.kill()
        holder.wait()
    assert report["lock_holder_pid"] == holder.pid
    assert waited.returncode == 75 and f"pid {holder.pid}" in waited.stderr, waited.stderr
