"""Monitoring around a run (docs/design.md §7): healthchecks.io-style pings and a Prometheus textfile.

Both are optional and both are best effort: a ping that cannot be delivered or a metrics file that
cannot be written logs a warning and never changes the run's exit code — monitoring reports the
job's result, it must not become it.

Pings follow the healthchecks.io protocol: ``<url>/start`` when the run starts, ``<url>`` on
success, ``<url>/fail`` on failure, all carrying the same ``rid`` (run id) query parameter so the
server pairs start and finish. The failure body names the exit code and the last log lines; it is
built from lines that are already redacted and is redacted once more. Pings are sent as a request
prepared here rather than through the session's defaults, so no header or cookie meant for AWeber
can reach the monitoring host.

The metrics file is for node_exporter's textfile collector: rewritten atomically after every run,
mode 0644 (it holds no secret, and node_exporter runs as another user). Textfile directories are often
writable by a group, so a symlink found at its path is replaced, never followed, and a path that
names one of the job's own files (token file, lock, task state) is never written.

A Kubernetes CronJob's pod has no textfile collector: with a Pushgateway URL the same metrics are
pushed after the run, with PUT to ``<url>/metrics/job/aweber-job`` (plus ``/connection/NAME`` for a
single run of one connection of the database store), which replaces the group with this run's view.
A PUT replaces every metric of its group, so the last success time lives in a group of its own,
``…/result/success``, that only a successful run pushes: a failed run never erases it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests

from job import __version__
from job.auth.tokens import format_expiry
from job.config import Settings
from job.errors import EXIT_MEANINGS, EXIT_OK, JobError, TemporaryError
from job.logs import LOG_TAIL, REDACTOR
from job.retries import call_with_retries, parse_retry_after
from job.stores.durable import write_file_atomically

if TYPE_CHECKING:
    from job.run.single import RunOutcome

log = logging.getLogger(__name__)

PING_TIMEOUT_SECONDS = 5.0
PING_ATTEMPTS = 3
# Bounds the time one ping may add to a run when the monitoring host is down or unreachable.
PING_DEADLINE_SECONDS = 15.0
# healthchecks.io keeps the first 100 kB of a ping body; the end of a log is what matters, and
# a small body keeps the ping fast.
MAX_PING_BODY_BYTES = 10_000
METRICS_MODE = 0o644
# The previous metrics file is read only for the last success timestamp; a larger file is not ours.
MAX_METRICS_FILE_BYTES = 1_000_000

# Pushes: the whole of both pushes of one run fits in PUSH_DEADLINE_SECONDS, one retry at most.
PUSH_JOB = "aweber-job"
PUSH_TIMEOUT_SECONDS = 5.0
PUSH_ATTEMPTS = 2
PUSH_DEADLINE_SECONDS = 10.0
PUSH_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LAST_SUCCESS = "aweber_job_last_success_timestamp_seconds"
_SAMPLE_LINE = re.compile(rf"^{_LAST_SUCCESS}(?:\{{[^}}]*\}})?[ \t]+(\S+)(?:[ \t]+\S+)?[ \t]*$", re.MULTILINE)


class PingRefusedError(JobError):
    """The monitoring host answered a ping with a status that a retry will not change."""


class PushRefusedError(JobError):
    """The Pushgateway answered a push with a status that a retry will not change."""


@dataclass(frozen=True)
class Sample:
    """One line of the metrics file: a metric name, its labels and its value."""

    name: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


# Name → help text, in the order the file lists them. Every metric is a gauge: each describes the
# last run, not a count since the job was installed.
METRICS: dict[str, str] = {
    "aweber_job_info": "Version of the job and the task of the last run (value always 1).",
    "aweber_job_last_run_timestamp_seconds": "Unix time when the last run ended.",
    _LAST_SUCCESS: "Unix time when the last successful run (exit code 0) ended.",
    "aweber_job_exit_code": "Exit code of the last run (0 success; see the README for the others).",
    "aweber_job_run_duration_seconds": "Wall-clock seconds the last run took.",
    "aweber_job_access_token_expiry_timestamp_seconds": "Unix time when the saved access token expires.",
    "aweber_job_refresh_duration_seconds": "Seconds the last token refresh of the last run took, retries included.",
    "aweber_job_refreshes": "Token refreshes done by the last run.",
    "aweber_job_http_requests": "HTTP requests the last run sent to AWeber, by endpoint kind (token or api).",
    "aweber_job_new_subscribers": "New subscribers the last run reported.",
    "aweber_job_rate_limited": "403 rate-limit answers AWeber gave the last run.",
    "aweber_job_pacing_wait_seconds": "Seconds the last run waited to stay within AWEBER_RATE_LIMIT.",
    "aweber_job_connection_exit_code": "run --all: exit code of each connection's run (label connection).",
    "aweber_job_connection_refreshes": "run --all: token refreshes of each connection's run.",
    "aweber_job_connection_http_requests": "run --all: HTTP requests of each connection's run, by kind.",
    "aweber_job_connection_access_token_expiry_timestamp_seconds":
        "run --all: Unix time when each connection's saved access token expires.",
    "aweber_job_connection_new_subscribers": "run --all: new subscribers each connection's run reported.",
}


class Monitor:
    """Pings a healthchecks.io-style URL and writes the metrics file around one run.

    With neither ``settings.ping_url`` nor ``settings.metrics_file`` set it does nothing. No method
    raises: every monitoring failure is logged as a warning.
    """

    def __init__(
        self,
        settings: Settings,
        session: requests.Session,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        log_tail: Iterable[str] = LOG_TAIL,
    ) -> None:
        self._settings = settings
        self._ping_url = settings.ping_url
        self._metrics_file = settings.metrics_file
        self._push_url = settings.pushgateway_url.reveal() if settings.pushgateway_url else None
        self._session = session
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._log_tail = log_tail
        self._timeout_seconds = min(PING_TIMEOUT_SECONDS, settings.http_timeout_seconds)
        self._push_timeout_seconds = min(PUSH_TIMEOUT_SECONDS, settings.http_timeout_seconds)
        self._run_id = str(uuid.uuid4()) if self._ping_url else ""
        if self._ping_url:
            # Whoever holds the ping URL can report for this check: its path and query are secrets,
            # kept out of every log line (urllib3 writes the request line at -vv).
            parts = urlsplit(self._ping_url)
            REDACTOR.add(parts.path.rstrip("/"), parts.query)
        self._started: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether there is anything to ping or write."""
        return bool(self._ping_url or self._metrics_file or self._push_url)

    def start(self) -> None:
        """Note the start time and send the ``/start`` ping."""
        if not self.enabled:
            return
        self._started = self._monotonic()
        if self._ping_url:
            self._ping("start", "/start", b"")

    def finish(self, outcome: RunOutcome, *, connection: str | None = None) -> None:
        """Write the metrics file, push the metrics, then send the success or failure ping for ``outcome``.

        ``connection`` names the one connection a run of the database store ran: its pushes go to a
        group of its own, so single runs of different connections do not replace each other's.
        """
        if not self.enabled:
            return
        now = self._clock()
        duration = self._monotonic() - self._started if self._started is not None else None
        if self._metrics_file:
            self._write_metrics(self._metrics_file, outcome, now, duration)
        if self._push_url:
            self._push_metrics(self._push_url, outcome, now, duration, connection)
        if self._ping_url:
            if outcome.exit_code == EXIT_OK:
                self._ping("success", "", success_body(outcome, now, duration))
            else:
                self._ping("fail", "/fail", failure_body(outcome, self._log_tail, duration))

    # -- pings ------------------------------------------------------------------------------------

    def _ping(self, what: str, suffix: str, body: bytes) -> None:
        assert self._ping_url is not None
        url = ping_url_for(self._ping_url, suffix, self._run_id)
        # The ping URL's path is a credential of sorts (anyone holding it can ping): name the host only.
        host = urlsplit(url).hostname or "the monitoring host"
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        user_agent = self._session.headers.get("User-Agent")
        headers["User-Agent"] = str(user_agent) if user_agent else f"aweber-job/{__version__}"

        def attempt() -> None:
            # Prepared here, not by the session: no session header, cookie or auth can come along.
            prepared = requests.Request("POST", url, data=body, headers=headers).prepare()
            try:
                response = self._session.send(
                    prepared, timeout=self._timeout_seconds, allow_redirects=False, stream=True
                )
            except requests.RequestException as exc:
                # Not str(exc): requests puts the whole URL into its messages.
                raise TemporaryError(f"ping to {host}: {type(exc).__name__}") from None
            try:
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
            finally:
                response.close()
            if status in (408, 429) or status >= 500:
                raise TemporaryError(f"ping to {host}: HTTP {status}", retry_after_seconds=retry_after)
            if not 200 <= status < 300:
                raise PingRefusedError(f"ping to {host}: HTTP {status}")

        try:
            call_with_retries(
                attempt,
                deadline_seconds=PING_DEADLINE_SECONDS,
                what=f"monitoring ping ({what})",
                clock=self._monotonic,
                sleep=self._sleep,
                max_attempts=PING_ATTEMPTS,
            )
        except JobError as exc:
            log.warning("monitoring ping (%s) not delivered: %s; the run's result is unchanged", what, exc)
            return
        except Exception as exc:  # noqa: BLE001 - monitoring must never end the run
            log.warning(
                "monitoring ping (%s) not delivered: %s; the run's result is unchanged", what, type(exc).__name__
            )
            return
        log.debug("monitoring ping (%s) sent to %s", what, host)

    # -- Pushgateway -------------------------------------------------------------------------------

    def _push_metrics(
        self, base: str, outcome: RunOutcome, now: float, duration: float | None, connection: str | None
    ) -> None:
        """PUT the run's metrics to its group and, after a success only, the last success time to its own."""
        host = urlsplit(base).hostname or "the Pushgateway"
        deadline = self._monotonic() + PUSH_DEADLINE_SECONDS
        pushes = [("metrics", push_group_url(base, connection),
                   render_metrics(metric_samples(outcome, now, None, duration)))]
        if outcome.exit_code == EXIT_OK:
            pushes.append(("last success", push_group_url(base, connection, success=True),
                           render_metrics([Sample(_LAST_SUCCESS, now)])))
        for what, url, text in pushes:
            try:
                self._push(url, host, text.encode("utf-8"), deadline)
            except JobError as exc:
                log.warning("Pushgateway push (%s) not delivered: %s; the run's result is unchanged", what, exc)
                return
            except Exception as exc:  # noqa: BLE001 - monitoring must never end the run
                log.warning("Pushgateway push (%s) not delivered: %s; the run's result is unchanged",
                            what, type(exc).__name__)
                return
            log.debug("Pushgateway push (%s) sent to %s", what, host)

    def _push(self, url: str, host: str, body: bytes, deadline: float) -> None:
        """One PUT, retried once on a network error, 408, 429 or 5xx while ``deadline`` allows."""
        parts = urlsplit(url)
        # Credentials go in the Authorization header, never in a URL that an exception could show.
        auth = (unquote(parts.username or ""), unquote(parts.password or "")) if parts.username else None
        bare = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
        headers = {"Content-Type": PUSH_CONTENT_TYPE}
        user_agent = self._session.headers.get("User-Agent")
        headers["User-Agent"] = str(user_agent) if user_agent else f"aweber-job/{__version__}"

        def attempt() -> None:
            left = deadline - self._monotonic()
            if left <= 0:
                raise PushRefusedError(f"push to {host}: no time left")
            # Prepared here, not by the session: no header, cookie or auth meant for AWeber comes along.
            prepared = requests.Request("PUT", bare, data=body, headers=headers, auth=auth).prepare()
            try:
                response = self._session.send(
                    prepared, timeout=min(self._push_timeout_seconds, left), allow_redirects=False, stream=True
                )
            except requests.RequestException as exc:
                # Not str(exc): requests puts the whole URL into its messages.
                raise TemporaryError(f"push to {host}: {type(exc).__name__}") from None
            try:
                status = response.status_code
            finally:
                response.close()
            if status in (408, 429) or status >= 500:
                raise TemporaryError(f"push to {host}: HTTP {status}")
            if not 200 <= status < 300:
                raise PushRefusedError(f"push to {host}: HTTP {status}")

        call_with_retries(
            attempt,
            deadline_seconds=max(0.0, deadline - self._monotonic()),
            what="Pushgateway push",
            clock=self._monotonic,
            sleep=self._sleep,
            max_attempts=PUSH_ATTEMPTS,
        )

    # -- metrics ----------------------------------------------------------------------------------

    def _write_metrics(self, path: Path, outcome: RunOutcome, now: float, duration: float | None) -> None:
        from job.run.single import own_file_collision  # the run has imported it already

        collision = own_file_collision(path, self._settings, outcome.task)
        if collision is not None:
            # The run has already failed with exit 78 for this; writing would destroy that file.
            log.warning("not writing the metrics file %s: it is the %s %s", path, *collision)
            return
        try:
            last_success = now if outcome.exit_code == EXIT_OK else read_last_success(path)
            text = render_metrics(metric_samples(outcome, now, last_success, duration))
            write_file_atomically(path, text.encode("utf-8"), mode=METRICS_MODE)
        except OSError as exc:
            log.warning(
                "cannot write the metrics file %s: %s; the run's result is unchanged",
                path, exc.strerror or type(exc).__name__,
            )
        except Exception as exc:  # noqa: BLE001 - monitoring must never end the run
            log.warning("cannot write the metrics file %s: %s; the run's result is unchanged", path, exc)
        else:
            log.debug("metrics written to %s", path)


