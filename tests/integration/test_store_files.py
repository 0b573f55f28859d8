"""Files in the job's directories that it did not make are never followed or adopted; the job's own files
never overwrite one another; saves keep their owner under root and survive directories that cannot be fsynced."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from job.config import load_settings
from job.run.keeper import TokenKeeper
from tests.support.jobs import JobFiles, invalid_grants, run_job, token_requests
from tests.support.mounts import mounted

NOBODY = 65534


def temporaries(job: JobFiles) -> list[Path]:
    return sorted(job.token_file.parent.glob(".tokens.json.tmp-*"))


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": warning:" in line]


def newer_tokens(expires_in: float = 99_999) -> bytes:
    """A whole token file whose expiry is later than any the tests write: it would win on content alone."""
    document = {"access_token": "planted-access-token-0001", "refresh_token": "planted-refresh-token-0001",
                "token_type": "bearer", "expires_at": time.time() + expires_in}
    return (json.dumps(document) + "\n").encode()


# -- planted temporaries ------------------------------------------------------------------------------


def _plant_symlink(job: JobFiles, temp: Path, elsewhere: Path) -> None:
    elsewhere.write_bytes(newer_tokens())
    os.chmod(elsewhere, 0o600)
    temp.symlink_to(elsewhere)


def _plant_foreign(job: JobFiles, temp: Path, elsewhere: Path) -> None:
    temp.write_bytes(newer_tokens())
    os.chmod(temp, 0o600)
    os.chown(temp, NOBODY, NOBODY)


def _plant_readable(job: JobFiles, temp: Path, elsewhere: Path) -> None:
    temp.write_bytes(newer_tokens())
    os.chmod(temp, 0o644)


PLANTED = {"a symlink": _plant_symlink, "owned by another user": _plant_foreign, "mode 0644": _plant_readable}


@pytest.mark.parametrize("kind", list(PLANTED))
def test_a_temporary_the_job_did_not_make_is_neither_used_nor_removed(job: JobFiles, tmp_path: Path, kind: str) -> None:
    """A temporary name holding a symlink, another user's file or a 0644 file is ignored and named in a warning."""
    if kind == "owned by another user" and os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    job.write_tokens()
    (job.token_file.parent / "tokens.json.lock").touch(mode=0o600)
    elsewhere = tmp_path / "elsewhere.json"
    temp = job.token_file.with_name(".tokens.json.tmp-5ca1ab1e0000")
    PLANTED[kind](job, temp, elsewhere)
    later = time.time() + 3600
    os.utime(temp, (later, later), follow_symlinks=False)
    planted = os.lstat(temp)
    result = run_job(["refresh"], job.env())
    assert result.returncode == 0, result.stderr
    assert invalid_grants(job.standin) == 0
    assert os.lstat(temp).st_ino == planted.st_ino and os.lstat(temp).st_mode == planted.st_mode
    assert stat.S_ISREG(os.lstat(job.token_file).st_mode)
    assert job.read_tokens()["refresh_token"] in job.standin.live_refresh_tokens()
    assert any(str(temp) in line for line in warning_lines(result.stderr)), result.stderr


# -- files the job writes are opened without following links -------------------------------------------


def test_a_symlink_planted_at_the_lock_path_is_refused(job: JobFiles, tmp_path: Path) -> None:
    """`tokens.json.lock` as a symlink: exit 73 naming it, the link's target untouched, nothing sent."""
    job.write_tokens()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = job.token_file.with_name("tokens.json.lock")
    lock.symlink_to(victim)
    result = run_job(["refresh"], job.env())
    assert result.returncode == 73, result.stderr
    assert str(lock) in result.stderr and "link" in result.stderr
    assert victim.read_text() == "precious\n"
    assert token_requests(job.standin) == 0


def test_a_symlink_at_the_task_state_path_is_refused_before_anything_is_spent(job: JobFiles, tmp_path: Path) -> None:
    """A link planted at the task state file is neither read nor written through: exit 65 naming it, the
    link's target untouched, the refresh token not used."""
    job.write_tokens()
    victim = tmp_path / "victim.json"
    victim.write_text('{"precious": true}\n')
    state_file = job.token_file.with_name("noop.state.json")
    state_file.symlink_to(victim)
    result = run_job(["run", "--task", "noop"], job.env())
    assert result.returncode == 65, result.stderr
    assert str(state_file) in result.stderr and "link" in result.stderr
    assert victim.read_text() == '{"precious": true}\n'
    assert state_file.is_symlink()
    assert token_requests(job.standin) == 0


