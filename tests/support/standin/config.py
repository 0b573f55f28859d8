"""Build a stand-in from a JSON-ready mapping: what ``python -m tests.support.standin --config FILE`` reads.

Example (every key optional)::

    {
      "clients": {"cid-conf": "the-secret", "cid-public": null},
      "access_token_lifetime_seconds": 7200,
      "rate_limit_per_minute": 120,
      "rate_limit_window_seconds": 60,
      "request_delay_seconds": 0.0,
      "reuse_detection": false,
      "filter_day_offset_hours": -5,
      "exclusive_day_filters": false,
      "next_links_drop_filters": false,
      "verbose": false,
      "oauth1": [{"consumer_key": "...", "consumer_secret": "...", "access_token": "...", "token_secret": "..."}],
      "accounts": [
        {"id": 123, "company": "Example Company",
         "lists": [{"id": 456, "name": "Newsletter", "size": 1000,
                    "start": 1767225600, "end": 1769904000, "seed": 1,
                    "subscribers": [{"email": "new@example.com", "subscribed_at": 1769904100}]}]}
      ]
    }
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from job.standin.api import DEFAULT_FILTER_DAY_OFFSET_HOURS
from job.standin.oauth1 import grant_from_mapping
from job.standin.server import StandIn
from tests.support.standin.control_endpoints import handle_control

_TOP_KEYS = frozenset(
    {
        "clients", "access_token_lifetime_seconds", "rate_limit_per_minute", "rate_limit_window_seconds",
        "request_delay_seconds", "reuse_detection", "verbose", "accounts", "oauth1", "filter_day_offset_hours",
        "exclusive_day_filters", "next_links_drop_filters",
    }
)
_ACCOUNT_KEYS = frozenset({"id", "company", "lists"})
_LIST_KEYS = frozenset({"id", "name", "size", "start", "end", "seed", "subscribers"})


def load_config(path: Path) -> dict[str, object]:
    """Read a JSON config file; raise ValueError naming the file when it is not a JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the stand-in config: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path}: the stand-in config must be a JSON object")
    return value


def standin_from_config(
    config: Mapping[str, object], *, enable_control: bool = False, port: int = 0
) -> StandIn:
    """Return a (not yet started) stand-in set up as ``config`` says; raise ValueError on bad config.

    ``enable_control`` installs the ``/_control/`` endpoints that process mode is driven through.
    """
    _check_keys(config, _TOP_KEYS, "config")
    clients = config.get("clients")
    if clients is not None and not (
        isinstance(clients, dict)
        and all(isinstance(key, str) and (value is None or isinstance(value, str)) for key, value in clients.items())
    ):
        raise ValueError("clients must map client ids to a secret string or null")
    standin = StandIn(
        clients,
        access_token_lifetime_seconds=_integer(config, "access_token_lifetime_seconds", 7200),
        rate_limit_per_minute=_optional_integer(config, "rate_limit_per_minute"),
        rate_limit_window_seconds=_number(config, "rate_limit_window_seconds", 60.0),
        request_delay_seconds=_number(config, "request_delay_seconds", 0.0),
        verbose=bool(config.get("verbose", False)),
        reuse_detection=_boolean(config, "reuse_detection"),
        control_handler=handle_control if enable_control else None,
        port=port,
        filter_day_offset_hours=_number(config, "filter_day_offset_hours", DEFAULT_FILTER_DAY_OFFSET_HOURS),
        exclusive_day_filters=_boolean(config, "exclusive_day_filters"),
        next_links_drop_filters=_boolean(config, "next_links_drop_filters"),
    )
    accounts = config.get("accounts", [])
    if not isinstance(accounts, list):
        raise ValueError("accounts must be a list")
    for account in accounts:
        _add_account(standin, account)
    legacy = config.get("oauth1", [])
    if not isinstance(legacy, list) or not all(isinstance(item, dict) for item in legacy):
        raise ValueError("oauth1 must be a list of objects")
    for item in legacy:
        standin.add_oauth1_credentials(**grant_from_mapping(item))
    return standin


def _add_account(standin: StandIn, account: object) -> None:
    if not isinstance(account, dict):
        raise ValueError("each account must be an object")
    _check_keys(account, _ACCOUNT_KEYS, "account")
    account_id = _integer(account, "id", None)
    company = account.get("company")
    if company is not None and not isinstance(company, str):
        raise ValueError("company must be a string")
    standin.add_account(account_id, company=company)
    lists = account.get("lists", [])
    if not isinstance(lists, list):
        raise ValueError("lists must be a list")
    for entry in lists:
        if not isinstance(entry, dict):
            raise ValueError("each list must be an object")
        _check_keys(entry, _LIST_KEYS, "list")
        name = entry.get("name", "Newsletter")
        if not isinstance(name, str):
            raise ValueError("a list name must be a string")
        list_id = _integer(entry, "id", None)
        standin.add_list(
            account_id,
            list_id,
            name,
            size=_integer(entry, "size", 0),
            start=_optional_number(entry, "start"),
            end=_optional_number(entry, "end"),
            seed=_integer(entry, "seed", 0),
        )
        subscribers = entry.get("subscribers", [])
        if not isinstance(subscribers, list) or not all(isinstance(item, dict) for item in subscribers):
            raise ValueError("subscribers must be a list of objects")
        if subscribers:
            standin.add_subscribers(account_id, list_id, subscribers)


def _check_keys(mapping: Mapping[str, object], known: frozenset[str], where: str) -> None:
    unknown = set(mapping) - known
    if unknown:
        raise ValueError(f"unknown {where} keys: {', '.join(sorted(unknown))}")


def _boolean(mapping: Mapping[str, object], key: str) -> bool:
    value = mapping.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def _integer(mapping: Mapping[str, object], key: str, default: int | None) -> int:
    value = mapping.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer")
    return value


def _optional_integer(mapping: Mapping[str, object], key: str) -> int | None:
    return None if mapping.get(key) is None else _integer(mapping, key, None)


def _number(mapping: Mapping[str, object], key: str, default: float) -> float:
    value = mapping.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number")
    return float(value)


def _optional_number(mapping: Mapping[str, object], key: str) -> float | None:
    return None if mapping.get(key) is None else _number(mapping, key, 0.0)
