"""The database store from the command line: real processes, the stand-in AWeber, a real PostgreSQL server.

``store init``, ``connections import|list|remove``, and ``--connection NAME login|refresh|run|status|
revoke`` end to end; the library's own behaviour (leases, fences, rescue files, keys) is in
tests/integration/test_pgstore.py, and kills, races and database faults in tests/survival/.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.integration.test_login import own_code
from tests.support.jobs import CONFIDENTIAL_SECRET, JobFiles, invalid_grants, run_job, token_requests

ACCOUNT = 100
LIST = 201
DAY = 86_400
KEY = "tY3ifhj1zMA0B5SBCwqc2V7LTh6r2_VlPExrXAwPXZU="  # a Fernet key made for these tests only
PASSWORD = "pw-for-the-store-5e1c0a"  # trust authentication ignores it; the job must never show it


def with_password(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{PASSWORD}@{parts.hostname}:{parts.port}"))


@pytest.fixture
def db_job(job: JobFiles, pg_url: str) -> JobFiles:
    """A job whose store is the test database (its URL carrying a password), schema created."""
    job.extra_env.update(AWEBER_STORE=with_password(pg_url), AWEBER_STATE_DIR=str(job.root / "state"))
    result = run_job(["store", "init"], job.env())
    assert result.returncode == 0, result.stderr
    assert "schema version 4" in result.stdout
    return job


def import_live_tokens(job: JobFiles, name: str) -> dict[str, object]:
    """Issue live tokens at the stand-in, write them as a token file and import it as ``name``."""
    grant = job.write_tokens()
    result = run_job(["connections", "import", name, str(job.token_file)], job.env())
    assert result.returncode == 0, result.stderr
    return grant


def stored_refresh_token(url: str, name: str) -> str:
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT tokens FROM aweber_job.connections WHERE name = %s", (name,)).fetchone()
    assert row is not None and row[0] is not None
    return str(json.loads(bytes(row[0]))["refresh_token"])


def listing(job: JobFiles) -> dict[str, dict[str, object]]:
    result = run_job(["connections", "list", "--json"], job.env())
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def assert_no_password(*outputs: str) -> None:
    for text in outputs:
        assert PASSWORD not in text


# ---- the token file stays the default: nothing of this reaches it -------------------------------


def test_another_connection_with_the_token_file_is_a_usage_error_naming_aweber_store(job: JobFiles) -> None:
    job.write_tokens()
    for args in (["--connection", "acme", "refresh"], ["status", "--connection", "acme"]):
        result = run_job(args, job.env())
        assert result.returncode == 64, result.stderr
        assert "AWEBER_STORE" in result.stderr
    assert run_job(["refresh"], job.env(AWEBER_CONNECTION="acme")).returncode == 64
    assert token_requests(job.standin) == 0
    # `default` is the token file itself.
    assert run_job(["--connection", "default", "refresh"], job.env()).returncode == 0


def test_store_commands_without_a_database_are_usage_errors(job: JobFiles) -> None:
    for args in (["store", "init"], ["connections", "list"]):
        result = run_job(args, job.env())
        assert result.returncode == 64, result.stderr
        assert "AWEBER_STORE" in result.stderr


def test_connection_is_refused_on_commands_that_act_on_no_connection(job: JobFiles) -> None:
    result = run_job(["tasks", "--connection", "acme"], job.env())
    assert result.returncode == 64
    assert "--connection" in result.stderr


# ---- import, list, refresh, run --------------------------------------------------------------------


def test_import_renames_the_file_and_refuses_the_same_name_twice_without_force(db_job: JobFiles) -> None:
    import_live_tokens(db_job, "acme")
    assert not db_job.token_file.exists()
    renamed = list(db_job.token_file.parent.glob("tokens.json.imported-*"))
    assert len(renamed) == 1 and renamed[0].name[len("tokens.json.imported-"):].endswith("Z")
    first = stored_refresh_token(db_job.env()["AWEBER_STORE"], "acme")

    second = db_job.write_tokens()
    refused = run_job(["connections", "import", "acme", str(db_job.token_file)], db_job.env())
    assert refused.returncode == 64, refused.stderr
    assert "--force" in refused.stderr
    assert db_job.token_file.exists(), "a refused import must leave the file where it was"
    assert stored_refresh_token(db_job.env()["AWEBER_STORE"], "acme") == first

    forced = run_job(["connections", "import", "acme", str(db_job.token_file), "--force"], db_job.env())
    assert forced.returncode == 0, forced.stderr
    assert stored_refresh_token(db_job.env()["AWEBER_STORE"], "acme") == second["refresh_token"]


def test_import_of_a_token_file_holding_a_lone_surrogate_exits_65_naming_file_and_field(db_job: JobFiles) -> None:
    """A token file whose refresh token json reads with a lone surrogate is invalid: exit 65, one line, no value."""
    db_job.token_file.parent.mkdir(parents=True, exist_ok=True)
    db_job.token_file.write_bytes(b'{"access_token": "a", "refresh_token": "\\ud800abc-surrogate-secret"}')
    before = db_job.token_file.read_bytes()
    result = run_job(["connections", "import", "acme", str(db_job.token_file)], db_job.env())
    assert result.returncode == 65, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error:" in line]
    assert len(errors) == 1, result.stderr
    assert str(db_job.token_file) in errors[0] and "'refresh_token'" in errors[0], errors[0]
    assert "abc-surrogate-secret" not in result.stderr + result.stdout
    assert db_job.token_file.read_bytes() == before, "a refused import must leave the file where it was"
    assert listing(db_job) == {}


def test_import_leaves_no_lock_file_it_created_whether_the_file_went_in_or_was_refused(db_job: JobFiles) -> None:
    """Each import, taken (0) or refused (64 name taken, 65 invalid file), removes the lock file it created."""
    lock = db_job.token_file.with_name(db_job.token_file.name + ".lock")
    import_live_tokens(db_job, "acme")
    assert not lock.exists(), "a taken import left its lock file"

    db_job.write_tokens()
    taken = run_job(["connections", "import", "acme", str(db_job.token_file)], db_job.env())
    assert taken.returncode == 64, taken.stderr
    assert db_job.token_file.exists() and not lock.exists(), "an import refused for its name left its lock file"

    db_job.token_file.write_text("{}\n", encoding="utf-8")
    invalid = run_job(["connections", "import", "globex", str(db_job.token_file)], db_job.env())
    assert invalid.returncode == 65, invalid.stderr
    assert db_job.token_file.exists() and not lock.exists(), "an import refused for its file left its lock file"


def test_import_keeps_a_lock_file_that_was_there_before(db_job: JobFiles) -> None:
    """A lock file that existed before the import may be another program's: taken or refused, it stays as it was."""
    lock = db_job.token_file.with_name(db_job.token_file.name + ".lock")
    db_job.write_tokens()
    lock.write_bytes(b"")
    inode = lock.stat().st_ino
    taken = run_job(["connections", "import", "acme", str(db_job.token_file)], db_job.env())
    assert taken.returncode == 0, taken.stderr
    assert lock.exists() and lock.stat().st_ino == inode

    db_job.write_tokens()
    refused = run_job(["connections", "import", "acme", str(db_job.token_file)], db_job.env())
    assert refused.returncode == 64, refused.stderr
    assert lock.exists() and lock.stat().st_ino == inode


