"""Drive a stand-in running in another process (``python -m tests.support.standin``) through ``/_control/``.

:class:`StandInControl` has the same method names as :class:`job.standin.StandIn`, so a test can
be written once for either. Bad input raises ValueError, as it does in-process.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from job.standin.endpoints import Endpoints
from job.standin.faults import Fault
from job.standin.state import DEFAULT_SCOPE


class StandInControl(Endpoints):
    """A client for the control endpoints of a stand-in at ``base_url`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, base_url: str, *, timeout_seconds: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"expected http://HOST:PORT, got {base_url!r}")
        self._base_url = base_url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._timeout_seconds = timeout_seconds

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the stand-in this drives."""
        return self._base_url

    def info(self) -> dict[str, object]:
        """Return the stand-in's URLs and process id."""
        return self._object(self._call("GET", "info"))

    def issue_tokens(self, client_id: str, scope: str = DEFAULT_SCOPE) -> dict[str, object]:
        """Register a live token pair and return it like a token endpoint answer."""
        return self._object(self._call("POST", "issue-tokens", {"client_id": client_id, "scope": scope}))

    def issue_token_batch(self, client_id: str, count: int) -> list[dict[str, object]]:
        """``count`` token grants in one request (up to 10,000): how a benchmark fills a store quickly."""
        grants = self._object(self._call("POST", "issue-token-batch", {"client_id": client_id, "count": count}))
        values = grants["grants"]
        if not isinstance(values, list):
            raise RuntimeError("the stand-in answered an unexpected shape")
        return [self._object(value) for value in values]

    def live_refresh_tokens(self) -> set[str]:
        """Return the refresh tokens that would currently be accepted."""
        answer = self._object(self._call("GET", "live-refresh-tokens"))
        tokens = answer["refresh_tokens"]
        if not isinstance(tokens, list):
            raise RuntimeError("the stand-in answered an unexpected shape")
        return {str(token) for token in tokens}

    def issued_secrets(self) -> list[str]:
        """Return every token and authorization code the stand-in ever issued, and every PKCE verifier it received."""
        secrets = self._object(self._call("GET", "issued-secrets"))["secrets"]
        if not isinstance(secrets, list):
            raise RuntimeError("the stand-in answered an unexpected shape")
        return [str(secret) for secret in secrets]

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expired."""
        self._call("POST", "expire-access-tokens")

    def revoke_all_access_tokens(self, *, disconnect: bool = False) -> None:
        """Forget every access token; with ``disconnect`` even refreshed ones get 401."""
        self._call("POST", "revoke-all-access-tokens", {"disconnect": disconnect})

    def disconnect(self, client_id: str | None = None) -> None:
        """Refuse every access token of ``client_id`` (all when None) at the API."""
        self._call("POST", "disconnect", {"client_id": client_id})

    def reconnect(self, client_id: str | None = None) -> None:
        """Undo :meth:`disconnect`."""
        self._call("POST", "reconnect", {"client_id": client_id})

    def add_oauth1_credentials(self, **values: str) -> dict[str, object]:
        """Register legacy OAuth 1.0a credentials; return them as a token file would hold them."""
        return self._object(self._call("POST", "oauth1-credentials", values))

    def set_reuse_detection(self, enabled: bool) -> None:
        """Switch refresh-token reuse detection on or off."""
        self._call("POST", "reuse-detection", {"enabled": enabled})

    def reuse_stats(self) -> dict[str, int]:
        """Return how often a spent refresh token was presented, and how many grants that revoked."""
        answer = self._object(self._call("GET", "reuse-stats"))
        return {str(key): int(str(value)) for key, value in answer.items()}

    def add_account(self, account_id: int, *, company: str | None = None) -> None:
        """Add a customer account."""
        self._call("POST", "add-account", {"account_id": account_id, "company": company})

    def add_list(
        self,
        account_id: int,
        list_id: int,
        name: str = "Newsletter",
        *,
        size: int = 0,
        start: float | None = None,
        end: float | None = None,
        seed: int = 0,
    ) -> None:
        """Add a list of generated subscribers."""
        payload = {
            "account_id": account_id, "list_id": list_id, "name": name,
            "size": size, "start": start, "end": end, "seed": seed,
        }
        self._call("POST", "add-list", payload)

    def add_subscribers(
        self, account_id: int, list_id: int, entries: Sequence[Mapping[str, object]]
    ) -> list[int]:
        """Append subscribers and return their ids."""
        payload = {"account_id": account_id, "list_id": list_id, "subscribers": [dict(entry) for entry in entries]}
        ids = self._object(self._call("POST", "add-subscribers", payload))["ids"]
        if not isinstance(ids, list):
            raise RuntimeError("the stand-in answered an unexpected shape")
        return [int(value) for value in ids]

    def inject(self, *faults: Fault, path: str | None = None) -> None:
        """Queue faults for the next requests whose path starts with ``path``."""
        self._call("POST", "faults", {"faults": [fault.to_json() for fault in faults], "path": path})

    def configure_api(
        self,
        *,
        filter_day_offset_hours: float | None = None,
        exclusive_day_filters: bool | None = None,
        next_links_drop_filters: bool | None = None,
    ) -> dict[str, object]:
        """Change the API behaviour switches given (None leaves one as it is); return them all."""
        given = {
            "filter_day_offset_hours": filter_day_offset_hours,
            "exclusive_day_filters": exclusive_day_filters,
            "next_links_drop_filters": next_links_drop_filters,
        }
        payload = {name: value for name, value in given.items() if value is not None}
        return self._object(self._call("POST", "configure-api", payload))

    def set_request_delay(self, seconds: float) -> None:
        """Add ``seconds`` to every later AWeber request (not the control endpoints)."""
        self._call("POST", "request-delay", {"seconds": seconds})

    def stats(self) -> dict[str, object]:
        """Return the request counters."""
        return self._object(self._call("GET", "stats"))

    def request_log(self) -> list[dict[str, object]]:
        """Return the request log, oldest first."""
        entries = self._object(self._call("GET", "request-log"))["requests"]
        if not isinstance(entries, list):
            raise RuntimeError("the stand-in answered an unexpected shape")
        return [dict(entry) for entry in entries]

    def reset_stats(self) -> None:
        """Zero the counters and empty the request log."""
        self._call("POST", "reset-stats")

    def _call(self, method: str, name: str, payload: Mapping[str, object] | None = None) -> object:
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_seconds)
        try:
            connection.request(method, f"/_control/{name}", body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        answer = json.loads(data.decode("utf-8")) if data else None
        if response.status == 400:
            message = answer.get("error") if isinstance(answer, dict) else None
            raise ValueError(str(message or "the stand-in refused the control request"))
        if response.status != 200:
            raise RuntimeError(f"control request {method} {name} answered HTTP {response.status}")
        return answer

    @staticmethod
    def _object(value: object) -> dict[str, object]:
        if not isinstance(value, dict):
            raise RuntimeError("the stand-in answered an unexpected shape")
        return value
