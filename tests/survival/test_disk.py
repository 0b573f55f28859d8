"""Disks that refuse, with mechanisms that deny root too (tmpfs size limits, read-only bind mounts,
RLIMIT_FSIZE, a single-file bind mount): before the refresh nothing is spent; after it the new tokens
are kept (saved, or in a rescue file the next run can use) or the job says, CRITICAL, that it could not."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from job.standin import Fault
from job.stores.file.lock import lock_path_for
from tests.support.mounts import ext4_image, mount, mounted, read_only
from tests.survival.conftest import StandInFactory
from tests.survival.harness import (
    SECRETS,
    TALLY,
    Ran,
    Started,
    Workspace,
    answer_never_arrived,
    assert_no_traceback,
    error_lines,
    file_hash,
)
from tests.survival.oracle import refresh_token_in

BEFORE = "disk: refused before the refresh (nothing spent)"
AFTER = "disk: refused after the refresh (new tokens kept: saved, rescue file or kept temporary)"
STATE = "disk: task state refused (tokens saved, state not advanced)"


def fill(directory: Path) -> None:
    """Write a filler file until the file system is full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass  # full now
    finally:
        os.close(fd)
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_APPEND)
    try:
        while os.write(fd, b"\0"):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def critical_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": critical:" in line]


def assert_nothing_spent(ws: Workspace, ran: Ran, token_hash: str | None, words: str) -> None:
    assert ran.returncode == 73, ran.stderr
    assert_no_traceback(ran)
    lines = error_lines(ran.stderr)
    assert len(lines) == 1 and "the refresh token was not used" in lines[0], ran.stderr
    assert words in lines[0], lines[0]
    assert ws.standin.token_requests() == 0
    assert file_hash(ws.token_file) == token_hash
    assert ws.temporaries() == []
    assert ws.file_refresh_token() in ws.standin.control.live_refresh_tokens()


def start_refresh_and_wait_for_the_reservation(ws: Workspace) -> Started:
    """Start a refresh (its token call held up by a delay fault) and return once its reservation is made and
    synced: the lock file records the refresh as under way only after that, just before the request goes."""
    started = ws.start(["refresh"], ws.env())
    lock = lock_path_for(ws.token_file)

    def under_way() -> bool:
        try:
            return bool(ws.temporaries()) and b'"refreshing"' in lock.read_bytes()
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while not under_way() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert under_way(), "the reservation never appeared"
    time.sleep(0.2)  # the request is sent right after the record; the stand-in holds it up 1.5 s
    return started


@pytest.fixture
def ws(start_standin: StandInFactory, new_workspace: Callable[..., Workspace]) -> Workspace:
    return new_workspace(start_standin(list_size=6))


def test_full_disk_before_the_refresh_spends_nothing(ws: Workspace) -> None:
    """A full tmpfs under the token file: `run` exits 73 before the token endpoint is asked; the file is intact."""
    with TALLY.attempt(BEFORE), mounted("-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", target=ws.state_dir):
        ws.seed_tokens()
        fill(ws.state_dir)
        before = file_hash(ws.token_file)
        ran = ws.run(["run"])
        assert_nothing_spent(ws, ran, before, "No space left")


def test_read_only_directory_before_the_refresh_spends_nothing(ws: Workspace) -> None:
    """A read-only bind mount over the token directory: `run` exits 73 before anything is sent."""
    ws.seed_tokens()
    lock_path_for(ws.token_file).touch(mode=0o600)
    before = file_hash(ws.token_file)
    with TALLY.attempt(BEFORE), read_only(ws.state_dir):
        ran = ws.run(["run"])
        assert_nothing_spent(ws, ran, before, "Read-only file system")


def test_file_size_limit_before_the_refresh_spends_nothing(ws: Workspace) -> None:
    """RLIMIT_FSIZE (binding root too) below the reservation: `run` exits 73, nothing spent."""
    ws.seed_tokens()
    before = file_hash(ws.token_file)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    with TALLY.attempt(BEFORE):
        ran = ws.run(["run"], preexec=limit)
        assert_nothing_spent(ws, ran, before, "too large")


