"""Mounts that deny root too (tmpfs size limits, read-only bind mounts), for the disk tests.

Where mounting is not permitted (not root, no CAP_SYS_ADMIN) the test is skipped; a file-size-limit
test (RLIMIT_FSIZE, which binds root as well) covers the same code path everywhere.
"""

from __future__ import annotations

import os
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
