"""Subscriber lists of any size in O(1) memory: generated on demand, plus subscribers appended later.

A list of ``size`` generated subscribers is a pure function of ``(list_id, seed, start, end)``:
subscriber ``i`` (its position in the order added, ``0 <= i < size``) has

* ``id = list_id * MAX_SUBSCRIBERS_PER_LIST + i``;
* ``subscribed_at = start + (end - start) * i // max(size - 1, 1)`` — whole seconds, never
  decreasing with ``i`` (ties allowed), so "order added" and "order of ``subscribed_at``" agree;
* status ``unconfirmed`` when ``(i + seed) % UNCONFIRMED_EVERY == 0``, else ``subscribed``:
  an arithmetic rule, so a status filter over any index range is counted without a walk;
* an email ``first.last.i@example.tld`` that names ``i``, so an email filter is a lookup.

Subscribers appended with :meth:`SubscriberList.append` follow the generated ones in the order
added; their ``subscribed_at`` may not go back in time, which keeps the whole list sorted by
``subscribed_at``. Every time filter is therefore two binary searches for an index range.

An appended subscriber can later unsubscribe (:meth:`SubscriberList.unsubscribe`), as a person does
long after joining: status, ``unsubscribed_at`` and ``unsubscribe_method`` change, the position and
``subscribed_at`` stay. Generated subscribers never unsubscribe, so ``status=unsubscribed`` and the
``unsubscribed_*`` day filters only ever look at appended ones (a walk over those, not over the list).
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

STATUSES = ("subscribed", "unsubscribed", "unconfirmed")
SUBSCRIPTION_METHODS = ("api", "email", "import", "webform")
UNSUBSCRIBE_METHODS = ("unsubscribe link", "customer cp", "undeliverable", "api: unsubscribe", "api: move")

# One generated subscriber in this many is unconfirmed (2.5 %); the rest are subscribed.
UNCONFIRMED_EVERY = 40

# Subscriber ids are list_id * MAX_SUBSCRIBERS_PER_LIST + position, so they never collide across lists.
MAX_SUBSCRIBERS_PER_LIST = 10_000_000

# Field limits from AWeber's Subscriber and List schemas (openapi-subset.yml).
MAX_EMAIL_CHARS = 50
MAX_NAME_CHARS = 60
MAX_LIST_NAME_CHARS = 32
MAX_AD_TRACKING_CHARS = 20
MAX_MISC_NOTES_CHARS = 60

_FIRST_NAMES = (
    "ada", "ben", "cora", "dev", "elena", "farid", "grace", "hugo",
    "ines", "jonas", "kiri", "liam", "maya", "nils", "olga", "pavel",
)
_LAST_NAMES = (
    "abbott", "baker", "chen", "diaz", "evans", "fischer", "garcia", "hughes",
    "ito", "jensen", "kowalski", "lopez", "moreau", "novak", "okafor", "patel",
)
_DOMAINS = ("example.com", "example.net", "example.org")
_AD_TRACKING = ("ebook", "webinar", "newsletter")
_GENERATED_EMAIL = re.compile(r"[a-z]+\.[a-z]+\.(\d+)@[a-z.]+")

_APPENDABLE_FIELDS = frozenset(
    {
        "email", "name", "subscribed_at", "status", "unsubscribed_at", "unsubscribe_method",
        "subscription_method", "ad_tracking", "misc_notes", "tags", "custom_fields",
    }
)


@dataclass(frozen=True)
class Subscriber:
    """One subscriber as stored; the API layer turns it into AWeber's JSON entry."""

    index: int
    id: int
    email: str
    status: str
    subscribed_at: float
    name: str | None = None
    unsubscribed_at: float | None = None
    unsubscribe_method: str | None = None
    verified_at: float | None = None
    subscription_method: str = "api"
    ip_address: str | None = None
    ad_tracking: str | None = None
    misc_notes: str = ""
    tags: tuple[str, ...] = ()
    custom_fields: Mapping[str, str] = field(default_factory=dict)


