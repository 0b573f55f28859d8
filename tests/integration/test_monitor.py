"""Monitoring: healthchecks-style pings and the Prometheus metrics file, around real runs."""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from job.config import Settings
from job.errors import EXIT_MEANINGS
from job.logs import REDACTOR
from job.run.monitor import MAX_PING_BODY_BYTES, PING_ATTEMPTS, Monitor, ping_url_for, read_last_success
from job.run.single import RunOutcome
from tests.support.jobs import CONFIDENTIAL_SECRET, JobFiles, run_job
from tests.support.recorder import CHECK_PATH, PingReceiver


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a metrics file, keyed by name and sorted labels (parsed by prometheus_client)."""
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        assert family.type == "gauge", family.name
        assert family.documentation, family.name
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def settings_for(tmp_path: Path, *, ping_url: str | None = None, metrics_file: Path | None = None) -> Settings:
    """Settings for an in-process Monitor."""
    return Settings(
        client_id="cid",
        client_secret=None,
        client_secret_source=None,
        token_file=tmp_path / "tokens.json",
        state_dir=tmp_path,
        http_timeout_seconds=5,
        ping_url=ping_url,
        metrics_file=metrics_file,
    )


def token_counts(stats: dict[str, Any], kind: str) -> int:
    """Requests of one kind the stand-in counted."""
    return sum(stats[kind].values())


# -- pings around real runs -------------------------------------------------------------------------


def test_good_run_pings_start_then_success(job: JobFiles, receiver: PingReceiver) -> None:
    """A successful run pings <url>/start, then <url> with a short summary, both with one run id."""
    job.write_tokens()
    result = run_job(["run", "--task", "noop"], job.env(AWEBER_PING_URL=receiver.url))
    assert result.returncode == 0, result.stderr
    assert receiver.kinds() == ["start", ""]
    start, success = receiver.pings
    assert start.method == success.method == "POST"
    rids = {p.query["rid"][0] for p in receiver.pings}
    assert len(rids) == 1
    assert success.body.startswith("ok: task noop")
    assert "access token expires" in success.body
    for ping in receiver.pings:
        lowered = {k.lower() for k in ping.headers}
        assert "authorization" not in lowered and "cookie" not in lowered
        assert ping.headers["User-Agent"].startswith("aweber-job/")


def test_unparseable_token_file_pings_fail_with_65(job: JobFiles, receiver: PingReceiver) -> None:
    """A token file that is not JSON ends in exit 65 and a /fail ping naming the code and the error."""
    job.token_file.parent.mkdir(parents=True, exist_ok=True)
    job.token_file.write_text("{not json\n", encoding="utf-8")
    result = run_job(["run", "--task", "noop"], job.env(AWEBER_PING_URL=receiver.url))
    assert result.returncode == 65, result.stderr
    assert receiver.kinds() == ["start", "fail"]
    body = receiver.pings[1].body
    assert body.startswith(f"exit code 65: {EXIT_MEANINGS[65]}")
    assert "--- last log lines ---" in body
    last_error = [line for line in result.stderr.splitlines() if "error" in line][-1]
    assert last_error in body


def test_invalid_grant_pings_fail_with_77(job: JobFiles, receiver: PingReceiver) -> None:
    """A refresh token the server refuses ends in exit 77 and a /fail ping saying to authorize again."""
    job.write_tokens(refresh_token="rt-unknown-0123456789abcdef")
    result = run_job(["run", "--task", "noop"], job.env(AWEBER_PING_URL=receiver.url))
    assert result.returncode == 77, result.stderr
    assert receiver.kinds() == ["start", "fail"]
    body = receiver.pings[1].body
    assert body.startswith(f"exit code 77: {EXIT_MEANINGS[77]}")
    assert "login" in body


def test_unreachable_ping_url_changes_nothing_else(job: JobFiles) -> None:
    """A ping host that refuses connections costs a warning, not the exit code nor the rotated tokens."""
    job.write_tokens()
    before = job.read_tokens()["refresh_token"]
    url = f"http://127.0.0.1:{closed_port()}{CHECK_PATH}"
    started = time.monotonic()
    result = run_job(["run", "--task", "noop"], job.env(AWEBER_PING_URL=url))
    assert time.monotonic() - started < 25
    assert result.returncode == 0, result.stderr
    after = job.read_tokens()["refresh_token"]
    assert after != before
    assert after in job.standin.live_refresh_tokens()
    warnings = [line for line in result.stderr.splitlines() if "warning" in line and "monitoring ping" in line]
    assert any("(start) not delivered" in line for line in warnings)
    assert any("(success) not delivered" in line for line in warnings)
    assert CHECK_PATH not in result.stderr


def test_unreachable_ping_url_keeps_a_failure_code(job: JobFiles) -> None:
    """With the ping host down, a failing run still exits with its own code."""
    job.write_tokens(refresh_token="rt-unknown-0123456789abcdef")
    url = f"http://127.0.0.1:{closed_port()}{CHECK_PATH}"
    result = run_job(["-q", "run", "--task", "noop"], job.env(AWEBER_PING_URL=url))
    assert result.returncode == 77, result.stderr
    assert "(fail) not delivered" in result.stderr


def test_pings_carry_no_secret(job: JobFiles, receiver: PingReceiver) -> None:
    """No token (before or after rotation) nor the client secret appears in any ping URL or body."""
    env = job.env(AWEBER_PING_URL=receiver.url)
    first = job.write_tokens()
    assert run_job(["-vv", "run", "--task", "noop"], env).returncode == 0
    rotated = job.read_tokens()
    # A token file whose shape is wrong, with live secrets in it: the failure is reported, not the values.
    second = job.write_tokens(expires_at="soon")
    assert run_job(["-vv", "run", "--task", "noop"], env).returncode == 65
    job.write_tokens(refresh_token="rt-unknown-0123456789abcdef")
    assert run_job(["-vv", "run", "--task", "noop"], env).returncode == 77
    secrets = {
        str(first["access_token"]), str(first["refresh_token"]),
        str(rotated["access_token"]), str(rotated["refresh_token"]),
        str(second["access_token"]), str(second["refresh_token"]),
        "rt-unknown-0123456789abcdef", CONFIDENTIAL_SECRET,
    }
    assert receiver.kinds() == ["start", "", "start", "fail", "start", "fail"]
    for ping in receiver.pings:
        seen = ping.path + json.dumps(ping.query) + json.dumps(ping.headers) + ping.body
        for secret in secrets:
            assert secret not in seen


# -- the metrics file -------------------------------------------------------------------------------


def test_metrics_file_carries_the_run(job: JobFiles, tmp_path: Path) -> None:
    """After a run the metrics file parses and holds its exit code, token expiry and request counts."""
    now = time.time()
    job.standin.add_account(1001)
    job.standin.add_list(1001, 2001, "News", size=7, start=now - 3 * 3600, end=now - 60)
    job.write_tokens()
    metrics_file = tmp_path / "textfile" / "aweber_job.prom"
    metrics_file.parent.mkdir()
    result = run_job(["run"], job.env(AWEBER_METRICS_FILE=str(metrics_file)))
    assert result.returncode == 0, result.stderr
    values = metrics(metrics_file)
    stats = job.standin.stats()
    assert values[("aweber_job_exit_code", ())] == 0
    assert values[("aweber_job_access_token_expiry_timestamp_seconds", ())] == job.read_tokens()["expires_at"]
    assert values[("aweber_job_http_requests", (("kind", "token"),))] == token_counts(stats, "token") == 1
    assert values[("aweber_job_http_requests", (("kind", "api"),))] == token_counts(stats, "api") > 0
    assert values[("aweber_job_new_subscribers", ())] == 7
    assert values[("aweber_job_refreshes", ())] == 1
    assert values[("aweber_job_refresh_duration_seconds", ())] >= 0
    assert ("aweber_job_info", (("task", "new-subscribers"), ("version", "0.1.0"))) in values
    ran = values[("aweber_job_last_run_timestamp_seconds", ())]
    assert now <= ran <= time.time()
    assert values[("aweber_job_last_success_timestamp_seconds", ())] == ran
    assert stat.S_IMODE(os.stat(metrics_file).st_mode) == 0o644
    assert [p.name for p in metrics_file.parent.iterdir()] == [metrics_file.name]


def test_metrics_file_keeps_last_success_across_a_failing_run(job: JobFiles, tmp_path: Path) -> None:
    """A failing run rewrites the file with its exit code and keeps the earlier success time."""
    metrics_file = tmp_path / "aweber_job.prom"
    env = job.env(AWEBER_METRICS_FILE=str(metrics_file))
    job.write_tokens()
    assert run_job(["run", "--task", "noop"], env).returncode == 0
    first = metrics(metrics_file)
    success = first[("aweber_job_last_success_timestamp_seconds", ())]

    job.token_file.write_text("{not json\n", encoding="utf-8")
    assert run_job(["run", "--task", "noop"], env).returncode == 65
    second = metrics(metrics_file)
    assert second[("aweber_job_exit_code", ())] == 65
    assert second[("aweber_job_last_success_timestamp_seconds", ())] == success
    assert second[("aweber_job_last_run_timestamp_seconds", ())] > success
    assert second[("aweber_job_http_requests", (("kind", "token"),))] == 0
    assert ("aweber_job_access_token_expiry_timestamp_seconds", ()) not in second

    job.write_tokens()
    assert run_job(["run", "--task", "noop"], env).returncode == 0
    third = metrics(metrics_file)
    assert third[("aweber_job_exit_code", ())] == 0
    assert third[("aweber_job_last_success_timestamp_seconds", ())] > success


def test_metrics_without_any_success_have_no_last_success(job: JobFiles, tmp_path: Path) -> None:
    """A first run that fails writes no last-success sample at all."""
    metrics_file = tmp_path / "aweber_job.prom"
    job.write_tokens(refresh_token="rt-unknown-0123456789abcdef")
    assert run_job(["run", "--task", "noop"], job.env(AWEBER_METRICS_FILE=str(metrics_file))).returncode == 77
    values = metrics(metrics_file)
    assert values[("aweber_job_exit_code", ())] == 77
    assert not any(name == "aweber_job_last_success_timestamp_seconds" for name, _ in values)


def test_unwritable_metrics_file_only_warns(job: JobFiles, tmp_path: Path) -> None:
    """A metrics file in a missing directory costs a warning, not the exit code."""
    job.write_tokens()
    metrics_file = tmp_path / "missing" / "aweber_job.prom"
    result = run_job(["run", "--task", "noop"], job.env(AWEBER_METRICS_FILE=str(metrics_file)))
    assert result.returncode == 0, result.stderr
    assert "cannot write the metrics file" in result.stderr
    assert not metrics_file.exists()


# -- Monitor in process -----------------------------------------------------------------------------


class RefusingSession(requests.Session):
    """A session that fails the test if anything is sent through it."""

    def send(self, request: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unexpected request to {request.url}")


def test_monitor_with_nothing_configured_does_nothing(tmp_path: Path) -> None:
    """Without a ping URL or metrics file the monitor sends nothing and writes nothing."""
    monitor = Monitor(settings_for(tmp_path), RefusingSession(), sleep=lambda s: pytest.fail("slept"))
    assert not monitor.enabled
    monitor.start()
    monitor.finish(RunOutcome(exit_code=75))
    assert list(tmp_path.iterdir()) == []


def test_ping_leaves_session_credentials_behind(tmp_path: Path, receiver: PingReceiver) -> None:
    """Headers and cookies set on the session never reach the monitoring host."""
    session = requests.Session()
    session.headers["Authorization"] = "Bearer session-wide-token-1234567"
    session.headers["User-Agent"] = "aweber-job/test"
    session.cookies.set("sid", "cookie-value-1234567", domain="127.0.0.1")
    session.auth = ("user", "password-1234567")
    monitor = Monitor(settings_for(tmp_path, ping_url=receiver.url), session, log_tail=[])
    monitor.start()
    monitor.finish(RunOutcome())
    assert receiver.kinds() == ["start", ""]
    for ping in receiver.pings:
        assert {k.lower() for k in ping.headers} & {"authorization", "cookie"} == set()
        assert ping.headers["User-Agent"] == "aweber-job/test"


def test_failure_body_is_capped_and_redacted(tmp_path: Path, receiver: PingReceiver) -> None:
    """The failure body keeps the newest log lines within the cap and redacts known secrets again."""
    secret = "tail-secret-value-98765"
    REDACTOR.add(secret)
    tail = [f"aweber-job: info: line {i} " + "x" * 200 for i in range(200)] + [f"aweber-job: error: {secret} é"]
    monitor = Monitor(settings_for(tmp_path, ping_url=receiver.url), requests.Session(), log_tail=tail)
    monitor.finish(RunOutcome(exit_code=75, task="noop"))
    (ping,) = receiver.pings
    assert receiver.kinds() == ["fail"]
    assert len(ping.body.encode("utf-8")) <= MAX_PING_BODY_BYTES
    assert ping.body.startswith(f"exit code 75: {EXIT_MEANINGS[75]}\ntask: noop\n")
    last_line = ping.body.splitlines()[-1]
    assert last_line.startswith("aweber-job: error: [redacted:") and last_line.endswith("] é")
    assert secret not in ping.body
    assert "line 199 " in ping.body and "line 0 " not in ping.body


def test_ping_retries_server_errors_then_gives_up_with_a_warning(
    tmp_path: Path, receiver: PingReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A 5xx is retried a few times with backoff; then the monitor warns and returns."""
    receiver.statuses.extend([503] * 10)
    sleeps: list[float] = []
    monitor = Monitor(settings_for(tmp_path, ping_url=receiver.url), requests.Session(), sleep=sleeps.append)
    with caplog.at_level("WARNING", logger="job"):
        monitor.start()
    assert receiver.kinds() == ["start"] * PING_ATTEMPTS
    assert len(sleeps) == PING_ATTEMPTS - 1 and all(0 < s <= 2 for s in sleeps)
    assert "monitoring ping (start) not delivered: ping to 127.0.0.1: HTTP 503" in caplog.text
    assert CHECK_PATH not in caplog.text


