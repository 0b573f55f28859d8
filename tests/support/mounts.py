"""Mounts that deny root too (tmpfs size limits, read-only bind mounts, an ext4 image that an error turns
read-only), for the disk tests.

Where mounting is not permitted (not root, no CAP_SYS_ADMIN) the test is skipped; a file-size-limit
test (RLIMIT_FSIZE, which binds root as well) covers the same code path everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


@contextmanager
def mounted(*args: str, target: Path) -> Iterator[None]:
    """Mount over ``target`` for the block (lazily unmounted after); skip where mounting is not permitted."""
    if os.geteuid() != 0 or not mount(*args, str(target)):
        pytest.skip("mounting needs root with CAP_SYS_ADMIN; the file-size-limit test covers the same path")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """A read-only bind mount of ``directory`` over itself."""
    with mounted("--bind", str(directory), target=directory):
        assert mount("-o", "remount,bind,ro", str(directory))
        yield


@contextmanager
def ext4_image(target: Path, image: Path, *, size_mb: int = 8) -> Iterator[Path]:
    """A fresh ext4 file system in ``image``, loop-mounted over ``target`` with ``errors=remount-ro``; yields
    its ``trigger_fs_error`` control, which makes the kernel record a file-system error, so that ext4
    itself turns the mount read-only (as on a failing disk). Skips, saying why, where mkfs.ext4, loop
    devices or that control are missing."""
    if os.geteuid() != 0:
        pytest.skip("an ext4 loop mount needs root")
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    with open(image, "wb") as handle:
        handle.truncate(size_mb * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.decode(errors='replace').strip()}")
    if not mount("-o", "loop,errors=remount-ro", str(image), str(target)):
        pytest.skip("loop devices cannot be mounted here")
    try:
        source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(target)], capture_output=True, text=True,
                                check=False).stdout.strip()
        trigger = Path("/sys/fs/ext4") / Path(source).name / "trigger_fs_error"
        if not source or not trigger.exists():
            pytest.skip("this kernel has no ext4 trigger_fs_error control")
        yield trigger
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)
