"""Settings: built once from an explicit mapping of variables, validated up front.

No module below the CLI reads ``os.environ``: the CLI loads the ``.env`` file by path, lets the real
environment win, and hands the merged mapping to :func:`load_settings`, which reports every problem
at once, each naming its variable (exit 78).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from job.errors import ConfigError

DEFAULT_TOKEN_URL = "https://auth.aweber.com/oauth2/token"  # noqa: S105 - a URL, not a password
DEFAULT_AUTHORIZE_URL = "https://auth.aweber.com/oauth2/authorize"
DEFAULT_REVOKE_URL = "https://auth.aweber.com/oauth2/revoke"
DEFAULT_API_URL = "https://api.aweber.com/1.0"
DEFAULT_TASK = "new-subscribers"
CREDENTIAL_NAME = "aweber-client-secret"
STORE_CREDENTIAL_NAME = "aweber-store"
STORE_KEY_CREDENTIAL_NAME = "aweber-store-key"
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
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)

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


class Secret:
    """A string that never shows itself in ``repr`` or ``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


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


def parse_duration_seconds(text: str) -> float | None:
    """Seconds from ``3600``, ``45s``, ``90m``, ``6h``, ``1d`` or ``2w``; None when ``text`` is none of these."""
    match = _DURATION.match(text)
    if not match:
        return None
    return float(match.group(1)) * DURATION_UNITS[(match.group(2) or "s").lower()]


def format_duration(seconds: float) -> str:
    """A duration the way an operator would write it: ``6h``, ``90m``, ``45s``, ``2.5s``."""
    for unit in ("h", "m"):
        size = DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is localhost or an address in 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    import ipaddress  # on use: most hosts are names, and every command loads the settings

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


class _EmptySecretFile(ValueError):
    """The secret file holds nothing but blank space."""


def _read_secret_file(path: str) -> str:
    """Return the first line of ``path``, stripped; raise OSError or ValueError on trouble.

    _EmptySecretFile when the file is blank throughout: usually one created for a public client.
    """
    with open(path, "rb") as handle:
        data = handle.read(65536)
    # "utf-8-sig": editors on Windows save a byte order mark, which is not part of the secret.
    text = data.decode("utf-8-sig")
    if not text.strip():
        raise _EmptySecretFile("is empty")
    line = text.splitlines()[0].strip()
    if not line:
        raise ValueError("its first line is blank: the secret must be on the first line")
    return line