def test_list_shows_a_name_with_control_characters_escaped_and_json_keeps_it_exact(db_job: JobFiles) -> None:
    """A name put in the table by hand is escaped (as repr writes it) in the table and the logs, exact in --json."""
    import_live_tokens(db_job, "acme")
    hostile = "ev\nil\r\x1b[2Jname"
    with psycopg.connect(db_job.env()["AWEBER_STORE"], autocommit=True) as db:
        db.execute("UPDATE aweber_job.connections SET name = %s WHERE name = 'acme'", (hostile,))
    table = run_job(["connections", "list"], db_job.env())
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("NAME"), table.stdout
    assert lines[1].split()[0] == "ev\\nil\\r\\x1b[2Jname", lines[1]
    assert list(listing(db_job)) == [hostile]
    fleet = run_job(["run", "--all", "--task", "noop"], db_job.env())
    assert fleet.returncode == 0, fleet.stderr
    assert all(line.startswith("aweber-job: ") for line in fleet.stderr.splitlines()), fleet.stderr
    assert "connection 'ev\\nil\\r\\x1b[2Jname'" in fleet.stderr


def test_refresh_of_a_connection_rotates_its_token_in_the_store_and_records_the_run(db_job: JobFiles) -> None:
    grant = import_live_tokens(db_job, "acme")
    import_live_tokens(db_job, "globex")
    result = run_job(["--connection", "acme", "-v", "refresh"], db_job.env())
    assert result.returncode == 0, result.stderr
    url = db_job.env()["AWEBER_STORE"]
    now_stored = stored_refresh_token(url, "acme")
    assert now_stored != grant["refresh_token"]
    assert now_stored in db_job.standin.live_refresh_tokens()
    rows = listing(db_job)
    assert rows["acme"]["last_exit_code"] == 0 and rows["acme"]["next_run_at"] is not None
    assert rows["globex"]["last_exit_code"] is None, "only the connection named was run"
    assert rows["acme"]["lease_holder"] is None, "the lease is released at the end of the run"
    assert invalid_grants(db_job.standin) == 0
    assert_no_password(result.stdout, result.stderr)


