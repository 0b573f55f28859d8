# ruff: noqa: F811
"""What the PostgreSQL store proves before a refresh is sent, and how its rescue files are found again.

Against a real PostgreSQL server: every wait on the database ends by its deadline; the lease is confirmed
right before the refresh request, with the database and by the process's own clock; a rescue file is
reserved before the refresh token is spent; every valid connection name's rescue file is put back.
"""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from job.errors import StorageError, TemporaryError, TokenNotSavedError
from tests.integration.test_connections_cli import db_job  # noqa: F401 - the fixture is used by name
from tests.integration.test_fleet import add_failover, drop_failover
from tests.integration.test_pgstore import make_tokens, sql, stored_refresh_token, stores  # noqa: F401 - fixtures by name
from tests.integration.test_signals import signal_and_wait, start, wait_for
from tests.support.jobs import JobFiles, invalid_grants, run_job, token_requests

LONG_NAME = "customer-" + "x" * 91  # 100 characters: a valid name whose file-name part would not fit whole


def test_a_statement_whose_answer_does_not_come_is_cut_at_its_deadline(stores: Any) -> None:
    """A statement still running at its deadline is cut (75) at the deadline, not when the server is done."""
    store = stores()
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="did not answer within") as raised:
        store.database.run("SELECT pg_sleep(30)", doing="waiting on purpose", until=time.monotonic() + 1.5)
    took = time.monotonic() - started
    assert raised.value.exit_code == 75
    assert 1.0 <= took < 5.0, f"cut after {took:.1f} s"
    assert store.list_connections() == []  # the next statement connects again and works


def test_a_stop_shortens_the_wait_of_a_statement_already_waiting(stores: Any) -> None:
    """A stop asked for while a statement waits brings its deadline to the stop's cap (never under 1 s)."""
    store = stores()
    cap: list[float] = []
    store.stop_cap = lambda: cap[0] if cap else None
    import threading

    threading.Timer(0.5, lambda: cap.append(time.monotonic())).start()
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="did not answer within"):
        store.database.run("SELECT pg_sleep(30)", doing="waiting on purpose")
    took = time.monotonic() - started
    assert took < 3.0, f"the stop did not shorten the wait ({took:.1f} s)"


def test_the_lease_is_confirmed_with_the_database_right_before_the_refresh_is_sent(stores: Any, pg_url: str) -> None:
    """Another run took the connection over after this one began its refresh: the confirmation refuses (75)."""
    stores().import_tokens("acme", make_tokens(), force=False)
    connection = stores().connection("acme")
    connection.begin_refresh(connection.open().tokens)
    connection.confirm_before_send()  # still its own
    sql(pg_url, "UPDATE aweber_job.connections SET fence = fence + 1, lease_holder = 'elsewhere:1:x'")
    with pytest.raises(TemporaryError, match="lease lost"):
        connection.confirm_before_send()


def test_a_run_stopped_longer_than_its_lease_allows_gives_the_claim_up(stores: Any) -> None:
    """The process's own clock says the last confirmation is older than the lease allows (a SIGSTOP, a paused
    VM): the refresh is not sent, even if the database has not yet handed the lease to anyone."""
    stores().import_tokens("acme", make_tokens(), force=False)
    connection = stores().connection("acme")
    connection.begin_refresh(connection.open().tokens)
    real = connection._monotonic
    jump = connection.longest_send_seconds() + 1
    # The statement itself seems to take that long: the process was stopped in the middle of it.
    readings = iter([real(), real() + jump])
    connection._monotonic = lambda: next(readings)
    with pytest.raises(TemporaryError, match="last confirmed"):
        connection.confirm_before_send()


def test_the_lease_outlasts_the_longest_refresh_request_and_its_save_by_construction(db_job: JobFiles) -> None:
    """Whatever the HTTP timeout and retry deadline, a lease is longer than a request, its save and a margin."""
    from job.config import load_settings
    from job.stores.postgres import PostgresStore

    for timeout, deadline in (("30", "300"), ("600", "60"), ("5", "3600")):
        settings = load_settings(db_job.env(AWEBER_HTTP_TIMEOUT=timeout, AWEBER_RETRY_DEADLINE=deadline))
        store = PostgresStore.from_settings(settings)
        try:
            request = 2 * float(timeout)  # connect, then read
            assert store.lease_seconds > request + store.save_deadline_seconds + 60
            assert store.refresh_tail_seconds >= request + store.save_deadline_seconds
            assert store.lease_seconds - store.refresh_tail_seconds > 0
        finally:
            store.close()


def test_no_refresh_is_begun_when_no_rescue_file_can_be_reserved(stores: Any, pg_url: str, tmp_path: Path) -> None:
    """The rescue directory cannot be made (a file stands there) and there is no other: 73, no marker set."""
    stores().import_tokens("acme", make_tokens(), force=False)
    state = tmp_path / "state"
    state.mkdir()
    (state / "rescue").write_text("not a directory")
    connection = stores(state_dir=state).connection("acme")
    tokens = connection.open().tokens
    with pytest.raises(StorageError, match="no rescue file could be reserved") as raised:
        connection.begin_refresh(tokens)
    assert raised.value.exit_code == 73
    assert sql(pg_url, "SELECT refreshing_from FROM aweber_job.connections") == [(None,)]