def _mix(seed: int, index: int) -> int:
    """Return 64 well-mixed bits for (seed, index): splitmix64, cheap and deterministic."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 0x632BE59BD9B4E5) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


class SubscriberList:
    """A subscriber list: ``size`` generated subscribers followed by appended ones."""

    def __init__(
        self,
        account_id: int,
        list_id: int,
        name: str,
        *,
        size: int,
        start: int,
        end: int,
        seed: int,
    ) -> None:
        if not 1 <= len(name) <= MAX_LIST_NAME_CHARS:
            raise ValueError(f"a list name has 1 to {MAX_LIST_NAME_CHARS} characters, got {len(name)}")
        if not 0 <= size <= MAX_SUBSCRIBERS_PER_LIST:
            raise ValueError(f"size must be between 0 and {MAX_SUBSCRIBERS_PER_LIST}")
        if end < start:
            raise ValueError("end must not be before start")
        self.account_id = account_id
        self.id = list_id
        self.name = name
        self.size = size
        self.start = int(start)
        self.end = int(end)
        self.seed = seed
        self._appended: list[Subscriber] = []
        self._appended_status_counts = dict.fromkeys(STATUSES, 0)
        # Generated subscriber i is unconfirmed exactly when i ≡ residue (mod UNCONFIRMED_EVERY).
        self.unconfirmed_residue = (-seed) % UNCONFIRMED_EVERY

    # -- size and lookup ------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Number of subscribers, generated and appended."""
        return self.size + len(self._appended)

    def subscribed_at(self, index: int) -> float:
        """Return the subscription time of the subscriber at position ``index``."""
        if index < self.size:
            return self.start + (self.end - self.start) * index // max(self.size - 1, 1)
        return self._appended[index - self.size].subscribed_at

    def last_subscribed_at(self) -> float | None:
        """Return the latest subscription time in the list, or None when it is empty."""
        return self.subscribed_at(self.total - 1) if self.total else None

    def get(self, index: int) -> Subscriber:
        """Return the subscriber at position ``index`` (0 = the first added)."""
        if not 0 <= index < self.total:
            raise IndexError(index)
        if index >= self.size:
            return self._appended[index - self.size]
        return self._generate(index)

    def index_of_id(self, subscriber_id: int) -> int | None:
        """Return the position of the subscriber with this id, or None when it is not on the list."""
        list_id, index = divmod(subscriber_id, MAX_SUBSCRIBERS_PER_LIST)
        if list_id != self.id or not 0 <= index < self.total:
            return None
        return index

    def count_by_status(self) -> dict[str, int]:
        """Return how many subscribers have each status."""
        unconfirmed = self.unconfirmed_below(self.size)
        counts = dict(self._appended_status_counts)
        counts["subscribed"] += self.size - unconfirmed
        counts["unconfirmed"] += unconfirmed
        return counts

    def count_between(self, earliest: float, before: float) -> int:
        """Return how many subscribed at or after ``earliest`` and strictly before ``before``."""
        return max(0, self.first_index_at_or_after(before) - self.first_index_at_or_after(earliest))

    # -- appending ------------------------------------------------------------------------

    def append(self, entries: Sequence[Mapping[str, object]], default_time: float) -> list[int]:
        """Append subscribers after the existing ones and return their ids.

        Each entry needs ``email``; ``subscribed_at`` (Unix seconds) defaults to ``default_time``.
        Raises ValueError, appending nothing, when an entry is invalid or would go back in time.
        """
        last = self.last_subscribed_at()
        created: list[Subscriber] = []
        for number, entry in enumerate(entries):
            subscriber = self._build_appended(entry, self.total + len(created), default_time, number)
            if last is not None and subscriber.subscribed_at < last:
                raise ValueError(
                    f"entry {number}: subscribed_at {subscriber.subscribed_at} is before the list's "
                    f"latest subscriber ({last}); appended subscribers must keep the list in time order"
                )
            last = subscriber.subscribed_at
            created.append(subscriber)
        if self.total + len(created) > MAX_SUBSCRIBERS_PER_LIST:
            raise ValueError(f"a list holds at most {MAX_SUBSCRIBERS_PER_LIST} subscribers")
        for subscriber in created:
            self._appended.append(subscriber)
            self._appended_status_counts[subscriber.status] += 1
        return [subscriber.id for subscriber in created]

    def unsubscribe(self, subscriber_id: int, at: float, method: str = "unsubscribe link") -> None:
        """Unsubscribe the appended subscriber ``subscriber_id`` at ``at`` (Unix seconds) by ``method``.

        Raises ValueError, changing nothing, for a generated subscriber (they never unsubscribe), an id not
        on the list, one already unsubscribed, a time before it subscribed or an unknown method.
        """
        index = self.index_of_id(subscriber_id)
        if index is None:
            raise ValueError(f"subscriber {subscriber_id} is not on list {self.id}")
        if index < self.size:
            raise ValueError(f"subscriber {subscriber_id} is a generated one; only appended subscribers unsubscribe")
        if method not in UNSUBSCRIBE_METHODS:
            raise ValueError(f"unsubscribe_method must be one of {UNSUBSCRIBE_METHODS}")
        current = self._appended[index - self.size]
        if current.status == "unsubscribed":
            raise ValueError(f"subscriber {subscriber_id} is unsubscribed already")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or at < current.subscribed_at:
            raise ValueError(f"subscriber {subscriber_id}: unsubscribed_at must be Unix seconds, not before joining")
        self._appended[index - self.size] = dataclasses.replace(
            current, status="unsubscribed", unsubscribed_at=at, unsubscribe_method=method
        )
        self._appended_status_counts[current.status] -= 1
        self._appended_status_counts["unsubscribed"] += 1

    def _build_appended(
        self, entry: Mapping[str, object], index: int, default_time: float, number: int
    ) -> Subscriber:
        unknown = set(entry) - _APPENDABLE_FIELDS
        if unknown:
            raise ValueError(f"entry {number}: unknown fields {sorted(unknown)}")
        email = entry.get("email")
        if not isinstance(email, str) or "@" not in email or not 3 <= len(email) <= MAX_EMAIL_CHARS:
            raise ValueError(f"entry {number}: email must be an address of at most {MAX_EMAIL_CHARS} characters")
        name = _optional_text(entry, "name", number, MAX_NAME_CHARS)
        subscribed_at = _optional_time(entry, "subscribed_at", number)
        if subscribed_at is None:
            subscribed_at = default_time
        status = entry.get("status", "subscribed")
        if status not in STATUSES:
            raise ValueError(f"entry {number}: status must be one of {', '.join(STATUSES)}")
        unsubscribed_at, unsubscribe_method = _unsubscription_of(entry, str(status), subscribed_at, number)
        method = entry.get("subscription_method", "api")
        if method not in SUBSCRIPTION_METHODS:
            raise ValueError(f"entry {number}: subscription_method must be one of {SUBSCRIPTION_METHODS}")
        ad_tracking = _optional_text(entry, "ad_tracking", number, MAX_AD_TRACKING_CHARS)
        misc_notes, tags, custom_fields = _notes_tags_and_fields_of(entry, number)
        return Subscriber(
            index=index,
            id=self.id * MAX_SUBSCRIBERS_PER_LIST + index,
            email=email,
            name=name,
            status=str(status),
            subscribed_at=subscribed_at,
            unsubscribed_at=unsubscribed_at,
            unsubscribe_method=None if unsubscribe_method is None else str(unsubscribe_method),
            verified_at=None if status == "unconfirmed" else subscribed_at,
            subscription_method=str(method),
            ad_tracking=ad_tracking,
            misc_notes=misc_notes,
            tags=tuple(tags),
            custom_fields=dict(custom_fields),
        )

    # -- searching --------------------------------------------------------------------------

    def first_index_at_or_after(self, moment: float) -> int:
        """Return the first position whose ``subscribed_at >= moment`` (``total`` if none), by bisection."""
        if self.size and moment <= self.subscribed_at(self.size - 1):
            low, high = 0, self.size - 1
            while low < high:
                middle = (low + high) // 2
                if self.subscribed_at(middle) >= moment:
                    high = middle
                else:
                    low = middle + 1
            return low
        return self.size + bisect.bisect_left(self._appended, moment, key=lambda s: s.subscribed_at)

    def select(
        self,
        *,
        earliest: float | None = None,
        before: float | None = None,
        status: str | None = None,
        email: str | None = None,
        unsubscribed_order: bool = False,
        unsubscribed_window: tuple[float | None, float | None] | None = None,
    ) -> Selection:
        """Return the subscribers with ``earliest <= subscribed_at < before`` and the given status/email.

        ``unsubscribed_order`` orders the result by ``unsubscribed_at`` instead of the order added;
        those without one come first (as SQL sorts NULLs ascending), in the order added.
        ``unsubscribed_window`` (earliest, before), either end None for open, keeps only those with an
        ``unsubscribed_at`` inside it: appended subscribers only, since generated ones never unsubscribe.
        """
        low = 0 if earliest is None else self.first_index_at_or_after(earliest)
        high = self.total if before is None else self.first_index_at_or_after(before)
        high = max(low, high)
        generated_low, generated_high = min(low, self.size), min(high, self.size)
        # Positions past the generated ones; empty (never a negative slice) when ``high`` is among them.
        appended_low, appended_high = max(low, self.size) - self.size, max(high, self.size) - self.size

        extra: list[int] = []
        if email is not None:
            # A generated subscriber's email names its position: a lookup, not a walk.
            generated = self._generated_index_of_email(email)
            if generated is not None and generated_low <= generated < generated_high and unsubscribed_window is None:
                if status is None or self._generated_status(generated) == status:
                    extra.append(generated)
            generated_low = generated_high = 0
        elif status == "unsubscribed" or unsubscribed_window is not None:
            generated_low = generated_high = 0
        extra.extend(
            subscriber.index
            for subscriber in self._appended[appended_low:appended_high]
            if (email is None or subscriber.email == email) and status in (None, subscriber.status)
            and _unsubscribed_within(subscriber, unsubscribed_window)
        )
        if unsubscribed_order:
            extra.sort(key=self._unsubscribed_sort_key)
        return Selection(self, generated_low, generated_high, status, tuple(extra))

    def _unsubscribed_sort_key(self, index: int) -> tuple[bool, float, int]:
        moment = self.get(index).unsubscribed_at
        return (moment is not None, moment or 0.0, index)

    # -- generated subscribers --------------------------------------------------------------

    def unconfirmed_below(self, limit: int) -> int:
        """Return how many generated positions below ``limit`` are unconfirmed."""
        if limit <= self.unconfirmed_residue:
            return 0
        return (limit - self.unconfirmed_residue - 1) // UNCONFIRMED_EVERY + 1

    def _generated_status(self, index: int) -> str:
        return "unconfirmed" if (index + self.seed) % UNCONFIRMED_EVERY == 0 else "subscribed"

    def _generated_email(self, index: int) -> str:
        bits = _mix(self.seed, index)
        first = _FIRST_NAMES[bits % len(_FIRST_NAMES)]
        last = _LAST_NAMES[(bits >> 8) % len(_LAST_NAMES)]
        domain = _DOMAINS[(bits >> 16) % len(_DOMAINS)]
        return f"{first}.{last}.{index}@{domain}"

    def _generated_index_of_email(self, email: str) -> int | None:
        match = _GENERATED_EMAIL.fullmatch(email)
        if not match or len(match.group(1)) > 8:
            return None
        index = int(match.group(1))
        if index < self.size and self._generated_email(index) == email:
            return index
        return None

    def _generate(self, index: int) -> Subscriber:
        bits = _mix(self.seed, index)
        first = _FIRST_NAMES[bits % len(_FIRST_NAMES)]
        last = _LAST_NAMES[(bits >> 8) % len(_LAST_NAMES)]
        status = self._generated_status(index)
        subscribed_at = self.subscribed_at(index)
        method = SUBSCRIPTION_METHODS[(bits >> 24) % len(SUBSCRIPTION_METHODS)]
        ad_choice = (bits >> 28) % (len(_AD_TRACKING) + 1)
        return Subscriber(
            index=index,
            id=self.id * MAX_SUBSCRIBERS_PER_LIST + index,
            email=self._generated_email(index),
            name=f"{first.title()} {last.title()}",
            status=status,
            subscribed_at=subscribed_at,
            # Confirmation follows within the hour; unconfirmed subscribers have none yet.
            verified_at=None if status == "unconfirmed" else subscribed_at + 30 + (bits >> 32) % 3600,
            subscription_method=method,
            # 198.51.100.0/24 is TEST-NET-2, reserved for documentation (RFC 5737).
            ip_address=f"198.51.100.{(bits >> 44) % 254 + 1}",
            ad_tracking=_AD_TRACKING[ad_choice] if ad_choice < len(_AD_TRACKING) else None,
        )


