# ruff: noqa: F811
"""Pushing the run's metrics to a Pushgateway, as a real process would, to a recording receiver on loopback."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from job.cli import make_session
from job.config import load_settings
from job.errors import ConfigError
from job.run.monitor import metric_samples, render_metrics
from job.run.single import RunOptions, RunOutcome, run_cycle
from job.standin import Fault
from tests.integration.test_connections_cli import db_job, import_live_tokens  # noqa: F401 - the fixture is used by name
from tests.integration.test_monitor import closed_port
from tests.support.jobs import FakeTime, JobFiles, run_job
from tests.support.recorder import Request, recording_server
from tests.unit.test_new_subscribers import populate

RUN_GROUP = "/metrics/job/aweber-job"
SUCCESS_GROUP = "/metrics/job/aweber-job/result/success"
LAST_SUCCESS = "aweber_job_last_success_timestamp_seconds"
USER = "pusher"
PASSWORD = "pgw-Pa55word-7c1e9f5e2d8a"


@dataclass
class Push:
    method: str
    path: str
    headers: dict[str, str]
    body: str

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The body parsed by prometheus_client's parser: every family a documented gauge."""
        values = {}
        for family in text_string_to_metric_families(self.body):
            assert family.type == "gauge" and family.documentation, family.name
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return values


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    pushes: list[Push] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def gateway() -> Iterator[Receiver]:
    """A Pushgateway stand-in that records every request and answers 200 (or the queued ``statuses``)."""
    holder: list[Receiver] = []

    def record(request: Request) -> int:
        rec = holder[0]
        rec.pushes.append(Push(request.method, request.path, request.headers, request.body))
        return rec.statuses.pop(0) if rec.statuses else 200

    with recording_server(record) as server:
        holder.append(Receiver(server))
        yield holder[0]


def _without_last_success(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if LAST_SUCCESS not in line)


# -- a single run ---------------------------------------------------------------------------------------


def test_a_good_run_puts_the_textfile_metrics_then_the_last_success_in_its_own_group(
    job: JobFiles, gateway: Receiver, tmp_path: Path
) -> None:
    job.write_tokens()
    textfile = tmp_path / "job.prom"
    before = time.time()
    result = run_job(["run", "--task", "noop"],
                     job.env(AWEBER_PUSHGATEWAY_URL=gateway.url() + "/", AWEBER_METRICS_FILE=str(textfile)))
    after = time.time()
    assert result.returncode == 0, result.stderr
    assert [(p.method, p.path) for p in gateway.pushes] == [("PUT", RUN_GROUP), ("PUT", SUCCESS_GROUP)]
    run, success = gateway.pushes
    assert run.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    # The same names and text as the textfile, but for the last success, which has its own group.
    assert run.body == _without_last_success(textfile.read_text(encoding="utf-8"))
    samples = run.samples()
    assert samples[("aweber_job_exit_code", ())] == 0
    assert samples[("aweber_job_refreshes", ())] == 1
    assert samples[("aweber_job_http_requests", (("kind", "token"),))] == 1
    assert samples[("aweber_job_rate_limited", ())] == 0
    assert not any(name == LAST_SUCCESS for name, _ in samples)
    assert list(success.samples()) == [(LAST_SUCCESS, ())]
    assert before <= success.samples()[(LAST_SUCCESS, ())] <= after
    for push in gateway.pushes:
        assert "authorization" not in {key.lower() for key in push.headers}


def test_a_failed_run_replaces_the_run_group_and_leaves_the_last_success_alone(
    job: JobFiles, gateway: Receiver
) -> None:
    job.write_tokens(refresh_token="rt-unknown-0123456789abcdef")
    result = run_job(["run", "--task", "noop"], job.env(AWEBER_PUSHGATEWAY_URL=gateway.url()))
    assert result.returncode == 77, result.stderr
    assert [(p.method, p.path) for p in gateway.pushes] == [("PUT", RUN_GROUP)]
    assert gateway.pushes[0].samples()[("aweber_job_exit_code", ())] == 77


