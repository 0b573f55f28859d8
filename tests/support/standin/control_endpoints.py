"""The ``/_control/`` JSON endpoints that let a test drive a stand-in running in another process.

They exist only where installed, as ``StandIn(control_handler=handle_control)`` (process mode),
answer loopback clients only, and pass through no fault and no counter.
``GET /_control/live-refresh-tokens`` returns live refresh tokens: it is the test hook that lets a
crash test check that the job's token file holds the one live token, and it is served on
127.0.0.1 only.

Endpoints (JSON bodies and answers):

- ``GET /_control/info``: the stand-in's URLs and process id.
- ``POST /_control/issue-tokens`` ``{"client_id", "scope"?}``: a token grant.
- ``POST /_control/issue-token-batch`` ``{"client_id", "count"}``: ``{"grants": [...]}``, ``count`` grants at once.
- ``GET /_control/live-refresh-tokens``: ``{"refresh_tokens": [...]}``.
- ``GET /_control/issued-secrets``: ``{"secrets": [...]}``, every token and code ever issued.
- ``POST /_control/expire-access-tokens``.
- ``POST /_control/revoke-all-access-tokens`` ``{"disconnect"?: bool}``.
- ``POST /_control/disconnect`` and ``/_control/reconnect`` ``{"client_id"?}``.
- ``POST /_control/oauth1-credentials`` ``{"consumer_key"?, "consumer_secret"?, "access_token"?,
  "token_secret"?}``: the registered legacy OAuth 1.0a credentials (missing ones generated).
- ``POST /_control/reuse-detection`` ``{"enabled": bool}``; ``GET /_control/reuse-stats``: ``reuse_stats()``.
- ``POST /_control/add-account`` ``{"account_id", "company"?}``.
- ``POST /_control/add-list`` ``{"account_id", "list_id", "name"?, "size"?, "start"?, "end"?, "seed"?}``.
- ``POST /_control/add-subscribers`` ``{"account_id", "list_id", "subscribers": [...]}``: ``{"ids": [...]}``.
- ``POST /_control/faults`` ``{"faults": [Fault.to_json(), ...], "path"?}``: ``{"queued": n}``.
- ``POST /_control/configure-api`` ``{"filter_day_offset_hours"?, "exclusive_day_filters"?,
  "next_links_drop_filters"?}``: every :class:`job.standin.api.ApiBehaviour` switch, after the change.
- ``POST /_control/request-delay`` ``{"seconds"}``: the delay added to every later AWeber request.
- ``GET /_control/stats``: ``stats()``; ``GET /_control/request-log``: ``{"requests": [...]}``.
- ``POST /_control/reset-stats``.

Other successful calls answer ``{}``. Bad input answers 400 ``{"error": "..."}``.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from job.standin.faults import Fault
from job.standin.messages import Answer, Request, json_answer
from job.standin.oauth1 import grant_from_mapping
from job.standin.state import DEFAULT_SCOPE

if TYPE_CHECKING:
    from job.standin.server import StandIn

_Handler = Callable[["StandIn", Mapping[str, object]], object]


def handle_control(standin: StandIn, request: Request, client_host: str) -> Answer:
    """Answer one ``/_control/`` request."""
    if not ipaddress.ip_address(client_host).is_loopback:
        return json_answer(403, {"error": "control endpoints answer loopback clients only"})
    name = request.path[len("/_control/"):]
    route = _ROUTES.get((request.method, name))
    if route is None:
        known = any(path == name for _, path in _ROUTES)
        return json_answer(405 if known else 404, {"error": f"no control endpoint {request.method} {request.path}"})
    try:
        payload = _payload(request)
        return json_answer(200, route(standin, payload))
    except (ValueError, TypeError, KeyError) as error:
        return json_answer(400, {"error": f"{type(error).__name__}: {error}"})


def _payload(request: Request) -> Mapping[str, object]:
    if not request.body:
        return {}
    value = json.loads(request.body.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("the body must be a JSON object")
    return value


def _text(payload: Mapping[str, object], key: str, default: str | None = None) -> str | None:
    value = payload.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def _int(payload: Mapping[str, object], key: str) -> int:
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer")
    return value


def _number(payload: Mapping[str, object], key: str) -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number")
    return value


def _info(standin: StandIn, payload: Mapping[str, object]) -> object:
    return {
        "base_url": standin.base_url,
        "token_url": standin.token_url,
        "authorize_url": standin.authorize_url,
        "revoke_url": standin.revoke_url,
        "api_url": standin.api_url,
        "pid": os.getpid(),
    }


def _issue_tokens(standin: StandIn, payload: Mapping[str, object]) -> object:
    client_id = _text(payload, "client_id")
    if client_id is None:
        raise ValueError("client_id is required")
    return standin.issue_tokens(client_id, _text(payload, "scope", DEFAULT_SCOPE) or DEFAULT_SCOPE)


def _issue_token_batch(standin: StandIn, payload: Mapping[str, object]) -> object:
    client_id = _text(payload, "client_id")
    count = payload.get("count")
    if client_id is None or not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= 10_000:
        raise ValueError("client_id and count (1 to 10000) are required")
    return {"grants": [standin.issue_tokens(client_id, DEFAULT_SCOPE) for _ in range(count)]}


def _live_refresh_tokens(standin: StandIn, payload: Mapping[str, object]) -> object:
    return {"refresh_tokens": sorted(standin.live_refresh_tokens())}


def _issued_secrets(standin: StandIn, payload: Mapping[str, object]) -> object:
    return {"secrets": standin.issued_secrets()}


def _expire_access_tokens(standin: StandIn, payload: Mapping[str, object]) -> object:
    standin.expire_access_tokens()
    return {}


def _revoke_all_access_tokens(standin: StandIn, payload: Mapping[str, object]) -> object:
    standin.revoke_all_access_tokens(disconnect=bool(payload.get("disconnect", False)))
    return {}


def _disconnect(standin: StandIn, payload: Mapping[str, object]) -> object:
    standin.disconnect(_text(payload, "client_id"))
    return {}


def _reconnect(standin: StandIn, payload: Mapping[str, object]) -> object:
    standin.reconnect(_text(payload, "client_id"))
    return {}


def _oauth1_credentials(standin: StandIn, payload: Mapping[str, object]) -> object:
    return standin.add_oauth1_credentials(**grant_from_mapping(payload)).as_token_file()


def _reuse_detection(standin: StandIn, payload: Mapping[str, object]) -> object:
    enabled = payload.get("enabled")
    if not isinstance(enabled, bool):
        raise ValueError("enabled must be true or false")
    standin.set_reuse_detection(enabled)
    return {}


def _reuse_stats(standin: StandIn, payload: Mapping[str, object]) -> object:
    return standin.reuse_stats()


def _add_account(standin: StandIn, payload: Mapping[str, object]) -> object:
    standin.add_account(_int(payload, "account_id"), company=_text(payload, "company"))
    return {}


def _add_list(standin: StandIn, payload: Mapping[str, object]) -> object:
    standin.add_list(
        _int(payload, "account_id"),
        _int(payload, "list_id"),
        _text(payload, "name", "Newsletter") or "Newsletter",
        size=_int(payload, "size") if "size" in payload else 0,
        start=_number(payload, "start"),
        end=_number(payload, "end"),
        seed=_int(payload, "seed") if "seed" in payload else 0,
    )
    return {}


def _add_subscribers(standin: StandIn, payload: Mapping[str, object]) -> object:
    entries = payload.get("subscribers")
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ValueError("subscribers must be a list of objects")
    ids = standin.add_subscribers(_int(payload, "account_id"), _int(payload, "list_id"), entries)
    return {"ids": ids}


def _faults(standin: StandIn, payload: Mapping[str, object]) -> object:
    specs = payload.get("faults")
    if not isinstance(specs, list) or not all(isinstance(spec, dict) for spec in specs):
        raise ValueError("faults must be a list of objects")
    faults = [Fault.from_json(spec) for spec in specs]
    standin.inject(*faults, path=_text(payload, "path"))
    return {"queued": len(faults)}


def _configure_api(standin: StandIn, payload: Mapping[str, object]) -> object:
    unknown = set(payload) - {"filter_day_offset_hours", "exclusive_day_filters", "next_links_drop_filters"}
    if unknown:
        raise ValueError(f"unknown switches: {', '.join(sorted(unknown))}")
    # ApiBehaviour.update checks every value; a JSON value of the wrong type is refused there.
    return standin.configure_api(**payload)  # type: ignore[arg-type]


def _request_delay(standin: StandIn, payload: Mapping[str, object]) -> object:
    seconds = _number(payload, "seconds")
    if seconds is None:
        raise ValueError("seconds is required")
    standin.set_request_delay(seconds)
    return {}


def _stats(standin: StandIn, payload: Mapping[str, object]) -> object:
    return standin.stats()


def _request_log(standin: StandIn, payload: Mapping[str, object]) -> object:
    return {"requests": standin.request_log()}


def _reset_stats(standin: StandIn, payload: Mapping[str, object]) -> object:
    standin.reset_stats()
    return {}


_ROUTES: Mapping[tuple[str, str], _Handler] = {
    ("GET", "info"): _info,
    ("POST", "issue-tokens"): _issue_tokens,
    ("POST", "issue-token-batch"): _issue_token_batch,
    ("GET", "live-refresh-tokens"): _live_refresh_tokens,
    ("GET", "issued-secrets"): _issued_secrets,
    ("POST", "expire-access-tokens"): _expire_access_tokens,
    ("POST", "revoke-all-access-tokens"): _revoke_all_access_tokens,
    ("POST", "disconnect"): _disconnect,
    ("POST", "reconnect"): _reconnect,
    ("POST", "oauth1-credentials"): _oauth1_credentials,
    ("POST", "reuse-detection"): _reuse_detection,
    ("GET", "reuse-stats"): _reuse_stats,
    ("POST", "add-account"): _add_account,
    ("POST", "add-list"): _add_list,
    ("POST", "add-subscribers"): _add_subscribers,
    ("POST", "faults"): _faults,
    ("POST", "configure-api"): _configure_api,
    ("POST", "request-delay"): _request_delay,
    ("GET", "stats"): _stats,
    ("GET", "request-log"): _request_log,
    ("POST", "reset-stats"): _reset_stats,
}
