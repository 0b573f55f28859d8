"""`aweber-job demo` from the installed console script: it passes, shows rotation and subscribers, leaks no token."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

CONSOLE_SCRIPT = Path(sys.executable).parent / "aweber-job"
FINGERPRINTS = re.compile(r"refresh token ([0-9a-f]{8}) -> ([0-9a-f]{8})")
# The stand-in's tokens are 32 letters and digits, like AWeber's.
TOKEN_LIKE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{32,}(?![A-Za-z0-9])")


def test_demo_passes_from_the_installed_console_script(tmp_path: Path) -> None:
    """The installed `aweber-job demo --keep` exits 0, shows rotation and the subscribers, and prints no token."""
    assert CONSOLE_SCRIPT.is_file(), "the package is not installed in this environment (pip install -e .)"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "demo", "--keep"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "demo OK" in out

    rotations = FINGERPRINTS.findall(out)
    assert len(rotations) == 2
    (first_before, first_after), (second_before, second_after) = rotations
    assert first_before != first_after and second_before == first_after and second_after != second_before

    for email in ("ada@example.com", "grace@example.org", "alan@example.net", "katherine@example.com"):
        assert out.count(email) == 1
    assert '"Product Updates": 0 new' in out
    assert out.count("requests: 1 to the token endpoint") == 2

    kept = Path(re.search(r"kept the demo's files in (\S+)", out).group(1))  # type: ignore[union-attr]
    try:
        tokens = json.loads((kept / "tokens.json").read_text(encoding="utf-8"))
        assert first_after != second_after
        everything = out + result.stderr
        for key in ("access_token", "refresh_token"):
            assert tokens[key] not in everything
        assert not TOKEN_LIKE.search(everything)
        assert not re.search(r"(access|refresh)_token\W{0,3}[:=]", everything)
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def test_demo_cleans_up_its_directory_without_keep(tmp_path: Path) -> None:
    """Without --keep the demo leaves no temporary directory behind."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "-q", "demo"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo OK" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_quiet_demo_prints_only_its_one_line_result(tmp_path: Path) -> None:
    """`aweber-job -q demo` (or `demo -q`) prints the one-line result on stdout and nothing on stderr."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    for argv in (["-q", "demo"], ["demo", "--quiet"]):
        result = subprocess.run(
            [str(CONSOLE_SCRIPT), *argv], env=env, cwd=tmp_path,
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == "demo OK: tokens rotated twice and saved, 5 new subscribers reported once.\n"
        assert result.stderr == ""


def test_demo_says_each_list_count_once_and_names_no_directory_it_removed(tmp_path: Path) -> None:
    """On a terminal stdout and stderr meet: each list's count appears once between them, and without --keep the
    demo does not name its temporary directory, which is gone when the reader gets to it."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    result = subprocess.run([str(CONSOLE_SCRIPT), "demo"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    both = result.stdout + result.stderr
    assert both.count('"Weekly Newsletter": 3 new') == 1
    assert both.count('"Webinar Sign-ups": 2 new') == 1
    assert str(tmp_path) not in both
    assert result.stdout.endswith("removed the demo's temporary directory (demo --keep keeps it, to look at its "
                                  "files)\n")
    assert list(tmp_path.iterdir()) == []