def test_a_symlink_at_the_metrics_path_is_replaced_not_followed(job: JobFiles, tmp_path: Path) -> None:
    """A link planted at AWEBER_METRICS_FILE (textfile directories are often group-writable) is replaced."""
    job.write_tokens()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    metrics_dir = tmp_path / "textfile"
    metrics_dir.mkdir()
    metrics = metrics_dir / "aweber-job.prom"
    metrics.symlink_to(victim)
    result = run_job(["refresh"], job.env(AWEBER_METRICS_FILE=str(metrics)))
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n"
    assert stat.S_ISREG(os.lstat(metrics).st_mode)
    assert "aweber_job_exit_code 0" in metrics.read_text()


def test_a_symlink_at_the_output_path_is_refused_before_anything_is_spent(job: JobFiles, tmp_path: Path) -> None:
    """`run --output` at a symlink: exit 73 naming it, the target untouched, the token not used."""
    job.write_tokens()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    output = tmp_path / "out.jsonl"
    output.symlink_to(victim)
    before = job.token_file.read_bytes()
    result = run_job(["run", "--task", "noop", "--output", str(output)], job.env())
    assert result.returncode == 73, result.stderr
    assert str(output) in result.stderr
    assert victim.read_text() == "precious\n"
    assert token_requests(job.standin) == 0 and job.token_file.read_bytes() == before


def test_a_token_directory_writable_by_others_is_named_on_every_run_and_in_status(job: JobFiles) -> None:
    """A group- or world-writable token directory gets a warning naming it, each run, and in status."""
    job.write_tokens()
    directory = job.token_file.parent
    os.chmod(directory, 0o770)  # noqa: S103 - the mistake this test is about
    for _ in range(2):
        result = run_job(["refresh"], job.env())
        assert result.returncode == 0, result.stderr
        assert any(str(directory) in line and "writable by group or others" in line
                   for line in warning_lines(result.stderr)), result.stderr
    human = run_job(["status"], job.env())
    assert any(str(directory) in line and "writable by group or others" in line
               for line in human.stdout.splitlines() if line.startswith("warning:")), human.stdout
    report = json.loads(run_job(["status", "--json"], job.env()).stdout)
    assert report["directory_mode"] == "0770"
    assert any(str(directory) in w and "writable by group or others" in w for w in report["warnings"])


# -- the job's own files never overwrite one another -------------------------------------------------------


def _same_path(job: JobFiles, tmp_path: Path, own: str) -> str:
    return str(job.token_file.with_name(own))


def _hard_link(job: JobFiles, tmp_path: Path, own: str) -> str:
    link = tmp_path / "elsewhere.prom"
    os.link(job.token_file.with_name(own), link)
    return str(link)


def _symlink(job: JobFiles, tmp_path: Path, own: str) -> str:
    link = tmp_path / "elsewhere.prom"
    link.symlink_to(job.token_file.with_name(own))
    return str(link)


def _dotted(job: JobFiles, tmp_path: Path, own: str) -> str:
    return str(job.token_file.parent / "." / own)


