"""The store: bad files never change, saves survive SIGKILL, the lock waits then gives up, reservations fail
cleanly before anything is spent — with real files, real processes and mechanisms that deny root too."""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from job.errors import StorageError
from job.stores.durable import write_file_atomically
from job.stores.file.lock import TokenLock, lock_path_for
from job.stores.file.recovery import TempCleanup, tidy_temp_files
from job.stores.file.tokenfile import Reservation
from tests.integration.test_store_recovery import rotate_at_the_standin
from tests.support.jobs import REPO, JobFiles, invalid_grants, run_job, token_requests
from tests.support.mounts import mounted, read_only

CLOSED_PORT_URL = "http://127.0.0.1:9/oauth2/token"


def offline_env(token_file: Path, **extra: str) -> dict[str, str]:
    """An environment whose token endpoint is a closed port: anything that reaches it fails loudly."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(token_file.parent),
        "AWEBER_CLIENT_ID": "cid",
        "AWEBER_CLIENT_SECRET": "csecret-value",
        "AWEBER_TOKEN_FILE": str(token_file),
        "AWEBER_TOKEN_URL": CLOSED_PORT_URL,
        "AWEBER_RETRY_DEADLINE": "0",
        "AWEBER_LOCK_TIMEOUT": "2",
    }
    env.update(extra)
    return env


BAD_FILE_WRITERS: dict[str, Callable[[Path], None]] = {
    "missing": lambda p: None,
    "empty": lambda p: p.write_bytes(b""),
    "truncated JSON": lambda p: p.write_bytes(b'{"access_token": "a", "refresh_tok'),
    "not UTF-8": lambda p: p.write_bytes(b'{"access_token": "\xc3\x28", "refresh_token": "r"}'),
    "a JSON array": lambda p: p.write_bytes(b'["access_token", "refresh_token"]'),
    "wrong types": lambda p: p.write_bytes(b'{"access_token": 1, "refresh_token": "r", "expires_at": "x"}'),
    "missing refresh_token": lambda p: p.write_bytes(b'{"access_token": "a-secret-access-token"}'),
    "a directory": lambda p: p.mkdir(),
    "a 10 MB file": lambda p: p.write_bytes(b'{"access_token": "' + b"a" * 10_000_000 + b'", "refresh_token": "r"}'),
}

EXPECTED_WORDS = {
    "missing": "does not exist",
    "empty": "is empty",
    "truncated JSON": "not valid JSON",
    "not UTF-8": "not UTF-8",
    "a JSON array": "found an array",
    "wrong types": "'access_token' must be a string",
    "missing refresh_token": "'refresh_token' is missing",
    "a directory": "is a directory",
    "a 10 MB file": "larger than any token file",
}


def snapshot(path: Path) -> bytes | str | None:
    if path.is_dir():
        return "directory"
    return path.read_bytes() if path.exists() else None


@pytest.mark.parametrize("case", list(BAD_FILE_WRITERS))
@pytest.mark.parametrize("command", ["refresh", "status"])
def test_bad_token_file_exits_65_with_a_clear_line_and_is_left_byte_for_byte(
    tmp_path: Path, case: str, command: str
) -> None:
    """Every kind of bad token file ends the run with exit 65, one clear stderr line, the file unchanged."""
    token_file = tmp_path / "tokens.json"
    BAD_FILE_WRITERS[case](token_file)
    before = snapshot(token_file)
    result = run_job([command], offline_env(token_file))
    assert result.returncode == 65, result.stderr
    output = result.stderr if command == "refresh" else result.stdout
    assert EXPECTED_WORDS[case] in output
    assert str(token_file) in output
    assert "Traceback" not in result.stderr
    assert snapshot(token_file) == before
    assert "a-secret-access-token" not in result.stderr + result.stdout
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_a_token_file_that_is_not_json_says_where_once_and_what_to_do(tmp_path: Path) -> None:
    """The line for a truncated token file names the place once ("at line 1", not "at at") and gives the same
    remedy as the one for an empty file."""
    token_file = tmp_path / "tokens.json"
    token_file.write_bytes(b'{"access_token": "a", "refresh_tok')
    result = run_job(["refresh"], offline_env(token_file))
    assert result.returncode == 65, result.stderr
    assert result.stderr == (
        f"aweber-job: error: token file {token_file} is not valid JSON: unterminated string starting at line 1, "
        "column 23 (restore it from a backup or a rescue file, or authorize again: aweber-job login)\n"
    )


KILL_WRITER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from job.stores.durable import token_hash, write_file_atomically
    from job.stores.file.tokenfile import Reservation
    path = Path(sys.argv[1])
    n = json.loads(path.read_text())["n"]
    print("ready", flush=True)
    while True:
        n += 1
        body = json.dumps({"n": n, "pad": "x" * (n % 5000), "access_token": f"a{n}", "refresh_token": f"r{n}",
                           "expires_at": n})
        body = body.encode() + b"\\n"
        if n % 2:
            # Named, as the job's own reservations are, after the refresh token its content replaces.
            reservation = Reservation.create(path, 70000, token_hash(f"r{n - 1}"))
            reservation.commit(body)
        else:
            write_file_atomically(path, body, suffix=".from-" + token_hash(f"r{n - 1}")[:16])
    """
)


