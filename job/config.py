"""Settings: built once from an explicit mapping of variables, validated up front.

No module below the CLI reads ``os.environ``: the CLI loads the ``.env`` file by path, lets the real
environment win, and hands the merged mapping to :func:`load_settings`, which reports every problem
at once, each naming its variable (exit 78).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

from job.credentials import (
    CREDENTIAL_NAME,
    STORE_CREDENTIAL_NAME,
    STORE_KEY_CREDENTIAL_NAME,
    Secret,
    client_secret,
    describe_store_url,
    is_loopback_host,
    pushgateway_url,
)
from job.credentials import store_keys as read_store_keys
from job.credentials import store_url as store_url_from
from job.errors import ConfigError

# Also the settings' words for the secrets: job.credentials reads them.
__all__ = ["CREDENTIAL_NAME", "STORE_CREDENTIAL_NAME", "STORE_KEY_CREDENTIAL_NAME", "Secret", "Settings",
           "describe_store_url", "is_loopback_host", "load_settings"]

DEFAULT_TOKEN_URL = "https://auth.aweber.com/oauth2/token"  # noqa: S105 - a URL, not a password
DEFAULT_AUTHORIZE_URL = "https://auth.aweber.com/oauth2/authorize"
DEFAULT_REVOKE_URL = "https://auth.aweber.com/oauth2/revoke"
DEFAULT_API_URL = "https://api.aweber.com/1.0"
DEFAULT_TASK = "new-subscribers"
DEFAULT_CONNECTION = "default"
# A connection's name appears in file names (rescue files), metric labels and log lines: a plain word.
CONNECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")
CONNECTION_NAME_RULE = "1 to 100 letters, digits and . _ @ + - (starting with a letter or digit)"
DEFAULT_RUN_INTERVAL_SECONDS = 24 * 3600.0
DEFAULT_SHUTDOWN_GRACE_SECONDS = 25.0
# AWeber allows 120 API requests a minute per customer account, shared by every integration on it
# (docs/aweber-api.md); 100 leaves room for the others.
DEFAULT_RATE_LIMIT_PER_MINUTE = 100
# A daily job must be done long before the next run: a hung or endless run would otherwise hold the
# lock (and the timer's slot) for ever.
DEFAULT_RUN_TIMEOUT_SECONDS = 6 * 3600.0

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# The one duration syntax: a number, then a unit or none. Each caller says what a bare number means.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)

# Every variable the job reads, with a one-line meaning; `.env.example` documents exactly these.
VARIABLES: dict[str, str] = {
    "AWEBER_CLIENT_ID": "OAuth client id",
    "AWEBER_CLIENT_SECRET": "client secret; absent means a public client (PKCE)",
    "AWEBER_CLIENT_SECRET_FILE": "file whose first line is the client secret",
    "AWEBER_TOKEN_FILE": "the token file",
    "AWEBER_STATE_DIR": "where task state lives",
    "AWEBER_TOKEN_URL": "token endpoint",
    "AWEBER_AUTHORIZE_URL": "authorize endpoint",
    "AWEBER_REVOKE_URL": "revoke endpoint",
    "AWEBER_API_URL": "API base URL",
    "AWEBER_TASK": "task to run",
    "AWEBER_ACCOUNT_ID": "only this account",
    "AWEBER_LIST_IDS": "comma-separated list ids",
    "AWEBER_LOCK_TIMEOUT": "seconds to wait for another run's lock",
    "AWEBER_HTTP_TIMEOUT": "seconds for connect and for each read",
    "AWEBER_RETRY_DEADLINE": "seconds one call may spend retrying",
    "AWEBER_RATE_LIMIT": "API requests per rolling minute the job allows itself (default 100 of AWeber's 120)",
    "AWEBER_REFRESH_LEEWAY": "refresh during the task when the access token has less than this left",
    "AWEBER_RUN_TIMEOUT": "the longest a run may take (6h, 90m, or seconds); then it stops, keeping its progress",
    "AWEBER_PING_URL": "healthchecks-style monitoring URL",
    "AWEBER_METRICS_FILE": "Prometheus text-format metrics file",
    "AWEBER_PUSHGATEWAY_URL": "Prometheus Pushgateway the run's metrics are pushed to after each run",
    "AWEBER_LOG_FORMAT": "text or json",
    "AWEBER_STORE": "file (the token file) or a PostgreSQL URL postgresql://… for many connections",
    "AWEBER_CONNECTION": "which connection in the store a command acts on (default: default)",
    "AWEBER_STORE_KEY": "Fernet keys, comma-separated (the first encrypts, all decrypt) for tokens in the database",
    "AWEBER_STORE_KEY_FILE": "file holding AWEBER_STORE_KEY's value",
    "AWEBER_RUN_INTERVAL": "run --all: a connection is due when its last run is older than this (24h; 0: always)",
    "AWEBER_SHUTDOWN_GRACE": "run --all: seconds to finish what is in flight after SIGTERM (25)",
}


# Read by the CLI before the settings exist: it names the env file, so it cannot live in one.
ENV_FILE_VARIABLE = "AWEBER_ENV_FILE"
_PREFIX = "AWEBER_"


def misspelled_variables(names: Iterable[str]) -> list[tuple[str, str | None]]:
    """(name, the known name it is closest to, or None) for each ``AWEBER_`` name, in any case, the job does not read.

    A variable the job ignores is configuration that silently does not apply; a typo is the usual cause.
    """
    import difflib  # on use: only a name that is not known needs it

    known = [*VARIABLES, ENV_FILE_VARIABLE]
    # Every known name shares the prefix, so it is left out of the comparison (else anything would look close).
    suffixes = {name[len(_PREFIX):]: name for name in known}
    found: list[tuple[str, str | None]] = []
    for name in names:
        if name in known or not name.upper().startswith(_PREFIX):
            continue
        close = difflib.get_close_matches(name[len(_PREFIX):].upper(), list(suffixes), n=1, cutoff=0.6)
        found.append((name, suffixes[close[0]] if close else None))
    return found


@dataclass(frozen=True)
class Settings:
    """Everything the job is configured with; secrets hidden from ``repr``."""

    client_id: str | None
    client_secret: Secret | None
    client_secret_source: str | None
    token_file: Path
    state_dir: Path
    token_url: str = DEFAULT_TOKEN_URL
    authorize_url: str = DEFAULT_AUTHORIZE_URL
    revoke_url: str = DEFAULT_REVOKE_URL
    api_url: str = DEFAULT_API_URL
    task: str = DEFAULT_TASK
    account_id: int | None = None
    list_ids: tuple[int, ...] = ()
    lock_timeout_seconds: float = 60.0
    http_timeout_seconds: float = 30.0
    retry_deadline_seconds: float = 300.0
    rate_limit_per_minute: int = DEFAULT_RATE_LIMIT_PER_MINUTE
    refresh_leeway_seconds: float = 300.0
    run_timeout_seconds: float = DEFAULT_RUN_TIMEOUT_SECONDS
    ping_url: str | None = None
    metrics_file: Path | None = None
    # May carry a user and password (basic auth): a secret as a whole, never shown.
    pushgateway_url: Secret | None = None
    log_format: str = "text"
    # Where a rescue file goes when nothing beside the token file can be written (its file system turned
    # read-only): another file system, in memory. None: nowhere else.
    fallback_rescue_dir: Path | None = None
    # None: the token file. Else a PostgreSQL URL, a secret for its password.
    store_url: Secret | None = None
    store_source: str | None = None
    connection: str = DEFAULT_CONNECTION
    store_keys: tuple[Secret, ...] = ()
    run_interval_seconds: float = DEFAULT_RUN_INTERVAL_SECONDS
    shutdown_grace_seconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS
    source: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def named_connection(self) -> str | None:
        """The connection's name where messages and metrics must say which one: None for the token file,
        which holds only one."""
        return self.connection if self.store_url is not None else None

    @property
    def is_public_client(self) -> bool:
        """A client without a secret authenticates with PKCE and ``client_id`` in the body."""
        return self.client_secret is None


def _duration_seconds(text: str, *, bare_number_is_seconds: bool, ascii_digits: bool) -> float | None:
    """The seconds ``text`` (a number and a unit of DURATION_UNITS) stands for; None when it is no duration."""
    match = _DURATION.match(text)
    if not match or (ascii_digits and not match.group(1).isascii()):
        return None
    unit = match.group(2).lower()
    if not unit and not bare_number_is_seconds:
        return None
    return float(match.group(1)) * DURATION_UNITS[unit or "s"]


def parse_duration_seconds(text: str) -> float | None:
    """Seconds from ``3600``, ``45s``, ``90m``, ``6h``, ``1d`` or ``2w``; None when ``text`` is none of these.

    The variables' syntax: a bare number is seconds; digits are ASCII.
    """
    return _duration_seconds(text, bare_number_is_seconds=True, ascii_digits=True)


def parse_look_back_seconds(text: str) -> float | None:
    """Seconds from ``45s``, ``90m``, ``24h``, ``7d`` or ``2w`` (``--since``); None when ``text`` is none of these.

    A unit is required: a bare number may be a date (``20261101``), which ``--since`` also takes.
    """
    return _duration_seconds(text, bare_number_is_seconds=False, ascii_digits=False)


def format_duration(seconds: float) -> str:
    """A duration the way an operator would write it: ``6h``, ``90m``, ``45s``, ``2.5s``."""
    for unit in ("h", "m"):
        size = DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def check_url(value: str) -> str | None:
    """Return why ``value`` is not an acceptable endpoint URL, or None when it is."""
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an https:// URL with a host"
    if parts.scheme == "http" and not is_loopback_host(host):
        return "must use https (plain http is accepted only for loopback hosts)"
    if parts.username or parts.password:
        return "must not carry credentials"
    return None


def _fallback_rescue_dir(env: Mapping[str, str]) -> Path:
    """systemd's RUNTIME_DIRECTORY (on /run, kept between runs by RuntimeDirectoryPreserve=yes), else a
    directory of the job's own under /dev/shm; both are in memory, on another file system than /var."""
    runtime = env.get("RUNTIME_DIRECTORY")
    if runtime and os.path.isabs(runtime.split(":")[0]):
        return Path(runtime.split(":")[0])
    # A directory the job makes 0700 and checks (its own, not a link, closed to others) before each use.
    return Path("/dev/shm") / f"aweber-job-{os.geteuid()}"  # noqa: S108


