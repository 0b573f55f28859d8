"""The lists a run reads: the accounts and lists collections, fetched once and shared by every stream of the run.

The lists collection already carries each list's counts (``total_subscribers`` and the rest), so the
``list-stats`` stream costs nothing beyond this fetch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from job.tasks import TaskContext

PAGE_SIZE = 100


@dataclass(frozen=True)
class ListRef:
    """A list to read: where it lives, what it is called, and its entry as the lists collection gave it."""

    account_id: Any
    list_id: Any
    name: str
    subscribers_link: str
    entry: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def state_key(self) -> str:
        return f"{self.account_id}/{self.list_id}"


@dataclass(frozen=True)
class Lists:
    """The lists of one run, how many accounts they came from, and when (the local clock) they were read."""

    refs: tuple[ListRef, ...]
    accounts: int
    read_at: datetime


def scan_lists(context: TaskContext) -> Lists:
    """The lists of the configured (or every) account, filtered by AWEBER_LIST_IDS."""
    settings = context.settings
    wanted = {str(list_id) for list_id in settings.list_ids}
    refs: list[ListRef] = []
    accounts = 0
    for account_id, lists_link in _accounts(context):
        accounts += 1
        for entry in context.api.walk(lists_link, {"ws.size": str(PAGE_SIZE)}):
            list_id = entry.get("id")
            if wanted and str(list_id) not in wanted:
                continue
            link = entry.get("subscribers_collection_link")
            if not isinstance(link, str) or not link:
                link = f"accounts/{account_id}/lists/{list_id}/subscribers"
            name = entry.get("name")
            refs.append(ListRef(account_id, list_id, name if isinstance(name, str) else "", link, dict(entry)))
    missing = wanted - {str(ref.list_id) for ref in refs}
    if missing:
        context.log.warning("AWEBER_LIST_IDS names lists that do not exist in the account(s) scanned: %s",
                            ", ".join(sorted(missing, key=lambda text: (len(text), text))))
    if accounts == 1 and refs and isinstance(refs[0].account_id, int) and not isinstance(refs[0].account_id, bool):
        # The one account this connection reaches: the store records it (connections list's ACCOUNT_ID).
        context.counters["account_id"] = refs[0].account_id
    return Lists(tuple(refs), accounts, context.now())


def _accounts(context: TaskContext) -> Iterator[tuple[Any, str]]:
    """(account id, lists collection link) for AWEBER_ACCOUNT_ID, or for every account the token sees."""
    if context.settings.account_id is not None:
        configured = context.settings.account_id
        yield configured, f"accounts/{configured}/lists"
        return
    for entry in context.api.walk("accounts", {"ws.size": str(PAGE_SIZE)}):
        account_id = entry.get("id")
        link = entry.get("lists_collection_link")
        yield account_id, link if isinstance(link, str) and link else f"accounts/{account_id}/lists"
