"""Run the survival suite and print its table of what was tried and what survived, as in docs/survival.md.

    .venv/bin/python bench/survive.py            # the CI suite (a few minutes)
    .venv/bin/python bench/survive.py --soak     # five times the kills and rounds, more Hypothesis examples
    .venv/bin/python bench/survive.py --seed 7   # other kill moments and race plans

Exits with pytest's status, so a failure anywhere in the suite shows here too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.survival.report import render_details, render_kill_phases, render_table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak", action="store_true", help="the longer soak run")
    parser.add_argument("--seed", type=int, help="seed for kill moments and race plans (default: fixed)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k kill")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="survival-") as scratch:
        report_path = Path(scratch) / "survival.json"
        env = dict(os.environ, SURVIVAL_REPORT=str(report_path))
        if args.soak:
            env["SURVIVAL_SOAK"] = "1"
        if args.seed is not None:
            env["SURVIVAL_SEED"] = str(args.seed)
        command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--no-header",
                   "tests/survival", *args.pytest_args]
        started = time.monotonic()
        log_path = Path(scratch) / "pytest.log"
        with open(log_path, "wb") as log:
            status = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    check=False).returncode
        elapsed = time.monotonic() - started
        if status != 0:
            # What failed, as pytest said it, before the table.
            lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            summary = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
            print("\n".join(summary or lines[-40:]), file=sys.stderr)
        if not report_path.exists():
            print(f"survive: the suite produced no report (pytest exit {status})", file=sys.stderr)
            return status or 1
        report = json.loads(report_path.read_text(encoding="utf-8"))
        # Why anything was skipped, as pytest said it: a skip is not a pass.
        skips = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.startswith("SKIPPED")]

    scenarios = report["scenarios"]
    mode = "soak" if report["soak"] else "CI suite"
    print(f"Survival, {mode}, {elapsed:.0f} s, pytest exit {status}:\n")
    print(render_table(scenarios))
    phases = render_kill_phases(scenarios)
    if phases:
        print("\n" + phases)
    details = render_details(scenarios)
    if details:
        print("\n" + details)
    if skips:
        print("\nSkipped here (not tried, not counted as survived):\n" + "\n".join(skips))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
