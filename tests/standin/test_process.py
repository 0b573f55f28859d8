"""Process mode: ``python -m tests.support.standin`` serves until SIGTERM and is driven through StandInControl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from job.standin import Fault, StandIn
from tests.standin.conftest import CONF_ID, CONF_SECRET, PUBLIC_ID, bearer
from tests.support.standin import StandInControl, handle_control

REPO = Path(__file__).resolve().parents[2]
START = 1_790_000_000


def start_process(tmp_path: Path, config: dict[str, object] | None) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the stand-in as a child process; return it and its port-file path."""
    port_file = tmp_path / "standin.port"
    command = [sys.executable, "-m", "tests.support.standin", "--port-file", str(port_file)]
    if config is not None:
        config_file = tmp_path / "standin.json"
        config_file.write_text(json.dumps(config), encoding="utf-8")
        command += ["--config", str(config_file)]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return process, port_file


def wait_for_port(process: subprocess.Popen[bytes], port_file: Path) -> int:
    """Wait until the port file appears (the server is listening) and return the port."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text(encoding="ascii"))
        if process.poll() is not None:
            raise AssertionError(f"the stand-in exited early: {process.communicate()[1].decode()}")
        time.sleep(0.05)
    raise AssertionError("the stand-in did not write its port file in time")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, StandInControl]]:
    """A stand-in process with two clients and one account, and a control client for it."""
    config = {
        "clients": {CONF_ID: CONF_SECRET, PUBLIC_ID: None},
        "access_token_lifetime_seconds": 3600,
        "accounts": [{"id": 123, "lists": [{"id": 456, "name": "Newsletter", "size": 120, "start": START,
                                            "end": START + 119 * 60, "seed": 2}]}],
    }
    process, port_file = start_process(tmp_path, config)
    try:
        port = wait_for_port(process, port_file)
        yield process, port_file, StandInControl(f"http://127.0.0.1:{port}")
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_process_serves_control_and_stops_cleanly_on_sigterm(
    running: tuple[subprocess.Popen[bytes], Path, StandInControl],
) -> None:
    """The process is driven like an in-thread stand-in, then exits 0 on SIGTERM and removes its port file."""
    process, port_file, control = running
    assert control.info()["pid"] == process.pid
    grant = control.issue_tokens(CONF_ID)
    assert grant["expires_in"] == 3600
    data = {"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]}
    rotated = requests.post(control.token_url, data=data, auth=(CONF_ID, CONF_SECRET), timeout=5).json()
    assert control.live_refresh_tokens() == {rotated["refresh_token"]}

    control.inject(Fault(drop="after"), path="/oauth2/token")
    data["refresh_token"] = rotated["refresh_token"]
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(control.token_url, data=data, auth=(CONF_ID, CONF_SECRET), timeout=5)
    live = control.live_refresh_tokens()
    assert rotated["refresh_token"] not in live and len(live) == 1
    assert control.stats()["token"] == {"refresh_token:200": 1, "refresh_token:200:lost": 1}
    # Three grants so far (one issued, two refreshes, one answer lost): all six tokens are on record.
    issued = control.issued_secrets()
    assert len(issued) == 6 and {grant["access_token"], grant["refresh_token"], *live} <= set(issued)

    ids = control.add_subscribers(123, 456, [{"email": "new@example.com", "subscribed_at": START + 86_400}])
    api = f"{control.api_url}/accounts/123/lists/456/subscribers"
    found = requests.get(api, params={"ws.op": "find", "email": "new@example.com"},
                         headers=bearer(rotated["access_token"]), timeout=5).json()
    assert [entry["id"] for entry in found["entries"]] == ids

    control.expire_access_tokens()
    assert requests.get(api, headers=bearer(rotated["access_token"]), timeout=5).status_code == 401
    assert [entry["status"] for entry in control.request_log()][-1] == 401
    control.reset_stats()
    assert control.stats()["requests_total"] == 0

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert not port_file.exists()


def test_control_errors_raise_value_error(running: tuple[subprocess.Popen[bytes], Path, StandInControl]) -> None:
    """Bad control input raises ValueError in the test, as the in-thread stand-in does."""
    _, _, control = running
    with pytest.raises(ValueError, match="unknown client"):
        control.issue_tokens("nobody")
    with pytest.raises(ValueError, match="before the list's latest"):
        control.add_subscribers(123, 456, [{"email": "old@example.com", "subscribed_at": START - 1}])


def test_sigint_also_stops_the_process(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) stops the process cleanly too, and a default config works."""
    process, port_file = start_process(tmp_path, None)
    try:
        port = wait_for_port(process, port_file)
        assert StandInControl(f"http://127.0.0.1:{port}").issue_tokens("demo-client")["token_type"] == "bearer"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_bad_config_exits_2(tmp_path: Path) -> None:
    """A config with an unknown key exits 2 with a message, and never writes a port file."""
    process, port_file = start_process(tmp_path, {"clientz": {}})
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 2
    assert b"unknown config keys: clientz" in stderr
    assert not port_file.exists()


