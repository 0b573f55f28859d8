"""Shared fixtures: the stand-in AWeber on loopback, a job's files, a throwaway PostgreSQL database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from job.standin import StandIn
from tests.support.database import PG_SERVER_URL, pg_admin, with_dbname
from tests.support.jobs import CONFIDENTIAL_ID, CONFIDENTIAL_SECRET, PUBLIC_ID, JobFiles
from tests.support.recorder import PingReceiver, ping_receiver


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A stand-in AWeber on 127.0.0.1 with one confidential and one public client."""
    server = StandIn(clients={CONFIDENTIAL_ID: CONFIDENTIAL_SECRET, PUBLIC_ID: None})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def receiver() -> Iterator[PingReceiver]:
    """A healthchecks-like ping receiver on loopback that answers 200 OK (or the statuses queued)."""
    with ping_receiver() as server:
        yield server


@pytest.fixture
def job(tmp_path: Path, standin: StandIn) -> JobFiles:
    """Files and environment for one job against the stand-in, confidential client."""
    return JobFiles(root=tmp_path, standin=standin)



# ---- PostgreSQL: a throwaway database on a real server, for the PostgreSQL connection store -------
# The server is AWEBER_TEST_POSTGRES_URL (default: loopback, user postgres, trust auth). When it cannot
# be reached the tests that need it are skipped with the reason, or fail when AWEBER_TEST_POSTGRES=require
# (as in CI). One database per test run; each test gets it with the job's schema dropped (about 2 ms, where
# a fresh database per test takes about 140 ms).

@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of a database made for this test run (aweber_job_test_<random>), dropped at its end."""
    import secrets

    try:
        admin = pg_admin(PG_SERVER_URL)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server is the reason to skip
        reason = f"no PostgreSQL server at {PG_SERVER_URL.split('@')[-1]}: {str(exc).strip().splitlines()[0]}"
        if os.environ.get("AWEBER_TEST_POSTGRES") == "require":
            pytest.fail(reason + " (AWEBER_TEST_POSTGRES=require)")
        pytest.skip(reason)
    name = f"aweber_job_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield with_dbname(PG_SERVER_URL, name)
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The test run's database, read-write and without the job's schema (dropped if a test made it)."""
    dbname = pg_database.rsplit("/", 1)[-1]
    with pg_admin(PG_SERVER_URL) as admin:
        admin.execute(f"ALTER DATABASE {dbname} RESET default_transaction_read_only")
        admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
    with pg_admin(pg_database) as db:
        db.execute("DROP SCHEMA IF EXISTS aweber_job CASCADE")
    return pg_database