SPELLINGS = {"the same path": _same_path, "a hard link": _hard_link, "a symlink": _symlink, "a dotted path": _dotted}
OWN_FILES = {"tokens.json": "token file", "noop.state.json": "task state file", "tokens.json.lock": "lock file"}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize("own", list(OWN_FILES))
@pytest.mark.parametrize("option", ["AWEBER_METRICS_FILE", "--output"])
def test_metrics_or_output_naming_one_of_the_jobs_own_files_is_a_configuration_error(
    job: JobFiles, tmp_path: Path, option: str, own: str, spelling: str
) -> None:
    """The metrics file or --output is the token file, the task state or the lock, however spelled: exit 78
    naming both, before the lock is taken and before anything is spent; every file as it was."""
    job.write_tokens()
    state = job.token_file.with_name("noop.state.json")
    state.write_text("{}\n")
    lock = job.token_file.with_name("tokens.json.lock")
    if own == "tokens.json.lock":
        lock.touch(mode=0o600)
    before = {p.name: p.read_bytes() for p in job.token_file.parent.iterdir()}
    path = SPELLINGS[spelling](job, tmp_path, own)
    env = job.env(AWEBER_METRICS_FILE=path) if option == "AWEBER_METRICS_FILE" else job.env()
    args = ["run", "--task", "noop"] + (["--output", path] if option == "--output" else [])
    result = run_job(args, env)
    assert result.returncode == 78, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if ": error:" in line]
    assert option in error and os.path.normpath(path) in error and str(job.token_file.with_name(own)) in error, error
    assert OWN_FILES[own] in error
    assert token_requests(job.standin) == 0
    assert {p.name: p.read_bytes() for p in job.token_file.parent.iterdir()} == before


# -- directories that cannot be fsynced ------------------------------------------------------------------


@pytest.fixture
def directory_fsync_says_einval(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """os.fsync fails with EINVAL for directories, as on CIFS, some FUSE file systems and WSL shares."""
    real_fsync = os.fsync
    refused: list[int] = []

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            refused.append(fd)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield refused


def test_a_directory_that_cannot_be_fsynced_is_not_a_failed_save(
    job: JobFiles, directory_fsync_says_einval: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """fsync of the directory refused with EINVAL after the rename: the save stands, one warning for the run."""
    job.write_tokens()
    settings = load_settings(job.env())
    caplog.set_level(logging.WARNING)
    with requests.Session() as session, TokenKeeper(settings, session) as keeper:
        keeper.refresh("first")
        keeper.refresh("second")
    assert directory_fsync_says_einval, "the directory fsync was never tried"
    assert job.read_tokens()["refresh_token"] == keeper.tokens.refresh_token
    assert job.standin.live_refresh_tokens() == {keeper.tokens.refresh_token}
    assert not list(job.token_file.parent.glob("tokens.json.rescue-*")) and temporaries(job) == []
    said = [r for r in caplog.records if "fsync" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert str(job.token_file.parent) in said[0].getMessage()


# -- ownership under root --------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="running as root over another user's files needs root")
def test_a_run_as_root_keeps_the_owner_of_the_files_it_replaces(job: JobFiles) -> None:
    """`sudo aweber-job run` over a service user's files: the token file and task state keep their owner and
    group, and a lock file root creates belongs to the token file's owner."""
    job.write_tokens()
    directory = job.token_file.parent
    state = directory / "noop.state.json"
    state.write_text("{}\n")
    os.chmod(state, 0o600)
    for path in (job.token_file, state):
        os.chown(path, NOBODY, NOBODY)
    result = run_job(["run", "--task", "noop"], job.env())
    assert result.returncode == 0, result.stderr
    assert job.read_tokens()["refresh_token"] in job.standin.live_refresh_tokens()
    for path in (job.token_file, state, directory / "tokens.json.lock"):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid) == (NOBODY, NOBODY), path
        assert stat.S_IMODE(info.st_mode) == 0o600, path


@pytest.mark.skipif(os.geteuid() != 0, reason="running as root over another user's files needs root")
def test_a_rescue_file_root_writes_belongs_to_the_token_files_owner(job: JobFiles, tmp_path: Path) -> None:
    """The rename fails (a single-file bind mount): the rescue file root writes is the token file owner's."""
    job.write_tokens()
    os.chown(job.token_file, NOBODY, NOBODY)
    outside = tmp_path / "outside.json"
    outside.write_bytes(job.token_file.read_bytes())
    os.chown(outside, NOBODY, NOBODY)
    with mounted("--bind", str(outside), target=job.token_file):
        result = run_job(["refresh"], job.env())
    assert result.returncode == 73, result.stderr
    (rescue,) = job.token_file.parent.glob("tokens.json.rescue-*")
    info = os.stat(rescue)
    assert (info.st_uid, info.st_gid) == (NOBODY, NOBODY)
    assert stat.S_IMODE(info.st_mode) == 0o600
