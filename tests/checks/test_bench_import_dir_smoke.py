"""bench/import_dir.py on a small directory: the import is checked and timed, and the line says so."""

from __future__ import annotations

import re

import pytest

from bench import import_dir
from tests.support.database import PG_SERVER_URL


def test_smallest_import_benchmark_imports_checks_and_reports(pg_database: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = import_dir.main(["--files", "20", "--server", PG_SERVER_URL])
    assert code in (0, 1), "0 or 1: the goal held or not; 2: the benchmark broke"
    line = capsys.readouterr().out.strip()
    match = re.fullmatch(r"imported 20 token files in (\d+\.\d) s \([\d,]+ files/s; goal 0\.1 s: (met|NOT met)\)", line)
    assert match is not None, line
    assert float(match.group(1)) > 0
