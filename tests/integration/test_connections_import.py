"""``connections import`` with the task state, and ``connections import --dir``: real processes, the stand-in
AWeber over loopback, a real PostgreSQL server.

The single import's token handling (lock, rename, refusals) is in tests/integration/test_connections_cli.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg

from tests.integration import test_connections_cli as cli
from tests.integration.test_connections_cli import PASSWORD, listing, stored_refresh_token
from tests.support.jobs import CONFIDENTIAL_SECRET, JobFiles, run_job, token_document

db_job = cli.db_job  # the job whose store is the test database, schema created

ACCOUNT = 100
LIST = 201
SUBSCRIBED: list[str] = []


def file_store_env(job: JobFiles) -> dict[str, str]:
    """The same settings as the database store's, with the token file as the store: the old setup."""
    return job.env(AWEBER_STORE="file")


def subscribe(job: JobFiles, *emails: str) -> None:
    """New subscribers, a second apart, after every one before and in the past of the clocks."""
    start = time.time() - 3600 + 60 * len(SUBSCRIBED)
    SUBSCRIBED.extend(emails)
    job.standin.add_subscribers(ACCOUNT, LIST, [
        {"email": email, "subscribed_at": start + number} for number, email in enumerate(emails)])


def reported(stdout: str) -> list[str]:
    return [json.loads(line)["email"] for line in stdout.splitlines()]


def task_states(url: str) -> dict[str, object]:
    with psycopg.connect(url, autocommit=True) as db:
        return {name: state for name, state in db.execute("SELECT name, task_state FROM aweber_job.connections")}


# ---- the task state goes with the tokens ------------------------------------------------------------------


def test_a_connection_imported_with_its_state_reports_no_subscriber_twice_and_misses_none(db_job: JobFiles) -> None:
    """Runs on the token file report 3, then 1; the import takes their state; the first database run reports only
    the 2 who joined since. Every subscriber of the list is delivered exactly once over the four runs."""
    db_job.standin.add_account(ACCOUNT)
    db_job.standin.add_list(ACCOUNT, LIST, "Newsletter", size=0)
    db_job.write_tokens()
    delivered: list[str] = []
    SUBSCRIBED.clear()

    subscribe(db_job, "a1@example.com", "a2@example.com", "a3@example.com")
    first = run_job(["run", "--since", "7d"], file_store_env(db_job))
    assert first.returncode == 0, first.stderr
    delivered += reported(first.stdout)
    subscribe(db_job, "b1@example.com")
    second = run_job(["run", "--since", "7d"], file_store_env(db_job))
    assert second.returncode == 0, second.stderr
    delivered += reported(second.stdout)
    state_file = db_job.root / "state" / "new-subscribers.state.json"
    assert state_file.exists(), "the file store keeps the state where AWEBER_STATE_DIR says"

    subscribe(db_job, "c1@example.com", "c2@example.com")
    imported = run_job(["connections", "import", "acme", str(db_job.token_file)], db_job.env())
    assert imported.returncode == 0, imported.stderr
    third = run_job(["--connection", "acme", "run", "--since", "7d"], db_job.env())
    assert third.returncode == 0, third.stderr
    delivered += reported(third.stdout)

    everyone = ["a1@example.com", "a2@example.com", "a3@example.com", "b1@example.com", "c1@example.com",
                "c2@example.com"]
    assert sorted(delivered) == everyone, "each subscriber once: none twice, none missed"
    assert reported(third.stdout) == ["c1@example.com", "c2@example.com"]
    assert f"with the state of task new-subscribers from {state_file}" in imported.stdout