def test_control_client_drives_an_in_thread_stand_in_too() -> None:
    """StandInControl works against a StandIn started in-thread with the control handler installed."""
    with StandIn(clients={CONF_ID: CONF_SECRET}, control_handler=handle_control) as server:
        control = StandInControl(server.base_url)
        control.add_account(7, company="Seven")
        control.add_list(7, 8, "Eight", size=3, start=START, end=START + 10, seed=1)
        grant = control.issue_tokens(CONF_ID, scope="account.read")
        assert control.live_refresh_tokens() == server.live_refresh_tokens() == {grant["refresh_token"]}
        control.inject(Fault(status=503), path="/1.0/")
        assert server.faults.pending() == 1
        control.disconnect(CONF_ID)
        url = f"{server.api_url}/accounts"
        assert requests.get(url, headers=bearer(grant["access_token"]), timeout=5).status_code == 503
        assert requests.get(url, headers=bearer(grant["access_token"]), timeout=5).status_code == 401
        control.reconnect()
        accounts = requests.get(url, headers=bearer(grant["access_token"]), timeout=5).json()
        assert accounts["entries"][0]["company"] == "Seven"
        control.revoke_all_access_tokens()
        assert requests.get(url, headers=bearer(grant["access_token"]), timeout=5).status_code == 401
        assert control.stats() == server.stats()


def test_odd_answers_and_reuse_detection_work_through_the_control_api(
    running: tuple[subprocess.Popen[bytes], Path, StandInControl],
) -> None:
    """In process mode an odd-answer fault and the reuse-detection switch are driven through the control API."""
    _, _, control = running
    token = str(control.issue_tokens(CONF_ID)["refresh_token"])
    control.inject(Fault(odd_answer="expires_in_nan"), path="/oauth2/token")
    data = {"grant_type": "refresh_token", "refresh_token": token}
    answer = requests.post(control.token_url, data=data, auth=(CONF_ID, CONF_SECRET), timeout=5)
    assert b'"expires_in": NaN' in answer.content
    (live,) = control.live_refresh_tokens()
    assert f'"refresh_token": "{live}"'.encode() in answer.content

    control.set_reuse_detection(True)
    replayed = requests.post(control.token_url, data=data, auth=(CONF_ID, CONF_SECRET), timeout=5)
    assert replayed.json()["error"] == "invalid_grant"
    assert control.live_refresh_tokens() == set()
    assert control.reuse_stats() == {"spent_refresh_tokens_presented": 1, "grants_revoked_for_reuse": 1}
    with pytest.raises(ValueError):
        control.set_reuse_detection("yes")  # type: ignore[arg-type]