def test_disk_filling_while_the_token_endpoint_thinks_is_carried_by_the_reservation(ws: Workspace) -> None:
    """The disk fills after the reservation, while the refresh is in flight: the reserved space takes the save."""
    with TALLY.attempt(AFTER), mounted("-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", target=ws.state_dir):
        old = ws.seed_tokens()
        ws.standin.control.inject(Fault(delay_seconds=1.5), path="/oauth2/token")
        started = start_refresh_and_wait_for_the_reservation(ws)
        fill(ws.state_dir)
        ran = started.finish(timeout=30)
        assert ran.returncode == 0, ran.stderr
        assert_no_traceback(ran)
        new = ws.file_refresh_token()
        assert new != old and ws.standin.control.live_refresh_tokens() == {new}
        assert ws.temporaries() == []


def test_single_file_bind_mount_rescues_the_new_tokens_and_the_next_run_uses_them(
    ws: Workspace, tmp_path: Path
) -> None:
    """The token file is a bind mount (rename: EBUSY) after the reservation succeeded: a rescue file, exit 73,
    CRITICAL; moved into place as the message says, the next run succeeds."""
    ws.seed_tokens()
    before = file_hash(ws.token_file)
    outside = tmp_path / "outside-tokens.json"
    outside.write_bytes(ws.token_file.read_bytes())
    with TALLY.attempt(AFTER):
        with mounted("--bind", str(outside), target=ws.token_file):
            ran = ws.run(["run"])
        assert ran.returncode == 73, ran.stderr
        assert_no_traceback(ran)
        lines = critical_lines(ran.stderr)
        assert len(lines) == 1, ran.stderr
        assert "mount the directory, not the file" in lines[0]
        rescues = ws.rescue_files()
        assert len(rescues) == 1 and str(rescues[0]) in lines[0]
        assert (rescues[0].stat().st_mode & 0o777) == 0o600
        assert file_hash(ws.token_file) == before
        assert ws.task_state() is None
        SECRETS.add_token_file(rescues[0])
        rescued = refresh_token_in(rescues[0])
        assert ws.standin.control.live_refresh_tokens() == {rescued}
        # The operator follows the message: mv <rescue file> <token file>.
        os.replace(rescues[0], ws.token_file)
        again = ws.run(["run"])
        assert again.returncode == 0, again.stderr
        assert ws.standin.control.live_refresh_tokens() == {ws.file_refresh_token()}


def test_directory_turning_read_only_after_the_reservation_keeps_the_new_tokens_for_the_next_run(
    ws: Workspace,
) -> None:
    """The directory turns read-only while the refresh is in flight: the new tokens reach the reserved
    temporary but no rename or rescue file can happen; exit 73, CRITICAL naming that temporary; once the
    directory is writable again the next run puts it in place and goes on."""
    with TALLY.attempt(AFTER):
        old = ws.seed_tokens()
        before = file_hash(ws.token_file)
        ws.standin.control.inject(Fault(delay_seconds=1.5), path="/oauth2/token")
        started = start_refresh_and_wait_for_the_reservation(ws)
        with read_only(ws.state_dir):
            ran = started.finish(timeout=30)
        assert ran.returncode == 73, ran.stderr
        assert_no_traceback(ran)
        lines = critical_lines(ran.stderr)
        assert len(lines) == 1 and "they are only in" in lines[0], ran.stderr
        assert file_hash(ws.token_file) == before
        live = ws.standin.control.live_refresh_tokens()
        assert old not in live and len(live) == 1
        (kept,) = ws.temporaries()
        assert str(kept) in lines[0]
        SECRETS.add_token_file(kept)
        assert refresh_token_in(kept) in live
        TALLY.note(AFTER, "read-only mid-run: new tokens kept in the reserved temporary, named in the message")
        again = ws.run(["refresh"])
        assert again.returncode == 0, again.stderr
        assert "put the tokens an interrupted run saved" in again.stderr
        assert ws.standin.invalid_grants() == 0
        assert ws.standin.control.live_refresh_tokens() == {ws.file_refresh_token()}
        assert ws.temporaries() == []