def test_state_named_with_state_replaces_and_a_found_one_never_replaces_a_stored_state(db_job: JobFiles) -> None:
    """--force into a connection that holds a state keeps it, unless --state names the file to take."""
    state_dir = db_job.root / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    found = {"lists": {"100/201": {"subscribed_at": "2026-01-01 00:00:00-00:00", "ids": [1]}}}
    (state_dir / "new-subscribers.state.json").write_text(json.dumps(found), encoding="utf-8")
    db_job.write_tokens()
    assert run_job(["connections", "import", "acme", str(db_job.token_file)], db_job.env()).returncode == 0
    url = db_job.env()["AWEBER_STORE"]
    assert task_states(url)["acme"] == {"new-subscribers": found}

    stored = {"lists": {"100/201": {"subscribed_at": "2026-02-01 00:00:00-00:00", "ids": [9]}}}
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("UPDATE aweber_job.connections SET task_state = %s WHERE name = 'acme'",
                   (json.dumps({"new-subscribers": stored}),))
    db_job.write_tokens()
    again = run_job(["connections", "import", "acme", str(db_job.token_file), "--force"], db_job.env())
    assert again.returncode == 0, again.stderr
    assert "already holds a state of task new-subscribers: it was kept" in again.stderr
    assert task_states(url)["acme"] == {"new-subscribers": stored}, "a found state never takes a watermark back"

    named = db_job.root / "elsewhere.json"
    named.write_text(json.dumps(found), encoding="utf-8")
    db_job.write_tokens()
    forced = run_job(["connections", "import", "acme", str(db_job.token_file), "--force", "--state", str(named)],
                     db_job.env())
    assert forced.returncode == 0, forced.stderr
    assert f"from {named}" in forced.stdout
    assert task_states(url)["acme"] == {"new-subscribers": found}

    db_job.write_tokens()
    missing = run_job(["connections", "import", "globex", str(db_job.token_file), "--state",
                       str(db_job.root / "nothing.json")], db_job.env())
    assert missing.returncode == 65, missing.stderr
    assert str(db_job.root / "nothing.json") in missing.stderr
    assert db_job.token_file.exists() and "globex" not in listing(db_job)


# ---- a directory of token files ------------------------------------------------------------------------------


def write(path: Path, document: object) -> None:
    path.write_text(json.dumps(document) if not isinstance(document, str) else document, encoding="utf-8")
    path.chmod(0o600)


def test_import_dir_takes_every_shape_names_each_bad_file_once_and_exits_65(db_job: JobFiles) -> None:
    directory = db_job.root / "tokens"
    directory.mkdir()
    flat = db_job.standin.issue_tokens(db_job.client_id)
    write(directory / "acme.json", token_document(flat))
    nested = db_job.standin.issue_tokens(db_job.client_id)
    write(directory / "globex.json",
          {"client_id": db_job.client_id, "client_secret": CONFIDENTIAL_SECRET, "token": token_document(nested)})
    write(directory / "initech.json", {"consumer_key": "ck-import-test", "consumer_secret": "cs-import-test-secret",
                                       "access_token": "at-import-test", "token_secret": "ts-import-test-secret"})
    bad_json = directory / "broken.json"
    write(bad_json, '{"refresh_token": "rt-in-a-broken-file-0123456789"')
    bad_name = directory / "bad name.json"
    write(bad_name, token_document(db_job.standin.issue_tokens(db_job.client_id)))
    (directory / "notes.txt").write_text("not a token file", encoding="utf-8")

    result = run_job(["connections", "import", "--dir", str(directory)], db_job.env())
    assert result.returncode == 65, "a bad file (65) refused: not 0, and 65 before anything less urgent"
    errors = [line for line in result.stderr.splitlines() if ": error:" in line]
    assert len(errors) == 2, result.stderr
    assert any(str(bad_json) in line for line in errors) and any(str(bad_name) in line for line in errors)
    assert "imported 3 of 5 token files" in result.stdout
    assert sorted(listing(db_job)) == ["acme", "globex", "initech"]
    assert bad_json.exists() and bad_name.exists(), "a refused file stays where it was"
    for name in ("acme", "globex", "initech"):
        assert not (directory / f"{name}.json").exists()
        assert len(list(directory.glob(f"{name}.json.imported-*"))) == 1
    assert not list(directory.glob("*.lock")), "no lock file left behind"
    url = db_job.env()["AWEBER_STORE"]
    assert stored_refresh_token(url, "acme") == flat["refresh_token"]
    everything = result.stdout + result.stderr
    for secret in (str(flat["refresh_token"]), str(nested["refresh_token"]), str(flat["access_token"]),
                   "cs-import-test-secret", "ts-import-test-secret", "rt-in-a-broken-file", CONFIDENTIAL_SECRET,
                   PASSWORD):
        assert secret not in everything

    refreshed = run_job(["--connection", "globex", "refresh"], db_job.env())
    assert refreshed.returncode == 0, refreshed.stderr