def test_a_save_killed_at_any_moment_leaves_a_whole_old_or_new_file(tmp_path: Path) -> None:
    """SIGKILL during endless saves, many times: the file always parses as one complete version."""
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"n": 0, "access_token": "a0", "refresh_token": "r0", "expires_at": 0}) + "\n")
    rng = random.Random(1234)
    last_seen = 0
    for _ in range(40):
        process = subprocess.Popen(
            [sys.executable, "-c", KILL_WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.03))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        document = json.loads(path.read_text())
        n = document["n"]
        assert n >= last_seen
        assert document["refresh_token"] == f"r{n}"
        if n:
            assert document["pad"] == "x" * (n % 5000)
        last_seen = n
        assert oct(path.stat().st_mode & 0o777) in (oct(0o600), oct(0o644))
    assert last_seen > 0, "the writer never completed a save; the kills came too early to test anything"
    # Temporaries a kill left behind are never read as the token file. The next locked run (with no record
    # in the lock file, as these saves made none) puts in place the whole version whose name says it
    # succeeds the token file's (its rename was what the kill prevented), removes blank and half-written
    # ones, and keeps whole older versions.
    with TokenLock(path, 0) as lock:
        try:
            cleanup: TempCleanup | None = tidy_temp_files(path, lock)
        except StorageError:
            # Whole older versions beside the file and no record to place them: nothing is touched.
            cleanup = None
    document = json.loads(path.read_text())
    if cleanup is None or cleanup.recovered is None:
        assert document["n"] == last_seen
    else:
        assert document["n"] > last_seen and document["refresh_token"] == f"r{document['n']}"
    for left in (p for p in tmp_path.iterdir() if ".tmp-" in p.name):
        try:
            whole = json.loads(left.read_bytes())
        except ValueError:
            assert cleanup is None, f"{left} is blank or half-written and should have been removed"
            continue
        assert whole["n"] <= document["n"] and whole["refresh_token"] == f"r{whole['n']}"


def test_stale_temporaries_are_cleared_by_the_next_run_under_the_lock(job: JobFiles) -> None:
    """A temporary file left by a killed save is removed by the next run and never read as tokens."""
    job.write_tokens()
    stale = job.token_file.with_name(".tokens.json.tmp-deadbeef0000")
    stale.write_bytes(b"{ half a file")
    os.chmod(stale, 0o600)  # as the job creates its temporaries
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert "removed 1 temporary file" in result.stderr


def _leave_a_complete_temporary(job: JobFiles, tokens: dict[str, object], *, expires_at: float) -> Path:
    """What a run killed between writing its new tokens and renaming them leaves beside the token file."""
    temp = job.token_file.with_name(".tokens.json.tmp-0123456789ab")
    # As a kill before the final truncate leaves it: the content, then the rest of the reserved blanks.
    content = json.dumps({**tokens, "token_type": "bearer", "expires_at": expires_at}).encode()
    temp.write_bytes(content + b"\n" + b" " * 70_000)
    os.chmod(temp, 0o600)
    return temp


def test_new_tokens_whose_rename_was_interrupted_are_put_in_place_by_the_next_run(job: JobFiles) -> None:
    """The server rotated, the new tokens reached their temporary, the rename never happened: the next run
    uses them instead of spending the token file's dead refresh token (no record: their later expiry says so)."""
    grant = job.write_tokens(expires_in=600)
    rotated = rotate_at_the_standin(job, str(grant["refresh_token"]))
    temp = _leave_a_complete_temporary(job, rotated, expires_at=time.time() + 7200)
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    assert invalid_grants(job.standin) == 0
    assert not temp.exists()
    assert "put the tokens an interrupted run saved" in result.stderr
    assert job.standin.live_refresh_tokens() == {job.read_tokens()["refresh_token"]}
    assert rotated["refresh_token"] not in result.stderr


def test_complete_temporaries_are_kept_while_the_token_file_is_unreadable(job: JobFiles) -> None:
    """With the token file broken, a whole temporary may be the only copy left: exit 65, the temporary kept."""
    grant = job.write_tokens()
    temp = _leave_a_complete_temporary(job, dict(grant), expires_at=time.time() + 9000)
    job.token_file.write_bytes(b"{ broken")
    result = run_job(["refresh"], job.env())
    assert result.returncode == 65, result.stderr
    assert temp.exists()
    assert token_requests(job.standin) == 0


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from job.stores.file.lock import TokenLock
    lock = TokenLock(Path(sys.argv[1]), 0)
    lock.acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