def files_holding(root: Path, token: str) -> list[Path]:
    """Every regular file under ``root`` whose bytes hold ``token``."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                  and token.encode() in p.read_bytes())


def test_ext4_turned_read_only_by_an_error_after_the_reservation_keeps_the_new_tokens(
    ws: Workspace, tmp_path: Path
) -> None:
    """The token directory is an ext4 file system mounted errors=remount-ro, and the kernel records an error
    while the refresh is in flight, so ext4 itself goes read-only: exit 73 with one CRITICAL line, the token
    file as it was, and the new live refresh token in a file on this machine that the line names (on another
    file system); once the file system is mounted writable again, the next run puts it in place."""
    image = tmp_path / "ext4.img"
    fallback = Path(f"/dev/shm/aweber-job-{os.geteuid()}")
    with TALLY.attempt(AFTER), ext4_image(ws.state_dir, image) as trigger:
        os.chmod(ws.state_dir, 0o700)
        old = ws.seed_tokens()
        os.sync()  # a token file that has long been on the disk, as it is by the time a disk fails
        before = file_hash(ws.token_file)
        ws.standin.control.inject(Fault(delay_seconds=1.5), path="/oauth2/token")
        started = start_refresh_and_wait_for_the_reservation(ws)
        trigger.write_text("survival: a failing disk\n", encoding="utf-8")
        ran = started.finish(timeout=30)
        assert ran.returncode == 73, ran.stderr
        assert_no_traceback(ran)
        lines = critical_lines(ran.stderr)
        assert len(lines) == 1 and "Read-only file system" in lines[0], ran.stderr
        assert file_hash(ws.token_file) == before
        live = ws.standin.control.live_refresh_tokens()
        assert old not in live and len(live) == 1
        TALLY.note(AFTER, "ext4 errors=remount-ro mid-run: exit 73, CRITICAL")
        (new,) = live
        # The answer arrived (the stand-in delivered it whole): the tokens must be somewhere, named.
        assert answer_never_arrived(ws.standin.control.request_log()) is False
        kept = files_holding(ws.root, new) + files_holding(tmp_path, new) + files_holding(fallback, new)
        assert kept, "the new refresh token is in no file: lost although its answer arrived"
        assert any(str(path) in lines[0] for path in kept), lines[0]

        # The administrator repairs the file system and mounts it writable: the next run recovers the tokens.
        subprocess.run(["umount", str(ws.state_dir)], check=True)
        assert mount("-o", "loop", str(image), str(ws.state_dir))
        again = ws.run(["refresh"])
        assert again.returncode == 0, again.stderr
        assert ws.file_refresh_token() in ws.standin.control.live_refresh_tokens()
        assert not files_holding(fallback, new), "the rescue file in memory was put in place and removed"
        TALLY.note(AFTER, "ext4 errors=remount-ro mid-run: recovered by the next run")


def assert_task_state_refused(ran: Ran, reason: str) -> None:
    """Exit 73 with one error line: the task state could not be saved, and why."""
    assert ran.returncode == 73, ran.stderr
    assert_no_traceback(ran)
    lines = error_lines(ran.stderr)
    assert len(lines) == 1 and "cannot save task state" in lines[0], ran.stderr
    assert reason in lines[0]


def test_full_disk_at_the_task_state_save_keeps_the_tokens_and_repeats_the_work(ws: Workspace, tmp_path: Path) -> None:
    """The task-state directory is a full tmpfs: exit 73 after the tokens were saved; the watermark does not
    move, so the next run (with space again) reports the same subscribers: nothing lost."""
    state_dir = tmp_path / "task-state"
    state_dir.mkdir(mode=0o700)
    env = ws.env(AWEBER_STATE_DIR=str(state_dir))
    old = ws.seed_tokens()
    with TALLY.attempt(STATE):
        with mounted("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", target=state_dir):
            fill(state_dir)
            ran = ws.run(["run"], env)
            assert_task_state_refused(ran, "No space left")
            assert sorted(p.name for p in state_dir.iterdir()) == ["filler"]
        new = ws.file_refresh_token()
        assert new != old and ws.standin.control.live_refresh_tokens() == {new}
        reported = ran.stdout.splitlines()
        assert reported, "the task reported nothing; the list should have new subscribers"
        again = ws.run(["run"], env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines() == reported


def test_read_only_state_directory_keeps_the_tokens(ws: Workspace, tmp_path: Path) -> None:
    """A read-only task-state directory: exit 73 after the tokens were saved; the state is not advanced."""
    state_dir = tmp_path / "task-state"
    state_dir.mkdir(mode=0o700)
    env = ws.env(AWEBER_STATE_DIR=str(state_dir))
    old = ws.seed_tokens()
    with TALLY.attempt(STATE), read_only(state_dir):
        ran = ws.run(["run"], env)
        assert_task_state_refused(ran, "Read-only file system")
        new = ws.file_refresh_token()
        assert new != old and ws.standin.control.live_refresh_tokens() == {new}
        assert list(state_dir.iterdir()) == []