@dataclass(frozen=True)
class Selection:
    """The positions a find matched, addressable by rank without being listed one by one.

    Rank order is: generated positions ``[generated_low, generated_high)`` with ``status``
    (ascending), then ``extra`` in the given order.
    """

    source: SubscriberList
    generated_low: int
    generated_high: int
    status: str | None
    extra: tuple[int, ...]

    def count(self) -> int:
        """Return how many subscribers matched."""
        return self._generated_count() + len(self.extra)

    def page(self, start: int, size: int, *, descending: bool = False) -> list[int]:
        """Return the positions of ranks ``start .. start+size-1`` (from the end when ``descending``)."""
        total = self.count()
        ranks = range(start, min(start + size, total))
        if descending:
            return [self._position(total - 1 - rank) for rank in ranks]
        return [self._position(rank) for rank in ranks]

    def _generated_count(self) -> int:
        low, high = self.generated_low, self.generated_high
        if self.status is None:
            return high - low
        unconfirmed = self.source.unconfirmed_below(high) - self.source.unconfirmed_below(low)
        return unconfirmed if self.status == "unconfirmed" else (high - low) - unconfirmed

    def _position(self, rank: int) -> int:
        generated = self._generated_count()
        if rank >= generated:
            return self.extra[rank - generated]
        low, high = self.generated_low, self.generated_high
        if self.status is None:
            return low + rank
        if self.status == "unconfirmed":
            first = low + (self.source.unconfirmed_residue - low) % UNCONFIRMED_EVERY
            return first + rank * UNCONFIRMED_EVERY
        # The (rank+1)-th subscribed position: bisect on "subscribed positions in [low, x]".
        source = self.source
        base = source.unconfirmed_below(low)
        left, right = low, high - 1
        while left < right:
            middle = (left + right) // 2
            subscribed = (middle + 1 - low) - (source.unconfirmed_below(middle + 1) - base)
            if subscribed >= rank + 1:
                right = middle
            else:
                left = middle + 1
        return left


