# ruff: noqa: F811
"""What the store decides for fleet runs: which connections are due, backoff, waiting for a person, the upgrade.

Against a real PostgreSQL server; times are moved by editing rows with SQL of the test's own.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from job.stores.postgres import PostgresStore

# The fixture `stores` is imported to be used by name, which ruff reads as unused, then redefined.
from tests.integration.test_pgstore import make_tokens, sql, stores  # noqa: F401

DAY = 86_400.0


def names(claimed: list[tuple[str, Any]]) -> list[str]:
    return sorted(name for name, _ in claimed)


def release_all(pg_url: str) -> None:
    sql(pg_url, "UPDATE aweber_job.connections SET lease_holder = NULL, lease_until = NULL")


def ran_ago(pg_url: str, name: str, seconds: float, code: int, failures: int = 0) -> None:
    sql(pg_url, """UPDATE aweber_job.connections SET last_run_at = now() - make_interval(secs => %s),
                   last_exit_code = %s, temporary_failures = %s WHERE name = %s""", seconds, code, failures, name)


def test_due_means_never_run_or_last_run_older_than_the_interval(stores: Any, pg_url: str) -> None:
    store = stores()
    for name in ("fresh", "old", "never"):
        store.import_tokens(name, make_tokens(), force=False)
    ran_ago(pg_url, "fresh", 3600, 0)
    ran_ago(pg_url, "old", 2 * DAY, 0)
    assert names(store.claim_due(10, DAY)) == ["never", "old"]
    release_all(pg_url)
    # The interval in force when claiming decides, not the one of the last run: 0 means always due.
    assert names(store.claim_due(10, 0)) == ["fresh", "never", "old"]


def test_a_claimed_connection_is_not_claimed_again_and_skip_is_honoured(stores: Any, pg_url: str) -> None:
    store, other = stores(), stores()
    for name in ("a", "b", "c"):
        store.import_tokens(name, make_tokens(), force=False)
    first = store.claim_due(2, DAY)
    assert len(first) == 2
    # Another process sees only what is left; the leases of the first are live.
    assert names(other.claim_due(10, DAY)) == sorted({"a", "b", "c"} - {n for n, _ in first})
    release_all(pg_url)
    assert names(store.claim_due(10, DAY, skip=["a", "b"])) == ["c"]


def test_many_processes_claiming_at_once_never_take_one_connection_twice(stores: Any, pg_url: str) -> None:
    setup = stores()
    for index in range(60):
        setup.import_tokens(f"c{index:02d}", make_tokens(), force=False)
    count = 6
    barrier = threading.Barrier(count)
    taken: list[list[str]] = []

    def claim() -> None:
        store = PostgresStore(pg_url, state_dir=Path("/nonexistent"))
        try:
            store.database.connection()
            barrier.wait()
            mine: list[str] = []
            while batch := store.claim_due(4, DAY, skip=mine):
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
    ran_ago(pg_url, "temp1", 301, 75, failures=1)  # first failure: due after 5 min
    ran_ago(pg_url, "temp3", 1000, 75, failures=3)  # third in a row: due after 20 min
    store.record_run("auth", 77, DAY)
    store.record_run("config", 78, DAY)
    sql(pg_url, "UPDATE aweber_job.connections SET last_run_at = now() - interval '30 days' "
                "WHERE name IN ('auth', 'config')")
    assert names(store.claim_due(10, DAY)) == ["temp1"]
    release_all(pg_url)
    ran_ago(pg_url, "temp3", 1201, 75, failures=3)
    assert names(store.claim_due(10, DAY)) == ["temp1", "temp3"]
    release_all(pg_url)
    # New tokens for a connection that waited for a person make it due again.
    store.import_tokens("auth", make_tokens(), force=True)
    assert names(store.claim_due(10, DAY)) == ["auth", "temp1", "temp3"]


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
    sql(pg_url, "DROP INDEX aweber_job.connections_due")
    sql(pg_url, "ALTER TABLE aweber_job.connections DROP COLUMN waiting_for_person, DROP COLUMN temporary_failures, "
                "DROP COLUMN sealed_with")
    sql(pg_url, "ALTER TABLE aweber_job.schema_version DROP COLUMN legacy_values")
    sql(pg_url, "UPDATE aweber_job.schema_version SET version = 1")
    assert PostgresStore(pg_url, state_dir=Path("/nonexistent")).init_schema() == 3
    assert sql(pg_url, "SELECT version FROM aweber_job.schema_version") == [(3,)]
    assert [name for name, _ in stores().claim_due(10, DAY)] == ["acme"]