def _empty_secret_problem(variable: str, path: str) -> str:
    """What to do about an empty secret file: a public client drops it, a confidential one fills it."""
    public = "for a public client (PKCE, no secret) remove"
    if variable == "CREDENTIALS_DIRECTORY":
        return (
            f"the systemd credential {CREDENTIAL_NAME} ({path}) is empty: {public} its LoadCredential= (the drop-in "
            "aweber-job.service.d/client-secret.conf); for a confidential one put the secret on the first line of "
            "the file it loads"
        )
    return f"{variable}: {path} is empty: {public} {variable}; for a confidential one put the secret on its first line"


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build Settings from ``env``; raise ConfigError listing every problem, each with its variable."""
    problems: list[str] = []
    values = {k: v.strip() for k, v in env.items() if isinstance(v, str)}

    def get(name: str) -> str | None:
        # An empty value counts as unset, as in a copied `.env.example`.
        value = values.get(name)
        return value if value else None

    def number(name: str, default: float, *, minimum: float, integer: bool = False) -> float:
        raw = get(name)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "a whole number" if integer else "a number of seconds"
            problems.append(f"{name} must be {kind}, got {raw!r}")
            return default
        if value != value or value in (float("inf"), float("-inf")):
            problems.append(f"{name} must be a finite number of seconds, got {raw!r}")
            return default
        if value < minimum:
            problems.append(f"{name} must be at least {minimum:g}, got {raw!r}")
            return default
        return value

    def duration(name: str, default: float) -> float:
        raw = get(name)
        if raw is None:
            return default
        seconds = parse_duration_seconds(raw)
        if seconds is None or seconds <= 0:
            problems.append(f"{name} must be a positive duration such as 6h, 90m or 3600 (seconds), got {raw!r}")
            return default
        return seconds

    def url(name: str, default: str) -> str:
        raw = get(name) or default
        why = check_url(raw)
        if why:
            problems.append(f"{name} {why}")
        return raw

    client_id = get("AWEBER_CLIENT_ID")

    secret: Secret | None = None
    secret_source: str | None = None
    inline = values.get("AWEBER_CLIENT_SECRET") or None
    secret_file = get("AWEBER_CLIENT_SECRET_FILE")
    credentials_dir = get("CREDENTIALS_DIRECTORY")
    if inline and secret_file:
        problems.append("AWEBER_CLIENT_SECRET and AWEBER_CLIENT_SECRET_FILE are both set; set only one")
    elif inline:
        secret, secret_source = Secret(inline), "AWEBER_CLIENT_SECRET"
    else:
        candidates: list[tuple[str, str]] = []
        if secret_file:
            candidates.append((secret_file, "AWEBER_CLIENT_SECRET_FILE"))
        elif credentials_dir and os.path.exists(os.path.join(credentials_dir, CREDENTIAL_NAME)):
            candidates.append((os.path.join(credentials_dir, CREDENTIAL_NAME), "CREDENTIALS_DIRECTORY"))
        for path, variable in candidates:
            try:
                secret, secret_source = Secret(_read_secret_file(path)), f"{variable} ({path})"
            except _EmptySecretFile:
                problems.append(_empty_secret_problem(variable, path))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                if isinstance(exc, UnicodeDecodeError):
                    reason = "is not UTF-8 text"
                problems.append(f"{variable}: cannot read the client secret from {path}: {reason}")

    token_file_raw = get("AWEBER_TOKEN_FILE")
    token_file = Path(token_file_raw).expanduser() if token_file_raw else _default_token_file(values)
    if not token_file.is_absolute():
        token_file = Path(os.path.abspath(token_file))
    state_dir_raw = get("AWEBER_STATE_DIR")
    state_dir = Path(os.path.abspath(Path(state_dir_raw).expanduser())) if state_dir_raw else token_file.parent

    token_url = url("AWEBER_TOKEN_URL", DEFAULT_TOKEN_URL)
    authorize_url = url("AWEBER_AUTHORIZE_URL", DEFAULT_AUTHORIZE_URL)
    revoke_url = url("AWEBER_REVOKE_URL", DEFAULT_REVOKE_URL)
    api_url = url("AWEBER_API_URL", DEFAULT_API_URL).rstrip("/")

    account_id: int | None = None
    raw_account = get("AWEBER_ACCOUNT_ID")
    if raw_account is not None:
        if raw_account.isdecimal() and int(raw_account) > 0:
            account_id = int(raw_account)
        else:
            problems.append(f"AWEBER_ACCOUNT_ID must be a positive whole number, got {raw_account!r}")

    list_ids: list[int] = []
    raw_lists = get("AWEBER_LIST_IDS")
    if raw_lists is not None:
        for item in raw_lists.split(","):
            item = item.strip()
            if item.isdecimal() and int(item) > 0:
                if int(item) not in list_ids:
                    list_ids.append(int(item))
            else:
                problems.append(f"AWEBER_LIST_IDS must be comma-separated list ids, got {item!r} in it")
                break

    ping_url: str | None = None
    if get("AWEBER_PING_URL"):
        ping_url = url("AWEBER_PING_URL", "").rstrip("/")

    metrics_raw = get("AWEBER_METRICS_FILE")
    metrics_file = Path(os.path.abspath(Path(metrics_raw).expanduser())) if metrics_raw else None

    pushgateway_url = _pushgateway_url(get, problems)

    store_url, store_source = _store(values, get, problems)
    store_keys = _store_keys(values, get, problems)
    connection = get("AWEBER_CONNECTION") or DEFAULT_CONNECTION
    if not CONNECTION_NAME.match(connection):
        problems.append(f"AWEBER_CONNECTION must be a connection name of {CONNECTION_NAME_RULE}, got {connection!r}")
        connection = DEFAULT_CONNECTION
    run_interval = DEFAULT_RUN_INTERVAL_SECONDS
    raw_interval = get("AWEBER_RUN_INTERVAL")
    if raw_interval is not None:
        parsed_interval = parse_duration_seconds(raw_interval)
        if parsed_interval is None:
            problems.append(
                "AWEBER_RUN_INTERVAL must be a duration such as 24h, 90m or 3600 (seconds; 0: always due), "
                f"got {raw_interval!r}"
            )
        else:
            run_interval = parsed_interval

    log_format = (get("AWEBER_LOG_FORMAT") or "text").lower()
    if log_format not in ("text", "json"):
        problems.append(f"AWEBER_LOG_FORMAT must be 'text' or 'json', got {get('AWEBER_LOG_FORMAT')!r}")
        log_format = "text"

    settings = Settings(
        client_id=client_id,
        client_secret=secret,
        client_secret_source=secret_source,
        token_file=token_file,
        state_dir=state_dir,
        fallback_rescue_dir=_fallback_rescue_dir(values),
        token_url=token_url,
        authorize_url=authorize_url,
        revoke_url=revoke_url,
        api_url=api_url,
        task=get("AWEBER_TASK") or DEFAULT_TASK,
        account_id=account_id,
        list_ids=tuple(list_ids),
        lock_timeout_seconds=number("AWEBER_LOCK_TIMEOUT", 60.0, minimum=0),
        http_timeout_seconds=number("AWEBER_HTTP_TIMEOUT", 30.0, minimum=0.001),
        retry_deadline_seconds=number("AWEBER_RETRY_DEADLINE", 300.0, minimum=0),
        rate_limit_per_minute=int(
            number("AWEBER_RATE_LIMIT", DEFAULT_RATE_LIMIT_PER_MINUTE, minimum=1, integer=True)
        ),
        refresh_leeway_seconds=number("AWEBER_REFRESH_LEEWAY", 300.0, minimum=0),
        run_timeout_seconds=duration("AWEBER_RUN_TIMEOUT", DEFAULT_RUN_TIMEOUT_SECONDS),
        ping_url=ping_url,
        metrics_file=metrics_file,
        pushgateway_url=pushgateway_url,
        log_format=log_format,
        store_url=store_url,
        store_source=store_source,
        connection=connection,
        store_keys=store_keys,
        run_interval_seconds=run_interval,
        shutdown_grace_seconds=number("AWEBER_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE_SECONDS, minimum=0),
        source=dict(values),
    )
    if problems:
        raise ConfigError(problems)
    return settings


def describe_store_url(url: str) -> str:
    """A PostgreSQL URL as it may be shown: without its password (nor any query options, which may hold one)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def _credential(values: Mapping[str, str], name: str) -> str | None:
    """The path of systemd credential ``name`` when the service was given it, else None."""
    directory = values.get("CREDENTIALS_DIRECTORY")
    if directory and os.path.exists(os.path.join(directory, name)):
        return os.path.join(directory, name)
    return None