def test_one_connection_of_the_database_store_pushes_to_a_group_of_its_own(
    db_job: JobFiles, gateway: Receiver
) -> None:
    name = "shop@eu+1"
    import_live_tokens(db_job, name)
    result = run_job(["--connection", name, "run", "--task", "noop"],
                     db_job.env(AWEBER_PUSHGATEWAY_URL=gateway.url()))
    assert result.returncode == 0, result.stderr
    paths = [p.path for p in gateway.pushes]
    assert [p.method for p in gateway.pushes] == ["PUT", "PUT"]
    # '@' and '+' are percent-encoded; the Pushgateway decodes the path back to the name.
    assert paths == [f"{RUN_GROUP}/connection/shop%40eu%2B1", f"{RUN_GROUP}/connection/shop%40eu%2B1/result/success"]
    assert unquote(paths[0]).endswith(f"/connection/{name}")
    assert gateway.pushes[0].samples()[("aweber_job_exit_code", ())] == 0


def test_run_all_pushes_one_group_for_the_whole_run_with_each_connection_labelled(
    db_job: JobFiles, gateway: Receiver
) -> None:
    names = ["alpha", "beta"]
    for name in names:
        import_live_tokens(db_job, name)
    result = run_job(["run", "--all", "--task", "noop"], db_job.env(AWEBER_PUSHGATEWAY_URL=gateway.url()))
    assert result.returncode == 0, result.stderr
    assert [(p.method, p.path) for p in gateway.pushes] == [("PUT", RUN_GROUP), ("PUT", SUCCESS_GROUP)]
    samples = gateway.pushes[0].samples()
    assert samples[("aweber_job_refreshes", ())] == 2
    for name in names:
        assert samples[("aweber_job_connection_exit_code", (("connection", name),))] == 0


# -- a Pushgateway that fails ---------------------------------------------------------------------------


def test_a_gateway_answering_500_is_tried_twice_then_a_warning_naming_only_the_host(
    job: JobFiles, gateway: Receiver
) -> None:
    gateway.statuses.extend([500] * 10)
    job.write_tokens()
    before = job.read_tokens()["refresh_token"]
    started = time.monotonic()
    result = run_job(["-vv", "run", "--task", "noop"],
                     job.env(AWEBER_PUSHGATEWAY_URL=gateway.url(f"{USER}:{PASSWORD}@")))
    assert time.monotonic() - started < 25
    assert result.returncode == 0, result.stderr
    assert job.read_tokens()["refresh_token"] != before
    # One retry, then no push of the last success to a gateway that is failing.
    assert [p.path for p in gateway.pushes] == [RUN_GROUP, RUN_GROUP]
    warning = [line for line in result.stderr.splitlines() if "not delivered" in line]
    assert len(warning) == 1
    assert "push to 127.0.0.1: HTTP 500" in warning[0] and "result is unchanged" in warning[0]
    # The credentials went as basic auth, and never into the output, even at -vv.
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert all(p.headers["Authorization"] == expected for p in gateway.pushes)
    assert PASSWORD not in result.stderr + result.stdout
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in result.stderr


def test_a_refusing_gateway_keeps_a_failing_runs_exit_code(job: JobFiles) -> None:
    job.write_tokens(refresh_token="rt-unknown-0123456789abcdef")
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{closed_port()}"
    result = run_job(["-vv", "run", "--task", "noop"], job.env(AWEBER_PUSHGATEWAY_URL=url))
    assert result.returncode == 77, result.stderr
    warning = [line for line in result.stderr.splitlines() if "Pushgateway push" in line and "not delivered" in line]
    assert len(warning) == 1 and "ConnectionError" in warning[0]
    assert PASSWORD not in result.stderr + result.stdout