def test_run_output_carries_the_connection_and_the_state_lives_in_the_store(db_job: JobFiles) -> None:
    now = time.time()
    db_job.standin.add_account(ACCOUNT)
    db_job.standin.add_list(ACCOUNT, LIST, "Newsletter", size=50, start=now - 40 * DAY, end=now - 3 * DAY)
    import_live_tokens(db_job, "acme")
    first = run_job(["--connection", "acme", "run", "--since", "7d"], db_job.env())
    assert first.returncode == 0, first.stderr
    rows = [json.loads(line) for line in first.stdout.splitlines()]
    assert rows, "the list has subscribers from the last week"
    assert all(row["connection"] == "acme" for row in rows)
    assert not list((db_job.root / "state").glob("*.state.json")), "task state lives in the store, not in files"
    assert listing(db_job)["acme"]["account_id"] == ACCOUNT, "the one account the run read is recorded"

    db_job.standin.add_subscribers(ACCOUNT, LIST, [{"email": "new@example.com", "subscribed_at": time.time() - 60}])
    second = run_job(["--connection", "acme", "run", "--format", "csv"], db_job.env())
    assert second.returncode == 0, second.stderr
    table = list(csv.DictReader(io.StringIO(second.stdout)))
    assert [(row["connection"], row["email"]) for row in table] == [("acme", "new@example.com")]


def test_a_wrong_key_is_a_configuration_error_naming_the_connection(db_job: JobFiles) -> None:
    db_job.extra_env["AWEBER_STORE_KEY"] = KEY
    import_live_tokens(db_job, "acme")
    other_key = "Xb3t0CMd9ajf7oBoXvsHc3WTu1n9xjzP_AYD6bM2Ceo="
    result = run_job(["--connection", "acme", "refresh"], db_job.env(AWEBER_STORE_KEY=other_key))
    assert result.returncode == 78, result.stderr
    assert "acme" in result.stderr
    assert token_requests(db_job.standin) == 0
    assert KEY not in result.stderr and other_key not in result.stderr


# ---- login, revoke, remove ---------------------------------------------------------------------------


def test_login_revoke_and_remove_a_connection(db_job: JobFiles) -> None:
    code = own_code(db_job.standin, db_job.client_id)
    login = run_job(["--connection", "acme", "login", "--code", code], db_job.env())
    assert login.returncode == 0, login.stderr
    assert "acme" in login.stdout
    url = db_job.env()["AWEBER_STORE"]
    assert stored_refresh_token(url, "acme") in db_job.standin.live_refresh_tokens()

    again = run_job(["--connection", "acme", "login", "--code", own_code(db_job.standin, db_job.client_id)],
                    db_job.env())
    assert again.returncode == 64 and "--force" in again.stderr

    not_yet = run_job(["connections", "remove", "acme"], db_job.env())
    assert not_yet.returncode == 64 and "revoke" in not_yet.stderr

    revoke = run_job(["--connection", "acme", "revoke"], db_job.env())
    assert revoke.returncode == 0, revoke.stderr
    assert db_job.standin.live_refresh_tokens() == set()
    assert listing(db_job)["acme"]["revoked"] is True
    refused = run_job(["--connection", "acme", "refresh"], db_job.env())
    assert refused.returncode == 77, refused.stderr

    removed = run_job(["connections", "remove", "acme"], db_job.env())
    assert removed.returncode == 0, removed.stderr
    assert "acme" not in listing(db_job)
    assert_no_password(login.stdout, login.stderr, revoke.stderr, removed.stderr)


def test_status_of_a_connection_shows_fingerprints_never_tokens_or_the_password(db_job: JobFiles) -> None:
    grant = import_live_tokens(db_job, "acme")
    for args in (["--connection", "acme", "-vv", "status"], ["--connection", "acme", "status", "--json"]):
        result = run_job(args, db_job.env())
        assert result.returncode == 0, result.stderr
        for secret in (str(grant["refresh_token"]), str(grant["access_token"]), CONFIDENTIAL_SECRET, PASSWORD):
            assert secret not in result.stdout + result.stderr
    report = json.loads(run_job(["--connection", "acme", "status", "--json"], db_job.env()).stdout)
    assert report["connection"] == "acme" and report["encrypted"] is False
    assert any("unencrypted" in warning for warning in report["warnings"])