_Get = Callable[[str], "str | None"]


def _store(values: Mapping[str, str], get: _Get, problems: list[str]) -> tuple[Secret | None, str | None]:
    """AWEBER_STORE (else the credential aweber-store): None for the token file, else the database URL."""
    raw, source = get("AWEBER_STORE"), "AWEBER_STORE"
    if raw is None:
        path = _credential(values, STORE_CREDENTIAL_NAME)
        if path is not None:
            source = f"the credential {STORE_CREDENTIAL_NAME} ({path})"
            try:
                raw = _read_secret_file(path)
            except (OSError, ValueError, UnicodeDecodeError):
                problems.append(f"cannot read the store URL from {source}: it must hold the URL on its first line")
                return None, None
    if raw is None or raw.lower() == "file":
        return None, None
    # The password is a secret from the moment it is read: no message below may show it.
    from job.logs import REDACTOR

    try:
        parts = urlsplit(raw)
        REDACTOR.add(parts.password)
    except ValueError:
        # The password cannot be told apart in a URL that does not parse: show none of it.
        problems.append(f"{source} is not a valid URL (such as postgresql://user@host/db)")
        return None, None
    if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname or parts.path.strip("/")):
        shown = describe_store_url(raw) if "://" in raw else "a value that is not a URL"
        problems.append(f"{source} must be 'file' or a PostgreSQL URL such as postgresql://user@host/db, got {shown}")
        return None, None
    return Secret(raw), source


