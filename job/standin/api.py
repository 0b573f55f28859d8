"""AWeber's REST API under ``/1.0``: accounts, lists, subscribers and the list find operation.

Answers follow AWeber's published OpenAPI description (``openapi-subset.yml``): collections carry
``entries``, ``start``, ``next_collection_link`` (absent on the last page),
``prev_collection_link`` (absent on the first), ``resource_type_link`` and ``self_link``; plain
collections carry ``total_size``, find results ``total_size_link``. Navigable links are absolute
URLs on the stand-in's own address and keep the request's query, with ``ws.start``/``ws.size``
set; ``resource_type_link`` values are AWeber's own type identifiers
(``https://api.aweber.com/1.0/#subscriber``...), which the schema fixes and nobody fetches.
Optional fields without a value are left out rather than sent as ``null``, since the schema does
not allow nulls. Filter days are read at the offset described in :mod:`job.standin.days`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import timedelta, timezone
from urllib.parse import urlencode

from job.standin.days import SECONDS_PER_DAY, day_of, day_start_epoch, format_timestamp, parse_filter_day
from job.standin.ledger import Ledger
from job.standin.messages import Answer, Request, envelope, json_answer
from job.standin.oauth1 import OAuth1Registry
from job.standin.ratelimit import RateLimiter
from job.standin.state import Account, State
from job.standin.subscribers import STATUSES, Subscriber, SubscriberList

MAX_PAGE_SIZE = 100
# The zones in use on Earth run from UTC-12 to UTC+14.
MIN_OFFSET_HOURS = -12
MAX_OFFSET_HOURS = 14
DEFAULT_FILTER_DAY_OFFSET_HOURS = -5.0
RATE_LIMIT_MESSAGE = "Rate Limit Error"

_TYPE_LINK = "https://api.aweber.com/1.0/#"
_INTEGER = re.compile(r"-?\d+")
_ID = re.compile(r"\d{1,18}")

# Find filters AWeber documents for lists (docs/aweber-api.md §2.4) that the stand-in does not evaluate;
# refusing them is better than silently returning every subscriber.
_UNSUPPORTED_FILTERS = (
    "ad_tracking", "area_code", "city", "country", "custom_fields", "dma_code",
    "last_followup_message_number_sent", "last_followup_message_sent_at", "latitude", "longitude",
    "misc_notes", "name", "postal_code", "region", "subscription_method", "tags", "tags_not_in",
    "unsubscribe_method", "verified_at",
)


@dataclass
class ApiBehaviour:
    """Choices AWeber's documentation leaves open, switchable to test a client against each reading.

    - ``filter_day_offset_hours``: the UTC offset at which the find's filter days begin, any of
      -12 to +14 (default -5, see :mod:`job.standin.days`); AWeber does not say which zone it uses.
    - ``exclusive_day_filters``: ``subscribed_after=D`` means from the day after D and
      ``subscribed_before=D`` up to the start of D, leaving the named day out (AWeber documents
      "on or after" / "on or before", but a client that trusts that is one reading away from
      losing a day); ``subscribed_at=D`` is D either way. ``unsubscribed_after``,
      ``unsubscribed_before`` and ``unsubscribed_at`` follow the same switch and zone.
    - ``next_links_drop_filters``: a ``next_collection_link`` keeps only ``ws.start`` and
      ``ws.size``, losing the find's ``ws.op``, filters and sort (AWeber only says to follow it).
    """

    filter_day_offset_hours: float = DEFAULT_FILTER_DAY_OFFSET_HOURS
    exclusive_day_filters: bool = False
    next_links_drop_filters: bool = False

    def update(
        self,
        *,
        filter_day_offset_hours: float | None = None,
        exclusive_day_filters: bool | None = None,
        next_links_drop_filters: bool | None = None,
    ) -> None:
        """Change the settings given (None: leave as is); raise ValueError, changing nothing, on a bad value."""
        if filter_day_offset_hours is not None and (
            isinstance(filter_day_offset_hours, bool)
            or not isinstance(filter_day_offset_hours, (int, float))
            or not MIN_OFFSET_HOURS <= filter_day_offset_hours <= MAX_OFFSET_HOURS
        ):
            raise ValueError(
                f"filter_day_offset_hours must be a number of hours from {MIN_OFFSET_HOURS} to {MAX_OFFSET_HOURS}"
            )
        for name, value in (("exclusive_day_filters", exclusive_day_filters),
                            ("next_links_drop_filters", next_links_drop_filters)):
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
        if filter_day_offset_hours is not None:
            self.filter_day_offset_hours = float(filter_day_offset_hours)
        if exclusive_day_filters is not None:
            self.exclusive_day_filters = exclusive_day_filters
        if next_links_drop_filters is not None:
            self.next_links_drop_filters = next_links_drop_filters

    def filter_day_zone(self) -> timezone:
        """The zone in which filter days begin."""
        return timezone(timedelta(hours=self.filter_day_offset_hours))

    def to_json(self) -> dict[str, object]:
        """The settings as a JSON-ready mapping."""
        return dataclasses.asdict(self)


class _ApiProblem(Exception):
    """An AWeber error envelope to answer with."""

    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


class _InvalidToken(_ApiProblem):
    """An access token that is unknown, expired or of a disconnected integration."""


def _web_service_error(message: str) -> _ApiProblem:
    return _ApiProblem(400, message, "WebServiceError")


def _bad_request(message: str) -> _ApiProblem:
    return _ApiProblem(400, message, "BadRequestError")


class Api:
    """Routes and answers ``/1.0`` requests against a :class:`State`."""

    def __init__(
        self,
        state: State,
        limiter: RateLimiter,
        ledger: Ledger,
        api_url: str,
        oauth1: OAuth1Registry | None = None,
        behaviour: ApiBehaviour | None = None,
    ) -> None:
        self._state = state
        self._oauth1 = oauth1 if oauth1 is not None else OAuth1Registry()
        self._limiter = limiter
        self._ledger = ledger
        self.api_url = api_url
        self.behaviour = behaviour if behaviour is not None else ApiBehaviour()

    def handle(self, request: Request) -> Answer:
        """Answer one API request: authenticate, rate-limit, route."""
        try:
            self._authenticate(request)
            if not self._limiter.admit(self._buckets(request)):
                self._ledger.note_rate_limited()
                # AWeber sends no Retry-After with it (docs/aweber-api.md §3).
                return envelope(403, RATE_LIMIT_MESSAGE, "ForbiddenError")
            with self._state.lock:
                return self._route(request)
        except _InvalidToken as problem:
            # AWeber's token layer, not the REST API, refuses an expired or unknown access token: an
            # RFC 6750 answer rather than the error envelope (docs/aweber-api.md).
            challenge = ("WWW-Authenticate", 'Bearer realm="AWeber", error="invalid_token"')
            body = {"error": "invalid_token", "error_description": problem.message}
            return json_answer(401, body, headers=(challenge,), error="invalid_token")
        except _ApiProblem as problem:
            answer = envelope(problem.status, problem.message, problem.error_type)
            if problem.status == 401:
                challenge = ("WWW-Authenticate", 'Bearer realm="AWeber"')
                return dataclasses.replace(answer, headers=(challenge,))
            if problem.status == 405:
                return dataclasses.replace(answer, headers=(("Allow", "GET"),))
            return answer

    def _authenticate(self, request: Request) -> None:
        header = request.header("authorization")
        token: str | None = None
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() == "oauth":
                # A legacy OAuth 1.0a signed request (docs/aweber-api.md).
                problem = self._oauth1.problem(request, request.header("host") or "127.0.0.1")
                if problem is not None:
                    raise _ApiProblem(401, problem)
                return
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
            else:
                raise _ApiProblem(401, "Invalid token: use the Authorization: Bearer scheme.")
        else:
            # AWeber also accepts the token as a query parameter (docs/aweber-api.md §2.1).
            token = request.query_value("access_token")
        if not token:
            # What AWeber answers to a request without OAuth 2 credentials (docs/aweber-api.md §4).
            raise _ApiProblem(400, "Missing oauth parameters: oauth_consumer_key", "MissingOAuthParametersError")
        problem = self._state.access_token_problem(token)
        if problem is not None:
            raise _InvalidToken(401, problem)

    def _buckets(self, request: Request) -> Sequence[Hashable]:
        # The limit is per customer account; a request outside any account counts for all of them.
        segments = _segments(request.path)
        if len(segments) >= 2 and segments[0] == "accounts" and _ID.fullmatch(segments[1]):
            return [int(segments[1])]
        with self._state.lock:
            return [account.id for account in self._state.accounts()] or ["no-account"]

    # -- routing ----------------------------------------------------------------------------

    def _route(self, request: Request) -> Answer:
        segments = _segments(request.path)
        shape = tuple("{}" if position % 2 else segment for position, segment in enumerate(segments))
        routes: dict[tuple[str, ...], Callable[[Request, list[str]], Answer]] = {
            ("accounts",): self._accounts,
            ("accounts", "{}"): self._account,
            ("accounts", "{}", "lists"): self._lists,
            ("accounts", "{}", "lists", "{}"): self._list,
            ("accounts", "{}", "lists", "{}", "subscribers"): self._subscribers,
            ("accounts", "{}", "lists", "{}", "subscribers", "{}"): self._subscriber,
        }
        route = routes.get(shape)
        if route is None:
            raise _ApiProblem(404, "Not Found", "NotFoundError")
        if request.method != "GET":
            raise _ApiProblem(405, f"Method {request.method} is not allowed on this resource.", "MethodNotAllowedError")
        return route(request, segments)

    def _find_account(self, text: str) -> Account:
        account = self._state.account(int(text)) if _ID.fullmatch(text) else None
        if account is None:
            raise _ApiProblem(404, "Account with given id not found", "NotFoundError")
        return account

    def _find_list(self, account_text: str, list_text: str) -> SubscriberList:
        account = self._find_account(account_text)
        found = account.lists.get(int(list_text)) if _ID.fullmatch(list_text) else None
        if found is None:
            raise _ApiProblem(404, "List with given id not found", "NotFoundError")
        return found

    # -- resources --------------------------------------------------------------------------

    def _accounts(self, request: Request, segments: list[str]) -> Answer:
        accounts = self._state.accounts()
        start, size = _page_params(request)
        entries = [self._account_entry(account) for account in accounts[start:start + size]]
        return json_answer(200, self._collection(request, entries, start, size, len(accounts), "account"))

    def _account(self, request: Request, segments: list[str]) -> Answer:
        return json_answer(200, self._account_entry(self._find_account(segments[1])))

    def _lists(self, request: Request, segments: list[str]) -> Answer:
        account = self._find_account(segments[1])
        lists = [account.lists[key] for key in sorted(account.lists)]
        find = _ws_op(request)
        if find:
            name = request.query_value("name") or None
            if name is not None:
                lists = [found for found in lists if name in (found.name, f"awlist{found.id}")]
            if _wants_total_size(request):
                return json_answer(200, len(lists))
        start, size = _page_params(request)
        entries = [self._list_entry(found) for found in lists[start:start + size]]
        body = self._collection(request, entries, start, size, len(lists), "list-page-resource", find=find)
        return json_answer(200, body)

    def _list(self, request: Request, segments: list[str]) -> Answer:
        return json_answer(200, self._list_entry(self._find_list(segments[1], segments[3])))

    def _subscriber(self, request: Request, segments: list[str]) -> Answer:
        found = self._find_list(segments[1], segments[3])
        index = found.index_of_id(int(segments[5])) if _ID.fullmatch(segments[5]) else None
        if index is None:
            raise _ApiProblem(404, "Subscriber with given id not found", "NotFoundError")
        return json_answer(200, self._subscriber_entry(found, found.get(index)))

    def _subscribers(self, request: Request, segments: list[str]) -> Answer:
        found = self._find_list(segments[1], segments[3])
        descending = _sort_order(request) == "desc"
        if not _ws_op(request):
            start, size = _page_params(request)
            total = found.total
            ranks = range(start, min(start + size, total))
            positions = [total - 1 - rank for rank in ranks] if descending else list(ranks)
            entries = [self._subscriber_entry(found, found.get(position)) for position in positions]
            body = self._collection(request, entries, start, size, total, "subscribers-page-resource")
            return json_answer(200, body)

        sort_key = _value(request, "sort_key")
        if sort_key not in (None, "subscribed_at", "unsubscribed_at"):
            raise _web_service_error(
                'Invalid value for "sort_key" parameter. Expected one of: subscribed_at, unsubscribed_at.'
            )
        for name in _UNSUPPORTED_FILTERS:
            if _value(request, name) is not None:
                raise _bad_request(f'The "{name}" search parameter is not supported by this server.')
        status = _value(request, "status")
        if status is not None and status not in STATUSES:
            raise _bad_request(f'Invalid value for "status" parameter. Expected one of: {", ".join(STATUSES)}.')
        earliest, before = _day_window(request, self.behaviour)
        unsubscribed = _day_window(request, self.behaviour, "unsubscribed")
        selection = found.select(
            earliest=earliest, before=before, status=status, email=_value(request, "email"),
            unsubscribed_order=sort_key == "unsubscribed_at",
            unsubscribed_window=None if unsubscribed == (None, None) else unsubscribed,
        )
        if _wants_total_size(request):
            return json_answer(200, selection.count())
        start, size = _page_params(request)
        positions = selection.page(start, size, descending=descending)
        entries = [self._subscriber_entry(found, found.get(position), find=True) for position in positions]
        body = self._collection(
            request, entries, start, size, selection.count(), "subscribers-page-resource", find=True
        )
        return json_answer(200, body)

    # -- entries ----------------------------------------------------------------------------

    def _account_entry(self, account: Account) -> dict[str, object]:
        link = f"{self.api_url}/accounts/{account.id}"
        return {
            "id": account.id,
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{_TYPE_LINK}account/{account.id}")),
            "company": account.company,
            "self_link": link,
            "lists_collection_link": f"{link}/lists",
            "integrations_collection_link": f"{link}/integrations",
            "resource_type_link": f"{_TYPE_LINK}account",
            "http_etag": _etag(f"account/{account.id}"),
            "analytics_src": f"//analytics.aweber.com/js/awt_analytics.js?id={account.id}",
        }

    def _list_entry(self, found: SubscriberList) -> dict[str, object]:
        link = f"{self.api_url}/accounts/{found.account_id}/lists/{found.id}"
        counts = found.count_by_status()
        today = day_start_epoch(day_of(self._state.clock()))
        return {
            "id": found.id,
            "name": found.name,
            "unique_list_id": f"awlist{found.id}",
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{_TYPE_LINK}list/{found.id}")),
            "self_link": link,
            "resource_type_link": f"{_TYPE_LINK}list",
            "http_etag": _etag(f"list/{found.id}/{found.total}"),
            "subscribers_collection_link": f"{link}/subscribers",
            "campaigns_collection_link": f"{link}/campaigns",
            "custom_fields_collection_link": f"{link}/custom_fields",
            "segments_collection_link": f"{link}/segments",
            "landing_pages_collection_link": f"{link}/landing_pages",
            "web_forms_collection_link": f"{link}/web_forms",
            "web_form_split_tests_collection_link": f"{link}/web_form_split_tests",
            "draft_broadcasts_link": f"{link}/broadcasts?status=draft",
            "scheduled_broadcasts_link": f"{link}/broadcasts?status=scheduled",
            "sent_broadcasts_link": f"{link}/broadcasts?status=sent",
            "total_subscribers": found.total,
            "total_subscribed_subscribers": counts["subscribed"],
            "total_unsubscribed_subscribers": counts["unsubscribed"],
            "total_unconfirmed_subscribers": counts["unconfirmed"],
            "total_subscribers_subscribed_today": found.count_between(today, today + SECONDS_PER_DAY),
            "total_subscribers_subscribed_yesterday": found.count_between(today - SECONDS_PER_DAY, today),
        }

    def _subscriber_entry(
        self, found: SubscriberList, subscriber: Subscriber, *, find: bool = False
    ) -> dict[str, object]:
        list_link = f"{self.api_url}/accounts/{found.account_id}/lists/{found.id}"
        entry: dict[str, object] = {
            "id": subscriber.id,
            "self_link": f"{list_link}/subscribers/{subscriber.id}",
            "resource_type_link": f"{_TYPE_LINK}subscriber",
            "email": subscriber.email,
            "status": subscriber.status,
            "subscribed_at": format_timestamp(subscriber.subscribed_at),
            "is_verified": subscriber.verified_at is not None,
            "subscription_method": subscriber.subscription_method,
            "misc_notes": subscriber.misc_notes,
            "tags": list(subscriber.tags),
            "custom_fields": dict(subscriber.custom_fields),
            "last_followup_message_number_sent": 0,
        }
        optional: dict[str, object | None] = {
            "name": subscriber.name,
            "verified_at": None if subscriber.verified_at is None else format_timestamp(subscriber.verified_at),
            "unsubscribed_at": (
                None if subscriber.unsubscribed_at is None else format_timestamp(subscriber.unsubscribed_at)
            ),
            "unsubscribe_method": subscriber.unsubscribe_method,
            "ad_tracking": subscriber.ad_tracking,
            "ip_address": subscriber.ip_address,
            "subscription_url": (
                f"https://forms.aweber.com/form/16/{found.id}.htm"
                if subscriber.subscription_method == "webform" else None
            ),
        }
        entry.update({key: value for key, value in optional.items() if value is not None})
        if find:
            entry["list_link"] = list_link
            entry["list_name"] = found.name
        return entry

    # -- collections ------------------------------------------------------------------------

    def _collection(
        self,
        request: Request,
        entries: list[dict[str, object]],
        start: int,
        size: int,
        total: int,
        resource_type: str,
        *,
        find: bool = False,
    ) -> dict[str, object]:
        body: dict[str, object] = {"entries": entries, "start": start}
        if find:
            body["total_size_link"] = self._link(request, show_total=True)
        else:
            body["total_size"] = total
        if start + size < total:
            body["next_collection_link"] = self._link(
                request, start=start + size, size=size, page_only=self.behaviour.next_links_drop_filters
            )
        if start > 0:
            body["prev_collection_link"] = self._link(request, start=max(0, start - size), size=size)
        body["resource_type_link"] = f"{_TYPE_LINK}{resource_type}"
        body["self_link"] = self._link(request, start=start, size=size)
        return body

    def _link(
        self,
        request: Request,
        *,
        start: int = 0,
        size: int = MAX_PAGE_SIZE,
        show_total: bool = False,
        page_only: bool = False,
    ) -> str:
        """Return this request's URL with the page set, keeping every other query parameter in place
        (none of them with ``page_only``)."""
        pairs: list[tuple[str, str]] = []
        wanted = {"ws.show": "total_size"} if show_total else {"ws.start": str(start), "ws.size": str(size)}
        for key, value in () if page_only else request.query:
            # Never copy a token into a link; and page parameters are replaced, not repeated.
            if key == "access_token" or key in ("ws.start", "ws.size", "ws.show"):
                if key in wanted:
                    pairs.append((key, wanted.pop(key)))
                continue
            pairs.append((key, value))
        pairs.extend(wanted.items())
        return f"{self.api_url}{request.path[len('/1.0'):]}?{urlencode(pairs)}"


def _segments(path: str) -> list[str]:
    rest = path[len("/1.0"):].strip("/")
    return rest.split("/") if rest else []


def _value(request: Request, name: str) -> str | None:
    """Return a query value; AWeber treats empty values as omitted (docs/aweber-api.md §2.4)."""
    value = request.query_value(name)
    return value if value else None


def _ws_op(request: Request) -> bool:
    op = _value(request, "ws.op")
    if op is None:
        return False
    if op != "find":
        raise _bad_request(f'Invalid value for "ws.op" parameter: "{op}". Expected "find".')
    return True


def _wants_total_size(request: Request) -> bool:
    show = _value(request, "ws.show")
    if show is None:
        return False
    if show != "total_size":
        raise _bad_request('Invalid value for "ws.show" parameter. Expected "total_size".')
    return True


def _page_params(request: Request) -> tuple[int, int]:
    """Return (ws.start, ws.size), validated as AWeber does since 2020 (no clamping)."""
    start = _integer(request, "ws.start", default=0)
    size = _integer(request, "ws.size", default=MAX_PAGE_SIZE)
    if start < 0:
        raise _web_service_error('Minimum for "ws.start" parameter is 0.')
    if size < 1:
        raise _web_service_error('Minimum for "ws.size" parameter is 1.')
    if size > MAX_PAGE_SIZE:
        raise _web_service_error(f'Maximum for "ws.size" parameter is {MAX_PAGE_SIZE}.')
    return start, size


def _integer(request: Request, name: str, *, default: int) -> int:
    text = _value(request, name)
    if text is None:
        return default
    if not _INTEGER.fullmatch(text) or len(text) > 18:
        raise _web_service_error(f'"{name}" parameter must be an integer.')
    return int(text)


def _sort_order(request: Request) -> str:
    order = _value(request, "sort_order") or "asc"
    if order not in ("asc", "desc"):
        raise _web_service_error('Invalid value for "sort_order" parameter. Expected one of: asc, desc.')
    return order


def _day_window(
    request: Request, behaviour: ApiBehaviour, prefix: str = "subscribed"
) -> tuple[float | None, float | None]:
    """Return [earliest, before) in Unix seconds from the ``<prefix>_after``, ``_before`` and ``_at`` day filters
    (``subscribed_*`` or ``unsubscribed_*``), read as ``behaviour`` says."""
    earliest: float | None = None
    before: float | None = None
    after_name, before_name, at_name = f"{prefix}_after", f"{prefix}_before", f"{prefix}_at"
    for name in (after_name, before_name, at_name):
        text = _value(request, name)
        if text is None:
            continue
        try:
            day = parse_filter_day(text)
        except ValueError as error:
            raise _bad_request(
                f'Invalid value for "{name}" parameter. Expected a date as YYYY-MM-DD or MM-DD-YYYY.'
            ) from error
        day_start = day_start_epoch(day, behaviour.filter_day_zone())
        day_end = day_start + SECONDS_PER_DAY
        exclusive = behaviour.exclusive_day_filters and name != at_name
        if name in (after_name, at_name):
            first = day_end if exclusive else day_start
            earliest = first if earliest is None else max(earliest, first)
        if name in (before_name, at_name):
            end = day_start if exclusive else day_end
            before = end if before is None else min(before, end)
    return earliest, before


def _etag(seed: str) -> str:
    digest = hashlib.sha1(seed.encode("utf-8"), usedforsecurity=False).hexdigest()
    return f'"{digest}-{digest[::-1]}"'
