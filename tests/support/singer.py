"""Real Singer tools for the tap's tests: targets and Meltano, each in a virtual environment of its own.

Their dependencies clash with each other (target-jsonl pins an old singer-python; the MeltanoLabs targets
bring singer-sdk) and would pull the project's own test tools around, so each group lives in its own venv
under ``.venv-targets/`` at the repository root, made once and kept: a venv whose pins file matches is
reused as it is. ``python -m tests.support.singer`` makes them all (.ci/run does, before the tests).

Without a registry they cannot be made: the tests that need them are skipped with the reason, or fail when
``AWEBER_TEST_SINGER=require`` (as in CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.jobs import REPO

VENVS = REPO / ".venv-targets"
# Pinned to the versions the suite passes with; raise them deliberately.
TOOLS: dict[str, tuple[str, ...]] = {
    "sdk-targets": ("meltanolabs-target-postgres==0.8.1", "meltanolabs-target-csv==0.5.0"),
    "target-jsonl": ("target-jsonl==0.1.4",),
    "meltano": ("meltano==4.4.1",),
}


def _python() -> str:
    """The interpreter the venvs are made from: the one the project's own venv was made from."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if os.path.exists(base) else sys.executable


def make(name: str) -> Path:
    """The ``bin`` directory of the venv ``name``, made (or remade, when its pins changed) as needed."""
    pins = TOOLS[name]
    home = VENVS / name
    marker = home / "pins.txt"
    wanted = "\n".join(pins) + "\n"
    if marker.is_file() and marker.read_text(encoding="utf-8") == wanted and (home / "bin" / "python").exists():
        return home / "bin"
    subprocess.run([_python(), "-m", "venv", "--clear", str(home)], check=True, timeout=300)
    subprocess.run([str(home / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *pins], check=True, timeout=600)
    marker.write_text(wanted, encoding="utf-8")
    return home / "bin"


def tool(name: str) -> Path:
    """For a test: the venv's ``bin``; the test is skipped (or fails under AWEBER_TEST_SINGER=require) when the
    venv cannot be made."""
    try:
        return make(name)
    except (OSError, subprocess.SubprocessError) as exc:
        reason = f"cannot install {', '.join(TOOLS[name])} into {VENVS / name}: {exc}"
        if os.environ.get("AWEBER_TEST_SINGER") == "require":
            pytest.fail(reason + " (AWEBER_TEST_SINGER=require)")
        pytest.skip(reason)


if __name__ == "__main__":
    for each in sys.argv[1:] or list(TOOLS):
        print(f"{each}: {make(each)}", flush=True)