def _pushgateway_url(get: _Get, problems: list[str]) -> Secret | None:
    """AWEBER_PUSHGATEWAY_URL: an http(s) URL; credentials in it only over https or to loopback.

    The metrics themselves hold no secret, so plain http to a cluster-internal Pushgateway is fine;
    a user and password are, so those travel only over https or never leave the machine.
    """
    raw = get("AWEBER_PUSHGATEWAY_URL")
    if not raw:
        return None
    from job.logs import REDACTOR

    try:
        parts = urlsplit(raw)
        # The credentials are secrets from the moment they are read: no message below may show them.
        REDACTOR.add(parts.password, parts.username)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        problems.append("AWEBER_PUSHGATEWAY_URL is not a valid URL")
        return None
    if parts.scheme not in ("http", "https") or not host:
        problems.append("AWEBER_PUSHGATEWAY_URL must be an http(s) URL with a host, such as https://pushgateway.example.com")
        return None
    if parts.query or parts.fragment:
        problems.append("AWEBER_PUSHGATEWAY_URL must not have a query or fragment: the job adds /metrics/job/… to it")
        return None
    if (parts.username or parts.password) and parts.scheme == "http" and not is_loopback_host(host):
        problems.append(
            f"AWEBER_PUSHGATEWAY_URL carries credentials over plain http to {host}: use https "
            "(plain http is accepted for a URL without credentials, or a loopback host)"
        )
        return None
    return Secret(raw.rstrip("/"))


def _store_keys(values: Mapping[str, str], get: _Get, problems: list[str]) -> tuple[Secret, ...]:
    """The Fernet keys from AWEBER_STORE_KEY, AWEBER_STORE_KEY_FILE or the credential aweber-store-key."""
    inline, key_file = get("AWEBER_STORE_KEY"), get("AWEBER_STORE_KEY_FILE")
    if inline and key_file:
        problems.append("AWEBER_STORE_KEY and AWEBER_STORE_KEY_FILE are both set; set only one")
        return ()
    source, raw = "AWEBER_STORE_KEY", inline
    path = key_file or (None if inline else _credential(values, STORE_KEY_CREDENTIAL_NAME))
    if path is not None:
        source = "AWEBER_STORE_KEY_FILE" if key_file else f"the credential {STORE_KEY_CREDENTIAL_NAME}"
        try:
            raw = _read_secret_file(path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            reason = "it must hold the keys on its first line"
            if isinstance(exc, OSError) and exc.strerror:
                reason = exc.strerror
            problems.append(f"{source}: cannot read the store keys from {path}: {reason}")
            return ()
    if not raw:
        return ()
    import base64
    import binascii

    from job.logs import REDACTOR

    keys = [part.strip() for part in raw.split(",") if part.strip()]
    REDACTOR.add(*keys)
    for number, key in enumerate(keys, 1):
        try:
            decoded = base64.urlsafe_b64decode(key.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            decoded = b""
        if len(decoded) != 32:
            problems.append(
                f"{source}: key {number} of {len(keys)} is not a Fernet key (32 bytes in url-safe base64, as "
                "cryptography's Fernet.generate_key() makes)"
            )
    return tuple(Secret(key) for key in keys)