def test_ping_refused_by_the_host_is_not_retried(tmp_path: Path, receiver: PingReceiver) -> None:
    """A 404 (unknown check) will not change on retry: one request, no sleep."""
    receiver.statuses.append(404)
    monitor = Monitor(
        settings_for(tmp_path, ping_url=receiver.url), requests.Session(), sleep=lambda s: pytest.fail("slept")
    )
    monitor.finish(RunOutcome())
    assert receiver.kinds() == [""]


def test_ping_url_keeps_its_query_and_adds_the_run_id() -> None:
    """Suffixes go on the path; an existing query (e.g. create=1) is kept beside rid."""
    assert ping_url_for("https://hc-ping.com/key/slug?create=1", "/fail", "r1") == (
        "https://hc-ping.com/key/slug/fail?create=1&rid=r1"
    )
    assert ping_url_for("https://hc-ping.com/uuid", "", "r2") == "https://hc-ping.com/uuid?rid=r2"


def test_metrics_written_in_process_round_trip(tmp_path: Path) -> None:
    """Metrics written by the monitor parse, and the last success is read back from them."""
    metrics_file = tmp_path / "m.prom"
    clock = iter([1_800_000_000.5, 1_800_086_400.25])
    monitor = Monitor(settings_for(tmp_path, metrics_file=metrics_file), RefusingSession(), clock=lambda: next(clock))
    monitor.start()
    monitor.finish(RunOutcome(refreshes=1, refresh_seconds=0.25, token_requests=1, access_expires_at=1_800_007_200.0))
    assert read_last_success(metrics_file) == 1_800_000_000.5
    monitor.finish(RunOutcome(exit_code=1, task="new-subscribers", api_requests=3, new_subscribers=0))
    values = metrics(metrics_file)
    assert values[("aweber_job_last_success_timestamp_seconds", ())] == 1_800_000_000.5
    assert values[("aweber_job_last_run_timestamp_seconds", ())] == 1_800_086_400.25
    assert values[("aweber_job_new_subscribers", ())] == 0
    assert values[("aweber_job_http_requests", (("kind", "api"),))] == 3
    assert all(math.isfinite(v) for v in values.values())


def test_ping_url_path_never_reaches_the_log(job: JobFiles, receiver: PingReceiver) -> None:
    """At -vv (urllib3's connection lines shown) neither the ping URL's path nor its query is in stderr."""
    job.write_tokens()
    url = receiver.url + "?key=ping-query-secret-4e9d"
    ok = run_job(["-vv", "run", "--task", "noop"], job.env(AWEBER_PING_URL=url))
    assert ok.returncode == 0, ok.stderr
    job.write_tokens(refresh_token="rt-unknown-0123456789abcdef")
    refused = run_job(["-vv", "--log-format", "json", "run", "--task", "noop"], job.env(AWEBER_PING_URL=url))
    assert refused.returncode == 77, refused.stderr
    assert receiver.kinds() == ["start", "", "start", "fail"]
    # The lines urllib3 writes at -vv are there, so the check below looks where the path would be.
    assert "POST " in ok.stderr and "POST " in refused.stderr
    for stderr in (ok.stderr, refused.stderr):
        assert CHECK_PATH.rsplit("/", 1)[-1] not in stderr
        assert "ping-query-secret-4e9d" not in stderr
