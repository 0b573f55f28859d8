"""``aweber-job tap``: the job as a Singer tap, a real process against the stand-in on loopback.

What it must do is checked against the Singer spec's words (docs/singer.md) and against what the stand-in
holds (the subscribers each test adds), never against the tap's own code.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from job.standin import StandIn
from job.standin.faults import Fault
from tests.integration.test_connections_cli import PASSWORD, with_password
from tests.support.jobs import CONFIDENTIAL_ID, CONFIDENTIAL_SECRET, JobFiles, run_job, token_requests

ACCOUNT = 100
LIST = 201
OTHER_LIST = 202
DAY = 86_400
MESSAGE_TYPES = {"SCHEMA", "RECORD", "STATE"}


def add_subscribers(standin: StandIn, emails: list[str], *, ago: float, list_id: int = LIST) -> None:
    """Subscribers who joined ``ago`` seconds ago, a second apart, in the order given."""
    now = time.time()
    standin.add_subscribers(ACCOUNT, list_id, [
        {"email": email, "name": f"Name {email}", "subscribed_at": now - ago + i} for i, email in enumerate(emails)
    ])


def populate(standin: StandIn, *, lists: tuple[int, ...] = (LIST,)) -> list[str]:
    """Per list two subscribers of ten days ago and three of the last ten minutes; return the recent emails."""
    standin.add_account(ACCOUNT)
    recent = []
    for list_id in lists:
        standin.add_list(ACCOUNT, list_id, f"List {list_id}")
        add_subscribers(standin, [f"old{i}.{list_id}@example.com" for i in range(2)], ago=10 * DAY, list_id=list_id)
        emails = [f"new{i}.{list_id}@example.com" for i in range(3)]
        add_subscribers(standin, emails, ago=600, list_id=list_id)
        recent += emails
    return recent


def write_config(job: JobFiles, name: str = "config.json", **settings: Any) -> Path:
    """The tap's config (the file ``name``): the job's settings for the stand-in, lower-cased, and ``settings``
    over them."""
    base = job.standin.base_url
    config: dict[str, Any] = {
        "client_id": CONFIDENTIAL_ID,
        "client_secret": CONFIDENTIAL_SECRET,
        "token_file": str(job.token_file),
        "token_url": f"{base}/oauth2/token",
        "api_url": f"{base}/1.0",
        "http_timeout": 5,
        "retry_deadline": 2,
        "lock_timeout": 5,
        "start_date": (datetime.now(timezone.utc) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    config.update(settings)
    path = job.root / name
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}), encoding="utf-8")
    return path


def tap_env(job: JobFiles) -> dict[str, str]:
    """Nothing from the real environment but PATH, and a HOME of the test's own."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(job.root)}


