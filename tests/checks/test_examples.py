"""`aweber-job example`: the unit files, the crontab line and the env example travel inside the package, from
one source (the repository's files), with this installation's program path filled in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "aweber-job"
# Where the repository's files say the console script is installed.
DOCUMENTED_PROGRAM = "/opt/aweber-job/venv/bin/aweber-job"
# kind -> the repository file it prints (the single source of each).
SOURCES = {
    "service": REPO / "systemd" / "aweber-job.service",
    "timer": REPO / "systemd" / "aweber-job.timer",
    "credential": REPO / "systemd" / "aweber-job.service.d" / "client-secret.conf",
    "crontab": REPO / "crontab.example",
    "env": REPO / ".env.example",
    "instance-service": REPO / "systemd" / "aweber-job@.service",
    "instance-timer": REPO / "systemd" / "aweber-job@.timer",
    "instance-credential": REPO / "systemd" / "aweber-job@.service.d" / "client-secret.conf",
}
PACKAGED = REPO / "job" / "examples"


def expected(kind: str, program: Path) -> str:
    """The repository file with every mention of the documented program path replaced by ``program``."""
    return SOURCES[kind].read_text(encoding="utf-8").replace(DOCUMENTED_PROGRAM, str(program))


def hidden_by_protect_home(path: str) -> bool:
    """ProtectHome=yes makes /home, /root and /run/user invisible to the service."""
    return any(path == top or path.startswith(top + "/") for top in ("/home", "/root", "/run/user"))


def test_the_packaged_examples_are_links_to_the_repository_files() -> None:
    """Each file under job/examples is a symbolic link to its repository file, so the two cannot drift apart."""
    packaged = {path.name: path for path in PACKAGED.iterdir()}
    assert len(packaged) == len(SOURCES)
    for source in SOURCES.values():
        matches = [path for path in packaged.values() if path.is_symlink() and path.samefile(source)]
        assert len(matches) == 1, f"{source} has no link under {PACKAGED}"


@pytest.mark.parametrize("kind", list(SOURCES))
def test_example_prints_the_file_with_this_installation_program(kind: str) -> None:
    """`aweber-job example KIND` prints the repository file with the running console script's path in place."""
    assert CONSOLE_SCRIPT.is_file(), "the package is not installed in this environment (pip install -e .)"
    result = subprocess.run([str(CONSOLE_SCRIPT), "example", kind], capture_output=True, text=True, timeout=60,
                            check=False, cwd=REPO, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected(kind, CONSOLE_SCRIPT)
    if kind in ("service", "instance-service"):
        assert f"ExecStart={CONSOLE_SCRIPT} run\n" in result.stdout


@pytest.mark.parametrize("kind", ["service", "instance-service"])
def test_example_service_warns_when_protect_home_would_hide_the_python_it_runs(kind: str) -> None:
    """`example service` (and `instance-service`) warns, naming the path, when the program or its real Python
    interpreter lies under /home, /root or /run/user, which the unit's ProtectHome=yes hides (the service could
    not start)."""
    result = subprocess.run([str(CONSOLE_SCRIPT), "example", kind], capture_output=True, text=True,
                            timeout=60, check=False, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert result.returncode == 0
    interpreter = os.path.realpath(sys.executable)
    warnings = [line for line in result.stderr.splitlines() if ": warning: " in line]
    hidden = [path for path in (str(CONSOLE_SCRIPT), interpreter) if hidden_by_protect_home(path)]
    assert len(warnings) == len(hidden), result.stderr
    for path, warning in zip(hidden, warnings, strict=True):
        assert path in warning and "ProtectHome=yes" in warning


def test_example_with_an_unknown_kind_is_a_usage_error() -> None:
    """`aweber-job example nginx` is exit 64 naming the kinds there are."""
    result = subprocess.run([str(CONSOLE_SCRIPT), "example", "nginx"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 64
    assert all(kind in result.stderr for kind in SOURCES)
