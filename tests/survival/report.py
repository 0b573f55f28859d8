"""The survival table: what was tried and what survived, as Markdown, from the tally's JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Where a kill landed, in the order a run goes through its phases.
KILL_PHASES = (
    "before the token request (start, lock, load, reserve)",
    "token answer in flight (server not yet rotated)",
    "token answer in flight (server rotated)",
    "token saved (before the task, or exiting)",
    "during the task",
    "after the task state save",
)


def render_table(report: Mapping[str, Any]) -> str:
    """The main table, one row per scenario (skips in a column of their own), and a total."""
    lines = [
        "| scenario | tried | survived | lost answer (explained) | garbled answer (explained) | failures | skipped |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    totals = [0, 0, 0, 0, 0, 0]
    for name, row in report.items():
        # A skipped scenario could not be set up on this machine (no mount permission, no loop device):
        # it was not tried, and it is neither a success nor a failure.
        values = [row["tried"], row["survived"], row["lost_answer"], row.get("garbled_answer", 0), row["failed"],
                  row.get("skipped", 0)]
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        lines.append(f"| {name} | " + " | ".join(str(v) for v in values) + " |")
    lines.append("| **total** | " + " | ".join(f"**{v}**" for v in totals) + " |")
    return "\n".join(lines)


def render_kill_phases(report: Mapping[str, Any]) -> str:
    """Where the SIGKILLs landed, summed over every kill scenario; empty when there were none."""
    counts: dict[str, int] = {}
    for name, row in report.items():
        if not name.startswith("kill"):
            continue
        for detail, count in row["details"].items():
            if detail.startswith("phase: "):
                counts[detail[len("phase: "):]] = counts.get(detail[len("phase: "):], 0) + count
    if not counts:
        return ""
    order = [phase for phase in KILL_PHASES if phase in counts] + sorted(set(counts) - set(KILL_PHASES))
    lines = ["| where the SIGKILL landed | kills |", "|---|---:|"]
    lines += [f"| {phase} | {counts[phase]} |" for phase in order]
    return "\n".join(lines)


def render_details(report: Mapping[str, Any]) -> str:
    """Every other detail counter, one line per scenario (exit codes seen, temporaries left...)."""
    lines = []
    for name, row in report.items():
        details = {k: v for k, v in row["details"].items() if not k.startswith("phase: ")}
        if details:
            lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(details.items())))
    return "\n".join(lines)
