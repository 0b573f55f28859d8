# ruff: noqa: F811
"""``run --all`` against the stand-in and a real PostgreSQL server: each due connection once, shared by processes.

The larger runs (200 connections, SIGTERM, SIGKILL, a database restart) are in tests/survival/test_fleet*.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from job.run.fleet import fleet_exit_code
from job.standin import Fault

# The fixture `db_job` is imported to be used by name.
from tests.integration.test_connections_cli import db_job  # noqa: F401
from tests.support.jobs import REPO, JobFiles, invalid_grants, run_job, token_requests
from tests.support.recorder import PingReceiver

ACCOUNT = 100
LIST = 201
DAY = 86_400


def import_connections(job: JobFiles, count: int, prefix: str = "c") -> list[str]:
    """``count`` connections with live tokens at the stand-in, imported through the command line."""
    names = []
    for index in range(count):
        name = f"{prefix}{index:03d}"
        job.write_tokens()
        result = run_job(["connections", "import", name, str(job.token_file)], job.env())
        assert result.returncode == 0, result.stderr
        names.append(name)
    return names


def stored(url: str) -> dict[str, tuple[str, int | None]]:
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute("SELECT name, tokens, last_exit_code FROM aweber_job.connections").fetchall()
    return {name: (json.loads(bytes(data))["refresh_token"], code) for name, data, code in rows}


def add_failover(url: str) -> None:
    """Make the database refuse every write of new tokens, as in a failover."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("""CREATE FUNCTION aweber_job.failover() RETURNS trigger LANGUAGE plpgsql AS $$
                      BEGIN IF NEW.tokens IS DISTINCT FROM OLD.tokens THEN
                        RAISE EXCEPTION 'failover in progress' USING ERRCODE = '57P01'; END IF; RETURN NEW; END $$""")
        db.execute("CREATE TRIGGER failover BEFORE UPDATE ON aweber_job.connections FOR EACH ROW "
                   "EXECUTE FUNCTION aweber_job.failover()")


def drop_failover(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DROP TRIGGER failover ON aweber_job.connections")


def test_the_exit_code_is_the_failure_that_most_needs_a_person() -> None:
    assert fleet_exit_code([]) == 0
    assert fleet_exit_code([0, 0]) == 0
    assert fleet_exit_code([0, 75, 1]) == 1
    assert fleet_exit_code([75, 73, 65]) == 73
    assert fleet_exit_code([78, 77, 0]) == 77
    assert fleet_exit_code([76, 75]) == 76


def test_run_all_refreshes_each_due_connection_once_then_finds_nothing_due(db_job: JobFiles) -> None:
    names = import_connections(db_job, 12)
    url = db_job.env()["AWEBER_STORE"]
    before = stored(url)
    first = run_job(["run", "--all", "--concurrency", "4", "--task", "noop"], db_job.env())
    assert first.returncode == 0, first.stderr
    after = stored(url)
    assert sorted(after) == names
    live = db_job.standin.live_refresh_tokens()
    for name in names:
        assert after[name][0] != before[name][0], f"{name} was not refreshed"
        assert after[name][0] in live and after[name][1] == 0
    assert token_requests(db_job.standin) == len(names)
    assert invalid_grants(db_job.standin) == 0

    second = run_job(["run", "--all", "--task", "noop"], db_job.env())
    assert second.returncode == 0, second.stderr
    assert token_requests(db_job.standin) == len(names), "nothing was due"

    third = run_job(["run", "--all", "--task", "noop"], db_job.env(AWEBER_RUN_INTERVAL="0"))
    assert third.returncode == 0, third.stderr
    assert token_requests(db_job.standin) == 2 * len(names)
    assert set(value[0] for value in stored(url).values()) == db_job.standin.live_refresh_tokens()


def test_three_processes_share_the_work_and_never_spend_a_token_twice(db_job: JobFiles) -> None:
    names = import_connections(db_job, 24)
    command = [sys.executable, "-m", "job", "-v", "run", "--all", "--concurrency", "3", "--task", "noop"]
    processes = [subprocess.Popen(command, env=db_job.env(), cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], [err for _, err in results]
    ran = [name for _, err in results for name in re.findall(r"connection '(c\d+)': ok", err)]
    twice = sorted(name for name in set(ran) if ran.count(name) > 1)
    assert not twice, f"run twice: {twice}; " + " || ".join(
        " ".join(re.findall(r"(?:connection '(?:" + "|".join(twice) + r")'[^\n]*)", err)) for _, err in results)
    assert sorted(ran) == names, "each connection run by exactly one process"
    assert token_requests(db_job.standin) == len(names), "each connection refreshed exactly once"
    assert invalid_grants(db_job.standin) == 0
    tokens = stored(db_job.env()["AWEBER_STORE"])
    assert set(value[0] for value in tokens.values()) == db_job.standin.live_refresh_tokens()


def test_task_output_of_every_connection_lands_whole_with_its_name(db_job: JobFiles) -> None:
    now = time.time()
    db_job.standin.add_account(ACCOUNT)
    db_job.standin.add_list(ACCOUNT, LIST, "Newsletter", size=40, start=now - 5 * DAY, end=now - 60)
    names = import_connections(db_job, 6)
    result = run_job(["run", "--all", "--concurrency", "6", "--since", "7d"], db_job.env())
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted({row["connection"] for row in rows}) == names
    for name in names:
        assert len([row for row in rows if row["connection"] == name]) == 40
    # The task's own lines ("list 201 \"Newsletter\": 40 new subscribers") say whose they are.
    list_lines = [line for line in result.stderr.splitlines() if f"list {LIST} " in line]
    assert len(list_lines) == len(names), result.stderr
    assert sorted(line.split("connection '")[1].split("'")[0] for line in list_lines) == names

    csv_run = run_job(["run", "--all", "--format", "csv"], db_job.env(AWEBER_RUN_INTERVAL="0"))
    assert csv_run.returncode == 0, csv_run.stderr
    assert csv_run.stdout == "", "nothing new: no rows and no header"


def test_failures_give_the_exit_code_that_most_needs_a_person_and_one_line_each(db_job: JobFiles) -> None:
    import_connections(db_job, 3)
    url = db_job.env()["AWEBER_STORE"]
    # One connection's refresh token is unknown to AWeber: invalid_grant, 77.
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT tokens FROM aweber_job.connections WHERE name = 'c001'").fetchone()
        assert row is not None
        document = json.loads(bytes(row[0]))
        document["refresh_token"] = "not-a-token-the-stand-in-issued"
        db.execute("UPDATE aweber_job.connections SET tokens = %s WHERE name = 'c001'",
                   (json.dumps(document).encode(),))
    result = run_job(["run", "--all", "--task", "noop"], db_job.env())
    assert result.returncode == 77, result.stderr
    failing = [line for line in result.stderr.splitlines() if "error" in line and "c001" in line]
    assert len(failing) == 1
    assert "aweber-job --connection c001 login" in failing[0], "the advice must name the connection that failed"
    codes = {name: code for name, (_, code) in stored(url).items()}
    assert codes == {"c000": 0, "c001": 77, "c002": 0}
    # Waiting for a person: not tried again, even when everything is due.
    again = run_job(["run", "--all", "--task", "noop"], db_job.env(AWEBER_RUN_INTERVAL="0"))
    assert again.returncode == 0, again.stderr
    assert "c001" not in again.stderr


def test_run_all_with_the_token_file_runs_that_one_connection(job: JobFiles) -> None:
    job.write_tokens()
    result = run_job(["run", "--all", "--task", "noop"], job.env())
    assert result.returncode == 0, result.stderr
    assert token_requests(job.standin) == 1


def test_concurrency_without_all_and_out_of_range_are_usage_errors(job: JobFiles) -> None:
    for args in (["run", "--concurrency", "2"], ["run", "--all", "--concurrency", "0"],
                 ["run", "--all", "--connection", "x"]):
        assert run_job(args, job.env()).returncode == 64, args


def test_one_ping_for_the_whole_run_and_metrics_labelled_by_connection(
    db_job: JobFiles, tmp_path: Path, receiver: PingReceiver
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    names = import_connections(db_job, 3)
    metrics = tmp_path / "fleet.prom"
    env = db_job.env(AWEBER_METRICS_FILE=str(metrics), AWEBER_PING_URL=receiver.url)
    result = run_job(["run", "--all", "--task", "noop"], env)
    assert result.returncode == 0, result.stderr
    assert receiver.kinds() == ["start", ""]
    assert receiver.pings[-1].body.startswith("ok: task noop,"), receiver.pings[-1].body
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(metrics.read_text(encoding="utf-8"))
               for sample in family.samples}
    assert samples[("aweber_job_exit_code", ())] == 0
    assert samples[("aweber_job_refreshes", ())] == 3
    for name in names:
        assert samples[("aweber_job_connection_exit_code", (("connection", name),))] == 0
        assert samples[("aweber_job_connection_refreshes", (("connection", name),))] == 1


def test_a_killed_fleet_runs_leases_are_taken_over_at_once_on_its_host(db_job: JobFiles) -> None:
    """SIGKILL leaves the leases of a fleet run behind; on the same host the next run takes them over at
    once (the holder's pid is gone), instead of leaving the connections for the lease's 15 minutes."""
    import_connections(db_job, 1)
    url = db_job.env()["AWEBER_STORE"]
    # The token request waits, then is dropped unprocessed: the killed run spent nothing.
    db_job.standin.inject(Fault(delay_seconds=30, drop="before"), path="/oauth2/token")
    command = [sys.executable, "-m", "job", "run", "--all", "--task", "noop"]
    process = subprocess.Popen(command, env=db_job.env(), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with psycopg.connect(url, autocommit=True) as db:
                row = db.execute("SELECT lease_holder, refreshing_from IS NOT NULL, lease_until > now() + "
                                 "interval '10 minutes' FROM aweber_job.connections").fetchone()
            assert row is not None
            if row[1]:
                break
            assert time.monotonic() < deadline, "the run never began its refresh"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    holder, _, long_lease = row
    assert f":{process.pid}:" in holder and long_lease, "the killed run held a lease that has not run out"
    db_job.standin.reset_stats()
    again = run_job(["run", "--all", "--task", "noop"], db_job.env())
    assert again.returncode == 0, again.stderr
    assert f"pid {process.pid}, which is no longer running; taken over" in again.stderr
    assert token_requests(db_job.standin) == 1
    (token, code), = stored(url).values()
    assert code == 0 and token in db_job.standin.live_refresh_tokens()


def test_a_connection_whose_name_breaks_the_rules_for_typed_names_runs_like_any_other(db_job: JobFiles) -> None:
    """A row named by hand (a trailing space) must not stop the fleet run, nor cut short the others' refreshes."""
    import_connections(db_job, 2)
    url = db_job.env()["AWEBER_STORE"]
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("UPDATE aweber_job.connections SET name = 'zz ' WHERE name = 'c001'")
    result = run_job(["run", "--all", "--concurrency", "2", "--task", "noop"], db_job.env())
    assert result.returncode == 0, result.stderr
    codes = {name: code for name, (_, code) in stored(url).items()}
    assert codes == {"c000": 0, "zz ": 0}
    assert invalid_grants(db_job.standin) == 0


def test_sigterm_while_a_save_retries_writes_the_rescue_file_before_the_grace_ends(db_job: JobFiles) -> None:
    """The database refuses the save (a failover, simulated by a trigger) and SIGTERM comes: the save must give
    up in time to keep the new tokens in a rescue file, which the next run puts back."""
    import signal

    import_connections(db_job, 1)
    url = db_job.env()["AWEBER_STORE"]
    add_failover(url)
    env = db_job.env(AWEBER_SHUTDOWN_GRACE="5")
    process = subprocess.Popen([sys.executable, "-m", "job", "run", "--all", "--task", "noop"], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while token_requests(db_job.standin) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the refresh is answered; the save is retrying
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - signalled < 5 + 2, "exited within the grace"
    assert process.returncode == 73, stderr
    rescues = list((db_job.root / "state" / "rescue").glob("c000.*.json"))
    assert len(rescues) == 1 and str(rescues[0]) in stderr
    assert (rescues[0].stat().st_mode & 0o777) == 0o600
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DROP TRIGGER failover ON aweber_job.connections")
    after = run_job(["--connection", "c000", "run", "--task", "noop"], db_job.env())
    assert after.returncode == 0, after.stderr
    assert invalid_grants(db_job.standin) == 0
    assert stored(url)["c000"][0] in db_job.standin.live_refresh_tokens()


def test_run_all_puts_back_this_machines_rescue_file_even_for_a_connection_waiting_for_a_person(
    db_job: JobFiles,
) -> None:
    """Another machine spent the stored token (77, waiting for a person) while this one holds its successor in
    a rescue file: the fleet run here puts it back and the connection is live again."""
    from job.stores.durable import token_hash
    from job.stores.postgres import PostgresStore

    import_connections(db_job, 1)
    url = db_job.env()["AWEBER_STORE"]
    spent = stored(url)["c000"][0]
    successor = db_job.write_tokens()  # live at the stand-in: what the lost save held
    directory = db_job.root / "state" / "rescue"
    directory.mkdir(parents=True, mode=0o700)
    rescue = directory / f"c000.20261130T000000.000000Z.from-{token_hash(spent)[:16]}.json"
    rescue.write_bytes(db_job.token_file.read_bytes())
    rescue.chmod(0o600)
    store = PostgresStore(url, state_dir=db_job.root / "elsewhere")
    store.record_run("c000", 77, 86_400)  # the other machine's invalid_grant
    store.close()
    result = run_job(["run", "--all", "--task", "noop"], db_job.env())
    assert result.returncode == 0, result.stderr
    assert stored(url)["c000"][0] == successor["refresh_token"]
    assert not rescue.exists()
    with psycopg.connect(url, autocommit=True) as db:
        assert db.execute("SELECT waiting_for_person FROM aweber_job.connections").fetchone() == (False,)
    after = run_job(["--connection", "c000", "run", "--task", "noop"], db_job.env())
    assert after.returncode == 0, after.stderr
    assert invalid_grants(db_job.standin) == 0


def fleet_rows(url: str) -> dict[str, tuple[object, ...]]:
    """Each connection's fence, last run, last exit code, waiting flag and lease holder (no tokens)."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute("SELECT name, fence, last_run_at, last_exit_code, waiting_for_person, lease_holder "
                          "FROM aweber_job.connections").fetchall()
    return {name: tuple(rest) for name, *rest in rows}


def test_a_wrong_or_missing_store_key_stops_run_all_before_it_claims_anything(db_job: JobFiles) -> None:
    """A key that opens nothing is the store's problem: run --all exits 78 naming the store, and no connection is
    claimed, run or set waiting for a person, so the right key runs them all."""
    from cryptography.fernet import Fernet

    from tests.integration.test_connections_cli import KEY, PASSWORD

    db_job.extra_env["AWEBER_STORE_KEY"] = KEY
    names = import_connections(db_job, 3)
    url = db_job.env()["AWEBER_STORE"]
    before = fleet_rows(url)
    other_key = Fernet.generate_key().decode()
    no_key = db_job.env()
    del no_key["AWEBER_STORE_KEY"]
    dbname = url.rsplit("/", 1)[-1]
    for env in (db_job.env(AWEBER_STORE_KEY=other_key), no_key):
        result = run_job(["run", "--all", "--task", "noop"], env)
        assert result.returncode == 78, result.stderr
        assert f"postgresql://postgres@127.0.0.1:5432/{dbname}" in result.stderr
        for secret in (KEY, other_key, PASSWORD):
            assert secret not in result.stderr + result.stdout
        assert fleet_rows(url) == before, "nothing claimed, recorded or parked"
    assert token_requests(db_job.standin) == 0

    right = run_job(["run", "--all", "--task", "noop"], db_job.env())
    assert right.returncode == 0, right.stderr
    assert token_requests(db_job.standin) == len(names)
    assert {name: row[2] for name, row in fleet_rows(url).items()} == dict.fromkeys(names, 0)


def test_a_connection_sealed_with_a_key_no_longer_given_is_left_due_not_parked(db_job: JobFiles) -> None:
    """One row sealed with a key dropped from AWEBER_STORE_KEY: the run exits 78 naming it but records nothing for
    it, so it runs as soon as the key is given again."""
    from cryptography.fernet import Fernet

    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    db_job.extra_env["AWEBER_STORE_KEY"] = old_key
    import_connections(db_job, 1, prefix="old")
    db_job.extra_env["AWEBER_STORE_KEY"] = new_key
    import_connections(db_job, 1, prefix="new")
    url = db_job.env()["AWEBER_STORE"]

    result = run_job(["run", "--all", "--task", "noop"], db_job.env())
    assert result.returncode == 78, result.stderr
    assert "connection 'old000'" in result.stderr
    assert old_key not in result.stderr and new_key not in result.stderr
    rows = fleet_rows(url)
    assert rows["new000"][2] == 0
    _, last_run, code, waiting, holder = rows["old000"]
    assert (last_run, code, waiting, holder) == (None, None, False, None), "left due, not parked, released"
    assert token_requests(db_job.standin) == 1

    again = run_job(["run", "--all", "--task", "noop"], db_job.env(AWEBER_STORE_KEY=f"{new_key},{old_key}"))
    assert again.returncode == 0, again.stderr
    assert fleet_rows(url)["old000"][2] == 0
    assert token_requests(db_job.standin) == 2
    assert invalid_grants(db_job.standin) == 0