def push_group_url(base: str, connection: str | None, *, success: bool = False) -> str:
    """``<base>/metrics/job/aweber-job``, then ``/connection/NAME`` and, for the last success, ``/result/success``.

    Label values are percent-encoded (a connection name may hold ``@`` or ``+``); none can hold ``/``.
    """
    path = f"{base.rstrip('/')}/metrics/job/{PUSH_JOB}"
    if connection is not None:
        path += f"/connection/{quote(connection, safe='')}"
    if success:
        path += "/result/success"
    return path


def ping_url_for(base: str, suffix: str, run_id: str) -> str:
    """``base`` + ``suffix`` (``""``, ``/start``, ``/fail``), keeping its query and adding ``rid``."""
    parts = urlsplit(base)
    query = "&".join(q for q in (parts.query, f"rid={run_id}" if run_id else "") if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + suffix, query, ""))


def success_body(outcome: RunOutcome, now: float, duration: float | None) -> bytes:
    """One short line for a successful run: what it did and when the access token expires."""
    parts = [f"task {outcome.task}" if outcome.task else "refresh only"]
    if outcome.new_subscribers is not None:
        parts.append(f"{outcome.new_subscribers} new subscribers")
    parts.append(f"{outcome.refreshes} refresh{'es' if outcome.refreshes != 1 else ''}")
    parts.append(f"{outcome.http_requests} HTTP requests")
    if outcome.access_expires_at is not None:
        parts.append(f"access token expires {format_expiry(outcome.access_expires_at, now)}")
    if duration is not None:
        parts.append(f"took {duration:.1f} s")
    return _cap(REDACTOR.redact("ok: " + ", ".join(parts) + "\n"), [])