def tap(job: JobFiles, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return run_job(["tap", *args], env if env is not None else tap_env(job), cwd=cwd)


def messages(stdout: str) -> list[dict[str, Any]]:
    """The Singer messages on stdout; every line must be one."""
    found = []
    for line in stdout.splitlines():
        message = json.loads(line)
        assert message["type"] in MESSAGE_TYPES, line
        found.append(message)
    return found


def emails_of(found: list[dict[str, Any]]) -> list[str]:
    return [m["record"]["email"] for m in found if m["type"] == "RECORD" and m["stream"] == "subscribers"]


def assert_no_state_before_its_records(found: list[dict[str, Any]]) -> None:
    """A first run's STATE names a list of a stream only after every RECORD of that list and stream."""
    for index, message in enumerate(found):
        if message["type"] != "RECORD":
            continue
        key = f"{message['record']['account_id']}/{message['record']['list_id']}"
        for earlier in found[:index]:
            if earlier["type"] == "STATE":
                bookmark = earlier["value"].get("bookmarks", {}).get(message["stream"], {})
                assert key not in bookmark.get("lists", {}), f"a STATE covered list {key} before its record"


def last_state(found: list[dict[str, Any]]) -> dict[str, Any]:
    states = [m["value"] for m in found if m["type"] == "STATE"]
    assert states, "no STATE message"
    value: dict[str, Any] = states[-1]
    return value


def test_about_names_the_tap_its_capabilities_and_settings(job: JobFiles) -> None:
    text = tap(job, "--about")
    assert text.returncode == 0, text.stderr
    assert "tap-aweber" in text.stdout and "discover" in text.stdout
    as_json = tap(job, "--about", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    about = json.loads(as_json.stdout)
    assert about["name"] == "tap-aweber"
    assert set(about["capabilities"]) >= {"catalog", "discover", "state", "about"}
    settings = about["settings"]["properties"]
    assert {"client_id", "client_secret", "token_file", "store", "connection", "start_date",
            "list_ids"} <= set(settings)
    assert settings["client_secret"].get("secret") is True
    assert "task" not in settings


def test_discover_prints_a_catalog_with_keys_replication_and_inclusion_and_spends_nothing(job: JobFiles) -> None:
    job.write_tokens()
    before = job.token_file.read_bytes()
    done = tap(job, "--config", str(write_config(job)), "--discover")
    assert done.returncode == 0, done.stderr
    catalog = json.loads(done.stdout)
    assert [entry["stream"] for entry in catalog["streams"]] == ["subscribers", "unsubscribes", "list_stats"]
    (entry,) = [entry for entry in catalog["streams"] if entry["tap_stream_id"] == "subscribers"]
    assert entry["stream"] == "subscribers"
    assert set(entry["schema"]["properties"]) >= {"account_id", "list_id", "list_name", "id", "email", "name",
                                                  "status", "subscribed_at", "tags", "custom_fields"}
    assert entry["schema"]["properties"]["subscribed_at"]["format"] == "date-time"
    nodes = {tuple(item["breadcrumb"]): item["metadata"] for item in entry["metadata"]}
    top = nodes[()]
    assert top["table-key-properties"] == ["id", "list_id"]
    assert top["valid-replication-keys"] == ["subscribed_at"]
    assert top["forced-replication-method"] == "INCREMENTAL"
    assert nodes[("properties", "id")]["inclusion"] == "automatic"
    assert nodes[("properties", "subscribed_at")]["inclusion"] == "automatic"
    assert nodes[("properties", "email")]["inclusion"] == "available"
    assert job.token_file.read_bytes() == before and token_requests(job.standin) == 0


def test_a_run_emits_schema_records_then_state_and_keeps_the_tokens_as_run_does(job: JobFiles) -> None:
    recent = populate(job.standin)
    grant = job.write_tokens()
    done = run_console_script(job, "--config", str(write_config(job)))
    assert done.returncode == 0, done.stderr
    found = messages(done.stdout)
    assert found[0]["type"] == "SCHEMA" and found[0]["stream"] == "subscribers"
    assert found[0]["key_properties"] == ["id", "list_id"]
    assert sorted(emails_of(found)) == sorted(recent)
    assert found[-1]["type"] == "STATE"
    assert_no_state_before_its_records(found)
    record = next(m["record"] for m in found if m["type"] == "RECORD" and m["stream"] == "subscribers")
    assert record["account_id"] == ACCOUNT and record["list_id"] == LIST
    assert record["subscribed_at"].endswith("Z")
    # The tokens: refreshed once, the rotated ones saved in the token file; no task state file of the job's.
    assert token_requests(job.standin) == 1
    assert job.read_tokens()["refresh_token"] != grant["refresh_token"]
    assert list(job.token_file.parent.glob("*.state.json")) == []
    for secret in (CONFIDENTIAL_SECRET, grant["refresh_token"], job.read_tokens()["refresh_token"],
                   job.read_tokens()["access_token"]):
        assert str(secret) not in done.stdout + done.stderr


def run_console_script(job: JobFiles, *args: str) -> Any:
    """The tap as Meltano starts it: the console script tap-aweber."""
    import subprocess

    program = Path(sys.executable).parent / "tap-aweber"
    return subprocess.run([str(program), *args], env=tap_env(job), capture_output=True, text=True, timeout=60,
                          check=False, cwd=job.root)


def test_two_runs_with_the_state_handed_over_emit_each_subscriber_once(job: JobFiles) -> None:
    recent = populate(job.standin)
    job.write_tokens()
    config = str(write_config(job))
    first = tap(job, "--config", config)
    assert first.returncode == 0, first.stderr
    state_file = job.root / "state.json"
    state_file.write_text(json.dumps(last_state(messages(first.stdout))), encoding="utf-8")
    add_subscribers(job.standin, ["later@example.com"], ago=5)
    second = tap(job, "--config", config, "--state", str(state_file))
    assert second.returncode == 0, second.stderr
    assert sorted(emails_of(messages(first.stdout))) == sorted(recent)
    assert emails_of(messages(second.stdout)) == ["later@example.com"]
    state_file.write_text(json.dumps(last_state(messages(second.stdout))), encoding="utf-8")
    third = tap(job, "--config", config, "--state", str(state_file))
    assert third.returncode == 0, third.stderr
    assert emails_of(messages(third.stdout)) == []
    # Nothing new: a SCHEMA a stream, the lists' counts (a snapshot every run), and the state.
    third_found = messages(third.stdout)
    assert [m["stream"] for m in third_found if m["type"] == "SCHEMA"] == ["subscribers", "unsubscribes", "list_stats"]
    assert {m["stream"] for m in third_found if m["type"] == "RECORD"} == {"list_stats"}


def test_without_start_date_a_first_run_looks_back_a_day_and_with_one_from_there(job: JobFiles) -> None:
    recent = populate(job.standin)
    job.write_tokens()
    ten_days = tap(job, "--config", str(write_config(
        job, start_date=(datetime.now(timezone.utc) - timedelta(days=11)).isoformat())))
    assert ten_days.returncode == 0, ten_days.stderr
    assert sorted(emails_of(messages(ten_days.stdout))) == sorted([f"old{i}.{LIST}@example.com" for i in range(2)]
                                                                  + recent)
    default = tap(job, "--config", str(write_config(job, start_date=None)))
    assert default.returncode == 0, default.stderr
    assert sorted(emails_of(messages(default.stdout))) == sorted(recent)


def catalog_from_discovery(job: JobFiles, config: str) -> dict[str, Any]:
    done = tap(job, "--config", config, "--discover")
    assert done.returncode == 0, done.stderr
    catalog: dict[str, Any] = json.loads(done.stdout)
    return catalog


def set_selected(catalog: dict[str, Any], breadcrumb: list[str], selected: bool, stream: str = "subscribers") -> None:
    """Mark a node as Meltano's select rules do: ``selected`` in its metadata."""
    (entry,) = [entry for entry in catalog["streams"] if entry["stream"] == stream]
    for item in entry["metadata"]:
        if item["breadcrumb"] == breadcrumb:
            item["metadata"]["selected"] = selected


def test_the_catalog_selects_streams_and_fields_and_keys_stay(job: JobFiles) -> None:
    populate(job.standin)
    job.write_tokens()
    config = str(write_config(job))
    catalog = catalog_from_discovery(job, config)
    set_selected(catalog, [], True)
    set_selected(catalog, [], False, stream="unsubscribes")
    set_selected(catalog, [], False, stream="list_stats")
    for name in ("email", "name", "status", "id"):
        set_selected(catalog, ["properties", name], name == "email")
    path = job.root / "catalog.json"
    path.write_text(json.dumps(catalog), encoding="utf-8")
    done = tap(job, "--config", config, "--catalog", str(path))
    assert done.returncode == 0, done.stderr
    found = messages(done.stdout)
    expected = {"account_id", "list_id", "list_name", "id", "email", "subscribed_at", "tags", "custom_fields",
                "ad_tracking", "subscription_method", "verified_at", "misc_notes"}
    assert [m["stream"] for m in found if m["type"] == "SCHEMA"] == ["subscribers"]
    assert set(found[0]["schema"]["properties"]) == expected
    assert all(set(m["record"]) == expected for m in found if m["type"] == "RECORD")

    set_selected(catalog, [], False)
    path.write_text(json.dumps(catalog), encoding="utf-8")
    none = tap(job, "--config", config, "--catalog", str(path))
    assert none.returncode == 0, none.stderr
    assert [m["type"] for m in messages(none.stdout)] == ["STATE"]


@pytest.mark.parametrize("change, named", [
    (lambda c: c["streams"][0].update(tap_stream_id="bounces", stream="bounces"), "bounces"),
    (lambda c: c["streams"][0]["metadata"].append({"breadcrumb": ["properties", "phone"],
                                                   "metadata": {"selected": True}}), "phone"),
    (lambda c: c["streams"][0]["schema"]["properties"].update(fax={"type": "string"}), "fax"),
])
def test_a_catalog_naming_what_the_tap_does_not_have_is_refused_before_anything_is_spent(
        job: JobFiles, change: Any, named: str) -> None:
    job.write_tokens()
    before = job.token_file.read_bytes()
    config = str(write_config(job))
    catalog = catalog_from_discovery(job, config)
    change(catalog)
    path = job.root / "catalog.json"
    path.write_text(json.dumps(catalog), encoding="utf-8")
    done = tap(job, "--config", config, "--catalog", str(path))
    assert done.returncode == 64, done.stderr
    assert named in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""
    assert job.token_file.read_bytes() == before and token_requests(job.standin) == 0


def test_bad_config_is_one_line_and_78_with_the_token_file_untouched(job: JobFiles) -> None:
    job.write_tokens()
    before = job.token_file.read_bytes()
    not_json = job.root / "broken.json"
    not_json.write_text("{client_id: x", encoding="utf-8")
    cases = {
        str(not_json): "not JSON",
        str(write_config(job, "1.json", clientid="typo")): "clientid",
        str(write_config(job, "2.json", task="noop")): "task",
        str(write_config(job, "3.json", account_id="acme")): "account_id",
        str(write_config(job, "4.json", start_date="yesterday")): "start_date",
        str(write_config(job, "5.json", start_date="2999-01-01T00:00:00Z")): "future",
        str(write_config(job, "6.json", token_file=None)): "token_file",
        str(write_config(job, "7.json", list_ids=True)): "list_ids",
    }
    for path, named in cases.items():
        done = tap(job, "--config", path)
        assert done.returncode == 78, (named, done.stderr)
        assert named in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "AWEBER_" not in done.stderr
        assert done.stdout == ""
    missing = tap(job)
    assert missing.returncode == 64 and "--config" in missing.stderr
    assert job.token_file.read_bytes() == before and token_requests(job.standin) == 0


def test_the_environment_and_an_env_file_play_no_part(job: JobFiles) -> None:
    recent = populate(job.standin)
    job.write_tokens()
    config = str(write_config(job))
    elsewhere = job.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text("AWEBER_CLIENT_ID=wrong\nAWEBER_API_URL=http://127.0.0.1:9/1.0\n", encoding="utf-8")
    env = {**tap_env(job), "AWEBER_TOKEN_FILE": str(job.root / "missing.json"), "AWEBER_CLIENT_ID": "wrong",
           "AWEBER_TOKEN_URL": "http://127.0.0.1:9/oauth2/token", "AWEBER_LIST_IDS": "999"}
    done = tap(job, "--config", config, env=env, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert sorted(emails_of(messages(done.stdout))) == sorted(recent)


def write_state(job: JobFiles, lists: dict[str, Any], name: str = "state.json") -> str:
    path = job.root / name
    path.write_text(json.dumps({"bookmarks": {"subscribers": {"lists": lists}}}), encoding="utf-8")
    return str(path)


def a_mark(when: datetime) -> dict[str, Any]:
    return {"subscribed_at": when.isoformat(), "ids": []}


def test_a_state_that_does_not_fit_is_one_line_and_65_with_the_token_file_untouched(job: JobFiles) -> None:
    job.write_tokens()
    before = job.token_file.read_bytes()
    past = datetime.now(timezone.utc) - timedelta(days=1)
    future = datetime.now(timezone.utc) + timedelta(days=30)
    not_json = job.root / "broken-state.json"
    not_json.write_text("bookmarks", encoding="utf-8")
    cases = [
        ({"account_id": ACCOUNT}, str(not_json), "not JSON"),
        ({"account_id": ACCOUNT}, write_state(job, {f"999/{LIST}": a_mark(past)}, "a.json"), "account 999"),
        ({"list_ids": [LIST]}, write_state(job, {f"{ACCOUNT}/{OTHER_LIST}": a_mark(past)}, "l.json"),
         f"list {OTHER_LIST}"),
        ({}, write_state(job, {f"{ACCOUNT}/{LIST}": a_mark(future)}, "f.json"), "future"),
    ]
    for settings, state, named in cases:
        done = tap(job, "--config", str(write_config(job, **settings)), "--state", state)
        assert done.returncode == 65, (named, done.stderr)
        assert named in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stdout == ""
    assert job.token_file.read_bytes() == before and token_requests(job.standin) == 0


def test_a_state_of_an_account_the_tokens_do_not_reach_writes_no_record_and_no_state(job: JobFiles) -> None:
    populate(job.standin)
    job.write_tokens()
    past = datetime.now(timezone.utc) - timedelta(days=1)
    done = tap(job, "--config", str(write_config(job)), "--state", write_state(job, {f"999/{LIST}": a_mark(past)}))
    assert done.returncode == 65, done.stderr
    assert "account 999" in done.stderr
    assert {m["type"] for m in messages(done.stdout)} == {"SCHEMA"}


def test_a_failed_run_emits_no_state_past_what_it_wrote(job: JobFiles) -> None:
    populate(job.standin, lists=(LIST, OTHER_LIST))
    job.write_tokens()
    config = str(write_config(job))
    first = tap(job, "--config", config)
    state_file = job.root / "state.json"
    state_file.write_text(json.dumps(last_state(messages(first.stdout))), encoding="utf-8")
    add_subscribers(job.standin, ["a@example.com"], ago=5)
    add_subscribers(job.standin, ["b@example.com"], ago=4, list_id=OTHER_LIST)
    # The second list's subscribers cannot be read: AWeber answers 500 until the retries run out.
    job.standin.inject(*[Fault(status=500)] * 50, path=f"/1.0/accounts/{ACCOUNT}/lists/{OTHER_LIST}/subscribers")
    failed = tap(job, "--config", config, "--state", str(state_file))
    assert failed.returncode == 75, failed.stderr
    found = messages(failed.stdout)
    assert emails_of(found) == ["a@example.com"]
    # One STATE, after the first list's record: it moves that list's bookmark and leaves the other's as it was.
    first_state = last_state(messages(first.stdout))["bookmarks"]["subscribers"]["lists"]
    (state,) = [m["value"] for m in found if m["type"] == "STATE"]
    marks = state["bookmarks"]["subscribers"]["lists"]
    assert found.index(next(m for m in found if m["type"] == "STATE")) > found.index(
        next(m for m in found if m["type"] == "RECORD" and m["stream"] == "subscribers"))
    assert marks[f"{ACCOUNT}/{OTHER_LIST}"] == first_state[f"{ACCOUNT}/{OTHER_LIST}"]
    assert marks[f"{ACCOUNT}/{LIST}"] != first_state[f"{ACCOUNT}/{LIST}"]
    # Handed over, it brings the one subscriber not yet written, and not the one that was.
    state_file.write_text(json.dumps(state), encoding="utf-8")
    job.standin.faults.clear()
    again = tap(job, "--config", config, "--state", str(state_file))
    assert again.returncode == 0, again.stderr
    assert emails_of(messages(again.stdout)) == ["b@example.com"]


def test_legacy_oauth1_token_file(job: JobFiles) -> None:
    pytest.importorskip("oauthlib")
    recent = populate(job.standin)
    credentials = job.standin.add_oauth1_credentials().as_token_file()
    job.token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    job.token_file.write_text(json.dumps(credentials), encoding="utf-8")
    os.chmod(job.token_file, 0o600)
    before = job.token_file.read_bytes()
    done = tap(job, "--config", str(write_config(job, client_id=None, client_secret=None)))
    assert done.returncode == 0, done.stderr
    assert sorted(emails_of(messages(done.stdout))) == sorted(recent)
    assert messages(done.stdout)[-1]["type"] == "STATE"
    assert token_requests(job.standin) == 0 and job.token_file.read_bytes() == before
    for value in credentials.values():
        if len(str(value)) >= 8:
            assert str(value) not in done.stdout + done.stderr


def test_postgresql_store_keeps_the_tokens_and_not_the_tap_state(job: JobFiles, pg_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    recent = populate(job.standin)
    grant = job.write_tokens()
    env = {**job.env(), "AWEBER_STORE": pg_url}
    for args in (["store", "init"], ["connections", "import", "acme", str(job.token_file)]):
        made = run_job(args, env)
        assert made.returncode == 0, made.stderr
    # The store's URL as the config gives it, with a password (trust auth takes any): never in a message or a line.
    config = str(write_config(job, token_file=None, store=with_password(pg_url), connection="acme",
                              state_dir=str(job.root / "state")))
    done = tap(job, "-v", "--config", config)
    assert done.returncode == 0, done.stderr
    assert sorted(emails_of(messages(done.stdout))) == sorted(recent)
    with psycopg.connect(pg_url, autocommit=True) as db:
        tokens, task_state, exit_code = db.execute(
            "SELECT tokens, task_state, last_exit_code FROM aweber_job.connections WHERE name = 'acme'").fetchone()
    stored = json.loads(bytes(tokens))
    assert stored["refresh_token"] != grant["refresh_token"]
    assert token_requests(job.standin) == 1 and exit_code == 0
    assert task_state == {}
    assert PASSWORD not in done.stdout + done.stderr
    # An error that names the store names it without its password.
    missing = tap(job, "--config", str(write_config(job, "missing.json", token_file=None, store=with_password(pg_url),
                                                    connection="nobody", state_dir=str(job.root / "state"))))
    assert missing.returncode == 65, missing.stderr
    assert "nobody" in missing.stderr and "postgres@" in missing.stderr
    assert PASSWORD not in missing.stdout + missing.stderr
