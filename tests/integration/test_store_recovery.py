"""Recovery of an interrupted save is decided by content, never by modification times: the record in the
lock file names the live refresh token, and the next run puts the file that holds it in place."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from job.standin import Fault
from tests.support.jobs import (
    CONFIDENTIAL_ID,
    CONFIDENTIAL_SECRET,
    REPO,
    JobFiles,
    invalid_grants,
    run_job,
    token_requests,
)
from tests.support.mounts import mount, mounted, read_only

RECOVERED = "put the tokens an interrupted run saved"


def sha256_hex(token: str) -> str:
    """The full SHA-256 of a refresh token, as the lock file's record names it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def lock_file(job: JobFiles) -> Path:
    return job.token_file.with_name("tokens.json.lock")


def write_record(job: JobFiles, record: dict[str, object]) -> None:
    """Leave the lock file as a run that ended after writing ``record`` leaves it (one JSON object, one line)."""
    path = lock_file(job)
    path.write_text(json.dumps({"pid": 999999, "at": time.time(), **record}) + "\n")
    os.chmod(path, 0o600)


def temporaries(job: JobFiles) -> list[Path]:
    return sorted(job.token_file.parent.glob(".tokens.json.tmp-*"))


def rotate_at_the_standin(job: JobFiles, refresh_token: str) -> dict[str, object]:
    """Spend ``refresh_token`` at the stand-in as some other run would have; return the answer."""
    answer = requests.post(
        job.standin.token_url, data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(CONFIDENTIAL_ID, CONFIDENTIAL_SECRET), timeout=5,
    )
    assert answer.status_code == 200, answer.text
    document: dict[str, object] = answer.json()
    return document


def as_token_file(answer: dict[str, object], *, expires_at: float) -> bytes:
    return (json.dumps({**answer, "expires_at": expires_at}, indent=2) + "\n").encode()


