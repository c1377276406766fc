"""An in-memory cache in front of any catalog backend.

Fresh answers are served from memory; a miss makes one backend call per asset id however
many requests wait for it (single flight); when the backend fails, a recent positive answer
is served stale rather than failing the player.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, Generic, TypeVar

from proxy.catalog.base import Catalog, CatalogEntry
from proxy.errors import CatalogUnavailable

V = TypeVar("V")
_Waiter = asyncio.Future[CatalogEntry | None]

Observer = Callable[[str], None]
"""Told the outcome of each lookup: hit, negative_hit, miss, coalesced, stale or error."""

# A generation spans at most this share of the TTL and of the cap (see _Generations).
_SLICES: Final = 4
# Past this many generations, the two oldest expired ones are merged (a short TTL with a
# long stale window would otherwise make hundreds, each a dict probe on every store).
_MAX_GENERATIONS: Final = 16
_KNOWN_MISSING: Final = True


def _ignore(_: str) -> None:
    """The default observer."""


class _LeaderGone(Exception):
    """The request making a shared backend call was cancelled; its waiters must retry."""


class _Generations(Generic[V]):
    """Cached values in generations: plain dicts, each holding what was stored during at most
    `ttl / 4` seconds and at most `cap / 4` values, oldest generation first.

    A value's fetch time is its generation's start, so nothing is stored per value but the
    dict slot: a million cached assets cost the key, the value and about 40 bytes, where a
    (value, time) tuple in an OrderedDict cost about 150 (measured by `make bench`). The
    price: a value counts as fetched up to `ttl / 4` earlier than it was (it is refetched a
    little early, never served late), and eviction is by fetch order in whole generations
    (over the cap, the oldest generation goes: at least three quarters of `cap` stay), where
    an LRU moved each hit to the back. A hot asset is refetched every TTL anyway, so fetch
    order follows use closely; a hit stays a read, with no bookkeeping write.
    """

    def __init__(self, ttl: float, keep: float, cap: int) -> None:
        self._ttl = ttl
        self._span = ttl / _SLICES
        self._keep = keep  # a generation older than this serves nothing: dropped
        self._cap = cap
        self._per_generation = max(1, math.ceil(cap / _SLICES))
        self.generations: deque[tuple[float, dict[str, V]]] = deque()
        self.size = 0

    def find(self, key: str) -> tuple[V, float] | None:
        """The value stored for `key` and its generation's start, or None."""
        for started, values in reversed(self.generations):
            value = values.get(key)
            if value is not None:
                return value, started
        return None

    def put(self, key: str, value: V, now: float) -> None:
        """Store `value` in the newest generation (opened when due), evicting over the cap."""
        self.discard(key)
        generations = self.generations
        if (
            not generations
            or now - generations[-1][0] >= self._span
            or len(generations[-1][1]) >= self._per_generation
        ):
            while generations and now - generations[0][0] >= self._keep:
                self.size -= len(generations.popleft()[1])
            generations.append((now, {}))
            if len(generations) > _MAX_GENERATIONS:
                self._merge_oldest(now)
        generations[-1][1][key] = value
        self.size += 1
        while self.size > self._cap:  # never the newest: it holds at most cap / 4
            self.size -= len(generations.popleft()[1])

    def _merge_oldest(self, now: float) -> None:
        """Merge the two oldest generations when both are past the TTL (their values serve
        only stale, so the merged one's later start just keeps them a little longer)."""
        generations = self.generations
        older, newer = generations[0], generations[1]
        if now - newer[0] < self._ttl:
            return  # fresh ones, split by count: at most five of those
        small, large = sorted((older[1], newer[1]), key=len)
        large.update(small)  # keys are never in two generations (put discards first)
        generations.popleft()
        generations[0] = (newer[0], large)

    def discard(self, key: str) -> bool:
        """Forget `key`; True if it was stored."""
        for _, values in self.generations:
            if values.pop(key, None) is not None:
                self.size -= 1
                return True
        return False

    def clear(self) -> None:
        self.generations.clear()
        self.size = 0