def test_a_rescue_goes_to_the_memory_directory_when_the_state_directory_refuses(
    stores: Any, pg_url: str, tmp_path: Path,
) -> None:
    """The state directory's rescue directory is unusable: the rescue is reserved in the other directory, the
    save's failure writes it there, and the next run puts it back from there."""
    stores().import_tokens("acme", make_tokens(), force=False)
    state, memory = tmp_path / "state", tmp_path / "memory"
    state.mkdir()
    (state / "rescue").write_text("not a directory")
    store = stores(state_dir=state, fallback_rescue_dir=memory, save_deadline_seconds=1.0)
    connection = store.connection("acme")
    pending = connection.begin_refresh(connection.open().tokens)
    sql(pg_url, "UPDATE aweber_job.connections SET fence = fence + 1")  # the save will be refused
    rotated = make_tokens()
    with pytest.raises(TokenNotSavedError, match="in memory") as raised:
        connection.save(pending, rotated)
    assert str(memory / "rescue") in str(raised.value)
    connection.close()
    sql(pg_url, "UPDATE aweber_job.connections SET lease_until = now(), lease_holder = NULL")
    again = stores(state_dir=state, fallback_rescue_dir=memory).connection("acme")
    assert again.open().tokens.refresh_token == rotated.refresh_token
    again.close()
    assert stored_refresh_token(pg_url, "acme") == rotated.refresh_token


def test_a_rescue_directory_open_to_others_is_closed_before_use(stores: Any, tmp_path: Path) -> None:
    """A rescue directory that others may enter is made 0700 (with a warning) before a token goes near it."""
    stores().import_tokens("acme", make_tokens(), force=False)
    rescue = tmp_path / "state" / "rescue"
    rescue.mkdir(parents=True)
    os.chmod(rescue, 0o777)  # noqa: S103 - the mistake under test
    store = stores()
    connection = store.connection("acme")
    pending = connection.begin_refresh(connection.open().tokens)
    assert stat.S_IMODE(os.lstat(rescue).st_mode) == 0o700
    (room,) = os.listdir(rescue)
    assert room.startswith(".reserve-") and stat.S_IMODE(os.lstat(rescue / room).st_mode) == 0o600
    connection.refresh_failed(pending, refused=True)
    connection.close()
    store.close()
    assert os.listdir(rescue) == [], "the room held for rescue files was not given back"


def test_a_long_connection_names_rescue_file_is_put_back_by_run_all(db_job: JobFiles) -> None:
    """A valid 100-character name: its rescue file (name cut to fit) is found and put back by run --all."""
    db_job.write_tokens()
    imported = run_job(["connections", "import", LONG_NAME, str(db_job.token_file)], db_job.env())
    assert imported.returncode == 0, imported.stderr
    url = db_job.env()["AWEBER_STORE"]
    add_failover(url)
    process = start(["--connection", LONG_NAME, "run", "--task", "noop"], db_job.env(AWEBER_SHUTDOWN_GRACE="4"))
    wait_for(lambda: token_requests(db_job.standin) == 1, "the refresh was answered")
    time.sleep(0.5)  # the save is retrying; a stop ends the retries with the rescue file
    _, _, stderr = signal_and_wait(process, [signal.SIGTERM])
    assert process.returncode == 73, stderr
    rescues = list((db_job.root / "state" / "rescue").iterdir())
    assert len(rescues) == 1 and len(rescues[0].name) < 255
    drop_failover(url)
    with psycopg.connect(url, autocommit=True) as db:  # another machine's run failed meanwhile: it waits for a person
        db.execute("UPDATE aweber_job.connections SET waiting_for_person = true, last_run_at = now(), "
                   "lease_holder = NULL, lease_until = NULL")
    again = run_job(["run", "--all", "--task", "noop"], db_job.env())
    assert again.returncode == 0, again.stderr
    assert list((db_job.root / "state" / "rescue").iterdir()) == []
    live = db_job.standin.live_refresh_tokens()
    assert stored_refresh_token(url, LONG_NAME) in live
    assert token_requests(db_job.standin) == 1 and invalid_grants(db_job.standin) == 0


def test_room_a_killed_process_filled_but_did_not_rename_is_put_back(stores: Any, pg_url: str, tmp_path: Path) -> None:
    """A process killed between writing the new tokens into its reserved room and the rename: the next run of
    the connection finds them by what the file says inside, and puts them in place."""
    import hashlib
    import json

    stored = make_tokens()
    stores().import_tokens("acme", stored, force=False)
    rotated = make_tokens()
    follows = hashlib.sha256(stored.refresh_token.encode()).hexdigest()[:16]
    room = tmp_path / "state" / "rescue" / ".reserve-0123456789ab"
    room.parent.mkdir(parents=True, mode=0o700)
    document = {**rotated.document, "aweber_job_connection": "acme", "aweber_job_follows": follows}
    room.write_text(json.dumps(document))
    os.chmod(room, 0o600)
    connection = stores().connection("acme")
    assert connection.open().tokens.refresh_token == rotated.refresh_token
    connection.close()
    assert stored_refresh_token(pg_url, "acme") == rotated.refresh_token
    assert os.listdir(room.parent) == []


def test_the_count_of_due_connections_is_what_a_fleet_run_would_claim(stores: Any, pg_url: str) -> None:
    """count_due (the live line's total on a terminal) counts the connections due now: three new ones, then one
    fewer once one has run, none while a live process holds the others' leases."""
    for name in ("acme", "bolt", "coda"):
        stores().import_tokens(name, make_tokens(), force=False)
    store = stores()
    assert store.count_due(86_400.0, since=store.run_start()) == 3
    sql(pg_url, "UPDATE aweber_job.connections SET last_run_at = now(), last_exit_code = 0 WHERE name = 'acme'")
    assert store.count_due(86_400.0, since=store.run_start()) == 2
    sql(pg_url, "UPDATE aweber_job.connections SET lease_holder = 'elsewhere:1:x', lease_until = now() + "
                "interval '1 hour' WHERE name <> 'acme'")
    assert store.count_due(86_400.0, since=store.run_start()) == 0