def _default_token_file(env: Mapping[str, str]) -> Path:
    """systemd's STATE_DIRECTORY, else XDG_STATE_HOME, else ~/.local/state."""
    state_directory = env.get("STATE_DIRECTORY")
    if state_directory:
        # systemd may list several directories separated by ':'; the first is ours.
        return Path(state_directory.split(":")[0]) / "tokens.json"
    xdg = env.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "aweber-job" / "tokens.json"
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "state" / "aweber-job" / "tokens.json"


class _Reader:
    """The variables as ``load_settings`` reads them: an empty value counts as unset, as in a copied
    ``.env.example``, and every problem is collected (each naming its variable) so all are reported at once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.values = {k: v.strip() for k, v in env.items() if isinstance(v, str)}
        self.problems: list[str] = []

    def get(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if value else None

    def number(self, name: str, default: float, *, minimum: float, integer: bool = False) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "a whole number" if integer else "a number of seconds"
            self.problems.append(f"{name} must be {kind}, got {raw!r}")
            return default
        if value != value or value in (float("inf"), float("-inf")):
            self.problems.append(f"{name} must be a finite number of seconds, got {raw!r}")
            return default
        if value < minimum:
            self.problems.append(f"{name} must be at least {minimum:g}, got {raw!r}")
            return default
        return value

    def duration(self, name: str, default: float) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        seconds = parse_duration_seconds(raw)
        if seconds is None or seconds <= 0:
            self.problems.append(
                f"{name} must be a positive duration such as 6h, 90m or 3600 (seconds), got {raw!r}"
            )
            return default
        return seconds

    def url(self, name: str, default: str) -> str:
        raw = self.get(name) or default
        why = check_url(raw)
        if why:
            self.problems.append(f"{name} {why}")
        return raw


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build Settings from ``env``; raise ConfigError listing every problem, each with its variable."""
    read = _Reader(env)
    # Read in this order, so the problems are listed in it.
    secret, secret_source = client_secret(read.values, read.get, read.problems)
    token_file, state_dir = _paths(read)
    endpoints = _endpoints(read)
    account_id, list_ids = _account_id(read), _list_ids(read)
    monitoring = _monitoring(read)
    store_url, store_source = store_url_from(read.values, read.get, read.problems)
    store_keys = read_store_keys(read.values, read.get, read.problems)
    connection, run_interval, log_format = _connection(read), _run_interval(read), _log_format(read)
    settings = Settings(
        client_id=read.get("AWEBER_CLIENT_ID"),
        client_secret=secret,
        client_secret_source=secret_source,
        token_file=token_file,
        state_dir=state_dir,
        fallback_rescue_dir=_fallback_rescue_dir(read.values),
        **endpoints,
        task=read.get("AWEBER_TASK") or DEFAULT_TASK,
        account_id=account_id,
        list_ids=list_ids,
        **_limits(read),
        **monitoring,
        log_format=log_format,
        store_url=store_url,
        store_source=store_source,
        connection=connection,
        store_keys=store_keys,
        run_interval_seconds=run_interval,
        shutdown_grace_seconds=read.number("AWEBER_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE_SECONDS, minimum=0),
        source=dict(read.values),
    )
    if read.problems:
        raise ConfigError(read.problems)
    return settings


def _paths(read: _Reader) -> tuple[Path, Path]:
    """The token file and the state directory (beside the token file unless AWEBER_STATE_DIR says), absolute."""
    token_file_raw = read.get("AWEBER_TOKEN_FILE")
    token_file = Path(token_file_raw).expanduser() if token_file_raw else _default_token_file(read.values)
    if not token_file.is_absolute():
        token_file = Path(os.path.abspath(token_file))
    return token_file, state_dir_for(token_file, read.values)


def state_dir_for(token_file: Path, env: Mapping[str, str]) -> Path:
    """Where a run of ``token_file`` with the variables ``env`` keeps its task state: AWEBER_STATE_DIR, else the
    token file's directory (``connections import`` finds the state to take with a token file by this rule too)."""
    state_dir_raw = (env.get("AWEBER_STATE_DIR") or "").strip()
    return Path(os.path.abspath(Path(state_dir_raw).expanduser())) if state_dir_raw else token_file.parent


class _Endpoints(TypedDict):
    token_url: str
    authorize_url: str
    revoke_url: str
    api_url: str


class _Monitoring(TypedDict):
    ping_url: str | None
    metrics_file: Path | None
    pushgateway_url: Secret | None


class _Limits(TypedDict):
    lock_timeout_seconds: float
    http_timeout_seconds: float
    retry_deadline_seconds: float
    rate_limit_per_minute: int
    refresh_leeway_seconds: float
    run_timeout_seconds: float


def _endpoints(read: _Reader) -> _Endpoints:
    """AWeber's OAuth endpoints and API base URL, each checked (https, or http to a loopback host)."""
    return {
        "token_url": read.url("AWEBER_TOKEN_URL", DEFAULT_TOKEN_URL),
        "authorize_url": read.url("AWEBER_AUTHORIZE_URL", DEFAULT_AUTHORIZE_URL),
        "revoke_url": read.url("AWEBER_REVOKE_URL", DEFAULT_REVOKE_URL),
        "api_url": read.url("AWEBER_API_URL", DEFAULT_API_URL).rstrip("/"),
    }


def _account_id(read: _Reader) -> int | None:
    raw = read.get("AWEBER_ACCOUNT_ID")
    if raw is None:
        return None
    if raw.isdecimal() and int(raw) > 0:
        return int(raw)
    read.problems.append(f"AWEBER_ACCOUNT_ID must be a positive whole number, got {raw!r}")
    return None


def _list_ids(read: _Reader) -> tuple[int, ...]:
    """AWEBER_LIST_IDS, in order, each once; the first id that is not one is the problem named."""
    list_ids: list[int] = []
    raw = read.get("AWEBER_LIST_IDS")
    for item in raw.split(",") if raw is not None else ():
        item = item.strip()
        if not (item.isdecimal() and int(item) > 0):
            read.problems.append(f"AWEBER_LIST_IDS must be comma-separated list ids, got {item!r} in it")
            break
        if int(item) not in list_ids:
            list_ids.append(int(item))
    return tuple(list_ids)


def _monitoring(read: _Reader) -> _Monitoring:
    """Where a run reports: the ping URL, the metrics file and the Pushgateway."""
    ping_url = read.url("AWEBER_PING_URL", "").rstrip("/") if read.get("AWEBER_PING_URL") else None
    metrics_raw = read.get("AWEBER_METRICS_FILE")
    return {
        "ping_url": ping_url,
        "metrics_file": Path(os.path.abspath(Path(metrics_raw).expanduser())) if metrics_raw else None,
        "pushgateway_url": pushgateway_url(read.get, read.problems),
    }


def _connection(read: _Reader) -> str:
    connection = read.get("AWEBER_CONNECTION") or DEFAULT_CONNECTION
    if not CONNECTION_NAME.match(connection):
        read.problems.append(
            f"AWEBER_CONNECTION must be a connection name of {CONNECTION_NAME_RULE}, got {connection!r}"
        )
        return DEFAULT_CONNECTION
    return connection


def _run_interval(read: _Reader) -> float:
    """AWEBER_RUN_INTERVAL: unlike the other durations it may be 0 (every connection always due)."""
    raw = read.get("AWEBER_RUN_INTERVAL")
    if raw is None:
        return DEFAULT_RUN_INTERVAL_SECONDS
    seconds = parse_duration_seconds(raw)
    if seconds is None:
        read.problems.append(
            "AWEBER_RUN_INTERVAL must be a duration such as 24h, 90m or 3600 (seconds; 0: always due), "
            f"got {raw!r}"
        )
        return DEFAULT_RUN_INTERVAL_SECONDS
    return seconds


def _log_format(read: _Reader) -> str:
    log_format = (read.get("AWEBER_LOG_FORMAT") or "text").lower()
    if log_format not in ("text", "json"):
        read.problems.append(f"AWEBER_LOG_FORMAT must be 'text' or 'json', got {read.get('AWEBER_LOG_FORMAT')!r}")
        return "text"
    return log_format


def _limits(read: _Reader) -> _Limits:
    """How long the job waits and how fast it may go: timeouts, deadlines, the rate limit, the leeway."""
    return {
        "lock_timeout_seconds": read.number("AWEBER_LOCK_TIMEOUT", 60.0, minimum=0),
        "http_timeout_seconds": read.number("AWEBER_HTTP_TIMEOUT", 30.0, minimum=0.001),
        "retry_deadline_seconds": read.number("AWEBER_RETRY_DEADLINE", 300.0, minimum=0),
        "rate_limit_per_minute": int(
            read.number("AWEBER_RATE_LIMIT", DEFAULT_RATE_LIMIT_PER_MINUTE, minimum=1, integer=True)
        ),
        "refresh_leeway_seconds": read.number("AWEBER_REFRESH_LEEWAY", 300.0, minimum=0),
        "run_timeout_seconds": read.duration("AWEBER_RUN_TIMEOUT", DEFAULT_RUN_TIMEOUT_SECONDS),
    }


