"""A collection walked page by page: what each next request asks, and what each page must hold.

Apart from :class:`job.api.client.ApiClient` because none of it sends anything: the client fetches,
this says which URL comes next and whether a page can be trusted (docs/aweber-api.md §2.2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from job.errors import ApiError, CollectionShiftedError

# AWeber's documented page size limit (docs/aweber-api.md §2.2): 1–100, default 100.
PAGE_SIZE = 100
# The parameters that say which page of a collection: a next link's own are kept, the rest put back.
_PAGE_PARAMS = frozenset({"ws.start", "ws.size"})


def _ws_start(pairs: list[tuple[str, str]]) -> int | None:
    """The last ``ws.start`` among query pairs as a number; None when absent or not a whole number."""
    values = [value for key, value in pairs if key == "ws.start"]
    return int(values[-1]) if values and values[-1].isdigit() else None


def _with_start(link: str, start: int) -> str:
    """``link`` with its ``ws.start`` set to ``start``."""
    parts = urlsplit(link)
    pairs = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key != "ws.start"]
    return urlunsplit(parts._replace(query=urlencode([("ws.start", str(start)), *pairs])))


def _held_to(link: str, asked: list[tuple[str, str]]) -> str:
    """``link`` with every non-page parameter of ``asked`` set as asked; the link's page parameters kept.

    AWeber's next links are documented as the way to the next page, not as keeping the find's
    filters and sort; one that lost or changed them would walk another collection.
    """
    parts = urlsplit(link)
    wanted = {key: value for key, value in asked if key not in _PAGE_PARAMS}
    pairs = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key not in wanted]
    present = {key for key, _ in pairs}
    pairs += [(key, value) for key, value in asked if key == "ws.size" and key not in present]
    pairs += list(wanted.items())
    return urlunsplit(parts._replace(query=urlencode(pairs)))


class CollectionWalk:
    """Where one walk through a collection is: what its first request asked, its ``ws.start``, the last
    entry it yielded, and whether the next page is asked from one entry earlier (see
    :meth:`job.api.client.ApiClient.walk`). ``path`` names the collection in errors, never the query.
    """

    def __init__(self, url: str, params: Mapping[str, str | int] | None, path: str, *, overlap: bool) -> None:
        query: dict[str, str | int] = dict(params or {})
        if "ws.size" not in query and not any(key == "ws.size" for key, _ in parse_qsl(urlsplit(url).query)):
            query["ws.size"] = PAGE_SIZE
        asked = [(key, value) for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True)
                 if key not in query]
        asked += [(key, str(value)) for key, value in query.items()]
        # The parameters of the first request, sent with the URL as it is.
        self.query = query
        self._asked = asked
        self._path = path
        self._overlap = overlap
        self._start = _ws_start(asked) or 0
        self._overlapping = False
        self.last_id: object = None

    def entries(self, page: Any) -> list[Any]:
        """The page's entries still to yield: the first left out when it is the last one of the page
        before; CollectionShiftedError when it should be and is not, ApiError for no entries list."""
        entries = page.get("entries") if isinstance(page, dict) else None
        if not isinstance(entries, list):
            raise ApiError(f"GET {self._path}: the answer is not a collection (no entries list)")
        if not self._overlapping:
            return entries
        first = entries[0] if entries else None
        if not isinstance(first, dict) or first.get("id") != self.last_id:
            raise CollectionShiftedError(
                f"GET {self._path}: the collection changed while it was read (the page at ws.start={self._start} "
                "does not begin where the one before ended)"
            )
        return entries[1:]

    def next_url(self, page: dict[str, Any], resolve: Callable[[str], str]) -> str | None:
        """The URL of the page after ``page`` (None: it was the last), held to what the walk asked.

        ``resolve`` refuses a link to another origin. ApiError for a next link that is not a string
        or whose ``ws.start`` does not move forward (a loop, or a walk that would never end).
        """
        following = page.get("next_collection_link")
        if not following:
            return None
        if not isinstance(following, str):
            raise ApiError(f"GET {self._path}: next_collection_link is not a string")
        url = _held_to(resolve(following), self._asked)
        following_start = _ws_start(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        if following_start is None or following_start <= self._start:
            shown = "no ws.start" if following_start is None else f"ws.start={following_start}"
            raise ApiError(
                f"GET {self._path}: next_collection_link goes to {shown} after ws.start={self._start}, "
                "so the collection would never end; stopped"
            )
        self._start = following_start
        self._overlapping = self._overlap and self.last_id is not None and self._start > 0
        if self._overlapping:
            self._start -= 1
            url = _with_start(url, self._start)
        return url
