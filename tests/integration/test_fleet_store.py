# ruff: noqa: F811
"""What the store decides for fleet runs: which connections are due, backoff, waiting for a person, the upgrade.

Against a real PostgreSQL server; times are moved by editing rows with SQL of the test's own.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from job.stores.postgres import PostgresStore
from job.stores.postgres import sql as sql_folder

# The fixture `stores` is imported to be used by name, which ruff reads as unused, then redefined.
from tests.integration.test_pgstore import make_tokens, sql, stores  # noqa: F401

DAY = 86_400.0


def claim(store: PostgresStore, limit: int, interval: float) -> list[tuple[str, Any]]:
    """What a fleet run that begins now claims in its first claim."""
    return store.claim_due(limit, interval, since=store.run_start())


def names(claimed: list[tuple[str, Any]]) -> list[str]:
    return sorted(name for name, _ in claimed)


def release_all(pg_url: str) -> None:
    sql(pg_url, "UPDATE aweber_job.connections SET lease_holder = NULL, lease_until = NULL")


def ran_ago(pg_url: str, name: str, seconds: float, code: int, failures: int = 0, backoff: float = DAY) -> None:
    """The row as a run ``seconds`` ago that ended with ``code`` leaves it, due again ``backoff`` after it."""
    sql(pg_url, """UPDATE aweber_job.connections SET last_run_at = now() - make_interval(secs => %s),
                   next_run_at = now() - make_interval(secs => %s) + make_interval(secs => %s),
                   last_exit_code = %s, temporary_failures = %s WHERE name = %s""",
        seconds, seconds, backoff, code, failures, name)


def test_due_means_never_run_or_last_run_older_than_the_interval(stores: Any, pg_url: str) -> None:
    store = stores()
    for name in ("fresh", "old", "never"):
        store.import_tokens(name, make_tokens(), force=False)
    ran_ago(pg_url, "fresh", 3600, 0)
    ran_ago(pg_url, "old", 2 * DAY, 0)
    assert names(claim(store, 10, DAY)) == ["never", "old"]
    release_all(pg_url)
    # The interval in force when claiming decides, not the one of the last run: 0 means always due.
    assert names(claim(store, 10, 0)) == ["fresh", "never", "old"]


def test_a_claimed_connection_is_not_claimed_again_in_the_same_run(stores: Any, pg_url: str) -> None:
    store, other = stores(), stores()
    for name in ("a", "b", "c"):
        store.import_tokens(name, make_tokens(), force=False)
    since = store.run_start()
    first = store.claim_due(2, DAY, since=since)
    assert len(first) == 2
    # Another process sees only what is left; the leases of the first are live.
    assert names(other.claim_due(10, DAY, since=since)) == sorted({"a", "b", "c"} - {n for n, _ in first})
    # Given back unrecorded (a stop before the refresh): still due, but not for a run that claimed it already.
    release_all(pg_url)
    assert store.claim_due(10, DAY, since=since) == []
    release_all(pg_url)
    assert names(claim(store, 10, DAY)) == ["a", "b", "c"]


def test_a_connection_finished_in_this_run_is_not_due_in_it_even_at_interval_zero(stores: Any, pg_url: str) -> None:
    """With AWEBER_RUN_INTERVAL=0 every connection is always due, yet a run does each once: what it finished has
    a last run later than the run's start."""
    store = stores()
    for name in ("a", "b"):
        store.import_tokens(name, make_tokens(), force=False)
    since = store.run_start()
    (name, row), = store.claim_due(1, 0, since=since)
    connection = store.connection(name, wait=False, claimed=row)
    connection.open()
    connection.finish(0, 0)
    assert names(store.claim_due(10, 0, since=since)) == sorted({"a", "b"} - {name})
    release_all(pg_url)
    assert store.claim_due(10, 0, since=since) == []
    assert names(claim(store, 10, 0)) == ["a", "b"]