def leave_a_kept_temporary(job: JobFiles) -> tuple[Path, str]:
    """A real refresh whose directory turns read-only while AWeber is answering: the new tokens reach the
    reserved temporary, no rename or rescue file can happen, exit 73. Returns the temporary and its token."""
    job.write_tokens()
    job.standin.inject(Fault(delay_seconds=1.5), path="/oauth2/token")
    process = subprocess.Popen(
        [sys.executable, "-m", "job", "refresh"], env=job.env(), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not temporaries(job) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert temporaries(job), "the reservation never appeared"
        with read_only(job.token_file.parent):
            _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 73, stderr
    (kept,) = temporaries(job)
    new = json.loads(kept.read_text())["refresh_token"]
    assert job.standin.live_refresh_tokens() == {new}
    return kept, new


def _touch(job: JobFiles, kept: Path, backup: bytes) -> None:
    os.utime(job.token_file, None)


def _restore_from_backup(job: JobFiles, kept: Path, backup: bytes) -> None:
    # What `cp backup/tokens.json tokens.json` does: the old content, a new modification time.
    job.token_file.write_bytes(backup)


def _token_file_in_the_future(job: JobFiles, kept: Path, backup: bytes) -> None:
    later = time.time() + 3600
    os.utime(job.token_file, (later, later))


def _temporary_in_the_past(job: JobFiles, kept: Path, backup: bytes) -> None:
    earlier = job.token_file.stat().st_mtime - 3600
    os.utime(kept, (earlier, earlier))


AFTERWARDS: dict[str, Callable[[JobFiles, Path, bytes], None]] = {
    "the token file touched": _touch,
    "the token file restored from a backup": _restore_from_backup,
    "the token file's mtime in the future": _token_file_in_the_future,
    "the temporary's mtime in the past": _temporary_in_the_past,
}


@pytest.mark.parametrize("afterwards", list(AFTERWARDS))
def test_a_kept_temporary_is_recovered_whatever_the_modification_times_say(job: JobFiles, afterwards: str) -> None:
    """The only live tokens sit in a kept temporary; whatever happened to the files' mtimes since, the next run
    puts that temporary in place and refreshes with it."""
    kept, new = leave_a_kept_temporary(job)
    backup = job.token_file.read_bytes()  # it still holds the refresh token the failed run spent
    AFTERWARDS[afterwards](job, kept, backup)
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    assert RECOVERED in result.stderr and str(kept) in result.stderr
    assert invalid_grants(job.standin) == 0
    assert job.standin.live_refresh_tokens() == {job.read_tokens()["refresh_token"]}
    assert new not in job.standin.live_refresh_tokens()  # it was the one spent
    assert temporaries(job) == []


def test_login_records_its_save_so_an_older_temporary_never_wins(job: JobFiles) -> None:
    """A fresh `login --force` after a save that could not finish: the older temporary is removed with a warning
    naming it, even with a later mtime, and the run continues from the login's tokens."""
    kept, _ = leave_a_kept_temporary(job)
    code = requests.get(
        job.standin.authorize_url, allow_redirects=False, timeout=5,
        params={"response_type": "code", "client_id": CONFIDENTIAL_ID, "redirect_uri": "urn:ietf:wg:oauth:2.0:oob",
                "scope": "account.read list.read subscriber.read", "state": "s"},
    ).headers["X-Authorization-Code"]
    login = run_job(["login", "--force", "--code", code], job.env())
    assert login.returncode == 0, login.stderr
    from_login = job.read_tokens()["refresh_token"]
    later = time.time() + 3600
    os.utime(kept, (later, later))
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    assert RECOVERED not in result.stderr
    assert from_login not in job.standin.live_refresh_tokens()  # this run refreshed the login's token
    assert job.read_tokens()["refresh_token"] in job.standin.live_refresh_tokens()
    assert not kept.exists()
    warnings = [line for line in result.stderr.splitlines() if ": warning:" in line and str(kept) in line]
    assert warnings, result.stderr


def test_without_a_record_a_newer_temporary_is_recovered_whatever_its_mtime(job: JobFiles) -> None:
    """No record (the lock file was deleted): a whole temporary whose expiry is later than the token file's is put
    in place even when its mtime is older."""
    grant = job.write_tokens(expires_in=600)
    rotated = rotate_at_the_standin(job, str(grant["refresh_token"]))
    temp = job.token_file.with_name(".tokens.json.tmp-0123456789ab")
    temp.write_bytes(as_token_file(rotated, expires_at=time.time() + 7200) + b" " * 70_000)
    os.chmod(temp, 0o600)
    earlier = job.token_file.stat().st_mtime - 3600
    os.utime(temp, (earlier, earlier))
    assert not lock_file(job).exists()
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    assert RECOVERED in result.stderr
    assert invalid_grants(job.standin) == 0
    assert job.standin.live_refresh_tokens() == {job.read_tokens()["refresh_token"]}
    assert not temp.exists()


@pytest.mark.parametrize("lock_content", ["absent", "an older version's pid"])
def test_without_a_record_an_undecided_complete_temporary_stops_the_run_before_anything_is_sent(
    job: JobFiles, lock_content: str
) -> None:
    """No record: a whole temporary with other tokens that is not newer than the token file by content, and
    whose name says nothing of its lineage, is neither used nor deleted, whatever its mtime; since either file
    may hold the live token (expiry times come from clocks), the run stops with 73 naming both, sending
    nothing, rather than risk presenting a spent token."""
    job.write_tokens(expires_in=7000)
    if lock_content != "absent":
        lock_file(job).write_text("4242\n")
    stale = {"access_token": "stale-access-token-0001", "refresh_token": "stale-refresh-token-0001"}
    temp = job.token_file.with_name(".tokens.json.tmp-0123456789ab")
    temp.write_bytes(as_token_file(stale, expires_at=time.time() + 60))
    os.chmod(temp, 0o600)
    later = time.time() + 3600
    os.utime(temp, (later, later))
    before = job.token_file.read_bytes()
    result = run_job(["refresh"], job.env())
    assert result.returncode == 73, result.stderr
    assert token_requests(job.standin) == 0
    assert temp.exists() and job.token_file.read_bytes() == before
    (line,) = [line for line in result.stderr.splitlines() if ": error:" in line]
    assert str(temp) in line and str(job.token_file) in line and "Nothing was sent" in line


def test_with_a_record_an_older_complete_temporary_is_removed_with_a_warning(job: JobFiles) -> None:
    """Once a run has recorded its save, a whole temporary holding other tokens is stale: removed, and named."""
    job.write_tokens()
    first = run_job(["refresh"], job.env())
    assert first.returncode == 0, first.stderr
    stale = {"access_token": "stale-access-token-0002", "refresh_token": "stale-refresh-token-0002"}
    temp = job.token_file.with_name(".tokens.json.tmp-0123456789ab")
    temp.write_bytes(as_token_file(stale, expires_at=time.time() + 99_999))
    os.chmod(temp, 0o600)
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    assert not temp.exists()
    assert any(": warning:" in line and str(temp) in line for line in result.stderr.splitlines()), result.stderr
    assert job.read_tokens()["refresh_token"] in job.standin.live_refresh_tokens()


def test_a_refresh_killed_in_flight_is_named_by_the_next_run(job: JobFiles) -> None:
    """A run killed while AWeber was answering its refresh: the next run warns that the refresh was in flight,
    and its exit 77 says that this is why the token file's refresh token was refused."""
    job.write_tokens()
    job.standin.inject(Fault(delay_seconds=1.0), path="/oauth2/token")
    process = subprocess.Popen([sys.executable, "-m", "job", "refresh"], env=job.env(), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while job.standin.faults.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not job.standin.faults.pending(), "the refresh request never reached the stand-in"
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 10
    while token_requests(job.standin) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)  # the stand-in still answers the request of the killed run: the token rotates
    assert token_requests(job.standin) == 1
    result = run_job(["refresh"], job.env())
    assert result.returncode == 77, result.stderr
    lines = result.stderr.splitlines()
    assert any(": warning:" in line and "in flight" in line for line in lines), result.stderr
    (error,) = [line for line in lines if ": error:" in line]
    assert "invalid_grant" in error and "in flight" in error and "aweber-job login" in error


def test_new_tokens_received_but_never_written_are_named(job: JobFiles) -> None:
    """The record says new tokens arrived, yet no file holds them (killed between the answer and the write):
    the next run says exactly that, in a warning and in its exit 77, and does not present the token the
    record proves spent (a server that detects reuse would revoke the whole grant)."""
    grant = job.write_tokens()
    old = str(grant["refresh_token"])
    rotated = rotate_at_the_standin(job, old)
    write_record(job, {"state": "received", "from": sha256_hex(old), "to": sha256_hex(str(rotated["refresh_token"]))})
    sent_before = token_requests(job.standin)
    result = run_job(["refresh"], job.env())
    assert result.returncode == 77, result.stderr
    assert token_requests(job.standin) == sent_before
    lines = result.stderr.splitlines()
    said = "received new tokens and was killed before writing them"
    assert any(": warning:" in line and said in line for line in lines), result.stderr
    (error,) = [line for line in lines if ": error:" in line]
    assert said in error and "not sent again" in error and "aweber-job login" in error
    assert str(rotated["refresh_token"]) not in result.stderr


def test_a_rescue_file_named_by_the_record_is_put_in_place(job: JobFiles) -> None:
    """The record names the tokens a rescue file holds: the next run moves it over the token file itself."""
    grant = job.write_tokens()
    old = str(grant["refresh_token"])
    rotated = rotate_at_the_standin(job, old)
    rescue = job.token_file.with_name("tokens.json.rescue-20261128T030000Z")
    rescue.write_bytes(as_token_file(rotated, expires_at=time.time() + 7200))
    os.chmod(rescue, 0o600)
    old_time = time.time() - 86_400
    os.utime(rescue, (old_time, old_time))
    write_record(job, {"state": "received", "from": sha256_hex(old), "to": sha256_hex(str(rotated["refresh_token"]))})
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    assert str(rescue) in result.stderr and not rescue.exists()
    assert invalid_grants(job.standin) == 0
    assert job.standin.live_refresh_tokens() == {job.read_tokens()["refresh_token"]}


def test_each_step_of_a_refresh_is_recorded_in_the_lock_file(job: JobFiles) -> None:
    """After a run the lock file holds one JSON line: the run's pid and the save of the new refresh token."""
    job.write_tokens()
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    text = lock_file(job).read_text()
    assert text.count("\n") == 1
    record = json.loads(text)
    assert record["state"] == "saved" and record["to"] == sha256_hex(job.read_tokens()["refresh_token"])
    assert isinstance(record["pid"], int)
    assert (lock_file(job).stat().st_mode & 0o777) == 0o600


def test_nothing_is_sent_when_the_record_cannot_be_written(job: JobFiles) -> None:
    """The record before the refresh is part of proving the save can happen: a lock file that only opens
    read-only (a read-only bind mount over it, which binds root too) ends the run with exit 73 before AWeber
    is asked."""
    job.write_tokens()
    lock_file(job).write_text("")
    os.chmod(lock_file(job), 0o600)
    before = job.token_file.read_bytes()
    with mounted("--bind", str(lock_file(job)), target=lock_file(job)):
        assert mount("-o", "remount,bind,ro", str(lock_file(job)))
        result = run_job(["refresh"], job.env())
    assert result.returncode == 73, result.stderr
    assert "the refresh token was not used" in result.stderr and str(lock_file(job)) in result.stderr
    assert token_requests(job.standin) == 0
    assert job.token_file.read_bytes() == before
    assert temporaries(job) == []


@pytest.mark.parametrize("lock", ["deleted", "emptied"])
def test_without_a_record_a_rescue_file_named_after_the_token_files_token_is_put_in_place(
    job: JobFiles, lock: str
) -> None:
    """A save that failed left the new tokens in a rescue file, and the lock file's record is gone since: the
    rescue file's name says whose successor it holds, so the next run puts it in place instead of sending the
    spent refresh token (which a server detecting reuse would answer by revoking the whole grant)."""
    job.standin.state.reuse_detection = True
    grant = job.write_tokens()
    old = str(grant["refresh_token"])
    rotated = rotate_at_the_standin(job, old)
    rescue = job.token_file.with_name(f"tokens.json.rescue-20261130T092650Z.from-{sha256_hex(old)[:16]}")
    rescue.write_bytes(as_token_file(rotated, expires_at=time.time() + 7200))
    os.chmod(rescue, 0o600)
    if lock == "emptied":
        lock_file(job).write_text("")
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    assert invalid_grants(job.standin) == 0
    assert job.read_tokens()["refresh_token"] in job.standin.live_refresh_tokens()
    assert not rescue.exists()


def test_a_lock_file_removed_under_a_running_refresh_does_not_let_a_second_run_refresh(job: JobFiles) -> None:
    """Someone removes the lock file while a run waits for AWeber's answer: a second run takes the new lock
    file, but finds the first run's reservation in use and stops (75) without sending anything; the first
    run's save stands and no spent refresh token is ever presented."""
    job.standin.state.reuse_detection = True
    job.write_tokens()
    job.standin.inject(Fault(delay_seconds=2.0), path="/oauth2/token")
    first = subprocess.Popen(
        [sys.executable, "-m", "job", "refresh"], env=job.env(), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 10
    while b'"refreshing"' not in (lock_file(job).read_bytes() if lock_file(job).exists() else b""):
        assert time.monotonic() < deadline, "the first run never started its refresh"
        time.sleep(0.01)
    lock_file(job).unlink()
    sent = token_requests(job.standin)
    second = run_job(["refresh"], job.env())
    assert second.returncode == 75, second.stderr
    assert "in use" in second.stderr and token_requests(job.standin) == sent
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == 0, stderr
    assert invalid_grants(job.standin) == 0
    assert job.read_tokens()["refresh_token"] in job.standin.live_refresh_tokens()


def test_revoke_revokes_the_live_refresh_token_a_failed_save_left_in_a_rescue_file(job: JobFiles) -> None:
    """After a save that left the live tokens in a rescue file, `revoke` puts them in place first and revokes
    the live refresh token (not the spent one in the old token file): nothing live is left behind."""
    grant = job.write_tokens()
    old = str(grant["refresh_token"])
    rotated = rotate_at_the_standin(job, old)
    rescue = job.token_file.with_name(f"tokens.json.rescue-20261130T092650Z.from-{sha256_hex(old)[:16]}")
    rescue.write_bytes(as_token_file(rotated, expires_at=time.time() + 7200))
    os.chmod(rescue, 0o600)
    write_record(job, {"state": "received", "from": sha256_hex(old), "to": sha256_hex(str(rotated["refresh_token"]))})
    result = run_job(["revoke"], job.env())
    assert result.returncode == 0, result.stderr
    assert job.standin.live_refresh_tokens() == set()
    assert not job.token_file.exists() and not rescue.exists()