def test_an_unknown_connection_says_how_to_add_it(db_job: JobFiles) -> None:
    result = run_job(["--connection", "nobody", "refresh"], db_job.env())
    assert result.returncode == 65, result.stderr
    assert "connections import nobody" in result.stderr or "--connection nobody login" in result.stderr


def test_a_database_that_cannot_be_reached_is_temporary_and_never_shows_the_password(job: JobFiles) -> None:
    job.write_tokens()
    url = f"postgresql://someone:{PASSWORD}@127.0.0.1:9/nowhere"  # port 9 (discard): nothing listens
    result = run_job(["--connection", "acme", "-vv", "refresh"], job.env(AWEBER_STORE=url))
    assert result.returncode == 75, result.stderr
    assert_no_password(result.stdout, result.stderr)
    assert token_requests(job.standin) == 0
    assert os.path.exists(job.token_file), "the token file is not touched"


def test_an_unknown_store_scheme_is_a_configuration_error_without_the_password(job: JobFiles) -> None:
    result = run_job(["status"], job.env(AWEBER_STORE=f"mysql://u:{PASSWORD}@db/x"))
    assert result.returncode == 78
    assert "AWEBER_STORE" in result.stderr
    assert_no_password(result.stderr)


def test_a_run_turned_away_by_a_held_lease_exits_75_and_records_nothing(db_job: JobFiles) -> None:
    """Another run holds the connection: this one waits AWEBER_LOCK_TIMEOUT, exits 75, spends and records nothing."""
    from job.stores.postgres import PostgresStore

    import_live_tokens(db_job, "acme")
    store = PostgresStore(db_job.env()["AWEBER_STORE"], state_dir=db_job.root / "holder")
    held = store.connection("acme")
    held.open()
    try:
        result = run_job(["--connection", "acme", "refresh"], db_job.env(AWEBER_LOCK_TIMEOUT="1"))
    finally:
        held.close()
        store.close()
    assert result.returncode == 75, result.stderr
    assert token_requests(db_job.standin) == 0
    assert listing(db_job)["acme"]["last_exit_code"] is None


def test_a_store_url_libpq_or_python_cannot_read_is_a_configuration_error(job: JobFiles) -> None:
    """Not a temporary failure (75) a fleet would retry for ever, and never a traceback or the password."""
    for url in (f"postgresql://u:{PASSWORD}@[::1/db", f"postgresql://u:{PASSWORD}@127.0.0.1:notaport/db",
                f"postgresql://u:{PASSWORD}@127.0.0.1:99999/db", f"postgresql://u:{PASSWORD}@127.0.0.1/db?sslmode=x"):
        result = run_job(["--connection", "acme", "-vv", "status"], job.env(AWEBER_STORE=url))
        assert result.returncode == 78, (url, result.stderr)
        assert "Traceback" not in result.stderr
        assert_no_password(result.stdout, result.stderr)


def test_the_list_says_in_a_state_column_which_connections_are_revoked_or_wait_for_a_person(db_job: JobFiles) -> None:
    """Revoked and "needs a person" (a run ended 77) show under STATE; LEASE_HOLDER only ever names a holder."""
    for name in ("acme", "bolt", "coda"):
        db_job.write_tokens()
        assert run_job(["connections", "import", name, str(db_job.token_file)], db_job.env()).returncode == 0
    assert run_job(["--connection", "acme", "revoke"], db_job.env()).returncode == 0
    url = db_job.env()["AWEBER_STORE"]
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("UPDATE aweber_job.connections SET waiting_for_person = true, last_exit_code = 77 "
                   "WHERE name = 'bolt'")
    result = run_job(["connections", "list"], db_job.env())
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "STATE"] and header.split()[-1] == "LEASE_HOLDER"
    rows = {line.split()[0]: line for line in lines}
    assert rows["acme"].split()[1] == "revoked" and rows["acme"].split()[-1] == "-"
    assert rows["bolt"].split()[1:4] == ["needs", "a", "person"]
    assert rows["coda"].split()[1] == "ok"
    assert listing(db_job)["bolt"]["waiting_for_person"] is True


def test_remove_says_it_once(db_job: JobFiles) -> None:
    db_job.write_tokens()
    assert run_job(["connections", "import", "acme", str(db_job.token_file)], db_job.env()).returncode == 0
    removed = run_job(["connections", "remove", "--force", "acme"], db_job.env())
    assert removed.returncode == 0, removed.stderr
    assert removed.stderr.count("acme") == 1, removed.stderr