@contextmanager
def lock_held_by_another_process(token_file: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(token_file), str(seconds)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    try:
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_second_process_waits_for_the_lock_then_exits_75_naming_the_holder(job: JobFiles) -> None:
    """A run that cannot get the lock waits AWEBER_LOCK_TIMEOUT, says so once, then exits 75 with the pid."""
    job.write_tokens()
    before = job.token_file.read_bytes()
    with lock_held_by_another_process(job.token_file, 30) as holder:
        started = time.monotonic()
        result = run_job(["refresh"], job.env(AWEBER_LOCK_TIMEOUT="1.5"))
        waited = time.monotonic() - started
    assert result.returncode == 75, result.stderr
    assert f"pid {holder.pid}" in result.stderr
    assert result.stderr.count("waiting up to") == 1
    assert waited >= 1.5
    assert job.token_file.read_bytes() == before
    assert token_requests(job.standin) == 0


def test_lock_is_taken_when_the_holder_dies(job: JobFiles) -> None:
    """The kernel releases the lock of a killed holder: the waiting run proceeds without eviction logic."""
    job.write_tokens()
    with lock_held_by_another_process(job.token_file, 1.0):
        result = run_job(["refresh"], job.env(AWEBER_LOCK_TIMEOUT="20"))
    assert result.returncode == 0, result.stderr
    assert lock_path_for(job.token_file).exists()


def test_lock_file_is_0600_and_beside_the_real_file_of_a_symlink(tmp_path: Path) -> None:
    """The lock lives beside the link's target, so the link and the target share one lock."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "tokens.json").write_text("{}")
    link = tmp_path / "tokens.json"
    link.symlink_to(real / "tokens.json")
    with TokenLock(link, 0) as lock:
        assert lock.path == real / "tokens.json.lock"
        assert (lock.path.stat().st_mode & 0o777) == 0o600
        with pytest.raises(Exception, match="holds the lock"):
            TokenLock(real / "tokens.json", 0).acquire()


def test_a_lock_file_removed_between_two_opens_is_created_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock file deleted after the exclusive create saw it and before it was opened is made anew, not an error."""
    token_file = tmp_path / "tokens.json"
    lock_file = lock_path_for(token_file)
    lock_file.write_bytes(b"")
    real_open = os.open

    def open_then_lose_it(path: Path, flags: int, mode: int = 0o777) -> int:
        try:
            return real_open(path, flags, mode)
        except FileExistsError:
            # As when the holder that made the lock file removes it on release, right after this check.
            os.unlink(lock_file)
            raise

    monkeypatch.setattr(os, "open", open_then_lose_it)
    with TokenLock(token_file, 0) as lock:
        monkeypatch.setattr(os, "open", real_open)
        assert lock_file.exists() and lock.created


def test_a_run_waiting_on_a_lock_file_its_holder_removed_locks_the_one_at_the_path(tmp_path: Path) -> None:
    """A holder that removes the lock file it made, then releases: the waiting run holds a file at the path."""
    token_file = tmp_path / "tokens.json"
    holder = TokenLock(token_file, 0, remove_if_created=True)
    holder.acquire()
    first = os.open(lock_path_for(token_file), os.O_RDONLY)  # open, so its inode number is not reused

    def holder_finishes(_: float) -> None:
        holder.__exit__(None, None, None)

    waiter = TokenLock(token_file, 5, sleep=holder_finishes)
    waiter.acquire()
    try:
        assert os.fstat(first).st_nlink == 0, "the holder removed the lock file it made"
        assert lock_path_for(token_file).stat().st_ino != os.fstat(first).st_ino
        with pytest.raises(Exception, match="holds the lock"):
            TokenLock(token_file, 0).acquire()
    finally:
        waiter.release()
        os.close(first)


def test_a_lock_file_holding_a_record_is_kept_even_by_the_lock_that_made_it(tmp_path: Path) -> None:
    """The record tells the next run which file holds the live tokens, so a lock file with one stays."""
    token_file = tmp_path / "tokens.json"
    with TokenLock(token_file, 0, remove_if_created=True) as lock:
        lock.record_saved("0" * 64)
    assert lock_path_for(token_file).exists()


def test_save_replaces_a_symlinks_target_and_keeps_the_link(job: JobFiles, tmp_path: Path) -> None:
    """A symlinked token path: the target is replaced, the link stays a link, the file is 0600."""
    job.write_tokens()
    target_dir = tmp_path / "elsewhere"
    target_dir.mkdir()
    target = target_dir / "tokens.json"
    os.replace(job.token_file, target)
    os.chmod(target, 0o644)
    job.token_file.symlink_to(target)
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    assert job.token_file.is_symlink()
    assert json.loads(target.read_text())["refresh_token"] in job.standin.live_refresh_tokens()
    assert (target.stat().st_mode & 0o777) == 0o600
    assert "readable by group or others" in result.stderr


def _limit_file_size(max_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def assert_nothing_spent(job: JobFiles, before: bytes, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 73, result.stderr
    assert "the refresh token was not used" in result.stderr
    assert job.token_file.read_bytes() == before
    assert token_requests(job.standin) == 0
    assert [p.name for p in job.token_file.parent.iterdir() if ".tmp-" in p.name] == []


def test_reservation_fails_cleanly_under_a_file_size_limit(job: JobFiles) -> None:
    """RLIMIT_FSIZE (which binds root too) makes the reservation fail: exit 73, nothing spent or touched."""
    job.write_tokens()
    before = job.token_file.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "job", "refresh"], env=job.env(), cwd=REPO, capture_output=True, text=True,
        preexec_fn=_limit_file_size(4096), timeout=60, check=False,
    )
    assert_nothing_spent(job, before, result)
    assert "too large" in result.stderr.lower()


def test_reservation_fails_cleanly_on_a_full_disk(job: JobFiles, tmp_path: Path) -> None:
    """A full tmpfs: exit 73 before the token endpoint is contacted, saying how many bytes it needs where;
    the old file is intact."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=256k", "tmpfs", target=disk):
        job_on_disk = JobFiles(root=disk, standin=job.standin)
        job_on_disk.write_tokens()
        before = job_on_disk.token_file.read_bytes()
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # the disk is full now
        finally:
            os.close(fd)
        result = run_job(["refresh"], job_on_disk.env())
        assert_nothing_spent(job_on_disk, before, result)
        assert "No space left" in result.stderr
    # The line says how much the reservation needs and where: the file as it is plus the largest token
    # answer accepted (64 KiB).
    match = re.search(r"needs (\d+) bytes free in (\S+)", result.stderr)
    assert match, result.stderr
    assert int(match.group(1)) >= len(before) + 64 * 1024
    assert match.group(2).rstrip(";,:)") == str(job_on_disk.token_file.parent)


def test_reservation_fails_cleanly_in_a_read_only_directory(job: JobFiles) -> None:
    """A read-only bind mount over the token directory: exit 73 before anything is sent."""
    job.write_tokens()
    # The lock file must exist already: a read-only directory cannot create it (that is exit 73 too).
    lock_path_for(job.token_file).touch(mode=0o600)
    before = job.token_file.read_bytes()
    directory = job.token_file.parent
    with read_only(directory):
        result = run_job(["refresh"], job.env())
        assert_nothing_spent(job, before, result)
        assert "Read-only file system" in result.stderr


def test_single_file_bind_mount_is_explained_and_the_tokens_rescued(job: JobFiles, tmp_path: Path) -> None:
    """A bind-mounted token file cannot be renamed over (EBUSY): the new tokens go to a rescue file, exit 73."""
    job.write_tokens()
    outside = tmp_path / "outside.json"
    outside.write_bytes(job.token_file.read_bytes())
    with mounted("--bind", str(outside), target=job.token_file):
        result = run_job(["refresh"], job.env())
    assert result.returncode == 73, result.stderr
    assert "mount the directory, not the file" in result.stderr
    assert "critical" in result.stderr.lower()
    rescues = list(job.token_file.parent.glob("tokens.json.rescue-*"))
    assert len(rescues) == 1
    assert (rescues[0].stat().st_mode & 0o777) == 0o600
    rescued = json.loads(rescues[0].read_text())
    assert rescued["refresh_token"] in job.standin.live_refresh_tokens()
    assert str(rescues[0]) in result.stderr
    assert rescued["refresh_token"] not in result.stderr


def test_reservation_then_commit_writes_0600_without_chmod(tmp_path: Path) -> None:
    """A reservation's file is created 0600 from the start and becomes the target on commit."""
    target = tmp_path / "tokens.json"
    target.write_text("{}")
    os.chmod(target, 0o644)
    old_umask = os.umask(0)
    try:
        reservation = Reservation.create(target, 1000)
        assert (reservation.temp.stat().st_mode & 0o777) == 0o600
        assert reservation.temp.stat().st_size == 1000
        reservation.commit(b'{"new": true}\n')
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b'{"new": true}\n'
    assert (target.stat().st_mode & 0o777) == 0o600
    assert not reservation.temp.exists()


def test_write_file_atomically_leaves_no_temporary_behind(tmp_path: Path) -> None:
    """After a write only the target remains in the directory."""
    write_file_atomically(tmp_path / "state.json", b"{}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
