"""Several streams in one run, as real processes against the stand-in: what they cost in requests, what their lines
say, the state each keeps, and a wrong spelling refused before anything is sent."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from job.standin import StandIn
from tests.support.jobs import JobFiles, run_job

ACCOUNT = 100
LISTS = (201, 202, 203)
DAY = 86_400
ALL = "new-subscribers,unsubscribes,list-stats"


def requests_seen(standin: StandIn) -> int:
    """Every request the stand-in saw (token, API and any other), then the counters zeroed."""
    total = standin.stats()["requests_total"]
    assert isinstance(total, int)
    standin.reset_stats()
    return total


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_three_streams_cost_three_requests_and_two_finds_a_list_and_keep_their_own_watermarks(
    job: JobFiles, tmp_path: Path
) -> None:
    """On three lists, new-subscribers, unsubscribes and list-stats together: the token, the accounts, the lists and
    one find a list for each of the two find streams; lines name their stream; a second run repeats nothing."""
    now = time.time()
    job.standin.add_account(ACCOUNT)
    members: dict[int, list[int]] = {}
    for seed, list_id in enumerate(LISTS):
        job.standin.add_list(ACCOUNT, list_id, f"List {list_id}", size=1000, start=now - 400 * DAY,
                             end=now - 100 * DAY, seed=seed)
        members[list_id] = job.standin.add_subscribers(ACCOUNT, list_id, [
            {"email": f"old{list_id}@example.com", "subscribed_at": now - 50 * DAY},
            {"email": f"new{list_id}@example.com", "subscribed_at": now - 600},
        ])
    job.standin.unsubscribe(ACCOUNT, 202, members[202][0], at=now - 300)
    job.write_tokens()
    job.standin.reset_stats()

    ran = run_job(["run", "--task", ALL], job.env(), cwd=tmp_path)

    assert ran.returncode == 0, ran.stderr
    assert requests_seen(job.standin) == 3 + 2 * len(LISTS)
    found = [(line["stream"], line["id"]) for line in lines(ran.stdout)]
    assert found == [
        *[("subscribers", members[list_id][1]) for list_id in LISTS],
        ("unsubscribes", members[202][0]),
        *[("list_stats", list_id) for list_id in LISTS],
    ]
    assert [line["total_unsubscribed_subscribers"] for line in lines(ran.stdout)[-3:]] == [0, 1, 0]
    state = json.loads((job.token_file.parent / "new-subscribers_unsubscribes_list-stats.state.json").read_text())
    assert set(state["streams"]) == {"subscribers", "unsubscribes", "list_stats"}
    assert state["streams"]["unsubscribes"]["lists"][f"{ACCOUNT}/202"]["ids"] == [members[202][0]]

    again = run_job(["run", "--task", "list-stats,unsubscribes,new-subscribers"], job.env(), cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert requests_seen(job.standin) == 3 + 2 * len(LISTS)
    assert [(line["stream"], line["list_id"]) for line in lines(again.stdout)] == [
        ("list_stats", list_id) for list_id in LISTS
    ]

    job.standin.unsubscribe(ACCOUNT, 203, members[203][1], at=time.time() - 5)
    last = run_job(["run", "--task", "unsubscribes,new-subscribers"], job.env(), cwd=tmp_path)
    assert last.returncode == 0, last.stderr
    # A new choice of streams is a new state: its first run looks back --since (24 h).
    assert [(line["stream"], line["id"]) for line in lines(last.stdout)] == [
        *[("subscribers", members[list_id][1]) for list_id in LISTS],
        ("unsubscribes", members[202][0]), ("unsubscribes", members[203][1]),
    ]


def test_one_stream_alone_writes_the_lines_it_always_wrote(job: JobFiles, tmp_path: Path) -> None:
    """--task new-subscribers alone: no stream field, the old columns first, the rest after."""
    now = time.time()
    job.standin.add_account(ACCOUNT)
    job.standin.add_list(ACCOUNT, 201, "List 201", size=10, start=now - 9 * DAY, end=now - 8 * DAY)
    (added,) = job.standin.add_subscribers(ACCOUNT, 201, [{"email": "a@example.com", "subscribed_at": now - 60}])
    job.write_tokens()

    ran = run_job(["run"], job.env(), cwd=tmp_path)

    assert ran.returncode == 0, ran.stderr
    (line,) = lines(ran.stdout)
    assert list(line)[:8] == ["account_id", "list_id", "list_name", "id", "email", "name", "status", "subscribed_at"]
    assert line["id"] == added and "stream" not in line


def test_a_wrong_list_of_tasks_is_one_line_and_exit_64_with_nothing_sent(job: JobFiles, tmp_path: Path) -> None:
    """A task that is not a stream in a comma list: exit 64, one error line naming it, no request, no token spent."""
    job.write_tokens()
    job.standin.reset_stats()

    ran = run_job(["run", "--task", "new-subscribers,noop"], job.env(), cwd=tmp_path)

    assert ran.returncode == 64
    errors = [line for line in ran.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "'noop'" in errors[0] and "list-stats" in errors[0], ran.stderr
    assert requests_seen(job.standin) == 0
    listed = run_job(["tasks"], job.env(), cwd=tmp_path)
    assert listed.returncode == 0
    assert "unsubscribes" in listed.stdout and "list-stats" in listed.stdout
