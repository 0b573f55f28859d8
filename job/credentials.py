"""Where the job's secrets come from, read once for the settings (:mod:`job.config`): the client secret, the
PostgreSQL store's URL and keys, the Pushgateway's credentials.

Each comes from a variable, a file a variable names, or a systemd credential (``LoadCredential=``); a
secret is a :class:`Secret` from the moment it is read, and registered with the redactor where a URL
carries one, so no message shows it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

CREDENTIAL_NAME = "aweber-client-secret"
STORE_CREDENTIAL_NAME = "aweber-store"
STORE_KEY_CREDENTIAL_NAME = "aweber-store-key"

# How the settings are read: a variable's value, None when unset or empty.
_Get = Callable[[str], "str | None"]


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


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is localhost or an address in 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    import ipaddress  # on use: most hosts are names, and every command loads the settings

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EmptySecretFile(ValueError):
    """The secret file holds nothing but blank space."""


def read_secret_file(path: str) -> str:
    """Return the first line of ``path``, stripped; raise OSError or ValueError on trouble.

    EmptySecretFile when the file is blank throughout: usually one created for a public client.
    """
    with open(path, "rb") as handle:
        data = handle.read(65536)
    # "utf-8-sig": editors on Windows save a byte order mark, which is not part of the secret.
    text = data.decode("utf-8-sig")
    if not text.strip():
        raise EmptySecretFile("is empty")
    line = text.splitlines()[0].strip()
    if not line:
        raise ValueError("its first line is blank: the secret must be on the first line")
    return line


def empty_secret_problem(variable: str, path: str) -> str:
    """What to do about an empty secret file: a public client drops it, a confidential one fills it."""
    public = "for a public client (PKCE, no secret) remove"
    if variable == "CREDENTIALS_DIRECTORY":
        return (
            f"the systemd credential {CREDENTIAL_NAME} ({path}) is empty: {public} its LoadCredential= (the drop-in "
            "aweber-job.service.d/client-secret.conf); for a confidential one put the secret on the first line of "
            "the file it loads"
        )
    return f"{variable}: {path} is empty: {public} {variable}; for a confidential one put the secret on its first line"


def _masked(value: str) -> Secret:
    """A secret read from the settings, masked in every log line from now on: read once, for the whole process,
    outside any connection's scope (a fleet run's scopes forget what they registered when they end)."""
    from job.logs import REDACTOR

    REDACTOR.add(value)
    return Secret(value)


def client_secret(values: Mapping[str, str], get: _Get, problems: list[str]) -> tuple[Secret | None, str | None]:
    """The client secret and where it came from: AWEBER_CLIENT_SECRET, its file, or the systemd credential."""
    inline = values.get("AWEBER_CLIENT_SECRET") or None
    secret_file = get("AWEBER_CLIENT_SECRET_FILE")
    credentials_dir = get("CREDENTIALS_DIRECTORY")
    if inline and secret_file:
        problems.append("AWEBER_CLIENT_SECRET and AWEBER_CLIENT_SECRET_FILE are both set; set only one")
        return None, None
    if inline:
        return _masked(inline), "AWEBER_CLIENT_SECRET"
    if secret_file:
        path, variable = secret_file, "AWEBER_CLIENT_SECRET_FILE"
    elif credentials_dir and os.path.exists(os.path.join(credentials_dir, CREDENTIAL_NAME)):
        path, variable = os.path.join(credentials_dir, CREDENTIAL_NAME), "CREDENTIALS_DIRECTORY"
    else:
        return None, None
    try:
        return _masked(read_secret_file(path)), f"{variable} ({path})"
    except EmptySecretFile:
        problems.append(empty_secret_problem(variable, path))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, UnicodeDecodeError):
            reason = "is not UTF-8 text"
        problems.append(f"{variable}: cannot read the client secret from {path}: {reason}")
    return None, None


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


def credential(values: Mapping[str, str], name: str) -> str | None:
    """The path of systemd credential ``name`` when the service was given it, else None."""
    directory = values.get("CREDENTIALS_DIRECTORY")
    if directory and os.path.exists(os.path.join(directory, name)):
        return os.path.join(directory, name)
    return None


def store_url(values: Mapping[str, str], get: _Get, problems: list[str]) -> tuple[Secret | None, str | None]:
    """AWEBER_STORE (else the credential aweber-store): None for the token file, else the database URL."""
    raw, source = get("AWEBER_STORE"), "AWEBER_STORE"
    if raw is None:
        path = credential(values, STORE_CREDENTIAL_NAME)
        if path is not None:
            source = f"the credential {STORE_CREDENTIAL_NAME} ({path})"
            try:
                raw = read_secret_file(path)
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


def pushgateway_url(get: _Get, problems: list[str]) -> Secret | None:
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


def store_keys(values: Mapping[str, str], get: _Get, problems: list[str]) -> tuple[Secret, ...]:
    """The Fernet keys from AWEBER_STORE_KEY, AWEBER_STORE_KEY_FILE or the credential aweber-store-key."""
    inline, key_file = get("AWEBER_STORE_KEY"), get("AWEBER_STORE_KEY_FILE")
    if inline and key_file:
        problems.append("AWEBER_STORE_KEY and AWEBER_STORE_KEY_FILE are both set; set only one")
        return ()
    source, raw = "AWEBER_STORE_KEY", inline
    path = key_file or (None if inline else credential(values, STORE_KEY_CREDENTIAL_NAME))
    if path is not None:
        source = "AWEBER_STORE_KEY_FILE" if key_file else f"the credential {STORE_KEY_CREDENTIAL_NAME}"
        try:
            raw = read_secret_file(path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            reason = "it must hold the keys on its first line"
            if isinstance(exc, OSError) and exc.strerror:
                reason = exc.strerror
            problems.append(f"{source}: cannot read the store keys from {path}: {reason}")
            return ()
    if not raw:
        return ()
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
