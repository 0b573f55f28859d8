"""The benchmark's code path, on its smallest case: our run makes exactly the minimum number of requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.run_benchmarks import Scenario, minimum_requests, run_ours, serving


@pytest.mark.parametrize(
    ("new_per_list", "expected"),
    [
        ([0], 4),
        ([100], 4),
        ([101], 5),
        ([199], 5),
        ([200], 6),
        ([10_000], 104),
        ([0, 250], 1 + 1 + 1 + 1 + 3),
        ([0] * 101, 1 + 1 + 2 + 101),
    ],
)
def test_minimum_requests_formula(new_per_list: list[int], expected: int) -> None:
    """The minimum is 1 refresh + 1 accounts + ceil(lists/100) list pages + 1 + ceil((k-100)/99) finds per list."""
    assert minimum_requests(new_per_list) == expected


def test_smallest_benchmark_case_makes_the_minimum_requests(tmp_path: Path) -> None:
    """A real run over 1,000 subscribers with none new, as the benchmark runs it, makes 4 requests and no rows."""
    scenario = Scenario(1_000, 0)
    with serving(scenario, delay_seconds=0.0) as served:
        measured = run_ours(served, tmp_path / "ours")
    assert measured.exit_code == 0, measured.stderr
    assert measured.requests == scenario.expected_ours == 4
    assert measured.rows == 0
    assert measured.max_rss_bytes > 0