def test_many_processes_claiming_at_once_never_take_one_connection_twice(stores: Any, pg_url: str) -> None:
    setup = stores()
    for index in range(60):
        setup.import_tokens(f"c{index:02d}", make_tokens(), force=False)
    count = 6
    since = setup.run_start()
    barrier = threading.Barrier(count)
    taken: list[list[str]] = []

    def claim() -> None:
        store = PostgresStore(pg_url, state_dir=Path("/nonexistent"))
        try:
            store.database.connection()
            barrier.wait()
            mine: list[str] = []
            while batch := store.claim_due(4, DAY, since=since):
                mine += [name for name, _ in batch]
            taken.append(mine)
        finally:
            store.close()

    threads = [threading.Thread(target=claim) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [name for mine in taken for name in mine]
    assert len(taken) == count
    assert sorted(every) == [f"c{index:02d}" for index in range(60)], "each exactly once"


def test_temporary_failures_back_off_and_a_person_is_waited_for(stores: Any, pg_url: str) -> None:
    store = stores()
    for name in ("temp1", "temp3", "auth", "config"):
        store.import_tokens(name, make_tokens(), force=False)
    ran_ago(pg_url, "temp1", 301, 75, failures=1, backoff=300)  # first failure: due after 5 min
    ran_ago(pg_url, "temp3", 1000, 75, failures=3, backoff=1200)  # third in a row: due after 20 min
    store.record_run("auth", 77, DAY)
    store.record_run("config", 78, DAY)
    sql(pg_url, "UPDATE aweber_job.connections SET last_run_at = now() - interval '30 days' "
                "WHERE name IN ('auth', 'config')")
    assert names(claim(store, 10, DAY)) == ["temp1"]
    release_all(pg_url)
    ran_ago(pg_url, "temp3", 1201, 75, failures=3, backoff=1200)
    assert names(claim(store, 10, DAY)) == ["temp1", "temp3"]
    release_all(pg_url)
    # New tokens for a connection that waited for a person make it due again.
    store.import_tokens("auth", make_tokens(), force=True)
    assert names(claim(store, 10, DAY)) == ["auth", "temp1", "temp3"]


def test_record_run_schedules_by_outcome(stores: Any, pg_url: str) -> None:
    store = stores()
    store.import_tokens("acme", make_tokens(), force=False)
    gaps = []
    for code in (75, 75, 75, 0, 1, 77):
        store.record_run("acme", code, 3600)
        ((gap, waiting, failures),) = sql(
            pg_url, "SELECT extract(epoch FROM next_run_at - last_run_at), waiting_for_person, temporary_failures "
                    "FROM aweber_job.connections")
        gaps.append((round(float(gap)), waiting, failures))
    assert gaps == [(300, False, 1), (600, False, 2), (1200, False, 3), (3600, False, 0), (3600, False, 0),
                    (3600, True, 0)]


def test_store_init_upgrades_a_version_1_store_keeping_its_connections(stores: Any, pg_url: str) -> None:
    store = stores()
    store.import_tokens("acme", make_tokens(), force=False)
    # Back to what version 1 made.
    sql(pg_url, "DROP INDEX aweber_job.connections_due_by_last_run")
    sql(pg_url, "DROP INDEX aweber_job.connections_due_to_retry")
    sql(pg_url, "ALTER TABLE aweber_job.connections DROP COLUMN claimed_at")
    sql(pg_url, "ALTER TABLE aweber_job.connections DROP COLUMN waiting_for_person, DROP COLUMN temporary_failures, "
                "DROP COLUMN sealed_with")
    sql(pg_url, "ALTER TABLE aweber_job.schema_version DROP COLUMN legacy_values")
    sql(pg_url, "UPDATE aweber_job.schema_version SET version = 1")
    assert PostgresStore(pg_url, state_dir=Path("/nonexistent")).init_schema() == 4
    assert sql(pg_url, "SELECT version FROM aweber_job.schema_version") == [(4,)]
    assert [name for name, _ in claim(stores(), 10, DAY)] == ["acme"]


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    return [plan, *(node for child in plan.get("Plans", []) for node in plan_nodes(child))]


@pytest.mark.parametrize(("statement", "index"), [("claim_due", "connections_due_by_last_run"),
                                                  ("claim_retry", "connections_due_to_retry")])
def test_a_claim_is_one_range_scan_of_its_index_without_a_sort(stores: Any, pg_url: str, statement: str,
                                                              index: str) -> None:
    """At 20,000 connections, half never run and half failed a while ago, each claim reads its index in claim order
    and stops at the limit: no sort of the due rows, no scan of the table, whatever the run has done."""
    stores().import_tokens("seed", make_tokens(), force=False)
    sql(pg_url, """INSERT INTO aweber_job.connections (name, tokens, encrypted, last_run_at, last_exit_code,
                   next_run_at, temporary_failures)
                   SELECT 'c' || i, tokens, encrypted,
                          CASE WHEN i % 2 = 0 THEN now() - interval '1 hour' END,
                          CASE WHEN i % 2 = 0 THEN 75 END,
                          CASE WHEN i % 2 = 0 THEN now() - interval '30 minutes' END,
                          CASE WHEN i % 2 = 0 THEN 1 ELSE 0 END
                   FROM aweber_job.connections, generate_series(1, 20000) AS i WHERE name = 'seed'""")
    sql(pg_url, "ANALYZE aweber_job.connections")
    text = (Path(sql_folder.__file__).parent / f"{statement}.sql").read_text(encoding="utf-8")
    params = {"limit": 8, "interval": DAY, "since": time.time(), "holder": "h:1:x", "lease": 900.0, "dead": []}
    with psycopg.connect(pg_url, autocommit=True) as db:
        ((plan,),) = db.execute("EXPLAIN (FORMAT JSON) " + text, params).fetchall()
    nodes = plan_nodes(plan[0]["Plan"])
    kinds = [node["Node Type"] for node in nodes]
    assert "Sort" not in kinds and "Seq Scan" not in kinds, kinds
    assert any(node.get("Index Name") == index for node in nodes), [node.get("Index Name") for node in nodes]


def test_the_connections_a_run_finished_lie_outside_its_claims_range(stores: Any, pg_url: str) -> None:
    """At interval 0, near its end (197 of 200 connections finished), a run's claim reads none of those it finished:
    the range ends at the run's start, so a claim's cost does not grow with the connections done."""
    store = stores()
    store.import_tokens("seed", make_tokens(), force=False)
    sql(pg_url, """INSERT INTO aweber_job.connections (name, tokens, encrypted)
                   SELECT 'c' || i, tokens, encrypted FROM aweber_job.connections, generate_series(1, 199) AS i
                   WHERE name = 'seed'""")
    since = store.run_start()
    for name, row in store.claim_due(197, 0, since=since):
        connection = store.connection(name, wait=False, claimed=row)
        connection.open()
        connection.finish(0, 0)
    text = (Path(sql_folder.__file__).parent / "claim_due.sql").read_text(encoding="utf-8")
    params = {"limit": 8, "interval": 0.0, "since": since, "holder": "h:1:x", "lease": 900.0, "dead": []}
    with psycopg.connect(pg_url) as db:
        db.execute("SET LOCAL enable_seqscan = off")
        ((plan,),) = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + text, params).fetchall()
        db.rollback()
    (scan,) = [node for node in plan_nodes(plan[0]["Plan"]) if node.get("Index Name") == "connections_due_by_last_run"]
    assert scan.get("Rows Removed by Filter", 0) == 0, scan
    assert scan["Actual Rows"] == 3
