"""The PostgreSQL connection store against a real server: schema, leases and fences, the refresh marker,
rescue files, encryption at rest, and a database URL whose password never shows."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from job.auth.tokens import TokenFile, parse_token_file
from job.errors import (
    AuthError,
    ConfigError,
    LockBusyError,
    StorageError,
    TemporaryError,
    TokenFileError,
    TokenNotSavedError,
    UsageError,
)
from job.logs import REDACTOR
from tests.support.database import PG_SERVER_URL
from tests.support.jobs import REPO

psycopg = pytest.importorskip("psycopg")
fernet = pytest.importorskip("cryptography.fernet")

from job.stores.postgres import PostgresStore  # noqa: E402 - only once psycopg is known to be there

KEY_A = fernet.Fernet.generate_key().decode()
KEY_B = fernet.Fernet.generate_key().decode()


def make_tokens(**extra: Any) -> TokenFile:
    """A token file with fresh random tokens (each test's own, so a leak is recognisable)."""
    document = {
        "access_token": "acc-" + secrets.token_urlsafe(24),
        "refresh_token": "ref-" + secrets.token_urlsafe(24),
        "token_type": "bearer",
        "expires_at": 1_900_000_000.5,
        **extra,
    }
    return parse_token_file(json.dumps(document).encode(), "test tokens")


def sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """One statement on a connection of the test's own, outside the code under test."""
    with psycopg.connect(url, autocommit=True) as db:
        cursor = db.execute(query, params or None)
        return list(cursor.fetchall()) if cursor.description else []


def stored_refresh_token(url: str, name: str) -> str:
    (data,) = sql(url, "SELECT tokens FROM aweber_job.connections WHERE name = %s", name)[0]
    return str(json.loads(bytes(data))["refresh_token"])


@pytest.fixture
def stores(pg_url: str, tmp_path: Path) -> Iterator[Any]:
    """A factory of stores on the test database, each closed at the end; the schema is created."""
    made: list[PostgresStore] = []

    def make(**kwargs: Any) -> PostgresStore:
        kwargs.setdefault("state_dir", tmp_path / "state")
        kwargs.setdefault("lock_timeout_seconds", 2.0)
        store = PostgresStore(kwargs.pop("url", pg_url), **kwargs)
        made.append(store)
        return store

    make().init_schema()
    yield make
    for store in made:
        store.close()


# ---- schema ----------------------------------------------------------------------------------------

def test_init_schema_is_idempotent_and_every_other_call_needs_it(pg_url: str, tmp_path: Path) -> None:
    store = PostgresStore(pg_url, state_dir=tmp_path)
    try:
        with pytest.raises(ConfigError) as raised:
            store.list_connections()
        assert raised.value.exit_code == 78
        assert "has no schema: run aweber-job store init" in str(raised.value)
        with pytest.raises(ConfigError, match="store init"):
            store.connection("acme").open()
        assert store.init_schema() == 4
        assert store.init_schema() == 4
        assert sql(pg_url, "SELECT version FROM aweber_job.schema_version") == [(4,)]
        assert store.list_connections() == []
    finally:
        store.close()


def test_init_schema_from_many_machines_at_once_on_an_empty_database(pg_url: str, tmp_path: Path) -> None:
    count = 6
    barrier = threading.Barrier(count)
    results: list[object] = []

    def init() -> None:
        store = PostgresStore(pg_url, state_dir=tmp_path)
        try:
            store.database.connection()  # connected before the race starts
            barrier.wait()
            results.append(store.init_schema())
        except Exception as exc:  # noqa: BLE001 - the test reports any failure below
            results.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=init) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [4] * count
    assert sql(pg_url, "SELECT version FROM aweber_job.schema_version") == [(4,)]


def test_a_schema_newer_than_the_code_is_refused_naming_both_versions(stores: Any, pg_url: str) -> None:
    sql(pg_url, "UPDATE aweber_job.schema_version SET version = 7")
    for call in (lambda s: s.list_connections(), lambda s: s.init_schema()):
        with pytest.raises(ConfigError) as raised:
            call(stores())
        assert "schema version 7" in str(raised.value) and "version 4" in str(raised.value)


# ---- leases: claim, wait, busy, dead holders ---------------------------------------------------------

HOLDER_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from job.stores.postgres import PostgresStore
    store = PostgresStore(sys.argv[1], state_dir=Path(sys.argv[2]))
    connection = store.connection(sys.argv[3], wait=False)
    connection.open()
    print("held", flush=True)
    if sys.stdin.readline().strip() == "close":
        connection.close()
        store.close()
    os._exit(0)   # "exit": as if killed, the lease is never released
""")


def start_holder(url: str, tmp_path: Path, name: str) -> subprocess.Popen[str]:
    """A real process on this host that claims ``name`` and waits for "close" or "exit" on stdin."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, url, str(tmp_path / "child-state"), name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line == "held\n", child.stderr.read() if child.stderr else line
    return child


def finish(child: subprocess.Popen[str], how: str) -> None:
    assert child.stdin is not None
    child.stdin.write(how + "\n")
    child.stdin.flush()
    assert child.wait(20) == 0


