"""What the PostgreSQL store's parts share: the schema's name and version, the limits, the records it returns,
and how connection names and lease holders are written."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from job.auth.tokens import TokenFile
from job.errors import ConfigError, UsageError

SCHEMA = "aweber_job"
SCHEMA_VERSION = 4
# pg_advisory_xact_lock key serialising init_schema across machines ("aweberjb" in ASCII).
ADVISORY_LOCK_KEY = 0x617765626572_6A62
CONNECT_TIMEOUT_SECONDS = 10
# The longest any one statement may wait for its answer before its connection is cut (job.stores.postgres.watchdog).
# Every statement the job sends is a short one on a few rows; a wait this long means the link or the
# server is in trouble, and the save after a refresh must keep time to write its rescue file.
STATEMENT_TIMEOUT_SECONDS = 10.0
# However late (a stop's grace nearly over), a statement gets this long.
LAST_TRY_SECONDS = 1.0
# Asked of the server on each new connection: its own end of a statement or lock wait nobody waits for any
# more, and of a transaction left open by a client that vanished.
SESSION_SETTINGS = (
    "SET statement_timeout = '30s'; SET lock_timeout = '10s'; SET idle_in_transaction_session_timeout = '60s'"
)
# The kernel gives up on a peer that stops acknowledging (a partition) after this long, and probes an idle
# link; set unless the URL sets them.
LINK_OPTIONS = {"tcp_user_timeout": "10000", "keepalives": "1", "keepalives_idle": "10",
                "keepalives_interval": "5", "keepalives_count": "3"}
APPLICATION_NAME = "aweber-job"
# How often a run waiting for a lease asks again: cheap for the database, quick enough for a batch job.
LEASE_POLL_SECONDS = 0.25
# First pause between save attempts; doubled each time up to SAVE_RETRY_MAX_SECONDS.
SAVE_RETRY_FIRST_SECONDS = 0.25
SAVE_RETRY_MAX_SECONDS = 5.0
RESCUE_DIRECTORY = "rescue"
MAX_NAME_LENGTH = 128
PSYCOPG_MISSING = (
    "AWEBER_STORE is a PostgreSQL URL but psycopg is not installed: pip install 'aweber-job[postgres]'"
)
NO_SCHEMA_HINT = "run aweber-job store init"

# What a sealed value holds before it is encrypted: this line, naming the connection by the SHA-256 of
# its name, then the token file. Without it, the ciphertext of one row copied into another would open
# there, and that connection would run with another customer's account.
BOUND = b"aweber-job/bound "

# A temporary failure is due again after 5 min, then 10, 20 … (doubling) but never later than the interval
# (sql/record_run.sql and sql/finish.sql write it, sql/claim_retry.sql reads it).
BACKOFF_FIRST_SECONDS = 300.0


@dataclass(frozen=True)
class ConnectionInfo:
    """One connection as ``connections list`` shows it: nothing secret, readable without a key."""

    name: str
    account_id: int | None
    access_expires_at: float | None
    last_run_at: float | None
    last_exit_code: int | None
    next_run_at: float | None
    lease_holder: str | None
    encrypted: bool
    revoked: bool
    # A run ended 77 or 78: not run again until its tokens change (login, import) or a run by hand succeeds.
    waiting_for_person: bool = False


@dataclass(frozen=True)
class ConnectionView:
    """What ``status`` shows: the info, the decrypted tokens (None once revoked) and the refresh marker."""

    info: ConnectionInfo
    tokens: TokenFile | None
    marker: str | None


@dataclass(frozen=True)
class PendingRefresh:
    """What begin_refresh recorded: the hash of the refresh token being spent, and the room reserved for a
    rescue file of its successor (job.stores.postgres.rescue.RescueSlot)."""

    spent: str
    slot: Any = None


def utc(at: float | None) -> str:
    if at is None:
        return "an unknown time"
    if not math.isfinite(at) or not -62_135_596_800 <= at <= 253_402_300_799:
        return "infinity" if at > 0 else "-infinity"  # a row edited by hand: no calendar holds it
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# The connection's part of a rescue file's name; with the stamp and hash the name stays under 200 bytes.
MAX_FILE_SAFE_LENGTH = 120


def file_safe(name: str) -> str:
    """The connection name as a file-name part: letters, digits, ``-`` and ``_`` kept, all else %XX.

    Distinct names stay distinct, and the result never holds the ``.`` that separates a rescue file's parts.
    A long result (a name of dots, or of letters outside ASCII) is cut and ends with a hash of the whole
    name, so a rescue file's name always fits in a file system's 255 bytes.
    """
    out = []
    for char in name:
        if char.isascii() and (char.isalnum() or char in "-_"):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    safe = "".join(out)
    if len(safe) <= MAX_FILE_SAFE_LENGTH:
        return safe
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{safe[:MAX_FILE_SAFE_LENGTH - 18]}-~{digest}"


def name_from_file_safe(safe: str) -> str | None:
    """The connection name a :func:`file_safe` part stands for; None for a cut one (it ends with a hash)."""
    if "-~" in safe:
        return None
    try:
        return urllib.parse.unquote(safe, errors="strict")
    except UnicodeDecodeError:
        return None


def binding(name: str) -> bytes:
    """The line that binds a sealed value to connection ``name`` (see BOUND)."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return BOUND + digest.encode("ascii") + b"\n"


# A Fernet token: version 0x80, 8-byte time, 16-byte IV, AES-CBC blocks of 16 bytes (one at least), 32-byte HMAC.
FERNET_OVERHEAD = 1 + 8 + 16 + 32
FERNET_TEXT = re.compile(rb"[A-Za-z0-9_-]*={0,2}")


def fernet_damage(value: bytes) -> str | None:
    """Why ``value`` cannot be a Fernet token at all (so no key could open it), or None when it may be one."""
    if not FERNET_TEXT.fullmatch(value):
        return "it is not URL-safe base64 text"
    try:
        raw = base64.urlsafe_b64decode(value)
    except (binascii.Error, ValueError):
        return "it is not URL-safe base64 text"
    if not raw or raw[0] != 0x80:
        return "it does not begin as a Fernet token does"
    if len(raw) < FERNET_OVERHEAD + 16 or (len(raw) - FERNET_OVERHEAD) % 16:
        return f"its length ({len(raw)} bytes) cannot be a Fernet token's"
    return None


def check_name(name: str) -> str:
    """A connection name is 1–128 printable characters; anything else is a usage error."""
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable() or name != name.strip():
        raise UsageError(
            f"connection name {name[:MAX_NAME_LENGTH]!r} is not usable: it must be 1 to {MAX_NAME_LENGTH} "
            "printable characters without leading or trailing spaces"
        )
    return name


def split_holder(holder: str) -> tuple[str, int | None]:
    """``host:pid:random`` → (host, pid); a holder written by something else gives (holder, None)."""
    parts = holder.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return holder, None


def describe_holder(holder: str) -> str:
    host, pid = split_holder(holder)
    return f"host {host} pid {pid}" if pid is not None else f"holder {holder!r}"


def import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError([PSYCOPG_MISSING]) from None
    return psycopg