def failure_body(outcome: RunOutcome, log_tail: Iterable[str], duration: float | None) -> bytes:
    """The exit code and its meaning, what the run got done, then the last log lines, all redacted."""
    meaning = EXIT_MEANINGS.get(outcome.exit_code, "failure")
    head = [
        f"exit code {outcome.exit_code}: {meaning}",
        f"task: {outcome.task or '-'}",
        f"refreshes: {outcome.refreshes}, HTTP requests: {outcome.http_requests} "
        f"(token {outcome.token_requests}, api {outcome.api_requests})",
    ]
    if duration is not None:
        head.append(f"took {duration:.1f} s")
    head.append("--- last log lines ---")
    return _cap(REDACTOR.redact("\n".join(head) + "\n"), [REDACTOR.redact(line) for line in log_tail])


def _cap(head: str, lines: list[str]) -> bytes:
    """``head`` and as many of the newest ``lines`` as fit in MAX_PING_BODY_BYTES, oldest first."""
    data = head.encode("utf-8")[:MAX_PING_BODY_BYTES]
    budget = MAX_PING_BODY_BYTES - len(data)
    kept: list[bytes] = []
    for line in reversed(lines):
        encoded = line.encode("utf-8") + b"\n"
        if len(encoded) > budget:
            if not kept and budget > 1:
                kept.append(encoded[: budget - 1] + b"\n")
            break
        kept.append(encoded)
        budget -= len(encoded)
    body = data + b"".join(reversed(kept))
    # A cut may fall inside a character; drop the broken bytes rather than send invalid UTF-8.
    return body.decode("utf-8", errors="ignore").encode("utf-8")


