"""bench/fleet.py on its smallest case: every run is checked and measured, and the report says so."""

from __future__ import annotations

import re
from pathlib import Path

from bench import fleet
from tests.support.database import PG_SERVER_URL


def test_smallest_fleet_benchmark_runs_measures_and_reports(pg_database: str, tmp_path: Path) -> None:
    """Eight connections, a loop of two single runs, one and two processes: figures that mean something."""
    output = tmp_path / "fleet.md"
    before = set(databases())  # a benchmark running beside the suite keeps its own
    code = fleet.main(["--connections", "8", "--sample", "2", "--latency", "0.01", "--processes", "1,2",
                       "--concurrency", "2", "--server", PG_SERVER_URL, "--output", str(output)])
    assert code in (0, 1), "0 or 1: the goals held or not; 2 or an exception: the benchmark broke"
    report = output.read_text(encoding="utf-8")
    rows = [line for line in report.splitlines()
            if line.startswith("| ") and re.fullmatch(r" \d+ × \d+ ", line.split("|")[2])]
    assert len(rows) == 3, report
    assert "| 2 (sample) |" in rows[0] and "| 1 × 2 | 8 |" in rows[1] and "| 2 × 2 | 8 |" in rows[2]
    # The bound: C in flight per process, P processes, 1 request (the refresh) of 10 ms each.
    for row, bound in zip(rows, ("100/s", "200/s", "400/s"), strict=True):
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert 1 <= float(cells[9]) < 50, f"database round trips per connection: {cells[9]} in {row}"
        assert float(cells[10].removesuffix(" MB")) > 10, f"peak RSS of a real process: {row}"
        assert cells[11] == bound, row
    assert "k = 1.00 request(s) per connection" in report
    assert re.search(r"concurrency 2, one process: \d+× the loop", report), report
    left = [name for name in set(databases()) - before if name.startswith("aweber_fleet_bench_")]
    assert not left, f"the database was dropped: {left}"


def databases() -> list[str]:
    import psycopg

    with psycopg.connect(PG_SERVER_URL, autocommit=True) as admin:
        return [row[0] for row in admin.execute("SELECT datname FROM pg_database").fetchall()]
