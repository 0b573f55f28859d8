"""The survival table itself: a skipped scenario is shown as skipped, never as a failure or a success."""

from __future__ import annotations

import pytest

from tests.survival.harness import Tally
from tests.survival.report import render_table


def test_a_skip_inside_an_attempt_is_counted_as_skipped_not_failed() -> None:
    """pytest.skip inside an attempt (no mount permission, no loop device) adds to "skipped", not "failures"."""
    tally = Tally()
    with tally.attempt("disk: something"):
        pass
    with pytest.raises(pytest.skip.Exception), tally.attempt("disk: something"):
        pytest.skip("mounting is not permitted here")
    row = tally.to_json()["disk: something"]
    assert (row["tried"], row["survived"], row["failed"], row["skipped"]) == (1, 1, 0, 1)
    table = render_table(tally.to_json()).splitlines()
    assert table[0] == (
        "| scenario | tried | survived | lost answer (explained) | garbled answer (explained) | failures | skipped |"
    )
    assert "| disk: something | 1 | 1 | 0 | 0 | 0 | 1 |" in table
    assert table[-1] == "| **total** | **1** | **1** | **0** | **0** | **0** | **1** |"


def test_an_old_report_without_skips_still_renders() -> None:
    """A report written before skips were counted renders with 0 skipped."""
    old = {"x": {"tried": 2, "survived": 2, "lost_answer": 0, "failed": 0, "details": {}}}
    assert "| x | 2 | 2 | 0 | 0 | 0 | 0 |" in render_table(old)