def test_a_live_holder_makes_others_wait_then_busy_naming_it(stores: Any, pg_url: str, tmp_path: Path) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    child = start_holder(pg_url, tmp_path, "acme")
    try:
        with pytest.raises(LockBusyError) as raised:
            stores().connection("acme", wait=False).open()
        assert raised.value.exit_code == 75
        assert f"pid {child.pid}" in str(raised.value) and "connection 'acme'" in str(raised.value)

        started = time.monotonic()
        with pytest.raises(LockBusyError, match="waited"):
            stores(lock_timeout_seconds=0.6).connection("acme").open()
        assert 0.5 <= time.monotonic() - started < 5

        assert stores().list_connections()[0].lease_holder is not None
        # Released while another waits: the waiter gets it.
        waiter = stores(lock_timeout_seconds=20).connection("acme")
        timer = threading.Timer(0.5, finish, (child, "close"))
        timer.start()
        started = time.monotonic()
        waiter.open()
        assert 0.3 < time.monotonic() - started < 10
        timer.join()
        waiter.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert stores().list_connections()[0].lease_holder is None


def test_a_dead_holder_on_this_host_is_taken_over_at_once(
    stores: Any, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    child = start_holder(pg_url, tmp_path, "acme")
    finish(child, "exit")
    ((fence_before,),) = sql(pg_url, "SELECT fence FROM aweber_job.connections")
    with caplog.at_level(logging.WARNING):
        connection = stores().connection("acme", wait=False)
        connection.open()
    assert f"pid {child.pid}" in caplog.text and "no longer running" in caplog.text
    assert sql(pg_url, "SELECT fence FROM aweber_job.connections") == [(fence_before + 1,)]
    connection.close()


def test_a_holder_on_another_host_is_never_judged_by_local_pids(stores: Any, pg_url: str) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    dead_pid = int(child.stdout)
    sql(pg_url, "UPDATE aweber_job.connections SET lease_holder = %s, lease_until = now() + interval '1 hour'",
        f"elsewhere.example:{dead_pid}:abcd")
    with pytest.raises(LockBusyError, match=f"host elsewhere.example pid {dead_pid}"):
        stores().connection("acme", wait=False).open()
    # Once its lease has run out (database time), anyone may claim it.
    sql(pg_url, "UPDATE aweber_job.connections SET lease_until = now() - interval '1 second'")
    connection = stores().connection("acme", wait=False)
    connection.open()
    connection.close()


def test_a_holder_with_this_hostname_in_another_pid_namespace_is_not_judged_by_local_pids(
    stores: Any, pg_url: str
) -> None:
    """Two containers may share a hostname; a pid there means nothing here, so only the lease decides."""
    import socket

    stores().import_tokens("acme", make_tokens(), force=False)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    dead_pid = int(child.stdout)
    sql(pg_url, "UPDATE aweber_job.connections SET lease_holder = %s, lease_until = now() + interval '1 hour'",
        f"{socket.gethostname()}/0badb00t-4026531836:{dead_pid}:abcd")
    with pytest.raises(LockBusyError):
        stores().connection("acme", wait=False).open()


def test_unknown_and_revoked_connections(stores: Any) -> None:
    store = stores()
    with pytest.raises(TokenFileError) as raised:
        store.connection("nobody").open()
    assert raised.value.exit_code == 65
    assert "connection 'nobody' is not in the store" in str(raised.value)
    assert "login" in str(raised.value) and "connections import" in str(raised.value)

    store.import_tokens("acme", make_tokens(), force=False)
    store.mark_revoked("acme")
    with pytest.raises(AuthError) as revoked:
        store.connection("acme").open()
    assert revoked.value.exit_code == 77 and "revoked" in str(revoked.value)
    view = store.read("acme")
    assert view.tokens is None and view.info.revoked


# ---- the refresh: marker, fence, rescue files ----------------------------------------------------------

def test_a_refresh_that_never_recorded_its_end_is_explained(
    stores: Any, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = make_tokens()
    stores().import_tokens("acme", tokens, force=False)
    first = stores()
    connection = first.connection("acme")
    opened = connection.open()
    assert opened.explanation is None
    connection.begin_refresh(opened.tokens)
    first.close()  # killed mid-refresh: the database connection drops, nothing is released
    sql(pg_url, "UPDATE aweber_job.connections SET lease_until = now()")

    with caplog.at_level(logging.WARNING):
        again = stores().connection("acme")
        reopened = again.open()
    assert reopened.explanation is not None and "never recorded its end" in reopened.explanation
    assert first.holder.split(":")[1] in reopened.explanation
    assert "never recorded its end" in caplog.text and "acme" in caplog.text
    assert not reopened.spent_for_sure
    assert stores().read("acme").marker is not None

    pending = again.begin_refresh(reopened.tokens)
    again.refresh_failed(pending, refused=True)
    again.close()
    assert sql(pg_url, "SELECT refreshing_from FROM aweber_job.connections") == [(None,)]
    assert stores().connection("acme").open().explanation is None


def test_a_save_after_another_run_took_over_is_refused_into_a_rescue_file(
    stores: Any, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    slow_store = stores(state_dir=tmp_path / "slow")
    slow = slow_store.connection("acme")
    pending = slow.begin_refresh(slow.open().tokens)
    sql(pg_url, "UPDATE aweber_job.connections SET lease_until = now()")  # its lease ran out

    fast = stores().connection("acme")
    newer = make_tokens()
    fast.save(fast.begin_refresh(fast.open().tokens), newer)
    fast.close()

    late = make_tokens()
    with pytest.raises(TokenNotSavedError) as raised:
        slow.save(pending, late)
    assert raised.value.exit_code == 73
    message = str(raised.value)
    assert "connection 'acme'" in message and "lease was lost" in message
    assert stored_refresh_token(pg_url, "acme") == newer.refresh_token  # untouched
    rescues = list((tmp_path / "slow" / "rescue").iterdir())
    assert len(rescues) == 1 and str(rescues[0]) in message
    assert late.refresh_token not in message and late.access_token not in message
    assert rescues[0].stat().st_mode & 0o777 == 0o600
    assert json.loads(rescues[0].read_bytes())["refresh_token"] == late.refresh_token
    with pytest.raises(TemporaryError, match="lease lost"):
        slow.save_state("t", {"x": 1})

    # Its next run on that machine finds the rescue file follows a token that is no longer stored: left alone.
    with caplog.at_level(logging.WARNING):
        reopened = stores(state_dir=tmp_path / "slow").connection("acme")
        assert reopened.open().tokens.refresh_token == newer.refresh_token
    assert rescues[0].exists() and str(rescues[0]) in caplog.text and "left alone" in caplog.text
    reopened.close()


def test_a_rescue_file_that_follows_the_stored_token_is_put_back(
    stores: Any, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    slow = stores().connection("acme")
    pending = slow.begin_refresh(slow.open().tokens)
    sql(pg_url, "UPDATE aweber_job.connections SET lease_until = now()")
    other = stores().connection("acme")
    other.open()  # takes the lease over, saves nothing
    other.close()
    rotated = make_tokens()
    with pytest.raises(TokenNotSavedError):
        slow.save(pending, rotated)
    (rescue,) = (tmp_path / "state" / "rescue").iterdir()

    with caplog.at_level(logging.INFO):
        again = stores().connection("acme")
        opened = again.open()
    assert opened.tokens.refresh_token == rotated.refresh_token
    assert stored_refresh_token(pg_url, "acme") == rotated.refresh_token
    assert not rescue.exists() and "put the tokens of rescue file" in caplog.text
    assert opened.explanation is None  # the marker named the token the rescue file replaced
    assert sql(pg_url, "SELECT refreshing_from FROM aweber_job.connections") == [(None,)]
    again.close()


def test_a_rescue_file_holding_the_stored_tokens_is_removed(stores: Any, tmp_path: Path) -> None:
    tokens = make_tokens()
    stores().import_tokens("a.b", tokens, force=False)
    rescue_dir = tmp_path / "state" / "rescue"
    rescue_dir.mkdir(parents=True)
    same = rescue_dir / f"a%2Eb.20260101T000000.000000Z.from-{'0' * 16}.json"
    same.write_bytes(tokens.to_bytes())
    same.chmod(0o600)
    other_connection = rescue_dir / f"a.20260101T000000.000000Z.from-{'0' * 16}.json"
    other_connection.write_bytes(make_tokens().to_bytes())
    other_connection.chmod(0o600)
    connection = stores().connection("a.b")
    connection.open()
    connection.close()
    assert not same.exists() and other_connection.exists()


def test_read_only_database_refuses_before_anything_is_sent(stores: Any, pg_url: str) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    store = stores()
    connection = store.connection("acme")
    opened = connection.open()
    dbname = pg_url.rsplit("/", 1)[-1]
    sql(PG_SERVER_URL, f"ALTER DATABASE {dbname} SET default_transaction_read_only = on")
    # The store's connection is cut (a failover): it connects again, and the new connection is read-only.
    sql(PG_SERVER_URL, "SELECT pg_terminate_backend(%s)", store.database.current.info.backend_pid)
    with pytest.raises(StorageError) as raised:
        connection.begin_refresh(opened.tokens)
    assert raised.value.exit_code == 73 and "read-only" in str(raised.value)
    assert sql(pg_url, "SELECT refreshing_from FROM aweber_job.connections") == [(None,)]


def test_begin_refresh_after_the_lease_was_lost_sends_nothing(stores: Any, pg_url: str) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    connection = stores().connection("acme")
    opened = connection.open()
    sql(pg_url, "UPDATE aweber_job.connections SET fence = fence + 1")
    with pytest.raises(TemporaryError, match="lease lost") as raised:
        connection.begin_refresh(opened.tokens)
    assert raised.value.exit_code == 75


def test_a_save_that_cannot_be_written_before_the_deadline_is_rescued_then_put_back(
    stores: Any, pg_url: str, tmp_path: Path
) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    store = stores(save_deadline_seconds=1.0)
    connection = store.connection("acme")
    pending = connection.begin_refresh(connection.open().tokens)
    dbname = pg_url.rsplit("/", 1)[-1]
    sql(PG_SERVER_URL, f"ALTER DATABASE {dbname} SET default_transaction_read_only = on")
    sql(PG_SERVER_URL, "SELECT pg_terminate_backend(%s)", store.database.current.info.backend_pid)
    rotated = make_tokens()
    started = time.monotonic()
    with pytest.raises(TokenNotSavedError) as raised:
        connection.save(pending, rotated)
    assert 0.5 < time.monotonic() - started < 10
    assert "read-only" in str(raised.value) and "rescue" in str(raised.value)
    connection.close()

    sql(PG_SERVER_URL, f"ALTER DATABASE {dbname} RESET default_transaction_read_only")
    sql(pg_url, "UPDATE aweber_job.connections SET lease_until = now()")  # the dead run's lease runs out
    again = stores().connection("acme")
    assert again.open().tokens.refresh_token == rotated.refresh_token
    assert stored_refresh_token(pg_url, "acme") == rotated.refresh_token
    assert list((tmp_path / "state" / "rescue").iterdir()) == []
    again.close()


# ---- task state, keep_alive, record_run ---------------------------------------------------------------

def test_task_state_is_kept_per_task(stores: Any) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    connection = stores().connection("acme")
    connection.open()
    assert connection.load_state("new-subscribers") == {}
    connection.save_state("new-subscribers", {"since": "2026-01-01", "n": [1, 2]})
    connection.save_state("other", {"x": True})
    connection.close()
    again = stores().connection("acme")
    again.open()
    assert again.load_state("new-subscribers") == {"since": "2026-01-01", "n": [1, 2]}
    assert again.load_state("other") == {"x": True}
    again.close()


def test_keep_alive_renews_only_past_half_the_lease(stores: Any, pg_url: str) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    store = stores(lease_seconds=2.0)
    connection = store.connection("acme")
    connection.open()
    (until,) = sql(pg_url, "SELECT lease_until FROM aweber_job.connections")[0]
    backend = store.database.current.info.backend_pid
    connection.keep_alive()
    assert store.database.current.info.backend_pid == backend
    sql(PG_SERVER_URL, "SELECT pg_terminate_backend(%s)", backend)
    connection.keep_alive()  # no database trip: the cut connection is not even noticed
    assert store.database.current.info.backend_pid == backend
    assert sql(pg_url, "SELECT lease_until FROM aweber_job.connections") == [(until,)]
    time.sleep(1.1)
    connection.keep_alive()
    (renewed,) = sql(pg_url, "SELECT lease_until FROM aweber_job.connections")[0]
    assert renewed > until
    connection.close()


def test_record_run_and_list(stores: Any, pg_url: str) -> None:
    store = stores()
    store.import_tokens("acme", make_tokens(account_id=123456), force=False)
    store.import_tokens("beta", make_tokens(), force=False)
    store.record_run("acme", 0, 3600)
    connection = store.connection("beta")
    connection.open()
    acme, beta = store.list_connections()
    assert (acme.name, acme.account_id, acme.last_exit_code, acme.lease_holder) == ("acme", 123456, 0, None)
    assert acme.access_expires_at == 1_900_000_000.5
    assert acme.last_run_at is not None and acme.next_run_at is not None
    assert 3590 < acme.next_run_at - acme.last_run_at < 3610
    assert beta.lease_holder == store.holder and beta.last_run_at is None
    assert sql(pg_url, "SELECT application_name FROM pg_stat_activity WHERE pid = %s",
               store.database.current.info.backend_pid) == [("aweber-job",)]
    connection.close()
    assert store.list_connections()[1].lease_holder is None


# ---- import, login, remove ----------------------------------------------------------------------------

def test_import_refuses_an_existing_connection_without_force(stores: Any, pg_url: str) -> None:
    store = stores()
    first, second = make_tokens(), make_tokens()
    store.import_tokens("acme", first, force=False)
    with pytest.raises(UsageError) as raised:
        store.import_tokens("acme", second, force=False)
    assert raised.value.exit_code == 64
    assert "connection 'acme'" in str(raised.value) and "--force" in str(raised.value)
    with pytest.raises(UsageError, match="--force"):
        store.put_tokens("acme", second, replace=False)
    assert stored_refresh_token(pg_url, "acme") == first.refresh_token

    holder = stores().connection("acme")
    holder.open()
    with pytest.raises(LockBusyError):
        store.import_tokens("acme", second, force=True)
    holder.close()
    store.import_tokens("acme", second, force=True)
    assert stored_refresh_token(pg_url, "acme") == second.refresh_token
    third = make_tokens()
    store.put_tokens("acme", third, replace=True)
    assert stored_refresh_token(pg_url, "acme") == third.refresh_token


def test_remove_needs_a_revoke_or_force_and_never_takes_a_live_lease(stores: Any) -> None:
    store = stores()
    store.import_tokens("acme", make_tokens(), force=False)
    with pytest.raises(UsageError) as raised:
        store.remove("acme", force=False)
    assert "--connection acme revoke" in str(raised.value) and "--force" in str(raised.value)
    holder = stores().connection("acme")
    holder.open()
    with pytest.raises(LockBusyError):
        store.remove("acme", force=True)
    holder.close()
    store.mark_revoked("acme")
    store.remove("acme", force=False)
    assert store.list_connections() == []
    with pytest.raises(TokenFileError):
        store.remove("acme", force=True)


# ---- encryption -----------------------------------------------------------------------------------------

def test_encrypted_tokens_never_appear_in_the_row_or_a_dump(stores: Any, pg_url: str, tmp_path: Path) -> None:
    tokens = make_tokens()
    store = stores(keys=[KEY_A])
    store.import_tokens("acme", tokens, force=False)
    connection = store.connection("acme")
    rotated = make_tokens()
    connection.save(connection.begin_refresh(connection.open().tokens), rotated)
    connection.close()
    ((raw, encrypted),) = sql(pg_url, "SELECT tokens, encrypted FROM aweber_job.connections")
    assert encrypted is True
    for secret in (rotated.refresh_token, rotated.access_token, tokens.refresh_token):
        assert secret.encode() not in bytes(raw)
    dump = subprocess.run(["/usr/bin/pg_dump", "--data-only", pg_url], capture_output=True, check=True,
                          timeout=60).stdout
    assert b"aweber_job" in dump and b"acme" in dump  # the row is in the dump
    for secret in (rotated.refresh_token, rotated.access_token, rotated.refresh_token.encode().hex()):
        assert secret.encode() not in dump
    assert store.list_connections()[0].encrypted
    assert stores(keys=[KEY_A]).read("acme").tokens.refresh_token == rotated.refresh_token  # type: ignore[union-attr]
    # Without a key, list still works (expiry has its own column).
    assert stores().list_connections()[0].access_expires_at == 1_900_000_000.5


def test_a_wrong_or_missing_key_names_the_connection(stores: Any) -> None:
    stores(keys=[KEY_A]).import_tokens("acme", make_tokens(), force=False)
    for keys in ([KEY_B], []):
        with pytest.raises(ConfigError) as raised:
            stores(keys=keys).connection("acme").open()
        assert raised.value.exit_code == 78 and "connection 'acme'" in str(raised.value)
    assert stores().list_connections()[0].lease_holder is None  # the failed opens released their lease
    with pytest.raises(ConfigError, match="not a Fernet key"):
        stores(keys=["not-a-key-at-all"])


def test_rotate_key_then_the_old_key_can_go(stores: Any, pg_url: str) -> None:
    old = stores(keys=[KEY_A])
    old.import_tokens("acme", make_tokens(), force=False)
    plain = make_tokens()
    stores().import_tokens("plain", plain, force=False)
    with pytest.raises(ConfigError):
        stores().rotate_key()
    assert stores(keys=[KEY_B, KEY_A]).rotate_key() == 2
    assert sql(pg_url, "SELECT bool_and(encrypted) FROM aweber_job.connections") == [(True,)]
    new_only = stores(keys=[KEY_B])
    assert new_only.read("plain").tokens.refresh_token == plain.refresh_token  # type: ignore[union-attr]
    connection = new_only.connection("acme")
    connection.open()
    connection.close()
    with pytest.raises(ConfigError, match="connection 'acme'"):
        stores(keys=[KEY_A]).read("acme")


def fernet_raw(value: bytes) -> bytes:
    """The bytes a Fernet token stands for (it is URL-safe base64 text)."""
    import base64

    return base64.urlsafe_b64decode(value)


def as_fernet_text(raw: bytes) -> bytes:
    import base64

    return base64.urlsafe_b64encode(raw)


def stored_value(url: str, name: str) -> bytes:
    (data,) = sql(url, "SELECT tokens FROM aweber_job.connections WHERE name = %s", name)[0]
    return bytes(data)


def put_value(url: str, name: str, value: bytes, *, encrypted: bool = True) -> None:
    sql(url, "UPDATE aweber_job.connections SET tokens = %s, encrypted = %s WHERE name = %s", value, encrypted, name)


def make_version_2_store(url: str) -> None:
    """The store as schema version 2 made it, before sealed values were bound to their connection."""
    from job.stores.postgres.schema import MIGRATIONS

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DROP SCHEMA IF EXISTS aweber_job CASCADE")
        db.execute("CREATE SCHEMA aweber_job")
        db.execute("CREATE TABLE aweber_job.schema_version "
                   "(version integer NOT NULL, upgraded_at timestamptz NOT NULL DEFAULT now())")
        for version in (1, 2):
            for statement in MIGRATIONS[version]:
                db.execute(statement)
        db.execute("INSERT INTO aweber_job.schema_version (version) VALUES (2)")


def add_version_2_row(url: str, name: str, value: bytes, *, encrypted: bool) -> None:
    """A row as aweber-job wrote it at schema version 2: plain, or the token file encrypted as it is."""
    sql(url, "INSERT INTO aweber_job.connections (name, tokens, encrypted) VALUES (%s, %s, %s)",
        name, value, encrypted)


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY_A not in text and KEY_B not in text


def test_check_keys_proves_the_keys_open_the_store_and_names_only_fingerprints(stores: Any, pg_url: str) -> None:
    """No key for an encrypted store, or keys that open none of it, is a ConfigError (78) naming the store."""
    from job.auth.tokens import fingerprint

    empty = stores()
    empty.check_keys()  # nothing stored: any keys, or none, will do
    stores(keys=[KEY_B]).check_keys()
    stores(keys=[KEY_A]).import_tokens("acme", make_tokens(), force=False)
    ((fence_before,),) = sql(pg_url, "SELECT fence FROM aweber_job.connections")
    for keys in ([], [KEY_B]):
        store = stores(keys=keys)
        with pytest.raises(ConfigError) as raised:
            store.check_keys()
        message = str(raised.value)
        assert raised.value.exit_code == 78 and store.description in message
        assert_no_key(message, repr(raised.value))
        if keys:
            assert fingerprint(KEY_B) in message
    stores(keys=[KEY_A]).check_keys()
    stores(keys=[KEY_B, KEY_A]).check_keys()
    # Checking claims nothing.
    assert sql(pg_url, "SELECT fence, lease_holder FROM aweber_job.connections") == [(fence_before, None)]


def test_check_keys_refuses_a_key_for_a_store_that_holds_only_plain_rows(stores: Any) -> None:
    """A key set before rotate-key encrypted the store would refuse every row: that is the store's problem too."""
    stores().import_tokens("acme", make_tokens(), force=False)
    stores().check_keys()
    with pytest.raises(ConfigError) as raised:
        stores(keys=[KEY_A]).check_keys()
    assert raised.value.exit_code == 78 and "rotate-key" in str(raised.value)
    assert stores(keys=[KEY_A]).rotate_key() == 1
    stores(keys=[KEY_A]).check_keys()


def test_a_damaged_newest_value_does_not_make_the_right_keys_look_wrong(stores: Any, pg_url: str) -> None:
    """check_keys judges the keys, not one row: a newest value that is only damaged leaves them proved by the next."""
    store = stores(keys=[KEY_A])
    store.import_tokens("older", make_tokens(), force=False)
    store.import_tokens("newest", make_tokens(), force=False)
    raw = bytearray(fernet_raw(stored_value(pg_url, "newest")))
    raw[40] ^= 0x01
    put_value(pg_url, "newest", as_fernet_text(bytes(raw)))
    sql(pg_url, "UPDATE aweber_job.connections SET updated_at = now() + interval '1 minute' WHERE name = 'newest'")
    stores(keys=[KEY_A]).check_keys()
    with pytest.raises(ConfigError):
        stores(keys=[KEY_B]).check_keys()


def test_a_value_copied_from_another_row_is_refused_naming_the_connection(stores: Any, pg_url: str) -> None:
    """Sealed tokens are bound to their connection: copied into another row they open there for no one."""
    store = stores(keys=[KEY_A])
    store.import_tokens("acme", make_tokens(), force=False)
    beta = make_tokens()
    store.import_tokens("beta", beta, force=False)
    put_value(pg_url, "acme", stored_value(pg_url, "beta"))
    for call in (lambda s: s.connection("acme").open(), lambda s: s.read("acme"), lambda s: s.rotate_key()):
        with pytest.raises(ConfigError) as raised:
            call(stores(keys=[KEY_A]))
        message = str(raised.value)
        assert raised.value.exit_code == 78
        assert "connection 'acme'" in message and "another connection" in message
        assert beta.refresh_token not in message and beta.access_token not in message
        assert_no_key(message)
    assert stores(keys=[KEY_A]).read("beta").tokens.refresh_token == beta.refresh_token  # type: ignore[union-attr]
    assert stores().list_connections()[0].lease_holder is None


def test_an_unencrypted_row_is_refused_while_a_key_is_set_until_rotate_key_encrypts_it(
    stores: Any, pg_url: str
) -> None:
    """With a store key, a plain row could have been written by anyone who can write the table: refused, as a
    matter of the keys (a StoreKeyError: rotate-key is the remedy, not the connection)."""
    from job.errors import StoreKeyError

    stores(keys=[KEY_A]).import_tokens("sealed", make_tokens(), force=False)
    plain = make_tokens()
    stores().import_tokens("acme", plain, force=False)
    assert stores().read("acme").tokens.refresh_token == plain.refresh_token  # type: ignore[union-attr]
    for call in (lambda s: s.connection("acme").open(), lambda s: s.read("acme")):
        with pytest.raises(StoreKeyError) as raised:
            call(stores(keys=[KEY_A]))
        message = str(raised.value)
        assert raised.value.exit_code == 78 and "connection 'acme'" in message and "unencrypted" in message
        assert "rotate-key" in message and plain.refresh_token not in message
    assert stores(keys=[KEY_A]).rotate_key() == 2
    assert stores(keys=[KEY_A]).read("acme").tokens.refresh_token == plain.refresh_token  # type: ignore[union-attr]


def test_a_fresh_store_accepts_only_bound_values(stores: Any, pg_url: str, tmp_path: Path) -> None:
    """A store that had no connections when it got schema version 3 never accepts an unbound value."""
    tokens = make_tokens()
    stores(keys=[KEY_A]).import_tokens("acme", tokens, force=False)
    unbound = fernet.Fernet(KEY_A).encrypt(tokens.to_bytes())
    put_value(pg_url, "acme", unbound)
    with pytest.raises(ConfigError) as raised:
        stores(keys=[KEY_A]).connection("acme").open()
    assert raised.value.exit_code == 78 and "connection 'acme'" in str(raised.value)
    assert "bound" in str(raised.value)
    # Nor does a version 2 store that held no connection when it was upgraded.
    make_version_2_store(pg_url)
    assert stores().init_schema() == 4
    add_version_2_row(pg_url, "acme", unbound, encrypted=True)
    with pytest.raises(ConfigError, match="connection 'acme'"):
        stores(keys=[KEY_A]).read("acme")


def test_an_upgraded_store_accepts_its_old_values_until_rotate_key_binds_them(
    stores: Any, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After the upgrade, unbound ciphertext and plain rows open with a warning to run rotate-key, which binds
    them all; from then on such values are refused."""
    make_version_2_store(pg_url)
    sealed, plain = make_tokens(), make_tokens()
    add_version_2_row(pg_url, "sealed", fernet.Fernet(KEY_A).encrypt(sealed.to_bytes()), encrypted=True)
    add_version_2_row(pg_url, "plain", plain.to_bytes(), encrypted=False)
    with pytest.raises(ConfigError, match="store init"):
        stores(keys=[KEY_A]).read("sealed")
    assert stores().init_schema() == 4
    assert sql(pg_url, "SELECT version FROM aweber_job.schema_version") == [(4,)]
    with caplog.at_level(logging.WARNING):
        connection = stores(keys=[KEY_A]).connection("sealed")
        assert connection.open().tokens.refresh_token == sealed.refresh_token
        connection.close()
        assert stores(keys=[KEY_A]).read("plain").tokens.refresh_token == plain.refresh_token  # type: ignore[union-attr]
    for name in ("sealed", "plain"):
        assert any(f"connection '{name}'" in record.message and "aweber-job store rotate-key" in record.message
                   for record in caplog.records if record.levelno == logging.WARNING), name
    assert stores(keys=[KEY_A]).rotate_key() == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for name, tokens in (("sealed", sealed), ("plain", plain)):
            assert stores(keys=[KEY_A]).read(name).tokens.refresh_token == tokens.refresh_token  # type: ignore[union-attr]
    assert "rotate-key" not in caplog.text
    # The one-time allowance is spent: the same old values are refused now.
    put_value(pg_url, "sealed", fernet.Fernet(KEY_A).encrypt(sealed.to_bytes()))
    put_value(pg_url, "plain", plain.to_bytes(), encrypted=False)
    for name in ("sealed", "plain"):
        with pytest.raises(ConfigError) as raised:
            stores(keys=[KEY_A]).connection(name).open()
        assert raised.value.exit_code == 78 and f"connection '{name}'" in str(raised.value)
    # Without a key, a plain row still opens as it always did.
    assert stores().read("plain").tokens.refresh_token == plain.refresh_token  # type: ignore[union-attr]


def test_a_damaged_value_is_called_damaged_not_a_wrong_key(stores: Any, pg_url: str) -> None:
    """Broken Fernet structure, or a failed integrity check while the same keys open the store, is damage."""
    store = stores(keys=[KEY_A])
    store.import_tokens("acme", make_tokens(), force=False)
    store.import_tokens("beta", make_tokens(), force=False)
    good = stored_value(pg_url, "acme")
    raw = fernet_raw(good)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x04
    wrong_version = bytearray(raw)
    wrong_version[0] = 0x81
    damages = {
        "a flipped bit": as_fernet_text(bytes(flipped)),
        "cut short": as_fernet_text(raw[:-5]),
        "cut by a whole block": as_fernet_text(raw[:-48] + raw[-32:]),
        "cut mid-text": good[:-3],
        "not base64": good[:20] + b"*" + good[21:],
        "a wrong version byte": as_fernet_text(bytes(wrong_version)),
        "empty": b"",
    }
    for what, value in damages.items():
        put_value(pg_url, "acme", value)
        with pytest.raises(ConfigError) as raised:
            stores(keys=[KEY_A]).connection("acme").open()
        message = str(raised.value)
        assert raised.value.exit_code == 78 and "connection 'acme'" in message, what
        assert "damaged" in message and "not among" not in message, (what, message)
        assert_no_key(message)
    assert stores().list_connections()[0].lease_holder is None


def test_a_value_sealed_with_a_key_not_given_says_so_and_is_a_store_key_error(stores: Any, pg_url: str) -> None:
    """A whole value that no given key opens, where the keys are wrong for it, is a StoreKeyError naming the
    connection and how many keys were given, never a key."""
    from job.auth.tokens import fingerprint
    from job.errors import StoreKeyError

    stores(keys=[KEY_A]).import_tokens("acme", make_tokens(), force=False)
    with pytest.raises(StoreKeyError) as raised:
        stores(keys=[KEY_B]).connection("acme").open()
    message = str(raised.value)
    assert raised.value.exit_code == 78 and "connection 'acme'" in message and "not among the 1 store key" in message
    assert_no_key(message)
    # Even while the given key opens other connections: the row was sealed with a key no longer given.
    stores(keys=[KEY_B]).import_tokens("beta", make_tokens(), force=False)
    with pytest.raises(StoreKeyError) as again:
        stores(keys=[KEY_B]).read("acme")
    assert "not among" in str(again.value) and fingerprint(KEY_A) in str(again.value)
    assert_no_key(str(again.value))
    with pytest.raises(StoreKeyError, match="no store key"):
        stores().read("acme")


def test_an_old_value_that_fails_its_check_is_damaged_only_when_the_keys_open_another_row(
    stores: Any, pg_url: str
) -> None:
    """For values sealed before schema version 3 (which key sealed them is not recorded): damaged when the same
    keys open another encrypted row of the store or it cannot be a Fernet token, else sealed with a key not
    among those given."""
    from job.errors import StoreKeyError

    make_version_2_store(pg_url)
    for name in ("acme", "beta"):
        add_version_2_row(pg_url, name, fernet.Fernet(KEY_A).encrypt(make_tokens().to_bytes()), encrypted=True)
    stores().init_schema()
    raw = bytearray(fernet_raw(stored_value(pg_url, "acme")))
    raw[len(raw) // 2] ^= 0x10
    put_value(pg_url, "acme", as_fernet_text(bytes(raw)))
    with pytest.raises(ConfigError) as damaged:
        stores(keys=[KEY_A]).read("acme")
    assert "damaged" in str(damaged.value) and not isinstance(damaged.value, StoreKeyError)
    sql(pg_url, "DELETE FROM aweber_job.connections WHERE name = 'beta'")
    with pytest.raises(StoreKeyError) as unknown:
        stores(keys=[KEY_A]).read("acme")
    assert "not among the 1 store key" in str(unknown.value)
    # A value that cannot be a Fernet token at all is damaged whatever the keys.
    put_value(pg_url, "acme", as_fernet_text(bytes(raw[:-5])))
    with pytest.raises(ConfigError) as broken:
        stores(keys=[KEY_A]).read("acme")
    assert "damaged" in str(broken.value) and not isinstance(broken.value, StoreKeyError)


# ---- the database URL's password ---------------------------------------------------------------------

def test_the_password_never_shows(tmp_path: Path, pg_database: str, caplog: pytest.LogCaptureFixture) -> None:
    password = "pw-" + secrets.token_hex(8)
    dbname = pg_database.rsplit("/", 1)[-1]
    refused_port = f"postgresql://postgres:{password}@127.0.0.1:1/{dbname}"
    no_such_db = f"postgresql://postgres:{password}@127.0.0.1:5432/no_such_database_here"
    texts = []
    with caplog.at_level(logging.DEBUG):
        for url, error in ((refused_port, TemporaryError), (no_such_db, ConfigError)):
            store = PostgresStore(url, state_dir=tmp_path)
            assert password not in store.description and "postgres@127.0.0.1" in store.description
            with pytest.raises(error) as raised:
                store.list_connections()
            texts += [str(raised.value), repr(raised.value), str(raised.value.__cause__)]
            assert raised.value.__suppress_context__  # a traceback never shows psycopg's own exception
            store.close()
    texts.append(caplog.text)
    assert "127.0.0.1:1/" in texts[0] and "no_such_database_here" in texts[3]
    for text in texts:
        assert password not in text
    assert password not in REDACTOR.redact(f"x {password} y")


# ---- packaging: psycopg is loaded only when a PostgreSQL store is made --------------------------------------

def test_psycopg_loads_only_with_a_store_and_its_absence_is_a_config_error(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        import job.stores.postgres
        print("psycopg" in sys.modules, "cryptography" in sys.modules)
        sys.modules["psycopg"] = None
        from job.stores.postgres import PostgresStore
        from job.errors import ConfigError
        try:
            PostgresStore("postgresql://u@127.0.0.1/db", state_dir=".")
        except ConfigError as exc:
            print(exc.exit_code, exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60,
                            check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    loaded, error = result.stdout.splitlines()
    assert loaded == "False False"
    assert error == ("78 configuration error: AWEBER_STORE is a PostgreSQL URL but psycopg is not installed: "
                     "pip install 'aweber-job[postgres]'")


def test_the_database_words_lose_even_a_short_password(tmp_path: Path) -> None:
    """The redactor skips secrets under 6 characters; the store's own reason line still removes its password."""
    store = PostgresStore("postgresql://postgres:pw9@127.0.0.1:1/db", state_dir=tmp_path)
    reason = store.database.reason(
        RuntimeError('connection to "127.0.0.1" failed: password "pw9" rejected\nDETAIL: more'))
    assert "pw9" not in reason and "[redacted]" in reason and "DETAIL" not in reason


def test_an_expiry_or_account_a_column_cannot_hold_is_left_out_not_refused(stores: Any, pg_url: str) -> None:
    store = stores()
    odd = make_tokens(expires_at=1e20, account_id=2**70)
    store.import_tokens("odd", odd, force=False)
    info = store.list_connections()[0]
    assert info.access_expires_at is None and info.account_id is None
    assert stored_refresh_token(pg_url, "odd") == odd.refresh_token
    assert store.read("odd").tokens.expires_at == 1e20  # type: ignore[union-attr]


def test_a_database_gone_mid_run_is_temporary_and_sends_nothing(
    stores: Any, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    store = stores()
    connection = store.connection("acme")
    opened = connection.open()
    pending = connection.begin_refresh(opened.tokens)
    dbname = pg_url.rsplit("/", 1)[-1]
    sql(PG_SERVER_URL, f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
    sql(PG_SERVER_URL, "SELECT pg_terminate_backend(%s)", store.database.current.info.backend_pid)
    with caplog.at_level(logging.DEBUG):
        connection.refresh_failed(pending, refused=False)  # logged, not raised
        with pytest.raises(TemporaryError) as raised:
            connection.begin_refresh(opened.tokens)
        connection.keep_alive()
        connection.close()  # the lease runs out by itself
    assert raised.value.exit_code == 75 and "not currently accepting connections" in str(raised.value)
    assert "cannot clear the refresh marker" in caplog.text
    sql(PG_SERVER_URL, f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
    ((marker, holder),) = sql(pg_url, "SELECT refreshing_from, lease_holder FROM aweber_job.connections")
    assert marker is not None and holder == store.holder


# ---- rows tampered with, and hostile input -------------------------------------------------------------

def test_a_name_of_many_dots_still_gets_a_rescue_file_that_the_next_run_puts_back(
    stores: Any, pg_url: str, tmp_path: Path
) -> None:
    name = "a" + "." * 99  # a valid name whose file-safe form is three times as long
    stores().import_tokens(name, make_tokens(), force=False)
    connection = stores().connection(name)
    pending = connection.begin_refresh(connection.open().tokens)
    sql(pg_url, "UPDATE aweber_job.connections SET fence = fence + 1")  # taken over: the save is refused
    rotated = make_tokens()
    with pytest.raises(TokenNotSavedError) as raised:
        connection.save(pending, rotated)
    connection.close()
    rescues = list((tmp_path / "state" / "rescue").iterdir())
    assert len(rescues) == 1 and len(rescues[0].name) < 255 and str(rescues[0]) in str(raised.value)
    sql(pg_url, "UPDATE aweber_job.connections SET lease_holder = NULL, lease_until = NULL")
    again = stores().connection(name)
    assert again.open().tokens.refresh_token == rotated.refresh_token
    again.close()
    assert not rescues[0].exists()


def test_a_rescue_file_this_run_cannot_use_stops_it_before_the_spent_token_is_sent(
    stores: Any, tmp_path: Path
) -> None:
    from job.stores.durable import token_hash

    tokens = make_tokens()
    stores().import_tokens("acme", tokens, force=False)
    directory = tmp_path / "state" / "rescue"
    directory.mkdir(parents=True, mode=0o700)
    path = directory / f"acme.20261130T000000.000000Z.from-{token_hash(tokens.refresh_token)[:16]}.json"
    path.write_bytes(make_tokens().to_bytes())
    path.chmod(0o644)  # not a file this job wrote: not trusted, yet its name says the stored token is spent
    with pytest.raises(StorageError) as raised:
        stores().connection("acme").open()
    assert raised.value.exit_code == 73
    assert str(path) in str(raised.value) and "not sent" in str(raised.value)


def test_a_task_state_that_is_not_an_object_is_named_not_silently_started_over(stores: Any, pg_url: str) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    for broken in ("[]", "null", '{"new-subscribers": [1, 2]}'):
        sql(pg_url, "UPDATE aweber_job.connections SET task_state = %s::jsonb", broken)
        connection = stores().connection("acme")
        connection.open()
        with pytest.raises(TokenFileError) as raised:
            connection.load_state("new-subscribers")
        connection.close()
        assert raised.value.exit_code == 65 and "'acme'" in str(raised.value), broken


def test_a_lease_held_until_infinity_is_reported_not_a_crash(stores: Any, pg_url: str) -> None:
    stores().import_tokens("acme", make_tokens(), force=False)
    sql(pg_url, "UPDATE aweber_job.connections SET lease_holder = 'elsewhere.example:1:ab', "
                "lease_until = 'infinity'")
    with pytest.raises(LockBusyError, match="infinity"):
        stores().connection("acme", wait=False).open()
