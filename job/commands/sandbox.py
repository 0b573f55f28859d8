"""``aweber-job sandbox``: the stand-in AWeber served on loopback until stopped, to try the real commands on.

``demo`` runs the cycle by itself and is gone; the sandbox stays up so that a person can run ``login``,
``status``, ``run``, ``state``, ``revoke`` and the store commands against it, as documented for AWeber.
It seeds what the demo seeds (one account, three lists, a few subscribers in the last day and older
ones over the month before), prints the variables that point the job at it as ``NAME=value`` lines
on stdout (for ``.env``), and serves until SIGINT, SIGTERM or SIGHUP, then stops cleanly with 0.

Its authorize endpoint approves at once: opening the URL ``login`` prints (in a browser, or with
``curl``) shows the authorization code to paste, as AWeber's out-of-band page does. Everything it
knows lives in memory and is gone when it stops.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

from job.commands.demo import ACCOUNT_ID, LISTS, populate
from job.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from job.standin import StandIn

log = logging.getLogger("job")

SANDBOX_CLIENT_ID = "sandbox-client"
# Where the sandbox's tokens go unless the .env says otherwise: apart from a real token file.
SANDBOX_TOKEN_FILE = "sandbox/tokens.json"  # noqa: S105 - a path, not a password
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_sandbox(out: IO[str], *, port: int, confidential: bool, verbose: int) -> int:
    """Serve the stand-in on 127.0.0.1:``port`` (0: a free one) until a stop signal; 0 once stopped.

    UsageError (64) when the port cannot be listened on.
    """
    from job.standin import StandIn

    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0 to 65535, got {port}")
    client_secret = secrets.token_hex(16) if confidential else None
    server = StandIn(clients={SANDBOX_CLIENT_ID: client_secret}, port=port, verbose=verbose > 0)
    stop = threading.Event()
    with _stopped_by_signals(stop):
        try:
            server.start()
        except OSError as exc:
            raise UsageError(
                f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}",
                hint="give another --port, or none for a free one",
            ) from None
        try:
            populate(server, time.time())
            _print_environment(out, server, client_secret)
            kind = "confidential client (secret above)" if confidential else "public client (PKCE)"
            log.info(
                "sandbox: a stand-in AWeber on %s (loopback only, no account, all in memory): account %d, %d lists, "
                "%s %r", server.base_url, ACCOUNT_ID, len(LISTS), kind, SANDBOX_CLIENT_ID,
            )
            log.info("sandbox: put the lines above in .env (or export them), then run aweber-job login, run, "
                     "status, state show, revoke; to approve, open the URL login prints: the code is on that page")
            log.info("sandbox: serving until Ctrl-C (or kill -TERM %d); its tokens and subscribers are gone then",
                     os.getpid())
            while not stop.wait(0.5):
                pass
            log.info("sandbox: stopped")
        finally:
            server.stop()
    return EXIT_OK


def _print_environment(out: IO[str], server: StandIn, client_secret: str | None) -> None:
    """The variables of job/config.py that point the job at the sandbox, one ``NAME=value`` a line."""
    lines = [f"AWEBER_CLIENT_ID={SANDBOX_CLIENT_ID}"]
    if client_secret is not None:
        # The sandbox's own made-up secret, good for nothing but this process: the job needs it to log in.
        lines.append(f"AWEBER_CLIENT_SECRET={client_secret}")
    lines += [
        f"AWEBER_TOKEN_URL={server.token_url}",
        f"AWEBER_AUTHORIZE_URL={server.authorize_url}",
        f"AWEBER_REVOKE_URL={server.revoke_url}",
        f"AWEBER_API_URL={server.api_url}",
        # Absolute: cron and systemd run the job from another directory than the one .env was written in.
        f"AWEBER_TOKEN_FILE={Path(SANDBOX_TOKEN_FILE).absolute()}",
    ]
    out.write("".join(line + "\n" for line in lines))
    out.flush()


@contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP set ``stop`` (no KeyboardInterrupt, no traceback); the old handlers after."""
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)

