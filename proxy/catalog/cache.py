"""An in-memory cache in front of any catalog backend.

Fresh answers are served from memory; a miss makes one backend call per asset id however
many requests wait for it (single flight); when the backend fails, a recent positive answer
is served stale rather than failing the player.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from proxy.catalog.base import Catalog, CatalogEntry
from proxy.errors import CatalogUnavailable

# Per asset found: (entry, monotonic time fetched). A bare tuple keeps a million cached assets
# affordable; the CatalogEntry itself is slotted.
_Found = tuple[CatalogEntry, float]

_Waiter = asyncio.Future[CatalogEntry | None]

Observer = Callable[[str], None]
"""Told the outcome of each lookup: hit, negative_hit, miss, coalesced, stale or error."""


def _ignore(_: str) -> None:
    """The default observer."""


class _LeaderGone(Exception):
    """The request making a shared backend call was cancelled; its waiters must retry."""


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
        # Two least-recently-used-first maps, each with its own cap: assets found (up to
        # `max_entries`) and assets known missing, as their fetch time alone (up to
        # `max_negative_entries`, default a tenth of it), so a flood of unknown ids cannot
        # push real entries out. A plain OrderedDict each (move_to_end on a hit, popitem to
        # evict): one hash table per entry, where cachetools' LRUCache kept a dict beside its
        # OrderedDict (two).
        self._found: OrderedDict[str, _Found] = OrderedDict()
        self._missing: OrderedDict[str, float] = OrderedDict()
        self._max_found = max_entries
        self._max_missing = (
            max(1, max_entries // 10) if max_negative_entries is None else max_negative_entries
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
        return len(self._found) + len(self._missing)

    @property
    def negative_count(self) -> int:
        """How many of them are known missing."""
        return len(self._missing)

    async def get(self, asset_id: str) -> CatalogEntry | None:
        """Return the asset's entry, None if unknown; raise CatalogUnavailable on failure."""
        found = self._found.get(asset_id)
        if found is not None:
            entry, fetched_at = found
            if self._clock() - fetched_at < self._ttl:
                self._found.move_to_end(asset_id)
                self._observe("hit")
                return entry
        else:
            missing_since = self._missing.get(asset_id)
            if missing_since is not None and self._clock() - missing_since < self._negative_ttl:
                self._missing.move_to_end(asset_id)
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
        found = self._found.pop(asset_id, None) is not None
        return int(found or self._missing.pop(asset_id, None) is not None)

    def _store(self, asset_id: str, entry: CatalogEntry | None) -> None:
        """Cache a backend answer in its own map, evicting that map's least recently used."""
        now = self._clock()
        if entry is None:
            self._found.pop(asset_id, None)
            self._missing[asset_id] = now
            self._missing.move_to_end(asset_id)
            while len(self._missing) > self._max_missing:
                self._missing.popitem(last=False)
        else:
            self._missing.pop(asset_id, None)
            self._found[asset_id] = (entry, now)
            self._found.move_to_end(asset_id)
            while len(self._found) > self._max_found:
                self._found.popitem(last=False)

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
        found = self._found.get(asset_id)
        if found is not None:
            entry, fetched_at = found
            if self._clock() - fetched_at < self._stale_limit:
                self._observe("stale")
                return entry
        self._observe("error")
        if isinstance(exc, CatalogUnavailable):
            raise CatalogUnavailable(exc.message) from exc
        raise CatalogUnavailable() from exc
