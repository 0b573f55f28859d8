"""Post each new subscriber to a webhook, once: ``aweber-job run --task ./examples/webhook.py:deliver``.

The URL comes from ``WEBHOOK_URL`` (the environment or the env file). Each subscriber that
new-subscribers would report is sent as one JSON object in its own ``POST``, oldest first, with an
``Idempotency-Key`` header (``<account>/<list>/<subscriber id>``) for a receiver that wants to drop a
repeat. A 2xx answer is acceptance. Anything else — a 4xx, a 5xx, a refused connection, no answer
within 10 s — stops the run there with exit 75: the watermark stays just before the subscriber that
was not accepted, so the next run starts with it. Nobody is skipped. Those accepted are not sent again,
except when the run ends another way after they were: killed, an answer lost on the way back, or an
error from AWeber on a later list (a failed run keeps no state) — then the next run sends them again, and
the key lets the receiver tell.

The URL may carry credentials (``https://user:password@host/…``, or a secret in its path or query, as
many webhook services issue them): it is never written whole in a log line, whatever the verbosity —
the job's redactor masks it, and messages name only its scheme and host.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import urlsplit

import requests

from job.credentials import is_loopback_host
from job.errors import ConfigError, TaskStoppedError
from job.logs import REDACTOR
from job.tasks import TaskContext
from job.tasks.new_subscribers import new_subscribers

URL_VARIABLE = "WEBHOOK_URL"
TIMEOUT_SECONDS = 10


def deliver(context: TaskContext) -> dict[str, Any]:
    """Post each new subscriber to WEBHOOK_URL; stop (exit 75) at the first one it does not accept."""
    url = context.settings.source.get(URL_VARIABLE, "").strip()
    if not url:
        raise ConfigError([f"{URL_VARIABLE} is not set: the webhook task needs the URL to post subscribers to"])
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError([f"{URL_VARIABLE} must be an http(s) URL with a host"])
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        # Its credentials and every subscriber's address would cross the network in the clear.
        raise ConfigError([f"{URL_VARIABLE} must use https (plain http only to a loopback host)"])
    # Every part that may be secret, so no log line (urllib3's at -vv included) can show it.
    REDACTOR.add(url, parts.password, parts.username, parts.path, parts.query)
    with requests.Session() as session:
        poster = _Poster(session, url, f"{parts.scheme}://{parts.hostname}")
        # new-subscribers does the finding and the watermark; what it writes goes to the webhook instead.
        # What it writes is a line at a time, which is all _Poster takes of a stream.
        posting = dataclasses.replace(context, output=poster, output_format="jsonl")  # type: ignore[arg-type]
        summary = new_subscribers(posting)
    context.log.info("%d subscribers delivered to the webhook at %s", poster.delivered, poster.shown)
    return {**summary, "delivered": poster.delivered}


class _Poster:
    """What new-subscribers writes to: each line (one subscriber) is posted, and a line the webhook does
    not accept raises TaskStoppedError before new-subscribers moves its watermark over that subscriber."""

    def __init__(self, session: requests.Session, url: str, shown: str) -> None:
        self._session = session
        self._url = url
        self.shown = shown
        self._pending = ""
        self.delivered = 0

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, _, self._pending = self._pending.partition("\n")
            self._post(line)
        return len(text)

    def flush(self) -> None:
        """Every whole line is posted as it is written: nothing waits here."""

    def _post(self, line: str) -> None:
        row = json.loads(line)
        key = f"{row.get('account_id')}/{row.get('list_id')}/{row.get('id')}"
        try:
            response = self._session.post(
                self._url, data=line.encode("utf-8"), timeout=TIMEOUT_SECONDS, allow_redirects=False,
                headers={"Content-Type": "application/json", "Idempotency-Key": key},
            )
            response.close()
        except requests.RequestException as exc:
            # The exception's text names the URL's path, which may be secret: only its kind is said.
            raise TaskStoppedError(
                f"the webhook at {self.shown} could not be reached ({type(exc).__name__}) for subscriber "
                f"{row.get('id')}; {self.delivered} delivered before it"
            ) from None
        if not 200 <= response.status_code < 300:
            raise TaskStoppedError(
                f"the webhook at {self.shown} answered HTTP {response.status_code} for subscriber {row.get('id')}; "
                f"{self.delivered} delivered before it"
            )
        self.delivered += 1