def test_import_dir_refuses_a_taken_name_without_force_with_64_and_takes_it_with_force(db_job: JobFiles) -> None:
    directory = db_job.root / "tokens"
    directory.mkdir()
    write(directory / "acme.json", token_document(db_job.standin.issue_tokens(db_job.client_id)))
    assert run_job(["connections", "import", "--dir", str(directory)], db_job.env()).returncode == 0

    newer = db_job.standin.issue_tokens(db_job.client_id)
    write(directory / "acme.json", token_document(newer))
    write(directory / "hooli.json", token_document(db_job.standin.issue_tokens(db_job.client_id)))
    refused = run_job(["connections", "import", "--dir", str(directory)], db_job.env())
    assert refused.returncode == 64, refused.stderr
    assert "'acme' is already in the store" in refused.stderr and "--force" in refused.stderr
    assert (directory / "acme.json").exists() and not (directory / "hooli.json").exists()
    url = db_job.env()["AWEBER_STORE"]
    assert stored_refresh_token(url, "acme") != newer["refresh_token"]

    forced = run_job(["connections", "import", "--dir", str(directory), "--force"], db_job.env())
    assert forced.returncode == 0, forced.stderr
    assert stored_refresh_token(url, "acme") == newer["refresh_token"]
    assert not (directory / "acme.json").exists()


def test_import_dir_takes_the_state_a_run_of_each_file_keeps(db_job: JobFiles) -> None:
    """Without AWEBER_STATE_DIR a run keeps its state beside its token file: that state goes in with each file of
    the directory, and is not itself taken for a token file."""
    directory = db_job.root / "tokens"
    directory.mkdir()
    state = {"lists": {"100/201": {"subscribed_at": "2026-01-01 00:00:00-00:00", "ids": [1]}}}
    write(directory / "new-subscribers.state.json", state)
    for name in ("acme", "globex"):
        write(directory / f"{name}.json", token_document(db_job.standin.issue_tokens(db_job.client_id)))
    env = db_job.env()
    del env["AWEBER_STATE_DIR"]
    result = run_job(["connections", "import", "--dir", str(directory)], env)
    assert result.returncode == 0, result.stderr
    assert "imported 2 of 2 token files" in result.stdout and "(2 with task state)" in result.stdout
    assert task_states(env["AWEBER_STORE"]) == {"acme": {"new-subscribers": state},
                                               "globex": {"new-subscribers": state}}


def test_import_dir_of_many_files_goes_in_by_batches(db_job: JobFiles) -> None:
    """More files than one batch: every one goes in, each renamed once."""
    from job.commands.imports import BATCH_SIZE

    directory = db_job.root / "tokens"
    directory.mkdir()
    count = BATCH_SIZE + 3
    for number in range(count):
        write(directory / f"c{number:04d}.json",
              {"access_token": f"at-{number}-made-up", "refresh_token": f"rt-{number}-made-up", "expires_in": 7200})
    result = run_job(["connections", "import", "--dir", str(directory)], db_job.env())
    assert result.returncode == 0, result.stderr
    assert len(listing(db_job)) == count
    assert len(list(directory.glob("*.json.imported-*"))) == count and not list(directory.glob("*.json"))


def test_a_forced_replacement_another_run_holds_is_refused_and_the_files_stored_are_still_renamed(
        db_job: JobFiles) -> None:
    """With --force, a name whose lease a live run holds is that file's refusal (75, the file kept); the new name
    of the same batch is in the store, so its file is renamed all the same, never left live beside it."""
    directory = db_job.root / "tokens"
    directory.mkdir()
    write(directory / "acme.json", token_document(db_job.standin.issue_tokens(db_job.client_id)))
    assert run_job(["connections", "import", "--dir", str(directory)], db_job.env()).returncode == 0
    url = db_job.env()["AWEBER_STORE"]
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("UPDATE aweber_job.connections SET lease_holder = 'elsewhere:1:x', "
                   "lease_until = now() + interval '1 hour' WHERE name = 'acme'")
    newer = db_job.standin.issue_tokens(db_job.client_id)
    write(directory / "acme.json", token_document(newer))
    hooli = db_job.standin.issue_tokens(db_job.client_id)
    write(directory / "hooli.json", token_document(hooli))
    forced = run_job(["connections", "import", "--dir", str(directory), "--force"],
                     db_job.env(AWEBER_LOCK_TIMEOUT="1"))
    assert forced.returncode == 75, forced.stderr
    assert "acme" in forced.stderr and (directory / "acme.json").exists()
    assert stored_refresh_token(url, "hooli") == hooli["refresh_token"]
    assert not (directory / "hooli.json").exists(), "stored, yet left live: " + forced.stderr
    assert stored_refresh_token(url, "acme") != newer["refresh_token"]
