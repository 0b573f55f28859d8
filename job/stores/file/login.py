"""``login`` for the token file: the steps :class:`job.stores.file.store.FileStore` takes for it.

The token file is looked at and reserved before the code is spent, so an unwritable directory costs
nothing, and looked at again under the lock right before the exchange, so a file that appeared while
the person was approving is not overwritten silently.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from job.auth.tokens import TokenFile, fingerprint, format_expiry
from job.errors import ProtocolError, StorageError, TokenFileError, UsageError
from job.logs import REDACTOR
from job.stores.durable import resolve_target
from job.stores.file.lock import TokenLock
from job.stores.file.tokenfile import Reservation, load_token_file, reserve_size_for, save_rotated_tokens

if TYPE_CHECKING:
    from job.auth.oauth import TokenAnswer
    from job.stores.base import Exchange

log = logging.getLogger(__name__)


def refuse_to_overwrite(path: Path, *, force: bool) -> None:
    """Raise UsageError (64) when a token file is already there and ``force`` was not given."""
    if path.is_dir():
        raise TokenFileError(
            f"token file {path} is a directory, not a file", hint="set AWEBER_TOKEN_FILE to a file path"
        )
    if path.exists() and not force:
        existing = load_existing(path, warn=False)
        if existing is not None and existing.oauth1 is not None:
            raise UsageError(
                f"token file {path} holds legacy OAuth 1.0a tokens; use --force to replace them with OAuth 2 "
                "tokens. The job cannot revoke OAuth 1.0a tokens: disconnect the old integration in AWeber"
            )
        raise UsageError(
            f"token file {path} exists; use --force to replace it. --force does not revoke its refresh token, "
            "which may still work: to end it, run aweber-job revoke first (that removes the file too)"
        )


def load_existing(path: Path, *, warn: bool) -> TokenFile | None:
    """The token file ``--force`` replaces, when it is a valid one (its shape and client are kept)."""
    if not path.exists():
        return None
    try:
        tokens = load_token_file(path).tokens
    except TokenFileError as exc:
        if warn:
            log.warning("the token file will be replaced although it is not valid: %s", exc)
        return None
    REDACTOR.add(*tokens.secrets())
    return tokens


def prepare_directory(path: Path) -> None:
    """Create the token file's directory (0700) when it is missing; StorageError (73) when it cannot."""
    directory = resolve_target(path).parent
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StorageError(
            f"cannot create the token file's directory {directory}: {exc.strerror or exc}",
            hint="check AWEBER_TOKEN_FILE; nothing was sent to AWeber",
        ) from exc


def check_writable(path: Path, lock_timeout_seconds: float) -> None:
    """Take the lock and reserve a token file once, so a person does not approve the app in vain.

    The real reservation is made again under the lock right before the code is exchanged.
    """
    with TokenLock(path, lock_timeout_seconds):
        try:
            Reservation.create(path, reserve_size_for(0)).discard()
        except StorageError as exc:
            # The store speaks of a refresh token; here nothing at all has been asked of AWeber yet.
            message = exc.message.replace("the refresh token was not used", "nothing was sent to AWeber")
            raise StorageError(message, hint=exc.hint) from exc.__cause__


def save_login(
    path: Path,
    exchange: Exchange,
    *,
    lock_timeout_seconds: float,
    fallback: Path | None,
    force: bool,
) -> tuple[TokenAnswer, TokenFile]:
    """Under the lock: reserve, exchange the code (``exchange``), save the new token file."""
    with TokenLock(path, lock_timeout_seconds) as lock:
        # Looked at again under the lock: a file that appeared while the person was approving is
        # not overwritten silently, and --force keeps the shape of the file as it is now.
        refuse_to_overwrite(path, force=force)
        existing = load_existing(path, warn=False) if force else None
        current_size = len(existing.to_bytes()) if existing is not None else 0
        try:
            reservation = Reservation.create(path, reserve_size_for(current_size))
        except StorageError as exc:
            message = exc.message.replace("the refresh token was not used", "the code was not spent")
            raise StorageError(message, hint=exc.hint) from exc.__cause__
        try:
            answer, tokens = exchange(existing)
        except BaseException:
            reservation.discard()
            raise
        # Recorded in the lock file, so a temporary an earlier run left never wins over this authorization.
        save_rotated_tokens(path, tokens, reservation, lock=lock, fallback=fallback)
        if existing is not None and existing.oauth1 is not None:
            log.warning(
                "replaced the OAuth 1.0a token file with OAuth 2 tokens; the job cannot revoke OAuth 1.0a "
                "tokens: they stay valid until the old integration is disconnected in AWeber"
            )
        elif existing is not None:
            log.warning(
                # Whether AWeber ends the old grant when the app is authorized again is not documented
                # (docs/aweber-api.md), so the message promises neither way.
                "replaced the token file; its old refresh token %s was not revoked and may still work "
                "(AWeber may also end it by itself)",
                fingerprint(existing.refresh_token),
            )
        if answer.unusable:
            raise ProtocolError(
                f"the token endpoint's answer to the authorization code {answer.unusable}; the new refresh token "
                f"was saved ({fingerprint(tokens.refresh_token)}) in {path}, and the next run will refresh it "
                "(or now: aweber-job refresh)"
            )
    return answer, tokens


def print_result(out: IO[str], path: Path, tokens: TokenFile) -> None:
    """Say what was written and what to do next."""
    try:
        mode = f"mode {stat.S_IMODE(os.stat(path).st_mode):04o}"
    except OSError:
        mode = "mode unknown"
    scope = tokens.scope or "not stated"
    out.write(
        "\n"
        f"Authorized. Token file {path} ({tokens.shape} shape, {mode}).\n"
        f"  refresh token {fingerprint(tokens.refresh_token)}, access token {fingerprint(tokens.access_token)} "
        f"expires {format_expiry(tokens.expires_at, time.time())}\n"
        f"  scope: {scope}\n"
        "\n"
        "Next, with the same configuration:\n"
        "  aweber-job run                           one run now, to check (or: aweber-job refresh)\n"
        "  systemctl enable --now aweber-job.timer  a daily run under systemd, or\n"
        "  the line in crontab.example              a daily run from cron (use one, not both)\n"
        "Each run rotates the refresh token and saves it in the token file: keep that file, and do not "
        "copy it to a second machine that also runs the job.\n"
    )
    out.flush()