class CachedCatalog:
    """A Catalog that caches another one, with negative caching and stale-if-error.

    Outcomes reported to `observe`: "hit" and "negative_hit" (served from memory), "miss"
    (once per backend call), "coalesced" (a request that joined an in-flight call), "stale"
    (backend failed, a recent entry was served) and "error" (backend failed, nothing to serve).
    Found and known-missing assets are capped apart (`max_entries`, `max_negative_entries`).
    """

    def __init__(
        self,
        backend: Catalog,
        *,
        ttl: float,
        negative_ttl: float,
        stale_seconds: float,
        max_entries: int,
        max_negative_entries: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        observe: Observer | None = None,
    ) -> None:
        self._backend = backend
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._stale_limit = ttl + stale_seconds
        self._clock = clock
        self._observe = observe or _ignore
        # Assets found (up to `max_entries`, kept for the stale window too) and assets known
        # missing (up to `max_negative_entries`, default a tenth of it), capped apart so a
        # flood of unknown ids cannot push real entries out.
        self._found: _Generations[CatalogEntry] = _Generations(
            ttl, ttl + stale_seconds, max_entries
        )
        self._missing: _Generations[bool] = _Generations(
            negative_ttl,
            negative_ttl,
            max(1, max_entries // 10) if max_negative_entries is None else max_negative_entries,
        )
        # Per asset being fetched: the futures of the requests waiting for that one call.
        self._inflight: dict[str, list[_Waiter]] = {}
        # Bumped by invalidate(): a backend answer that started before it is not cached.
        self._generation = 0

    @property
    def backend(self) -> Catalog:
        """The catalog behind the cache."""
        return self._backend

    def __len__(self) -> int:
        """How many assets (found or known missing) are cached."""
        return self._found.size + self._missing.size

    @property
    def negative_count(self) -> int:
        """How many of them are known missing."""
        return self._missing.size

    async def get(self, asset_id: str) -> CatalogEntry | None:
        """Return the asset's entry, None if unknown; raise CatalogUnavailable on failure."""
        # The hit path: the generations still within the TTL, newest first (older ones
        # serve only stale, after a failed refetch).
        now = self._clock()
        for fetched_at, entries in reversed(self._found.generations):
            if now - fetched_at >= self._ttl:
                break
            entry = entries.get(asset_id)
            if entry is not None:
                self._observe("hit")
                return entry
        missing = self._missing.find(asset_id)
        if missing is not None and now - missing[1] < self._negative_ttl:
            self._observe("negative_hit")
            return None
        return await self._fetch_shared(asset_id)

    async def ping(self) -> None:
        """Raise CatalogUnavailable unless the backend answers."""
        try:
            await self._backend.ping()
        except CatalogUnavailable:
            raise
        except Exception as exc:
            raise CatalogUnavailable() from exc

    async def close(self) -> None:
        """Close the backend."""
        await self._backend.close()

    def invalidate(self, asset_id: str | None = None) -> int:
        """Forget one asset (or all when None); return how many cached entries were dropped."""
        self._generation += 1
        if asset_id is None:
            dropped = len(self)
            self._found.clear()
            self._missing.clear()
            self._inflight.clear()  # running calls finish for their waiters, uncached
            return dropped
        self._inflight.pop(asset_id, None)
        return self._forget(asset_id)

    def invalidate_many(self, asset_ids: Iterable[str]) -> int:
        """Forget these assets (announced as changed); return how many cached entries were
        dropped. Backend answers already on their way are not cached (as for invalidate)."""
        self._generation += 1
        dropped = 0
        for asset_id in asset_ids:
            self._inflight.pop(asset_id, None)
            dropped += self._forget(asset_id)
        return dropped

    def _forget(self, asset_id: str) -> int:
        """Drop the asset's cached answer, found or missing; 1 if there was one."""
        return int(self._found.discard(asset_id) or self._missing.discard(asset_id))

    def _store(self, asset_id: str, entry: CatalogEntry | None) -> None:
        """Cache a backend answer in its own generations (found or known missing)."""
        now = self._clock()
        if entry is None:
            self._found.discard(asset_id)
            self._missing.put(asset_id, _KNOWN_MISSING, now)
        else:
            self._missing.discard(asset_id)
            self._found.put(asset_id, entry, now)

    async def _fetch_shared(self, asset_id: str) -> CatalogEntry | None:
        """Join the in-flight backend call for `asset_id`, or make it; stale on failure."""
        loop = asyncio.get_running_loop()
        while (waiters := self._inflight.get(asset_id)) is not None:
            self._observe("coalesced")
            # One future per waiter: a cancelled waiter cancels only its own future.
            future: _Waiter = loop.create_future()
            waiters.append(future)
            try:
                return await future
            except _LeaderGone:
                continue  # the request making the call was cancelled; one of us makes it anew
            except Exception as exc:
                return self._serve_stale(asset_id, exc)
        return await self._lead(asset_id)

    async def _lead(self, asset_id: str) -> CatalogEntry | None:
        """Make the one backend call, cache its answer and hand it to every waiter."""
        waiters: list[_Waiter] = []
        self._inflight[asset_id] = waiters
        generation = self._generation
        self._observe("miss")
        try:
            entry = await self._backend.get(asset_id)
        except Exception as exc:
            self._release(asset_id, waiters, exc)
            return self._serve_stale(asset_id, exc)
        except BaseException:
            self._release(asset_id, waiters, _LeaderGone())
            raise
        if generation == self._generation:  # not invalidated meanwhile
            self._store(asset_id, entry)
        self._release(asset_id, waiters, entry)
        return entry

    def _release(
        self, asset_id: str, waiters: list[_Waiter], outcome: CatalogEntry | BaseException | None
    ) -> None:
        if self._inflight.get(asset_id) is waiters:
            del self._inflight[asset_id]
        for future in waiters:
            if future.done():  # its waiter was cancelled
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
                # Mark it seen: a waiter cancelled right now would leave it unretrieved,
                # and asyncio would then warn "Future exception was never retrieved".
                future.exception()
            else:
                future.set_result(outcome)

    def _serve_stale(self, asset_id: str, exc: Exception) -> CatalogEntry | None:
        """Serve the last positive entry if still within the stale window, else raise."""
        # Only positive answers go stale: "unknown asset" while the catalog is down is more
        # likely wrong (a new asset) than right, so that becomes a 503.
        found = self._found.find(asset_id)
        if found is not None:
            entry, fetched_at = found
            if self._clock() - fetched_at < self._stale_limit:
                self._observe("stale")
                return entry
        self._observe("error")
        if isinstance(exc, CatalogUnavailable):
            raise CatalogUnavailable(exc.message) from exc
        raise CatalogUnavailable() from exc
