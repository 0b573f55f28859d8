"""Fixtures for the survival suite: stand-in processes, job workspaces, the ping receiver; and at the
end of the session the table of what was tried and what survived (printed, and written as JSON to
``$SURVIVAL_REPORT`` when that is set)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.recorder import PingReceiver
from tests.support.recorder import ping_receiver as receiving_pings
from tests.survival.harness import SOAK, TALLY, StandInProcess, Workspace, standin_config
from tests.survival.report import render_details, render_kill_phases, render_table


@pytest.fixture(scope="session")
def ping_receiver() -> Iterator[PingReceiver]:
    """One monitoring endpoint for the whole session; every ping body is kept for the secrets scan."""
    with receiving_pings() as receiver:
        yield receiver


StandInFactory = Callable[..., StandInProcess]


@pytest.fixture
def start_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandInFactory]:
    """Start stand-in processes (kept outside the scanned job directories); all are stopped afterwards."""
    started: list[StandInProcess] = []

    def start(**config: Any) -> StandInProcess:
        process = StandInProcess(tmp_path_factory.mktemp("standin"), standin_config(**config))
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def new_workspace(tmp_path: Path, ping_receiver: PingReceiver) -> Callable[..., Workspace]:
    """Make a job workspace under this test's directory, pinging the session's receiver."""
    count = 0

    def make(standin: StandInProcess, *, ping: bool = True, root: Path | None = None) -> Workspace:
        nonlocal count
        count += 1
        return Workspace(root or tmp_path / f"job{count}", standin, ping_url=ping_receiver.url if ping else None)

    return make


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("SURVIVAL_REPORT")
    if target and TALLY.rows:
        Path(target).write_text(
            json.dumps({"soak": SOAK, "exit_status": int(exitstatus), "scenarios": TALLY.to_json()}, indent=2) + "\n",
            encoding="utf-8",
        )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not TALLY.rows:
        return
    report = TALLY.to_json()
    terminalreporter.section("survival: what was tried and what survived")
    terminalreporter.write_line(render_table(report))
    phases = render_kill_phases(report)
    if phases:
        terminalreporter.write_line("")
        terminalreporter.write_line(phases)
    details = render_details(report)
    if details:
        terminalreporter.write_line("")
        terminalreporter.write_line(details)
