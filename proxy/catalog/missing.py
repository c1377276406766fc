"""Titles requested without a drmResourceId: found from live traffic, listed for whoever
propagates the ids.

`MissingStore` is the contract; `MissingTitles` is the per-replica, in-memory store: bounded
(least recently seen evicted first) and O(1) per request, since every license request for
such a title records here. The fleet-wide store (Redis) is `missing_redis.RedisMissingTitles`.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

DEFAULT_MAX_TITLES = 10_000


@dataclass(frozen=True, slots=True)
class MissingSettings:
    """`missing:` in the config: how many distinct titles a replica remembers."""

    max_titles: int = DEFAULT_MAX_TITLES


@dataclass(frozen=True, slots=True)
class MissingTitle:
    """One title seen without a drmResourceId: requests per DRM system, first and last seen
    (Unix time)."""

    asset_id: str
    count: int
    by_drm: Mapping[str, int]
    first_seen: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class MissingListing:
    """An answer of `MissingStore.listing`: the top titles, how many are held in all, how
    many were evicted to stay within `max_titles`, and whose traffic they come from
    ("replica": this process; a fleet-wide store says "fleet")."""

    titles: list[MissingTitle]
    total: int
    evicted: int
    max_titles: int
    scope: str


class MissingStore(Protocol):
    """Where titles requested without a drmResourceId are recorded.

    `record` and `forget` run on the request path: they must not block or await (a fleet-wide
    store queues them and writes in the background). `forget` is called for every request
    whose entry has an id, so it must cost next to nothing for a title it never recorded.
    """

    def record(self, asset_id: str, drm: str) -> None:
        """Count one request for `asset_id` (whose entry has no drmResourceId) by `drm`."""

    def forget(self, asset_id: str) -> bool:
        """Drop the title (it has its id now, or left the catalog); True if it was listed."""

    def __contains__(self, asset_id: object) -> bool: ...

    async def listing(self, limit: int) -> MissingListing:
        """At most `limit` titles, most requested first (then most recently seen)."""
        ...


class _Seen:
    """The mutable record of one title (slotted: up to max_titles of them live)."""

    __slots__ = ("by_drm", "count", "first_seen", "last_seen")

    def __init__(self, now: float) -> None:
        self.count = 0
        self.by_drm: dict[str, int] = {}
        self.first_seen = now
        self.last_seen = now


def _ignore_size(_: int) -> None:
    """The default size observer."""


def _ignore_eviction() -> None:
    """The default eviction observer."""


class MissingTitles:
    """The per-replica store: at most `max_titles` titles, the least recently seen evicted.

    An OrderedDict kept in last-seen order makes a record one lookup and one move to the end,
    and an eviction one pop from the front. `on_size` is told the number of titles whenever it
    changes, `on_eviction` each eviction (for the metrics; this module imports none).
    """

    def __init__(
        self,
        *,
        max_titles: int = DEFAULT_MAX_TITLES,
        clock: Callable[[], float] = time.time,
        on_size: Callable[[int], None] = _ignore_size,
        on_eviction: Callable[[], None] = _ignore_eviction,
    ) -> None:
        if max_titles < 1:
            raise ValueError("max_titles must be at least 1")
        self.max_titles = max_titles
        self.evicted = 0
        self._clock = clock
        self._on_size = on_size
        self._on_eviction = on_eviction
        self._seen: OrderedDict[str, _Seen] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, asset_id: object) -> bool:
        return asset_id in self._seen

    def record(self, asset_id: str, drm: str) -> None:
        now = self._clock()
        seen = self._seen.get(asset_id)
        if seen is None:
            seen = self._add(asset_id, now)
        else:
            self._seen.move_to_end(asset_id)
        seen.count += 1
        seen.by_drm[drm] = seen.by_drm.get(drm, 0) + 1
        seen.last_seen = now

    def forget(self, asset_id: str) -> bool:
        if self._seen.pop(asset_id, None) is None:
            return False
        self._on_size(len(self._seen))
        return True

    async def listing(self, limit: int) -> MissingListing:
        return MissingListing(
            self.top(limit), len(self._seen), self.evicted, self.max_titles, "replica"
        )

    def top(self, limit: int) -> list[MissingTitle]:
        """At most `limit` titles, most requested first: O(n log limit) over those held."""
        best = heapq.nlargest(
            limit, self._seen.items(), key=lambda item: (item[1].count, item[1].last_seen)
        )
        return [
            MissingTitle(asset_id, s.count, dict(s.by_drm), s.first_seen, s.last_seen)
            for asset_id, s in best
        ]

    def _add(self, asset_id: str, now: float) -> _Seen:
        if len(self._seen) >= self.max_titles:
            self._seen.popitem(last=False)  # the least recently seen
            self.evicted += 1
            self._on_eviction()
        seen = self._seen[asset_id] = _Seen(now)
        self._on_size(len(self._seen))
        return seen
