"""Packaging: a wheel built from the project carries its license and the deployment files, and works when
installed into an environment of its own; the changelog keeps its format."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.checks.test_examples import SOURCES, expected

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the project (pip, no build isolation: the test environment's setuptools)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".hypothesis"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
         str(source)], capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (root / "dist").glob("aweber_job-*.whl")
    return path


def test_the_project_is_mit_licensed_in_the_repository_and_the_wheel(wheel: Path) -> None:
    """LICENSE is the MIT licence of "the aweber-job authors", and the wheel says MIT and carries that file."""
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 the aweber-job authors\n")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode("utf-8").split("\n\n", 1)[0].splitlines()
        assert "License-Expression: MIT" in headers
        assert "License-File: LICENSE" in headers
        (packaged,) = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(packaged).decode("utf-8") == license_text


def test_the_wheel_carries_the_stand_in_but_not_its_control_plane(wheel: Path) -> None:
    """The demo's in-thread stand-in ships; its process mode and ``/_control/`` endpoints, which only tests and
    benchmarks use (tests/support/standin), do not, and nothing of tests/ does."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "job/standin/server.py" in names
    shipped = [name for name in names if re.fullmatch(r"job/standin/(control[^/]*|__main__|config)\.py", name)]
    assert shipped == []
    assert [name for name in names if name.startswith("tests/")] == []


def test_the_wheel_carries_the_postgres_stores_sql(wheel: Path) -> None:
    """The PostgreSQL store's statements are package data: every .sql file of the checkout is in the wheel, as is."""
    sql = REPO / "job" / "stores" / "postgres" / "sql"
    files = sorted(sql.glob("*.sql"))
    assert files and "job/stores/postgres/sql/claim.sql" in {f"job/stores/postgres/sql/{path.name}" for path in files}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for path in files:
            packaged = f"job/stores/postgres/sql/{path.name}"
            assert packaged in names
            assert archive.read(packaged) == path.read_bytes()


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_prints_every_example(tmp_path: Path, wheel: Path) -> None:
    """A wheel installed into a fresh environment prints every example with that environment's program path:
    the files ship as package data, not only in a checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
         "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300, check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    program = venv / "bin" / "aweber-job"
    for kind in SOURCES:
        # Run from elsewhere, so nothing can come from the checkout.
        result = subprocess.run([str(program), "example", kind], capture_output=True, text=True, timeout=60,
                                check=False, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected(kind, program), kind


def test_the_changelog_follows_keep_a_changelog() -> None:
    """CHANGELOG.md has an Unreleased section first, then 0.1.0 with its date, each with typed subsections."""
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert "https://keepachangelog.com/en/1.1.0/" in text
    releases = re.findall(r"^## \[([^\]]+)\](.*)$", text, flags=re.MULTILINE)
    assert [name for name, _ in releases][:2] == ["Unreleased", "0.1.0"]
    assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", releases[1][1])
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    for section in sections:
        kinds = re.findall(r"^### (.+)$", section, flags=re.MULTILINE)
        assert kinds and set(kinds) <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, section
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), flags=re.MULTILINE)
    assert version is not None and version.group(1) == releases[1][0]


def test_the_test_tools_are_pinned_to_the_versions_the_suite_passes_with() -> None:
    """Every requirement of the `test` extra is pinned with ==: a new release of ruff, mypy, Hypothesis or pytest
    cannot fail the suite on its own; the runtime dependencies stay ranges."""
    # tomllib is Python 3.11+, and the project supports 3.10: read the two lists from their text.
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")

    def requirements(key: str) -> list[str]:
        block = re.search(rf"^{key} = \[\n(.*?)^\]", text, flags=re.MULTILINE | re.DOTALL)
        assert block is not None, f"no {key} list in pyproject.toml"
        return re.findall(r'^\s*"([^"]+)",?\s*$', block.group(1), flags=re.MULTILINE)

    test_extra = requirements("test")
    assert len(test_extra) >= 8
    for requirement in test_extra:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+(\[[A-Za-z0-9_,-]+\])?==[0-9][0-9A-Za-z.]*", requirement), requirement
    dependencies = requirements("dependencies")
    assert {re.split(r"[<>=!~]", requirement)[0] for requirement in dependencies} == {
        "requests", "python-dotenv", "tenacity"}
    for requirement in dependencies:
        assert "==" not in requirement, requirement