def test_reuse_detection_can_be_set_in_the_config(tmp_path: Path) -> None:
    """"reuse_detection": true in the config file starts the stand-in with the switch on; a non-boolean exits 2."""
    process, port_file = start_process(tmp_path, {"clients": {CONF_ID: CONF_SECRET}, "reuse_detection": True})
    try:
        control = StandInControl(f"http://127.0.0.1:{wait_for_port(process, port_file)}")
        token = str(control.issue_tokens(CONF_ID)["refresh_token"])
        data = {"grant_type": "refresh_token", "refresh_token": token}
        for _ in range(2):
            requests.post(control.token_url, data=data, auth=(CONF_ID, CONF_SECRET), timeout=5)
        assert control.reuse_stats()["grants_revoked_for_reuse"] == 1
    finally:
        process.terminate()
        process.communicate(timeout=10)
    (tmp_path / "bad").mkdir()
    bad, _ = start_process(tmp_path / "bad", {"reuse_detection": "yes"})
    assert bad.wait(timeout=15) == 2
    bad.communicate(timeout=5)


def test_api_behaviour_comes_from_the_config_file_and_the_control_endpoint(tmp_path: Path) -> None:
    """The API behaviour switches are read from the JSON config and changed through /_control/configure-api."""
    config = {"clients": {CONF_ID: CONF_SECRET}, "next_links_drop_filters": True, "filter_day_offset_hours": 14,
              "exclusive_day_filters": True,
              "accounts": [{"id": 1, "lists": [{"id": 2, "size": 30, "start": START, "end": START + 29 * 60}]}]}
    process, port_file = start_process(tmp_path, config)
    try:
        control = StandInControl(f"http://127.0.0.1:{wait_for_port(process, port_file)}")
        token = control.issue_tokens(CONF_ID)["access_token"]
        url = f"{control.api_url}/accounts/1/lists/2/subscribers"
        params = {"ws.op": "find", "sort_key": "subscribed_at", "ws.size": "10"}

        def next_link() -> str:
            page = requests.get(url, params=params, headers=bearer(token), timeout=5).json()
            return str(page["next_collection_link"])

        assert next_link().endswith("/subscribers?ws.start=10&ws.size=10")
        assert control.configure_api(next_links_drop_filters=False) == {
            "filter_day_offset_hours": 14.0, "exclusive_day_filters": True, "next_links_drop_filters": False,
        }
        assert control.configure_api(filter_day_offset_hours=-12, exclusive_day_filters=False) == {
            "filter_day_offset_hours": -12.0, "exclusive_day_filters": False, "next_links_drop_filters": False,
        }
        assert "ws.op=find&sort_key=subscribed_at" in next_link()
        refused = requests.post(f"{control.base_url}/_control/configure-api",
                                json={"next_links_drop_filters": "yes"}, timeout=5)
        assert refused.status_code == 400 and "next_links_drop_filters" in refused.json()["error"]
    finally:
        process.kill()
        process.communicate(timeout=10)


def test_the_request_delay_can_be_switched_while_running_and_spares_the_control_endpoints() -> None:
    """A slow AWeber on demand (a fleet run with work in flight); the control endpoints stay quick."""
    with StandIn(clients={CONF_ID: CONF_SECRET}, control_handler=handle_control) as server:
        control = StandInControl(server.base_url)
        url = f"{server.api_url}/accounts"

        def timed_get() -> float:
            started = time.monotonic()
            requests.get(url, timeout=5)
            return time.monotonic() - started

        assert timed_get() < 0.2
        control.set_request_delay(0.3)
        assert timed_get() >= 0.3
        started = time.monotonic()
        control.issue_tokens(CONF_ID)
        assert time.monotonic() - started < 0.2, "a control call waited out the delay"
        control.set_request_delay(0)
        assert timed_get() < 0.2
        with pytest.raises(ValueError, match="must not be negative"):
            control.set_request_delay(-1)
        with pytest.raises(ValueError, match="seconds is required"):
            control._call("POST", "request-delay", {})
