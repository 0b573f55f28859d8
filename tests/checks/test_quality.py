"""The code stays typed and linted: mypy --strict and ruff run as part of the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return str(path)


def test_mypy_strict_is_clean() -> None:
    """mypy --strict finds nothing in the package or the example tasks."""
    result = subprocess.run([_tool("mypy"), "job", "examples"], cwd=REPO, capture_output=True, text=True, check=False,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    """ruff finds nothing in the package, the tests, the benchmarks or the example tasks."""
    result = subprocess.run([_tool("ruff"), "check", "job", "tests", "bench", "examples"], cwd=REPO,
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_installed_console_script_runs_the_same_program() -> None:
    """The console script and `python -m job` are one program: same version line."""
    script = BIN / "aweber-job"
    if not script.exists():
        pytest.skip("the console script is not installed in this environment")
    by_script = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    by_module = subprocess.run([sys.executable, "-m", "job", "--version"], capture_output=True, text=True,
                               check=False, cwd=REPO)
    assert by_script.returncode == by_module.returncode == 0
    assert by_script.stdout == by_module.stdout
    assert by_script.stdout.startswith("aweber-job ")