def _unsubscribed_within(subscriber: Subscriber, window: tuple[float | None, float | None] | None) -> bool:
    """Whether ``subscriber`` unsubscribed within ``window`` (earliest, before); True when there is no window."""
    if window is None:
        return True
    moment = subscriber.unsubscribed_at
    if moment is None:
        return False
    earliest, before = window
    return (earliest is None or moment >= earliest) and (before is None or moment < before)


def _optional_text(entry: Mapping[str, object], key: str, number: int, max_chars: int) -> str | None:
    value = entry.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > max_chars:
        raise ValueError(f"entry {number}: {key} must be text of at most {max_chars} characters")
    return value


def _optional_time(entry: Mapping[str, object], key: str, number: int) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"entry {number}: {key} must be Unix seconds")
    return value


def _unsubscription_of(
    entry: Mapping[str, object], status: str, subscribed_at: float, number: int
) -> tuple[float | None, object]:
    """An appended entry's unsubscribed_at and unsubscribe_method: defaulted for an unsubscribed one, refused
    for any other."""
    unsubscribed_at = _optional_time(entry, "unsubscribed_at", number)
    unsubscribe_method = entry.get("unsubscribe_method")
    if status == "unsubscribed":
        if unsubscribed_at is None:
            unsubscribed_at = subscribed_at
        if unsubscribe_method is None:
            unsubscribe_method = "unsubscribe link"
    elif unsubscribed_at is not None or unsubscribe_method is not None:
        raise ValueError(f"entry {number}: only an unsubscribed subscriber has unsubscribed_at/_method")
    if unsubscribe_method is not None and unsubscribe_method not in UNSUBSCRIBE_METHODS:
        raise ValueError(f"entry {number}: unsubscribe_method must be one of {UNSUBSCRIBE_METHODS}")
    return unsubscribed_at, unsubscribe_method


def _notes_tags_and_fields_of(entry: Mapping[str, object], number: int) -> tuple[str, list[str], dict[str, str]]:
    """An appended entry's misc_notes, tags and custom_fields, checked."""
    misc_notes = entry.get("misc_notes", "")
    if not isinstance(misc_notes, str) or len(misc_notes) > MAX_MISC_NOTES_CHARS:
        raise ValueError(f"entry {number}: misc_notes must be text of at most {MAX_MISC_NOTES_CHARS} characters")
    tags = entry.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) and tag for tag in tags):
        raise ValueError(f"entry {number}: tags must be a list of non-empty strings")
    custom_fields = entry.get("custom_fields", {})
    if not isinstance(custom_fields, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in custom_fields.items()
    ):
        raise ValueError(f"entry {number}: custom_fields must map strings to strings")
    return misc_notes, tags, custom_fields