def test_a_gateway_refusing_the_metrics_is_not_asked_again(job: JobFiles, gateway: Receiver) -> None:
    gateway.statuses.append(400)
    job.write_tokens()
    result = run_job(["run", "--task", "noop"], job.env(AWEBER_PUSHGATEWAY_URL=gateway.url()))
    assert result.returncode == 0, result.stderr
    assert [p.path for p in gateway.pushes] == [RUN_GROUP]
    assert "push to 127.0.0.1: HTTP 400" in result.stderr


# -- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://pgw.example.com", "http://pushgateway.monitoring.svc:9091", "http://u:p4ssw0rd-long@127.0.0.1:9091",
    f"https://{USER}:{PASSWORD}@pgw.example.com/base/",
])
def test_accepted_pushgateway_urls(job: JobFiles, url: str) -> None:
    settings = load_settings(job.env(AWEBER_PUSHGATEWAY_URL=url))
    assert settings.pushgateway_url is not None
    assert settings.pushgateway_url.reveal() == url.rstrip("/")
    assert PASSWORD not in repr(settings)


@pytest.mark.parametrize(("url", "why"), [
    (f"http://{USER}:{PASSWORD}@pgw.example.com", "credentials over plain http to pgw.example.com"),
    ("ftp://pgw.example.com", "must be an http(s) URL"),
    ("https://pgw.example.com/?a=b", "must not have a query"),
    ("https://pgw.example.com:99999", "not a valid URL"),
])
def test_refused_pushgateway_urls_name_the_variable_and_never_the_password(
    job: JobFiles, url: str, why: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(job.env(AWEBER_PUSHGATEWAY_URL=url))
    message = str(raised.value)
    assert "AWEBER_PUSHGATEWAY_URL" in message and why in message
    assert PASSWORD not in message


# -- rate limits and pacing, in the metrics -------------------------------------------------------------


def test_rate_limit_answers_are_counted_into_the_outcome_and_the_metrics(job: JobFiles) -> None:
    populate(job.standin, (201,), size=0)
    job.write_tokens()
    job.standin.inject(Fault(status=403, message="Rate Limit Error"), path="/1.0/accounts")
    fake_time = FakeTime()
    outcome = RunOutcome()
    # The test environment keeps retries short; the rate-limit wait is a minute.
    run_cycle(load_settings(job.env(AWEBER_RETRY_DEADLINE="300")), make_session(), RunOptions(task="new-subscribers"),
              stdout=io.StringIO(),
              outcome=outcome, monotonic=fake_time.monotonic, sleep=fake_time.sleep)
    assert outcome.rate_limited == 1
    assert fake_time.sleeps == [60.0]  # the rate-limit wait, which is not pacing
    assert outcome.pacing_wait_seconds == 0
    text = render_metrics(metric_samples(outcome, 2000.0, None, 1.0))
    assert "\naweber_job_rate_limited 1\n" in text
    assert "\naweber_job_pacing_wait_seconds 0\n" in text


def test_pacing_waits_are_summed_into_the_outcome_and_the_metrics(job: JobFiles) -> None:
    populate(job.standin, (201,), size=0)
    job.write_tokens()
    fake_time = FakeTime()
    outcome = RunOutcome()
    # One request a minute: every request after the first waits for the pacer.
    run_cycle(load_settings(job.env(AWEBER_RATE_LIMIT="1")), make_session(), RunOptions(task="new-subscribers"),
              stdout=io.StringIO(), outcome=outcome, monotonic=fake_time.monotonic, sleep=fake_time.sleep)
    assert outcome.api_requests >= 3
    assert len(fake_time.sleeps) == outcome.api_requests - 1
    assert outcome.pacing_wait_seconds == pytest.approx(sum(fake_time.sleeps))
    assert outcome.rate_limited == 0
    text = render_metrics(metric_samples(outcome, 2000.0, None, 1.0))
    assert f"\naweber_job_pacing_wait_seconds {sum(fake_time.sleeps):g}\n" in text