def read_last_success(path: Path) -> float | None:
    """The last success timestamp in an earlier metrics file at ``path``, or None if none is there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as handle:
            data = handle.read(MAX_METRICS_FILE_BYTES)
    except OSError:
        return None  # absent, unreadable, or a link: not a file this job wrote
    match = _SAMPLE_LINE.search(data.decode("utf-8", errors="replace"))
    if not match:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def metric_samples(
    outcome: RunOutcome, now: float, last_success: float | None, duration: float | None
) -> list[Sample]:
    """The samples describing ``outcome``; values the run does not know are left out."""
    info_labels = [("version", __version__)]
    if outcome.task:
        info_labels.append(("task", outcome.task))
    samples = [
        Sample("aweber_job_info", 1, tuple(info_labels)),
        Sample("aweber_job_last_run_timestamp_seconds", now),
    ]
    if last_success is not None:
        samples.append(Sample(_LAST_SUCCESS, last_success))
    samples.append(Sample("aweber_job_exit_code", outcome.exit_code))
    if duration is not None:
        samples.append(Sample("aweber_job_run_duration_seconds", duration))
    if outcome.access_expires_at is not None:
        samples.append(Sample("aweber_job_access_token_expiry_timestamp_seconds", outcome.access_expires_at))
    if outcome.refresh_seconds is not None:
        samples.append(Sample("aweber_job_refresh_duration_seconds", outcome.refresh_seconds))
    samples.append(Sample("aweber_job_refreshes", outcome.refreshes))
    samples.append(Sample("aweber_job_http_requests", outcome.token_requests, (("kind", "token"),)))
    samples.append(Sample("aweber_job_http_requests", outcome.api_requests, (("kind", "api"),)))
    if outcome.new_subscribers is not None:
        samples.append(Sample("aweber_job_new_subscribers", outcome.new_subscribers))
    samples.append(Sample("aweber_job_rate_limited", getattr(outcome, "rate_limited", 0)))
    samples.append(Sample("aweber_job_pacing_wait_seconds", getattr(outcome, "pacing_wait_seconds", 0.0)))
    for name, each in sorted(getattr(outcome, "connections", {}).items()):
        samples += connection_samples(name, each)
    return samples


def connection_samples(name: str, outcome: RunOutcome) -> list[Sample]:
    """One connection's part of a fleet run (``run --all``), each sample labelled ``connection``."""
    label = (("connection", name),)
    samples = [
        Sample("aweber_job_connection_exit_code", outcome.exit_code, label),
        Sample("aweber_job_connection_refreshes", outcome.refreshes, label),
        Sample("aweber_job_connection_http_requests", outcome.token_requests, (*label, ("kind", "token"))),
        Sample("aweber_job_connection_http_requests", outcome.api_requests, (*label, ("kind", "api"))),
    ]
    if outcome.access_expires_at is not None:
        samples.append(Sample("aweber_job_connection_access_token_expiry_timestamp_seconds",
                              outcome.access_expires_at, label))
    if outcome.new_subscribers is not None:
        samples.append(Sample("aweber_job_connection_new_subscribers", outcome.new_subscribers, label))
    return samples


def render_metrics(samples: Iterable[Sample]) -> str:
    """Prometheus text exposition format: HELP and TYPE once per metric, then its samples."""
    by_name: dict[str, list[Sample]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)
    lines: list[str] = []
    for name in sorted(by_name, key=lambda n: list(METRICS).index(n) if n in METRICS else len(METRICS)):
        lines.append(f"# HELP {name} {_escape_help(METRICS.get(name, name))}")
        lines.append(f"# TYPE {name} gauge")
        for sample in by_name[name]:
            labels = ",".join(f'{key}="{_escape_label(value)}"' for key, value in sample.labels)
            lines.append(f"{name}{{{labels}}} {_format_value(sample.value)}" if labels
                         else f"{name} {_format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def _format_value(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
